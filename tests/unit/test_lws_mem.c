/* lws_mem: request-head buffers from fixed slots, everything else from the heap. */
#include "lws_mem.h"

#include <libwebsockets.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#define HEADS 4

static void *lws_alloc(size_t n, const char *why)
{
    return lws_realloc(NULL, n, why);
}

static void lws_release(void *p)
{
    lws_realloc(p, 0, "lws_free");
}

static void test_heads_use_slots_then_the_heap(void **state)
{
    (void)state;
    void *data[HEADS + 1], *head[HEADS + 1];
    for (int i = 0; i <= HEADS; i++) {
        head[i] = lws_alloc(976, "ah struct");
        data[i] = lws_alloc(4096, "ah data");
        assert_non_null(head[i]);
        assert_non_null(data[i]);
        memset(data[i], 'x', 4096); /* the whole slot is writable */
        memset(head[i], 'y', 976);
    }
    /* HEADS of them in slots, one more from the heap. */
    assert_int_equal(lws_mem_heads_in_use(), HEADS);
    for (int i = 0; i < HEADS; i++) {
        assert_true((uint8_t *)data[i] != (uint8_t *)data[HEADS]);
        for (int j = 0; j < i; j++)
            assert_true(data[i] != data[j] && head[i] != head[j]);
    }
    lws_release(data[HEADS]);
    lws_release(head[HEADS]);
    lws_release(data[1]);
    assert_int_equal(lws_mem_heads_in_use(), HEADS - 1);
    void *again = lws_alloc(4096, "ah data");
    assert_ptr_equal(again, data[1]); /* the last returned slot is reused first */
    lws_release(again);
    for (int i = 0; i < HEADS; i++) {
        if (i != 1)
            lws_release(data[i]);
        lws_release(head[i]);
    }
    assert_int_equal(lws_mem_heads_in_use(), 0);
    /* Once all are back, trimming returns their pages: a new one reads as zeroes. */
    lws_mem_trim();
    uint8_t *fresh = lws_alloc(4096, "ah data");
    assert_int_equal(fresh[0], 0);
    assert_int_equal(fresh[4095], 0);
    lws_release(fresh);
}

static void test_other_allocations_use_the_heap(void **state)
{
    (void)state;
    char *p = lws_alloc(100, "wsi");
    assert_non_null(p);
    strcpy(p, "kept");
    p = lws_realloc(p, 100000, "grow");
    assert_non_null(p);
    assert_string_equal(p, "kept");
    lws_release(p);
    assert_int_equal(lws_mem_heads_in_use(), 0);
    /* larger than a slot: the heap */
    void *big = lws_alloc(8192, "ah data");
    assert_non_null(big);
    assert_int_equal(lws_mem_heads_in_use(), 0);
    lws_release(big);
    lws_release(NULL);
}

static void test_grow_a_slot_moves_it_to_the_heap(void **state)
{
    (void)state;
    char *d = lws_alloc(4096, "ah data");
    memcpy(d, "head", 5);
    assert_int_equal(lws_mem_heads_in_use(), 1);
    assert_ptr_equal(lws_realloc(d, 2048, "shrink"), d);
    char *g = lws_realloc(d, 10000, "grow");
    assert_non_null(g);
    assert_string_equal(g, "head");
    assert_int_equal(lws_mem_heads_in_use(), 0);
    lws_release(g);
}

int main(void)
{
    if (!lws_mem_install(HEADS, 4096))
        return 1;
    assert_true(lws_mem_install(HEADS, 4096)); /* once per process: a second call is a no-op */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heads_use_slots_then_the_heap),
        cmocka_unit_test(test_other_allocations_use_the_heap),
        cmocka_unit_test(test_grow_a_slot_moves_it_to_the_heap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
