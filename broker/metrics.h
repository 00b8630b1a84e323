/*
 * metrics: the broker's counters and their Prometheus text exposition
 * (served at /metrics) and the /healthz summary.
 */
#ifndef GALE_METRICS_H
#define GALE_METRICS_H

#include "gale_protocol.h"

#include <stdint.h>

typedef struct metrics {
    uint64_t connections_accepted;            /* WebSocket upgrades completed */
    uint64_t connections_refused;             /* upgrades answered 4xx/5xx */
    uint64_t messages_published;              /* pub requests routed */
    uint64_t messages_delivered;              /* msg frames queued to subscribers */
    uint64_t bytes_out;                       /* bytes handed to sockets by the flush path */
    uint64_t writes;                          /* socket writes of the flush path */
    uint64_t slow_consumer_closes;            /* closes with 4001 */
    uint64_t keepalive_closes;                /* connections dropped after an unanswered ping */
    uint64_t oversize_closes;                 /* closes with 1009 */
    uint64_t protocol_errors[GALE_ERR_COUNT]; /* err replies by code */
} metrics_t;

/** Gauges sampled when rendering. */
typedef struct metrics_gauges {
    uint64_t connections;
    uint64_t subscriptions;
    uint64_t topics;
    uint64_t queued_bytes;
    double uptime_s;
} metrics_gauges_t;

/** Appends the Prometheus text exposition (version 0.0.4) of m and g to out. */
gale_err_t metrics_render(const metrics_t *m, const metrics_gauges_t *g, gale_buf_t *out);

/** Appends the /healthz JSON body to out. */
gale_err_t metrics_render_health(const metrics_gauges_t *g, const char *node, gale_buf_t *out);

#endif
