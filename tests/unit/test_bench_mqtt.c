/*
 * Unit tests of gale bench's MQTT 3.1.1 code (clients/bench/bench_mqtt.c): the stream parser of
 * what a server sends, fed whole, split at every position and byte by byte (a packet may span
 * WebSocket frames, a frame may hold several); the client packets it writes, read back with
 * the broker's own strict decoder (protocol/gale_mqtt.h); the publish template; the mapping
 * of gale topics to MQTT names and filters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bench_mqtt.h"
#include "bench_msg.h"
#include "gale_mqtt.h"

#define MAX_EVENTS 32

typedef struct {
    gmsg_t ev[MAX_EVENTS];
    int n;
    int stop_after; /* > 0: ask to stop after this many events */
} events_t;

static int collect(void *user, const gmsg_t *m)
{
    events_t *e = user;
    assert_true(e->n < MAX_EVENTS);
    e->ev[e->n++] = *m;
    return e->stop_after > 0 && e->n >= e->stop_after;
}

static uint8_t stream[4096];
static size_t stream_len;

static void put(const void *p, size_t n)
{
    assert_true(stream_len + n <= sizeof(stream));
    memcpy(stream + stream_len, p, n);
    stream_len += n;
}

/* A QoS 0 PUBLISH (by the library's encoder, as gale-broker sends it) of bench data p=2,
 * s=seq, t=time, padded with @pad bytes (over 127 in all: a two-byte remaining length). */
static void put_publish(uint64_t seq, uint64_t t, size_t pad)
{
    char data[1024];
    int d = snprintf(data, sizeof(data), "{\"p\":2,\"s\":%llu,\"t\":%llu,\"x\":\"%*s\"}",
                     (unsigned long long)(BENCH_SEQ_BASE + seq),
                     (unsigned long long)(BENCH_TIME_BASE + t), (int)pad, "");
    assert_true(d > 0 && (size_t)d < sizeof(data));
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_mqtt_encode_publish(&b, "bench/fanout", 12, 0, false, false, 0,
                                              (const uint8_t *)data, (size_t)d),
                     GALE_OK);
    put(gale_buf_payload(&b), gale_buf_payload_len(&b));
    gale_buf_free(&b);
}

static void build_stream(void)
{
    static const uint8_t connack[] = {0x20, 2, 0, 0};
    static const uint8_t suback[] = {0x90, 3, 0, 1, 0};
    static const uint8_t pingresp[] = {0xd0, 0};
    static const uint8_t unsuback[] = {0xb0, 2, 0, 9};
    static const uint8_t refused[] = {0x90, 4, 0, 2, 0, 0x80};
    stream_len = 0;
    put(connack, sizeof(connack));
    put(suback, sizeof(suback));
    put_publish(7, 1234, 4);
    put(pingresp, sizeof(pingresp));
    put_publish(8, 99, 300);
    put(unsuback, sizeof(unsuback));
    put(pingresp, sizeof(pingresp));
    put(refused, sizeof(refused));
    put_publish(9, 5, 0);
}

static void check_events(const events_t *e)
{
    static const int ops[] = {GM_HELLO, GM_ACK, GM_MSG, GM_ACK, GM_MSG,
                              GM_OTHER, GM_ACK, GM_ERR, GM_MSG};
    assert_int_equal(e->n, sizeof(ops) / sizeof(ops[0]));
    for (int i = 0; i < e->n; i++)
        assert_int_equal(e->ev[i].op, ops[i]);
    assert_true(e->ev[1].has_id); /* SUBACK: its packet id */
    assert_int_equal(e->ev[1].id, 1);
    assert_true(e->ev[2].has_bench);
    assert_int_equal(e->ev[2].p, 2);
    assert_int_equal(e->ev[2].s, 7);
    assert_int_equal(e->ev[2].t, 1234);
    /* PINGRESPs acknowledge consecutive ids from the first one given to mqtt_rx_reset(). */
    assert_true(e->ev[3].has_id);
    assert_int_equal(e->ev[3].id, 41);
    assert_int_equal(e->ev[4].s, 8);
    assert_int_equal(e->ev[4].t, 99);
    assert_int_equal(e->ev[6].id, 42);
    assert_string_equal(e->ev[7].code, "SUBACK 0x80");
    assert_int_equal(e->ev[7].id, 2);
    assert_true(e->ev[8].has_bench);
    assert_int_equal(e->ev[8].s, 9);
}

