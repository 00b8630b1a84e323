#include "loops.h"

#include "broker.h"
#include "cluster.h"
#include "dedup.h"
#include "iplimit.h"
#include "log.h"
#include "mqtt.h"
#include "router.h"
#include "session.h"
#include "topics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* How long /metrics waits at most for the other loops' figures (a loop busy longer gives
 * those of its last turn). */
#define LOOPS_SYNC_NS (50 * 1000000u)

/* Bytes an inbox may hold before the publishers feeding it are paused (loops.h). */
#define LOOPS_INBOX_MAX (8u << 20)

/* A message handed to other loops: one copy, freed by the last loop that delivered it. */
typedef struct loops_msg {
    atomic_uint refs;
    uint64_t takeover, by; /* not a message: MQTT connection `takeover` of the loop loses its
                              client id to connection `by` of another loop (mqtt.c) */
    router_msg_t m;        /* topic, reply and data point into bytes */
    size_t size;           /* what it counts against the inboxes */
    uint8_t bytes[];
} loops_msg_t;

typedef struct slot {
    uv_loop_t loop;
    uv_thread_t thread;
    bool threaded;
    broker_t *b;
    uv_async_t wake; /* open from start to the end of every loop's teardown */
    bool wake_open;
    topics_owner_t owner; /* this loop's patterns in the interest index */
    uint32_t reload_seen; /* the reload requests this loop has acted on */

    uv_mutex_t mu; /* the inbox and the published metrics */
    loops_msg_t **inbox;
    uint32_t ninbox, inbox_cap;
    size_t bytes;       /* what the inbox holds */
    uint64_t waiters;   /* loops that found it over LOOPS_INBOX_MAX: told when it is drained */
    atomic_bool resume; /* an inbox this loop filled was drained: its publishers read again */
    metrics_t m;
    metrics_gauges_t g; /* the gauges loops_sum adds up */
    uint64_t snap_seq;  /* the metrics request (loops_t.metrics_req) seen when last published */
    bool frozen;        /* published while waiting in loops_sync: current until it returns */
    uint64_t queued_ms; /* when its queued bytes were last summed (this loop's clock) */
} slot_t;

struct loops {
    uint32_t n;
    uv_mutex_t interest_mu;
    topics_t *interest;
    uv_mutex_t shared_mu; /* dedup, ips */
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
    slot_t *slots;
};

static slot_t *slot_of(broker_t *b)
{
    return &b->loops->slots[b->loop_idx];
}

uint64_t loops_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

uint32_t loops_count(const loops_t *l)
{
    return l ? l->n : 1;
}

void loops_lock(loops_t *l)
{
    uv_mutex_lock(&l->shared_mu);
}

void loops_unlock(loops_t *l)
{
    uv_mutex_unlock(&l->shared_mu);
}

dedup_t *loops_dedup(loops_t *l)
{
    return l->dedup;
}

iplimit_t *loops_iplimit(loops_t *l)
{
    return l->ips;
}

struct mqtt_state *loops_mqtt(loops_t *l)
{
    return l->mqtt;
}

