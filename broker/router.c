#include "router.h"

#include "conn.h"
#include "frame.h"
#include "gale_mqtt.h"
#include "loops.h"

#include <stddef.h>
#include <string.h>

typedef struct route {
    broker_t *b;
    const router_msg_t *m;
    const void *skip;                  /* connections waiting for it get nothing (conn.h waits) */
    frame_t *frames[CONN_FMT_COUNT];   /* built on first need */
    gale_err_t failed[CONN_FMT_COUNT]; /* why frames[fmt] could not be built */
    uint64_t delivered;
} route_t;

/* The message's payload bytes for MQTT and NATS (gale_payload_from_data) into buf. */
static gale_err_t payload(gale_buf_t *buf, const router_msg_t *m)
{
    return gale_payload_from_data(buf, m->enc, m->data, m->data_len);
}

/* An MQTT PUBLISH at QoS 0, shared by QoS 0 subscribers (adapters copy it for QoS 1). */
static gale_err_t build_mqtt(gale_buf_t *buf, const router_msg_t *m)
{
    char name[GALE_TOPIC_MAX];
    if (!gale_mqtt_topic_from_gale(m->topic, m->topic_len, name))
        return GALE_ERR_BAD_TOPIC; /* MQTT cannot name it: its subscribers do not get it */
    gale_buf_t p;
    gale_buf_init(&p, 0);
    gale_err_t e = payload(&p, m);
    if (e == GALE_OK)
        e = gale_mqtt_encode_publish(buf, name, m->topic_len, 0, false, false, 0, p.data,
                                     gale_buf_payload_len(&p));
    gale_buf_free(&p);
    return e;
}

/*
 * A NATS MSG without its subscription id: "MSG <subject> ", a NUL, then "[reply ]<#bytes>\r\n
 * <payload>\r\n". The adapter writes one MSG per matching subscription id from it (conn.h).
 */
static gale_err_t build_nats(gale_buf_t *buf, const router_msg_t *m)
{
    size_t start = buf->len;
    gale_buf_append(buf, "MSG ", 4);
    gale_buf_append(buf, m->topic, m->topic_len);
    gale_buf_append(buf, " \0", 2);
    if (m->reply) {
        gale_buf_append(buf, m->reply, m->reply_len);
        gale_buf_append(buf, " ", 1);
    }
    size_t len_at = buf->len;
    gale_buf_append(buf, "0000000000\r\n", 12); /* the length, written once known */
    size_t data_at = buf->len;
    gale_err_t e = payload(buf, m);
    if (e != GALE_OK || buf->oom) {
        buf->len = start;
        return e != GALE_OK ? e : GALE_ERR_INTERNAL;
    }
    size_t n = buf->len - data_at;
    char digits[24];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    /* Right-align the digits in the reserved room: the rest moves left over the zeros. */
    uint8_t *at = buf->data + len_at;
    for (size_t i = 0; i < d; i++)
        at[i] = (uint8_t)digits[d - 1 - i];
    memmove(at + d, at + 10, buf->len - (len_at + 10));
    buf->len -= 10 - d;
    gale_buf_append(buf, "\r\n", 2);
    return buf->oom ? GALE_ERR_INTERNAL : GALE_OK;
}

static gale_err_t build(route_t *r, int fmt)
{
    const router_msg_t *m = r->m;
    gale_buf_t buf;
    gale_err_t e;
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (fmt == CONN_FMT_MQTT)
        e = build_mqtt(&buf, m);
    else if (fmt == CONN_FMT_NATS)
        e = build_nats(&buf, m);
    else
        e = gale_encode_msg_reply(&buf, (gale_enc_t)fmt, m->topic, m->topic_len, m->pos, m->reply,
                                  m->reply_len, m->enc, m->data, m->data_len);
    if (e != GALE_OK) {
        gale_buf_free(&buf);
        return e;
    }
    r->frames[fmt] = frame_finish(&buf, fmt == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    if (r->frames[fmt] && fmt == CONN_FMT_MQTT)
        r->frames[fmt]->qos = m->qos0 ? 0 : 1;
    return r->frames[fmt] ? GALE_OK : GALE_ERR_INTERNAL;
}

static void visit(topics_owner_t *owner, void *arg)
{
    route_t *r = arg;
    conn_t *c = (conn_t *)((char *)owner - offsetof(conn_t, owner));
    if (c->closing || r->failed[c->enc] || (r->skip && c->waits && conn_waits_on(c, r->skip)) ||
        (r->m->noecho && c->id == r->m->noecho))
        return;
    if (!r->frames[c->enc] && (r->failed[c->enc] = build(r, c->enc)) != GALE_OK)
        return;
    if (c->ops->deliver(r->b, c, r->frames[c->enc])) {
        r->delivered++;
        r->b->m.proto_delivered[conn_proto(c)]++;
    }
}

/*
 * m goes to other loops too (loops.h) that hold it in formats fmts: a format this loop did
 * not build is built here once, to learn whether the data converts to it, so that the
 * publisher hears of it as it would with every subscriber on this loop. Only MessagePack
 * data can fail to convert (docs/PROTOCOL-NOTES.md), so only it is tried.
 */
static void check_elsewhere(route_t *r, uint32_t fmts)
{
    for (int f = 0; f < CONN_FMT_COUNT && r->m->enc == GALE_ENC_MSGPACK; f++)
        if ((fmts & (1u << f)) && f != GALE_ENC_MSGPACK && !r->frames[f] && r->failed[f] == GALE_OK)
            r->failed[f] = build(r, f);
}

static gale_err_t route(broker_t *b, const router_msg_t *m, frame_t *built[GALE_ENC_COUNT],
                        const void *skip, bool publish)
{
    route_t r = {.b = b, .m = m, .skip = skip};
    gale_err_t err = GALE_OK;
    topics_match(b->topics, m->topic, m->topic_len, visit, &r);
    if (publish && b->loops && !b->bus.ops) { /* in a cluster Redis reaches every loop */
        uint32_t fmts;
        if (!loops_publish(b, m, &fmts))
            err = GALE_ERR_INTERNAL;
        check_elsewhere(&r, fmts);
    }
    for (int f = 0; f < CONN_FMT_COUNT; f++) {
        if (built && f < GALE_ENC_COUNT)
            built[f] = r.frames[f];
        else
            frame_unref(r.frames[f]);
        if (r.failed[f] != GALE_OK && r.failed[f] != GALE_ERR_BAD_TOPIC)
            err = r.failed[f];
    }
    b->m.messages_delivered += r.delivered;
    return err;
}

gale_err_t router_publish(broker_t *b, const router_msg_t *m)
{
    b->m.messages_published++;
    return route(b, m, NULL, NULL, true);
}

gale_err_t router_publish_at(broker_t *b, const router_msg_t *m, frame_t *built[GALE_ENC_COUNT])
{
    b->m.messages_published++;
    return route(b, m, built, NULL, false); /* history: one loop (loops.h) */
}

gale_err_t router_deliver(broker_t *b, const router_msg_t *m, const void *skip)
{
    return route(b, m, NULL, skip, false);
}

const char *router_convert_why(gale_enc_t publisher_enc)
{
    return publisher_enc == GALE_ENC_JSON
               ? "data could not be converted for MessagePack subscribers; they did not "
                 "receive it"
               : "data could not be converted for JSON subscribers; they did not receive it";
}
