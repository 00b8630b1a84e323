/*
 * Unit tests for broker/topics.c: matching semantics, exactly-once delivery
 * per owner, idempotence, first/last flags, pruning, scale, allocation
 * failures, the match epoch wrap-around, and a randomised run against a
 * naive reference model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "topics.h"

/* An owner as the broker would embed it; tests find its number from its address. */
typedef struct {
    topics_owner_t to;
    size_t id;
} owner_t;

typedef struct {
    owner_t *base;
    size_t n;
    unsigned *hits; /* [n] visits per owner */
    size_t calls;
} rec_t;

static void rec_visit(topics_owner_t *o, void *arg)
{
    rec_t *r = arg;
    owner_t *ow = (owner_t *)o;

    assert_true(ow >= r->base && ow < r->base + r->n);
    r->hits[ow - r->base]++;
    r->calls++;
}

static owner_t *owners_new(size_t n)
{
    owner_t *o = calloc(n, sizeof(*o));

    assert_non_null(o);
    for (size_t i = 0; i < n; i++)
        o[i].id = i;
    return o;
}

/* Matches topic, checks each owner was visited at most once and the count
 * returned, and leaves per-owner visits in r->hits. */
static size_t match(topics_t *t, rec_t *r, const char *topic)
{
    size_t got;

    memset(r->hits, 0, r->n * sizeof(*r->hits));
    r->calls = 0;
    got = topics_match(t, topic, strlen(topic), rec_visit, r);
    assert_int_equal(got, r->calls);
    for (size_t i = 0; i < r->n; i++)
        assert_true(r->hits[i] <= 1);
    return got;
}

/* Checks that matching topic visits exactly the owners listed (-1 ends the list). */
static void expect(topics_t *t, rec_t *r, const char *topic, ...)
{
    va_list ap;
    size_t want = 0;
    int id;
    unsigned *mask = calloc(r->n, sizeof(*mask));

    assert_non_null(mask);
    va_start(ap, topic);
    while ((id = va_arg(ap, int)) >= 0) {
        mask[id] = 1;
        want++;
    }
    va_end(ap);
    if (match(t, r, topic) != want)
        fail_msg("topic %s: %zu owners visited, want %zu", topic, r->calls, want);
    for (size_t i = 0; i < r->n; i++) {
        if (r->hits[i] != mask[i])
            fail_msg("topic %s: owner %zu visited %u times, want %u", topic, i, r->hits[i],
                     mask[i]);
    }
    free(mask);
}

static topics_result_t sub(topics_t *t, owner_t *o, const char *p, bool *first)
{
    return topics_subscribe(t, &o->to, p, strlen(p), first);
}

static bool unsub(topics_t *t, owner_t *o, const char *p, bool *last)
{
    return topics_unsubscribe(t, &o->to, p, strlen(p), last);
}

static size_t nodes_of(const topics_t *t)
{
    size_t n;

    topics__stats(t, &n, NULL);
    return n;
}

static size_t slots_of(const topics_t *t)
{
    size_t s;

    topics__stats(t, NULL, &s);
    return s;
}

/* A fixture: an index and n owners with a recorder over them. */
typedef struct {
    topics_t *t;
    owner_t *o;
    rec_t r;
} fix_t;

static void fix_init(fix_t *f, size_t n)
{
    f->t = topics_new();
    assert_non_null(f->t);
    f->o = owners_new(n);
    f->r.base = f->o;
    f->r.n = n;
    f->r.hits = calloc(n, sizeof(*f->r.hits));
    assert_non_null(f->r.hits);
}

static void fix_done(fix_t *f)
{
    topics_free(f->t);
    free(f->o);
    free(f->r.hits);
}

/* --- on_last recording --------------------------------------------------- */

typedef struct {
    char *p[64];
    size_t n;
} lastlist_t;

static void on_last(const char *p, size_t len, void *arg)
{
    lastlist_t *l = arg;

    assert_true(l->n < 64);
    assert_true(len <= 255);
    assert_int_equal(p[len], '\0');
    l->p[l->n] = malloc(len + 1);
    assert_non_null(l->p[l->n]);
    memcpy(l->p[l->n], p, len);
    l->p[l->n++][len] = '\0';
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Checks l holds exactly the patterns listed (NULL ends the list), then empties it. */
static void expect_last(lastlist_t *l, ...)
{
    const char *want[64];
    size_t n = 0;
    va_list ap;

    va_start(ap, l);
    while ((want[n] = va_arg(ap, const char *)) != NULL)
        n++;
    va_end(ap);
    assert_int_equal(l->n, n);
    qsort(l->p, l->n, sizeof(l->p[0]), cmp_str);
    qsort(want, n, sizeof(want[0]), cmp_str);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(l->p[i], want[i]);
        free(l->p[i]);
    }
    l->n = 0;
}

