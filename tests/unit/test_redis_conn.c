/* Unit tests of redis_conn: the backoff and the password masking (pure), and the states of
 * a connection driven through hiredis on a real libuv loop against a fake Redis in the
 * same process (a uv_tcp server that speaks just enough RESP: AUTH, PING, SUBSCRIBE,
 * PUBLISH, pushed messages), so every event can be provoked: refusal, silence, AUTH
 * answers, a dropped connection, the owner's own failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "log.h"
#include "redis_conn.h"

/* --- pure helpers --------------------------------------------------------------------- */

static void test_backoff(void **state)
{
    (void)state;
    /* d = 100 ms x 2^failures, at most 5 s, jittered into [d/2, d]. */
    assert_int_equal(redis_conn_backoff_ms(0, 0), 50);
    assert_int_equal(redis_conn_backoff_ms(0, 50), 100);
    assert_int_equal(redis_conn_backoff_ms(0, 51), 50);
    assert_int_equal(redis_conn_backoff_ms(1, 0), 100);
    assert_int_equal(redis_conn_backoff_ms(5, UINT64_MAX) <= 3200, 1);
    assert_int_equal(redis_conn_backoff_ms(5, 0), 1600);
    assert_int_equal(redis_conn_backoff_ms(6, 0), 2500);
    assert_int_equal(redis_conn_backoff_ms(6, 2500), 5000);
    assert_int_equal(redis_conn_backoff_ms(40, 0), 2500); /* no shift overflow */
    assert_int_equal(redis_conn_backoff_ms(UINT32_MAX, 2500), 5000);
    for (uint32_t f = 0; f < 12; f++) {
        uint64_t d = f < 6 ? 100u << f : 5000;
        d = d > 5000 ? 5000 : d;
        for (uint64_t r = 0; r < 20000; r += 7) {
            uint64_t b = redis_conn_backoff_ms(f, r * 0x9e3779b97f4a7c15ULL);
            assert_true(b >= d / 2 && b <= d);
        }
    }
}

static void test_redact(void **state)
{
    char out[64];
    const char *why = "WRONGPASS invalid username-password pair";
    (void)state;
    /* Nothing to hide: the text itself, untouched. */
    assert_ptr_equal(redis_conn_redact(why, "", 0, out, sizeof(out)), why);
    assert_ptr_equal(redis_conn_redact(why, "hunter2", 7, out, sizeof(out)), why);
    /* Every occurrence masked. */
    assert_string_equal(redis_conn_redact("a hunter2 b hunter2", "hunter2", 7, out, sizeof(out)),
                        "a *** b ***");
    assert_string_equal(redis_conn_redact("hunter2hunter2", "hunter2", 7, out, sizeof(out)),
                        "******");
    /* Truncated to fit, never showing part of the secret. */
    assert_string_equal(redis_conn_redact("xxxxxxxhunter2", "hunter2", 7, out, 10), "xxxxxx");
    assert_string_equal(redis_conn_redact("xxxxxhunter2", "hunter2", 7, out, 10), "xxxxx***");
    assert_string_equal(redis_conn_redact("xhunter2yyyy", "hunter2", 7, out, 8), "x***");
}

/* --- a fake Redis --------------------------------------------------------------------- */

#define MAX_CLIENTS 16

typedef struct fake fake_t;

typedef struct {
    uv_tcp_t tcp;
    fake_t *f;
    char buf[4096];
    size_t len;
    bool subscribed, open;
} client_t;

struct fake {
    uv_tcp_t server;
    int port;
    const char *auth_reply;    /* NULL: +OK */
    const char *ping_reply;    /* NULL: +PONG */
    const char *publish_reply; /* NULL: :1; "" none */
    bool silent;               /* answers nothing at all */
    int accepted, auths, pings, publishes, subscribes, pings_on_subscribed;
    client_t clients[MAX_CLIENTS];
};

static void on_client_closed(uv_handle_t *h)
{
    (void)h;
}

static void send_text(client_t *c, const char *s)
{
    if (!*s)
        return; /* no answer */
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)strlen(s));
    assert_true(uv_try_write((uv_stream_t *)&c->tcp, &b, 1) == (int)strlen(s));
}

