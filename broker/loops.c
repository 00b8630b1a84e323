#include "loops_internal.h"

#include "broker.h"
#include "cluster.h"
#include "conn.h"
#include "dedup.h"
#include "iplimit.h"
#include "log.h"
#include "router.h"
#include "topics.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

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
void loops_fence(loops_t *l)
{
    atomic_fetch_add_explicit(&l->fence, 1, memory_order_seq_cst);
}

/* Wakes every loop that has its wake-up (set up before any thread starts). */
void loops_wake_all(loops_t *l)
{
    loops_fence(l);
    for (uint32_t k = 0; k < l->n; k++)
        if (l->slots[k].wake_open)
            uv_async_send(&l->slots[k].wake);
}

/* --- interest -------------------------------------------------------------------------- */

/*
 * One index of which loops hold which patterns in which delivery formats (owners: (loop,
 * format) pairs), read by every publish under the read side of one rwlock and changed under
 * its write side, rarely: when a loop's first connection of a format takes a pattern, or its
 * last leaves it. A sub is acknowledged after its change, so a publish that follows the
 * acknowledgement, on any loop, sees it.
 */

/* This loop's connections holding pattern p, by delivery format (the loop's own thread only). */
struct loops_held {
    loops_held_t *hnext;
    uint64_t hash;
    uint32_t count[CONN_FMT_COUNT];
    uint16_t len;
    char p[];
};

static uint64_t hash_pattern(const char *p, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
    return h;
}

/* Where pattern p is or would go in s's table; NULL while the table is empty. */
static loops_held_t **held_slot(slot_t *s, const char *p, size_t len, uint64_t h)
{
    if (!s->held_cap)
        return NULL;
    loops_held_t **e = &s->held[h & (s->held_cap - 1)];
    while (*e && ((*e)->hash != h || (*e)->len != len || memcmp((*e)->p, p, len) != 0))
        e = &(*e)->hnext;
    return e;
}

static bool held_grow(slot_t *s)
{
    uint32_t cap = s->held_cap ? s->held_cap * 2 : 64;
    loops_held_t **t = calloc(cap, sizeof(*t));
    if (!t)
        return false;
    for (uint32_t i = 0; i < s->held_cap; i++)
        for (loops_held_t *e = s->held[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = t[e->hash & (cap - 1)];
            t[e->hash & (cap - 1)] = e;
        }
    free(s->held);
    s->held = t;
    s->held_cap = cap;
    return true;
}

/* b's loop gained (add) or lost pattern p in format fmt. */
static bool change(broker_t *b, bool add, const char *p, size_t len, int fmt)
{
    loops_t *l = b->loops;
    topics_owner_t *o = &l->owners[b->loop_idx * CONN_FMT_COUNT + fmt];
    bool ok = true;
    uv_rwlock_wrlock(&l->interest_lock);
    if (add)
        ok = topics_subscribe(l->interest, o, p, len, NULL) != TOPICS_NOMEM;
    else
        topics_unsubscribe(l->interest, o, p, len, NULL);
    uv_rwlock_wrunlock(&l->interest_lock);
    return ok;
}

bool loops_interest_add(broker_t *b, const char *p, size_t len, int fmt)
{
    slot_t *s = slot_of(b);
    uint64_t h = hash_pattern(p, len);
    loops_held_t **e = held_slot(s, p, len, h);
    if (!e || !*e) {
        if (s->nheld + 1 > s->held_cap / 2 && !held_grow(s))
            return false;
        loops_held_t *n = calloc(1, sizeof(*n) + len);
        if (!n)
            return false;
        n->hash = h;
        n->len = (uint16_t)len;
        memcpy(n->p, p, len);
        e = held_slot(s, p, len, h);
        n->hnext = *e;
        *e = n;
        s->nheld++;
    }
    loops_held_t *x = *e;
    if (x->count[fmt]++ == 0 && !change(b, true, p, len, fmt)) {
        x->count[fmt]--;
        return false;
    }
    return true;
}

void loops_interest_drop(broker_t *b, const char *p, size_t len, int fmt)
{
    slot_t *s = slot_of(b);
    loops_held_t **e = held_slot(s, p, len, hash_pattern(p, len));
    loops_held_t *x = e ? *e : NULL;
    if (!x || !x->count[fmt])
        return;
    if (--x->count[fmt] == 0)
        change(b, false, p, len, fmt);
    for (int f = 0; f < CONN_FMT_COUNT; f++)
        if (x->count[f])
            return;
    *e = x->hnext;
    s->nheld--;
    free(x);
}

static void mark_loop(topics_owner_t *owner, void *arg)
{
    loops_match_t *x = arg;
    uint32_t i = (uint32_t)(owner - x->l->owners);
    x->loops |= UINT64_C(1) << (i / CONN_FMT_COUNT);
    x->fmts |= 1u << (i % CONN_FMT_COUNT);
}

/* --- inboxes --------------------------------------------------------------------------- */

void loops_msg_unref(loops_msg_t *x)
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
    atomic_store(&s->pending, s->ninbox);
    return true;
}

