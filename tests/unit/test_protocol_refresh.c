/*
 * Unit tests of protocol/'s refresh addition (docs/PROTOCOL.md "Token refresh"): decoding of
 * the `refresh` op and its `token` (bounds, types, escapes refused), the client's encoder
 * gale_encode_refresh checked byte-exact and through gale_decode_request in both encodings,
 * the broker's err about a subscription (gale_encode_err_topic) and its `topic` as
 * gale_decode_reply reads it.
 */
#include "test_protocol_util.h"

static const char TOKEN[] = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

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

/* ---- decoding requests ---- */

static void test_decode_refresh(void **state)
{
    (void)state;
    gale_request_t r;
    char m[256];
    snprintf(m, sizeof(m), "{\"op\":\"refresh\",\"id\":4,\"token\":\"%s\"}", TOKEN);
    assert_int_equal(dec_json(m, &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_REFRESH);
    assert_true(r.has_id && r.id == 4);
    assert_int_equal(r.token_len, strlen(TOKEN));
    assert_memory_equal(r.token, TOKEN, strlen(TOKEN));
    assert_true(r.token > m && r.token < m + strlen(m)); /* points into the frame */
    assert_null(r.topic);

    /* Without id; other ops' fields are ignored (a topic too). */
    snprintf(m, sizeof(m),
             "{\"token\":\"%s\",\"op\":\"refresh\",\"topic\":\"a.*\",\"data\":1,\"mid\":7}", TOKEN);
    assert_int_equal(dec_json(m, &r), GALE_OK);
    assert_false(r.has_id);
    assert_null(r.topic);
    assert_null(r.data);
    assert_null(r.mid);

    /* The token is opaque here: any string without escapes, 1..GALE_TOKEN_MAX bytes. */
    assert_int_equal(dec_json("{\"op\":\"refresh\",\"token\":\"x\"}", &r), GALE_OK);
    assert_int_equal(r.token_len, 1);
    assert_int_equal(dec_json("{\"op\":\"refresh\",\"token\":\"a/b+c \xc3\xa9\"}", &r), GALE_OK);
    assert_int_equal(r.token_len, 8);

    /* Other ops never carry a token. */
    assert_int_equal(dec_json("{\"op\":\"ping\",\"token\":\"x\"}", &r), GALE_OK);
    assert_null(r.token);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\",\"token\":\"x\"}", &r), GALE_OK);
    assert_null(r.token);
}

static void test_decode_refresh_bad_token(void **state)
{
    (void)state;
    gale_request_t r;
    const char *why;
    static const char not_str[] = "token is not a string of 1 to 8192 bytes without escapes";
    const char *bad[] = {
        "{\"op\":\"refresh\",\"id\":2,\"token\":\"\"}",
        "{\"op\":\"refresh\",\"id\":2,\"token\":1}",
        "{\"op\":\"refresh\",\"id\":2,\"token\":null}",
        "{\"op\":\"refresh\",\"id\":2,\"token\":[\"a\"]}",
        "{\"op\":\"refresh\",\"id\":2,\"token\":{\"t\":\"a\"}}",
        /* Escapes are refused, even those that unescape to plain token characters. */
        "{\"op\":\"refresh\",\"id\":2,\"token\":\"a\\u002eb\"}",
        "{\"op\":\"refresh\",\"id\":2,\"token\":\"a\\/b\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(dec_why(bad[i], &r, &why), GALE_ERR_BAD_REQUEST);
        assert_string_equal(why, not_str);
        assert_true(r.has_id && r.id == 2); /* the err carries the id */
        assert_int_equal(r.op, GALE_OP_REFRESH);
        assert_null(r.token);
    }
    assert_int_equal(dec_why("{\"op\":\"refresh\",\"id\":3}", &r, &why), GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "token is missing");
    assert_true(r.has_id && r.id == 3);
    /* A duplicate token is a duplicate field. */
    assert_int_equal(dec_why("{\"op\":\"refresh\",\"token\":\"a\",\"token\":\"b\"}", &r, &why),
                     GALE_ERR_BAD_REQUEST);
    assert_string_equal(why, "duplicate field");
    /* The op is matched exactly. */
    assert_int_equal(dec_why("{\"op\":\"Refresh\",\"token\":\"a\"}", &r, &why),
                     GALE_ERR_UNKNOWN_OP);

    /* GALE_TOKEN_MAX bytes are fine, one more is not. */
    size_t cap = GALE_TOKEN_MAX + 64;
    char *m = malloc(cap);
    assert_non_null(m);
    for (size_t n = GALE_TOKEN_MAX; n <= GALE_TOKEN_MAX + 1; n++) {
        size_t o = (size_t)snprintf(m, cap, "{\"op\":\"refresh\",\"token\":\"");
        memset(m + o, 'A', n);
        snprintf(m + o + n, cap - o - n, "\"}");
        gale_err_t e = dec_why(m, &r, &why);
        if (n == GALE_TOKEN_MAX) {
            assert_int_equal(e, GALE_OK);
            assert_int_equal(r.token_len, GALE_TOKEN_MAX);
        } else {
            assert_int_equal(e, GALE_ERR_BAD_REQUEST);
            assert_string_equal(why, not_str);
        }
    }
    free(m);
}

