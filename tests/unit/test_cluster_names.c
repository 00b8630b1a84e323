/*
 * Unit tests for the Redis names of interest and the --redis URL list
 * (broker/cluster_wire.c): gale pattern -> Redis glob (escaping, wildcards,
 * one-to-one, what Redis's glob then matches), and URL parsing.
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

static const char *glob(const char *prefix, const char *p)
{
    static char out[CLUSTER_NAME_MAX];
    size_t n = cluster_glob(out, sizeof(out), prefix, strlen(prefix), p, strlen(p));
    assert_true(n > 0 && n == strlen(out));
    return out;
}

static void test_glob_translation(void **state)
{
    (void)state;
    assert_string_equal(glob("gale:", "a.*"), "gale:a.*");
    assert_string_equal(glob("gale:", "a.>"), "gale:a.?*");
    assert_string_equal(glob("gale:", "*"), "gale:*");
    assert_string_equal(glob("gale:", ">"), "gale:?*");
    assert_string_equal(glob("gale:", "*.b.*.>"), "gale:*.b.*.?*");
    /* Glob metacharacters in literal segments and in the prefix are escaped. */
    assert_string_equal(glob("gale:", "a?[x]\\.*"), "gale:a\\?\\[x\\]\\\\.*");
    assert_string_equal(glob("p[1]*?:", "x.*"), "p\\[1\\]\\*\\?:x.*");
    assert_string_equal(glob("gale:", "caf\xc3\xa9.*"), "gale:caf\xc3\xa9.*");
}

/* Redis's stringmatchlen, reduced to what cluster_glob emits: * ? and \ escapes. */
static bool redis_match(const char *p, const char *s)
{
    for (; *p; p++, s++) {
        if (*p == '*') {
            for (;; s++) {
                if (redis_match(p + 1, s))
                    return true;
                if (!*s)
                    return false;
            }
        }
        if (*p == '?') {
            if (!*s)
                return false;
            continue;
        }
        if (*p == '\\')
            p++;
        if (*p != *s)
            return false;
    }
    return *s == '\0';
}

static void test_glob_over_matches_never_under(void **state)
{
    static const char *const patterns[] = {"a",   "a.*",   "a.>",  "*.b", "*",   ">",
                                           "*.>", "a.*.c", "x?.*", "[.*", "\\.>"};
    static const char *const topics[] = {"a",   "a.b",  "a.b.c",  "b.b", "x?.y", "xy.y",
                                         "[.z", "\\.q", "\\.q.r", "ab",  "a.bc", "[x"};
    (void)state;
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++) {
        bool wild;
        assert_true(gale_pattern_valid(patterns[i], strlen(patterns[i]), &wild));
        if (!wild)
            continue;
        const char *g = glob("gale:", patterns[i]);
        for (size_t k = 0; k < sizeof(topics) / sizeof(topics[0]); k++) {
            char chan[300];
            snprintf(chan, sizeof(chan), "gale:%s", topics[k]);
            if (gale_pattern_match(patterns[i], strlen(patterns[i]), topics[k], strlen(topics[k])))
                assert_true(redis_match(g, chan)); /* never misses */
        }
    }
    /* Literal metacharacters only match themselves. */
    assert_false(redis_match(glob("gale:", "x?.*"), "gale:xy.y"));
    assert_true(redis_match(glob("gale:", "x?.*"), "gale:x?.y"));
    assert_false(redis_match(glob("gale:", "[.*"), "gale:x.y"));
}

static void test_glob_one_to_one(void **state)
{
    static const char *const ps[] = {
        "a.*", "a.>",   "*.*",     "*.>",  ">",
        "*",   "a\\.*", "a\\\\.*", "a?.*", "a*b.>"}; /* the last is invalid, but distinct */
    char seen[10][CLUSTER_NAME_MAX];
    (void)state;
    for (size_t i = 0; i < 10; i++) {
        strcpy(seen[i], glob("g:", ps[i]));
        for (size_t k = 0; k < i; k++)
            assert_string_not_equal(seen[i], seen[k]);
    }
}

static void test_glob_capacity(void **state)
{
    char small[8], big[CLUSTER_NAME_MAX], prefix[65], pat[256];
    (void)state;
    assert_int_equal(cluster_glob(small, sizeof(small), "gale:", 5, "abc.*", 5), 0);
    assert_int_equal(cluster_glob(small, sizeof(small), "g:", 2, "ab.*", 4), 6);
    /* The worst case fits CLUSTER_NAME_MAX: every byte escaped. */
    memset(prefix, '[', 64);
    prefix[64] = '\0';
    memset(pat, '?', 253);
    memcpy(pat + 253, ".>", 3);
    assert_true(cluster_glob(big, sizeof(big), prefix, 64, pat, 255) > 0);
}

static void test_urls(void **state)
{
    cluster_addr_t a[CLUSTER_MAX_SHARDS + 1];
    const char *why;
    (void)state;
    assert_int_equal(cluster_parse_urls("redis://127.0.0.1:6379", a, 4, &why), 1);
    assert_string_equal(a[0].host, "127.0.0.1");
    assert_int_equal(a[0].port, 6379);
    assert_int_equal(a[0].db, 0);
    assert_string_equal(a[0].label, "127.0.0.1:6379/0");
    assert_int_equal(
        cluster_parse_urls("redis://r1:1/3, redis://[::1]:2 ,redis://r-3.x:3", a, 4, &why), 3);
    assert_int_equal(a[0].db, 3);
    assert_string_equal(a[1].host, "::1");
    assert_string_equal(a[1].label, "[::1]:2/0");
    assert_string_equal(a[2].host, "r-3.x");
    static const char *const bad[] = {"",
                                      "redis://",
                                      "redis://h",
                                      "redis://h:",
                                      "redis://:1",
                                      "redis://h:0",
                                      "redis://h:65536",
                                      "redis://h:1/",
                                      "redis://h:1/x",
                                      "redis://h:1/-1",
                                      "rediss://h:1",
                                      "http://h:1",
                                      "redis://user:pw@h",
                                      "redis://h:1,",
                                      "redis://h:1,,redis://g:1",
                                      "redis://h:1,redis://h:1",
                                      "redis://h:1/0,redis://h:1",
                                      "redis://[::1:2",
                                      "redis://h h:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_parse_urls(bad[i], a, 4, &why), -1);
    assert_int_equal(cluster_parse_urls("redis://a:1,redis://b:1,redis://c:1", a, 2, &why), -1);
    assert_string_equal(why, "too many Redis URLs");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob_translation),
        cmocka_unit_test(test_glob_over_matches_never_under),
        cmocka_unit_test(test_glob_one_to_one),
        cmocka_unit_test(test_glob_capacity),
        cmocka_unit_test(test_urls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
