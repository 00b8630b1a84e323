/*
 * topics: the subscription index (see topics.h for the contract).
 *
 * Shape
 * -----
 * A trie of segment nodes under a root that stands for the empty pattern.
 * Every node but the root lives in ONE open-addressing hash table (linear
 * probing, backward-shift deletion, no tombstones) keyed by (parent node,
 * segment bytes), so finding a child costs one hash and, usually, one probe,
 * whatever the fan-out of the parent. The table doubles above 3/4 load and
 * halves below 1/8 (never under TABLE_MIN slots): between a resize and the
 * next there are always at least a quarter of the slots' worth of inserts or
 * removals, so rehashing is amortised O(1). Slots keep the 64-bit key hash, so
 * a mismatching probe rarely touches the node.
 *
 * `*` and `>` children are in the table too (which lets topics_free and the
 * epoch reset walk every node through the table), and each node also points
 * straight at them, which is what the match walk uses.
 *
 * A node stores its segment in a flexible array member (one allocation per
 * node) and the subscriptions whose pattern ends at it in one block holding
 * two parallel arrays of `cap` pointers: owners[] (what the fan-out loop
 * reads: a dense pointer array, no indirection through the subscription
 * record) and subs[] (the records, used only to fix the index of an entry
 * moved by a swap-remove). The block doubles when full and halves when a
 * quarter full; it is freed when empty. A node with no subscriptions and no
 * children is freed, and so on up towards the root.
 *
 * A subscription record holds its node, its index in the node's arrays and
 * the link of its owner's list; the owner is owners[idx] of its node and the
 * pattern is the node's path, rebuilt on demand (patterns are <= 255 bytes).
 *
 * Matching
 * --------
 * The topic is split once (each segment hashed once, combined with the
 * parent pointer per lookup). A depth-first walk with an explicit stack
 * starts at the root with no segment consumed. At a node with segments left
 * it collects its `>` child (which needs at least one more segment) and
 * descends into its exact child and its `*` child; with no segment left it
 * collects the node itself. Every node on the stack is one level deeper than
 * the entries under it, except siblings, so the stack never holds more than
 * one pending sibling per level plus two: MAX_SEGS + 2 entries suffice.
 *
 * Each match draws a new epoch; an owner is visited when its mark differs
 * and then takes the epoch as its mark, so each owner is visited once per
 * match however many of its patterns match. Epoch 0 is never used (owners
 * start zeroed). When the 32-bit counter wraps (once per 2^32 matches) an
 * owner might still carry a mark equal to a future epoch and would then be
 * skipped: so on wrap every owner in the index is reset to 0 (one pass over
 * all subscriptions, amortised to nothing), and topics_subscribe resets the
 * mark of the owner it is given, which covers owners that held nothing
 * during the reset. Hence exactly once per owner, with no exception.
 *
 * Allocation failures
 * -------------------
 * topics_subscribe makes every allocation it may need (table growth, the
 * subscription record, new nodes, node array growth) before it links
 * anything, and releases them all if one fails: TOPICS_NOMEM leaves the index
 * as it was (a grown table or array is not a visible change). Removals never
 * need memory; a failed shrink keeps the larger block.
 */
#include "topics.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LEN 255                  /* longest topic or pattern, in bytes */
#define MAX_SEGS ((MAX_LEN + 1) / 2) /* "a.a.a...": at most 128 segments */
#define TABLE_MIN 64                 /* smallest hash table, in slots */

typedef struct node node_t;

struct node {
    node_t *parent;          /* NULL for the root */
    node_t *star;            /* `*` child, or NULL */
    node_t *gt;              /* `>` child, or NULL */
    topics_owner_t **owners; /* [cap] owners, then [cap] topics_sub_t * */
    uint32_t nsubs;          /* subscriptions whose pattern ends here */
    uint32_t cap;            /* capacity of each of the two arrays */
    uint32_t nchildren;      /* children of any kind, `*` and `>` included */
    uint8_t len;             /* segment length */
    char seg[];              /* segment bytes, not NUL-terminated */
};

struct topics_sub {
    node_t *node;       /* where its pattern ends */
    topics_sub_t *next; /* next in its owner's list */
    uint32_t idx;       /* position in node->owners and in the node's subs */
};

typedef struct {
    node_t *node; /* NULL when free */
    uint64_t hash;
} slot_t;