static void test_decode_refresh_msgpack(void **state)
{
    (void)state;
    gale_request_t r;
    uint8_t buf[128];
    /* {"op":"refresh","id":5,"token":"ab.c"} */
    assert_int_equal(dec_hex("83 a2 6f70 a7 72656672657368 a2 6964 05 a5 746f6b656e a4 61622e63",
                             &r, buf, sizeof(buf)),
                     GALE_OK);
    assert_int_equal(r.op, GALE_OP_REFRESH);
    assert_true(r.has_id && r.id == 5);
    assert_int_equal(r.token_len, 4);
    assert_memory_equal(r.token, "ab.c", 4);
    /* A bin token is not a string. */
    assert_int_equal(
        dec_hex("82 a2 6f70 a7 72656672657368 a5 746f6b656e c4 02 6162", &r, buf, sizeof(buf)),
        GALE_ERR_BAD_REQUEST);
    /* An empty str neither. */
    assert_int_equal(dec_hex("82 a2 6f70 a7 72656672657368 a5 746f6b656e a0", &r, buf, sizeof(buf)),
                     GALE_ERR_BAD_REQUEST);
}

/* ---- the client's encoder ---- */

static void test_encode_refresh(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_request_t r;
    gale_buf_init(&b, 3);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_JSON, true, 9, "ab.c", 4), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"refresh\",\"id\":9,\"token\":\"ab.c\"}");
    gale_buf_free(&b);
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_JSON, false, 0, "ab.c", 4), GALE_OK);
    assert_string_equal(payload_str(&b), "{\"op\":\"refresh\",\"token\":\"ab.c\"}");
    gale_buf_free(&b);
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_MSGPACK, true, 5, "ab.c", 4), GALE_OK);
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f70 a7 72656672657368 a2 6964 05 a5 746f6b656e a4 61622e63");
    gale_buf_free(&b);

    /* Round trips, both encodings, a long token too. */
    size_t n = GALE_TOKEN_MAX;
    char *tok = malloc(n);
    assert_non_null(tok);
    for (size_t i = 0; i < n; i++)
        tok[i] = "abcXYZ019-_."[i % 12];
    for (int enc = 0; enc < GALE_ENC_COUNT; enc++) {
        gale_buf_init(&b, 0);
        assert_int_equal(gale_encode_refresh(&b, (gale_enc_t)enc, true, 77, tok, n), GALE_OK);
        assert_int_equal(gale_decode_request((gale_enc_t)enc, b.data, b.len, &r, NULL), GALE_OK);
        assert_int_equal(r.op, GALE_OP_REFRESH);
        assert_true(r.has_id && r.id == 77);
        assert_int_equal(r.token_len, n);
        assert_memory_equal(r.token, tok, n);
        gale_buf_free(&b);
    }

    /* Bad arguments append nothing. */
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_JSON, true, 1, tok, 0), GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_JSON, true, 1, NULL, 3), GALE_ERR_INTERNAL);
    assert_int_equal(gale_encode_refresh(&b, GALE_ENC_MSGPACK, true, 1, tok, n + 1),
                     GALE_ERR_INTERNAL);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
    free(tok);
}

/* ---- the err about a subscription ---- */

static void test_err_topic(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_reply_t r;
    gale_buf_init(&b, 0);
    assert_int_equal(
        gale_encode_err_topic(&b, GALE_ENC_JSON, GALE_ERR_FORBIDDEN, "a.>", 3, "dropped"), GALE_OK);
    assert_string_equal(
        payload_str(&b),
        "{\"op\":\"err\",\"code\":\"forbidden\",\"topic\":\"a.>\",\"msg\":\"dropped\"}");
    assert_int_equal(gale_decode_reply(GALE_ENC_JSON, b.data, b.len, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ERR);
    assert_false(r.has_id);
    assert_int_equal(r.code, GALE_ERR_FORBIDDEN);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a.>", 3);
    assert_int_equal(r.msg_len, 7);
    gale_buf_free(&b);

    gale_buf_init(&b, 0);
    assert_int_equal(
        gale_encode_err_topic(&b, GALE_ENC_MSGPACK, GALE_ERR_FORBIDDEN, "a.>", 3, "dropped"),
        GALE_OK);
    assert_int_equal(gale_decode_reply(GALE_ENC_MSGPACK, b.data, b.len, &r, NULL), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ERR);
    assert_int_equal(r.code, GALE_ERR_FORBIDDEN);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a.>", 3);
    gale_buf_free(&b);

    /* A plain err names no topic; an escaped one is unescaped; one too long names none. */
    const char *plain = "{\"op\":\"err\",\"id\":1,\"code\":\"limit\",\"msg\":\"m\"}";
    assert_int_equal(
        gale_decode_reply(GALE_ENC_JSON, (const uint8_t *)plain, strlen(plain), &r, NULL), GALE_OK);
    assert_null(r.topic);
    const char *esc = "{\"op\":\"err\",\"code\":\"forbidden\",\"topic\":\"a\\u002eb\"}";
    assert_int_equal(gale_decode_reply(GALE_ENC_JSON, (const uint8_t *)esc, strlen(esc), &r, NULL),
                     GALE_OK);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a.b", 3);
    char big[2048];
    size_t o =
        (size_t)snprintf(big, sizeof(big), "{\"op\":\"err\",\"code\":\"forbidden\",\"topic\":\"");
    for (int i = 0; i < 300; i++)
        o += (size_t)snprintf(big + o, sizeof(big) - o, "\\u0061");
    snprintf(big + o, sizeof(big) - o, "\"}");
    assert_int_equal(gale_decode_reply(GALE_ENC_JSON, (const uint8_t *)big, strlen(big), &r, NULL),
                     GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_ERR);
    assert_null(r.topic);
    assert_int_equal(r.topic_len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_refresh),
        cmocka_unit_test(test_decode_refresh_bad_token),
        cmocka_unit_test(test_decode_refresh_msgpack),
        cmocka_unit_test(test_encode_refresh),
        cmocka_unit_test(test_err_topic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
