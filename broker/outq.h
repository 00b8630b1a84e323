/*
 * outq: a connection's outbound FIFO of frame references, bounded in bytes
 * by its owner. Pushing takes a reference; popping drops it. Frames leave the
 * queue whole, so what is handed to the socket always ends on a frame
 * boundary.
 */
#ifndef GALE_OUTQ_H
#define GALE_OUTQ_H

#include "frame.h"
#include "ring.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

RING_OF(frame_ring, frame_t *)

typedef struct outq {
    frame_ring_t ring; /* the frames, oldest first */
    size_t bytes;      /* sum of the queued frames' lengths */
} outq_t;

/** Appends a reference to f. Returns false (queue unchanged) on allocation failure. */
bool outq_push(outq_t *q, frame_t *f);

/** Frames queued. */
static inline uint32_t outq_count(const outq_t *q)
{
    return q->ring.count;
}

/** The oldest frame, or NULL when empty. */
static inline frame_t *outq_peek(const outq_t *q)
{
    return q->ring.count ? *frame_ring_at(&q->ring, 0) : NULL;
}

/** Removes the oldest frame (which must exist) and drops its reference. */
void outq_pop(outq_t *q);

/**
 * Copies as many whole frames as fit into dst[0..cap), oldest first, and
 * pops them. Returns the bytes copied: 0 when empty or when the oldest frame
 * alone is larger than cap (send that one from outq_peek, then outq_pop).
 * *frames, when not NULL, receives the number of frames copied.
 */
size_t outq_gather(outq_t *q, uint8_t *dst, size_t cap, uint32_t *frames);

/** Drops every queued frame and frees the ring. */
void outq_clear(outq_t *q);

/**
 * Frees the ring of an empty queue. An emptied queue keeps its ring for the next batch
 * (no allocation per batch while messages flow); its owner calls this now and then
 * (gale: the 1 s session sweep), so idle connections hold no ring.
 */
static inline void outq_trim(outq_t *q)
{
    if (!q->ring.count && q->ring.slot)
        outq_clear(q);
}

#endif
