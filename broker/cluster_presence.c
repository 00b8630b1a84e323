/*
 * cluster_presence: presence (presence.h) across the brokers of a cluster, kept on each
 * topic's shard by the presence scripts (cluster_wire.h "presence in Redis").
 *
 * - A connection becoming present runs JOIN with its member; one stopping runs LEAVE (last
 *   when this broker has no member left on the topic). Each PUBLISHes the event on the
 *   topic's channel, and every broker, this one too, hands it to its local watchers
 *   (presence_event): one path, in Redis's order.
 * - Every expiry/3 (--presence-expiry) REFRESH per topic with local members keeps this
 *   broker's entry alive and sweeps the brokers whose entry expired (killed, cut off): their
 *   members leave, with events, within expiry + expiry/3 of their last refresh.
 * - A script that fails (shard down, timeout) marks its topic unsynced; when the shard is
 *   ready again SYNC makes Redis hold exactly the local members of every such topic and of
 *   every topic with local members (Redis may have lost them). First, once after start,
 *   TAKEOVER removes the members a previous process with the same --node-id left behind.
 * - The presence op runs READ (a sweep, the exact count and up to --presence-list-max members).
 */
#include "cluster_internal.h"

#include "conn.h"
#include "frame.h"
#include "log.h"
#include "presence.h"

#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A presence read in flight (CMD_PRESENCE_READ): whom to answer, and how. */
typedef struct cpres_read {
    pending_t *done;
    uint64_t id;
    uint32_t heard; /* the topic's events heard when sent, if known (it had local state) */
    bool has_id, known;
    uint8_t enc;
    uint8_t len;
    char topic[];
} cpres_read_t;

const char *const cpres_scripts[CPRES_N] = {
    CLUSTER_SCRIPT_PRESENCE_JOIN, CLUSTER_SCRIPT_PRESENCE_LEAVE,
    CLUSTER_SCRIPT_PRESENCE_SYNC, CLUSTER_SCRIPT_PRESENCE_REFRESH,
    CLUSTER_SCRIPT_PRESENCE_READ, CLUSTER_SCRIPT_PRESENCE_TAKEOVER,
};

static broker_t *B(cluster_t *c)
{
    return c->b;
}

static uint64_t expiry_ms(const cluster_t *c)
{
    return c->b->cfg.presence_expiry_s * 1000;
}

/* The instance as in conn ids and in pz: keys (16 lowercase hex). */
static size_t inst_hex(const cluster_t *c, char out[17])
{
    snprintf(out, 17, "%016" PRIx64, c->b->instance);
    return 16;
}

/* A SYNC in flight: its topic, and the gone members it announces (given back if it fails). */
typedef struct {
    pres_topic_t *t;
    pres_member_t *gone; /* cnext list */
} cpres_sync_t;

/*
 * Sends presence script `sha` on topic t's shard with KEYS p:T pz:T pi:INST and ARGV
 * inst, arg (expiry or last), topic, channel, then extra[0..nextra). The reply goes to
 * cpres_reply as (kind, ctx), t counted in inflight meanwhile. False when it could not be
 * sent: t is unsynced.
 */
