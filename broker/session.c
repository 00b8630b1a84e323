#include "session.h"

#include "auth.h"
#include "core.h"
#include "log.h"
#include "loops.h"

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

void session_send(broker_t *b, session_t *s, frame_t *f)
{
    if (!f) {
        log_error("conn %" PRIu64 ": out of memory building a reply: closing", s->conn.id);
        session_begin_close(b, s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, true);
        return;
    }
    session_enqueue(b, s, f);
    frame_unref(f);
}

static session_t *session_of(conn_t *c)
{
    return session_of_conn(c);
}

/* conn_ops_t.deliver */
static bool op_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    return session_enqueue(b, session_of(c), f);
}

/* conn_ops_t.reply: the answer as a gale v1 frame in the session's encoding. */
static void op_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    gale_enc_t enc = (gale_enc_t)c->enc;
    gale_buf_t buf;
    gale_err_t e;
    if (r->frame) { /* hist: built by the core */
        session_enqueue(b, session_of(c), r->frame);
        frame_unref(r->frame);
        return;
    }
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (r->err != GALE_OK && r->why_prefix) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s%s", r->why_prefix, r->why);
        e = gale_encode_err(&buf, enc, r->has_id, r->id, r->err, msg);
    } else if (r->err != GALE_OK) {
        e = gale_encode_err(&buf, enc, r->has_id, r->id, r->err, r->why);
    } else if (r->op == GALE_OP_PING) {
        e = gale_encode_pong(&buf, enc, r->has_id, r->id);
    } else {
        gale_pos_t pos = {.ep = r->ep, .ep_len = r->ep_len, .off = r->off};
        gale_ack_ext_t x = {.pos = r->has_pos ? &pos : NULL,
                            .has_off = r->has_off,
                            .off = r->off,
                            .recovered = r->recovered,
                            .dup = r->dup};
        e = gale_encode_ack_ext(&buf, enc, r->id, &x);
    }
    session_send(b, session_of(c), frame_built(&buf, e, enc));
}

/* conn_ops_t.close */
static void op_close(broker_t *b, conn_t *c, uint16_t code)
{
    session_begin_close(b, session_of(c), code, true);
}

static const conn_ops_t session_ops = {
    .deliver = op_deliver,
    .reply = op_reply,
    .close = op_close,
};

/*
 * Remembers (up to BROKER_TRACKED_PUBLISHERS per turn) who published this loop turn, and how
 * many bytes of publishes were routed since the last flush.
 */
