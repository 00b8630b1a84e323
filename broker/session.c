#include "session.h"

#include "api.h"
#include "auth.h"
#include "cluster.h"
#include "log.h"
#include "router.h"

#include <inttypes.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

/*
 * How long the flush may wait for a publisher's pending input (session_flush_turn): until
 * this many bytes of published messages were routed since the last flush, or this many loop
 * turns. In bytes, so that batches do not shrink with --rx-buffer (one turn reads at most
 * one receive buffer per connection).
 */
#define FLUSH_DEFER_BYTES 16384
#define FLUSH_MAX_DEFERRED_TURNS 64
/* Bytes one session may write per flush before yielding to the others. */
#define FLUSH_BUDGET (256 * 1024)
/* How long a closing session may take to get its close frame out and answered. */
#define CLOSE_GRACE_MS 10000

static bool slot_push(session_t ***arr, uint32_t *n, uint32_t *cap, session_t *s, uint32_t *slot)
{
    if (*n == *cap) {
        uint32_t ncap = *cap ? *cap * 2 : 64;
        session_t **a = realloc(*arr, sizeof(*a) * ncap);
        if (!a)
            return false;
        *arr = a;
        *cap = ncap;
    }
    *slot = *n;
    (*arr)[(*n)++] = s;
    return true;
}

static void mark_dirty(broker_t *b, session_t *s)
{
    if (s->dirty_slot != SESSION_NOT_DIRTY)
        return;
    if (!slot_push(&b->dirty, &b->ndirty, &b->dirty_cap, s, &s->dirty_slot)) {
        /* Cannot track it for the per-turn flush: let WRITEABLE drive it. */
        s->dirty_slot = SESSION_NOT_DIRTY;
        lws_callback_on_writable(s->wsi);
    }
}

