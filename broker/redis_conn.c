/*
 * redis_conn: one connection to one Redis server (see redis_conn.h for the contract and
 * the states, docs/ARCHITECTURE.md "Cluster" for where it sits).
 *
 * hiredis 0.14.1 facts this file is built on (docs/ARCHITECTURE.md, NOTES):
 *   - the libuv adapter (redis_uv.c) is attached before the connect callback is set;
 *   - a context is never freed inside one of its callbacks: failures only mark the
 *     connection DOWN, the timer frees the contexts from a fresh loop turn;
 *   - freeing a context runs the callbacks of its pending commands with a NULL reply, then
 *     (if it was connected) its disconnect callback: contexts we free ourselves are taken
 *     out of their slot first, so callbacks can tell them apart;
 *   - a context that fails to connect, or is disconnected, is freed by hiredis after its
 *     callback returns;
 *   - the subscribe context is never PINGed: its reply would be taken for a message.
 */
#include "redis_conn.h"

#include "log.h"
#include "redis_uv.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One context's progress through an attempt. */
typedef enum { CTX_NONE, CTX_CONNECTING, CTX_AUTHENTICATING, CTX_PINGING, CTX_READY } ctx_state_t;

enum { CMD, SUB }; /* the command context, the subscribe context */

typedef struct {
    redis_conn_t *rc;
    redisAsyncContext *ac; /* NULL: none, or hiredis is freeing it */
    ctx_state_t state;
} ctx_t;

struct redis_conn {
    bool quiet; /* state changes logged at debug level (another loop logs them) */
    uv_loop_t *loop;
    redis_conn_callbacks_t cb;
    void *owner;
    cluster_addr_t addr;
    uint64_t timeout_ms;
    uint64_t rng;
    redis_conn_state_t state;
    ctx_t ctx[2];            /* [CMD], [SUB] */
    uv_timer_t timer;        /* connect timer, then the free (0 ms), then the backoff */
    bool started;            /* timer initialized */
    bool closing;            /* redis_conn_close ran: nothing reconnects */
    uv_getaddrinfo_t *gai;   /* a resolution under way (heap; freed by its callback) */
    uint32_t failures;       /* failed attempts since the last READY: the backoff exponent */
    redis_conn_err_t logged; /* kind of the last failure logged: log once per change */
    bool was_ready;          /* has been READY: the next READY is a reconnection */
    bool nopass_warned;      /* "no password configured" logged since the last good AUTH */
};

static void fail_as(redis_conn_t *rc, redis_conn_err_t kind, const char *why);
static void on_timer(uv_timer_t *t);

/* --- pure helpers --------------------------------------------------------------------- */

uint64_t redis_conn_backoff_ms(uint32_t failures, uint64_t random)
{
    uint64_t d = (uint64_t)REDIS_CONN_BACKOFF_MIN_MS << (failures < 6 ? failures : 6);
    if (d > REDIS_CONN_BACKOFF_MAX_MS)
        d = REDIS_CONN_BACKOFF_MAX_MS;
    return d / 2 + random % (d / 2 + 1);
}

const char *redis_conn_redact(const char *why, const char *secret, size_t secret_len, char *out,
                              size_t cap)
{
    size_t o = 0;
    if (!secret_len || !strstr(why, secret))
        return why;
    while (*why && o + 4 < cap) {
        if (strncmp(why, secret, secret_len) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            why += secret_len;
        } else {
            out[o++] = *why++;
        }
    }
    out[o] = '\0';
    return out;
}

static uint64_t rnd(redis_conn_t *rc)
{
    rc->rng ^= rc->rng >> 12;
    rc->rng ^= rc->rng << 25;
    rc->rng ^= rc->rng >> 27;
    return rc->rng * 0x2545f4914f6cdd1dULL;
}

static bool is(const redisReply *r, const char *s)
{
    size_t n = strlen(s);
    return r->type == REDIS_REPLY_STRING && r->len == n && strncasecmp(r->str, s, n) == 0;
}

/* --- answers -------------------------------------------------------------------------- */

