/*
 * cluster: fan-out across brokers through Redis pub/sub (see cluster.h for
 * the contract and docs/ARCHITECTURE.md "Cluster" for the picture).
 *
 * Shard connections
 * -----------------
 * Each shard is one Redis server and one redis_conn_t (redis_conn.c: its
 * two hiredis contexts, resolution, AUTH, readiness PING, connect timer,
 * backoff and failure logs). The shard is up while its connection is READY.
 * What the cluster adds: the watchdog timer fails a shard's connection
 * (redis_conn_fail) when its oldest PUBLISH or a SUBSCRIBE answer is overdue
 * by --redis-timeout; when the connection goes down (shard_down) the subs
 * waiting for a confirmation fail at once, and when its contexts are freed
 * the PUBLISHes in flight are answered DROPPED, in order, which finishes
 * them with err `unavailable`; when it is READY (shard_ready) every
 * subscription held locally is sent again.
 *
 * Interest
 * --------
 * An interest is one Redis channel (a topic held by a local connection) or
 * one Redis pattern (the glob of a local gale pattern), keyed by its Redis
 * name, in a chained hash table. `want` is the set of shards it lives on
 * (the topic's shard; every shard for a pattern), `wanted` whether a local
 * connection holds it. Per shard it counts the SUBSCRIBE replies still
 * expected (`inflight`), and `ok` has the shard's bit once none is: the
 * subscription is then confirmed on that shard's current connection. An
 * interest released while replies are still expected is kept (unwanted)
 * until they arrive, so a reply to an old SUBSCRIBE is never taken for the
 * confirmation of a newer one (SUBSCRIBE x, UNSUBSCRIBE x, SUBSCRIBE x: only
 * the third reply confirms). Subs waiting for confirmation hang off the
 * interest (`waiters`) and are acknowledged when every shard in `want`
 * confirmed.
 *
 * Exactly once
 * ------------
 * Local subscribers are served at publish time; a node drops the Redis echo
 * of its own messages (envelope instance == its own). A remote message may
 * reach a node several times on one shard connection (its channel and one
 * or more of its patterns match): the copies are adjacent and carry the
 * same (instance, seq), and seq grows along each origin's publish connection
 * to the shard, so cluster_dedupe_check (cluster_wire.h) keeps only the
 * first. The node then delivers it once per local connection (the trie
 * visits each connection once), filtering what the glob over-matched.
 */
#include "cluster.h"

#include "cluster_internal.h"
#include "conn.h"
#include "log.h"
#include "router.h"

#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WATCHDOG_MIN_MS 20
#define WATCHDOG_MAX_MS 250

static const char unreachable[] = "the cluster bus (Redis) is unreachable";

typedef enum { KIND_CHANNEL = 0, KIND_PATTERN = 1 } kind_t;

struct interest {
    struct interest *hnext;
    uint64_t hash;
    pending_t *waiters; /* subs waiting for confirmation (linked by wnext) */
    uint64_t want, ok;  /* shard masks */
    uint16_t *inflight; /* SUBSCRIBE replies expected: [shard] (pattern), [0] (channel) */
    uint16_t one;       /* a channel's inflight */
    uint8_t kind;
    uint8_t wanted; /* a local connection holds it */
    uint16_t name_len;
    char name[]; /* the Redis channel or glob, NUL-terminated */
};

/* --- helpers -------------------------------------------------------------- */

static uint64_t now_ms(const cluster_t *c)
{
    return uv_now(c->b->loop);
}

uint64_t cluster_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t rnd(cluster_t *c)
{
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 0x2545f4914f6cdd1dULL;
}

uint64_t cluster_random(cluster_t *c)
{
    return rnd(c);
}

static uint64_t bit(uint32_t i)
{
    return (uint64_t)1 << i;
}

/* The Redis name of gale pattern p: its channel, or its glob. 0 if it does not fit. */
static size_t redis_name(const cluster_t *c, const char *p, size_t len, char *out, kind_t *kind)
{
    bool wild = false;
    const char *prefix = c->b->cfg.redis_prefix;
    (void)gale_pattern_valid(p, len, &wild);
    *kind = wild ? KIND_PATTERN : KIND_CHANNEL;
    if (wild)
        return cluster_glob(out, CLUSTER_NAME_MAX, prefix, c->prefix_len, p, len);
    memcpy(out, prefix, c->prefix_len);
    memcpy(out + c->prefix_len, p, len);
    out[c->prefix_len + len] = '\0';
    return c->prefix_len + len;
}

/* --- the interest table --------------------------------------------------- */

