/*
 * cluster_history: topics with history in a cluster (docs/ARCHITECTURE.md "History in a
 * cluster"). Redis holds each topic's position and stream (cluster_wire.h); this file
 * keeps, per topic a local connection uses, what the broker knows of it: a cstream.
 *
 * Live messages
 * -------------
 * A message of a topic with history reaches every broker, its origin included, from
 * Redis's pub/sub copy (envelope tail 9, in offset order on the shard's connection).
 * chist_message delivers it when it follows the last offset delivered (`last`); one at or
 * below `last` is a copy already delivered; one above `last` + 1 means messages were lost
 * on the way (a reconnection, a lost pub/sub message): it is held, and a read of the
 * stream fills the gap before anything more is delivered. A new epoch starts over at 0.
 *
 * Reads
 * -----
 * One read of a topic is in flight at a time, the read script run on its shard (its
 * position, and the stream entries after an offset). While it is, live messages of the
 * topic are held, in arrival order. A `sub` of the topic (cluster_recover) first makes the
 * topic live here (cluster_sub: Redis confirmed the SUBSCRIBE, so whatever is published
 * after the read is seen live), then waits for the next read: every sub that arrives while
 * a read is in flight shares the next one, so a reconnect storm of N clients costs Redis a
 * couple of reads, not N. The read starts at the smallest offset any of them, or the live
 * catch-up, needs (at most --recovery-max back). When it answers: live subscribers get the
 * entries after `last`; each waiting sub gets, when its epoch is the stream's and every
 * message after its offset is there and fresh (TTL), those messages, then its answer
 * (recovered, ep, off = the read's top) and becomes live; then the held messages go
 * through the live path, in order, to everyone. Until then the router skips a waiting
 * connection for that topic (conn.h waits), so it never sees a message twice or out of
 * order.
 */
#include "cluster_internal.h"
#include "conn.h"
#include "frame.h"
#include "history.h"
#include "log.h"
#include "router.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A stream unused this long (no read, no sub, no message) is forgotten. */
#define CSTREAM_IDLE_MS 60000
#define SWEEP_EVERY_MS 1000

enum { READ_STREAM = 1, READ_HIST = 2 };

typedef struct cstream cstream_t;

typedef struct joiner {
    struct joiner *next;
    pending_t confirm; /* the topic is live here (cluster_sub) */
    pending_t *done;   /* the core's answer */
    conn_t *conn;      /* NULL once it closed */
    cstream_t *s;
    bool has_since;
    uint64_t since;
    uint8_t ep_len; /* > GALE_EP_MAX: since names no epoch */
    char ep[GALE_EP_MAX];
} joiner_t;

typedef struct held {
    struct held *next;
    size_t len;
    uint8_t env[];
} held_t;

/* A recent message of a stream, kept to serve recoveries without reading Redis. */
typedef struct cached {
    struct cached *next;
    uint64_t off;
    frame_t *frames[GALE_ENC_COUNT]; /* built on first need */
    size_t len;
    uint8_t env[];
} cached_t;

struct cstream {
    uint8_t what; /* READ_STREAM: the ctx of its reads */
    cstream_t *hnext;
    uint64_t hash;
    shard_t *sh;
    const gale_history_rule_t *rule;   /* NULL: this broker has no --history for it */
    joiner_t *waiting, **waiting_tail; /* confirmed, for the next read */
    joiner_t *reading;                 /* served by the read in flight */
    held_t *held, **held_tail;         /* live messages held while a read is in flight */
    uint64_t last;                     /* the last offset delivered live (when known) */
    uint64_t read_from;                /* the read in flight: entries after this offset */
    uint64_t used_ms;
    pending_t live; /* the catch-up after a reconnection waits for the
                       topic's SUBSCRIBE (cluster_when_live) */
    bool known;
    bool read_inflight;
    bool repair;   /* the read in flight fills a gap of live subscribers */
    bool cache_ok; /* cache holds every message after cache_base up to last */
    cached_t *cache, **cache_tail;
    uint32_t ncache;
    uint64_t cache_base; /* the offset before the first cached message */
    uint64_t cache_used_ms;
    bool confirming; /* live is held by the cluster */
    uint8_t ep_len;
    char ep[GALE_EP_MAX];
    uint8_t len;
    char topic[];
};

typedef struct {
    uint8_t what; /* READ_HIST */
    pending_t *done;
    uint64_t ttl_ms, limit;
    uint64_t id;
    bool has_id;
    uint8_t enc;
    uint8_t len;
    char topic[];
} hist_read_t;

struct chist {
    cstream_t **buckets;
    size_t nbuckets, n;
    uint64_t swept_ms;
    uint64_t cache_bytes; /* of every stream's cache, bounded by --history-memory */
};

/* A stream's cache is dropped when no sub used it for this long. */
#define CACHE_IDLE_MS 10000

static broker_t *B(cluster_t *c)
{
    return c->b;
}

static uint64_t now_ms(cluster_t *c)
{
    return uv_now(c->b->loop);
}

