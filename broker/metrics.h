/*
 * metrics: the broker's counters and their Prometheus text exposition
 * (served at /metrics) and the /healthz summary.
 */
#ifndef GALE_METRICS_H
#define GALE_METRICS_H

#include "gale_protocol.h"

#include <stdint.h>

/** Protocols metrics are labelled by: gale v1, MQTT, NATS (session.h SESSION_PROTO_*). */
#define METRICS_PROTOS 3

/** Most loops (config.h CONFIG_LOOPS_MAX) whose connections are rendered one by one. */
#define METRICS_LOOPS_MAX 64

typedef struct metrics {
    uint64_t connections_accepted;            /* WebSocket upgrades completed */
    uint64_t connections_refused;             /* upgrades answered 4xx/5xx */
    uint64_t connections_refused_per_ip;      /* ... of which 429, --max-connections-per-ip */
    uint64_t messages_published;              /* pub requests routed */
    uint64_t messages_delivered;              /* msg frames queued to subscribers */
    uint64_t bytes_out;                       /* bytes handed to sockets by the flush path */
    uint64_t writes;                          /* socket writes of the flush path */
    uint64_t slow_consumer_closes;            /* closes with 4001 */
    uint64_t keepalive_closes;                /* connections dropped after an unanswered ping */
    uint64_t oversize_closes;                 /* closes with 1009 */
    uint64_t invalid_utf8_closes;             /* closes with 1007: text that is not UTF-8 */
    uint64_t invalid_close_frames;            /* peers' close frames answered with 1002 */
    uint64_t handshake_timeouts;              /* dropped: request head not in within
                                                 --handshake-timeout */
    uint64_t http_refused;                    /* HTTP requests refused by http_filter */
    uint64_t protocol_errors[GALE_ERR_COUNT]; /* err replies by code */
    uint64_t recoveries[2];      /* subs with since: [0] not recovered, [1] recovered */
    uint64_t messages_replayed;  /* msg frames queued by recoveries */
    uint64_t publish_duplicates; /* pubs not delivered again: a mid seen before */
    uint64_t recoveries_cached;  /* cluster: recoveries served from a stream's recent messages */
    uint64_t history_gaps;       /* cluster: missed live messages read from the stream */
    uint64_t presence_joins;     /* connections that became present on a topic (this node) */
    uint64_t presence_leaves;    /* ... that stopped being present */
    uint64_t presence_events;    /* join and leave events queued to watchers */
    uint64_t presence_counts;    /* count-only presence messages queued to watchers */
    uint64_t refreshes[2];       /* refresh requests: [0] refused (answered err), [1] accepted */
    uint64_t refresh_dropped;    /* subscriptions a refresh took away (the new token does not
                                    allow them) */
    uint64_t loops_backlogs;     /* --loops: times another loop's inbox was over its bound */
    uint64_t redis_publishes;    /* PUBLISH commands sent (--redis) */
    uint64_t redis_received;     /* messages received from Redis */
    uint64_t redis_duplicates;   /* ... dropped as copies already delivered */
    uint64_t redis_echoes;       /* ... dropped as this node's own */
    uint64_t redis_invalid;      /* ... dropped as malformed */
    uint64_t redis_reconnects;   /* shards connected again after a loss */
    uint64_t redis_connect_failures; /* failed connection attempts */
    /* by protocol (METRICS_PROTOS; [0], gale v1, is derived when rendering) */
    uint64_t proto_connections[METRICS_PROTOS]; /* adapter sessions open now */
    uint64_t proto_published[METRICS_PROTOS];   /* publishes accepted from its connections */
    uint64_t proto_delivered[METRICS_PROTOS];   /* deliveries queued to its connections */
    uint64_t proto_errors[METRICS_PROTOS];      /* protocol errors that closed a connection */
} metrics_t;

/** Gauges sampled when rendering. */
typedef struct metrics_gauges {
    uint64_t connections;
    uint64_t subscriptions;
    uint64_t topics;
    uint64_t queued_bytes;
    uint64_t handshakes; /* connections awaiting their first request head */
    /* --max-connections-per-ip (per_ip): the addresses holding WebSocket connections */
    bool per_ip;
    uint64_t client_addresses;
    double uptime_s;
    uint32_t redis_shards; /* 0: not clustered */
    uint32_t redis_up;     /* shards with both connections ready */
    bool history;          /* --history: the history gauges below are rendered */
    uint64_t history_bytes, history_topics, history_messages;
    uint64_t history_evicted, history_expired, history_states_lost;
    uint64_t dedup_entries;
    bool presence; /* --presence: its gauges are rendered */
    uint64_t presence_topics, presence_members, presence_bytes; /* this node's */
    uint64_t mqtt_retained, mqtt_retained_bytes;  /* MQTT retained messages held in the process */
    uint32_t loops;                               /* --loops */
    uint64_t loop_connections[METRICS_LOOPS_MAX]; /* WebSocket connections of each loop */
} metrics_gauges_t;

/** Appends the Prometheus text exposition (version 0.0.4) of m and g to out. */
gale_err_t metrics_render(const metrics_t *m, const metrics_gauges_t *g, gale_buf_t *out);

/**
 * Appends the /healthz JSON body to out: status "ok", or "degraded" when
 * clustered and a Redis shard is down (http.c answers 503 then).
 */
gale_err_t metrics_render_health(const metrics_gauges_t *g, const char *node, gale_buf_t *out);

#endif
