/*
 * Unit tests of protocol/ output: conversion of `data` between JSON and
 * MessagePack (exact bytes both ways), and the encoders of server messages
 * (exact bytes; MessagePack output also read back with msgpack-c).
 */
#include "test_protocol_util.h"

#include <math.h>
#include <msgpack.h>

/* Converts and returns the payload as hex (JSON -> MessagePack). */
static void j2m(const char *json, const char *want_hex)
{
    gale_buf_t b;
    gale_buf_init(&b, 3);
    gale_err_t e =
        gale_convert_data(&b, GALE_ENC_MSGPACK, GALE_ENC_JSON, (const uint8_t *)json, strlen(json));
    if (e != GALE_OK)
        print_error("j2m failed: %s\n", json);
    assert_int_equal(e, GALE_OK);
    assert_true(gale_msgpack_prescan(gale_buf_payload(&b), gale_buf_payload_len(&b), 64));
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b), want_hex);
    gale_buf_free(&b);
}

/* MessagePack (hex) -> JSON, compared with the expected text. */
static void m2j(const char *hex, const char *want)
{
    uint8_t in[4096];
    size_t n = hex2bin(hex, in, sizeof(in));
    gale_buf_t b;
    gale_buf_init(&b, 0);
    gale_err_t e = gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, in, n);
    if (e != GALE_OK)
        print_error("m2j failed: %s\n", hex);
    assert_int_equal(e, GALE_OK);
    assert_true(gale_json_valid(gale_buf_payload(&b), gale_buf_payload_len(&b), 64));
    assert_payload_str(&b, want);
    gale_buf_free(&b);
}

/* "cb" followed by the bits of d. */
static const char *f64hex(double d, char *out)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    snprintf(out, 32, "cb %016llx", (unsigned long long)u);
    return out;
}

static void test_json_to_msgpack_numbers(void **state)
{
    (void)state;
    char h[32];
    j2m("0", "00");
    j2m("-0", "00");
    j2m("-0.0", "00");
    j2m("1", "01");
    j2m("127", "7f");
    j2m("128", "cc 80");
    j2m("255", "cc ff");
    j2m("256", "cd 0100");
    j2m("65535", "cd ffff");
    j2m("65536", "ce 00010000");
    j2m("4294967295", "ce ffffffff");
    j2m("4294967296", "cf 0000000100000000");
    j2m("9223372036854775807", "cf 7fffffffffffffff");
    j2m("18446744073709551615", "cf ffffffffffffffff");
    j2m("18446744073709551616", "cb 43f0000000000000");
    j2m("-1", "ff");
    j2m("-32", "e0");
    j2m("-33", "d0 df");
    j2m("-128", "d0 80");
    j2m("-129", "d1 ff7f");
    j2m("-32768", "d1 8000");
    j2m("-32769", "d2 ffff7fff");
    j2m("-2147483648", "d2 80000000");
    j2m("-2147483649", "d3 ffffffff7fffffff");
    j2m("-9223372036854775808", "d3 8000000000000000");
    j2m("-9223372036854775809", "cb c3e0000000000000");
    j2m("2.0", "02");
    j2m("1e3", "cd 03e8");
    j2m("1E+3", "cd 03e8");
    j2m("-1.0", "ff");
    j2m("150.0e-2", "cb 3ff8000000000000");
    j2m("0.1", "cb 3fb999999999999a");
    j2m("1.5", "cb 3ff8000000000000");
    j2m("-2.5", "cb c004000000000000");
    j2m("1e308", "cb 7fe1ccf385ebc8a0");
    j2m("1e309", "cb 7ff0000000000000");  /* overflows to +inf */
    j2m("-1e309", "cb fff0000000000000"); /* -inf */
    j2m("1.5e-320", f64hex(1.5e-320, h)); /* subnormal */
    j2m("1e-400", "00");                  /* underflows to 0, which is integral */
    j2m("1e19", "cb 43e158e460913d00");   /* integral but beyond int64 */
    j2m("-9.223372036854775808e18", "d3 8000000000000000");
    j2m("9.223372036854775807e18", "cb 43e0000000000000"); /* rounds to 2^63 */
    j2m("12345678901234567890123", f64hex(12345678901234567890123.0, h));
    /* A long number goes through the heap copy. */
    char longnum[400] = "0.";
    memset(longnum + 2, '1', 300);
    longnum[302] = '\0';
    j2m(longnum, f64hex(0.1111111111111111, h));
}

