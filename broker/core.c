#include "core.h"

#include "auth.h"
#include "dedup.h"
#include "history.h"
#include "log.h"
#include "loops.h"
#include "pending.h"
#include "presence.h"
#include "ring.h"
#include "router.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*
 * An answer in a connection's FIFO: one that waits for the cluster (p held by
 * cluster.c), or one finished but held behind such an answer, so that a
 * connection's answers keep the order of its requests.
 */
typedef struct core_reply core_reply_t;

struct core_reply {
    pending_t p;    /* first: the cluster holds &p */
    conn_t *c;      /* NULL once the connection closed */
    conn_reply_t r; /* the answer, once done */
    uint8_t done;   /* finished: the cluster holds it no more */
    uint8_t added;  /* sub: this request added the subscription */
    uint8_t plen;   /* sub: pattern length (patterns are <= 255 bytes) */
    char pattern[]; /* sub: the pattern, to undo it if the cluster refuses */
};

static bool silent(const conn_reply_t *r)
{
    return r->err == GALE_OK && r->op != GALE_OP_PING && r->op != GALE_OP_HIST &&
           r->op != GALE_OP_PRESENCE && !r->has_id;
}

/* Frees an answer the connection will never get. */
static void reply_drop(conn_reply_t *r)
{
    frame_unref(r->frame);
    r->frame = NULL;
}

static void count_err(broker_t *b, const conn_t *c, const conn_reply_t *r)
{
    if (r->err == GALE_OK)
        return;
    b->m.protocol_errors[r->err < GALE_ERR_COUNT ? r->err : GALE_ERR_INTERNAL]++;
    log_debug("conn %" PRIu64 ": err %s: %s", c->id, gale_err_name(r->err), r->why);
}

/* A connection's FIFO of answers, oldest first. */
RING_OF(reply_ring, core_reply_t *)

static bool holding(const conn_t *c)
{
    return c->replies && c->replies->count;
}

/* Appends q to c's FIFO; false when out of memory. */
static bool fifo_push(conn_t *c, core_reply_t *q)
{
    if (!c->replies && !(c->replies = calloc(1, sizeof(*c->replies))))
        return false;
    if (!reply_ring_push(c->replies, q))
        return false;
    q->c = c;
    return true;
}

static core_reply_t *reply_new(size_t plen)
{
    return calloc(1, sizeof(core_reply_t) + plen + 1);
}

static void out_of_memory(broker_t *b, conn_t *c)
{
    log_error("conn %" PRIu64 ": out of memory holding a reply: closing", c->id);
    c->ops->close(b, c, CONN_CLOSE_INTERNAL);
}

/* Answers a request now, or behind the answers held back. */
static void answer(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    count_err(b, c, r);
    if (silent(r))
        return;
    if (!holding(c)) {
        c->ops->reply(b, c, r);
        return;
    }
    core_reply_t *q = reply_new(0);
    if (!q || !fifo_push(c, q)) {
        free(q);
        frame_unref(r->frame);
        out_of_memory(b, c);
        return;
    }
    q->r = *r;
    q->done = 1;
}

/* Sends what is finished at the head of c's FIFO, in order. */
static void fifo_release(broker_t *b, conn_t *c)
{
    while (holding(c) && (*reply_ring_at(c->replies, 0))->done) {
        core_reply_t *head = reply_ring_shift(c->replies);
        if (!silent(&head->r))
            c->ops->reply(b, c, &head->r);
        else
            reply_drop(&head->r);
        free(head);
    }
}

/* Ends membership m: in the cluster, whose leave then owns m. */
static void member_leave(broker_t *b, pres_member_t *m)
{
    if (!b->bus.ops) {
        presence_leave(b, m);
        return;
    }
    presence_detach(b, m);
    b->bus.ops->leave(b->bus.ctx, m);
}

/* No connection here holds pattern p any more: the cluster forgets it. */
static void released(const char *p, size_t len, void *arg)
{
    broker_t *b = arg;
    b->bus.ops->release(p, len, b->bus.ctx);
}

/* Several loops, single node: the other loops' publishes reach c's loop by pattern and
 * delivery format (loops.h). */
static bool loops_gained(broker_t *b, const conn_t *c, const char *p, size_t len)
{
    return !b->loops || b->bus.ops || loops_interest_add(b, p, len, c->enc);
}

static void loops_lost(broker_t *b, const conn_t *c, const char *p, size_t len)
{
    if (b->loops && !b->bus.ops)
        loops_interest_drop(b, p, len, c->enc);
}

