/*
 * UTF-8 decoding and validation (RFC 3629): no overlong forms, no encoded
 * surrogates, nothing above U+10FFFF. Ill-formed input is measured in
 * "maximal subparts" so that each one can be replaced by one U+FFFD.
 */
#include "internal.h"

size_t gale__utf8_next(const uint8_t *s, size_t n, uint32_t *cp)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t need;
    uint32_t v;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        v = c & 0x0F;
        if (c == 0xE0)
            lo = 0xA0; /* no overlongs */
        else if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        v = c & 0x07;
        if (c == 0xF0)
            lo = 0x90; /* no overlongs */
        else if (c == 0xF4)
            hi = 0x8F; /* <= U+10FFFF */
    } else {
        *cp = GALE__UTF8_BAD; /* 80..C1, F5..FF */
        return 1;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (i >= n)
            goto Bad;
        uint8_t d = s[i];
        if (i == 1 ? (d < lo || d > hi) : (d & 0xC0) != 0x80)
            goto Bad;
        v = (v << 6) | (d & 0x3F);
    }
    *cp = v;
    return i;
Bad:
    *cp = GALE__UTF8_BAD;
    return i;
}

bool gale_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        i += gale__utf8_next(s + i, len - i, &cp);
        if (cp == GALE__UTF8_BAD)
            return false;
    }
    return true;
}

size_t gale__utf8_encode(uint8_t *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (uint8_t)(0xC0 | (cp >> 6));
        d[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (uint8_t)(0xE0 | (cp >> 12));
        d[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        d[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (uint8_t)(0xF0 | (cp >> 18));
    d[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    d[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    d[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

bool gale__utf8_put(gale_buf_t *b, uint32_t cp)
{
    uint8_t tmp[4];
    return gale_buf_append(b, tmp, gale__utf8_encode(tmp, cp));
}
