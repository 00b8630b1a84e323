/*
 * Unit tests of gale bench's NATS stream parser and publish frames (clients/bench/bench_nats.c),
 * and of the bench data and gale publish templates it shares (clients/bench/bench_msg.c), and
 * of the stream positions the recover scenario sends and reads.
 * The stream is fed whole, split at every position and byte by byte: frame boundaries of
 * nats-server's WebSocket listener fall anywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bench_msg.h"
#include "bench_nats.h"

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

/* A MSG carrying bench data p=2, s=seq, t=time (with their fixed offsets). */
static int bench_msg(char *out, size_t cap, const char *verb, uint64_t seq, uint64_t t)
{
    char data[128];
    int d = snprintf(data, sizeof(data), "{\"p\":2,\"s\":%llu,\"t\":%llu,\"x\":\"xx\"}",
                     (unsigned long long)(BENCH_SEQ_BASE + seq),
                     (unsigned long long)(BENCH_TIME_BASE + t));
    return snprintf(out, cap, "%s bench.fanout 1 %d\r\n%s\r\n", verb, d, data);
}

static char stream[2048];
static size_t stream_len;

static void build_stream(void)
{
    char m1[256], m2[256];
    bench_msg(m1, sizeof(m1), "MSG", 7, 1234);
    bench_msg(m2, sizeof(m2), "msg", 8, 99); /* operations are case-insensitive */
    const char *hmsg = "HMSG bench.fanout 1 _INBOX.r 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
    int n = snprintf(stream, sizeof(stream),
                     "INFO {\"server_id\":\"X\",\"max_payload\":1048576}\r\n"
                     "PONG\r\n%sPING\r\n%s+OK\r\nPONG\r\nINFO {\"connect_urls\":[]}\r\n"
                     "%s-ERR 'Slow Consumer'\r\n",
                     m1, m2, hmsg);
    assert_true(n > 0 && (size_t)n < sizeof(stream));
    stream_len = (size_t)n;
}

static void check_events(const events_t *e)
{
    static const int ops[] = {GM_HELLO, GM_ACK, GM_MSG,   GM_PING, GM_MSG,
                              GM_OTHER, GM_ACK, GM_OTHER, GM_MSG,  GM_ERR};
    assert_int_equal(e->n, sizeof(ops) / sizeof(ops[0]));
    for (int i = 0; i < e->n; i++)
        assert_int_equal(e->ev[i].op, ops[i]);
    /* PONGs acknowledge consecutive ids from the first one given to nats_rx_reset(). */
    assert_true(e->ev[1].has_id);
    assert_int_equal(e->ev[1].id, 41);
    assert_int_equal(e->ev[6].id, 42);
    assert_true(e->ev[2].has_bench);
    assert_int_equal(e->ev[2].p, 2);
    assert_int_equal(e->ev[2].s, 7);
    assert_int_equal(e->ev[2].t, 1234);
    assert_true(e->ev[4].has_bench);
    assert_int_equal(e->ev[4].s, 8);
    assert_int_equal(e->ev[4].t, 99);
    assert_false(e->ev[8].has_bench); /* "hi" after the headers: no bench data */
    assert_string_equal(e->ev[9].code, "-ERR");
    assert_string_equal(e->ev[9].text, "Slow Consumer");
}

static void feed_ok(nats_rx_t *r, const char *p, size_t n, events_t *e)
{
    const char *why = NULL;
    assert_int_equal(nats_rx_feed(r, (const uint8_t *)p, n, collect, e, &why), 0);
}

static void test_whole_and_every_split(void **state)
{
    (void)state;
    build_stream();
    for (size_t cut = 0; cut <= stream_len; cut++) {
        nats_rx_t r = {0};
        nats_rx_reset(&r, 41);
        events_t e = {0};
        feed_ok(&r, stream, cut, &e);
        feed_ok(&r, stream + cut, stream_len - cut, &e);
        check_events(&e);
        assert_int_equal(r.len, 0);
        nats_rx_free(&r);
    }
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    build_stream();
    nats_rx_t r = {0};
    nats_rx_reset(&r, 41);
    events_t e = {0};
    for (size_t i = 0; i < stream_len; i++)
        feed_ok(&r, stream + i, 1, &e);
    check_events(&e);
    /* A reset starts a new connection: INFO is the hello again, acks count anew. */
    nats_rx_reset(&r, 1);
    e.n = 0;
    feed_ok(&r, "INFO {}\r\nPONG\r\n", 15, &e);
    assert_int_equal(e.n, 2);
    assert_int_equal(e.ev[0].op, GM_HELLO);
    assert_int_equal(e.ev[1].id, 1);
    nats_rx_free(&r);
}

static void test_stop(void **state)
{
    (void)state;
    build_stream();
    nats_rx_t r = {0};
    nats_rx_reset(&r, 1);
    events_t e = {.stop_after = 3};
    const char *why = NULL;
    assert_int_equal(nats_rx_feed(&r, (const uint8_t *)stream, stream_len, collect, &e, &why), 1);
    assert_int_equal(e.n, 3);
    nats_rx_free(&r);
}

