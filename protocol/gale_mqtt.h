/*
 * MQTT 3.1.1 (OASIS Standard, 29 October 2014), and 3.1 ("MQIsdp", level 3), as the broker's
 * MQTT adapter needs it: framing a byte stream into packets, a strict decode of every packet
 * a client may send, the encoders of every packet the server sends, and the mapping between
 * MQTT topics and gale's.
 *
 * Pure code: no sockets, no event loop, no allocation beyond the gale_buf_t it appends to.
 * Every input is untrusted; each function bounds its work by the input length. Section
 * numbers (3.1.2-4, MQTT-3.3.1-2, ...) are the 3.1.1 specification's.
 *
 * Topics: MQTT `/` is gale's `.`, `+` is `*`, and a filter `a/#` is two gale patterns, `a`
 * and `a.>` (`#` alone: `>`). MQTT names and filters gale cannot express are refused: a
 * level that is empty or holds `.`, `*`, `>`, whitespace or a control character, or a
 * result over GALE_TOPIC_MAX bytes. docs/PROTOCOL-NOTES.md "MQTT" lists every choice.
 */
#ifndef GALE_MQTT_H
#define GALE_MQTT_H

#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Control packet types (2.2.1). */
typedef enum {
    GALE_MQTT_CONNECT = 1,
    GALE_MQTT_CONNACK = 2,
    GALE_MQTT_PUBLISH = 3,
    GALE_MQTT_PUBACK = 4,
    GALE_MQTT_PUBREC = 5,
    GALE_MQTT_PUBREL = 6,
    GALE_MQTT_PUBCOMP = 7,
    GALE_MQTT_SUBSCRIBE = 8,
    GALE_MQTT_SUBACK = 9,
    GALE_MQTT_UNSUBSCRIBE = 10,
    GALE_MQTT_UNSUBACK = 11,
    GALE_MQTT_PINGREQ = 12,
    GALE_MQTT_PINGRESP = 13,
    GALE_MQTT_DISCONNECT = 14,
} gale_mqtt_type_t;

/** CONNACK return codes (3.2.2.3). */
enum {
    GALE_MQTT_ACCEPTED = 0,
    GALE_MQTT_REFUSED_PROTOCOL = 1,   /* unacceptable protocol level */
    GALE_MQTT_REFUSED_IDENTIFIER = 2, /* client identifier not allowed */
    GALE_MQTT_REFUSED_UNAVAILABLE = 3,
    GALE_MQTT_REFUSED_CREDENTIALS = 4, /* bad user name or password */
    GALE_MQTT_REFUSED_NOT_AUTHORIZED = 5,
};

/** SUBACK return code of a refused filter (3.9.3). */
#define GALE_MQTT_SUBACK_FAILURE 0x80

/** Largest remaining length (2.2.3): four bytes of 7 bits. */
#define GALE_MQTT_REMAINING_MAX 268435455u
/** Longest client identifier the adapter accepts (3.1.3-5 requires 23; gale takes more). */
#define GALE_MQTT_CLIENT_ID_MAX 256

/**
 * Frames the packet at the start of buf[0..len). Returns 1 when all of it is there (*total =
 * its size: fixed header + remaining length); 0 when more bytes are needed (*total = its
 * size once the fixed header is complete, else 0), so that a caller can refuse an oversized
 * packet before buffering it; -1 when the remaining length is malformed (a fifth length byte,
 * 2.2.3). Never reads past len.
 */
int gale_mqtt_frame(const uint8_t *buf, size_t len, size_t *total);

/**
 * One decoded client packet. Pointers point into the packet's bytes. Fields of other types
 * stay zero.
 */
