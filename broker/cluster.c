/*
 * cluster: fan-out across brokers through Redis pub/sub (see cluster.h for
 * the contract and docs/ARCHITECTURE.md "Cluster" for the picture).
 *
 * Shard connections
 * -----------------
 * Each shard is one Redis server with two hiredis contexts on the broker's
 * loop (redis_uv.c): `sub` in subscribe mode and `pub` for PUBLISH. The
 * shard's state is DOWN, CONNECTING (a host name being resolved with
 * uv_getaddrinfo off the loop, then both contexts being created with the
 * address; one connect timer armed over both) or UP (both connected, both authenticated when the
 * URL has credentials, and a PING on `pub` answered: a stopped server still accepts TCP
 * connections). AUTH is the first command on every new context, before the readiness PING and
 * before any SUBSCRIBE is replayed; an AUTH refusal fails the shard like a connect error (logged at
 * error level once per change of failure kind, retried with the same backoff), except Redis's
 * "called without any password configured", which is a warning: the
 * connection works, and a broker given the password before Redis has one
 * keeps working while it is set (CONFIG SET requirepass keeps connections
 * open). Any failure (connect error, a
 * disconnect, a PUBLISH or SUBSCRIBE answer overdue by --redis-timeout,
 * checked by one watchdog timer) calls shard_fail, which marks the shard
 * DOWN at once (new work is refused from then on) and arms the shard's timer
 * at 0 ms to free both contexts outside any hiredis callback (hiredis must
 * not be freed from its own callbacks); freeing a context runs the
 * callbacks of its pending commands with a NULL reply, which finishes the
 * in-flight publishes, in order, with err `unavailable`. The same timer then
 * waits a jittered exponential backoff and connects again.
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

#include "cluster_wire.h"
#include "log.h"
#include "redis_uv.h"
#include "router.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define WATCHDOG_MIN_MS 20
#define WATCHDOG_MAX_MS 250

static const char unreachable[] = "the cluster bus (Redis) is unreachable";

typedef enum { SHARD_DOWN, SHARD_CONNECTING, SHARD_UP } shard_state_t;
typedef enum { PHASE_IDLE, PHASE_REAP, PHASE_BACKOFF, PHASE_CONNECT } phase_t;
typedef enum { KIND_CHANNEL = 0, KIND_PATTERN = 1 } kind_t;
typedef enum { FAIL_NONE, FAIL_NET, FAIL_AUTH, FAIL_DNS } fail_t;

typedef struct {
    pending_t *r;
    uint64_t sent_ms;
    size_t bytes;
} inflight_t;

typedef struct shard {
    cluster_t *c;
    uint32_t idx;
    cluster_addr_t addr;
    redisAsyncContext *pub, *sub;
    uv_getaddrinfo_t *gai; /* a resolution under way (heap; freed by its callback) */
    bool resolving;        /* CONNECTING and waiting for `gai`'s answer */
    bool pub_ready, sub_ready;
    bool was_up; /* has been up: the next up is a reconnect */
    shard_state_t state;
    phase_t phase; /* what `timer` is armed for */
    uv_timer_t timer;
    uint32_t failures;         /* failed attempts since the last up: the backoff exponent */
    fail_t logged;             /* kind of the last failure logged: log once per change */
    bool auth_error;           /* the last attempt failed on AUTH or -NOAUTH (metrics) */
    bool nopass_warned;        /* "no password configured" logged since the last good AUTH */
    inflight_t *ring;          /* PUBLISHes awaiting their reply, oldest first */
    uint32_t head, count, cap; /* cap: a power of two */
    size_t inflight_bytes;     /* bounded by --redis-max-pending */
    uint64_t seq;              /* last sequence number published to this shard */
    uint32_t subs_waiting;     /* SUBSCRIBE/PSUBSCRIBE replies outstanding */
    uint64_t subs_progress_ms; /* when one was last sent (from none) or answered */
    cluster_dedupe_t dedupe;   /* of the messages received from this shard */
} shard_t;