static void feed_ok(mqtt_rx_t *r, const uint8_t *p, size_t n, events_t *e)
{
    const char *why = NULL;
    assert_int_equal(mqtt_rx_feed(r, true, p, n, collect, e, &why), 0);
}

static void test_whole_and_every_split(void **state)
{
    (void)state;
    build_stream();
    for (size_t cut = 0; cut <= stream_len; cut++) {
        mqtt_rx_t r = {0};
        mqtt_rx_reset(&r, 41);
        events_t e = {0};
        feed_ok(&r, stream, cut, &e);
        feed_ok(&r, stream + cut, stream_len - cut, &e);
        check_events(&e);
        assert_int_equal(r.len, 0);
        mqtt_rx_free(&r);
    }
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    build_stream();
    mqtt_rx_t r = {0};
    mqtt_rx_reset(&r, 41);
    events_t e = {0};
    for (size_t i = 0; i < stream_len; i++)
        feed_ok(&r, stream + i, 1, &e);
    check_events(&e);
    /* A reset starts a new connection: CONNACK is the hello again, acks count anew. */
    mqtt_rx_reset(&r, 1);
    e.n = 0;
    static const uint8_t again[] = {0x20, 2, 0, 0, 0xd0, 0};
    feed_ok(&r, again, sizeof(again), &e);
    assert_int_equal(e.n, 2);
    assert_int_equal(e.ev[0].op, GM_HELLO);
    assert_int_equal(e.ev[1].id, 1);
    mqtt_rx_free(&r);
}

static void test_stop(void **state)
{
    (void)state;
    build_stream();
    mqtt_rx_t r = {0};
    mqtt_rx_reset(&r, 1);
    events_t e = {.stop_after = 3};
    const char *why = NULL;
    assert_int_equal(mqtt_rx_feed(&r, true, stream, stream_len, collect, &e, &why), 1);
    assert_int_equal(e.n, 3);
    mqtt_rx_free(&r);
}

static void test_connack_refused(void **state)
{
    (void)state;
    static const uint8_t refused[] = {0x20, 2, 0, 5};
    mqtt_rx_t r = {0};
    mqtt_rx_reset(&r, 1);
    events_t e = {0};
    feed_ok(&r, refused, sizeof(refused), &e);
    assert_int_equal(e.n, 1);
    assert_int_equal(e.ev[0].op, GM_ERR);
    assert_string_equal(e.ev[0].code, "CONNACK 5");
    assert_non_null(strstr(e.ev[0].text, "not authorized"));
    mqtt_rx_free(&r);
}

