/*
 * http: HTTP on the WebSocket port. The state of every connection from its
 * accept until it becomes a WebSocket session or closes (http_conn_t): the
 * deadline of its request head (--handshake-timeout) and what lws 4.1.6 can
 * parse safely on it; and the broker's own endpoints, /healthz and /metrics
 * (static files from the web root are served by lws's file mount, the
 * publish API by api.c).
 *
 * lws 4.1.6 mishandles bytes that follow a request in the same read: a
 * request with a body taken from that buffer is read from the wrong offset
 * and spins the loop for good, and bytes after a body make it report the
 * body's completion again on every loop turn. So the rules here are: only
 * POST /api/publish takes a body; a request with a body is taken only as
 * the first one on its connection or after a publish answered with
 * keep-alive (whose answer checks that nothing followed it: api.c); the
 * broker's own answers (/healthz, /metrics, errors) close the connection.
 * Requests without a body on a keep-alive connection (static files) may be
 * pipelined: lws handles those.
 */
#ifndef GALE_HTTP_H
#define GALE_HTTP_H

#include "broker.h"

struct lws;
struct api_req;
struct iplimit_entry;

/** HTTP 429, not among lws 4.1.6's status names: --max-connections-per-ip. */
#define GALE_HTTP_TOO_MANY_REQUESTS 429

/**
 * One TCP connection while it speaks HTTP: lws's opaque user data of its wsi,
 * from the accept (http_conn_accept) until it upgrades (http_conn_upgraded) or
 * closes (http_conn_closed).
 */
typedef struct http_conn {
    uint64_t accepted_ms; /* broker_uptime_ms() at the accept */
    bool head_pending;    /* its first request head is not in yet (broker.nhandshakes) */
    bool bodyless_before; /* a request without a body was taken on this connection: lws
                             may hold pipelined bytes behind it */
    struct api_req *req;  /* the publish request in progress (api.c), or NULL */
    /* --max-connections-per-ip: the slot of an upgrade let in, held until it is established
       (then the session's) or closes (server.c); NULL: none */
    struct iplimit_entry *ip;
    bool conn_slot; /* --loops N > 1: it holds one of --max-connections (loops.h) */
} http_conn_t;

/** The http_conn_t of wsi, or NULL. */
http_conn_t *http_conn_of(struct lws *wsi);

/**
 * A connection was accepted (LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED):
 * its request head is awaited from now on. lws drops it when the head is not
 * in --handshake-timeout after it got a header buffer, or when it waited as
 * long for one (server_start sets both timeouts); http_conn_closed counts those
 * drops. Returns what the lws callback must return (-1: out of memory).
 */
int http_conn_accept(broker_t *b, struct lws *wsi);

/** The head of a WebSocket upgrade request is in (LWS_CALLBACK_HTTP_CONFIRM_UPGRADE). */
void http_conn_head_done(broker_t *b, struct lws *wsi);

/**
 * For every request that is not an upgrade (LWS_CALLBACK_FILTER_HTTP_CONNECTION,
 * before lws dispatches it): marks the connection's head in and tells whether
 * this request carries a body (a Content-Length above 0, any Transfer-Encoding,
 * or a POST, PUT or PATCH without a length) and whether a request without a
 * body came before it on this connection. NULL for a connection
 * http_conn_accept never saw.
 */
http_conn_t *http_conn_request(broker_t *b, struct lws *wsi, bool *has_body, bool *after_bodyless);

/**
 * LWS_CALLBACK_FILTER_HTTP_CONNECTION for every path but the publish API
 * (api_filter): refuses a request with a body (400, then closes). Returns
 * what the lws callback must return.
 */
int http_filter(broker_t *b, struct lws *wsi);

/** The connection became a WebSocket session (LWS_CALLBACK_ESTABLISHED): frees its state. */
void http_conn_upgraded(broker_t *b, struct lws *wsi);

/**
 * The connection closes (LWS_CALLBACK_CLOSED_HTTP, LWS_CALLBACK_WSI_DESTROY;
 * a second call does nothing): frees its state. Its publish request, if any,
 * must have been detached first (api_closed).
 */
void http_conn_closed(broker_t *b, struct lws *wsi);

/** Mount points served by http_serve. */
#define HTTP_HEALTHZ "/healthz"
#define HTTP_METRICS "/metrics"

/**
 * Answers one request on a callback mount (LWS_CALLBACK_HTTP), then closes
 * the connection. Returns what the lws callback must return.
 */
int http_serve(broker_t *b, struct lws *wsi);

/**
 * Refuses a request (a WebSocket upgrade at CONFIRM_UPGRADE, or any request
 * at FILTER_HTTP_CONNECTION) with an HTTP status and a short explanation in
 * text, then closes. Returns the value the lws callback must return.
 */
int http_refuse(broker_t *b, struct lws *wsi, unsigned status, const char *why);

#endif