static void expect_error(const char *p, size_t n)
{
    nats_rx_t r = {0};
    nats_rx_reset(&r, 1);
    events_t e = {0};
    const char *why = NULL;
    assert_int_equal(nats_rx_feed(&r, (const uint8_t *)p, n, collect, &e, &why), -1);
    assert_non_null(why);
    nats_rx_free(&r);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("{\"op\":\"hello\"}\r\n", 16); /* a gale broker, not NATS */
    expect_error("{\"op\":\"hello\"}", 14);     /* told before any end of line */
    expect_error("PUNG", 4);
    expect_error("INFOX {}", 8);
    expect_error("MSG bench.fanout 12\r\n", 21); /* no sid */
    expect_error("MSG a 1 x\r\n", 11);           /* size not a number */
    expect_error("MSG a 1 2\r\nabXY", 15);       /* payload not followed by CRLF */
    expect_error("MSG a 1 2000000\r\n", 17);     /* larger than 1 MiB */
    size_t big = NATS_MAX_LINE + 10;
    char *line = malloc(big);
    assert_non_null(line);
    memset(line, 'A', big);
    memcpy(line, "INFO ", 5);
    expect_error(line, big); /* no end of line within 64 KiB */
    free(line);
}

/* The payload of a frame built with mask key 0 (as every bench frame is). */
static const uint8_t *frame_payload(const uint8_t *f, size_t len, size_t *n)
{
    assert_int_equal(f[1] & 0x80, 0x80);
    size_t h = (f[1] & 0x7f) == 126 ? 4 : (f[1] & 0x7f) == 127 ? 10 : 2;
    assert_memory_equal(f + h, "\0\0\0\0", 4);
    *n = len - h - 4;
    return f + h + 4;
}

static void test_publish_frame(void **state)
{
    (void)state;
    pubtpl_t t;
    assert_int_equal(nats_pubtpl_build(&t, "bench.topic.000000", true, 5, 300), 0);
    assert_int_equal(t.frame[0], 0x80 | WS_BINARY);
    assert_int_equal(t.off_id, 0); /* NATS has no request id */
    pubtpl_set(&t, 77, 4242, 13);
    size_t n;
    const char *p = (const char *)frame_payload(t.frame, t.len, &n);
    char verb[8], subject[64];
    unsigned size;
    assert_int_equal(sscanf(p, "%7s %63s %u", verb, subject, &size), 3);
    assert_string_equal(verb, "PUB");
    assert_string_equal(subject, "bench.topic.000013");
    const char *data = strstr(p, "\r\n") + 2;
    assert_int_equal((size_t)(data - p) + size + 8, n);
    assert_memory_equal(data + size, "\r\nPING\r\n", 8);
    assert_true(size >= 280 && size <= 300); /* about --size: 53 fixed + 236 padding */
    gmsg_t m = {0};
    bench_data_parse_json(&m, (const uint8_t *)data, size);
    assert_true(m.has_bench);
    assert_int_equal(m.p, 5);
    assert_int_equal(m.s, 77);
    assert_int_equal(m.t, 4242);
    pubtpl_free(&t);
}

static void test_hello_frames(void **state)
{
    (void)state;
    uint8_t f[512];
    size_t len = nats_hello_frame(f, sizeof(f), "bench.conn.12"), n;
    assert_true(len > 0);
    assert_int_equal(f[0], 0x80 | WS_BINARY);
    const char *p = (const char *)frame_payload(f, len, &n);
    assert_memory_equal(p, "CONNECT {", 9);
    assert_non_null(strstr(p, "\"verbose\":false"));
    const char *tail = "\r\nSUB bench.conn.12 1\r\nPING\r\n";
    assert_memory_equal(p + n - strlen(tail), tail, strlen(tail));
    len = nats_hello_frame(f, sizeof(f), NULL);
    p = (const char *)frame_payload(f, len, &n);
    assert_memory_equal(p + n - 3, "}\r\n", 3);
    assert_int_equal(nats_hello_frame(f, 100, "bench.fanout"), 0); /* does not fit */
    uint8_t big[2048];
    len = nats_subs_frame(big, sizeof(big), "bench.conn.", 998, 3);
    p = (const char *)frame_payload(big, len, &n);
    assert_memory_equal(p, "CONNECT {", 9);
    tail = "}\r\nSUB bench.conn.998 1\r\nSUB bench.conn.999 2\r\nSUB bench.conn.1000 3\r\nPING\r\n";
    assert_memory_equal(p + n - strlen(tail), tail, strlen(tail));
    assert_int_equal(nats_subs_frame(big, sizeof(big), "bench.conn.", 0, 100), 0); /* too many */
    len = nats_pong_frame(f);
    p = (const char *)frame_payload(f, len, &n);
    assert_int_equal(n, 6);
    assert_memory_equal(p, "PONG\r\n", 6);
}