typedef struct {
    gale_mqtt_type_t type;
    uint8_t flags; /* the fixed header's low four bits */
    /* CONNECT */
    uint8_t level; /* 4 (3.1.1, "MQTT") or 3 (3.1, "MQIsdp") */
    bool clean_session;
    uint16_t keepalive; /* seconds; 0: none */
    const char *client_id;
    size_t client_id_len;
    bool will;
    uint8_t will_qos;
    bool will_retain;
    const char *will_topic;
    size_t will_topic_len;
    const uint8_t *will_payload;
    size_t will_payload_len;
    bool has_username;
    const char *username;
    size_t username_len;
    bool has_password;
    const uint8_t *password;
    size_t password_len;
    /* PUBLISH */
    uint8_t qos;
    bool dup;
    bool retain;
    const char *topic;
    size_t topic_len;
    const uint8_t *payload;
    size_t payload_len;
    /* PUBLISH (qos > 0), PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, UNSUBSCRIBE */
    uint16_t packet_id;
    /* SUBSCRIBE, UNSUBSCRIBE: the topic filter list, read with gale_mqtt_next_filter */
    const uint8_t *filters;
    size_t filters_len;
} gale_mqtt_packet_t;

/** Why a packet was not accepted: what the server does about it. */
typedef enum {
    GALE_MQTT_OK = 0,
    GALE_MQTT_MALFORMED,     /* close the connection (4.8) */
    GALE_MQTT_BAD_LEVEL,     /* CONNECT: answer CONNACK 1, then close (3.1.2-2) */
    GALE_MQTT_BAD_CLIENT_ID, /* CONNECT: answer CONNACK 2, then close (3.1.3-8/9) */
} gale_mqtt_status_t;

/**
 * Decodes one whole packet pkt[0..len) (as framed by gale_mqtt_frame) sent by a client, and
 * checks everything 3.1.1 requires of it: the reserved flag bits of its type (2.2.2; PUBREL,
 * SUBSCRIBE and UNSUBSCRIBE carry 0b0010), that its fields use exactly the remaining length,
 * UTF-8 strings well-formed and without U+0000 (1.5.3), CONNECT's protocol name and level
 * ("MQTT" 4 or "MQIsdp" 3; another name is MALFORMED, another level for the name, e.g. "MQTT"
 * 5, BAD_LEVEL, returned before the rest of the packet is read), its reserved flag, will
 * flags (will QoS 3, or will QoS/retain without the will flag: MALFORMED), the will topic
 * (the rules of a PUBLISH topic name), password without user name (MALFORMED), an empty
 * client id with clean session 0 or a client id over GALE_MQTT_CLIENT_ID_MAX bytes
 * (BAD_CLIENT_ID, only when nothing else is wrong); PUBLISH's QoS (3 is MALFORMED), DUP on
 * QoS 0 (MQTT-3.3.1-2), a topic name that is empty or holds `+` or `#` (MQTT-3.3.2-2), a
 * non-zero packet id with QoS > 0; SUBSCRIBE/UNSUBSCRIBE: a non-zero
 * packet id, at least one filter, each filter a valid MQTT filter (gale_mqtt_filter_valid),
 * each requested QoS 0..2 with its reserved bits zero; PINGREQ and DISCONNECT: remaining
 * length 0; PUBACK, PUBREC, PUBREL, PUBCOMP: remaining length 2. Server-to-client types
 * (CONNACK, SUBACK, UNSUBACK, PINGRESP) and types 0 and 15 are MALFORMED. *why (why may be
 * NULL) is a static English reason for the log, NULL when OK. The packet id of a PUBACK,
 * PUBREC, PUBREL or PUBCOMP may be 0 (it then matches nothing in flight).
 */
gale_mqtt_status_t gale_mqtt_decode(const uint8_t *pkt, size_t len, gale_mqtt_packet_t *p,
                                    const char **why);

/**
 * The next filter of a decoded SUBSCRIBE (with its requested QoS) or UNSUBSCRIBE (*qos 0).
 * Start with *pos = 0. False after the last one.
 */
bool gale_mqtt_next_filter(const gale_mqtt_packet_t *p, size_t *pos, const char **filter,
                           size_t *len, uint8_t *qos);

/**
 * Whether f[0..len) is a valid MQTT topic filter (4.7): 1..65535 bytes, `#` only as the whole
 * last level, `+` only as a whole level.
 */