static frame_t *finish_reply(gale_buf_t *buf, gale_err_t e, gale_enc_t enc)
{
    if (e != GALE_OK) {
        gale_buf_free(buf);
        return NULL;
    }
    return frame_finish(buf, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
}

/* Appends r to s's reply FIFO (s->replies is its tail, tail->next its head). */
static void fifo_push(session_t *s, session_reply_t *r)
{
    r->s = s;
    if (s->replies) {
        r->next = s->replies->next;
        s->replies->next = r;
    } else {
        r->next = r;
    }
    s->replies = r;
}

/* Queues a reply frame built by the caller (behind replies still held back); frees it if it
 * cannot be queued. */
static void send_reply(broker_t *b, session_t *s, frame_t *f)
{
    if (!f) {
        log_error("conn %" PRIu64 ": out of memory building a reply: closing", s->conn_id);
        session_begin_close(b, s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, true);
        return;
    }
    if (s->replies) {
        session_reply_t *r = calloc(1, sizeof(*r));
        if (!r) {
            frame_unref(f);
            log_error("conn %" PRIu64 ": out of memory holding a reply: closing", s->conn_id);
            session_begin_close(b, s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, true);
            return;
        }
        r->frame = f;
        r->done = 1;
        fifo_push(s, r);
        return;
    }
    session_enqueue(b, s, f);
    frame_unref(f);
}

session_reply_t *session_reply_defer(session_t *s, const gale_request_t *req)
{
    size_t plen = req->op == GALE_OP_SUB ? req->topic_len : 0;
    session_reply_t *r = calloc(1, sizeof(*r) + plen + 1);
    if (!r)
        return NULL;
    r->id = req->id;
    r->has_id = req->has_id;
    r->op = (uint8_t)req->op;
    r->plen = (uint8_t)plen;
    memcpy(r->pattern, req->topic, plen);
    fifo_push(s, r);
    return r;
}

static void reply_free(session_reply_t *r)
{
    frame_unref(r->frame);
    free(r);
}

void session_reply_finish(broker_t *b, session_reply_t *r, gale_err_t e, const char *why)
{
    session_t *s = r->s;
    if (r->api) { /* an HTTP publish */
        api_publish_done(b, r->api, r->api_idx, e, why);
        reply_free(r);
        return;
    }
    if (!s) { /* the session closed meanwhile */
        reply_free(r);
        return;
    }
    gale_enc_t enc = (gale_enc_t)s->enc;
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    r->done = 1;
    if (e != GALE_OK) {
        b->m.protocol_errors[e < GALE_ERR_COUNT ? e : GALE_ERR_INTERNAL]++;
        log_debug("conn %" PRIu64 ": err %s: %s", s->conn_id, gale_err_name(e), why);
        r->frame = finish_reply(&buf, gale_encode_err(&buf, enc, r->has_id, r->id, e, why), enc);
    } else if (r->has_id) {
        r->frame = finish_reply(&buf, gale_encode_ack(&buf, enc, r->id), enc);
    } else {
        r->done = 2; /* success without id: silent */
    }
    if (!r->frame && r->done == 1) {
        log_error("conn %" PRIu64 ": out of memory building a reply: closing", s->conn_id);
        session_begin_close(b, s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, true);
    }
    /* Send what is finished at the head of the FIFO, in order. */
    while (s->replies) {
        session_reply_t *head = s->replies->next;
        if (!head->done)
            break;
        if (head == s->replies)
            s->replies = NULL;
        else
            s->replies->next = head->next;
        if (head->frame)
            session_enqueue(b, s, head->frame);
        reply_free(head);
    }
}

/* The session closes: free its finished replies, detach those the cluster still holds. */
static void replies_detach(session_t *s)
{
    if (!s->replies)
        return;
    session_reply_t *r = s->replies->next;
    s->replies->next = NULL; /* break the circle */
    s->replies = NULL;
    while (r) {
        session_reply_t *next = r->next;
        r->next = NULL;
        r->s = NULL;
        if (r->done)
            reply_free(r);
        r = next;
    }
}

static void reply_err(broker_t *b, session_t *s, bool has_id, uint64_t id, gale_err_t code,
                      const char *why)
{
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    b->m.protocol_errors[code < GALE_ERR_COUNT ? code : GALE_ERR_INTERNAL]++;
    log_debug("conn %" PRIu64 ": err %s: %s", s->conn_id, gale_err_name(code), why);
    gale_enc_t enc = (gale_enc_t)s->enc;
    send_reply(b, s, finish_reply(&buf, gale_encode_err(&buf, enc, has_id, id, code, why), enc));
}

static void reply_ok(broker_t *b, session_t *s, const gale_request_t *req)
{
    gale_enc_t enc = (gale_enc_t)s->enc;
    gale_buf_t buf;
    gale_err_t e;
    if (req->op != GALE_OP_PING && !req->has_id)
        return; /* success without id is silent */
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (req->op == GALE_OP_PING)
        e = gale_encode_pong(&buf, enc, req->has_id, req->id);
    else
        e = gale_encode_ack(&buf, enc, req->id);
    send_reply(b, s, finish_reply(&buf, e, enc));
}

static gale_err_t do_sub(broker_t *b, session_t *s, const gale_request_t *req, const char **why,
                         bool *deferred)
{
    bool first = false;
    if (s->owner.nsubs >= b->cfg.max_subscriptions &&
        !topics_holds(b->topics, &s->owner, req->topic, req->topic_len)) {
        *why = "too many subscriptions on this connection";
        return GALE_ERR_LIMIT;
    }
    topics_result_t r = topics_subscribe(b->topics, &s->owner, req->topic, req->topic_len,
                                         b->cluster ? &first : NULL);
    if (r == TOPICS_NOMEM) {
        *why = "out of memory";
        return GALE_ERR_INTERNAL;
    }
    if (b->cluster)
        return cluster_sub(b->cluster, s, req, r == TOPICS_ADDED, first, why, deferred);
    return GALE_OK;
}

static void do_unsub(broker_t *b, session_t *s, const gale_request_t *req)
{
    bool last = false;
    if (topics_unsubscribe(b->topics, &s->owner, req->topic, req->topic_len,
                           b->cluster ? &last : NULL) &&
        last)
        cluster_release(req->topic, req->topic_len, b->cluster);
}

/*
 * Remembers (up to BROKER_TRACKED_PUBLISHERS per turn) who published this loop turn, and how
 * many bytes of publishes were routed since the last flush.
 */
static void note_publisher(broker_t *b, session_t *s, size_t len)
{
    b->deferred_bytes += len;
    for (uint32_t i = 0; i < b->npublishers; i++)
        if (b->publishers[i] == s)
            return;
    if (b->npublishers < BROKER_TRACKED_PUBLISHERS)
        b->publishers[b->npublishers++] = s;
}

static void forget_publisher(broker_t *b, session_t *s)
{
    for (uint32_t i = 0; i < b->npublishers; i++)
        if (b->publishers[i] == s) {
            b->publishers[i] = b->publishers[--b->npublishers];
            return;
        }
}

/* The --pub-rate token bucket: true if s may publish now (and takes the token). */
static bool pub_allowed(broker_t *b, session_t *s)
{
    uint64_t rate = b->cfg.pub_rate;
    uint64_t cap = (b->cfg.pub_burst ? b->cfg.pub_burst : rate) * 1000;
    uint32_t now = (uint32_t)broker_uptime_ms(b);
    uint64_t t = s->rl_tokens + (uint64_t)(uint32_t)(now - s->rl_ms) * rate;
    s->rl_ms = now;
    if (t > cap)
        t = cap;
    if (t < 1000) {
        s->rl_tokens = (uint32_t)t;
        return false;
    }
    s->rl_tokens = (uint32_t)(t - 1000);
    return true;
}

/* A text message that is not UTF-8 (RFC 6455 8.1): close with 1007. */
static int close_invalid_utf8(session_t *s)
{
    static const char why[] = "text message is not UTF-8";
    log_info("conn %" PRIu64 ": %s: closing with 1007", s->conn_id, why);
    lws_close_reason(s->wsi, LWS_CLOSE_STATUS_INVALID_PAYLOAD, (unsigned char *)why,
                     sizeof(why) - 1);
    return -1;
}

/* One whole message. Returns 0, or -1 when the connection must close (reason set). */
static int handle(broker_t *b, session_t *s, const uint8_t *msg, size_t len, bool binary)
{
    gale_request_t req;
    const char *why = "";
    gale_err_t e;
    bool deferred = false;
    memset(&req, 0, sizeof(req));
    if (binary != (s->enc == GALE_ENC_MSGPACK)) {
        e = GALE_ERR_BAD_REQUEST;
        why = binary ? "binary frame on a gale.v1.json connection"
                     : "text frame on a gale.v1.msgpack connection";
    } else {
        e = gale_decode_request((gale_enc_t)s->enc, msg, len, &req, &why);
    }
    /*
     * Text must be UTF-8 whatever it holds. A JSON message that decodes is: the decoder checks
     * every byte (docs/PROTOCOL-NOTES.md), so only text that failed to decode is checked again.
     */
    if (e != GALE_OK && !binary && !gale_utf8_valid(msg, len))
        return close_invalid_utf8(s);
    if (e == GALE_OK && s->grant)
        e = auth_check(s->grant, &req, &why);
    if (e == GALE_OK && req.op == GALE_OP_PUB && b->cfg.pub_rate && !pub_allowed(b, s)) {
        e = GALE_ERR_LIMIT;
        why = "publish rate over --pub-rate";
    }
    if (e == GALE_OK) {
        switch (req.op) {
        case GALE_OP_SUB:
            e = do_sub(b, s, &req, &why, &deferred);
            break;
        case GALE_OP_UNSUB:
            do_unsub(b, s, &req);
            break;
        case GALE_OP_PUB:
            note_publisher(b, s, len);
            if (b->cluster) {
                e = cluster_pub(b->cluster, s, &req, &why, &deferred);
                break;
            }
            e = router_publish(b, req.topic, req.topic_len, (gale_enc_t)s->enc, req.data,
                               req.data_len);
            if (e != GALE_OK)
                why = router_convert_why((gale_enc_t)s->enc);
            break;
        case GALE_OP_PING:
            break;
        }
    }
    if (deferred)
        return 0; /* the cluster finishes the reply */
    if (e != GALE_OK)
        reply_err(b, s, req.has_id, req.id, e, why);
    else
        reply_ok(b, s, &req);
    return 0;
}

bool session_open(broker_t *b, session_t *s, struct lws *wsi, gale_enc_t enc,
                  struct auth_grant *grant)
{
    s->wsi = wsi;
    s->enc = (uint8_t)enc;
    s->conn_id = ++b->next_conn_id;
    s->dirty_slot = SESSION_NOT_DIRTY;
    s->last_rx_ms = broker_uptime_ms(b);
    if (!slot_push(&b->sessions, &b->nsessions, &b->sessions_cap, s, &s->slot))
        return false;
    if (b->nsessions > b->sessions_peak)
        b->sessions_peak = b->nsessions;
    b->m.connections_accepted++;
    if (grant) {
        auth_grant_ref(grant);
        s->grant = grant;
    }
    if (b->cfg.pub_rate) {
        uint64_t burst = b->cfg.pub_burst ? b->cfg.pub_burst : b->cfg.pub_rate;
        s->rl_tokens = (uint32_t)(burst * 1000);
        s->rl_ms = (uint32_t)s->last_rx_ms;
    }
    s->live = 1;
    b->nlive++;

    char conn[24];
    snprintf(conn, sizeof(conn), "%" PRIu64, s->conn_id);
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    send_reply(b, s,
               finish_reply(
                   &buf, gale_encode_hello(&buf, enc, b->node_id, conn, b->cfg.max_message), enc));
    if (grant)
        log_info("conn %" PRIu64 ": open (%s), user '%s'", s->conn_id, gale_enc_subprotocol(enc),
                 grant->user);
    else
        log_debug("conn %" PRIu64 ": open (%s)", s->conn_id, gale_enc_subprotocol(enc));
    return true;
}

void session_close(broker_t *b, session_t *s)
{
    if (!s->wsi)
        return; /* never opened */
    replies_detach(s);
    topics_unsubscribe_all(b->topics, &s->owner, b->cluster ? cluster_release : NULL, b->cluster);
    forget_publisher(b, s);
    outq_clear(&s->q);
    free(s->rx);
    s->rx = NULL;
    auth_grant_unref(s->grant);
    s->grant = NULL;
    if (s->dirty_slot != SESSION_NOT_DIRTY) {
        session_t *last = b->dirty[--b->ndirty];
        b->dirty[s->dirty_slot] = last;
        last->dirty_slot = s->dirty_slot;
        s->dirty_slot = SESSION_NOT_DIRTY;
    }
    session_t *last = b->sessions[--b->nsessions];
    b->sessions[s->slot] = last;
    last->slot = s->slot;
    log_debug("conn %" PRIu64 ": closed", s->conn_id);
    s->wsi = NULL;
}

void session_touch(broker_t *b, session_t *s)
{
    if (s->close_code)
        return; /* last_rx_ms now times the close */
    s->last_rx_ms = broker_uptime_ms(b);
    s->ping_sent = 0;
}

static int close_oversize(broker_t *b, session_t *s, size_t len)
{
    static const char why[] = "message too large";
    b->m.oversize_closes++;
    log_info("conn %" PRIu64 ": message of at least %zu bytes over --max-message %" PRIu64
             ": closing with 1009",
             s->conn_id, len, b->cfg.max_message);
    free(s->rx);
    s->rx = NULL;
    s->rx_len = 0;
    lws_close_reason(s->wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why,
                     sizeof(why) - 1);
    return -1;
}

int session_receive(broker_t *b, session_t *s, const uint8_t *in, size_t len)
{
    struct lws *wsi = s->wsi;
    session_touch(b, s);
    if (s->close_code || s->killed)
        return 0; /* closing: input no longer matters */
    bool first = lws_is_first_fragment(wsi);
    bool final = lws_is_final_fragment(wsi);
    size_t total = (first ? 0 : s->rx_len) + len + lws_remaining_packet_payload(wsi);
    if (total > b->cfg.max_message)
        return close_oversize(b, s, total);
    if (first && final) /* the common case: the whole message in one chunk */
        return handle(b, s, in, len, lws_frame_is_binary(wsi));
    if (first) {
        s->rx_len = 0;
        s->rx_binary = lws_frame_is_binary(wsi) ? 1 : 0;
    }
    /* Sized for the rest of this frame at once: a small --rx-buffer means many chunks. */
    uint8_t *nrx = realloc(s->rx, total + 1);
    if (!nrx) {
        log_error("conn %" PRIu64 ": out of memory reassembling a message", s->conn_id);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, NULL, 0);
        return -1;
    }
    s->rx = nrx;
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += len;
    int r = 0;
    if (final) {
        r = handle(b, s, s->rx, s->rx_len, s->rx_binary);
        free(s->rx);
        s->rx = NULL;
        s->rx_len = 0;
    }
    return r;
}

