#include "api.h"

#include "auth.h"
#include "core.h"
#include "gale_json.h"
#include "http.h"
#include "log.h"

#include <inttypes.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t err; /* gale_err_t */
    bool dup;    /* a duplicate mid: not delivered again */
    bool has_pos, has_off;
    uint8_t ep_len;
    uint64_t off;
    const char *why;
    char ep[GALE_EP_MAX];
} result_t;

typedef struct api_req {
    conn_t conn; /* the request as the core sees it (core.h): answers by message index */
    broker_t *b;
    struct lws *wsi; /* NULL once the connection closed */
    uint8_t *body;
    size_t len, cap;
    result_t *results;
    uint32_t n;       /* messages */
    uint32_t pending; /* results still awaited from the core (the cluster's answers) */
    bool batch;
    bool submitting; /* api_body_done is still publishing */
    bool body_done;  /* the body was taken (lws reports its completion again while bytes that
                        followed it wait in its buffer) */
    bool trailing;   /* bytes followed the body: answer, then close */
    bool hist;       /* GET /api/history or /api/presence: the answer is `frame` */
    frame_t *frame;  /* the hist or presence answer (JSON) */
    bool answered;
    unsigned status; /* an answer decided before publishing (400 ...), else 0 */
    const char *code, *why;
} api_req_t;

static void req_free(api_req_t *r)
{
    if (!r)
        return;
    core_close(r->b, &r->conn); /* answers the cluster still holds are dropped when done */
    frame_unref(r->frame);
    free(r->body);
    free(r->results);
    free(r);
}

static unsigned status_of(gale_err_t e)
{
    switch (e) {
    case GALE_OK:
        return HTTP_STATUS_OK;
    case GALE_ERR_TOO_LARGE:
        return HTTP_STATUS_REQ_ENTITY_TOO_LARGE;
    case GALE_ERR_FORBIDDEN:
        return HTTP_STATUS_FORBIDDEN;
    case GALE_ERR_LIMIT:
        return 429;
    case GALE_ERR_UNAVAILABLE:
        return HTTP_STATUS_SERVICE_UNAVAILABLE;
    case GALE_ERR_INTERNAL:
        return HTTP_STATUS_INTERNAL_SERVER_ERROR;
    default:
        return HTTP_STATUS_BAD_REQUEST;
    }
}

/* Appends s as a JSON string; our texts are ASCII, anything else is escaped or replaced. */
static void put_str(gale_buf_t *o, const char *s)
{
    gale_buf_append(o, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            gale_buf_append(o, e, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            gale_buf_append(o, "?", 1);
        } else {
            gale_buf_append(o, s, 1);
        }
    }
    gale_buf_append(o, "\"", 1);
}

/* A successful result: {"ok":true}, with the message's position on a topic with history. */
static void put_ok(gale_buf_t *o, const result_t *res)
{
    gale_buf_append(o, "{\"ok\":true", 10);
    if (res && res->dup)
        gale_buf_append(o, ",\"dup\":true", 11);
    if (res && res->has_pos) {
        gale_buf_append(o, ",\"ep\":\"", 7);
        gale_buf_append(o, res->ep, res->ep_len); /* hex digits and '-' */
        gale_buf_append(o, "\"", 1);
    }
    if (res && (res->has_pos || res->has_off)) {
        char n[32];
        int k = snprintf(n, sizeof(n), ",\"off\":%" PRIu64, res->off);
        gale_buf_append(o, n, (size_t)k);
    }
    gale_buf_append(o, "}", 1);
}

static void put_result(gale_buf_t *o, gale_err_t e, const char *code, const char *why)
{
    if (e == GALE_OK && !code) {
        put_ok(o, NULL);
        return;
    }
    gale_buf_append(o, "{\"ok\":false,\"code\":", 19);
    put_str(o, code ? code : gale_err_name(e));
    gale_buf_append(o, ",\"msg\":", 7);
    put_str(o, why ? why : "");
    gale_buf_append(o, "}", 1);
}

