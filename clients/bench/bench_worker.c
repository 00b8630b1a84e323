/*
 * bench_worker: one forked worker of `gale bench`, holding its share of connections.
 *
 * fanout, topics, conns: connect this worker's connections (at most --concurrency in
 * setup at once), wait for each `hello`, subscribe where the scenario wants it and wait for
 * the `ack`, then report READY. From then on count every delivery exactly, check order per
 * publisher and record latency, until the parent says DRAIN (then wait for the expected
 * count or the deadline) or STOP, and send the FINAL report.
 * connect: churn --concurrency connections for --duration: connect, upgrade, `hello`,
 * close; the histogram holds the time from connect() to `hello`.
 * --proto nats: the same with NATS events (bench_nats.h): INFO is the hello, answered with
 * CONNECT (and SUB + PING, whose PONG is the ack, where the scenario subscribes).
 * --proto mqtt: the same with MQTT events (bench_mqtt.h): CONNECT goes out once the upgrade
 * is answered, CONNACK is the hello, answered with SUBSCRIBE where the scenario subscribes,
 * whose SUBACK is the ack; held connections send a PINGREQ every half keepalive.
 * recover: set up like fanout on RECOVER_TOPIC, keeping the position (ep, off) of each ack
 * (and of any msg after it); on DISCONNECT close every connection (close handshake, R_CLOSED);
 * on RECONNECT connect them again, subscribe with since {ep, off}, check every replayed msg
 * against the last off of its connection (the next one: received; at or below: duplicate;
 * beyond: a gap) and time each ack from the parent's t0; R_FINAL when all are answered.
 */
#include "bench.h"
#include "bench_mqtt.h"
#include "bench_msg.h"
#include "bench_nats.h"
#include "bench_sys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CLOSE_TIMEOUT_NS 5000000000ull
#define PROGRESS_NS 250000000ull

enum { CS_IDLE = 0, CS_SETUP, CS_READY, CS_DONE, CS_CLOSING };

typedef struct worker worker_t;

typedef struct {
    worker_t *wk;
    uint32_t local;
    uint8_t state;
    bool ok; /* setup completed (stays true if the connection is lost later) */
    uint64_t t0;
    bws_conn_t *c;
    nats_rx_t rx;        /* --proto nats: the stream of the current connection */
    mqtt_rx_t mrx;       /* --proto mqtt: the same */
    uint64_t off0, last; /* recover: last off before the disconnect; after it */
} slot_t;

struct worker {
    const opts_t *o;
    uint32_t w;
    int ctrl;
    bws_loop_t *loop;
    uint32_t n; /* connections (connect scenario: concurrent slots) */
    slot_t *slots;
    uint32_t started, pending;
    uint64_t *last_seq; /* n x pubs, UINT64_MAX: nothing yet */
    uint64_t setup_deadline, drain_deadline, churn_end, churn_count, last_progress;
    uint64_t last_keepalive; /* --proto mqtt: the last round of PINGREQs */
    bool need_sub, ready_sent, draining, stop;
    /* recover: closing (after DISCONNECT, until R_CLOSED), recovering (after RECONNECT) */
    bool closing, recovering;
    uint32_t to_close;
    uint64_t close_deadline, t0, top;
    char ep[BENCH_EP_MAX]; /* the epoch of the first subscription ack */
    bws_watch_t ctrl_watch;
    report_t rep;
};

static uint32_t global_index(const worker_t *wk, uint32_t local)
{
    return wk->w + local * wk->o->procs;
}

static void note_error(worker_t *wk, const char *fmt, const char *a, const char *b)
{
    if (!wk->rep.error[0])
        snprintf(wk->rep.error, sizeof(wk->rep.error), fmt, a, b);
}

static void send_report(worker_t *wk, uint32_t type)
{
    wk->rep.type = type;
    size_t len = type == R_FINAL ? sizeof(wk->rep) : REPORT_SHORT;
    if (send(wk->ctrl, &wk->rep, len, MSG_NOSIGNAL) < 0)
        wk->stop = true; /* the parent is gone */
}

