/*
 * broker: the lifecycle of a gale-broker process (broker.h): start, the
 * per-turn flush and the 1 s sweep, signals, a graceful stop, teardown.
 * The transport (server.c, lws) and the cluster (cluster.c) are started and
 * stopped from here; nothing below calls back into this file.
 */
#include "broker.h"

#include "api.h"
#include "auth.h"
#include "cluster.h"
#include "core.h"
#include "dedup.h"
#include "history.h"
#include "log.h"
#include "loops.h"
#include "mqtt.h"
#include "nats.h"
#include "presence.h"
#include "server.h"
#include "session.h"

#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* Period of the sweep: keepalive pings, close deadlines, expired tokens. */
#define SWEEP_MS 1000
/* Milliseconds a graceful stop waits for connections to close before tearing down. */
#define STOP_GRACE_MS 3000
/* ... then at most this long for Redis to answer the commands in flight. */
#define STOP_DRAIN_MS 1000

static void schedule_finish(broker_t *b);

static void on_flush(uv_check_t *h)
{
    broker_t *b = h->data;
    if (b->loops) /* the other loops are woken before this turn's acks go out */
        loops_turn(b);
    session_flush_turn(b);
    if (b->stopping && b->nlive == 0 && !b->finishing) {
        b->finishing = true; /* every close frame is out: tear down */
        schedule_finish(b);
    }
}

/* Frames queued outside lws's I/O callbacks must not wait for the next poll: flush now. */
static void on_sweep(uv_timer_t *t)
{
    broker_t *b = t->data;
    session_sweep(b);
    server_sweep(b);
    session_flush_all(b);
    if (b->auth)
        auth_cache_sweep(b->auth); /* grants no connection holds any more */
    history_sweep(b->history, broker_uptime_ms(b));
    if (!b->loops) {
        dedup_sweep(b->dedup, broker_uptime_ms(b));
    } else if (b->loop_idx == 0) { /* the loops' shared window, swept by the first */
        loops_lock(b->loops);
        dedup_sweep(b->dedup, loops_now_ms());
        loops_unlock(b->loops);
    }
    presence_tick(b); /* its count-only messages go out with the next flush */
    b->queued_bytes = session_queued_bytes(b);
}

static void on_handle_closed(uv_handle_t *h)
{
    broker_t *b = h->data;
    b->handles_open--;
}

/* Closes our own handles and starts lws's teardown (the first lws_context_destroy). */
static void finish(broker_t *b)
{
    if (b->destroyed)
        return;
    b->destroyed = true;
    uv_handle_t *hs[] = {(uv_handle_t *)&b->flush_check, (uv_handle_t *)&b->sweep_timer,
                         (uv_handle_t *)&b->stop_timer,  (uv_handle_t *)&b->sigterm,
                         (uv_handle_t *)&b->sigint,      (uv_handle_t *)&b->sighup};
    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
        if (hs[i]->data && !uv_is_closing(hs[i]))
            uv_close(hs[i], on_handle_closed);
    cluster_close(b->cluster);
    server_close(b);
    if (b->loops)
        loops_finished(b);
}

static void on_stop_timer(uv_timer_t *t)
{
    broker_t *b = t->data;
    if (b->nlive && !b->drain_ms)
        log_warn("%u connections still open after %d ms: dropping them", b->nlive, STOP_GRACE_MS);
    /* What the closed connections sent to Redis (their presence leaves) gets its answer. */
    if (cluster_busy(b->cluster)) {
        uint64_t now = uv_now(b->loop);
        if (!b->drain_ms)
            b->drain_ms = now;
        if (now - b->drain_ms < STOP_DRAIN_MS) {
            uv_timer_start(&b->stop_timer, on_stop_timer, 10, 0);
            return;
        }
        log_warn("Redis did not answer within %d ms: stopping without its answers", STOP_DRAIN_MS);
    }
    finish(b);
}

/* Finishes from a fresh loop turn, never from inside a transport's callback. */
static void schedule_finish(broker_t *b)
{
    uv_timer_start(&b->stop_timer, on_stop_timer, 0, 0);
}

