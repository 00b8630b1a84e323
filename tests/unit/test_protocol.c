/*
 * Unit tests of protocol/: decoding of client messages (JSON and
 * MessagePack, including hostile input), validation of JSON, MessagePack,
 * UTF-8, topics and patterns, and the output buffer.
 */
#include "test_protocol_util.h"

#include <msgpack.h>

/* ---- names ---- */

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(gale_enc_subprotocol(GALE_ENC_JSON), "gale.v1.json");
    assert_string_equal(gale_enc_subprotocol(GALE_ENC_MSGPACK), "gale.v1.msgpack");
    assert_null(gale_enc_subprotocol((gale_enc_t)7));
    static const char *names[] = {"ok",        "bad_request", "unknown_op",
                                  "bad_topic", "too_large",   "forbidden",
                                  "limit",     "unavailable", "internal"};
    for (int i = 0; i < GALE_ERR_COUNT; i++)
        assert_string_equal(gale_err_name((gale_err_t)i), names[i]);
    assert_string_equal(gale_err_name((gale_err_t)99), "internal");
    assert_string_equal(gale_err_name((gale_err_t)-1), "internal");
}

/* ---- JSON decoding ---- */

static void test_json_ops(void **state)
{
    (void)state;
    gale_request_t r;
    assert_int_equal(dec_json("{\"op\":\"ping\"}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PING);
    assert_false(r.has_id);
    assert_null(r.topic);

    assert_int_equal(dec_json(" {\"id\":7, \"op\":\"ping\"}\n", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PING);
    assert_true(r.has_id);
    assert_int_equal(r.id, 7);

    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a.*.>\"}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_SUB);
    assert_false(r.has_id);
    assert_int_equal(r.topic_len, 5);
    assert_memory_equal(r.topic, "a.*.>", 5);
    assert_true(r.is_pattern);

    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a.b\",\"id\":0}", &r), GALE_OK);
    assert_true(r.has_id);
    assert_int_equal(r.id, 0);
    assert_false(r.is_pattern);

    assert_int_equal(dec_json("{\"op\":\"unsub\",\"topic\":\">\",\"id\":9007199254740991}", &r),
                     GALE_OK);
    assert_int_equal(r.op, GALE_OP_UNSUB);
    assert_true(r.has_id);
    assert_int_equal(r.id, GALE_ID_MAX);
    assert_true(r.is_pattern);
    assert_int_equal(dec_json("{\"op\":\"unsub\",\"topic\":\"x\"}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_UNSUB);

    const char *pub = "{\"op\":\"pub\",\"topic\":\"chat.room-42\",\"data\":{\"a\":[1,2]},\"x\":1}";
    assert_int_equal(dec_json(pub, &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PUB);
    assert_false(r.has_id);
    assert_false(r.is_pattern);
    assert_int_equal(r.data_len, 11);
    assert_memory_equal(r.data, "{\"a\":[1,2]}", 11);
    assert_ptr_equal(r.data, (const uint8_t *)pub + 42);

    assert_int_equal(dec_json("{\"data\":null,\"id\":3,\"topic\":\"t\",\"op\":\"pub\"}", &r),
                     GALE_OK);
    assert_int_equal(r.op, GALE_OP_PUB);
    assert_true(r.has_id);
    assert_int_equal(r.id, 3);
    assert_int_equal(r.data_len, 4);
    assert_memory_equal(r.data, "null", 4);

    /* Ping ignores topic and data, sub ignores data, whatever their types. */
    assert_int_equal(dec_json("{\"op\":\"ping\",\"topic\":5,\"data\":[]}", &r), GALE_OK);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\",\"data\":[]}", &r), GALE_OK);
    assert_null(r.data);
}

static void test_json_data_byte_exact(void **state)
{
    (void)state;
    gale_request_t r;
    const char *m = "{ \"op\" : \"pub\" , \"topic\" : \"t\" , \"data\" :  [ 1 ,\n\t{ \"k\" : "
                    "\"v\\u0041\" } , 1.50e+2 ]  \r\n, \"id\" : 1 }  ";
    assert_int_equal(dec_json(m, &r), GALE_OK);
    const char *want = "[ 1 ,\n\t{ \"k\" : \"v\\u0041\" } , 1.50e+2 ]";
    assert_int_equal(r.data_len, strlen(want));
    assert_memory_equal(r.data, want, strlen(want));
    assert_ptr_equal(r.data, (const uint8_t *)strstr(m, "[ 1"));

    const char *scalars[] = {"\"\"", "0", "-0", "true", "false", "null", "\"\\u0000\"", "{}", "[]"};
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) {
        char buf[128];
        snprintf(buf, sizeof(buf), "{\"op\":\"pub\",\"topic\":\"t\",\"data\":%s}", scalars[i]);
        assert_int_equal(dec_json(buf, &r), GALE_OK);
        assert_int_equal(r.data_len, strlen(scalars[i]));
        assert_memory_equal(r.data, scalars[i], r.data_len);
    }
}

static void test_json_escaped_names(void **state)
{
    (void)state;
    gale_request_t r;
    /* Keys and op compare after unescaping. */
    assert_int_equal(dec_json("{\"\\u006fp\":\"p\\u0069ng\",\"\\u0069d\":4}", &r), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PING);
    assert_int_equal(r.id, 4);
    /* A topic with escapes is unescaped, then validated. */
    assert_int_equal(dec_json("{\"op\":\"pub\",\"topic\":\"a\\u002eb\\/c\",\"data\":1}", &r),
                     GALE_OK);
    assert_int_equal(r.topic_len, 5);
    assert_memory_equal(r.topic, "a.b/c", 5);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"caf\\u00e9.\\ud83d\\ude00\"}", &r),
                     GALE_OK);
    assert_int_equal(r.topic_len, 10);
    assert_memory_equal(r.topic, "caf\xc3\xa9.\xf0\x9f\x98\x80", 10);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\\"b\\\\\"}", &r), GALE_OK);
    assert_memory_equal(r.topic, "a\"b\\", 4);
    /* Escapes that make the topic invalid. */
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\u0020b\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\nb\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\ud800\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"\\udc00\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\u0000\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"sub\",\"topic\":\"a\\u00a0\"}", &r), GALE_ERR_BAD_TOPIC);
    assert_int_equal(dec_json("{\"op\":\"pub\",\"topic\":\"\\u002a\",\"data\":1}", &r),
                     GALE_ERR_BAD_TOPIC);
    /* 255 escaped characters are fine, 256 are not. */
    char big[2048];
    strcpy(big, "{\"op\":\"sub\",\"topic\":\"");
    for (int i = 0; i < 255; i++)
        strcat(big, "\\u0061");
    strcat(big, "\"}");
    assert_int_equal(dec_json(big, &r), GALE_OK);
    assert_int_equal(r.topic_len, 255);
    big[strlen(big) - 2] = '\0';
    strcat(big, "\\u0061\"}");
    assert_int_equal(dec_json(big, &r), GALE_ERR_BAD_TOPIC);
}