static uint64_t name_hash(kind_t kind, const char *name, size_t len)
{
    return cluster_hash64(name, len) ^ (uint64_t)kind;
}

static interest_t *interest_find(const cluster_t *c, kind_t kind, const char *name, size_t len)
{
    uint64_t h = name_hash(kind, name, len);
    for (interest_t *it = c->buckets[h & (c->nbuckets - 1)]; it; it = it->hnext)
        if (it->hash == h && it->kind == kind && it->name_len == len &&
            memcmp(it->name, name, len) == 0)
            return it;
    return NULL;
}

static void table_grow(cluster_t *c)
{
    size_t n = c->nbuckets * 2;
    interest_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return; /* keep the longer chains */
    for (size_t i = 0; i < c->nbuckets; i++) {
        interest_t *it = c->buckets[i], *next;
        for (; it; it = next) {
            next = it->hnext;
            it->hnext = nb[it->hash & (n - 1)];
            nb[it->hash & (n - 1)] = it;
        }
    }
    free(c->buckets);
    c->buckets = nb;
    c->nbuckets = n;
}

static interest_t *interest_new(cluster_t *c, kind_t kind, const char *name, size_t len,
                                const char *topic, size_t topic_len)
{
    interest_t *it = calloc(1, sizeof(*it) + len + 1);
    if (!it)
        return NULL;
    if (kind == KIND_PATTERN) {
        it->inflight = calloc(c->nshards, sizeof(*it->inflight));
        if (!it->inflight) {
            free(it);
            return NULL;
        }
        it->want = c->all;
    } else {
        it->inflight = &it->one;
        it->want = bit(cluster_ring_shard(&c->ring, topic, topic_len));
    }
    it->kind = (uint8_t)kind;
    it->name_len = (uint16_t)len;
    memcpy(it->name, name, len);
    it->hash = name_hash(kind, name, len);
    if (c->ninterests >= c->nbuckets)
        table_grow(c);
    it->hnext = c->buckets[it->hash & (c->nbuckets - 1)];
    c->buckets[it->hash & (c->nbuckets - 1)] = it;
    c->ninterests++;
    return it;
}

static void interest_free(cluster_t *c, interest_t *it)
{
    interest_t **pp = &c->buckets[it->hash & (c->nbuckets - 1)];
    while (*pp != it)
        pp = &(*pp)->hnext;
    *pp = it->hnext;
    c->ninterests--;
    if (it->inflight != &it->one)
        free(it->inflight);
    free(it);
}

static uint16_t *inflight_of(interest_t *it, const shard_t *sh)
{
    return it->kind == KIND_PATTERN ? &it->inflight[sh->idx] : &it->inflight[0];
}

static bool inflight_none(const cluster_t *c, const interest_t *it)
{
    uint32_t n = it->kind == KIND_PATTERN ? c->nshards : 1;
    for (uint32_t i = 0; i < n; i++)
        if (it->inflight[i])
            return false;
    return true;
}

static bool confirmed(const interest_t *it)
{
    return it->wanted && (it->ok & it->want) == it->want;
}

/* True if every shard in mask is up. */
static bool shards_up(const cluster_t *c, uint64_t mask)
{
    for (uint32_t i = 0; i < c->nshards; i++)
        if ((mask & bit(i)) && !redis_conn_ready(c->shards[i].rc))
            return false;
    return true;
}

/* Acknowledges every sub waiting on it. */
static void ack_waiters(cluster_t *c, interest_t *it)
{
    pending_t *r = it->waiters, *next;
    it->waiters = NULL;
    for (; r; r = next) {
        next = r->wnext;
        r->wnext = NULL;
        pending_finish(c->b, r, GALE_OK, "");
    }
}

/* --- shard commands ------------------------------------------------------- */

static void send_sub(shard_t *sh, interest_t *it, bool subscribe)
{
    if (!redis_conn_ready(sh->rc))
        return;
    if (redis_conn_subscribe(sh->rc, it->kind == KIND_PATTERN, subscribe, it->name, it->name_len) !=
        0) {
        if (subscribe)
            redis_conn_fail(sh->rc, "could not queue a SUBSCRIBE");
        return; /* an UNSUBSCRIBE hiredis will not send: the connection is not subscribed */
    }
    if (!subscribe)
        return;
    (*inflight_of(it, sh))++;
    it->ok &= ~bit(sh->idx);
    if (sh->subs_waiting++ == 0)
        sh->subs_progress_ms = now_ms(sh->c);
}

