#include "http.h"

#include "cluster.h"
#include "dedup.h"
#include "history.h"
#include "log.h"
#include "loops.h"
#include "mqtt.h"
#include "presence.h"
#include "server.h"
#include "session.h"

#include <inttypes.h>
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

http_conn_t *http_conn_of(struct lws *wsi)
{
    return lws_get_opaque_user_data(wsi);
}

/* The connection's first request head is in (or it closes first). */
static void head_done(broker_t *b, http_conn_t *c)
{
    if (!c->head_pending)
        return;
    c->head_pending = false;
    b->nhandshakes--;
}

int http_conn_accept(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    c->accepted_ms = broker_uptime_ms(b);
    c->head_pending = true;
    b->nhandshakes++;
    lws_set_opaque_user_data(wsi, c);
    return 0;
}

void http_conn_head_done(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    if (c)
        head_done(b, c);
}

void http_conn_upgraded(broker_t *b, struct lws *wsi)
{
    http_conn_closed(b, wsi); /* a WebSocket session keeps nothing of it */
}

void http_conn_closed(broker_t *b, struct lws *wsi)
{
    http_conn_t *c = http_conn_of(wsi);
    if (!c)
        return;
    lws_set_opaque_user_data(wsi, NULL);
    /*
     * lws drops a connection whose head is not in --handshake-timeout after it got a
     * header buffer (or that waited as long for one): closing without a head that long
     * after the accept (less the loop clock's lag behind lws's) is such a drop; sooner,
     * the client gave up.
     */
    if (c->head_pending &&
        broker_uptime_ms(b) - c->accepted_ms + 200 >= b->cfg.handshake_timeout_s * 1000) {
        b->m.handshake_timeouts++;
        log_debug("a connection sent no complete request head within --handshake-timeout "
                  "%" PRIu64 " s: dropped",
                  b->cfg.handshake_timeout_s);
    }
    head_done(b, c);
    free(c); /* api_closed detached its publish request first */
}

/* True if the request carries a body: a Content-Length above 0, any Transfer-Encoding, or
 * a method with a body and no Content-Length (which lws reads as 100 MiB of body). */
static bool request_has_body(struct lws *wsi)
{
    char clen[32];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        return true;
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
        if (lws_hdr_copy(wsi, clen, sizeof(clen), WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0)
            return true; /* too long to be a zero */
        for (const char *p = clen; *p; p++)
            if (*p != '0' && *p != ' ' && *p != '\t')
                return true;
        return false;
    }
    char *uri;
    int n;
    int m = lws_http_get_uri_and_method(wsi, &uri, &n);
    return m == LWSHUMETH_POST || m == LWSHUMETH_PUT || m == LWSHUMETH_PATCH;
}

http_conn_t *http_conn_request(broker_t *b, struct lws *wsi, bool *has_body, bool *after_bodyless)
{
    http_conn_t *c = http_conn_of(wsi);
    if (!c)
        return NULL; /* never accepted through http_conn_accept */
    head_done(b, c);
    *has_body = request_has_body(wsi);
    *after_bodyless = c->bodyless_before;
    if (!*has_body)
        c->bodyless_before = true;
    return c;
}

int http_filter(broker_t *b, struct lws *wsi)
{
    bool body, after_bodyless;
    if (!http_conn_request(b, wsi, &body, &after_bodyless))
        return -1;
    if (!body)
        return 0;
    b->m.http_refused++;
    return http_refuse(b, wsi, HTTP_STATUS_BAD_REQUEST,
                       "only POST /api/publish takes a request body");
}

/* Samples the gauges for /metrics and /healthz. */
static void gauges(const broker_t *b, metrics_gauges_t *g)
{
    memset(g, 0, sizeof(*g));
    g->connections = b->nsessions;
    g->subscriptions = topics_subscriptions(b->topics);
    g->topics = topics_count(b->topics);
    g->queued_bytes = session_queued_bytes(b);
    g->handshakes = b->nhandshakes;
    g->per_ip = server_client_addresses(b, &g->client_addresses);
    g->uptime_s = (double)broker_uptime_ms(b) / 1000.0;
    cluster_state(b->cluster, &g->redis_shards, &g->redis_up);
    if (b->history) {
        history_stats_t st;
        history_stats(b->history, &st);
        g->history = true;
        g->history_bytes = st.bytes;
        g->history_topics = st.topics;
        g->history_messages = st.messages;
        g->history_evicted = st.evicted;
        g->history_expired = st.expired;
        g->history_states_lost = st.states_lost;
    }
    uint64_t unused;
    if (b->loops)
        loops_lock(b->loops);
    dedup_stats(b->dedup, &g->dedup_entries, &unused);
    if (b->loops)
        loops_unlock(b->loops);
    g->presence = b->presence != NULL;
    presence_stats(b->presence, &g->presence_topics, &g->presence_members, &g->presence_bytes);
    mqtt_retained_stats(b, &g->mqtt_retained, &g->mqtt_retained_bytes);
}