static bool send_topic(cluster_t *c, const char *sha, pres_topic_t *t, cmd_kind_t kind, void *ctx,
                       const char *arg, size_t nextra, const char **extra, const size_t *extra_lens)
{
    char pkey[CLUSTER_PRESENCE_KEY_MAX], zkey[CLUSTER_PRESENCE_KEY_MAX],
        ikey[CLUSTER_PRESENCE_KEY_MAX], inst[17], chan[CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX + 1];
    const char *prefix = c->b->cfg.redis_prefix;
    size_t il = inst_hex(c, inst);
    size_t pl =
        cluster_presence_key(pkey, sizeof(pkey), prefix, c->prefix_len, 'p', t->name, t->len);
    size_t zl =
        cluster_presence_key(zkey, sizeof(zkey), prefix, c->prefix_len, 'z', t->name, t->len);
    size_t kl = cluster_presence_key(ikey, sizeof(ikey), prefix, c->prefix_len, 'i', inst, il);
    memcpy(chan, prefix, c->prefix_len);
    memcpy(chan + c->prefix_len, t->name, t->len);
    size_t cl = c->prefix_len + t->len;
    size_t argc = 10 + nextra;
    const char **argv = malloc(argc * sizeof(*argv));
    size_t *lens = malloc(argc * sizeof(*lens));
    bool ok = false;
    if (argv && lens && pl && zl && kl && argc <= INT_MAX) {
        const char *head[10] = {"EVALSHA", sha, "3", pkey, zkey, ikey, inst, arg, t->name, chan};
        size_t hlens[10] = {7, 40, 1, pl, zl, kl, il, strlen(arg), t->len, cl};
        memcpy(argv, head, sizeof(head));
        memcpy(lens, hlens, sizeof(hlens));
        for (size_t i = 0; i < nextra; i++) {
            argv[10 + i] = extra[i];
            lens[10 + i] = extra_lens[i];
        }
        size_t bytes = 0;
        for (size_t i = 0; i < argc; i++)
            bytes += lens[i];
        ok = cluster_send(cluster_shard_of(c, t->name, t->len), kind, ctx, bytes, (int)argc, argv,
                          lens);
    }
    free(argv);
    free(lens);
    if (ok && t->inflight++ == 0)
        t->heard_at = t->heard;
    else if (!ok)
        t->unsynced = 1;
    return ok;
}

static void expiry_arg(const cluster_t *c, char out[24])
{
    snprintf(out, 24, "%" PRIu64, expiry_ms(c));
}

void cpres_join(void *bus, pres_member_t *m)
{
    cluster_t *c = bus;
    char exp[24];
    expiry_arg(c, exp);
    const char *extra[2] = {m->conn, m->json};
    size_t lens[2] = {m->conn_len, m->json_len};
    m->sent =
        send_topic(c, c->sha_presence[CPRES_JOIN], m->t, CMD_PRESENCE, m->t, exp, 2, extra, lens);
}

void cpres_leave(void *bus, pres_member_t *m)
{
    cluster_t *c = bus;
    const char *extra[1] = {m->conn};
    size_t lens[1] = {m->conn_len};
    if (!m->sent) { /* Redis never had it (its topic is unsynced): nobody heard its join */
        presence_forget(c->b->presence, m);
        return;
    }
    /* m is detached: "last" when this broker has no member left on the topic. */
    if (!send_topic(c, c->sha_presence[CPRES_LEAVE], m->t, CMD_PRESENCE_LEAVE, m,
                    m->t->nlocal ? "0" : "1", 1, extra, lens))
        presence_gone(c->b->presence, m); /* announced by the next SYNC */
}

/* Gives the gone members of a SYNC that failed back to their topic. */
static void sync_failed(cluster_t *c, cpres_sync_t *sy)
{
    for (pres_member_t *m = sy->gone, *mn; m; m = mn) {
        mn = m->cnext;
        presence_gone(c->b->presence, m);
    }
    sy->gone = NULL;
    sy->t->unsynced = 1;
}

/*
 * SYNC of t: Redis gets exactly t's local members (joins and leaves for the difference), and
 * the members that left while Redis could not be told get their leave.
 */
static void sync_topic(cluster_t *c, pres_topic_t *t)
{
    size_t n = 0;
    for (pres_member_t *m = t->members; m; m = m->next)
        n++;
    size_t nextra = 1 + 2 * (n + t->ngone);
    const char **extra = malloc(nextra * sizeof(*extra));
    size_t *lens = malloc(nextra * sizeof(*lens));
    cpres_sync_t *sy = calloc(1, sizeof(*sy));
    if (!extra || !lens || !sy) {
        free(extra);
        free(lens);
        free(sy);
        t->unsynced = 1; /* tried again at the next refresh */
        return;
    }
    char ngone[24], exp[24];
    snprintf(ngone, sizeof(ngone), "%" PRIu32, t->ngone);
    extra[0] = ngone;
    lens[0] = strlen(ngone);
    size_t i = 1;
    for (pres_member_t *m = t->gone; m; m = m->cnext, i += 2) {
        extra[i] = m->conn;
        lens[i] = m->conn_len;
        /* A LEAVE that may have run (its answer was lost): no second leave event unless
         * Redis still holds the member (cluster_wire.h SYNC). */
        extra[i + 1] = m->maybe_left ? "" : m->json;
        lens[i + 1] = m->maybe_left ? 0 : m->json_len;
    }
    for (pres_member_t *m = t->members; m; m = m->next, i += 2) {
        extra[i] = m->conn;
        lens[i] = m->conn_len;
        extra[i + 1] = m->json;
        lens[i + 1] = m->json_len;
    }
    expiry_arg(c, exp);
    sy->t = t;
    sy->gone = t->gone; /* the SYNC's now */
    t->gone = NULL;
    t->ngone = 0;
    t->unsynced = 0;
    if (!send_topic(c, c->sha_presence[CPRES_SYNC], t, CMD_PRESENCE_SYNC, sy, exp, nextra, extra,
                    lens)) {
        sync_failed(c, sy);
        free(sy);
    } else {
        for (pres_member_t *m = t->members; m; m = m->next)
            m->sent = 1;
    }
    free(extra);
    free(lens);
}

