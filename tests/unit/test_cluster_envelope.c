/*
 * Unit tests for the cluster envelope (broker/cluster_wire.c): round trips,
 * and decoding of hostile input (it comes from Redis): every truncation,
 * wrong types and versions, lengths past the end, invalid topics and data,
 * trailing bytes, and random mutations that must never crash or pass an
 * invalid field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster_wire.h"

static size_t encode(uint8_t *out, size_t cap, const char *node, uint64_t inst, uint64_t seq,
                     const char *topic, gale_enc_t enc, const char *data, size_t dlen)
{
    cluster_envelope_t e = {.node = node,
                            .node_len = strlen(node),
                            .instance = inst,
                            .seq = seq,
                            .topic = topic,
                            .topic_len = strlen(topic),
                            .enc = enc,
                            .data = (const uint8_t *)data,
                            .data_len = dlen};
    return cluster_envelope_encode(out, cap, &e);
}

static void test_round_trip(void **state)
{
    uint8_t buf[512];
    cluster_envelope_t e;
    const char *why;
    static const uint64_t values[] = {
        1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1, UINT64_MAX};
    (void)state;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        size_t n = encode(buf, sizeof(buf), "node-1", values[i],
                          values[sizeof(values) / sizeof(values[0]) - 1 - i], "chat.room-42",
                          GALE_ENC_JSON, "{\"a\":[1,2]}", 11);
        assert_true(n > 0 && n <= cluster_envelope_size(6, 12, 11));
        assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
        assert_int_equal(e.instance, values[i]);
        assert_int_equal(e.seq, values[sizeof(values) / sizeof(values[0]) - 1 - i]);
        assert_int_equal(e.node_len, 6);
        assert_memory_equal(e.node, "node-1", 6);
        assert_int_equal(e.topic_len, 12);
        assert_memory_equal(e.topic, "chat.room-42", 12);
        assert_int_equal(e.enc, GALE_ENC_JSON);
        assert_int_equal(e.data_len, 11);
        assert_memory_equal(e.data, "{\"a\":[1,2]}", 11);
    }
    /* MessagePack data, binary-safe (NUL bytes), long node and topic (str8). */
    char node[64], topic[256];
    memset(node, 'n', 63);
    node[63] = '\0';
    memset(topic, 't', 255);
    topic[255] = '\0';
    static const char mp[] = "\xc4\x03\x00\x01\xff"; /* bin 3: 00 01 ff */
    size_t n = encode(buf, sizeof(buf), node, 9, 9, topic, GALE_ENC_MSGPACK, mp, 5);
    assert_true(n > 0);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_int_equal(e.node_len, 63);
    assert_int_equal(e.topic_len, 255);
    assert_int_equal(e.enc, GALE_ENC_MSGPACK);
    assert_memory_equal(e.data, mp, 5);
}

static void test_encode_bounds(void **state)
{
    uint8_t buf[64];
    char node[80];
    (void)state;
    memset(node, 'n', 64);
    node[64] = '\0';
    assert_int_equal(encode(buf, sizeof(buf), node, 1, 1, "a", GALE_ENC_JSON, "1", 1), 0);
    assert_int_equal(encode(buf, sizeof(buf), "", 1, 1, "a", GALE_ENC_JSON, "1", 1), 0);
    assert_int_equal(encode(buf, 10, "n", 1, 1, "a", GALE_ENC_JSON, "1", 1), 0);
    assert_true(encode(buf, sizeof(buf), "n", 1, 1, "a", GALE_ENC_JSON, "1", 1) > 0);
}

static void test_every_truncation_fails(void **state)
{
    uint8_t buf[256];
    cluster_envelope_t e;
    const char *why;
    (void)state;
    size_t n = encode(buf, sizeof(buf), "node", 1234567, 77, "a.b", GALE_ENC_JSON, "[1]", 3);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    for (size_t k = 0; k < n; k++)
        assert_false(cluster_envelope_decode(buf, k, 1024, &e, &why));
    buf[n] = 0xc0; /* one byte too many */
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_string_equal(why, "bytes after the envelope");
    /* No bytes at all, not even a buffer (UBSan: no arithmetic on a NULL pointer). */
    assert_false(cluster_envelope_decode(NULL, 0, 1024, &e, &why));
    assert_string_equal(why, "not an envelope (array of 7, 8 or 9)");
}

