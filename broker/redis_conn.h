/*
 * redis_conn: one connection to one Redis server on the broker's libuv loop, kept up:
 * resolved, connected, authenticated, checked, and made again after any failure. The
 * cluster (cluster.c) holds one per shard and knows nothing of hiredis.
 *
 * To hiredis 0.14.1 (through redis_uv.c) a connection that both publishes and subscribes
 * is two contexts, two sockets: a context in subscribe mode takes no other command, and a
 * PING on it has its reply misrouted. So a redis_conn_t owns two, the command context
 * (PUBLISH) and the subscribe context (SUBSCRIBE, PSUBSCRIBE and what Redis pushes); they
 * are opened, failed, freed and opened again together, and the connection is READY when
 * both are. This is the unit that fails: its backoff, its logs and the shard's state in
 * /healthz and /metrics are the connection's, never one context's.
 *
 *   IDLE ─start─> RESOLVING ──address──> CONNECTING ──both contexts ready──> READY
 *                 (host names only)      each context: connect, then AUTH when there are
 *                                        credentials; then a PING on the command context
 *   RESOLVING, CONNECTING, READY ──any failure──> DOWN ──0 ms──> BACKOFF ──d──> RESOLVING...
 *   any ─redis_conn_close─> CLOSED
 *
 * A failure is a connect error, a disconnect, a refused AUTH (or -NOAUTH to the PING), a
 * PING answered with an error (a loading Redis), the connect timer (armed over resolution
 * and connection: the timeout given to redis_conn_new), or the owner's redis_conn_fail
 * (its command timeouts). It is logged at its level once per change of kind and at debug
 * level otherwise, with the password masked; the owner learns of it at once (`down`, new
 * work is refused from then on). The contexts are freed from the connection's timer at
 * 0 ms, never inside a hiredis callback; freeing answers their pending commands DROPPED,
 * in order. The same timer then waits the backoff (redis_conn_backoff_ms) and connects
 * again. Host names are resolved with uv_getaddrinfo on libuv's thread pool (getaddrinfo
 * blocks); each attempt takes the next address of the answer.
 */
#ifndef GALE_REDIS_CONN_H
#define GALE_REDIS_CONN_H

#include "cluster_wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct redis_conn redis_conn_t;

typedef enum {
    REDIS_CONN_IDLE,       /* made, not started */
    REDIS_CONN_RESOLVING,  /* the host name is being resolved; connect timer armed */
    REDIS_CONN_CONNECTING, /* contexts connecting, authenticating, PING; connect timer armed */
    REDIS_CONN_READY,      /* both contexts ready: commands may be sent */
    REDIS_CONN_DOWN,       /* failed: the contexts are freed from a 0 ms timer */
    REDIS_CONN_BACKOFF,    /* waiting before the next attempt */
    REDIS_CONN_CLOSED,     /* closed for good (redis_conn_close) */
} redis_conn_state_t;

/** Kinds of failure: each is logged once per change of kind. */
typedef enum {
    REDIS_CONN_ERR_NONE,
    REDIS_CONN_ERR_NET,  /* connect error, disconnect, timeout, error reply, redis_conn_fail */
    REDIS_CONN_ERR_AUTH, /* AUTH refused, or -NOAUTH: Redis wants a password and has none */
    REDIS_CONN_ERR_DNS,  /* the host name did not resolve (error, no address, timeout) */
} redis_conn_err_t;

/** How a command of redis_conn_command_argv was answered. */
typedef enum {
    REDIS_CONN_REPLY_OK,      /* any answer but an error */
    REDIS_CONN_REPLY_ERROR,   /* an error reply (its text is given) */
    REDIS_CONN_REPLY_DROPPED, /* none: the context went down or was freed first */
} redis_conn_reply_t;

/** A reply's value, read through the redis_value_ functions (hiredis stays inside). */
typedef struct redis_value redis_value_t;

typedef enum {
    REDIS_VALUE_OTHER,   /* status, error, or a kind the broker does not read */
    REDIS_VALUE_STRING,  /* a bulk string */
    REDIS_VALUE_INTEGER, /* an integer */
    REDIS_VALUE_ARRAY,   /* an array (a Lua table) */
    REDIS_VALUE_NIL,     /* nil (a Lua false or nil) */
} redis_value_kind_t;

/** The kind of v (NULL: OTHER). */
redis_value_kind_t redis_value_kind(const redis_value_t *v);
/** A STRING's bytes and length; NULL for any other kind. */
const char *redis_value_str(const redis_value_t *v, size_t *len);
/** An INTEGER's value; 0 for any other kind. */
long long redis_value_int(const redis_value_t *v);
/** An ARRAY's elements; 0 for any other kind. */
size_t redis_value_count(const redis_value_t *v);
/** Element i of an ARRAY; NULL out of range or for any other kind. */
const redis_value_t *redis_value_at(const redis_value_t *v, size_t i);

/** What the subscribe context received. */
typedef enum {
    REDIS_PUSH_MESSAGE,     /* a message (of a SUBSCRIBE, or of a PSUBSCRIBE: pmessage) */
    REDIS_PUSH_SUBSCRIBED,  /* a SUBSCRIBE confirmed */
    REDIS_PUSH_PSUBSCRIBED, /* a PSUBSCRIBE confirmed */
} redis_push_kind_t;

typedef struct {
    redis_push_kind_t kind;
    /* MESSAGE: the channel the message was published to; (P)SUBSCRIBED: the channel or
     * pattern confirmed. NULL when Redis sent something else than a string. */
    const char *name;
    size_t name_len;
    bool pattern; /* MESSAGE: it came through a PSUBSCRIBE (a pmessage) */
    /* MESSAGE: the message; NULL when Redis sent something else than a string. */
    const char *data;
    size_t data_len;
} redis_push_t;

