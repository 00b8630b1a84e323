/* Unit tests of frames (headers, refcounts, close frames) and the outbound queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"
#include "outq.h"

/* A frame with `len` payload bytes of value `fill`, built the way the router builds them. */
static frame_t *make_frame(size_t len, uint8_t fill)
{
    gale_buf_t b;
    gale_buf_init(&b, FRAME_HEADROOM);
    uint8_t *tmp = malloc(len + 1);
    assert_non_null(tmp);
    memset(tmp, fill, len + 1);
    /* Append one byte more and drop it, so even an empty payload has storage. */
    assert_true(gale_buf_append(&b, tmp, len + 1));
    b.len--;
    free(tmp);
    frame_t *f = frame_finish(&b, FRAME_TEXT);
    assert_non_null(f);
    return f;
}

static void test_header_lengths(void **state)
{
    (void)state;
    static const struct {
        size_t len, hlen;
        uint8_t b1;
    } cases[] = {{0, 2, 0},       {1, 2, 1},        {125, 2, 125},    {126, 4, 126},
                 {65535, 4, 126}, {65536, 10, 127}, {200000, 10, 127}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        frame_t *f = make_frame(cases[i].len, 0xab);
        const uint8_t *p = frame_bytes(f);
        assert_int_equal(f->len, cases[i].len + cases[i].hlen);
        assert_int_equal(p[0], 0x81); /* FIN + text, unmasked */
        assert_int_equal(p[1], cases[i].b1);
        uint64_t decoded = cases[i].len < 126 ? p[1] : 0;
        if (cases[i].hlen == 4)
            decoded = (uint64_t)p[2] << 8 | p[3];
        else if (cases[i].hlen == 10)
            for (int k = 0; k < 8; k++)
                decoded = decoded << 8 | p[2 + k];
        assert_int_equal(decoded, cases[i].len);
        if (cases[i].len)
            assert_int_equal(p[cases[i].hlen], 0xab);
        frame_unref(f);
    }
}

static void test_close_and_ping(void **state)
{
    (void)state;
    frame_t *c = frame_close(4001, "slow consumer");
    const uint8_t *p = frame_bytes(c);
    assert_int_equal(c->len, 4 + 13);
    assert_int_equal(p[0], 0x88);
    assert_int_equal(p[1], 2 + 13);
    assert_int_equal(p[2] << 8 | p[3], 4001);
    assert_memory_equal(p + 4, "slow consumer", 13);
    frame_unref(c);

    char longreason[300];
    memset(longreason, 'r', sizeof(longreason) - 1);
    longreason[sizeof(longreason) - 1] = '\0';
    c = frame_close(1001, longreason);
    assert_int_equal(frame_bytes(c)[1], 125); /* control frame payload limit */
    frame_unref(c);

    frame_t *ping = frame_ping();
    assert_int_equal(ping->len, 6);
    assert_int_equal(frame_bytes(ping)[0], 0x89);
    assert_int_equal(frame_bytes(ping)[1], 4); /* lws ignores empty pongs: never send empty */
    assert_memory_equal(frame_bytes(ping) + 2, "gale", 4);
    frame_ref(ping);
    frame_unref(ping); /* static: never freed */
    frame_unref(NULL);
}

static void test_fifo_order_and_bytes(void **state)
{
    (void)state;
    outq_t q = {0};
    frame_t *fs[100];
    size_t total = 0;
    for (int i = 0; i < 100; i++) {
        fs[i] = make_frame((size_t)i, (uint8_t)i);
        assert_true(outq_push(&q, fs[i]));
        total += fs[i]->len;
    }
    assert_int_equal(q.ring.count, 100);
    assert_int_equal(q.bytes, total);
    for (int i = 0; i < 100; i++)
        assert_int_equal(fs[i]->refs, 2); /* ours + the queue's */
    for (int i = 0; i < 50; i++) {
        assert_ptr_equal(outq_peek(&q), fs[i]);
        outq_pop(&q);
        assert_int_equal(fs[i]->refs, 1);
    }
    for (int i = 0; i < 100; i++)
        frame_unref(fs[i]); /* the queue keeps 50..99 alive */
    assert_int_equal(q.ring.count, 50);
    assert_int_equal(outq_peek(&q)->len, 50 + 2);
    outq_clear(&q);
    assert_int_equal(q.ring.count, 0);
    assert_int_equal(q.bytes, 0);
    assert_null(q.ring.slot);
}