static void test_json_to_msgpack_values(void **state)
{
    (void)state;
    j2m("true", "c3");
    j2m("false", "c2");
    j2m("null", "c0");
    j2m("\"\"", "a0");
    j2m("[]", "90");
    j2m("{}", "80");
    j2m(" \t[ ]\r\n", "90");
    j2m("[[],{},\"\"]", "93 90 80 a0");
    j2m("{\"a\":[1,{\"b\":null}],\"c\":\"x\"}", "82 a1 61 92 01 81 a1 62 c0 a1 63 a1 78");
    j2m("{\"a\":1,\"a\":2}", "82 a1 61 01 a1 61 02");
    /* escapes */
    j2m("\"\\u0000\"", "a1 00");
    j2m("\"\\ud83d\\ude00\"", "a4 f09f9880");
    j2m("\"\\uD83D\\uDE00\"", "a4 f09f9880");
    j2m("\"\\ud800\"", "a3 efbfbd");
    j2m("\"\\udc00\"", "a3 efbfbd");
    j2m("\"\\udc00\\ud800\"", "a6 efbfbd efbfbd");
    j2m("\"\\ud800x\"", "a4 efbfbd 78");
    j2m("\"\\ud800\\u0041\"", "a4 efbfbd 41");
    j2m("\"\\ud800\\ud800\\udc00\"", "a7 efbfbd f0908080");
    j2m("\"\\u00e9\\u20ac\"", "a5 c3a9 e282ac");
    j2m("\"\\/\\\"\\\\\\b\\f\\n\\r\\t\"", "a8 2f 22 5c 08 0c 0a 0d 09");
    j2m("\"caf\xc3\xa9\"", "a5 636166c3a9");
    /* str header sizes; an escaped string whose header shrinks after unescaping */
    char s[70000];
    s[0] = '"';
    memset(s + 1, 'x', 31);
    strcpy(s + 32, "\"");
    j2m(s, "bf 78787878787878787878787878787878 787878787878787878787878787878");
    strcpy(s, "\"\\u0041\\u0041\\u0041\\u0041\\u0041\\u0041\\u0041\"");
    j2m(s, "a7 41414141414141");
    gale_buf_t b;
    for (size_t len = 30; len < 70000; len = len < 300 ? len + 1 : len * 3) {
        s[0] = '"';
        memset(s + 1, 'y', len);
        s[len + 1] = '"';
        gale_buf_init(&b, 0);
        assert_int_equal(
            gale_convert_data(&b, GALE_ENC_MSGPACK, GALE_ENC_JSON, (uint8_t *)s, len + 2), GALE_OK);
        size_t hl = len <= 31 ? 1 : len <= 255 ? 2 : len <= 65535 ? 3 : 5;
        assert_int_equal(b.len, hl + len);
        uint8_t first = len <= 31      ? (uint8_t)(0xa0 | len)
                        : len <= 255   ? 0xd9
                        : len <= 65535 ? 0xda
                                       : 0xdb;
        assert_int_equal(b.data[0], first);
        gale_buf_free(&b);
    }
    /* container header sizes */
    strcpy(s, "[");
    for (int i = 0; i < 16; i++)
        strcat(s, i ? ",0" : "0");
    strcat(s, "]");
    j2m(s, "dc 0010 00000000000000000000000000000000");
    strcpy(s, "{");
    for (int i = 0; i < 16; i++) {
        char kv[16];
        snprintf(kv, sizeof(kv), "%s\"%c\":0", i ? "," : "", 'a' + i);
        strcat(s, kv);
    }
    strcat(s, "}");
    j2m(s, "de 0010 a161 00 a162 00 a163 00 a164 00 a165 00 a166 00 a167 00 a168 00 a169 00 "
           "a16a 00 a16b 00 a16c 00 a16d 00 a16e 00 a16f 00 a170 00");
    /* More containers than the converter's first count array holds. */
    strcpy(s, "[");
    for (int i = 0; i < 100; i++)
        strcat(s, i ? ",[]" : "[]");
    strcat(s, "]");
    char want[512] = "dc 0064";
    for (int i = 0; i < 100; i++)
        strcat(want, " 90");
    j2m(s, want);
    /* Invalid input converts to nothing. */
    const char *bad[] = {"", " ", "[1,]", "{\"a\"}", "\"\xff\"", "01", "[1] 2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        gale_buf_init(&b, 4);
        assert_int_equal(gale_convert_data(&b, GALE_ENC_MSGPACK, GALE_ENC_JSON,
                                           (const uint8_t *)bad[i], strlen(bad[i])),
                         GALE_ERR_BAD_REQUEST);
        assert_int_equal(b.len, 4);
        gale_buf_free(&b);
    }
}