/* One command (argv of bulk strings) from client c: the fake's answer. */
static void serve(client_t *c, int argc, char **argv, size_t *lens)
{
    fake_t *f = c->f;
    char out[256];
    if (strcasecmp(argv[0], "AUTH") == 0) {
        f->auths++;
        send_text(c, f->auth_reply ? f->auth_reply : "+OK\r\n");
    } else if (strcasecmp(argv[0], "PING") == 0) {
        f->pings++;
        f->pings_on_subscribed += c->subscribed;
        send_text(c, f->ping_reply ? f->ping_reply : "+PONG\r\n");
    } else if (strcasecmp(argv[0], "PUBLISH") == 0) {
        f->publishes++;
        send_text(c, f->publish_reply ? f->publish_reply : ":1\r\n");
    } else if (argc == 2 &&
               (strcasecmp(argv[0], "SUBSCRIBE") == 0 || strcasecmp(argv[0], "PSUBSCRIBE") == 0)) {
        f->subscribes++;
        c->subscribed = true;
        snprintf(out, sizeof(out), "*3\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n:1\r\n", strlen(argv[0]),
                 argv[0][0] == 'P' || argv[0][0] == 'p' ? "psubscribe" : "subscribe", lens[1],
                 argv[1]);
        send_text(c, out);
    }
}

/* Parses the complete commands at the head of c's buffer (*N then N $len bulk strings). */
static void parse(client_t *c)
{
    for (;;) {
        char *p = c->buf, *end = c->buf + c->len, *argv[8];
        size_t lens[8];
        int argc;
        if (c->len == 0 || *p != '*' || !memchr(p, '\n', c->len))
            return;
        argc = atoi(p + 1);
        assert_true(argc > 0 && argc <= 8);
        p = strchr(p, '\n') + 1;
        for (int i = 0; i < argc; i++) {
            char *nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
            if (!nl)
                return;
            lens[i] = (size_t)atoi(p + 1);
            if ((size_t)(end - (nl + 1)) < lens[i] + 2)
                return;
            argv[i] = nl + 1;
            argv[i][lens[i]] = '\0'; /* over the \r */
            p = nl + 1 + lens[i] + 2;
        }
        if (!c->f->silent)
            serve(c, argc, argv, lens);
        c->len -= (size_t)(p - c->buf);
        memmove(c->buf, p, c->len);
    }
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *b)
{
    client_t *c = h->data;
    (void)size;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void drop_client(client_t *c)
{
    if (c->open)
        uv_close((uv_handle_t *)&c->tcp, on_client_closed);
    c->open = false;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    client_t *c = s->data;
    (void)b;
    if (n < 0) {
        drop_client(c);
        return;
    }
    c->len += (size_t)n;
    parse(c);
}

static void on_accept(uv_stream_t *s, int status)
{
    fake_t *f = s->data;
    client_t *c = &f->clients[f->accepted++];
    assert_int_equal(status, 0);
    assert_true(f->accepted <= MAX_CLIENTS);
    memset(c, 0, sizeof(*c));
    c->f = f;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(s, (uv_stream_t *)&c->tcp), 0);
    c->open = true;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void fake_start(uv_loop_t *loop, fake_t *f)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_init(loop, &f->server);
    f->server.data = f;
    assert_int_equal(uv_tcp_bind(&f->server, (const struct sockaddr *)&sa, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&f->server, 16, on_accept), 0);
    uv_tcp_getsockname(&f->server, (struct sockaddr *)&ss, &len);
    f->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* Closes every connection the fake holds (Redis restarting, or CLIENT KILL). */
static void fake_drop_all(fake_t *f)
{
    for (int i = 0; i < f->accepted; i++)
        drop_client(&f->clients[i]);
}

static void fake_push(fake_t *f, const char *channel, const char *data)
{
    char out[256];
    snprintf(out, sizeof(out), "*3\r\n$7\r\nmessage\r\n$%zu\r\n%s\r\n$%zu\r\n%s\r\n",
             strlen(channel), channel, strlen(data), data);
    for (int i = 0; i < f->accepted; i++)
        if (f->clients[i].open && f->clients[i].subscribed)
            send_text(&f->clients[i], out);
}

static void fake_stop(fake_t *f)
{
    fake_drop_all(f);
    uv_close((uv_handle_t *)&f->server, NULL);
}

/* --- the owner ------------------------------------------------------------------------ */

typedef struct {
    int ready, down, replies[3], pushes[3];
    bool again, was_ready;
    redis_conn_err_t kind;
    char why[256], name[64], data[64];
} owner_t;

static void on_ready(void *owner, bool again)
{
    owner_t *o = owner;
    o->ready++;
    o->again = again;
}

static void on_down(void *owner, redis_conn_err_t kind, const char *why, bool was_ready)
{
    owner_t *o = owner;
    o->down++;
    o->kind = kind;
    o->was_ready = was_ready;
    snprintf(o->why, sizeof(o->why), "%s", why);
}

static void on_reply(void *owner, redis_conn_reply_t answer, const char *err, size_t err_len,
                     const redis_value_t *value)
{
    owner_t *o = owner;
    o->replies[answer]++;
    if (answer == REDIS_CONN_REPLY_ERROR)
        snprintf(o->why, sizeof(o->why), "%.*s", (int)err_len, err);
}

static void on_push(void *owner, const redis_push_t *p)
{
    owner_t *o = owner;
    o->pushes[p->kind]++;
    snprintf(o->name, sizeof(o->name), "%.*s", (int)p->name_len, p->name);
    snprintf(o->data, sizeof(o->data), "%.*s", (int)p->data_len, p->data ? p->data : "");
}

static const redis_conn_callbacks_t callbacks = {
    .ready = on_ready, .down = on_down, .reply = on_reply, .push = on_push};

/* --- the loop ------------------------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(ONCE) from blocking for long */
    fake_t fake;
    owner_t o;
    redis_conn_t *rc;
} world_t;

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *counter reaches n or ms pass; returns whether it did. */
static bool run_until(world_t *w, const int *counter, int n, uint64_t ms)
{
    uint64_t end = uv_now(&w->loop) + ms;
    while (*counter < n && uv_now(&w->loop) < end)
        uv_run(&w->loop, UV_RUN_ONCE);
    return *counter >= n;
}

