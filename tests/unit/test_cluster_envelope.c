/*
 * Unit tests for the cluster envelope (broker/cluster_wire.c): round trips,
 * and decoding of hostile input (it comes from Redis): every truncation,
 * wrong types and versions, lengths past the end, invalid topics and data,
 * trailing bytes, and random mutations that must never crash or pass an
 * invalid field. The same for presence envelopes (cluster_presence_decode,
 * on Redis's own bytes too), the kind of a payload (cluster_envelope_kind),
 * and the Redis key names of history and presence.
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

/* --- tails: 8 (a final true) and 9 (ep and off appended by the publish script) --- */

static cluster_envelope_t sample(uint8_t tail)
{
    cluster_envelope_t e = {.node = "node-1",
                            .node_len = 6,
                            .instance = 0x1122334455667788ULL,
                            .seq = 300,
                            .topic = "chat.room-1",
                            .topic_len = 11,
                            .enc = GALE_ENC_JSON,
                            .data = (const uint8_t *)"{\"a\":[1,2]}",
                            .data_len = 11,
                            .tail = tail};
    return e;
}

static void assert_sample_fields(const cluster_envelope_t *e)
{
    assert_int_equal(e->node_len, 6);
    assert_memory_equal(e->node, "node-1", 6);
    assert_int_equal(e->instance, 0x1122334455667788ULL);
    assert_int_equal(e->seq, 300);
    assert_int_equal(e->topic_len, 11);
    assert_memory_equal(e->topic, "chat.room-1", 11);
    assert_int_equal(e->enc, GALE_ENC_JSON);
    assert_int_equal(e->data_len, 11);
    assert_memory_equal(e->data, "{\"a\":[1,2]}", 11);
}

static void test_tail_0_decodes_without_position(void **state)
{
    uint8_t buf[256];
    cluster_envelope_t in = sample(0), e;
    const char *why;
    (void)state;
    size_t n = cluster_envelope_encode(buf, sizeof(buf), &in);
    assert_true(n > 0);
    assert_int_equal(buf[0], 0x97);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "");
    assert_int_equal(e.tail, 0);
    assert_null(e.ep);
    assert_int_equal(e.ep_len, 0);
    assert_int_equal(e.off, 0);
    assert_sample_fields(&e);
}

/* A reply topic, a no-echo publisher and the MQTT QoS 0 flag: [enc, reply, noecho, flags] in
 * place of enc, for every tail; each field round-trips, and what the decoder must refuse is
 * refused. */
static void test_extended_enc_round_trip(void **state)
{
    (void)state;
    for (int tail = 0; tail <= 8; tail += 8) {
        uint8_t buf[512], again[512];
        cluster_envelope_t in = sample((uint8_t)tail), e;
        const char *why;
        in.reply = "_INBOX.abc.1";
        in.reply_len = 12;
        in.noecho = 1234567;
        in.qos0 = true;
        size_t n = cluster_envelope_encode(buf, sizeof(buf), &in);
        assert_true(n > 0);
        assert_true(n <= cluster_envelope_size_ext(6, 11, 12, 11));
        assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
        assert_sample_fields(&e);
        assert_int_equal(e.reply_len, 12);
        assert_memory_equal(e.reply, "_INBOX.abc.1", 12);
        assert_int_equal(e.noecho, 1234567);
        assert_true(e.qos0);
        assert_int_equal(cluster_envelope_encode(again, sizeof(again), &e), n);
        assert_memory_equal(again, buf, n);
        /* The exact bound fits, one byte less does not. */
        size_t cap = cluster_envelope_size_ext(6, 11, 12, 11);
        assert_int_equal(cluster_envelope_encode(again, cap, &in), n);
        assert_int_equal(cluster_envelope_encode(again, cap - 1, &in), 0);
        /* Only the flag: an empty reply decodes as none. */
        in.reply = NULL;
        in.reply_len = 0;
        in.noecho = 0;
        n = cluster_envelope_encode(buf, sizeof(buf), &in);
        assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
        assert_null(e.reply);
        assert_int_equal(e.noecho, 0);
        assert_true(e.qos0);
        /* A reply that is not a topic, or an unknown flag, is refused. */
        in.reply = "a..b";
        in.reply_len = 4;
        n = cluster_envelope_encode(buf, sizeof(buf), &in);
        assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
        assert_string_equal(why, "bad reply or noecho");
        in.reply = NULL;
        in.reply_len = 0;
        n = cluster_envelope_encode(buf, sizeof(buf), &in);
        size_t flag_at = 0;
        for (size_t i = 0; i < n; i++)
            if (buf[i] == 0x94)
                flag_at = i + 4; /* 0x94, enc, "" (0xa0), noecho 0, flags */
        assert_int_equal(buf[flag_at], 1);
        buf[flag_at] = 2;
        assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    }
}

static void test_tail_8_round_trip(void **state)
{
    uint8_t b0[256], b8[256], again[256];
    cluster_envelope_t in0 = sample(0), in8 = sample(8), e;
    const char *why;
    (void)state;
    size_t n0 = cluster_envelope_encode(b0, sizeof(b0), &in0);
    size_t n8 = cluster_envelope_encode(b8, sizeof(b8), &in8);
    assert_true(n0 > 0);
    /* The same bytes but the header, and one `true` more. */
    assert_int_equal(n8, n0 + 1);
    assert_true(n8 <= cluster_envelope_size(6, 11, 11));
    assert_int_equal(b8[0], 0x98);
    assert_memory_equal(b8 + 1, b0 + 1, n0 - 1);
    assert_int_equal(b8[n8 - 1], 0xc3);
    assert_true(cluster_envelope_decode(b8, n8, 1024, &e, &why));
    assert_string_equal(why, "");
    assert_int_equal(e.tail, 8);
    assert_null(e.ep);
    assert_int_equal(e.off, 0);
    assert_sample_fields(&e);
    /* Encodes again to the same bytes. */
    assert_int_equal(cluster_envelope_encode(again, sizeof(again), &e), n8);
    assert_memory_equal(again, b8, n8);
    /* Exactly the size bound fits; one byte less does not. */
    size_t cap = cluster_envelope_size(6, 11, 11);
    assert_int_equal(cluster_envelope_encode(again, cap, &in8), n8);
    assert_int_equal(cluster_envelope_encode(again, cap - 1, &in8), 0);
    /* Every truncation fails (the last one: the true missing). */
    for (size_t k = 0; k < n8; k++)
        assert_false(cluster_envelope_decode(b8, k, 1024, &e, &why));
    assert_string_equal(why, "bad delivery flag");
}