struct topics {
    slot_t *slots;
    size_t mask;      /* slots - 1, a power of two minus one */
    size_t nnodes;    /* nodes in the table (all but the root) */
    size_t npatterns; /* nodes with nsubs > 0 */
    size_t nsubs;     /* subscriptions */
    uint32_t epoch;   /* last match epoch; 0 before the first match */
    long fail_in;     /* test hook: allocations left before one fails; < 0 off */
    node_t *root;     /* the empty pattern: no segment, not in the table */
};

typedef struct {
    const char *p;
    uint64_t hash;
    uint8_t len;
} seg_t;

/* --- allocation ---------------------------------------------------------- */

static void *t_alloc(topics_t *t, size_t size)
{
    if (t->fail_in >= 0 && t->fail_in-- == 0)
        return NULL;
    return malloc(size);
}

/* --- hashing ------------------------------------------------------------- */

static uint64_t seg_hash(const char *s, size_t n)
{
    const uint64_t m = 0xff51afd7ed558ccdULL;
    uint64_t h = 0x243f6a8885a308d3ULL ^ n, w;

    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * m;
        h ^= h >> 31;
    }
    if (n > 0) {
        w = 0;
        memcpy(&w, s, n);
        h = (h ^ w) * m;
        h ^= h >> 31;
    }
    return h;
}

/* The table key of a segment (hashed by seg_hash) under parent. */
static uint64_t key_hash(uint64_t sh, const node_t *parent)
{
    uint64_t h = sh ^ ((uint64_t)(uintptr_t)parent * 0x9e3779b97f4a7c15ULL);

    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
}

/*
 * Splits s[0..len) at dots into segs (MAX_SEGS entries), hashing each
 * segment. Returns the number of segments, or 0 if len is 0 or over MAX_LEN
 * (out of contract: such input matches or creates nothing).
 */
static size_t split(const char *s, size_t len, seg_t *segs)
{
    size_t n = 0, start = 0;

    if (len == 0 || len > MAX_LEN)
        return 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && s[i] != '.')
            continue;
        if (n == MAX_SEGS)
            return 0; /* empty segments: out of contract */
        segs[n].p = s + start;
        segs[n].len = (uint8_t)(i - start);
        segs[n].hash = seg_hash(s + start, i - start);
        n++;
        start = i + 1;
    }
    return n;
}

static bool is_wild(const seg_t *s, char c)
{
    return s->len == 1 && s->p[0] == c;
}

/* --- the node table ------------------------------------------------------ */

static node_t *child_get(const topics_t *t, const node_t *parent, const seg_t *s)
{
    uint64_t h = key_hash(s->hash, parent);

    for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
        const slot_t *sl = &t->slots[i];
        if (sl->node == NULL)
            return NULL;
        if (sl->hash == h && sl->node->parent == parent && sl->node->len == s->len &&
            memcmp(sl->node->seg, s->p, s->len) == 0)
            return sl->node;
    }
}

/* Inserts n (not present) with key hash h; the caller made room. */
static void slot_put(slot_t *slots, size_t mask, node_t *n, uint64_t h)
{
    size_t i = h & mask;

    while (slots[i].node != NULL)
        i = (i + 1) & mask;
    slots[i].node = n;
    slots[i].hash = h;
}

static bool table_resize(topics_t *t, size_t nslots)
{
    slot_t *slots = t_alloc(t, nslots * sizeof(*slots));

    if (slots == NULL)
        return false;
    memset(slots, 0, nslots * sizeof(*slots));
    for (size_t i = 0; i <= t->mask; i++) {
        if (t->slots[i].node != NULL)
            slot_put(slots, nslots - 1, t->slots[i].node, t->slots[i].hash);
    }
    free(t->slots);
    t->slots = slots;
    t->mask = nslots - 1;
    return true;
}

/* Makes room for `extra` more nodes at no more than 3/4 load. */
static bool table_reserve(topics_t *t, size_t extra)
{
    size_t nslots = t->mask + 1;

    while ((t->nnodes + extra) * 4 > nslots * 3)
        nslots *= 2;
    return nslots == t->mask + 1 || table_resize(t, nslots);
}

static void table_del(topics_t *t, const node_t *n)
{
    uint64_t h = key_hash(seg_hash(n->seg, n->len), n->parent);
    size_t i = h & t->mask, j;

    while (t->slots[i].node != n)
        i = (i + 1) & t->mask;
    /* Backward shift: pull later entries of the cluster into the hole unless
     * their home slot lies cyclically in (hole, entry]. */
    for (j = (i + 1) & t->mask; t->slots[j].node != NULL; j = (j + 1) & t->mask) {
        size_t home = t->slots[j].hash & t->mask;
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].node = NULL;
    t->nnodes--;
    if (t->mask + 1 > TABLE_MIN && t->nnodes * 8 < t->mask + 1)
        (void)table_resize(t, (t->mask + 1) / 2); /* on failure keep the larger table */
}