typedef struct {
    const char *in;
    gale_err_t err;
    bool has_id;
} jcase_t;

static void test_json_errors(void **state)
{
    (void)state;
    static const jcase_t cases[] = {
        /* not an object / not JSON */
        {"", GALE_ERR_BAD_REQUEST, false},
        {"   ", GALE_ERR_BAD_REQUEST, false},
        {"[]", GALE_ERR_BAD_REQUEST, false},
        {"\"op\"", GALE_ERR_BAD_REQUEST, false},
        {"null", GALE_ERR_BAD_REQUEST, false},
        {"1", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\"} {}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\"}x", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",}", GALE_ERR_BAD_REQUEST, false},
        {"{'op':'ping'}", GALE_ERR_BAD_REQUEST, false},
        {"{op:\"ping\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\"/**/}", GALE_ERR_BAD_REQUEST, false},
        {"\xef\xbb\xbf{\"op\":\"ping\"}", GALE_ERR_BAD_REQUEST, false}, /* BOM */
        /* op */
        {"{}", GALE_ERR_BAD_REQUEST, false},
        {"{\"id\":1}", GALE_ERR_BAD_REQUEST, true},
        {"{\"op\":1,\"id\":2}", GALE_ERR_BAD_REQUEST, true},
        {"{\"op\":null}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":[\"ping\"]}", GALE_ERR_BAD_REQUEST, false},
        {"{\"OP\":\"ping\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"PING\"}", GALE_ERR_UNKNOWN_OP, false},
        {"{\"op\":\"\"}", GALE_ERR_UNKNOWN_OP, false},
        {"{\"op\":\"ping \"}", GALE_ERR_UNKNOWN_OP, false},
        {"{\"op\":\"ping\\u0000\"}", GALE_ERR_UNKNOWN_OP, false},
        {"{\"op\":\"hello\",\"id\":5}", GALE_ERR_UNKNOWN_OP, true},
        /* id */
        {"{\"op\":\"ping\",\"id\":-1}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":-0}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":1.0}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":1.5}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":1e2}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":9007199254740992}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":18446744073709551616}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":99999999999999999999999}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":\"1\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":null}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":true}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":01}", GALE_ERR_BAD_REQUEST, false},
        /* topic */
        {"{\"op\":\"sub\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"sub\",\"id\":1}", GALE_ERR_BAD_REQUEST, true},
        {"{\"op\":\"unsub\",\"topic\":1}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":null,\"data\":1}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":[\"a\"],\"data\":1}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"sub\",\"topic\":\"\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\"a..b\",\"id\":8}", GALE_ERR_BAD_TOPIC, true},
        {"{\"op\":\"sub\",\"topic\":\"a.\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\".a\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\"a b\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\"a*\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\"*>\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\">.a\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"sub\",\"topic\":\"a\xc2\xa0\"}", GALE_ERR_BAD_TOPIC, false},
        {"{\"op\":\"pub\",\"topic\":\"a.*\",\"data\":1,\"id\":2}", GALE_ERR_BAD_TOPIC, true},
        {"{\"op\":\"pub\",\"topic\":\">\",\"data\":1}", GALE_ERR_BAD_TOPIC, false},
        /* data */
        {"{\"op\":\"pub\",\"topic\":\"a\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"id\":1}", GALE_ERR_BAD_REQUEST, true},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":[1,]}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":NaN}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":Infinity}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":012}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\t\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\x\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\\u12G4\"}", GALE_ERR_BAD_REQUEST, false},
        /* duplicates */
        {"{\"op\":\"ping\",\"op\":\"ping\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"id\":1,\"id\":2}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"sub\",\"topic\":\"a\",\"topic\":\"b\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":1,\"data\":2}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"ping\",\"\\u006fp\":\"ping\"}", GALE_ERR_BAD_REQUEST, false},
        /* unknown fields may repeat */
        {"{\"op\":\"ping\",\"x\":1,\"x\":2}", GALE_OK, false},
        /* invalid UTF-8 anywhere in JSON: overlong, surrogate, > U+10FFFF, truncated */
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xc0\xaf\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xe0\x80\xaf\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xed\xa0\x80\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xf4\x90\x80\x80\"}", GALE_ERR_BAD_REQUEST,
         false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xe2\x82\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xff\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"sub\",\"topic\":\"a\xed\xbf\xbf\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\":\"sub\",\"topic\":\"\xf0\x82\x82\xac\"}", GALE_ERR_BAD_REQUEST, false},
        {"{\"op\xff\":\"ping\"}", GALE_ERR_BAD_REQUEST, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gale_request_t r;
        gale_err_t e = dec_json(cases[i].in, &r);
        if (e != cases[i].err || r.has_id != cases[i].has_id)
            print_error("case %zu: %s -> %d has_id %d\n", i, cases[i].in, e, r.has_id);
        assert_int_equal(e, cases[i].err);
        assert_int_equal(r.has_id, cases[i].has_id);
    }
    /* A NUL byte inside the frame (outside strings) is not JSON. */
    gale_request_t r;
    static const uint8_t nul[] = "{\"op\":\"ping\"}\0";
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, nul, sizeof(nul) - 1, &r, NULL),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_decode_request(GALE_ENC_JSON, NULL, 0, &r, NULL), GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_decode_request((gale_enc_t)5, nul, 13, &r, NULL), GALE_ERR_BAD_REQUEST);
}

