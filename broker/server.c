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
#include "loops.h"
#include "lws_mem.h"
#include "mqtt.h"
#include "nats.h"
#include "netaddr.h"
#include "session.h"

#include <inttypes.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
    iplimit_t *ips;            /* --max-connections-per-ip; NULL: no limit (with several
                                  loops, theirs: used under loops_lock) */
    int listen_fd;             /* several loops: this loop's SO_REUSEPORT socket; else -1 */
    uv_poll_t listen_poll;     /* ... watched for connections to accept */
    uv_timer_t listen_retry;   /* ... polling again after the file limit was hit */
    bool listen_open;          /* the two handles are initialised and not closed */
    uint64_t rest_logged_ms;   /* ... when the file limit's rests were last logged */
    uint32_t rests;            /* ... and how many since */
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
/* The per-address table is the loops' when there are several: one lock around its use. */
static void ips_lock(broker_t *b)
{
    if (b->loops)
        loops_lock(b->loops);
}

static void ips_unlock(broker_t *b)
{
    if (b->loops)
        loops_unlock(b->loops);
}

static int refuse_per_ip(broker_t *b, struct lws *wsi, const netaddr_t *client)
{
    ips_lock(b);
    iplimit_entry_t *e = iplimit_find(b->srv->ips, client);
    uint32_t suppressed = 0, count = e ? e->count : 0;
    uint64_t now = b->loops ? loops_now_ms() : broker_uptime_ms(b); /* one clock for the table */
    bool say = e && iplimit_refused(e, now, PER_IP_LOG_INTERVAL_MS, &suppressed);
    ips_unlock(b);
    b->m.connections_refused_per_ip++;
    if (say) {
        char text[NETADDR_TEXT_MAX];
        netaddr_format(client, text);
        if (suppressed)
            log_warn("client %s holds %" PRIu32 " WebSocket connections (--max-connections-per-ip):"
                     " upgrade refused with 429, and %" PRIu32 " more since the last report",
                     text, count, suppressed);
        else
            log_warn("client %s holds %" PRIu32 " WebSocket connections (--max-connections-per-ip):"
                     " upgrade refused with 429 (refusals of this address are reported at most "
                     "once a minute)",
                     text, count);
    }
    return http_refuse(b, wsi, GALE_HTTP_TOO_MANY_REQUESTS,
                       "too many connections from this address");
}

/* Gives back the address slot a connection holds from its upgrade until it is established. */
static void release_http_slot(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    if (c && c->ip) {
        ips_lock(b);
        iplimit_release(b->srv->ips, c->ip);
        ips_unlock(b);
        c->ip = NULL;
    }
    if (c && c->conn_slot) {
        c->conn_slot = false;
        loops_conn_release(b->loops);
    }
}