/* A SUBSCRIBE or PSUBSCRIBE of name was answered on sh. */
static void on_confirm(shard_t *sh, kind_t kind, const char *name, size_t len)
{
    cluster_t *c = sh->c;
    interest_t *it = interest_find(c, kind, name, len);
    uint16_t *n;
    if (!it || !(it->want & bit(sh->idx)) || *(n = inflight_of(it, sh)) == 0)
        return;
    (*n)--;
    sh->subs_waiting--;
    sh->subs_progress_ms = now_ms(c);
    if (*n)
        return;
    if (!it->wanted) {
        if (inflight_none(c, it))
            interest_free(c, it);
        return;
    }
    it->ok |= bit(sh->idx);
    if (confirmed(it))
        ack_waiters(c, it);
}

/*
 * sh went down: its subscriptions are unconfirmed, the subs waiting for them
 * fail (their waiters undo what they added, which may release interests),
 * released interests that only waited for sh's replies go.
 */
static void interests_shard_down(shard_t *sh)
{
    cluster_t *c = sh->c;
    pending_t *failed = NULL;
    for (size_t i = 0; i < c->nbuckets; i++) {
        interest_t *it = c->buckets[i], *next;
        for (; it; it = next) {
            next = it->hnext;
            if (!(it->want & bit(sh->idx)))
                continue;
            it->ok &= ~bit(sh->idx);
            *inflight_of(it, sh) = 0;
            while (it->waiters) {
                pending_t *r = it->waiters;
                it->waiters = r->wnext;
                r->wnext = failed;
                failed = r;
            }
            if (!it->wanted && inflight_none(c, it))
                interest_free(c, it);
        }
    }
    sh->subs_waiting = 0;
    /* The table is consistent again: undoing may release interests now. */
    while (failed) {
        pending_t *r = failed;
        failed = r->wnext;
        r->wnext = NULL;
        pending_finish(c->b, r, GALE_ERR_UNAVAILABLE,
                       "the cluster bus (Redis) went down before the subscription was "
                       "confirmed");
    }
}

/* --- publishing ----------------------------------------------------------- */

/* The oldest command in flight on sh, out of the ring. */
static inflight_t ring_pop(shard_t *sh)
{
    inflight_t in = inflight_ring_shift(&sh->inflight);
    sh->inflight_bytes -= in.bytes;
    return in;
}

shard_t *cluster_shard_of(cluster_t *c, const char *t, size_t len)
{
    return &c->shards[cluster_ring_shard(&c->ring, t, len)];
}

bool cluster_send(shard_t *sh, cmd_kind_t kind, void *ctx, size_t bytes, int argc,
                  const char **argv, const size_t *lens)
{
    if (!redis_conn_ready(sh->rc) || !inflight_ring_reserve(&sh->inflight) ||
        redis_conn_command_argv(sh->rc, argc, argv, lens) != 0)
        return false;
    (void)inflight_ring_push(
        &sh->inflight, /* room reserved above */
        (inflight_t){.ctx = ctx, .sent_ms = now_ms(sh->c), .bytes = bytes, .kind = (uint8_t)kind});
    sh->inflight_bytes += bytes;
    return true;
}

/* The publish script's answer {dup, ep, off} into the waiter's answer. */
static bool script_pub_result(cluster_t *c, pending_t *r, const redis_value_t *v)
{
    const redis_value_t *dup = redis_value_at(v, 0), *ep = redis_value_at(v, 1),
                        *off = redis_value_at(v, 2);
    size_t ep_len = 0;
    const char *eps = redis_value_str(ep, &ep_len);
    if (redis_value_kind(dup) != REDIS_VALUE_INTEGER || !eps || ep_len > GALE_EP_MAX ||
        redis_value_kind(off) != REDIS_VALUE_INTEGER || redis_value_int(off) < 0)
        return false;
    if (redis_value_int(dup))
        c->b->m.publish_duplicates++;
    conn_reply_t *out = r->out;
    if (!out)
        return true;
    uint64_t o = (uint64_t)redis_value_int(off);
    if (redis_value_int(dup)) {
        out->dup = true;
        out->has_off = o != 0;
        out->off = o;
    } else if (ep_len) {
        out->has_pos = true;
        out->ep_len = (uint8_t)ep_len;
        memcpy(out->ep, eps, ep_len);
        out->off = o;
    }
    return true;
}

