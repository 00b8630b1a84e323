#include "nats.h"

#include "adapter.h"
#include "auth.h"
#include "core.h"
#include "frame.h"
#include "gale_nats.h"
#include "log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One subscription id and its gale pattern. */
typedef struct nsub {
    struct nsub *next;
    uint64_t max;       /* UNSUB's max_msgs: it goes after this many; 0: none */
    uint64_t delivered; /* MSGs sent for it */
    uint8_t sid_len;
    uint8_t plen;
    char data[]; /* sid, then the pattern */
} nsub_t;

/* What an awaited core answer is for (adapter_wait_t.kind). */
enum { W_SUB, W_UNSUB, W_PUB, W_PING };

typedef struct nats_conn {
    session_adapter_t ad; /* first: s->ad */
    adapter_rx_t rx;
    adapter_waits_t waits;
    nsub_t *subs;
    nsub_t *gone;   /* ended by their max during a delivery: unsubscribed at the next chance */
    uint32_t nsubs; /* in subs: at most --max-subscriptions sids (several may share a subject) */
    uint64_t opened_ms;
    bool connected;
    bool verbose;
} nats_conn_t;

static nats_conn_t *nats_of(session_t *s)
{
    return (nats_conn_t *)s->ad;
}

static const char *sub_pattern(const nsub_t *x)
{
    return x->data + x->sid_len;
}

/* --- sending ------------------------------------------------------------- */

static void send_err(broker_t *b, session_t *s, const char *text)
{
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    adapter_send(b, s, &buf, gale_nats_encode_err(&buf, text));
}

static void send_ok(broker_t *b, session_t *s)
{
    if (!nats_of(s)->verbose)
        return;
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    adapter_send(b, s, &buf, gale_nats_encode_ok(&buf));
}

/*
 * -ERR text, then the connection closes with code, as nats-server closes its WebSocket
 * connections: 1008 for authorization and the control line, 1009 for the payload, 1002 for
 * other protocol errors.
 */
static void fail(broker_t *b, session_t *s, const char *text, uint16_t code)
{
    send_err(b, s, text);
    adapter_fail(b, s, code, text);
}

#define CLOSE_AUTH SESSION_CLOSE_POLICY
#define CLOSE_PROTO SESSION_CLOSE_PROTOCOL

/* --- subscriptions --------------------------------------------------------- */

static nsub_t **sub_find(nats_conn_t *n, const char *sid, size_t len)
{
    for (nsub_t **p = &n->subs; *p; p = &(*p)->next)
        if ((*p)->sid_len == len && memcmp((*p)->data, sid, len) == 0)
            return p;
    return NULL;
}

/* Whether a subscription of n other than `except` holds pattern p. */
static bool pattern_held(const nats_conn_t *n, const nsub_t *except, const char *p, size_t len)
{
    for (const nsub_t *x = n->subs; x; x = x->next)
        if (x != except && x->plen == len && memcmp(sub_pattern(x), p, len) == 0)
            return true;
    return false;
}

/* Drops subscription x (already unlinked): the core's sub of its pattern goes with the last
 * sid holding it. */
static void sub_release(broker_t *b, session_t *s, nsub_t *x)
{
    if (!pattern_held(nats_of(s), x, sub_pattern(x), x->plen))
        adapter_topic_request(b, s, &nats_of(s)->waits, GALE_OP_UNSUB, sub_pattern(x), x->plen,
                              (adapter_wait_t){.kind = W_UNSUB});
    free(x);
}

/* Subscriptions that reached their max while delivering: their core unsubs, now. */
static void release_gone(broker_t *b, session_t *s)
{
    nats_conn_t *n = nats_of(s);
    while (n->gone) {
        nsub_t *x = n->gone;
        n->gone = x->next;
        sub_release(b, s, x);
    }
}

/* --- conn_ops_t ------------------------------------------------------------ */

/*
 * The last MSG built, by template and sid. Clients number their subscriptions from 1, so most
 * subscribers of a message hold it under the same sid: they share that frame, as gale's
 * clients share a msg frame, instead of one allocation and copy per delivery.
 */
typedef struct nats_state {
    frame_t *tpl; /* referenced while cached (its address cannot be reused meanwhile) */
    frame_t *msg;
    uint8_t sid_len;
    char sid[GALE_NATS_SID_MAX];
} nats_state_t;

void nats_free(broker_t *b)
{
    if (!b->nats)
        return;
    frame_unref(b->nats->tpl);
    frame_unref(b->nats->msg);
    free(b->nats);
    b->nats = NULL;
}

