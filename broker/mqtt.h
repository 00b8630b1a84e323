/*
 * mqtt: MQTT 3.1.1 (and 3.1) clients over WebSocket at /mqtt, as an adapter of the core
 * (session.h session_proto_t, conn.h conn_ops_t): CONNECT (a gale token as the password),
 * SUBSCRIBE/UNSUBSCRIBE as core subs of the filter's gale patterns (QoS 0 or 1 granted),
 * PUBLISH at QoS 0, 1 and 2 as core pubs, will messages, client id takeover, retained
 * messages, keepalive. Packets are parsed by protocol/gale_mqtt.h. docs/PROTOCOL-NOTES.md
 * "MQTT" lists what is supported and what is not.
 */
#ifndef GALE_MQTT_ADAPTER_H
#define GALE_MQTT_ADAPTER_H

#include "broker.h"
#include "session.h"

extern const session_proto_t mqtt_proto;

/** Frees the broker-wide MQTT state (client ids, retained messages) at teardown. */
void mqtt_free(broker_t *b);

/** The retained messages held (gauge) and their bytes. */
void mqtt_retained_stats(const broker_t *b, uint64_t *count, uint64_t *bytes);

/** --loops N > 1: the one MQTT state of every loop (client ids, retained messages). */
struct mqtt_state *mqtt_state_new(void);
void mqtt_state_free(struct mqtt_state *st);

/**
 * Connection conn of this loop had its client id taken over by connection `by` on another
 * loop: it closes, without its will. Nothing when it is gone or closing already.
 */
void mqtt_taken_over(broker_t *b, uint64_t conn, uint64_t by);

#endif
