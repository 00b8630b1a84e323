/*
 * bench_hist: a log-linear latency histogram in the manner of HdrHistogram, without the
 * dependency. Values below 128 have a bucket each; above, every power of two is split into
 * 64 buckets, so a reported value is at most 1/64 (1.6%) above the true one. Covers all of
 * uint64_t in 3,776 buckets; a histogram is a plain struct that can be copied over a pipe.
 */
#ifndef GALE_BENCH_HIST_H
#define GALE_BENCH_HIST_H

#include <stdint.h>

#define HIST_BUCKETS (128 + 57 * 64)

typedef struct {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    uint64_t b[HIST_BUCKETS];
} hist_t;

/** Empties @h. */
void hist_reset(hist_t *h);

/** Records one value. */
void hist_add(hist_t *h, uint64_t v);

/** Adds every count of @src to @dst. */
void hist_merge(hist_t *dst, const hist_t *src);

/**
 * The value at or below which @pct percent (0..100) of the recorded values lie: the upper
 * bound of the bucket holding it, never above the recorded maximum. 0 when empty.
 */
uint64_t hist_percentile(const hist_t *h, double pct);

#endif