/* --- tests --------------------------------------------------------------- */

static void test_new_free(void **state)
{
    topics_t *t = topics_new();
    fix_t f;

    topics_free(NULL);
    assert_non_null(t);
    assert_int_equal(topics_count(t), 0);
    assert_int_equal(topics_subscriptions(t), 0);
    assert_int_equal(nodes_of(t), 0);
    topics_free(t);

    fix_init(&f, 1);
    expect(f.t, &f.r, "a", -1);
    fix_done(&f);
}

static void test_exact(void **state)
{
    fix_t f;

    fix_init(&f, 3);
    assert_int_equal(sub(f.t, &f.o[0], "a.b.c", NULL), TOPICS_ADDED);
    assert_int_equal(sub(f.t, &f.o[1], "a.b", NULL), TOPICS_ADDED);
    assert_int_equal(sub(f.t, &f.o[2], "chat.room-42.typing", NULL), TOPICS_ADDED);
    expect(f.t, &f.r, "a.b.c", 0, -1);
    expect(f.t, &f.r, "a.b", 1, -1);
    expect(f.t, &f.r, "a", -1);
    expect(f.t, &f.r, "a.b.c.d", -1);
    expect(f.t, &f.r, "a.b.x", -1);
    expect(f.t, &f.r, "b.c", -1);
    expect(f.t, &f.r, "a.bc", -1);
    expect(f.t, &f.r, "ab.c", -1);
    expect(f.t, &f.r, "chat.room-42.typing", 2, -1);
    expect(f.t, &f.r, "chat.room-43.typing", -1);
    assert_int_equal(topics_count(f.t), 3);
    assert_int_equal(topics_subscriptions(f.t), 3);
    /* Not a pattern: refused as such (not as out of memory), nothing changes. */
    assert_int_equal(sub(f.t, &f.o[0], "", NULL), TOPICS_INVALID);
    assert_int_equal(topics_subscriptions(f.t), 3);
    fix_done(&f);
}

static void test_star_every_position(void **state)
{
    fix_t f;

    fix_init(&f, 6);
    sub(f.t, &f.o[0], "*.b.c", NULL);
    sub(f.t, &f.o[1], "a.*.c", NULL);
    sub(f.t, &f.o[2], "a.b.*", NULL);
    sub(f.t, &f.o[3], "*.*.*", NULL);
    sub(f.t, &f.o[4], "*", NULL);
    sub(f.t, &f.o[5], "a.*", NULL);
    expect(f.t, &f.r, "a.b.c", 0, 1, 2, 3, -1);
    expect(f.t, &f.r, "x.b.c", 0, 3, -1);
    expect(f.t, &f.r, "a.x.c", 1, 3, -1);
    expect(f.t, &f.r, "a.b.x", 2, 3, -1);
    expect(f.t, &f.r, "x.y.z", 3, -1);
    expect(f.t, &f.r, "q", 4, -1);
    expect(f.t, &f.r, "a", 4, -1);
    expect(f.t, &f.r, "a.b", 5, -1);
    expect(f.t, &f.r, "b.b", -1);
    expect(f.t, &f.r, "a.b.c.d", -1);
    fix_done(&f);
}

static void test_gt(void **state)
{
    fix_t f;

    fix_init(&f, 4);
    sub(f.t, &f.o[0], "a.>", NULL);
    sub(f.t, &f.o[1], "a.b.>", NULL);
    sub(f.t, &f.o[2], "*.>", NULL);
    sub(f.t, &f.o[3], "a.*.>", NULL);
    expect(f.t, &f.r, "a", -1); /* `>` never matches zero segments */
    expect(f.t, &f.r, "a.b", 0, 2, -1);
    expect(f.t, &f.r, "a.b.c", 0, 1, 2, 3, -1);
    expect(f.t, &f.r, "a.b.c.d.e", 0, 1, 2, 3, -1);
    expect(f.t, &f.r, "a.x.c", 0, 2, 3, -1);
    expect(f.t, &f.r, "b", -1);
    expect(f.t, &f.r, "b.c", 2, -1);
    expect(f.t, &f.r, "b.c.d", 2, -1);
    fix_done(&f);
}

static void test_gt_alone(void **state)
{
    fix_t f;

    fix_init(&f, 2);
    sub(f.t, &f.o[0], ">", NULL);
    expect(f.t, &f.r, "a", 0, -1);
    expect(f.t, &f.r, "a.b", 0, -1);
    expect(f.t, &f.r, "x.y.z.w.v.u", 0, -1);
    sub(f.t, &f.o[1], "a", NULL);
    expect(f.t, &f.r, "a", 0, 1, -1);
    assert_true(unsub(f.t, &f.o[0], ">", NULL));
    expect(f.t, &f.r, "b", -1);
    expect(f.t, &f.r, "a", 1, -1);
    fix_done(&f);
}

