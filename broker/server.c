/*
 * server: libwebsockets on the application's libuv loop (server.h). One
 * vhost on --listen serving the WebSocket endpoint /ws (subprotocols
 * gale.v1.json, the default, and gale.v1.msgpack), /healthz, /metrics, the
 * publish API and the web root. The lws callback only dispatches; the work
 * lives in session.c, http.c and api.c.
 */
#include "server.h"

#include "api.h"
#include "auth.h"
#include "http.h"
#include "iplimit.h"
#include "log.h"
#include "lws_mem.h"
#include "mqtt.h"
#include "nats.h"
#include "netaddr.h"
#include "session.h"

#include <inttypes.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define WS_PATH SERVER_WS_PATH

/*
 * Subprotocol names: gale's by encoding (the first also serves HTTP and clients that offer
 * none, NATS clients among them), then MQTT's (3.1.1 names "mqtt"; 3.1 clients offer
 * "mqttv3.1").
 */
#define NSUBPROTOCOLS (GALE_ENC_COUNT + 2)

/* What lws keeps pointers to for the context's life. */
struct server {
    struct lws_context *ctx;
    struct lws_vhost *vhost;
    struct lws_protocols protocols[NSUBPROTOCOLS + 1]; /* gale's by encoding, MQTT's, then a
                                                           terminator */
    struct lws_http_mount mounts[4];                   /* /metrics, /healthz, /api, / */
    iplimit_t *ips;            /* --max-connections-per-ip; NULL: no limit */
    netaddr_prefix_t *trusted; /* --trusted-proxies */
    size_t ntrusted;
};

/* A refused address is logged at most once in this long (with the refusals in between). */
#define PER_IP_LOG_INTERVAL_MS 60000

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len);

static const char *const subprotocols[NSUBPROTOCOLS] = {"gale.v1.json", "gale.v1.msgpack", "mqtt",
                                                        "mqttv3.1"};

/* What a WebSocket path serves. */
typedef enum { PATH_NONE, PATH_GALE, PATH_MQTT, PATH_NATS } path_kind_t;

static path_kind_t path_kind(const char *uri)
{
    return strcmp(uri, WS_PATH) == 0            ? PATH_GALE
           : strcmp(uri, SERVER_MQTT_PATH) == 0 ? PATH_MQTT
           : strcmp(uri, SERVER_NATS_PATH) == 0 ? PATH_NATS
                                                : PATH_NONE;
}

/* The path of wsi's upgrade request. */
static path_kind_t request_path(struct lws *wsi)
{
    char uri[16];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) >= (int)sizeof(uri) ||
        lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0)
        return PATH_NONE;
    return path_kind(uri);
}

/* A zeroed policy: no per-connection lws ping/hang-up timer (session_sweep instead). */
static const lws_retry_bo_t no_idle_policy;

/*
 * The index in subprotocols of the first name of the comma-separated Sec-WebSocket-Protocol
 * list that is one of ours (the one lws picks), or -1.
 */
static int first_known_subprotocol(const char *list)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        for (int i = 0; i < NSUBPROTOCOLS; i++)
            if ((size_t)(e - p) == strlen(subprotocols[i]) &&
                strncmp(p, subprotocols[i], (size_t)(e - p)) == 0)
                return i;
        p = e;
    }
    return -1;
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

/*
 * The client address of an upgrade request into *out: the TCP peer, or behind a proxy listed
 * in --trusted-proxies what its X-Forwarded-For says (netaddr_client). False when the peer's
 * address cannot be read (the connection is then not counted).
 */
static bool client_address(const struct server *sv, struct lws *wsi, netaddr_t *out)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    netaddr_t peer;
    int fd = lws_get_socket_fd(wsi);
    if (fd < 0 || getpeername(fd, (struct sockaddr *)&ss, &sl) != 0 ||
        !netaddr_from_sockaddr((struct sockaddr *)&ss, &peer))
        return false;
    char *xff = NULL;
    int n = 0;
    if (sv->ntrusted && netaddr_list_contains(sv->trusted, sv->ntrusted, &peer)) {
        /* The whole header, however long: its right end is the proxy's. */
        int total = lws_hdr_total_length(wsi, WSI_TOKEN_X_FORWARDED_FOR);
        if (total > 0 && (xff = malloc((size_t)total + 1)) != NULL)
            n = lws_hdr_copy(wsi, xff, total + 1, WSI_TOKEN_X_FORWARDED_FOR);
    }
    netaddr_source_t src = netaddr_client(&peer, sv->trusted, sv->ntrusted, n > 0 ? xff : NULL,
                                          n > 0 ? (size_t)n : 0, out);
    if (src == NETADDR_FROM_BAD_XFF && log_enabled(LOG_DEBUG)) {
        char text[NETADDR_TEXT_MAX];
        netaddr_format(&peer, text);
        log_debug("X-Forwarded-For from trusted proxy %s is malformed: the proxy's address "
                  "counts",
                  text);
    }
    free(xff);
    return true;
}