static void run_for(world_t *w, uint64_t ms)
{
    int never = 0;
    (void)run_until(w, &never, 1, ms);
}

static void world_start(world_t *w, const char *url, int port, uint64_t timeout_ms)
{
    cluster_addr_t addr;
    char buf[256];
    const char *why;
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_start(&w->tick, on_tick, 10, 10);
    if (port < 0) {
        fake_start(&w->loop, &w->fake);
        port = w->fake.port;
    }
    snprintf(buf, sizeof(buf), url, port);
    assert_int_equal(cluster_parse_urls(buf, &addr, 1, &why), 1);
    w->rc = redis_conn_new(&w->loop, &addr, timeout_ms, 42, &callbacks, &w->o);
    assert_non_null(w->rc);
    assert_int_equal(redis_conn_state(w->rc), REDIS_CONN_IDLE);
    redis_conn_start(w->rc);
}

/* Closes everything; the loop must end with no handle left open. */
static void world_stop(world_t *w, bool fake)
{
    redis_conn_close(w->rc);
    assert_int_equal(redis_conn_state(w->rc), REDIS_CONN_CLOSED);
    redis_conn_close(w->rc); /* twice is fine */
    if (fake)
        fake_stop(&w->fake);
    uv_close((uv_handle_t *)&w->tick, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    redis_conn_free(w->rc);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    free(w);
}

static world_t *world(void)
{
    world_t *w = calloc(1, sizeof(*w));
    assert_non_null(w);
    return w;
}

/* --- states --------------------------------------------------------------------------- */

static void test_ready_commands_pushes_reconnect(void **state)
{
    world_t *w = world();
    (void)state;
    world_start(w, "redis://:pw@127.0.0.1:%d", -1, 2000);
    assert_int_equal(redis_conn_state(w->rc), REDIS_CONN_CONNECTING);
    assert_int_equal(redis_conn_command_argv(w->rc, 1, (const char *[]){"PING"}, (size_t[]){4}),
                     -1); /* not READY */
    assert_true(run_until(w, &w->o.ready, 1, 2000));
    assert_false(w->o.again);
    assert_true(redis_conn_ready(w->rc));
    assert_int_equal(strncmp(redis_conn_label(w->rc), "127.0.0.1:", 10), 0);
    /* AUTH first on both contexts, one PING on the command context only. */
    assert_int_equal(w->fake.accepted, 2);
    assert_int_equal(w->fake.auths, 2);
    assert_int_equal(w->fake.pings, 1);

    const char *argv[3] = {"PUBLISH", "ch", "hello"};
    size_t lens[3] = {7, 2, 5};
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), 0);
    assert_true(run_until(w, &w->o.replies[REDIS_CONN_REPLY_OK], 1, 1000));
    assert_int_equal(redis_conn_subscribe(w->rc, false, true, "ch", 2), 0);
    assert_true(run_until(w, &w->o.pushes[REDIS_PUSH_SUBSCRIBED], 1, 1000));
    assert_string_equal(w->o.name, "ch");
    fake_push(&w->fake, "ch", "payload");
    assert_true(run_until(w, &w->o.pushes[REDIS_PUSH_MESSAGE], 1, 1000));
    assert_string_equal(w->o.name, "ch");
    assert_string_equal(w->o.data, "payload");
    assert_int_equal(w->fake.pings_on_subscribed, 0);

    /* Redis drops both connections: lost, then made again after the backoff. */
    fake_drop_all(&w->fake);
    assert_true(run_until(w, &w->o.down, 1, 1000));
    assert_true(w->o.was_ready);
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_NET);
    assert_false(redis_conn_ready(w->rc));
    assert_int_equal(redis_conn_subscribe(w->rc, false, true, "ch", 2), -1);
    assert_true(run_until(w, &w->o.ready, 2, 2000));
    assert_true(w->o.again);
    assert_int_equal(w->o.down, 1);
    assert_int_equal(w->fake.accepted, 4);
    assert_int_equal(w->fake.pings, 2);
    world_stop(w, true);
}