/*
 * Writes one complete answer. close: the request body may be unread, end the connection.
 * allow: the method a 405 names.
 */
static int respond_allow(struct lws *wsi, unsigned status, gale_buf_t *body, bool close,
                         const char *allow)
{
    uint8_t hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof(hdr) - 1;
    size_t len = gale_buf_payload_len(body);
    int rc = -1;
    if (body->oom)
        goto Exit;
    gale_buf_append(body, "\n", 1);
    len++;
    if (lws_add_http_common_headers(wsi, status, "application/json", len, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                     (const unsigned char *)"no-store", 8, &p, end) ||
        (status == HTTP_STATUS_UNAUTHORIZED &&
         lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_WWW_AUTHENTICATE,
                                      (const unsigned char *)"Bearer", 6, &p, end)) ||
        (status == HTTP_STATUS_METHOD_NOT_ALLOWED &&
         lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_ALLOW, (const unsigned char *)allow,
                                      (int)strlen(allow), &p, end)) ||
        (close && lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
                                               (const unsigned char *)"close", 5, &p, end)) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        goto Exit;
    if (lws_write(wsi, gale_buf_payload(body), len, LWS_WRITE_HTTP_FINAL) < 0)
        goto Exit;
    rc = close || lws_http_transaction_completed(wsi) ? -1 : 0;
Exit:
    gale_buf_free(body);
    return rc;
}

static int respond(struct lws *wsi, unsigned status, gale_buf_t *body, bool close)
{
    return respond_allow(wsi, status, body, close, "POST");
}

int api_refuse(struct lws *wsi, unsigned status, const char *code, const char *why)
{
    gale_buf_t o;
    gale_buf_init(&o, LWS_PRE);
    put_result(&o, GALE_ERR_BAD_REQUEST, code, why);
    log_debug("POST " API_PUBLISH ": %u %s: %s", status, code, why);
    return respond(wsi, status, &o, true);
}

/* The request's writes wait for its last result. */
static void settled(api_req_t *r)
{
    if (!r->pending && !r->submitting && r->wsi)
        lws_callback_on_writable(r->wsi);
}

/* conn_ops_t.reply: the result of message r->id (the core answers every one, in order). */
static void op_reply(broker_t *b, conn_t *c, const conn_reply_t *a)
{
    api_req_t *r = (api_req_t *)((char *)c - offsetof(api_req_t, conn));
    if (a->frame && !r->frame)
        r->frame = a->frame; /* the hist answer: the reference is ours */
    else
        frame_unref(a->frame);
    if (a->id < r->n) {
        result_t *res = &r->results[a->id];
        res->err = (uint8_t)a->err;
        res->why = a->why;
        res->dup = a->dup;
        res->has_pos = a->has_pos;
        res->has_off = a->has_off;
        res->off = a->off;
        res->ep_len = a->ep_len;
        memcpy(res->ep, a->ep, a->ep_len);
    }
    r->pending--;
    settled(r);
}

/* conn_ops_t.close: the core could not hold an answer (out of memory): the unanswered
 * messages keep their "outcome unknown" result, the rest are not published. */
static void op_close(broker_t *b, conn_t *c, uint16_t code)
{
    api_req_t *r = (api_req_t *)((char *)c - offsetof(api_req_t, conn));
    core_close(b, c); /* no answer comes any more */
    r->pending = 0;
    settled(r);
}

/* conn_ops_t.deliver: a request holds no subscription, so nothing is ever delivered. */
static bool op_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    return false;
}

static const conn_ops_t api_ops = {.deliver = op_deliver, .reply = op_reply, .close = op_close};

bool api_owns(struct lws *wsi, char *uri, size_t cap)
{
    char *u = NULL;
    int n = 0;
    size_t m = sizeof(API_MOUNT) - 1;
    if (lws_http_get_uri_and_method(wsi, &u, &n) < 0 || !u || n < (int)m ||
        strncmp(u, API_MOUNT, m) != 0 || (u[m] != '\0' && u[m] != '/'))
        return false;
    snprintf(uri, cap, "%.*s", n, u); /* a truncated path names no endpoint either */
    return true;
}