static void note_publisher(broker_t *b, session_t *s, size_t len)
{
    if (b->loops_backlog && !s->rx_paused && s->wsi) { /* another loop is behind (loops.h) */
        s->rx_paused = 1;
        lws_rx_flow_control(s->wsi, 0);
    }
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

/* One whole message. Returns 0, or -1 when the connection must close (reason set). */
static int handle(broker_t *b, session_t *s, const uint8_t *msg, size_t len, bool binary)
{
    uint64_t published = b->m.messages_published;
    uint16_t code = core_message(b, &s->conn, msg, len, binary);
    if (b->m.messages_published != published)
        note_publisher(b, s, len);
    if (!code)
        return 0;
    b->m.invalid_utf8_closes++;
    static const char why[] = "text message is not UTF-8";
    lws_close_reason(s->wsi, (enum lws_close_status)code, (unsigned char *)why, sizeof(why) - 1);
    return -1;
}

/* What every session starts with, whatever its protocol. */
static bool start(broker_t *b, session_t *s, struct lws *wsi)
{
    s->wsi = wsi;
    s->dirty_slot = SESSION_NOT_DIRTY;
    s->last_rx_ms = broker_uptime_ms(b);
    if (!slot_push(&b->sessions, &b->nsessions, &b->sessions_cap, s, &s->slot))
        return false;
    if (b->nsessions > b->sessions_peak)
        b->sessions_peak = b->nsessions;
    b->m.connections_accepted++;
    return true;
}

/* Undoes start (the adapter could not be set up). */
static void unstart(broker_t *b, session_t *s)
{
    session_t *last = b->sessions[--b->nsessions];
    b->sessions[s->slot] = last;
    last->slot = s->slot;
    s->wsi = NULL;
}

bool session_open_adapter(broker_t *b, session_t *s, struct lws *wsi, const session_proto_t *proto)
{
    if (!start(b, s, wsi))
        return false;
    if (!proto->open(b, s)) {
        unstart(b, s);
        return false;
    }
    s->live = 1;
    b->nlive++;
    b->m.proto_connections[proto->index]++;
    log_debug("session %p: open (%s)", (void *)s, proto->name);
    return true;
}

bool session_open(broker_t *b, session_t *s, struct lws *wsi, gale_enc_t enc,
                  struct auth_grant *grant)
{
    if (!start(b, s, wsi))
        return false;
    core_open(b, &s->conn, &session_ops, enc, grant);
    s->live = 1;
    b->nlive++;

    char conn[CORE_CONN_NAME_MAX];
    core_conn_name(b, &s->conn, conn);
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    session_send(
        b, s,
        frame_built(&buf, gale_encode_hello(&buf, enc, b->node_id, conn, b->cfg.max_message), enc));
    if (grant)
        log_info("conn %" PRIu64 ": open (%s), user '%s'", s->conn.id, gale_enc_subprotocol(enc),
                 grant->user);
    else
        log_debug("conn %" PRIu64 ": open (%s)", s->conn.id, gale_enc_subprotocol(enc));
    return true;
}

void session_close(broker_t *b, session_t *s)
{
    if (!s->wsi)
        return; /* never opened */
    if (s->ad)
        s->ad->proto->closing(b, s);
    if (s->conn.ops) /* an adapter opens it at its handshake */
        core_close(b, &s->conn);
    if (s->ad) {
        b->m.proto_connections[s->ad->proto->index]--;
        s->ad->proto->free(b, s);
        s->ad = NULL;
    }
    forget_publisher(b, s);
    outq_clear(&s->q);
    free(s->rx);
    s->rx = NULL;
    if (s->dirty_slot != SESSION_NOT_DIRTY) {
        session_t *last = b->dirty[--b->ndirty];
        b->dirty[s->dirty_slot] = last;
        last->dirty_slot = s->dirty_slot;
        s->dirty_slot = SESSION_NOT_DIRTY;
    }
    session_t *last = b->sessions[--b->nsessions];
    b->sessions[s->slot] = last;
    last->slot = s->slot;
    log_debug("conn %" PRIu64 ": closed", s->conn.id);
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
             s->conn.id, len, b->cfg.max_message);
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
    if (b->loops) /* what other loops handed over before this request was sent comes first */
        loops_catch_up(b);
    if (s->ad) { /* a byte stream: the adapter frames and bounds it */
        uint64_t published = b->m.messages_published;
        int r = s->ad->proto->receive(b, s, in, len, lws_frame_is_binary(wsi));
        if (b->m.messages_published != published) /* coalesce as for gale's publishers */
            note_publisher(b, s, len);
        return r;
    }
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
        log_error("conn %" PRIu64 ": out of memory reassembling a message", s->conn.id);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, NULL, 0);
        return -1;
    }
    s->rx = nrx;
    memcpy(s->rx + s->rx_len, in, len);
    s->rx_len += (uint32_t)len; /* total <= --max-message (64 MiB at most) */
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
                 s->conn.id, s->q.bytes, f->len, b->cfg.queue_limit);
        session_begin_close(b, s, 4001, true);
        return false;
    }
    if (!outq_push(&s->q, f)) {
        log_error("conn %" PRIu64 ": out of memory queueing: closing", s->conn.id);
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
    case LWS_CLOSE_STATUS_NORMAL:
        return "normal closure";
    case LWS_CLOSE_STATUS_PROTOCOL_ERR:
        return "protocol error";
    case LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE:
        return "message too large";
    case LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE:
        return "unsupported data";
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
    s->conn.closing = 1;
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
        b->m.invalid_close_frames++;
        log_info("conn %" PRIu64 ": invalid close frame (%s; %zu bytes, code %u): answering 1002",
                 s->conn.id, bad, len, (unsigned)code);
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
    s->conn.closing = 1;
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
    while (outq_count(&s->q)) {
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
            log_debug("conn %" PRIu64 ": write failed: dropping", s->conn.id);
            session_kill(b, s);
            return;
        }
        b->m.bytes_out += n;
        b->m.writes++;
        budget = budget > n ? budget - n : 0;
    }
}

uint64_t session_queued_bytes(const broker_t *b)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < b->nsessions; i++)
        n += b->sessions[i]->q.bytes;
    return n;
}

void session_resume_all(broker_t *b)
{
    for (uint32_t i = 0; i < b->nsessions; i++) {
        session_t *s = b->sessions[i];
        if (s->rx_paused) {
            s->rx_paused = 0;
            if (s->wsi)
                lws_rx_flow_control(s->wsi, 1);
        }
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
     * While a publisher still has unread input, or other loops have handed
     * this one more messages (loops.h), the next turn will route more
     * messages to the same subscribers: wait for them (a bounded number of
     * turns) so each subscriber gets one larger write instead of several
     * small ones. The pending input makes the next poll return at once.
     */
    bool defer = b->ndirty && b->deferred_turns < FLUSH_MAX_DEFERRED_TURNS &&
                 b->deferred_bytes < BROKER_FLUSH_DEFER_BYTES &&
                 (publishers_have_input(b) || (b->loops && loops_pending(b)));
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
        if (s->conn.grant && !s->close_code && unix_now >= s->conn.grant->exp) {
            log_info("conn %" PRIu64 ": the token of user '%s' expired: closing with 1008",
                     s->conn.id, s->conn.grant->user);
            session_begin_close(b, s, LWS_CLOSE_STATUS_POLICY_VIOLATION, false);
            continue;
        }
        if (s->close_code) {
            if (idle >= CLOSE_GRACE_MS) {
                log_info("conn %" PRIu64 ": no close answer after %" PRIu64 " ms: dropping",
                         s->conn.id, idle);
                session_kill(b, s);
            }
        } else if (k && s->ping_sent && idle >= 2 * k) {
            b->m.keepalive_closes++;
            log_info("conn %" PRIu64 ": no answer to keepalive ping for %" PRIu64 " ms: dropping",
                     s->conn.id, idle - k);
            session_kill(b, s);
        } else if (k && !s->ping_sent && idle >= k) {
            s->ping_sent = 1;
            session_enqueue(b, s, frame_ping());
        }
        if (s->ad && !s->close_code && !s->killed)
            s->ad->proto->sweep(b, s, now);
    }
}
