/*
 * Unit tests of protocol/'s client side: request encoders (encode_client.c)
 * and the decoder of broker messages (decode_server.c), the history,
 * recovery and idempotent publish additions included. Encoded requests are
 * checked against the broker's own decoder, gale_decode_request, and the
 * broker's encoders against gale_decode_reply.
 */
#include "test_protocol_util.h"

static const char *payload_str(gale_buf_t *b)
{
    gale_buf_append(b, "", 1);
    b->len--;
    return (const char *)gale_buf_payload(b);
}

/* ---- request encoders ---- */

static void test_encode_sub_json(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 16);
    assert_int_equal(gale_encode_sub(&b, GALE_ENC_JSON, GALE_OP_SUB, true, 7, "a.*", 3), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"sub\",\"id\":7,\"topic\":\"a.*\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub(&b, GALE_ENC_JSON, GALE_OP_UNSUB, false, 0, "x\"y", 3),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"unsub\",\"topic\":\"x\\\"y\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub(&b, GALE_ENC_JSON, GALE_OP_PUB, false, 0, "x", 1),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    assert_int_equal(gale_encode_ping(&b, GALE_ENC_JSON, true, GALE_ID_MAX), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"ping\",\"id\":9007199254740991}");
    gale_buf_free(&b);
}

static void test_encode_msgpack_roundtrip(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_sub(&b, GALE_ENC_MSGPACK, GALE_OP_SUB, true, 300, "a.>", 3),
                     GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f 70 a3 73 75 62 a2 69 64 cd 01 2c"
                     " a5 74 6f 70 69 63 a3 61 2e 3e");
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &req, NULL), GALE_OK);
    assert_int_equal(req.op, GALE_OP_SUB);
    assert_true(req.has_id);
    assert_int_equal(req.id, 300);
    assert_true(req.is_pattern);

    b.len = 0;
    assert_int_equal(gale_encode_ping(&b, GALE_ENC_MSGPACK, false, 0), GALE_OK);
    assert_bytes_hex(b.data, b.len, "81 a2 6f 70 a4 70 69 6e 67");
    gale_buf_free(&b);
}

static void test_encode_pub(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    const char *d = "{\"a\": [1, 2.5]}";
    assert_int_equal(gale_encode_pub(&b, GALE_ENC_JSON, true, 1, "t.x", 3, GALE_ENC_JSON,
                                     (const uint8_t *)d, strlen(d)),
                     GALE_OK);
    assert_memory_equal(
        b.data, "{\"op\":\"pub\",\"id\":1,\"topic\":\"t.x\",\"data\":{\"a\": [1, 2.5]}}", b.len);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, b.data, b.len, &req, NULL), GALE_OK);
    assert_int_equal(req.op, GALE_OP_PUB);
    assert_int_equal(req.data_len, strlen(d));

    /* JSON data sent over MessagePack is converted. */
    b.len = 0;
    assert_int_equal(gale_encode_pub(&b, GALE_ENC_MSGPACK, false, 0, "t", 1, GALE_ENC_JSON,
                                     (const uint8_t *)"[1,-1,true]", 11),
                     GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f 70 a3 70 75 62 a5 74 6f 70 69 63 a1 74 a4 64 61 74 61 93 01 ff c3");
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &req, NULL), GALE_OK);
    assert_bytes_hex(req.data, req.data_len, "93 01 ff c3");

    /* Not convertible: nothing appended. */
    b.len = 0;
    assert_int_equal(gale_encode_pub(&b, GALE_ENC_MSGPACK, false, 0, "t", 1, GALE_ENC_JSON,
                                     (const uint8_t *)"[1,", 3),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

static void test_encode_pub_str_bin(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_pub_str(&b, GALE_ENC_JSON, true, 2, "t", 1,
                                         (const uint8_t *)"say \"hi\"\t\xff", 10),
                     GALE_OK);
    assert_memory_equal(
        b.data,
        "{\"op\":\"pub\",\"id\":2,\"topic\":\"t\",\"data\":\"say \\\"hi\\\"\\t\xef\xbf\xbd\"}",
        b.len);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, b.data, b.len, &req, NULL), GALE_OK);

    b.len = 0;
    assert_int_equal(
        gale_encode_pub_str(&b, GALE_ENC_MSGPACK, false, 0, "t", 1, (const uint8_t *)"a\xff", 2),
        GALE_OK);
    assert_bytes_hex(
        b.data, b.len,
        "83 a2 6f 70 a3 70 75 62 a5 74 6f 70 69 63 a1 74 a4 64 61 74 61 a4 61 ef bf bd");
    b.len = 0;
    assert_int_equal(gale_encode_pub_str(&b, GALE_ENC_MSGPACK, false, 0, "t", 1, NULL, 0), GALE_OK);
    assert_int_equal(b.data[b.len - 1], 0xa0);

    uint8_t big[70000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    size_t sizes[] = {0, 1, 255, 256, 65535, 65536, sizeof(big)};
    const uint8_t heads[] = {0xc4, 0xc4, 0xc4, 0xc5, 0xc5, 0xc6, 0xc6};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        b.len = 0;
        assert_int_equal(gale_encode_pub_bin(&b, true, k, "f.bin", 5, big, sizes[k]), GALE_OK);
        assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &req, NULL), GALE_OK);
        assert_int_equal(req.id, k);
        assert_int_equal(req.data[0], heads[k]);
        size_t hdr = heads[k] == 0xc4 ? 2 : heads[k] == 0xc5 ? 3 : 5;
        assert_int_equal(req.data_len, hdr + sizes[k]);
        if (sizes[k])
            assert_memory_equal(req.data + hdr, big, sizes[k]);
    }
    gale_buf_free(&b);
}

/* ---- request encoders: since, hist, mid ---- */