typedef enum { EXPECT_NONE, EXPECT_CONTINUE, EXPECT_OTHER } expect_t;

/*
 * The request's Expect header (RFC 9110 §10.1.1). lws 4.1.6 parses it into
 * WSI_TOKEN_HTTP_EXPECT but never answers it: a client that sent
 * "100-continue" waits (curl: 1 s) for an interim 100 before sending the body.
 * HTTP/1.0 requests must have it ignored.
 */
static expect_t request_expect(struct lws *wsi)
{
    char v[32], ver[16];
    int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_EXPECT);
    if (n <= 0)
        return EXPECT_NONE;
    /* lws's own test of the version: anything but HTTP/1.1 counts as 1.0 */
    if (lws_hdr_copy(wsi, ver, sizeof(ver), WSI_TOKEN_HTTP) < 8 || ver[5] != '1' || ver[7] != '1')
        return EXPECT_NONE;
    if (lws_hdr_copy(wsi, v, sizeof(v), WSI_TOKEN_HTTP_EXPECT) <= 0)
        return EXPECT_OTHER; /* longer than any expectation we know */
    char *s = v, *e = v + strlen(v);
    while (*s == ' ' || *s == '\t')
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        *--e = '\0';
    return strcasecmp(s, "100-continue") == 0 ? EXPECT_CONTINUE : EXPECT_OTHER;
}

/* The interim answer to "Expect: 100-continue", written raw like http_refuse's answers. */
static int write_continue(struct lws *wsi)
{
    static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";
    unsigned char buf[LWS_PRE + sizeof(line)];
    memcpy(buf + LWS_PRE, line, sizeof(line) - 1);
    return lws_write(wsi, buf + LWS_PRE, sizeof(line) - 1, LWS_WRITE_HTTP) < 0 ? -1 : 0;
}

/* The request holds Authorization: Bearer <--api-key>; counts and logs a refusal. */
static bool key_ok(broker_t *b, struct lws *wsi)
{
    char auth[300];
    int alen = lws_hdr_copy(wsi, auth, sizeof(auth), WSI_TOKEN_HTTP_AUTHORIZATION);
    size_t klen = strlen(b->cfg.api_key);
    bool ok = alen >= 7 && strncasecmp(auth, "Bearer ", 7) == 0 &&
              auth_secret_equal(auth + 7, (size_t)alen - 7, b->cfg.api_key, klen);
    explicit_bzero(auth, sizeof(auth));
    if (!ok) {
        b->m.connections_refused++;
        log_info("%s: refused with 401 (missing or wrong API key)", API_MOUNT);
    }
    return ok;
}

/* The url-decoded value of query argument `name=` into buf; its length, -1 when absent. */
static int query_arg(struct lws *wsi, const char *name, char *buf, size_t cap)
{
    const char *v = lws_get_urlarg_by_name(wsi, name, buf, (int)cap);
    if (!v)
        return -1;
    size_t n = strlen(v);
    memmove(buf, v, n + 1);
    return (int)n;
}

/*
 * GET /api/history?topic=T&limit=N and GET /api/presence?topic=T (op GALE_OP_HIST or
 * GALE_OP_PRESENCE): the `hist` or `presence` answer a JSON WebSocket client gets.
 */
