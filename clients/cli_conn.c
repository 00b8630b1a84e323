/*
 * cli_conn: the command-line client's gale connection on the libwebsockets
 * client API (see cli_conn.h). One lws context with lws's default poll loop,
 * at most one client wsi at a time, an outbound queue of complete frames,
 * and inbound frames reassembled before they are decoded.
 *
 * lws reports every failure before the upgrade as "Unable to connect" or
 * similar; to tell "refused" from "unreachable" the failure is diagnosed
 * with one plain TCP connect of our own (bounded to 3 s).
 */
#include "cli_conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RX_MAX (64u << 20) /* largest broker message we reassemble */
#define TX_BYTES_PER_CB (1u << 20)
#define CLOSE_WAIT_S 2.0 /* for the broker's close frame after ours */
#define LOG_MAX 2000     /* bytes of a frame shown by -v */

typedef struct frame {
    struct frame *next;
    gale_buf_t b;
} frame_t;

typedef enum { ST_IDLE, ST_CONNECTING, ST_OPEN, ST_READY } state_t;

struct cli_conn {
    const cli_common_t *opts;
    cli_handler_t h;
    void *arg;
    struct lws_context *ctx;
    struct lws *wsi;
    cli_url_t url;
    state_t state;
    bool want_close; /* cli_conn_close: close after the queue drains */
    bool close_sent;
    bool stop;
    frame_t *head, *tail;
    size_t queued;
    gale_buf_t rx;
    bool rx_in_msg;
    int peer_close;
    char peer_reason[124];
    lws_sorted_usec_list_t close_sul;
};

static volatile sig_atomic_t g_interrupted;
static struct lws_context *volatile g_ctx;

static void on_signal(int sig)
{
    (void)sig;
    g_interrupted = 1;
    if (g_ctx != NULL)
        lws_cancel_service(g_ctx);
}

bool cli_interrupted(void)
{
    return g_interrupted != 0;
}

/* ---- -v logging ---- */

static void log_frame(const cli_conn_t *c, const char *dir, const uint8_t *p, size_t n)
{
    if (c->opts->verbose < 1)
        return;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    if (c->opts->enc == GALE_ENC_MSGPACK) {
        char head[48];
        snprintf(head, sizeof(head), "(msgpack %zu B) ", n);
        gale_buf_append(&b, head, strlen(head));
        if (gale_convert_data(&b, GALE_ENC_JSON, GALE_ENC_MSGPACK, p, n) != GALE_OK)
            gale_buf_append(&b, "(not convertible)", 17);
    } else {
        cli_json_compact(&b, p, n);
    }
    if (b.len > LOG_MAX) {
        b.len = LOG_MAX;
        gale_buf_append(&b, "...", 3);
    }
    fprintf(stderr, "%s %.*s\n", dir, (int)b.len, b.data ? (const char *)b.data : "");
    gale_buf_free(&b);
}

static void log_event(const cli_conn_t *c, const char *fmt, const char *s)
{
    if (c->opts->verbose >= 1) {
        fputs("* ", stderr);
        fprintf(stderr, fmt, s);
        fputc('\n', stderr);
    }
}

/* ---- queue ---- */

static void drop_queue(cli_conn_t *c)
{
    while (c->head != NULL) {
        frame_t *f = c->head;
        c->head = f->next;
        gale_buf_free(&f->b);
        free(f);
    }
    c->tail = NULL;
    c->queued = 0;
}

void cli_conn_send(cli_conn_t *c, gale_buf_t *frame)
{
    frame_t *f = NULL;
    if (c->state != ST_READY || c->want_close || frame->oom ||
        (f = calloc(1, sizeof(*f))) == NULL) {
        gale_buf_free(frame);
        gale_buf_init(frame, LWS_PRE);
        return;
    }
    f->b = *frame;
    gale_buf_init(frame, LWS_PRE);
    if (c->tail != NULL)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    c->queued++;
    lws_callback_on_writable(c->wsi);
}

size_t cli_conn_queued(const cli_conn_t *c)
{
    return c->queued;
}

