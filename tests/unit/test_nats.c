/*
 * Unit tests of the NATS client protocol, server side (protocol/nats.c): the parser of what a
 * client sends, CONNECT's options and the encoders of what the server sends. A stream is fed
 * whole, split at every position and byte by byte: a WebSocket or TCP read ends anywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gale_nats.h"

#define MAXPAY 1048576
#define MAX_MSGS 64

/* Parses the C string s whole. */
static int parse(const char *s, size_t max_payload, gale_nats_msg_t *m, size_t *used,
                 const char **why)
{
    return gale_nats_parse((const uint8_t *)s, strlen(s), max_payload, m, used, why);
}

/* s parses as one message of op, using all of s. */
static void ok(const char *s, gale_nats_op_t op, gale_nats_msg_t *m)
{
    size_t used = 99;
    const char *why = "unset";
    assert_int_equal(parse(s, MAXPAY, m, &used, &why), 1);
    assert_int_equal(m->op, op);
    assert_int_equal(used, strlen(s));
    assert_null(why);
}

/* s is refused with the reason want. */
static void refused(const char *s, size_t max_payload, const char *want)
{
    gale_nats_msg_t m;
    size_t used = 99;
    const char *why = NULL;
    assert_int_equal(parse(s, max_payload, &m, &used, &why), -1);
    assert_int_equal(used, 0);
    assert_non_null(why);
    assert_string_equal(why, want);
}

/* s is incomplete. */
static void incomplete(const char *s)
{
    gale_nats_msg_t m;
    size_t used = 99;
    const char *why = "unset";
    assert_int_equal(parse(s, MAXPAY, &m, &used, &why), 0);
    assert_int_equal(used, 0);
    assert_null(why);
}

static void assert_span(const void *p, size_t n, const char *want)
{
    assert_non_null(p);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(p, want, n);
}

static void test_ops(void **state)
{
    (void)state;
    gale_nats_msg_t m;

    ok("CONNECT {\"verbose\":false}\r\n", GALE_NATS_CONNECT, &m);
    assert_span(m.json, m.json_len, "{\"verbose\":false}");

    ok("PUB a.b 5\r\nhello\r\n", GALE_NATS_PUB, &m);
    assert_span(m.subject, m.subject_len, "a.b");
    assert_null(m.reply);
    assert_span(m.payload, m.payload_len, "hello");
    assert_int_equal(m.header_len, 0);

    ok("PUB a.b _INBOX.x 2\r\nhi\r\n", GALE_NATS_PUB, &m);
    assert_span(m.subject, m.subject_len, "a.b");
    assert_span(m.reply, m.reply_len, "_INBOX.x");
    assert_span(m.payload, m.payload_len, "hi");

    ok("HPUB a 12 14\r\nNATS/1.0\r\n\r\nhi\r\n", GALE_NATS_HPUB, &m);
    assert_span(m.subject, m.subject_len, "a");
    assert_null(m.reply);
    assert_int_equal(m.header_len, 12);
    assert_span(m.payload, m.payload_len, "NATS/1.0\r\n\r\nhi");

    ok("HPUB a r 12 12\r\nNATS/1.0\r\n\r\n\r\n", GALE_NATS_HPUB, &m);
    assert_span(m.reply, m.reply_len, "r");
    assert_int_equal(m.header_len, 12);
    assert_int_equal(m.payload_len, 12);

    ok("SUB a.* 1\r\n", GALE_NATS_SUB, &m);
    assert_span(m.subject, m.subject_len, "a.*");
    assert_null(m.queue);
    assert_span(m.sid, m.sid_len, "1");

    ok("SUB a.> workers 42\r\n", GALE_NATS_SUB, &m);
    assert_span(m.subject, m.subject_len, "a.>");
    assert_span(m.queue, m.queue_len, "workers");
    assert_span(m.sid, m.sid_len, "42");

    ok("UNSUB 42\r\n", GALE_NATS_UNSUB, &m);
    assert_span(m.sid, m.sid_len, "42");
    assert_false(m.has_max);

    ok("UNSUB 42 10\r\n", GALE_NATS_UNSUB, &m);
    assert_span(m.sid, m.sid_len, "42");
    assert_true(m.has_max);
    assert_int_equal(m.max, 10);

    ok("UNSUB 42 0\r\n", GALE_NATS_UNSUB, &m);
    assert_true(m.has_max);
    assert_int_equal(m.max, 0);

    ok("UNSUB 42 18446744073709551615\r\n", GALE_NATS_UNSUB, &m);
    assert_true(m.max == UINT64_MAX);

    ok("PING\r\n", GALE_NATS_PING, &m);
    ok("PONG\r\n", GALE_NATS_PONG, &m);
    ok("+OK\r\n", GALE_NATS_OK, &m);
    ok("-ERR 'Stale Connection'\r\n", GALE_NATS_ERR, &m);
    assert_span(m.json, m.json_len, "'Stale Connection'");
    ok("-ERR\r\n", GALE_NATS_ERR, &m);
    assert_non_null(m.json);
    assert_int_equal(m.json_len, 0);

    /* Only the first message is parsed; used says where the next one starts. */
    size_t used;
    assert_int_equal(parse("PING\r\nPONG\r\n", MAXPAY, &m, &used, NULL), 1);
    assert_int_equal(m.op, GALE_NATS_PING);
    assert_int_equal(used, 6);
}

