#include "lws_mem.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Under AddressSanitizer a slot is addressable only while lws holds it, and only as far as
 * it asked for. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GALE_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define GALE_ASAN 1
#endif
#ifdef GALE_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/* lws 4.1.6's names for the two allocations of a request head (roles/http/parsers.c). */
#define AH_STRUCT "ah struct"
#define AH_DATA "ah data"
/* The header table is 976 bytes in Debian's 4.1.6 build: four to a page. */
#define AH_STRUCT_SLOT 1024

/* Fixed-size slots in one mapping: never-used ones from `next` on, returned ones on a stack. */
typedef struct {
    uint8_t *base;
    size_t slot, nslots;
    size_t next;    /* slots below this one were handed out at least once */
    uint32_t *free; /* returned slots, the last returned on top */
    size_t nfree;
    size_t live;
} slab_t;

static struct {
    pthread_mutex_t mu;
    bool on;
    slab_t head, data;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bool slab_init(slab_t *s, size_t slot, size_t n)
{
    void *p = mmap(NULL, slot * n, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return false;
    s->free = malloc(sizeof(*s->free) * n);
    if (!s->free) {
        munmap(p, slot * n);
        return false;
    }
    s->base = p;
    s->slot = slot;
    s->nslots = n;
    POISON(p, slot * n);
    return true;
}

static void *slab_get(slab_t *s, size_t size)
{
    if (size > s->slot)
        return NULL;
    size_t i;
    if (s->nfree)
        i = s->free[--s->nfree];
    else if (s->next < s->nslots)
        i = s->next++;
    else
        return NULL;
    s->live++;
    UNPOISON(s->base + i * s->slot, size);
    return s->base + i * s->slot;
}

static bool slab_owns(const slab_t *s, const void *p)
{
    const uint8_t *b = p;
    return s->base && b >= s->base && b < s->base + s->slot * s->nslots;
}

/* Takes back p (slab_owns). */
static void slab_put(slab_t *s, void *p)
{
    s->free[s->nfree++] = (uint32_t)(((uint8_t *)p - s->base) / s->slot);
    POISON(p, s->slot);
    s->live--;
}

/* When no slot is in use, gives every touched page back (they read as zeroes if touched again). */
static void slab_trim(slab_t *s)
{
    if (s->live || !s->next)
        return;
    madvise(s->base, s->next * s->slot, MADV_DONTNEED);
    s->next = 0;
    s->nfree = 0;
}

static slab_t *slab_for(const char *reason)
{
    if (!reason)
        return NULL;
    if (strcmp(reason, AH_DATA) == 0)
        return &M.data;
    if (strcmp(reason, AH_STRUCT) == 0)
        return &M.head;
    return NULL;
}

/* lws's allocator: realloc(ptr, size) with size 0 meaning free (alloc.c in lws). */
static void *lws_mem_realloc(void *ptr, size_t size, const char *reason)
{
    void *v = NULL;
    slab_t *from = NULL;
    if (ptr && (slab_owns(&M.head, ptr) || slab_owns(&M.data, ptr)))
        from = slab_owns(&M.head, ptr) ? &M.head : &M.data;
    if (!from && (ptr || !size)) { /* not ours: the heap's */
        if (size)
            return realloc(ptr, size);
        free(ptr);
        return NULL;
    }
    pthread_mutex_lock(&M.mu);
    if (!ptr) { /* a new allocation: a slot if it is a request head's */
        slab_t *to = slab_for(reason);
        v = to ? slab_get(to, size) : NULL;
        pthread_mutex_unlock(&M.mu);
        return v ? v : malloc(size);
    }
    if (size && size <= from->slot) { /* lws does not resize these; if it did, in place */
        UNPOISON(ptr, from->slot);
        POISON((uint8_t *)ptr + size, from->slot - size);
        pthread_mutex_unlock(&M.mu);
        return ptr;
    }
    if (size && (v = malloc(size))) {
        UNPOISON(ptr, from->slot);
        memcpy(v, ptr, from->slot);
    }
    if (!size || v)
        slab_put(from, ptr);
    pthread_mutex_unlock(&M.mu);
    return v;
}

bool lws_mem_install(size_t heads, size_t data_size)
{
    bool ok = true;
    pthread_mutex_lock(&M.mu);
    if (!M.on) {
        ok = heads && slab_init(&M.head, AH_STRUCT_SLOT, heads) &&
             slab_init(&M.data, data_size, heads);
        if (ok) {
            M.on = true;
            lws_set_allocator(lws_mem_realloc);
        } else if (M.head.base) {
            munmap(M.head.base, M.head.slot * M.head.nslots);
            free(M.head.free);
            memset(&M.head, 0, sizeof(M.head));
        }
    }
    pthread_mutex_unlock(&M.mu);
    return ok;
}

void lws_mem_trim(void)
{
    pthread_mutex_lock(&M.mu);
    slab_trim(&M.head);
    slab_trim(&M.data);
    pthread_mutex_unlock(&M.mu);
}

size_t lws_mem_heads_in_use(void)
{
    pthread_mutex_lock(&M.mu);
    size_t n = M.data.live;
    pthread_mutex_unlock(&M.mu);
    return n;
}