/* The envelope the publish script stores and publishes: tail 9 from the encoder, then ep
 * (str8 when str8, else fixstr) and off (uint64 when wide, else a positive fixint). */
static size_t with_position(uint8_t *buf, size_t cap, const char *ep, size_t ep_len, bool str8,
                            uint64_t off, bool wide)
{
    cluster_envelope_t in = sample(9);
    size_t n = cluster_envelope_encode(buf, cap, &in);
    assert_true(n > 0 && n + 2 + ep_len + 9 <= cap);
    if (str8) {
        buf[n++] = 0xd9;
        buf[n++] = (uint8_t)ep_len;
    } else {
        assert_true(ep_len < 32);
        buf[n++] = (uint8_t)(0xa0 | ep_len);
    }
    memcpy(buf + n, ep, ep_len);
    n += ep_len;
    if (wide) {
        buf[n++] = 0xcf;
        for (int i = 7; i >= 0; i--)
            buf[n++] = (uint8_t)(off >> (8 * i));
    } else {
        assert_true(off < 128);
        buf[n++] = (uint8_t)off;
    }
    return n;
}

static void test_tail_9_encode_and_decode(void **state)
{
    uint8_t b0[256], b9[256], buf[512];
    cluster_envelope_t in0 = sample(0), in9 = sample(9), e;
    const char *why;
    (void)state;
    /* The encoder writes the header of 9 and the first 7 elements only. */
    size_t n0 = cluster_envelope_encode(b0, sizeof(b0), &in0);
    size_t n9 = cluster_envelope_encode(b9, sizeof(b9), &in9);
    assert_true(n0 > 0);
    assert_int_equal(n9, n0);
    assert_int_equal(b9[0], 0x99);
    assert_memory_equal(b9 + 1, b0 + 1, n0 - 1);
    /* As it stands (no ep and off yet) it is not an envelope. */
    assert_false(cluster_envelope_decode(b9, n9, 1024, &e, &why));
    assert_string_equal(why, "bad stream position");

    /* str8 ep, uint64 off, as the script writes them. */
    size_t n =
        with_position(buf, sizeof(buf), "0123456789abcdef", 16, true, 0x0102030405060708ULL, true);
    assert_int_equal(n, n9 + 2 + 16 + 9);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "");
    assert_int_equal(e.tail, 9);
    assert_sample_fields(&e);
    assert_int_equal(e.ep_len, 16);
    assert_ptr_equal(e.ep, (const char *)buf + n9 + 2);
    assert_memory_equal(e.ep, "0123456789abcdef", 16);
    assert_int_equal(e.off, 0x0102030405060708ULL);
    /* Re-encoding the decoded fields gives the stored bytes up to the position. */
    assert_int_equal(cluster_envelope_encode(b0, sizeof(b0), &e), n9);
    assert_memory_equal(b0, buf, n9);
    /* Every truncation fails, inside the position too. */
    for (size_t k = 0; k < n; k++)
        assert_false(cluster_envelope_decode(buf, k, 1024, &e, &why));

    /* fixstr ep, positive fixint off. */
    n = with_position(buf, sizeof(buf), "ep-7", 4, false, 1, false);
    assert_int_equal(n, n9 + 1 + 4 + 1);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_int_equal(e.tail, 9);
    assert_int_equal(e.ep_len, 4);
    assert_memory_equal(e.ep, "ep-7", 4);
    assert_int_equal(e.off, 1);
    n = with_position(buf, sizeof(buf), "e", 1, false, 127, false);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_int_equal(e.ep_len, 1);
    assert_int_equal(e.off, 127);

    /* The bounds: an ep of GALE_EP_MAX bytes, the largest off. */
    char ep[GALE_EP_MAX + 1];
    memset(ep, 'x', sizeof(ep));
    n = with_position(buf, sizeof(buf), ep, GALE_EP_MAX, true, UINT64_MAX, true);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_int_equal(e.ep_len, GALE_EP_MAX);
    assert_int_equal(e.off, UINT64_MAX);
}

static void test_tail_8_rejected(void **state)
{
    uint8_t buf[256];
    cluster_envelope_t in = sample(0), e;
    const char *why;
    (void)state;
    size_t n = cluster_envelope_encode(buf, sizeof(buf), &in);
    assert_true(n > 0);
    buf[0] = 0x98; /* array of 8 without its final true */
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "bad delivery flag");
    buf[n] = 0xc2; /* false */
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_string_equal(why, "bad delivery flag");
    buf[n] = 0xc0; /* nil */
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    buf[n] = 0x01; /* 1 */
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    buf[n] = 0xc3; /* true: accepted */
    assert_true(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_int_equal(e.tail, 8);
    buf[n + 1] = 0xc3; /* a second true */
    assert_false(cluster_envelope_decode(buf, n + 2, 1024, &e, &why));
    assert_string_equal(why, "bytes after the envelope");
    buf[n + 1] = 0xc0; /* nil after it */
    assert_false(cluster_envelope_decode(buf, n + 2, 1024, &e, &why));
    assert_string_equal(why, "bytes after the envelope");
    /* Arrays of 6 and 10 around it. */
    buf[0] = 0x96;
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_string_equal(why, "not an envelope (array of 7, 8 or 9)");
    buf[0] = 0x9a;
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_string_equal(why, "not an envelope (array of 7, 8 or 9)");
    /* An array of 7 followed by a true: bytes after. */
    buf[0] = 0x97;
    assert_false(cluster_envelope_decode(buf, n + 1, 1024, &e, &why));
    assert_string_equal(why, "bytes after the envelope");
}