typedef struct {
    broker_t *b;
    const conn_t *c;
} lost_each_t;

static void loops_lost_each(const char *p, size_t len, void *arg)
{
    lost_each_t *x = arg;
    loops_lost(x->b, x->c, p, len);
}

/* c stops holding pattern p (it held it): the cluster and the other loops are told. */
static void unsubscribe(broker_t *b, conn_t *c, const char *p, size_t len)
{
    bool last = false;
    if (!topics_unsubscribe(b->topics, &c->owner, p, len, &last))
        return;
    loops_lost(b, c, p, len);
    if (last && b->bus.ops)
        released(p, len, b);
}

/* Takes back a sub the cluster could not make live, when this request added it. */
static void undo_sub(broker_t *b, conn_t *c, const char *p, size_t len)
{
    pres_member_t *m = presence_of(c, p, len);
    if (m)
        member_leave(b, m);
    unsubscribe(b, c, p, len);
}

/* pending_t.done of an answer that waited for the cluster. */
static void reply_done(broker_t *b, pending_t *p, gale_err_t e, const char *why)
{
    core_reply_t *q = (core_reply_t *)p;
    conn_t *c = q->c;
    q->done = 1;
    if (!c) { /* the connection closed meanwhile */
        reply_drop(&q->r);
        free(q);
        return;
    }
    if (e != GALE_OK && q->added)
        undo_sub(b, c, q->pattern, q->plen);
    if (e != GALE_OK) {
        reply_drop(&q->r);
        q->r.recovered = -1;
        q->r.has_pos = q->r.has_off = q->r.dup = false;
    }
    q->r.err = e;
    q->r.why = why;
    count_err(b, c, &q->r);
    fifo_release(b, c);
}

/* A FIFO entry for req's answer, to be finished through its pending_t. */
static core_reply_t *defer(conn_t *c, const gale_request_t *req)
{
    size_t plen = req->op == GALE_OP_SUB ? req->topic_len : 0;
    core_reply_t *q = reply_new(plen);
    if (!q)
        return NULL;
    q->p.done = reply_done;
    q->p.out = &q->r;
    q->r = (conn_reply_t){.op = req->op, .has_id = req->has_id, .id = req->id, .recovered = -1};
    q->plen = (uint8_t)plen;
    memcpy(q->pattern, req->topic, plen);
    if (!fifo_push(c, q)) {
        free(q);
        return NULL;
    }
    return q;
}

/* The --history rule of a concrete topic, or NULL. */
static const gale_history_rule_t *rule_of(const broker_t *b, const char *topic, size_t len)
{
    return history_match(b->cfg.history, b->cfg.nhistory, topic, len);
}

/* The time of the history and the dedup table. */
static uint64_t now_ms(const broker_t *b)
{
    return broker_uptime_ms(b);
}

static void reply_pos(conn_reply_t *r, gale_pos_t pos)
{
    r->has_pos = true;
    r->ep_len = (uint8_t)pos.ep_len;
    memcpy(r->ep, pos.ep, pos.ep_len);
    r->off = pos.off;
}

/*
 * Queues to c the messages of t after offset `after` (`n` of them, all held): false when
 * they would take more than half of --queue-limit (replaying them would close c as a slow
 * consumer), memory ran out, or c stopped taking frames.
 */
static bool replay(broker_t *b, conn_t *c, hist_topic_t *t, uint64_t after, uint64_t n)
{
    gale_enc_t enc = (gale_enc_t)c->enc;
    uint64_t bytes = 0;
    bool nomem = false;
    for (uint64_t off = after + 1; off <= after + n; off++) {
        frame_t *f = history_frame(b->history, history_at(t, off), enc, &nomem);
        if (!f)
            return false; /* out of memory (unconvertible data is refused at publish) */
        bytes += f->len;
    }
    if (bytes > b->cfg.queue_limit / 2)
        return false;
    for (uint64_t off = after + 1; off <= after + n; off++) {
        frame_t *f = history_frame(b->history, history_at(t, off), enc, &nomem);
        if (f && !c->ops->deliver(b, c, f))
            return false;
        b->m.messages_replayed += f != NULL;
    }
    return true;
}

/*
 * The history part of a sub of a topic: its position in the answer and, with since, the
 * missed messages replayed (single node: nothing is published meanwhile).
 */
