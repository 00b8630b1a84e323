/*
 * process: a gale-broker process, one broker_t per event loop (--loops, loops.h), each loop
 * on its own thread (the first on the main one): starts them one after another, runs them,
 * wakes each one for what the others hand it (its inbox, stop and reload requests), and
 * frees them once every loop has stopped. With one loop it is today's broker, alone.
 */
#include "process.h"

#include "broker.h"
#include "log.h"
#include "loops_internal.h"
#include "mqtt.h"
#include "router.h"
#include "session.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What loops.c asks of the transport while it delivers an inbox. */
static const loops_handlers_t handlers = {
    .flush = session_flush_all,
    .takeover = mqtt_taken_over,
    .queued = session_queued_bytes,
};

static void on_wake_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_wake(uv_async_t *h)
{
    broker_t *b = h->data;
    loops_t *l = b->loops;
    slot_t *s = slot_of(b);
    if (atomic_load(&l->finished) == l->n) { /* nobody hands anything over any more */
        loops_drain(b);
        uv_close((uv_handle_t *)h, on_wake_closed);
        return;
    }
    loops_drain(b);
    if (atomic_exchange(&s->resume, false) && b->loops_backlog) {
        b->loops_backlog = false;
        session_resume_all(b); /* the connections paused for the inbox that was drained */
    }
    if (atomic_load(&l->stopping) && !b->stopping)
        broker_stop(b);
    unsigned r = atomic_load(&l->reloads);
    if (r != s->reload_seen) {
        s->reload_seen = r;
        if (b->loop_idx)
            broker_reload(b);
    }
}

static void run_loop(void *arg)
{
    slot_t *s = arg;
    if (s->b->loop_idx) { /* top -H, perf, gdb: which loop (the main thread keeps the process's
                             name, which pidof and pkill go by) */
        char name[16];
        snprintf(name, sizeof(name), "gale-loop-%u", (unsigned)(uint8_t)s->b->loop_idx); /* < 64 */
        pthread_setname_np(pthread_self(), name);
    }
    uv_run(&s->loop, UV_RUN_DEFAULT);
}

static int run_one(const gale_config_t *cfg)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        log_error("could not create the event loop");
        return 1;
    }
    broker_t *b = broker_start(cfg, &loop, NULL, 0);
    if (!b) {
        log_error("out of memory");
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int code = broker_free(b);
    if (uv_loop_close(&loop) != 0)
        log_warn("event loop closed with handles still open");
    return code;
}

/* --loops not given: the CPUs this process may run on, or 1 where the state is not divided
 * across loops yet (history and presence of a single node). */
static uint64_t default_loops(const gale_config_t *cfg, const char **why)
{
    if (!cfg->redis_urls[0] && (cfg->nhistory || cfg->npresence)) {
        *why = cfg->nhistory ? "--history on a single node keeps one loop for now"
                             : "--presence on a single node keeps one loop for now";
        return 1;
    }
    uint64_t n = uv_available_parallelism();
    *why = "the CPUs this process may run on";
    return n < 1 ? 1 : n > CONFIG_LOOPS_MAX ? CONFIG_LOOPS_MAX : n;
}

int process_run(const gale_config_t *given)
{
    gale_config_t copy = *given;
    const gale_config_t *cfg = &copy;
    const char *why = "--loops";
    if (!copy.loops)
        copy.loops = default_loops(&copy, &why);
    log_info("loops: %" PRIu64 " (%s)%s", copy.loops, why,
             copy.loops > 1 ? ": each a thread with its own event loop, listener and connections"
                            : "");
    if (copy.loops == 1) {
        int code = run_one(cfg);
        explicit_bzero(&copy, sizeof(copy)); /* a copy of the secrets */
        return code;
    }
    struct mqtt_state *mqtt = mqtt_state_new();
    loops_t *l = mqtt ? loops_new(cfg, mqtt, &handlers) : NULL;
    if (!l) {
        mqtt_state_free(mqtt);
        log_error("out of memory");
        return 1;
    }
    int code = 0;
    uint32_t started = 0;
    /* One after another on this thread (lws's context creation is not thread-safe), the
     * loops not running yet; then every loop but the first gets its thread. */
    for (uint32_t k = 0; k < l->n; k++) {
        slot_t *s = &l->slots[k];
        if (uv_loop_init(&s->loop) != 0) {
            log_error("could not create event loop %u", k);
            code = 1;
            break;
        }
        uv_async_init(&s->loop, &s->wake, on_wake);
        s->wake_open = true;
        s->b = broker_start(cfg, &s->loop, l, k);
        if (!s->b) {
            log_error("out of memory");
            s->wake_open = false;
            uv_close((uv_handle_t *)&s->wake, NULL);
            uv_run(&s->loop, UV_RUN_DEFAULT);
            uv_loop_close(&s->loop);
            code = 1;
            break;
        }
        s->wake.data = s->b;
        started++;
        if (s->b->exit_code)
            break; /* it has begun its teardown */
    }
    /* A loop that failed: the others stop too (and those never started count as done). */
    if (started < l->n || (started && l->slots[started - 1].b->exit_code)) {
        atomic_fetch_add(&l->finished, l->n - started);
        loops_stop(l);
    }
    for (uint32_t k = 1; k < started; k++)
        l->slots[k].threaded = uv_thread_create(&l->slots[k].thread, run_loop, &l->slots[k]) == 0;
    for (uint32_t k = 1; k < started; k++)
        if (!l->slots[k].threaded) {
            log_error("could not start the thread of loop %u", k);
            loops_stop(l);
        }
    if (started)
        run_loop(&l->slots[0]);
    for (uint32_t k = 1; k < started; k++) {
        if (l->slots[k].threaded)
            uv_thread_join(&l->slots[k].thread);
        else
            run_loop(&l->slots[k]); /* its teardown, here */
    }
    for (uint32_t k = 0; k < started; k++) {
        int c = broker_free(l->slots[k].b);
        if (c > code)
            code = c;
        if (uv_loop_close(&l->slots[k].loop) != 0)
            log_warn("event loop %u closed with handles still open", k);
    }
    mqtt_state_free(loops_free(l));
    explicit_bzero(&copy, sizeof(copy));
    return code;
}