static void test_json_truncated(void **state)
{
    (void)state;
    const char *msgs[] = {
        "{\"op\":\"pub\",\"topic\":\"a.b\",\"data\":{\"k\":[1,-2.5e+3,\"x\\u00e9\\n\",true,false,"
        "null,{}]},\"id\":12}",
        "{\"op\":\"sub\",\"topic\":\"caf\xc3\xa9.\xf0\x9f\x98\x80\",\"id\":1}",
        "{\"op\":\"ping\"}",
    };
    for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
        size_t n = strlen(msgs[m]);
        gale_request_t r;
        assert_int_equal(gale_decode_request(GALE_ENC_JSON, (const uint8_t *)msgs[m], n, &r, NULL),
                         GALE_OK);
        for (size_t k = 0; k < n; k++) {
            uint8_t *copy = malloc(k + 1); /* exact size: ASan catches reads past k */
            memcpy(copy, msgs[m], k);
            assert_int_equal(gale_decode_request(GALE_ENC_JSON, copy, k, &r, NULL),
                             GALE_ERR_BAD_REQUEST);
            assert_false(gale_json_valid(copy, k, GALE_MAX_DEPTH));
            free(copy);
        }
    }
}

/* JSON text: {"op":"pub","topic":"t","data":<depth nested arrays>} */
static char *nested_json_msg(int depth)
{
    char *s = malloc((size_t)depth * 2 + 64);
    strcpy(s, "{\"op\":\"pub\",\"topic\":\"t\",\"data\":");
    size_t n = strlen(s);
    for (int i = 0; i < depth; i++)
        s[n++] = '[';
    for (int i = 0; i < depth; i++)
        s[n++] = ']';
    s[n++] = '}';
    s[n] = '\0';
    return s;
}

static void test_json_depth(void **state)
{
    (void)state;
    gale_request_t r;
    char *ok = nested_json_msg(GALE_MAX_DEPTH - 1); /* 64 levels with the message object */
    assert_int_equal(dec_json(ok, &r), GALE_OK);
    assert_int_equal(r.data_len, 2 * (GALE_MAX_DEPTH - 1));
    free(ok);
    char *deep = nested_json_msg(GALE_MAX_DEPTH); /* 65 levels */
    assert_int_equal(dec_json(deep, &r), GALE_ERR_BAD_REQUEST);
    free(deep);
    char *very = nested_json_msg(100000);
    assert_int_equal(dec_json(very, &r), GALE_ERR_BAD_REQUEST);
    free(very);
    /* Objects count too. */
    char obj[1024];
    strcpy(obj, "{\"op\":\"pub\",\"topic\":\"t\",\"data\":");
    for (int i = 0; i < 64; i++)
        strcat(obj, "{\"a\":");
    strcat(obj, "1");
    for (int i = 0; i < 64; i++)
        strcat(obj, "}");
    strcat(obj, "}");
    assert_int_equal(dec_json(obj, &r), GALE_ERR_BAD_REQUEST);

    assert_true(gale_json_valid((const uint8_t *)"[[]]", 4, 2));
    assert_false(gale_json_valid((const uint8_t *)"[[]]", 4, 1));
    assert_true(gale_json_valid((const uint8_t *)"1", 1, 0));
    assert_false(gale_json_valid((const uint8_t *)"[]", 2, 0));
    /* Caps at 256 whatever max_depth says, without overflowing the stack. */
    char *huge = nested_json_msg(300);
    const char *arr = strchr(huge, '[');
    assert_false(gale_json_valid((const uint8_t *)arr, 600, UINT32_MAX));
    assert_true(gale_json_valid((const uint8_t *)arr + 44, 512, UINT32_MAX));
    free(huge);
}