/* Writes queued frames; returns -1 to have lws close the connection. */
static int write_queue(cli_conn_t *c, struct lws *wsi)
{
    size_t bytes = 0;
    enum lws_write_protocol wp =
        c->opts->enc == GALE_ENC_MSGPACK ? LWS_WRITE_BINARY : LWS_WRITE_TEXT;
    while (c->head != NULL && bytes < TX_BYTES_PER_CB && !lws_partial_buffered(wsi)) {
        frame_t *f = c->head;
        size_t n = gale_buf_payload_len(&f->b);
        uint8_t *p = gale_buf_payload(&f->b);
        log_frame(c, ">", p, n); /* before lws_write masks the payload in place */
        if (lws_write(wsi, p, n, wp) < (int)n)
            return -1;
        bytes += n;
        c->head = f->next;
        if (c->head == NULL)
            c->tail = NULL;
        c->queued--;
        gale_buf_free(&f->b);
        free(f);
    }
    if (c->head != NULL) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    if (c->want_close) {
        if (!c->close_sent)
            log_event(c, "%s", "closing (1000)");
        c->close_sent = true;
        lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, NULL, 0);
        return -1;
    }
    return 0;
}

/* ---- ending a connection ---- */

static void end(cli_conn_t *c, cli_end_info_t *e)
{
    if (c->state == ST_IDLE)
        return;
    c->state = ST_IDLE;
    c->wsi = NULL;
    c->rx_in_msg = false;
    drop_queue(c);
    lws_sul_cancel(&c->close_sul);
    if (c->want_close && e->kind != CLI_END_CLOSED && e->established) {
        e->kind = CLI_END_CLOSED; /* we asked for it; how it ended does not matter */
    }
    c->want_close = false;
    log_event(c, "connection ended: %s", e->detail[0] ? e->detail : "closed");
    if (c->h.on_closed != NULL)
        c->h.on_closed(c->arg, e);
}

/* Tells refused from unreachable with one TCP connect of our own. */
static void diagnose(cli_conn_t *c, cli_end_info_t *e, const char *lws_reason)
{
    struct addrinfo hints, *res = NULL;
    char port[16];
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof(port), "%d", c->url.port);
    int r = getaddrinfo(c->url.host, port, &hints, &res);
    if (r != 0) {
        e->kind = CLI_END_UNREACHABLE;
        snprintf(e->detail, sizeof(e->detail), "cannot resolve host '%.150s' (%s)", c->url.host,
                 gai_strerror(r));
        return;
    }
    int err = ETIMEDOUT;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        err = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            err = errno;
            if (err == EINPROGRESS) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                socklen_t sl = sizeof(err);
                if (poll(&pfd, 1, 3000) == 1)
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl);
                else
                    err = ETIMEDOUT;
            }
        }
        close(fd);
        if (err == 0)
            break;
    }
    freeaddrinfo(res);
    if (err == 0) {
        /* TCP works: TLS or the upgrade failed. */
        e->kind = CLI_END_HANDSHAKE;
        snprintf(e->detail, sizeof(e->detail), "%s", lws_reason);
    } else if (err == ECONNREFUSED) {
        e->kind = CLI_END_REFUSED;
        snprintf(e->detail, sizeof(e->detail), "connection refused");
    } else {
        e->kind = CLI_END_UNREACHABLE;
        snprintf(e->detail, sizeof(e->detail), "%s",
                 err == ETIMEDOUT ? "connection timed out" : strerror(err));
    }
}

static void connection_error(cli_conn_t *c, struct lws *wsi, const char *in, size_t len)
{
    cli_end_info_t e;
    memset(&e, 0, sizeof(e));
    char reason[200];
    snprintf(reason, sizeof(reason), "%.*s", in ? (int)(len < 199 ? len : 199) : 0, in ? in : "");
    reason[strcspn(reason, "\r\n")] = '\0';
    if (!reason[0])
        snprintf(reason, sizeof(reason), "connection failed");
    e.http_status = wsi != NULL ? (int)lws_http_client_http_response(wsi) : 0;
    if (e.http_status != 0) {
        e.kind = CLI_END_HANDSHAKE;
        snprintf(e.detail, sizeof(e.detail), "HTTP %d", e.http_status);
    } else if (!strncmp(reason, "HS:", 3)) {
        e.kind = CLI_END_HANDSHAKE;
        snprintf(e.detail, sizeof(e.detail), "%s", reason + 4);
    } else {
        diagnose(c, &e, reason);
    }
    end(c, &e);
}

static void close_timeout(lws_sorted_usec_list_t *sul)
{
    cli_conn_t *c = lws_container_of(sul, cli_conn_t, close_sul);
    if (c->state == ST_IDLE)
        return;
    cli_end_info_t e;
    memset(&e, 0, sizeof(e));
    e.kind = CLI_END_CLOSED;
    e.established = true;
    snprintf(e.detail, sizeof(e.detail), "no close frame from the broker within %.0f s",
             CLOSE_WAIT_S);
    end(c, &e); /* the wsi goes with the context */
}