static void start_more(worker_t *wk)
{
    while (wk->started < wk->n && wk->pending < wk->o->concurrency) {
        slot_t *s = &wk->slots[wk->started++];
        if (s->state == CS_DONE) /* recover: its first set-up failed */
            continue;
        nats_rx_reset(&s->rx, 1); /* the one PONG awaited acks the subscription, id 1 */
        /* MQTT: SUBACKs carry their packet id; PINGRESPs (keepalive) ids out of their way */
        mqtt_rx_reset(&s->mrx, BENCH_SEQ_BASE);
        s->c = bws_connect(wk->loop, global_index(wk, s->local), s);
        if (!s->c) {
            wk->rep.conns_failed++;
            s->state = CS_DONE;
            note_error(wk, "connect: %s%s", strerror(errno), "");
            continue;
        }
        s->state = CS_SETUP;
        wk->pending++;
    }
}

static void setup_done(worker_t *wk, slot_t *s)
{
    s->state = CS_READY;
    s->ok = true;
    wk->pending--;
    wk->rep.conns_ok++;
    wk->rep.t_ready = now_ns();
    start_more(wk);
}

/* Answers the hello: subscribes with id 1 (gale, MQTT) or sends CONNECT, SUB and PING (NATS). */
static void send_sub(worker_t *wk, slot_t *s)
{
    char topic[64];
    uint8_t msg[512], frame[600];
    bench_topic(wk->o, global_index(wk, s->local), topic, sizeof(topic));
    if (wk->o->nats) {
        bws_send(s->c, frame, nats_hello_frame(frame, sizeof(frame), topic));
        return;
    }
    if (wk->o->mqtt) {
        bws_send(s->c, frame, mqtt_sub_frame(frame, sizeof(frame), topic, 1));
        return;
    }
    size_t n = wk->recovering ? msg_encode_sub_since(msg, sizeof(msg), wk->o->msgpack, topic, 1,
                                                     wk->ep, s->off0)
                              : msg_encode_op(msg, sizeof(msg), wk->o->msgpack, "sub", topic, 1);
    bws_send(s->c, frame, ws_frame(frame, wk->o->msgpack ? WS_BINARY : WS_TEXT, msg, n, 0));
}

static void on_close(bws_conn_t *c, int code, const char *why);

/*
 * conns --topics-per-conn K: connection g subscribes to bench.conn.<g*K + j>, j < K, in one
 * write: K `sub`s with ids 1..K (the ack of K ends the set-up, replies come in order), or
 * NATS's CONNECT, K SUBs and one PING, or MQTT SUBSCRIBEs of up to MQTT_SUBS_PER_PACKET
 * filters each (the last SUBACK ends it).
 */
static void send_subs(worker_t *wk, slot_t *s)
{
    uint32_t k = wk->o->topics_per_conn;
    uint64_t first = (uint64_t)global_index(wk, s->local) * k;
    size_t cap = (size_t)k * 96 + 1024, len = 0;
    uint8_t *buf = malloc(cap);
    if (buf && wk->o->nats) {
        len = nats_subs_frame(buf, cap, "bench.conn.", first, k);
    } else if (buf && wk->o->mqtt) {
        len = mqtt_subs_frame(buf, cap, "bench.conn.", first, k);
    } else if (buf) {
        for (uint32_t j = 0; j < k; j++) {
            char topic[64];
            uint8_t msg[512];
            snprintf(topic, sizeof(topic), "bench.conn.%llu", (unsigned long long)(first + j));
            size_t n = msg_encode_op(msg, sizeof(msg), wk->o->msgpack, "sub", topic, j + 1);
            len += ws_frame(buf + len, wk->o->msgpack ? WS_BINARY : WS_TEXT, msg, n, 0);
        }
    }
    if (len)
        bws_send(s->c, buf, len);
    free(buf);
    if (!len) {
        bws_close(s->c);
        on_close(s->c, 0, "out of memory building the subscriptions");
    }
}