static void test_json_valid_grammar(void **state)
{
    (void)state;
    static const char *good[] = {
        "0",
        "-0",
        "1",
        "-1",
        "0.5",
        "1e5",
        "1E+5",
        "1e-5",
        "-0.0e0",
        "123456789012345678901234567890",
        "\"\"",
        "\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\uFFFF\\ud800\"",
        "\"\x7f\"",
        "\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"",
        "true",
        "false",
        "null",
        "[]",
        "{}",
        " [ 1 , 2 ] ",
        "{\"a\":{\"b\":[{}]}}",
        "\t\r\n 1 \t\r\n",
        "{\"a\":1,\"a\":2}",
    };
    static const char *bad[] = {
        "",
        " ",
        "01",
        "-",
        "+1",
        "1.",
        ".5",
        "1e",
        "1e+",
        "0x10",
        "1.5.3",
        "--1",
        "- 1",
        "NaN",
        "-Infinity",
        "Infinity",
        "nul",
        "truee",
        "True",
        "[",
        "]",
        "[1,]",
        "[,1]",
        "[1 2]",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "{,}",
        "{1:2}",
        "{\"a\" 1}",
        "'a'",
        "\"a",
        "\"\\\"",
        "\"\\a\"",
        "\"\\u00\"",
        "\"\\u00G0\"",
        "\"\\U0041\"",
        "\"\x01\"",
        "\"\x1f\"",
        "\"\n\"",
        "1 2",
        "[] []",
        "/* */ 1",
        "1 // x",
        "\xc0\x80",
        "\"\xc0\x80\"",
        "\"\xc1\xbf\"",
        "\"\xe0\x9f\xbf\"",
        "\"\xed\xa0\x80\"",
        "\"\xed\xbf\xbf\"",
        "\"\xf0\x8f\xbf\xbf\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xf5\x80\x80\x80\"",
        "\"\xff\"",
        "\"\x80\"",
        "\"\xe2\x82\"",
        "\"\xf0\x9f\x98\"",
        "\"\xc3\"",
        "\xc2\xa0"
        "1",
        "\f1",
        "\v1",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!gale_json_valid((const uint8_t *)good[i], strlen(good[i]), 64))
            print_error("good %zu: %s\n", i, good[i]);
        assert_true(gale_json_valid((const uint8_t *)good[i], strlen(good[i]), 64));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gale_json_valid((const uint8_t *)bad[i], strlen(bad[i]), 64))
            print_error("bad %zu: %s\n", i, bad[i]);
        assert_false(gale_json_valid((const uint8_t *)bad[i], strlen(bad[i]), 64));
    }
    static const uint8_t nul_in_string[] = {'"', 'a', 0, '"'};
    assert_false(gale_json_valid(nul_in_string, 4, 64));
    assert_false(gale_json_valid(NULL, 0, 64));
}

/* ---- MessagePack decoding ---- */

/* Packs a str with msgpack-c. */
static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static void test_msgpack_ops(void **state)
{
    (void)state;
    gale_request_t r;
    uint8_t b[256];
    assert_int_equal(dec_hex("81 a2 6f70 a4 70696e67", &r, b, sizeof(b)), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PING);
    assert_false(r.has_id);
    /* id as uint8, uint64, positive int8 and int64 encodings */
    assert_int_equal(dec_hex("82 a2 6964 cc ff a2 6f70 a4 70696e67", &r, b, sizeof(b)), GALE_OK);
    assert_true(r.has_id);
    assert_int_equal(r.id, 255);
    assert_int_equal(
        dec_hex("82 a2 6f70 a4 70696e67 a2 6964 cf 001fffffffffffff", &r, b, sizeof(b)), GALE_OK);
    assert_int_equal(r.id, GALE_ID_MAX);
    assert_int_equal(dec_hex("82 a2 6f70 a4 70696e67 a2 6964 d0 05", &r, b, sizeof(b)), GALE_OK);
    assert_int_equal(r.id, 5);
    assert_int_equal(
        dec_hex("82 a2 6f70 a4 70696e67 a2 6964 d3 0000000000000006", &r, b, sizeof(b)), GALE_OK);
    assert_int_equal(r.id, 6);
    assert_int_equal(dec_hex("82 a2 6f70 a4 70696e67 a2 6964 00", &r, b, sizeof(b)), GALE_OK);
    assert_true(r.has_id);
    assert_int_equal(r.id, 0);

    /* sub / unsub with and without id, with msgpack-c as the encoder */
    const char *ops[] = {"sub", "unsub"};
    for (int o = 0; o < 2; o++) {
        for (int with_id = 0; with_id < 2; with_id++) {
            msgpack_sbuffer sb;
            msgpack_sbuffer_init(&sb);
            msgpack_packer pk;
            msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
            msgpack_pack_map(&pk, 2 + with_id);
            pk_str(&pk, "topic");
            pk_str(&pk, "a.*.>");
            pk_str(&pk, "op");
            pk_str(&pk, ops[o]);
            if (with_id) {
                pk_str(&pk, "id");
                msgpack_pack_uint64(&pk, 1234567);
            }
            assert_int_equal(
                gale_decode_request(GALE_ENC_MSGPACK, (const uint8_t *)sb.data, sb.size, &r, NULL),
                GALE_OK);
            assert_int_equal(r.op, o == 0 ? GALE_OP_SUB : GALE_OP_UNSUB);
            assert_int_equal(r.has_id, with_id);
            if (with_id)
                assert_int_equal(r.id, 1234567);
            assert_int_equal(r.topic_len, 5);
            assert_memory_equal(r.topic, "a.*.>", 5);
            assert_ptr_equal(r.topic, sb.data + 8);
            assert_true(r.is_pattern);
            msgpack_sbuffer_destroy(&sb);
        }
    }

    /* pub: data is the exact bytes, whatever (non-canonical) encoding it used */
    assert_int_equal(
        dec_hex("84 a2 6f70 a3 707562 a5 746f706963 a3 612e62 a4 64617461 92 cf 0000000000000001 "
                "c4 02 0102 a2 6964 07",
                &r, b, sizeof(b)),
        GALE_OK);
    assert_int_equal(r.op, GALE_OP_PUB);
    assert_true(r.has_id);
    assert_int_equal(r.id, 7);
    assert_false(r.is_pattern);
    assert_int_equal(r.topic_len, 3);
    assert_memory_equal(r.topic, "a.b", 3);
    assert_ptr_equal(r.data, b + 23);
    assert_bytes_hex(r.data, r.data_len, "92 cf 0000000000000001 c4 02 0102");

    /* pub without id; unknown fields of any type, including non-str values, are skipped */
    assert_int_equal(
        dec_hex("84 a1 78 dc 0002 c0 c0 a2 6f70 a3 707562 a5 746f706963 a1 74 a4 64617461 c0", &r,
                b, sizeof(b)),
        GALE_OK);
    assert_false(r.has_id);
    assert_bytes_hex(r.data, r.data_len, "c0");
    /* str8/str16 encodings of keys and values */
    assert_int_equal(dec_hex("81 d9 02 6f70 da 0004 70696e67", &r, b, sizeof(b)), GALE_OK);
    assert_int_equal(r.op, GALE_OP_PING);
}