bool session_enqueue(broker_t *b, session_t *s, frame_t *f)
{
    if (s->close_code || s->killed)
        return false;
    if (s->q.bytes + f->len > b->cfg.queue_limit) {
        b->m.slow_consumer_closes++;
        log_info("conn %" PRIu64 ": slow consumer: %zu bytes queued, %zu more would pass "
                 "--queue-limit %" PRIu64 ": closing with 4001",
                 s->conn_id, s->q.bytes, f->len, b->cfg.queue_limit);
        session_begin_close(b, s, 4001, true);
        return false;
    }
    if (!outq_push(&s->q, f)) {
        log_error("conn %" PRIu64 ": out of memory queueing: closing", s->conn_id);
        session_begin_close(b, s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, true);
        return false;
    }
    mark_dirty(b, s);
    return true;
}

static const char *close_reason(uint16_t code)
{
    switch (code) {
    case LWS_CLOSE_STATUS_GOINGAWAY:
        return "broker shutting down";
    case 4001:
        return "slow consumer: outbound queue over its limit";
    case LWS_CLOSE_STATUS_POLICY_VIOLATION:
        return "token expired";
    default:
        return "internal error";
    }
}

void session_begin_close(broker_t *b, session_t *s, uint16_t code, bool drop_queue)
{
    if (s->close_code || s->killed)
        return;
    /*
     * The close frame is queued like any frame, after what is already queued
     * (unless dropped), and written by the flush path: lws 4.1.6 (Debian's
     * debug build) drops a close reason returned from WRITEABLE. The peer's
     * answering close ends the connection (WS_PEER_INITIATED_CLOSE).
     */
    if (drop_queue)
        outq_clear(&s->q);
    frame_t *f = frame_close(code, close_reason(code));
    if (!f || !outq_push(&s->q, f)) {
        frame_unref(f);
        session_kill(b, s);
        return;
    }
    frame_unref(f);
    s->close_code = code;
    s->last_rx_ms = broker_uptime_ms(b); /* now the start of the close (session_sweep) */
    mark_dirty(b, s);
}