/* @p[0..n) after a CONNACK 0 (unless @first) must be a protocol error. */
static void expect_error(const void *p, size_t n, bool first, bool binary)
{
    static const uint8_t connack[] = {0x20, 2, 0, 0};
    mqtt_rx_t r = {0};
    mqtt_rx_reset(&r, 1);
    events_t e = {0};
    const char *why = NULL;
    if (!first)
        feed_ok(&r, connack, sizeof(connack), &e);
    assert_int_equal(mqtt_rx_feed(&r, binary, p, n, collect, &e, &why), -1);
    assert_non_null(why);
    mqtt_rx_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    const char *hello = "{\"op\":\"hello\"}";
    expect_error(hello, strlen(hello), true, false);  /* gale v1: a text frame */
    expect_error(hello, strlen(hello), true, true);   /* not a CONNACK */
    expect_error("INFO {}\r\n", 9, true, true);       /* nats-server */
    expect_error("\x20\x02\x00\x00", 4, false, true); /* a second CONNACK */
    expect_error("\x20\x03\x00\x00\x00", 5, true, true);
    expect_error("\x90\xff\xff\xff\xff\x01", 6, false, true); /* a fifth length byte */
    expect_error("\x30\xff\xff\x7f", 4, false, true);         /* over 1 MiB, told at once */
    expect_error("\x82\x02\x00\x01", 4, false, true);         /* SUBSCRIBE: a client's */
    expect_error("\xd0\x01\x00", 3, false, true);             /* PINGRESP with a body */
    expect_error("\x91\x03\x00\x01\x00", 5, false, true);     /* SUBACK, reserved flags */
    expect_error("\x90\x03\x00\x01\x03", 5, false, true);     /* SUBACK return code 3 */
    /* A QoS 1 PUBLISH: the subscriptions asked for QoS 0. */
    expect_error("\x32\x07\x00\x01t\x00\x05hi", 9, false, true);
    /* A QoS 0 PUBLISH with DUP set (MQTT-3.3.1-2), caught by gale_mqtt_decode. */
    expect_error("\x38\x05\x00\x01thi", 7, false, true);
}

/* The payload of a frame built with mask key 0 (as every bench frame is). */
static const uint8_t *frame_payload(const uint8_t *f, size_t len, size_t *n)
{
    assert_int_equal(f[0], 0x80 | WS_BINARY);
    assert_int_equal(f[1] & 0x80, 0x80);
    size_t h = (f[1] & 0x7f) == 126 ? 4 : (f[1] & 0x7f) == 127 ? 10 : 2;
    assert_memory_equal(f + h, "\0\0\0\0", 4);
    *n = len - h - 4;
    return f + h + 4;
}

/* Decodes the client packet at p[0..n) with the broker's decoder; returns its size. */
static size_t decode(const uint8_t *p, size_t n, gale_mqtt_packet_t *pk)
{
    size_t total = 0;
    const char *why = NULL;
    assert_int_equal(gale_mqtt_frame(p, n, &total), 1);
    assert_int_equal(gale_mqtt_decode(p, total, pk, &why), GALE_MQTT_OK);
    return total;
}

static void test_connect_frames(void **state)
{
    (void)state;
    uint8_t f[600];
    size_t len = mqtt_connect_frame(f, sizeof(f), "gb-123-45", NULL, 60), n;
    assert_true(len > 0);
    const uint8_t *p = frame_payload(f, len, &n);
    gale_mqtt_packet_t pk;
    assert_int_equal(decode(p, n, &pk), n);
    assert_int_equal(pk.type, GALE_MQTT_CONNECT);
    assert_int_equal(pk.level, 4);
    assert_true(pk.clean_session);
    assert_int_equal(pk.keepalive, 60);
    assert_int_equal(pk.client_id_len, 9);
    assert_memory_equal(pk.client_id, "gb-123-45", 9);
    assert_false(pk.has_username || pk.has_password || pk.will);
    /* A token as the password, with a user name (MQTT-3.1.2-22). */
    len = mqtt_connect_frame(f, sizeof(f), "c", "tok.en", 30);
    p = frame_payload(f, len, &n);
    assert_int_equal(decode(p, n, &pk), n);
    assert_true(pk.has_username && pk.has_password);
    assert_int_equal(pk.password_len, 6);
    assert_memory_equal(pk.password, "tok.en", 6);
    assert_int_equal(mqtt_connect_frame(f, 20, "gb-123-45", NULL, 60), 0); /* does not fit */
    /* PINGREQ and DISCONNECT. */
    len = mqtt_pingreq_frame(f);
    p = frame_payload(f, len, &n);
    assert_int_equal(decode(p, n, &pk), 2);
    assert_int_equal(pk.type, GALE_MQTT_PINGREQ);
    len = mqtt_disconnect_frame(f);
    p = frame_payload(f, len, &n);
    assert_int_equal(decode(p, n, &pk), 2);
    assert_int_equal(pk.type, GALE_MQTT_DISCONNECT);
}

