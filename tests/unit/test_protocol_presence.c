/*
 * Unit tests of protocol/'s presence addition (docs/PROTOCOL.md "Presence"): decoding of
 * the `presence` op and of a sub's `presence` and `info`; the broker's encoders (member,
 * answer, count-only update, join/leave events), byte-exact in JSON and checked through
 * gale_decode_reply in both encodings; the client's encoders (gale_encode_sub_ext,
 * gale_encode_presence) checked through gale_decode_request; gale_decode_reply's new ops
 * and gale_reply_member_next, on well-formed and hostile frames.
 */
#include "test_protocol_util.h"

static const char *payload_str(gale_buf_t *b)
{
    gale_buf_append(b, "", 1);
    b->len--;
    return (const char *)gale_buf_payload(b);
}

static gale_err_t dec_why(const char *s, gale_request_t *r, const char **why)
{
    *why = NULL;
    return gale_decode_request(GALE_ENC_JSON, (const uint8_t *)s, strlen(s), r, why);
}

static gale_err_t dec_reply(gale_enc_t enc, const char *s, gale_reply_t *r)
{
    return gale_decode_reply(enc, (const uint8_t *)s, strlen(s), r, NULL);
}

/* ---- decoding requests ---- */

static void test_decode_presence_op(void **state)
{
    (void)state;
    gale_request_t r;
    const char *why;
    assert_int_equal(dec_json("{\"op\":\"presence\",\"topic\":\"room.1\",\"id\":3}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PRESENCE);
    assert_true(r.has_id && r.id == 3);
    assert_int_equal(r.topic_len, 6);
    assert_memory_equal(r.topic, "room.1", 6);
    assert_false(r.is_pattern || r.presence);
    assert_null(r.info);
    assert_int_equal(dec_json("{\"topic\":\"r\\u002e2\",\"op\":\"presence\"}", &r), GALE_OK);
    assert_false(r.has_id);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "r.2", 3);
    /* A sub's fields on presence are ignored. */
    assert_int_equal(
        dec_json("{\"op\":\"presence\",\"topic\":\"t\",\"presence\":true,\"info\":{}}", &r),
        GALE_OK);
    assert_false(r.presence);
    assert_null(r.info);

    /* A pattern is bad_topic (as hist), with the id kept for the err. */
    const char *pats[] = {"t.*", "t.>", ">", "*"};
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
        char m[128];
        snprintf(m, sizeof(m), "{\"op\":\"presence\",\"id\":9,\"topic\":\"%s\"}", pats[i]);
        assert_int_equal(dec_why(m, &r, &why), GALE_ERR_BAD_TOPIC);
        assert_string_equal(why, "presence is kept per topic, not per pattern");
        assert_true(r.has_id && r.id == 9);
    }
    assert_int_equal(dec_why("{\"op\":\"presence\",\"topic\":\"a..b\"}", &r, &why),
                     GALE_ERR_BAD_TOPIC);
    assert_string_equal(why, "invalid topic");
    assert_int_equal(dec_why("{\"op\":\"presence\",\"id\":1}", &r, &why), GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "topic is missing");
    assert_int_equal(dec_why("{\"op\":\"presence\",\"topic\":[\"t\"]}", &r, &why),
                     GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "topic is not a string");
    /* The op's name is matched exactly, escapes included. */
    assert_int_equal(dec_json("{\"op\":\"pres\\u0065nce\",\"topic\":\"t\"}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PRESENCE);
    assert_int_equal(dec_json("{\"op\":\"Presence\",\"topic\":\"t\"}", &r), GALE_ERR_UNKNOWN_OP);
    assert_int_equal(dec_json("{\"op\":\"presences\",\"topic\":\"t\"}", &r), GALE_ERR_UNKNOWN_OP);

    uint8_t buf[128];
    assert_int_equal(dec_hex("83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a2 69 64 cd 01 2c"
                             " a5 74 6f 70 69 63 a3 61 2e 62",
                             &r, buf, sizeof(buf)),
                     GALE_OK);
    assert_int_equal(r.op, GALE_OP_PRESENCE);
    assert_int_equal(r.id, 300);
    assert_memory_equal(r.topic, "a.b", 3);
    assert_int_equal(dec_hex("83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a3 74 2e"
                             " 2a a2 69 64 05",
                             &r, buf, sizeof(buf)),
                     GALE_ERR_BAD_TOPIC);
    assert_true(r.has_id && r.id == 5);
}

static void test_decode_sub_presence_flag(void **state)
{
    (void)state;
    gale_request_t r;
    const char *why;
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t.x\",\"presence\":true}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_SUB);
    assert_true(r.presence);
    assert_null(r.info);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t.x\",\"presence\":false}", &r),
                     GALE_OK);
    assert_false(r.presence);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t.x\"}", &r), GALE_OK);
    assert_false(r.presence);
    /* false on a pattern is a plain sub; true is not. */
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t.*\",\"presence\":false}", &r),
                     GALE_OK);
    assert_true(r.is_pattern);
    assert_false(r.presence);
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"id\":4,\"topic\":\"t.>\",\"presence\":true}", &r, &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "presence needs a topic, not a pattern");
    assert_true(r.has_id && r.id == 4);
    assert_false(r.presence);

    /* Not a boolean. */
    const char *vals[] = {"1", "0", "\"true\"", "null", "{}", "[true]", "1.0"};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char m[128];
        snprintf(m, sizeof(m), "{\"op\":\"sub\",\"id\":2,\"topic\":\"t\",\"presence\":%s}",
                 vals[i]);
        assert_int_equal(dec_why(m, &r, &why), GALE_ERR_BAD_REQUEST);
        assert_string_equal(why, "presence is not a boolean");
        assert_true(r.has_id && r.id == 2);
        assert_false(r.presence);
    }
    /* Twice: a duplicate field, even with the same value. */
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"presence\":true,\"presence\":true}", &r, &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "duplicate field");
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"presence\":true,\"pres\\u0065nce\":false}", &r,
                &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "duplicate field");
    /* Other ops ignore it (unsub of a pattern with presence true included). */
    assert_int_equal(dec_json("{\"op\":\"unsub\",\"topic\":\"t.*\",\"presence\":true}", &r),
                     GALE_OK);
    assert_false(r.presence);
    assert_int_equal(dec_json("{\"op\":\"pub\",\"topic\":\"t\",\"data\":1,\"presence\":7}", &r),
                     GALE_OK);
    assert_false(r.presence);
    assert_int_equal(dec_json("{\"op\":\"hist\",\"topic\":\"t\",\"presence\":true}", &r), GALE_OK);
    assert_false(r.presence);
    /* With since: both taken. */
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t\",\"since\":{\"ep\":\"e\",\"off\":1},"
                              "\"presence\":true}",
                              &r),
                     GALE_OK);
    assert_true(r.has_since && r.presence);

    uint8_t buf[128];
    assert_int_equal(dec_hex("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a8 70 72 65 73 65"
                             " 6e 63 65 c3",
                             &r, buf, sizeof(buf)),
                     GALE_OK);
    assert_true(r.presence);
    assert_int_equal(dec_hex("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a3 74 2e 2a a8 70 72 65"
                             " 73 65 6e 63 65 c2",
                             &r, buf, sizeof(buf)),
                     GALE_OK);
    assert_false(r.presence);
    assert_int_equal(dec_hex("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a3 74 2e 2a a8 70 72 65"
                             " 73 65 6e 63 65 c3",
                             &r, buf, sizeof(buf)),
                     GALE_ERR_BAD_REQUEST);
    /* 1, nil, "true" are not booleans in MessagePack either. */
    const char *mp_vals[] = {"01", "c0", "a4 74 72 75 65"};
    for (size_t i = 0; i < sizeof(mp_vals) / sizeof(mp_vals[0]); i++) {
        char hex[256];
        snprintf(hex, sizeof(hex),
                 "83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a8 70 72 65 73 65 6e 63 65 %s",
                 mp_vals[i]);
        size_t n = hex2bin(hex, buf, sizeof(buf));
        assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why),
                         GALE_ERR_BAD_REQUEST);
        assert_string_equal(why, "presence is not a boolean");
    }
}