static void test_mixed(void **state)
{
    fix_t f;

    fix_init(&f, 8);
    sub(f.t, &f.o[0], "orders.eu.created", NULL);
    sub(f.t, &f.o[1], "orders.*.created", NULL);
    sub(f.t, &f.o[2], "orders.>", NULL);
    sub(f.t, &f.o[3], "*.eu.>", NULL);
    sub(f.t, &f.o[4], "orders.eu", NULL);
    sub(f.t, &f.o[5], "*.*.created", NULL);
    sub(f.t, &f.o[6], ">", NULL);
    sub(f.t, &f.o[7], "orders.*.*.>", NULL);
    expect(f.t, &f.r, "orders.eu.created", 0, 1, 2, 3, 5, 6, -1);
    expect(f.t, &f.r, "orders.us.created", 1, 2, 5, 6, -1);
    expect(f.t, &f.r, "orders.eu", 2, 4, 6, -1); /* not 3: `>` needs a segment */
    expect(f.t, &f.r, "orders.eu.created.late", 2, 3, 6, 7, -1);
    expect(f.t, &f.r, "orders", 6, -1);
    expect(f.t, &f.r, "users.eu.created", 3, 5, 6, -1);
    fix_done(&f);
}

static void test_once_per_owner(void **state)
{
    const char *pats[] = {"a.b", "a.*", "*.b", "a.>", ">", "*.*", "*.>"};
    fix_t f;

    fix_init(&f, 2);
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++)
        assert_int_equal(sub(f.t, &f.o[0], pats[i], NULL), TOPICS_ADDED);
    assert_int_equal(f.o[0].to.nsubs, 7);
    expect(f.t, &f.r, "a.b", 0, -1);
    sub(f.t, &f.o[1], "a.b", NULL);
    sub(f.t, &f.o[1], "*.b", NULL);
    expect(f.t, &f.r, "a.b", 0, 1, -1);
    expect(f.t, &f.r, "a.b", 0, 1, -1); /* again: a new epoch */
    expect(f.t, &f.r, "x.b", 0, 1, -1);
    expect(f.t, &f.r, "a.c", 0, -1);
    fix_done(&f);
}

/* The read-only match: once per matching subscription, no mark written. */
static void test_match_shared(void **state)
{
    const char *pats[] = {"a.b", "a.*", "*.b", "a.>", ">", "*.*", "*.>"};
    fix_t f;

    fix_init(&f, 2);
    for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++)
        assert_int_equal(sub(f.t, &f.o[0], pats[i], NULL), TOPICS_ADDED);
    sub(f.t, &f.o[1], "a.b", NULL);
    uint32_t marks[2] = {f.o[0].to._mark, f.o[1].to._mark};
    memset(f.r.hits, 0, f.r.n * sizeof(*f.r.hits));
    f.r.calls = 0;
    assert_int_equal(topics_match_shared(f.t, "a.b", 3, rec_visit, &f.r), 8);
    assert_int_equal(f.r.hits[0], 7); /* each of its 7 patterns */
    assert_int_equal(f.r.hits[1], 1);
    assert_int_equal(f.o[0].to._mark, marks[0]); /* nothing written */
    assert_int_equal(f.o[1].to._mark, marks[1]);
    assert_int_equal(topics_match_shared(f.t, "", 0, rec_visit, &f.r), 0);
    expect(f.t, &f.r, "a.b", 0, 1, -1); /* topics_match: once each, as before */
    fix_done(&f);
}

static void test_idempotent(void **state)
{
    fix_t f;
    bool first = false;

    fix_init(&f, 2);
    assert_int_equal(sub(f.t, &f.o[0], "a.*", &first), TOPICS_ADDED);
    assert_true(first);
    assert_int_equal(sub(f.t, &f.o[0], "a.*", &first), TOPICS_EXISTS);
    assert_false(first);
    assert_int_equal(topics_count(f.t), 1);
    assert_int_equal(topics_subscriptions(f.t), 1);
    assert_int_equal(f.o[0].to.nsubs, 1);
    expect(f.t, &f.r, "a.b", 0, -1);
    assert_true(topics_holds(f.t, &f.o[0].to, "a.*", 3));
    assert_false(topics_holds(f.t, &f.o[1].to, "a.*", 3));
    assert_false(topics_holds(f.t, &f.o[0].to, "a", 1)); /* an inner node */
    assert_false(topics_holds(f.t, &f.o[0].to, "a.b", 3));
    assert_int_equal(sub(f.t, &f.o[1], "a.*", &first), TOPICS_ADDED);
    assert_false(first);
    assert_true(topics_holds(f.t, &f.o[1].to, "a.*", 3));
    assert_int_equal(sub(f.t, &f.o[1], "a.*", NULL), TOPICS_EXISTS);
    assert_int_equal(topics_subscriptions(f.t), 2);
    /* One unsubscribe undoes the subscription however often it was repeated. */
    assert_true(unsub(f.t, &f.o[0], "a.*", NULL));
    assert_false(unsub(f.t, &f.o[0], "a.*", NULL));
    expect(f.t, &f.r, "a.b", 1, -1);
    fix_done(&f);
}

