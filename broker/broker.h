/*
 * broker: the context struct of one event loop of a running gale-broker
 * (process.c runs one per loop, loops.h is what they share), and its
 * lifecycle. Everything of a broker_t runs on its libuv loop:
 *
 *   socket -> lws RECEIVE -> session_receive (reassemble)
 *          -> core_message (decode, authorize, rate limit: core.c)
 *          -> router_publish (match topics, encode once per encoding)
 *          -> conn_ops_t.deliver: outq of each subscriber (frame references)
 *          -> flush: once per loop turn (uv_check), every dirty session's
 *             queued frames are copied into one buffer and sent in ONE write.
 *
 * See docs/ARCHITECTURE.md.
 */
#ifndef GALE_BROKER_H
#define GALE_BROKER_H

#include "bus.h"
#include "config.h"
#include "metrics.h"
#include "topics.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct session session_t;
struct server;
typedef struct cluster cluster_t;
typedef struct auth auth_t;
typedef struct history history_t;
typedef struct dedup dedup_t;
typedef struct presence presence_t;
typedef struct loops loops_t;

/** Coalescing buffer: frames queued for one connection are sent in writes of up to this size. */
#define BROKER_SCRATCH_SIZE (64 * 1024)
/** Bytes of publishes routed at most before the queued frames go to the sockets. */
#define BROKER_FLUSH_DEFER_BYTES 16384
/** Publishers per loop turn whose pending input can defer the flush. */
#define BROKER_TRACKED_PUBLISHERS 16

typedef struct broker {
    gale_config_t cfg;
    uv_loop_t *loop;
    loops_t *loops;      /* --loops N > 1: what the loops share (loops.h); NULL: one loop */
    uint32_t loop_idx;   /* this loop's index, 0..N-1 (0 handles signals) */
    uint32_t nloops;     /* N */
    uint64_t loops_wake; /* loops handed messages this turn (bit per loop) */
    bool loops_backlog;  /* an inbox this loop publishes to is over its bound: publishers on
                            this loop pause reading until it is drained (loops.h) */
    struct server *srv;  /* the lws transport (server.c) */
    topics_t *topics;
    cluster_t *cluster;      /* NULL: single node (no --redis) */
    bus_t bus;               /* the cluster as the core sees it (bus.h); ops NULL: single node */
    auth_t *auth;            /* NULL: no --jwt-secret nor --jwt-keys, the broker is open */
    history_t *history;      /* --history (single node); NULL: none */
    dedup_t *dedup;          /* the mids of recent publishes (single node) */
    presence_t *presence;    /* --presence; NULL: none */
    struct mqtt_state *mqtt; /* MQTT client ids and retained messages (mqtt.c); NULL: none yet */
    struct nats_state *nats; /* the last NATS MSG frame built (nats.c); NULL: none yet */
    bool tls;                /* --tls-cert: wss:// and https:// */
    metrics_t m;
    char node_id[64];
    uint64_t instance; /* random, non-zero: names this process on the cluster bus */
    uint64_t start_ms; /* uv_now() at start */
    uint64_t next_conn_id;
    int port; /* the port actually listened on */
    char web_root[PATH_MAX];

    session_t **sessions; /* every established WebSocket session (session->slot) */
    uint32_t nsessions, sessions_cap;
    uint32_t sessions_peak; /* most sessions since memory was last returned (session_sweep) */
    uint32_t nlive;         /* WebSocket wsis opened and not yet destroyed */
    session_t **dirty;      /* sessions with queued frames to flush (session->dirty_slot) */
    uint32_t ndirty, dirty_cap;
    session_t *publishers[BROKER_TRACKED_PUBLISHERS]; /* published this loop turn */
    uint32_t npublishers;
    uint32_t deferred_turns; /* flushes skipped in a row for pending publisher input */
    size_t deferred_bytes;   /* bytes of publishes routed since the last flush */
    uint8_t *scratch;        /* flush buffer: queued frames are coalesced here */
    size_t scratch_cap;
    uint32_t nhandshakes;  /* connections awaiting their first request head (http.c) */
    uint64_t queued_bytes; /* bytes in the outbound queues at the last sweep (1 s) */

    uv_check_t flush_check;
    uv_timer_t sweep_timer;
    uv_timer_t stop_timer;
    uv_signal_t sigterm, sigint;
    uv_signal_t sighup; /* reloads the token keys (--jwt-secret-file, --jwt-keys) */
    int handles_open;   /* our uv handles not yet closed */
    bool stopping;      /* SIGTERM/SIGINT seen: refuse upgrades, close sessions; lws is
                           torn down once nlive reaches 0 (close frames sent) */
    bool finishing;     /* stopping and every connection gone: teardown scheduled */
    bool destroyed;     /* teardown started (server_close) */
    uint64_t drain_ms;  /* stopping: uv_now() when it began waiting for Redis's answers */
    int exit_code;
} broker_t;

/**
 * Starts a broker on `loop` with `cfg`: creates the lws context on the
 * foreign loop, binds the listener and installs signal handlers. With loops (several loops,
 * loops.h) it is loop loop_idx of them: its own listener on the shared port, signals on
 * loop 0 only. Returns
 * NULL when out of memory; on any other failure (logged) a broker whose
 * exit_code is non-zero and whose teardown has begun: run the loop, then
 * broker_free returns that code.
 */
broker_t *broker_start(const gale_config_t *cfg, uv_loop_t *loop, loops_t *loops,
                       uint32_t loop_idx);

/** SIGHUP: reads the token keys again (--jwt-secret-file, --jwt-keys); logged. */
void broker_reload(broker_t *b);

/**
 * Begins a graceful stop: refuse new upgrades, close every connection with
 * 1001 after flushing what is queued, and tear down lws within a few
 * seconds. Safe to call more than once.
 */
void broker_stop(broker_t *b);

/**
 * Finishes teardown after uv_run() has returned (second lws_context_destroy)
 * and frees b. Returns the process exit code.
 */
int broker_free(broker_t *b);

/** Milliseconds since the broker started (the loop's clock). */
static inline uint64_t broker_uptime_ms(const broker_t *b)
{
    return uv_now(b->loop) - b->start_ms;
}

#endif