/* NATS without a subscription: the CONNECT a client sends after INFO. */
static void send_connect(worker_t *wk, slot_t *s)
{
    uint8_t frame[600];
    if (wk->o->nats)
        bws_send(s->c, frame, nats_hello_frame(frame, sizeof(frame), NULL));
}

/* The ack id that ends a subscribing set-up. */
static uint64_t setup_ack_id(const worker_t *wk)
{
    if (wk->o->nats)
        return 1; /* the one PONG after the SUBs */
    if (wk->o->mqtt)
        return mqtt_subs_packets(wk->o->topics_per_conn); /* the last SUBACK */
    return wk->o->topics_per_conn;
}

static void record_delivery(worker_t *wk, slot_t *s, const gmsg_t *m)
{
    uint64_t now = now_ns(), sent = wk->o->clock_base + m->t;
    wk->rep.received++;
    wk->rep.t_last_recv = now;
    hist_add(&wk->rep.hist, now > sent ? now - sent : 0);
    if (m->p >= wk->o->pubs) {
        wk->rep.foreign++;
        return;
    }
    uint64_t *last = &wk->last_seq[(size_t)s->local * wk->o->pubs + m->p];
    if (*last != UINT64_MAX && m->s == *last)
        wk->rep.duplicates++;
    else if (*last != UINT64_MAX && m->s < *last)
        wk->rep.out_of_order++;
    else
        *last = m->s;
}

static void churn_start(worker_t *wk, slot_t *s);

/* recover: a msg of the topic, before the disconnect (it moves the position on) or after. */
static void recover_msg(worker_t *wk, slot_t *s, const gmsg_t *m)
{
    if (!m->has_ep || !m->has_off) {
        wk->rep.foreign++;
        return;
    }
    if (!wk->recovering) { /* another publisher: resume after it, as a client would */
        wk->rep.early++;
        if (s->state == CS_READY && m->off > s->off0)
            s->off0 = m->off;
        return;
    }
    if (strcmp(m->ep, wk->ep) != 0) {
        wk->rep.foreign++;
        note_error(wk, "a recovered msg of epoch %s, not %s", m->ep, wk->ep);
        return;
    }
    if (m->off <= s->last) {
        wk->rep.duplicates++;
        return;
    }
    if (m->off > s->last + 1)
        wk->rep.out_of_order++; /* a gap: the messages between are lost */
    s->last = m->off;
    wk->rep.received++;
    wk->rep.t_last_recv = now_ns();
}

/* recover: the ack of a subscription, with (RECONNECT) or without since. False: refused. */
static bool recover_ack(worker_t *wk, slot_t *s, const gmsg_t *m)
{
    char a[32], b[32];
    if (!m->has_ep || !m->has_off) {
        note_error(wk,
                   "the sub ack of %s carries no position (ep, off): the broker keeps no history "
                   "for it (start it with --history '%s=1000')",
                   RECOVER_TOPIC, RECOVER_TOPIC);
        return false;
    }
    if (!wk->recovering) {
        if (!wk->ep[0])
            snprintf(wk->ep, sizeof(wk->ep), "%s", m->ep);
        else if (strcmp(m->ep, wk->ep) != 0)
            note_error(wk, "subscription acks of two epochs: %s and %s", wk->ep, m->ep);
        s->off0 = m->off;
        return true;
    }
    uint64_t now = now_ns();
    hist_add(&wk->rep.hist, now > wk->t0 ? now - wk->t0 : 0);
    wk->rep.t_ready = now;
    wk->rep.reconnected++;
    if (m->has_recovered && m->recovered) {
        wk->rep.recovered++;
    } else {
        wk->rep.not_recovered++;
        snprintf(a, sizeof(a), "%llu", (unsigned long long)s->off0);
        note_error(wk,
                   "a subscriber was not recovered (since {ep %s, off %s}: ack recovered false)",
                   wk->ep, a);
    }
    if (m->off != wk->top || strcmp(m->ep, wk->ep) != 0) {
        snprintf(a, sizeof(a), "%llu", (unsigned long long)m->off);
        snprintf(b, sizeof(b), "%llu", (unsigned long long)wk->top);
        note_error(wk, "a recovery ack at off %s, the stream's top is %s", a, b);
    }
    s->state = CS_READY;
    wk->pending--;
    start_more(wk);
    return true;
}