static void test_first_last(void **state)
{
    fix_t f;
    bool first, last;

    fix_init(&f, 2);
    assert_int_equal(sub(f.t, &f.o[0], "x.y", &first), TOPICS_ADDED);
    assert_true(first);
    assert_int_equal(sub(f.t, &f.o[1], "x.y", &first), TOPICS_ADDED);
    assert_false(first);
    /* A pattern ending at an existing inner node is new on that node. */
    assert_int_equal(sub(f.t, &f.o[1], "x", &first), TOPICS_ADDED);
    assert_true(first);
    assert_int_equal(topics_count(f.t), 2);
    assert_true(unsub(f.t, &f.o[0], "x.y", &last));
    assert_false(last);
    assert_true(unsub(f.t, &f.o[1], "x.y", &last));
    assert_true(last);
    assert_int_equal(topics_count(f.t), 1);
    assert_true(unsub(f.t, &f.o[1], "x", &last));
    assert_true(last);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(topics_subscriptions(f.t), 0);
    assert_int_equal(sub(f.t, &f.o[0], "x.y", &first), TOPICS_ADDED);
    assert_true(first);
    fix_done(&f);
}

static void test_unsubscribe_not_held(void **state)
{
    fix_t f;
    bool last = true;

    fix_init(&f, 2);
    sub(f.t, &f.o[0], "a.b", NULL);
    assert_false(unsub(f.t, &f.o[0], "a.c", &last));
    assert_false(last);
    last = true;
    assert_false(unsub(f.t, &f.o[1], "a.b", &last)); /* held by someone else */
    assert_false(last);
    assert_false(unsub(f.t, &f.o[0], "a", NULL)); /* an inner node */
    assert_false(unsub(f.t, &f.o[0], "a.b.c", NULL));
    assert_false(unsub(f.t, &f.o[0], "a.*", NULL));
    assert_false(unsub(f.t, &f.o[0], "a.>", NULL));
    assert_false(unsub(f.t, &f.o[1], "zzz", NULL));
    assert_int_equal(topics_count(f.t), 1);
    assert_int_equal(topics_subscriptions(f.t), 1);
    assert_int_equal(f.o[0].to.nsubs, 1);
    assert_int_equal(nodes_of(f.t), 2);
    expect(f.t, &f.r, "a.b", 0, -1);
    fix_done(&f);
}

static void test_unsubscribe_all(void **state)
{
    fix_t f;
    lastlist_t l = {.n = 0};

    fix_init(&f, 3);
    sub(f.t, &f.o[0], "a", NULL);
    sub(f.t, &f.o[0], "a.b", NULL);
    sub(f.t, &f.o[0], "*.c", NULL);
    sub(f.t, &f.o[0], ">", NULL);
    sub(f.t, &f.o[0], "a.b.c.*.>", NULL);
    sub(f.t, &f.o[1], "a.b", NULL);
    sub(f.t, &f.o[1], ">", NULL);
    assert_int_equal(topics_count(f.t), 5);
    assert_int_equal(topics_subscriptions(f.t), 7);

    topics_unsubscribe_all(f.t, &f.o[0].to, on_last, &l);
    expect_last(&l, "a", "*.c", "a.b.c.*.>", NULL);
    assert_null(f.o[0].to.subs);
    assert_int_equal(f.o[0].to.nsubs, 0);
    assert_int_equal(topics_count(f.t), 2);
    assert_int_equal(topics_subscriptions(f.t), 2);
    expect(f.t, &f.r, "a.b", 1, -1);
    expect(f.t, &f.r, "a", 1, -1);

    topics_unsubscribe_all(f.t, &f.o[2].to, on_last, &l); /* holds nothing */
    expect_last(&l, NULL);

    topics_unsubscribe_all(f.t, &f.o[1].to, on_last, &l);
    expect_last(&l, "a.b", ">", NULL);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(topics_subscriptions(f.t), 0);
    assert_int_equal(nodes_of(f.t), 0);

    /* Without a callback. */
    sub(f.t, &f.o[2], "q.r", NULL);
    topics_unsubscribe_all(f.t, &f.o[2].to, NULL, NULL);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(nodes_of(f.t), 0);
    /* The owner can subscribe again afterwards. */
    assert_int_equal(sub(f.t, &f.o[2], "q.r", NULL), TOPICS_ADDED);
    expect(f.t, &f.r, "q.r", 2, -1);
    fix_done(&f);
}