static void test_msgpack_to_json_values(void **state)
{
    (void)state;
    m2j("c0", "null");
    m2j("c2", "false");
    m2j("c3", "true");
    m2j("00", "0");
    m2j("7f", "127");
    m2j("ff", "-1");
    m2j("e0", "-32");
    m2j("d0 80", "-128");
    m2j("cc ff", "255");
    m2j("cf ffffffffffffffff", "18446744073709551615");
    m2j("d3 8000000000000000", "-9223372036854775808");
    m2j("d3 0000000000000005", "5");
    m2j("cb 3fb999999999999a", "0.1");
    m2j("cb 3ff8000000000000", "1.5");
    m2j("cb 4000000000000000", "2");
    m2j("cb 8000000000000000", "-0");
    m2j("cb 7fe1ccf385ebc8a0", "1e+308");
    m2j("cb 7fefffffffffffff", "1.7976931348623157e+308");
    m2j("cb 0000000000000001", "5e-324");
    m2j("cb 000fffffffffffff", "2.225073858507201e-308");
    m2j("cb 3fd5555555555555", "0.3333333333333333");
    m2j("cb 7ff0000000000000", "null");
    m2j("cb fff0000000000000", "null");
    m2j("cb 7ff8000000000000", "null");
    m2j("cb fff8000000000001", "null");
    m2j("ca 3dcccccd", "0.1");
    m2j("ca 3fc00000", "1.5");
    m2j("ca 7f800000", "null");
    m2j("ca 7fc00000", "null");
    m2j("ca 00000001", "1e-45");
    char h[32];
    uint8_t raw[16];
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, raw,
                                       hex2bin(f64hex(1.5e-320, h), raw, sizeof(raw))),
                     GALE_OK);
    assert_payload_str(&b, "1.5e-320");
    gale_buf_free(&b);
    /* strings */
    m2j("a0", "\"\"");
    m2j("a3 616263", "\"abc\"");
    m2j("a1 00", "\"\\u0000\"");
    m2j("a1 1f", "\"\\u001f\"");
    m2j("a1 7f", "\"\x7f\"");
    m2j("a5 080c0a0d09", "\"\\b\\f\\n\\r\\t\"");
    m2j("a2 225c", "\"\\\"\\\\\"");
    m2j("a1 2f", "\"/\"");
    m2j("a4 f09f9880", "\"\xf0\x9f\x98\x80\"");
    m2j("a3 e280a8", "\"\xe2\x80\xa8\"");
    m2j("d9 03 616263", "\"abc\"");
    /* invalid UTF-8: one U+FFFD per maximal subpart */
    m2j("a2 c0af", "\"\xef\xbf\xbd\xef\xbf\xbd\"");
    m2j("a3 e28241", "\"\xef\xbf\xbd"
                     "A\"");
    m2j("a3 eda080", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    m2j("a4 f4908080", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    m2j("a3 f09f98", "\"\xef\xbf\xbd\"");
    m2j("a2 ff61", "\"\xef\xbf\xbd"
                   "a\"");
    m2j("a5 61 80 62 c3 63", "\"a\xef\xbf\xbd"
                             "b\xef\xbf\xbd"
                             "c\"");
    /* bin, ext */
    m2j("c4 00", "\"\"");
    m2j("c4 01 ff", "\"/w==\"");
    m2j("c4 02 fbff", "\"+/8=\"");
    m2j("c4 03 010203", "\"AQID\"");
    m2j("c5 0004 68656c6c", "\"aGVsbA==\"");
    m2j("d4 05 ff", "{\"ext\":5,\"base64\":\"/w==\"}");
    m2j("c7 00 ff", "{\"ext\":-1,\"base64\":\"\"}");
    m2j("d6 ff 00000000", "{\"ext\":-1,\"base64\":\"AAAAAA==\"}");
    m2j("c8 0003 80 616263", "{\"ext\":-128,\"base64\":\"YWJj\"}");
    /* containers */
    m2j("90", "[]");
    m2j("80", "{}");
    m2j("dc 0000", "[]");
    m2j("92 01 c4 01 61", "[1,\"YQ==\"]");
    m2j("82 a1 61 92 01 c0 a1 62 80", "{\"a\":[1,null],\"b\":{}}");
    /* non-string keys: their JSON text as the key; bin keys: base64 */
    m2j("81 01 02", "{\"1\":2}");
    m2j("81 ff 02", "{\"-1\":2}");
    m2j("81 c0 01", "{\"null\":1}");
    m2j("81 c3 01", "{\"true\":1}");
    m2j("81 92 01 02 03", "{\"[1,2]\":3}");
    m2j("81 c4 01 61 01", "{\"YQ==\":1}");
    m2j("81 81 a1 61 01 02", "{\"{\\\"a\\\":1}\":2}");
    m2j("81 cb 3ff8000000000000 01", "{\"1.5\":1}");
    m2j("81 d4 01 00 01", "{\"{\\\"ext\\\":1,\\\"base64\\\":\\\"AA==\\\"}\":1}");
    m2j("81 a1 22 01", "{\"\\\"\":1}");
    m2j("81 a2 c0af 01", "{\"\xef\xbf\xbd\xef\xbf\xbd\":1}");
    m2j("82 01 02 a1 31 03", "{\"1\":2,\"1\":3}");
    /* Malformed input converts to nothing. */
    const char *bad[] = {"", "c1", "91", "c0 c0", "dd ffffffff", "db ffffffff", "a2 61"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t in[16];
        size_t n = hex2bin(bad[i], in, sizeof(in));
        gale_buf_init(&b, 2);
        assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, in, n),
                         GALE_ERR_BAD_REQUEST);
        assert_int_equal(b.len, 2);
        gale_buf_free(&b);
    }
}