/* One message from the broker on slot @s's connection @c, either protocol. */
static void on_event(slot_t *s, bws_conn_t *c, const gmsg_t *m)
{
    worker_t *wk = s->wk;
    uint8_t f[16];
    switch (m->op) {
    case GM_MSG:
        if (wk->o->sc == SC_RECOVER)
            recover_msg(wk, s, m);
        else if (m->has_bench && s->state == CS_READY)
            record_delivery(wk, s, m);
        else
            wk->rep.foreign++;
        break;
    case GM_HELLO:
        if (s->state != CS_SETUP)
            break;
        if (wk->o->sc == SC_CONNECT) {
            hist_add(&wk->rep.hist, now_ns() - s->t0);
            s->state = CS_READY;
            send_connect(wk, s);
            if (wk->o->mqtt) /* a clean MQTT end: DISCONNECT (no will), then the close */
                bws_send(c, f, mqtt_disconnect_frame(f));
            bws_send_close(c, 1000);
        } else if (wk->need_sub && wk->o->topics_per_conn > 1) {
            send_subs(wk, s);
        } else if (wk->need_sub) {
            send_sub(wk, s);
        } else {
            send_connect(wk, s);
            setup_done(wk, s);
        }
        break;
    case GM_ACK:
        if (s->state != CS_SETUP || !m->has_id || m->id != setup_ack_id(wk))
            break;
        if (wk->o->sc != SC_RECOVER) {
            setup_done(wk, s);
        } else if (!recover_ack(wk, s, m)) {
            bws_close(c);
            on_close(c, 0, "subscription without a stream position");
        } else if (!wk->recovering) {
            setup_done(wk, s);
        }
        break;
    case GM_ERR:
        wk->rep.broker_errors++;
        note_error(wk, "the broker answered err %s: %s", m->code, m->text);
        if (s->state == CS_SETUP) { /* a refused subscription: the set-up failed */
            bws_close(c);
            on_close(c, 0, "subscription refused");
        }
        break;
    case GM_PING:
        bws_send(c, f, nats_pong_frame(f));
        break;
    default:
        break;
    }
}

/* An event of the NATS or MQTT stream parser. */
static int stream_event(void *user, const gmsg_t *m)
{
    slot_t *s = user;
    bws_conn_t *c = s->c;
    on_event(s, c, m);
    return s->c != c; /* closed, or the slot moved on (connect): stop reading this stream */
}

/* --proto mqtt: the upgrade is answered, the client speaks first. */
static void on_open(bws_conn_t *c)
{
    slot_t *s = c->user;
    uint8_t f[600];
    char id[64];
    bench_mqtt_client_id(s->wk->o, c->index, id, sizeof(id));
    bws_send(c, f, mqtt_connect_frame(f, sizeof(f), id, NULL, MQTT_KEEPALIVE_S));
}

static void on_message(bws_conn_t *c, bool binary, const uint8_t *p, size_t n)
{
    slot_t *s = c->user;
    if (s->wk->o->mqtt) {
        const char *why;
        if (mqtt_rx_feed(&s->mrx, binary, p, n, stream_event, s, &why) < 0) {
            bws_close(c);
            on_close(c, 0, why);
        }
        return;
    }
    if (s->wk->o->nats) {
        const char *why;
        if (nats_rx_feed(&s->rx, p, n, stream_event, s, &why) < 0) {
            bws_close(c);
            on_close(c, 0, why);
        }
        return;
    }
    gmsg_t m;
    if (gmsg_parse(&m, binary, p, n) < 0) {
        s->wk->rep.foreign++;
        return;
    }
    if (s->wk->o->sc == SC_RECOVER)
        gmsg_parse_pos(&m, binary, p, n);
    on_event(s, c, &m);
}