static void test_refused_then_backoff(void **state)
{
    world_t *w = world();
    uv_tcp_t probe;
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss), port;
    (void)state;
    /* A port nobody listens on: bind one, read it, close it. */
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_tcp_init(&w->loop, &probe);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&probe, (const struct sockaddr *)&sa, 0);
    uv_tcp_getsockname(&probe, (struct sockaddr *)&ss, &len);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&probe, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);

    world_start(w, "redis://127.0.0.1:%d", port, 2000);
    assert_true(run_until(w, &w->o.down, 1, 1000));
    assert_false(w->o.was_ready);
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_NET);
    /* DOWN, freed from the timer at 0 ms (possibly in the same loop turn: ONCE runs due
     * timers after the poll), then the backoff (50..100 ms the first time), then again. */
    assert_true(redis_conn_state(w->rc) == REDIS_CONN_DOWN ||
                redis_conn_state(w->rc) == REDIS_CONN_BACKOFF);
    run_for(w, 20);
    assert_int_equal(redis_conn_state(w->rc), REDIS_CONN_BACKOFF);
    assert_true(run_until(w, &w->o.down, 2, 1000));
    redis_conn_fail(w->rc, "ignored: already failing");
    assert_int_equal(w->o.down, 2);
    assert_int_equal(w->o.ready, 0);
    world_stop(w, false);
}

static void test_silent_server_times_out(void **state)
{
    world_t *w = world();
    (void)state;
    world_start(w, "redis://127.0.0.1:%d", -1, 200);
    w->fake.silent = true;
    run_for(w, 120);
    assert_int_equal(w->o.down, 0); /* connected, PING unanswered: still trying */
    assert_int_equal(redis_conn_state(w->rc), REDIS_CONN_CONNECTING);
    assert_true(run_until(w, &w->o.down, 1, 1000));
    assert_string_equal(w->o.why, "connect timed out");
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_NET);
    world_stop(w, true);
}

static void test_auth_refused(void **state)
{
    world_t *w = world();
    (void)state;
    world_start(w, "redis://gale:s3cret@127.0.0.1:%d", -1, 2000);
    w->fake.auth_reply = "-WRONGPASS s3cret is not the password\r\n";
    assert_true(run_until(w, &w->o.down, 1, 1000));
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_AUTH);
    assert_null(strstr(w->o.why, "s3cret")); /* masked */
    assert_non_null(strstr(w->o.why, "WRONGPASS *** is not"));
    assert_int_equal(w->fake.pings, 0); /* AUTH before anything else */
    /* Retried, and ready once Redis takes it. */
    w->fake.auth_reply = NULL;
    assert_true(run_until(w, &w->o.ready, 1, 2000));
    assert_false(w->o.again);
    world_stop(w, true);
}