static void test_case_and_spacing(void **state)
{
    (void)state;
    gale_nats_msg_t m;

    ok("pub a 1\r\nx\r\n", GALE_NATS_PUB, &m);
    ok("Pub a 1\r\nx\r\n", GALE_NATS_PUB, &m);
    ok("hPuB a 0 1\r\nx\r\n", GALE_NATS_HPUB, &m);
    ok("sub a 1\r\n", GALE_NATS_SUB, &m);
    ok("UnSuB 1\r\n", GALE_NATS_UNSUB, &m);
    ok("ping\r\n", GALE_NATS_PING, &m);
    ok("pong\r\n", GALE_NATS_PONG, &m);
    ok("+ok\r\n", GALE_NATS_OK, &m);
    ok("-err 'x'\r\n", GALE_NATS_ERR, &m);
    ok("connect {}\r\n", GALE_NATS_CONNECT, &m);

    /* Tabs and runs of separators, leading and trailing. */
    ok("PUB\t a.b \t r\t\t3 \t\r\nabc\r\n", GALE_NATS_PUB, &m);
    assert_span(m.subject, m.subject_len, "a.b");
    assert_span(m.reply, m.reply_len, "r");
    assert_span(m.payload, m.payload_len, "abc");
    ok("SUB\ta\tq\t7\r\n", GALE_NATS_SUB, &m);
    assert_span(m.queue, m.queue_len, "q");
    assert_span(m.sid, m.sid_len, "7");
    ok("UNSUB   7    3   \r\n", GALE_NATS_UNSUB, &m);
    assert_span(m.sid, m.sid_len, "7");
    assert_int_equal(m.max, 3);
    ok("PING \t \r\n", GALE_NATS_PING, &m);
    ok("CONNECT \t {\"a\" : 1} \t\r\n", GALE_NATS_CONNECT, &m);
    assert_span(m.json, m.json_len, "{\"a\" : 1}");

    /* A bare LF ends a control line, as in nats-server. */
    ok("PING\n", GALE_NATS_PING, &m);
    ok("SUB a 1\n", GALE_NATS_SUB, &m);
    ok("PUB a 2\nhi\r\n", GALE_NATS_PUB, &m);
    assert_span(m.payload, m.payload_len, "hi");
    ok("CONNECT {}\n", GALE_NATS_CONNECT, &m);
    assert_span(m.json, m.json_len, "{}");

    /* Argument bytes are anything but separators and line ends. */
    ok("SUB \x01\xff\x7f \"'\r\n", GALE_NATS_SUB, &m);
    assert_span(m.subject, m.subject_len, "\x01\xff\x7f");
    assert_span(m.sid, m.sid_len, "\"'");
}

/* ---- streams ---- */

/* One parse result, with pointers as offsets into the stream, so runs can be compared. */
typedef struct {
    int rc;
    const char *why;
    size_t at, used;
    gale_nats_op_t op;
    ptrdiff_t subject, reply, queue, sid, payload, json;
    size_t subject_len, reply_len, queue_len, sid_len, payload_len, header_len, json_len;
    bool has_max;
    uint64_t max;
} rec_t;

static ptrdiff_t off_of(const void *p, const uint8_t *base)
{
    return p != NULL ? (const uint8_t *)p - base : -1;
}

static rec_t record(int rc, const char *why, size_t at, size_t used, const gale_nats_msg_t *m,
                    const uint8_t *base)
{
    rec_t r;
    memset(&r, 0, sizeof(r));
    r.rc = rc;
    r.why = why;
    r.at = at;
    r.used = used;
    if (rc != 1)
        return r;
    r.op = m->op;
    r.subject = off_of(m->subject, base);
    r.reply = off_of(m->reply, base);
    r.queue = off_of(m->queue, base);
    r.sid = off_of(m->sid, base);
    r.payload = off_of(m->payload, base);
    r.json = off_of(m->json, base);
    r.subject_len = m->subject_len;
    r.reply_len = m->reply_len;
    r.queue_len = m->queue_len;
    r.sid_len = m->sid_len;
    r.payload_len = m->payload_len;
    r.header_len = m->header_len;
    r.json_len = m->json_len;
    r.has_max = m->has_max;
    r.max = m->max;
    return r;
}

/*
 * Reads s[0..n) as a connection does: the bytes arrive in chunks whose ends are given by
 * cuts[0..ncuts) (increasing, then n); after each chunk every complete message is parsed.
 * Pointers are made relative to the connection's own buffer. Returns the number of results
 * (stopping after an error).
 */
static int read_stream(const uint8_t *s, size_t n, const size_t *cuts, int ncuts, rec_t *out)
{
    uint8_t *acc = malloc(n ? n : 1);
    assert_non_null(acc);
    size_t have = 0, pos = 0;
    int k = 0;
    for (int c = 0; c <= ncuts; c++) {
        size_t upto = c < ncuts ? cuts[c] : n;
        memcpy(acc + have, s + have, upto - have);
        have = upto;
        for (;;) {
            gale_nats_msg_t m;
            size_t used;
            const char *why;
            int rc = gale_nats_parse(acc + pos, have - pos, MAXPAY, &m, &used, &why);
            if (rc == 0)
                break;
            assert_true(k < MAX_MSGS);
            out[k++] = record(rc, why, pos, used, &m, acc);
            if (rc < 0)
                goto done;
            assert_true(used > 0 && used <= have - pos);
            pos += used;
        }
    }
done:
    free(acc);
    return k;
}

