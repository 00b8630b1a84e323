/*
 * router: delivery of a published message to every matching local
 * subscriber. The message is encoded at most once per delivery format (conn.h: gale's two
 * encodings, an MQTT PUBLISH, a NATS MSG template), lazily, as a shared frame; each matching
 * connection gets one reference, exactly once however many of its patterns match.
 */
#ifndef GALE_ROUTER_H
#define GALE_ROUTER_H

#include "broker.h"
#include "conn.h"
#include "frame.h"

/** One message to route. */
typedef struct router_msg {
    const char *topic;
    size_t topic_len;
    const gale_pos_t *pos; /* a topic with history: its frames carry "ep" and "off"; else NULL */
    const char *reply;     /* the publisher's reply topic (NATS reply subject); NULL: none */
    size_t reply_len;
    uint64_t noecho; /* the id of a connection that gets nothing (NATS echo:false); 0: none */
    bool qos0;       /* an MQTT QoS 0 publish: MQTT subscribers get it at QoS 0 */
    gale_enc_t enc;  /* of data, as decoded */
    const uint8_t *data;
    size_t data_len;
} router_msg_t;

/**
 * Routes m to every local subscriber. Returns GALE_OK, or the error of a format whose frame
 * could not be built: GALE_ERR_BAD_REQUEST when the data cannot be converted to it
 * (docs/PROTOCOL-NOTES.md), GALE_ERR_INTERNAL when out of memory. Subscribers of the other
 * formats still receive the message. A topic MQTT cannot name (conn.h) is no error: MQTT
 * subscribers do not get it.
 */
gale_err_t router_publish(broker_t *b, const router_msg_t *m);

/**
 * router_publish of a message of a topic with history (m->pos set). built (may be NULL)
 * receives a reference to each gale frame built (NULL for an encoding no subscriber uses),
 * for the history to keep.
 */
gale_err_t router_publish_at(broker_t *b, const router_msg_t *m, frame_t *built[GALE_ENC_COUNT]);

/**
 * Routes like router_publish a message that came from another broker (the cluster), skipping
 * the connections that wait for `skip` (conn.h waits; NULL: none): the same delivery, counted
 * as received from the cluster rather than published.
 */
gale_err_t router_deliver(broker_t *b, const router_msg_t *m, const void *skip);

/** The `err` text for router_publish's GALE_ERR_BAD_REQUEST, by the publisher's encoding. */
const char *router_convert_why(gale_enc_t publisher_enc);

#endif