static void on_close(bws_conn_t *c, int code, const char *why)
{
    slot_t *s = c->user;
    worker_t *wk = s->wk;
    s->c = NULL;
    if (wk->o->sc == SC_CONNECT) {
        if (s->state == CS_READY) {
            wk->rep.cycles++;
        } else {
            wk->rep.conns_failed++;
            note_error(wk, "%s%s", why, "");
        }
        churn_start(wk, s);
        return;
    }
    if (s->state == CS_CLOSING) { /* recover: the close handshake is done */
        s->state = CS_IDLE;
        wk->rep.closed++;
        wk->to_close--;
        return;
    }
    if (s->state == CS_SETUP) {
        wk->rep.conns_failed++;
        wk->pending--;
        note_error(wk, "%s%s", why, "");
        start_more(wk);
    } else if (s->state == CS_READY) {
        wk->rep.lost_conns++;
        wk->rep.last_close_code = code;
        note_error(wk, "connection lost: %s%s", why, "");
    }
    s->state = CS_DONE;
}

/* connect scenario: (re)start slot @s while the run lasts. */
static void churn_start(worker_t *wk, slot_t *s)
{
    s->state = CS_IDLE;
    uint64_t now = now_ns();
    if (now >= wk->churn_end)
        return;
    nats_rx_reset(&s->rx, 1);
    mqtt_rx_reset(&s->mrx, BENCH_SEQ_BASE);
    s->c = bws_connect(wk->loop, (uint32_t)(wk->w + wk->churn_count++ * wk->o->procs), s);
    if (!s->c) { /* retried from housekeeping, not in a tight loop */
        wk->rep.conns_failed++;
        note_error(wk, "connect: %s%s", strerror(errno), "");
        return;
    }
    s->t0 = now;
    s->state = CS_SETUP;
}

static void churn_tick(worker_t *wk, uint64_t now)
{
    bool active = false;
    for (uint32_t i = 0; i < wk->n; i++) {
        slot_t *s = &wk->slots[i];
        if (s->state == CS_IDLE) {
            churn_start(wk, s);
        } else if ((s->state == CS_SETUP || s->state == CS_READY) &&
                   now - s->t0 > CLOSE_TIMEOUT_NS) {
            wk->rep.conns_failed++;
            note_error(wk, "%s%s",
                       s->state == CS_SETUP ? "no hello within 5 s" : "no close within 5 s", "");
            bws_close(s->c);
            s->c = NULL;
            churn_start(wk, s);
        }
        active |= s->state != CS_IDLE;
    }
    if (now >= wk->churn_end && (!active || now >= wk->churn_end + CLOSE_TIMEOUT_NS)) {
        wk->rep.conns_ok = wk->rep.cycles;
        wk->rep.t_ready = now;
        send_report(wk, R_FINAL);
        wk->stop = true;
    }
}

static uint64_t expected_for(const worker_t *wk, const cmd_t *cmd, uint32_t g)
{
    const opts_t *o = wk->o;
    uint64_t e = 0;
    uint32_t j = g % o->topics;
    for (uint32_t k = 0; k < cmd->npubs; k++) {
        uint64_t n = cmd->sent[k], r = (j + o->topics - k % o->topics) % o->topics;
        e += n / o->topics + (r < n % o->topics ? 1 : 0);
    }
    return e;
}

/* recover DISCONNECT: starts the close handshake of every subscribed connection. */
static void disconnect_all(worker_t *wk)
{
    wk->closing = true;
    wk->close_deadline = now_ns() + CLOSE_TIMEOUT_NS;
    for (uint32_t i = 0; i < wk->n; i++) {
        slot_t *s = &wk->slots[i];
        if (s->state != CS_READY)
            continue;
        s->state = CS_CLOSING;
        wk->to_close++;
        bws_send_close(s->c, 1000);
    }
}