void broker_stop(broker_t *b)
{
    if (b->stopping)
        return;
    b->stopping = true;
    if (b->loops)
        log_info("loop %u stopping: closing %u connections with 1001", b->loop_idx, b->nsessions);
    else
        log_info("stopping: closing %u connections with 1001", b->nsessions);
    for (uint32_t i = 0; i < b->nsessions; i++) {
        session_begin_close(b, b->sessions[i], SESSION_CLOSE_GOING_AWAY, false);
        core_absent(b, &b->sessions[i]->conn); /* presence leaves now, not after the grace */
    }
    session_flush_all(b);
    /* on_flush finishes once every connection is gone, or this timer does. */
    uv_timer_start(&b->stop_timer, on_stop_timer, STOP_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    broker_t *b = h->data;
    log_info("received %s", strsignal(signum));
    if (b->loops)
        loops_stop(b->loops); /* every loop, this one too */
    else
        broker_stop(b);
}

/* A JWKS key that is not used (another kty, curve, use...): said once per load. */
static void on_key_skipped(void *arg, const char *msg)
{
    (void)arg;
    log_warn("%s", msg);
}

/* Loops other than the first: what loop 0 already logged. */
static void note_quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* SIGHUP: the token keys read again from their files (by every loop). */
static void on_reload(uv_signal_t *h, int signum)
{
    broker_t *b = h->data;
    (void)signum;
    broker_reload(b);
    if (b->loops)
        loops_reload(b->loops);
}

void broker_reload(broker_t *b)
{
    char err[1024], keys[1024];
    if (b->loop_idx) { /* loop 0 said it all */
        if (b->auth && !auth_reload(b->auth, b->cfg.jwt_secret_file, b->cfg.jwt_keys, note_quiet, b,
                                    err, sizeof(err)))
            log_error("loop %u: token keys not reloaded, the previous ones stay: %s", b->loop_idx,
                      err);
        return;
    }
    if (!b->auth) {
        log_info("received SIGHUP: no authentication configured, nothing to reload");
        return;
    }
    if (!b->cfg.jwt_secret_file[0] && !b->cfg.jwt_keys[0]) {
        log_info("received SIGHUP: no --jwt-secret-file nor --jwt-keys to read again");
        return;
    }
    if (!auth_reload(b->auth, b->cfg.jwt_secret_file, b->cfg.jwt_keys, on_key_skipped, b, err,
                     sizeof(err))) {
        log_error("received SIGHUP: token keys not reloaded, the previous ones stay: %s", err);
        return;
    }
    auth_keys_describe(auth_get_keys(b->auth), keys, sizeof(keys));
    log_info("received SIGHUP: token keys reloaded: %s (new handshakes use them, open "
             "connections keep their grants)",
             keys);
}

/* The verifier of --jwt-secret (cfg's copy) and --jwt-keys; false (logged) on a bad JWKS. */
static bool start_auth(broker_t *b, const gale_config_t *cfg)
{
    char err[1024];
    if (!cfg->jwt_secret_len && !cfg->jwt_keys[0])
        return true; /* open */
    auth_keys_t *k = auth_keys_load((const uint8_t *)cfg->jwt_secret, cfg->jwt_secret_len, NULL,
                                    cfg->jwt_keys, on_key_skipped, b, err, sizeof(err));
    if (!k) {
        log_error("--jwt-keys: %s", err);
        return false;
    }
    if (!(b->auth = auth_new_keys(k))) {
        log_error("out of memory");
        return false;
    }
    return true;
}

/* The web root: --web-root, else an installed layout beside the binary, the source tree's
 * web/, or the install prefix's. */
static void resolve_web_root(const gale_config_t *cfg, char *out, size_t cap)
{
    struct stat st;
    char exe[PATH_MAX], cand[PATH_MAX + 32];
    if (cfg->web_root[0]) {
        snprintf(out, cap, "%s", cfg->web_root);
        return;
    }
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        snprintf(cand, sizeof(cand), "%s/../share/gale/www", exe);
        if (stat(cand, &st) == 0 && S_ISDIR(st.st_mode) && realpath(cand, exe)) {
            snprintf(out, cap, "%s", exe);
            return;
        }
    }
    if (stat(GALE_SOURCE_WEB_ROOT, &st) == 0 && S_ISDIR(st.st_mode))
        snprintf(out, cap, "%s", GALE_SOURCE_WEB_ROOT);
    else
        snprintf(out, cap, "%s", GALE_INSTALL_WEB_ROOT);
}

