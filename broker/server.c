/*
 * server: libwebsockets on the application's libuv loop. One vhost on
 * --listen serving the WebSocket endpoint /ws (subprotocols gale.v1.json,
 * the default, and gale.v1.msgpack), /healthz, /metrics and the web root.
 * The lws callback only dispatches; the work lives in session.c, router.c
 * and http.c.
 */
#include "api.h"
#include "auth.h"
#include "broker.h"
#include "cluster.h"
#include "http.h"
#include "log.h"
#include "lws_mem.h"
#include "session.h"

#include <libwebsockets.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Coalescing buffer: frames queued for one connection are sent in writes of up to this size. */
#define SCRATCH_SIZE (64 * 1024)
/* Period of session_sweep: keepalive pings and close deadlines. */
#define SWEEP_MS 1000
/* Seconds a graceful stop waits for connections to close before tearing down. */
#define STOP_GRACE_MS 3000
#define WS_PATH "/ws"

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len);

/* Subprotocol names by encoding; the first also serves HTTP and clients that offer none. */
static const char *const subprotocols[GALE_ENC_COUNT] = {"gale.v1.json", "gale.v1.msgpack"};

/* A zeroed policy: no per-connection lws ping/hang-up timer (session_sweep instead). */
static const lws_retry_bo_t no_idle_policy;

uint64_t broker_uptime_ms(const broker_t *b)
{
    return uv_now(b->loop) - b->start_ms;
}

void broker_gauges(const broker_t *b, metrics_gauges_t *g)
{
    memset(g, 0, sizeof(*g));
    g->connections = b->nsessions;
    g->subscriptions = topics_subscriptions(b->topics);
    g->topics = topics_count(b->topics);
    for (uint32_t i = 0; i < b->nsessions; i++)
        g->queued_bytes += b->sessions[i]->q.bytes;
    g->handshakes = b->nhandshakes;
    g->uptime_s = (double)broker_uptime_ms(b) / 1000.0;
    cluster_state(b->cluster, &g->redis_shards, &g->redis_up);
}

/* True if the comma-separated Sec-WebSocket-Protocol list names one of ours. */
static bool offers_known_subprotocol(const char *list)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        for (int i = 0; i < GALE_ENC_COUNT; i++)
            if ((size_t)(e - p) == strlen(subprotocols[i]) &&
                strncmp(p, subprotocols[i], (size_t)(e - p)) == 0)
                return true;
        p = e;
    }
    return false;
}

/* True if origin[0..len) is one of the comma-separated origins of list (exact match). */
static bool origin_listed(const char *list, const char *origin, size_t len)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if ((size_t)(t - p) == len && len && memcmp(p, origin, len) == 0)
            return true;
        p = e;
    }
    return false;
}

/*
 * The token of an upgrade request, into buf: the query parameter token=, else
 * Authorization: Bearer. Returns its length, 0 when there is none.
 */
static size_t request_token(struct lws *wsi, char *buf, size_t cap)
{
    const char *q = lws_get_urlarg_by_name(wsi, "token=", buf, (int)cap);
    if (q) {
        size_t n = strlen(q);
        memmove(buf, q, n + 1);
        return n;
    }
    int n = lws_hdr_copy(wsi, buf, (int)cap, WSI_TOKEN_HTTP_AUTHORIZATION);
    if (n <= 7 || strncasecmp(buf, "Bearer ", 7) != 0)
        return 0;
    const char *t = buf + 7;
    while (*t == ' ')
        t++;
    size_t len = strlen(t);
    memmove(buf, t, len + 1);
    return len;
}

/* The grant of the upgrade request's token, or NULL (with *why). */
static auth_grant_t *request_grant(broker_t *b, struct lws *wsi, const char **why)
{
    char token[AUTH_TOKEN_MAX + 16];
    size_t n = request_token(wsi, token, sizeof(token));
    if (n == 0) {
        *why = "a token is required (query token= or Authorization: Bearer)";
        return NULL;
    }
    return auth_lookup(b->auth, token, n, (int64_t)time(NULL), why);
}

