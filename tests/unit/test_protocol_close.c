/*
 * Unit tests of protocol/close.c (the payload of a close frame from a peer)
 * and of the property the broker's UTF-8 check of text frames relies on: a
 * JSON request that decodes is valid UTF-8.
 */
#include "test_protocol_util.h"

static const char *check(const char *hex, uint16_t *code)
{
    uint8_t p[256];
    size_t n = hex2bin(hex, p, sizeof(p));
    return gale_close_payload_check(p, n, code);
}

/* The rule, written differently: RFC 6455 7.4.1/7.4.2 and the IANA registry. */
static bool ref_valid(unsigned c)
{
    switch (c) {
    case 1000: /* normal */
    case 1001: /* going away */
    case 1002: /* protocol error */
    case 1003: /* unsupported data */
    case 1007: /* invalid payload */
    case 1008: /* policy violation */
    case 1009: /* message too big */
    case 1010: /* mandatory extension */
    case 1011: /* internal error */
        return true;
    default:
        return c >= 3000 && c < 5000;
    }
}

static void test_close_codes(void **state)
{
    (void)state;
    for (unsigned c = 0; c <= 0xFFFF; c++)
        assert_int_equal(gale_close_code_valid(c), ref_valid(c));
    static const unsigned bad[] = {0,    999,  1004, 1005, 1006, 1012, 1013,
                                   1014, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(gale_close_code_valid(bad[i]));
    assert_false(gale_close_code_valid(70000)); /* not a 16-bit value at all */
}

static void test_close_payloads(void **state)
{
    (void)state;
    uint16_t code = 0;
    /* Empty: valid, no status. */
    assert_null(gale_close_payload_check(NULL, 0, &code));
    assert_int_equal(code, GALE_CLOSE_NO_STATUS);
    /* One byte: never valid. */
    code = 0;
    assert_string_equal(check("03", &code), "close payload of 1 byte");
    assert_int_equal(code, GALE_CLOSE_NO_STATUS);
    /* Codes. */
    assert_null(check("03e8", &code));
    assert_int_equal(code, 1000);
    assert_null(check("03e9", &code));
    assert_null(check("0bb8", &code)); /* 3000 */
    assert_int_equal(code, 3000);
    assert_null(check("0fa0", &code)); /* 4000 */
    assert_null(check("1387", &code)); /* 4999 */
    assert_string_equal(check("03e7", &code), "close code not allowed on the wire");
    assert_int_equal(code, 999);
    assert_non_null(check("03ed", NULL));  /* 1005 */
    assert_non_null(check("03ee", NULL));  /* 1006 */
    assert_non_null(check("03f7", NULL));  /* 1015 */
    assert_non_null(check("1388", &code)); /* 5000 */
    assert_int_equal(code, 5000);
    assert_non_null(check("ffff", &code));
    assert_int_equal(code, 65535);
    assert_non_null(check("0000", NULL));
    /* Reasons: valid UTF-8 only, the whole of it. */
    assert_null(check("03e8 627965", &code));                      /* 1000 "bye" */
    assert_null(check("0fa0 c3a7 61 20 76 61 20 f09f9880", NULL)); /* "ça va 😀" */
    assert_null(check("03e8 00", NULL));                           /* NUL is UTF-8 */
    assert_string_equal(check("03e8 fffe", &code), "close reason is not UTF-8");
    assert_int_equal(code, 1000);
    assert_non_null(check("03e8 62c3", NULL));     /* cut at the end */
    assert_non_null(check("03e8 c0af", NULL));     /* overlong */
    assert_non_null(check("03e8 eda080", NULL));   /* surrogate */
    assert_non_null(check("03e8 f4908080", NULL)); /* above U+10FFFF */
    /* The code is checked before the reason. */
    assert_string_equal(check("1388 ff", NULL), "close code not allowed on the wire");
    /* Length: 125 bytes at most (a control frame). */
    uint8_t p[GALE_CONTROL_MAX + 1];
    memset(p, 'r', sizeof(p));
    p[0] = 0x03;
    p[1] = 0xe8;
    assert_null(gale_close_payload_check(p, GALE_CONTROL_MAX, &code));
    assert_int_equal(code, 1000);
    assert_string_equal(gale_close_payload_check(p, GALE_CONTROL_MAX + 1, &code),
                        "close payload over 125 bytes");
    assert_int_equal(code, GALE_CLOSE_NO_STATUS);
}

/*
 * The broker validates the UTF-8 of a text frame only when it does not decode as a request
 * (broker/session.c handle()): a JSON request that decodes must be valid UTF-8 everywhere.
 */
static void test_json_decode_implies_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"op\":\"ping\",\"x\":\"\xff\"}",
        "{\"op\":\"ping\",\"\xc3\xa9\xff\":1}",                 /* in an unknown key */
        "{\"op\":\"ping\",\"x\":[1,{\"y\":\"\xed\xa0\x80\"}]}", /* nested, surrogate */
        "{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"\xc0\xaf\"}",
        "{\"op\":\"pub\",\"topic\":\"a\",\"data\":\"x\xf4\x90\x80\x80\"}",
        "{\"op\":\"ping\"}\xc3",
        "{\"op\":\"ping\"} \xa0",
        "\xef\xbb\xbf{\"op\":\"ping\"}", /* a BOM is valid UTF-8, but not JSON */
        "{\"op\":\"ping\"\xc2\xa0}",     /* U+00A0 is not JSON whitespace */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gale_request_t r;
        const uint8_t *m = (const uint8_t *)bad[i];
        size_t n = strlen(bad[i]);
        assert_int_not_equal(gale_decode_request(GALE_ENC_JSON, m, n, &r, NULL), GALE_OK);
    }
    static const char *const good[] = {
        "{\"op\":\"ping\",\"x\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}",
        "{\"op\":\"pub\",\"topic\":\"caf\xc3\xa9\",\"data\":[\"\xe2\x82\xac\"]}",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        gale_request_t r;
        const uint8_t *m = (const uint8_t *)good[i];
        size_t n = strlen(good[i]);
        assert_int_equal(gale_decode_request(GALE_ENC_JSON, m, n, &r, NULL), GALE_OK);
        assert_true(gale_utf8_valid(m, n));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_close_payloads),
        cmocka_unit_test(test_json_decode_implies_utf8),
    };
    return cmocka_run_group_tests_name("protocol_close", tests, NULL, NULL);
}