static void sub_history(broker_t *b, conn_t *c, const gale_request_t *req,
                        const gale_history_rule_t *rule, conn_reply_t *r)
{
    hist_topic_t *t = rule ? history_topic(b->history, rule, req->topic, req->topic_len, now_ms(b))
                           : NULL; /* NULL with a rule: out of memory, no position to give */
    uint64_t missed;
    if (req->has_since) {
        r->recovered = t && history_covers(t, &req->since, b->cfg.recovery_max, &missed) &&
                       replay(b, c, t, req->since.off, missed);
        b->m.recoveries[r->recovered]++;
    }
    if (!t)
        return;
    reply_pos(r, history_pos(t));
    history_enforce(b->history);
}

size_t core_conn_name(const broker_t *b, const conn_t *c, char *out)
{
    int n = snprintf(out, CORE_CONN_NAME_MAX, "%016" PRIx64 "-%" PRIu64, b->instance, c->id);
    return n > 0 ? (size_t)n : 0;
}

/*
 * The member JSON of c for a sub of a topic with presence (req): its conn id (name, written
 * to name[0..*name_len)), the token's user, and the token's gale.info or, on an open broker,
 * the sub's info; into out.
 */
static gale_err_t member_json(broker_t *b, conn_t *c, const gale_request_t *req, gale_buf_t *out,
                              char *name, size_t *name_len, const char **why)
{
    *name_len = core_conn_name(b, c, name);
    const char *user = c->grant && c->grant->user[0] ? c->grant->user : NULL;
    const uint8_t *info = c->grant ? (const uint8_t *)c->grant->info : req->info;
    size_t info_len = c->grant ? c->grant->info_len : req->info_len;
    gale_buf_t conv;
    gale_buf_init(&conv, 0);
    gale_err_t e = GALE_OK;
    if (info && !c->grant && req->data_enc == GALE_ENC_MSGPACK) {
        e = gale_convert_data(&conv, GALE_ENC_JSON, GALE_ENC_MSGPACK, info, info_len);
        info = conv.data;
        info_len = conv.len;
        if (e != GALE_OK)
            *why =
                e == GALE_ERR_BAD_REQUEST ? "info could not be converted to JSON" : "out of memory";
    }
    if (e == GALE_OK && info && info_len > b->cfg.presence_info_max) {
        *why = c->grant ? "the token's gale.info is over --presence-info-max bytes"
                        : "info is over --presence-info-max bytes";
        e = GALE_ERR_LIMIT;
    }
    if (e == GALE_OK && (e = gale_encode_member(out, name, *name_len, user, user ? strlen(user) : 0,
                                                info, info_len)) != GALE_OK)
        *why = "out of memory";
    if (e == GALE_OK && !presence_room(b->presence, out->len)) {
        *why = "presence holds --presence-memory on this broker: no new member now";
        e = GALE_ERR_LIMIT;
    }
    gale_buf_free(&conv);
    return e;
}

/*
 * The presence part of a sub of a topic with presence, already in the index: a new
 * membership from json (NULL when c already is a member), or the watch flag of the one it
 * has. False when out of memory.
 */
static bool sub_presence(broker_t *b, conn_t *c, const gale_request_t *req, pres_member_t *m,
                         const gale_buf_t *json, const char *name, size_t name_len)
{
    if (m) {
        presence_watch(b->presence, m, req->presence);
        return true;
    }
    m = presence_join(b, c, req->topic, req->topic_len, name, name_len, (const char *)json->data,
                      json->len, req->presence);
    if (m && b->bus.ops)
        b->bus.ops->join(b->bus.ctx, m);
    return m != NULL;
}

