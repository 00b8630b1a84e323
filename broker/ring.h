/*
 * ring: the broker's one FIFO container, a growable ring buffer of fixed-size
 * elements (a power-of-two capacity, doubling when full). The queues of the
 * broker are rings of it: a connection's outbound frames (outq.h), its
 * answers held behind one that waits for the cluster (core.c), and a shard's
 * PUBLISHes awaiting Redis (cluster.c).
 *
 * RING_OF(name, T) declares the type name_t and its typed inline operations:
 * name_reserve, name_push, name_at (i-th oldest), name_shift (remove the
 * oldest), name_free.
 * The growth itself is one function, ring_grow, for every element type.
 * Zero-initialise a ring; it allocates on its first push.
 */
#ifndef GALE_RING_H
#define GALE_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/**
 * Doubles the capacity of the ring whose slots are *slots (cap elements of
 * `size` bytes, count of them from index head on, wrapping), moving its
 * elements to the start of the new memory. Returns false (ring unchanged) on
 * allocation failure or overflow.
 */
bool ring_grow(void **slots, uint32_t *head, uint32_t count, uint32_t *cap, size_t size);

#define RING_OF(name, T)                                                                           \
    typedef struct name {                                                                          \
        T *slot;        /* NULL until the first push */                                            \
        uint32_t head;  /* index of the oldest element */                                          \
        uint32_t count; /* elements in the ring */                                                 \
        uint32_t cap;   /* a power of two */                                                       \
    } name##_t;                                                                                    \
                                                                                                   \
    /* The i-th oldest element (i < count). */                                                     \
    static inline T *name##_at(const name##_t *r, uint32_t i)                                      \
    {                                                                                              \
        return &r->slot[(r->head + i) & (r->cap - 1)];                                             \
    }                                                                                              \
                                                                                                   \
    /* Makes room for one more element; false when out of memory. */                               \
    static inline bool name##_reserve(name##_t *r)                                                 \
    {                                                                                              \
        return r->count < r->cap ||                                                                \
               ring_grow((void **)&r->slot, &r->head, r->count, &r->cap, sizeof(T));               \
    }                                                                                              \
                                                                                                   \
    /* Appends v; false (ring unchanged) when out of memory (never after a _reserve). */           \
    static inline bool name##_push(name##_t *r, T v)                                               \
    {                                                                                              \
        if (!name##_reserve(r))                                                                    \
            return false;                                                                          \
        r->slot[(r->head + r->count++) & (r->cap - 1)] = v;                                        \
        return true;                                                                               \
    }                                                                                              \
                                                                                                   \
    /* Removes and returns the oldest element (count > 0). */                                      \
    static inline T name##_shift(name##_t *r)                                                      \
    {                                                                                              \
        T v = r->slot[r->head];                                                                    \
        r->head = (r->head + 1) & (r->cap - 1);                                                    \
        r->count--;                                                                                \
        return v;                                                                                  \
    }                                                                                              \
                                                                                                   \
    /* Frees the slots (dropping what the elements refer to is the caller's). */                   \
    static inline void name##_free(name##_t *r)                                                    \
    {                                                                                              \
        free(r->slot);                                                                             \
        *r = (name##_t){0};                                                                        \
    }

#endif