static int read_get(broker_t *b, struct lws *wsi, gale_op_t op)
{
    char *u, topic[GALE_TOPIC_MAX + 16], limit[40];
    int ulen;
    http_conn_t *hc = http_conn_of(wsi);
    if (!hc || hc->req)
        return -1; /* never accepted through http_conn_accept, or a request in progress */
    if (lws_http_get_uri_and_method(wsi, &u, &ulen) != LWSHUMETH_GET) {
        gale_buf_t o;
        gale_buf_init(&o, LWS_PRE);
        put_result(&o, GALE_ERR_BAD_REQUEST, "method_not_allowed",
                   op == GALE_OP_HIST ? "read history with GET" : "read presence with GET");
        return respond_allow(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, &o, true, "GET");
    }
    if (!key_ok(b, wsi))
        return api_refuse(wsi, HTTP_STATUS_UNAUTHORIZED, "unauthorized",
                          "Authorization: Bearer <api key> required");
    int tlen = query_arg(wsi, "topic=", topic, sizeof(topic));
    if (tlen <= 0 || !gale_topic_valid(topic, (size_t)tlen))
        return api_refuse(wsi, HTTP_STATUS_BAD_REQUEST, "bad_topic",
                          "topic= must name a concrete topic (percent-encoded)");
    uint64_t n = CORE_HIST_LIMIT;
    int llen = op == GALE_OP_HIST ? query_arg(wsi, "limit=", limit, sizeof(limit)) : -1;
    if (llen >= 0) {
        char *end;
        n = strtoull(limit, &end, 10);
        if (llen == 0 || *end || limit[0] < '0' || limit[0] > '9')
            return api_refuse(wsi, HTTP_STATUS_BAD_REQUEST, "bad_request",
                              "limit= must be an integer >= 0");
    }
    api_req_t *r = calloc(1, sizeof(*r));
    if (r)
        r->results = calloc(1, sizeof(*r->results));
    if (!r || !r->results) {
        req_free(r);
        return api_refuse(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR, "internal", "out of memory");
    }
    r->b = b;
    r->wsi = wsi;
    r->hist = r->body_done = true; /* no body */
    r->n = 1;
    r->results[0] = (result_t){.err = GALE_ERR_INTERNAL, .why = "out of memory"};
    core_open(b, &r->conn, &api_ops, GALE_ENC_JSON, NULL);
    r->conn.unmetered = 1;
    http_conn_of(wsi)->req = r;
    /* A JSON WebSocket client's request: read from Redis when clustered. */
    gale_request_t req = {.op = op,
                          .id = 0, /* no "id" in the answer; its result index */
                          .topic = topic,
                          .topic_len = (size_t)tlen,
                          .has_limit = true,
                          .limit = n};
    r->pending++;
    r->submitting = true;
    core_request(b, &r->conn, &req);
    r->submitting = false;
    settled(r);
    return 0; /* api_writeable answers */
}

/*
 * Every refusal here answers at once and closes the connection: the body is
 * never read, and a client that sent "Expect: 100-continue" gets the final
 * status instead of the 100 and has not sent it.
 */