/* Decodes the tail-9 envelope of the sample with tail[0..len) after its 7 elements. */
static bool dec9(const char *tail, size_t len, const char **why)
{
    uint8_t buf[512];
    cluster_envelope_t in = sample(9), e;
    size_t n = cluster_envelope_encode(buf, sizeof(buf), &in);
    assert_true(n > 0 && n + len <= sizeof(buf));
    memcpy(buf + n, tail, len);
    return cluster_envelope_decode(buf, n + len, 1024, &e, why);
}

#define DEC9(lit, why) dec9(lit, sizeof(lit) - 1, why)

static void test_tail_9_rejected(void **state)
{
    const char *why;
    (void)state;
    /* The reference: accepted. */
    assert_true(DEC9("\xa2"
                     "ep\x05",
                     &why));
    assert_true(DEC9("\xd9\x02"
                     "ep\xcf\x00\x00\x00\x00\x00\x00\x00\x05",
                     &why));
    /* ep empty (fixstr and str8). */
    assert_false(DEC9("\xa0\x05", &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\xd9\x00\x05", &why));
    assert_string_equal(why, "bad stream position");
    /* ep not a string: bin, uint, nil, true, an array. */
    assert_false(DEC9("\xc4\x02"
                      "ep\x05",
                      &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\x07\x05", &why));
    assert_false(DEC9("\xc0\x05", &why));
    assert_false(DEC9("\xc3\x05", &why));
    assert_false(DEC9("\x91\xa1"
                      "e\x05",
                      &why));
    /* off 0, as a fixint and as a uint64; off negative, a float, a string. */
    assert_false(DEC9("\xa2"
                      "ep\x00",
                      &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\xa2"
                      "ep\xcf\x00\x00\x00\x00\x00\x00\x00\x00",
                      &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\xa2"
                      "ep\xff",
                      &why));
    assert_false(DEC9("\xa2"
                      "ep\xd3\x00\x00\x00\x00\x00\x00\x00\x05",
                      &why));
    assert_false(DEC9("\xa2"
                      "ep\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00",
                      &why));
    assert_false(DEC9("\xa2"
                      "ep\xa1"
                      "5",
                      &why));
    /* off missing, or cut. */
    assert_false(DEC9("\xa2"
                      "ep",
                      &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\xa2"
                      "ep\xcf\x00\x00\x00",
                      &why));
    /* ep and off both missing; ep past the end. */
    assert_false(DEC9("", &why));
    assert_string_equal(why, "bad stream position");
    assert_false(DEC9("\xd9\x10"
                      "ep\x05",
                      &why));
    /* A true where the position belongs (the tail of 8). */
    assert_false(DEC9("\xc3", &why));
    /* Bytes after the position. */
    assert_false(DEC9("\xa2"
                      "ep\x05\xc0",
                      &why));
    assert_string_equal(why, "bytes after the envelope");
    assert_false(DEC9("\xa2"
                      "ep\x05\xc3",
                      &why));
    assert_string_equal(why, "bytes after the envelope");
    assert_false(DEC9("\xa2"
                      "ep\x05\x05",
                      &why));
    assert_string_equal(why, "bytes after the envelope");

    /* ep of 65 bytes (one over GALE_EP_MAX), as str8 and str16; 64 is accepted. */
    char t[80];
    memset(t, 'x', sizeof(t));
    t[0] = (char)0xd9;
    t[1] = GALE_EP_MAX + 1;
    t[2 + GALE_EP_MAX + 1] = 0x05;
    assert_false(dec9(t, 2 + GALE_EP_MAX + 1 + 1, &why));
    assert_string_equal(why, "bad stream position");
    t[1] = GALE_EP_MAX;
    t[2 + GALE_EP_MAX] = 0x05;
    assert_true(dec9(t, 2 + GALE_EP_MAX + 1, &why));
    memset(t, 'x', sizeof(t));
    t[0] = (char)0xda;
    t[1] = 0;
    t[2] = GALE_EP_MAX + 1;
    t[3 + GALE_EP_MAX + 1] = 0x05;
    assert_false(dec9(t, 3 + GALE_EP_MAX + 1 + 1, &why));
    assert_string_equal(why, "bad stream position");
}

static void test_tail_9_header_variants_rejected(void **state)
{
    uint8_t buf[512];
    cluster_envelope_t e;
    const char *why;
    (void)state;
    size_t n = with_position(buf, sizeof(buf), "0123456789abcdef", 16, true, 42, true);
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
    /* The same elements under other array headers. */
    static const uint8_t heads[] = {0x96, 0x9a, 0x97, 0x98, 0x90, 0x9f};
    for (size_t i = 0; i < sizeof(heads); i++) {
        buf[0] = heads[i];
        assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    }
    buf[0] = 0x96;
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "not an envelope (array of 7, 8 or 9)");
    buf[0] = 0x9a;
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "not an envelope (array of 7, 8 or 9)");
    buf[0] = 0x97; /* 7 elements, then the position: bytes after */
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "bytes after the envelope");
    buf[0] = 0x98; /* 7 elements, then a str where the true belongs */
    assert_false(cluster_envelope_decode(buf, n, 1024, &e, &why));
    assert_string_equal(why, "bad delivery flag");
    /* array16 of 9. */
    uint8_t wide[520];
    wide[0] = 0xdc;
    wide[1] = 0x00;
    wide[2] = 0x09;
    memcpy(wide + 3, buf + 1, n - 1);
    assert_false(cluster_envelope_decode(wide, n + 2, 1024, &e, &why));
    buf[0] = 0x99;
    assert_true(cluster_envelope_decode(buf, n, 1024, &e, &why));
}

/* --- Redis key names ------------------------------------------------------ */

static void test_cluster_key(void **state)
{
    char out[CLUSTER_KEY_MAX];
    (void)state;
    assert_int_equal(cluster_key(out, sizeof(out), "gale:", 5, 'h', "a.b", 3, NULL, 0), 10);
    assert_string_equal(out, "gale:h:a.b");
    assert_int_equal(cluster_key(out, sizeof(out), "gale:", 5, 's', "a.b", 3, NULL, 0), 10);
    assert_string_equal(out, "gale:s:a.b");
    /* The mid after a space (a topic has none), kept byte for byte. */
    assert_int_equal(cluster_key(out, sizeof(out), "gale:", 5, 'm', "a.b", 3, "id 1", 4), 15);
    assert_string_equal(out, "gale:m:a.b id 1");
    /* A mid is ignored for 'h' and 's'. */
    assert_int_equal(cluster_key(out, sizeof(out), "gale:", 5, 'h', "a.b", 3, "id", 2), 10);
    assert_string_equal(out, "gale:h:a.b");
    /* No prefix. */
    assert_int_equal(cluster_key(out, sizeof(out), "", 0, 's', "t", 1, NULL, 0), 3);
    assert_string_equal(out, "s:t");
    /* Binary-safe mid: a NUL inside is kept (the length tells). */
    assert_int_equal(cluster_key(out, sizeof(out), "p", 1, 'm', "t", 1, "a\0b", 3), 8);
    assert_memory_equal(out, "pm:t a\0b", 9);

    /* cap: the key and its NUL; one byte less gives 0 and writes nothing. */
    char small[16];
    memset(small, '#', sizeof(small));
    assert_int_equal(cluster_key(small, 10, "gale:", 5, 'h', "a.b", 3, NULL, 0), 0);
    for (size_t i = 0; i < sizeof(small); i++)
        assert_int_equal(small[i], '#');
    assert_int_equal(cluster_key(small, 11, "gale:", 5, 'h', "a.b", 3, NULL, 0), 10);
    assert_string_equal(small, "gale:h:a.b");
    memset(small, '#', sizeof(small));
    assert_int_equal(cluster_key(small, 15, "gale:", 5, 'm', "a.b", 3, "id 1", 4), 0);
    for (size_t i = 0; i < sizeof(small); i++)
        assert_int_equal(small[i], '#');
    assert_int_equal(cluster_key(small, 16, "gale:", 5, 'm', "a.b", 3, "id 1", 4), 15);
    assert_string_equal(small, "gale:m:a.b id 1");
    assert_int_equal(cluster_key(small, 0, "", 0, 'h', "t", 1, NULL, 0), 0);

    /* The longest key fits CLUSTER_KEY_MAX exactly. */
    char prefix[CLUSTER_PREFIX_MAX], topic[GALE_TOPIC_MAX], mid[GALE_MID_MAX];
    memset(prefix, 'p', sizeof(prefix));
    memset(topic, 't', sizeof(topic));
    memset(mid, 'm', sizeof(mid));
    size_t n = cluster_key(out, sizeof(out), prefix, sizeof(prefix), 'm', topic, sizeof(topic), mid,
                           sizeof(mid));
    assert_int_equal(n, CLUSTER_KEY_MAX - 1);
    assert_int_equal(out[n], '\0');
    assert_int_equal(out[CLUSTER_PREFIX_MAX], 'm');
    assert_int_equal(out[CLUSTER_PREFIX_MAX + 1], ':');
    assert_int_equal(out[CLUSTER_PREFIX_MAX + 2 + GALE_TOPIC_MAX], ' ');
    assert_int_equal(cluster_key(out, sizeof(out) - 1, prefix, sizeof(prefix), 'm', topic,
                                 sizeof(topic), mid, sizeof(mid)),
                     0);
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

/* The same with envelopes of tails 8 and 9: whatever passes has a tail matching its header,
 * and a position only with tail 9, within the input, after the data. */
static void test_random_mutations_tails(void **state)
{
    uint8_t good[3][256], buf[256];
    size_t len[3];
    cluster_envelope_t e, in0 = sample(0), in8 = sample(8);
    const char *why;
    (void)state;
    len[0] = cluster_envelope_encode(good[0], sizeof(good[0]), &in0);
    len[1] = cluster_envelope_encode(good[1], sizeof(good[1]), &in8);
    len[2] = with_position(good[2], sizeof(good[2]), "0123456789abcdef", 16, true, 300, true);
    int accepted[3] = {0, 0, 0};
    for (int i = 0; i < 300000; i++) {
        int w = i % 3;
        size_t n = len[w];
        memcpy(buf, good[w], n);
        int flips = 1 + (int)(next() % 3);
        for (int k = 0; k < flips; k++)
            buf[next() % n] = (uint8_t)next();
        size_t l = next() % 8 == 0 ? next() % (n + 1) : n;
        if (!cluster_envelope_decode(buf, l, 1024, &e, &why))
            continue;
        accepted[w]++;
        assert_true(e.node >= (char *)buf && e.node + e.node_len <= (char *)buf + l);
        assert_true(e.topic + e.topic_len <= (char *)buf + l);
        assert_true(e.data + e.data_len <= buf + l);
        assert_true(gale_topic_valid(e.topic, e.topic_len));
        assert_true(e.instance != 0 && e.seq != 0);
        assert_int_equal(e.tail, buf[0] == 0x97 ? 0 : buf[0] == 0x98 ? 8 : 9);
        assert_true(buf[0] >= 0x97 && buf[0] <= 0x99);
        if (e.tail == 9) {
            assert_true(e.ep >= (const char *)e.data + e.data_len &&
                        e.ep + e.ep_len <= (const char *)buf + l);
            assert_true(e.ep_len >= 1 && e.ep_len <= GALE_EP_MAX);
            assert_true(e.off >= 1);
        } else {
            assert_null(e.ep);
            assert_int_equal(e.ep_len, 0);
            assert_int_equal(e.off, 0);
            assert_int_equal(buf[l - 1] == 0xc3 && e.data + e.data_len == buf + l - 1, e.tail == 8);
        }
    }
    /* Mutations that keep an envelope (in its data, ep, off) happen for each kind. */
    assert_true(accepted[0] > 0 && accepted[1] > 0 && accepted[2] > 0);
}

/* --- presence envelopes ------------------------------------------------------ */

/* What Redis 7.0's cmsgpack.pack writes for the presence scripts (captured from
 * tests/integration/test_redis_scripts.py): a join at count 1, a leave at count 200 (uint8). */
static const char redis_join[] = "\x96\x02\xab"
                                 "chat.room-1\x00\x01\xb2"
                                 "00000000000000aa-1\xd9\x39{\"conn\":\"00000000000000aa-1\","
                                 "\"user\":\"ann\",\"info\":{\"n\":1}}";
static const char redis_leave[] = "\x96\x02\xab"
                                  "chat.room-1\x01\xcc\xc8\xb2"
                                  "00000000000000aa-1\xd9\x39{\"conn\":\"00000000000000aa-1\","
                                  "\"user\":\"ann\",\"info\":{\"n\":1}}";

static uint8_t *pput_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    int w = v <= 0xff ? 1 : v <= 0xffff ? 2 : v <= 0xffffffffULL ? 4 : 8;
    *p++ = w == 1 ? 0xcc : w == 2 ? 0xcd : w == 4 ? 0xce : 0xcf;
    for (int i = w - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *pput_str(uint8_t *p, const void *s, size_t n)
{
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else if (n <= 0xff) {
        *p++ = 0xd9;
        *p++ = (uint8_t)n;
    } else if (n <= 0xffff) {
        *p++ = 0xda;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)n;
    } else {
        *p++ = 0xdb;
        for (int i = 3; i >= 0; i--)
            *p++ = (uint8_t)(n >> (8 * i));
    }
    memcpy(p, s, n);
    return p + n;
}

/* [version, topic, kind, count, conn, member] in the smallest forms, as cmsgpack writes it. */
static size_t pres_encode(uint8_t *out, uint64_t version, const char *topic, size_t tlen,
                          uint64_t kind, uint64_t count, const char *conn, size_t clen,
                          const char *member, size_t mlen)
{
    uint8_t *p = out;
    *p++ = 0x96;
    p = pput_uint(p, version);
    p = pput_str(p, topic, tlen);
    p = pput_uint(p, kind);
    p = pput_uint(p, count);
    p = pput_str(p, conn, clen);
    p = pput_str(p, member, mlen);
    return (size_t)(p - out);
}

#define PRES(buf, topic, kind, count, conn, member)                                                \
    pres_encode(buf, 2, topic, strlen(topic), kind, count, conn, strlen(conn), member,             \
                strlen(member))

static const char M1[] = "{\"conn\":\"00000000000000aa-7\",\"user\":\"ann\"}";

static void assert_pres(const cluster_presence_t *e, const char *topic,
                        cluster_presence_kind_t kind, uint64_t count, const char *conn,
                        const char *member, size_t mlen)
{
    assert_int_equal(e->topic_len, strlen(topic));
    assert_memory_equal(e->topic, topic, e->topic_len);
    assert_int_equal(e->kind, kind);
    assert_int_equal(e->count, count);
    assert_int_equal(e->conn_len, strlen(conn));
    assert_memory_equal(e->conn, conn, e->conn_len);
    assert_int_equal(e->member_len, mlen);
    assert_memory_equal(e->member, member, mlen);
}

static void test_presence_decode_valid(void **state)
{
    cluster_presence_t e;
    static const char member[] =
        "{\"conn\":\"00000000000000aa-1\",\"user\":\"ann\",\"info\":{\"n\":1}}";
    (void)state;
    /* Redis's own bytes. */
    assert_true(cluster_presence_decode((const uint8_t *)redis_join, sizeof(redis_join) - 1, &e));
    assert_pres(&e, "chat.room-1", CLUSTER_PRESENCE_JOIN, 1, "00000000000000aa-1", member,
                sizeof(member) - 1);
    assert_ptr_equal(e.topic, redis_join + 3);
    assert_true(cluster_presence_decode((const uint8_t *)redis_leave, sizeof(redis_leave) - 1, &e));
    assert_pres(&e, "chat.room-1", CLUSTER_PRESENCE_LEAVE, 200, "00000000000000aa-1", member,
                sizeof(member) - 1);

    /* Every uint width of count. */
    uint8_t buf[512];
    static const uint64_t counts[] = {
        0, 1, 127, 128, 255, 256, 65535, 65536, UINT32_MAX, (uint64_t)UINT32_MAX + 1, UINT64_MAX};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        size_t n = PRES(buf, "a.b", i % 2, counts[i], "00000000000000aa-7", M1);
        assert_true(cluster_presence_decode(buf, n, &e));
        assert_pres(&e, "a.b", (cluster_presence_kind_t)(i % 2), counts[i], "00000000000000aa-7",
                    M1, sizeof(M1) - 1);
    }
    /* The smallest member, surrounding bytes of the JSON exact. */
    size_t n = PRES(buf, "t", 0, 0, "c", "{}");
    assert_true(cluster_presence_decode(buf, n, &e));
    assert_pres(&e, "t", CLUSTER_PRESENCE_JOIN, 0, "c", "{}", 2);
    /* Whitespace inside the object is JSON. */
    n = PRES(buf, "t", 0, 0, "c", "{ \"a\" : [ 1 , 2 ] }");
    assert_true(cluster_presence_decode(buf, n, &e));
    /* Non-canonical widths are accepted: version uint8, kind uint16, count uint64, topic
     * str8, conn str16, member str32. */
    static const char wide[] = "\x96\xcc\x02\xd9\x01t\xcd\x00\x01\xcf\x00\x00\x00\x00\x00\x00\x00"
                               "\x05\xda\x00\x01"
                               "c\xdb\x00\x00\x00\x02{}";
    assert_true(cluster_presence_decode((const uint8_t *)wide, sizeof(wide) - 1, &e));
    assert_pres(&e, "t", CLUSTER_PRESENCE_LEAVE, 5, "c", "{}", 2);
}

static void test_presence_decode_bounds(void **state)
{
    cluster_presence_t e;
    (void)state;
    size_t cap = CLUSTER_MEMBER_MAX + 1024;
    uint8_t *buf = malloc(cap);
    char *member = malloc(CLUSTER_MEMBER_MAX + 2);
    char conn[CLUSTER_CONN_MAX + 2], topic[GALE_TOPIC_MAX + 2];
    assert_non_null(buf);
    assert_non_null(member);

    /* conn: 1 and CLUSTER_CONN_MAX bytes, every printable byte but the space; one more: no. */
    memset(conn, 'c', sizeof(conn));
    size_t n = pres_encode(buf, 2, "t", 1, 0, 1, conn, CLUSTER_CONN_MAX, "{}", 2);
    assert_true(cluster_presence_decode(buf, n, &e));
    assert_int_equal(e.conn_len, CLUSTER_CONN_MAX);
    n = pres_encode(buf, 2, "t", 1, 0, 1, conn, CLUSTER_CONN_MAX + 1, "{}", 2);
    assert_false(cluster_presence_decode(buf, n, &e));
    for (int c = 0x21; c < 0x7f; c++) {
        conn[0] = (char)c;
        n = pres_encode(buf, 2, "t", 1, 0, 1, conn, 1, "{}", 2);
        assert_true(cluster_presence_decode(buf, n, &e));
    }
    /* topic: GALE_TOPIC_MAX bytes, not one more. */
    memset(topic, 't', sizeof(topic));
    n = pres_encode(buf, 2, topic, GALE_TOPIC_MAX, 0, 1, "c", 1, "{}", 2);
    assert_true(cluster_presence_decode(buf, n, &e));
    assert_int_equal(e.topic_len, GALE_TOPIC_MAX);
    n = pres_encode(buf, 2, topic, GALE_TOPIC_MAX + 1, 0, 1, "c", 1, "{}", 2);
    assert_false(cluster_presence_decode(buf, n, &e));

    /* member: exactly CLUSTER_MEMBER_MAX bytes of JSON (str32), not one more. */
    for (size_t len = CLUSTER_MEMBER_MAX - 1; len <= CLUSTER_MEMBER_MAX + 1; len++) {
        memcpy(member, "{\"a\":\"", 6);
        memset(member + 6, 'x', len - 8);
        memcpy(member + len - 2, "\"}", 2);
        n = pres_encode(buf, 2, "t", 1, 0, 1, "c", 1, member, len);
        assert_int_equal(buf[1 + 1 + 2 + 1 + 1 + 2], 0xdb);
        assert_int_equal(cluster_presence_decode(buf, n, &e), len <= CLUSTER_MEMBER_MAX);
        if (len <= CLUSTER_MEMBER_MAX)
            assert_int_equal(e.member_len, len);
    }
    /* Nesting: CLUSTER_MEMBER_DEPTH levels, not one more. */
    for (unsigned depth = CLUSTER_MEMBER_DEPTH; depth <= CLUSTER_MEMBER_DEPTH + 1; depth++) {
        size_t len = 0;
        member[len++] = '{';
        for (unsigned i = 1; i < depth; i++) {
            memcpy(member + len, "\"a\":{", 5);
            len += 5;
        }
        memset(member + len, '}', depth);
        len += depth;
        n = pres_encode(buf, 2, "t", 1, 0, 1, "c", 1, member, len);
        assert_int_equal(cluster_presence_decode(buf, n, &e), depth <= CLUSTER_MEMBER_DEPTH);
    }
    free(member);
    free(buf);
}

/* Decodes hand-made bytes; on failure checks that e was zeroed. */
static bool pdec(const char *bytes, size_t n)
{
    cluster_presence_t e;
    memset(&e, 0xab, sizeof(e));
    bool ok = cluster_presence_decode((const uint8_t *)bytes, n, &e);
    if (!ok) {
        cluster_presence_t zero;
        memset(&zero, 0, sizeof(zero));
        assert_memory_equal(&e, &zero, sizeof(e));
    }
    return ok;
}

#define PDEC(lit) pdec(lit, sizeof(lit) - 1)

static void test_presence_decode_malformed(void **state)
{
    uint8_t buf[512];
    cluster_presence_t e;
    (void)state;
    /* The reference, then one thing broken at a time. */
    assert_true(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                     "c\xa2{}"));
    /* Wrong element count; array16 and array32 of 6; a map. */
    assert_false(PDEC("\x95\x02\xa1t\x00\x01\xa1"
                      "c"));
    assert_false(PDEC("\x97\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}\xc0"));
    assert_false(PDEC("\x97\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\xdc\x00\x06\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\xdd\x00\x00\x00\x06\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x86\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    /* Wrong version: 1 (a message's), 0, 3, int8 2, str. */
    assert_false(PDEC("\x96\x01\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x00\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x03\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\xd0\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\xa1"
                      "2\xa1t\x00\x01\xa1"
                      "c\xa2{}"));
    /* Bad topic: a pattern, empty, an empty segment, bad UTF-8, a NUL, bin, too long a str. */
    assert_false(PDEC("\x96\x02\xa3"
                      "a.*\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1>\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa0\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa3"
                      "a..\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa2\xc3\x28\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1\x00\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xc4\x01t\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xdb\xff\xff\xff\xfft\x00\x01\xa1"
                      "c\xa2{}"));
    /* kind 2, 255, negative, true, nil. */
    assert_false(PDEC("\x96\x02\xa1t\x02\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\xcc\xff\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\xff\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\xc3\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\xc0\x01\xa1"
                      "c\xa2{}"));
    /* count negative, int64, float, nil, cut. */
    assert_false(PDEC("\x96\x02\xa1t\x00\xff\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\xd3\x00\x00\x00\x00\x00\x00\x00\x01\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\xc0\xa1"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\xcf\x00\x00"));
    /* conn empty, too long, with a space, DEL, a control byte, a NUL, non-ASCII, bin, int. */
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa0\xa2{}"));
    size_t n = pres_encode(buf, 2, "t", 1, 0, 1,
                           "0123456789012345678901234567890123456789012345678901234567890123456789"
                           "012345678901234567890123456",
                           CLUSTER_CONN_MAX + 1, "{}", 2);
    assert_false(cluster_presence_decode(buf, n, &e));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa3"
                      "a b\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1\x7f\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa2"
                      "a\x0a\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa2"
                      "a\x00\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa2\xc3\xa9\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xc4\x01"
                      "c\xa2{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\x07\xa2{}"));
    /* member: not JSON, not an object, surrounding whitespace, two values, bad UTF-8,
     * bin, nil, empty. */
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa1{"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa6{\"a\":}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3{a}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa7{\"a\":1,}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3[1]"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3\"s\""));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa2"
                      "12"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa4null"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3 {}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3{} "));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3{}\n"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa4{}{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa9{\"a\":\"\xc3\x28\"}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa8{\"a\":\"\x01\"}")); /* a raw control character in a string */
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa9{\"a\":NaN}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa8{\"a\":01}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xc4\x02{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xc0"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa0"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\x81\xa1"
                      "a\x01")); /* a map, not a str */
    /* Past the end: member's length, a 4 GiB member. */
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa3{}"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xdb\xff\xff\xff\xff{}"));
    /* Trailing bytes. */
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}\xc0"));
    assert_false(PDEC("\x96\x02\xa1t\x00\x01\xa1"
                      "c\xa2{}\x96"));
    /* Two envelopes back to back. */
    char two[2 * sizeof(redis_join)];
    memcpy(two, redis_join, sizeof(redis_join) - 1);
    memcpy(two + sizeof(redis_join) - 1, redis_join, sizeof(redis_join) - 1);
    assert_false(pdec(two, 2 * (sizeof(redis_join) - 1)));
    /* Nothing. */
    assert_false(cluster_presence_decode(NULL, 0, &e));
    assert_false(PDEC(""));
}