/* Redis answered sh's oldest command (redis_conn's cb.reply: in the order sent). */
static void on_reply(void *owner, redis_conn_reply_t answer, const char *err, size_t err_len,
                     const redis_value_t *value)
{
    shard_t *sh = owner;
    cluster_t *c = sh->c;
    if (sh->inflight.count == 0) {
        log_error("redis %s: a reply with no command pending", sh->label);
        return;
    }
    inflight_t in = ring_pop(sh);
    if (answer == REDIS_CONN_REPLY_ERROR) {
        log_warn("redis %s: command refused: %.*s", sh->label, (int)err_len, err);
        if (err_len >= 8 && memcmp(err, "NOSCRIPT", 8) == 0)
            redis_conn_fail(sh->rc, "a script is not loaded (NOSCRIPT): reconnecting to load it");
    }
    switch ((cmd_kind_t)in.kind) {
    case CMD_LOAD:
        if (answer == REDIS_CONN_REPLY_ERROR)
            redis_conn_fail(sh->rc, "SCRIPT LOAD refused");
        return;
    case CMD_READ:
        chist_read_reply(c, in.ctx, answer, value);
        return;
    case CMD_PRESENCE:
    case CMD_PRESENCE_LEAVE:
    case CMD_PRESENCE_SYNC:
    case CMD_PRESENCE_READ:
    case CMD_PRESENCE_NODE:
        cpres_reply(c, (cmd_kind_t)in.kind, in.ctx, answer, value);
        return;
    case CMD_RETAIN:
    case CMD_RETAINED:
        cretain_reply(c, (cmd_kind_t)in.kind, in.ctx, answer, value);
        return;
    case CMD_SCRIPT_PUB:
        if (answer == REDIS_CONN_REPLY_OK && !script_pub_result(c, in.ctx, value)) {
            log_error("redis %s: the publish script answered something unexpected", sh->label);
            answer = REDIS_CONN_REPLY_ERROR;
        }
        /* fall through */
    case CMD_PUBLISH: {
        pending_t *r = in.ctx;
        if (answer == REDIS_CONN_REPLY_OK)
            pending_finish(c->b, r, (gale_err_t)r->local_err, r->local_why);
        else
            pending_finish(c->b, r, GALE_ERR_UNAVAILABLE,
                           "the cluster bus (Redis) did not take the message");
        return;
    }
    }
}

static bool env_reserve(cluster_t *c, size_t n)
{
    if (n <= c->env_cap)
        return true;
    uint8_t *e = realloc(c->env, n);
    if (!e)
        return false;
    c->env = e;
    c->env_cap = n;
    return true;
}

static size_t u64_text(char *out, uint64_t v)
{
    return (size_t)snprintf(out, 24, "%" PRIu64, v);
}