/* 429 for an address holding --max-connections-per-ip connections; logged at most once per
 * PER_IP_LOG_INTERVAL_MS per address. */
static int refuse_per_ip(broker_t *b, struct lws *wsi, const netaddr_t *client)
{
    iplimit_entry_t *e = iplimit_find(b->srv->ips, client);
    uint32_t suppressed = 0;
    b->m.connections_refused_per_ip++;
    if (e && iplimit_refused(e, broker_uptime_ms(b), PER_IP_LOG_INTERVAL_MS, &suppressed)) {
        char text[NETADDR_TEXT_MAX];
        netaddr_format(client, text);
        if (suppressed)
            log_warn("client %s holds %" PRIu32 " WebSocket connections (--max-connections-per-ip):"
                     " upgrade refused with 429, and %" PRIu32 " more since the last report",
                     text, e->count, suppressed);
        else
            log_warn("client %s holds %" PRIu32 " WebSocket connections (--max-connections-per-ip):"
                     " upgrade refused with 429 (refusals of this address are reported at most "
                     "once a minute)",
                     text, e->count);
    }
    return http_refuse(b, wsi, GALE_HTTP_TOO_MANY_REQUESTS,
                       "too many connections from this address");
}

/* Gives back the address slot a connection holds from its upgrade until it is established. */
static void release_http_slot(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    if (c && c->ip) {
        iplimit_release(b->srv->ips, c->ip);
        c->ip = NULL;
    }
}

bool server_client_addresses(const broker_t *b, uint64_t *n)
{
    *n = b->srv ? iplimit_addresses(b->srv->ips) : 0;
    return b->srv && b->srv->ips;
}