bool loops_publish(broker_t *b, const router_msg_t *m, uint32_t *fmts)
{
    loops_t *l = b->loops;
    loops_match_t match = {.l = l};
    uv_rwlock_rdlock(&l->interest_lock);
    topics_match_shared(l->interest, m->topic, m->topic_len, mark_loop, &match);
    uv_rwlock_rdunlock(&l->interest_lock);
    uint64_t mask = match.loops & ~(UINT64_C(1) << b->loop_idx);
    *fmts = mask ? match.fmts : 0;
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
            loops_msg_unref(x);
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

bool loops_pending(broker_t *b)
{
    return atomic_load(&slot_of(b)->pending) != 0;
}

/* Delivers what other loops handed to b's loop, in order. */
static void drain(broker_t *b, bool may_flush)
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
    atomic_store(&s->pending, 0);
    uv_mutex_unlock(&s->mu);
    loops_t *l = b->loops;
    if (waiters && atomic_load(&l->finished) < l->n) {
        loops_fence(l);
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
            l->handlers.takeover(b, items[i]->takeover, items[i]->by);
        } else {
            router_deliver(b, &items[i]->m, NULL);
            b->deferred_bytes += items[i]->m.data_len; /* the flush's deferral bound */
            /* A burst handed over at once must not pile up in the queues (--queue-limit) of
             * readers that keep up: it goes to the sockets in pieces, at the bound a local
             * publisher's burst is flushed at. */
            if ((since_flush += items[i]->size) >= BROKER_FLUSH_DEFER_BYTES && may_flush) {
                l->handlers.flush(b);
                since_flush = 0;
            }
        }
        loops_msg_unref(items[i]);
    }
    free(items);
}

void loops_drain(broker_t *b)
{
    drain(b, true);
}

void loops_catch_up(broker_t *b)
{
    /* Inside an lws callback: the queues go to the sockets at the end of the turn. */
    if (atomic_load(&slot_of(b)->pending))
        drain(b, false);
}

/* Every turn: this loop's counters and gauges for the others' /metrics. */
static void publish_metrics(broker_t *b, bool frozen)
{
    slot_t *s = slot_of(b);
    loops_t *l = b->loops;
    /* Summed by the 1 s sweep (broker.c); now, when /metrics asked for current figures. */
    uint64_t queued =
        atomic_load(&l->metrics_req) != s->snap_seq ? l->handlers.queued(b) : b->queued_bytes;
    metrics_gauges_t g = {.connections = b->nsessions,
                          .subscriptions = topics_subscriptions(b->topics),
                          .handshakes = b->nhandshakes,
                          .queued_bytes = queued};
    cluster_state(b->cluster, &g.redis_shards, &g.redis_up);
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
    loops_wake_all(l);        /* each publishes at the end of its next turn */
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
            loops_fence(l);
            uv_async_send(&l->slots[k].wake);
        }
    publish_metrics(b, false);
}

void loops_sum(broker_t *b, metrics_t *m, metrics_gauges_t *g)
{
    loops_t *l = b->loops;
    *m = b->m;
    g->loops = l ? l->n : 1;
    g->loop_connections[b->loop_idx] = g->connections;
    if (!l)
        return;
    uv_rwlock_rdlock(&l->interest_lock);
    g->topics = topics_count(l->interest); /* patterns held on any loop, once */
    uv_rwlock_rdunlock(&l->interest_lock);
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
    loops_wake_all(l);
}

void loops_reload(loops_t *l)
{
    atomic_fetch_add(&l->reloads, 1);
    loops_wake_all(l);
}

void loops_finished(broker_t *b)
{
    loops_t *l = b->loops;
    if (atomic_fetch_add(&l->finished, 1) + 1 == l->n)
        loops_wake_all(l);
}

/* --- creation ------------------------------------------------------------------------ */

loops_t *loops_new(const gale_config_t *cfg, struct mqtt_state *mqtt,
                   const loops_handlers_t *handlers)
{
    loops_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->n = (uint32_t)cfg->loops;
    l->slots = calloc(l->n, sizeof(*l->slots));
    l->interest = topics_new();
    l->owners = calloc((size_t)l->n * CONN_FMT_COUNT, sizeof(*l->owners));
    l->dedup = cfg->redis_urls[0] ? NULL : dedup_new(cfg->dedup_window_s * 1000, cfg->dedup_max);
    if (cfg->max_connections_per_ip)
        l->ips = iplimit_new((uint32_t)cfg->max_connections_per_ip);
    l->mqtt = mqtt;
    l->handlers = *handlers;
    if (!l->slots || !l->interest || !l->owners || (!cfg->redis_urls[0] && !l->dedup) || !l->mqtt ||
        (cfg->max_connections_per_ip && !l->ips)) {
        free(l->slots);
        topics_free(l->interest);
        free(l->owners);
        dedup_free(l->dedup);
        iplimit_free(l->ips);
        free(l);
        return NULL;
    }
    uv_rwlock_init(&l->interest_lock);
    uv_mutex_init(&l->shared_mu);
    uv_mutex_init(&l->sync_mu);
    uv_cond_init(&l->sync_cond);
    for (uint32_t k = 0; k < l->n; k++)
        uv_mutex_init(&l->slots[k].mu);
    return l;
}

struct mqtt_state *loops_free(loops_t *l)
{
    struct mqtt_state *mqtt = l->mqtt;
    for (uint32_t k = 0; k < l->n; k++) {
        slot_t *s = &l->slots[k];
        for (uint32_t i = 0; i < s->ninbox; i++)
            loops_msg_unref(s->inbox[i]);
        free(s->inbox);
        for (uint32_t i = 0; i < s->held_cap; i++)
            for (loops_held_t *e = s->held[i], *next; e; e = next) {
                next = e->hnext;
                free(e);
            }
        free(s->held);
        uv_mutex_destroy(&s->mu);
    }
    topics_free(l->interest);
    free(l->owners);
    dedup_free(l->dedup);
    iplimit_free(l->ips);
    uv_rwlock_destroy(&l->interest_lock);
    uv_mutex_destroy(&l->shared_mu);
    uv_mutex_destroy(&l->sync_mu);
    uv_cond_destroy(&l->sync_cond);
    free(l->slots);
    free(l);
    return mqtt;
}