gale_err_t cluster_pub(cluster_t *c, pending_t *r, const bus_pub_t *m, const char **why)
{
    broker_t *b = c->b;
    shard_t *sh = cluster_shard_of(c, m->topic, m->topic_len);
    size_t node_len = strlen(b->node_id);
    size_t size = cluster_envelope_size_ext(node_len, m->topic_len, m->reply_len, m->data_len);
    bool script = m->rule || m->mid;
    char channel[CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX + 1];
    kind_t kind;

    if (!redis_conn_ready(sh->rc)) {
        *why = unreachable;
        return GALE_ERR_UNAVAILABLE;
    }
    if (sh->inflight_bytes + size > b->cfg.redis_max_pending) {
        *why = "the cluster bus (Redis) is not keeping up: too many messages pending";
        return GALE_ERR_UNAVAILABLE;
    }
    if (!inflight_ring_reserve(&sh->inflight) || !env_reserve(c, size)) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    cluster_envelope_t e = {.node = b->node_id,
                            .node_len = node_len,
                            .instance = b->instance,
                            .seq = sh->seq + 1,
                            .topic = m->topic,
                            .topic_len = m->topic_len,
                            .enc = m->enc,
                            .reply = m->reply,
                            .reply_len = m->reply_len,
                            .noecho = m->noecho,
                            .qos0 = m->qos0,
                            .data = m->data,
                            .data_len = m->data_len,
                            .tail = m->rule  ? 9
                                    : m->mid ? 8
                                             : 0};
    size_t n = cluster_envelope_encode(c->env, c->env_cap, &e);
    size_t clen = redis_name(c, m->topic, m->topic_len, channel, &kind);
    r->local_err = GALE_OK;
    r->local_why = "";
    if (n == 0) {
        pending_finish(b, r, GALE_ERR_UNAVAILABLE, unreachable);
        return GALE_OK;
    }
    bool sent;
    if (!script) {
        /* Local subscribers now, in the publisher's order; then the bus. */
        const char *argv[3] = {"PUBLISH", channel, (const char *)c->env};
        size_t lens[3] = {7, clen, n};
        router_msg_t msg = {.topic = m->topic,
                            .topic_len = m->topic_len,
                            .reply = m->reply,
                            .reply_len = m->reply_len,
                            .noecho = m->noecho,
                            .qos0 = m->qos0,
                            .enc = m->enc,
                            .data = m->data,
                            .data_len = m->data_len};
        gale_err_t local = router_publish(b, &msg);
        r->local_err = (uint8_t)local;
        r->local_why = local != GALE_OK ? router_convert_why(m->enc) : "";
        sent = cluster_send(sh, CMD_PUBLISH, r, size, 3, argv, lens);
    } else {
        /* Every subscriber, this broker's too, gets it from Redis: after the script gave it
         * its position, or found its mid a duplicate. */
        char hkey[CLUSTER_KEY_MAX], skey[CLUSTER_KEY_MAX], mkey[CLUSTER_KEY_MAX];
        char nums[4][24], ep[24];
        const char *prefix = b->cfg.redis_prefix;
        size_t hl = cluster_key(hkey, sizeof(hkey), prefix, c->prefix_len, 'h', m->topic,
                                m->topic_len, NULL, 0);
        size_t sl = cluster_key(skey, sizeof(skey), prefix, c->prefix_len, 's', m->topic,
                                m->topic_len, NULL, 0);
        size_t ml = m->mid ? cluster_key(mkey, sizeof(mkey), prefix, c->prefix_len, 'm', m->topic,
                                         m->topic_len, m->mid, m->mid_len)
                           : 0;
        size_t el = (size_t)snprintf(ep, sizeof(ep), "%016" PRIx64, rnd(c));
        const char *argv[] = {"EVALSHA", c->sha_pub,     "3",     hkey,    skey,    mkey,
                              channel,   (char *)c->env, nums[0], nums[1], nums[2], ep};
        size_t lens[] = {7,
                         40,
                         1,
                         hl,
                         sl,
                         ml,
                         clen,
                         n,
                         u64_text(nums[0], m->rule ? m->rule->size : 0),
                         u64_text(nums[1], m->rule ? m->rule->ttl_ms : 0),
                         u64_text(nums[2], b->cfg.dedup_window_s * 1000),
                         el};
        sent = cluster_send(sh, CMD_SCRIPT_PUB, r, size, 12, argv, lens);
    }
    if (!sent) {
        pending_finish(b, r, GALE_ERR_UNAVAILABLE, unreachable);
        return GALE_OK;
    }
    sh->seq++;
    b->m.redis_publishes++;
    return GALE_OK;
}

/* --- subscribing ---------------------------------------------------------- */

gale_err_t cluster_sub(cluster_t *c, pending_t *done, const char *p, size_t plen, const char **why,
                       bool *deferred)
{
    char name[CLUSTER_NAME_MAX];
    kind_t kind;
    size_t len = redis_name(c, p, plen, name, &kind);
    interest_t *it = len ? interest_find(c, kind, name, len) : NULL;

    *deferred = false;
    if (len && (!it || !it->wanted)) {
        uint64_t want = kind == KIND_PATTERN ? c->all : bit(cluster_ring_shard(&c->ring, p, plen));
        if (!shards_up(c, want))
            goto Unavailable;
        if (!it && !(it = interest_new(c, kind, name, len, p, plen)))
            goto Nomem;
        it->wanted = 1;
        for (uint32_t i = 0; i < c->nshards; i++)
            if (it->want & bit(i))
                send_sub(&c->shards[i], it, true);
    }
    if (!it)
        goto Nomem;
    if (confirmed(it))
        return GALE_OK;
    if (!shards_up(c, it->want))
        goto Unavailable;
    done->wnext = it->waiters;
    it->waiters = done;
    *deferred = true;
    return GALE_OK;

Unavailable:
    *why = unreachable;
    return GALE_ERR_UNAVAILABLE;
Nomem:
    *why = "out of memory";
    return GALE_ERR_INTERNAL;
}

bool cluster_when_live(cluster_t *c, const char *topic, size_t len, pending_t *p)
{
    char name[CLUSTER_NAME_MAX];
    kind_t kind;
    size_t n = redis_name(c, topic, len, name, &kind);
    interest_t *it = n ? interest_find(c, kind, name, n) : NULL;
    if (!it || !it->wanted || confirmed(it))
        return false;
    p->wnext = it->waiters;
    it->waiters = p;
    return true;
}