/* A random non-zero 64-bit number naming this process on the cluster bus. */
static uint64_t new_instance(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
        uv_timeval64_t tv;
        uv_gettimeofday(&tv);
        v = ((uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec) ^ ((uint64_t)getpid() << 40);
        v *= 0x9e3779b97f4a7c15ULL;
    }
    return v ? v : 1;
}

static void default_node_id(char *out, size_t cap)
{
    char host[64] = "gale";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    for (char *p = host; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.'))
            *p = '-';
    snprintf(out, cap, "%.40s-%ld", host, (long)getpid());
}

static void warn_file_limit(const broker_t *b)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    uint64_t room = rl.rlim_cur > 64 ? (uint64_t)rl.rlim_cur - 64 : 0;
    if (!b->cfg.max_connections || b->cfg.max_connections > room)
        log_info("open-file limit %llu: at most about %" PRIu64 " connections",
                 (unsigned long long)rl.rlim_cur, room);
}

broker_t *broker_start(const gale_config_t *cfg, uv_loop_t *loop, loops_t *loops, uint32_t loop_idx)
{
    broker_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = *cfg;
    b->loop = loop;
    b->loops = loops;
    b->loop_idx = loop_idx;
    b->nloops = loops_count(loops);
    if (loops)
        b->mqtt = loops_mqtt(loops); /* one MQTT state for every loop */
    b->start_ms = uv_now(loop);
    b->exit_code = 1;
    if (cfg->node_id[0])
        snprintf(b->node_id, sizeof(b->node_id), "%s", cfg->node_id);
    else
        default_node_id(b->node_id, sizeof(b->node_id));
    b->scratch_cap = BROKER_SCRATCH_SIZE;
    b->scratch = malloc(b->scratch_cap);
    b->topics = topics_new();
    b->instance = new_instance();
    resolve_web_root(cfg, b->web_root, sizeof(b->web_root));
    b->tls = cfg->tls_cert[0] != '\0';
    bool auth_ok = start_auth(b, cfg);
    memset(b->cfg.jwt_secret, 0, sizeof(b->cfg.jwt_secret)); /* auth_t holds the copy */
    if (!auth_ok) {
        b->stopping = true;
        finish(b);
        return b;
    }
    bool local = !cfg->redis_urls[0]; /* in a cluster, history and mids live in Redis */
    if (local && cfg->nhistory)
        b->history = history_new(cfg->history, cfg->nhistory, cfg->history_memory, b->instance);
    if (local)
        b->dedup =
            loops ? loops_dedup(loops) : dedup_new(cfg->dedup_window_s * 1000, cfg->dedup_max);
    if (cfg->npresence)
        b->presence = presence_new(&b->cfg, !local);
    if (!b->scratch || !b->topics || (local && cfg->nhistory && !b->history) ||
        (local && !b->dedup) || (cfg->npresence && !b->presence) || !server_start(b) ||
        (cfg->redis_urls[0] && !(b->cluster = cluster_new(b)))) {
        b->stopping = true;
        finish(b);
        return b;
    }
    if (b->cluster)
        b->bus = (bus_t){.ops = &cluster_bus, .ctx = b->cluster};

    uv_check_init(loop, &b->flush_check);
    uv_timer_init(loop, &b->sweep_timer);
    uv_timer_init(loop, &b->stop_timer);
    b->flush_check.data = b->sweep_timer.data = b->stop_timer.data = b;
    b->handles_open = 3;
    uv_check_start(&b->flush_check, on_flush);
    uv_timer_start(&b->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    if (loop_idx == 0) { /* signals: the first loop, which tells the others */
        uv_signal_init(loop, &b->sigterm);
        uv_signal_init(loop, &b->sigint);
        uv_signal_init(loop, &b->sighup);
        b->sigterm.data = b->sigint.data = b->sighup.data = b;
        b->handles_open += 3;
        uv_signal_start(&b->sigterm, on_signal, SIGTERM);
        uv_signal_start(&b->sigint, on_signal, SIGINT);
        uv_signal_start(&b->sighup, on_reload, SIGHUP);
    }

    b->exit_code = 0;
    if (loop_idx) /* loop 0 said it all */
        return b;
    log_info("gale-broker %s node %s listening on %s://%s:%d (WebSocket %s://%s:%d%s, web "
             "root %s)",
             GALE_VERSION, b->node_id, b->tls ? "https" : "http", cfg->listen_host, b->port,
             b->tls ? "wss" : "ws", cfg->listen_host, b->port, SERVER_WS_PATH, b->web_root);
    log_info("limits: max-message %" PRIu64 " B, max-subscriptions %" PRIu64
             ", max-connections %" PRIu64 ", queue-limit %" PRIu64 " B, keepalive %" PRIu64
             " s, pub-rate %" PRIu64 "/s%s",
             cfg->max_message, cfg->max_subscriptions, cfg->max_connections, cfg->queue_limit,
             cfg->keepalive_s, cfg->pub_rate, cfg->pub_rate ? "" : " (off)");
    if (b->auth) {
        char algs[64], keys[1024];
        auth_keys_algs(auth_get_keys(b->auth), algs, sizeof(algs));
        auth_keys_describe(auth_get_keys(b->auth), keys, sizeof(keys));
        log_info("authentication: %s tokens required (query token= or Authorization: "
                 "Bearer)%s",
                 algs,
                 cfg->jwt_secret_len && cfg->jwt_secret_len < 32
                     ? "; warning: the secret is shorter than 32 bytes"
                     : "");
        log_info("token keys: %s%s", keys,
                 cfg->jwt_secret_file[0] || cfg->jwt_keys[0] ? " (read again on SIGHUP)" : "");
    } else
        log_info("no authentication configured: the broker is open to every client");
    if (cfg->allowed_origins[0])
        log_info("allowed origins: %s (requests without Origin are let in)", cfg->allowed_origins);
    log_info("HTTP publish API %s%s", cfg->api_key[0] ? "enabled at POST " API_PUBLISH : "disabled",
             cfg->api_key[0] ? "" : " (no --api-key)");
    if (!b->tls && (b->auth || cfg->api_key[0]) && strcmp(cfg->listen_host, "127.0.0.1") != 0 &&
        strcmp(cfg->listen_host, "localhost") != 0 && strcmp(cfg->listen_host, "::1") != 0)
        log_warn("tokens and API keys travel in clear text without --tls-cert (fine behind a "
                 "TLS-terminating proxy)");
    for (uint32_t i = 0; i < cfg->nhistory; i++) {
        const gale_history_rule_t *r = &cfg->history[i];
        if (r->ttl_ms)
            log_info("history: %s keeps %" PRIu64 " messages per topic for %" PRIu64 " s",
                     r->pattern, r->size, r->ttl_ms / 1000);
        else
            log_info("history: %s keeps %" PRIu64 " messages per topic", r->pattern, r->size);
    }
    if (cfg->nhistory)
        log_info("history: at most %" PRIu64 " B in all, recovery replays up to %" PRIu64
                 " messages, hist answers up to %" PRIu64,
                 cfg->history_memory, cfg->recovery_max, cfg->hist_max_limit);
    warn_file_limit(b);
    return b;
}

int broker_free(broker_t *b)
{
    if (!b)
        return 1;
    server_free(b);            /* after uv_run() returned: lws's second teardown step */
    cluster_close(b->cluster); /* no-op unless broker_start failed half-way */
    cluster_free(b->cluster);
    topics_free(b->topics);
    history_free(b->history);
    if (!b->loops)
        dedup_free(b->dedup); /* else the loops' (loops.c) */
    presence_free(b->presence);
    mqtt_free(b);
    nats_free(b);
    auth_free(b->auth);
    free(b->scratch);
    free(b->sessions);
    free(b->dirty);
    int code = b->exit_code;
    free(b);
    return code;
}