bool server_client_addresses(const broker_t *b, uint64_t *n)
{
    ips_lock((broker_t *)b);
    *n = b->srv ? iplimit_addresses(b->srv->ips) : 0;
    ips_unlock((broker_t *)b);
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
    ips_lock(b);
    bool full_now = counted && iplimit_full(b->srv->ips, &client);
    ips_unlock(b);
    if (full_now)
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
    http_conn_t *hc = http_conn_of(wsi);
    bool limited = b->loops ? !hc || !loops_conn_reserve(b->loops, b->cfg.max_connections)
                            : b->cfg.max_connections && b->nsessions >= b->cfg.max_connections;
    if (limited) {
        log_warn("connection limit %" PRIu64 " reached: upgrade refused with 503",
                 b->cfg.max_connections);
        return http_refuse(b, wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, "too many connections");
    }
    if (b->loops) /* held until the wsi is destroyed, whatever happens next */
        hc->conn_slot = true;
    http_conn_t *c = counted ? hc : NULL;
    if (c) { /* the slot is held until the wsi is destroyed, whatever happens next */
        bool full;
        ips_lock(b);
        c->ip = iplimit_acquire(b->srv->ips, &client, &full);
        ips_unlock(b);
        if (!c->ip) {
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
        if (hc && s) { /* the address and connection slots move to the session */
            s->ip = hc->ip;
            hc->ip = NULL;
            s->conn_slot = hc->conn_slot;
            hc->conn_slot = false;
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
            ips_lock(b);
            iplimit_release(b->srv->ips, s->ip);
            ips_unlock(b);
            s->ip = NULL;
        }
        if (s && s->conn_slot) {
            s->conn_slot = false;
            loops_conn_release(b->loops);
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

/* Connections accepted at once per wake-up of the listener, so that one loop's backlog does not
 * hold its connections' I/O up for long. */
#define ACCEPT_BATCH 64
/* After the open-file limit refused an accept, the listener rests this long. */
#define ACCEPT_RETRY_MS 100

static void on_listen_readable(uv_poll_t *h, int status, int events);

static void on_listen_retry(uv_timer_t *t)
{
    broker_t *b = t->data;
    if (b->srv->listen_open)
        uv_poll_start(&b->srv->listen_poll, UV_READABLE, on_listen_readable);
}

/* Several loops: this loop's listener accepts, lws adopts each socket into this loop's
 * context (as its own listener would: HTTP first, TLS with --tls-cert). */
static void on_listen_readable(uv_poll_t *h, int status, int events)
{
    broker_t *b = h->data;
    struct server *sv = b->srv;
    (void)events;
    if (status < 0)
        return;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        int fd = accept4(sv->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* Said at most once a minute per loop, with the rests since. */
                uint64_t now = broker_uptime_ms(b);
                if (!sv->rest_logged_ms || now - sv->rest_logged_ms >= PER_IP_LOG_INTERVAL_MS) {
                    log_warn("accept: %s: not accepting for %d ms at a time (%" PRIu32
                             " more rests since the last report)",
                             strerror(errno), ACCEPT_RETRY_MS, sv->rests);
                    sv->rest_logged_ms = now ? now : 1;
                    sv->rests = 0;
                } else {
                    sv->rests++;
                }
                uv_poll_stop(&sv->listen_poll);
                uv_timer_start(&sv->listen_retry, on_listen_retry, ACCEPT_RETRY_MS, 0);
            }
            return; /* EAGAIN, or a connection that went away before its accept */
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        lws_sock_file_fd_type desc = {.sockfd = fd};
        lws_adoption_type type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP;
        if (b->tls)
            type |= LWS_ADOPT_ALLOW_SSL;
        if (!lws_adopt_descriptor_vhost(sv->vhost, type, desc, NULL, NULL))
            log_warn("a connection could not be adopted (out of memory?): closed");
    }
}

/* Several loops: this loop's SO_REUSEPORT socket on --listen (the port the first loop got
 * when it is 0), watched on this loop. */
static bool listen_start(broker_t *b)
{
    struct server *sv = b->srv;
    struct addrinfo hints = {.ai_family = strchr(b->cfg.listen_host, ':') ? AF_INET6 : AF_INET,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int port = b->loop_idx ? loops_port(b->loops) : b->cfg.listen_port;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(b->cfg.listen_host, service, &hints, &ai);
    if (rc != 0 || !ai) {
        log_error("could not resolve --listen %s: %s", b->cfg.listen_host, gai_strerror(rc));
        return false;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    bool ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
              setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0 &&
              bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0;
    int err = errno;
    freeaddrinfo(ai);
    if (!ok) {
        log_error("could not listen on %s:%d: %s (address in use, or not an address of this "
                  "host?)",
                  b->cfg.listen_host, port, strerror(err));
        if (fd >= 0)
            close(fd);
        return false;
    }
    sv->listen_fd = fd;
    struct sockaddr_storage sa;
    socklen_t len = sizeof(sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        b->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    if (b->loop_idx == 0)
        loops_set_port(b->loops, b->port);
    if (uv_poll_init(b->loop, &sv->listen_poll, fd) != 0) {
        log_error("could not watch the listening socket");
        return false;
    }
    uv_timer_init(b->loop, &sv->listen_retry);
    sv->listen_poll.data = sv->listen_retry.data = b;
    sv->listen_open = true;
    uv_poll_start(&sv->listen_poll, UV_READABLE, on_listen_readable);
    return true;
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

    sv->listen_fd = -1;
    if (b->loops) {
        sv->ips = loops_iplimit(b->loops); /* NULL without --max-connections-per-ip */
    } else if (b->cfg.max_connections_per_ip) {
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
    if (sv->ips && b->loop_idx == 0)
        log_info("per-IP limit: %" PRIu64 " WebSocket connections per client address (more get "
                 "429); X-Forwarded-For %s%s",
                 b->cfg.max_connections_per_ip,
                 sv->ntrusted ? "read from the trusted proxies " : "ignored (no --trusted-proxies)",
                 sv->ntrusted ? b->cfg.trusted_proxies : "");

    /* Request heads in slots of their own (lws's default header buffer is 4 KiB). */
    if (!lws_mem_install(b->cfg.max_handshakes * b->nloops, 4096))
        log_warn("could not reserve room for %" PRIu64 " request heads: lws allocates them "
                 "from the heap",
                 b->cfg.max_handshakes);
    memset(&info, 0, sizeof(info));
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    if (b->tls && b->loop_idx == 0) /* OpenSSL's process-wide set-up: once (several loops) */
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
    /* Several loops: each listens itself (listen_start), lws adopts what it accepts. */
    info.port = b->loops ? CONTEXT_PORT_NO_LISTEN_SERVER : b->cfg.listen_port;
    info.iface = b->loops ? NULL : b->cfg.listen_host;
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
    if (b->loops)
        return listen_start(b);
    b->port = lws_get_vhost_listen_port(sv->vhost);
    return true;
}

void server_sweep(broker_t *b)
{
    lws_mem_trim();
}

void server_close(broker_t *b)
{
    if (b->srv && b->srv->listen_open) {
        b->srv->listen_open = false;
        uv_close((uv_handle_t *)&b->srv->listen_poll, NULL);
        uv_close((uv_handle_t *)&b->srv->listen_retry, NULL);
    }
    if (b->srv && b->srv->ctx)
        lws_context_destroy(b->srv->ctx);
}

void server_free(broker_t *b)
{
    if (!b->srv)
        return;
    if (b->srv->ctx)
        lws_context_destroy(b->srv->ctx); /* the second call: frees what the first one closed */
    if (b->srv->listen_fd >= 0)
        close(b->srv->listen_fd);
    if (!b->loops)
        iplimit_free(b->srv->ips); /* else the loops' */
    free(b->srv->trusted);
    free(b->srv);
    b->srv = NULL;
}