/* Decodes hand-made bytes. */
static bool dec(const char *bytes, size_t n, const char **why)
{
    cluster_envelope_t e;
    return cluster_envelope_decode((const uint8_t *)bytes, n, 1024, &e, why);
}

#define DEC(lit, why) dec(lit, sizeof(lit) - 1, why)

static void test_hostile_fields(void **state)
{
    const char *why;
    (void)state;
    /* A valid one, then one field broken at a time. */
    assert_true(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xc4\x01"
                    "1",
                    &why));
    assert_false(DEC("\x96\x01\xa1n\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* array of 6 */
    assert_false(DEC("\xdc\x00\x07\x01\xa1n\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* array16 */
    assert_false(DEC("\x97\x02\xa1n\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* version 2 */
    assert_string_equal(why, "unknown envelope version");
    assert_false(DEC("\x97\x01\xa0\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* empty node */
    assert_false(DEC("\x97\x01\xa1\x01\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* control char in node */
    assert_false(DEC("\x97\x01\xc4\x01n\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* node as bin */
    assert_false(DEC("\x97\x01\xa1n\x00\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* instance 0 */
    assert_false(DEC("\x97\x01\xa1n\x05\x00\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* seq 0 */
    assert_false(DEC("\x97\x01\xa1n\xd3\x00\x00\x00\x00\x00\x00\x00\x05\x07\xa1t\x00\xc4\x01"
                     "1",
                     &why)); /* int64 instance */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1*\x00\xc4\x01"
                     "1",
                     &why)); /* topic "*" */
    assert_string_equal(why, "bad topic");
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa3"
                     "a..\x00\xc4\x01"
                     "1",
                     &why)); /* empty segment */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa2\xc3\x28\x00\xc4\x01"
                     "1",
                     &why)); /* bad UTF-8 */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x02\xc4\x01"
                     "1",
                     &why)); /* encoding 2 */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xa1"
                     "1",
                     &why));                                           /* data as str */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xc4\x00", &why)); /* empty data */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xc4\x02"
                     "1",
                     &why)); /* bin past the end */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xc6\xff\xff\xff\xff"
                     "1",
                     &why)); /* 4 GiB bin */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xdb\xff\xff\xff\xfft\x00\xc4\x01"
                     "1",
                     &why)); /* 4 GiB str */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x00\xc4\x02"
                     "1,",
                     &why)); /* JSON "1," */
    assert_string_equal(why, "data not well-formed in its encoding");
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x01\xc4\x01\xdd", &why)); /* msgpack array32
                                                                             header only */
    assert_false(DEC("\x97\x01\xa1n\x05\x07\xa1t\x01\xc4\x05\xdd\xff\xff\xff\xff", &why));
    assert_true(DEC("\x97\x01\xa1n\x05\x07\xa1t\x01\xc4\x01\x2a", &why)); /* msgpack 42 */
    assert_false(DEC("", &why));
}

static void test_data_bounds_and_depth(void **state)
{
    uint8_t *buf = malloc(4096);
    char data[2048];
    cluster_envelope_t e;
    const char *why;
    (void)state;
    memset(data, '[', 100);
    memset(data + 100, ']', 100);
    size_t n = encode(buf, 4096, "n", 1, 1, "t", GALE_ENC_JSON, data, 200); /* depth 100 */
    assert_false(cluster_envelope_decode(buf, n, 4096, &e, &why));
    memset(data, '[', 10);
    memset(data + 10, ']', 10);
    n = encode(buf, 4096, "n", 1, 1, "t", GALE_ENC_JSON, data, 20);
    assert_true(cluster_envelope_decode(buf, n, 4096, &e, &why));
    assert_false(cluster_envelope_decode(buf, n, 19, &e, &why)); /* over max_data */
    assert_true(cluster_envelope_decode(buf, n, 20, &e, &why));
    free(buf);
}

/* Data of `depth` nested arrays, the innermost holding `inner` (n bytes). */
static size_t nest(uint8_t *out, unsigned depth, const char *inner, size_t n)
{
    memset(out, 0x91, depth);
    memcpy(out + depth, inner, n);
    return depth + n;
}

