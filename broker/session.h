/*
 * session: one WebSocket connection. Lives in lws's per-session storage
 * (zeroed by lws), so the struct is kept small: at 19,000 connections every
 * byte here costs 19 KB.
 */
#ifndef GALE_SESSION_H
#define GALE_SESSION_H

#include "broker.h"
#include "conn.h"
#include "frame.h"
#include "outq.h"
#include "topics.h"

#include <stdbool.h>
#include <stdint.h>

struct lws;
struct auth_grant;
struct iplimit_entry;

struct session;
struct session_adapter;

/** Protocols of sessions: gale v1, then the adapters' (metrics count sessions by it). */
enum { SESSION_PROTO_GALE, SESSION_PROTO_MQTT, SESSION_PROTO_NATS, SESSION_PROTO_COUNT };

/**
 * A wire protocol other than gale v1 carried by a session (mqtt.c at /mqtt, nats.c at
 * /nats): the session keeps the WebSocket (queue, coalesced writes, keepalive pings, closes);
 * the adapter turns the byte stream of its frames into core requests and the core's answers
 * and deliveries into its packets (its own conn_ops_t). It opens the core's part of the
 * connection itself (core_open) once its handshake (CONNECT) is done.
 */
typedef struct session_proto {
    const char *name; /* "mqtt", "nats": logs, metrics label */
    uint8_t index;    /* SESSION_PROTO_* */
    /** Set up s->ad; false when out of memory (the connection is refused). */
    bool (*open)(broker_t *b, struct session *s);
    /** A chunk of a frame's payload (any fragmentation). 0, or -1 to close (reason set). */
    int (*receive)(broker_t *b, struct session *s, const uint8_t *in, size_t len, bool binary);
    /** The connection ends: before the core forgets it (an MQTT will goes out here). */
    void (*closing)(broker_t *b, struct session *s);
    /** Frees s->ad (after core_close). */
    void (*free)(broker_t *b, struct session *s);
    /** The once-a-second sweep (protocol keepalive, handshake deadline); now in uptime ms. */
    void (*sweep)(broker_t *b, struct session *s, uint64_t now);
} session_proto_t;

/** What every adapter's state starts with (s->ad). */
typedef struct session_adapter {
    const session_proto_t *proto;
} session_adapter_t;

#define SESSION_NOT_DIRTY UINT32_MAX
/** Close codes (RFC 6455 7.4.1) the adapters use. */
#define SESSION_CLOSE_NORMAL 1000
/** The close code of a broker that stops. */
#define SESSION_CLOSE_GOING_AWAY 1001
#define SESSION_CLOSE_PROTOCOL 1002
#define SESSION_CLOSE_UNSUPPORTED 1003
#define SESSION_CLOSE_POLICY 1008
#define SESSION_CLOSE_TOO_LARGE 1009

typedef struct session {
    conn_t conn; /* the core's part (core.h): subscriptions, grant, encoding */
    struct lws *wsi;
    /* --max-connections-per-ip: the address slot held until the wsi is destroyed, or NULL */
    struct iplimit_entry *ip;
    uint8_t rx_paused;     /* not read: it published to a loop whose inbox is full (loops.h) */
    bool conn_slot;        /* --loops N > 1: one of --max-connections, held until the wsi is
                              destroyed (loops.h) */
    outq_t q;              /* frames waiting to be written */
    uint8_t *rx;           /* reassembly of a message spanning several receives */
    session_adapter_t *ad; /* another protocol's state (MQTT, NATS); NULL: gale v1 */
    uint64_t last_rx_ms;   /* broker_uptime_ms() of the last inbound frame; once
                              closing, of the start of the close */
    uint32_t rx_len;       /* bytes in rx (at most --max-message, 64 MiB) */
    uint32_t slot;         /* index in broker.sessions */
    uint32_t dirty_slot;   /* index in broker.dirty, or SESSION_NOT_DIRTY */
    uint16_t close_code;   /* non-zero: closing with this code once flushed */
    uint8_t ping_sent : 1; /* a keepalive ping is unanswered */
    uint8_t rx_binary : 1; /* the message being reassembled is binary */
    uint8_t killed : 1;    /* dropped without a close frame */
    uint8_t live : 1;      /* opened and its wsi not yet destroyed (broker.nlive) */
} session_t;