typedef struct {
    cluster_t *c;
    shard_t *sh; /* NULL: every shard */
    bool refresh;
} walk_t;

static void walk_topic(pres_topic_t *t, void *arg)
{
    walk_t *w = arg;
    shard_t *sh = cluster_shard_of(w->c, t->name, t->len);
    if ((w->sh && sh != w->sh) || !redis_conn_ready(sh->rc))
        return;
    if (t->unsynced || (!w->refresh && t->nlocal)) {
        sync_topic(w->c, t);
    } else if (w->refresh && t->nlocal) {
        char exp[24];
        expiry_arg(w->c, exp);
        (void)send_topic(w->c, w->c->sha_presence[CPRES_REFRESH], t, CMD_PRESENCE, t, exp, 0, NULL,
                         NULL);
    }
}

/* SET pn:NODE inst PX 2 x expiry on sh, or TAKEOVER (which sets it too). */
static void send_node(cluster_t *c, shard_t *sh, bool takeover)
{
    char nkey[CLUSTER_PRESENCE_KEY_MAX], inst[17], exp[24], px[24], named[96];
    const char *node = c->b->node_id;
    if (c->b->loop_idx) { /* --loops: every loop is a node of its own on the bus */
        snprintf(named, sizeof(named), "%s/%u", node, c->b->loop_idx);
        node = named;
    }
    size_t nl = cluster_presence_key(nkey, sizeof(nkey), c->b->cfg.redis_prefix, c->prefix_len, 'n',
                                     node, strlen(node));
    size_t il = inst_hex(c, inst);
    expiry_arg(c, exp);
    snprintf(px, sizeof(px), "%" PRIu64, 2 * expiry_ms(c));
    if (!nl)
        return;
    if (takeover) {
        const char *argv[] = {"EVALSHA", c->sha_presence[CPRES_TAKEOVER], "1", nkey,
                              inst,      c->b->cfg.redis_prefix,          exp};
        size_t lens[] = {7, 40, 1, nl, il, c->prefix_len, strlen(exp)};
        (void)cluster_send(sh, CMD_PRESENCE_NODE, sh, 0, 7, argv, lens);
    } else {
        const char *argv[] = {"SET", nkey, inst, "PX", px};
        size_t lens[] = {3, nl, il, 2, strlen(px)};
        (void)cluster_send(sh, CMD_PRESENCE_NODE, NULL, 0, 5, argv, lens);
    }
}

void cpres_shard_ready(cluster_t *c, shard_t *sh)
{
    if (!c->b->presence)
        return;
    if (!sh->pres_taken) { /* once after start: what this node id's previous process left */
        sh->pres_taken = true;
        send_node(c, sh, true);
    }
    walk_t w = {.c = c, .sh = sh, .refresh = false};
    presence_each(c->b->presence, walk_topic, &w);
}

void cpres_sweep(cluster_t *c)
{
    broker_t *b = c->b;
    if (!b->presence)
        return;
    uint64_t now = broker_uptime_ms(b);
    if (now < c->pres_next_ms)
        return;
    c->pres_next_ms = now + expiry_ms(c) / 3;
    for (uint32_t i = 0; i < c->nshards; i++)
        if (redis_conn_ready(c->shards[i].rc))
            send_node(c, &c->shards[i], false);
    walk_t w = {.c = c, .sh = NULL, .refresh = true};
    presence_each(b->presence, walk_topic, &w);
}

