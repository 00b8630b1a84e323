/*
 * http: the broker's own HTTP endpoints on the WebSocket port, /healthz and
 * /metrics (static files from the web root are served by lws's file mount).
 */
#ifndef GALE_HTTP_H
#define GALE_HTTP_H

#include "broker.h"

struct lws;

/** Mount points served by http_serve. */
#define HTTP_HEALTHZ "/healthz"
#define HTTP_METRICS "/metrics"

/**
 * Answers one request on a callback mount (LWS_CALLBACK_HTTP). Returns what
 * the lws callback must return: 0 to keep the connection, non-zero to close.
 */
int http_serve(broker_t *b, struct lws *wsi);

/**
 * Refuses a WebSocket upgrade with an HTTP status and a short explanation.
 * Returns the value the CONFIRM_UPGRADE callback must return.
 */
int http_refuse(broker_t *b, struct lws *wsi, unsigned status, const char *why);

#endif