static void test_encode_sub_since(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 16);
    gale_pos_t since = {"ab1", 3, 42};
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_JSON, true, 9, "c.x", 3, &since), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"sub\",\"id\":9,\"topic\":\"c.x\",\"since\":{\"ep\":\"ab1\","
                        "\"off\":42}}");
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_OK);
    assert_int_equal(req.op, GALE_OP_SUB);
    assert_int_equal(req.id, 9);
    assert_true(req.has_since);
    assert_int_equal(req.since.ep_len, 3);
    assert_memory_equal(req.since.ep, "ab1", 3);
    assert_int_equal(req.since.off, 42);

    /* An epoch that needs escaping comes back unescaped; off 0 and 2^64-1. */
    uint64_t offs[] = {0, UINT64_MAX};
    for (size_t k = 0; k < 2; k++) {
        gale_pos_t esc = {"q\"\\\n", 4, offs[k]};
        for (int e = 0; e < GALE_ENC_COUNT; e++) {
            b.len = b.headroom;
            assert_int_equal(gale_encode_sub_since(&b, (gale_enc_t)e, false, 0, "c.x", 3, &esc),
                             GALE_OK);
            assert_int_equal(gale_decode_request((gale_enc_t)e, gale_buf_payload(&b),
                                                 gale_buf_payload_len(&b), &req, NULL),
                             GALE_OK);
            assert_false(req.has_id);
            assert_true(req.has_since);
            assert_int_equal(req.since.ep_len, 4);
            assert_memory_equal(req.since.ep, "q\"\\\n", 4);
            assert_true(req.since.off == offs[k]);
        }
    }

    /* MessagePack: canonical, the since map last. */
    b.len = b.headroom;
    since.off = 300;
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_MSGPACK, true, 1, "t", 1, &since), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "84 a2 6f 70 a3 73 75 62 a2 69 64 01 a5 74 6f 70 69 63 a1 74"
                     " a5 73 69 6e 63 65 82 a2 65 70 a3 61 62 31 a3 6f 66 66 cd 01 2c");

    /* NULL since: a plain sub. A pattern with since encodes; the broker refuses it. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_JSON, true, 2, "a.>", 3, NULL), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"sub\",\"id\":2,\"topic\":\"a.>\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_JSON, true, 2, "a.>", 3, &since), GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_ERR_BAD_REQUEST);

    /* An empty epoch is a string like any other; a NULL one with a length is a bug. */
    gale_pos_t empty = {NULL, 0, 5};
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_JSON, false, 0, "t", 1, &empty), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"sub\",\"topic\":\"t\",\"since\":{\"ep\":\"\",\"off\":5}}");
    gale_pos_t bad = {NULL, 3, 5};
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_since(&b, GALE_ENC_JSON, false, 0, "t", 1, &bad),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_sub_since(&b, (gale_enc_t)7, false, 0, "t", 1, &since),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    gale_buf_free(&b);
}

static void test_encode_hist(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_hist(&b, GALE_ENC_JSON, true, 4, "h.t", 3, true, 10), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"hist\",\"id\":4,\"topic\":\"h.t\",\"limit\":10}");
    b.len = 0;
    assert_int_equal(gale_encode_hist(&b, GALE_ENC_JSON, false, 0, "h.t", 3, false, 10), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"hist\",\"topic\":\"h.t\"}");

    b.len = 0;
    assert_int_equal(gale_encode_hist(&b, GALE_ENC_MSGPACK, true, 4, "h", 1, true, 0), GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "84 a2 6f 70 a4 68 69 73 74 a2 69 64 04 a5 74 6f 70 69 63 a1 68"
                     " a5 6c 69 6d 69 74 00");
    b.len = 0;
    assert_int_equal(gale_encode_hist(&b, GALE_ENC_MSGPACK, false, 0, "h", 1, false, 0), GALE_OK);
    assert_bytes_hex(b.data, b.len, "82 a2 6f 70 a4 68 69 73 74 a5 74 6f 70 69 63 a1 68");

    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        for (int with = 0; with < 2; with++) {
            b.len = 0;
            assert_int_equal(
                gale_encode_hist(&b, (gale_enc_t)e, true, 77, "h.t", 3, with, UINT64_C(1) << 40),
                GALE_OK);
            assert_int_equal(gale_decode_request((gale_enc_t)e, b.data, b.len, &req, NULL),
                             GALE_OK);
            assert_int_equal(req.op, GALE_OP_HIST);
            assert_int_equal(req.id, 77);
            assert_int_equal(req.topic_len, 3);
            assert_int_equal(req.has_limit, with);
            if (with)
                assert_true(req.limit == UINT64_C(1) << 40);
        }
    }
    /* A pattern encodes; the broker refuses it (history is per topic). */
    b.len = 0;
    assert_int_equal(gale_encode_hist(&b, GALE_ENC_JSON, true, 1, "h.*", 3, false, 0), GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, b.data, b.len, &req, NULL),
                     GALE_ERR_BAD_TOPIC);
    b.len = 0;
    assert_int_equal(gale_encode_hist(&b, (gale_enc_t)-1, true, 1, "h", 1, false, 0),
                     GALE_ERR_INTERNAL);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