/* MessagePack nested beyond msgpack-c's 32-level unpack stack still converts. */
static void test_msgpack_to_json_deep(void **state)
{
    (void)state;
    for (int depth = 30; depth <= GALE_MAX_DEPTH; depth++) {
        uint8_t in[256];
        char want[512];
        size_t n = 0, w = 0;
        /* [1,{"k":[1,{"k":...[]...}]}] alternating arrays and maps */
        for (int i = 0; i < depth; i++) {
            bool last = i + 1 == depth;
            if (i % 2 == 0) {
                in[n++] = last ? 0x90 : 0x92;
                want[w++] = '[';
                if (!last) {
                    in[n++] = 0x01;
                    want[w++] = '1';
                    want[w++] = ',';
                }
            } else {
                in[n++] = last ? 0x80 : 0x81;
                want[w++] = '{';
                if (!last) {
                    in[n++] = 0xa1;
                    in[n++] = 'k';
                    memcpy(want + w, "\"k\":", 4);
                    w += 4;
                }
            }
        }
        for (int i = depth - 1; i >= 0; i--)
            want[w++] = i % 2 == 0 ? ']' : '}';
        want[w] = '\0';
        gale_buf_t b;
        gale_buf_init(&b, 0);
        assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, in, n), GALE_OK);
        assert_payload_str(&b, want);
        /* and back */
        gale_buf_t m;
        gale_buf_init(&m, 0);
        assert_int_equal(gale_convert_data(&m, GALE_ENC_MSGPACK, GALE_ENC_JSON, b.data, b.len),
                         GALE_OK);
        assert_int_equal(m.len, n);
        assert_memory_equal(m.data, in, n);
        gale_buf_free(&m);
        gale_buf_free(&b);
    }
    /* Deeper than GALE_MAX_DEPTH: refused. */
    uint8_t deep[65];
    memset(deep, 0x91, 64);
    deep[64] = 0x90;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, deep, 65),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    /* A 40-deep array as a map key, and a deep bin-keyed map below 32 levels. */
    uint8_t in[128];
    size_t n = 0;
    in[n++] = 0x81;
    for (int i = 0; i < 39; i++)
        in[n++] = 0x91;
    in[n++] = 0x90;
    in[n++] = 0x01;
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, in, n), GALE_OK);
    char want[256] = "{\"";
    for (int i = 0; i < 40; i++)
        strcat(want, "[");
    for (int i = 0; i < 40; i++)
        strcat(want, "]");
    strcat(want, "\":1}");
    assert_payload_str(&b, want);
    gale_buf_free(&b);
    n = 0;
    for (int i = 0; i < 40; i++)
        in[n++] = 0x91;
    n += hex2bin("82 c4 01 61 c0 01 d4 01 00", in + n, 16);
    gale_buf_init(&b, 0);
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, in, n), GALE_OK);
    strcpy(want, "");
    for (int i = 0; i < 40; i++)
        strcat(want, "[");
    strcat(want, "{\"YQ==\":null,\"1\":{\"ext\":1,\"base64\":\"AA==\"}}");
    for (int i = 0; i < 40; i++)
        strcat(want, "]");
    assert_payload_str(&b, want);
    gale_buf_free(&b);
}