static void cache_drop(cluster_t *c, cstream_t *s);

/* --- the table ------------------------------------------------------------ */

bool chist_init(cluster_t *c)
{
    c->hist = calloc(1, sizeof(*c->hist));
    if (!c->hist)
        return false;
    c->hist->nbuckets = 64;
    c->hist->buckets = calloc(c->hist->nbuckets, sizeof(*c->hist->buckets));
    return c->hist->buckets != NULL;
}

static void held_free_all(cstream_t *s)
{
    for (held_t *h = s->held, *next; h; h = next) {
        next = h->next;
        free(h);
    }
    s->held = NULL;
    s->held_tail = &s->held;
}

void chist_free(cluster_t *c)
{
    chist_t *h = c->hist;
    if (!h)
        return;
    for (size_t i = 0; h->buckets && i < h->nbuckets; i++) {
        for (cstream_t *s = h->buckets[i], *next; s; s = next) {
            next = s->hnext;
            held_free_all(s);
            cache_drop(c, s);
            free(s);
        }
    }
    free(h->buckets);
    free(h);
    c->hist = NULL;
}

static cstream_t *cstream_find(chist_t *h, const char *t, size_t len, uint64_t hash)
{
    for (cstream_t *s = h->buckets[hash & (h->nbuckets - 1)]; s; s = s->hnext)
        if (s->hash == hash && s->len == len && memcmp(s->topic, t, len) == 0)
            return s;
    return NULL;
}

static void table_grow(chist_t *h)
{
    size_t n = h->nbuckets * 2;
    cstream_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < h->nbuckets; i++) {
        for (cstream_t *s = h->buckets[i], *next; s; s = next) {
            next = s->hnext;
            s->hnext = nb[s->hash & (n - 1)];
            nb[s->hash & (n - 1)] = s;
        }
    }
    free(h->buckets);
    h->buckets = nb;
    h->nbuckets = n;
}

/* The stream of topic t, made when missing (NULL: out of memory). */
static cstream_t *cstream_get(cluster_t *c, const char *t, size_t len)
{
    chist_t *h = c->hist;
    uint64_t hash = cluster_hash64(t, len);
    cstream_t *s = cstream_find(h, t, len, hash);
    if (s || len > GALE_TOPIC_MAX)
        return s;
    if (!(s = calloc(1, sizeof(*s) + len)))
        return NULL;
    s->what = READ_STREAM;
    s->hash = hash;
    s->sh = cluster_shard_of(c, t, len);
    s->rule = history_match(c->b->cfg.history, c->b->cfg.nhistory, t, len);
    s->waiting_tail = &s->waiting;
    s->held_tail = &s->held;
    s->cache_tail = &s->cache;
    s->len = (uint8_t)len;
    memcpy(s->topic, t, len);
    s->used_ms = now_ms(c);
    if (h->n >= h->nbuckets)
        table_grow(h);
    s->hnext = h->buckets[hash & (h->nbuckets - 1)];
    h->buckets[hash & (h->nbuckets - 1)] = s;
    h->n++;
    return s;
}

static bool cstream_busy(const cstream_t *s)
{
    return s->read_inflight || s->waiting || s->reading || s->held || s->confirming;
}

void chist_sweep(cluster_t *c)
{
    chist_t *h = c->hist;
    uint64_t now = now_ms(c);
    if (!h || now - h->swept_ms < SWEEP_EVERY_MS)
        return;
    h->swept_ms = now;
    for (size_t i = 0; i < h->nbuckets; i++) {
        cstream_t **pp = &h->buckets[i];
        while (*pp) {
            cstream_t *s = *pp;
            if (s->cache_ok && now - s->cache_used_ms > CACHE_IDLE_MS)
                cache_drop(c, s);
            if (!cstream_busy(s) && now - s->used_ms > CSTREAM_IDLE_MS) {
                *pp = s->hnext;
                h->n--;
                free(s);
            } else {
                pp = &s->hnext;
            }
        }
    }
}

static void start_read(cluster_t *c, cstream_t *s, uint64_t from);

void chist_shard_down(cluster_t *c, shard_t *sh)
{
    chist_t *h = c->hist;
    for (size_t i = 0; h && i < h->nbuckets; i++)
        for (cstream_t *s = h->buckets[i]; s; s = s->hnext)
            if (s->sh == sh)
                cache_drop(c, s); /* messages may be missed until the catch-up */
}

void chist_released(cluster_t *c, const char *t, size_t len)
{
    cstream_t *s = c->hist ? cstream_find(c->hist, t, len, cluster_hash64(t, len)) : NULL;
    if (s)
        cache_drop(c, s); /* its messages stop coming */
}

/* The topic is live again (its SUBSCRIBE confirmed): read what was missed meanwhile. */
static void catch_up(broker_t *b, pending_t *p, gale_err_t e, const char *why)
{
    cstream_t *s = (cstream_t *)((char *)p - offsetof(cstream_t, live));
    s->confirming = false;
    if (e == GALE_OK && s->known && !s->read_inflight) {
        s->repair = true;
        start_read(b->cluster, s, s->last);
    }
}