static void test_wraparound(void **state)
{
    (void)state;
    outq_t q = {0};
    int next_in = 0, next_out = 0;
    /* Interleave pushes and pops so head wraps around a small ring many times. */
    for (int round = 0; round < 1000; round++) {
        for (int k = 0; k < 3; k++) {
            frame_t *f = make_frame(1, (uint8_t)(next_in++ & 0xff));
            assert_true(outq_push(&q, f));
            frame_unref(f);
        }
        for (int k = 0; k < 2; k++) {
            assert_int_equal(frame_bytes(outq_peek(&q))[2], (uint8_t)(next_out++ & 0xff));
            outq_pop(&q);
        }
        if (q.ring.count > 5) {
            while (q.ring.count) {
                assert_int_equal(frame_bytes(outq_peek(&q))[2], (uint8_t)(next_out++ & 0xff));
                outq_pop(&q);
            }
        }
    }
    outq_clear(&q);
}

static void test_gather_whole_frames(void **state)
{
    (void)state;
    outq_t q = {0};
    for (int i = 0; i < 10; i++) {
        frame_t *f = make_frame(98, (uint8_t)i); /* 100 bytes each */
        outq_push(&q, f);
        frame_unref(f);
    }
    uint8_t dst[350];
    uint32_t nframes = 0;
    size_t n = outq_gather(&q, dst, sizeof(dst), &nframes);
    assert_int_equal(n, 300); /* three whole frames, never a partial one */
    assert_int_equal(nframes, 3);
    assert_int_equal(dst[0], 0x81);
    assert_int_equal(dst[2], 0);
    assert_int_equal(dst[202], 2);
    assert_int_equal(q.ring.count, 7);
    assert_int_equal(q.bytes, 700);
    n = outq_gather(&q, dst, 99, &nframes); /* head frame alone is larger */
    assert_int_equal(n, 0);
    assert_int_equal(nframes, 0);
    assert_int_equal(q.ring.count, 7);
    uint8_t big[1000];
    n = outq_gather(&q, big, sizeof(big), NULL);
    assert_int_equal(n, 700);
    assert_int_equal(q.ring.count, 0);
    assert_int_equal(q.bytes, 0);
    assert_int_equal(outq_gather(&q, big, sizeof(big), NULL), 0);
    outq_clear(&q);
}

static void test_shared_frame_many_queues(void **state)
{
    (void)state;
    enum { N = 1000 };
    outq_t *qs = calloc(N, sizeof(*qs));
    frame_t *f = make_frame(100, 7);
    for (int i = 0; i < N; i++)
        assert_true(outq_push(&qs[i], f));
    assert_int_equal(f->refs, N + 1);
    frame_unref(f);
    for (int i = 0; i < N - 1; i++)
        outq_clear(&qs[i]);
    assert_int_equal(outq_peek(&qs[N - 1])->refs, 1);
    outq_clear(&qs[N - 1]); /* frees the frame: valgrind/ASan check it */
    free(qs);
}

static void test_ring_kept_until_trimmed(void **state)
{
    (void)state;
    outq_t q = {0};
    uint8_t buf[4096];
    for (int i = 0; i < 64; i++) {
        frame_t *f = make_frame(1, 1);
        outq_push(&q, f);
        frame_unref(f);
    }
    assert_true(q.ring.cap >= 64);
    frame_t **ring = q.ring.slot;
    uint32_t cap = q.ring.cap;
    outq_trim(&q); /* not empty: nothing happens */
    assert_ptr_equal(q.ring.slot, ring);
    assert_int_equal(q.ring.count, 64);
    while (q.ring.count > 32)
        outq_pop(&q);
    assert_int_equal(outq_gather(&q, buf, sizeof(buf), NULL), 32 * 3);
    assert_int_equal(q.ring.count, 0);
    /* Emptied by pop and gather: the ring stays for the next batch. */
    assert_ptr_equal(q.ring.slot, ring);
    assert_int_equal(q.ring.cap, cap);
    for (int i = 0; i < 64; i++) { /* refilled without growing */
        frame_t *f = make_frame(1, 1);
        outq_push(&q, f);
        frame_unref(f);
        assert_ptr_equal(q.ring.slot, ring);
    }
    while (q.ring.count)
        outq_pop(&q);
    outq_trim(&q);
    assert_null(q.ring.slot);
    assert_int_equal(q.ring.cap, 0);
    assert_int_equal(q.bytes, 0);
    outq_trim(&q); /* trimming an empty, ringless queue is harmless */
    frame_t *f = make_frame(1, 1);
    assert_true(outq_push(&q, f)); /* and it grows again from nothing */
    assert_ptr_equal(outq_peek(&q), f);
    frame_unref(f);
    outq_clear(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_lengths),
        cmocka_unit_test(test_close_and_ping),
        cmocka_unit_test(test_fifo_order_and_bytes),
        cmocka_unit_test(test_wraparound),
        cmocka_unit_test(test_gather_whole_frames),
        cmocka_unit_test(test_shared_frame_many_queues),
        cmocka_unit_test(test_ring_kept_until_trimmed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