static void test_decode_sub_info(void **state)
{
    (void)state;
    gale_request_t r;
    const char *why;
    /* JSON: the object's bytes exactly as sent, whitespace inside included. */
    const char *m = "{\"op\":\"sub\",\"topic\":\"room.1\",\"info\": {\"name\": \"Ann\", \"n\": [1, "
                    "2.50]} ,\"id\":1}";
    assert_int_equal(dec_json(m, &r), GALE_OK);
    assert_non_null(r.info);
    assert_ptr_equal(r.info, (const uint8_t *)strstr(m, "{\"name\""));
    assert_int_equal(r.info_len, strlen("{\"name\": \"Ann\", \"n\": [1, 2.50]}"));
    assert_memory_equal(r.info, "{\"name\": \"Ann\", \"n\": [1, 2.50]}", r.info_len);
    assert_false(r.presence);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t\",\"info\":{},\"presence\":true}", &r),
                     GALE_OK);
    assert_true(r.presence);
    assert_int_equal(r.info_len, 2);
    assert_memory_equal(r.info, "{}", 2);

    /* Not an object. */
    const char *vals[] = {"[]", "[{}]", "\"{}\"", "1", "null", "true", "false"};
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        char b[128];
        snprintf(b, sizeof(b), "{\"op\":\"sub\",\"id\":6,\"topic\":\"t\",\"info\":%s}", vals[i]);
        assert_int_equal(dec_why(b, &r, &why), GALE_ERR_BAD_REQUEST);
        assert_string_equal(why, "info is not an object");
        assert_null(r.info);
        assert_int_equal(r.info_len, 0);
        assert_true(r.has_id && r.id == 6);
    }
    /* On a pattern, even an empty object; even with presence false. */
    assert_int_equal(dec_why("{\"op\":\"sub\",\"topic\":\"t.*\",\"info\":{}}", &r, &why),
                     GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "info needs a topic, not a pattern");
    assert_null(r.info);
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"topic\":\">\",\"presence\":false,\"info\":{\"a\":1}}", &r, &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "info needs a topic, not a pattern");
    /* Duplicate. */
    assert_int_equal(dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"info\":{},\"info\":{}}", &r, &why),
                     GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "duplicate field");
    /* Order of the checks: since, then presence, then info. */
    assert_int_equal(dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"since\":1,\"presence\":1,"
                             "\"info\":1}",
                             &r, &why),
                     GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "since is not an object of a string ep and an integer off >= 0");
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"presence\":1,\"info\":1}", &r, &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "presence is not a boolean");
    /* A good presence with a bad info: neither is reported. */
    assert_int_equal(
        dec_why("{\"op\":\"sub\",\"topic\":\"t\",\"presence\":true,\"info\":[]}", &r, &why),
        GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "info is not an object");
    assert_false(r.presence);
    assert_null(r.info);
    /* Other ops ignore it. */
    assert_int_equal(dec_json("{\"op\":\"unsub\",\"topic\":\"t.*\",\"info\":{}}", &r), GALE_OK);
    assert_null(r.info);
    assert_int_equal(dec_json("{\"op\":\"pub\",\"topic\":\"t\",\"data\":1,\"info\":{}}", &r),
                     GALE_OK);
    assert_null(r.info);
    assert_int_equal(dec_json("{\"op\":\"ping\",\"info\":[]}", &r), GALE_OK);
    assert_null(r.info);

    /* Malformed or too deep info makes the whole message malformed. */
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"t\",\"info\":{\"a\":}}", &r),
                     GALE_ERR_BAD_REQUEST);
    /* {"op":"sub","topic":"t","info":{"a":[[...]]}}: nested GALE_MAX_DEPTH deep at most. */
    char deep[300];
    for (int k = GALE_MAX_DEPTH - 2; k <= GALE_MAX_DEPTH - 1; k++) {
        size_t o = (size_t)snprintf(deep, sizeof(deep),
                                    "{\"op\":\"sub\",\"topic\":\"t\",\"info\":{\"a\":");
        memset(deep + o, '[', (size_t)k);
        memset(deep + o + k, ']', (size_t)k);
        o += 2 * (size_t)k;
        memcpy(deep + o, "}}", 3);
        assert_int_equal(dec_json(deep, &r),
                         k == GALE_MAX_DEPTH - 2 ? GALE_OK : GALE_ERR_BAD_REQUEST);
        if (k == GALE_MAX_DEPTH - 2)
            assert_int_equal(r.info_len, 6 + 2 * (size_t)k);
    }

    uint8_t buf[128];
    size_t n;
    n = hex2bin("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a4 69 6e 66 6f 81 a1 61 01", buf,
                sizeof(buf));
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why), GALE_OK);
    assert_ptr_equal(r.info, buf + 21);
    assert_bytes_hex(r.info, r.info_len, "81 a1 61 01");
    /* A map with a non-string key is still a map (the broker converts it). */
    n = hex2bin("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a4 69 6e 66 6f 82 01 02 c0 c3",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why), GALE_OK);
    assert_bytes_hex(r.info, r.info_len, "82 01 02 c0 c3");
    const char *not_maps[] = {"91 01", "90", "a2 7b 7d", "c0", "c4 01 00", "d4 01 00", "01"};
    for (size_t i = 0; i < sizeof(not_maps) / sizeof(not_maps[0]); i++) {
        char hex[256];
        snprintf(hex, sizeof(hex),
                 "83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a4 69 6e 66 6f %s", not_maps[i]);
        n = hex2bin(hex, buf, sizeof(buf));
        assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why),
                         GALE_ERR_BAD_REQUEST);
        assert_string_equal(why, "info is not an object");
    }
    n = hex2bin("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a3 74 2e 2a a4 69 6e 66 6f 80", buf,
                sizeof(buf));
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why), GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "info needs a topic, not a pattern");
    /* A map truncated inside info: malformed. */
    n = hex2bin("83 a2 6f 70 a3 73 75 62 a5 74 6f 70 69 63 a1 74 a4 69 6e 66 6f 82 a1 61 01", buf,
                sizeof(buf));
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, buf, n, &r, &why), GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "malformed MessagePack");
}