typedef struct {
    const char *hex;
    gale_err_t err;
    bool has_id;
} mcase_t;

static void test_msgpack_errors(void **state)
{
    (void)state;
    static const mcase_t cases[] = {
        /* not a map / malformed */
        {"", GALE_ERR_BAD_REQUEST, false},
        {"c0", GALE_ERR_BAD_REQUEST, false},
        {"90", GALE_ERR_BAD_REQUEST, false},
        {"91 81 a2 6f70 a4 70696e67", GALE_ERR_BAD_REQUEST, false},
        {"a4 70696e67", GALE_ERR_BAD_REQUEST, false},
        {"c1", GALE_ERR_BAD_REQUEST, false},
        {"81 a2 6f70 a4 70696e67 c0", GALE_ERR_BAD_REQUEST, false}, /* trailing byte */
        {"81 a2 6f70 a4 70696e67 81", GALE_ERR_BAD_REQUEST, false}, /* two objects */
        {"82 a2 6f70 a4 70696e67 a1 78 c1", GALE_ERR_BAD_REQUEST, false},
        /* non-string keys */
        {"82 a2 6f70 a4 70696e67 01 02", GALE_ERR_BAD_REQUEST, false},
        {"81 c4 02 6f70 a4 70696e67", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 c0 c0", GALE_ERR_BAD_REQUEST, false},
        /* op */
        {"80", GALE_ERR_BAD_REQUEST, false},
        {"81 a2 6964 01", GALE_ERR_BAD_REQUEST, true},
        {"81 a2 6f70 c4 04 70696e67", GALE_ERR_BAD_REQUEST, false}, /* bin, not str */
        {"81 a2 6f70 01", GALE_ERR_BAD_REQUEST, false},
        {"81 a2 6f70 c0", GALE_ERR_BAD_REQUEST, false},
        {"81 a2 6f70 a4 50494e47", GALE_ERR_UNKNOWN_OP, false},
        {"81 a2 6f70 a0", GALE_ERR_UNKNOWN_OP, false},
        {"81 a2 6f70 a2 ff fe", GALE_ERR_UNKNOWN_OP, false},
        {"82 a2 6f70 a3 6d7367 a2 6964 05", GALE_ERR_UNKNOWN_OP, true},
        /* id */
        {"82 a2 6f70 a4 70696e67 a2 6964 ff", GALE_ERR_BAD_REQUEST, false},    /* -1 */
        {"82 a2 6f70 a4 70696e67 a2 6964 d0 80", GALE_ERR_BAD_REQUEST, false}, /* -128 */
        {"82 a2 6f70 a4 70696e67 a2 6964 d3 ffffffffffffffff", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 cf 0020000000000000", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 cf ffffffffffffffff", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 d3 0020000000000000", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 cb 3ff0000000000000", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 ca 3f800000", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 a1 31", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 c0", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 c3", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 a2 6964 d4 01 01", GALE_ERR_BAD_REQUEST, false},
        /* topic */
        {"81 a2 6f70 a3 737562", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a3 737562 a2 6964 03", GALE_ERR_BAD_REQUEST, true},
        {"82 a2 6f70 a3 737562 a5 746f706963 01", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a3 737562 a5 746f706963 c4 01 61", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a5 756e737562 a5 746f706963 c0", GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a3 737562 a5 746f706963 a0", GALE_ERR_BAD_TOPIC, false},
        {"83 a2 6f70 a3 737562 a5 746f706963 a3 612e2e a2 6964 09", GALE_ERR_BAD_TOPIC, true},
        {"82 a2 6f70 a3 737562 a5 746f706963 a3 61 00 62", GALE_ERR_BAD_TOPIC, false},
        {"82 a2 6f70 a3 737562 a5 746f706963 a2 c0 af", GALE_ERR_BAD_TOPIC, false},  /* overlong */
        {"82 a2 6f70 a3 737562 a5 746f706963 a3 eda080", GALE_ERR_BAD_TOPIC, false}, /* surrogate */
        {"82 a2 6f70 a3 737562 a5 746f706963 a4 f4908080", GALE_ERR_BAD_TOPIC, false}, /* >10FFFF */
        {"82 a2 6f70 a3 737562 a5 746f706963 a2 e282", GALE_ERR_BAD_TOPIC, false},   /* truncated */
        {"82 a2 6f70 a3 737562 a5 746f706963 a3 e28080", GALE_ERR_BAD_TOPIC, false}, /* U+2000 */
        {"82 a2 6f70 a3 737562 a5 746f706963 a2 c285", GALE_ERR_BAD_TOPIC, false},   /* U+0085 */
        {"83 a2 6f70 a3 707562 a5 746f706963 a3 612e2a a4 64617461 01", GALE_ERR_BAD_TOPIC, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 3e a4 64617461 01", GALE_ERR_BAD_TOPIC, false},
        /* data */
        {"82 a2 6f70 a3 707562 a5 746f706963 a1 61", GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a2 6964 01", GALE_ERR_BAD_REQUEST, true},
        /* duplicates */
        {"82 a2 6f70 a4 70696e67 a2 6f70 a4 70696e67", GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a4 70696e67 a2 6964 01 a2 6964 02", GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 737562 a5 746f706963 a1 61 a5 746f706963 a1 62", GALE_ERR_BAD_REQUEST,
         false},
        {"84 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 01 a4 64617461 02",
         GALE_ERR_BAD_REQUEST, false},
        {"82 a2 6f70 a4 70696e67 d9 02 6f70 a4 70696e67", GALE_ERR_BAD_REQUEST, false},
        /* hostile sizes */
        {"dd ffffffff", GALE_ERR_BAD_REQUEST, false},
        {"df ffffffff", GALE_ERR_BAD_REQUEST, false},
        {"df 00000001 a2 6f70 a4 70696e67 00", GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 dd ffffffff", GALE_ERR_BAD_REQUEST,
         false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 db ffffffff 00",
         GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 df ffffffff c0 c0",
         GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 c6 ffffffff", GALE_ERR_BAD_REQUEST,
         false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 c9 ffffffff 01",
         GALE_ERR_BAD_REQUEST, false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 dc 0003 c0 c0", GALE_ERR_BAD_REQUEST,
         false},
        {"83 a2 6f70 a3 707562 a5 746f706963 a1 61 a4 64617461 de 0002 c0 c0 c0",
         GALE_ERR_BAD_REQUEST, false},
        {"db ffffffff", GALE_ERR_BAD_REQUEST, false},
        {"81 db ffffffff 6f70 a4 70696e67", GALE_ERR_BAD_REQUEST, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gale_request_t r;
        uint8_t b[256];
        gale_err_t e = dec_hex(cases[i].hex, &r, b, sizeof(b));
        if (e != cases[i].err || r.has_id != cases[i].has_id)
            print_error("case %zu: %s -> %d has_id %d\n", i, cases[i].hex, e, r.has_id);
        assert_int_equal(e, cases[i].err);
        assert_int_equal(r.has_id, cases[i].has_id);
    }
}

static void test_msgpack_truncated(void **state)
{
    (void)state;
    const char *msgs[] = {
        "84 a2 6f70 a3 707562 a5 746f706963 a3 612e62 a4 64617461 "
        "86 a1 61 cb 3ff8000000000000 a1 62 c4 03 010203 a1 63 d6 01 00000000 a1 64 dc 0002 "
        "ca 3f800000 cd 0100 a1 65 de 0001 d9 01 78 c7 01 02 ff a1 66 c3 a2 6964 cc c8",
        "83 a2 6f70 a3 737562 a5 746f706963 a4 c3a92e3e a2 6964 d3 0000000000000001",
        "81 a2 6f70 a4 70696e67",
    };
    for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
        uint8_t full[256];
        size_t n = hex2bin(msgs[m], full, sizeof(full));
        gale_request_t r;
        assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, full, n, &r, NULL), GALE_OK);
        assert_true(gale_msgpack_prescan(full, n, GALE_MAX_DEPTH));
        for (size_t k = 0; k < n; k++) {
            uint8_t *copy = malloc(k + 1);
            memcpy(copy, full, k);
            assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, copy, k, &r, NULL),
                             GALE_ERR_BAD_REQUEST);
            assert_false(gale_msgpack_prescan(copy, k, GALE_MAX_DEPTH));
            free(copy);
        }
    }
}

/* {"op":"pub","topic":"t","data":<depth nested fixarrays>} */
static size_t nested_msgpack_msg(uint8_t *out, int depth)
{
    size_t n = hex2bin("83 a2 6f70 a3 707562 a5 746f706963 a1 74 a4 64617461", out, 64);
    for (int i = 0; i < depth; i++)
        out[n++] = i + 1 < depth ? 0x91 : 0x90;
    return n;
}

static void test_msgpack_depth(void **state)
{
    (void)state;
    uint8_t b[512];
    gale_request_t r;
    size_t n = nested_msgpack_msg(b, GALE_MAX_DEPTH - 1);
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b, n, &r, NULL), GALE_OK);
    assert_int_equal(r.data_len, GALE_MAX_DEPTH - 1);
    n = nested_msgpack_msg(b, GALE_MAX_DEPTH);
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b, n, &r, NULL), GALE_ERR_BAD_REQUEST);
    /* Empty containers and maps count as a level too. */
    assert_true(gale_msgpack_prescan((const uint8_t *)"\x91\x90", 2, 2));
    assert_false(gale_msgpack_prescan((const uint8_t *)"\x91\x90", 2, 1));
    assert_false(gale_msgpack_prescan((const uint8_t *)"\x81\x01\x80", 3, 1));
    assert_true(gale_msgpack_prescan((const uint8_t *)"\x81\x01\x80", 3, 2));
    assert_true(gale_msgpack_prescan((const uint8_t *)"\x01", 1, 0));
    assert_false(gale_msgpack_prescan((const uint8_t *)"\x90", 1, 0));
    /* max_depth is capped at 256 */
    uint8_t deep[300];
    memset(deep, 0x91, sizeof(deep));
    deep[sizeof(deep) - 1] = 0x90;
    assert_false(gale_msgpack_prescan(deep, sizeof(deep), UINT32_MAX));
    assert_true(gale_msgpack_prescan(deep + 44, 256, UINT32_MAX));
}