/* One complete answer, then the connection closes. */
static int respond(struct lws *wsi, unsigned status, const char *ctype, gale_buf_t *body)
{
    uint8_t hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof(hdr) - 1;
    size_t len = gale_buf_payload_len(body);
    if (!body->oom && !lws_add_http_common_headers(wsi, status, ctype, len, &p, end) &&
        !lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                      (const unsigned char *)"no-store", 8, &p, end) &&
        !lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION, (const unsigned char *)"close", 5,
                                      &p, end) &&
        !lws_finalize_write_http_header(wsi, start, &p, end) && len)
        lws_write(wsi, gale_buf_payload(body), len, LWS_WRITE_HTTP_FINAL);
    gale_buf_free(body);
    return -1; /* lws sends what it still holds before closing */
}

int http_serve(broker_t *b, struct lws *wsi)
{
    char uri[64];
    gale_buf_t body;
    gale_buf_init(&body, LWS_PRE);
    metrics_t m;
    metrics_gauges_t g;
    gauges(b, &g);
    loops_sync(b);
    loops_sum(b, &m, &g); /* this loop's figures, with the other loops' */
    if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) <= 0) {
        gale_buf_append(&body, "method not allowed\n", 19);
        return respond(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, "text/plain", &body);
    }
    if (strcmp(uri, HTTP_HEALTHZ) == 0) {
        /*
         * 200 even when "degraded" (a Redis shard down): this is liveness. A load balancer
         * or orchestrator that pulled every broker out whenever Redis blinked would cut
         * every client off, including those that only read from local publishers.
         */
        metrics_render_health(&g, b->node_id, &body);
        return respond(wsi, HTTP_STATUS_OK, "application/json", &body);
    }
    if (strcmp(uri, HTTP_METRICS) == 0) {
        metrics_render(&m, &g, &body);
        cluster_render_metrics(b->cluster, &body);
        return respond(wsi, HTTP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8", &body);
    }
    gale_buf_append(&body, "not found\n", 10);
    return respond(wsi, HTTP_STATUS_NOT_FOUND, "text/plain", &body);
}

static const char *reason_phrase(unsigned status)
{
    switch (status) {
    case HTTP_STATUS_BAD_REQUEST:
        return "Bad Request";
    case HTTP_STATUS_UNAUTHORIZED:
        return "Unauthorized";
    case HTTP_STATUS_FORBIDDEN:
        return "Forbidden";
    case HTTP_STATUS_NOT_FOUND:
        return "Not Found";
    case GALE_HTTP_TOO_MANY_REQUESTS:
        return "Too Many Requests";
    case HTTP_STATUS_SERVICE_UNAVAILABLE:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

int http_refuse(broker_t *b, struct lws *wsi, unsigned status, const char *why)
{
    /*
     * Written raw: at CONFIRM_UPGRADE lws has not parsed the request version
     * yet and its own status helpers answer "HTTP/1.0", which WebSocket
     * clients reject before reading the status.
     */
    char buf[LWS_PRE + 512];
    char *p = buf + LWS_PRE;
    int n = snprintf(p, sizeof(buf) - LWS_PRE,
                     "HTTP/1.1 %u %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\n"
                     "cache-control: no-store\r\n%sconnection: close\r\n\r\n%s\n",
                     status, reason_phrase(status), strlen(why) + 1,
                     status == HTTP_STATUS_UNAUTHORIZED ? "www-authenticate: Bearer\r\n" : "", why);
    b->m.connections_refused++;
    log_debug("upgrade refused with HTTP %u: %s", status, why);
    if (n > 0 && (size_t)n < sizeof(buf) - LWS_PRE)
        lws_write(wsi, (unsigned char *)p, (size_t)n, LWS_WRITE_HTTP);
    return -1;
}