static void test_presence_every_truncation_fails(void **state)
{
    uint8_t buf[256];
    (void)state;
    const char *envs[] = {redis_join, redis_leave};
    size_t lens[] = {sizeof(redis_join) - 1, sizeof(redis_leave) - 1};
    for (int k = 0; k < 2; k++) {
        memcpy(buf, envs[k], lens[k]);
        assert_true(pdec((const char *)buf, lens[k]));
        for (size_t n = 0; n < lens[k]; n++)
            assert_false(pdec((const char *)buf, n));
        for (int c = 0; c < 256; c++) { /* any byte after it */
            buf[lens[k]] = (uint8_t)c;
            assert_false(pdec((const char *)buf, lens[k] + 1));
        }
    }
}

static void test_envelope_kind(void **state)
{
    uint8_t buf[256];
    cluster_envelope_t m;
    cluster_presence_t p;
    const char *why;
    (void)state;
    /* Messages of every tail. */
    for (uint8_t tail = 0; tail <= 9; tail = tail == 0 ? 8 : (uint8_t)(tail + 1)) {
        cluster_envelope_t in = sample(tail);
        size_t n = tail == 9 ? with_position(buf, sizeof(buf), "ep", 2, false, 1, false)
                             : cluster_envelope_encode(buf, sizeof(buf), &in);
        assert_true(cluster_envelope_decode(buf, n, 1024, &m, &why));
        assert_int_equal(cluster_envelope_kind(buf, n), CLUSTER_ENV_MESSAGE);
        assert_int_equal(cluster_envelope_kind(buf, 1), CLUSTER_ENV_MESSAGE); /* header alone */
        assert_false(cluster_presence_decode(buf, n, &p));
    }
    /* Presence. */
    const uint8_t *j = (const uint8_t *)redis_join;
    assert_int_equal(cluster_envelope_kind(j, sizeof(redis_join) - 1), CLUSTER_ENV_PRESENCE);
    assert_false(cluster_envelope_decode(j, sizeof(redis_join) - 1, 1024, &m, &why));
    /* Anything else, by its first byte. */
    for (int c = 0; c < 256; c++) {
        buf[0] = (uint8_t)c;
        cluster_env_kind_t want = c >= 0x97 && c <= 0x99 ? CLUSTER_ENV_MESSAGE
                                  : c == 0x96            ? CLUSTER_ENV_PRESENCE
                                                         : CLUSTER_ENV_UNKNOWN;
        assert_int_equal(cluster_envelope_kind(buf, 1), want);
    }
    assert_int_equal(cluster_envelope_kind(NULL, 0), CLUSTER_ENV_UNKNOWN);
    assert_int_equal(cluster_envelope_kind(buf, 0), CLUSTER_ENV_UNKNOWN);
}