static void test_convert_same_encoding(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    const char *j = "[ 1 ,\t2 ]";
    assert_int_equal(
        gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_JSON, (const uint8_t *)j, strlen(j)),
        GALE_OK);
    assert_payload_str(&b, j);
    b.len = 0;
    uint8_t m[9];
    hex2bin("cf 0000000000000001", m, sizeof(m));
    assert_int_equal(gale_convert_data(&b, GALE_ENC_MSGPACK, GALE_ENC_MSGPACK, m, 9), GALE_OK);
    assert_bytes_hex(b.data, b.len, "cf 0000000000000001");
    b.len = 0;
    assert_int_equal(gale_convert_data(&b, GALE_ENC_MSGPACK, GALE_ENC_MSGPACK, m, 0),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_convert_data(&b, (gale_enc_t)3, GALE_ENC_MSGPACK, m, 9),
                     GALE_ERR_INTERNAL);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

/* JSON -> MessagePack -> JSON -> MessagePack -> JSON reaches a fixpoint. */
static void test_round_trips(void **state)
{
    (void)state;
    const char *docs[] = {
        "{\"a\":[1,-1,0.5,1e300,-1e-300,18446744073709551615,-9223372036854775808,true,false,"
        "null,\"\\u0000\\ud800\\ud83d\\ude00\\n\xc3\xa9\"],\"\":{}}",
        "[1e309,-0,2.0,0.1,1.5e-320,123456789012345678901234567890]",
        "\"x\"",
    };
    const char *want[] = {
        "{\"a\":[1,-1,0.5,1e+300,-1e-300,18446744073709551615,-9223372036854775808,true,false,"
        "null,\"\\u0000\xef\xbf\xbd\xf0\x9f\x98\x80\\n\xc3\xa9\"],\"\":{}}",
        "[null,0,2,0.1,1.5e-320,1.2345678901234568e+29]",
        "\"x\"",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        gale_buf_t m, j, m2, j2;
        gale_buf_init(&m, 0);
        gale_buf_init(&j, 0);
        gale_buf_init(&m2, 0);
        gale_buf_init(&j2, 0);
        assert_int_equal(gale_convert_data(&m, GALE_ENC_MSGPACK, GALE_ENC_JSON,
                                           (const uint8_t *)docs[i], strlen(docs[i])),
                         GALE_OK);
        assert_int_equal(gale_convert_data(&j, GALE_ENC_JSON, GALE_ENC_MSGPACK, m.data, m.len),
                         GALE_OK);
        assert_payload_str(&j, want[i]);
        assert_int_equal(gale_convert_data(&m2, GALE_ENC_MSGPACK, GALE_ENC_JSON, j.data, j.len),
                         GALE_OK);
        assert_int_equal(gale_convert_data(&j2, GALE_ENC_JSON, GALE_ENC_MSGPACK, m2.data, m2.len),
                         GALE_OK);
        assert_payload_str(&j2, want[i]);
        gale_buf_free(&m);
        gale_buf_free(&j);
        gale_buf_free(&m2);
        gale_buf_free(&j2);
    }
}

/* ---- encoders ---- */