void cluster_release(const char *p, size_t len, void *arg)
{
    cluster_t *c = arg;
    char name[CLUSTER_NAME_MAX];
    kind_t kind;
    size_t n = redis_name(c, p, len, name, &kind);
    interest_t *it = n ? interest_find(c, kind, name, n) : NULL;
    if (!it || !it->wanted)
        return;
    it->wanted = 0;
    it->ok = 0;
    if (kind == KIND_CHANNEL)
        chist_released(c, p, len);
    ack_waiters(c, it); /* a later unsub of theirs released it */
    for (uint32_t i = 0; i < c->nshards; i++)
        if (it->want & bit(i))
            send_sub(&c->shards[i], it, false);
    if (inflight_none(c, it))
        interest_free(c, it);
}

static gale_err_t bus_sub(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                          bool *deferred)
{
    return cluster_sub(bus, done, p, len, why, deferred);
}

static gale_err_t bus_pub(void *bus, pending_t *done, const bus_pub_t *m, const char **why)
{
    return cluster_pub(bus, done, m, why);
}

const bus_ops_t cluster_bus = {.sub = bus_sub,
                               .release = cluster_release,
                               .pub = bus_pub,
                               .recover = cluster_recover,
                               .hist = cluster_hist,
                               .forget = cluster_forget,
                               .join = cpres_join,
                               .leave = cpres_leave,
                               .presence = cpres_read,
                               .retain = cretain_write,
                               .retained = cretain_read};

/* --- receiving ------------------------------------------------------------ */

static void on_message(shard_t *sh, const redis_push_t *p)
{
    cluster_t *c = sh->c;
    broker_t *b = c->b;
    cluster_envelope_t e;
    const char *why;

    b->m.redis_received++;
    if (p->name && p->data &&
        cluster_envelope_kind((const uint8_t *)p->data, p->data_len) == CLUSTER_ENV_PRESENCE) {
        if (!p->pattern) /* watchers hold the topic exactly: its SUBSCRIBE brings the event */
            cpres_message(c, p->name, p->name_len, (const uint8_t *)p->data, p->data_len);
        return;
    }
    if (!p->name || !p->data ||
        !cluster_envelope_decode((const uint8_t *)p->data, p->data_len, CLUSTER_DATA_MAX, &e,
                                 &why)) {
        b->m.redis_invalid++;
        log_debug("redis %s: dropped an invalid message", sh->label);
        return;
    }
    if (e.instance == b->instance && !e.tail) {
        b->m.redis_echoes++; /* delivered locally when published */
        return;
    }
    if (p->name_len != c->prefix_len + e.topic_len ||
        memcmp(p->name, b->cfg.redis_prefix, c->prefix_len) != 0 ||
        memcmp(p->name + c->prefix_len, e.topic, e.topic_len) != 0) {
        b->m.redis_invalid++;
        log_debug("redis %s: dropped a message whose topic is not its channel's", sh->label);
        return;
    }
    if (!cluster_dedupe_check(&sh->dedupe, e.instance, e.seq)) {
        b->m.redis_duplicates++;
        return;
    }
    if (e.tail == 9)
        chist_message(c, &e, (const uint8_t *)p->data, p->data_len); /* gaps filled */
    else
        cluster_deliver(c, &e, NULL, NULL);
}

gale_err_t cluster_deliver(cluster_t *c, const cluster_envelope_t *e, const gale_pos_t *pos,
                           const void *skip)
{
    router_msg_t m = {.topic = e->topic,
                      .topic_len = e->topic_len,
                      .pos = pos,
                      .reply = e->reply,
                      .reply_len = e->reply_len,
                      /* conn ids are this instance's own */
                      .noecho = e->instance == c->b->instance ? e->noecho : 0,
                      .qos0 = e->qos0,
                      .enc = e->enc,
                      .data = e->data,
                      .data_len = e->data_len};
    return router_deliver(c->b, &m, skip);
}

/* What sh's subscribe context received (redis_conn's cb.push, only while READY). */
static void on_push(void *owner, const redis_push_t *p)
{
    shard_t *sh = owner;
    if (p->kind == REDIS_PUSH_MESSAGE)
        on_message(sh, p);
    else
        on_confirm(sh, p->kind == REDIS_PUSH_PSUBSCRIBED ? KIND_PATTERN : KIND_CHANNEL, p->name,
                   p->name_len);
}

/* --- connection events ---------------------------------------------------- */

/* sh's connection is READY: every subscription held locally, again (a new connection:
 * nothing is confirmed on it). */
