#include "http.h"

#include "cluster.h"
#include "log.h"

#include <libwebsockets.h>
#include <string.h>

static int respond(struct lws *wsi, unsigned status, const char *ctype, gale_buf_t *body)
{
    uint8_t hdr[LWS_PRE + 512], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof(hdr) - 1;
    size_t len = gale_buf_payload_len(body);
    int rc = -1;
    if (body->oom)
        goto Exit;
    if (lws_add_http_common_headers(wsi, status, ctype, len, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                     (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, start, &p, end))
        goto Exit;
    if (len && lws_write(wsi, gale_buf_payload(body), len, LWS_WRITE_HTTP_FINAL) < 0)
        goto Exit;
    rc = lws_http_transaction_completed(wsi) ? -1 : 0;
Exit:
    gale_buf_free(body);
    return rc;
}

int http_serve(broker_t *b, struct lws *wsi)
{
    char uri[64];
    gale_buf_t body;
    gale_buf_init(&body, LWS_PRE);
    metrics_gauges_t g;
    broker_gauges(b, &g);
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
        metrics_render(&b->m, &g, &body);
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
