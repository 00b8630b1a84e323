/*
 * Base64 encoding (RFC 4648 section 4, standard alphabet, padded).
 */
#include "internal.h"

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

bool gale__base64_put(gale_buf_t *b, const uint8_t *s, size_t n)
{
    size_t groups = n / 3 + (n % 3 != 0);
    if (groups > (SIZE_MAX - 1) / 4)
        return gale__buf_reserve(b, SIZE_MAX) != NULL; /* sets oom */
    uint8_t *d = gale__buf_reserve(b, groups * 4);
    if (d == NULL)
        return false;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *d++ = (uint8_t)B64[v >> 18];
        *d++ = (uint8_t)B64[(v >> 12) & 63];
        *d++ = (uint8_t)B64[(v >> 6) & 63];
        *d++ = (uint8_t)B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *d++ = (uint8_t)B64[v >> 18];
        *d++ = (uint8_t)B64[(v >> 12) & 63];
        *d++ = '=';
        *d++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        *d++ = (uint8_t)B64[v >> 18];
        *d++ = (uint8_t)B64[(v >> 12) & 63];
        *d++ = (uint8_t)B64[(v >> 6) & 63];
        *d++ = '=';
    }
    b->len += groups * 4;
    return true;
}