static void assert_same(const rec_t *a, int na, const rec_t *b, int nb)
{
    assert_int_equal(na, nb);
    for (int i = 0; i < na; i++) {
        if (a[i].why || b[i].why) {
            assert_non_null(a[i].why);
            assert_non_null(b[i].why);
            assert_string_equal(a[i].why, b[i].why);
        }
        const rec_t *x = &a[i], *y = &b[i];
        assert_int_equal(x->rc, y->rc);
        assert_int_equal(x->at, y->at);
        assert_int_equal(x->used, y->used);
        assert_int_equal(x->op, y->op);
        assert_int_equal(x->subject, y->subject);
        assert_int_equal(x->reply, y->reply);
        assert_int_equal(x->queue, y->queue);
        assert_int_equal(x->sid, y->sid);
        assert_int_equal(x->payload, y->payload);
        assert_int_equal(x->json, y->json);
        assert_int_equal(x->subject_len, y->subject_len);
        assert_int_equal(x->reply_len, y->reply_len);
        assert_int_equal(x->queue_len, y->queue_len);
        assert_int_equal(x->sid_len, y->sid_len);
        assert_int_equal(x->payload_len, y->payload_len);
        assert_int_equal(x->header_len, y->header_len);
        assert_int_equal(x->json_len, y->json_len);
        assert_int_equal(x->has_max, y->has_max);
        assert_true(x->max == y->max);
    }
}

/* Every split, and byte by byte, gives what the whole stream gives. */
static void check_splits(const char *stream, size_t n, const rec_t *whole, int nwhole)
{
    rec_t got[MAX_MSGS];
    const uint8_t *s = (const uint8_t *)stream;
    for (size_t cut = 0; cut <= n; cut++) {
        int k = read_stream(s, n, &cut, 1, got);
        assert_same(whole, nwhole, got, k);
    }
    size_t *cuts = malloc((n + 1) * sizeof(*cuts));
    assert_non_null(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    int k = read_stream(s, n, cuts, (int)n, got);
    assert_same(whole, nwhole, got, k);
    free(cuts);
}

static const char STREAM[] =
    "CONNECT {\"verbose\":false,\"name\":\"t\\u00e9\",\"auth_token\":\"s3cr\\\"t\"}\r\n"
    "PING\r\n"
    "SUB foo.* 1\r\n"
    "sub\tfoo.> q 2\n"
    "PUB foo.bar 5\r\nhello\r\n"
    "PUB foo.bar _INBOX.1 0\r\n\r\n"
    "HPUB foo.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    "HPUB foo.h r 12 12\r\nNATS/1.0\r\n\r\n\r\n"
    "pub  foo.crlf  4\r\n\r\n\r\n\r\n"
    "UNSUB 1\r\n"
    "UNSUB 2 5\r\n"
    "PONG\r\n"
    "+OK\r\n"
    "-ERR 'whatever'\r\n"
    "PING \t\n";

static void test_stream_every_split(void **state)
{
    (void)state;
    rec_t whole[MAX_MSGS];
    size_t n = sizeof(STREAM) - 1;
    int k = read_stream((const uint8_t *)STREAM, n, NULL, 0, whole);
    static const gale_nats_op_t ops[] = {
        GALE_NATS_CONNECT, GALE_NATS_PING, GALE_NATS_SUB,  GALE_NATS_SUB, GALE_NATS_PUB,
        GALE_NATS_PUB,     GALE_NATS_HPUB, GALE_NATS_HPUB, GALE_NATS_PUB, GALE_NATS_UNSUB,
        GALE_NATS_UNSUB,   GALE_NATS_PONG, GALE_NATS_OK,   GALE_NATS_ERR, GALE_NATS_PING,
    };
    assert_int_equal(k, sizeof(ops) / sizeof(ops[0]));
    size_t at = 0;
    for (int i = 0; i < k; i++) {
        assert_int_equal(whole[i].rc, 1);
        assert_int_equal(whole[i].op, ops[i]);
        assert_int_equal(whole[i].at, at);
        at += whole[i].used;
    }
    assert_int_equal(at, n);
    /* A payload that looks like a control line is a payload. */
    assert_int_equal(whole[8].payload_len, 4);
    assert_memory_equal(STREAM + whole[8].payload, "\r\n\r\n", 4);

    /* Every prefix of each message is incomplete. */
    for (int i = 0; i < k; i++)
        for (size_t len = 0; len < whole[i].used; len++) {
            gale_nats_msg_t m;
            size_t used = 1;
            assert_int_equal(gale_nats_parse((const uint8_t *)STREAM + whole[i].at, len, MAXPAY, &m,
                                             &used, NULL),
                             0);
            assert_int_equal(used, 0);
        }
    check_splits(STREAM, n, whole, k);
}

/* A stream that ends in an error gives the same messages and the same error at any split. */
static void test_stream_errors_every_split(void **state)
{
    (void)state;
    static const char *const streams[] = {
        "PING\r\nPUB a 3\r\nabcX\r\nPING\r\n",   /* payload longer than announced */
        "PING\r\nPUB a 3\r\nab\r\n\r\nPING\r\n", /* shorter */
        "SUB a 1\r\nGET / HTTP/1.1\r\n",         /* another protocol */
        "PING\r\nPINGPONG\r\n",
        "PING\r\n\r\nPING\r\n", /* an empty line */
        "PING\r\nPUB a -1\r\n",
        "PING\r\nHPUB a 3 2\r\nabc\r\n",
        "PING\r\nPUB a\rb 1\r\nx\r\n",
        "PING\r\nPUB a 2000000\r\n",
    };
    for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
        rec_t whole[MAX_MSGS];
        size_t n = strlen(streams[i]);
        int k = read_stream((const uint8_t *)streams[i], n, NULL, 0, whole);
        assert_true(k >= 1);
        assert_int_equal(whole[k - 1].rc, -1);
        check_splits(streams[i], n, whole, k);
    }
}

/* ---- sizes and limits ---- */