/* One MSG for subscription x from template tpl: head (up to the sid), rest (after it). */
static bool send_msg(broker_t *b, session_t *s, frame_t *tpl, const uint8_t *head, size_t head_len,
                     const uint8_t *rest, size_t rest_len, const nsub_t *x)
{
    nats_state_t *st = b->nats;
    if (st && st->tpl == tpl && st->sid_len == x->sid_len &&
        memcmp(st->sid, x->data, x->sid_len) == 0)
        return session_enqueue(b, s, st->msg);
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    gale_buf_append(&buf, head, head_len);
    gale_buf_append(&buf, x->data, x->sid_len);
    gale_buf_append(&buf, " ", 1);
    gale_buf_append(&buf, rest, rest_len);
    frame_t *f = buf.oom ? NULL : frame_finish(&buf, FRAME_BINARY);
    if (!f) {
        gale_buf_free(&buf);
        log_error("nats conn %" PRIu64 ": out of memory building a MSG: closing", s->conn.id);
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return false;
    }
    bool ok = session_enqueue(b, s, f);
    if (!st)
        st = b->nats = calloc(1, sizeof(*st));
    if (st) { /* the cache takes the reference */
        frame_unref(st->tpl);
        frame_unref(st->msg);
        st->tpl = frame_ref(tpl);
        st->msg = f;
        st->sid_len = x->sid_len;
        memcpy(st->sid, x->data, x->sid_len);
    } else {
        frame_unref(f);
    }
    return ok;
}

/* conn_ops_t.deliver: one MSG per subscription id whose pattern matches (NATS semantics). */
static bool op_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    session_t *s = session_of_conn(c);
    nats_conn_t *n = nats_of(s);
    size_t len;
    const uint8_t *t = frame_payload(f, &len);
    const uint8_t *nul = memchr(t, '\0', len);
    if (!nul || len < 5)
        return true;
    size_t head_len = (size_t)(nul - t); /* "MSG <subject> " */
    const char *subject = (const char *)t + 4;
    size_t subject_len = head_len - 5;
    for (nsub_t **p = &n->subs; *p;) {
        nsub_t *x = *p;
        if (!gale_pattern_match(sub_pattern(x), x->plen, subject, subject_len)) {
            p = &x->next;
            continue;
        }
        if (!send_msg(b, s, f, t, head_len, nul + 1, len - head_len - 1, x))
            return false;
        if (++x->delivered >= x->max && x->max) { /* auto-unsubscribed (UNSUB sid max) */
            *p = x->next;
            n->nsubs--;
            x->next = n->gone;
            n->gone = x;
            continue;
        }
        p = &x->next;
    }
    return true;
}

/* conn_ops_t.reply: the core's answer to the oldest awaited request. */
static void op_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    session_t *s = session_of_conn(c);
    nats_conn_t *n = nats_of(s);
    frame_unref(r->frame);
    if (!n->waits.count)
        return;
    adapter_wait_t w = adapter_waits_shift(&n->waits);
    if (s->close_code || s->killed)
        return;
    if (w.kind == W_PING) {
        gale_buf_t buf;
        gale_buf_init(&buf, FRAME_HEADROOM);
        adapter_send(b, s, &buf, gale_nats_encode_pong(&buf));
        return;
    }
    if (r->err == GALE_OK || w.kind == W_UNSUB)
        return;
    char text[200];
    snprintf(text, sizeof(text), "%s: %s", gale_err_name(r->err), r->why ? r->why : "");
    send_err(b, s, text);
}

static void op_close(broker_t *b, conn_t *c, uint16_t code)
{
    session_begin_close(b, session_of_conn(c), code, true);
}

static const conn_ops_t nats_ops = {.deliver = op_deliver, .reply = op_reply, .close = op_close};

/* --- client messages ------------------------------------------------------- */

static void on_connect(broker_t *b, session_t *s, const gale_nats_msg_t *m)
{
    nats_conn_t *n = nats_of(s);
    gale_nats_connect_t opt;
    char strings[GALE_TOKEN_MAX + 512];
    const char *why = "";
    if (n->connected) {
        fail(b, s, "a second CONNECT", CLOSE_PROTO);
        return;
    }
    if (!gale_nats_parse_connect(m->json, m->json_len, &opt, strings, sizeof(strings), &why)) {
        char text[160];
        snprintf(text, sizeof(text), "Invalid CONNECT: %s", why);
        fail(b, s, text, CLOSE_PROTO);
        return;
    }
    auth_grant_t *grant = NULL;
    if (b->auth) {
        why = "no auth_token (a gale token)";
        if (opt.auth_token && opt.auth_token_len)
            grant =
                auth_lookup(b->auth, opt.auth_token, opt.auth_token_len, (int64_t)time(NULL), &why);
        if (!grant) {
            log_info("nats: CONNECT refused: %s", why);
            fail(b, s, "Authorization Violation", CLOSE_AUTH);
            return;
        }
    }
    if (!s->conn.ops) /* an open broker opened it at the upgrade */
        core_open(b, &s->conn, &nats_ops, CONN_FMT_NATS, grant);
    s->conn.noecho = !opt.echo;
    n->verbose = opt.verbose;
    n->connected = true;
    log_debug("nats conn %" PRIu64 ": CONNECT%s%s", s->conn.id, grant ? " with a token" : "",
              opt.echo ? "" : ", echo off");
    send_ok(b, s);
}