static void test_presence_random_mutations(void **state)
{
    uint8_t good[256], buf[256];
    cluster_presence_t e;
    (void)state;
    size_t n = PRES(good, "a.b.c", 1, 300, "00000000000000aa-42",
                    "{\"conn\":\"x\",\"info\":{\"k\":[1,true,null,\"s\"]}}");
    int accepted = 0;
    for (int i = 0; i < 300000; i++) {
        memcpy(buf, good, n);
        int flips = 1 + (int)(next() % 3);
        for (int k = 0; k < flips; k++)
            buf[next() % n] = (uint8_t)next();
        size_t len = next() % 8 == 0 ? next() % (n + 1) : n;
        if (!cluster_presence_decode(buf, len, &e))
            continue;
        accepted++;
        /* Whatever passes is within bounds, in order, valid, and ends the input. */
        assert_int_equal(cluster_envelope_kind(buf, len), CLUSTER_ENV_PRESENCE);
        assert_true(e.topic > (const char *)buf && e.topic + e.topic_len <= e.conn);
        assert_true(e.conn + e.conn_len <= (const char *)e.member);
        assert_ptr_equal(e.member + e.member_len, buf + len);
        assert_true(gale_topic_valid(e.topic, e.topic_len));
        assert_true(e.kind == CLUSTER_PRESENCE_JOIN || e.kind == CLUSTER_PRESENCE_LEAVE);
        assert_true(e.conn_len >= 1 && e.conn_len <= CLUSTER_CONN_MAX);
        for (size_t k = 0; k < e.conn_len; k++)
            assert_true(e.conn[k] > ' ' && e.conn[k] < 0x7f);
        assert_true(e.member_len >= 2 && e.member[0] == '{' && e.member[e.member_len - 1] == '}');
        assert_true(gale_json_valid(e.member, e.member_len, CLUSTER_MEMBER_DEPTH));
    }
    assert_true(accepted > 0);
}