/* The answer to an owner's command on the command context (NULL: freed first). */
static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *rc = privdata;
    const redisReply *r = reply;
    if (!r)
        rc->cb.reply(rc->owner, REDIS_CONN_REPLY_DROPPED, NULL, 0, NULL);
    else if (r->type == REDIS_REPLY_ERROR)
        rc->cb.reply(rc->owner, REDIS_CONN_REPLY_ERROR, r->str, r->len, NULL);
    else
        rc->cb.reply(rc->owner, REDIS_CONN_REPLY_OK, NULL, 0, (const redis_value_t *)r);
}

/* --- reply values --------------------------------------------------------------------- */

redis_value_kind_t redis_value_kind(const redis_value_t *v)
{
    const redisReply *r = (const redisReply *)v;
    if (!r)
        return REDIS_VALUE_OTHER;
    switch (r->type) {
    case REDIS_REPLY_STRING:
        return REDIS_VALUE_STRING;
    case REDIS_REPLY_INTEGER:
        return REDIS_VALUE_INTEGER;
    case REDIS_REPLY_ARRAY:
        return REDIS_VALUE_ARRAY;
    case REDIS_REPLY_NIL:
        return REDIS_VALUE_NIL;
    default:
        return REDIS_VALUE_OTHER;
    }
}

const char *redis_value_str(const redis_value_t *v, size_t *len)
{
    const redisReply *r = (const redisReply *)v;
    if (redis_value_kind(v) != REDIS_VALUE_STRING)
        return NULL;
    *len = r->len;
    return r->str;
}

long long redis_value_int(const redis_value_t *v)
{
    return redis_value_kind(v) == REDIS_VALUE_INTEGER ? ((const redisReply *)v)->integer : 0;
}

size_t redis_value_count(const redis_value_t *v)
{
    return redis_value_kind(v) == REDIS_VALUE_ARRAY ? ((const redisReply *)v)->elements : 0;
}

const redis_value_t *redis_value_at(const redis_value_t *v, size_t i)
{
    if (i >= redis_value_count(v))
        return NULL;
    return (const redis_value_t *)((const redisReply *)v)->element[i];
}

static void string_of(const redisReply *r, const char **s, size_t *len)
{
    *s = r->type == REDIS_REPLY_STRING ? r->str : NULL;
    *len = r->type == REDIS_REPLY_STRING ? r->len : 0;
}

/* What the subscribe context received: a confirmation or a message, for the owner. */
static void on_push(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *rc = privdata;
    const redisReply *r = reply;
    redis_push_t p;
    if (!r || ac != rc->ctx[SUB].ac || rc->state != REDIS_CONN_READY ||
        r->type != REDIS_REPLY_ARRAY || r->elements < 3)
        return; /* NULL: the context is being freed; not READY: failing */
    redisReply **el = r->element;
    size_t at = 1; /* index of the name */
    p.pattern = false;
    if (r->elements == 3 && is(el[0], "message"))
        p.kind = REDIS_PUSH_MESSAGE;
    else if (r->elements == 4 && is(el[0], "pmessage")) {
        p.kind = REDIS_PUSH_MESSAGE;
        p.pattern = true;
        at = 2; /* after the pattern */
    } else if (el[1]->type == REDIS_REPLY_STRING && is(el[0], "subscribe"))
        p.kind = REDIS_PUSH_SUBSCRIBED;
    else if (el[1]->type == REDIS_REPLY_STRING && is(el[0], "psubscribe"))
        p.kind = REDIS_PUSH_PSUBSCRIBED;
    else
        return;
    string_of(el[at], &p.name, &p.name_len);
    p.data = NULL;
    p.data_len = 0;
    if (p.kind == REDIS_PUSH_MESSAGE)
        string_of(el[at + 1], &p.data, &p.data_len);
    rc->cb.push(rc->owner, &p);
}

/* A state change of rc at its level, or at debug level when rc is quiet. */
#define rlog(rc, level, ...) log_msg((rc)->quiet ? LOG_DEBUG : (level), __VA_ARGS__)

void redis_conn_quiet(redis_conn_t *rc)
{
    rc->quiet = true;
}

/* --- getting ready -------------------------------------------------------------------- */