static void test_subscribe_frames(void **state)
{
    (void)state;
    uint8_t f[600];
    size_t len = mqtt_sub_frame(f, sizeof(f), "bench.topic.000012", 1), n, fl;
    const uint8_t *p = frame_payload(f, len, &n);
    gale_mqtt_packet_t pk;
    assert_int_equal(decode(p, n, &pk), n);
    assert_int_equal(pk.type, GALE_MQTT_SUBSCRIBE);
    assert_int_equal(pk.packet_id, 1);
    size_t pos = 0;
    const char *filter;
    uint8_t qos = 9;
    assert_true(gale_mqtt_next_filter(&pk, &pos, &filter, &fl, &qos));
    assert_int_equal(fl, 18);
    assert_memory_equal(filter, "bench/topic/000012", 18);
    assert_int_equal(qos, 0);
    assert_false(gale_mqtt_next_filter(&pk, &pos, &filter, &fl, &qos));
    len = mqtt_sub_frame(f, sizeof(f), "a.*.>", 7);
    p = frame_payload(f, len, &n);
    decode(p, n, &pk);
    pos = 0;
    assert_true(gale_mqtt_next_filter(&pk, &pos, &filter, &fl, &qos));
    assert_int_equal(fl, 5);
    assert_memory_equal(filter, "a/+/#", 5);
    assert_int_equal(mqtt_sub_frame(f, sizeof(f), "a..b", 1), 0); /* no MQTT filter */
    assert_int_equal(mqtt_sub_frame(f, 20, "bench.fanout", 1), 0);

    /* 2,500 filters: SUBSCRIBEs of 1,000, 1,000 and 500, packet ids 1 to 3, in one frame. */
    uint32_t count = 2500;
    size_t cap = (size_t)count * 40 + 64;
    uint8_t *big = malloc(cap);
    assert_non_null(big);
    assert_int_equal(mqtt_subs_packets(count), 3);
    assert_int_equal(mqtt_subs_packets(1), 1);
    assert_int_equal(mqtt_subs_packets(1000), 1);
    len = mqtt_subs_frame(big, cap, "bench.conn.", 998, count);
    assert_true(len > 0);
    p = frame_payload(big, len, &n);
    uint64_t next = 998;
    for (uint16_t id = 1; id <= 3; id++) {
        size_t k = decode(p, n, &pk);
        assert_int_equal(pk.type, GALE_MQTT_SUBSCRIBE);
        assert_int_equal(pk.packet_id, id);
        pos = 0;
        uint32_t filters = 0;
        while (gale_mqtt_next_filter(&pk, &pos, &filter, &fl, &qos)) {
            char want[64];
            int w = snprintf(want, sizeof(want), "bench/conn/%llu", (unsigned long long)next++);
            assert_int_equal(fl, (size_t)w);
            assert_memory_equal(filter, want, fl);
            assert_int_equal(qos, 0);
            filters++;
        }
        assert_int_equal(filters, id < 3 ? 1000 : 500);
        p += k;
        n -= k;
    }
    assert_int_equal(n, 0);
    assert_int_equal(next, 998 + count);
    assert_int_equal(mqtt_subs_frame(big, 2048, "bench.conn.", 0, 200), 0); /* too many */
    assert_int_equal(mqtt_subs_frame(big, cap, "bench.conn.", 0, 0), 0);
    free(big);
}