int api_http(broker_t *b, struct lws *wsi, const char *uri)
{
    char clen[32], *u;
    int ulen;
    http_conn_t *c = http_conn_of(wsi);
    if (!c || c->req)
        return -1; /* never accepted through http_conn_accept, or a request in progress */
    if (!b->cfg.api_key[0])
        return api_refuse(wsi, HTTP_STATUS_NOT_FOUND, "not_found",
                          "the publish API is disabled (start the broker with --api-key)");
    if (strcmp(uri, API_HISTORY) == 0)
        return read_get(b, wsi, GALE_OP_HIST);
    if (strcmp(uri, API_PRESENCE) == 0)
        return read_get(b, wsi, GALE_OP_PRESENCE);
    if (strcmp(uri, API_PUBLISH) != 0)
        return api_refuse(wsi, HTTP_STATUS_NOT_FOUND, "not_found", "no such endpoint");
    if (lws_http_get_uri_and_method(wsi, &u, &ulen) != LWSHUMETH_POST)
        return api_refuse(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, "method_not_allowed",
                          "publish with POST");
    expect_t expect = request_expect(wsi);
    if (expect == EXPECT_OTHER)
        return api_refuse(wsi, HTTP_STATUS_EXPECTATION_FAILED, "expectation_failed",
                          "the only expectation supported is 100-continue");
    if (!key_ok(b, wsi))
        return api_refuse(wsi, HTTP_STATUS_UNAUTHORIZED, "unauthorized",
                          "Authorization: Bearer <api key> required");
    if (lws_hdr_copy(wsi, clen, sizeof(clen), WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
        return api_refuse(wsi, HTTP_STATUS_LENGTH_REQUIRED, "bad_request",
                          "a Content-Length is required");
    char *endp;
    unsigned long long n = strtoull(clen, &endp, 10);
    if (*endp || clen[0] < '0' || clen[0] > '9')
        return api_refuse(wsi, HTTP_STATUS_BAD_REQUEST, "bad_request", "bad Content-Length");
    if (n > b->cfg.max_message)
        return api_refuse(wsi, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, "too_large",
                          "the body is larger than --max-message");
    if (n == 0)
        return api_refuse(wsi, HTTP_STATUS_BAD_REQUEST, "bad_request", "empty body");
    api_req_t *r = calloc(1, sizeof(*r));
    if (r)
        r->body = malloc((size_t)n);
    if (!r || !r->body) {
        req_free(r);
        return api_refuse(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR, "internal", "out of memory");
    }
    r->b = b;
    r->wsi = wsi;
    r->cap = (size_t)n;
    core_open(b, &r->conn, &api_ops, GALE_ENC_JSON, NULL);
    r->conn.unmetered = 1; /* the API key gives full rights: no token, no --pub-rate */
    c->req = r;
    if (expect == EXPECT_CONTINUE && write_continue(wsi) < 0)
        return -1; /* lws closes the connection; api_closed frees r */
    return 0;      /* the body follows (LWS_CALLBACK_HTTP_BODY) */
}

/* The publish request in progress on wsi, or NULL. */
static api_req_t *req_of(struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    return c ? c->req : NULL;
}

int api_body(broker_t *b, struct lws *wsi, const void *in, size_t len)
{
    api_req_t *r = req_of(wsi);
    if (!r || r->answered || r->body_done)
        return -1;
    if (len > r->cap - r->len) {
        r->status = HTTP_STATUS_REQ_ENTITY_TOO_LARGE;
        return -1; /* more than its Content-Length */
    }
    memcpy(r->body + r->len, in, len);
    r->len += len;
    return 0;
}

/* The members of one message object. */
typedef struct {
    const uint8_t *topic, *data, *messages, *mid;
    size_t topic_len, data_len, messages_len, mid_len;
    gale_json_kind_t topic_kind, messages_kind, mid_kind;
    bool dup;
} msg_fields_t;

static bool msg_member(const gale_json_member_t *m, void *arg)
{
    msg_fields_t *f = arg;
    const uint8_t **v = NULL;
    size_t *vl = NULL;
    if (gale_json_key_is(m, "topic")) {
        v = &f->topic;
        vl = &f->topic_len;
        f->topic_kind = m->kind;
    } else if (gale_json_key_is(m, "data")) {
        v = &f->data;
        vl = &f->data_len;
    } else if (gale_json_key_is(m, "mid")) {
        v = &f->mid;
        vl = &f->mid_len;
        f->mid_kind = m->kind;
    } else if (gale_json_key_is(m, "messages")) {
        v = &f->messages;
        vl = &f->messages_len;
        f->messages_kind = m->kind;
    } else {
        return true;
    }
    if (*v) {
        f->dup = true;
        return false;
    }
    *v = m->val;
    *vl = m->val_len;
    return true;
}

/* Checks and publishes one message; the result is final unless deferred (pending++). */
static void publish_one(api_req_t *r, uint32_t idx, const msg_fields_t *f)
{
    result_t *res = &r->results[idx];
    char topic[GALE_TOPIC_MAX + 1];
    size_t tlen;
    res->err = GALE_ERR_BAD_REQUEST;
    if (!f->topic || f->topic_kind != GALE_JSON_STRING) {
        res->why = "topic is missing or not a string";
        return;
    }
    if (!f->data) {
        res->why = "data is missing";
        return;
    }
    if (!gale_json_valid(f->data, f->data_len, GALE_MAX_DEPTH - 1)) {
        res->why = "data is nested too deep";
        return;
    }
    tlen = gale_json_string(f->topic, f->topic_len, topic, sizeof(topic));
    if (tlen == SIZE_MAX || !gale_topic_valid(topic, tlen)) {
        res->err = GALE_ERR_BAD_TOPIC;
        res->why = "not a valid concrete topic";
        return;
    }
    char mid[GALE_MID_MAX + 1];
    size_t mlen = 0;
    if (f->mid) {
        mlen = f->mid_kind == GALE_JSON_STRING
                   ? gale_json_string(f->mid, f->mid_len, mid, sizeof(mid))
                   : SIZE_MAX;
        if (mlen == 0 || mlen > GALE_MID_MAX) {
            res->why = "mid is not a string of 1 to 64 bytes";
            return;
        }
    }
    /*
     * A `pub` like a WebSocket client's, answered (op_reply) with the message's index. Until
     * it is, its result says it was lost: what op_close leaves of a request the core gave up
     * on (out of memory), after which nothing more is published.
     */
    res->err = GALE_ERR_INTERNAL;
    res->why = "out of memory: the outcome is unknown";
    if (r->conn.closing)
        return;
    gale_request_t req = {.op = GALE_OP_PUB,
                          .has_id = true,
                          .id = idx,
                          .topic = topic,
                          .topic_len = tlen,
                          .data = f->data,
                          .data_len = f->data_len,
                          .mid = f->mid ? mid : NULL,
                          .mid_len = mlen};
    r->pending++;
    core_request(r->b, &r->conn, &req);
}

int api_body_done(broker_t *b, struct lws *wsi)
{
    api_req_t *r = req_of(wsi);
    msg_fields_t top;
    if (!r)
        return -1;
    if (r->body_done) {
        /*
         * Bytes followed the body in one read (a pipelined request, a stray CRLF):
         * lws 4.1.6 calls this again on every loop turn while they wait in its
         * buffer (the loop does not sleep meanwhile: one turn until the answer on a
         * single node, a Redis round trip in a cluster), and would then parse them as
         * the next request, which it cannot do safely (http.h): the answer closes the
         * connection instead. (Stopping the reads with lws_rx_flow_control() would
         * also stop lws's WRITEABLE callbacks on this connection, and spin.)
         */
        if (!r->trailing) {
            r->trailing = true;
            log_debug("POST " API_PUBLISH ": bytes after the body: closing after the answer");
        }
        return 0;
    }
    r->body_done = true;
    memset(&top, 0, sizeof(top));
    int rc = gale_json_object(r->body, r->len, GALE_MAX_DEPTH + 2, msg_member, &top);
    if (rc != 1) {
        r->status = HTTP_STATUS_BAD_REQUEST;
        r->code = "bad_request";
        r->why = top.dup ? "duplicate key"
                         : "the body is not a JSON object {\"topic\",\"data\"} or {\"messages\"}";
    } else if (top.messages) {
        r->batch = true;
        if (top.messages_kind != GALE_JSON_ARRAY) {
            r->status = HTTP_STATUS_BAD_REQUEST;
            r->code = "bad_request";
            r->why = "messages is not an array";
        }
    }
    if (r->status) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    /* Count the messages, then publish them in order. */
    size_t pos = 0, el_len;
    const uint8_t *el;
    uint32_t n = 1;
    if (r->batch)
        for (n = 0; gale_json_array_next(top.messages, top.messages_len, &pos, &el, &el_len);)
            n++;
    r->results = calloc(n ? n : 1, sizeof(*r->results));
    if (!r->results) {
        r->status = HTTP_STATUS_INTERNAL_SERVER_ERROR;
        r->code = "internal";
        r->why = "out of memory";
        lws_callback_on_writable(wsi);
        return 0;
    }
    r->n = n;
    r->submitting = true;
    if (!r->batch) {
        publish_one(r, 0, &top);
    } else {
        pos = 0;
        for (uint32_t i = 0;
             i < n && gale_json_array_next(top.messages, top.messages_len, &pos, &el, &el_len);
             i++) {
            msg_fields_t f;
            memset(&f, 0, sizeof(f));
            if (gale_json_kind(el) != GALE_JSON_OBJECT ||
                gale_json_object(el, el_len, GALE_MAX_DEPTH + 1, msg_member, &f) != 1 ||
                f.messages) {
                r->results[i].err = GALE_ERR_BAD_REQUEST;
                r->results[i].why = f.dup ? "duplicate key" : "not an object {\"topic\",\"data\"}";
                continue;
            }
            publish_one(r, i, &f);
        }
    }
    r->submitting = false;
    settled(r);
    return 0;
}

int api_writeable(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    api_req_t *r = c ? c->req : NULL;
    if (!r || r->answered || r->pending || r->submitting || !r->body_done)
        return 0;
    r->answered = true;
    gale_buf_t o;
    gale_buf_init(&o, LWS_PRE);
    unsigned status = r->status;
    if (r->hist && r->results[0].err == GALE_OK && r->frame) {
        size_t plen;
        const uint8_t *p = frame_payload(r->frame, &plen);
        status = HTTP_STATUS_OK;
        gale_buf_append(&o, p, plen);
    } else if (r->hist) {
        gale_err_t e = (gale_err_t)r->results[0].err;
        status = status_of(e);
        put_result(&o, e == GALE_OK ? GALE_ERR_INTERNAL : e, NULL,
                   e == GALE_OK ? "no answer" : r->results[0].why);
    } else if (status) {
        put_result(&o, GALE_ERR_BAD_REQUEST, r->code, r->why);
    } else if (!r->batch) {
        gale_err_t e = (gale_err_t)r->results[0].err;
        status = status_of(e);
        if (e == GALE_OK)
            put_ok(&o, &r->results[0]);
        else
            put_result(&o, e, NULL, r->results[0].why);
    } else {
        bool all = true;
        for (uint32_t i = 0; i < r->n; i++)
            all = all && r->results[i].err == GALE_OK;
        status = HTTP_STATUS_OK;
        gale_buf_append(&o, all ? "{\"ok\":true,\"results\":[" : "{\"ok\":false,\"results\":[",
                        all ? 22 : 23);
        for (uint32_t i = 0; i < r->n; i++) {
            if (i)
                gale_buf_append(&o, ",", 1);
            if (r->results[i].err == GALE_OK)
                put_ok(&o, &r->results[i]);
            else
                put_result(&o, (gale_err_t)r->results[i].err, NULL, r->results[i].why);
        }
        gale_buf_append(&o, "]}", 2);
    }
    if (r->hist)
        log_debug("GET %s: %u", API_MOUNT "/history or /presence", status);
    else
        log_debug("POST " API_PUBLISH ": %u (%u message%s)", status, r->n, r->n == 1 ? "" : "s");
    bool close = r->trailing;
    c->req = NULL;
    req_free(r);
    return respond(wsi, status, &o, close);
}

int api_filter(broker_t *b, struct lws *wsi)
{
    bool body, after_bodyless;
    if (!http_conn_request(b, wsi, &body, &after_bodyless))
        return -1;
    if (!body || !after_bodyless)
        return 0; /* api_http checks the rest */
    b->m.http_refused++;
    return api_refuse(wsi, HTTP_STATUS_BAD_REQUEST, "bad_request",
                      "a request with a body must be the first on its connection or follow a "
                      "publish: open a new connection");
}

void api_closed(struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    api_req_t *r = c ? c->req : NULL;
    if (!r)
        return;
    c->req = NULL;
    req_free(r);
}