static void test_payload_sizes(void **state)
{
    (void)state;
    gale_nats_msg_t m;
    size_t used;

    ok("PUB a 0\r\n\r\n", GALE_NATS_PUB, &m);
    assert_non_null(m.payload);
    assert_int_equal(m.payload_len, 0);
    ok("PUB a 000\r\n\r\n", GALE_NATS_PUB, &m);
    ok("HPUB a 0 0\r\n\r\n", GALE_NATS_HPUB, &m);
    assert_int_equal(m.payload_len, 0);

    /* A large payload, all of the limit, also with binary bytes and CRLFs inside. */
    size_t big = MAXPAY;
    char head[64];
    int h = snprintf(head, sizeof(head), "PUB big.one %zu\r\n", big);
    size_t n = (size_t)h + big + 2;
    uint8_t *s = malloc(n);
    assert_non_null(s);
    memcpy(s, head, (size_t)h);
    for (size_t i = 0; i < big; i++)
        s[h + i] = (uint8_t)(i * 7);
    memcpy(s + h + big, "\r\n", 2);
    assert_int_equal(gale_nats_parse(s, n, MAXPAY, &m, &used, NULL), 1);
    assert_int_equal(used, n);
    assert_ptr_equal(m.payload, s + h);
    assert_int_equal(m.payload_len, big);
    assert_int_equal(gale_nats_parse(s, n - 1, MAXPAY, &m, &used, NULL), 0);
    assert_int_equal(gale_nats_parse(s, (size_t)h + 10, MAXPAY, &m, &used, NULL), 0);
    /* One byte over the limit. */
    assert_int_equal(gale_nats_parse(s, n, MAXPAY - 1, &m, &used, NULL), -1);
    free(s);
}

static void test_max_payload(void **state)
{
    (void)state;
    gale_nats_msg_t m;
    size_t used;
    const char *why;

    assert_int_equal(parse("PUB a 10\r\n0123456789\r\n", 10, &m, &used, &why), 1);
    refused("PUB a 11\r\n01234567890\r\n", 10, "Maximum Payload Violation");
    /* Told from the control line alone, before the payload arrives. */
    refused("PUB a 11\r\n", 10, "Maximum Payload Violation");
    refused("PUB a 99999999999\r\n", MAXPAY, "Maximum Payload Violation");
    refused("PUB a 18446744073709551615\r\n", MAXPAY, "Maximum Payload Violation");
    /* HPUB: the total counts. */
    assert_int_equal(parse("HPUB a 5 10\r\n0123456789\r\n", 10, &m, &used, &why), 1);
    refused("HPUB a 5 11\r\n", 10, "Maximum Payload Violation");
    refused("PUB a 1\r\nx\r\n", 0, "Maximum Payload Violation");
    assert_int_equal(parse("PUB a 0\r\n\r\n", 0, &m, &used, &why), 1);
}

/* A control line of n bytes, its line end included: "PUB <subject> 0" padded to size. */
static char *control_line(size_t n, const char *end)
{
    char *s = malloc(n + 3);
    assert_non_null(s);
    size_t e = strlen(end);
    assert_true(n > 8 + e);
    memcpy(s, "PUB ", 4);
    memset(s + 4, 'x', n - 4 - 2 - e);
    memcpy(s + n - 2 - e, " 0", 2);
    memcpy(s + n - e, end, e);
    memcpy(s + n, "\r\n", 3); /* the empty payload's CRLF */
    return s;
}

static void test_control_line_limit(void **state)
{
    (void)state;
    gale_nats_msg_t m;
    size_t used;
    const char *why;
    for (size_t n = GALE_NATS_CONTROL_MAX - 1; n <= GALE_NATS_CONTROL_MAX + 1; n++) {
        for (int lf = 0; lf < 2; lf++) {
            char *s = control_line(n, lf ? "\n" : "\r\n");
            int rc = gale_nats_parse((const uint8_t *)s, n + 2, MAXPAY, &m, &used, &why);
            if (n <= GALE_NATS_CONTROL_MAX) {
                assert_int_equal(rc, 1);
                assert_int_equal(used, n + 2);
                assert_int_equal(m.subject_len, n - 4 - 2 - (lf ? 1 : 2));
            } else {
                assert_int_equal(rc, -1);
                assert_string_equal(why, "maximum control line exceeded");
            }
            free(s);
        }
    }
    /* Without a line end: incomplete below the limit, an error at it. */
    char *s = malloc(GALE_NATS_CONTROL_MAX + 10);
    assert_non_null(s);
    memcpy(s, "SUB ", 4);
    memset(s + 4, 'y', GALE_NATS_CONTROL_MAX + 6);
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX - 1, MAXPAY, &m, &used, &why), 0);
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX, MAXPAY, &m, &used, &why), -1);
    assert_string_equal(why, "maximum control line exceeded");
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX + 10, MAXPAY, &m, &used, &why),
        -1);
    assert_string_equal(why, "maximum control line exceeded");
    /* The CR of a CRLF at the limit: the line would be one byte too long. */
    s[GALE_NATS_CONTROL_MAX - 1] = '\r';
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX - 1, MAXPAY, &m, &used, &why), 0);
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX, MAXPAY, &m, &used, &why), -1);
    /* A long CONNECT is limited the same way. */
    memcpy(s, "CONNECT ", 8);
    assert_int_equal(
        gale_nats_parse((const uint8_t *)s, GALE_NATS_CONTROL_MAX, MAXPAY, &m, &used, &why), -1);
    assert_string_equal(why, "maximum control line exceeded");
    free(s);
}

