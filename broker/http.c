#include "http.h"

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
        metrics_render_health(&g, b->node_id, &body);
        return respond(wsi, HTTP_STATUS_OK, "application/json", &body);
    }
    if (strcmp(uri, HTTP_METRICS) == 0) {
        metrics_render(&b->m, &g, &body);
        return respond(wsi, HTTP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8", &body);
    }
    gale_buf_append(&body, "not found\n", 10);
    return respond(wsi, HTTP_STATUS_NOT_FOUND, "text/plain", &body);
}

int http_refuse(broker_t *b, struct lws *wsi, unsigned status, const char *why)
{
    b->m.connections_refused++;
    log_debug("upgrade refused with HTTP %u: %s", status, why);
    lws_return_http_status(wsi, status, why);
    return 1;
}