int session_peer_close(broker_t *b, session_t *s, const uint8_t *payload, size_t len)
{
    if (s->close_code || s->killed)
        return -1; /* our close frame went out first (or we are dropping): end here */
    /*
     * The usual way a client leaves. lws would echo the close from its WRITEABLE handler, a
     * round trip through the poll (two epoll_ctl and a loop turn per connection), then end
     * the connection, dropping what we still had queued. Do the same at once: drop the
     * queue, write the peer's payload back if it is valid, else answer 1002 (RFC 6455 7.4,
     * 8.1; lws has only replaced some codes no peer may send with 1002, and checks neither
     * the length nor the reason). With a frame half-written, lws closes without a close frame
     * (one cannot follow a partial frame); leave that case to it.
     */
    if (lws_partial_buffered(s->wsi) || len > GALE_CONTROL_MAX)
        return 0;
    outq_clear(&s->q);
    uint8_t buf[LWS_PRE + 2 + GALE_CONTROL_MAX];
    uint8_t *p = buf + LWS_PRE;
    uint16_t code;
    const char *bad = gale_close_payload_check(payload, len, &code);
    if (bad) { /* 1002, with what was wrong as the reason (ASCII, < 123 bytes) */
        log_info("conn %" PRIu64 ": invalid close frame (%s; %zu bytes, code %u): answering 1002",
                 s->conn_id, bad, len, (unsigned)code);
        len = 2 + strlen(bad);
        p[2] = LWS_CLOSE_STATUS_PROTOCOL_ERR >> 8;
        p[3] = LWS_CLOSE_STATUS_PROTOCOL_ERR & 0xff;
        memcpy(p + 4, bad, len - 2);
    } else if (len) {
        memcpy(p + 2, payload, len);
    }
    p[0] = 0x80 | FRAME_CLOSE;
    p[1] = (uint8_t)len;
    if (lws_write(s->wsi, p, 2 + len, LWS_WRITE_HTTP) >= 0) {
        b->m.bytes_out += 2 + len;
        b->m.writes++;
    }
    return -1;
}