static void test_msgpack_prescan(void **state)
{
    (void)state;
    static const char *good[] = {
        "c0",
        "c2",
        "c3",
        "00",
        "7f",
        "e0",
        "ff",
        "cc ff",
        "cd ffff",
        "ce ffffffff",
        "cf ffffffffffffffff",
        "d0 80",
        "d1 8000",
        "d2 80000000",
        "d3 8000000000000000",
        "ca 00000000",
        "cb 0000000000000000",
        "a0",
        "bf 00000000000000000000000000000000 000000000000000000000000000000",
        "d9 00",
        "da 0000",
        "db 00000000",
        "c4 00",
        "c5 0000",
        "c6 00000000",
        "c7 00 01",
        "c8 0000 01",
        "c9 00000000 01",
        "d4 01 00",
        "d5 01 0000",
        "d6 01 00000000",
        "d7 01 0000000000000000",
        "d8 01 00000000000000000000000000000000",
        "90",
        "80",
        "dc 0000",
        "dd 00000000",
        "de 0000",
        "df 00000000",
        "92 90 80",
        "82 01 02 03 04",
        "dd 00000002 c0 c0",
    };
    static const char *bad[] = {
        "",
        "c1",
        "cc",
        "cd ff",
        "ce ffffff",
        "cf ffffffffffffff",
        "d0",
        "ca 000000",
        "cb 00",
        "a1",
        "bf",
        "d9",
        "d9 01",
        "da 0001",
        "db 00000001",
        "c4 01",
        "c7 01 01",
        "c7 00",
        "d4 01",
        "d8 01 00",
        "91",
        "81 00",
        "dc 0001",
        "dd 00000001",
        "de 0001 c0",
        "df 00000001",
        "c0 c0",
        "90 00",
        "dd ffffffff",
        "df ffffffff",
        "db ffffffff",
        "c6 ffffffff",
        "c9 ffffffff 00",
        "dd 00000003 c0 c0 c0 c0",
        "df 80000000 c0 c0",
        "dc ffff c0",
        "de 8000 c0 c0",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint8_t b[128];
        size_t n = hex2bin(good[i], b, sizeof(b));
        if (!gale_msgpack_prescan(b, n, 64))
            print_error("good %zu: %s\n", i, good[i]);
        assert_true(gale_msgpack_prescan(b, n, 64));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t b[128];
        size_t n = hex2bin(bad[i], b, sizeof(b));
        if (gale_msgpack_prescan(b, n, 64))
            print_error("bad %zu: %s\n", i, bad[i]);
        assert_false(gale_msgpack_prescan(b, n, 64));
    }
    assert_false(gale_msgpack_prescan(NULL, 0, 64));
}

