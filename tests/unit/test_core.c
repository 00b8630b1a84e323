/*
 * The publish path without lws or sockets: request -> authorize/rate limit ->
 * route -> one frame per encoding -> each subscriber's queue -> answers in
 * request order, with the cluster's completion, through a fake connection
 * (conn.h) and a fake cluster bus (bus.h).
 */
#include "broker.h"
#include "core.h"
#include "frame.h"
#include "pending.h"
#include "router.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* --- a fake connection: records what the core hands it --------------------------------- */

#define MAX_SEEN 64

typedef struct {
    conn_t conn;
    frame_t *frames[MAX_SEEN];
    size_t nframes;
    conn_reply_t replies[MAX_SEEN];
    size_t nreplies;
    uint16_t closed;
    bool refuse; /* deliver answers false: a connection that takes nothing more */
} fake_conn_t;

static bool fake_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    if (fc->refuse || fc->nframes == MAX_SEEN)
        return false;
    fc->frames[fc->nframes++] = frame_ref(f);
    return true;
}

static void fake_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    assert_true(fc->nreplies < MAX_SEEN);
    fc->replies[fc->nreplies++] = *r;
}

static void fake_close(broker_t *b, conn_t *c, uint16_t code)
{
    (void)b;
    ((fake_conn_t *)c)->closed = code;
}

static const conn_ops_t fake_ops = {
    .deliver = fake_deliver, .reply = fake_reply, .close = fake_close};

static void fake_free(broker_t *b, fake_conn_t *fc)
{
    core_close(b, &fc->conn);
    for (size_t i = 0; i < fc->nframes; i++)
        frame_unref(fc->frames[i]);
    free(fc);
}

/* --- a fake cluster bus: holds what the real one would wait for Redis for -------------- */

typedef enum { BUS_CONFIRM, BUS_HOLD, BUS_DOWN } bus_mode_t;

typedef struct {
    bus_mode_t mode;
    broker_t *b;
    pending_t *held[MAX_SEEN];
    size_t nheld;
    char released[MAX_SEEN][64];
    size_t nreleased;
    size_t pubs;
} fake_bus_t;

static gale_err_t bus_sub(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                          bool *deferred)
{
    fake_bus_t *fb = bus;
    (void)p;
    (void)len;
    *deferred = false;
    if (fb->mode == BUS_DOWN) {
        *why = "bus down";
        return GALE_ERR_UNAVAILABLE;
    }
    if (fb->mode == BUS_HOLD) {
        fb->held[fb->nheld++] = done;
        *deferred = true;
    }
    return GALE_OK;
}

static void bus_release(const char *p, size_t len, void *bus)
{
    fake_bus_t *fb = bus;
    snprintf(fb->released[fb->nreleased++], 64, "%.*s", (int)len, p);
}

static gale_err_t bus_pub(void *bus, pending_t *done, const bus_pub_t *m, const char **why)
{
    fake_bus_t *fb = bus;
    const char *topic = m->topic;
    size_t topic_len = m->topic_len;
    gale_enc_t enc = m->enc;
    const uint8_t *data = m->data;
    size_t data_len = m->data_len;
    if (fb->mode == BUS_DOWN) {
        *why = "bus down";
        return GALE_ERR_UNAVAILABLE; /* nothing delivered */
    }
    /* Like cluster_pub: local subscribers now, the answer with the bus's. */
    router_msg_t msg = {.topic = topic,
                        .topic_len = topic_len,
                        .reply = m->reply,
                        .reply_len = m->reply_len,
                        .noecho = m->noecho,
                        .enc = enc,
                        .data = data,
                        .data_len = data_len};
    gale_err_t local = router_publish(fb->b, &msg);
    done->local_err = (uint8_t)local;
    done->local_why = local == GALE_OK ? "" : router_convert_why(enc);
    fb->pubs++;
    fb->held[fb->nheld++] = done;
    return GALE_OK;
}

static const bus_ops_t fake_bus_ops = {.sub = bus_sub, .release = bus_release, .pub = bus_pub};

/* Finishes the oldest held answer as Redis would. */
static void bus_answer(fake_bus_t *fb, gale_err_t e)
{
    assert_true(fb->nheld > 0);
    pending_t *p = fb->held[0];
    memmove(fb->held, fb->held + 1, --fb->nheld * sizeof(fb->held[0]));
    if (e == GALE_OK)
        pending_finish(fb->b, p, (gale_err_t)p->local_err, p->local_why);
    else
        pending_finish(fb->b, p, e, "bus lost it");
}