static void test_bad_sizes(void **state)
{
    (void)state;
    static const char *const sizes[] = {
        "-1",
        "+1",
        "1a",
        "a",
        "0x10",
        "1.0",
        "1e3",
        "99999999999999999999",
        "18446744073709551616",
        "\xd9\xa1", /* ARABIC-INDIC DIGIT ONE */
    };
    char line[128];
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        snprintf(line, sizeof(line), "PUB a %s\r\n", sizes[i]);
        refused(line, MAXPAY, "Bad or Missing Size");
        snprintf(line, sizeof(line), "PUB a r %s\r\n", sizes[i]);
        refused(line, MAXPAY, "Bad or Missing Size");
        snprintf(line, sizeof(line), "HPUB a %s 10\r\n", sizes[i]);
        refused(line, MAXPAY, "Bad or Missing Header Size");
        snprintf(line, sizeof(line), "HPUB a 1 %s\r\n", sizes[i]);
        refused(line, MAXPAY, "Bad or Missing Total Size");
        snprintf(line, sizeof(line), "UNSUB 1 %s\r\n", sizes[i]);
        refused(line, MAXPAY, "Invalid Unsubscribe Maximum");
    }
    /* The subject where a size belongs. */
    refused("PUB a b\r\n", MAXPAY, "Bad or Missing Size");
}

static void test_arguments(void **state)
{
    (void)state;
    refused("PUB\r\n", MAXPAY, "Invalid Publish Arguments");
    refused("PUB \r\n", MAXPAY, "Invalid Publish Arguments");
    refused("PUB 5\r\n", MAXPAY, "Invalid Publish Arguments");
    refused("PUB a b c 5\r\n", MAXPAY, "Invalid Publish Arguments");
    refused("HPUB a 5\r\n", MAXPAY, "Invalid Publish Arguments");
    refused("HPUB a b c 1 5\r\n", MAXPAY, "Invalid Publish Arguments");
    refused("SUB\r\n", MAXPAY, "Invalid Subscription Arguments");
    refused("SUB a\r\n", MAXPAY, "Invalid Subscription Arguments");
    refused("SUB a q 1 2\r\n", MAXPAY, "Invalid Subscription Arguments");
    refused("UNSUB\r\n", MAXPAY, "Invalid Unsubscribe Arguments");
    refused("UNSUB 1 2 3\r\n", MAXPAY, "Invalid Unsubscribe Arguments");
}

static void test_hpub_sizes(void **state)
{
    (void)state;
    gale_nats_msg_t m;
    refused("HPUB a 15 14\r\nNATS/1.0\r\n\r\nhi\r\n", MAXPAY, "Header Size Larger Than Total Size");
    refused("HPUB a r 1 0\r\n\r\n", MAXPAY, "Header Size Larger Than Total Size");
    ok("HPUB a 14 14\r\nNATS/1.0\r\n\r\nhi\r\n", GALE_NATS_HPUB, &m);
    assert_int_equal(m.header_len, 14);
    assert_int_equal(m.payload_len, 14);
}

static void test_payload_end(void **state)
{
    (void)state;
    refused("PUB a 2\r\nhi\n", MAXPAY, "Unknown Protocol Operation");
    refused("PUB a 2\r\nhiXY", MAXPAY, "Unknown Protocol Operation");
    refused("PUB a 2\r\nhi\rX", MAXPAY, "Unknown Protocol Operation");
    refused("PUB a 2\r\nhi\r\r\n", MAXPAY, "Unknown Protocol Operation");
    refused("HPUB a 0 2\r\nhiPING\r\n", MAXPAY, "Unknown Protocol Operation");
    /* A wrong byte after the payload is told without waiting for a second one. */
    refused("PUB a 2\r\nhiX", MAXPAY, "Unknown Protocol Operation");
    incomplete("PUB a 2\r\nhi");
    incomplete("PUB a 2\r\nhi\r");
    incomplete("PUB a 2\r\n");
    incomplete("PUB a 2\r");
}

static void test_sid_length(void **state)
{
    (void)state;
    gale_nats_msg_t m;
    char line[256], sid[GALE_NATS_SID_MAX + 2];
    memset(sid, 's', sizeof(sid) - 1);
    sid[GALE_NATS_SID_MAX] = '\0';
    snprintf(line, sizeof(line), "SUB a %s\r\n", sid);
    ok(line, GALE_NATS_SUB, &m);
    assert_int_equal(m.sid_len, GALE_NATS_SID_MAX);
    snprintf(line, sizeof(line), "SUB a q %s\r\n", sid);
    ok(line, GALE_NATS_SUB, &m);
    snprintf(line, sizeof(line), "UNSUB %s 3\r\n", sid);
    ok(line, GALE_NATS_UNSUB, &m);
    assert_int_equal(m.sid_len, GALE_NATS_SID_MAX);

    sid[GALE_NATS_SID_MAX] = 's';
    sid[GALE_NATS_SID_MAX + 1] = '\0';
    snprintf(line, sizeof(line), "SUB a %s\r\n", sid);
    refused(line, MAXPAY, "Invalid Subscription ID");
    snprintf(line, sizeof(line), "SUB a q %s\r\n", sid);
    refused(line, MAXPAY, "Invalid Subscription ID");
    snprintf(line, sizeof(line), "UNSUB %s\r\n", sid);
    refused(line, MAXPAY, "Invalid Subscription ID");
}