void session_kill(broker_t *b, session_t *s)
{
    if (s->killed)
        return;
    s->killed = 1;
    outq_clear(&s->q);
    /*
     * lws would first flush what it holds for the socket (which a stalled
     * peer never lets happen), and its timeouts set outside its own service
     * may never fire: shut the socket down instead. lws sees the hang-up on
     * its next poll and closes the connection (LWS_CALLBACK_CLOSED).
     */
    lws_sockfd_type fd = lws_get_socket_fd(s->wsi);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    lws_callback_on_writable(s->wsi);
}

void session_flush(broker_t *b, session_t *s)
{
    struct lws *wsi = s->wsi;
    size_t budget = FLUSH_BUDGET;
    if (s->killed)
        return;
    while (s->q.count) {
        if (lws_partial_buffered(wsi) || budget == 0) {
            lws_callback_on_writable(wsi); /* resume when the socket drains */
            return;
        }
        size_t n = outq_gather(&s->q, b->scratch, b->scratch_cap, NULL);
        const uint8_t *p = b->scratch;
        frame_t *big = NULL;
        if (n == 0) { /* one frame larger than the scratch buffer: send it from its own memory */
            big = frame_ref(outq_peek(&s->q));
            outq_pop(&s->q);
            p = frame_bytes(big);
            n = big->len;
        }
        /* LWS_WRITE_HTTP on a ws connection is lws's raw send: our bytes are whole frames. */
        int w = lws_write(wsi, (unsigned char *)p, n, LWS_WRITE_HTTP);
        frame_unref(big);
        if (w < 0) {
            log_debug("conn %" PRIu64 ": write failed: dropping", s->conn_id);
            session_kill(b, s);
            return;
        }
        b->m.bytes_out += n;
        b->m.writes++;
        budget = budget > n ? budget - n : 0;
    }
}