void cli_conn_close(cli_conn_t *c)
{
    if (c->state == ST_IDLE)
        return;
    if (c->state == ST_CONNECTING) {
        /* Nothing to close cleanly: drop the attempt. */
        cli_end_info_t e;
        memset(&e, 0, sizeof(e));
        e.kind = CLI_END_CLOSED;
        struct lws *wsi = c->wsi;
        end(c, &e);
        if (wsi != NULL)
            lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
        return;
    }
    if (c->want_close)
        return;
    c->want_close = true;
    cli_conn_timer(c, &c->close_sul, close_timeout, CLOSE_WAIT_S);
    lws_callback_on_writable(c->wsi);
}

/* ---- receiving ---- */

static void handle_frame(cli_conn_t *c, const uint8_t *p, size_t n)
{
    log_frame(c, "<", p, n);
    gale_reply_t r;
    const char *why;
    if (gale_decode_reply(c->opts->enc, p, n, &r, &why) != GALE_OK) {
        cli_error(c->opts, "ignoring a malformed message from the broker: %s", why);
        return;
    }
    if (c->state == ST_OPEN) {
        if (r.op != GALE_REPLY_HELLO) {
            cli_error(c->opts, "the broker did not start with hello; is %s a gale broker?",
                      c->opts->url);
            return;
        }
        c->state = ST_READY;
        if (c->h.on_open != NULL)
            c->h.on_open(c->arg, &r);
        return;
    }
    if (r.op == GALE_REPLY_HELLO || r.op == GALE_REPLY_UNKNOWN)
        return;
    if (c->h.on_reply != NULL)
        c->h.on_reply(c->arg, &r);
}

static int receive(cli_conn_t *c, struct lws *wsi, const void *in, size_t len)
{
    if (!c->rx_in_msg)
        c->rx.len = 0;
    if (c->rx.len + len > RX_MAX) {
        cli_error(c->opts, "a message from the broker is larger than %u MiB", RX_MAX >> 20);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
        return -1;
    }
    if (len > 0 && !gale_buf_append(&c->rx, in, len)) {
        cli_error(c->opts, "out of memory");
        return -1;
    }
    c->rx_in_msg = !(lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0);
    if (!c->rx_in_msg)
        handle_frame(c, c->rx.data, c->rx.len);
    return 0;
}

/* ---- the lws callback ---- */

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
    cli_conn_t *c = lws_context_user(lws_get_context(wsi));
    if (c == NULL)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (c->state == ST_CONNECTING && (c->wsi == NULL || c->wsi == wsi))
            connection_error(c, wsi, in, in ? len : 0);
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        if (c->wsi != wsi)
            return -1;
        c->state = ST_OPEN;
        c->peer_close = 0;
        c->peer_reason[0] = '\0';
        log_event(c, "connected (%s), waiting for hello", gale_enc_subprotocol(c->opts->enc));
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (c->wsi != wsi)
            return -1;
        return receive(c, wsi, in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (c->wsi != wsi)
            return 0;
        return write_queue(c, wsi);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if (c->wsi == wsi && len >= 2) {
            const uint8_t *p = in;
            c->peer_close = p[0] << 8 | p[1];
            size_t rl = len - 2 < sizeof(c->peer_reason) - 1 ? len - 2 : sizeof(c->peer_reason) - 1;
            memcpy(c->peer_reason, p + 2, rl);
            c->peer_reason[rl] = '\0';
        }
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c->wsi == wsi && c->state != ST_IDLE) {
            cli_end_info_t e;
            memset(&e, 0, sizeof(e));
            e.established = true;
            e.close_code = c->peer_close;
            if (c->want_close) {
                e.kind = CLI_END_CLOSED;
            } else {
                e.kind = CLI_END_LOST;
                if (c->peer_close)
                    snprintf(e.detail, sizeof(e.detail), "closed by the broker with %d%s%s",
                             c->peer_close, c->peer_reason[0] ? ": " : "", c->peer_reason);
                else
                    snprintf(e.detail, sizeof(e.detail), "the connection broke");
            }
            end(c, &e);
        }
        return 0;
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (c->h.on_wake != NULL)
            c->h.on_wake(c->arg);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"gale-cli", callback, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---- lifecycle ---- */