/* ---- the broker's encoders ---- */

static void test_encode_member(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 8);
    assert_int_equal(gale_encode_member(&b, "00ab-1", 6, NULL, 0, NULL, 0), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"conn\":\"00ab-1\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_member(&b, "c-2", 3, "ann", 3, NULL, 0), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"conn\":\"c-2\",\"user\":\"ann\"}");
    b.len = b.headroom;
    const char *info = "{\"name\": \"Ann\"}";
    assert_int_equal(gale_encode_member(&b, "c-3", 3, NULL, 0, (const uint8_t *)info, strlen(info)),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"conn\":\"c-3\",\"info\":{\"name\": \"Ann\"}}");
    b.len = b.headroom;
    /* An empty user is a user; strings are escaped, ill-formed UTF-8 becomes U+FFFD. */
    assert_int_equal(gale_encode_member(&b, "c\"\\", 3, "", 0, (const uint8_t *)"{}", 2), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"conn\":\"c\\\"\\\\\",\"user\":\"\",\"info\":{}}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_member(&b, "c", 1, "a\nb\x01\xff\xc3\xa9", 7, NULL, 0), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"conn\":\"c\",\"user\":\"a\\nb\\u0001\xef\xbf\xbd\xc3\xa9\"}");
    assert_true(gale_json_valid(gale_buf_payload(&b), gale_buf_payload_len(&b), 2));
    /* Bad arguments: nothing appended. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_member(&b, "c", 1, NULL, 0, (const uint8_t *)"{}", 0),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    assert_int_equal(gale_encode_member(&b, NULL, 5, NULL, 0, NULL, 0), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"conn\":\"\"}");
    gale_buf_free(&b);
}

static void test_encode_presence_answer_json(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 14);
    const char *m1 = "{\"conn\":\"a-1\"}";
    const char *m2 = "{\"conn\":\"a-2\",\"user\":\"bo\",\"info\":{\"x\": [1]}}";
    assert_int_equal(gale_encode_presence_begin(&b, GALE_ENC_JSON, true, 7, "room.1", 6, 5, 2),
                     GALE_OK);
    assert_int_equal(
        gale_encode_presence_member(&b, GALE_ENC_JSON, true, (const uint8_t *)m1, strlen(m1)),
        GALE_OK);
    assert_int_equal(
        gale_encode_presence_member(&b, GALE_ENC_JSON, false, (const uint8_t *)m2, strlen(m2)),
        GALE_OK);
    assert_int_equal(gale_encode_presence_end(&b, GALE_ENC_JSON), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"presence\",\"id\":7,\"topic\":\"room.1\",\"count\":5,"
                        "\"members\":[{\"conn\":\"a-1\"},{\"conn\":\"a-2\",\"user\":\"bo\","
                        "\"info\":{\"x\": [1]}}]}");

    /* No id, nobody; a topic that needs escaping. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_presence_begin(&b, GALE_ENC_JSON, false, 0, "q\"t", 3, 0, 0),
                     GALE_OK);
    assert_int_equal(gale_encode_presence_end(&b, GALE_ENC_JSON), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"presence\",\"topic\":\"q\\\"t\",\"count\":0,\"members\":[]}");

    /* A member that is not a JSON object without surrounding whitespace is left out. */
    const char *bad[] = {"",    "[]",  "\"x\"", "{", "{\"a\":}",
                         " {}", "{} ", "{}{}",  "1", "{\"a\":\"\xff\"}"};
    b.len = b.headroom;
    assert_int_equal(gale_encode_presence_begin(&b, GALE_ENC_JSON, true, 1, "t", 1, 9, 1), GALE_OK);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t before = b.len;
        assert_int_equal(gale_encode_presence_member(&b, GALE_ENC_JSON, true,
                                                     (const uint8_t *)bad[i], strlen(bad[i])),
                         GALE_ERR_BAD_REQUEST);
        assert_int_equal(b.len, before);
    }
    assert_int_equal(gale_encode_presence_member(&b, GALE_ENC_JSON, true, NULL, 0),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_encode_presence_member(&b, GALE_ENC_JSON, true, (const uint8_t *)"{}", 2),
                     GALE_OK);
    assert_int_equal(gale_encode_presence_end(&b, GALE_ENC_JSON), GALE_OK);
    assert_string_equal(
        payload_str(&b),
        "{\"op\":\"presence\",\"id\":1,\"topic\":\"t\",\"count\":9,\"members\":[{}]}");

    /* The count-only update. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_presence_count(&b, GALE_ENC_JSON, "room.1", 6, 1001), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"presence\",\"topic\":\"room.1\",\"count\":1001}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_presence_count(&b, GALE_ENC_JSON, "t", 1, UINT64_MAX), GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"presence\",\"topic\":\"t\",\"count\":18446744073709551615}");

    /* Bad encodings: nothing appended. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_presence_begin(&b, (gale_enc_t)2, true, 1, "t", 1, 0, 0),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_presence_member(&b, (gale_enc_t)2, true, (const uint8_t *)"{}", 2),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_presence_end(&b, (gale_enc_t)2), GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_presence_count(&b, (gale_enc_t)2, "t", 1, 0), GALE_ERR_INTERNAL);
    assert_int_equal(
        gale_encode_presence_event(&b, (gale_enc_t)2, true, "t", 1, (const uint8_t *)"{}", 2),
        GALE_ERR_INTERNAL);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    gale_buf_free(&b);
}

static void test_encode_presence_event_json(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    const char *m = "{\"conn\":\"0123456789abcdef-42\",\"user\":\"ann\",\"info\":{\"a\":1}}";
    assert_int_equal(gale_encode_presence_event(&b, GALE_ENC_JSON, true, "room.1", 6,
                                                (const uint8_t *)m, strlen(m)),
                     GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"join\",\"topic\":\"room.1\",\"conn\":\"0123456789abcdef-42\","
                        "\"user\":\"ann\",\"info\":{\"a\":1}}");
    b.len = 0;
    assert_int_equal(gale_encode_presence_event(&b, GALE_ENC_JSON, false, "t", 1,
                                                (const uint8_t *)"{\"conn\":\"c\"}", 12),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"leave\",\"topic\":\"t\",\"conn\":\"c\"}");
    /* Whitespace inside the member is kept; an empty member adds nothing. */
    b.len = 0;
    assert_int_equal(gale_encode_presence_event(&b, GALE_ENC_JSON, false, "t", 1,
                                                (const uint8_t *)"{ \"conn\" : \"c\" }", 16),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"leave\",\"topic\":\"t\",\"conn\" : \"c\" }");
    b.len = 0;
    assert_int_equal(
        gale_encode_presence_event(&b, GALE_ENC_JSON, true, "t", 1, (const uint8_t *)"{ \n}", 4),
        GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"join\",\"topic\":\"t\"}");
    b.len = 0;
    const char *bad[] = {"", "[]", "{", "{\"a\"}", " {}", "null", "{}]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        for (int e = 0; e < GALE_ENC_COUNT; e++)
            assert_int_equal(gale_encode_presence_event(&b, (gale_enc_t)e, true, "t", 1,
                                                        (const uint8_t *)bad[i], strlen(bad[i])),
                             GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

static void test_encode_presence_msgpack(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_presence_count(&b, GALE_ENC_MSGPACK, "t", 1, 3), GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a1 74"
                     " a5 63 6f 75 6e 74 03");
    b.len = 0;
    const char *m1 = "{\"conn\":\"c1\"}";
    const char *m2 = "{\"conn\":\"c2\",\"user\":\"u\",\"info\":{\"k\":[1,\"x\"]}}";
    assert_int_equal(gale_encode_presence_begin(&b, GALE_ENC_MSGPACK, true, 7, "t", 1, 2, 2),
                     GALE_OK);
    assert_int_equal(
        gale_encode_presence_member(&b, GALE_ENC_MSGPACK, true, (const uint8_t *)m1, strlen(m1)),
        GALE_OK);
    assert_int_equal(
        gale_encode_presence_member(&b, GALE_ENC_MSGPACK, false, (const uint8_t *)m2, strlen(m2)),
        GALE_OK);
    assert_int_equal(gale_encode_presence_end(&b, GALE_ENC_MSGPACK), GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "85 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a2 69 64 07 a5 74 6f 70 69 63 a1 74"
                     " a5 63 6f 75 6e 74 02 a7 6d 65 6d 62 65 72 73 92 81 a4 63 6f 6e 6e a2 63 31"
                     " 83 a4 63 6f 6e 6e a2 63 32 a4 75 73 65 72 a1 75 a4 69 6e 66 6f 81 a1 6b 92"
                     " 01 a1 78");
    b.len = 0;
    const char *m = "{\"conn\":\"c\",\"user\":\"u\",\"info\":{\"a\":1}}";
    assert_int_equal(gale_encode_presence_event(&b, GALE_ENC_MSGPACK, true, "t", 1,
                                                (const uint8_t *)m, strlen(m)),
                     GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "85 a2 6f 70 a4 6a 6f 69 6e a5 74 6f 70 69 63 a1 74 a4 63 6f 6e 6e a1 63"
                     " a4 75 73 65 72 a1 75 a4 69 6e 66 6f 81 a1 61 01");
    /* An empty member: just op and topic. */
    b.len = 0;
    assert_int_equal(
        gale_encode_presence_event(&b, GALE_ENC_MSGPACK, false, "t", 1, (const uint8_t *)"{}", 2),
        GALE_OK);
    assert_bytes_hex(b.data, b.len, "82 a2 6f 70 a5 6c 65 61 76 65 a5 74 6f 70 69 63 a1 74");
    /* A member of 14 fields: with op and topic, a map16. */
    char big[512];
    size_t o = 0;
    big[o++] = '{';
    for (int i = 0; i < 14; i++)
        o += (size_t)snprintf(big + o, sizeof(big) - o, "%s\"k%d\":%d", i ? "," : "", i, i);
    big[o++] = '}';
    b.len = 0;
    assert_int_equal(
        gale_encode_presence_event(&b, GALE_ENC_MSGPACK, true, "t", 1, (const uint8_t *)big, o),
        GALE_OK);
    assert_int_equal(b.data[0], 0xde);
    assert_int_equal(b.data[1], 0);
    assert_int_equal(b.data[2], 16);
    assert_true(gale_msgpack_prescan(b.data, b.len, 2));
    /* A bad member in MessagePack: nothing appended. */
    b.len = 0;
    assert_int_equal(
        gale_encode_presence_member(&b, GALE_ENC_MSGPACK, true, (const uint8_t *)"{\"a\":", 5),
        GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

/* ---- the client's encoders ---- */

static void test_encode_sub_ext(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 16);
    const char *info = "{\"name\": \"Ann\", \"n\": 1.5}";
    gale_pos_t since = {"ep1", 3, 9};
    assert_int_equal(gale_encode_sub_ext(&b, GALE_ENC_JSON, true, 4, "room.1", 6, &since, true,
                                         (const uint8_t *)info, strlen(info)),
                     GALE_OK);
    assert_string_equal(payload_str(&b),
                        "{\"op\":\"sub\",\"id\":4,\"topic\":\"room.1\",\"since\":{\"ep\":\"ep1\","
                        "\"off\":9},\"presence\":true,\"info\":{\"name\": \"Ann\", \"n\": 1.5}}");
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_OK);
    assert_int_equal(req.op, GALE_OP_SUB);
    assert_true(req.has_since && req.presence);
    assert_int_equal(req.info_len, strlen(info));
    assert_memory_equal(req.info, info, strlen(info));

    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_ext(&b, GALE_ENC_JSON, false, 0, "t", 1, NULL, true, NULL, 99),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"sub\",\"topic\":\"t\",\"presence\":true}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_ext(&b, GALE_ENC_JSON, true, 1, "t", 1, NULL, false,
                                         (const uint8_t *)"{}", 2),
                     GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"sub\",\"id\":1,\"topic\":\"t\",\"info\":{}}");

    /* Without the optional fields: gale_encode_sub (and gale_encode_sub_since), byte for byte. */
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_buf_t plain;
        gale_buf_init(&plain, 16);
        b.len = b.headroom;
        assert_int_equal(gale_encode_sub(&plain, (gale_enc_t)e, GALE_OP_SUB, true, 300, "a.>", 3),
                         GALE_OK);
        assert_int_equal(
            gale_encode_sub_ext(&b, (gale_enc_t)e, true, 300, "a.>", 3, NULL, false, NULL, 0),
            GALE_OK);
        assert_int_equal(b.len, plain.len);
        assert_memory_equal(b.data + b.headroom, plain.data + plain.headroom, b.len - b.headroom);
        plain.len = plain.headroom;
        b.len = b.headroom;
        assert_int_equal(gale_encode_sub_since(&plain, (gale_enc_t)e, true, 3, "t", 1, &since),
                         GALE_OK);
        assert_int_equal(
            gale_encode_sub_ext(&b, (gale_enc_t)e, true, 3, "t", 1, &since, false, NULL, 0),
            GALE_OK);
        assert_int_equal(b.len, plain.len);
        assert_memory_equal(b.data + b.headroom, plain.data + plain.headroom, b.len - b.headroom);
        gale_buf_free(&plain);
    }

    /* MessagePack: info converted to a map. */
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_ext(&b, GALE_ENC_MSGPACK, true, 1, "t", 1, NULL, true,
                                         (const uint8_t *)" {\"a\" : 1} ", 11),
                     GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "85 a2 6f 70 a3 73 75 62 a2 69 64 01 a5 74 6f 70 69 63 a1 74 a8 70 72 65 73"
                     " 65 6e 63 65 c3 a4 69 6e 66 6f 81 a1 61 01");
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_OK);
    assert_true(req.presence);
    assert_bytes_hex(req.info, req.info_len, "81 a1 61 01");
    /* since, presence and info together, both encodings. */
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        b.len = b.headroom;
        assert_int_equal(gale_encode_sub_ext(&b, (gale_enc_t)e, true, 8, "t.u", 3, &since, true,
                                             (const uint8_t *)"{\"a\":[true]}", 12),
                         GALE_OK);
        assert_int_equal(gale_decode_request((gale_enc_t)e, gale_buf_payload(&b),
                                             gale_buf_payload_len(&b), &req, NULL),
                         GALE_OK);
        assert_true(req.has_since && req.since.off == 9 && req.presence && req.id == 8);
        gale_buf_t j;
        gale_buf_init(&j, 0);
        assert_int_equal(
            gale_convert_data(&j, GALE_ENC_JSON, (gale_enc_t)e, req.info, req.info_len), GALE_OK);
        assert_int_equal(j.len, 12);
        assert_memory_equal(j.data, "{\"a\":[true]}", 12);
        gale_buf_free(&j);
    }

    /* info that is not JSON: nothing appended, whatever the encoding. A non-object is sent
     * (the broker refuses it). */
    const char *bad[] = {"", "{", "{\"a\":1,}", "{} {}", "'x'", "{\"a\":\"\xff\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        for (int e = 0; e < GALE_ENC_COUNT; e++) {
            b.len = b.headroom;
            assert_int_equal(gale_encode_sub_ext(&b, (gale_enc_t)e, true, 1, "t", 1, NULL, true,
                                                 (const uint8_t *)bad[i], strlen(bad[i])),
                             GALE_ERR_BAD_REQUEST);
            assert_int_equal(gale_buf_payload_len(&b), 0);
        }
    }
    b.len = b.headroom;
    assert_int_equal(gale_encode_sub_ext(&b, GALE_ENC_JSON, true, 1, "t", 1, NULL, false,
                                         (const uint8_t *)"[1]", 3),
                     GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_ERR_BAD_REQUEST);
    /* A pattern with presence encodes; the broker refuses it. */
    b.len = b.headroom;
    assert_int_equal(
        gale_encode_sub_ext(&b, GALE_ENC_MSGPACK, true, 1, "t.*", 3, NULL, true, NULL, 0), GALE_OK);
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, gale_buf_payload(&b),
                                         gale_buf_payload_len(&b), &req, NULL),
                     GALE_ERR_BAD_REQUEST);
    /* Bad arguments. */
    b.len = b.headroom;
    gale_pos_t bad_since = {NULL, 2, 0};
    assert_int_equal(
        gale_encode_sub_ext(&b, GALE_ENC_JSON, true, 1, "t", 1, &bad_since, false, NULL, 0),
        GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_sub_ext(&b, (gale_enc_t)5, true, 1, "t", 1, NULL, false, NULL, 0),
                     GALE_ERR_INTERNAL);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    gale_buf_free(&b);
}