/* ---- UTF-8 ---- */

static void test_utf8(void **state)
{
    (void)state;
    static const char *good[] = {
        "",
        "a",
        "\x7f",
        "\xc2\x80",
        "\xdf\xbf",
        "\xe0\xa0\x80",
        "\xed\x9f\xbf",
        "\xee\x80\x80",
        "\xef\xbf\xbf",
        "\xf0\x90\x80\x80",
        "\xf4\x8f\xbf\xbf",
        "caf\xc3\xa9",
    };
    static const char *bad[] = {
        "\x80",
        "\xbf",
        "\xc0\x80",
        "\xc1\xbf",
        "\xc2",
        "\xc2\x41",
        "\xe0\x80\x80",
        "\xe0\x9f\xbf",
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xe1\x80",
        "\xf0\x80\x80\x80",
        "\xf0\x8f\xbf\xbf",
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xf8\x88\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xf0\x90\x80",
        "a\xc3",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(gale_utf8_valid((const uint8_t *)good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (gale_utf8_valid((const uint8_t *)bad[i], strlen(bad[i])))
            print_error("bad %zu\n", i);
        assert_false(gale_utf8_valid((const uint8_t *)bad[i], strlen(bad[i])));
    }
    assert_true(gale_utf8_valid((const uint8_t *)"a\0b", 3));
}

/* ---- topics ---- */

static void test_topics(void **state)
{
    (void)state;
    static const char *concrete[] = {
        "a",
        "chat.room-42.typing",
        "a.b.c",
        "caf\xc3\xa9",
        "\xf0\x9f\x98\x80.x",
        "a_b-c/d\"e\\f",
        "#",
        "+",
        "a.#.+",
        "$SYS",
        "\xc2\xa1",
        "\xe2\x80\x8b" /* ZWSP: not White_Space */,
    };
    static const char *patterns_only[] = {"*", ">", "a.*", "a.>", "*.>", "*.*", "a.*.c", "*.b.>"};
    static const char *invalid[] = {
        "",
        ".",
        "..",
        "a.",
        ".a",
        "a..b",
        "a b",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\fb",
        "a\vb",
        "a\x01",
        "a\x7f",
        "\xc2\x80",
        "\xc2\x9f",
        "a\xc2\x85",
        "\xc2\xa0",
        "\xe1\x9a\x80",
        "\xe2\x80\x80",
        "\xe2\x80\x8a",
        "\xe2\x80\xa8",
        "\xe2\x80\xa9",
        "\xe2\x80\xaf",
        "\xe2\x81\x9f",
        "\xe3\x80\x80",
        "a*",
        "*a",
        "**",
        "a>",
        ">a",
        "*>",
        ">*",
        ">>",
        ">.a",
        "a.>.b",
        ">.>",
        "\xc0\xae",
        "\xed\xa0\x80",
        "\xf4\x90\x80\x80",
        "\xe2\x82",
        "a\xff",
    };
    for (size_t i = 0; i < sizeof(concrete) / sizeof(concrete[0]); i++) {
        bool pat = true;
        assert_true(gale_topic_valid(concrete[i], strlen(concrete[i])));
        assert_true(gale_pattern_valid(concrete[i], strlen(concrete[i]), &pat));
        assert_false(pat);
    }
    for (size_t i = 0; i < sizeof(patterns_only) / sizeof(patterns_only[0]); i++) {
        bool pat = false;
        assert_false(gale_topic_valid(patterns_only[i], strlen(patterns_only[i])));
        assert_true(gale_pattern_valid(patterns_only[i], strlen(patterns_only[i]), &pat));
        assert_true(pat);
        assert_true(gale_pattern_valid(patterns_only[i], strlen(patterns_only[i]), NULL));
    }
    for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
        bool pat = true;
        if (gale_pattern_valid(invalid[i], strlen(invalid[i]), NULL))
            print_error("invalid %zu: %s\n", i, invalid[i]);
        assert_false(gale_topic_valid(invalid[i], strlen(invalid[i])));
        assert_false(gale_pattern_valid(invalid[i], strlen(invalid[i]), &pat));
        assert_false(pat);
    }
    assert_false(gale_topic_valid("a\0b", 3));
    assert_false(gale_topic_valid(NULL, 0));
    /* length limits, in bytes */
    char t[300];
    memset(t, 'a', sizeof(t));
    assert_true(gale_topic_valid(t, 255));
    assert_false(gale_topic_valid(t, 256));
    for (int i = 1; i < 255; i += 2)
        t[i] = '.';
    assert_true(gale_topic_valid(t, 255));
    t[254] = '*';
    assert_true(gale_pattern_valid(t, 255, NULL));
    assert_false(gale_topic_valid(t, 255));
    /* 85 three-byte characters = 255 bytes; one more is too long */
    for (int i = 0; i < 86; i++)
        memcpy(t + 3 * i, "\xe2\x82\xac", 3);
    assert_true(gale_topic_valid(t, 255));
    assert_false(gale_topic_valid(t, 258));
}

static void test_pattern_match(void **state)
{
    (void)state;
    static const struct {
        const char *p, *t;
        bool m;
    } cases[] = {
        {"a.*", "a", false},        {"a.*", "a.b", true},
        {"a.*", "a.b.c", false},    {"a.>", "a", false},
        {"a.>", "a.b", true},       {"a.>", "a.b.c", true},
        {"*.>", "a", false},        {"*.>", "a.b", true},
        {"*.>", "a.b.c", true},     {">", "a", true},
        {">", "a.b", true},         {">", "a.b.c", true},
        {"*", "a", true},           {"*", "a.b", false},
        {"*.*", "a.b", true},       {"*.*", "a", false},
        {"a.b", "a.b", true},       {"a.b", "a.bc", false},
        {"a.b", "a.b.c", false},    {"a.b", "a", false},
        {"a.bc", "a.b", false},     {"a", "ab", false},
        {"ab", "a", false},         {"a.*.c", "a.b.c", true},
        {"a.*.c", "a.b.d", false},  {"a.*.c", "a.c", false},
        {"*.b.>", "x.b.y.z", true}, {"*.b.>", "x.c.y", false},
        {"*.b.>", "x.b", false},    {"a.*.>", "a.b", false},
        {"a.*.>", "a.b.c", true},   {"caf\xc3\xa9.*", "caf\xc3\xa9.x", true},
        {"a", "a", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool m = gale_pattern_match(cases[i].p, strlen(cases[i].p), cases[i].t, strlen(cases[i].t));
        if (m != cases[i].m)
            print_error("case %zu: %s vs %s\n", i, cases[i].p, cases[i].t);
        assert_int_equal(m, cases[i].m);
    }
}

/* ---- buffer ---- */

static void test_buf(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 16);
    assert_null(b.data); /* lazy */
    assert_int_equal(b.len, 16);
    assert_int_equal(gale_buf_payload_len(&b), 0);
    for (int i = 0; i < 10000; i++)
        assert_true(gale_buf_append(&b, "abc", 3));
    assert_int_equal(gale_buf_payload_len(&b), 30000);
    assert_true(b.cap >= b.len);
    assert_memory_equal(gale_buf_payload(&b) + 29997, "abc", 3);
    assert_true(gale_buf_append(&b, NULL, 0));
    gale_buf_free(&b);
    assert_null(b.data);
    gale_buf_free(&b); /* twice is fine */
    gale_buf_t z;
    memset(&z, 0, sizeof(z));
    gale_buf_free(&z);
    /* Appends fail without side effects once oom is set. */
    gale_buf_init(&b, 0);
    b.oom = true;
    assert_false(gale_buf_append(&b, "x", 1));
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_JSON, 1), GALE_ERR_INTERNAL);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
    /* An impossible size sets oom instead of wrapping around. */
    gale_buf_init(&b, 0);
    assert_true(gale_buf_append(&b, "x", 1));
    assert_false(gale_buf_append(&b, "x", SIZE_MAX));
    assert_true(b.oom);
    gale_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_json_ops),
        cmocka_unit_test(test_json_data_byte_exact),
        cmocka_unit_test(test_json_escaped_names),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_json_truncated),
        cmocka_unit_test(test_json_depth),
        cmocka_unit_test(test_json_valid_grammar),
        cmocka_unit_test(test_msgpack_ops),
        cmocka_unit_test(test_msgpack_errors),
        cmocka_unit_test(test_msgpack_truncated),
        cmocka_unit_test(test_msgpack_depth),
        cmocka_unit_test(test_msgpack_prescan),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_topics),
        cmocka_unit_test(test_pattern_match),
        cmocka_unit_test(test_buf),
    };
    return cmocka_run_group_tests_name("protocol", tests, NULL, NULL);
}