/* Whether s[0..len), a member from Redis, is one the encoders take (a JSON object). */
static bool member_ok(const char *s, size_t len)
{
    return s && len >= 2 && s[0] == '{' && s[len - 1] == '}' &&
           gale_json_valid((const uint8_t *)s, len, CLUSTER_MEMBER_DEPTH);
}

void cpres_reply(cluster_t *c, cmd_kind_t kind, void *ctx, redis_conn_reply_t answer,
                 const redis_value_t *v)
{
    broker_t *b = B(c);
    if (kind == CMD_PRESENCE_NODE) {
        long long n = redis_value_int(v);
        if (ctx && answer == REDIS_CONN_REPLY_OK && redis_value_kind(v) == REDIS_VALUE_INTEGER &&
            n > 0)
            log_info("presence: removed %lld members a previous process of node %s left", n,
                     b->node_id);
        return;
    }
    if (kind == CMD_PRESENCE || kind == CMD_PRESENCE_LEAVE || kind == CMD_PRESENCE_SYNC) {
        pres_member_t *m = kind == CMD_PRESENCE_LEAVE ? ctx : NULL;
        cpres_sync_t *sy = kind == CMD_PRESENCE_SYNC ? ctx : NULL;
        pres_topic_t *t = m ? m->t : sy ? sy->t : ctx;
        t->inflight--;
        /* An integer (HLEN), or REFRESH's {HLEN, lost}. */
        const redis_value_t *n =
            redis_value_kind(v) == REDIS_VALUE_ARRAY ? redis_value_at(v, 0) : v;
        const redis_value_t *lost =
            redis_value_kind(v) == REDIS_VALUE_ARRAY ? redis_value_at(v, 1) : NULL;
        bool ok = answer == REDIS_CONN_REPLY_OK && redis_value_kind(n) == REDIS_VALUE_INTEGER &&
                  redis_value_int(n) >= 0;
        if (ok)
            presence_count(b->presence, t, (uint64_t)redis_value_int(n), t->heard_at);
        else
            t->unsynced = 1; /* SYNC once the shard is back (or at the next refresh) */
        if (m && ok) {
            presence_forget(b->presence, m);
        } else if (m) {
            m->maybe_left = answer == REDIS_CONN_REPLY_DROPPED; /* sent: it may have run */
            presence_gone(b->presence, m);
        }
        if (sy && !ok)
            sync_failed(c, sy);
        if (sy && ok) /* after trouble with Redis: the watchers re-read the list */
            presence_stale(b->presence, t);
        for (pres_member_t *g = sy ? sy->gone : NULL, *gn; g; g = gn) {
            gn = g->cnext;
            presence_forget(b->presence, g);
        }
        free(sy);
        if (lost && redis_value_int(lost) == 1 && t->nlocal) {
            log_warn("presence %.*s: this broker's members were swept (it did not refresh in "
                     "time): writing them again",
                     (int)t->len, t->name);
            t->unsynced = 1; /* the next refresh tick sends SYNC */
        }
        presence_release(b->presence, t);
        return;
    }
    /* CMD_PRESENCE_READ */
    cpres_read_t *r = ctx;
    gale_err_t e = GALE_ERR_UNAVAILABLE;
    const char *why = "the cluster bus (Redis) did not answer the presence read";
    size_t n = answer == REDIS_CONN_REPLY_OK ? redis_value_count(v) : 0;
    const redis_value_t *cnt = n ? redis_value_at(v, 0) : NULL;
    if (cnt && redis_value_kind(cnt) == REDIS_VALUE_INTEGER && redis_value_int(cnt) >= 0) {
        /* Members that are well-formed, as many as fit in half of --queue-limit. */
        uint64_t count = (uint64_t)redis_value_int(cnt), good = 0, bytes = 0;
        size_t last = 1, bad = 0;
        for (; last < n; last++) {
            size_t len = 0;
            const char *s = redis_value_str(redis_value_at(v, last), &len);
            if (!member_ok(s, len)) {
                bad++;
                continue;
            }
            if ((bytes += len + PRESENCE_MEMBER_OVERHEAD) > b->cfg.queue_limit / 2)
                break;
            good++;
        }
        if (bad)
            log_warn("presence %.*s: %zu malformed members in Redis left out", r->len, r->topic,
                     bad);
        gale_enc_t enc = (gale_enc_t)r->enc;
        gale_buf_t buf;
        gale_buf_init(&buf, FRAME_HEADROOM);
        e = gale_encode_presence_begin(&buf, enc, r->has_id, r->id, r->topic, r->len, count, good);
        bool first = true;
        for (size_t i = 1; e == GALE_OK && i < last; i++) {
            size_t len = 0;
            const char *s = redis_value_str(redis_value_at(v, i), &len);
            /* The encoder checks a member as member_ok did: the malformed, left out above
             * (BAD_REQUEST, nothing written), are skipped again without a second check. */
            gale_err_t me =
                s ? gale_encode_presence_member(&buf, enc, first, (const uint8_t *)s, len)
                  : GALE_ERR_BAD_REQUEST;
            if (me == GALE_ERR_BAD_REQUEST)
                continue;
            e = me;
            first = false;
        }
        if (e == GALE_OK)
            e = gale_encode_presence_end(&buf, enc);
        frame_t *f = frame_built(&buf, e, enc);
        if (!f) {
            e = GALE_ERR_INTERNAL;
            why = "out of memory";
        } else if (r->done->out) {
            r->done->out->frame = f;
        } else {
            frame_unref(f);
        }
        pres_topic_t *t = r->known ? presence_topic(b->presence, r->topic, r->len) : NULL;
        if (t)
            presence_count(b->presence, t, count, r->heard);
    }
    pending_finish(b, r->done, e, e == GALE_OK ? "" : why);
    free(r);
}