/* --- fixture --------------------------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    broker_t b;
    fake_bus_t bus;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    config_defaults(&f->b.cfg);
    f->b.loop = &f->loop;
    f->b.topics = topics_new();
    f->bus.b = &f->b;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    topics_free(f->b.topics);
    uv_loop_close(&f->loop);
    free(f);
    return 0;
}

static void use_bus(fixture_t *f, bus_mode_t mode)
{
    f->bus.mode = mode;
    f->b.bus = (bus_t){.ops = &fake_bus_ops, .ctx = &f->bus};
}

static fake_conn_t *open_conn(fixture_t *f, gale_enc_t enc)
{
    fake_conn_t *fc = calloc(1, sizeof(*fc));
    core_open(&f->b, &fc->conn, &fake_ops, enc, NULL);
    return fc;
}

static void send_json(fixture_t *f, fake_conn_t *fc, const char *json)
{
    assert_int_equal(core_message(&f->b, &fc->conn, (const uint8_t *)json, strlen(json), false), 0);
}

static const char *payload(const frame_t *fr)
{
    /* JSON frames: skip the WebSocket header (2 bytes below 126 payload bytes). */
    return (const char *)frame_bytes(fr) + 2;
}

/* --- tests ----------------------------------------------------------------------------- */

static void test_publish_reaches_each_subscriber_once_with_one_frame(void **state)
{
    fixture_t *f = *state;
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_JSON),
                *m = open_conn(f, GALE_ENC_MSGPACK), *pub = open_conn(f, GALE_ENC_JSON);
    send_json(f, a, "{\"op\":\"sub\",\"topic\":\"chat.>\",\"id\":1}");
    send_json(f, a, "{\"op\":\"sub\",\"topic\":\"chat.*\",\"id\":2}"); /* two matching patterns */
    send_json(f, b, "{\"op\":\"sub\",\"topic\":\"chat.room\"}");       /* no id: silent ack */
    const uint8_t sub_mp[] = {0x82, 0xa2, 'o', 'p',  0xa3, 's', 'u', 'b', 0xa5, 't', 'o',
                              'p',  'i',  'c', 0xa6, 'c',  'h', 'a', 't', '.',  '>'};
    assert_int_equal(core_message(&f->b, &m->conn, sub_mp, sizeof(sub_mp), true), 0);
    assert_int_equal(a->nreplies, 2);
    assert_int_equal(b->nreplies, 0);

    send_json(f, pub, "{\"op\":\"pub\",\"topic\":\"chat.room\",\"data\":{\"t\":1},\"id\":7}");
    assert_int_equal(a->nframes, 1); /* once, though two of its patterns match */
    assert_int_equal(b->nframes, 1);
    assert_int_equal(m->nframes, 1);
    assert_ptr_equal(a->frames[0], b->frames[0]); /* one frame per encoding, shared */
    assert_ptr_not_equal(a->frames[0], m->frames[0]);
    assert_non_null(strstr(payload(a->frames[0]), "\"topic\":\"chat.room\""));
    assert_int_equal(pub->nreplies, 1);
    assert_int_equal(pub->replies[0].err, GALE_OK);
    assert_int_equal(pub->replies[0].id, 7);
    assert_int_equal(f->b.m.messages_published, 1);
    assert_int_equal(f->b.m.messages_delivered, 3);

    /* A connection that takes nothing more is skipped, not counted. */
    b->refuse = true;
    send_json(f, pub, "{\"op\":\"pub\",\"topic\":\"chat.room\",\"data\":2}");
    assert_int_equal(f->b.m.messages_delivered, 5);
    fake_free(&f->b, a);
    fake_free(&f->b, b);
    fake_free(&f->b, m);
    fake_free(&f->b, pub);
}

static void test_errors_answer_err_and_keep_order(void **state)
{
    fixture_t *f = *state;
    fake_conn_t *c = open_conn(f, GALE_ENC_JSON);
    send_json(f, c, "{\"op\":\"pub\",\"topic\":\"a.*\",\"data\":1,\"id\":1}");
    send_json(f, c, "{\"op\":\"nope\",\"id\":2}");
    send_json(f, c, "{\"op\":\"ping\",\"id\":3}");
    assert_int_equal(c->nreplies, 3);
    assert_int_equal(c->replies[0].err, GALE_ERR_BAD_TOPIC);
    assert_int_equal(c->replies[1].err, GALE_ERR_UNKNOWN_OP);
    assert_int_equal(c->replies[2].op, GALE_OP_PING);
    assert_int_equal(c->replies[2].err, GALE_OK);
    assert_int_equal(f->b.m.protocol_errors[GALE_ERR_BAD_TOPIC], 1);
    /* Text that is not UTF-8 closes with 1007 instead of an answer. */
    const uint8_t bad[] = {'{', 0xff, '}'};
    assert_int_equal(core_message(&f->b, &c->conn, bad, sizeof(bad), false), 1007);
    assert_int_equal(c->nreplies, 3);
    fake_free(&f->b, c);
}