static void test_encode_pub_mid(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_pub_mid(&b, GALE_ENC_JSON, true, 5, "t.m", 3, "m-1", 3,
                                         GALE_ENC_JSON, (const uint8_t *)"[1]", 3),
                     GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"pub\",\"id\":5,\"topic\":\"t.m\",\"mid\":\"m-1\",\"data\":[1]}");
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, b.data, b.len, &req, NULL), GALE_OK);
    assert_int_equal(req.op, GALE_OP_PUB);
    assert_int_equal(req.mid_len, 3);
    assert_memory_equal(req.mid, "m-1", 3);
    assert_memory_equal(req.data, "[1]", 3);

    /* MessagePack: mid before data; JSON data converted. */
    b.len = 0;
    assert_int_equal(gale_encode_pub_mid(&b, GALE_ENC_MSGPACK, false, 0, "t", 1, "m", 1,
                                         GALE_ENC_JSON, (const uint8_t *)"true", 4),
                     GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "84 a2 6f 70 a3 70 75 62 a5 74 6f 70 69 63 a1 74 a3 6d 69 64 a1 6d"
                     " a4 64 61 74 61 c3");
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &req, NULL), GALE_OK);
    assert_memory_equal(req.mid, "m", 1);

    /* Without a mid it is gale_encode_pub, byte for byte. */
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_buf_t plain;
        gale_buf_init(&plain, 0);
        b.len = 0;
        assert_int_equal(gale_encode_pub(&plain, (gale_enc_t)e, true, 3, "t", 1, GALE_ENC_JSON,
                                         (const uint8_t *)"{\"a\":1}", 7),
                         GALE_OK);
        assert_int_equal(gale_encode_pub_mid(&b, (gale_enc_t)e, true, 3, "t", 1, NULL, 5,
                                             GALE_ENC_JSON, (const uint8_t *)"{\"a\":1}", 7),
                         GALE_OK);
        assert_int_equal(b.len, plain.len);
        assert_memory_equal(b.data, plain.data, b.len);
        b.len = 0;
        assert_int_equal(gale_encode_pub_mid(&b, (gale_enc_t)e, true, 3, "t", 1, "x", 0,
                                             GALE_ENC_JSON, (const uint8_t *)"{\"a\":1}", 7),
                         GALE_OK);
        assert_memory_equal(b.data, plain.data, b.len);
        gale_buf_free(&plain);
    }

    /* 64 bytes (escapes included) round-trip; 65 are refused with nothing appended. */
    char mid[GALE_MID_MAX + 1];
    memset(mid, '"', sizeof(mid));
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        b.len = 0;
        assert_int_equal(gale_encode_pub_mid(&b, (gale_enc_t)e, true, 1, "t", 1, mid, GALE_MID_MAX,
                                             GALE_ENC_JSON, (const uint8_t *)"0", 1),
                         GALE_OK);
        assert_int_equal(gale_decode_request((gale_enc_t)e, b.data, b.len, &req, NULL), GALE_OK);
        assert_int_equal(req.mid_len, GALE_MID_MAX);
        assert_memory_equal(req.mid, mid, GALE_MID_MAX);
        b.len = 0;
        assert_int_equal(gale_encode_pub_mid(&b, (gale_enc_t)e, true, 1, "t", 1, mid,
                                             GALE_MID_MAX + 1, GALE_ENC_JSON, (const uint8_t *)"0",
                                             1),
                         GALE_ERR_INTERNAL);
        assert_int_equal(b.len, 0);
        /* Data that does not convert: nothing appended. */
        assert_int_equal(gale_encode_pub_mid(&b, (gale_enc_t)e, true, 1, "t", 1, "m", 1,
                                             GALE_ENC_JSON, (const uint8_t *)"[1,", 3),
                         e == GALE_ENC_MSGPACK ? GALE_ERR_BAD_REQUEST : GALE_OK);
        if (e == GALE_ENC_MSGPACK)
            assert_int_equal(b.len, 0);
    }

    /* MessagePack bin data keeps its bytes. */
    uint8_t bin[] = {0xc4, 0x02, 0x00, 0xff};
    b.len = 0;
    assert_int_equal(gale_encode_pub_mid(&b, GALE_ENC_MSGPACK, true, 8, "f", 1, "file-1", 6,
                                         GALE_ENC_MSGPACK, bin, sizeof(bin)),
                     GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &req, NULL), GALE_OK);
    assert_int_equal(req.data_len, sizeof(bin));
    assert_memory_equal(req.data, bin, sizeof(bin));
    assert_memory_equal(req.mid, "file-1", 6);
    gale_buf_free(&b);
}

/* ---- decoding broker messages ---- */

static gale_err_t dec(gale_enc_t enc, const char *s, gale_reply_t *r)
{
    return gale_decode_reply(enc, (const uint8_t *)s, strlen(s), r, NULL);
}

