/*
 * loops: what several event loops of one process (--loops N) share, as the core and the
 * transport see it. Each loop is a broker_t of its own, on its own thread, libuv loop and
 * lws context, with its own SO_REUSEPORT listener (server.c), sessions, topic index, flush
 * and sweep (process.c runs them); what they share lives here:
 *
 * - interest: which loops hold subscribers of which patterns (a topics_t whose owners are
 *   the loops, changed when a loop gains its first or loses its last subscriber of a
 *   pattern, per delivery format; read by publishes under a rwlock's read side); a publish
 *   matches it once to find the loops it must reach and the formats they need.
 * - inboxes: a loop hands a published message (one copy, reference counted atomically) to
 *   each other loop with subscribers through that loop's inbox; every inbox touched in a
 *   turn is woken once, at the end of the turn (uv_async_send). The loop delivers what its
 *   inbox holds to its own connections (process.c, router_deliver), in the order it was
 *   handed over, so the order of one publisher's messages holds for every subscriber.
 * - a bound on each inbox: a loop that falls behind pauses the reading of the connections
 *   that publish to it, on their own loops, until it has caught up.
 * - the connection limit (--max-connections), the per-address table, the mids of the
 *   dedup window, MQTT's client ids (a takeover of another loop's connection goes to that
 *   loop's inbox) and retained messages, the listening port, stop and reload requests, and
 *   each loop's last metrics for /metrics.
 *
 * Nothing of libwebsockets crosses threads: a loop only ever touches its own context.
 * With --loops 1 there is no loops_t at all (broker_t.loops is NULL): today's broker.
 */
#ifndef GALE_LOOPS_H
#define GALE_LOOPS_H

#include "config.h"
#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct broker broker_t;

/** What draining an inbox asks of the transport (process.c gives session.c's and mqtt.c's). */
typedef struct loops_handlers {
    void (*flush)(broker_t *b); /* every queued frame to the sockets */
    void (*takeover)(broker_t *b, uint64_t conn, uint64_t by); /* mqtt_taken_over */
    uint64_t (*queued)(const broker_t *b);                     /* bytes in the outbound queues */
} loops_handlers_t;
typedef struct loops loops_t;
typedef struct dedup dedup_t;
typedef struct iplimit iplimit_t;
struct router_msg;

/**
 * A connection of b's loop, of delivery format fmt (conn.h), now holds pattern p: other
 * loops' publishes reach this loop in that format from the first one on. False when out of
 * memory (nothing changed).
 */
bool loops_interest_add(broker_t *b, const char *p, size_t len, int fmt);

/** A connection of b's loop, of format fmt, no longer holds pattern p. */
void loops_interest_drop(broker_t *b, const char *p, size_t len, int fmt);

/**
 * Hands m, just routed on b's loop, to every other loop holding subscribers of its topic;
 * *fmts gets the delivery formats they hold it in (a bit per conn.h format; 0: no other
 * loop). Returns false when out of memory (no loop got it).
 */
bool loops_publish(broker_t *b, const struct router_msg *m, uint32_t *fmts);

/**
 * MQTT: connection conn of loop `loop` lost its client id to connection `by` of b's loop: that
 * loop closes it (mqtt_taken_over). False when out of memory.
 */
bool loops_takeover(broker_t *b, uint32_t loop, uint64_t conn, uint64_t by);

/** Whether other loops have handed b's loop messages it has not delivered yet. */
bool loops_pending(broker_t *b);

/**
 * Delivers what other loops handed to b's loop, in order (its wake-up, and loops_catch_up).
 * Every 16 KiB of messages the queues go to the sockets (handlers.flush), as a local burst's
 * would; an MQTT takeover item closes the connection it names (handlers.takeover). The loops
 * that were paused for this inbox are told to read again.
 */
void loops_drain(broker_t *b);

/**
 * Before b's loop handles a request: delivers what other loops have handed it, so that a
 * client which saw a publish acknowledged, then asks this loop anything, gets the message
 * first (as on one loop).
 */
void loops_catch_up(broker_t *b);

/** End of b's loop turn: wakes the loops it handed messages to, publishes its metrics. */
void loops_turn(broker_t *b);

/** b's loop has begun its teardown: once every loop has, the wake-ups close. */
void loops_finished(broker_t *b);

/** Asks every loop to stop (SIGTERM, SIGINT, a loop that failed to start). */
void loops_stop(loops_t *l);

/** Asks every other loop to reload its token keys (SIGHUP on loop 0). */
void loops_reload(loops_t *l);

/** The lock of the state the loops share (the dedup window, the per-address table). */
void loops_lock(loops_t *l);
void loops_unlock(loops_t *l);

/** The process's dedup window and per-address table (created by loop 0). */
dedup_t *loops_dedup(loops_t *l);
iplimit_t *loops_iplimit(loops_t *l);
struct mqtt_state *loops_mqtt(loops_t *l);

/**
 * Reserves one of --max-connections (max, 0: none) for a WebSocket upgrade: false when
 * every one is taken. Given back by loops_conn_release.
 */
bool loops_conn_reserve(loops_t *l, uint64_t max);
void loops_conn_release(loops_t *l);

/** The listening port: 0 until the first loop has bound it. */
int loops_port(loops_t *l);
void loops_set_port(loops_t *l, int port);

/** Milliseconds of the process's monotonic clock, the same on every loop (the dedup window). */
uint64_t loops_now_ms(void);

/** Number of loops. */
uint32_t loops_count(const loops_t *l);

/**
 * /metrics and /healthz: before loops_sum, waits (at most 50 ms) until every other loop has
 * published its figures after this call began, so that they hold whatever a client saw
 * happen before it asked. Does nothing with one loop.
 */
void loops_sync(broker_t *b);

/**
 * /metrics and /healthz: m, b's loop's counters, and g, its gauges as given, summed with every
 * other loop's last published figures (loops_sync); per-loop connections in g.
 */
void loops_sum(broker_t *b, metrics_t *m, metrics_gauges_t *g);

#endif