static void on_sub(broker_t *b, session_t *s, const gale_nats_msg_t *m)
{
    nats_conn_t *n = nats_of(s);
    bool wild;
    if (m->queue) {
        send_err(b, s, "queue groups are not supported by this server");
        return;
    }
    if (!gale_pattern_valid(m->subject, m->subject_len, &wild)) {
        send_err(b, s, "Invalid Subject");
        return;
    }
    gale_request_t req;
    memset(&req, 0, sizeof(req));
    req.op = GALE_OP_SUB;
    req.topic = m->subject;
    req.topic_len = m->subject_len;
    req.is_pattern = wild;
    const char *why;
    if (auth_check(s->conn.grant, &req, &why) != GALE_OK) {
        char text[GALE_TOPIC_MAX + 64];
        snprintf(text, sizeof(text), "Permissions Violation for Subscription to \"%.*s\"",
                 (int)m->subject_len, m->subject);
        log_info("nats conn %" PRIu64 ": %s", s->conn.id, text);
        send_err(b, s, text);
        return;
    }
    if (sub_find(n, m->sid, m->sid_len)) { /* a sid already in use: kept as it is */
        send_ok(b, s);
        return;
    }
    if (n->nsubs >= b->cfg.max_subscriptions) { /* sids of one subject cost the core nothing */
        send_err(b, s, "limit: too many subscriptions (--max-subscriptions)");
        return;
    }
    nsub_t *x = malloc(sizeof(*x) + m->sid_len + m->subject_len);
    if (!x) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return;
    }
    *x = (nsub_t){.sid_len = (uint8_t)m->sid_len, .plen = (uint8_t)m->subject_len};
    memcpy(x->data, m->sid, m->sid_len);
    memcpy(x->data + m->sid_len, m->subject, m->subject_len);
    bool held = pattern_held(n, NULL, m->subject, m->subject_len);
    x->next = n->subs;
    n->subs = x;
    n->nsubs++;
    if (!held)
        adapter_request(b, s, &nats_of(s)->waits, &req, (adapter_wait_t){.kind = W_SUB});
    send_ok(b, s);
}

static void on_unsub(broker_t *b, session_t *s, const gale_nats_msg_t *m)
{
    nats_conn_t *n = nats_of(s);
    nsub_t **p = sub_find(n, m->sid, m->sid_len);
    if (p) {
        nsub_t *x = *p;
        if (m->has_max && m->max > x->delivered) {
            x->max = m->max; /* goes after max deliveries in all */
        } else {
            *p = x->next;
            n->nsubs--;
            sub_release(b, s, x);
        }
    }
    send_ok(b, s);
}

static void on_pub(broker_t *b, session_t *s, const gale_nats_msg_t *m)
{
    if (!gale_topic_valid(m->subject, m->subject_len)) {
        send_err(b, s, "Invalid Publish Subject");
        return;
    }
    if (m->reply && !gale_topic_valid(m->reply, m->reply_len)) {
        send_err(b, s, "Invalid Reply Subject");
        return;
    }
    gale_buf_t scratch;
    gale_buf_init(&scratch, 0);
    gale_request_t req;
    memset(&req, 0, sizeof(req));
    req.op = GALE_OP_PUB;
    req.topic = m->subject;
    req.topic_len = m->subject_len;
    req.reply = m->reply;
    req.reply_len = m->reply ? m->reply_len : 0;
    req.data_enc =
        gale_payload_to_data(m->payload, m->payload_len, &scratch, &req.data, &req.data_len);
    const char *why;
    if (!req.data) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
    } else if (auth_check(s->conn.grant, &req, &why) != GALE_OK) {
        char text[GALE_TOPIC_MAX + 64];
        snprintf(text, sizeof(text), "Permissions Violation for Publish to \"%.*s\"",
                 (int)m->subject_len, m->subject);
        log_info("nats conn %" PRIu64 ": %s", s->conn.id, text);
        send_err(b, s, text);
    } else {
        adapter_request(b, s, &nats_of(s)->waits, &req, (adapter_wait_t){.kind = W_PUB});
        send_ok(b, s);
    }
    gale_buf_free(&scratch);
}