static void test_prune(void **state)
{
    fix_t f;

    fix_init(&f, 2);
    sub(f.t, &f.o[0], "a.b.c.d", NULL);
    sub(f.t, &f.o[0], "a.b.x", NULL);
    assert_int_equal(nodes_of(f.t), 5);
    assert_true(unsub(f.t, &f.o[0], "a.b.c.d", NULL));
    assert_int_equal(nodes_of(f.t), 3);
    assert_true(unsub(f.t, &f.o[0], "a.b.x", NULL));
    assert_int_equal(nodes_of(f.t), 0);

    /* An inner node holding subscriptions survives its children. */
    sub(f.t, &f.o[0], "a", NULL);
    sub(f.t, &f.o[1], "a.*.c", NULL);
    sub(f.t, &f.o[1], "a.>", NULL);
    assert_int_equal(nodes_of(f.t), 4);
    assert_true(unsub(f.t, &f.o[1], "a.*.c", NULL));
    assert_int_equal(nodes_of(f.t), 2);
    assert_true(unsub(f.t, &f.o[1], "a.>", NULL));
    assert_int_equal(nodes_of(f.t), 1);
    expect(f.t, &f.r, "a.b", -1);
    expect(f.t, &f.r, "a.b.c", -1);
    expect(f.t, &f.r, "a", 0, -1);
    assert_true(unsub(f.t, &f.o[0], "a", NULL));
    assert_int_equal(nodes_of(f.t), 0);
    assert_int_equal(topics_count(f.t), 0);
    fix_done(&f);
}

static void test_long_patterns(void **state)
{
    char p[256], q[256];
    fix_t f;
    lastlist_t l = {.n = 0};

    fix_init(&f, 130);
    /* 128 one-byte segments: 255 bytes, the longest pattern. */
    for (size_t i = 0; i < 255; i++)
        p[i] = i % 2 ? '.' : 'a';
    p[255] = '\0';
    assert_int_equal(sub(f.t, &f.o[0], p, NULL), TOPICS_ADDED);
    assert_int_equal(nodes_of(f.t), 128);
    expect(f.t, &f.r, p, 0, -1);
    /* Patterns a^k.*^(128-k): at every level of the walk both an exact and a
     * `*` child exist, the deepest the match stack can get. */
    for (size_t k = 0; k < 128; k++) {
        memcpy(q, p, 256);
        for (size_t i = k; i < 128; i++)
            q[2 * i] = '*';
        assert_int_equal(sub(f.t, &f.o[1 + k], q, NULL), TOPICS_ADDED);
    }
    assert_int_equal(match(f.t, &f.r, p), 129);
    p[254] = 'b';
    assert_int_equal(match(f.t, &f.r, p), 128);
    assert_int_equal(f.r.hits[0], 0);
    p[254] = 'a';
    topics_unsubscribe_all(f.t, &f.o[0].to, on_last, &l);
    expect_last(&l, p, NULL);
    for (size_t k = 0; k < 128; k++)
        topics_unsubscribe_all(f.t, &f.o[1 + k].to, NULL, NULL);
    assert_int_equal(nodes_of(f.t), 0);

    /* One 255-byte segment. */
    memset(p, 'z', 255);
    assert_int_equal(sub(f.t, &f.o[0], p, NULL), TOPICS_ADDED);
    expect(f.t, &f.r, p, 0, -1);
    topics_unsubscribe_all(f.t, &f.o[0].to, on_last, &l);
    expect_last(&l, p, NULL);
    fix_done(&f);
}

static void test_many_owners(void **state)
{
    enum { N = 20000 };
    fix_t f;
    bool first, last;

    fix_init(&f, N);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(sub(f.t, &f.o[i], "chat.room.typing", &first), TOPICS_ADDED);
        assert_int_equal(first, i == 0);
        if (i % 2 == 0)
            assert_int_equal(sub(f.t, &f.o[i], "chat.*.typing", NULL), TOPICS_ADDED);
    }
    assert_int_equal(topics_count(f.t), 2);
    assert_int_equal(topics_subscriptions(f.t), N + N / 2);
    assert_int_equal(match(f.t, &f.r, "chat.room.typing"), N);
    assert_int_equal(match(f.t, &f.r, "chat.other.typing"), N / 2);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(f.r.hits[i], i % 2 == 0);
    /* Drop every third owner's exact pattern (swap-removes all over the array). */
    for (size_t i = 0; i < N; i += 3) {
        assert_true(unsub(f.t, &f.o[i], "chat.room.typing", &last));
        assert_false(last);
    }
    assert_int_equal(match(f.t, &f.r, "chat.room.typing"), N - (N + 2) / 3 + (N + 5) / 6);
    for (size_t i = 0; i < N; i++)
        assert_int_equal(f.r.hits[i], i % 3 != 0 || i % 2 == 0);
    for (size_t i = 0; i < N; i++)
        topics_unsubscribe_all(f.t, &f.o[i].to, NULL, NULL);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(topics_subscriptions(f.t), 0);
    assert_int_equal(nodes_of(f.t), 0);
    fix_done(&f);
}

