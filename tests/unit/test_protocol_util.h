/*
 * Helpers shared by the protocol unit tests (header-only: each test_*.c is
 * its own executable).
 */
#ifndef TEST_PROTOCOL_UTIL_H
#define TEST_PROTOCOL_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gale_protocol.h"

/* Parses hex digits (spaces ignored) into out; returns the byte count. */
static inline size_t hex2bin(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    int hi = -1;
    for (const char *p = hex; *p; p++) {
        int v;
        if (*p >= '0' && *p <= '9')
            v = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            v = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F')
            v = *p - 'A' + 10;
        else
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            assert_true(n < cap);
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    assert_int_equal(hi, -1);
    return n;
}

/* Lower-case hex of p[0..n), space separated, in a static-free caller buffer. */
static inline char *bin2hex(const uint8_t *p, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 4 < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, i ? " %02x" : "%02x", p[i]);
    return out;
}

/* Asserts that p[0..n) equals the bytes written in hex. */
#define assert_bytes_hex(p, n, hex)                                                                \
    do {                                                                                           \
        uint8_t want_[4096];                                                                       \
        char got_[16384], exp_[16384];                                                             \
        size_t wn_ = hex2bin((hex), want_, sizeof(want_));                                         \
        bin2hex((p), (n), got_, sizeof(got_));                                                     \
        bin2hex(want_, wn_, exp_, sizeof(exp_));                                                   \
        assert_string_equal(got_, exp_);                                                           \
    } while (0)

/* Asserts that a buffer's payload is exactly the C string s. */
#define assert_payload_str(b, s)                                                                   \
    do {                                                                                           \
        size_t n_ = gale_buf_payload_len(b);                                                       \
        char *t_ = malloc(n_ + 1);                                                                 \
        assert_non_null(t_);                                                                       \
        memcpy(t_, gale_buf_payload(b), n_);                                                       \
        t_[n_] = '\0';                                                                             \
        assert_string_equal(t_, (s));                                                              \
        free(t_);                                                                                  \
    } while (0)

static inline gale_err_t dec_json(const char *s, gale_request_t *r)
{
    const char *why = NULL;
    gale_err_t e = gale_decode_request(GALE_ENC_JSON, (const uint8_t *)s, strlen(s), r, &why);
    if (e != GALE_OK)
        assert_non_null(why);
    return e;
}

static inline gale_err_t dec_hex(const char *hex, gale_request_t *r, uint8_t *buf, size_t cap)
{
    const char *why = NULL;
    size_t n = hex2bin(hex, buf, cap);
    gale_err_t e = gale_decode_request(GALE_ENC_MSGPACK, buf, n, r, &why);
    if (e != GALE_OK)
        assert_non_null(why);
    return e;
}

#endif