static void test_unknown(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "FOO\r\n",
        "\r\n",
        "\n",
        " PING\r\n",
        "\tPING\r\n",
        "PINGX\r\n",
        "PING x\r\n",
        "PINGPONG\r\n",
        "PONG 1\r\n",
        "+OK now\r\n",
        "INFO {}\r\n",
        "MSG a 1 1\r\nx\r\n",
        "HMSG a 1 0 1\r\nx\r\n",
        "PUBLISH a 1\r\nx\r\n",
        "CONNECT{}\r\n",
        "PING\r\r\n",
        "SUB a\r1\r\n",
        "CONNECT {\r}\r\n",
        "P\r\n",
        "GET / HTTP/1.1\r\n",
        "RS+ a 1\r\n",
        "\xc3\xa9\r\n",
    };
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++)
        refused(lines[i], MAXPAY, "Unknown Protocol Operation");
}

static void test_unknown_early(void **state)
{
    (void)state;
    /* A name that no operation starts with is refused before the line end... */
    refused("G", MAXPAY, "Unknown Protocol Operation");
    refused("PUX", MAXPAY, "Unknown Protocol Operation");
    refused("CONNECTX", MAXPAY, "Unknown Protocol Operation");
    refused("PI\r", MAXPAY, "Unknown Protocol Operation");
    refused("{\"op\":\"sub\"", MAXPAY, "Unknown Protocol Operation");
    /* ... and a start of one waits for more. */
    incomplete("");
    incomplete("P");
    incomplete("pu");
    incomplete("CONNEC");
    incomplete("CONNECT");
    incomplete("CONNECT {\"verbose\":");
    incomplete("-");
    incomplete("+O");
    incomplete("PING");
    incomplete("PING\r");
    incomplete("PING x"); /* refused only once the line is whole */
    incomplete("SUB a 1\r");
}

/* ---- CONNECT ---- */

static bool parse_conn(const char *json, gale_nats_connect_t *c, char *buf, size_t cap,
                       const char **why)
{
    *why = NULL;
    return gale_nats_parse_connect(json, strlen(json), c, buf, cap, why);
}

static void connect_bad(const char *json, const char *want)
{
    gale_nats_connect_t c;
    char buf[256];
    const char *why;
    assert_false(parse_conn(json, &c, buf, sizeof(buf), &why));
    assert_non_null(why);
    if (want != NULL)
        assert_string_equal(why, want);
}

static void test_connect_fields(void **state)
{
    (void)state;
    gale_nats_connect_t c;
    char buf[256];
    const char *why;

    assert_true(parse_conn("{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,"
                           "\"name\":\"svc-1\",\"lang\":\"go\",\"version\":\"1.30.0\","
                           "\"protocol\":1,\"echo\":false,\"headers\":true,\"no_responders\":true,"
                           "\"auth_token\":\"tok\",\"user\":\"u\",\"pass\":\"p\"}",
                           &c, buf, sizeof(buf), &why));
    assert_null(why);
    assert_false(c.verbose);
    assert_false(c.pedantic);
    assert_false(c.echo);
    assert_true(c.headers);
    assert_int_equal(c.protocol, 1);
    assert_span(c.auth_token, c.auth_token_len, "tok");
    assert_span(c.name, c.name_len, "svc-1");
    /* Both in the caller's buffer, NUL-terminated. */
    assert_true(c.auth_token >= buf && c.auth_token + c.auth_token_len < buf + sizeof(buf));
    assert_true(c.name >= buf && c.name + c.name_len < buf + sizeof(buf));
    assert_int_equal(c.auth_token[c.auth_token_len], '\0');
    assert_int_equal(c.name[c.name_len], '\0');

    /* Defaults: nats-server's for a client (verbose, pedantic and echo true). */
    assert_true(parse_conn("{}", &c, buf, sizeof(buf), &why));
    assert_true(c.verbose);
    assert_true(c.pedantic);
    assert_true(c.echo);
    assert_false(c.headers);
    assert_null(c.auth_token);
    assert_null(c.name);
    assert_int_equal(c.protocol, 0);
    assert_true(parse_conn(" {\"verbose\":false} ", &c, buf, sizeof(buf), &why));
    assert_true(c.echo);
    assert_false(c.verbose);

    /* null is absent; the last of repeated fields wins. */
    assert_true(parse_conn("{\"echo\":null,\"auth_token\":null,\"name\":null,\"protocol\":null,"
                           "\"verbose\":true,\"verbose\":false,\"name\":\"a\",\"name\":\"bc\"}",
                           &c, buf, sizeof(buf), &why));
    assert_true(c.echo);
    assert_null(c.auth_token);
    assert_false(c.verbose);
    assert_span(c.name, c.name_len, "bc");

    /* Other fields are ignored whatever their type; keys match exactly. */
    assert_true(parse_conn("{\"user\":1,\"pass\":[1,{}],\"lang\":null,\"version\":{\"a\":\"b\"},"
                           "\"tls_required\":\"yes\",\"no_responders\":0,\"sig\":false,\"jwt\":7,"
                           "\"nkey\":[],\"Verbose\":3,\"ECHO\":\"x\",\"x\":{\"y\":[true]}}",
                           &c, buf, sizeof(buf), &why));
    assert_true(c.verbose && c.echo);

    /* Escapes: in values and in keys. */
    assert_true(parse_conn("{\"auth_token\":\"a\\\"b\\\\c\\/d\\u00e9\\ud83d\\ude00\\n\","
                           "\"n\\u0061me\":\"x\\ty\"}",
                           &c, buf, sizeof(buf), &why));
    assert_span(c.auth_token, c.auth_token_len, "a\"b\\c/d\xc3\xa9\xf0\x9f\x98\x80\n");
    assert_span(c.name, c.name_len, "x\ty");
    assert_true(parse_conn("{\"auth_token\":\"\"}", &c, buf, sizeof(buf), &why));
    assert_non_null(c.auth_token);
    assert_int_equal(c.auth_token_len, 0);

    /* Integers of any size that fits; nothing else. */
    assert_true(parse_conn("{\"protocol\":-9223372036854775808}", &c, buf, sizeof(buf), &why));
    assert_true(c.protocol == INT64_MIN);
    assert_true(parse_conn("{\"protocol\":9223372036854775807}", &c, buf, sizeof(buf), &why));
    assert_true(c.protocol == INT64_MAX);
    assert_true(parse_conn("{\"protocol\":-0}", &c, buf, sizeof(buf), &why));
    assert_int_equal(c.protocol, 0);
}