static void become_ready(redis_conn_t *rc)
{
    const cluster_addr_t *a = &rc->addr;
    bool again = rc->was_ready;
    rc->state = REDIS_CONN_READY;
    uv_timer_stop(&rc->timer);
    if (a->user_len)
        rlog(rc, LOG_INFO, "redis %s: connected%s, authenticated as user %s", a->label,
             again ? " again" : "", a->user);
    else
        rlog(rc, LOG_INFO, "redis %s: connected%s%s", a->label, again ? " again" : "",
             a->pass_len ? ", authenticated" : "");
    rc->was_ready = true;
    rc->failures = 0;
    rc->logged = REDIS_CONN_ERR_NONE;
    rc->cb.ready(rc->owner, again);
}

/* The command context's first PING answered: Redis serves commands (a stopped or loading
 * server accepts TCP connections but does not answer, or answers -LOADING). */
static void on_ping(redisAsyncContext *ac, void *reply, void *privdata)
{
    redis_conn_t *rc = privdata;
    const redisReply *r = reply;
    if (!r || ac != rc->ctx[CMD].ac || rc->state != REDIS_CONN_CONNECTING)
        return; /* NULL: the context is being freed */
    if (r->type == REDIS_REPLY_ERROR) {
        /* -NOAUTH: Redis wants a password and the URL has none. */
        fail_as(rc, strncmp(r->str, "NOAUTH", 6) == 0 ? REDIS_CONN_ERR_AUTH : REDIS_CONN_ERR_NET,
                r->str);
        return;
    }
    rc->ctx[CMD].state = CTX_READY;
    if (rc->ctx[SUB].state == CTX_READY)
        become_ready(rc);
}

/* Context x is connected and, with credentials, authenticated. */
static void ctx_ready(ctx_t *x)
{
    redis_conn_t *rc = x->rc;
    if (x == &rc->ctx[CMD]) {
        /* Ready once it answers (the connect timer still runs). Never on the subscribe
         * context: hiredis 0.14 misroutes the reply of a PING there. */
        x->state = CTX_PINGING;
        if (redisAsyncCommand(x->ac, on_ping, rc, "PING") != REDIS_OK)
            fail_as(rc, REDIS_CONN_ERR_NET, "could not queue a PING");
        return;
    }
    x->state = CTX_READY;
    if (rc->ctx[CMD].state == CTX_READY && rc->state == REDIS_CONN_CONNECTING)
        become_ready(rc);
}

/* Redis has no password (Redis 6+ wording, then 5's): AUTH is pointless but harmless. */
static bool no_password_set(const redisReply *r)
{
    return strstr(r->str, "without any password configured") != NULL ||
           strstr(r->str, "no password is set") != NULL;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *privdata)
{
    ctx_t *x = privdata;
    redis_conn_t *rc = x->rc;
    const redisReply *r = reply;
    if (!r || ac != x->ac || rc->state != REDIS_CONN_CONNECTING)
        return; /* NULL: the context is being freed */
    if (r->type == REDIS_REPLY_ERROR && !no_password_set(r)) {
        fail_as(rc, REDIS_CONN_ERR_AUTH, r->str);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char buf[512];
        if (!rc->nopass_warned)
            rlog(rc, LOG_WARN,
                 "redis %s: a password is configured but this Redis has none (%s): "
                 "connecting without authentication",
                 rc->addr.label,
                 redis_conn_redact(r->str, rc->addr.pass, rc->addr.pass_len, buf, sizeof(buf)));
        rc->nopass_warned = true;
    } else {
        rc->nopass_warned = false;
    }
    ctx_ready(x);
}