/* recover RECONNECT: connects every subscriber again, for since {ep, off0}. */
static void reconnect_all(worker_t *wk, const cmd_t *cmd)
{
    const opts_t *o = wk->o;
    if (o->reconnect_url && bws_loop_retarget(wk->loop, &o->reconnect_target) < 0)
        note_error(wk, "--reconnect-url: %s%s", strerror(errno), "");
    wk->recovering = true;
    wk->t0 = cmd->t0;
    wk->top = cmd->top;
    if (strcmp(cmd->ep, wk->ep) != 0)
        note_error(wk, "the publisher's acks name epoch %s, the subscriptions' %s", cmd->ep,
                   wk->ep);
    wk->rep.expected = 0;
    wk->rep.t_ready = 0;
    for (uint32_t i = 0; i < wk->n; i++) {
        slot_t *s = &wk->slots[i];
        s->state = s->ok ? CS_IDLE : CS_DONE;
        s->last = s->off0;
        if (s->ok && cmd->top > s->off0)
            wk->rep.expected += cmd->top - s->off0;
    }
    wk->started = wk->pending = 0;
    wk->ready_sent = false;
    wk->setup_deadline = now_ns() + (uint64_t)(o->setup_timeout * 1e9);
    start_more(wk);
}

static void on_ctrl(bws_watch_t *w, uint32_t events)
{
    worker_t *wk = w->user;
    cmd_t cmd;
    ssize_t n = recv(wk->ctrl, &cmd, sizeof(cmd), 0);
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR))
            wk->stop = true;
        return;
    }
    if (cmd.type == C_STOP) {
        send_report(wk, R_FINAL);
        wk->stop = true;
    } else if (cmd.type == C_DRAIN) {
        wk->rep.expected = 0;
        for (uint32_t i = 0; i < wk->n; i++)
            if (wk->slots[i].ok)
                wk->rep.expected += expected_for(wk, &cmd, global_index(wk, i));
        wk->drain_deadline = cmd.deadline;
        wk->draining = true;
    } else if (cmd.type == C_DISCONNECT) {
        disconnect_all(wk);
    } else if (cmd.type == C_RECONNECT) {
        reconnect_all(wk, &cmd);
    }
}

/* --proto mqtt: a PINGREQ from every held connection each half keepalive (a subscriber sends
 * nothing else): their PINGRESPs are acks no set-up waits for. */
static void keepalive(worker_t *wk, uint64_t now)
{
    uint8_t f[16];
    size_t n = mqtt_pingreq_frame(f);
    if (now - wk->last_keepalive < MQTT_KEEPALIVE_S * 500000000ull)
        return;
    wk->last_keepalive = now;
    for (uint32_t i = 0; i < wk->n; i++)
        if (wk->slots[i].state == CS_READY && wk->slots[i].c)
            bws_send(wk->slots[i].c, f, n);
}

