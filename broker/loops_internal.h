/*
 * loops_internal: what loops.c (the loops' shared state, as the core and the transport see
 * it) and process.c (the threads that run them) both know of the loops. Not for elsewhere.
 */
#ifndef GALE_LOOPS_INTERNAL_H
#define GALE_LOOPS_INTERNAL_H

#include "conn.h"
#include "loops.h"
#include "router.h"
#include "topics.h"

#include <stdatomic.h>
#include <uv.h>

/* How long /metrics waits at most for the other loops' figures (a loop busy longer gives
 * those of its last turn). */
#define LOOPS_SYNC_NS (50 * 1000000u)

/* Bytes an inbox may hold before the publishers feeding it are paused (loops.h). */
#define LOOPS_INBOX_MAX (1u << 20)

/* A message handed to other loops: one copy, freed by the last loop that delivered it. */
typedef struct loops_msg {
    atomic_uint refs;
    uint64_t takeover, by; /* not a message: MQTT connection `takeover` of the loop loses its
                              client id to connection `by` of another loop (mqtt.c) */
    router_msg_t m;        /* topic, reply and data point into bytes */
    size_t size;           /* what it counts against the inboxes */
    uint8_t bytes[];
} loops_msg_t;

typedef struct loops_held loops_held_t;

typedef struct slot {
    uv_loop_t loop;
    uv_thread_t thread;
    bool threaded;
    broker_t *b;
    uv_async_t wake; /* open from start to the end of every loop's teardown */
    bool wake_open;
    loops_held_t **held; /* this loop's patterns: connections per format (its thread's) */
    uint32_t nheld, held_cap;
    uint32_t reload_seen; /* the reload requests this loop has acted on */

    uv_mutex_t mu; /* the inbox and the published metrics */
    loops_msg_t **inbox;
    uint32_t ninbox, inbox_cap;
    size_t bytes;        /* what the inbox holds */
    uint64_t waiters;    /* loops that found it over LOOPS_INBOX_MAX: told when it is drained */
    atomic_bool resume;  /* an inbox this loop filled was drained: its publishers read again */
    atomic_uint pending; /* messages in the inbox (read without the lock) */
    metrics_t m;
    metrics_gauges_t g; /* the gauges loops_sum adds up */
    uint64_t snap_seq;  /* the metrics request (loops_t.metrics_req) seen when last published */
    bool frozen;        /* published while waiting in loops_sync: current until it returns */
} slot_t;

struct loops {
    uint32_t n;
    uv_rwlock_t interest_lock; /* interest: read by publishes, written by changes */
    topics_t *interest;        /* which loops hold which patterns, in which formats ... */
    topics_owner_t *owners;    /* ... its owners: owners[k * CONN_FMT_COUNT + f] is loop k's
                                  connections of format f */
    uv_mutex_t shared_mu;      /* dedup, ips */
    dedup_t *dedup;
    iplimit_t *ips;
    struct mqtt_state *mqtt;    /* client ids and retained messages */
    atomic_uint_fast64_t conns; /* --max-connections slots reserved */
    atomic_int port;
    atomic_bool stopping;
    atomic_uint reloads;
    atomic_uint finished; /* loops whose teardown is over */
    atomic_uint fence;    /* full_fence's */
    /* /metrics: a loop asks the others for figures published after its request */
    atomic_uint_fast64_t metrics_req;
    atomic_uint sync_waiting;
    uv_mutex_t sync_mu;
    uv_cond_t sync_cond;
    loops_handlers_t handlers;
    slot_t *slots;
};

/* What a publish's match found: the loops and the formats (conn.h) they hold it in. */
typedef struct loops_match {
    struct loops *l;
    uint64_t loops;
    uint32_t fmts;
} loops_match_t;

/** b's slot. */
static inline slot_t *slot_of(broker_t *b)
{
    return &b->loops->slots[b->loop_idx];
}

/** Drops one reference to x; frees it with the last. */
void loops_msg_unref(loops_msg_t *x);

/** Wakes every loop that has its wake-up (set up before any thread starts). */
void loops_wake_all(loops_t *l);

/** A full barrier before uv_async_send (libuv < 1.53). */
void loops_fence(loops_t *l);

/**
 * The loops' shared state for cfg (MQTT's, mqtt, is given; handlers, what draining an inbox
 * asks of the transport); NULL when out of memory.
 */
loops_t *loops_new(const gale_config_t *cfg, struct mqtt_state *mqtt,
                   const loops_handlers_t *handlers);

/** Frees l and what its inboxes still hold; gives back the MQTT state it was given. */
struct mqtt_state *loops_free(loops_t *l);

#endif