static void test_many_topics(void **state)
{
    enum { N = 100000, OWNERS = 1000 };
    char buf[64];
    fix_t f;

    fix_init(&f, OWNERS);
    for (size_t i = 0; i < N; i++) {
        snprintf(buf, sizeof(buf), "t.%zu.x", i);
        assert_int_equal(sub(f.t, &f.o[i % OWNERS], buf, NULL), TOPICS_ADDED);
    }
    sub(f.t, &f.o[7], "t.*.y", NULL);
    assert_int_equal(topics_count(f.t), N + 1);
    assert_int_equal(nodes_of(f.t), 1 + 2 * N + 2);
    assert_true(slots_of(f.t) * 3 >= nodes_of(f.t) * 4);
    for (size_t i = 0; i < N; i += 997) {
        snprintf(buf, sizeof(buf), "t.%zu.x", i);
        expect(f.t, &f.r, buf, (int)(i % OWNERS), -1);
        snprintf(buf, sizeof(buf), "t.%zu.y", i);
        expect(f.t, &f.r, buf, 7, -1);
        snprintf(buf, sizeof(buf), "t.%zu", i);
        expect(f.t, &f.r, buf, -1);
    }
    expect(f.t, &f.r, "t.100000.x", -1);
    expect(f.t, &f.r, "u.1.x", -1);
    for (size_t i = 0; i < OWNERS; i++)
        topics_unsubscribe_all(f.t, &f.o[i].to, NULL, NULL);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(nodes_of(f.t), 0);
    assert_true(slots_of(f.t) <= 128); /* the table shrank back */
    fix_done(&f);
}

static void test_mark_wrap(void **state)
{
    fix_t f;

    fix_init(&f, 3);
    sub(f.t, &f.o[0], "x", NULL);
    sub(f.t, &f.o[1], "y", NULL);
    sub(f.t, &f.o[1], "*", NULL);
    topics__set_epoch(f.t, 0);
    expect(f.t, &f.r, "x", 0, 1, -1); /* epoch 1: owners 0 and 1 marked 1 */
    topics__set_epoch(f.t, UINT32_MAX - 1);
    expect(f.t, &f.r, "y", 1, -1); /* epoch UINT32_MAX */
    /* Wraps to epoch 1, the mark owner 0 still carries: it must be visited. */
    expect(f.t, &f.r, "x", 0, 1, -1);
    expect(f.t, &f.r, "x", 0, 1, -1);
    expect(f.t, &f.r, "y", 1, -1);

    /* An owner out of the index during the wrap keeps a stale mark, which
     * subscribing again clears. */
    topics__set_epoch(f.t, 9);
    sub(f.t, &f.o[2], "z", NULL);
    expect(f.t, &f.r, "z", 1, 2, -1); /* owner 2 marked 10 */
    topics_unsubscribe_all(f.t, &f.o[2].to, NULL, NULL);
    topics__set_epoch(f.t, UINT32_MAX);
    expect(f.t, &f.r, "y", 1, -1); /* wraps to 1 */
    topics__set_epoch(f.t, 9);
    sub(f.t, &f.o[2], "z", NULL);
    expect(f.t, &f.r, "z", 1, 2, -1); /* epoch 10 again */
    fix_done(&f);
}

/* --- allocation failures ------------------------------------------------- */

typedef struct {
    size_t count, subs, nodes, nsubs;
    topics_sub_t *head;
    unsigned hits[8];
} snap_t;

static void snapshot(fix_t *f, owner_t *o, const char *topic, snap_t *s)
{
    s->count = topics_count(f->t);
    s->subs = topics_subscriptions(f->t);
    s->nodes = nodes_of(f->t);
    s->nsubs = o->to.nsubs;
    s->head = o->to.subs;
    match(f->t, &f->r, topic);
    memcpy(s->hits, f->r.hits, sizeof(s->hits));
}

/* Subscribes o to p, failing each allocation in turn until it succeeds;
 * checks every failure left the index unchanged. Returns the failures seen. */
static size_t sub_under_faults(fix_t *f, owner_t *o, const char *p, const char *topic)
{
    snap_t before, after;
    size_t fails = 0;
    bool first;

    for (long k = 0;; k++) {
        snapshot(f, o, topic, &before);
        topics__fail_alloc(f->t, k);
        first = true;
        topics_result_t r = topics_subscribe(f->t, &o->to, p, strlen(p), &first);
        topics__fail_alloc(f->t, -1);
        if (r == TOPICS_ADDED)
            break;
        assert_int_equal(r, TOPICS_NOMEM);
        assert_false(first);
        snapshot(f, o, topic, &after);
        assert_memory_equal(&before, &after, sizeof(before));
        fails++;
    }
    snapshot(f, o, topic, &after);
    assert_int_equal(after.subs, before.subs + 1);
    assert_int_equal(after.nsubs, before.nsubs + 1);
    assert_int_equal(f->r.hits[o - f->o], 1);
    return fails;
}