static void test_decode_reply_json(void **state)
{
    (void)state;
    gale_reply_t r;
    assert_int_equal(
        dec(GALE_ENC_JSON,
            "{\"op\":\"hello\",\"v\":1,\"node\":\"n\",\"conn\":\"c\",\"max_msg\":65536}", &r),
        GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_HELLO);
    assert_int_equal(r.v, 1);
    assert_int_equal(r.max_msg, 65536);

    const char *m = "{\"op\":\"msg\",\"topic\":\"a.b\",\"data\":{\"x\": [1]}}";
    assert_int_equal(dec(GALE_ENC_JSON, m, &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a.b", 3);
    assert_ptr_equal(r.topic, m + 21);
    assert_int_equal(r.data_len, 10);
    assert_memory_equal(r.data, "{\"x\": [1]}", 10);
    assert_false(r.bin);

    assert_int_equal(
        dec(GALE_ENC_JSON, "{\"op\":\"msg\",\"topic\":\"a\\\\b\",\"bin\":\"AAE=\"}", &r), GALE_OK);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a\\b", 3);
    assert_true(r.bin);
    assert_memory_equal(r.data, "\"AAE=\"", 6);

    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":42}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ACK);
    assert_true(r.has_id);
    assert_int_equal(r.id, 42);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"pong\"}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_PONG);
    assert_false(r.has_id);

    assert_int_equal(
        dec(GALE_ENC_JSON,
            "{\"op\":\"err\",\"id\":3,\"code\":\"bad_topic\",\"msg\":\"invalid \\\"t\\\" "
            "\\u00e9\"}",
            &r),
        GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ERR);
    assert_int_equal(r.id, 3);
    assert_int_equal(r.code, GALE_ERR_BAD_TOPIC);
    assert_int_equal(r.code_name_len, 9);
    assert_memory_equal(r.msg, "invalid \"t\" \xc3\xa9", r.msg_len);
    assert_false(r.msg_truncated);

    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"err\",\"code\":\"new_code\"}", &r), GALE_OK);
    assert_int_equal(r.code, GALE_ERR_INTERNAL);
    assert_memory_equal(r.code_name, "new_code", 8);
    assert_int_equal(r.msg_len, 0);
    assert_false(r.has_id);

    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"future\",\"x\":1}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_UNKNOWN);

    const char *bad[] = {"",
                         "[1]",
                         "{\"op\":1}",
                         "{\"id\":1}",
                         "{\"op\":\"ack\"}",
                         "{\"op\":\"ack\",\"id\":-1}",
                         "{\"op\":\"msg\",\"topic\":\"a\"}",
                         "{\"op\":\"msg\",\"data\":1}",
                         "{\"op\":\"err\",\"msg\":\"x\"}",
                         "{\"op\":\"pong\"",
                         "{\"op\":\"pong\"} x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = NULL;
        assert_int_equal(
            gale_decode_reply(GALE_ENC_JSON, (const uint8_t *)bad[i], strlen(bad[i]), &r, &why),
            GALE_ERR_BAD_REQUEST);
        assert_non_null(why);
    }
}

static void test_decode_reply_truncation(void **state)
{
    (void)state;
    gale_reply_t r;
    char frame[8192];
    /* A long escaped msg is cut to the buffer, never inside an escape or character. */
    int n = snprintf(frame, sizeof(frame), "{\"op\":\"err\",\"code\":\"limit\",\"msg\":\"");
    for (int i = 0; i < 300; i++)
        n += snprintf(frame + n, sizeof(frame) - (size_t)n, "\\u00e9\\n");
    snprintf(frame + n, sizeof(frame) - (size_t)n, "\"}");
    assert_int_equal(dec(GALE_ENC_JSON, frame, &r), GALE_OK);
    assert_true(r.msg_truncated);
    assert_true(r.msg_len <= sizeof(r._msg_buf));
    assert_true(r.msg_len >= sizeof(r._msg_buf) - 3);
    assert_true(gale_utf8_valid((const uint8_t *)r.msg, r.msg_len));

    /* An escaped topic of 255 bytes fits, 256 does not. */
    for (int len = 255; len <= 256; len++) {
        n = snprintf(frame, sizeof(frame), "{\"op\":\"msg\",\"topic\":\"");
        for (int i = 0; i < len; i++)
            n += snprintf(frame + n, sizeof(frame) - (size_t)n, "\\\"");
        snprintf(frame + n, sizeof(frame) - (size_t)n, "\",\"data\":0}");
        assert_int_equal(dec(GALE_ENC_JSON, frame, &r),
                         len == 255 ? GALE_OK : GALE_ERR_BAD_REQUEST);
        if (len == 255) {
            assert_int_equal(r.topic_len, 255);
            assert_int_equal(r.topic[254], '"');
        }
    }
    /* A surrogate pair at the edge is kept whole or dropped whole. */
    n = snprintf(frame, sizeof(frame), "{\"op\":\"err\",\"code\":\"limit\",\"msg\":\"");
    for (int i = 0; i < 510; i++)
        frame[n++] = 'x';
    n += snprintf(frame + n, sizeof(frame) - (size_t)n, "\\n\\ud83d\\ude00tail\"}");
    assert_int_equal(dec(GALE_ENC_JSON, frame, &r), GALE_OK);
    assert_true(r.msg_truncated);
    assert_int_equal(r.msg_len, 511);
}

static void test_decode_reply_msgpack(void **state)
{
    (void)state;
    gale_reply_t r;
    uint8_t buf[256];
    size_t n;
    /* {"op":"msg","topic":"a","data":bin(2)} */
    n = hex2bin("83 a2 6f 70 a3 6d 73 67 a5 74 6f 70 69 63 a1 61 a4 64 61 74 61 c4 02 00 01", buf,
                sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_memory_equal(r.topic, "a", 1);
    assert_true(r.bin);
    assert_int_equal(r.data_len, 4);
    /* {"op":"ack","id":uint16 300, 1:2} (a non-string key elsewhere is skipped) */
    n = hex2bin("83 a2 6f 70 a3 61 63 6b a2 69 64 cd 01 2c 01 02", buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ACK);
    assert_int_equal(r.id, 300);
    /* {"op":"err","code":"limit","msg":"too many"} */
    n = hex2bin("83 a2 6f 70 a3 65 72 72 a4 63 6f 64 65 a5 6c 69 6d 69 74 a3 6d 73 67 a8 74 6f 6f "
                "20 6d 61 6e 79",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ERR);
    assert_int_equal(r.code, GALE_ERR_LIMIT);
    assert_memory_equal(r.msg, "too many", 8);
    /* Hostile or malformed: a huge array header, a truncated map, a non-map. */
    const char *bad[] = {"81 a2 6f 70 dd ff ff ff ff", "82 a2 6f 70 a3 61 63 6b", "a3 61 63 6b",
                         "81 a2 6f 70 01"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = hex2bin(bad[i], buf, sizeof(buf));
        assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL),
                         GALE_ERR_BAD_REQUEST);
    }
}