void chist_shard_ready(cluster_t *c, shard_t *sh)
{
    /*
     * Messages published while the shard was away were not seen: once the topic's
     * SUBSCRIBE is confirmed again (so nothing published after the read can be missed),
     * read what follows the last one delivered. A later message would reveal the gap too;
     * this does not wait for one.
     */
    chist_t *h = c->hist;
    for (size_t i = 0; h && i < h->nbuckets; i++) {
        for (cstream_t *s = h->buckets[i]; s; s = s->hnext) {
            if (s->sh != sh || !s->known || s->read_inflight || s->confirming)
                continue;
            s->live.done = catch_up;
            s->live.out = NULL;
            if (cluster_when_live(c, s->topic, s->len, &s->live))
                s->confirming = true;
            else
                catch_up(c->b, &s->live, GALE_OK, "");
        }
    }
}

/* --- waits of connections ------------------------------------------------- */

static bool waits_add(conn_t *k, const void *s, void *j)
{
    conn_waits_t *w = k->waits;
    if (!w && !(w = k->waits = calloc(1, sizeof(*w))))
        return false;
    if (w->n == w->cap) {
        uint32_t cap = w->cap ? w->cap * 2 : 4;
        conn_wait_t *on = realloc(w->on, cap * sizeof(*on));
        if (!on)
            return false;
        w->on = on;
        w->cap = cap;
    }
    w->on[w->n++] = (conn_wait_t){.stream = s, .joiner = j};
    return true;
}

static void waits_remove(conn_t *k, const void *j)
{
    conn_waits_t *w = k ? k->waits : NULL;
    for (uint32_t i = 0; w && i < w->n; i++) {
        if (w->on[i].joiner == j) {
            w->on[i] = w->on[--w->n];
            break;
        }
    }
    if (w && w->n == 0) {
        free(w->on);
        free(w);
        k->waits = NULL;
    }
}

void cluster_forget(void *bus, conn_t *k)
{
    conn_waits_t *w = k->waits;
    cretain_forget(bus, k);
    /* Whatever its joiners wait for (the topic's confirmation, a read), they deliver
     * nothing to k from now on; they finish as usual. */
    for (uint32_t i = 0; w && i < w->n; i++)
        ((joiner_t *)w->on[i].joiner)->conn = NULL;
    if (w) {
        free(w->on);
        free(w);
        k->waits = NULL;
    }
}

/* --- delivering ----------------------------------------------------------- */

static void hold(cstream_t *s, const uint8_t *env, size_t len)
{
    held_t *h = malloc(sizeof(*h) + len);
    if (!h) {
        log_error("history %.*s: out of memory holding a message: it is lost here", s->len,
                  s->topic);
        return;
    }
    h->next = NULL;
    h->len = len;
    memcpy(h->env, env, len);
    *s->held_tail = h;
    s->held_tail = &h->next;
}

/* --- the cache of recent messages ----------------------------------------- */

/*
 * After a read, a stream keeps the entries it read and every live message delivered since
 * (consecutive up to `last`), so a recovery that arrives when no read is in flight and
 * whose position is among them is served here: a reconnect storm costs Redis the reads in
 * flight when it starts, not one per round trip while it lasts. The cache is valid only
 * while the topic is followed without a break: it goes when the topic's SUBSCRIBE is
 * released, its shard goes down, a message does not follow, or the epoch changes.
 */
static void cache_pop(cluster_t *c, cstream_t *s)
{
    cached_t *x = s->cache;
    s->cache = x->next;
    if (!s->cache)
        s->cache_tail = &s->cache;
    s->ncache--;
    s->cache_base = x->off;
    c->hist->cache_bytes -= sizeof(*x) + x->len;
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        if (x->frames[e])
            c->hist->cache_bytes -= x->frames[e]->len;
        frame_unref(x->frames[e]);
    }
    free(x);
}

static void cache_drop(cluster_t *c, cstream_t *s)
{
    while (s->cache)
        cache_pop(c, s);
    s->cache_tail = &s->cache;
    s->cache_ok = false;
}

/* Starts an empty cache after offset base (the stream's last). */
static void cache_start(cluster_t *c, cstream_t *s, uint64_t base)
{
    cache_drop(c, s);
    if (s->rule && s->rule->ttl_ms)
        return; /* cached messages carry no time: recoveries of TTL topics read Redis */
    s->cache_ok = true;
    s->cache_base = base;
    s->cache_used_ms = now_ms(c);
}

static void cache_add(cluster_t *c, cstream_t *s, uint64_t off, const uint8_t *raw, size_t len)
{
    if (!s->cache_ok)
        return;
    cached_t *x = off == s->cache_base + s->ncache + 1 ? malloc(sizeof(*x) + len) : NULL;
    if (!x) {
        cache_drop(c, s); /* not consecutive (or out of memory): no longer complete */
        return;
    }
    *x = (cached_t){.off = off, .len = len};
    memcpy(x->env, raw, len);
    *s->cache_tail = x;
    s->cache_tail = &x->next;
    s->ncache++;
    c->hist->cache_bytes += sizeof(*x) + len;
    while (s->ncache > c->b->cfg.recovery_max ||
           (s->cache && c->hist->cache_bytes > c->b->cfg.history_memory))
        cache_pop(c, s);
}