bool loops_conn_reserve(loops_t *l, uint64_t max)
{
    uint_fast64_t n = atomic_load_explicit(&l->conns, memory_order_relaxed);
    do {
        if (max && n >= max)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&l->conns, &n, n + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

void loops_conn_release(loops_t *l)
{
    atomic_fetch_sub_explicit(&l->conns, 1, memory_order_relaxed);
}

int loops_port(loops_t *l)
{
    return atomic_load(&l->port);
}

void loops_set_port(loops_t *l, int port)
{
    atomic_store(&l->port, port);
}

/*
 * A full barrier before uv_async_send, which libuv before 1.53 needs from its caller: a
 * seq_cst read-modify-write (a locked instruction on x86), which ThreadSanitizer also
 * understands (gcc's does not take atomic_thread_fence).
 */
static void full_fence(loops_t *l)
{
    atomic_fetch_add_explicit(&l->fence, 1, memory_order_seq_cst);
}

/* Wakes every loop that has its wake-up (set up before any thread starts). */
static void wake_all(loops_t *l)
{
    full_fence(l);
    for (uint32_t k = 0; k < l->n; k++)
        if (l->slots[k].wake_open)
            uv_async_send(&l->slots[k].wake);
}

/* --- interest -------------------------------------------------------------------------- */

bool loops_interest_add(broker_t *b, const char *p, size_t len)
{
    loops_t *l = b->loops;
    uv_mutex_lock(&l->interest_mu);
    topics_result_t r = topics_subscribe(l->interest, &slot_of(b)->owner, p, len, NULL);
    uv_mutex_unlock(&l->interest_mu);
    return r == TOPICS_ADDED || r == TOPICS_EXISTS;
}

void loops_interest_drop(broker_t *b, const char *p, size_t len)
{
    loops_t *l = b->loops;
    uv_mutex_lock(&l->interest_mu);
    topics_unsubscribe(l->interest, &slot_of(b)->owner, p, len, NULL);
    uv_mutex_unlock(&l->interest_mu);
}

void loops_interest_drop_cb(const char *p, size_t len, void *arg)
{
    loops_interest_drop(arg, p, len);
}

static void mark_loop(topics_owner_t *owner, void *arg)
{
    loops_t *l = ((void **)arg)[0];
    uint64_t *mask = ((void **)arg)[1];
    slot_t *s = (slot_t *)((char *)owner - offsetof(slot_t, owner));
    *mask |= UINT64_C(1) << (uint32_t)(s - l->slots);
}

/* --- inboxes --------------------------------------------------------------------------- */

static void msg_unref(loops_msg_t *x)
{
    if (atomic_fetch_sub_explicit(&x->refs, 1, memory_order_acq_rel) == 1)
        free(x);
}

static loops_msg_t *msg_copy(const router_msg_t *m, unsigned refs)
{
    size_t size = sizeof(loops_msg_t) + m->topic_len + m->reply_len + m->data_len;
    loops_msg_t *x = malloc(size);
    if (!x)
        return NULL;
    atomic_init(&x->refs, refs);
    x->takeover = x->by = 0;
    x->size = size;
    x->m = *m;
    x->m.pos = NULL; /* no history with several loops (config.c) */
    uint8_t *p = x->bytes;
    memcpy(p, m->topic, m->topic_len);
    x->m.topic = (const char *)p;
    p += m->topic_len;
    if (m->reply) {
        memcpy(p, m->reply, m->reply_len);
        x->m.reply = (const char *)p;
        p += m->reply_len;
    }
    if (m->data_len)
        memcpy(p, m->data, m->data_len);
    x->m.data = p;
    return x;
}

/* Appends x to s's inbox (s->mu held); false when out of memory. */
static bool push(slot_t *s, loops_msg_t *x)
{
    if (s->ninbox == s->inbox_cap) {
        uint32_t cap = s->inbox_cap ? s->inbox_cap * 2 : 64;
        loops_msg_t **n = realloc(s->inbox, cap * sizeof(*n));
        if (!n)
            return false;
        s->inbox = n;
        s->inbox_cap = cap;
    }
    s->inbox[s->ninbox++] = x;
    return true;
}

bool loops_publish(broker_t *b, const router_msg_t *m)
{
    loops_t *l = b->loops;
    uint64_t mask = 0;
    void *arg[2] = {l, &mask};
    uv_mutex_lock(&l->interest_mu);
    topics_match(l->interest, m->topic, m->topic_len, mark_loop, arg);
    uv_mutex_unlock(&l->interest_mu);
    mask &= ~(UINT64_C(1) << b->loop_idx);
    if (!mask)
        return true;
    loops_msg_t *x = msg_copy(m, (unsigned)__builtin_popcountll(mask));
    if (!x)
        return false;
    for (uint32_t k = 0; k < l->n; k++) {
        if (!(mask & (UINT64_C(1) << k)))
            continue;
        slot_t *s = &l->slots[k];
        uv_mutex_lock(&s->mu);
        if (!push(s, x)) {
            uv_mutex_unlock(&s->mu);
            msg_unref(x);
            continue;
        }
        s->bytes += x->size;
        bool over = s->bytes > LOOPS_INBOX_MAX;
        if (over)
            s->waiters |= UINT64_C(1) << b->loop_idx;
        uv_mutex_unlock(&s->mu);
        if (over && !b->loops_backlog) {
            b->loops_backlog = true; /* its publishers pause (session.c) until it drains */
            b->m.loops_backlogs++;
        }
        b->loops_wake |= UINT64_C(1) << k;
    }
    return true;
}

bool loops_takeover(broker_t *b, uint32_t loop, uint64_t conn, uint64_t by)
{
    loops_t *l = b->loops;
    loops_msg_t *x = calloc(1, sizeof(*x));
    if (!x)
        return false;
    atomic_init(&x->refs, 1);
    x->takeover = conn;
    x->by = by;
    slot_t *s = &l->slots[loop];
    uv_mutex_lock(&s->mu);
    bool ok = push(s, x);
    uv_mutex_unlock(&s->mu);
    if (!ok) {
        free(x);
        return false;
    }
    b->loops_wake |= UINT64_C(1) << loop;
    return true;
}

/* Delivers what other loops handed to b's loop, in order. */
static void drain(broker_t *b)
{
    slot_t *s = slot_of(b);
    uv_mutex_lock(&s->mu);
    loops_msg_t **items = s->inbox;
    uint32_t n = s->ninbox;
    uint64_t waiters = s->waiters;
    s->inbox = NULL;
    s->ninbox = s->inbox_cap = 0;
    s->bytes = 0;
    s->waiters = 0;
    uv_mutex_unlock(&s->mu);
    loops_t *l = b->loops;
    if (waiters && atomic_load(&l->finished) < l->n) {
        full_fence(l);
        for (uint32_t k = 0; k < l->n; k++)
            if (waiters & (UINT64_C(1) << k)) {
                atomic_store(&l->slots[k].resume, true);
                uv_async_send(&l->slots[k].wake);
            }
    }
    size_t since_flush = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (b->destroyed) {
            ;
        } else if (items[i]->takeover) {
            mqtt_taken_over(b, items[i]->takeover, items[i]->by);
        } else {
            router_deliver(b, &items[i]->m, NULL);
            /* A burst handed over at once must not pile up in the queues (--queue-limit) of
             * readers that keep up: it goes to the sockets in pieces, at the bound a local
             * publisher's burst is flushed at (session.c). */
            if ((since_flush += items[i]->size) >= SESSION_FLUSH_DEFER_BYTES) {
                session_flush_all(b);
                since_flush = 0;
            }
        }
        msg_unref(items[i]);
    }
    free(items);
}

/* Every turn: this loop's counters and gauges for the others' /metrics (its queued bytes,
 * a walk over its sessions, once a second). */
static void publish_metrics(broker_t *b, bool frozen)
{
    slot_t *s = slot_of(b);
    uint64_t now = uv_now(b->loop), queued = s->g.queued_bytes;
    if (now - s->queued_ms >= 1000) {
        s->queued_ms = now;
        queued = 0;
        for (uint32_t i = 0; i < b->nsessions; i++)
            queued += b->sessions[i]->q.bytes;
    }
    metrics_gauges_t g = {.connections = b->nsessions,
                          .subscriptions = topics_subscriptions(b->topics),
                          .handshakes = b->nhandshakes,
                          .queued_bytes = queued};
    cluster_state(b->cluster, &g.redis_shards, &g.redis_up);
    loops_t *l = b->loops;
    uv_mutex_lock(&s->mu);
    s->m = b->m;
    s->g.connections = g.connections;
    s->g.subscriptions = g.subscriptions;
    s->g.handshakes = g.handshakes;
    s->g.queued_bytes = g.queued_bytes;
    s->g.redis_shards = g.redis_shards;
    s->g.redis_up = g.redis_up;
    s->snap_seq = atomic_load(&l->metrics_req);
    s->frozen = frozen;
    uv_mutex_unlock(&s->mu);
    if (atomic_load(&l->sync_waiting)) {
        uv_mutex_lock(&l->sync_mu);
        uv_cond_broadcast(&l->sync_cond);
        uv_mutex_unlock(&l->sync_mu);
    }
}

void loops_sync(broker_t *b)
{
    loops_t *l = b->loops;
    if (!l)
        return;
    uint64_t seq = atomic_fetch_add(&l->metrics_req, 1) + 1;
    atomic_fetch_add(&l->sync_waiting, 1);
    publish_metrics(b, true); /* frozen: this loop does nothing else until it returns */
    wake_all(l);              /* each publishes at the end of its next turn */
    uint64_t deadline = uv_hrtime() + LOOPS_SYNC_NS;
    uv_mutex_lock(&l->sync_mu);
    for (;;) {
        bool all = true;
        for (uint32_t k = 0; k < l->n && all; k++) {
            slot_t *s = &l->slots[k];
            if (k == b->loop_idx || !s->wake_open)
                continue;
            uv_mutex_lock(&s->mu);
            all = s->snap_seq >= seq || s->frozen;
            uv_mutex_unlock(&s->mu);
        }
        uint64_t now = uv_hrtime();
        if (all || now >= deadline)
            break; /* a loop stuck longer: its figures of its last turn */
        uv_cond_timedwait(&l->sync_cond, &l->sync_mu, deadline - now);
    }
    uv_mutex_unlock(&l->sync_mu);
    atomic_fetch_sub(&l->sync_waiting, 1);
    slot_t *s = slot_of(b);
    uv_mutex_lock(&s->mu);
    s->frozen = false;
    uv_mutex_unlock(&s->mu);
}

void loops_turn(broker_t *b)
{
    loops_t *l = b->loops;
    uint64_t wake = b->loops_wake;
    b->loops_wake = 0;
    for (uint32_t k = 0; wake && k < l->n; k++)
        if (wake & (UINT64_C(1) << k)) {
            /* What the inbox got must be seen by the loop the wake-up runs (libuv < 1.53). */
            full_fence(l);
            uv_async_send(&l->slots[k].wake);
        }
    publish_metrics(b, false);
}

void loops_sum(broker_t *b, metrics_t *m, metrics_gauges_t *g)
{
    loops_t *l = b->loops;
    *m = b->m;
    broker_gauges(b, g);
    g->loops = l ? l->n : 1;
    g->loop_connections[b->loop_idx] = g->connections;
    if (!l)
        return;
    uv_mutex_lock(&l->interest_mu);
    g->topics = topics_count(l->interest); /* patterns held on any loop, once */
    uv_mutex_unlock(&l->interest_mu);
    for (uint32_t k = 0; k < l->n; k++) {
        if (k == b->loop_idx)
            continue;
        slot_t *s = &l->slots[k];
        uv_mutex_lock(&s->mu);
        uint64_t *dst = (uint64_t *)m;
        const uint64_t *src = (const uint64_t *)&s->m;
        for (size_t i = 0; i < sizeof(*m) / sizeof(uint64_t); i++)
            dst[i] += src[i];
        g->connections += s->g.connections;
        g->loop_connections[k] = s->g.connections;
        g->subscriptions += s->g.subscriptions;
        g->queued_bytes += s->g.queued_bytes;
        g->handshakes += s->g.handshakes;
        if (s->g.redis_up < g->redis_up) /* healthy when every loop has every shard */
            g->redis_up = s->g.redis_up;
        uv_mutex_unlock(&s->mu);
    }
}

_Static_assert(sizeof(metrics_t) % sizeof(uint64_t) == 0, "metrics_t is summed as uint64_t");

/* --- stop, reload, wake-ups ------------------------------------------------------------ */

void loops_stop(loops_t *l)
{
    atomic_store(&l->stopping, true);
    wake_all(l);
}

void loops_reload(loops_t *l)
{
    atomic_fetch_add(&l->reloads, 1);
    wake_all(l);
}

static void on_wake_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_wake(uv_async_t *h)
{
    broker_t *b = h->data;
    loops_t *l = b->loops;
    slot_t *s = slot_of(b);
    if (atomic_load(&l->finished) == l->n) { /* nobody hands anything over any more */
        drain(b);
        uv_close((uv_handle_t *)h, on_wake_closed);
        return;
    }
    drain(b);
    if (atomic_exchange(&s->resume, false) && b->loops_backlog) {
        b->loops_backlog = false;
        session_resume_all(b); /* the connections paused for the inbox that was drained */
    }
    if (atomic_load(&l->stopping) && !b->stopping)
        broker_stop(b);
    unsigned r = atomic_load(&l->reloads);
    if (r != s->reload_seen) {
        s->reload_seen = r;
        if (b->loop_idx)
            broker_reload(b);
    }
}

void loops_finished(broker_t *b)
{
    loops_t *l = b->loops;
    if (atomic_fetch_add(&l->finished, 1) + 1 == l->n)
        wake_all(l);
}

/* --- the process ----------------------------------------------------------------------- */

static void run_loop(void *arg)
{
    slot_t *s = arg;
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

static loops_t *loops_new(const gale_config_t *cfg)
{
    loops_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->n = (uint32_t)cfg->loops;
    l->slots = calloc(l->n, sizeof(*l->slots));
    l->interest = topics_new();
    l->dedup = cfg->redis_urls[0] ? NULL : dedup_new(cfg->dedup_window_s * 1000, cfg->dedup_max);
    if (cfg->max_connections_per_ip)
        l->ips = iplimit_new((uint32_t)cfg->max_connections_per_ip);
    l->mqtt = mqtt_state_new();
    if (!l->slots || !l->interest || (!cfg->redis_urls[0] && !l->dedup) || !l->mqtt ||
        (cfg->max_connections_per_ip && !l->ips)) {
        free(l->slots);
        topics_free(l->interest);
        dedup_free(l->dedup);
        iplimit_free(l->ips);
        mqtt_state_free(l->mqtt);
        free(l);
        return NULL;
    }
    uv_mutex_init(&l->interest_mu);
    uv_mutex_init(&l->shared_mu);
    uv_mutex_init(&l->sync_mu);
    uv_cond_init(&l->sync_cond);
    for (uint32_t k = 0; k < l->n; k++)
        uv_mutex_init(&l->slots[k].mu);
    return l;
}

static void loops_free(loops_t *l)
{
    for (uint32_t k = 0; k < l->n; k++) {
        slot_t *s = &l->slots[k];
        for (uint32_t i = 0; i < s->ninbox; i++)
            msg_unref(s->inbox[i]);
        free(s->inbox);
        uv_mutex_destroy(&s->mu);
    }
    topics_free(l->interest);
    dedup_free(l->dedup);
    iplimit_free(l->ips);
    mqtt_state_free(l->mqtt);
    uv_mutex_destroy(&l->interest_mu);
    uv_mutex_destroy(&l->shared_mu);
    uv_mutex_destroy(&l->sync_mu);
    uv_cond_destroy(&l->sync_cond);
    free(l->slots);
    free(l);
}

static int run_one(const gale_config_t *cfg)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        log_error("could not create the event loop");
        return 1;
    }
    broker_t *b = broker_start(cfg, &loop, NULL, 0);
    if (!b) {
        log_error("out of memory");
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int code = broker_free(b);
    if (uv_loop_close(&loop) != 0)
        log_warn("event loop closed with handles still open");
    return code;
}

/* --loops not given: the CPUs this process may run on, or 1 where the state is not divided
 * across loops yet (history and presence of a single node). */
static uint64_t default_loops(const gale_config_t *cfg, const char **why)
{
    if (!cfg->redis_urls[0] && (cfg->nhistory || cfg->npresence)) {
        *why = cfg->nhistory ? "--history on a single node keeps one loop for now"
                             : "--presence on a single node keeps one loop for now";
        return 1;
    }
    uint64_t n = uv_available_parallelism();
    *why = "the CPUs this process may run on";
    return n < 1 ? 1 : n > CONFIG_LOOPS_MAX ? CONFIG_LOOPS_MAX : n;
}

int loops_run(const gale_config_t *given)
{
    gale_config_t copy = *given;
    const gale_config_t *cfg = &copy;
    const char *why = "--loops";
    if (!copy.loops)
        copy.loops = default_loops(&copy, &why);
    log_info("loops: %" PRIu64 " (%s)%s", copy.loops, why,
             copy.loops > 1 ? ": each a thread with its own event loop, listener and connections"
                            : "");
    if (copy.loops == 1) {
        int code = run_one(cfg);
        explicit_bzero(&copy, sizeof(copy)); /* a copy of the secrets */
        return code;
    }
    loops_t *l = loops_new(cfg);
    if (!l) {
        log_error("out of memory");
        return 1;
    }
    int code = 0;
    uint32_t started = 0;
    /* One after another on this thread (lws's context creation is not thread-safe), the
     * loops not running yet; then every loop but the first gets its thread. */
    for (uint32_t k = 0; k < l->n; k++) {
        slot_t *s = &l->slots[k];
        if (uv_loop_init(&s->loop) != 0) {
            log_error("could not create event loop %u", k);
            code = 1;
            break;
        }
        uv_async_init(&s->loop, &s->wake, on_wake);
        s->wake_open = true;
        s->b = broker_start(cfg, &s->loop, l, k);
        if (!s->b) {
            log_error("out of memory");
            s->wake_open = false;
            uv_close((uv_handle_t *)&s->wake, NULL);
            uv_run(&s->loop, UV_RUN_DEFAULT);
            uv_loop_close(&s->loop);
            code = 1;
            break;
        }
        s->wake.data = s->b;
        started++;
        if (s->b->exit_code)
            break; /* it has begun its teardown */
    }
    /* A loop that failed: the others stop too (and those never started count as done). */
    if (started < l->n || (started && l->slots[started - 1].b->exit_code)) {
        atomic_fetch_add(&l->finished, l->n - started);
        loops_stop(l);
    }
    for (uint32_t k = 1; k < started; k++)
        l->slots[k].threaded = uv_thread_create(&l->slots[k].thread, run_loop, &l->slots[k]) == 0;
    for (uint32_t k = 1; k < started; k++)
        if (!l->slots[k].threaded) {
            log_error("could not start the thread of loop %u", k);
            loops_stop(l);
        }
    if (started)
        run_loop(&l->slots[0]);
    for (uint32_t k = 1; k < started; k++) {
        if (l->slots[k].threaded)
            uv_thread_join(&l->slots[k].thread);
        else
            run_loop(&l->slots[k]); /* its teardown, here */
    }
    for (uint32_t k = 0; k < started; k++) {
        int c = broker_free(l->slots[k].b);
        if (c > code)
            code = c;
        if (uv_loop_close(&l->slots[k].loop) != 0)
            log_warn("event loop %u closed with handles still open", k);
    }
    loops_free(l);
    explicit_bzero(&copy, sizeof(copy));
    return code;
}