/* AUTH [USER] PASSWORD, the first command on a new context (binary-safe: argv). */
static void send_auth(ctx_t *x)
{
    const cluster_addr_t *a = &x->rc->addr;
    const char *argv[3] = {"AUTH", a->user, a->pass};
    size_t lens[3] = {4, a->user_len, a->pass_len};
    int argc = 3;
    if (!a->user_len) {
        argv[1] = a->pass;
        lens[1] = a->pass_len;
        argc = 2;
    }
    x->state = CTX_AUTHENTICATING;
    if (redisAsyncCommandArgv(x->ac, on_auth, x, argc, argv, lens) != REDIS_OK)
        fail_as(x->rc, REDIS_CONN_ERR_NET, "could not queue AUTH");
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    ctx_t *x = cac->data;
    redisAsyncContext *ac = x->ac;
    if (ac != cac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns. */
        x->ac = NULL;
        fail_as(x->rc, REDIS_CONN_ERR_NET, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    redisEnableKeepAlive(&ac->c);
    if (x->rc->addr.pass_len)
        send_auth(x); /* before anything else */
    else
        ctx_ready(x);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    ctx_t *x = ac->data;
    if (ac != x->ac)
        return;   /* one we freed ourselves */
    x->ac = NULL; /* hiredis frees it when this returns */
    fail_as(x->rc, REDIS_CONN_ERR_NET,
            status == REDIS_OK || !ac->errstr[0] ? "connection closed" : ac->errstr);
}

/* --- connecting ----------------------------------------------------------------------- */

/* Opens context x to ip, a numeric address (hiredis then resolves nothing). */
static bool open_ctx(ctx_t *x, const char *ip)
{
    redis_conn_t *rc = x->rc;
    redisAsyncContext *ac = redisAsyncConnect(ip, rc->addr.port);
    if (!ac)
        return false;
    if (ac->err || redis_uv_attach(ac, rc->loop) != 0) {
        log_debug("redis %s: %s", rc->addr.label, ac->err ? ac->errstr : "cannot watch socket");
        redisAsyncFree(ac);
        return false;
    }
    ac->data = x;
    x->ac = ac;
    x->state = CTX_CONNECTING;
    redisAsyncSetConnectCallback(ac, on_connect); /* after the adapter: it arms the write */
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return true;
}

static void connect_to(redis_conn_t *rc, const char *ip)
{
    rc->state = REDIS_CONN_CONNECTING;
    if (!open_ctx(&rc->ctx[CMD], ip) || !open_ctx(&rc->ctx[SUB], ip))
        fail_as(rc, REDIS_CONN_ERR_NET, "could not open a connection");
}

static bool host_numeric(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return uv_inet_pton(AF_INET, host, a) == 0 || uv_inet_pton(AF_INET6, host, a) == 0;
}

/*
 * Writes to ip the address of res this attempt uses: the first IPv4 or IPv6 one, or after
 * failed attempts the next (failures modulo their count). False if res has none.
 */
static bool pick_address(const redis_conn_t *rc, const struct addrinfo *res, char *ip, size_t cap)
{
    uint32_t n = 0, k;
    const struct addrinfo *ai;
    for (ai = res; ai; ai = ai->ai_next)
        n += ai->ai_family == AF_INET || ai->ai_family == AF_INET6;
    if (!n)
        return false;
    k = rc->failures % n;
    for (ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
            continue;
        if (k-- == 0)
            break;
    }
    if (ai->ai_family == AF_INET)
        return uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, cap) == 0;
    return uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, cap) == 0;
}

/*
 * The resolver's answer (run on the loop). req->data is the connection, or NULL once it
 * gave the request up for good (redis_conn_close): then nothing but req and res is touched.
 */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    redis_conn_t *rc = req->data;
    char ip[INET6_ADDRSTRLEN];
    bool found = false;
    free(req);
    if (rc)
        rc->gai = NULL;
    if (!rc || rc->state != REDIS_CONN_RESOLVING) {
        uv_freeaddrinfo(res); /* canceled, or the attempt failed (timed out) meanwhile */
        return;
    }
    if (status == 0)
        found = pick_address(rc, res, ip, sizeof(ip));
    uv_freeaddrinfo(res);
    if (!found) {
        fail_as(rc, REDIS_CONN_ERR_DNS, status ? uv_strerror(status) : "no IPv4 or IPv6 address");
        return;
    }
    log_debug("redis %s: %s is %s", rc->addr.label, rc->addr.host, ip);
    connect_to(rc, ip);
}

/* Resolves the host on the libuv thread pool (getaddrinfo blocks): on_resolved goes on. */
static void resolve(redis_conn_t *rc)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    uv_getaddrinfo_t *req;
    int err;
    rc->state = REDIS_CONN_RESOLVING;
    if (rc->gai)
        return; /* the last attempt's resolution still runs: its answer serves this one */
    if (!(req = malloc(sizeof(*req)))) {
        fail_as(rc, REDIS_CONN_ERR_DNS, "out of memory");
        return;
    }
    req->data = rc;
    err = uv_getaddrinfo(rc->loop, req, on_resolved, rc->addr.host, NULL, &hints);
    if (err != 0) {
        free(req);
        fail_as(rc, REDIS_CONN_ERR_DNS, uv_strerror(err));
        return;
    }
    rc->gai = req;
}