cli_conn_t *cli_conn_new(const cli_common_t *opts, const cli_handler_t *h, void *arg)
{
    cli_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->opts = opts;
    c->h = *h;
    c->arg = arg;
    gale_buf_init(&c->rx, 0);
    const char *why;
    if (!cli_url_parse(opts->url, opts->token, &c->url, &why)) {
        cli_usage_error(opts->cmd, "invalid URL '%s': %s", opts->url, why);
        free(c);
        return NULL;
    }
    lws_set_log_level(opts->verbose >= 2 ? LLL_ERR | LLL_WARN | LLL_NOTICE : 0, NULL);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = c;
    info.gid = -1;
    info.uid = -1;
    info.timeout_secs = 10;
    info.connect_timeout_secs = 10;
    if (c->url.tls) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.client_ssl_ca_filepath = opts->cafile;
    }
    c->ctx = lws_create_context(&info);
    if (c->ctx == NULL) {
        cli_error(opts, "cannot initialise libwebsockets%s",
                  opts->cafile ? " (is --cafile a readable PEM file?)" : "");
        free(c);
        return NULL;
    }
    g_ctx = c->ctx;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    return c;
}

void cli_conn_free(cli_conn_t *c)
{
    if (c == NULL)
        return;
    lws_sul_cancel(&c->close_sul);
    drop_queue(c);
    g_ctx = NULL;
    struct lws_context *ctx = c->ctx;
    c->ctx = NULL;
    c->state = ST_IDLE;
    /* Callbacks during teardown see no cli_conn. */
    lws_context_destroy(ctx);
    gale_buf_free(&c->rx);
    free(c);
}

bool cli_conn_connect(cli_conn_t *c)
{
    if (c->state != ST_IDLE)
        return true;
    /* The token may have changed since the last attempt (--token-file). */
    cli_url_t url;
    const char *why;
    if (cli_url_parse(c->opts->url, c->opts->token, &url, &why))
        c->url = url;
    else
        cli_error(c->opts, "cannot use the new token (%s): connecting with the previous one", why);
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof(i));
    i.context = c->ctx;
    i.address = c->url.host;
    i.port = c->url.port;
    i.path = c->url.path;
    i.host = c->url.hostport;
    i.protocol = gale_enc_subprotocol(c->opts->enc);
    i.local_protocol_name = "gale-cli";
    i.ietf_version_or_minus_one = -1;
    if (c->url.tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (c->opts->insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
        i.alpn = "http/1.1";
    }
    c->wsi = NULL;
    i.pwsi = &c->wsi;
    c->state = ST_CONNECTING;
    c->want_close = false;
    c->close_sent = false;
    log_event(c, "connecting to %s", c->opts->url);
    if (lws_client_connect_via_info(&i) == NULL) {
        if (c->state == ST_CONNECTING) {
            /* Failed before lws could report it. */
            connection_error(c, NULL, NULL, 0);
        }
        return false;
    }
    return c->state != ST_IDLE;
}

bool cli_conn_active(const cli_conn_t *c)
{
    return c->state != ST_IDLE;
}

bool cli_conn_ready(const cli_conn_t *c)
{
    return c->state == ST_READY;
}

int cli_conn_run(cli_conn_t *c)
{
    while (!c->stop) {
        if (lws_service(c->ctx, 0) < 0)
            return -1;
    }
    return 0;
}

void cli_conn_stop(cli_conn_t *c)
{
    c->stop = true;
    lws_cancel_service(c->ctx);
}

void cli_conn_timer(cli_conn_t *c, lws_sorted_usec_list_t *sul, sul_cb_t cb, double seconds)
{
    lws_sul_schedule(c->ctx, 0, sul, cb, (lws_usec_t)(seconds * 1e6));
}

struct lws_context *cli_conn_context(cli_conn_t *c)
{
    return c->ctx;
}

static const char *status_hint(int status)
{
    switch (status) {
    case 400:
        return " (the broker refused the subprotocol, or this is not a gale broker)";
    case 401:
    case 403:
        return " (check --token / --token-file / GALE_TOKEN)";
    case 404:
        return " (wrong path? gale brokers serve WebSockets at /ws)";
    case 503:
        return " (the broker is at its connection limit)";
    }
    return "";
}