static void test_encode_json(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 10);
    assert_int_equal(gale_encode_hello(&b, GALE_ENC_JSON, "n1", "c\"2\x01", 65536), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"hello\",\"v\":1,\"node\":\"n1\",\"conn\":\"c\\\"2\\u0001\","
                           "\"max_msg\":65536}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_JSON, 42), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"ack\",\"id\":42}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_JSON, GALE_ID_MAX), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"ack\",\"id\":9007199254740991}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_pong(&b, GALE_ENC_JSON, false, 9), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"pong\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_pong(&b, GALE_ENC_JSON, true, 0), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"pong\",\"id\":0}");
    b.len = b.headroom;
    assert_int_equal(
        gale_encode_err(&b, GALE_ENC_JSON, false, 0, GALE_ERR_BAD_TOPIC, "invalid topic"), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"err\",\"code\":\"bad_topic\",\"msg\":\"invalid topic\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_err(&b, GALE_ENC_JSON, true, 5, GALE_ERR_UNKNOWN_OP, "x\ny\xff"),
                     GALE_OK);
    assert_payload_str(
        &b, "{\"op\":\"err\",\"id\":5,\"code\":\"unknown_op\",\"msg\":\"x\\ny\xef\xbf\xbd\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_err(&b, GALE_ENC_JSON, false, 0, GALE_ERR_LIMIT, NULL), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"err\",\"code\":\"limit\",\"msg\":\"\"}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_ack(&b, (gale_enc_t)2, 1), GALE_ERR_INTERNAL);
    assert_int_equal(b.len, b.headroom);
    /* msg: same encoding copies byte-exact */
    const char *d = "[ 1 ,\n2 ]";
    assert_int_equal(
        gale_encode_msg(&b, GALE_ENC_JSON, "a.b", 3, GALE_ENC_JSON, (const uint8_t *)d, strlen(d)),
        GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"a.b\",\"data\":[ 1 ,\n2 ]}");
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "a\"b\\c\xc3\xa9", 7, GALE_ENC_JSON,
                                     (const uint8_t *)"1", 1),
                     GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"a\\\"b\\\\c\xc3\xa9\",\"data\":1}");
    /* msg: MessagePack data converted; a top-level bin becomes "bin" */
    uint8_t m[32];
    size_t n = hex2bin("92 01 c4 02 6869", m, sizeof(m));
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "a.b", 3, GALE_ENC_MSGPACK, m, n), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"a.b\",\"data\":[1,\"aGk=\"]}");
    n = hex2bin("c4 02 6869", m, sizeof(m));
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "a.b", 3, GALE_ENC_MSGPACK, m, n), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"a.b\",\"bin\":\"aGk=\"}");
    n = hex2bin("c6 00000000", m, sizeof(m));
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "t", 1, GALE_ENC_MSGPACK, m, n), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"t\",\"bin\":\"\"}");
    n = hex2bin("cb 7ff0000000000000", m, sizeof(m));
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "t", 1, GALE_ENC_MSGPACK, m, n), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"msg\",\"topic\":\"t\",\"data\":null}");
    /* unconvertible data: error, nothing appended */
    b.len = b.headroom;
    n = hex2bin("dd ffffffff", m, sizeof(m));
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_JSON, "t", 1, GALE_ENC_MSGPACK, m, n),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, b.headroom);
    assert_int_equal(
        gale_encode_msg(&b, GALE_ENC_MSGPACK, "t", 1, GALE_ENC_JSON, (const uint8_t *)"[", 1),
        GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, b.headroom);
    /* Several messages appended one after the other. */
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_JSON, 1), GALE_OK);
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_JSON, 2), GALE_OK);
    assert_payload_str(&b, "{\"op\":\"ack\",\"id\":1}{\"op\":\"ack\",\"id\":2}");
    gale_buf_free(&b);
}