static gale_err_t do_sub(broker_t *b, conn_t *c, const gale_request_t *req, conn_reply_t *rep,
                         const char **why, bool *deferred)
{
    if (c->owner.nsubs >= b->cfg.max_subscriptions &&
        !topics_holds(b->topics, &c->owner, req->topic, req->topic_len)) {
        *why = "too many subscriptions on this connection";
        return GALE_ERR_LIMIT;
    }
    bool pres = !req->is_pattern && presence_on(b->presence, req->topic, req->topic_len);
    if ((req->presence || req->info) && !pres) {
        *why = "this topic has no presence (--presence)";
        return GALE_ERR_BAD_REQUEST;
    }
    pres_member_t *m = pres ? presence_of(c, req->topic, req->topic_len) : NULL;
    char name[CORE_CONN_NAME_MAX];
    size_t name_len = 0;
    gale_buf_t json;
    gale_buf_init(&json, 0);
    gale_err_t e = pres && !m ? member_json(b, c, req, &json, name, &name_len, why) : GALE_OK;
    topics_result_t r =
        e == GALE_OK ? topics_subscribe(b->topics, &c->owner, req->topic, req->topic_len, NULL)
                     : TOPICS_INVALID;
    if (r == TOPICS_ADDED && !loops_gained(b, c, req->topic, req->topic_len)) {
        topics_unsubscribe(b->topics, &c->owner, req->topic, req->topic_len, NULL);
        r = TOPICS_NOMEM;
    }
    if (r == TOPICS_ADDED || r == TOPICS_EXISTS) {
        if (pres && !sub_presence(b, c, req, m, &json, name, name_len)) {
            if (r == TOPICS_ADDED)
                undo_sub(b, c, req->topic, req->topic_len);
            r = TOPICS_NOMEM;
        }
    }
    gale_buf_free(&json);
    if (e != GALE_OK)
        return e;              /* nothing registered */
    if (r == TOPICS_INVALID) { /* from an adapter that did not check it (decode does) */
        *why = "not a valid pattern";
        return GALE_ERR_BAD_TOPIC;
    }
    if (r == TOPICS_NOMEM) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    const gale_history_rule_t *rule =
        req->is_pattern ? NULL : rule_of(b, req->topic, req->topic_len);
    if (!b->bus.ops) {
        sub_history(b, c, req, rule, rep);
        return GALE_OK;
    }
    bool added = r == TOPICS_ADDED, held = false;
    core_reply_t *q = defer(c, req);
    if (!q) {
        if (added)
            undo_sub(b, c, req->topic, req->topic_len);
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    q->added = added;
    *deferred = true; /* the entry answers, in order; reply_done undoes a refused sub */
    if (rule) {
        e = b->bus.ops->recover(b->bus.ctx, &q->p, c, req->topic, req->topic_len, rule,
                                req->has_since ? &req->since : NULL, why);
        if (e != GALE_OK)
            pending_finish(b, &q->p, e, *why);
        return GALE_OK;
    }
    if (req->has_since) {
        q->r.recovered = 0; /* a topic without history */
        b->m.recoveries[0]++;
    }
    e = b->bus.ops->sub(b->bus.ctx, &q->p, req->topic, req->topic_len, why, &held);
    if (!held)
        pending_finish(b, &q->p, e, e == GALE_OK ? "" : *why);
    return GALE_OK;
}

static void do_unsub(broker_t *b, conn_t *c, const gale_request_t *req)
{
    pres_member_t *m = req->is_pattern ? NULL : presence_of(c, req->topic, req->topic_len);
    if (m)
        member_leave(b, m);
    unsubscribe(b, c, req->topic, req->topic_len);
}

/*
 * A publish on this node alone: deduplicated by mid, stored at the next offset of a topic
 * with history, delivered.
 */
static gale_err_t publish_here(broker_t *b, conn_t *c, const gale_request_t *req,
                               const gale_history_rule_t *rule, conn_reply_t *rep, const char **why)
{
    gale_enc_t enc = req->data_enc;
    router_msg_t msg = {.topic = req->topic,
                        .topic_len = req->topic_len,
                        .reply = req->reply,
                        .reply_len = req->reply_len,
                        .noecho = c->noecho ? c->id : 0,
                        .qos0 = req->qos0,
                        .enc = enc,
                        .data = req->data,
                        .data_len = req->data_len};
    /* The loops' one dedup window takes one clock: the process's monotonic one. */
    uint64_t now = b->loops ? loops_now_ms() : now_ms(b), off = 0;
    if (req->mid) {
        if (b->loops) /* the loops' one window: seen, or taken now, before any delivery */
            loops_lock(b->loops);
        bool seen =
            dedup_seen(b->dedup, req->topic, req->topic_len, req->mid, req->mid_len, now, &off);
        bool room = seen || dedup_room(b->dedup, now);
        bool taken =
            !seen && room && b->loops &&
            dedup_add(b->dedup, req->topic, req->topic_len, req->mid, req->mid_len, 0, now);
        if (b->loops)
            loops_unlock(b->loops);
        if (seen) {
            rep->dup = true;
            rep->has_off = off != 0;
            rep->off = off;
            b->m.publish_duplicates++;
            return GALE_OK;
        }
        if (!room) {
            *why = "too many mids remembered (--dedup-max within --dedup-window)";
            return GALE_ERR_LIMIT;
        }
        if (b->loops && !taken)
            log_warn("conn %" PRIu64 ": out of memory remembering a mid", c->id);
    }
    gale_err_t e;
    if (rule) {
        hist_topic_t *t = history_topic(b->history, rule, req->topic, req->topic_len, now);
        hist_msg_t *m = t ? history_append_reply(b->history, t, enc, req->data, req->data_len,
                                                 req->reply, req->reply_len, now)
                          : NULL;
        if (!m) {
            *why = "out of memory";
            return GALE_ERR_INTERNAL;
        }
        gale_pos_t pos = history_pos(t);
        frame_t *built[GALE_ENC_COUNT];
        msg.pos = &pos;
        e = router_publish_at(b, &msg, built);
        history_keep_frames(b->history, m, built);
        for (int i = 0; i < GALE_ENC_COUNT; i++)
            frame_unref(built[i]);
        reply_pos(rep, pos);
        off = pos.off;
        history_enforce(b->history);
    } else {
        e = router_publish(b, &msg);
    }
    if (req->mid && !b->loops &&
        !dedup_add(b->dedup, req->topic, req->topic_len, req->mid, req->mid_len, off, now))
        log_warn("conn %" PRIu64 ": out of memory remembering a mid", c->id);
    if (e != GALE_OK)
        *why = router_convert_why(enc);
    return e;
}

/*
 * Whether data of encoding enc converts to the other encoding. Only MessagePack can fail
 * (docs/PROTOCOL-NOTES.md "Output budget"): a topic with history refuses such a message,
 * since its JSON subscribers could not be given that offset, leaving them a gap.
 */
static bool convertible(gale_enc_t enc, const uint8_t *data, size_t len)
{
    if (enc != GALE_ENC_MSGPACK)
        return true;
    gale_buf_t tmp;
    gale_buf_init(&tmp, 0);
    gale_err_t e = gale_convert_data(&tmp, GALE_ENC_JSON, enc, data, len);
    gale_buf_free(&tmp);
    return e != GALE_ERR_BAD_REQUEST;
}

static gale_err_t do_pub(broker_t *b, conn_t *c, const gale_request_t *req, conn_reply_t *rep,
                         const char **why, bool *deferred)
{
    gale_enc_t enc = req->data_enc;
    const gale_history_rule_t *rule = rule_of(b, req->topic, req->topic_len);
    if (enc == GALE_ENC_MSGPACK && rule && !convertible(enc, req->data, req->data_len)) {
        *why = "data could not be converted for JSON subscribers; a topic with history "
               "takes only data every subscriber can receive";
        return GALE_ERR_BAD_REQUEST;
    }
    b->m.proto_published[conn_proto(c)]++;
    if (!b->bus.ops)
        return publish_here(b, c, req, rule, rep, why);
    core_reply_t *q = defer(c, req);
    if (!q) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    bus_pub_t m = {.topic = req->topic,
                   .topic_len = req->topic_len,
                   .enc = enc,
                   .data = req->data,
                   .data_len = req->data_len,
                   .mid = req->mid,
                   .mid_len = req->mid_len,
                   .reply = req->reply,
                   .reply_len = req->reply_len,
                   .noecho = c->noecho ? c->id : 0,
                   .qos0 = req->qos0,
                   .rule = rule};
    gale_err_t e = b->bus.ops->pub(b->bus.ctx, &q->p, &m, why);
    *deferred = true;
    if (e != GALE_OK) /* nothing was delivered: the entry answers, in order */
        pending_finish(b, &q->p, e, *why);
    return GALE_OK;
}

/*
 * The `hist` answer for topic[0..len) (its rule: NULL without history): its last `limit`
 * messages held (limit already capped, and as many of the newest as fit in half of
 * --queue-limit), in encoding enc, appended to out.
 */
static gale_err_t hist_answer(broker_t *b, const char *topic, size_t len,
                              const gale_history_rule_t *rule, uint64_t limit, gale_enc_t enc,
                              bool has_id, uint64_t id, gale_buf_t *out)
{
    hist_topic_t *t = rule ? history_topic(b->history, rule, topic, len, now_ms(b)) : NULL;
    if (rule && !t)
        return GALE_ERR_INTERNAL;
    gale_pos_t pos;
    uint64_t n = 0, first = 0;
    if (t) {
        pos = history_pos(t);
        uint64_t budget = b->cfg.queue_limit / 2, bytes = 0;
        for (uint64_t off = pos.off; n < limit && off && history_at(t, off); off--, n++) {
            bytes += history_at(t, off)->len + 32;
            if (bytes > budget)
                break;
        }
        first = pos.off - n + 1;
    }
    gale_err_t e = gale_encode_hist_begin(out, enc, has_id, id, t ? &pos : NULL, n);
    bool none = true;
    for (uint64_t i = 0; e == GALE_OK && i < n; i++) {
        hist_msg_t *m = history_at(t, first + i);
        gale_err_t ie =
            gale_encode_hist_item(out, enc, none, m->off, (gale_enc_t)m->enc, m->data, m->len);
        if (ie == GALE_OK)
            none = false;
        else if (ie != GALE_ERR_BAD_REQUEST) /* not convertible: left out */
            e = ie;
    }
    if (e == GALE_OK)
        e = gale_encode_hist_end(out, enc);
    if (t)
        history_enforce(b->history);
    return e;
}

static gale_err_t do_hist(broker_t *b, conn_t *c, const gale_request_t *req, conn_reply_t *rep,
                          const char **why, bool *deferred)
{
    gale_enc_t enc = (gale_enc_t)c->enc;
    const gale_history_rule_t *rule = rule_of(b, req->topic, req->topic_len);
    uint64_t limit = req->has_limit ? req->limit : CORE_HIST_LIMIT;
    if (limit > b->cfg.hist_max_limit)
        limit = b->cfg.hist_max_limit;
    if (rule && limit > rule->size) /* a cluster's MAXLEN ~ may keep a few more */
        limit = rule->size;
    if (b->bus.ops && rule) {
        core_reply_t *q = defer(c, req);
        if (!q) {
            *why = "out of memory";
            return GALE_ERR_INTERNAL;
        }
        *deferred = true;
        gale_err_t e = b->bus.ops->hist(b->bus.ctx, &q->p, req->topic, req->topic_len, rule, limit,
                                        enc, req->has_id, req->id, why);
        if (e != GALE_OK)
            pending_finish(b, &q->p, e, *why);
        return GALE_OK;
    }
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    rep->frame = frame_built(
        &buf,
        hist_answer(b, req->topic, req->topic_len, rule, limit, enc, req->has_id, req->id, &buf),
        enc);
    if (!rep->frame) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    return GALE_OK;
}

/* The `presence` answer: built here (single node) or from the topic's shard. */
static gale_err_t do_presence(broker_t *b, conn_t *c, const gale_request_t *req, conn_reply_t *rep,
                              const char **why, bool *deferred)
{
    gale_enc_t enc = (gale_enc_t)c->enc;
    if (!presence_on(b->presence, req->topic, req->topic_len)) {
        *why = "this topic has no presence (--presence)";
        return GALE_ERR_BAD_REQUEST;
    }
    if (b->bus.ops) {
        core_reply_t *q = defer(c, req);
        if (!q) {
            *why = "out of memory";
            return GALE_ERR_INTERNAL;
        }
        *deferred = true;
        gale_err_t e = b->bus.ops->presence(b->bus.ctx, &q->p, req->topic, req->topic_len, enc,
                                            req->has_id, req->id, why);
        if (e != GALE_OK)
            pending_finish(b, &q->p, e, *why);
        return GALE_OK;
    }
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    rep->frame = frame_built(
        &buf, presence_answer(b, req->topic, req->topic_len, enc, req->has_id, req->id, &buf), enc);
    if (!rep->frame) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    return GALE_OK;
}

/* The --pub-rate token bucket: true if c may publish now (and takes the token). */
static bool pub_allowed(broker_t *b, conn_t *c)
{
    uint64_t rate = b->cfg.pub_rate;
    uint64_t cap = (b->cfg.pub_burst ? b->cfg.pub_burst : rate) * 1000;
    uint32_t now = (uint32_t)broker_uptime_ms(b);
    uint64_t t = c->rl_tokens + (uint64_t)(uint32_t)(now - c->rl_ms) * rate;
    c->rl_ms = now;
    if (t > cap)
        t = cap;
    if (t < 1000) {
        c->rl_tokens = (uint32_t)t;
        return false;
    }
    c->rl_tokens = (uint32_t)(t - 1000);
    return true;
}

/*
 * refresh (gale's addition, docs/PROTOCOL.md "Token refresh"): a new token for a connection.
 * The patterns it holds that the new grant does not allow are collected (topics_owner_each)
 * before any is dropped.
 */
typedef struct {
    const auth_grant_t *g;
    char (*pat)[GALE_TOPIC_MAX + 1];
    size_t n, cap;
} revoked_t;

static void note_revoked(const char *p, size_t len, void *arg)
{
    revoked_t *r = arg;
    if (r->n < r->cap && !auth_may_sub(r->g, p, len))
        memcpy(r->pat[r->n++], p, len + 1);
}

/*
 * Drops the subscriptions of c that its (new) grant does not allow, each announced with
 * {"op":"err","code":"forbidden","topic":P,"msg":...}: a refreshed token's permissions
 * govern what c keeps receiving, not only its next requests.
 */
static void drop_revoked(broker_t *b, conn_t *c)
{
    static const char msg[] = "subscription dropped: the refreshed token does not allow it";
    gale_enc_t enc = (gale_enc_t)c->enc;
    revoked_t r = {.g = c->grant, .cap = c->owner.nsubs};
    if (r.cap == 0)
        return;
    if (!(r.pat = malloc(r.cap * sizeof(*r.pat)))) {
        log_error("conn %" PRIu64 ": out of memory checking its subscriptions: closing", c->id);
        c->ops->close(b, c, CONN_CLOSE_INTERNAL);
        return;
    }
    topics_owner_each(b->topics, &c->owner, note_revoked, &r);
    for (size_t i = 0; i < r.n; i++) {
        size_t len = strlen(r.pat[i]);
        undo_sub(b, c, r.pat[i], len);
        b->m.refresh_dropped++;
        log_info("conn %" PRIu64 ": subscription '%s' dropped: the refreshed token of user '%s' "
                 "does not allow it",
                 c->id, r.pat[i], c->grant->user);
        gale_buf_t buf;
        gale_buf_init(&buf, FRAME_HEADROOM);
        frame_t *f = frame_built(
            &buf, gale_encode_err_topic(&buf, enc, GALE_ERR_FORBIDDEN, r.pat[i], len, msg), enc);
        if (f)
            c->ops->deliver(b, c, f);
        frame_unref(f);
    }
    free(r.pat);
}

/*
 * Answers a refresh (e: its decoding): with a token of the same user (`sub`) that the
 * broker accepts now, c's grant becomes the token's (its expiry and permissions), then the
 * subscriptions it no longer allows are dropped; otherwise an `err` and c keeps its grant.
 */
static void refresh(broker_t *b, conn_t *c, const gale_request_t *req, gale_err_t e,
                    const char *why)
{
    conn_reply_t r = {.op = req->op, .has_id = req->has_id, .id = req->id, .recovered = -1};
    auth_grant_t *g = NULL;
    if (e != GALE_OK) {
        /* malformed: why is the decoder's */
    } else if (!b->auth) {
        e = GALE_ERR_BAD_REQUEST;
        why = "this broker has no authentication";
    } else if (!c->grant) {
        e = GALE_ERR_BAD_REQUEST;
        why = "this connection has no token to refresh";
    } else if (!(g = auth_lookup(b->auth, req->token, req->token_len, (int64_t)time(NULL), &why))) {
        e = GALE_ERR_BAD_REQUEST;
        r.why_prefix = "token refused: ";
    } else if (strcmp(g->user, c->grant->user) != 0) {
        e = GALE_ERR_FORBIDDEN;
        why = "the token is another user's (its sub differs from the connection's)";
    }
    b->m.refreshes[e == GALE_OK]++;
    r.err = e;
    r.why = e == GALE_OK ? "" : why;
    if (e != GALE_OK) {
        log_info("conn %" PRIu64 ": refresh refused (%s): %s%s", c->id, gale_err_name(e),
                 r.why_prefix ? r.why_prefix : "", r.why);
        answer(b, c, &r);
        return;
    }
    auth_grant_ref(g);
    auth_grant_unref(c->grant);
    c->grant = g;
    if (g->exp == AUTH_NO_TIME)
        log_info("conn %" PRIu64 ": token of user '%s' refreshed (no expiry)", c->id, g->user);
    else
        log_info("conn %" PRIu64 ": token of user '%s' refreshed, expires in %" PRId64 " s", c->id,
                 g->user, g->exp - (int64_t)time(NULL));
    answer(b, c, &r);
    drop_revoked(b, c);
}

/* Carries out req unless e is already an error; answers unless the answer was deferred. */
static void run(broker_t *b, conn_t *c, const gale_request_t *req, gale_err_t e, const char *why)
{
    bool deferred = false;
    conn_reply_t r = {.op = req->op, .has_id = req->has_id, .id = req->id, .recovered = -1};
    if (req->op == GALE_OP_REFRESH) {
        refresh(b, c, req, e, why);
        return;
    }
    if (e == GALE_OK && c->grant)
        e = auth_check(c->grant, req, &why);
    if (e == GALE_OK && req->op == GALE_OP_PUB && b->cfg.pub_rate && !c->unmetered &&
        !pub_allowed(b, c)) {
        e = GALE_ERR_LIMIT;
        why = "publish rate over --pub-rate";
    }
    if (e == GALE_OK) {
        switch (req->op) {
        case GALE_OP_SUB:
            e = do_sub(b, c, req, &r, &why, &deferred);
            break;
        case GALE_OP_UNSUB:
            do_unsub(b, c, req);
            break;
        case GALE_OP_PUB:
            e = do_pub(b, c, req, &r, &why, &deferred);
            break;
        case GALE_OP_HIST:
            e = do_hist(b, c, req, &r, &why, &deferred);
            break;
        case GALE_OP_PRESENCE:
            e = do_presence(b, c, req, &r, &why, &deferred);
            break;
        case GALE_OP_PING:
        case GALE_OP_REFRESH: /* answered by refresh() */
            break;
        }
    }
    if (deferred)
        return; /* in the FIFO: answered when the cluster finishes it */
    r.err = e;
    r.why = e == GALE_OK ? "" : why;
    if (e != GALE_OK) {
        reply_drop(&r);
        r.recovered = -1;
        r.has_pos = r.has_off = r.dup = false;
    }
    answer(b, c, &r);
}

void core_request(broker_t *b, conn_t *c, const gale_request_t *req)
{
    run(b, c, req, GALE_OK, "");
}

uint16_t core_message(broker_t *b, conn_t *c, const uint8_t *msg, size_t len, bool binary)
{
    gale_request_t req;
    const char *why = "";
    gale_err_t e;
    memset(&req, 0, sizeof(req));
    if (binary != (c->enc == GALE_ENC_MSGPACK)) {
        e = GALE_ERR_BAD_REQUEST;
        why = binary ? "binary frame on a gale.v1.json connection"
                     : "text frame on a gale.v1.msgpack connection";
    } else {
        e = gale_decode_request((gale_enc_t)c->enc, msg, len, &req, &why);
    }
    /*
     * Text must be UTF-8 whatever it holds. A JSON message that decodes is: the decoder checks
     * every byte (docs/PROTOCOL-NOTES.md), so only text that failed to decode is checked again.
     */
    if (e != GALE_OK && !binary && !gale_utf8_valid(msg, len)) {
        log_info("conn %" PRIu64 ": text message is not UTF-8: closing with 1007", c->id);
        return 1007;
    }
    run(b, c, &req, e, why);
    return 0;
}

void core_open(broker_t *b, conn_t *c, const conn_ops_t *ops, int fmt, struct auth_grant *grant)
{
    c->ops = ops;
    c->enc = (uint8_t)fmt;
    /* Unique across loops: loop k of N numbers k+1, N+k+1, 2N+k+1... */
    c->id = b->next_conn_id++ * (b->nloops ? b->nloops : 1) + b->loop_idx + 1;
    if (grant) {
        auth_grant_ref(grant);
        c->grant = grant;
    }
    if (b->cfg.pub_rate) {
        uint64_t burst = b->cfg.pub_burst ? b->cfg.pub_burst : b->cfg.pub_rate;
        c->rl_tokens = (uint32_t)(burst * 1000);
        c->rl_ms = (uint32_t)broker_uptime_ms(b);
    }
}

void core_absent(broker_t *b, conn_t *c)
{
    while (c->present)
        member_leave(b, c->present);
}

void core_close(broker_t *b, conn_t *c)
{
    /* Free the finished answers; detach those the cluster still holds (reply_done frees). */
    if (c->replies) {
        while (c->replies->count) {
            core_reply_t *q = reply_ring_shift(c->replies);
            q->c = NULL;
            reply_drop(&q->r);
            if (q->done)
                free(q);
        }
        reply_ring_free(c->replies);
        free(c->replies);
        c->replies = NULL;
    }
    if (b->bus.ops && b->bus.ops->forget) /* recoveries and retained reads deliver nothing more */
        b->bus.ops->forget(b->bus.ctx, c);
    core_absent(b, c); /* leaves, before the topics are released */
    if (b->loops && !b->bus.ops) {
        lost_each_t x = {.b = b, .c = c};
        topics_owner_each(b->topics, &c->owner, loops_lost_each, &x);
    }
    topics_unsubscribe_all(b->topics, &c->owner, b->bus.ops ? released : NULL, b);
    auth_grant_unref(c->grant);
    c->grant = NULL;
    c->closing = 1;
}