/* --- nodes --------------------------------------------------------------- */

static topics_sub_t **node_subs(const node_t *n)
{
    return (topics_sub_t **)(n->owners + n->cap);
}

/* Moves n's entries to a block of cap entries (>= nsubs; 0 frees it). */
static bool node_resize(topics_t *t, node_t *n, uint32_t cap)
{
    topics_owner_t **owners = NULL;

    if (cap > 0) {
        owners = t_alloc(t, (size_t)cap * (sizeof(topics_owner_t *) + sizeof(topics_sub_t *)));
        if (owners == NULL)
            return false;
        if (n->nsubs > 0) {
            memcpy(owners, n->owners, n->nsubs * sizeof(*owners));
            memcpy(owners + cap, node_subs(n), n->nsubs * sizeof(topics_sub_t *));
        }
    }
    free(n->owners);
    n->owners = owners;
    n->cap = cap;
    return true;
}

/* Appends (owner, s) to n, which has room. */
static void node_push(node_t *n, topics_owner_t *owner, topics_sub_t *s)
{
    assert(n->nsubs < n->cap);
    s->node = n;
    s->idx = n->nsubs++;
    n->owners[s->idx] = owner;
    node_subs(n)[s->idx] = s;
}

/* Swap-removes s from its node, shrinking the arrays when a quarter full. */
static void node_remove(topics_t *t, topics_sub_t *s)
{
    node_t *n = s->node;
    uint32_t last = --n->nsubs;

    if (s->idx != last) {
        topics_sub_t **subs = node_subs(n);
        n->owners[s->idx] = n->owners[last];
        subs[s->idx] = subs[last];
        subs[s->idx]->idx = s->idx;
    }
    if (n->nsubs == 0)
        (void)node_resize(t, n, 0);
    else if (n->cap >= 8 && n->nsubs * 4 <= n->cap)
        (void)node_resize(t, n, n->cap / 2); /* on failure keep the larger block */
}

/* Frees n and its ancestors while they hold no subscription and no child. */
static void prune(topics_t *t, node_t *n)
{
    while (n != t->root && n->nsubs == 0 && n->nchildren == 0) {
        node_t *parent = n->parent;
        table_del(t, n);
        if (parent->star == n)
            parent->star = NULL;
        else if (parent->gt == n)
            parent->gt = NULL;
        parent->nchildren--;
        free(n->owners);
        free(n);
        n = parent;
    }
}

/* Writes the pattern ending at n into buf (NUL-terminated); returns its length. */
static size_t node_pattern(const topics_t *t, const node_t *n, char buf[MAX_LEN + 1])
{
    size_t pos = MAX_LEN;

    buf[MAX_LEN] = '\0';
    for (; n != t->root; n = n->parent) {
        if (pos != MAX_LEN)
            buf[--pos] = '.';
        pos -= n->len;
        memcpy(buf + pos, n->seg, n->len);
    }
    memmove(buf, buf + pos, MAX_LEN + 1 - pos);
    return MAX_LEN - pos;
}

/* The node of pattern segs[0..nseg), or NULL. */
static node_t *find(const topics_t *t, const seg_t *segs, size_t nseg)
{
    const node_t *n = t->root;

    for (size_t i = 0; i < nseg && n != NULL; i++)
        n = child_get(t, n, &segs[i]);
    return (node_t *)n;
}

/* owner's subscription at node n, or NULL; *prevp gets its predecessor link. */
static topics_sub_t *owner_find(const topics_owner_t *owner, const node_t *n, topics_sub_t ***prevp)
{
    topics_sub_t **prev = (topics_sub_t **)&owner->subs;

    for (; *prev != NULL; prev = &(*prev)->next) {
        if ((*prev)->node == n) {
            if (prevp != NULL)
                *prevp = prev;
            return *prev;
        }
    }
    return NULL;
}

/* --- public API ---------------------------------------------------------- */

topics_t *topics_new(void)
{
    topics_t *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return NULL;
    t->slots = calloc(TABLE_MIN, sizeof(*t->slots));
    if (t->slots == NULL) {
        free(t);
        return NULL;
    }
    t->root = calloc(1, sizeof(*t->root));
    if (t->root == NULL) {
        free(t->slots);
        free(t);
        return NULL;
    }
    t->mask = TABLE_MIN - 1;
    t->fail_in = -1;
    return t;
}