/* Looks key up in a msgpack-c map object. */
static const msgpack_object *mp_get(const msgpack_object *map, const char *key)
{
    assert_int_equal(map->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == strlen(key) &&
            memcmp(k->via.str.ptr, key, k->via.str.size) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static void assert_mp_str(const msgpack_object *o, const char *s)
{
    assert_non_null(o);
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(s));
    assert_memory_equal(o->via.str.ptr, s, strlen(s));
}

/* Unpacks the payload with msgpack-c: exactly one map of `fields` entries. */
static void unpack_payload(gale_buf_t *b, msgpack_unpacked *u, uint32_t fields)
{
    size_t off = 0;
    msgpack_unpacked_init(u);
    assert_int_equal(
        msgpack_unpack_next(u, (const char *)gale_buf_payload(b), gale_buf_payload_len(b), &off),
        MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, gale_buf_payload_len(b));
    assert_int_equal(u->data.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(u->data.via.map.size, fields);
}

static void test_encode_msgpack(void **state)
{
    (void)state;
    gale_buf_t b;
    msgpack_unpacked u;
    gale_buf_init(&b, 16);

    assert_int_equal(gale_encode_hello(&b, GALE_ENC_MSGPACK, "n1", "c2", 65536), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "85 a2 6f70 a5 68656c6c6f a1 76 01 a4 6e6f6465 a2 6e31 a4 636f6e6e a2 6332 "
                     "a7 6d61785f6d7367 ce 00010000");
    unpack_payload(&b, &u, 5);
    assert_mp_str(mp_get(&u.data, "op"), "hello");
    assert_int_equal(mp_get(&u.data, "v")->via.u64, 1);
    assert_mp_str(mp_get(&u.data, "node"), "n1");
    assert_mp_str(mp_get(&u.data, "conn"), "c2");
    assert_int_equal(mp_get(&u.data, "max_msg")->via.u64, 65536);
    msgpack_unpacked_destroy(&u);

    b.len = b.headroom;
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_MSGPACK, 42), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "82 a2 6f70 a3 61636b a2 6964 2a");
    b.len = b.headroom;
    assert_int_equal(gale_encode_ack(&b, GALE_ENC_MSGPACK, GALE_ID_MAX), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "82 a2 6f70 a3 61636b a2 6964 cf 001fffffffffffff");
    unpack_payload(&b, &u, 2);
    assert_mp_str(mp_get(&u.data, "op"), "ack");
    assert_int_equal(mp_get(&u.data, "id")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(mp_get(&u.data, "id")->via.u64, GALE_ID_MAX);
    msgpack_unpacked_destroy(&u);

    b.len = b.headroom;
    assert_int_equal(gale_encode_pong(&b, GALE_ENC_MSGPACK, false, 0), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b), "81 a2 6f70 a4 706f6e67");
    b.len = b.headroom;
    assert_int_equal(gale_encode_pong(&b, GALE_ENC_MSGPACK, true, 300), GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "82 a2 6f70 a4 706f6e67 a2 6964 cd 012c");

    b.len = b.headroom;
    assert_int_equal(gale_encode_err(&b, GALE_ENC_MSGPACK, false, 0, GALE_ERR_BAD_TOPIC, "x"),
                     GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "83 a2 6f70 a3 657272 a4 636f6465 a9 6261645f746f706963 a3 6d7367 a1 78");
    b.len = b.headroom;
    assert_int_equal(
        gale_encode_err(&b, GALE_ENC_MSGPACK, true, 70000, GALE_ERR_FORBIDDEN, "no access"),
        GALE_OK);
    unpack_payload(&b, &u, 4);
    assert_mp_str(mp_get(&u.data, "op"), "err");
    assert_int_equal(mp_get(&u.data, "id")->via.u64, 70000);
    assert_mp_str(mp_get(&u.data, "code"), "forbidden");
    assert_mp_str(mp_get(&u.data, "msg"), "no access");
    msgpack_unpacked_destroy(&u);

    /* msg, same encoding: data byte-exact (even non-canonical) */
    uint8_t m[64];
    size_t n = hex2bin("92 cf 0000000000000001 c4 01 ff", m, sizeof(m));
    b.len = b.headroom;
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_MSGPACK, "a.b", 3, GALE_ENC_MSGPACK, m, n),
                     GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "83 a2 6f70 a3 6d7367 a5 746f706963 a3 612e62 a4 64617461 "
                     "92 cf 0000000000000001 c4 01 ff");
    unpack_payload(&b, &u, 3);
    assert_mp_str(mp_get(&u.data, "op"), "msg");
    assert_mp_str(mp_get(&u.data, "topic"), "a.b");
    assert_int_equal(mp_get(&u.data, "data")->type, MSGPACK_OBJECT_ARRAY);
    msgpack_unpacked_destroy(&u);

    /* msg, JSON data converted */
    const char *d = " {\"k\": [1, -1.5, \"\\u00e9\", null]} ";
    b.len = b.headroom;
    assert_int_equal(
        gale_encode_msg(&b, GALE_ENC_MSGPACK, "t", 1, GALE_ENC_JSON, (const uint8_t *)d, strlen(d)),
        GALE_OK);
    assert_bytes_hex(gale_buf_payload(&b), gale_buf_payload_len(&b),
                     "83 a2 6f70 a3 6d7367 a5 746f706963 a1 74 a4 64617461 "
                     "81 a1 6b 94 01 cb bff8000000000000 a2 c3a9 c0");
    unpack_payload(&b, &u, 3);
    const msgpack_object *data = mp_get(&u.data, "data");
    const msgpack_object *k = mp_get(data, "k");
    assert_int_equal(k->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(k->via.array.ptr[1].type, MSGPACK_OBJECT_FLOAT64);
    assert_true(k->via.array.ptr[1].via.f64 == -1.5);
    msgpack_unpacked_destroy(&u);

    /* A long topic uses str8. */
    char topic[200];
    memset(topic, 'x', sizeof(topic));
    b.len = b.headroom;
    assert_int_equal(
        gale_encode_msg(&b, GALE_ENC_MSGPACK, topic, 200, GALE_ENC_JSON, (const uint8_t *)"1", 1),
        GALE_OK);
    assert_int_equal(gale_buf_payload(&b)[14], 0xd9);
    assert_int_equal(gale_buf_payload(&b)[15], 200);
    unpack_payload(&b, &u, 3);
    assert_int_equal(mp_get(&u.data, "topic")->via.str.size, 200);
    msgpack_unpacked_destroy(&u);
    gale_buf_free(&b);
}