static void test_nomem(void **state)
{
    char p[64], topic[64];
    fix_t f;
    size_t fails = 0;

    fix_init(&f, 8);
    memset(f.r.hits, 0, 8 * sizeof(unsigned));
    /* A new 4-node path: record, 4 nodes and the leaf's array can each fail. */
    assert_true(sub_under_faults(&f, &f.o[0], "n.e.w.*", "n.e.w.x") >= 6);
    /* Enough patterns (and owners per pattern) to cross table and array growths. */
    for (size_t i = 0; i < 300; i++) {
        snprintf(p, sizeof(p), "p.%zu.*.q", i / 3);
        snprintf(topic, sizeof(topic), "p.%zu.z.q", i / 3);
        fails += sub_under_faults(&f, &f.o[i % 3], p, topic);
    }
    for (size_t i = 0; i < 8; i++)
        fails += sub_under_faults(&f, &f.o[i], "wide", "wide");
    assert_true(fails > 300);
    assert_int_equal(topics_count(f.t), 1 + 100 + 1);
    assert_int_equal(topics_subscriptions(f.t), 1 + 300 + 8);

    /* Removals never fail: shrinking is best effort. */
    for (size_t i = 0; i < 8; i++) {
        topics__fail_alloc(f.t, 0);
        assert_true(unsub(f.t, &f.o[i], "wide", NULL));
        assert_int_equal(match(f.t, &f.r, "wide"), 7 - i);
    }
    topics__fail_alloc(f.t, 0);
    for (size_t i = 0; i < 8; i++)
        topics_unsubscribe_all(f.t, &f.o[i].to, NULL, NULL);
    topics__fail_alloc(f.t, -1);
    assert_int_equal(topics_count(f.t), 0);
    assert_int_equal(nodes_of(f.t), 0);
    fix_done(&f);
}

/* --- randomised run against a reference model ---------------------------- */

enum { R_OWNERS = 40, R_PATS = 400, R_TOPICS = 300, R_ITERS = 6000 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 11) % n);
}

/* Naive gale matching, segment by segment. */
static bool naive_match(const char *p, const char *t)
{
    for (;;) {
        size_t pl = strcspn(p, "."), tl = strcspn(t, ".");
        if (pl == 1 && p[0] == '>')
            return *t != '\0';
        if (*t == '\0')
            return false;
        if (!(pl == 1 && p[0] == '*') && (pl != tl || memcmp(p, t, pl) != 0))
            return false;
        p += pl;
        t += tl;
        if (*p == '\0' || *t == '\0')
            return *p == '\0' && *t == '\0';
        p++;
        t++;
    }
}

static void random_name(char *buf, bool pattern)
{
    static const char *segs[] = {"a", "b", "c", "dd", "e"};
    size_t n = 1 + rnd(5), len = 0;

    for (size_t i = 0; i < n; i++) {
        const char *s = segs[rnd(5)];
        if (pattern && rnd(4) == 0)
            s = "*";
        if (pattern && i == n - 1 && rnd(4) == 0)
            s = ">";
        len += (size_t)sprintf(buf + len, "%s%s", i ? "." : "", s);
    }
}

static void fill_pool(char (*pool)[32], size_t n, bool pattern)
{
    for (size_t i = 0; i < n; i++) {
        bool dup;
        do {
            random_name(pool[i], pattern);
            dup = false;
            for (size_t j = 0; j < i && !dup; j++)
                dup = strcmp(pool[i], pool[j]) == 0;
        } while (dup);
    }
}

