/*
 * dedup: the `mid`s of recent publishes (docs/PROTOCOL.md "Idempotent
 * publish") on a single broker: a pub whose (topic, mid) was seen within the
 * window (--dedup-window) is a duplicate, answered with the offset the first
 * one got. Bounded by --dedup-max entries: when full, a pub with a new mid is
 * refused (err limit) rather than an old mid forgotten early, so a promise of
 * exactly once is never broken silently.
 *
 * Every entry lives the same window, so the entries expire in the order they
 * were added: a FIFO, trimmed from its head, plus a hash table to find them.
 * Pure bookkeeping with no clock: callers pass the time.
 */
#ifndef GALE_DEDUP_H
#define GALE_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dedup dedup_t;

/** A table remembering each mid window_ms, at most max of them. NULL when out of memory. */
dedup_t *dedup_new(uint64_t window_ms, uint64_t max);

void dedup_free(dedup_t *d);

/**
 * Whether (topic, mid) was added within the window; then *off is the offset it was
 * given (0: its topic has no history).
 */
bool dedup_seen(dedup_t *d, const char *topic, size_t topic_len, const char *mid, size_t mid_len,
                uint64_t now_ms, uint64_t *off);

/** Whether a new mid can be added now (expired entries are dropped first). */
bool dedup_room(dedup_t *d, uint64_t now_ms);

/**
 * Remembers (topic, mid) (not seen) with the offset its message got. Returns false when
 * full or out of memory.
 */
bool dedup_add(dedup_t *d, const char *topic, size_t topic_len, const char *mid, size_t mid_len,
               uint64_t off, uint64_t now_ms);

/** Drops expired entries (the 1 s sweep). */
void dedup_sweep(dedup_t *d, uint64_t now_ms);

/** Entries held, and the bytes they take. */
void dedup_stats(const dedup_t *d, uint64_t *entries, uint64_t *bytes);

#endif
