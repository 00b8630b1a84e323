#include "iplimit.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define MIN_BUCKETS 16u

struct iplimit {
    iplimit_entry_t **buckets;
    uint32_t nbuckets; /* a power of two */
    uint32_t n;        /* entries */
    uint32_t max;      /* connections allowed per address */
    uint64_t conns;    /* slots held */
    uint64_t k0, k1;   /* SipHash key */
};

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-1-3 of the 16 bytes of a: addresses chosen by clients (X-Forwarded-For behind a
 * trusted proxy, IPv6) cannot be picked to collide without the key. */
static uint64_t hash(const iplimit_t *t, const netaddr_t *a)
{
    uint64_t v0 = t->k0 ^ 0x736f6d6570736575ULL, v1 = t->k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = t->k0 ^ 0x6c7967656e657261ULL, v3 = t->k1 ^ 0x7465646279746573ULL;
    uint64_t m[3];
    memcpy(&m[0], a->b, 8);
    memcpy(&m[1], a->b + 8, 8);
    m[2] = (uint64_t)16 << 56; /* the length byte, no tail */
    for (int i = 0; i < 3; i++) {
        v3 ^= m[i];
        SIPROUND;
        v0 ^= m[i];
    }
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

iplimit_t *iplimit_new(uint32_t max)
{
    iplimit_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->buckets = calloc(MIN_BUCKETS, sizeof(*t->buckets));
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    t->nbuckets = MIN_BUCKETS;
    t->max = max ? max : 1;
    uint64_t key[2];
    if (getrandom(key, sizeof(key), GRND_NONBLOCK) != (ssize_t)sizeof(key)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        key[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)t;
        key[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&ts;
    }
    t->k0 = key[0];
    t->k1 = key[1];
    return t;
}

void iplimit_free(iplimit_t *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->nbuckets; i++) {
        for (iplimit_entry_t *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(t->buckets);
    free(t);
}

/* Moves every entry into a table of n buckets; on failure keeps the old one (longer
 * chains, still correct). */
static void rehash(iplimit_t *t, uint32_t n)
{
    iplimit_entry_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (uint32_t i = 0; i < t->nbuckets; i++) {
        for (iplimit_entry_t *e = t->buckets[i], *next; e; e = next) {
            next = e->next;
            uint32_t h = (uint32_t)hash(t, &e->addr) & (n - 1);
            e->next = nb[h];
            nb[h] = e;
        }
    }
    free(t->buckets);
    t->buckets = nb;
    t->nbuckets = n;
}

iplimit_entry_t *iplimit_find(const iplimit_t *t, const netaddr_t *a)
{
    uint32_t h = (uint32_t)hash(t, a) & (t->nbuckets - 1);
    for (iplimit_entry_t *e = t->buckets[h]; e; e = e->next)
        if (memcmp(e->addr.b, a->b, sizeof(a->b)) == 0)
            return e;
    return NULL;
}

bool iplimit_full(const iplimit_t *t, const netaddr_t *a)
{
    const iplimit_entry_t *e = iplimit_find(t, a);
    return e && e->count >= t->max;
}

iplimit_entry_t *iplimit_acquire(iplimit_t *t, const netaddr_t *a, bool *full)
{
    *full = false;
    iplimit_entry_t *e = iplimit_find(t, a);
    if (e) {
        if (e->count >= t->max) {
            *full = true;
            return NULL;
        }
        e->count++;
        t->conns++;
        return e;
    }
    if (t->n >= t->nbuckets && t->nbuckets <= UINT32_MAX / 2)
        rehash(t, t->nbuckets * 2);
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->addr = *a;
    e->count = 1;
    uint32_t h = (uint32_t)hash(t, a) & (t->nbuckets - 1);
    e->next = t->buckets[h];
    t->buckets[h] = e;
    t->n++;
    t->conns++;
    return e;
}

void iplimit_release(iplimit_t *t, iplimit_entry_t *e)
{
    t->conns--;
    if (--e->count > 0)
        return;
    uint32_t h = (uint32_t)hash(t, &e->addr) & (t->nbuckets - 1);
    for (iplimit_entry_t **p = &t->buckets[h]; *p; p = &(*p)->next) {
        if (*p == e) {
            *p = e->next;
            break;
        }
    }
    free(e);
    t->n--;
    if (t->nbuckets > MIN_BUCKETS && t->n < t->nbuckets / 8)
        rehash(t, t->nbuckets / 2);
}

bool iplimit_refused(iplimit_entry_t *e, uint64_t now_ms, uint64_t interval_ms,
                     uint32_t *suppressed)
{
    if (e->logged && now_ms - e->last_log_ms < interval_ms) {
        if (e->suppressed < UINT32_MAX)
            e->suppressed++;
        return false;
    }
    *suppressed = e->suppressed;
    e->suppressed = 0;
    e->last_log_ms = now_ms;
    e->logged = true;
    return true;
}

uint32_t iplimit_addresses(const iplimit_t *t)
{
    return t ? t->n : 0;
}

uint64_t iplimit_connections(const iplimit_t *t)
{
    return t ? t->conns : 0;
}