static void message(broker_t *b, session_t *s, const gale_nats_msg_t *m)
{
    if (!s->conn.ops && m->op != GALE_NATS_CONNECT) {
        /* With tokens, CONNECT comes first (nats-server: with authorization configured) */
        fail(b, s, "Authorization Violation", CLOSE_AUTH);
        return;
    }
    switch (m->op) {
    case GALE_NATS_CONNECT:
        on_connect(b, s, m);
        return;
    case GALE_NATS_PUB:
        on_pub(b, s, m);
        return;
    case GALE_NATS_HPUB:
        fail(b, s, "Headers are not supported by this server", /* INFO says headers false */
             CLOSE_PROTO);
        return;
    case GALE_NATS_SUB:
        on_sub(b, s, m);
        return;
    case GALE_NATS_UNSUB:
        on_unsub(b, s, m);
        return;
    case GALE_NATS_PING: { /* PONG in order: after the answers of what came before */
        gale_request_t req;
        memset(&req, 0, sizeof(req));
        req.op = GALE_OP_PING;
        adapter_request(b, s, &nats_of(s)->waits, &req, (adapter_wait_t){.kind = W_PING});
        return;
    }
    default: /* PONG, +OK, -ERR */
        return;
    }
}

/* --- session_proto_t ------------------------------------------------------ */

static bool proto_open(broker_t *b, session_t *s)
{
    nats_conn_t *n = calloc(1, sizeof(*n));
    if (!n)
        return false;
    n->ad.proto = &nats_proto;
    n->opened_ms = broker_uptime_ms(b);
    n->verbose = true; /* until CONNECT says otherwise, as nats-server */
    s->ad = &n->ad;
    /* An open broker takes requests before CONNECT, as nats-server without authorization. */
    if (!b->auth)
        core_open(b, &s->conn, &nats_ops, CONN_FMT_NATS, NULL);
    gale_nats_info_t info = {.server_id = b->node_id,
                             .server_name = b->node_id,
                             .version = GALE_VERSION,
                             .host = b->cfg.listen_host,
                             .port = b->port,
                             .max_payload = b->cfg.max_message,
                             .auth_required = b->auth != NULL};
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    adapter_send(b, s, &buf, gale_nats_encode_info(&buf, &info));
    return true;
}

static int proto_receive(broker_t *b, session_t *s, const uint8_t *in, size_t len, bool binary)
{
    nats_conn_t *n = nats_of(s);
    release_gone(b, s);
    size_t avail, off = 0;
    const uint8_t *data = adapter_rx_take(&n->rx, in, len, &avail);
    if (!data) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return 0;
    }
    while (off < avail && !s->close_code && !s->killed) {
        gale_nats_msg_t m;
        size_t used = 0;
        const char *why = "";
        int r = gale_nats_parse(data + off, avail - off, b->cfg.max_message, &m, &used, &why);
        if (r < 0) {
            bool payload = strstr(why, "Payload") != NULL;
            b->m.oversize_closes += payload;
            fail(b, s, why,
                 payload                       ? SESSION_CLOSE_TOO_LARGE
                 : strstr(why, "control line") ? CLOSE_AUTH
                                               : CLOSE_PROTO);
            break;
        }
        if (r == 0)
            break;
        message(b, s, &m);
        off += used;
    }
    if (s->close_code || s->killed)
        off = avail;
    if (!adapter_rx_keep(&n->rx, data, off, avail))
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
    return 0;
}

static void proto_closing(broker_t *b, session_t *s)
{
}

static void proto_free(broker_t *b, session_t *s)
{
    nats_conn_t *n = nats_of(s);
    adapter_waits_free(&n->waits);
    adapter_rx_free(&n->rx);
    for (nsub_t *lists[2] = {n->subs, n->gone}, *x; lists[0] || lists[1];) {
        int i = lists[0] ? 0 : 1;
        x = lists[i];
        lists[i] = x->next;
        free(x);
    }
    free(n);
}

static void proto_sweep(broker_t *b, session_t *s, uint64_t now)
{
    nats_conn_t *n = nats_of(s);
    release_gone(b, s);
    if (!n->connected && b->auth && now - n->opened_ms >= b->cfg.handshake_timeout_s * 1000)
        fail(b, s, "Authentication Timeout", CLOSE_AUTH);
}

const session_proto_t nats_proto = {.name = "nats",
                                    .index = SESSION_PROTO_NATS,
                                    .open = proto_open,
                                    .receive = proto_receive,
                                    .closing = proto_closing,
                                    .free = proto_free,
                                    .sweep = proto_sweep};