bool gale_mqtt_filter_valid(const char *f, size_t len);

/**
 * The gale topic of MQTT topic name t[0..len) into out (GALE_TOPIC_MAX bytes): `/` becomes
 * `.`. Returns its length, or 0 when gale cannot express it (see the top of this file; the
 * result is checked with gale_topic_valid) or it holds `+` or `#` (not a topic name: were
 * they let through, gale_mqtt_topic_from_gale would not map the result back).
 */
size_t gale_mqtt_topic_to_gale(const char *t, size_t len, char *out);

/**
 * The gale patterns of MQTT filter f[0..len) (valid) into out: returns how many (1, or 2
 * for a filter ending in `/#`: `a/#` is `a` and `a.>`), 0 when gale cannot express it. A
 * filter whose first level starts with `$` matches topics starting with `$` only when that
 * level is literal (4.7.2): gale has no `$` topics of its own, so this needs no special case.
 */
int gale_mqtt_filter_to_gale(const char *f, size_t len, char out[2][GALE_TOPIC_MAX],
                             size_t out_len[2]);

/**
 * The MQTT topic name of gale topic t[0..len) (valid) into out (len bytes): `.` becomes `/`.
 * False when a segment holds `/`, `+` or `#` (the name would mean another topic, or none):
 * such messages are not delivered to MQTT subscribers.
 */
bool gale_mqtt_topic_from_gale(const char *t, size_t len, char *out);

/* --- encoders: each appends one whole packet to out; GALE_ERR_INTERNAL when out of memory,
 *     GALE_ERR_TOO_LARGE when it would pass GALE_MQTT_REMAINING_MAX, GALE_ERR_BAD_REQUEST
 *     for arguments MQTT forbids (as said below); nothing is appended on error --- */

/** CONNACK; session_present is sent only with code GALE_MQTT_ACCEPTED (MQTT-3.2.2-4). */
gale_err_t gale_mqtt_encode_connack(gale_buf_t *out, bool session_present, uint8_t code);
/**
 * PUBACK, PUBREC, PUBREL (flags 0b0010), PUBCOMP or UNSUBACK with packet_id; another type is
 * GALE_ERR_BAD_REQUEST.
 */
gale_err_t gale_mqtt_encode_ack(gale_buf_t *out, gale_mqtt_type_t type, uint16_t packet_id);
/** SUBACK with one return code per filter (granted QoS 0..2, or GALE_MQTT_SUBACK_FAILURE). */
gale_err_t gale_mqtt_encode_suback(gale_buf_t *out, uint16_t packet_id, const uint8_t *codes,
                                   size_t n);
gale_err_t gale_mqtt_encode_pingresp(gale_buf_t *out);
/**
 * PUBLISH of MQTT topic name topic[0..topic_len) at qos (packet_id used when qos > 0).
 * GALE_ERR_BAD_REQUEST for qos over 2, dup at QoS 0, a topic of 0 or over 65535 bytes, or
 * packet id 0 at qos > 0 (the topic's characters are the caller's: gale_mqtt_topic_from_gale).
 */
gale_err_t gale_mqtt_encode_publish(gale_buf_t *out, const char *topic, size_t topic_len,
                                    uint8_t qos, bool retain, bool dup, uint16_t packet_id,
                                    const uint8_t *payload, size_t payload_len);

/**
 * The PUBLISH in pkt[0..len) (one this library encoded) at QoS 1 with packet_id, into out: for a
 * QoS 0 PUBLISH shared by every QoS 0 subscriber, the copy a QoS 1 subscriber needs (the
 * same bytes as gale_mqtt_encode_publish of its fields at QoS 1). GALE_ERR_BAD_REQUEST when
 * pkt is not one whole QoS 0 PUBLISH with a non-empty topic, or packet_id is 0.
 */
gale_err_t gale_mqtt_publish_at_qos1(gale_buf_t *out, const uint8_t *pkt, size_t len,
                                     uint16_t packet_id);

#endif