void session_flush_all(broker_t *b)
{
    /* session_flush never opens or closes sessions, so the array is stable here. */
    for (uint32_t i = 0; i < b->ndirty; i++) {
        session_t *s = b->dirty[i];
        s->dirty_slot = SESSION_NOT_DIRTY;
        session_flush(b, s);
    }
    b->ndirty = 0;
    b->deferred_turns = 0; /* whoever flushed, the deferral starts over */
    b->deferred_bytes = 0;
}

/* True if a connection that published this turn has more bytes waiting in its socket. */
static bool publishers_have_input(broker_t *b)
{
    for (uint32_t i = 0; i < b->npublishers; i++) {
        int avail = 0;
        lws_sockfd_type fd = lws_get_socket_fd(b->publishers[i]->wsi);
        if (fd >= 0 && ioctl(fd, FIONREAD, &avail) == 0 && avail > 0)
            return true;
    }
    return false;
}

void session_flush_turn(broker_t *b)
{
    /*
     * While a publisher still has unread input, the next turn will route
     * more messages to the same subscribers: wait for them (a bounded number
     * of turns) so each subscriber gets one larger write instead of several
     * small ones. The pending input makes the next poll return at once.
     */
    bool defer = b->ndirty && b->deferred_turns < FLUSH_MAX_DEFERRED_TURNS &&
                 b->deferred_bytes < FLUSH_DEFER_BYTES && publishers_have_input(b);
    b->npublishers = 0;
    if (defer) {
        b->deferred_turns++;
        return;
    }
    session_flush_all(b);
}

