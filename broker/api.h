/*
 * api: the HTTP API for backends (--api-key): publish, read history and presence.
 *
 *   POST /api/publish
 *   Authorization: Bearer KEY
 *   {"topic": "chat.room1", "data": <any JSON>}
 *   -> 200 {"ok":true}   or   4xx/5xx {"ok":false,"code":"bad_topic","msg":"..."}
 *
 *   {"messages": [{"topic": ..., "data": ...}, ...]}
 *   -> 200 {"ok":<all ok>,"results":[{"ok":true},{"ok":false,"code":...,"msg":...},...]}
 *
 *   A message may carry "mid" (as a WebSocket pub does); on a topic with history the
 *   result is {"ok":true,"ep":E,"off":N}, a duplicate's {"ok":true,"dup":true,"off":N}.
 *
 *   GET /api/history?topic=T&limit=N
 *   -> 200 {"op":"hist","ep":E,"off":N,"msgs":[{"off":K,"data":D},...]}, the answer a
 *      JSON WebSocket client gets to `hist`
 *
 *   GET /api/presence?topic=T
 *   -> 200 {"op":"presence","topic":T,"count":C,"members":[...]}, the answer a JSON
 *      WebSocket client gets to `presence`
 *
 * A message goes the way of a WebSocket `pub`: local subscribers, and in a
 * cluster the Redis bus, whose acceptance the answer waits for. The request
 * lives on the heap (held by the connection's http_conn_t), so that replies
 * from the cluster may outlive the HTTP connection.
 */
#ifndef GALE_API_H
#define GALE_API_H

#include "broker.h"

struct lws;

/** The API's mount point and endpoint. */
#define API_MOUNT "/api"
#define API_PUBLISH "/api/publish"
#define API_HISTORY "/api/history"
#define API_PRESENCE "/api/presence"

/**
 * True when the request (any method) is for API_MOUNT: its path is "/api" or
 * starts with "/api/". Copies the path into uri (truncated to cap).
 */
bool api_owns(struct lws *wsi, char *uri, size_t cap);
/**
 * LWS_CALLBACK_HTTP on a request api_owns: checks the path, the method, an
 * Expect header, the key and the size, then answers "Expect: 100-continue"
 * with an interim 100. A refusal is the final status at once, and closes.
 */
int api_http(broker_t *b, struct lws *wsi, const char *uri);
/** LWS_CALLBACK_HTTP_BODY. */
int api_body(broker_t *b, struct lws *wsi, const void *in, size_t len);
/** LWS_CALLBACK_HTTP_BODY_COMPLETION: publishes. */
int api_body_done(broker_t *b, struct lws *wsi);
/**
 * A refusal before (or instead of) publishing: status with one JSON error
 * object, then the connection closes. Returns what the lws callback must return.
 */
int api_refuse(struct lws *wsi, unsigned status, const char *code, const char *why);
/**
 * LWS_CALLBACK_HTTP_WRITEABLE: writes the answer once every message has its
 * result; keeps the connection unless bytes followed the body.
 */
int api_writeable(broker_t *b, struct lws *wsi);
/**
 * LWS_CALLBACK_FILTER_HTTP_CONNECTION for a request api_owns: refuses a body
 * that follows a request without one on its connection (lws 4.1.6 may read it
 * from its pipeline buffer, wrongly: http.h). Returns what the callback must
 * return.
 */
int api_filter(broker_t *b, struct lws *wsi);
/**
 * The HTTP connection closes (before http_conn_closed): detaches its publish
 * request, freed unless the cluster still holds some of its messages.
 */
void api_closed(struct lws *wsi);

#endif