static void test_presence_key(void **state)
{
    char out[CLUSTER_PRESENCE_KEY_MAX];
    (void)state;
    assert_int_equal(cluster_presence_key(out, sizeof(out), "gale:", 5, 'p', "a.b", 3), 10);
    assert_string_equal(out, "gale:p:a.b");
    assert_int_equal(cluster_presence_key(out, sizeof(out), "gale:", 5, 'z', "a.b", 3), 11);
    assert_string_equal(out, "gale:pz:a.b");
    assert_int_equal(
        cluster_presence_key(out, sizeof(out), "gale:", 5, 'i', "00000000000000aa", 16), 24);
    assert_string_equal(out, "gale:pi:00000000000000aa");
    assert_int_equal(cluster_presence_key(out, sizeof(out), "gale:", 5, 'n', "node-1", 6), 14);
    assert_string_equal(out, "gale:pn:node-1");
    assert_int_equal(cluster_presence_key(out, sizeof(out), "", 0, 'z', "t", 1), 4);
    assert_string_equal(out, "pz:t");
    /* Other kinds: nothing written. */
    static const char others[] = {'h', 's', 'm', 'P', 'Z', '\0', 'x'};
    for (size_t i = 0; i < sizeof(others); i++) {
        memset(out, '#', 8);
        assert_int_equal(cluster_presence_key(out, sizeof(out), "g:", 2, others[i], "t", 1), 0);
        assert_int_equal(out[0], '#');
    }
    /* cap: the key and its NUL; one byte less gives 0 and writes nothing. */
    char small[16];
    memset(small, '#', sizeof(small));
    assert_int_equal(cluster_presence_key(small, 11, "gale:", 5, 'z', "a.b", 3), 0);
    for (size_t i = 0; i < sizeof(small); i++)
        assert_int_equal(small[i], '#');
    assert_int_equal(cluster_presence_key(small, 12, "gale:", 5, 'z', "a.b", 3), 11);
    assert_string_equal(small, "gale:pz:a.b");
    assert_int_equal(cluster_presence_key(small, 0, "", 0, 'p', "t", 1), 0);
    /* The longest (prefix and topic at their maxima, "pz:") fits exactly. */
    char prefix[CLUSTER_PREFIX_MAX], topic[GALE_TOPIC_MAX];
    memset(prefix, 'p', sizeof(prefix));
    memset(topic, 't', sizeof(topic));
    size_t n =
        cluster_presence_key(out, sizeof(out), prefix, sizeof(prefix), 'z', topic, sizeof(topic));
    assert_int_equal(n, CLUSTER_PRESENCE_KEY_MAX - 1);
    assert_int_equal(out[n], '\0');
    assert_memory_equal(out + CLUSTER_PREFIX_MAX, "pz:", 3);
    assert_int_equal(cluster_presence_key(out, sizeof(out) - 1, prefix, sizeof(prefix), 'z', topic,
                                          sizeof(topic)),
                     0);
}