/**
 * Sets up a newly established session of encoding enc; queues hello. grant
 * (with --jwt-secret) is the token's, of which the session takes a reference.
 */
bool session_open(broker_t *b, session_t *s, struct lws *wsi, gale_enc_t enc,
                  struct auth_grant *grant);

/**
 * Sets up a newly established session of another protocol (proto): the adapter opens the
 * core's part itself when its client has done its handshake.
 */
bool session_open_adapter(broker_t *b, session_t *s, struct lws *wsi, const session_proto_t *proto);

/** Queues frame f built for s (a reply), dropping the reference; NULL closes s with 1011. */
void session_send(broker_t *b, session_t *s, frame_t *f);

/** The session of a conn_t (its first member). */
static inline session_t *session_of_conn(conn_t *c)
{
    return (session_t *)c;
}

/** Releases everything the session holds (subscriptions, queue, buffers). */
void session_close(broker_t *b, session_t *s);

/**
 * Feeds one lws RECEIVE chunk. Returns 0, or -1 when the connection must be
 * closed (the close reason has been set on the wsi).
 */
int session_receive(broker_t *b, session_t *s, const uint8_t *in, size_t len);

/** Notes inbound traffic (any frame, including pongs) for the keepalive. */
void session_touch(broker_t *b, session_t *s);

/**
 * Queues a reference to f for sending. When the queue would pass
 * --queue-limit, the session is closed as a slow consumer (4001) instead and
 * false is returned.
 */
bool session_enqueue(broker_t *b, session_t *s, frame_t *f);

/**
 * Writes queued frames, coalesced into as few writes as possible. Called
 * from the per-turn flush and from WRITEABLE; asks for WRITEABLE itself when
 * the socket cannot take everything.
 */
void session_flush(broker_t *b, session_t *s);

/**
 * Starts closing with `code` (1001, 4001, ...): a close frame is queued
 * after the queued frames (or instead of them, with drop_queue) and nothing
 * more is accepted. The peer's answering close, or a timeout, ends it.
 */
void session_begin_close(broker_t *b, session_t *s, uint16_t code, bool drop_queue);

/**
 * The peer's close frame arrived (its payload, as lws passes it): the answer for lws's
 * WS_PEER_INITIATED_CLOSE. A valid payload (gale_close_payload_check) is echoed, an invalid
 * one answered with 1002. -1 (end the connection now) if our own close went out first or if
 * we answered theirs right here; 0 to let lws echo it (it then waits for WRITEABLE).
 */
int session_peer_close(broker_t *b, session_t *s, const uint8_t *payload, size_t len);

/**
 * Drops the connection without a close frame (unresponsive peer, write
 * failure): the socket is shut down at once, writable or not, and lws closes
 * the session on its next poll.
 */
void session_kill(broker_t *b, session_t *s);

/** Writes every dirty session's queue now. */
void session_flush_all(broker_t *b);

/** Bytes in every session's outbound queue, a walk over them. */
uint64_t session_queued_bytes(const broker_t *b);

/** Lets every connection paused for another loop's full inbox (loops.h) read again. */
void session_resume_all(broker_t *b);

/**
 * The per-turn flush (uv_check): session_flush_all, unless a connection
 * that published this turn has more input waiting, in which case the flush
 * waits for it, a few turns at most, to coalesce larger writes.
 */
void session_flush_turn(broker_t *b);

/**
 * The once-a-second sweep: pings sessions silent for --keepalive, drops
 * those that stayed silent as long again, drops closing sessions whose
 * peer did not answer the close within 10 s, and closes with 1008 those
 * whose token expired.
 */
void session_sweep(broker_t *b);

#endif
