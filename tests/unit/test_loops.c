/*
 * The loops' shared state (broker/loops.c) on one thread: interest, hand-offs into the
 * inboxes and their bound, MQTT takeovers, connection slots. The threads themselves, the
 * wake-ups and the draining are driven through the real broker (tests/integration/
 * test_loops.py, and under ThreadSanitizer in scripts/test).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "broker.h"
#include "config.h"
#include "conn.h"
#include "loops_internal.h"
#include "mqtt.h"
#include "router.h"
#include "topics.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    gale_config_t cfg;
    loops_t *l;
    broker_t b[3];
} fixture_t;

static int nflush, ntakeover;
static uint32_t fmts; /* what the last loops_publish reported */

static void flush(broker_t *b)
{
    (void)b;
    nflush++;
}

static void takeover(broker_t *b, uint64_t conn, uint64_t by)
{
    (void)b;
    assert_int_equal(conn, 41);
    assert_int_equal(by, 40);
    ntakeover++;
}

static uint64_t queued(const broker_t *b)
{
    (void)b;
    return 0;
}

static const loops_handlers_t handlers = {.flush = flush, .takeover = takeover, .queued = queued};

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    config_defaults(&f->cfg);
    f->cfg.loops = 3;
    f->l = loops_new(&f->cfg, mqtt_state_new(), &handlers);
    assert_non_null(f->l);
    for (uint32_t k = 0; k < 3; k++) {
        f->b[k].loops = f->l;
        f->b[k].loop_idx = k;
        f->b[k].nloops = 3;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    mqtt_state_free(loops_free(f->l)); /* frees what the inboxes still hold */
    free(f);
    return 0;
}

static router_msg_t msg(const char *topic, const char *data)
{
    return (router_msg_t){.topic = topic,
                          .topic_len = strlen(topic),
                          .enc = GALE_ENC_JSON,
                          .data = (const uint8_t *)data,
                          .data_len = strlen(data)};
}

static uint32_t inbox(fixture_t *f, uint32_t k)
{
    return f->l->slots[k].ninbox;
}

static void test_a_publish_reaches_the_loops_with_interest_once(void **state)
{
    fixture_t *f = *state;
    assert_true(loops_interest_add(&f->b[1], "a.*", 3, GALE_ENC_JSON));
    assert_true(loops_interest_add(&f->b[1], "a.>", 3, GALE_ENC_JSON)); /* two patterns, one loop */
    assert_true(loops_interest_add(&f->b[2], "a.x", 3, GALE_ENC_JSON));
    assert_true(loops_interest_add(&f->b[0], "a.x", 3,
                                   GALE_ENC_JSON)); /* the publisher's own: no hand-off */
    router_msg_t m = msg("a.x", "1");
    assert_true(loops_interest_add(&f->b[2], "a.>", 3, GALE_ENC_MSGPACK));
    assert_true(loops_publish(&f->b[0], &m, &fmts));
    assert_int_equal(fmts, (1u << GALE_ENC_JSON) | (1u << GALE_ENC_MSGPACK)); /* to check */
    assert_int_equal(inbox(f, 0), 0);
    assert_int_equal(inbox(f, 1), 1);
    assert_int_equal(inbox(f, 2), 1);
    assert_int_equal(f->b[0].loops_wake, (1u << 1) | (1u << 2));
    /* One copy for both, the bytes its own. */
    loops_msg_t *x = f->l->slots[1].inbox[0];
    assert_ptr_equal(x, f->l->slots[2].inbox[0]);
    assert_int_equal(atomic_load(&x->refs), 2);
    assert_ptr_not_equal(x->m.topic, m.topic);
    assert_memory_equal(x->m.topic, "a.x", 3);
    assert_memory_equal(x->m.data, "1", 1);
    assert_true(loops_pending(&f->b[1]));
    assert_false(loops_pending(&f->b[0]));

    router_msg_t other = msg("b.x", "2");
    assert_true(loops_publish(&f->b[0], &other, &fmts)); /* nobody: nothing */
    assert_int_equal(fmts, 0);
    assert_int_equal(inbox(f, 1) + inbox(f, 2), 2);
}

static void test_interest_follows_first_and_last_subscriber(void **state)
{
    fixture_t *f = *state;
    router_msg_t m = msg("a.x", "1");
    assert_true(loops_interest_add(&f->b[1], "a.*", 3, GALE_ENC_JSON)); /* two connections */
    assert_true(loops_interest_add(&f->b[1], "a.*", 3, GALE_ENC_JSON));
    loops_interest_drop(&f->b[1], "a.*", 3, GALE_ENC_JSON);    /* one left: still there */
    loops_interest_drop(&f->b[1], "a.*", 3, GALE_ENC_MSGPACK); /* none of that format */
    assert_true(loops_publish(&f->b[0], &m, &fmts));
    assert_int_equal(inbox(f, 1), 1);
    loops_interest_drop(&f->b[1], "a.*", 3, GALE_ENC_JSON); /* the last */
    loops_interest_drop(&f->b[1], "a.*", 3, GALE_ENC_JSON); /* again: nothing */
    loops_interest_drop(&f->b[2], "z.z", 3, GALE_ENC_JSON); /* never held: nothing */
    f->b[0].loops_wake = 0;
    assert_true(loops_publish(&f->b[0], &m, &fmts));
    assert_int_equal(inbox(f, 1), 1);
    assert_int_equal(f->b[0].loops_wake, 0);
    assert_int_equal(f->l->slots[1].nheld, 0); /* the table forgets it */
}