static void tick(worker_t *wk)
{
    uint64_t now = now_ns();
    if (wk->o->sc == SC_CONNECT) {
        churn_tick(wk, now);
        return;
    }
    if (wk->o->mqtt)
        keepalive(wk, now);
    if (!wk->ready_sent && now > wk->setup_deadline) {
        for (uint32_t i = 0; i < wk->n; i++) {
            slot_t *s = &wk->slots[i];
            if (s->state == CS_SETUP) {
                bws_close(s->c);
                s->c = NULL;
                s->state = CS_DONE;
                wk->rep.conns_failed++;
                wk->pending--;
                note_error(wk, "setup timed out (no hello or ack within --setup-timeout)%s%s", "",
                           "");
            } else if (s->state == CS_IDLE) {
                s->state = CS_DONE;
                wk->rep.conns_failed++;
            }
        }
        wk->started = wk->n;
    }
    if (wk->closing && (wk->to_close == 0 || now >= wk->close_deadline)) {
        for (uint32_t i = 0; i < wk->n; i++) { /* no close answer in time: drop the socket */
            slot_t *s = &wk->slots[i];
            if (s->state == CS_CLOSING) {
                bws_close(s->c);
                s->c = NULL;
                s->state = CS_IDLE;
                note_error(wk, "no close answer within 5 s of a close frame%s%s", "", "");
            }
        }
        wk->to_close = 0;
        wk->closing = false;
        send_report(wk, R_CLOSED);
    }
    if (!wk->ready_sent && wk->started == wk->n && wk->pending == 0) {
        send_report(wk, wk->recovering ? R_FINAL : R_READY);
        wk->ready_sent = true;
        wk->stop = wk->recovering;
        wk->last_progress = now;
    }
    if (wk->draining && (wk->rep.received >= wk->rep.expected || now >= wk->drain_deadline)) {
        send_report(wk, R_FINAL);
        wk->stop = true;
    } else if (wk->ready_sent && now - wk->last_progress >= PROGRESS_NS) {
        send_report(wk, R_PROGRESS);
        wk->last_progress = now;
    }
}

int bench_worker(const opts_t *o, uint32_t w, int ctrl)
{
    worker_t wk = {.o = o, .w = w, .ctrl = ctrl};
    uint32_t total = o->sc == SC_CONNS ? o->conns : o->sc == SC_CONNECT ? 0 : o->subs;
    wk.n = o->sc == SC_CONNECT ? o->concurrency : total / o->procs + (w < total % o->procs ? 1 : 0);
    wk.need_sub = o->sc != SC_CONNS || o->subscribe;
    wk.rep.worker = w;
    hist_reset(&wk.rep.hist);
    int status = 1;
    bws_handlers_t h = {
        .on_open = o->mqtt ? on_open : NULL, .on_message = on_message, .on_close = on_close};
    wk.loop = bws_loop_new(&o->target, &h);
    wk.slots = calloc(wk.n ? wk.n : 1, sizeof(*wk.slots));
    size_t nseq = (size_t)wk.n * (o->sc == SC_FANOUT || o->sc == SC_TOPICS ? o->pubs : 0);
    wk.last_seq = malloc((nseq ? nseq : 1) * sizeof(uint64_t));
    if (!wk.loop || !wk.slots || !wk.last_seq) {
        fprintf(stderr, "gale bench: worker %u: out of memory\n", w);
        goto Exit;
    }
    memset(wk.last_seq, 0xff, (nseq ? nseq : 1) * sizeof(uint64_t));
    for (uint32_t i = 0; i < wk.n; i++) {
        wk.slots[i].wk = &wk;
        wk.slots[i].local = i;
    }
    wk.ctrl_watch = (bws_watch_t){.fd = ctrl, .cb = on_ctrl, .user = &wk};
    if (bws_watch_add(wk.loop, &wk.ctrl_watch) < 0) {
        perror("gale bench: worker: epoll");
        goto Exit;
    }
    wk.rep.t_start = wk.last_keepalive = now_ns();
    wk.setup_deadline = wk.rep.t_start + (uint64_t)(o->setup_timeout * 1e9);
    if (o->sc == SC_CONNECT) {
        wk.churn_end = wk.rep.t_start + (uint64_t)(o->duration * 1e9);
        for (uint32_t i = 0; i < wk.n; i++)
            churn_start(&wk, &wk.slots[i]);
    } else {
        start_more(&wk);
    }
    while (!wk.stop) {
        if (bws_loop_run(wk.loop, 20) < 0) {
            perror("gale bench: worker: epoll_wait");
            goto Exit;
        }
        tick(&wk);
    }
    status = 0;
Exit:
    bws_loop_free(wk.loop);
    for (uint32_t i = 0; wk.slots && i < wk.n; i++) {
        nats_rx_free(&wk.slots[i].rx);
        mqtt_rx_free(&wk.slots[i].mrx);
    }
    free(wk.slots);
    free(wk.last_seq);
    return status;
}
