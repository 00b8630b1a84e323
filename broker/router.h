/*
 * router: delivery of a published message to every matching local
 * subscriber. The message is encoded at most once per encoding, lazily, as a
 * shared frame; each matching connection gets one reference, exactly once
 * however many of its patterns match.
 */
#ifndef GALE_ROUTER_H
#define GALE_ROUTER_H

#include "broker.h"
#include "frame.h"

/**
 * Routes topic/data (data in encoding data_enc, as decoded) to every local
 * subscriber. Returns GALE_OK, or the error of an encoding whose frame could
 * not be built: GALE_ERR_BAD_REQUEST when the data cannot be converted to it
 * (docs/PROTOCOL-NOTES.md), GALE_ERR_INTERNAL when out of memory. Subscribers
 * of the other encoding still receive the message.
 */
gale_err_t router_publish(broker_t *b, const char *topic, size_t topic_len, gale_enc_t data_enc,
                          const uint8_t *data, size_t data_len);

/**
 * router_publish of a message of a topic with history, at stream position pos (its frames
 * carry "ep" and "off"). built (may be NULL) receives a reference to each frame built (NULL
 * for an encoding no subscriber uses), for the history to keep.
 */
gale_err_t router_publish_at(broker_t *b, const char *topic, size_t topic_len,
                             const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                             size_t data_len, frame_t *built[GALE_ENC_COUNT]);

/**
 * Routes like router_publish a message that came from another broker (the
 * cluster): the same delivery, counted as received from the cluster rather
 * than published.
 */
gale_err_t router_deliver(broker_t *b, const char *topic, size_t topic_len, gale_enc_t data_enc,
                          const uint8_t *data, size_t data_len);

/**
 * router_deliver of a message at stream position pos (a topic with history, in a cluster),
 * skipping the connections that wait for `skip` (conn.h waits; NULL: none).
 */
gale_err_t router_deliver_at(broker_t *b, const char *topic, size_t topic_len,
                             const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                             size_t data_len, const void *skip);

/** The `err` text for router_publish's GALE_ERR_BAD_REQUEST, by the publisher's encoding. */
const char *router_convert_why(gale_enc_t publisher_enc);

#endif