/* The gale templates, rebuilt on the shared pieces, keep their exact form. */
static void test_gale_templates(void **state)
{
    (void)state;
    pubtpl_t t;
    assert_int_equal(pubtpl_build(&t, false, "bench.fanout", false, 3, 70), 0);
    pubtpl_set(&t, 5, 6, 0);
    size_t n;
    const char *p = (const char *)frame_payload(t.frame, t.len, &n);
    const char *want = "{\"op\":\"pub\",\"topic\":\"bench.fanout\",\"id\":1000000000005,\"data\":"
                       "{\"p\":3,\"s\":1000000000005,\"t\":1000000000000006,\"x\":\"xxxxxx\"}}";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
    pubtpl_free(&t);
    assert_int_equal(pubtpl_build(&t, true, "bench.topic.000000", true, 4, 100), 0);
    pubtpl_set(&t, 9, 10, 11);
    p = (const char *)frame_payload(t.frame, t.len, &n);
    gmsg_t m;
    assert_int_equal(gmsg_parse(&m, true, (const uint8_t *)p, n), 0);
    assert_true(m.has_id && m.has_bench);
    assert_int_equal(m.id, BENCH_SEQ_BASE + 9);
    assert_int_equal(m.p, 4);
    assert_int_equal(m.s, 9);
    assert_int_equal(m.t, 10);
    assert_non_null(memmem(p, n, "bench.topic.000011", 18));
    pubtpl_free(&t);
}

/* recover: sub with since, and the stream positions of msg and ack, in JSON and MessagePack. */
static void test_positions(void **state)
{
    (void)state;
    uint8_t b[600];
    size_t n = msg_encode_sub_since(b, sizeof(b), false, "bench.recover", 1, "0123abcd-1", 42);
    const char *want =
        "{\"op\":\"sub\",\"topic\":\"bench.recover\",\"id\":1,\"since\":{\"ep\":\"0123abcd-1\","
        "\"off\":42}}";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(b, want, n);

    gmsg_t m;
    const char *msg = "{\"op\":\"msg\",\"topic\":\"bench.recover\",\"ep\":\"e-1\",\"off\":7,"
                      "\"data\":{\"p\":0,\"s\":1000000000003,\"t\":1000000000000009,\"x\":\"x\"}}";
    assert_int_equal(gmsg_parse(&m, false, (const uint8_t *)msg, strlen(msg)), 0);
    gmsg_parse_pos(&m, false, (const uint8_t *)msg, strlen(msg));
    assert_true(m.op == GM_MSG && m.has_bench && m.has_ep && m.has_off && !m.has_recovered);
    assert_string_equal(m.ep, "e-1");
    assert_int_equal(m.off, 7);
    const char *ack = "{\"op\":\"ack\",\"id\":1,\"recovered\":true,\"ep\":\"e-1\",\"off\":9}";
    assert_int_equal(gmsg_parse(&m, false, (const uint8_t *)ack, strlen(ack)), 0);
    gmsg_parse_pos(&m, false, (const uint8_t *)ack, strlen(ack));
    assert_true(m.op == GM_ACK && m.has_id && m.has_recovered && m.recovered && m.off == 9);
    const char *no = "{\"op\":\"ack\",\"id\":1,\"recovered\":false,\"ep\":\"e-2\",\"off\":0}";
    assert_int_equal(gmsg_parse(&m, false, (const uint8_t *)no, strlen(no)), 0);
    gmsg_parse_pos(&m, false, (const uint8_t *)no, strlen(no));
    assert_true(m.has_recovered && !m.recovered && m.has_off && m.off == 0);
    assert_string_equal(m.ep, "e-2");

    /* MessagePack: the sub reads back as an op with its id; an ack's position directly. */
    n = msg_encode_sub_since(b, sizeof(b), true, "bench.recover", 1, "e-3", 5);
    assert_true(n > 0);
    assert_int_equal(gmsg_parse(&m, true, b, n), 0);
    assert_true(m.op == GM_OTHER && m.has_id && m.id == 1);
    static const uint8_t mp_ack[] = {0x85, 0xa2, 'o',  'p',  0xa3, 'a',  'c',  'k', 0xa2, 'i',
                                     'd',  0x01, 0xa9, 'r',  'e',  'c',  'o',  'v', 'e',  'r',
                                     'e',  'd',  0xc3, 0xa2, 'e',  'p',  0xa3, 'e', '-',  '3',
                                     0xa3, 'o',  'f',  'f',  0xcd, 0x01, 0x00};
    assert_int_equal(gmsg_parse(&m, true, mp_ack, sizeof(mp_ack)), 0);
    assert_true(m.op == GM_ACK && m.has_recovered && m.recovered && m.has_off && m.off == 256);
    assert_string_equal(m.ep, "e-3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_and_every_split),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_publish_frame),
        cmocka_unit_test(test_hello_frames),
        cmocka_unit_test(test_gale_templates),
        cmocka_unit_test(test_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
