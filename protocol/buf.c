/*
 * gale_buf_t: a growable output buffer with reserved headroom.
 */
#include "internal.h"

#include <stdlib.h>

/* First allocation: enough for a typical small message plus the headroom. */
#define BUF_MIN_CAP 256

void gale_buf_init(gale_buf_t *b, size_t headroom)
{
    b->data = NULL;
    b->len = headroom;
    b->cap = 0;
    b->headroom = headroom;
    b->oom = false;
}

void gale_buf_free(gale_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = 0;
    b->len = b->headroom;
    b->oom = false;
}

uint8_t *gale__buf_reserve(gale_buf_t *b, size_t n)
{
    if (b->oom)
        return NULL;
    if (b->data != NULL && b->cap - b->len >= n)
        return b->data + b->len;
    if (b->len > SIZE_MAX - n)
        goto Fail;
    size_t need = b->len + n;
    size_t cap = b->cap > 0 ? b->cap : BUF_MIN_CAP;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *d = realloc(b->data, cap);
    if (d == NULL)
        goto Fail;
    b->data = d;
    b->cap = cap;
    return b->data + b->len;
Fail:
    b->oom = true;
    return NULL;
}

bool gale_buf_append(gale_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return !b->oom;
    uint8_t *d = gale__buf_reserve(b, n);
    if (d == NULL)
        return false;
    memcpy(d, p, n);
    b->len += n;
    return true;
}

bool gale__buf_put_u64(gale_buf_t *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return gale_buf_append(b, tmp + i, sizeof(tmp) - i);
}

bool gale__buf_put_i64(gale_buf_t *b, int64_t v)
{
    if (v >= 0)
        return gale__buf_put_u64(b, (uint64_t)v);
    gale__buf_put(b, '-');
    return gale__buf_put_u64(b, (uint64_t)0 - (uint64_t)v);
}
