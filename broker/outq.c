#include "outq.h"

#include <stdlib.h>
#include <string.h>

bool outq_push(outq_t *q, frame_t *f)
{
    if (!frame_ring_push(&q->ring, f))
        return false;
    frame_ref(f);
    q->bytes += f->len;
    return true;
}

void outq_pop(outq_t *q)
{
    frame_t *f = frame_ring_shift(&q->ring);
    q->bytes -= f->len;
    frame_unref(f);
}

size_t outq_gather(outq_t *q, uint8_t *dst, size_t cap, uint32_t *frames)
{
    size_t n = 0;
    uint32_t k = 0;
    for (; k < q->ring.count; k++) {
        frame_t *f = *frame_ring_at(&q->ring, k);
        if (f->len > cap - n)
            break;
        memcpy(dst + n, frame_bytes(f), f->len);
        n += f->len;
    }
    for (uint32_t i = 0; i < k; i++)
        frame_unref(frame_ring_shift(&q->ring));
    q->bytes -= n;
    if (frames)
        *frames = k;
    return n;
}

void outq_clear(outq_t *q)
{
    while (q->ring.count)
        frame_unref(frame_ring_shift(&q->ring));
    frame_ring_free(&q->ring);
    q->bytes = 0;
}
