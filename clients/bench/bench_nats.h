/*
 * bench_nats: the NATS client protocol for `gale bench --proto nats`, over nats-server's
 * WebSocket listener. Pure encoding and parsing over caller buffers: no sockets.
 *
 * NATS over WebSocket is a byte stream carried in binary frames whose boundaries need not
 * match protocol boundaries (a MSG can span frames, a frame can carry many), so the parser
 * takes the stream in pieces (bench_ws stream mode) and carries an incomplete line or
 * message per connection. It reports what it reads as the gmsg_t events of the gale mode,
 * so the scenarios and their accounting are the same:
 *
 *   first INFO      GM_HELLO   (later INFOs, e.g. cluster updates: GM_OTHER)
 *   MSG / HMSG      GM_MSG     bench data read from the payload (the same JSON object)
 *   PONG            GM_ACK     id = the receiver's next ack id, counting up from the first
 *   PING            GM_PING    the caller answers with nats_pong_frame()
 *   -ERR 'text'     GM_ERR     code "-ERR", text without the quotes
 *   +OK             GM_OTHER
 *
 * Acknowledgements: core NATS does not acknowledge a SUB or a PUB, but the server handles a
 * connection's protocol messages in order and answers every PING with a PONG, so a PING
 * sent after a request is answered once the request was processed. The load generator sends
 * one PING after each request whose answer it waits for (the subscription; every publish),
 * numbered consecutively; the n-th PONG then acknowledges request n, which is what
 * nats_rx_t's ack ids report.
 */
#ifndef GALE_BENCH_NATS_H
#define GALE_BENCH_NATS_H

#include "bench_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NATS_MAX_LINE 65536 /* longest protocol line accepted (INFO can be long) */

/** Receive state of one connection. Zero it, or use nats_rx_reset(). */
typedef struct {
    uint8_t *buf; /* an incomplete line or message; owned, freed by nats_rx_free() */
    uint32_t len, cap;
    uint64_t next_ack_id; /* id reported with the next PONG */
    bool seen_info;
} nats_rx_t;

/** Prepares @r for a new connection whose first PONG acknowledges request @first_ack_id. */
void nats_rx_reset(nats_rx_t *r, uint64_t first_ack_id);

/** Releases the buffer. Safe on a zeroed state. */
void nats_rx_free(nats_rx_t *r);

/**
 * Handles one event; returns 0 to go on, nonzero to stop at once (the connection was closed
 * or reset: nats_rx_feed() then does not touch its state again).
 */
typedef int (*nats_event_cb)(void *user, const gmsg_t *m);

/**
 * Parses @p[0..n), the next bytes of the connection's stream, calling @cb for every complete
 * protocol message; an incomplete one is kept for the next call. Returns 0, 1 when @cb asked
 * to stop, or -1 on a protocol error (unknown operation, malformed or over-long line or
 * message), with a short reason in @why (static storage).
 */
int nats_rx_feed(nats_rx_t *r, const uint8_t *p, size_t n, nats_event_cb cb, void *user,
                 const char **why);

/**
 * Writes the client's answer to INFO as one masked binary frame into @dst (@cap bytes):
 * CONNECT (verbose and pedantic off, no headers), then, if @subject is not NULL,
 * `SUB subject 1` and a PING whose PONG acknowledges the subscription. Returns the frame's
 * length, 0 if it does not fit (512 bytes always do with a subject of up to 255).
 */
size_t nats_hello_frame(uint8_t *dst, size_t cap, const char *subject);

/**
 * Like nats_hello_frame with @count subscriptions: `SUB <prefix><first + j> <j + 1>` for j
 * in [0, count), then one PING whose PONG acknowledges them all. Returns the frame's
 * length, 0 if it does not fit in @cap or memory ran out (64 bytes per subscription plus
 * 512 always do with a prefix of up to 32 bytes).
 */
size_t nats_subs_frame(uint8_t *dst, size_t cap, const char *prefix, uint64_t first,
                       uint32_t count);

/** Writes a masked binary frame carrying PONG into @dst (16 bytes); returns its length. */
size_t nats_pong_frame(uint8_t *dst);

/**
 * Builds the publish frame `PUB subject N\r\n<bench data>\r\nPING\r\n` of publisher @pub,
 * payload about @size bytes, with the fields patched by pubtpl_set() (there is no request
 * id: the PING's PONG acknowledges the publish). If @topic_indexed, the subject's last
 * TOPIC_IDX_DIGITS characters are patched per send. Returns 0, or -1 when out of memory.
 */
int nats_pubtpl_build(pubtpl_t *t, const char *subject, bool topic_indexed, uint32_t pub,
                      size_t size);

#endif