gale_err_t cpres_read(void *bus, pending_t *done, const char *topic, size_t len, gale_enc_t enc,
                      bool has_id, uint64_t id, const char **why)
{
    cluster_t *c = bus;
    cpres_read_t *r = calloc(1, sizeof(*r) + len);
    char pkey[CLUSTER_PRESENCE_KEY_MAX], zkey[CLUSTER_PRESENCE_KEY_MAX], cap[24],
        chan[CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX + 1];
    const char *prefix = c->b->cfg.redis_prefix;
    size_t pl = cluster_presence_key(pkey, sizeof(pkey), prefix, c->prefix_len, 'p', topic, len);
    size_t zl = cluster_presence_key(zkey, sizeof(zkey), prefix, c->prefix_len, 'z', topic, len);
    if (!r || !pl || !zl) {
        free(r);
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    pres_topic_t *t = c->b->presence ? presence_topic(c->b->presence, topic, len) : NULL;
    *r = (cpres_read_t){.done = done,
                        .id = id,
                        .heard = t ? t->heard : 0,
                        .has_id = has_id,
                        .known = t != NULL,
                        .enc = (uint8_t)enc,
                        .len = (uint8_t)len};
    memcpy(r->topic, topic, len);
    memcpy(chan, prefix, c->prefix_len);
    memcpy(chan + c->prefix_len, topic, len);
    snprintf(cap, sizeof(cap), "%" PRIu64, c->b->cfg.presence_list_max);
    const char *argv[] = {"EVALSHA", c->sha_presence[CPRES_READ], "2", pkey, zkey, cap, topic,
                          chan};
    size_t lens[] = {7, 40, 1, pl, zl, strlen(cap), len, c->prefix_len + len};
    if (!cluster_send(cluster_shard_of(c, topic, len), CMD_PRESENCE_READ, r, 0, 8, argv, lens)) {
        free(r);
        *why = "the cluster bus (Redis) is unreachable";
        return GALE_ERR_UNAVAILABLE;
    }
    return GALE_OK;
}

void cpres_message(cluster_t *c, const char *channel, size_t channel_len, const uint8_t *raw,
                   size_t len)
{
    broker_t *b = B(c);
    cluster_presence_t e;
    if (!cluster_presence_decode(raw, len, &e) || channel_len != c->prefix_len + e.topic_len ||
        memcmp(channel, b->cfg.redis_prefix, c->prefix_len) != 0 ||
        memcmp(channel + c->prefix_len, e.topic, e.topic_len) != 0) {
        b->m.redis_invalid++;
        return;
    }
    if (b->presence)
        presence_event(b, e.topic, e.topic_len, e.kind == CLUSTER_PRESENCE_JOIN, e.count, e.conn,
                       e.conn_len, (const char *)e.member, e.member_len);
}