/* The scripts are what the broker loads with SCRIPT LOAD, each its own text naming its
 * keys; their behaviour is tested on a real redis-server (test_redis_scripts.py). */
static void test_presence_scripts(void **state)
{
    const char *scripts[] = {CLUSTER_SCRIPT_PRESENCE_JOIN, CLUSTER_SCRIPT_PRESENCE_LEAVE,
                             CLUSTER_SCRIPT_PRESENCE_SYNC, CLUSTER_SCRIPT_PRESENCE_REFRESH,
                             CLUSTER_SCRIPT_PRESENCE_READ, CLUSTER_SCRIPT_PRESENCE_TAKEOVER};
    (void)state;
    for (int i = 0; i < 6; i++) {
        assert_true(strncmp(scripts[i], "-- gale presence ", 17) == 0);
        assert_non_null(strstr(scripts[i], "cmsgpack.pack({2, topic, kind, n, conn, member})"));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(scripts[i], scripts[j]);
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
        cmocka_unit_test(test_tail_0_decodes_without_position),
        cmocka_unit_test(test_extended_enc_round_trip),
        cmocka_unit_test(test_tail_8_round_trip),
        cmocka_unit_test(test_tail_9_encode_and_decode),
        cmocka_unit_test(test_tail_8_rejected),
        cmocka_unit_test(test_tail_9_rejected),
        cmocka_unit_test(test_tail_9_header_variants_rejected),
        cmocka_unit_test(test_random_mutations_tails),
        cmocka_unit_test(test_cluster_key),
        cmocka_unit_test(test_presence_decode_valid),
        cmocka_unit_test(test_presence_decode_bounds),
        cmocka_unit_test(test_presence_decode_malformed),
        cmocka_unit_test(test_presence_every_truncation_fails),
        cmocka_unit_test(test_envelope_kind),
        cmocka_unit_test(test_presence_random_mutations),
        cmocka_unit_test(test_presence_key),
        cmocka_unit_test(test_presence_scripts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