static void test_no_password_configured_is_not_a_failure(void **state)
{
    world_t *w = world();
    (void)state;
    world_start(w, "redis://:pw@127.0.0.1:%d", -1, 2000);
    w->fake.auth_reply = "-ERR AUTH <password> called without any password configured for "
                         "the default user. Are you sure your configuration is correct?\r\n";
    assert_true(run_until(w, &w->o.ready, 1, 2000));
    assert_int_equal(w->o.down, 0);
    world_stop(w, true);
}

static void test_noauth_and_loading(void **state)
{
    world_t *w = world();
    (void)state;
    world_start(w, "redis://127.0.0.1:%d", -1, 2000);
    w->fake.ping_reply = "-NOAUTH Authentication required.\r\n";
    assert_true(run_until(w, &w->o.down, 1, 1000));
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_AUTH);
    assert_int_equal(w->fake.auths, 0);
    w->fake.ping_reply = "-LOADING Redis is loading the dataset in memory\r\n";
    assert_true(run_until(w, &w->o.down, 2, 1000));
    assert_int_equal(w->o.kind, REDIS_CONN_ERR_NET);
    world_stop(w, true);
}

static void test_owner_fails_it(void **state)
{
    world_t *w = world();
    const char *argv[3] = {"PUBLISH", "ch", "x"};
    size_t lens[3] = {7, 2, 1};
    (void)state;
    world_start(w, "redis://127.0.0.1:%d", -1, 2000);
    assert_true(run_until(w, &w->o.ready, 1, 2000));
    w->fake.publish_reply = ""; /* never answered */
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), 0);
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), 0);
    run_for(w, 30);
    redis_conn_fail(w->rc, "PUBLISH timed out");
    assert_int_equal(w->o.down, 1);
    assert_true(w->o.was_ready);
    assert_string_equal(w->o.why, "PUBLISH timed out");
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), -1);
    /* Not freed inside the call: the answers come DROPPED from the next turn. */
    assert_int_equal(w->o.replies[REDIS_CONN_REPLY_DROPPED], 0);
    assert_true(run_until(w, &w->o.replies[REDIS_CONN_REPLY_DROPPED], 2, 1000));
    w->fake.publish_reply = "-ERR nope\r\n";
    assert_true(run_until(w, &w->o.ready, 2, 2000));
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), 0);
    assert_true(run_until(w, &w->o.replies[REDIS_CONN_REPLY_ERROR], 1, 1000));
    assert_string_equal(w->o.why, "ERR nope");
    world_stop(w, true);
}

static void test_close_while_ready_and_idle(void **state)
{
    world_t *w = world();
    const char *argv[3] = {"PUBLISH", "ch", "x"};
    size_t lens[3] = {7, 2, 1};
    cluster_addr_t addr = {.host = "127.0.0.1", .port = 1, .label = "127.0.0.1:1/0"};
    (void)state;
    world_start(w, "redis://127.0.0.1:%d", -1, 2000);
    assert_true(run_until(w, &w->o.ready, 1, 2000));
    w->fake.publish_reply = "";
    assert_int_equal(redis_conn_command_argv(w->rc, 3, argv, lens), 0);
    run_for(w, 20);
    redis_conn_close(w->rc); /* down, and the pending answer DROPPED at once */
    assert_int_equal(w->o.down, 1);
    assert_int_equal(w->o.replies[REDIS_CONN_REPLY_DROPPED], 1);
    world_stop(w, true);
    /* Never started: nothing to close, free is enough. */
    redis_conn_free(redis_conn_new(NULL, &addr, 100, 1, &callbacks, NULL));
    redis_conn_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_redact),
        cmocka_unit_test(test_ready_commands_pushes_reconnect),
        cmocka_unit_test(test_refused_then_backoff),
        cmocka_unit_test(test_silent_server_times_out),
        cmocka_unit_test(test_auth_refused),
        cmocka_unit_test(test_no_password_configured_is_not_a_failure),
        cmocka_unit_test(test_noauth_and_loading),
        cmocka_unit_test(test_owner_fails_it),
        cmocka_unit_test(test_close_while_ready_and_idle),
    };
    log_set_level(LOG_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