/* Every server message the broker's encoders produce decodes back. */
static void test_decode_reply_of_server_encoders(void **state)
{
    (void)state;
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t enc = (gale_enc_t)e;
        gale_buf_t b;
        gale_reply_t r;
        gale_buf_init(&b, 0);
        assert_int_equal(gale_encode_hello(&b, enc, "node-1", "c1", 1234), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_HELLO);
        assert_int_equal(r.max_msg, 1234);
        b.len = 0;
        assert_int_equal(gale_encode_err(&b, enc, true, 5, GALE_ERR_FORBIDDEN, "no \"way\"\n"),
                         GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_ERR);
        assert_int_equal(r.code, GALE_ERR_FORBIDDEN);
        assert_int_equal(r.id, 5);
        assert_int_equal(r.msg_len, 9);
        assert_memory_equal(r.msg, "no \"way\"\n", 9);
        b.len = 0;
        uint8_t bin[] = {0xc4, 0x01, 0x7f};
        assert_int_equal(gale_encode_msg(&b, enc, "x.y", 3, GALE_ENC_MSGPACK, bin, 3), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_MSG);
        assert_true(r.bin);
        if (enc == GALE_ENC_JSON)
            assert_memory_equal(r.data, "\"fw==\"", r.data_len);
        else
            assert_memory_equal(r.data, bin, 3);
        gale_buf_free(&b);
    }
}

/* ---- decoding the additions: positions, recovery, dup, hist ---- */

static void test_decode_reply_positions_json(void **state)
{
    (void)state;
    gale_reply_t r;
    const char *m = "{\"op\":\"msg\",\"topic\":\"c.l\",\"ep\":\"e7\",\"off\":12,\"data\":\"hi\"}";
    assert_int_equal(dec(GALE_ENC_JSON, m, &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_true(r.has_ep);
    assert_int_equal(r.ep_len, 2);
    assert_ptr_equal(r.ep, m + 32);
    assert_true(r.has_off);
    assert_int_equal(r.off, 12);
    assert_memory_equal(r.data, "\"hi\"", 4);
    assert_int_equal(r.recovered, -1);
    assert_false(r.dup);

    /* Without a position (a topic without history). */
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"msg\",\"topic\":\"c\",\"data\":1}", &r),
                     GALE_OK);
    assert_false(r.has_ep);
    assert_false(r.has_off);
    assert_null(r.ep);
    assert_int_equal(r.ep_len, 0);

    /* Mistyped ep/off are ignored, not errors. */
    const char *odd[] = {
        "{\"op\":\"msg\",\"topic\":\"c\",\"ep\":7,\"off\":-1,\"data\":1}",
        "{\"op\":\"msg\",\"topic\":\"c\",\"ep\":null,\"off\":1.5,\"data\":1}",
        "{\"op\":\"msg\",\"topic\":\"c\",\"ep\":[\"x\"],\"off\":\"3\",\"data\":1}",
        "{\"op\":\"msg\",\"topic\":\"c\",\"off\":18446744073709551616,\"data\":1}"};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        assert_int_equal(dec(GALE_ENC_JSON, odd[i], &r), GALE_OK);
        assert_false(r.has_ep);
        assert_false(r.has_off);
    }
    assert_int_equal(dec(GALE_ENC_JSON,
                         "{\"op\":\"msg\",\"topic\":\"c\",\"off\":18446744073709551615,\"data\":1}",
                         &r),
                     GALE_OK);
    assert_true(r.has_off);
    assert_true(r.off == UINT64_MAX);

    /* acks of a sub with since, of a sub without, of a pub (dup or not). */
    assert_int_equal(dec(GALE_ENC_JSON,
                         "{\"op\":\"ack\",\"id\":1,\"recovered\":true,\"ep\":\"E\",\"off\":3}", &r),
                     GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ACK);
    assert_int_equal(r.recovered, 1);
    assert_true(r.has_ep && r.ep_len == 1 && r.ep[0] == 'E');
    assert_true(r.has_off && r.off == 3);
    assert_false(r.dup);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":1,\"recovered\":false}", &r),
                     GALE_OK);
    assert_int_equal(r.recovered, 0);
    assert_false(r.has_ep);
    assert_false(r.has_off);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":2,\"ep\":\"E\",\"off\":0}", &r),
                     GALE_OK);
    assert_int_equal(r.recovered, -1);
    assert_true(r.has_off && r.off == 0);
    assert_int_equal(
        dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":3,\"ep\":\"E\",\"off\":9,\"dup\":true}", &r),
        GALE_OK);
    assert_true(r.dup);
    assert_int_equal(r.off, 9);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":3,\"dup\":false}", &r), GALE_OK);
    assert_false(r.dup);
    /* Not booleans: recovered stays absent, dup false. */
    assert_int_equal(
        dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":3,\"recovered\":\"true\",\"dup\":1}", &r),
        GALE_OK);
    assert_int_equal(r.recovered, -1);
    assert_false(r.dup);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":3,\"recovered\":null}", &r),
                     GALE_OK);
    assert_int_equal(r.recovered, -1);
    /* The first of duplicate keys counts, as for every field. */
    assert_int_equal(
        dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":3,\"recovered\":false,\"recovered\":true}", &r),
        GALE_OK);
    assert_int_equal(r.recovered, 0);
    /* Other ops: recovered stays -1 even when present. */
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"pong\",\"recovered\":true,\"dup\":true}", &r),
                     GALE_OK);
    assert_int_equal(r.recovered, -1);
    assert_false(r.dup);
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"pong\",\"ep\":\"E\",\"off\":1}", &r), GALE_OK);
    assert_false(r.has_ep);
    assert_false(r.has_off);
}