static void test_connect_errors(void **state)
{
    (void)state;
    connect_bad("", "options are not well-formed JSON");
    connect_bad("{", "options are not well-formed JSON");
    connect_bad("{verbose:true}", "options are not well-formed JSON");
    connect_bad("{\"verbose\":true,}", "options are not well-formed JSON");
    connect_bad("{\"a\":1} x", "options are not well-formed JSON");
    connect_bad("{\"a\":\"\xff\"}", "options are not well-formed JSON");
    connect_bad("{'a':1}", "options are not well-formed JSON");
    connect_bad("[]", "options are not a JSON object");
    connect_bad("\"x\"", "options are not a JSON object");
    connect_bad("null", "options are not a JSON object");

    connect_bad("{\"verbose\":1}", "verbose is not a boolean");
    connect_bad("{\"verbose\":\"true\"}", "verbose is not a boolean");
    connect_bad("{\"pedantic\":0}", "pedantic is not a boolean");
    connect_bad("{\"echo\":[]}", "echo is not a boolean");
    connect_bad("{\"headers\":{}}", "headers is not a boolean");
    connect_bad("{\"auth_token\":1}", "auth_token is not a string");
    connect_bad("{\"auth_token\":true}", "auth_token is not a string");
    connect_bad("{\"name\":[\"a\"]}", "name is not a string");
    connect_bad("{\"protocol\":\"1\"}", "protocol is not an integer");
    connect_bad("{\"protocol\":1.0}", "protocol is not an integer");
    connect_bad("{\"protocol\":1e0}", "protocol is not an integer");
    connect_bad("{\"protocol\":true}", "protocol is not an integer");
    connect_bad("{\"protocol\":9223372036854775808}", "protocol is not an integer");
    connect_bad("{\"protocol\":-9223372036854775809}", "protocol is not an integer");
    /* A wrong type counts even when a later repetition is right. */
    connect_bad("{\"echo\":1,\"echo\":true}", "echo is not a boolean");

    connect_bad("{\"auth_token\":\"a\\u0000b\"}", NULL);
    connect_bad("{\"auth_token\":\"\\ud800\"}", NULL);
    connect_bad("{\"name\":\"\\udc00x\"}", NULL);
}

static void test_connect_buffer(void **state)
{
    (void)state;
    gale_nats_connect_t c;
    const char *why;
    char buf[16];
    /* "0123456789" and "abcd" take 11 and 5 bytes with their NULs: 16 fit exactly. */
    const char *json = "{\"auth_token\":\"0123456789\",\"name\":\"abcd\"}";
    assert_true(parse_conn(json, &c, buf, 16, &why));
    assert_span(c.auth_token, c.auth_token_len, "0123456789");
    assert_span(c.name, c.name_len, "abcd");
    assert_false(parse_conn(json, &c, buf, 15, &why));
    assert_non_null(why);
    assert_false(parse_conn(json, &c, buf, 10, &why));
    assert_false(parse_conn("{\"auth_token\":\"\"}", &c, NULL, 0, &why));
    assert_true(parse_conn("{\"auth_token\":\"\"}", &c, buf, 1, &why));
    assert_true(parse_conn("{\"verbose\":false}", &c, NULL, 0, &why));
    /* The escaped form must fit, though the unescaped one is shorter. */
    assert_false(parse_conn("{\"auth_token\":\"\\u0041\\u0042\"}", &c, buf, 12, &why));
    assert_true(parse_conn("{\"auth_token\":\"\\u0041\\u0042\"}", &c, buf, 13, &why));
    assert_span(c.auth_token, c.auth_token_len, "AB");
    /* why may be NULL. */
    assert_false(gale_nats_parse_connect("x", 1, &c, buf, sizeof(buf), NULL));

    /* CONNECT as parsed from the stream, then its options. */
    gale_nats_msg_t m;
    char big[GALE_NATS_CONTROL_MAX];
    ok("CONNECT {\"auth_token\":\"s\\u0033cret\",\"echo\":false}\r\n", GALE_NATS_CONNECT, &m);
    assert_true(gale_nats_parse_connect(m.json, m.json_len, &c, big, sizeof(big), &why));
    assert_span(c.auth_token, c.auth_token_len, "s3cret");
    assert_false(c.echo);
    ok("CONNECT\r\n", GALE_NATS_CONNECT, &m);
    assert_int_equal(m.json_len, 0);
    assert_false(gale_nats_parse_connect(m.json, m.json_len, &c, big, sizeof(big), &why));
}

/* ---- encoders ---- */

static void assert_buf(const gale_buf_t *b, const char *want)
{
    assert_int_equal(gale_buf_payload_len(b), strlen(want));
    assert_memory_equal(gale_buf_payload(b), want, strlen(want));
}

