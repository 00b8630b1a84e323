/*
 * Unit tests for broker/dedup.c through dedup.h: a mid is seen within the window and
 * not after it, mids are scoped per topic (with no ambiguity between where the topic
 * ends and the mid begins), the table refuses new mids when full until entries expire,
 * and the counts it reports.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dedup.h"

#define WINDOW 120000 /* ms */

static bool seen(dedup_t *d, const char *topic, const char *mid, uint64_t now, uint64_t *off)
{
    *off = 777; /* left alone when not seen */
    return dedup_seen(d, topic, strlen(topic), mid, strlen(mid), now, off);
}

static bool add(dedup_t *d, const char *topic, const char *mid, uint64_t off, uint64_t now)
{
    return dedup_add(d, topic, strlen(topic), mid, strlen(mid), off, now);
}

static uint64_t entries(const dedup_t *d)
{
    uint64_t n, bytes;
    dedup_stats(d, &n, &bytes);
    return n;
}

static void test_seen_within_window(void **state)
{
    (void)state;
    dedup_t *d = dedup_new(WINDOW, 1000);
    assert_non_null(d);
    uint64_t off;
    assert_false(seen(d, "chat.a", "m1", 0, &off));
    assert_true(dedup_room(d, 1000));
    assert_true(add(d, "chat.a", "m1", 5, 1000));
    assert_true(seen(d, "chat.a", "m1", 1000, &off));
    assert_int_equal(off, 5);
    assert_true(seen(d, "chat.a", "m1", 1000 + WINDOW - 1, &off));
    assert_int_equal(off, 5);
    /* Beyond the window it is forgotten, swept or not. */
    assert_false(seen(d, "chat.a", "m1", 1000 + WINDOW + 1, &off));
    assert_false(seen(d, "chat.a", "m1", 10 * WINDOW, &off));
    assert_int_equal(entries(d), 1); /* not swept yet */
    dedup_sweep(d, 1000 + WINDOW - 1);
    assert_int_equal(entries(d), 1);
    dedup_sweep(d, 1000 + WINDOW + 1);
    assert_int_equal(entries(d), 0);
    assert_false(seen(d, "chat.a", "m1", 1000, &off));

    /* Offset 0: a topic without history; it is still a duplicate. */
    assert_true(add(d, "plain", "m", 0, 2 * WINDOW));
    assert_true(seen(d, "plain", "m", 2 * WINDOW, &off));
    assert_int_equal(off, 0);
    /* The same mid again after it expired: remembered anew, with its new offset. */
    assert_true(add(d, "chat.a", "m1", 9, 2 * WINDOW));
    assert_true(seen(d, "chat.a", "m1", 2 * WINDOW + 10, &off));
    assert_int_equal(off, 9);
    /* The longest mid and the longest topic. */
    char mid[65], topic[256];
    memset(mid, 'm', 64);
    mid[64] = '\0';
    memset(topic, 't', 255);
    topic[255] = '\0';
    assert_true(add(d, topic, mid, 3, 2 * WINDOW));
    assert_true(seen(d, topic, mid, 2 * WINDOW, &off));
    assert_int_equal(off, 3);
    mid[63] = '\0';
    assert_false(seen(d, topic, mid, 2 * WINDOW, &off)); /* a prefix is another mid */
    dedup_free(d);
    dedup_free(NULL);
}

static void test_scoped_per_topic(void **state)
{
    (void)state;
    dedup_t *d = dedup_new(WINDOW, 1000);
    assert_non_null(d);
    uint64_t off;
    assert_true(add(d, "a.b", "c", 1, 0));
    assert_false(seen(d, "a.b.c", "c", 0, &off)); /* another topic */
    assert_false(seen(d, "a", "c", 0, &off));
    assert_false(seen(d, "a.b", "C", 0, &off)); /* mids are case sensitive bytes */
    assert_false(seen(d, "a.b", "cc", 0, &off));
    /* The same bytes split elsewhere are another (topic, mid). */
    assert_false(seen(d, "a", ".bc", 0, &off));
    assert_false(seen(d, "a.", "bc", 0, &off));
    assert_false(seen(d, "a.bc", "", 0, &off));
    assert_true(add(d, "a", ".bc", 2, 0));
    assert_true(seen(d, "a.b", "c", 0, &off));
    assert_int_equal(off, 1);
    assert_true(seen(d, "a", ".bc", 0, &off));
    assert_int_equal(off, 2);
    /* The same mid on two topics: two entries, each with its own offset. */
    assert_true(add(d, "x", "same", 10, 0));
    assert_true(add(d, "y", "same", 20, 0));
    assert_true(seen(d, "x", "same", 0, &off));
    assert_int_equal(off, 10);
    assert_true(seen(d, "y", "same", 0, &off));
    assert_int_equal(off, 20);
    assert_false(seen(d, "z", "same", 0, &off));
    assert_int_equal(entries(d), 4);
    dedup_free(d);
}