static void test_decode_reply_ep_escaped(void **state)
{
    (void)state;
    gale_reply_t r;
    char frame[2048];
    /* An escaped ep is unescaped into the reply's buffer. */
    assert_int_equal(
        dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":1,\"ep\":\"a\\u003ab\\\"\",\"off\":1}", &r),
        GALE_OK);
    assert_int_equal(r.ep_len, 4);
    assert_memory_equal(r.ep, "a:b\"", 4);
    assert_ptr_equal(r.ep, r._ep_buf);
    /* A long escaped ep is cut to GALE_EP_MAX bytes, never inside a character. */
    int n = snprintf(frame, sizeof(frame), "{\"op\":\"ack\",\"id\":1,\"ep\":\"");
    for (int i = 0; i < 40; i++)
        n += snprintf(frame + n, sizeof(frame) - (size_t)n, "\\u00e9");
    snprintf(frame + n, sizeof(frame) - (size_t)n, "\",\"off\":1}");
    assert_int_equal(dec(GALE_ENC_JSON, frame, &r), GALE_OK);
    assert_true(r.has_ep);
    assert_int_equal(r.ep_len, GALE_EP_MAX);
    assert_true(gale_utf8_valid((const uint8_t *)r.ep, r.ep_len));
    /* An unescaped one points into the frame, whatever its length. */
    n = snprintf(frame, sizeof(frame), "{\"op\":\"ack\",\"id\":1,\"ep\":\"");
    for (int i = 0; i < 100; i++)
        frame[n++] = 'e';
    snprintf(frame + n, sizeof(frame) - (size_t)n, "\",\"off\":1}");
    assert_int_equal(dec(GALE_ENC_JSON, frame, &r), GALE_OK);
    assert_int_equal(r.ep_len, 100);
    assert_ptr_equal(r.ep, frame + 25);
}

/* Collects the items of a decoded hist answer; returns the count, or -1 for a bad item. */
static int hist_items(gale_enc_t enc, const gale_reply_t *r, gale_hist_item_t *items, int cap)
{
    size_t pos = 0;
    int n = 0, res;
    gale_hist_item_t it;
    while ((res = gale_reply_hist_next(enc, r, &pos, &it)) == 1) {
        assert_true(n < cap);
        items[n++] = it;
    }
    if (res < 0)
        return -1;
    assert_int_equal(res, 0);
    /* At the end it stays at the end. */
    assert_int_equal(gale_reply_hist_next(enc, r, &pos, &it), 0);
    return n;
}