/*
 * After a crowd of connections left (half of the peak, at least TRIM_MIN_DROP), hand the
 * heap's free pages back to the system: glibc keeps them otherwise, and a broker that held
 * 19,000 connections once would keep ~40 MB it no longer uses. Rare by construction, so its
 * cost (a walk over the heap, a few ms) does not matter.
 */
#define TRIM_MIN_DROP 1024

static void return_memory(broker_t *b)
{
    if (b->sessions_peak < b->nsessions + TRIM_MIN_DROP || b->nsessions > b->sessions_peak / 2)
        return;
#ifdef __GLIBC__
    uint64_t t0 = uv_hrtime();
    malloc_trim(0);
    log_info("%u connections left since the peak of %u: returned free memory to the system "
             "(%.1f ms)",
             b->sessions_peak - b->nsessions, b->sessions_peak, (uv_hrtime() - t0) / 1e6);
#endif
    b->sessions_peak = b->nsessions;
}

void session_sweep(broker_t *b)
{
    return_memory(b);
    uint64_t now = broker_uptime_ms(b);
    uint64_t k = b->cfg.keepalive_s * 1000;
    int64_t unix_now = (int64_t)time(NULL);
    for (uint32_t i = 0; i < b->nsessions; i++) {
        session_t *s = b->sessions[i];
        uint64_t idle = now - s->last_rx_ms;
        if (s->killed)
            continue;
        outq_trim(&s->q); /* an emptied queue keeps its ring until here */
        if (s->grant && !s->close_code && unix_now >= s->grant->exp) {
            log_info("conn %" PRIu64 ": the token of user '%s' expired: closing with 1008",
                     s->conn_id, s->grant->user);
            session_begin_close(b, s, LWS_CLOSE_STATUS_POLICY_VIOLATION, false);
            continue;
        }
        if (s->close_code) {
            if (idle >= CLOSE_GRACE_MS) {
                log_info("conn %" PRIu64 ": no close answer after %" PRIu64 " ms: dropping",
                         s->conn_id, idle);
                session_kill(b, s);
            }
        } else if (k && s->ping_sent && idle >= 2 * k) {
            b->m.keepalive_closes++;
            log_info("conn %" PRIu64 ": no answer to keepalive ping for %" PRIu64 " ms: dropping",
                     s->conn_id, idle - k);
            session_kill(b, s);
        } else if (k && !s->ping_sent && idle >= k) {
            s->ping_sent = 1;
            session_enqueue(b, s, frame_ping());
        }
    }
}