void topics_free(topics_t *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++) {
        node_t *n = t->slots[i].node;
        if (n == NULL)
            continue;
        for (uint32_t k = 0; k < n->nsubs; k++)
            free(node_subs(n)[k]);
        free(n->owners);
        free(n);
    }
    free(t->root);
    free(t->slots);
    free(t);
}

topics_result_t topics_subscribe(topics_t *t, topics_owner_t *owner, const char *p, size_t len,
                                 bool *first)
{
    seg_t segs[MAX_SEGS];
    node_t *fresh[MAX_SEGS];
    size_t nseg = split(p, len, segs), have = 0, nfresh = 0;
    node_t *n = t->root, *child;
    topics_sub_t *s = NULL;

    if (first != NULL)
        *first = false;
    if (nseg == 0)
        return TOPICS_INVALID; /* out of contract: callers pass valid patterns */
    owner->_mark = 0;          /* see "Matching" above */

    for (; have < nseg && (child = child_get(t, n, &segs[have])) != NULL; have++)
        n = child;
    if (have == nseg && owner_find(owner, n, NULL) != NULL)
        return TOPICS_EXISTS;

    /* Allocate everything first. */
    if (!table_reserve(t, nseg - have))
        return TOPICS_NOMEM;
    if (have == nseg && n->nsubs == n->cap && !node_resize(t, n, n->cap ? n->cap * 2 : 1))
        return TOPICS_NOMEM;
    s = t_alloc(t, sizeof(*s));
    if (s == NULL)
        goto Fail;
    for (; nfresh < nseg - have; nfresh++) {
        const seg_t *sg = &segs[have + nfresh];
        node_t *f = t_alloc(t, offsetof(node_t, seg) + sg->len > sizeof(node_t)
                                   ? offsetof(node_t, seg) + sg->len
                                   : sizeof(node_t));
        if (f == NULL)
            goto Fail;
        memset(f, 0, sizeof(*f));
        f->len = sg->len;
        memcpy(f->seg, sg->p, sg->len);
        fresh[nfresh] = f;
    }
    if (nfresh > 0 && !node_resize(t, fresh[nfresh - 1], 1))
        goto Fail;

    /* Link: nothing can fail from here on. */
    for (size_t k = 0; k < nfresh; k++) {
        const seg_t *sg = &segs[have + k];
        node_t *f = fresh[k];
        f->parent = n;
        slot_put(t->slots, t->mask, f, key_hash(sg->hash, n));
        t->nnodes++;
        if (is_wild(sg, '*'))
            n->star = f;
        else if (is_wild(sg, '>'))
            n->gt = f;
        n->nchildren++;
        n = f;
    }
    if (n->nsubs == 0) {
        t->npatterns++;
        if (first != NULL)
            *first = true;
    }
    node_push(n, owner, s);
    s->next = owner->subs;
    owner->subs = s;
    owner->nsubs++;
    t->nsubs++;
    return TOPICS_ADDED;

Fail:
    while (nfresh > 0)
        free(fresh[--nfresh]);
    free(s);
    return TOPICS_NOMEM;
}

/* Removes s (unlinked from its owner's list by the caller) from the index.
 * on_last runs last, when the index is consistent and no node is held. */
static void drop(topics_t *t, topics_sub_t *s, void (*on_last)(const char *, size_t, void *),
                 void *arg, bool *last)
{
    node_t *n = s->node;
    char buf[MAX_LEN + 1];
    size_t plen = 0;

    node_remove(t, s);
    free(s);
    t->nsubs--;
    if (n->nsubs > 0)
        return;
    t->npatterns--;
    if (last != NULL)
        *last = true;
    if (on_last != NULL)
        plen = node_pattern(t, n, buf);
    prune(t, n);
    if (on_last != NULL)
        on_last(buf, plen, arg);
}

bool topics_unsubscribe(topics_t *t, topics_owner_t *owner, const char *p, size_t len, bool *last)
{
    seg_t segs[MAX_SEGS];
    size_t nseg = split(p, len, segs);
    topics_sub_t **prev, *s;
    node_t *n;

    if (last != NULL)
        *last = false;
    if (nseg == 0 || (n = find(t, segs, nseg)) == NULL || (s = owner_find(owner, n, &prev)) == NULL)
        return false;
    *prev = s->next;
    owner->nsubs--;
    drop(t, s, NULL, NULL, last);
    return true;
}

bool topics_holds(const topics_t *t, const topics_owner_t *owner, const char *p, size_t len)
{
    seg_t segs[MAX_SEGS];
    size_t nseg = split(p, len, segs);
    const node_t *n;

    return nseg > 0 && (n = find(t, segs, nseg)) != NULL && owner_find(owner, n, NULL) != NULL;
}