static void test_encode_presence_request(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t req;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_presence(&b, GALE_ENC_JSON, true, 2, "room.1", 6), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"presence\",\"id\":2,\"topic\":\"room.1\"}");
    b.len = 0;
    assert_int_equal(gale_encode_presence(&b, GALE_ENC_JSON, false, 0, "a\"b", 3), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"presence\",\"topic\":\"a\\\"b\"}");
    b.len = 0;
    assert_int_equal(gale_encode_presence(&b, GALE_ENC_MSGPACK, true, 300, "a.b", 3), GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a2 69 64 cd 01 2c a5 74 6f 70 69 63"
                     " a3 61 2e 62");
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        b.len = 0;
        assert_int_equal(gale_encode_presence(&b, (gale_enc_t)e, true, GALE_ID_MAX, "x.y", 3),
                         GALE_OK);
        assert_int_equal(gale_decode_request((gale_enc_t)e, b.data, b.len, &req, NULL), GALE_OK);
        assert_int_equal(req.op, GALE_OP_PRESENCE);
        assert_true(req.id == GALE_ID_MAX);
        assert_memory_equal(req.topic, "x.y", 3);
        b.len = 0;
        assert_int_equal(gale_encode_presence(&b, (gale_enc_t)e, true, 1, "x.*", 3), GALE_OK);
        assert_int_equal(gale_decode_request((gale_enc_t)e, b.data, b.len, &req, NULL),
                         GALE_ERR_BAD_TOPIC);
    }
    b.len = 0;
    assert_int_equal(gale_encode_presence(&b, (gale_enc_t)-1, true, 1, "t", 1), GALE_ERR_INTERNAL);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