static int confirm_upgrade(broker_t *b, struct lws *wsi, const char *upgrade)
{
    char uri[sizeof(WS_PATH) + 1], offered[256];
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST, "only WebSocket upgrades");
    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, WS_PATH) != 0)
        return http_refuse(b, wsi, HTTP_STATUS_NOT_FOUND, "the WebSocket endpoint is " WS_PATH);
    if (lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL) > 0) {
        if (lws_hdr_copy(wsi, offered, sizeof(offered), WSI_TOKEN_PROTOCOL) <= 0 ||
            !offers_known_subprotocol(offered))
            return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST,
                               "unknown subprotocol: offer gale.v1.json or gale.v1.msgpack");
    }
    if (b->cfg.allowed_origins[0] && lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0) {
        char origin[512];
        int n = lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN);
        if (n <= 0 || !origin_listed(b->cfg.allowed_origins, origin, (size_t)n)) {
            log_info("upgrade refused with 403: origin not in --allowed-origins");
            return http_refuse(b, wsi, HTTP_STATUS_FORBIDDEN, "origin not allowed");
        }
    }
    if (b->auth) {
        const char *why = "";
        if (!request_grant(b, wsi, &why)) {
            log_info("upgrade refused with 401: %s", why);
            return http_refuse(b, wsi, HTTP_STATUS_UNAUTHORIZED, why);
        }
    }
    if (b->stopping)
        return http_refuse(b, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "the broker is stopping");
    if (b->cfg.max_connections && b->nsessions >= b->cfg.max_connections) {
        log_warn("connection limit %" PRIu64 " reached: upgrade refused with 503",
                 b->cfg.max_connections);
        return http_refuse(b, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "too many connections");
    }
    return 0;
}

static void schedule_finish(broker_t *b);

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    broker_t *b = ctx ? lws_context_user(ctx) : NULL;
    session_t *s = user;
    if (!b)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED:
        return http_conn_accept(b, wsi);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        http_conn_head_done(b, wsi);
        return confirm_upgrade(b, wsi, in);
    case LWS_CALLBACK_FILTER_HTTP_CONNECTION: {
        char uri[64];
        return api_owns(wsi, uri, sizeof(uri)) ? api_filter(b, wsi) : http_filter(b, wsi);
    }
    case LWS_CALLBACK_ESTABLISHED: {
        http_conn_upgraded(b, wsi);
        /* lws keeps its own copy of the protocols array: compare names. */
        const struct lws_protocols *p = lws_get_protocol(wsi);
        gale_enc_t enc = p && strcmp(p->name, subprotocols[GALE_ENC_MSGPACK]) == 0
                             ? GALE_ENC_MSGPACK
                             : GALE_ENC_JSON;
        auth_grant_t *grant = NULL;
        if (b->auth) { /* verified at CONFIRM_UPGRADE: a cache hit, re-checked against now */
            const char *why = "";
            if (!(grant = request_grant(b, wsi, &why))) {
                log_info("connection refused: %s", why);
                return -1;
            }
        }
        if (!session_open(b, s, wsi, enc, grant)) {
            log_error("out of memory accepting a connection");
            return -1;
        }
        return 0;
    }
    case LWS_CALLBACK_RECEIVE:
        return s->wsi ? session_receive(b, s, in, len) : -1;
    case LWS_CALLBACK_RECEIVE_PONG:
        if (s->wsi)
            session_touch(b, s);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (s->wsi && s->killed)
            return -1; /* session_kill */
        if (s->wsi)
            session_flush(b, s);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        return s->wsi ? session_peer_close(b, s, in, len) : 0;
    case LWS_CALLBACK_CLOSED: /* before lws sends the close frame */
        session_close(b, s);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY: /* after it, whatever the protocol: user may be NULL */
        api_closed(wsi);
        http_conn_closed(b, wsi);
        if (s && s->live) {
            s->live = 0;
            if (--b->nlive == 0 && b->stopping)
                schedule_finish(b);
        }
        return 0;
    case LWS_CALLBACK_HTTP: {
        char uri[64];
        if (api_owns(wsi, uri, sizeof(uri))) /* any method: api_http answers 405 */
            return api_http(b, wsi, uri);
        return http_serve(b, wsi);
    }
    case LWS_CALLBACK_HTTP_BODY:
        return api_body(b, wsi, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return api_body_done(b, wsi);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return api_writeable(b, wsi);
    case LWS_CALLBACK_CLOSED_HTTP:
        api_closed(wsi);
        http_conn_closed(b, wsi);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static void on_flush(uv_check_t *h)
{
    session_flush_turn(h->data);
}

/* Frames queued outside lws's I/O callbacks must not wait for the next poll: flush now. */
static void on_sweep(uv_timer_t *t)
{
    broker_t *b = t->data;
    session_sweep(b);
    lws_mem_trim();
    session_flush_all(b);
    if (b->auth)
        auth_cache_sweep(b->auth); /* grants no connection holds any more */
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
                         (uv_handle_t *)&b->stop_timer, (uv_handle_t *)&b->sigterm,
                         (uv_handle_t *)&b->sigint};
    for (size_t i = 0; i < sizeof(hs) / sizeof(hs[0]); i++)
        if (hs[i]->data && !uv_is_closing(hs[i]))
            uv_close(hs[i], on_handle_closed);
    cluster_close(b->cluster);
    if (b->ctx)
        lws_context_destroy(b->ctx);
}