/**
 * What a connection tells its owner. Each is called on the loop, possibly from inside a
 * hiredis callback: it may call any redis_conn_ function of this connection but
 * redis_conn_close and redis_conn_free (which free contexts: close from a fresh loop turn).
 */
typedef struct {
    /**
     * The connection is READY (logged "connected"). again: it was READY before, this is a
     * reconnection. Subscriptions are not kept across connections: send them again here.
     */
    void (*ready)(void *owner, bool again);
    /**
     * The connection failed (kind; why, with the password masked, already logged) or is
     * being closed (kind NET): it is DOWN already and refuses commands. was_ready: it was
     * READY (a lost connection) rather than trying to be (a failed attempt). The answers of
     * commands still pending come later, DROPPED, when the contexts are freed.
     */
    void (*down)(void *owner, redis_conn_err_t kind, const char *why, bool was_ready);
    /**
     * The answer to a command of redis_conn_command_argv, exactly once per command queued,
     * in the order they were queued. err[0..err_len): Redis's error text (ERROR only);
     * value: the reply (OK only; valid during the call).
     */
    void (*reply)(void *owner, redis_conn_reply_t answer, const char *err, size_t err_len,
                  const redis_value_t *value);
    /** The subscribe context received p (pointers valid during the call) while READY. */
    void (*push)(void *owner, const redis_push_t *p);
} redis_conn_callbacks_t;

/**
 * Makes a connection to addr (copied, credentials included; addr.host may be a name or a
 * numeric address) on loop, IDLE: no handle or socket until redis_conn_start. timeout_ms
 * bounds each attempt (resolution, connect, AUTH, PING); seed (non-zero) draws the backoff
 * jitter. cb is copied; owner is handed to every callback. Returns NULL when out of memory.
 */
redis_conn_t *redis_conn_new(uv_loop_t *loop, const cluster_addr_t *addr, uint64_t timeout_ms,
                             uint64_t seed, const redis_conn_callbacks_t *cb, void *owner);

/** Logs rc's state changes at debug level (--loops: the first loop's say the same). */
void redis_conn_quiet(redis_conn_t *rc);

/** Starts connecting an IDLE connection (it reconnects by itself from then on). */
void redis_conn_start(redis_conn_t *rc);

/**
 * Sends argv[0..argc) (binary-safe: lens) on the command context of a READY connection;
 * its answer goes to cb.reply. Returns 0, or -1 when not READY or hiredis did not queue it
 * (no reply will come).
 */
int redis_conn_command_argv(redis_conn_t *rc, int argc, const char **argv, const size_t *lens);

/**
 * Sends SUBSCRIBE name[0..len) (pattern: PSUBSCRIBE), or with !subscribe UNSUBSCRIBE
 * (PUNSUBSCRIBE), on the subscribe context of a READY connection. Confirmations of
 * subscriptions and the messages Redis pushes go to cb.push; unsubscriptions are not
 * reported. Returns 0, or -1 when not READY or hiredis did not queue it (hiredis sends no
 * UNSUBSCRIBE on a context subscribed to nothing).
 */
int redis_conn_subscribe(redis_conn_t *rc, bool pattern, bool subscribe, const char *name,
                         size_t len);

/**
 * The owner found the connection failing (why: e.g. a command timed out): a NET failure,
 * as if hiredis had reported it. Nothing happens unless RESOLVING, CONNECTING or READY.
 */
void redis_conn_fail(redis_conn_t *rc, const char *why);

/**
 * Closes rc for good: a connection in use goes down ("disconnecting", cb.down), its
 * contexts are freed now (pending answers DROPPED), its timer is closed and nothing
 * reconnects. A resolution that cannot be interrupted is left to finish (the loop runs
 * until it does) and is then ignored. Safe to call twice and on NULL.
 */
void redis_conn_close(redis_conn_t *rc);

/**
 * Frees rc: never started, or closed by redis_conn_close and the loop run since (its
 * timer's close completes). The copy of the credentials is wiped. NULL is ignored.
 */
void redis_conn_free(redis_conn_t *rc);

/** The state of rc. */
redis_conn_state_t redis_conn_state(const redis_conn_t *rc);

/** True when rc is READY. */
bool redis_conn_ready(const redis_conn_t *rc);

/** rc's name in logs and metrics: its address's label ("host:port/db", no credentials). */
const char *redis_conn_label(const redis_conn_t *rc);

/* --- pure helpers (unit-tested) ------------------------------------------------------ */

/** Shortest and longest backoff before the 0th and the 6th-or-later retry. */
#define REDIS_CONN_BACKOFF_MIN_MS 100
#define REDIS_CONN_BACKOFF_MAX_MS 5000

/**
 * The delay before reconnecting after `failures` failed attempts in a row (0 after the
 * first failure): d = 100 ms x 2^failures, at most 5 s, then jittered uniformly into
 * [d/2, d] by `random` (any 64-bit number), so brokers do not reconnect in step.
 */
uint64_t redis_conn_backoff_ms(uint32_t failures, uint64_t random);

/**
 * why, with every occurrence of secret[0..secret_len) (NUL-terminated) replaced by "***":
 * why itself when it holds none (or secret_len is 0), else out[0..cap) (NUL-terminated,
 * truncated to fit, never in the middle of a secret).
 */
const char *redis_conn_redact(const char *why, const char *secret, size_t secret_len, char *out,
                              size_t cap);

#endif