static void shard_ready(void *owner, bool again)
{
    shard_t *sh = owner;
    cluster_t *c = sh->c;
    if (again)
        c->b->m.redis_reconnects++;
    sh->auth_error = false;
    /* First on the connection: what EVALSHA names (a restarted Redis has no script). */
    static const char *const scripts[2] = {CLUSTER_SCRIPT_PUB, CLUSTER_SCRIPT_READ};
    for (int k = 0; k < 2 + (c->b->presence ? CPRES_N : 0) && redis_conn_ready(sh->rc); k++) {
        const char *s = k < 2 ? scripts[k] : cpres_scripts[k - 2];
        const char *argv[3] = {"SCRIPT", "LOAD", s};
        size_t lens[3] = {6, 4, strlen(s)};
        if (!cluster_send(sh, CMD_LOAD, NULL, 0, 3, argv, lens))
            redis_conn_fail(sh->rc, "could not queue SCRIPT LOAD");
    }
    for (size_t i = 0; i < c->nbuckets && redis_conn_ready(sh->rc); i++)
        for (interest_t *it = c->buckets[i]; it && redis_conn_ready(sh->rc); it = it->hnext)
            if (it->wanted && (it->want & bit(sh->idx)))
                send_sub(sh, it, true);
    if (redis_conn_ready(sh->rc))
        chist_shard_ready(c, sh);
    if (redis_conn_ready(sh->rc))
        cpres_shard_ready(c, sh);
}

/* sh's connection went down (already logged), or is closing with the cluster. */
static void shard_down(void *owner, redis_conn_err_t kind, const char *why, bool was_ready)
{
    shard_t *sh = owner;
    cluster_t *c = sh->c;
    if (!was_ready && !c->closed) {
        c->b->m.redis_connect_failures++;
        sh->auth_error = kind == REDIS_CONN_ERR_AUTH;
    }
    interests_shard_down(sh);
    chist_shard_down(c, sh);
}

static const redis_conn_callbacks_t shard_events = {
    .ready = shard_ready, .down = shard_down, .reply = on_reply, .push = on_push};

/* Fails shards whose PUBLISH or SUBSCRIBE answers are overdue. */
static void on_watchdog(uv_timer_t *t)
{
    cluster_t *c = t->data;
    uint64_t now = now_ms(c), limit = c->b->cfg.redis_timeout_ms;
    for (uint32_t i = 0; i < c->nshards; i++) {
        shard_t *sh = &c->shards[i];
        if (!redis_conn_ready(sh->rc))
            continue;
        if (sh->inflight.count && now - inflight_ring_at(&sh->inflight, 0)->sent_ms > limit)
            redis_conn_fail(sh->rc, "a command (PUBLISH, script) timed out");
        else if (sh->subs_waiting && now - sh->subs_progress_ms > limit)
            redis_conn_fail(sh->rc, "SUBSCRIBE timed out");
    }
    chist_sweep(c);
    cpres_sweep(c);
}

/* --- lifecycle ------------------------------------------------------------ */

/* Makes the shards' connections (not started): false when out of memory. */
static bool shards_init(cluster_t *c, const cluster_addr_t *addrs)
{
    for (uint32_t i = 0; i < c->nshards; i++) {
        shard_t *sh = &c->shards[i];
        sh->c = c;
        sh->idx = i;
        sh->rc = redis_conn_new(c->b->loop, &addrs[i], c->b->cfg.redis_timeout_ms, rnd(c) | 1,
                                &shard_events, sh);
        if (!sh->rc)
            return false;
        if (c->b->loop_idx) /* --loops: the first loop says what every loop's would */
            redis_conn_quiet(sh->rc);
        sh->label = redis_conn_label(sh->rc);
    }
    return true;
}

static void start_watchdog(cluster_t *c)
{
    uint64_t period = c->b->cfg.redis_timeout_ms / 4;
    period = period < WATCHDOG_MIN_MS   ? WATCHDOG_MIN_MS
             : period > WATCHDOG_MAX_MS ? WATCHDOG_MAX_MS
                                        : period;
    uv_timer_init(c->b->loop, &c->watchdog);
    c->watchdog.data = c;
    uv_timer_start(&c->watchdog, on_watchdog, period, period);
}

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)s, strlen(s), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