/* True if the data converts to a `msg` frame in both encodings, as router_deliver builds them. */
static bool deliverable(const cluster_envelope_t *e)
{
    for (int to = 0; to < GALE_ENC_COUNT; to++) {
        gale_buf_t out;
        gale_buf_init(&out, 0);
        gale_err_t err = gale_encode_msg(&out, (gale_enc_t)to, e->topic, e->topic_len, e->enc,
                                         e->data, e->data_len);
        gale_buf_free(&out);
        if (err != GALE_OK)
            return false;
    }
    return true;
}

/*
 * Regression (fuzz_cluster_envelope): data could be GALE_MAX_DEPTH deep, one
 * level more than a client's pub, so a MessagePack ext at the 64th level
 * (its JSON form one level deeper still) was accepted and then could not be
 * converted: JSON subscribers silently missed it. Data is now bounded like a
 * pub's, and whatever is accepted converts for both encodings.
 */
static void test_data_depth_as_a_pub(void **state)
{
    uint8_t data[256], buf[512];
    cluster_envelope_t e;
    const char *why;
    (void)state;
    /* MessagePack: an ext at the 64th level is refused; at the 63rd it converts. */
    size_t dn = nest(data, 64, "\xd4\x01\x00", 3);
    size_t n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_MSGPACK, (char *)data, dn);
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "data not well-formed in its encoding");
    dn = nest(data, 63, "\xd4\x01\x00", 3);
    n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_MSGPACK, (char *)data, dn);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_true(deliverable(&e));
    /* 64 levels of anything are refused, 63 accepted, in both encodings. */
    dn = nest(data, 64, "\x01", 1);
    n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_MSGPACK, (char *)data, dn);
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_MSGPACK, (char *)data + 1, dn - 1);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_true(deliverable(&e));
    memset(data, '[', 64);
    memset(data + 64, ']', 64);
    n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_JSON, (char *)data, 128);
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    n = encode(buf, sizeof(buf), "n", 1, 1, "t", GALE_ENC_JSON, (char *)data + 1, 126);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_true(deliverable(&e));
    /* The fuzzer's input, minimised (tests/fuzz/corpus/fuzz_cluster_envelope/). */
    static const char found[] =
        "\x97\x01\xa1n\x01\x01\xa1t\x01\xc4\x45\x91\x91\x91\x91\x91\x91\x91\x91\x81\xa0\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x81\xa0\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\xd4\x01\x91";
    assert_false(DEC(found, &why));
    assert_string_equal(why, "data not well-formed in its encoding");
}

static uint64_t rng = 88172645463325252ULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_random_mutations(void **state)
{
    uint8_t good[256], buf[256];
    cluster_envelope_t e;
    const char *why;
    (void)state;
    size_t n = encode(good, sizeof(good), "node-x", 0x1122334455ULL, 300, "a.b.c", GALE_ENC_MSGPACK,
                      "\x82\xa1k\x01\xa1j\xc4\x01\x00", 10);
    assert_true(n > 0);
    for (int i = 0; i < 200000; i++) {
        memcpy(buf, good, n);
        int flips = 1 + (int)(next() % 4);
        for (int k = 0; k < flips; k++)
            buf[next() % n] = (uint8_t)next();
        size_t len = next() % 8 == 0 ? next() % (n + 1) : n;
        if (cluster_envelope_decode(buf, len, 1024, &e, &why)) {
            /* Whatever passes is within bounds and valid. */
            assert_true(e.node >= (char *)buf && e.node + e.node_len <= (char *)buf + len);
            assert_true(e.topic + e.topic_len <= (char *)buf + len);
            assert_true(e.data + e.data_len <= buf + len);
            assert_true(gale_topic_valid(e.topic, e.topic_len));
            assert_true(e.instance != 0 && e.seq != 0);
            assert_true(e.enc == GALE_ENC_JSON || e.enc == GALE_ENC_MSGPACK);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_encode_bounds),
        cmocka_unit_test(test_every_truncation_fails),
        cmocka_unit_test(test_hostile_fields),
        cmocka_unit_test(test_data_bounds_and_depth),
        cmocka_unit_test(test_data_depth_as_a_pub),
        cmocka_unit_test(test_random_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
