/*
 * bench_ws: raw RFC 6455 client connections on one epoll loop, for the load generator.
 *
 * Non-blocking sockets, edge-triggered epoll, a hand-written upgrade request with a fixed
 * Sec-WebSocket-Key (the RFC's sample nonce, so the expected Sec-WebSocket-Accept is a
 * constant and no SHA-1 is needed), and a streaming frame parser: frames split across
 * reads are carried per connection, coalesced frames are all delivered, 16- and 64-bit
 * lengths and fragmented messages are handled. Pings are answered, a close is echoed.
 * In stream mode (bws_target_t.stream, for NATS, whose messages do not follow frame
 * boundaries) data-frame payload is handed over as it arrives instead, with no size limit.
 *
 * Ownership: the loop owns every connection it creates. A connection closed by the peer,
 * by an error or by bws_close() is freed after the current bws_loop_run() returns, so
 * pointers stay valid during handler calls; after on_close the caller must drop them.
 */
#ifndef GALE_BENCH_WS_H
#define GALE_BENCH_WS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bws_loop bws_loop_t;
typedef struct bws_conn bws_conn_t;

/** What the caller learns about its connections. */
typedef struct {
    /** The 101 answer was verified: frames can be sent. */
    void (*on_open)(bws_conn_t *c);
    /**
     * One complete text or binary message (fragments reassembled); in stream mode, the next
     * piece of data-frame payload, whatever its frame (continuations included).
     */
    void (*on_message)(bws_conn_t *c, bool binary, const uint8_t *p, size_t n);
    /**
     * The connection is gone: @code is the peer's close code (0 if none), @why a short
     * reason. Not called for bws_close().
     */
    void (*on_close)(bws_conn_t *c, int code, const char *why);
} bws_handlers_t;

/** Where to connect and how. */
typedef struct {
    struct sockaddr_in addr;
    char host[256];     /* Host header */
    char path[1024];    /* path and query */
    const char *proto;  /* Sec-WebSocket-Protocol to offer, or NULL */
    unsigned src_addrs; /* > 0: bind sources to 127.0.1.1.. (that many), loopback only */
    bool stream;        /* deliver data-frame payload in pieces as it arrives, any size */
} bws_target_t;

/** A non-socket fd the loop also watches (control pipes, timers). */
typedef struct bws_watch {
    int kind; /* set by bws_watch_add */
    int fd;
    void (*cb)(struct bws_watch *w, uint32_t events);
    void *user;
} bws_watch_t;

struct bws_conn {
    int kind; /* first, like bws_watch_t */
    int fd;
    int state;
    bool close_sent;
    uint32_t index; /* the caller's number; also picks the source address */
    void *user;
    bws_loop_t *loop;
    /* received bytes of an incomplete frame (or of the HTTP answer) */
    uint8_t *carry;
    uint32_t carry_len, carry_cap;
    /* a fragmented message being reassembled */
    uint8_t *frag;
    uint32_t frag_len, frag_cap;
    int frag_opcode;
    /* stream mode: what is left of the data frame being handed over */
    uint64_t stream_left;
    uint8_t stream_key[4], stream_kpos;
    bool stream_masked, stream_binary;
    /* bytes the kernel did not take yet */
    uint8_t *out;
    uint32_t out_len, out_cap;
    struct bws_conn *prev, *next; /* the loop's list of live connections */
    struct bws_conn *next_dead;
};

/** Creates a loop. Returns NULL with errno set on failure. Free with bws_loop_free(). */
bws_loop_t *bws_loop_new(const bws_target_t *target, const bws_handlers_t *handlers);

/**
 * Makes the connections started from now on go to @target (connections already open stay
 * where they are). Returns 0, or -1 with errno set when its upgrade request is too long.
 */
int bws_loop_retarget(bws_loop_t *l, const bws_target_t *target);

/** Closes every connection still open (without handlers) and frees the loop. NULL is safe. */
void bws_loop_free(bws_loop_t *l);

/** Starts watching @w (level-triggered, EPOLLIN). Returns 0 or -1 with errno. */
int bws_watch_add(bws_loop_t *l, bws_watch_t *w);

/** Stops watching @w. */
void bws_watch_del(bws_loop_t *l, bws_watch_t *w);

/**
 * Starts a connection (connect, then the upgrade request once connected). Returns it, or
 * NULL with errno set when the socket could not even be started.
 */
bws_conn_t *bws_connect(bws_loop_t *l, uint32_t index, void *user);

/**
 * Sends @n bytes of ready frames; what the kernel does not take is copied and sent when
 * the socket is writable. Returns 0, or -1 if the connection failed (it is then closed and
 * on_close was called).
 */
int bws_send(bws_conn_t *c, const void *p, size_t n);

/** Bytes waiting in user space for the kernel. */
static inline size_t bws_pending(const bws_conn_t *c)
{
    return c->out_len;
}

/** Sends a close frame with @code; the connection stays until the peer closes it. */
void bws_send_close(bws_conn_t *c, int code);

/** Closes the socket at once; no handler is called. */
void bws_close(bws_conn_t *c);

/**
 * Waits up to @timeout_ms for events and handles them. Returns the number of events, or -1
 * on an epoll error other than EINTR.
 */
int bws_loop_run(bws_loop_t *l, int timeout_ms);

#endif
