#include "outq.h"

#include <stdlib.h>
#include <string.h>

static bool grow(outq_t *q)
{
    uint32_t ncap = q->cap ? q->cap * 2 : 4;
    if (ncap < q->cap)
        return false;
    frame_t **r = malloc(sizeof(*r) * ncap);
    if (!r)
        return false;
    /* Unwrap into the new ring so the oldest frame is at index 0. */
    for (uint32_t i = 0; i < q->count; i++)
        r[i] = q->ring[(q->head + i) & (q->cap - 1)];
    free(q->ring);
    q->ring = r;
    q->head = 0;
    q->cap = ncap;
    return true;
}

bool outq_push(outq_t *q, frame_t *f)
{
    if (q->count == q->cap && !grow(q))
        return false;
    q->ring[(q->head + q->count) & (q->cap - 1)] = frame_ref(f);
    q->count++;
    q->bytes += f->len;
    return true;
}

void outq_pop(outq_t *q)
{
    frame_t *f = q->ring[q->head];
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    q->bytes -= f->len;
    frame_unref(f);
}

size_t outq_gather(outq_t *q, uint8_t *dst, size_t cap, uint32_t *frames)
{
    size_t n = 0;
    uint32_t k = 0;
    while (k < q->count) {
        frame_t *f = q->ring[(q->head + k) & (q->cap - 1)];
        if (f->len > cap - n)
            break;
        memcpy(dst + n, frame_bytes(f), f->len);
        n += f->len;
        k++;
    }
    for (uint32_t i = 0; i < k; i++) {
        frame_t *f = q->ring[q->head];
        q->head = (q->head + 1) & (q->cap - 1);
        frame_unref(f);
    }
    q->count -= k;
    q->bytes -= n;
    if (frames)
        *frames = k;
    return n;
}

void outq_clear(outq_t *q)
{
    for (uint32_t i = 0; i < q->count; i++)
        frame_unref(q->ring[(q->head + i) & (q->cap - 1)]);
    free(q->ring);
    memset(q, 0, sizeof(*q));
}