static void test_rate_limit(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.pub_rate = 1;
    f->b.cfg.pub_burst = 2;
    fake_conn_t *c = open_conn(f, GALE_ENC_JSON);
    for (int i = 0; i < 3; i++)
        send_json(f, c, "{\"op\":\"pub\",\"topic\":\"r.t\",\"data\":0,\"id\":1}");
    assert_int_equal(c->nreplies, 3);
    assert_int_equal(c->replies[1].err, GALE_OK);
    assert_int_equal(c->replies[2].err, GALE_ERR_LIMIT);
    assert_int_equal(f->b.m.messages_published, 2);
    /* A transport may exempt a connection (the publish API's key holder). */
    fake_conn_t *api = open_conn(f, GALE_ENC_JSON);
    api->conn.unmetered = 1;
    for (int i = 0; i < 3; i++)
        send_json(f, api, "{\"op\":\"pub\",\"topic\":\"r.t\",\"data\":0,\"id\":1}");
    assert_int_equal(api->replies[2].err, GALE_OK);
    fake_free(&f->b, c);
    fake_free(&f->b, api);
}

static void test_cluster_answers_keep_request_order(void **state)
{
    fixture_t *f = *state;
    use_bus(f, BUS_HOLD);
    fake_conn_t *sub = open_conn(f, GALE_ENC_JSON), *c = open_conn(f, GALE_ENC_JSON);
    send_json(f, sub, "{\"op\":\"sub\",\"topic\":\"k.>\",\"id\":1}");
    assert_int_equal(sub->nreplies, 0); /* waits for the bus */
    bus_answer(&f->bus, GALE_OK);
    assert_int_equal(sub->nreplies, 1);

    send_json(f, c, "{\"op\":\"pub\",\"topic\":\"k.a\",\"data\":1,\"id\":10}");
    send_json(f, c, "{\"op\":\"ping\",\"id\":11}");                             /* held behind it */
    send_json(f, c, "{\"op\":\"pub\",\"topic\":\"k.*\",\"data\":1,\"id\":12}"); /* err, held */
    assert_int_equal(sub->nframes, 1); /* delivered locally at once */
    assert_int_equal(c->nreplies, 0);
    bus_answer(&f->bus, GALE_OK);
    assert_int_equal(c->nreplies, 3);
    assert_int_equal(c->replies[0].id, 10);
    assert_int_equal(c->replies[1].id, 11);
    assert_int_equal(c->replies[1].op, GALE_OP_PING);
    assert_int_equal(c->replies[2].id, 12);
    assert_int_equal(c->replies[2].err, GALE_ERR_BAD_TOPIC);

    /* The bus losing a publish answers unavailable. */
    send_json(f, c, "{\"op\":\"pub\",\"topic\":\"k.b\",\"data\":1,\"id\":13}");
    bus_answer(&f->bus, GALE_ERR_UNAVAILABLE);
    assert_int_equal(c->replies[3].err, GALE_ERR_UNAVAILABLE);
    fake_free(&f->b, sub);
    fake_free(&f->b, c);
    assert_int_equal(f->bus.nreleased, 1);
    assert_string_equal(f->bus.released[0], "k.>");
}

static void test_cluster_refusal_undoes_the_subscription(void **state)
{
    fixture_t *f = *state;
    use_bus(f, BUS_DOWN);
    fake_conn_t *c = open_conn(f, GALE_ENC_JSON), *pub = open_conn(f, GALE_ENC_JSON);
    send_json(f, c, "{\"op\":\"sub\",\"topic\":\"d.t\",\"id\":1}");
    assert_int_equal(c->replies[0].err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(c->conn.owner.nsubs, 0);
    send_json(f, pub, "{\"op\":\"pub\",\"topic\":\"d.t\",\"data\":1,\"id\":2}");
    assert_int_equal(pub->replies[0].err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(c->nframes, 0);

    /* A shard going down while a sub waits: err, and the subscription is taken back. */
    f->bus.mode = BUS_HOLD;
    send_json(f, c, "{\"op\":\"sub\",\"topic\":\"d.t\",\"id\":3}");
    assert_int_equal(c->conn.owner.nsubs, 1);
    bus_answer(&f->bus, GALE_ERR_UNAVAILABLE);
    assert_int_equal(c->replies[1].err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(c->conn.owner.nsubs, 0);
    assert_int_equal(f->bus.nreleased, 2); /* each undo left the pattern without holder */
    fake_free(&f->b, c);
    fake_free(&f->b, pub);
}

static void test_close_while_the_bus_holds_answers(void **state)
{
    fixture_t *f = *state;
    use_bus(f, BUS_HOLD);
    fake_conn_t *c = open_conn(f, GALE_ENC_JSON);
    send_json(f, c, "{\"op\":\"pub\",\"topic\":\"x.t\",\"data\":1,\"id\":1}");
    send_json(f, c, "{\"op\":\"ping\",\"id\":2}");
    fake_free(&f->b, c);          /* the held answer is detached, the finished one freed */
    bus_answer(&f->bus, GALE_OK); /* frees the detached one (LeakSanitizer checks) */
    assert_int_equal(f->bus.nheld, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_reaches_each_subscriber_once_with_one_frame,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors_answer_err_and_keep_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_answers_keep_request_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_refusal_undoes_the_subscription, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_close_while_the_bus_holds_answers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