/*
 * Stops waiting for the resolution. A request still queued is canceled (its callback gets
 * UV_ECANCELED); one the resolver is working on cannot be, and stays attached so that the
 * next attempt takes its answer, unless detach (the connection closes): its callback then
 * only frees it. Returns true if the resolver is still working on it (the loop runs until
 * it is done).
 */
static bool resolve_stop(redis_conn_t *rc, bool detach)
{
    if (!rc->gai)
        return false;
    bool running = uv_cancel((uv_req_t *)rc->gai) != 0;
    if (running && !detach)
        return true;
    rc->gai->data = NULL;
    rc->gai = NULL;
    return running;
}

/* An attempt: resolves the host first unless it is an address. The connect timer covers
 * both. */
static void attempt(redis_conn_t *rc)
{
    uv_timer_start(&rc->timer, on_timer, rc->timeout_ms, 0);
    if (host_numeric(rc->addr.host))
        connect_to(rc, rc->addr.host);
    else
        resolve(rc);
}

/* --- failing -------------------------------------------------------------------------- */

/* Logs a failure: at its level once per change of kind (not once per retry), else debug. */
static void log_fail(redis_conn_t *rc, redis_conn_err_t kind, const char *why, bool was_ready)
{
    const cluster_addr_t *a = &rc->addr;
    if (rc->closing)
        rlog(rc, LOG_INFO, "redis %s: disconnecting (the broker is stopping)", a->label);
    else if (kind == REDIS_CONN_ERR_AUTH && rc->logged != REDIS_CONN_ERR_AUTH)
        rlog(rc, LOG_ERROR,
             "redis %s: authentication failed (%s): %s; the shard stays down (publishing "
             "to its topics answers unavailable), retrying",
             a->label, why,
             a->pass_len ? "check the user and password of --redis (or "
                           "--redis-password, GALE_REDIS_PASSWORD)"
                         : "this Redis requires a password: give one in --redis "
                           "(redis://:PASSWORD@HOST:PORT) or GALE_REDIS_PASSWORD");
    else if (kind == REDIS_CONN_ERR_DNS && rc->logged != REDIS_CONN_ERR_DNS)
        rlog(rc, LOG_WARN,
             "redis %s: cannot resolve %s: %s; the shard stays down (publishing to its "
             "topics answers unavailable), retrying",
             a->label, a->host, why);
    else if (kind == REDIS_CONN_ERR_DNS)
        log_debug("redis %s: cannot resolve %s: %s", a->label, a->host, why);
    else if (was_ready)
        rlog(rc, LOG_WARN,
             "redis %s: connection lost (%s): publishing to its topics answers "
             "unavailable until it is back",
             a->label, why);
    else if (rc->logged != kind)
        rlog(rc, LOG_WARN, "redis %s: cannot connect (%s): retrying", a->label, why);
    else
        log_debug("redis %s: cannot connect (%s)", a->label, why);
    if (!rc->closing)
        rc->logged = kind;
}

/* The connection failed: DOWN at once, the owner told, the contexts freed from the timer. */
static void fail_as(redis_conn_t *rc, redis_conn_err_t kind, const char *why)
{
    char buf[512];
    bool was_ready = rc->state == REDIS_CONN_READY;
    if (rc->state != REDIS_CONN_RESOLVING && rc->state != REDIS_CONN_CONNECTING && !was_ready)
        return; /* already failing, or not in use */
    (void)resolve_stop(rc, false);
    why = redis_conn_redact(why, rc->addr.pass, rc->addr.pass_len, buf, sizeof(buf));
    log_fail(rc, kind, why, was_ready);
    rc->state = REDIS_CONN_DOWN;
    rc->ctx[CMD].state = rc->ctx[SUB].state = CTX_NONE;
    rc->cb.down(rc->owner, kind, why, was_ready);
    if (!rc->closing)
        uv_timer_start(&rc->timer, on_timer, 0, 0);
}

/* Frees both contexts, outside hiredis: their pending commands are answered DROPPED. */
static void reap(redis_conn_t *rc)
{
    for (int i = 0; i < 2; i++) {
        redisAsyncContext *ac = rc->ctx[i].ac;
        rc->ctx[i].ac = NULL;
        rc->ctx[i].state = CTX_NONE;
        if (ac)
            redisAsyncFree(ac);
    }
}