cluster_t *cluster_new(broker_t *b)
{
    cluster_addr_t addrs[CLUSTER_MAX_SHARDS];
    const char *labels[CLUSTER_MAX_SHARDS];
    const char *why;
    int n = cluster_parse_urls(b->cfg.redis_urls, addrs, CLUSTER_MAX_SHARDS, &why);
    cluster_t *c = NULL;
    if (n <= 0 || !cluster_set_password(addrs, n, b->cfg.redis_password, &why)) {
        log_error("--redis: %s", why);
        goto Exit;
    }
    if (!(c = calloc(1, sizeof(*c))))
        goto Exit;
    c->b = b;
    c->nshards = (uint32_t)n;
    c->all = n == 64 ? UINT64_MAX : bit((uint32_t)n) - 1;
    c->prefix_len = strlen(b->cfg.redis_prefix);
    c->rng = b->instance | 1;
    sha1_hex(CLUSTER_SCRIPT_PUB, c->sha_pub);
    sha1_hex(CLUSTER_SCRIPT_READ, c->sha_read);
    for (int k = 0; k < CPRES_N; k++)
        sha1_hex(cpres_scripts[k], c->sha_presence[k]);
    c->nbuckets = 64;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    c->shards = calloc((size_t)n, sizeof(*c->shards));
    for (int i = 0; i < n; i++)
        labels[i] = addrs[i].label;
    if (!c->buckets || !c->shards || !cluster_ring_init(&c->ring, labels, (uint32_t)n) ||
        !shards_init(c, addrs) || !chist_init(c)) {
        cluster_free(c); /* nothing started: no handle to close */
        c = NULL;
        goto Exit;
    }
    start_watchdog(c);
    for (int i = 0; i < n; i++) {
        log_msg(b->loop_idx ? LOG_DEBUG : LOG_INFO, "redis shard %d: %s (channels %s*%s%s)", i,
                addrs[i].label, b->cfg.redis_prefix,
                !addrs[i].pass_len  ? ""
                : addrs[i].user_len ? ", AUTH as user "
                                    : ", AUTH with a password",
                addrs[i].user_len ? addrs[i].user : "");
        redis_conn_start(c->shards[i].rc);
    }
Exit:
    explicit_bzero(addrs, sizeof(addrs));
    return c;
}

void cluster_close(cluster_t *c)
{
    if (!c || c->closed)
        return;
    c->closed = true;
    uv_close((uv_handle_t *)&c->watchdog, NULL);
    for (uint32_t i = 0; i < c->nshards; i++) {
        shard_t *sh = &c->shards[i];
        redis_conn_close(sh->rc);  /* answers every command in flight DROPPED */
        while (sh->inflight.count) /* none left: hiredis ran every pending callback */
            on_reply(sh, REDIS_CONN_REPLY_DROPPED, NULL, 0, NULL);
    }
}

void cluster_free(cluster_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nbuckets; i++) {
        interest_t *it = c->buckets[i], *next;
        for (; it; it = next) {
            next = it->hnext;
            if (it->inflight != &it->one)
                free(it->inflight);
            free(it);
        }
    }
    for (uint32_t i = 0; c->shards && i < c->nshards; i++) {
        inflight_ring_free(&c->shards[i].inflight);
        redis_conn_free(c->shards[i].rc);
    }
    chist_free(c);
    cluster_ring_free(&c->ring);
    free(c->buckets);
    free(c->shards);
    free(c->env);
    free(c);
}

bool cluster_busy(const cluster_t *c)
{
    for (uint32_t i = 0; c && !c->closed && i < c->nshards; i++)
        if (redis_conn_ready(c->shards[i].rc) && c->shards[i].inflight.count)
            return true;
    return false;
}

void cluster_state(const cluster_t *c, uint32_t *shards, uint32_t *up)
{
    *shards = c ? c->nshards : 0;
    *up = 0;
    for (uint32_t i = 0; c && i < c->nshards; i++)
        *up += redis_conn_ready(c->shards[i].rc);
}

void cluster_render_metrics(const cluster_t *c, gale_buf_t *out)
{
    static const char head[] = "# HELP gale_redis_shard_up 1 when both connections to the Redis "
                               "shard are ready.\n# TYPE gale_redis_shard_up gauge\n";
    static const char auth[] = "# HELP gale_redis_shard_auth_error 1 when the last attempt to "
                               "connect to the Redis shard was refused by AUTH (or -NOAUTH).\n"
                               "# TYPE gale_redis_shard_auth_error gauge\n";
    if (!c)
        return;
    for (int k = 0; k < 2; k++) {
        gale_buf_append(out, k ? auth : head, k ? sizeof(auth) - 1 : sizeof(head) - 1);
        for (uint32_t i = 0; i < c->nshards; i++) {
            const shard_t *sh = &c->shards[i];
            char line[400];
            int n = snprintf(line, sizeof(line), "gale_redis_shard_%s{shard=\"%s\"} %d\n",
                             k ? "auth_error" : "up", sh->label,
                             k ? sh->auth_error : redis_conn_ready(sh->rc));
            if (n > 0 && (size_t)n < sizeof(line))
                gale_buf_append(out, line, (size_t)n);
        }
    }
}