static void test_encode_info(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 4);
    gale_nats_info_t i = {.server_id = "gale-abc",
                          .server_name = "node-1",
                          .version = "0.9.0",
                          .host = "0.0.0.0",
                          .port = 4222,
                          .max_payload = 1048576,
                          .auth_required = false,
                          .client_id = 7};
    assert_int_equal(gale_nats_encode_info(&b, &i), GALE_OK);
    assert_buf(&b, "INFO {\"server_id\":\"gale-abc\",\"server_name\":\"node-1\",\"version\":"
                   "\"0.9.0\",\"proto\":1,\"host\":\"0.0.0.0\",\"port\":4222,\"headers\":false,"
                   "\"max_payload\":1048576,\"jetstream\":false,\"client_id\":7}\r\n");
    gale_buf_free(&b);

    gale_buf_init(&b, 0);
    i.auth_required = true;
    i.server_name = NULL;
    i.host = "h\"1";
    i.port = -1;
    i.max_payload = UINT64_MAX;
    i.client_id = 0;
    assert_int_equal(gale_nats_encode_info(&b, &i), GALE_OK);
    assert_buf(&b, "INFO {\"server_id\":\"gale-abc\",\"server_name\":\"\",\"version\":\"0.9.0\","
                   "\"proto\":1,\"host\":\"h\\\"1\",\"port\":-1,\"headers\":false,"
                   "\"auth_required\":true,\"max_payload\":18446744073709551615,"
                   "\"jetstream\":false,\"client_id\":0}\r\n");
    gale_buf_free(&b);
}

static void test_encode_msg(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 8);
    assert_int_equal(
        gale_nats_encode_msg(&b, "a.b", 3, "12", 2, NULL, 0, (const uint8_t *)"hello", 5), GALE_OK);
    assert_buf(&b, "MSG a.b 12 5\r\nhello\r\n");
    assert_int_equal(gale_nats_encode_msg(&b, "a.bc", 3, "9", 1, "_INBOX.x", 8, NULL, 0), GALE_OK);
    assert_buf(&b, "MSG a.b 12 5\r\nhello\r\nMSG a.b 9 _INBOX.x 0\r\n\r\n");
    gale_buf_free(&b);

    /* A binary payload with CRLFs, read back by the parser as a PUB would be. */
    gale_buf_init(&b, 0);
    uint8_t pay[300];
    for (size_t k = 0; k < sizeof(pay); k++)
        pay[k] = (uint8_t)(k % 5 == 0 ? '\r' : k % 5 == 1 ? '\n' : k);
    assert_int_equal(gale_nats_encode_msg(&b, "s", 1, "1", 1, "r", 1, pay, sizeof(pay)), GALE_OK);
    assert_true(b.len > sizeof(pay));
    assert_memory_equal(b.data, "MSG s 1 r 300\r\n", 15);
    assert_memory_equal(b.data + 15, pay, sizeof(pay));
    assert_memory_equal(b.data + 15 + sizeof(pay), "\r\n", 2);
    assert_int_equal(b.len, 15 + sizeof(pay) + 2);
    gale_buf_free(&b);
}

static void test_encode_simple(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_nats_encode_ping(&b), GALE_OK);
    assert_int_equal(gale_nats_encode_pong(&b), GALE_OK);
    assert_int_equal(gale_nats_encode_ok(&b), GALE_OK);
    assert_int_equal(gale_nats_encode_err(&b, "Unknown Protocol Operation"), GALE_OK);
    assert_buf(&b, "PING\r\nPONG\r\n+OK\r\n-ERR 'Unknown Protocol Operation'\r\n");
    gale_buf_free(&b);

    /* Quotes, line breaks, control and non-ASCII bytes become '?'. */
    gale_buf_init(&b, 0);
    assert_int_equal(gale_nats_encode_err(&b, "it's\r\nbad\t\x7f\xc3\xa9 end"), GALE_OK);
    assert_buf(&b, "-ERR 'it?s??bad???? end'\r\n");
    gale_buf_free(&b);

    gale_buf_init(&b, 0);
    assert_int_equal(gale_nats_encode_err(&b, ""), GALE_OK);
    assert_int_equal(gale_nats_encode_err(&b, NULL), GALE_OK);
    assert_buf(&b, "-ERR ''\r\n-ERR ''\r\n");
    gale_buf_free(&b);

    /* Cut at 200 bytes. */
    char text[301], want[220];
    memset(text, 'x', 300);
    text[300] = '\0';
    snprintf(want, sizeof(want), "-ERR '%.200s'\r\n", text);
    gale_buf_init(&b, 0);
    assert_int_equal(gale_nats_encode_err(&b, text), GALE_OK);
    assert_buf(&b, want);
    gale_buf_free(&b);

    /* Every parser error text goes out as is. */
    static const char *const whys[] = {"maximum control line exceeded", "Maximum Payload Violation",
                                       "Bad or Missing Size"};
    for (size_t k = 0; k < sizeof(whys) / sizeof(whys[0]); k++) {
        gale_buf_init(&b, 0);
        assert_int_equal(gale_nats_encode_err(&b, whys[k]), GALE_OK);
        snprintf(want, sizeof(want), "-ERR '%s'\r\n", whys[k]);
        assert_buf(&b, want);
        gale_buf_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops),
        cmocka_unit_test(test_case_and_spacing),
        cmocka_unit_test(test_stream_every_split),
        cmocka_unit_test(test_stream_errors_every_split),
        cmocka_unit_test(test_payload_sizes),
        cmocka_unit_test(test_max_payload),
        cmocka_unit_test(test_control_line_limit),
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_hpub_sizes),
        cmocka_unit_test(test_payload_end),
        cmocka_unit_test(test_sid_length),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_unknown_early),
        cmocka_unit_test(test_connect_fields),
        cmocka_unit_test(test_connect_errors),
        cmocka_unit_test(test_connect_buffer),
        cmocka_unit_test(test_encode_info),
        cmocka_unit_test(test_encode_msg),
        cmocka_unit_test(test_encode_simple),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