static void on_stop_timer(uv_timer_t *t)
{
    broker_t *b = t->data;
    if (b->nlive)
        log_warn("%u connections still open after %d ms: dropping them", b->nlive, STOP_GRACE_MS);
    finish(b);
}

/* Finishes from a fresh loop turn, never from inside an lws callback. */
static void schedule_finish(broker_t *b)
{
    uv_timer_start(&b->stop_timer, on_stop_timer, 0, 0);
}

void broker_stop(broker_t *b)
{
    if (b->stopping)
        return;
    b->stopping = true;
    log_info("stopping: closing %u connections with 1001", b->nsessions);
    for (uint32_t i = 0; i < b->nsessions; i++)
        session_begin_close(b, b->sessions[i], LWS_CLOSE_STATUS_GOINGAWAY, false);
    session_flush_all(b);
    if (b->nlive == 0)
        schedule_finish(b);
    else
        uv_timer_start(&b->stop_timer, on_stop_timer, STOP_GRACE_MS, 0);
}

static void on_signal(uv_signal_t *h, int signum)
{
    log_info("received %s", strsignal(signum));
    broker_stop(h->data);
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

static bool create_lws(broker_t *b)
{
    const char *web_root = b->web_root;
    struct lws_http_mount *m_metrics = &b->mounts[0], *m_healthz = &b->mounts[1],
                          *m_api = &b->mounts[2], *m_root = &b->mounts[3];
    struct lws_context_creation_info info;
    void *loops[1] = {b->loop};

    /* Request heads in slots of their own (lws's default header buffer is 4 KiB). */
    if (!lws_mem_install(b->cfg.max_handshakes, 4096))
        log_warn("could not reserve room for %" PRIu64 " request heads: lws allocates them "
                 "from the heap",
                 b->cfg.max_handshakes);
    memset(&info, 0, sizeof(info));
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    if (b->tls)
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.foreign_loops = loops;
    info.user = b;
    info.port = CONTEXT_PORT_NO_LISTEN;
    /*
     * Request heads read at once, each holding a header table and buffer (lws_mem's slots)
     * while it lasts; more connections wait for one. Too few let a handful of slow clients
     * (holding theirs until --handshake-timeout) lock out everyone else.
     */
    info.max_http_header_pool = (unsigned short)b->cfg.max_handshakes;
    /* How long a connection may wait for a header buffer, or for its TLS handshake (lws's
     * "network round trip" timeout, 5 s by default). */
    info.timeout_secs = (unsigned int)b->cfg.handshake_timeout_s;
    b->ctx = lws_create_context(&info);
    if (!b->ctx) {
        log_error("could not create the libwebsockets context (is libwebsockets-evlib-uv "
                  "installed?)");
        return false;
    }

    for (int i = 0; i < GALE_ENC_COUNT; i++) {
        struct lws_protocols *p = &b->protocols[i];
        p->name = subprotocols[i];
        p->callback = callback;
        p->per_session_data_size = sizeof(session_t);
        p->rx_buffer_size = b->cfg.rx_buffer;
        p->tx_packet_size = SCRATCH_SIZE; /* one coalesced write is sent whole */
    }
    /* b->protocols[GALE_ENC_COUNT] stays zeroed: the terminator. */

    m_root->mountpoint = "/";
    m_root->mountpoint_len = 1;
    m_root->origin = web_root;
    m_root->def = "index.html";
    m_root->origin_protocol = LWSMPRO_FILE;
    m_api->mount_next = m_root;
    m_api->mountpoint = API_MOUNT;
    m_api->mountpoint_len = sizeof(API_MOUNT) - 1;
    m_api->origin = subprotocols[0];
    m_api->origin_protocol = LWSMPRO_CALLBACK;
    m_healthz->mount_next = m_api;
    m_healthz->mountpoint = HTTP_HEALTHZ;
    m_healthz->mountpoint_len = sizeof(HTTP_HEALTHZ) - 1;
    m_healthz->origin = subprotocols[0];
    m_healthz->origin_protocol = LWSMPRO_CALLBACK;
    *m_metrics = *m_healthz;
    m_metrics->mount_next = m_healthz;
    m_metrics->mountpoint = HTTP_METRICS;
    m_metrics->mountpoint_len = sizeof(HTTP_METRICS) - 1;

    memset(&info, 0, sizeof(info));
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND |
                   LWS_SERVER_OPTION_DISABLE_IPV6 * (strchr(b->cfg.listen_host, ':') == NULL);
    info.vhost_name = "gale";
    info.port = b->cfg.listen_port;
    info.iface = b->cfg.listen_host;
    info.protocols = b->protocols;
    info.mounts = m_metrics;
    info.retry_and_idle_policy = &no_idle_policy;
    info.keepalive_timeout = 5;
    /* --handshake-timeout: how long a request head may take once it has a header buffer. */
    info.timeout_secs_ah_idle = (int)b->cfg.handshake_timeout_s;
    info.server_string = "gale";
    if (b->tls) {
        /* lws 4.1 enables TLS on a vhost only when its own options carry this flag too. */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = b->cfg.tls_cert;
        info.ssl_private_key_filepath = b->cfg.tls_key;
        /* WebSocket over HTTP/2 allows one write per callback; the flush writes many. */
        info.alpn = "http/1.1";
    }
    b->vhost = lws_create_vhost(b->ctx, &info);
    if (!b->vhost) {
        if (b->tls)
            log_error("could not listen on %s:%d with TLS (address in use, or --tls-cert/"
                      "--tls-key unreadable or not a matching PEM pair?)",
                      b->cfg.listen_host, b->cfg.listen_port);
        else
            log_error("could not listen on %s:%d (address in use, or not an address of this "
                      "host?)",
                      b->cfg.listen_host, b->cfg.listen_port);
        return false;
    }
    b->port = lws_get_vhost_listen_port(b->vhost);
    return true;
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

broker_t *broker_start(const gale_config_t *cfg, uv_loop_t *loop)
{
    broker_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->cfg = *cfg;
    b->loop = loop;
    b->start_ms = uv_now(loop);
    b->exit_code = 1;
    if (cfg->node_id[0])
        snprintf(b->node_id, sizeof(b->node_id), "%s", cfg->node_id);
    else
        default_node_id(b->node_id, sizeof(b->node_id));
    b->scratch_cap = SCRATCH_SIZE;
    b->scratch = malloc(b->scratch_cap);
    b->topics = topics_new();
    b->instance = new_instance();
    resolve_web_root(cfg, b->web_root, sizeof(b->web_root));
    b->tls = cfg->tls_cert[0] != '\0';
    if (cfg->jwt_secret_len &&
        !(b->auth = auth_new((const uint8_t *)cfg->jwt_secret, cfg->jwt_secret_len))) {
        b->stopping = true;
        finish(b);
        return b;
    }
    memset(b->cfg.jwt_secret, 0, sizeof(b->cfg.jwt_secret)); /* auth_t holds the copy */
    if (!b->scratch || !b->topics || !create_lws(b) ||
        (cfg->redis_urls[0] && !(b->cluster = cluster_new(b)))) {
        b->stopping = true;
        finish(b);
        return b;
    }

    uv_check_init(loop, &b->flush_check);
    uv_timer_init(loop, &b->sweep_timer);
    uv_timer_init(loop, &b->stop_timer);
    uv_signal_init(loop, &b->sigterm);
    uv_signal_init(loop, &b->sigint);
    b->flush_check.data = b->sweep_timer.data = b->stop_timer.data = b;
    b->sigterm.data = b->sigint.data = b;
    b->handles_open = 5;
    uv_check_start(&b->flush_check, on_flush);
    uv_timer_start(&b->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_signal_start(&b->sigterm, on_signal, SIGTERM);
    uv_signal_start(&b->sigint, on_signal, SIGINT);

    b->exit_code = 0;
    log_info("gale-broker %s node %s listening on %s://%s:%d (WebSocket %s://%s:%d%s, web "
             "root %s)",
             GALE_VERSION, b->node_id, b->tls ? "https" : "http", cfg->listen_host, b->port,
             b->tls ? "wss" : "ws", cfg->listen_host, b->port, WS_PATH, b->web_root);
    log_info("limits: max-message %" PRIu64 " B, max-subscriptions %" PRIu64
             ", max-connections %" PRIu64 ", queue-limit %" PRIu64 " B, keepalive %" PRIu64
             " s, pub-rate %" PRIu64 "/s%s",
             cfg->max_message, cfg->max_subscriptions, cfg->max_connections, cfg->queue_limit,
             cfg->keepalive_s, cfg->pub_rate, cfg->pub_rate ? "" : " (off)");
    if (b->auth)
        log_info("authentication: HS256 tokens required (query token= or Authorization: "
                 "Bearer)%s",
                 cfg->jwt_secret_len < 32 ? "; warning: the secret is shorter than 32 bytes" : "");
    else
        log_info("no authentication configured: the broker is open to every client");
    if (cfg->allowed_origins[0])
        log_info("allowed origins: %s (requests without Origin are let in)", cfg->allowed_origins);
    log_info("HTTP publish API %s%s", cfg->api_key[0] ? "enabled at POST " API_PUBLISH : "disabled",
             cfg->api_key[0] ? "" : " (no --api-key)");
    if (!b->tls && (b->auth || cfg->api_key[0]) && strcmp(cfg->listen_host, "127.0.0.1") != 0 &&
        strcmp(cfg->listen_host, "localhost") != 0 && strcmp(cfg->listen_host, "::1") != 0)
        log_warn("tokens and API keys travel in clear text without --tls-cert (fine behind a "
                 "TLS-terminating proxy)");
    warn_file_limit(b);
    return b;
}

int broker_free(broker_t *b)
{
    if (!b)
        return 1;
    if (b->ctx)
        lws_context_destroy(b->ctx); /* the second call: frees what the first one closed */
    cluster_close(b->cluster);       /* no-op unless broker_start failed half-way */
    cluster_free(b->cluster);
    topics_free(b->topics);
    auth_free(b->auth);
    free(b->scratch);
    free(b->sessions);
    free(b->dirty);
    int code = b->exit_code;
    free(b);
    return code;
}