static void on_timer(uv_timer_t *t)
{
    redis_conn_t *rc = t->data;
    switch (rc->state) {
    case REDIS_CONN_DOWN:
        reap(rc);        /* the owner hears DROPPED answers here */
        if (rc->closing) /* defensive: nothing reconnects once closed */
            break;
        rc->state = REDIS_CONN_BACKOFF;
        uv_timer_start(&rc->timer, on_timer, redis_conn_backoff_ms(rc->failures, rnd(rc)), 0);
        rc->failures++;
        break;
    case REDIS_CONN_BACKOFF:
        attempt(rc);
        break;
    case REDIS_CONN_RESOLVING:
        fail_as(rc, REDIS_CONN_ERR_DNS, "timed out (--redis-timeout)");
        break;
    case REDIS_CONN_CONNECTING:
        fail_as(rc, REDIS_CONN_ERR_NET, "connect timed out");
        break;
    default:
        break;
    }
}

/* --- the interface -------------------------------------------------------------------- */

redis_conn_t *redis_conn_new(uv_loop_t *loop, const cluster_addr_t *addr, uint64_t timeout_ms,
                             uint64_t seed, const redis_conn_callbacks_t *cb, void *owner)
{
    redis_conn_t *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return NULL;
    rc->loop = loop;
    rc->cb = *cb;
    rc->owner = owner;
    rc->addr = *addr;
    rc->timeout_ms = timeout_ms;
    rc->rng = seed ? seed : 1;
    rc->state = REDIS_CONN_IDLE;
    for (int i = 0; i < 2; i++)
        rc->ctx[i].rc = rc;
    return rc;
}

void redis_conn_start(redis_conn_t *rc)
{
    if (rc->state != REDIS_CONN_IDLE)
        return;
    uv_timer_init(rc->loop, &rc->timer);
    rc->timer.data = rc;
    rc->started = true;
    attempt(rc);
}

int redis_conn_command_argv(redis_conn_t *rc, int argc, const char **argv, const size_t *lens)
{
    if (rc->state != REDIS_CONN_READY)
        return -1;
    return redisAsyncCommandArgv(rc->ctx[CMD].ac, on_reply, rc, argc, argv, lens) == REDIS_OK ? 0
                                                                                              : -1;
}

int redis_conn_subscribe(redis_conn_t *rc, bool pattern, bool subscribe, const char *name,
                         size_t len)
{
    static const char *const cmds[2][2] = {{"UNSUBSCRIBE", "PUNSUBSCRIBE"},
                                           {"SUBSCRIBE", "PSUBSCRIBE"}};
    const char *argv[2] = {cmds[subscribe][pattern], name};
    size_t lens[2] = {strlen(argv[0]), len};
    if (rc->state != REDIS_CONN_READY)
        return -1;
    return redisAsyncCommandArgv(rc->ctx[SUB].ac, subscribe ? on_push : NULL, rc, 2, argv, lens) ==
                   REDIS_OK
               ? 0
               : -1;
}

void redis_conn_fail(redis_conn_t *rc, const char *why)
{
    fail_as(rc, REDIS_CONN_ERR_NET, why);
}

void redis_conn_close(redis_conn_t *rc)
{
    if (!rc || rc->closing)
        return;
    rc->closing = true;
    if (rc->started)
        uv_close((uv_handle_t *)&rc->timer, NULL);
    if (resolve_stop(rc, true))
        rlog(rc, LOG_INFO,
             "redis %s: waiting for the resolver to finish with %s (it cannot be "
             "interrupted)",
             rc->addr.label, rc->addr.host);
    fail_as(rc, REDIS_CONN_ERR_NET, "stopping");
    rc->state = REDIS_CONN_CLOSED;
    reap(rc);
}

void redis_conn_free(redis_conn_t *rc)
{
    if (!rc)
        return;
    explicit_bzero(&rc->addr, sizeof(rc->addr));
    free(rc);
}

redis_conn_state_t redis_conn_state(const redis_conn_t *rc)
{
    return rc->state;
}

bool redis_conn_ready(const redis_conn_t *rc)
{
    return rc->state == REDIS_CONN_READY;
}

const char *redis_conn_label(const redis_conn_t *rc)
{
    return rc->addr.label;
}
