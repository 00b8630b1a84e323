/* bench_hist: log-linear histogram, see bench_hist.h. */
#include "bench_hist.h"

#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    if (v < 128)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6; /* >= 1: the mantissa keeps 7 bits, 64..127 */
    unsigned mant = (unsigned)(v >> shift);
    return 128 + (shift - 1) * 64 + (mant - 64);
}

static uint64_t bucket_top(unsigned idx)
{
    if (idx < 128)
        return idx;
    unsigned shift = (idx - 128) / 64 + 1;
    uint64_t mant = (idx - 128) % 64 + 64;
    return ((mant + 1) << shift) - 1;
}

void hist_reset(hist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

void hist_add(hist_t *h, uint64_t v)
{
    h->b[bucket_of(v)]++;
    h->count++;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t hist_percentile(const hist_t *h, double pct)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(pct / 100.0 * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t top = bucket_top(i);
            return top > h->max ? h->max : top;
        }
    }
    return h->max;
}
