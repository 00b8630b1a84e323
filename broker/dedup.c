#include "dedup.h"

#include "cluster_wire.h"

#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *hnext; /* hash chain */
    struct entry *next;  /* FIFO, oldest first */
    uint64_t hash;
    uint64_t at_ms;
    uint64_t off;
    uint8_t topic_len, mid_len;
    char key[]; /* topic then mid */
} entry_t;

struct dedup {
    uint64_t window_ms, max;
    entry_t **buckets;
    size_t nbuckets;
    entry_t *head, *tail;
    uint64_t count, bytes;
};

static uint64_t key_hash(const char *topic, size_t tl, const char *mid, size_t ml)
{
    /* topic and mid apart, so that ("a.b", "c") and ("a", ".bc") differ */
    return cluster_hash64(topic, tl) * 31 ^ cluster_hash64(mid, ml);
}

dedup_t *dedup_new(uint64_t window_ms, uint64_t max)
{
    dedup_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    d->window_ms = window_ms;
    d->max = max;
    d->nbuckets = 64;
    if (!(d->buckets = calloc(d->nbuckets, sizeof(*d->buckets)))) {
        free(d);
        return NULL;
    }
    return d;
}

void dedup_free(dedup_t *d)
{
    if (!d)
        return;
    for (entry_t *e = d->head, *next; e; e = next) {
        next = e->next;
        free(e);
    }
    free(d->buckets);
    free(d);
}

static void drop_head(dedup_t *d)
{
    entry_t *e = d->head;
    entry_t **pp = &d->buckets[e->hash & (d->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    d->head = e->next;
    if (!d->head)
        d->tail = NULL;
    d->count--;
    d->bytes -= sizeof(*e) + e->topic_len + e->mid_len;
    free(e);
}

void dedup_sweep(dedup_t *d, uint64_t now_ms)
{
    while (d && d->head && now_ms - d->head->at_ms >= d->window_ms)
        drop_head(d);
}

bool dedup_seen(dedup_t *d, const char *topic, size_t tl, const char *mid, size_t ml,
                uint64_t now_ms, uint64_t *off)
{
    uint64_t h = key_hash(topic, tl, mid, ml);
    for (entry_t *e = d->buckets[h & (d->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash == h && e->topic_len == tl && e->mid_len == ml &&
            memcmp(e->key, topic, tl) == 0 && memcmp(e->key + tl, mid, ml) == 0) {
            if (now_ms - e->at_ms >= d->window_ms)
                return false; /* expired, not swept yet */
            *off = e->off;
            return true;
        }
    }
    return false;
}

bool dedup_room(dedup_t *d, uint64_t now_ms)
{
    dedup_sweep(d, now_ms);
    return d->count < d->max;
}

static void grow(dedup_t *d)
{
    size_t n = d->nbuckets * 2;
    entry_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < d->nbuckets; i++) {
        for (entry_t *e = d->buckets[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = nb[e->hash & (n - 1)];
            nb[e->hash & (n - 1)] = e;
        }
    }
    free(d->buckets);
    d->buckets = nb;
    d->nbuckets = n;
}

bool dedup_add(dedup_t *d, const char *topic, size_t tl, const char *mid, size_t ml, uint64_t off,
               uint64_t now_ms)
{
    if (!dedup_room(d, now_ms) || tl > UINT8_MAX || ml > UINT8_MAX)
        return false;
    entry_t *e = malloc(sizeof(*e) + tl + ml);
    if (!e)
        return false;
    *e = (entry_t){.hash = key_hash(topic, tl, mid, ml),
                   .at_ms = now_ms,
                   .off = off,
                   .topic_len = (uint8_t)tl,
                   .mid_len = (uint8_t)ml};
    memcpy(e->key, topic, tl);
    memcpy(e->key + tl, mid, ml);
    if (d->count >= d->nbuckets)
        grow(d);
    e->hnext = d->buckets[e->hash & (d->nbuckets - 1)];
    d->buckets[e->hash & (d->nbuckets - 1)] = e;
    if (d->tail)
        d->tail->next = e;
    else
        d->head = e;
    d->tail = e;
    d->count++;
    d->bytes += sizeof(*e) + tl + ml;
    return true;
}

void dedup_stats(const dedup_t *d, uint64_t *entries, uint64_t *bytes)
{
    *entries = d ? d->count : 0;
    *bytes = d ? d->bytes + d->nbuckets * sizeof(*d->buckets) : 0;
}
