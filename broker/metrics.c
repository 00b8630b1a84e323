#include "metrics.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>

static void appendf(gale_buf_t *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void appendf(gale_buf_t *out, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        gale_buf_append(out, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void metric(gale_buf_t *out, const char *name, const char *type, const char *help,
                   uint64_t v)
{
    appendf(out, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

/*
 * One metric labelled proto="gale"|"mqtt"|"nats". total != UINT64_MAX: v[0] is not kept but
 * derived, total less the others (a gauge of all connections).
 */
static void by_proto(gale_buf_t *out, const char *name, const char *type, const char *help,
                     const uint64_t v[METRICS_PROTOS], uint64_t total)
{
    static const char *const names[METRICS_PROTOS] = {"gale", "mqtt", "nats"};
    appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int i = 0; i < METRICS_PROTOS; i++) {
        uint64_t x = v[i];
        if (i == 0 && total != UINT64_MAX) {
            x = total;
            for (int j = 1; j < METRICS_PROTOS; j++)
                x -= x >= v[j] ? v[j] : x;
        }
        appendf(out, "%s{proto=\"%s\"} %" PRIu64 "\n", name, names[i], x);
    }
}

gale_err_t metrics_render(const metrics_t *m, const metrics_gauges_t *g, gale_buf_t *out)
{
    metric(out, "gale_connections", "gauge", "Open WebSocket connections.", g->connections);
    uint32_t nloops = g->loops ? g->loops : 1;
    metric(out, "gale_loops", "gauge", "Event loops (--loops), each a thread.", nloops);
    appendf(out, "# HELP gale_loop_connections Open WebSocket connections of each loop.\n"
                 "# TYPE gale_loop_connections gauge\n");
    for (uint32_t i = 0; i < nloops && i < METRICS_LOOPS_MAX; i++)
        appendf(out, "gale_loop_connections{loop=\"%" PRIu32 "\"} %" PRIu64 "\n", i,
                nloops == 1 ? g->connections : g->loop_connections[i]);
    metric(out, "gale_subscriptions", "gauge", "Subscriptions held by all connections.",
           g->subscriptions);
    metric(out, "gale_topics", "gauge", "Distinct topics and patterns with a subscriber.",
           g->topics);
    metric(out, "gale_queued_bytes", "gauge", "Bytes waiting in outbound queues.", g->queued_bytes);
    by_proto(out, "gale_protocol_connections", "gauge",
             "Open connections by wire protocol (gale v1 at /ws, MQTT at /mqtt, NATS at /nats).",
             m->proto_connections, g->connections);
    by_proto(out, "gale_protocol_messages_published_total", "counter",
             "Messages published by connections of each wire protocol.", m->proto_published,
             UINT64_MAX);
    by_proto(out, "gale_protocol_messages_delivered_total", "counter",
             "Messages queued to connections of each wire protocol.", m->proto_delivered,
             UINT64_MAX);
    by_proto(out, "gale_protocol_errors_total", "counter",
             "Connections of each wire protocol closed for a protocol error.", m->proto_errors,
             UINT64_MAX);
    metric(out, "gale_connections_accepted_total", "counter", "WebSocket upgrades accepted.",
           m->connections_accepted);
    metric(out, "gale_connections_refused_total", "counter",
           "WebSocket upgrades refused with an HTTP error.", m->connections_refused);
    metric(out, "gale_connections_refused_per_ip_total", "counter",
           "WebSocket upgrades refused with HTTP 429: the client address held "
           "--max-connections-per-ip connections (also in gale_connections_refused_total).",
           m->connections_refused_per_ip);
    if (g->per_ip)
        metric(out, "gale_client_addresses", "gauge",
               "Client addresses holding WebSocket connections (--max-connections-per-ip).",
               g->client_addresses);
    metric(out, "gale_messages_published_total", "counter", "Messages published by clients.",
           m->messages_published);
    metric(out, "gale_messages_delivered_total", "counter",
           "Messages queued to subscribing connections.", m->messages_delivered);
    metric(out, "gale_bytes_out_total", "counter", "Bytes written to WebSocket connections.",
           m->bytes_out);
    metric(out, "gale_socket_writes_total", "counter",
           "Coalesced socket writes to WebSocket connections.", m->writes);
    metric(out, "gale_slow_consumer_closes_total", "counter",
           "Connections closed with 4001 for an outbound queue over its limit.",
           m->slow_consumer_closes);
    metric(out, "gale_keepalive_closes_total", "counter",
           "Connections dropped after an unanswered keepalive ping.", m->keepalive_closes);
    metric(out, "gale_oversize_closes_total", "counter",
           "Connections closed with 1009 for a message over the size limit.", m->oversize_closes);
    metric(out, "gale_invalid_utf8_closes_total", "counter",
           "Connections closed with 1007 for a text message that is not UTF-8.",
           m->invalid_utf8_closes);
    metric(out, "gale_invalid_close_frames_total", "counter",
           "Close frames from clients that break RFC 6455, answered with 1002.",
           m->invalid_close_frames);
    metric(out, "gale_handshakes", "gauge",
           "Connections accepted whose first request head is not in yet.", g->handshakes);
    metric(out, "gale_handshake_timeouts_total", "counter",
           "Connections dropped for a request head not in within --handshake-timeout.",
           m->handshake_timeouts);
    metric(out, "gale_http_refused_total", "counter",
           "HTTP requests refused for a body lws cannot take safely (then closed).",
           m->http_refused);
    appendf(out, "# HELP gale_protocol_errors_total Error replies sent, by code.\n"
                 "# TYPE gale_protocol_errors_total counter\n");
    for (int c = GALE_ERR_BAD_REQUEST; c < GALE_ERR_COUNT; c++)
        appendf(out, "gale_protocol_errors_total{code=\"%s\"} %" PRIu64 "\n",
                gale_err_name((gale_err_t)c), m->protocol_errors[c]);
    appendf(out,
            "# HELP gale_recoveries_total Subscriptions with since, by outcome.\n"
            "# TYPE gale_recoveries_total counter\n"
            "gale_recoveries_total{recovered=\"true\"} %" PRIu64 "\n"
            "gale_recoveries_total{recovered=\"false\"} %" PRIu64 "\n",
            m->recoveries[1], m->recoveries[0]);
    appendf(out,
            "# HELP gale_token_refreshes_total Refresh requests (a new token on a live "
            "connection), by outcome.\n"
            "# TYPE gale_token_refreshes_total counter\n"
            "gale_token_refreshes_total{outcome=\"ok\"} %" PRIu64 "\n"
            "gale_token_refreshes_total{outcome=\"refused\"} %" PRIu64 "\n",
            m->refreshes[1], m->refreshes[0]);
    metric(out, "gale_refresh_dropped_subscriptions_total", "counter",
           "Subscriptions dropped by a refresh whose new token does not allow them.",
           m->refresh_dropped);
    metric(out, "gale_messages_replayed_total", "counter",
           "Messages queued to recovering subscribers from history.", m->messages_replayed);
    metric(out, "gale_publish_duplicates_total", "counter",
           "Publishes not delivered again: their mid was seen within --dedup-window.",
           m->publish_duplicates);
    metric(out, "gale_history_gaps_total", "counter",
           "Times a topic's live subscribers had missed messages (a jump in offsets, a "
           "reconnection) and got them from its Redis stream (cluster).",
           m->history_gaps);
    metric(out, "gale_recoveries_cached_total", "counter",
           "Recoveries a broker of a cluster served from a topic's recent messages, without "
           "reading Redis.",
           m->recoveries_cached);
    metric(out, "gale_dedup_entries", "gauge", "Mids remembered for --dedup-window.",
           g->dedup_entries);
    if (g->history) {
        metric(out, "gale_history_bytes", "gauge",
               "Bytes of history held (messages, their frames, topic states).", g->history_bytes);
        metric(out, "gale_history_topics", "gauge", "Topics with a history state.",
               g->history_topics);
        metric(out, "gale_history_messages", "gauge", "Messages held in history.",
               g->history_messages);
        metric(out, "gale_history_evicted_total", "counter",
               "Messages dropped from history to stay within --history-memory.",
               g->history_evicted);
        metric(out, "gale_history_expired_total", "counter",
               "Messages dropped from history by their TTL.", g->history_expired);
        metric(out, "gale_history_epochs_ended_total", "counter",
               "Topic states dropped to stay within --history-memory (their epoch ended).",
               g->history_states_lost);
    }
    metric(out, "gale_mqtt_retained_messages", "gauge",
           "MQTT retained messages held by this broker (in Redis in a cluster: 0 here).",
           g->mqtt_retained);
    metric(out, "gale_mqtt_retained_bytes", "gauge",
           "Bytes of the MQTT retained messages this broker holds (--mqtt-retained-memory).",
           g->mqtt_retained_bytes);
    if (g->presence) {
        metric(out, "gale_presence_topics", "gauge",
               "Topics with members on this node (or presence scripts in flight).",
               g->presence_topics);
        metric(out, "gale_presence_members", "gauge",
               "Memberships (connection, topic) held on this node.", g->presence_members);
        metric(out, "gale_presence_bytes", "gauge",
               "Bytes of presence held on this node (members, topic states), bounded by "
               "--presence-memory.",
               g->presence_bytes);
        metric(out, "gale_presence_joins_total", "counter",
               "Connections that became present on a topic on this node.", m->presence_joins);
        metric(out, "gale_presence_leaves_total", "counter",
               "Connections that stopped being present on a topic on this node.",
               m->presence_leaves);
        metric(out, "gale_presence_events_total", "counter",
               "Join and leave events queued to watchers.", m->presence_events);
        metric(out, "gale_presence_counts_total", "counter",
               "Count-only presence messages queued to watchers (topics above "
               "--presence-events-max).",
               m->presence_counts);
    }
    if (nloops > 1)
        metric(out, "gale_loop_backlogs_total", "counter",
               "Times a loop found another loop's inbox over its bound and paused its "
               "publishers until it was drained.",
               m->loops_backlogs);
    if (g->redis_shards) {
        metric(out, "gale_redis_shards", "gauge", "Redis shards configured (--redis).",
               g->redis_shards);
        metric(out, "gale_redis_connected", "gauge",
               "Redis shards with both connections (subscribe, publish) ready.", g->redis_up);
        metric(out, "gale_redis_publishes_total", "counter", "PUBLISH commands sent to Redis.",
               m->redis_publishes);
        metric(out, "gale_redis_messages_received_total", "counter",
               "Messages received from Redis subscriptions.", m->redis_received);
        metric(out, "gale_redis_duplicates_dropped_total", "counter",
               "Messages from Redis dropped as copies of one already delivered.",
               m->redis_duplicates);
        metric(out, "gale_redis_echoes_dropped_total", "counter",
               "Messages from Redis dropped as this node's own (delivered when published).",
               m->redis_echoes);
        metric(out, "gale_redis_invalid_dropped_total", "counter",
               "Messages from Redis dropped as malformed.", m->redis_invalid);
        metric(out, "gale_redis_reconnects_total", "counter",
               "Redis shards connected again after losing their connection.", m->redis_reconnects);
        metric(out, "gale_redis_connect_failures_total", "counter",
               "Failed attempts to connect to a Redis shard.", m->redis_connect_failures);
    }
    appendf(out,
            "# HELP gale_uptime_seconds Seconds since the broker started.\n"
            "# TYPE gale_uptime_seconds gauge\ngale_uptime_seconds %.3f\n",
            g->uptime_s);
    return out->oom ? GALE_ERR_INTERNAL : GALE_OK;
}

gale_err_t metrics_render_health(const metrics_gauges_t *g, const char *node, gale_buf_t *out)
{
    /* node ids are printable ASCII without quotes or backslashes (config.c). */
    bool degraded = g->redis_shards && g->redis_up < g->redis_shards;
    appendf(out,
            "{\"status\":\"%s\",\"node\":\"%s\",\"connections\":%" PRIu64
            ",\"subscriptions\":%" PRIu64 ",\"uptime_s\":%.3f",
            degraded ? "degraded" : "ok", node, g->connections, g->subscriptions, g->uptime_s);
    if (g->redis_shards)
        appendf(out, ",\"redis\":{\"state\":\"%s\",\"shards\":%u,\"connected\":%u}",
                g->redis_up == g->redis_shards ? "up"
                : g->redis_up                  ? "partial"
                                               : "down",
                g->redis_shards, g->redis_up);
    appendf(out, "}\n");
    return out->oom ? GALE_ERR_INTERNAL : GALE_OK;
}