static frame_t *cached_frame(cluster_t *c, cached_t *x, gale_enc_t enc)
{
    cluster_envelope_t e;
    const char *why;
    if (x->frames[enc])
        return x->frames[enc];
    if (!cluster_envelope_decode(x->env, x->len, CLUSTER_DATA_MAX, &e, &why))
        return NULL;
    gale_pos_t pos = {.ep = e.ep, .ep_len = e.ep_len, .off = e.off};
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (gale_encode_msg_reply(&buf, enc, e.topic, e.topic_len, &pos, e.reply, e.reply_len, e.enc,
                              e.data, e.data_len) != GALE_OK) {
        gale_buf_free(&buf);
        return NULL;
    }
    x->frames[enc] = frame_finish(&buf, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    if (x->frames[enc])
        c->hist->cache_bytes += x->frames[enc]->len;
    return x->frames[enc];
}

/* Delivers e (of s's topic, tail 9; raw: its bytes) to the live subscribers, skipping those
 * waiting on s. */
static void deliver_live(cluster_t *c, cstream_t *s, const cluster_envelope_t *e,
                         const uint8_t *raw, size_t len)
{
    gale_pos_t pos = {.ep = e->ep, .ep_len = e->ep_len, .off = e->off};
    (void)cluster_deliver(c, e, &pos, s);
    s->last = e->off;
    cache_add(c, s, e->off, raw, len);
}

/* A live message of s (raw: its envelope bytes, e: decoded), in the order Redis sent it. */
static void live(cluster_t *c, cstream_t *s, const cluster_envelope_t *e, const uint8_t *raw,
                 size_t len)
{
    s->used_ms = now_ms(c);
    if (s->read_inflight) {
        hold(s, raw, len);
        return;
    }
    bool same = s->known && e->ep_len == s->ep_len && memcmp(e->ep, s->ep, e->ep_len) == 0;
    if (!same) {
        /* Unknown so far (take it as it comes), or a new epoch (from its start). */
        memcpy(s->ep, e->ep, e->ep_len);
        s->ep_len = (uint8_t)e->ep_len;
        s->last = s->known ? 0 : e->off - 1;
        s->known = true;
        cache_drop(c, s);
    }
    if (e->off <= s->last) {
        B(c)->m.redis_duplicates++;
        return;
    }
    if (e->off > s->last + 1) {
        hold(s, raw, len);
        s->repair = true;
        start_read(c, s, s->last);
        return;
    }
    deliver_live(c, s, e, raw, len);
}

void chist_message(cluster_t *c, const cluster_envelope_t *e, const uint8_t *raw, size_t len)
{
    cstream_t *s = cstream_get(c, e->topic, e->topic_len);
    if (!s) {
        gale_pos_t pos = {.ep = e->ep, .ep_len = e->ep_len, .off = e->off};
        (void)cluster_deliver(c, e, &pos, NULL);
        return;
    }
    live(c, s, e, raw, len);
}

/* --- reads ---------------------------------------------------------------- */

/* Sends the read script for s: entries after `from` (and its position). */
static bool send_read(cluster_t *c, shard_t *sh, void *ctx, const char *topic, size_t len,
                      const char *mode, uint64_t n, uint64_t max, uint64_t ttl_ms)
{
    char hkey[CLUSTER_KEY_MAX], skey[CLUSTER_KEY_MAX], nums[3][24], ep[24];
    const char *prefix = c->b->cfg.redis_prefix;
    size_t hl = cluster_key(hkey, sizeof(hkey), prefix, c->prefix_len, 'h', topic, len, NULL, 0);
    size_t sl = cluster_key(skey, sizeof(skey), prefix, c->prefix_len, 's', topic, len, NULL, 0);
    size_t el = (size_t)snprintf(ep, sizeof(ep), "%016" PRIx64, cluster_random(c));
    const char *argv[] = {"EVALSHA", c->sha_read, "2",     hkey, skey,
                          mode,      nums[0],     nums[1], ep,   nums[2]};
    size_t lens[] = {7,
                     40,
                     1,
                     hl,
                     sl,
                     strlen(mode),
                     (size_t)snprintf(nums[0], 24, "%" PRIu64, n),
                     (size_t)snprintf(nums[1], 24, "%" PRIu64, max),
                     el,
                     (size_t)snprintf(nums[2], 24, "%" PRIu64, ttl_ms)};
    return cluster_send(sh, CMD_READ, ctx, 0, 10, argv, lens);
}

static void finish_joiner(cluster_t *c, joiner_t *j, gale_err_t e, const char *why)
{
    waits_remove(j->conn, j);
    pending_finish(B(c), j->done, e, why);
    free(j);
}

/* Fails every joiner of list (the read could not be made or answered). */
static void fail_joiners(cluster_t *c, joiner_t *list, const char *why)
{
    for (joiner_t *j = list, *next; j; j = next) {
        next = j->next;
        finish_joiner(c, j, GALE_ERR_UNAVAILABLE, why);
    }
}

/*
 * Delivers what s holds, in order. repair: through the live path (a gap may start a read
 * again). Otherwise the stream cannot be read (Redis is away): each goes out as it is, its
 * gaps unfilled (they are lost here), rather than waiting.
 */
static void release_held(cluster_t *c, cstream_t *s, bool repair)
{
    held_t *list = s->held;
    s->held = NULL;
    s->held_tail = &s->held;
    if (!repair)
        cache_drop(c, s);
    while (list) {
        held_t *h = list;
        list = h->next;
        cluster_envelope_t e;
        const char *why;
        if (cluster_envelope_decode(h->env, h->len, CLUSTER_DATA_MAX, &e, &why) && e.tail == 9) {
            bool same = s->known && e.ep_len == s->ep_len && !memcmp(e.ep, s->ep, e.ep_len);
            if (repair) {
                live(c, s, &e, h->env, h->len);
            } else if (!same || e.off > s->last) {
                memcpy(s->ep, e.ep, e.ep_len);
                s->ep_len = (uint8_t)e.ep_len;
                s->known = true;
                deliver_live(c, s, &e, h->env, h->len);
            }
        }
        free(h);
    }
}

static void start_read(cluster_t *c, cstream_t *s, uint64_t from)
{
    if (s->read_inflight)
        return;
    uint64_t max = c->b->cfg.recovery_max;
    /* The joiners' offsets of the stream's epoch (or any, while it is not known). */
    for (joiner_t *j = s->waiting; j; j = j->next) {
        bool same = !s->known || (j->ep_len == s->ep_len && !memcmp(j->ep, s->ep, s->ep_len));
        if (j->has_since && same && j->since < from)
            from = j->since;
    }
    s->reading = s->waiting;
    s->waiting = NULL;
    s->waiting_tail = &s->waiting;
    s->read_inflight = true;
    s->read_from = from;
    s->used_ms = now_ms(c);
    if (!send_read(c, s->sh, s, s->topic, s->len, "range", from, max,
                   s->rule ? s->rule->ttl_ms : 0)) {
        s->read_inflight = false;
        s->repair = false;
        joiner_t *list = s->reading;
        s->reading = NULL;
        fail_joiners(c, list, "the cluster bus (Redis) is unreachable");
        release_held(c, s, false);
    }
}

/* One stream entry of a read: [id, [field, value, ...]] with e (the envelope) and t. */
typedef struct {
    cluster_envelope_t e;
    const uint8_t *raw; /* the envelope's bytes (in the reply) */
    size_t raw_len;
    uint64_t t_ms;
    frame_t *frames[GALE_ENC_COUNT];
} entry_t;

/* Decodes the entries of a read; false when one is malformed. Sets *n. */
static bool read_entries(const redis_value_t *arr, entry_t *out, size_t *n, const char *ep,
                         size_t ep_len)
{
    size_t count = redis_value_count(arr);
    *n = 0;
    for (size_t i = 0; i < count; i++) {
        const redis_value_t *fields = redis_value_at(redis_value_at(arr, i), 1);
        const char *env = NULL, *t = NULL;
        size_t env_len = 0, t_len = 0;
        for (size_t k = 0; k + 1 < redis_value_count(fields); k += 2) {
            size_t fl;
            const char *f = redis_value_str(redis_value_at(fields, k), &fl);
            if (f && fl == 1 && f[0] == 'e')
                env = redis_value_str(redis_value_at(fields, k + 1), &env_len);
            else if (f && fl == 1 && f[0] == 't')
                t = redis_value_str(redis_value_at(fields, k + 1), &t_len);
        }
        entry_t *x = &out[*n];
        const char *why;
        memset(x, 0, sizeof(*x));
        if (!env ||
            !cluster_envelope_decode((const uint8_t *)env, env_len, CLUSTER_DATA_MAX, &x->e,
                                     &why) ||
            x->e.tail != 9 || x->e.ep_len != ep_len || memcmp(x->e.ep, ep, ep_len) != 0)
            return false;
        x->raw = (const uint8_t *)env;
        x->raw_len = env_len;
        char tb[24];
        size_t tl = t_len < sizeof(tb) - 1 ? t_len : sizeof(tb) - 1;
        memcpy(tb, t ? t : "0", t ? tl : 1);
        tb[t ? tl : 1] = '\0';
        x->t_ms = strtoull(tb, NULL, 10);
        (*n)++;
    }
    return true;
}

static frame_t *entry_frame(entry_t *x, gale_enc_t enc)
{
    if (x->frames[enc])
        return x->frames[enc];
    gale_pos_t pos = {.ep = x->e.ep, .ep_len = x->e.ep_len, .off = x->e.off};
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (gale_encode_msg_reply(&buf, enc, x->e.topic, x->e.topic_len, &pos, x->e.reply,
                              x->e.reply_len, x->e.enc, x->e.data, x->e.data_len) != GALE_OK) {
        gale_buf_free(&buf);
        return NULL;
    }
    return x->frames[enc] = frame_finish(&buf, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
}

/*
 * Replays to j's connection the entries after its offset, when they are all there, fresh,
 * few enough and fit its queue. Returns whether it recovered.
 */
static bool replay(cluster_t *c, cstream_t *s, joiner_t *j, const char *ep, size_t ep_len,
                   uint64_t top, entry_t *ents, size_t n)
{
    broker_t *b = B(c);
    if (!j->has_since || j->ep_len != ep_len || memcmp(j->ep, ep, ep_len) != 0 || j->since > top ||
        top - j->since > b->cfg.recovery_max)
        return false;
    if (j->since == top)
        return true;
    /* ents hold consecutive offsets up to top: find since + 1 */
    if (!n || ents[0].e.off > j->since + 1 || ents[n - 1].e.off != top)
        return false;
    size_t first = (size_t)(j->since + 1 - ents[0].e.off);
    uint64_t ttl = s->rule ? s->rule->ttl_ms : 0, now = cluster_wall_ms(), bytes = 0;
    gale_enc_t enc = (gale_enc_t)j->conn->enc;
    for (size_t i = first; i < n; i++) {
        if (ttl && now >= ents[i].t_ms && now - ents[i].t_ms >= ttl)
            return false; /* expired */
        frame_t *f = entry_frame(&ents[i], enc);
        if (!f)
            return false; /* out of memory (the origin refused unconvertible data) */
        bytes += f->len;
    }
    if (bytes > b->cfg.queue_limit / 2)
        return false;
    for (size_t i = first; i < n; i++) {
        frame_t *f = ents[i].frames[enc];
        if (f && !j->conn->ops->deliver(b, j->conn, f))
            return false;
        b->m.messages_replayed += f != NULL;
    }
    return true;
}

/* The answer to a read of s. */
static void stream_reply(cluster_t *c, cstream_t *s, redis_conn_reply_t answer,
                         const redis_value_t *v)
{
    broker_t *b = B(c);
    joiner_t *list = s->reading;
    size_t ep_len = 0, n = 0;
    const char *ep =
        answer == REDIS_CONN_REPLY_OK ? redis_value_str(redis_value_at(v, 0), &ep_len) : NULL;
    const redis_value_t *arr = redis_value_at(v, 2);
    long long topv = redis_value_int(redis_value_at(v, 1));
    entry_t *ents = NULL;
    bool repair = s->repair;
    s->reading = NULL;
    s->read_inflight = false;
    s->repair = false;
    if (ep && ep_len && ep_len <= GALE_EP_MAX && topv >= 0 &&
        (ents = calloc(redis_value_count(arr) + 1, sizeof(*ents))) &&
        !read_entries(arr, ents, &n, ep, ep_len)) {
        log_warn("history %.*s: a stream entry is malformed: reading it as missing", s->len,
                 s->topic);
        n = 0; /* consecutive from the start only: drop everything */
    }
    if (!ep || !ep_len || ep_len > GALE_EP_MAX || topv < 0 || !ents) {
        if (answer == REDIS_CONN_REPLY_OK)
            log_error("history %.*s: the read script answered something unexpected", s->len,
                      s->topic);
        free(ents);
        fail_joiners(c, list, "the cluster bus (Redis) did not answer the read");
        release_held(c, s, false);
        return;
    }
    uint64_t top = (uint64_t)topv;
    /* Keep only entries consecutive from the first (a malformed one ends them). */
    for (size_t i = 1; i < n; i++)
        if (ents[i].e.off != ents[0].e.off + i) {
            n = i;
            break;
        }

    /* Live subscribers: what they missed (a gap) from the stream. */
    bool same = s->known && ep_len == s->ep_len && memcmp(ep, s->ep, ep_len) == 0;
    cache_drop(c, s); /* rebuilt below from what was read */
    if (s->known && !same) {
        /*
         * The stream has a new epoch (Redis lost its data): its live subscribers get it
         * from its start, so read it again from 0, the joiners waiting for that read; live
         * messages stay held meanwhile.
         */
        free(ents);
        memcpy(s->ep, ep, ep_len);
        s->ep_len = (uint8_t)ep_len;
        s->last = 0;
        for (joiner_t *j = list, *next; j; j = next) {
            next = j->next;
            j->next = s->waiting;
            s->waiting = j;
            if (s->waiting_tail == &s->waiting)
                s->waiting_tail = &j->next;
        }
        s->repair = true;
        start_read(c, s, 0);
        return;
    }
    if (same) {
        uint64_t before = s->last;
        for (size_t i = 0; i < n; i++)
            if (ents[i].e.off > s->last && ents[i].e.off <= top)
                deliver_live(c, s, &ents[i].e, ents[i].raw, ents[i].raw_len);
        b->m.history_gaps += repair && s->last != before;
    }
    memcpy(s->ep, ep, ep_len);
    s->ep_len = (uint8_t)ep_len;
    if (!same || s->last < top)
        s->last = top; /* what the stream lacks is lost for good */
    s->known = true;
    /* The cache: what was read, when it reaches the top (then live messages extend it). */
    if (n && ents[n - 1].e.off == top) {
        cache_start(c, s, ents[0].e.off - 1);
        for (size_t i = 0; i < n; i++)
            cache_add(c, s, ents[i].e.off, ents[i].raw, ents[i].raw_len);
    } else if (!n) {
        cache_start(c, s, top);
    }

    /* Each joiner: its missed messages, its answer; then it is live. */
    for (joiner_t *j = list, *next; j; j = next) {
        next = j->next;
        conn_reply_t *out = j->done->out;
        if (j->conn && !j->conn->closing) {
            bool ok = replay(c, s, j, ep, ep_len, top, ents, n);
            if (out) {
                out->has_pos = true;
                out->ep_len = (uint8_t)ep_len;
                memcpy(out->ep, ep, ep_len);
                out->off = top;
                if (j->has_since)
                    out->recovered = ok;
            }
            if (j->has_since)
                b->m.recoveries[ok]++;
        }
        finish_joiner(c, j, GALE_OK, "");
    }
    for (size_t i = 0; i < n; i++)
        for (int e = 0; e < GALE_ENC_COUNT; e++)
            frame_unref(ents[i].frames[e]);
    free(ents);
    release_held(c, s, true);
    if (s->waiting)
        start_read(c, s, s->last);
}

/* --- hist ----------------------------------------------------------------- */

static void hist_reply(cluster_t *c, hist_read_t *h, redis_conn_reply_t answer,
                       const redis_value_t *v)
{
    broker_t *b = B(c);
    size_t ep_len = 0, n = 0;
    const char *ep =
        answer == REDIS_CONN_REPLY_OK ? redis_value_str(redis_value_at(v, 0), &ep_len) : NULL;
    const redis_value_t *arr = redis_value_at(v, 2);
    long long top = redis_value_int(redis_value_at(v, 1));
    entry_t *ents = NULL;
    gale_err_t e = GALE_ERR_UNAVAILABLE;
    const char *why = "the cluster bus (Redis) did not answer the read";
    if (ep && ep_len && ep_len <= GALE_EP_MAX && top >= 0 &&
        (ents = calloc(redis_value_count(arr) + 1, sizeof(*ents)))) {
        if (!read_entries(arr, ents, &n, ep, ep_len))
            log_warn("history %.*s: a stream entry is malformed: left out", h->len, h->topic);
        /* Newest first: keep the fresh ones that fit, down to a break in the offsets. */
        uint64_t now = cluster_wall_ms(), budget = b->cfg.queue_limit / 2, bytes = 0;
        size_t keep = 0;
        for (; keep < n; keep++) {
            entry_t *x = &ents[keep];
            if ((keep && x->e.off + 1 != ents[keep - 1].e.off) ||
                (h->ttl_ms && now >= x->t_ms && now - x->t_ms >= h->ttl_ms) ||
                (bytes += x->e.data_len + 32) > budget)
                break;
        }
        gale_pos_t pos = {.ep = ep, .ep_len = ep_len, .off = (uint64_t)top};
        gale_buf_t buf;
        gale_buf_init(&buf, FRAME_HEADROOM);
        gale_enc_t enc = (gale_enc_t)h->enc;
        e = gale_encode_hist_begin(&buf, enc, h->has_id, h->id, &pos, keep);
        bool none = true;
        for (size_t i = keep; e == GALE_OK && i-- > 0;) {
            entry_t *x = &ents[i];
            gale_err_t ie = gale_encode_hist_item(&buf, enc, none, x->e.off, x->e.enc, x->e.data,
                                                  x->e.data_len);
            if (ie == GALE_OK)
                none = false;
            else if (ie != GALE_ERR_BAD_REQUEST)
                e = ie;
        }
        if (e == GALE_OK)
            e = gale_encode_hist_end(&buf, enc);
        frame_t *f = frame_built(&buf, e, enc);
        if (!f) {
            e = GALE_ERR_INTERNAL;
            why = "out of memory";
        } else if (h->done->out) {
            h->done->out->frame = f;
        } else {
            frame_unref(f);
        }
    }
    free(ents);
    pending_finish(b, h->done, e, e == GALE_OK ? "" : why);
    free(h);
}

void chist_read_reply(cluster_t *c, void *ctx, redis_conn_reply_t answer,
                      const redis_value_t *value)
{
    if (*(uint8_t *)ctx == READ_HIST)
        hist_reply(c, ctx, answer, value);
    else
        stream_reply(c, ctx, answer, value);
}

gale_err_t cluster_hist(void *bus, pending_t *done, const char *topic, size_t len,
                        const gale_history_rule_t *rule, uint64_t limit, gale_enc_t enc,
                        bool has_id, uint64_t id, const char **why)
{
    cluster_t *c = bus;
    hist_read_t *h = calloc(1, sizeof(*h) + len);
    if (!h) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    *h = (hist_read_t){.what = READ_HIST,
                       .done = done,
                       .ttl_ms = rule ? rule->ttl_ms : 0,
                       .limit = limit,
                       .id = id,
                       .has_id = has_id,
                       .enc = (uint8_t)enc,
                       .len = (uint8_t)len};
    memcpy(h->topic, topic, len);
    if (!send_read(c, cluster_shard_of(c, topic, len), h, topic, len, "last", limit, 0,
                   h->ttl_ms)) {
        free(h);
        *why = "the cluster bus (Redis) is unreachable";
        return GALE_ERR_UNAVAILABLE;
    }
    return GALE_OK;
}

/* --- subscribing ---------------------------------------------------------- */

/*
 * Answers joiner j from s's cache when it can (see "the cache of recent messages"): a sub
 * without since, or one whose position the cache covers. False: it needs a read.
 */
static bool serve_cached(cluster_t *c, cstream_t *s, joiner_t *j)
{
    broker_t *b = B(c);
    if (!s->cache_ok || !s->known || !redis_conn_ready(s->sh->rc))
        return false;
    bool ok = true;
    if (j->conn && !j->conn->closing && j->has_since) {
        if (j->ep_len != s->ep_len || memcmp(j->ep, s->ep, s->ep_len) != 0 || j->since > s->last ||
            j->since < s->cache_base)
            return false; /* let Redis say */
        gale_enc_t enc = (gale_enc_t)j->conn->enc;
        uint64_t bytes = 0;
        for (cached_t *x = s->cache; ok && x; x = x->next) {
            frame_t *f = x->off > j->since ? cached_frame(c, x, enc) : NULL;
            ok = f || x->off <= j->since; /* out of memory: not recovered */
            bytes += f ? f->len : 0;
        }
        ok = ok && bytes <= b->cfg.queue_limit / 2;
        for (cached_t *x = s->cache; ok && x; x = x->next) {
            frame_t *f = x->off > j->since ? x->frames[enc] : NULL;
            if (f && !j->conn->ops->deliver(b, j->conn, f))
                ok = false;
            b->m.messages_replayed += f != NULL;
        }
        b->m.recoveries[ok]++;
    }
    conn_reply_t *out = j->done->out;
    if (out && j->conn) {
        out->has_pos = true;
        out->ep_len = s->ep_len;
        memcpy(out->ep, s->ep, s->ep_len);
        out->off = s->last;
        if (j->has_since)
            out->recovered = ok;
    }
    s->cache_used_ms = now_ms(c);
    b->m.recoveries_cached += j->has_since;
    finish_joiner(c, j, GALE_OK, "");
    return true;
}

/* pending_t.done of a joiner's cluster_sub: the topic is live here (or could not be). */
static void joiner_confirmed(broker_t *b, pending_t *p, gale_err_t e, const char *why)
{
    joiner_t *j = (joiner_t *)((char *)p - offsetof(joiner_t, confirm));
    cluster_t *c = b->cluster;
    if (e != GALE_OK || !j->conn) {
        finish_joiner(c, j, e, why);
        return;
    }
    cstream_t *s = j->s;
    if (s->read_inflight && (!j->has_since || j->since >= s->read_from)) {
        /*
         * The read in flight serves it too: the topic was live here before that read was
         * sent (its SUBSCRIBE is one for the topic), so whatever follows the read's top is
         * held meanwhile. A storm of recoveries from one position costs one read.
         */
        j->next = s->reading;
        s->reading = j;
        return;
    }
    if (!s->read_inflight && serve_cached(c, s, j))
        return;
    j->next = NULL;
    *s->waiting_tail = j;
    s->waiting_tail = &j->next;
    start_read(c, s, s->known ? s->last : UINT64_C(1) << 53);
}

gale_err_t cluster_recover(void *bus, pending_t *done, conn_t *k, const char *topic, size_t len,
                           const gale_history_rule_t *rule, const gale_pos_t *since,
                           const char **why)
{
    cluster_t *c = bus;
    cstream_t *s = cstream_get(c, topic, len);
    joiner_t *j = s ? calloc(1, sizeof(*j)) : NULL;
    if (!j || !waits_add(k, s, j)) {
        free(j);
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    (void)rule;
    j->done = done;
    j->conn = k;
    j->s = s;
    j->confirm.done = joiner_confirmed;
    if (since) {
        j->has_since = true;
        j->since = since->off;
        j->ep_len =
            since->ep && since->ep_len <= GALE_EP_MAX ? (uint8_t)since->ep_len : GALE_EP_MAX + 1;
        if (j->ep_len <= GALE_EP_MAX)
            memcpy(j->ep, since->ep, j->ep_len);
    }
    bool deferred = false;
    gale_err_t e = cluster_sub(c, &j->confirm, topic, len, why, &deferred);
    if (e != GALE_OK) {
        waits_remove(k, j);
        free(j);
        return e;
    }
    if (!deferred)
        joiner_confirmed(c->b, &j->confirm, GALE_OK, "");
    return GALE_OK;
}
