#include "router.h"

#include "conn.h"
#include "frame.h"

#include <stddef.h>

typedef struct route {
    broker_t *b;
    const char *topic;
    size_t topic_len;
    const gale_pos_t *pos; /* NULL: a topic without history */
    const void *skip;      /* connections waiting for it get nothing (conn.h waits) */
    gale_enc_t data_enc;
    const uint8_t *data;
    size_t data_len;
    frame_t *frames[GALE_ENC_COUNT];   /* built on first need */
    gale_err_t failed[GALE_ENC_COUNT]; /* why frames[enc] could not be built */
    uint64_t delivered;
} route_t;

static gale_err_t build(route_t *r, gale_enc_t enc)
{
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    gale_err_t e = gale_encode_msg_pos(&buf, enc, r->topic, r->topic_len, r->pos, r->data_enc,
                                       r->data, r->data_len);
    if (e != GALE_OK) {
        gale_buf_free(&buf);
        return e;
    }
    r->frames[enc] = frame_finish(&buf, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    return r->frames[enc] ? GALE_OK : GALE_ERR_INTERNAL;
}

static void visit(topics_owner_t *owner, void *arg)
{
    route_t *r = arg;
    conn_t *c = (conn_t *)((char *)owner - offsetof(conn_t, owner));
    if (c->closing || r->failed[c->enc] || (r->skip && c->waits && conn_waits_on(c, r->skip)))
        return;
    if (!r->frames[c->enc] && (r->failed[c->enc] = build(r, (gale_enc_t)c->enc)) != GALE_OK)
        return;
    if (c->ops->deliver(r->b, c, r->frames[c->enc]))
        r->delivered++;
}

static gale_err_t route(broker_t *b, const char *topic, size_t topic_len, const gale_pos_t *pos,
                        gale_enc_t data_enc, const uint8_t *data, size_t data_len,
                        frame_t *built[GALE_ENC_COUNT], const void *skip)
{
    route_t r = {.b = b,
                 .topic = topic,
                 .topic_len = topic_len,
                 .pos = pos,
                 .skip = skip,
                 .data_enc = data_enc,
                 .data = data,
                 .data_len = data_len};
    gale_err_t err = GALE_OK;
    topics_match(b->topics, topic, topic_len, visit, &r);
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        if (built)
            built[e] = r.frames[e];
        else
            frame_unref(r.frames[e]);
        if (r.failed[e] != GALE_OK)
            err = r.failed[e];
    }
    b->m.messages_delivered += r.delivered;
    return err;
}

gale_err_t router_deliver(broker_t *b, const char *topic, size_t topic_len, gale_enc_t data_enc,
                          const uint8_t *data, size_t data_len)
{
    return route(b, topic, topic_len, NULL, data_enc, data, data_len, NULL, NULL);
}

gale_err_t router_publish(broker_t *b, const char *topic, size_t topic_len, gale_enc_t data_enc,
                          const uint8_t *data, size_t data_len)
{
    b->m.messages_published++;
    return route(b, topic, topic_len, NULL, data_enc, data, data_len, NULL, NULL);
}

gale_err_t router_publish_at(broker_t *b, const char *topic, size_t topic_len,
                             const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                             size_t data_len, frame_t *built[GALE_ENC_COUNT])
{
    b->m.messages_published++;
    return route(b, topic, topic_len, pos, data_enc, data, data_len, built, NULL);
}

gale_err_t router_deliver_at(broker_t *b, const char *topic, size_t topic_len,
                             const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                             size_t data_len, const void *skip)
{
    return route(b, topic, topic_len, pos, data_enc, data, data_len, NULL, skip);
}

const char *router_convert_why(gale_enc_t publisher_enc)
{
    return publisher_enc == GALE_ENC_JSON
               ? "data could not be converted for MessagePack subscribers; they did not "
                 "receive it"
               : "data could not be converted for JSON subscribers; they did not receive it";
}