/* decode -> encode_msg to both encodings, for both input encodings */
static void test_decode_then_encode(void **state)
{
    (void)state;
    const char *json = "{\"op\":\"pub\",\"topic\":\"x.y\",\"data\":{\"n\":[1,2.5,\"s\"]},\"id\":1}";
    gale_request_t r;
    assert_int_equal(dec_json(json, &r), GALE_OK);
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_encode_msg(&b, GALE_ENC_MSGPACK, r.topic, r.topic_len, GALE_ENC_JSON,
                                     r.data, r.data_len),
                     GALE_OK);
    gale_request_t r2;
    /* The msgpack msg decodes as a map; turn it into a pub by hand to re-read data. */
    assert_true(gale_msgpack_prescan(b.data, b.len, GALE_MAX_DEPTH));
    assert_bytes_hex(b.data, b.len,
                     "83 a2 6f70 a3 6d7367 a5 746f706963 a3 782e79 a4 64617461 "
                     "81 a1 6e 93 01 cb 4004000000000000 a1 73");
    /* op "msg" is not a client op */
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, b.data, b.len, &r2, NULL),
                     GALE_ERR_UNKNOWN_OP);
    gale_buf_free(&b);
}

/* Inputs that fuzzing found to misbehave; each once failed. */
static void test_fuzz_regressions(void **state)
{
    (void)state;
    /* fuzz_convert: an empty string reached the JSON escaper as (NULL, 0) (UBSan). */
    j2m("\"\"", "a0");
    m2j("a0", "\"\"");
    m2j("81 a0 01", "{\"\":1}");
    m2j("81 c4 00 01", "{\"\":1}");
    /*
     * fuzz_convert: an ext at the deepest allowed level became a JSON object one
     * level too deep. Such data is refused: an ext counts as a level.
     */
    uint8_t deep[80];
    memset(deep, 0x91, sizeof(deep));
    memcpy(deep + 63, "\xd5\x91\x91\x90", 4); /* 63 arrays, then fixext2 */
    gale_buf_t b;
    gale_buf_init(&b, 0);
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, deep, 67), GALE_OK);
    assert_true(gale_json_valid(b.data, b.len, GALE_MAX_DEPTH));
    assert_false(gale_json_valid(b.data, b.len, GALE_MAX_DEPTH - 1));
    b.len = 0;
    memset(deep, 0x91, sizeof(deep));
    memcpy(deep + 64, "\xd5\x91\x91\x90", 4); /* 64 arrays, then fixext2 */
    assert_true(gale_msgpack_prescan(deep, 68, GALE_MAX_DEPTH));
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, deep, 68),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
    /* The same limit applies to a published message (the map is level 1). */
    uint8_t msg[128];
    size_t n = hex2bin("83 a2 6f70 a3 707562 a5 746f706963 a1 74 a4 64617461", msg, sizeof(msg));
    memset(msg + n, 0x91, 62);
    memcpy(msg + n + 62, "\xd4\x01\x00", 3);
    gale_request_t r;
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, msg, n + 65, &r, NULL), GALE_OK);
    memset(msg + n, 0x91, 63);
    memcpy(msg + n + 63, "\xd4\x01\x00", 3);
    assert_int_equal(gale_decode_request(GALE_ENC_MSGPACK, msg, n + 66, &r, NULL),
                     GALE_ERR_BAD_REQUEST);
    /*
     * fuzz_decode_msgpack (slow unit, 363 ms for 3.8 KB): map keys nested in
     * map keys are escaped once per level, doubling each time. Conversion has
     * an output budget (32 x input + 256); such data is refused instead.
     */
    m2j("81 81 81 c0 c0 c0 c0", "{\"{\\\"{\\\\\\\"null\\\\\\\":null}\\\":null}\":null}");
    uint8_t bomb[64];
    size_t bn = 0;
    for (int i = 0; i < 24; i++)
        bomb[bn++] = 0x81;
    bomb[bn++] = 0xc0;
    for (int i = 0; i < 24; i++)
        bomb[bn++] = 0xc0;
    gale_buf_init(&b, 0);
    assert_true(gale_msgpack_prescan(bomb, bn, GALE_MAX_DEPTH));
    assert_int_equal(gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, bomb, bn),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
    m2j("81 c7 00 05 01", "{\"{\\\"ext\\\":5,\\\"base64\\\":\\\"\\\"}\":1}");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_to_msgpack_numbers),
        cmocka_unit_test(test_json_to_msgpack_values),
        cmocka_unit_test(test_msgpack_to_json_values),
        cmocka_unit_test(test_msgpack_to_json_deep),
        cmocka_unit_test(test_convert_same_encoding),
        cmocka_unit_test(test_round_trips),
        cmocka_unit_test(test_encode_json),
        cmocka_unit_test(test_encode_msgpack),
        cmocka_unit_test(test_decode_then_encode),
        cmocka_unit_test(test_fuzz_regressions),
    };
    return cmocka_run_group_tests_name("protocol_convert", tests, NULL, NULL);
}