void cli_report_end(const cli_common_t *opts, const cli_end_info_t *e)
{
    switch (e->kind) {
    case CLI_END_CLOSED:
        break;
    case CLI_END_REFUSED:
    case CLI_END_UNREACHABLE:
        cli_error(opts, "cannot connect to %s: %s", opts->url, e->detail);
        break;
    case CLI_END_HANDSHAKE:
        if (e->http_status)
            cli_error(opts, "handshake refused by %s: HTTP %d%s", opts->url, e->http_status,
                      status_hint(e->http_status));
        else if (strstr(e->detail, "SSL") != NULL || strstr(e->detail, "ssl") != NULL)
            cli_error(opts,
                      "TLS handshake with %s failed (is the certificate trusted? see --cafile, "
                      "--insecure): %s",
                      opts->url, e->detail);
        else
            cli_error(opts, "handshake with %s failed: %s", opts->url, e->detail);
        break;
    case CLI_END_LOST:
        cli_error(opts, "connection to %s lost: %s", opts->url, e->detail);
        break;
    }
}

/* ---- one request, one answer ---- */

typedef struct {
    const cli_common_t *o;
    const cli_request_t *req;
    void *arg;
    cli_conn_t *conn;
    gale_buf_t frame;
    bool finished;
    int exit_code;
    lws_sorted_usec_list_t timeout_sul;
} request_t;

static void request_finish(request_t *q, int code)
{
    if (q->finished)
        return;
    q->finished = true;
    q->exit_code = code;
    if (cli_conn_active(q->conn))
        cli_conn_close(q->conn); /* on_closed stops the loop */
    else
        cli_conn_stop(q->conn);
}

static void request_timeout(lws_sorted_usec_list_t *sul)
{
    request_t *q = lws_container_of(sul, request_t, timeout_sul);
    if (q->finished)
        return;
    cli_error(q->o, "timed out after %g s %s", q->o->timeout,
              cli_conn_ready(q->conn) ? q->req->awaited : "connecting");
    request_finish(q, CLI_EXIT_TIMEOUT);
}

static void request_open(void *arg, const gale_reply_t *hello)
{
    request_t *q = arg;
    (void)hello;
    q->frame.len = q->frame.headroom;
    if (!q->req->encode(q->arg, &q->frame)) {
        cli_error(q->o, "out of memory");
        request_finish(q, CLI_EXIT_USAGE);
        return;
    }
    cli_conn_send(q->conn, &q->frame);
}

static void request_reply(void *arg, const gale_reply_t *r)
{
    request_t *q = arg;
    if (q->finished)
        return;
    if (r->op == q->req->answer && r->has_id && r->id == CLI_REQUEST_ID) {
        request_finish(q, q->req->print(q->arg, r));
    } else if (r->op == GALE_REPLY_ERR) {
        cli_error(q->o, "server error %.*s: %.*s%s", (int)r->code_name_len, r->code_name,
                  (int)r->msg_len, r->msg, r->msg_truncated ? "..." : "");
        request_finish(q, CLI_EXIT_SERVER);
    }
}

static void request_closed(void *arg, const cli_end_info_t *end)
{
    request_t *q = arg;
    if (!q->finished && end->kind != CLI_END_CLOSED) {
        cli_report_end(q->o, end);
        q->exit_code = CLI_EXIT_CONNECT;
    }
    q->finished = true;
    cli_conn_stop(q->conn);
}

static void request_wake(void *arg)
{
    request_t *q = arg;
    if (cli_interrupted() && !q->finished)
        request_finish(q, CLI_EXIT_INTERRUPTED);
}

int cli_request_run(const cli_common_t *opts, const cli_request_t *req, void *arg)
{
    request_t q;
    memset(&q, 0, sizeof(q));
    q.o = opts;
    q.req = req;
    q.arg = arg;
    gale_buf_init(&q.frame, LWS_PRE);

    static const cli_handler_t handler = {request_open, request_reply, request_closed,
                                          request_wake};
    int rc;
    q.conn = cli_conn_new(opts, &handler, &q);
    if (q.conn == NULL) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (opts->timeout > 0)
        cli_conn_timer(q.conn, &q.timeout_sul, request_timeout, opts->timeout);
    cli_conn_connect(q.conn); /* a failure at once has already stopped the loop */
    if (cli_conn_run(q.conn) < 0 && q.exit_code == CLI_EXIT_OK) {
        cli_error(opts, "libwebsockets service loop failed");
        q.exit_code = CLI_EXIT_CONNECT;
    }
    rc = q.exit_code;
out:
    lws_sul_cancel(&q.timeout_sul);
    cli_conn_free(q.conn);
    gale_buf_free(&q.frame);
    return rc;
}