static void test_topics(void **state)
{
    (void)state;
    char out[MQTT_TOPIC_MAX];
    assert_int_equal(mqtt_topic_from_gale("bench.fanout", out, sizeof(out)), 12);
    assert_string_equal(out, "bench/fanout");
    assert_int_equal(mqtt_topic_from_gale("a", out, sizeof(out)), 1);
    assert_int_equal(mqtt_topic_from_gale("a.*", out, sizeof(out)), 0); /* a name: no wildcard */
    assert_int_equal(mqtt_topic_from_gale("a.>", out, sizeof(out)), 0);
    assert_int_equal(mqtt_filter_from_gale("a.*.c", out, sizeof(out)), 5);
    assert_string_equal(out, "a/+/c");
    assert_int_equal(mqtt_filter_from_gale(">", out, sizeof(out)), 1);
    assert_string_equal(out, "#");
    assert_int_equal(mqtt_filter_from_gale("a.b.>", out, sizeof(out)), 5);
    assert_string_equal(out, "a/b/#");
    static const char *const bad[] = {"",    "a..b",  ".a",    "a.",   "a/b",
                                      "a.+", "a.#.c", "a.>.c", "a.b*", "a.>b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mqtt_filter_from_gale(bad[i], out, sizeof(out)), 0);
        assert_int_equal(mqtt_topic_from_gale(bad[i], out, sizeof(out)), 0);
    }
    assert_int_equal(mqtt_topic_from_gale("bench.fanout", out, 12), 0); /* no room for NUL */
}

/* The publish template: PUBLISH QoS 0 + PINGREQ; patched fields read back by the parser. */
static void check_publish(size_t size, size_t len_bytes)
{
    pubtpl_t t;
    assert_int_equal(mqtt_pubtpl_build(&t, "bench.topic.000000", true, 5, size), 0);
    assert_int_equal(t.off_id, 0); /* no request id: the PINGRESP acknowledges */
    pubtpl_set(&t, 77, 4242, 13);
    size_t n;
    const uint8_t *p = frame_payload(t.frame, t.len, &n);
    gale_mqtt_packet_t pk;
    size_t k = decode(p, n, &pk), last = 1;
    while (p[last] & 0x80)
        last++;
    assert_int_equal(last, len_bytes); /* remaining length bytes: the fixed width holds */
    assert_int_equal(pk.type, GALE_MQTT_PUBLISH);
    assert_int_equal(pk.qos, 0);
    assert_false(pk.retain || pk.dup);
    assert_int_equal(pk.topic_len, 18);
    assert_memory_equal(pk.topic, "bench/topic/000013", 18);
    assert_true(pk.payload_len + 20 >= size && pk.payload_len <= size);
    assert_int_equal(n, k + 2);
    assert_int_equal(p[k], 0xc0); /* PINGREQ */
    assert_int_equal(p[k + 1], 0);
    /* The same PUBLISH, as a server forwards it, read by the parser. */
    mqtt_rx_t r = {0};
    mqtt_rx_reset(&r, 1);
    events_t e = {0};
    static const uint8_t connack[] = {0x20, 2, 0, 0};
    feed_ok(&r, connack, sizeof(connack), &e);
    feed_ok(&r, p, k, &e);
    assert_int_equal(e.n, 2);
    assert_int_equal(e.ev[1].op, GM_MSG);
    assert_true(e.ev[1].has_bench);
    assert_int_equal(e.ev[1].p, 5);
    assert_int_equal(e.ev[1].s, 77);
    assert_int_equal(e.ev[1].t, 4242);
    mqtt_rx_free(&r);
    pubtpl_free(&t);
}

static void test_publish_frame(void **state)
{
    (void)state;
    check_publish(100, 1);   /* remaining length in one byte */
    check_publish(300, 2);   /* two */
    check_publish(50000, 3); /* three */
    pubtpl_t t;
    assert_int_equal(mqtt_pubtpl_build(&t, "a..b", false, 0, 100), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_and_every_split),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_connack_refused),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_connect_frames),
        cmocka_unit_test(test_subscribe_frames),
        cmocka_unit_test(test_topics),
        cmocka_unit_test(test_publish_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