static void test_decode_reply_hist_json(void **state)
{
    (void)state;
    gale_reply_t r;
    gale_hist_item_t it[8];
    const char *h = "{\"op\":\"hist\",\"id\":6,\"ep\":\"E1\",\"off\":9,\"msgs\":[{\"off\":8,"
                    "\"data\":{\"a\": [1, 2]}} , {\"bin\":\"AAE=\",\"off\":9}]}";
    assert_int_equal(dec(GALE_ENC_JSON, h, &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_HIST);
    assert_true(r.has_id && r.id == 6);
    assert_true(r.has_ep && r.ep_len == 2 && !memcmp(r.ep, "E1", 2));
    assert_true(r.has_off && r.off == 9);
    assert_non_null(r.msgs);
    assert_int_equal(r.msgs[0], '[');
    assert_int_equal(r.msgs[r.msgs_len - 1], ']');
    assert_int_equal(hist_items(GALE_ENC_JSON, &r, it, 8), 2);
    assert_int_equal(it[0].off, 8);
    assert_false(it[0].bin);
    assert_int_equal(it[0].data_len, 13);
    assert_memory_equal(it[0].data, "{\"a\": [1, 2]}", 13);
    assert_int_equal(it[1].off, 9);
    assert_true(it[1].bin);
    assert_int_equal(it[1].data_len, 6);
    assert_memory_equal(it[1].data, "\"AAE=\"", 6);

    /* A topic without history; no id. */
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"hist\",\"off\":0,\"msgs\":[ ]}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_HIST);
    assert_false(r.has_id);
    assert_false(r.has_ep);
    assert_true(r.has_off && r.off == 0);
    assert_int_equal(hist_items(GALE_ENC_JSON, &r, it, 8), 0);

    /* msgs must be an array. */
    const char *bad[] = {"{\"op\":\"hist\",\"id\":1,\"off\":0}",
                         "{\"op\":\"hist\",\"id\":1,\"off\":0,\"msgs\":{}}",
                         "{\"op\":\"hist\",\"id\":1,\"off\":0,\"msgs\":null}",
                         "{\"op\":\"hist\",\"id\":1,\"off\":0,\"msgs\":\"[]\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(dec(GALE_ENC_JSON, bad[i], &r), GALE_ERR_BAD_REQUEST);

    /* Items that are not {off, data|bin}: the walk stops with -1 at the bad one. */
    const char *bad_items[] = {
        "{\"op\":\"hist\",\"msgs\":[1]}",
        "{\"op\":\"hist\",\"msgs\":[{\"data\":1}]}",
        "{\"op\":\"hist\",\"msgs\":[{\"off\":1}]}",
        "{\"op\":\"hist\",\"msgs\":[{\"off\":-1,\"data\":1}]}",
        "{\"op\":\"hist\",\"msgs\":[{\"off\":\"1\",\"data\":1}]}",
        "{\"op\":\"hist\",\"msgs\":[{\"off\":1,\"bin\":7}]}",
        "{\"op\":\"hist\",\"msgs\":[{\"off\":1,\"data\":1},[]]}",
    };
    for (size_t i = 0; i < sizeof(bad_items) / sizeof(bad_items[0]); i++) {
        assert_int_equal(dec(GALE_ENC_JSON, bad_items[i], &r), GALE_OK);
        assert_int_equal(hist_items(GALE_ENC_JSON, &r, it, 8), -1);
    }
    /* Not a hist answer: nothing to walk. */
    assert_int_equal(dec(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":1,\"msgs\":[{\"off\":1}]}", &r),
                     GALE_OK);
    assert_null(r.msgs);
    assert_int_equal(hist_items(GALE_ENC_JSON, &r, it, 8), 0);
}

static void test_decode_reply_additions_msgpack(void **state)
{
    (void)state;
    gale_reply_t r;
    gale_hist_item_t it[4];
    uint8_t buf[256];
    size_t n;
    /* {"op":"msg","topic":"a","ep":"E","off":7,"data":bin(1)} */
    n = hex2bin("85 a2 6f 70 a3 6d 73 67 a5 74 6f 70 69 63 a1 61 a2 65 70 a1 45"
                " a3 6f 66 66 07 a4 64 61 74 61 c4 01 ff",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_true(r.has_ep && r.ep_len == 1 && r.ep[0] == 'E');
    assert_true(r.has_off && r.off == 7);
    assert_true(r.bin);
    /* {"op":"ack","id":1,"recovered":true,"ep":"E","off":uint16 300} */
    n = hex2bin("85 a2 6f 70 a3 61 63 6b a2 69 64 01 a9 72 65 63 6f 76 65 72 65 64 c3"
                " a2 65 70 a1 45 a3 6f 66 66 cd 01 2c",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.recovered, 1);
    assert_int_equal(r.off, 300);
    assert_false(r.dup);
    /* recovered false; dup true; off as a negative-capable int8 0 (d0 00) */
    n = hex2bin("85 a2 6f 70 a3 61 63 6b a2 69 64 01 a9 72 65 63 6f 76 65 72 65 64 c2"
                " a3 64 75 70 c3 a3 6f 66 66 d0 00",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.recovered, 0);
    assert_true(r.dup);
    assert_true(r.has_off && r.off == 0);
    /* Not booleans, a negative off: ignored. */
    n = hex2bin("85 a2 6f 70 a3 61 63 6b a2 69 64 01 a9 72 65 63 6f 76 65 72 65 64 01"
                " a3 64 75 70 a4 74 72 75 65 a3 6f 66 66 ff",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.recovered, -1);
    assert_false(r.dup);
    assert_false(r.has_off);

    /* {"op":"hist","id":2,"ep":"E","off":3,"msgs":[{"off":2,"data":"x"},{"data":bin,"off":3}]} */
    n = hex2bin("85 a2 6f 70 a4 68 69 73 74 a2 69 64 02 a2 65 70 a1 45 a3 6f 66 66 03"
                " a4 6d 73 67 73 92"
                " 82 a3 6f 66 66 02 a4 64 61 74 61 a1 78"
                " 82 a4 64 61 74 61 c4 02 00 01 a3 6f 66 66 03",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_HIST);
    assert_int_equal(r.off, 3);
    assert_int_equal(r.msgs[0], 0x92);
    assert_int_equal(hist_items(GALE_ENC_MSGPACK, &r, it, 4), 2);
    assert_int_equal(it[0].off, 2);
    assert_false(it[0].bin);
    assert_bytes_hex(it[0].data, it[0].data_len, "a1 78");
    assert_int_equal(it[1].off, 3);
    assert_true(it[1].bin);
    assert_bytes_hex(it[1].data, it[1].data_len, "c4 02 00 01");

    /* Empty msgs; msgs not an array; items not maps or without off/data. */
    n = hex2bin("83 a2 6f 70 a4 68 69 73 74 a3 6f 66 66 00 a4 6d 73 67 73 90", buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(hist_items(GALE_ENC_MSGPACK, &r, it, 4), 0);
    n = hex2bin("83 a2 6f 70 a4 68 69 73 74 a3 6f 66 66 00 a4 6d 73 67 73 80", buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_ERR_BAD_REQUEST);
    n = hex2bin("82 a2 6f 70 a4 68 69 73 74 a3 6f 66 66 00", buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_ERR_BAD_REQUEST);
    const char *bad_items[] = {
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 91 01",
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 91 81 a3 6f 66 66 01",
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 91 81 a4 64 61 74 61 01",
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 91 82 a3 6f 66 66 ff a4 64 61 74 61 01",
        /* JSON's "bin" is not MessagePack's */
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 91 82 a3 6f 66 66 01 a3 62 69 6e a1 78",
        /* the second item is bad */
        "82 a2 6f 70 a4 68 69 73 74 a4 6d 73 67 73 92 82 a3 6f 66 66 01 a4 64 61 74 61 01 c0",
    };
    for (size_t i = 0; i < sizeof(bad_items) / sizeof(bad_items[0]); i++) {
        n = hex2bin(bad_items[i], buf, sizeof(buf));
        assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
        assert_int_equal(hist_items(GALE_ENC_MSGPACK, &r, it, 4), -1);
    }
}

/* The broker's encoders of the additions decode back, in both encodings. */
static void test_decode_reply_of_server_encoders_additions(void **state)
{
    (void)state;
    uint8_t bin[] = {0xc4, 0x02, 0x68, 0x69};
    const char *json = "{\"k\": [true, null]}";
    gale_pos_t pos = {"ep-\"1\"", 6, 41};
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t enc = (gale_enc_t)e;
        gale_buf_t b;
        gale_reply_t r;
        gale_hist_item_t it[4];
        gale_buf_init(&b, 0);

        assert_int_equal(gale_encode_msg_pos(&b, enc, "c.x", 3, &pos, GALE_ENC_JSON,
                                             (const uint8_t *)json, strlen(json)),
                         GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_MSG);
        assert_true(r.has_ep && r.ep_len == 6 && !memcmp(r.ep, "ep-\"1\"", 6));
        assert_true(r.has_off && r.off == 41);
        assert_false(r.bin);

        b.len = 0;
        gale_ack_ext_t x = {&pos, false, 0, 1, false};
        assert_int_equal(gale_encode_ack_ext(&b, enc, 12, &x), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_ACK);
        assert_int_equal(r.id, 12);
        assert_int_equal(r.recovered, 1);
        assert_true(r.has_ep && r.has_off && r.off == 41);
        assert_false(r.dup);
        b.len = 0;
        gale_ack_ext_t d = {NULL, true, 5, -1, true};
        assert_int_equal(gale_encode_ack_ext(&b, enc, 13, &d), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.recovered, -1);
        assert_true(r.dup);
        assert_false(r.has_ep);
        assert_true(r.has_off && r.off == 5);
        b.len = 0;
        gale_ack_ext_t f = {NULL, false, 0, 0, false};
        assert_int_equal(gale_encode_ack_ext(&b, enc, 14, &f), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.recovered, 0);
        assert_false(r.has_ep || r.has_off || r.dup);

        /* hist: a JSON item, a bin item (base64 "bin" in JSON), an empty answer. */
        b.len = 0;
        assert_int_equal(gale_encode_hist_begin(&b, enc, true, 3, &pos, 2), GALE_OK);
        assert_int_equal(gale_encode_hist_item(&b, enc, true, 40, GALE_ENC_JSON,
                                               (const uint8_t *)json, strlen(json)),
                         GALE_OK);
        assert_int_equal(
            gale_encode_hist_item(&b, enc, false, 41, GALE_ENC_MSGPACK, bin, sizeof(bin)), GALE_OK);
        assert_int_equal(gale_encode_hist_end(&b, enc), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_HIST);
        assert_int_equal(r.id, 3);
        assert_true(r.has_ep && r.ep_len == 6);
        assert_true(r.has_off && r.off == 41);
        assert_int_equal(hist_items(enc, &r, it, 4), 2);
        assert_int_equal(it[0].off, 40);
        assert_false(it[0].bin);
        if (enc == GALE_ENC_JSON) {
            assert_int_equal(it[0].data_len, strlen(json));
            assert_memory_equal(it[0].data, json, strlen(json));
        } else {
            gale_buf_t conv;
            gale_buf_init(&conv, 0);
            assert_int_equal(
                gale_convert_data(&conv, GALE_ENC_JSON, enc, it[0].data, it[0].data_len), GALE_OK);
            assert_int_equal(conv.len, 17);
            assert_memory_equal(conv.data, "{\"k\":[true,null]}", 17);
            gale_buf_free(&conv);
        }
        assert_int_equal(it[1].off, 41);
        assert_true(it[1].bin);
        if (enc == GALE_ENC_JSON)
            assert_memory_equal(it[1].data, "\"aGk=\"", it[1].data_len);
        else
            assert_memory_equal(it[1].data, bin, it[1].data_len);

        b.len = 0;
        assert_int_equal(gale_encode_hist_begin(&b, enc, false, 0, NULL, 0), GALE_OK);
        assert_int_equal(gale_encode_hist_end(&b, enc), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_HIST);
        assert_false(r.has_id || r.has_ep);
        assert_true(r.has_off && r.off == 0);
        assert_int_equal(hist_items(enc, &r, it, 4), 0);
        gale_buf_free(&b);
    }
}

/*
 * Data as deep as a pub may carry (GALE_MAX_DEPTH - 1 levels) still decodes in
 * a hist answer, where it sits two levels deeper than in a msg.
 */
static void test_decode_reply_hist_deep_data(void **state)
{
    (void)state;
    char deep[2 * GALE_MAX_DEPTH + 1];
    int levels = GALE_MAX_DEPTH - 1;
    for (int i = 0; i < levels; i++) {
        deep[i] = '[';
        deep[levels + i] = ']';
    }
    deep[2 * levels] = '\0';
    gale_request_t req;
    gale_buf_t p;
    gale_buf_init(&p, 0);
    assert_int_equal(gale_encode_pub(&p, GALE_ENC_JSON, false, 0, "t", 1, GALE_ENC_JSON,
                                     (const uint8_t *)deep, strlen(deep)),
                     GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, p.data, p.len, &req, NULL), GALE_OK);
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t enc = (gale_enc_t)e;
        gale_buf_t b;
        gale_reply_t r;
        gale_hist_item_t it[1];
        gale_buf_init(&b, 0);
        assert_int_equal(gale_encode_hist_begin(&b, enc, true, 1, NULL, 1), GALE_OK);
        assert_int_equal(
            gale_encode_hist_item(&b, enc, true, 1, GALE_ENC_JSON, req.data, req.data_len),
            GALE_OK);
        assert_int_equal(gale_encode_hist_end(&b, enc), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(hist_items(enc, &r, it, 1), 1);
        gale_buf_free(&b);
    }
    gale_buf_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_sub_json),
        cmocka_unit_test(test_encode_msgpack_roundtrip),
        cmocka_unit_test(test_encode_pub),
        cmocka_unit_test(test_encode_pub_str_bin),
        cmocka_unit_test(test_encode_sub_since),
        cmocka_unit_test(test_encode_hist),
        cmocka_unit_test(test_encode_pub_mid),
        cmocka_unit_test(test_decode_reply_json),
        cmocka_unit_test(test_decode_reply_truncation),
        cmocka_unit_test(test_decode_reply_msgpack),
        cmocka_unit_test(test_decode_reply_of_server_encoders),
        cmocka_unit_test(test_decode_reply_positions_json),
        cmocka_unit_test(test_decode_reply_ep_escaped),
        cmocka_unit_test(test_decode_reply_hist_json),
        cmocka_unit_test(test_decode_reply_additions_msgpack),
        cmocka_unit_test(test_decode_reply_of_server_encoders_additions),
        cmocka_unit_test(test_decode_reply_hist_deep_data),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