static int confirm_upgrade(broker_t *b, struct lws *wsi, const char *upgrade)
{
    char offered[256];
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST, "only WebSocket upgrades");
    path_kind_t path = request_path(wsi);
    if (path == PATH_NONE)
        return http_refuse(b, wsi, HTTP_STATUS_NOT_FOUND,
                           "the WebSocket endpoints are " WS_PATH " (gale), " SERVER_MQTT_PATH
                           " (MQTT) and " SERVER_NATS_PATH " (NATS)");
    if (lws_hdr_total_length(wsi, WSI_TOKEN_PROTOCOL) > 0) {
        /* The name lws will pick must be the path's protocol's. */
        int known = lws_hdr_copy(wsi, offered, sizeof(offered), WSI_TOKEN_PROTOCOL) > 0
                        ? first_known_subprotocol(offered)
                        : -1;
        if (path == PATH_GALE && (known < 0 || known >= GALE_ENC_COUNT))
            return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST,
                               "unknown subprotocol: offer gale.v1.json or gale.v1.msgpack");
        if (path == PATH_MQTT && known < GALE_ENC_COUNT)
            return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST,
                               "unknown subprotocol: offer mqtt (or mqttv3.1)");
        if (path == PATH_NATS)
            return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST,
                               "NATS over WebSocket takes no subprotocol");
    }
    if (b->cfg.allowed_origins[0] && lws_hdr_total_length(wsi, WSI_TOKEN_ORIGIN) > 0) {
        char origin[512];
        int n = lws_hdr_copy(wsi, origin, sizeof(origin), WSI_TOKEN_ORIGIN);
        if (n <= 0 || !origin_listed(b->cfg.allowed_origins, origin, (size_t)n)) {
            log_info("upgrade refused with 403: origin not in --allowed-origins");
            return http_refuse(b, wsi, HTTP_STATUS_FORBIDDEN, "origin not allowed");
        }
    }
    /* Before the token: a flooding address costs no signature check. */
    netaddr_t client;
    bool counted = b->srv->ips && client_address(b->srv, wsi, &client);
    if (counted && iplimit_full(b->srv->ips, &client))
        return refuse_per_ip(b, wsi, &client);
    if (b->auth && path == PATH_GALE) { /* MQTT and NATS clients give it in CONNECT */
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
    http_conn_t *c = counted ? http_conn_of(wsi) : NULL;
    if (c) { /* the slot is held until the wsi is destroyed, whatever happens next */
        bool full;
        if (!(c->ip = iplimit_acquire(b->srv->ips, &client, &full))) {
            if (full)
                return refuse_per_ip(b, wsi, &client);
            log_error("out of memory counting a connection's address");
            return http_refuse(b, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "out of memory");
        }
    }
    return 0;
}

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
        http_conn_t *hc = http_conn_of(wsi);
        if (hc && s) { /* the address slot moves to the session */
            s->ip = hc->ip;
            hc->ip = NULL;
        }
        release_http_slot(b, wsi);
        http_conn_upgraded(b, wsi);
        path_kind_t path = request_path(wsi);
        if (path == PATH_MQTT || path == PATH_NATS) {
            if (!session_open_adapter(b, s, wsi, path == PATH_MQTT ? &mqtt_proto : &nats_proto)) {
                log_error("out of memory accepting a connection");
                return -1;
            }
            return 0;
        }
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
        release_http_slot(b, wsi);
        http_conn_closed(b, wsi);
        if (s && s->ip) {
            iplimit_release(b->srv->ips, s->ip);
            s->ip = NULL;
        }
        if (s && s->live) {
            s->live = 0;
            b->nlive--; /* at 0 while stopping, the broker tears down (broker.c) */
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
        release_http_slot(b, wsi);
        http_conn_closed(b, wsi);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

/* lws's own log lines, into ours: errors and warnings; notices with --log-level debug (and
 * lws's info lines with GALE_LWS_INFO set as well). */
static void lws_emit(int level, const char *line)
{
    log_level_t ours = level == LLL_ERR ? LOG_ERROR : level == LLL_WARN ? LOG_WARN : LOG_DEBUG;
    log_msg(ours, "lws: %s", line);
}

void server_attach_log(void)
{
    int mask = LLL_ERR | LLL_WARN;
    if (log_enabled(LOG_DEBUG))
        mask |= LLL_NOTICE | (getenv("GALE_LWS_INFO") ? LLL_INFO : 0);
    lws_set_log_level(mask, lws_emit);
}

bool server_start(broker_t *b)
{
    struct server *sv = b->srv = calloc(1, sizeof(*sv));
    if (!sv)
        return false;
    const char *web_root = b->web_root;
    struct lws_http_mount *m_metrics = &sv->mounts[0], *m_healthz = &sv->mounts[1],
                          *m_api = &sv->mounts[2], *m_root = &sv->mounts[3];
    struct lws_context_creation_info info;
    void *loops[1] = {b->loop};

    if (b->cfg.max_connections_per_ip) {
        sv->ips = iplimit_new((uint32_t)b->cfg.max_connections_per_ip);
        if (!sv->ips) {
            log_error("out of memory");
            return false;
        }
    }
    if (b->cfg.trusted_proxies[0]) {
        const char *why;
        size_t off, len;
        int n = netaddr_parse_list(b->cfg.trusted_proxies, NULL, 0, &why, &off, &len);
        if (n <= 0 || !(sv->trusted = calloc((size_t)n, sizeof(*sv->trusted)))) {
            log_error("out of memory"); /* the list was validated by config_parse */
            return false;
        }
        sv->ntrusted = (size_t)netaddr_parse_list(b->cfg.trusted_proxies, sv->trusted, (size_t)n,
                                                  &why, &off, &len);
        if (!sv->ips)
            log_warn("--trusted-proxies has no effect without --max-connections-per-ip");
    }
    if (sv->ips)
        log_info("per-IP limit: %" PRIu64 " WebSocket connections per client address (more get "
                 "429); X-Forwarded-For %s%s",
                 b->cfg.max_connections_per_ip,
                 sv->ntrusted ? "read from the trusted proxies " : "ignored (no --trusted-proxies)",
                 sv->ntrusted ? b->cfg.trusted_proxies : "");

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
    sv->ctx = lws_create_context(&info);
    if (!sv->ctx) {
        log_error("could not create the libwebsockets context (is libwebsockets-evlib-uv "
                  "installed?)");
        return false;
    }

    for (int i = 0; i < NSUBPROTOCOLS; i++) {
        struct lws_protocols *p = &sv->protocols[i];
        p->name = subprotocols[i];
        p->callback = callback;
        p->per_session_data_size = sizeof(session_t);
        p->rx_buffer_size = b->cfg.rx_buffer;
        p->tx_packet_size = BROKER_SCRATCH_SIZE; /* one coalesced write is sent whole */
    }
    /* sv->protocols[NSUBPROTOCOLS] stays zeroed: the terminator. */

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
    info.protocols = sv->protocols;
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
    sv->vhost = lws_create_vhost(sv->ctx, &info);
    if (!sv->vhost) {
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
    b->port = lws_get_vhost_listen_port(sv->vhost);
    return true;
}

void server_sweep(broker_t *b)
{
    lws_mem_trim();
}

void server_close(broker_t *b)
{
    if (b->srv && b->srv->ctx)
        lws_context_destroy(b->srv->ctx);
}

void server_free(broker_t *b)
{
    if (!b->srv)
        return;
    if (b->srv->ctx)
        lws_context_destroy(b->srv->ctx); /* the second call: frees what the first one closed */
    iplimit_free(b->srv->ips);
    free(b->srv->trusted);
    free(b->srv);
    b->srv = NULL;
}