static void test_random_vs_model(void **state)
{
    static char pats[R_PATS][32], topics[R_TOPICS][32];
    static bool held[R_OWNERS][R_PATS], matches[R_PATS][R_TOPICS];
    size_t nheld = 0, max_slots = 0, shrinks = 0, prev_slots;
    lastlist_t l = {.n = 0};
    fix_t f;

    rng_state = 0x2545f4914f6cdd1dULL;
    memset(held, 0, sizeof(held));
    fill_pool(pats, R_PATS, true);
    fill_pool(topics, R_TOPICS, false);
    for (size_t p = 0; p < R_PATS; p++)
        for (size_t t = 0; t < R_TOPICS; t++)
            matches[p][t] = naive_match(pats[p], topics[t]);
    assert_true(naive_match("a.>", "a.b.c") && !naive_match("a.>", "a"));
    assert_true(naive_match("*.b", "a.b") && !naive_match("*.b", "a.b.c"));
    fix_init(&f, R_OWNERS);
    prev_slots = slots_of(f.t);

    for (size_t it = 0; it < R_ITERS; it++) {
        /* Alternate filling and draining phases so the table grows and shrinks. */
        bool filling = (it / 1500) % 2 == 0;
        uint32_t op = rnd(100), o = rnd(R_OWNERS), p = rnd(R_PATS);
        size_t holders = 0;

        for (size_t i = 0; i < R_OWNERS; i++)
            holders += held[i][p];
        if (op < (filling ? 45u : 5u)) {
            bool first;
            assert_int_equal(topics_holds(f.t, &f.o[o].to, pats[p], strlen(pats[p])), held[o][p]);
            topics_result_t r = sub(f.t, &f.o[o], pats[p], &first);
            assert_int_equal(r, held[o][p] ? TOPICS_EXISTS : TOPICS_ADDED);
            assert_true(topics_holds(f.t, &f.o[o].to, pats[p], strlen(pats[p])));
            assert_int_equal(first, holders == 0);
            nheld += !held[o][p];
            held[o][p] = true;
        } else if (op < 70) {
            bool last;
            if (rnd(2) == 0 && f.o[o].to.nsubs > 0) {
                do /* pick one it holds */
                    p = rnd(R_PATS);
                while (!held[o][p]);
                holders = 0;
                for (size_t i = 0; i < R_OWNERS; i++)
                    holders += held[i][p];
            }
            assert_int_equal(unsub(f.t, &f.o[o], pats[p], &last), held[o][p]);
            assert_int_equal(last, held[o][p] && holders == 1);
            nheld -= held[o][p];
            held[o][p] = false;
        } else if (op < (filling ? 71u : 78u)) {
            size_t want = 0;
            topics_unsubscribe_all(f.t, &f.o[o].to, on_last, &l);
            for (size_t q = 0; q < R_PATS; q++) {
                if (!held[o][q])
                    continue;
                held[o][q] = false;
                nheld--;
                holders = 0;
                for (size_t i = 0; i < R_OWNERS; i++)
                    holders += held[i][q];
                if (holders > 0)
                    continue;
                bool found = false;
                for (size_t k = 0; k < l.n && !found; k++)
                    found = strcmp(l.p[k], pats[q]) == 0;
                assert_true(found);
                want++;
            }
            assert_int_equal(l.n, want);
            for (size_t k = 0; k < l.n; k++)
                free(l.p[k]);
            l.n = 0;
        } else {
            size_t t = rnd(R_TOPICS), want = 0;
            match(f.t, &f.r, topics[t]);
            for (size_t i = 0; i < R_OWNERS; i++) {
                bool m = false;
                for (size_t q = 0; q < R_PATS && !m; q++)
                    m = held[i][q] && matches[q][t];
                if (f.r.hits[i] != m)
                    fail_msg("it %zu topic %s owner %zu: %u", it, topics[t], i, f.r.hits[i]);
                want += m;
            }
            assert_int_equal(f.r.calls, want);
        }

        size_t npat = 0;
        for (size_t q = 0; q < R_PATS; q++) {
            bool any = false;
            for (size_t i = 0; i < R_OWNERS && !any; i++)
                any = held[i][q];
            npat += any;
        }
        assert_int_equal(topics_count(f.t), npat);
        assert_int_equal(topics_subscriptions(f.t), nheld);
        size_t mine = 0;
        for (size_t q = 0; q < R_PATS; q++)
            mine += held[o][q];
        assert_int_equal(f.o[o].to.nsubs, mine);
        if (slots_of(f.t) < prev_slots)
            shrinks++;
        prev_slots = slots_of(f.t);
        if (prev_slots > max_slots)
            max_slots = prev_slots;
    }
    assert_true(max_slots >= 512);
    assert_true(shrinks > 0);
    for (size_t i = 0; i < R_OWNERS; i++)
        topics_unsubscribe_all(f.t, &f.o[i].to, NULL, NULL);
    assert_int_equal(nodes_of(f.t), 0);
    assert_int_equal(slots_of(f.t), 64);
    fix_done(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_free),
        cmocka_unit_test(test_exact),
        cmocka_unit_test(test_star_every_position),
        cmocka_unit_test(test_gt),
        cmocka_unit_test(test_gt_alone),
        cmocka_unit_test(test_mixed),
        cmocka_unit_test(test_once_per_owner),
        cmocka_unit_test(test_match_shared),
        cmocka_unit_test(test_idempotent),
        cmocka_unit_test(test_first_last),
        cmocka_unit_test(test_unsubscribe_not_held),
        cmocka_unit_test(test_unsubscribe_all),
        cmocka_unit_test(test_prune),
        cmocka_unit_test(test_long_patterns),
        cmocka_unit_test(test_many_owners),
        cmocka_unit_test(test_many_topics),
        cmocka_unit_test(test_mark_wrap),
        cmocka_unit_test(test_nomem),
        cmocka_unit_test(test_random_vs_model),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