static void test_max(void **state)
{
    (void)state;
    dedup_t *d = dedup_new(WINDOW, 3);
    assert_non_null(d);
    uint64_t off;
    assert_true(add(d, "t", "1", 1, 0));
    assert_true(add(d, "t", "2", 2, 10));
    assert_true(dedup_room(d, 20));
    assert_true(add(d, "t", "3", 3, 20));
    /* Full: no room and no add until the oldest expires; what is held stays seen. */
    assert_false(dedup_room(d, 30));
    assert_false(add(d, "t", "4", 4, 30));
    assert_false(seen(d, "t", "4", 30, &off));
    assert_false(add(d, "other", "1", 4, WINDOW - 1));
    assert_false(dedup_room(d, WINDOW - 1));
    for (int i = 1; i <= 3; i++) {
        char mid[2] = {(char)('0' + i), 0};
        assert_true(seen(d, "t", mid, WINDOW - 1, &off));
        assert_int_equal(off, (uint64_t)i);
    }
    assert_int_equal(entries(d), 3);
    /* At WINDOW + 1 the first expired: room for one. */
    assert_true(dedup_room(d, WINDOW + 1));
    assert_int_equal(entries(d), 2);
    assert_true(add(d, "t", "4", 4, WINDOW + 1));
    assert_false(dedup_room(d, WINDOW + 1));
    assert_false(add(d, "t", "5", 5, WINDOW + 1));
    assert_true(seen(d, "t", "4", WINDOW + 1, &off));
    assert_false(seen(d, "t", "1", WINDOW + 1, &off));
    assert_true(seen(d, "t", "2", WINDOW + 1, &off));
    /* Long after: everything expired, room again without a sweep. */
    assert_true(add(d, "t", "5", 5, 10 * WINDOW));
    assert_int_equal(entries(d), 1);
    dedup_free(d);

    /* A table of no entries at all takes none. */
    d = dedup_new(WINDOW, 0);
    assert_non_null(d);
    assert_false(dedup_room(d, 0));
    assert_false(add(d, "t", "1", 1, 0));
    dedup_free(d);
}

static void test_stats(void **state)
{
    (void)state;
    dedup_t *d = dedup_new(WINDOW, 100000);
    assert_non_null(d);
    uint64_t n, bytes0, bytes;
    dedup_stats(d, &n, &bytes0);
    assert_int_equal(n, 0);
    assert_true(add(d, "chat.room", "mid-1", 1, 0));
    dedup_stats(d, &n, &bytes);
    assert_int_equal(n, 1);
    assert_true(bytes > bytes0);
    uint64_t one = bytes - bytes0;
    assert_true(one >= strlen("chat.room") + strlen("mid-1"));
    assert_true(add(d, "chat.room", "mid-2", 2, 1000));
    dedup_stats(d, &n, &bytes);
    assert_int_equal(n, 2);
    assert_int_equal(bytes, bytes0 + 2 * one);
    dedup_sweep(d, WINDOW + 500); /* the first only */
    dedup_stats(d, &n, &bytes);
    assert_int_equal(n, 1);
    assert_int_equal(bytes, bytes0 + one);
    dedup_sweep(d, WINDOW + 1001);
    dedup_stats(d, &n, &bytes);
    assert_int_equal(n, 0);
    assert_int_equal(bytes, bytes0);
    dedup_free(d);
    dedup_stats(NULL, &n, &bytes);
    assert_int_equal(n, 0);
    assert_int_equal(bytes, 0);
    dedup_sweep(NULL, 0);
}

/* Many entries over time: the table grows, expires in order and finds each one. */
static void test_many(void **state)
{
    (void)state;
    enum { N = 20000 };
    dedup_t *d = dedup_new(WINDOW, N);
    assert_non_null(d);
    char topic[32], mid[32];
    uint64_t off;
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof(topic), "t.%d", i % 97);
        snprintf(mid, sizeof(mid), "m%d", i);
        assert_true(add(d, topic, mid, (uint64_t)i + 1, 2 * (uint64_t)i));
    }
    assert_int_equal(entries(d), N);
    assert_false(dedup_room(d, 2 * N));
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof(topic), "t.%d", i % 97);
        snprintf(mid, sizeof(mid), "m%d", i);
        assert_true(seen(d, topic, mid, 2 * N, &off));
        assert_int_equal(off, (uint64_t)i + 1);
        snprintf(topic, sizeof(topic), "t.%d", (i + 1) % 97);
        assert_false(seen(d, topic, mid, 2 * N, &off));
    }
    /* Those added up to N (i <= N / 2) are older than the window: exactly these go. */
    dedup_sweep(d, WINDOW + N + 1);
    assert_int_equal(entries(d), N / 2 - 1);
    for (int i = 0; i < N; i++) {
        snprintf(topic, sizeof(topic), "t.%d", i % 97);
        snprintf(mid, sizeof(mid), "m%d", i);
        assert_int_equal(seen(d, topic, mid, WINDOW + N + 1, &off), i > N / 2);
    }
    dedup_free(d); /* with entries held: no leak (ASan) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seen_within_window),
        cmocka_unit_test(test_scoped_per_topic),
        cmocka_unit_test(test_max),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