size_t topics_owner_each(const topics_t *t, const topics_owner_t *owner,
                         void (*fn)(const char *p, size_t len, void *arg), void *arg)
{
    char buf[MAX_LEN + 1];
    size_t n = 0;

    for (const topics_sub_t *s = owner->subs; s != NULL; s = s->next, n++)
        fn(buf, node_pattern(t, s->node, buf), arg);
    return n;
}

void topics_unsubscribe_all(topics_t *t, topics_owner_t *owner,
                            void (*on_last)(const char *p, size_t len, void *arg), void *arg)
{
    topics_sub_t *s;

    /* Unlink each before dropping it, so on_last sees a consistent index. */
    while ((s = owner->subs) != NULL) {
        owner->subs = s->next;
        owner->nsubs--;
        drop(t, s, on_last, arg, NULL);
    }
}

/* Visits the owners of n not yet visited in this epoch; returns how many. */
static size_t collect(const node_t *n, uint32_t epoch, topics_visit_fn visit, void *arg)
{
    topics_owner_t *const *o = n->owners, *const * end;
    size_t visited = 0;

    if (n->nsubs == 0) /* owners may be NULL */
        return 0;
    for (end = o + n->nsubs; o < end; o++) {
        topics_owner_t *owner = *o;
        if (epoch && owner->_mark == epoch)
            continue;
        if (epoch)
            owner->_mark = epoch;
        visit(owner, arg);
        visited++;
    }
    return visited;
}

static uint32_t next_epoch(topics_t *t)
{
    if (++t->epoch != 0)
        return t->epoch;
    /* Wrapped: clear every mark so none equals a coming epoch. */
    for (size_t i = 0; i <= t->mask; i++) {
        const node_t *n = t->slots[i].node;
        if (n == NULL)
            continue;
        for (uint32_t k = 0; k < n->nsubs; k++)
            n->owners[k]->_mark = 0;
    }
    return t->epoch = 1;
}

/*
 * Every subscription matching topic. With marks (t itself), each owner once (an epoch mark);
 * without (NULL), read-only: an owner is visited once per matching pattern it holds.
 */
static size_t walk(const topics_t *t, topics_t *marks, const char *topic, size_t len,
                   topics_visit_fn visit, void *arg);

size_t topics_match(topics_t *t, const char *topic, size_t len, topics_visit_fn visit, void *arg)
{
    return walk(t, t, topic, len, visit, arg);
}

size_t topics_match_shared(const topics_t *t, const char *topic, size_t len, topics_visit_fn visit,
                           void *arg)
{
    return walk(t, NULL, topic, len, visit, arg);
}

static size_t walk(const topics_t *t, topics_t *marks, const char *topic, size_t len,
                   topics_visit_fn visit, void *arg)
{
    seg_t segs[MAX_SEGS];
    struct {
        const node_t *node;
        size_t depth; /* segments consumed */
    } stack[MAX_SEGS + 2];
    size_t nseg = split(topic, len, segs), sp = 0, visited = 0;

    if (nseg == 0)
        return 0;
    uint32_t epoch = marks ? next_epoch(marks) : 0;
    stack[sp].node = t->root;
    stack[sp++].depth = 0;
    while (sp > 0) {
        const node_t *n = stack[--sp].node, *child;
        size_t d = stack[sp].depth;
        if (d == nseg) {
            visited += collect(n, epoch, visit, arg);
            continue;
        }
        if (n->gt != NULL)
            visited += collect(n->gt, epoch, visit, arg);
        if (n->star != NULL) {
            stack[sp].node = n->star;
            stack[sp++].depth = d + 1;
        }
        if ((child = child_get(t, n, &segs[d])) != NULL) {
            stack[sp].node = child;
            stack[sp++].depth = d + 1;
        }
    }
    return visited;
}

size_t topics_count(const topics_t *t)
{
    return t->npatterns;
}

size_t topics_subscriptions(const topics_t *t)
{
    return t->nsubs;
}

/* --- test hooks ---------------------------------------------------------- */

void topics__set_epoch(topics_t *t, uint32_t epoch)
{
    t->epoch = epoch;
}

void topics__fail_alloc(topics_t *t, long after)
{
    t->fail_in = after < 0 ? -1 : after;
}

void topics__stats(const topics_t *t, size_t *nodes, size_t *slots)
{
    if (nodes != NULL)
        *nodes = t->nnodes;
    if (slots != NULL)
        *slots = t->mask + 1;
}