/* ---- decoding the broker's messages ---- */

/* Collects the members of a decoded presence answer; returns the count, or -1 for a bad one. */
static int members(gale_enc_t enc, const gale_reply_t *r, gale_member_t *ms, int cap)
{
    size_t pos = 0;
    int n = 0, res;
    gale_member_t m;
    while ((res = gale_reply_member_next(enc, r, &pos, &m)) == 1) {
        assert_true(n < cap);
        ms[n++] = m;
        /* A copy's strings may point into its own buffers: fix them up. */
        if (m.conn == m._conn_buf)
            ms[n - 1].conn = ms[n - 1]._conn_buf;
        if (m.user == m._user_buf)
            ms[n - 1].user = ms[n - 1]._user_buf;
    }
    if (res < 0)
        return -1;
    assert_int_equal(res, 0);
    assert_int_equal(gale_reply_member_next(enc, r, &pos, &m), 0); /* stays at the end */
    return n;
}

static void test_decode_reply_presence_json(void **state)
{
    (void)state;
    gale_reply_t r;
    gale_member_t ms[8];
    const char *a = "{\"op\":\"presence\",\"id\":7,\"topic\":\"room.1\",\"count\":3,\"members\":["
                    "{\"conn\":\"a-1\"} , {\"info\":{\"x\": [1]},\"user\":\"b\\u00e9\","
                    "\"conn\":\"a\\u002d2\"},{\"conn\":\"a-3\",\"user\":7,\"info\":null}]}";
    assert_int_equal(dec_reply(GALE_ENC_JSON, a, &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_PRESENCE);
    assert_true(r.has_id && r.id == 7);
    assert_int_equal(r.topic_len, 6);
    assert_memory_equal(r.topic, "room.1", 6);
    assert_true(r.has_count && r.count == 3);
    assert_non_null(r.members);
    assert_int_equal(r.members[0], '[');
    assert_int_equal(r.members[r.members_len - 1], ']');
    assert_false(r.has_ep || r.has_off);
    assert_int_equal(members(GALE_ENC_JSON, &r, ms, 8), 3);
    assert_int_equal(ms[0].conn_len, 3);
    assert_memory_equal(ms[0].conn, "a-1", 3);
    assert_false(ms[0].has_user);
    assert_null(ms[0].info);
    assert_int_equal(ms[1].conn_len, 3);
    assert_memory_equal(ms[1].conn, "a-2", 3);
    assert_true(ms[1].has_user);
    assert_int_equal(ms[1].user_len, 3);
    assert_memory_equal(ms[1].user, "b\xc3\xa9", 3);
    assert_false(ms[1].user_truncated);
    assert_int_equal(ms[1].info_len, 10);
    assert_memory_equal(ms[1].info, "{\"x\": [1]}", 10);
    assert_false(ms[2].has_user); /* not a string */
    assert_int_equal(ms[2].info_len, 4);
    assert_memory_equal(ms[2].info, "null", 4);

    /* The count-only update: no members to walk. */
    assert_int_equal(
        dec_reply(GALE_ENC_JSON, "{\"op\":\"presence\",\"topic\":\"t\",\"count\":1001}", &r),
        GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_PRESENCE);
    assert_false(r.has_id);
    assert_true(r.has_count && r.count == 1001);
    assert_null(r.members);
    assert_int_equal(members(GALE_ENC_JSON, &r, ms, 8), 0);
    /* A count that is not an integer >= 0 is not one; empty members. */
    assert_int_equal(dec_reply(GALE_ENC_JSON,
                               "{\"op\":\"presence\",\"topic\":\"t\",\"count\":-1,\"members\":[ ]}",
                               &r),
                     GALE_OK);
    assert_false(r.has_count);
    assert_int_equal(r.count, 0);
    assert_int_equal(members(GALE_ENC_JSON, &r, ms, 8), 0);

    /* Required: a string topic; members, when present, an array. */
    const char *bad[] = {
        "{\"op\":\"presence\",\"count\":1,\"members\":[]}",
        "{\"op\":\"presence\",\"topic\":1,\"count\":1,\"members\":[]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"count\":1,\"members\":{}}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"count\":1,\"members\":null}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"count\":1,\"members\":\"[]\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(dec_reply(GALE_ENC_JSON, bad[i], &r), GALE_ERR_BAD_REQUEST);

    /* Members that are not objects with a string conn: the walk stops with -1 at the bad one. */
    const char *bad_members[] = {
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[1]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[[]]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{}]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{\"user\":\"u\"}]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{\"conn\":1}]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{\"conn\":null}]}",
        "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{\"conn\":\"c\"},\"c\"]}",
    };
    for (size_t i = 0; i < sizeof(bad_members) / sizeof(bad_members[0]); i++) {
        assert_int_equal(dec_reply(GALE_ENC_JSON, bad_members[i], &r), GALE_OK);
        assert_int_equal(members(GALE_ENC_JSON, &r, ms, 8), -1);
    }
    /* Not a presence answer: nothing to walk. */
    assert_int_equal(
        dec_reply(GALE_ENC_JSON, "{\"op\":\"ack\",\"id\":1,\"members\":[{\"conn\":\"c\"}]}", &r),
        GALE_OK);
    assert_null(r.members);
    assert_false(r.has_count);
    assert_int_equal(members(GALE_ENC_JSON, &r, ms, 8), 0);
}

static void test_decode_reply_events_json(void **state)
{
    (void)state;
    gale_reply_t r;
    const char *j = "{\"op\":\"join\",\"topic\":\"room.1\",\"conn\":\"0123456789abcdef-1\","
                    "\"user\":\"ann\",\"info\":{\"a\": 1}}";
    assert_int_equal(dec_reply(GALE_ENC_JSON, j, &r), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_JOIN);
    assert_false(r.has_id);
    assert_memory_equal(r.topic, "room.1", 6);
    assert_int_equal(r.conn_len, 18);
    assert_ptr_equal(r.conn, j + strlen("{\"op\":\"join\",\"topic\":\"room.1\",\"conn\":\""));
    assert_true(r.has_user && r.user_len == 3 && !memcmp(r.user, "ann", 3));
    assert_int_equal(r.info_len, 8);
    assert_memory_equal(r.info, "{\"a\": 1}", 8);
    assert_null(r.members);
    assert_false(r.has_count);

    assert_int_equal(dec_reply(GALE_ENC_JSON,
                               "{\"conn\":\"c\",\"topic\":\"t\",\"op\":\"leave\",\"user\":[]}", &r),
                     GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_LEAVE);
    assert_memory_equal(r.conn, "c", 1);
    assert_false(r.has_user);
    assert_null(r.user);
    assert_null(r.info);

    const char *bad[] = {
        "{\"op\":\"join\",\"conn\":\"c\"}",
        "{\"op\":\"join\",\"topic\":\"t\"}",
        "{\"op\":\"leave\",\"topic\":\"t\",\"conn\":7}",
        "{\"op\":\"leave\",\"topic\":null,\"conn\":\"c\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(dec_reply(GALE_ENC_JSON, bad[i], &r), GALE_ERR_BAD_REQUEST);

    /* hello's conn. */
    assert_int_equal(dec_reply(GALE_ENC_JSON,
                               "{\"op\":\"hello\",\"v\":1,\"node\":\"n\",\"conn\":\"00ff-3\","
                               "\"max_msg\":10}",
                               &r),
                     GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_HELLO);
    assert_true(r.conn_len == 6 && !memcmp(r.conn, "00ff-3", 6));
    assert_int_equal(dec_reply(GALE_ENC_JSON, "{\"op\":\"hello\",\"v\":1,\"conn\":3}", &r),
                     GALE_OK);
    assert_null(r.conn);
    /* conn on other ops is not read. */
    assert_int_equal(
        dec_reply(GALE_ENC_JSON, "{\"op\":\"pong\",\"conn\":\"c\",\"user\":\"u\"}", &r), GALE_OK);
    assert_null(r.conn);
    assert_false(r.has_user);
}

/* Escaped strings: a user is cut to its buffer (and said so), a conn or topic too long is an
 * error. */
static void test_decode_reply_presence_escapes(void **state)
{
    (void)state;
    gale_reply_t r;
    gale_member_t ms[2];
    char f[8192];
    /* A user of 300 escaped "\u00e9" (2 bytes each): cut at 128 whole characters. */
    size_t o = (size_t)snprintf(f, sizeof(f),
                                "{\"op\":\"join\",\"topic\":\"t\",\"conn\":\"c\",\"user\":\"");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(f + o, sizeof(f) - o, "\\u00e9");
    o += (size_t)snprintf(f + o, sizeof(f) - o, "\"}");
    assert_int_equal(dec_reply(GALE_ENC_JSON, f, &r), GALE_OK);
    assert_true(r.has_user && r.user_truncated);
    assert_int_equal(r.user_len, 256);
    assert_ptr_equal(r.user, r._user_buf);
    for (int i = 0; i < 128; i++)
        assert_memory_equal(r.user + 2 * i, "\xc3\xa9", 2);
    /* Unescaped, a long user is not cut: it is the frame's own bytes. */
    o = (size_t)snprintf(f, sizeof(f),
                         "{\"op\":\"join\",\"topic\":\"t\",\"conn\":\"c\",\"user\":\"");
    memset(f + o, 'u', 1000);
    o += 1000;
    o += (size_t)snprintf(f + o, sizeof(f) - o, "\"}");
    assert_int_equal(dec_reply(GALE_ENC_JSON, f, &r), GALE_OK);
    assert_false(r.user_truncated);
    assert_int_equal(r.user_len, 1000);
    /* A conn that unescapes to 64 bytes fits; 65 do not. */
    for (int len = 64; len <= 65; len++) {
        o = (size_t)snprintf(f, sizeof(f), "{\"op\":\"leave\",\"topic\":\"t\",\"conn\":\"");
        for (int i = 0; i < len; i++)
            o += (size_t)snprintf(f + o, sizeof(f) - o, "\\u0041");
        o += (size_t)snprintf(f + o, sizeof(f) - o, "\"}");
        assert_int_equal(dec_reply(GALE_ENC_JSON, f, &r),
                         len == 64 ? GALE_OK : GALE_ERR_BAD_REQUEST);
        if (len == 64) {
            assert_int_equal(r.conn_len, 64);
            assert_ptr_equal(r.conn, r._conn_buf);
        }
        /* The same in a presence answer's member. */
        o = (size_t)snprintf(f, sizeof(f),
                             "{\"op\":\"presence\",\"topic\":\"t\",\"members\":[{\"conn\":\"");
        for (int i = 0; i < len; i++)
            o += (size_t)snprintf(f + o, sizeof(f) - o, "\\u0041");
        o += (size_t)snprintf(f + o, sizeof(f) - o, "\"}]}");
        assert_int_equal(dec_reply(GALE_ENC_JSON, f, &r), GALE_OK);
        assert_int_equal(members(GALE_ENC_JSON, &r, ms, 2), len == 64 ? 1 : -1);
    }
    /* A topic that unescapes past GALE_TOPIC_MAX. */
    o = (size_t)snprintf(f, sizeof(f), "{\"op\":\"presence\",\"count\":1,\"topic\":\"");
    for (int i = 0; i < GALE_TOPIC_MAX + 1; i++)
        o += (size_t)snprintf(f + o, sizeof(f) - o, "\\u0074");
    o += (size_t)snprintf(f + o, sizeof(f) - o, "\"}");
    assert_int_equal(dec_reply(GALE_ENC_JSON, f, &r), GALE_ERR_BAD_REQUEST);
}

static void test_decode_reply_presence_msgpack(void **state)
{
    (void)state;
    gale_reply_t r;
    gale_member_t ms[4];
    uint8_t buf[256];
    size_t n = hex2bin("85 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a2 69 64 07 a5 74 6f 70 69 63 a1 74"
                       " a5 63 6f 75 6e 74 02 a7 6d 65 6d 62 65 72 73 92 81 a4 63 6f 6e 6e a2 63 31"
                       " 83 a4 63 6f 6e 6e a2 63 32 a4 75 73 65 72 a1 75 a4 69 6e 66 6f 81 a1 6b 92"
                       " 01 a1 78",
                       buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_PRESENCE);
    assert_true(r.has_id && r.id == 7 && r.has_count && r.count == 2);
    assert_int_equal(r.members[0], 0x92);
    assert_int_equal(members(GALE_ENC_MSGPACK, &r, ms, 4), 2);
    assert_true(ms[0].conn_len == 2 && !memcmp(ms[0].conn, "c1", 2));
    assert_false(ms[0].has_user);
    assert_null(ms[0].info);
    assert_true(ms[1].has_user && ms[1].user_len == 1 && ms[1].user[0] == 'u');
    assert_bytes_hex(ms[1].info, ms[1].info_len, "81 a1 6b 92 01 a1 78");

    /* join: */
    n = hex2bin("85 a2 6f 70 a4 6a 6f 69 6e a5 74 6f 70 69 63 a1 74 a4 63 6f 6e 6e a1 63"
                " a4 75 73 65 72 a1 75 a4 69 6e 66 6f 81 a1 61 01",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_JOIN);
    assert_true(r.conn_len == 1 && r.conn[0] == 'c');
    assert_true(r.has_user && r.user_len == 1);
    assert_bytes_hex(r.info, r.info_len, "81 a1 61 01");
    /* leave with a bin conn: not a string. */
    n = hex2bin("83 a2 6f 70 a5 6c 65 61 76 65 a5 74 6f 70 69 63 a1 74 a4 63 6f 6e 6e c4 01 63",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_ERR_BAD_REQUEST);

    /* members not an array; empty; bad members. */
    n = hex2bin("83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a1 74 a7 6d 65 6d 62 65"
                " 72 73 80",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_ERR_BAD_REQUEST);
    n = hex2bin("83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a1 74 a7 6d 65 6d 62 65"
                " 72 73 90",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(members(GALE_ENC_MSGPACK, &r, ms, 4), 0);
    const char *bad_members[] = {"91 01", "91 90", "91 80", "91 81 a4 63 6f 6e 6e 01",
                                 "91 81 a4 63 6f 6e 6e c4 01 63",
                                 /* a non-string key is skipped: conn missing */
                                 "91 81 01 a1 63",
                                 /* the second one is bad */
                                 "92 81 a4 63 6f 6e 6e a1 63 c0"};
    for (size_t i = 0; i < sizeof(bad_members) / sizeof(bad_members[0]); i++) {
        char hex[256];
        snprintf(hex, sizeof(hex),
                 "83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a1 74 a7 6d 65 6d 62 65"
                 " 72 73 %s",
                 bad_members[i]);
        n = hex2bin(hex, buf, sizeof(buf));
        assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
        assert_int_equal(members(GALE_ENC_MSGPACK, &r, ms, 4), -1);
    }
    /* A member with a non-string key besides conn is fine. */
    n = hex2bin("83 a2 6f 70 a8 70 72 65 73 65 6e 63 65 a5 74 6f 70 69 63 a1 74 a7 6d 65 6d 62 65"
                " 72 73 91 82 01 02 a4 63 6f 6e 6e a1 63",
                buf, sizeof(buf));
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, buf, n, &r, NULL), GALE_OK);
    assert_int_equal(members(GALE_ENC_MSGPACK, &r, ms, 4), 1);
}

/* The broker's encoders decode back, in both encodings, members and events alike. */
static void test_round_trips(void **state)
{
    (void)state;
    gale_buf_t m1, m2, m3;
    gale_buf_init(&m1, 0);
    gale_buf_init(&m2, 0);
    gale_buf_init(&m3, 0);
    const char *info = "{\"name\": \"Ann \\\"A\\\"\", \"tags\": [\"x\", 1.5, null]}";
    assert_int_equal(gale_encode_member(&m1, "0123456789abcdef-1", 18, NULL, 0, NULL, 0), GALE_OK);
    assert_int_equal(gale_encode_member(&m2, "0123456789abcdef-2", 18, "u\"ser\n", 6,
                                        (const uint8_t *)info, strlen(info)),
                     GALE_OK);
    assert_int_equal(gale_encode_member(&m3, "x-3", 3, "", 0, (const uint8_t *)"{}", 2), GALE_OK);
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t enc = (gale_enc_t)e;
        gale_buf_t b;
        gale_reply_t r;
        gale_member_t ms[4];
        gale_buf_init(&b, 0);
        assert_int_equal(gale_encode_presence_begin(&b, enc, true, 11, "chat.room", 9, 1234, 3),
                         GALE_OK);
        assert_int_equal(gale_encode_presence_member(&b, enc, true, m1.data, m1.len), GALE_OK);
        assert_int_equal(gale_encode_presence_member(&b, enc, false, m2.data, m2.len), GALE_OK);
        assert_int_equal(gale_encode_presence_member(&b, enc, false, m3.data, m3.len), GALE_OK);
        assert_int_equal(gale_encode_presence_end(&b, enc), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_PRESENCE);
        assert_true(r.has_id && r.id == 11);
        assert_true(r.topic_len == 9 && !memcmp(r.topic, "chat.room", 9));
        assert_true(r.has_count && r.count == 1234);
        assert_int_equal(members(enc, &r, ms, 4), 3);
        assert_true(ms[0].conn_len == 18 && !memcmp(ms[0].conn, "0123456789abcdef-1", 18));
        assert_false(ms[0].has_user);
        assert_null(ms[0].info);
        assert_true(ms[1].has_user && ms[1].user_len == 6 && !memcmp(ms[1].user, "u\"ser\n", 6));
        gale_buf_t j;
        gale_buf_init(&j, 0);
        assert_int_equal(gale_convert_data(&j, GALE_ENC_JSON, enc, ms[1].info, ms[1].info_len),
                         GALE_OK);
        gale_buf_t want;
        gale_buf_init(&want, 0);
        assert_int_equal(gale_convert_data(&want, GALE_ENC_MSGPACK, GALE_ENC_JSON,
                                           (const uint8_t *)info, strlen(info)),
                         GALE_OK);
        gale_buf_t want_j;
        gale_buf_init(&want_j, 0);
        assert_int_equal(
            gale_convert_data(&want_j, GALE_ENC_JSON, GALE_ENC_MSGPACK, want.data, want.len),
            GALE_OK);
        if (enc == GALE_ENC_JSON) {
            assert_int_equal(ms[1].info_len, strlen(info));
            assert_memory_equal(ms[1].info, info, strlen(info));
        } else {
            assert_int_equal(j.len, want_j.len);
            assert_memory_equal(j.data, want_j.data, j.len);
        }
        gale_buf_free(&j);
        gale_buf_free(&want);
        gale_buf_free(&want_j);
        assert_true(ms[2].has_user && ms[2].user_len == 0);
        assert_int_equal(ms[2].info_len, enc == GALE_ENC_JSON ? 2 : 1);

        /* Events. */
        for (int join = 0; join < 2; join++) {
            b.len = 0;
            assert_int_equal(
                gale_encode_presence_event(&b, enc, join, "chat.room", 9, m2.data, m2.len),
                GALE_OK);
            assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
            assert_int_equal(r.op, join ? GALE_REPLY_JOIN : GALE_REPLY_LEAVE);
            assert_true(r.topic_len == 9 && !memcmp(r.topic, "chat.room", 9));
            assert_true(r.conn_len == 18 && !memcmp(r.conn, "0123456789abcdef-2", 18));
            assert_true(r.has_user && r.user_len == 6 && !memcmp(r.user, "u\"ser\n", 6));
            assert_non_null(r.info);
            if (enc == GALE_ENC_JSON)
                assert_memory_equal(r.info, info, strlen(info));
            else
                assert_int_equal(r.info[0], 0x82);
        }
        b.len = 0;
        assert_int_equal(gale_encode_presence_event(&b, enc, false, "t", 1, m1.data, m1.len),
                         GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_LEAVE);
        assert_false(r.has_user);
        assert_null(r.info);

        /* Count-only. */
        b.len = 0;
        assert_int_equal(gale_encode_presence_count(&b, enc, "t", 1, 77), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_PRESENCE);
        assert_false(r.has_id);
        assert_true(r.has_count && r.count == 77);
        assert_null(r.members);
        gale_buf_free(&b);
    }
    gale_buf_free(&m1);
    gale_buf_free(&m2);
    gale_buf_free(&m3);
}

/*
 * Info as deep as a sub may carry (GALE_MAX_DEPTH - 1 levels) still decodes in a presence
 * answer, where it sits three levels below the top (members array, member object).
 */
static void test_deep_info(void **state)
{
    (void)state;
    char sub[512];
    int levels = GALE_MAX_DEPTH - 1; /* the info object and its nested arrays */
    size_t o =
        (size_t)snprintf(sub, sizeof(sub), "{\"op\":\"sub\",\"topic\":\"t\",\"info\":{\"a\":");
    for (int i = 0; i < levels - 1; i++)
        sub[o++] = '[';
    for (int i = 0; i < levels - 1; i++)
        sub[o++] = ']';
    sub[o++] = '}';
    sub[o++] = '}';
    sub[o] = '\0';
    gale_request_t req;
    assert_int_equal(dec_json(sub, &req), GALE_OK);
    gale_buf_t member;
    gale_buf_init(&member, 0);
    assert_int_equal(gale_encode_member(&member, "c", 1, "u", 1, req.info, req.info_len), GALE_OK);
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t enc = (gale_enc_t)e;
        gale_buf_t b;
        gale_reply_t r;
        gale_member_t ms[1];
        gale_buf_init(&b, 0);
        assert_int_equal(gale_encode_presence_begin(&b, enc, true, 1, "t", 1, 1, 1), GALE_OK);
        assert_int_equal(gale_encode_presence_member(&b, enc, true, member.data, member.len),
                         GALE_OK);
        assert_int_equal(gale_encode_presence_end(&b, enc), GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(members(enc, &r, ms, 1), 1);
        b.len = 0;
        assert_int_equal(gale_encode_presence_event(&b, enc, true, "t", 1, member.data, member.len),
                         GALE_OK);
        assert_int_equal(gale_decode_reply(enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_REPLY_JOIN);
        gale_buf_free(&b);
    }
    gale_buf_free(&member);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_presence_op),
        cmocka_unit_test(test_decode_sub_presence_flag),
        cmocka_unit_test(test_decode_sub_info),
        cmocka_unit_test(test_encode_member),
        cmocka_unit_test(test_encode_presence_answer_json),
        cmocka_unit_test(test_encode_presence_event_json),
        cmocka_unit_test(test_encode_presence_msgpack),
        cmocka_unit_test(test_encode_sub_ext),
        cmocka_unit_test(test_encode_presence_request),
        cmocka_unit_test(test_decode_reply_presence_json),
        cmocka_unit_test(test_decode_reply_events_json),
        cmocka_unit_test(test_decode_reply_presence_escapes),
        cmocka_unit_test(test_decode_reply_presence_msgpack),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_deep_info),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
