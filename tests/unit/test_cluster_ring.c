/*
 * Unit tests for consistent hashing and the duplicate filter
 * (broker/cluster_wire.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cluster_wire.h"

#define NKEYS 20000

static uint32_t shard_of(const cluster_ring_t *r, int k)
{
    char key[32];
    int n = snprintf(key, sizeof(key), "topic.%d.x", k);
    return cluster_ring_shard(r, key, (size_t)n);
}

static void test_spread(void **state)
{
    const char *labels[4] = {"10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0",
                             "10.0.0.4:6379/0"};
    cluster_ring_t r;
    unsigned count[4] = {0};
    (void)state;
    assert_true(cluster_ring_init(&r, labels, 4));
    for (int k = 0; k < NKEYS; k++)
        count[shard_of(&r, k)]++;
    for (int s = 0; s < 4; s++)
        assert_true(count[s] > NKEYS / 4 * 7 / 10 && count[s] < NKEYS / 4 * 13 / 10);
    cluster_ring_free(&r);
}

static void test_order_independent(void **state)
{
    const char *l1[3] = {"a:1/0", "b:1/0", "c:1/0"};
    const char *l2[3] = {"c:1/0", "a:1/0", "b:1/0"};
    cluster_ring_t r1, r2;
    (void)state;
    assert_true(cluster_ring_init(&r1, l1, 3));
    assert_true(cluster_ring_init(&r2, l2, 3));
    for (int k = 0; k < NKEYS; k++)
        assert_string_equal(l1[shard_of(&r1, k)], l2[shard_of(&r2, k)]);
    cluster_ring_free(&r1);
    cluster_ring_free(&r2);
}

static void test_adding_a_shard_moves_few(void **state)
{
    const char *l[4] = {"a:1/0", "b:1/0", "c:1/0", "d:1/0"};
    cluster_ring_t r3, r4;
    unsigned moved = 0;
    (void)state;
    assert_true(cluster_ring_init(&r3, l, 3));
    assert_true(cluster_ring_init(&r4, l, 4));
    for (int k = 0; k < NKEYS; k++) {
        uint32_t a = shard_of(&r3, k), b = shard_of(&r4, k);
        if (a != b) {
            assert_int_equal(b, 3); /* a key only ever moves to the new shard */
            moved++;
        }
    }
    assert_true(moved > NKEYS / 4 * 6 / 10 && moved < NKEYS / 4 * 14 / 10);
    cluster_ring_free(&r3);
    cluster_ring_free(&r4);
}

static void test_single_and_bounds(void **state)
{
    const char *l[1] = {"only:1/0"};
    cluster_ring_t r;
    (void)state;
    assert_true(cluster_ring_init(&r, l, 1));
    for (int k = 0; k < 1000; k++)
        assert_int_equal(shard_of(&r, k), 0);
    cluster_ring_free(&r);
    assert_false(cluster_ring_init(&r, l, 0));
    cluster_ring_free(&r); /* safe on a zeroed ring */
}

static void test_dedupe_adjacent_copies(void **state)
{
    cluster_dedupe_t *d = malloc(sizeof(*d));
    (void)state;
    cluster_dedupe_reset(d);
    /* Channel copy, then two pattern copies of each message; two origins interleaved. */
    for (uint64_t seq = 1; seq <= 100; seq++) {
        assert_true(cluster_dedupe_check(d, 7, seq));
        assert_false(cluster_dedupe_check(d, 7, seq));
        assert_false(cluster_dedupe_check(d, 7, seq));
        assert_true(cluster_dedupe_check(d, 9, seq * 2));
        assert_false(cluster_dedupe_check(d, 9, seq * 2));
    }
    /* Gaps are fine (the origin's other shards take the missing numbers); older is a copy. */
    assert_true(cluster_dedupe_check(d, 7, 1000));
    assert_false(cluster_dedupe_check(d, 7, 999));
    assert_false(cluster_dedupe_check(d, 0, 5)); /* instance 0 is never valid */
    free(d);
}

static void test_dedupe_many_origins(void **state)
{
    cluster_dedupe_t *d = malloc(sizeof(*d));
    (void)state;
    cluster_dedupe_reset(d);
    /* More origins than slots, round after round: each message is new, each copy dropped. */
    for (uint64_t round = 1; round <= 5; round++)
        for (uint64_t o = 1; o <= 3 * CLUSTER_DEDUPE_SLOTS; o++) {
            assert_true(cluster_dedupe_check(d, o * 0x9e3779b97f4a7c15ULL, round));
            assert_false(cluster_dedupe_check(d, o * 0x9e3779b97f4a7c15ULL, round));
        }
    /* A few active origins stay remembered while many others come and go. */
    cluster_dedupe_reset(d);
    for (uint64_t i = 1; i <= 10000; i++) {
        assert_true(cluster_dedupe_check(d, 1, i));
        assert_true(cluster_dedupe_check(d, 1000 + i, 1));
        assert_false(cluster_dedupe_check(d, 1, i));
    }
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spread),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_adding_a_shard_moves_few),
        cmocka_unit_test(test_single_and_bounds),
        cmocka_unit_test(test_dedupe_adjacent_copies),
        cmocka_unit_test(test_dedupe_many_origins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