static void test_the_index_counts_patterns_once_whatever_loops_and_formats(void **state)
{
    fixture_t *f = *state;
    loops_t *l = f->l;
    assert_true(loops_interest_add(&f->b[1], "a.*", 3, GALE_ENC_JSON));
    assert_true(loops_interest_add(&f->b[1], "a.*", 3, GALE_ENC_JSON)); /* a 2nd connection */
    assert_true(loops_interest_add(&f->b[2], "a.*", 3, CONN_FMT_NATS));
    assert_true(loops_interest_add(&f->b[2], "b.>", 3, CONN_FMT_MQTT));
    assert_int_equal(topics_count(l->interest), 2);
    assert_int_equal(topics_subscriptions(l->interest), 3); /* (loop, format) pairs */
    router_msg_t m = msg("a.x", "1");
    assert_true(loops_publish(&f->b[0], &m, &fmts));
    assert_int_equal(fmts, (1u << GALE_ENC_JSON) | (1u << CONN_FMT_NATS));
    loops_interest_drop(&f->b[2], "b.>", 3, CONN_FMT_MQTT);
    loops_interest_drop(&f->b[2], "a.*", 3, CONN_FMT_NATS);
    assert_int_equal(topics_count(l->interest), 1);
    assert_true(loops_publish(&f->b[0], &m, &fmts));
    assert_int_equal(fmts, 1u << GALE_ENC_JSON);
    assert_int_equal(inbox(f, 2), 1); /* the first publish only */
}

static void test_a_full_inbox_pauses_its_publishers_loop_once(void **state)
{
    fixture_t *f = *state;
    assert_true(loops_interest_add(&f->b[1], "big", 3, GALE_ENC_JSON));
    char *data = malloc(64 * 1024 + 1);
    memset(data, 'x', 64 * 1024);
    data[64 * 1024] = '\0';
    router_msg_t m = msg("big", data);
    uint32_t n = 0;
    while (!f->b[0].loops_backlog && n < 100) {
        assert_true(loops_publish(&f->b[0], &m, &fmts));
        n++;
    }
    assert_true(f->b[0].loops_backlog);
    assert_in_range(n, 16, 17); /* over 1 MiB of 64 KiB messages */
    assert_int_equal(f->b[0].m.loops_backlogs, 1);
    assert_true(loops_publish(&f->b[0], &m, &fmts)); /* still handed over: nothing is dropped */
    assert_int_equal(f->b[0].m.loops_backlogs, 1);
    assert_int_equal(f->l->slots[1].waiters, 1u << 0);
    assert_int_equal(inbox(f, 1), n + 1);
    free(data);
}

static void test_takeover_goes_to_the_old_connections_loop(void **state)
{
    fixture_t *f = *state;
    assert_true(loops_takeover(&f->b[0], 2, 41, 40));
    assert_int_equal(inbox(f, 2), 1);
    assert_int_equal(f->l->slots[2].inbox[0]->takeover, 41);
    assert_int_equal(f->l->slots[2].inbox[0]->by, 40);
    assert_int_equal(f->b[0].loops_wake, 1u << 2);
    assert_true(loops_pending(&f->b[2]));
    ntakeover = 0;
    loops_catch_up(&f->b[1]); /* nothing there */
    assert_int_equal(ntakeover, 0);
    loops_catch_up(&f->b[2]); /* the loop acts on it before its next request */
    assert_int_equal(ntakeover, 1);
    assert_false(loops_pending(&f->b[2]));
    assert_int_equal(inbox(f, 2), 0);
}

static void test_connection_slots_are_global(void **state)
{
    fixture_t *f = *state;
    assert_true(loops_conn_reserve(f->l, 2));
    assert_true(loops_conn_reserve(f->l, 2));
    assert_false(loops_conn_reserve(f->l, 2));
    loops_conn_release(f->l);
    assert_true(loops_conn_reserve(f->l, 2));
    assert_true(loops_conn_reserve(f->l, 0)); /* 0: no limit */
}

static void test_one_clock_and_the_port(void **state)
{
    fixture_t *f = *state;
    uint64_t t0 = loops_now_ms();
    assert_true(loops_now_ms() >= t0);
    assert_int_equal(loops_port(f->l), 0);
    loops_set_port(f->l, 4242);
    assert_int_equal(loops_port(f->l), 4242);
    assert_int_equal(loops_count(f->l), 3);
    assert_int_equal(loops_count(NULL), 1);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_a_publish_reaches_the_loops_with_interest_once),
        T(test_interest_follows_first_and_last_subscriber),
        T(test_the_index_counts_patterns_once_whatever_loops_and_formats),
        T(test_a_full_inbox_pauses_its_publishers_loop_once),
        T(test_takeover_goes_to_the_old_connections_loop),
        T(test_connection_slots_are_global),
        T(test_one_clock_and_the_port),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