typedef struct interest {
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
} interest_t;

struct cluster {
    broker_t *b;
    shard_t *shards;
    uint32_t nshards;
    uint64_t all; /* mask of every shard */
    cluster_ring_t ring;
    interest_t **buckets; /* power-of-two count */
    size_t nbuckets, ninterests;
    uv_timer_t watchdog;
    uint8_t *env; /* envelope encoding buffer */
    size_t env_cap;
    uint64_t rng;
    size_t prefix_len;
    bool closed;
};

/* --- helpers -------------------------------------------------------------- */

static uint64_t now_ms(const cluster_t *c)
{
    return uv_now(c->b->loop);
}

static uint64_t rnd(cluster_t *c)
{
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return c->rng * 0x2545f4914f6cdd1dULL;
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
        if ((mask & bit(i)) && c->shards[i].state != SHARD_UP)
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

static void shard_fail(shard_t *sh, const char *why);
static void shard_fail_as(shard_t *sh, fail_t kind, const char *why);
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

static void send_sub(shard_t *sh, interest_t *it, bool subscribe)
{
    static const char *const cmds[2][2] = {{"UNSUBSCRIBE", "PUNSUBSCRIBE"},
                                           {"SUBSCRIBE", "PSUBSCRIBE"}};
    const char *argv[2] = {cmds[subscribe][it->kind], it->name};
    size_t lens[2] = {strlen(argv[0]), it->name_len};
    if (sh->state != SHARD_UP)
        return;
    if (redisAsyncCommandArgv(sh->sub, subscribe ? on_sub_reply : NULL, sh, 2, argv, lens) !=
        REDIS_OK) {
        if (subscribe)
            shard_fail(sh, "could not queue a SUBSCRIBE");
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

static bool ring_reserve(shard_t *sh)
{
    if (sh->count < sh->cap)
        return true;
    uint32_t ncap = sh->cap ? sh->cap * 2 : 64;
    inflight_t *nr = malloc(sizeof(*nr) * ncap);
    if (!nr)
        return false;
    for (uint32_t i = 0; i < sh->count; i++)
        nr[i] = sh->ring[(sh->head + i) & (sh->cap - 1)];
    free(sh->ring);
    sh->ring = nr;
    sh->head = 0;
    sh->cap = ncap;
    return true;
}

static void on_pub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    shard_t *sh = privdata;
    redisReply *rep = reply;
    if (sh->count == 0) {
        log_error("redis %s: a PUBLISH reply with no PUBLISH pending", sh->addr.label);
        return;
    }
    inflight_t in = sh->ring[sh->head];
    sh->head = (sh->head + 1) & (sh->cap - 1);
    sh->count--;
    sh->inflight_bytes -= in.bytes;
    if (rep && rep->type != REDIS_REPLY_ERROR) {
        pending_finish(sh->c->b, in.r, (gale_err_t)in.r->local_err, in.r->local_why);
        return;
    }
    if (rep)
        log_warn("redis %s: PUBLISH refused: %.*s", sh->addr.label, (int)rep->len, rep->str);
    pending_finish(sh->c->b, in.r, GALE_ERR_UNAVAILABLE,
                   "the cluster bus (Redis) did not take the message");
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

gale_err_t cluster_pub(cluster_t *c, pending_t *r, const char *topic, size_t topic_len,
                       gale_enc_t enc, const uint8_t *data, size_t data_len, const char **why)
{
    broker_t *b = c->b;
    shard_t *sh = &c->shards[cluster_ring_shard(&c->ring, topic, topic_len)];
    size_t node_len = strlen(b->node_id);
    size_t size = cluster_envelope_size(node_len, topic_len, data_len);
    char channel[CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX + 1];
    kind_t kind;

    if (sh->state != SHARD_UP) {
        *why = unreachable;
        return GALE_ERR_UNAVAILABLE;
    }
    if (sh->inflight_bytes + size > b->cfg.redis_max_pending) {
        *why = "the cluster bus (Redis) is not keeping up: too many messages pending";
        return GALE_ERR_UNAVAILABLE;
    }
    if (!ring_reserve(sh) || !env_reserve(c, size)) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    cluster_envelope_t e = {.node = b->node_id,
                            .node_len = node_len,
                            .instance = b->instance,
                            .seq = sh->seq + 1,
                            .topic = topic,
                            .topic_len = topic_len,
                            .enc = enc,
                            .data = data,
                            .data_len = data_len};
    size_t n = cluster_envelope_encode(c->env, c->env_cap, &e);
    size_t clen = redis_name(c, topic, topic_len, channel, &kind);
    const char *argv[3] = {"PUBLISH", channel, (const char *)c->env};
    size_t lens[3] = {7, clen, n};

    /* Local subscribers now, in the publisher's order; then the bus. */
    gale_err_t local = router_publish(b, topic, topic_len, enc, data, data_len);
    r->local_err = (uint8_t)local;
    r->local_why = local != GALE_OK ? router_convert_why(enc) : "";
    if (n == 0 || redisAsyncCommandArgv(sh->pub, on_pub_reply, sh, 3, argv, lens) != REDIS_OK) {
        pending_finish(b, r, GALE_ERR_UNAVAILABLE, unreachable);
        return GALE_OK;
    }
    sh->seq++;
    sh->ring[(sh->head + sh->count) & (sh->cap - 1)] =
        (inflight_t){.r = r, .sent_ms = now_ms(c), .bytes = size};
    sh->count++;
    sh->inflight_bytes += size;
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

static gale_err_t bus_pub(void *bus, pending_t *done, const char *topic, size_t topic_len,
                          gale_enc_t enc, const uint8_t *data, size_t data_len, const char **why)
{
    return cluster_pub(bus, done, topic, topic_len, enc, data, data_len, why);
}

const bus_ops_t cluster_bus = {.sub = bus_sub, .release = cluster_release, .pub = bus_pub};

/* --- receiving ------------------------------------------------------------ */

static void on_message(shard_t *sh, const redisReply *channel, const redisReply *payload)
{
    cluster_t *c = sh->c;
    broker_t *b = c->b;
    cluster_envelope_t e;
    const char *why;

    b->m.redis_received++;
    if (channel->type != REDIS_REPLY_STRING || payload->type != REDIS_REPLY_STRING ||
        !cluster_envelope_decode((const uint8_t *)payload->str, payload->len, CLUSTER_DATA_MAX, &e,
                                 &why)) {
        b->m.redis_invalid++;
        log_debug("redis %s: dropped an invalid message", sh->addr.label);
        return;
    }
    if (e.instance == b->instance) {
        b->m.redis_echoes++; /* delivered locally when published */
        return;
    }
    if (channel->len != c->prefix_len + e.topic_len ||
        memcmp(channel->str, b->cfg.redis_prefix, c->prefix_len) != 0 ||
        memcmp(channel->str + c->prefix_len, e.topic, e.topic_len) != 0) {
        b->m.redis_invalid++;
        log_debug("redis %s: dropped a message whose topic is not its channel's", sh->addr.label);
        return;
    }
    if (!cluster_dedupe_check(&sh->dedupe, e.instance, e.seq)) {
        b->m.redis_duplicates++;
        return;
    }
    (void)router_deliver(b, e.topic, e.topic_len, e.enc, e.data, e.data_len);
}

static bool is(const redisReply *r, const char *s)
{
    size_t n = strlen(s);
    return r->type == REDIS_REPLY_STRING && r->len == n && strncasecmp(r->str, s, n) == 0;
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    shard_t *sh = privdata;
    redisReply *r = reply;
    if (!r || ac != sh->sub || sh->state != SHARD_UP || r->type != REDIS_REPLY_ARRAY ||
        r->elements < 3)
        return; /* NULL: the context is being freed; not UP: failing */
    redisReply **el = r->element;
    if (r->elements == 3 && is(el[0], "message"))
        on_message(sh, el[1], el[2]);
    else if (r->elements == 4 && is(el[0], "pmessage"))
        on_message(sh, el[2], el[3]);
    else if (el[1]->type == REDIS_REPLY_STRING && is(el[0], "subscribe"))
        on_confirm(sh, KIND_CHANNEL, el[1]->str, el[1]->len);
    else if (el[1]->type == REDIS_REPLY_STRING && is(el[0], "psubscribe"))
        on_confirm(sh, KIND_PATTERN, el[1]->str, el[1]->len);
}

/* --- connection lifecycle ------------------------------------------------- */

static void shard_up(shard_t *sh)
{
    cluster_t *c = sh->c;
    sh->state = SHARD_UP;
    sh->phase = PHASE_IDLE;
    uv_timer_stop(&sh->timer);
    if (sh->was_up)
        c->b->m.redis_reconnects++;
    if (sh->addr.user_len)
        log_info("redis %s: connected%s, authenticated as user %s", sh->addr.label,
                 sh->was_up ? " again" : "", sh->addr.user);
    else
        log_info("redis %s: connected%s%s", sh->addr.label, sh->was_up ? " again" : "",
                 sh->addr.pass_len ? ", authenticated" : "");
    sh->was_up = true;
    sh->failures = 0;
    sh->logged = FAIL_NONE;
    sh->auth_error = false;
    /* Every subscription held locally, again (new connection: nothing is confirmed). */
    for (size_t i = 0; i < c->nbuckets && sh->state == SHARD_UP; i++)
        for (interest_t *it = c->buckets[i]; it && sh->state == SHARD_UP; it = it->hnext)
            if (it->wanted && (it->want & bit(sh->idx)))
                send_sub(sh, it, true);
}

/* The publish context's first PING answered: Redis serves commands (a stopped or loading
 * server accepts TCP connections but does not answer, or answers -LOADING). Never sent on
 * the subscribe context. */
static void on_pub_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    shard_t *sh = privdata;
    redisReply *r = reply;
    if (!r || ac != sh->pub || sh->state != SHARD_CONNECTING)
        return; /* NULL: the context is being freed */
    if (r->type == REDIS_REPLY_ERROR) {
        /* -NOAUTH: Redis wants a password and the URL has none. */
        shard_fail_as(sh, strncmp(r->str, "NOAUTH", 6) == 0 ? FAIL_AUTH : FAIL_NET, r->str);
        return;
    }
    sh->pub_ready = true;
    if (sh->sub_ready)
        shard_up(sh);
}

/* why, with every occurrence of sh's password masked (a Redis error never quotes it, but
 * nothing it says reaches a log unchecked). */
static const char *redact(const shard_t *sh, const char *why, char *out, size_t cap)
{
    const char *pw = sh->addr.pass;
    size_t n = sh->addr.pass_len, o = 0;
    if (!n || !strstr(why, pw))
        return why;
    while (*why && o + 4 < cap) {
        if (strncmp(why, pw, n) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            why += n;
        } else {
            out[o++] = *why++;
        }
    }
    out[o] = '\0';
    return out;
}

/* Context ac of sh is connected and, with credentials, authenticated. */
static void ctx_ready(shard_t *sh, redisAsyncContext *ac)
{
    if (ac == sh->pub) {
        /* Ready once it answers (the connect timer still runs). */
        if (redisAsyncCommand(sh->pub, on_pub_ping, sh, "PING") != REDIS_OK)
            shard_fail(sh, "could not queue a PING");
        return;
    }
    sh->sub_ready = true;
    if (sh->pub_ready && sh->state == SHARD_CONNECTING)
        shard_up(sh);
}

/* Redis has no password (Redis 6+ wording, then 5's): AUTH is pointless but harmless. */
static bool no_password_set(const redisReply *r)
{
    return strstr(r->str, "without any password configured") != NULL ||
           strstr(r->str, "no password is set") != NULL;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    shard_t *sh = privdata;
    redisReply *r = reply;
    if (!r || (ac != sh->pub && ac != sh->sub) || sh->state != SHARD_CONNECTING)
        return; /* NULL: the context is being freed */
    if (r->type == REDIS_REPLY_ERROR && !no_password_set(r)) {
        shard_fail_as(sh, FAIL_AUTH, r->str);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char buf[512];
        if (!sh->nopass_warned)
            log_warn("redis %s: a password is configured but this Redis has none (%s): "
                     "connecting without authentication",
                     sh->addr.label, redact(sh, r->str, buf, sizeof(buf)));
        sh->nopass_warned = true;
    } else {
        sh->nopass_warned = false;
    }
    ctx_ready(sh, ac);
}

/* AUTH [USER] PASSWORD, the first command on a new context (binary-safe: argv). */
static void send_auth(shard_t *sh, redisAsyncContext *ac)
{
    const cluster_addr_t *a = &sh->addr;
    const char *argv[3] = {"AUTH", a->user, a->pass};
    size_t lens[3] = {4, a->user_len, a->pass_len};
    int argc = 3;
    if (!a->user_len) {
        argv[1] = a->pass;
        lens[1] = a->pass_len;
        argc = 2;
    }
    if (redisAsyncCommandArgv(ac, on_auth, sh, argc, argv, lens) != REDIS_OK)
        shard_fail(sh, "could not queue AUTH");
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    shard_t *sh = cac->data;
    redisAsyncContext *ac = cac == sh->pub ? sh->pub : cac == sh->sub ? sh->sub : NULL;
    if (!ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns. */
        if (ac == sh->pub)
            sh->pub = NULL;
        else
            sh->sub = NULL;
        shard_fail(sh, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    redisEnableKeepAlive(&ac->c);
    if (sh->addr.pass_len)
        send_auth(sh, ac); /* before anything else */
    else
        ctx_ready(sh, ac);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    shard_t *sh = ac->data;
    if (ac == sh->pub)
        sh->pub = NULL;
    else if (ac == sh->sub)
        sh->sub = NULL;
    else
        return; /* one we freed ourselves */
    shard_fail(sh, status == REDIS_OK || !ac->errstr[0] ? "connection closed" : ac->errstr);
}

static redisAsyncContext *open_ctx(shard_t *sh, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, sh->addr.port);
    if (!ac)
        return NULL;
    if (ac->err || redis_uv_attach(ac, sh->c->b->loop) != 0) {
        log_debug("redis %s: %s", sh->addr.label, ac->err ? ac->errstr : "cannot watch socket");
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = sh;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void on_shard_timer(uv_timer_t *t);

/* Opens both contexts to ip, a numeric address (hiredis then resolves nothing). */
static void connect_to(shard_t *sh, const char *ip)
{
    sh->pub = open_ctx(sh, ip);
    sh->sub = sh->pub ? open_ctx(sh, ip) : NULL;
    if (!sh->pub || !sh->sub)
        shard_fail(sh, "could not open a connection");
}

static bool host_numeric(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return uv_inet_pton(AF_INET, host, a) == 0 || uv_inet_pton(AF_INET6, host, a) == 0;
}

/*
 * Writes to ip the address of res this attempt uses: the first IPv4 or IPv6 one, or after
 * failed attempts the next (failures modulo their count). False if res has none.
 */
static bool pick_address(const shard_t *sh, const struct addrinfo *res, char *ip, size_t cap)
{
    uint32_t n = 0, k;
    const struct addrinfo *ai;
    for (ai = res; ai; ai = ai->ai_next)
        n += ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
    if (!n)
        return false;
    k = sh->failures % n;
    for (ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (k-- == 0)
            break;
    }
    if (ai->ai_family == AF_INET)
        return uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, cap) == 0;
    return uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, cap) == 0;
}

/*
 * The resolver's answer (run on the loop). req->data is the shard, or NULL once the
 * shard gave it up for good (cluster_close): then nothing but req and res is touched.
 */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    shard_t *sh = req->data;
    char ip[INET6_ADDRSTRLEN];
    bool found = false;
    free(req);
    if (sh)
        sh->gai = NULL;
    if (!sh || !sh->resolving) {
        uv_freeaddrinfo(res); /* canceled, or the attempt failed (timed out) meanwhile */
        return;
    }
    sh->resolving = false;
    if (status == 0)
        found = pick_address(sh, res, ip, sizeof(ip));
    uv_freeaddrinfo(res);
    if (!found) {
        shard_fail_as(sh, FAIL_DNS, status ? uv_strerror(status) : "no IPv4 or IPv6 address");
        return;
    }
    log_debug("redis %s: %s is %s", sh->addr.label, sh->addr.host, ip);
    connect_to(sh, ip);
}

/* Resolves sh's host on the libuv thread pool (getaddrinfo blocks): on_resolved goes on. */
static void resolve(shard_t *sh)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    uv_getaddrinfo_t *req;
    int rc;
    sh->resolving = true;
    if (sh->gai)
        return; /* the last attempt's resolution still runs: its answer serves this one */
    if (!(req = malloc(sizeof(*req)))) {
        shard_fail_as(sh, FAIL_DNS, "out of memory");
        return;
    }
    req->data = sh;
    rc = uv_getaddrinfo(sh->c->b->loop, req, on_resolved, sh->addr.host, NULL, &hints);
    if (rc != 0) {
        free(req);
        shard_fail_as(sh, FAIL_DNS, uv_strerror(rc));
        return;
    }
    sh->gai = req;
}

/*
 * Stops waiting for sh's resolution. A request still queued is canceled (its callback gets
 * UV_ECANCELED); one the resolver is working on cannot be, and stays attached so that the
 * next attempt takes its answer, unless detach (the cluster closes): its callback then
 * only frees it. Returns true if the resolver is still working on it (the loop runs until
 * it is done).
 */
static bool resolve_stop(shard_t *sh, bool detach)
{
    sh->resolving = false;
    if (!sh->gai)
        return false;
    bool running = uv_cancel((uv_req_t *)sh->gai) != 0;
    if (running && !detach)
        return true;
    sh->gai->data = NULL;
    sh->gai = NULL;
    return running;
}

/* Connects: resolves the host first unless it is an address. The connect timer covers
 * both. */
static void shard_connect(shard_t *sh)
{
    sh->state = SHARD_CONNECTING;
    sh->pub_ready = sh->sub_ready = false;
    sh->phase = PHASE_CONNECT;
    uv_timer_start(&sh->timer, on_shard_timer, sh->c->b->cfg.redis_timeout_ms, 0);
    if (host_numeric(sh->addr.host))
        connect_to(sh, sh->addr.host);
    else
        resolve(sh);
}

static void shard_fail(shard_t *sh, const char *why)
{
    shard_fail_as(sh, FAIL_NET, why);
}

/* Logs a failure: at its level once per change of kind (not once per retry), else debug. */
static void log_fail(shard_t *sh, fail_t kind, const char *why)
{
    cluster_t *c = sh->c;
    char buf[512];
    why = redact(sh, why, buf, sizeof(buf));
    if (c->closed)
        log_info("redis %s: disconnecting (the broker is stopping)", sh->addr.label);
    else if (kind == FAIL_AUTH && sh->logged != FAIL_AUTH)
        log_error("redis %s: authentication failed (%s): %s; the shard stays down (publishing "
                  "to its topics answers unavailable), retrying",
                  sh->addr.label, why,
                  sh->addr.pass_len ? "check the user and password of --redis (or "
                                      "--redis-password, GALE_REDIS_PASSWORD)"
                                    : "this Redis requires a password: give one in --redis "
                                      "(redis://:PASSWORD@HOST:PORT) or GALE_REDIS_PASSWORD");
    else if (kind == FAIL_DNS && sh->logged != FAIL_DNS)
        log_warn("redis %s: cannot resolve %s: %s; the shard stays down (publishing to its "
                 "topics answers unavailable), retrying",
                 sh->addr.label, sh->addr.host, why);
    else if (kind == FAIL_DNS)
        log_debug("redis %s: cannot resolve %s: %s", sh->addr.label, sh->addr.host, why);
    else if (sh->state == SHARD_UP)
        log_warn("redis %s: connection lost (%s): publishing to its topics answers "
                 "unavailable until it is back",
                 sh->addr.label, why);
    else if (sh->logged != kind)
        log_warn("redis %s: cannot connect (%s): retrying", sh->addr.label, why);
    else
        log_debug("redis %s: cannot connect (%s)", sh->addr.label, why);
    if (!c->closed)
        sh->logged = kind;
}

static void shard_fail_as(shard_t *sh, fail_t kind, const char *why)
{
    cluster_t *c = sh->c;
    if (sh->phase == PHASE_REAP || (sh->state == SHARD_DOWN && sh->phase != PHASE_IDLE))
        return; /* already failing */
    (void)resolve_stop(sh, false);
    log_fail(sh, kind, why);
    if (sh->state != SHARD_UP && !c->closed) {
        c->b->m.redis_connect_failures++;
        sh->auth_error = kind == FAIL_AUTH;
    }
    sh->state = SHARD_DOWN;
    sh->pub_ready = sh->sub_ready = false;
    interests_shard_down(sh);
    if (c->closed)
        return;
    sh->phase = PHASE_REAP;
    uv_timer_start(&sh->timer, on_shard_timer, 0, 0);
}

/* Frees both contexts, outside hiredis: their pending PUBLISHes finish with err. */
static void reap(shard_t *sh)
{
    redisAsyncContext *pub = sh->pub, *sub = sh->sub;
    sh->pub = sh->sub = NULL;
    if (pub)
        redisAsyncFree(pub);
    if (sub)
        redisAsyncFree(sub);
    while (sh->count) { /* none left: hiredis ran every pending callback */
        inflight_t in = sh->ring[sh->head];
        sh->head = (sh->head + 1) & (sh->cap - 1);
        sh->count--;
        pending_finish(sh->c->b, in.r, GALE_ERR_UNAVAILABLE, unreachable);
    }
    sh->inflight_bytes = 0;
}

static void on_shard_timer(uv_timer_t *t)
{
    shard_t *sh = t->data;
    cluster_t *c = sh->c;
    switch (sh->phase) {
    case PHASE_REAP: {
        reap(sh);
        uint64_t d = BACKOFF_MIN_MS << (sh->failures < 6 ? sh->failures : 6);
        if (d > BACKOFF_MAX_MS)
            d = BACKOFF_MAX_MS;
        d = d / 2 + rnd(c) % (d / 2 + 1); /* jitter: brokers do not reconnect in step */
        sh->failures++;
        sh->phase = PHASE_BACKOFF;
        uv_timer_start(&sh->timer, on_shard_timer, d, 0);
        break;
    }
    case PHASE_BACKOFF:
        shard_connect(sh);
        break;
    case PHASE_CONNECT:
        if (sh->resolving)
            shard_fail_as(sh, FAIL_DNS, "timed out (--redis-timeout)");
        else
            shard_fail(sh, "connect timed out");
        break;
    case PHASE_IDLE:
        break;
    }
}

/* Fails shards whose PUBLISH or SUBSCRIBE answers are overdue. */
static void on_watchdog(uv_timer_t *t)
{
    cluster_t *c = t->data;
    uint64_t now = now_ms(c), limit = c->b->cfg.redis_timeout_ms;
    for (uint32_t i = 0; i < c->nshards; i++) {
        shard_t *sh = &c->shards[i];
        if (sh->state != SHARD_UP)
            continue;
        if (sh->count && now - sh->ring[sh->head].sent_ms > limit)
            shard_fail(sh, "PUBLISH timed out");
        else if (sh->subs_waiting && now - sh->subs_progress_ms > limit)
            shard_fail(sh, "SUBSCRIBE timed out");
    }
}

/* --- lifecycle ------------------------------------------------------------ */

cluster_t *cluster_new(broker_t *b)
{
    cluster_addr_t addrs[CLUSTER_MAX_SHARDS];
    const char *labels[CLUSTER_MAX_SHARDS];
    const char *why;
    int n = cluster_parse_urls(b->cfg.redis_urls, addrs, CLUSTER_MAX_SHARDS, &why);
    if (n <= 0 || !cluster_set_password(addrs, n, b->cfg.redis_password, &why)) {
        log_error("--redis: %s", why);
        explicit_bzero(addrs, sizeof(addrs));
        return NULL;
    }
    cluster_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->b = b;
    c->nshards = (uint32_t)n;
    c->all = n == 64 ? UINT64_MAX : bit((uint32_t)n) - 1;
    c->prefix_len = strlen(b->cfg.redis_prefix);
    c->rng = b->instance | 1;
    c->nbuckets = 64;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    c->shards = calloc((size_t)n, sizeof(*c->shards));
    for (int i = 0; i < n; i++)
        labels[i] = addrs[i].label;
    if (!c->buckets || !c->shards || !cluster_ring_init(&c->ring, labels, (uint32_t)n)) {
        explicit_bzero(addrs, sizeof(addrs));
        free(c->buckets);
        free(c->shards);
        free(c);
        return NULL;
    }
    uint64_t period = b->cfg.redis_timeout_ms / 4;
    period = period < WATCHDOG_MIN_MS   ? WATCHDOG_MIN_MS
             : period > WATCHDOG_MAX_MS ? WATCHDOG_MAX_MS
                                        : period;
    uv_timer_init(b->loop, &c->watchdog);
    c->watchdog.data = c;
    uv_timer_start(&c->watchdog, on_watchdog, period, period);
    for (int i = 0; i < n; i++) {
        shard_t *sh = &c->shards[i];
        sh->c = c;
        sh->idx = (uint32_t)i;
        sh->addr = addrs[i];
        uv_timer_init(b->loop, &sh->timer);
        sh->timer.data = sh;
        log_info("redis shard %d: %s (channels %s*%s%s)", i, sh->addr.label, b->cfg.redis_prefix,
                 !sh->addr.pass_len  ? ""
                 : sh->addr.user_len ? ", AUTH as user "
                                     : ", AUTH with a password",
                 sh->addr.user_len ? sh->addr.user : "");
        shard_connect(sh);
    }
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
        sh->phase = PHASE_IDLE;
        uv_close((uv_handle_t *)&sh->timer, NULL);
        if (resolve_stop(sh, true))
            log_info("redis %s: waiting for the resolver to finish with %s (it cannot be "
                     "interrupted)",
                     sh->addr.label, sh->addr.host);
        if (sh->state != SHARD_DOWN)
            shard_fail(sh, "stopping");
        reap(sh);
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
    for (uint32_t i = 0; i < c->nshards; i++) {
        free(c->shards[i].ring);
        explicit_bzero(&c->shards[i].addr, sizeof(c->shards[i].addr));
    }
    cluster_ring_free(&c->ring);
    free(c->buckets);
    free(c->shards);
    free(c->env);
    free(c);
}

void cluster_state(const cluster_t *c, uint32_t *shards, uint32_t *up)
{
    *shards = c ? c->nshards : 0;
    *up = 0;
    for (uint32_t i = 0; c && i < c->nshards; i++)
        *up += c->shards[i].state == SHARD_UP;
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
                             k ? "auth_error" : "up", sh->addr.label,
                             k ? sh->auth_error : sh->state == SHARD_UP);
            if (n > 0 && (size_t)n < sizeof(line))
                gale_buf_append(out, line, (size_t)n);
        }
    }
}
