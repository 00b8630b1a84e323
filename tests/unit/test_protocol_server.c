/*
 * Unit tests of protocol/'s client side: request encoders (encode_client.c)
 * and the decoder of broker messages (decode_server.c). Encoded requests are
 * checked against the broker's own decoder, gale_decode_request.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_sub_json),
        cmocka_unit_test(test_encode_msgpack_roundtrip),
        cmocka_unit_test(test_encode_pub),
        cmocka_unit_test(test_encode_pub_str_bin),
        cmocka_unit_test(test_decode_reply_json),
        cmocka_unit_test(test_decode_reply_truncation),
        cmocka_unit_test(test_decode_reply_msgpack),
        cmocka_unit_test(test_decode_reply_of_server_encoders),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
