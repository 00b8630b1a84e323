/*
 * bench_mqtt: MQTT 3.1.1 for `gale bench --proto mqtt`, over a WebSocket endpoint offering
 * the subprotocol "mqtt" (gale-broker's /mqtt, mosquitto's websockets listener). Pure
 * encoding and parsing over caller buffers: no sockets. Packets are framed by
 * gale_mqtt_frame() and inbound PUBLISHes decoded by gale_mqtt_decode() (protocol/gale_mqtt.h);
 * what the library does not have (the client's CONNECT, SUBSCRIBE and PINGREQ, the server's
 * CONNACK, SUBACK and PINGRESP) is written and read here.
 *
 * MQTT over WebSocket is a byte stream in binary frames whose boundaries need not match
 * packet boundaries (a packet may span frames, a frame may hold several), so the parser takes
 * the stream in pieces (bench_ws stream mode) and carries an incomplete packet per
 * connection. It reports what it reads as the gmsg_t events of the gale mode, so the
 * scenarios and their accounting are the same:
 *
 *   CONNACK 0       GM_HELLO   (another return code: GM_ERR, code "CONNACK N")
 *   PUBLISH         GM_MSG     bench data read from the payload (the same JSON object)
 *   SUBACK          GM_ACK     id = its packet id (a refused filter, 0x80: GM_ERR)
 *   PINGRESP        GM_ACK     id = the receiver's next ack id, counting up from the first
 *   UNSUBACK, PUBACK, PUBREC, PUBREL, PUBCOMP   GM_OTHER
 *
 * The client connects first: CONNECT (clean session, keepalive, a client id unique to the
 * connection) goes out when the upgrade is answered, and CONNACK is the hello.
 *
 * Acknowledgements: a QoS 0 PUBLISH has none, but a server handles a connection's packets in
 * order and answers every PINGREQ with a PINGRESP, so a PINGREQ sent right after a PUBLISH is
 * answered once the PUBLISH was processed. Each publish frame is PUBLISH + PINGREQ; the n-th
 * PINGRESP acknowledges publish n, which is what mqtt_rx_t's ack ids report (as PONG does for
 * --proto nats).
 *
 * Topics: a gale topic a.b is the MQTT topic a/b; in a filter a `*` level is `+` and a last
 * `>` level is `#`.
 */
#ifndef GALE_BENCH_MQTT_H
#define GALE_BENCH_MQTT_H

#include "bench_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MQTT_KEEPALIVE_S 60 /* the CONNECT keepalive; the bench pings idle connections at half */
#define MQTT_TOPIC_MAX 256  /* longest MQTT topic name or filter built here, with its NUL */

/** Receive state of one connection. Zero it, or use mqtt_rx_reset(). */
typedef struct {
    uint8_t *buf; /* an incomplete packet; owned, freed by mqtt_rx_free() */
    uint32_t len, cap;
    uint64_t next_ack_id; /* id reported with the next PINGRESP */
    bool connected;       /* CONNACK 0 seen */
} mqtt_rx_t;

/** Prepares @r for a new connection whose first PINGRESP acknowledges request @first_ack_id. */
void mqtt_rx_reset(mqtt_rx_t *r, uint64_t first_ack_id);

/** Releases the buffer. Safe on a zeroed state. */
void mqtt_rx_free(mqtt_rx_t *r);

/**
 * Handles one event; returns 0 to go on, nonzero to stop at once (the connection was closed
 * or reset: mqtt_rx_feed() then does not touch its state again).
 */
typedef int (*mqtt_event_cb)(void *user, const gmsg_t *m);

/**
 * Parses @p[0..n), the next bytes of the connection's stream (@binary: they came in binary
 * frames; text frames are a protocol error, MQTT-6.0.0-1), calling @cb for every complete
 * packet; an incomplete one is kept for the next call. Returns 0, 1 when @cb asked to stop,
 * or -1 on a protocol error (the first packet not a CONNACK, a packet a server does not send,
 * a malformed or over-1-MiB packet), with a short reason in @why (static storage).
 */
int mqtt_rx_feed(mqtt_rx_t *r, bool binary, const uint8_t *p, size_t n, mqtt_event_cb cb,
                 void *user, const char **why);

/**
 * The MQTT topic name of gale topic @t into @out (@cap bytes, NUL-terminated): `.` becomes
 * `/`. Returns its length, 0 if it does not fit, or a level is empty or holds `/`, `+`, `#`,
 * `*` or `>` (no topic name then says the same).
 */
size_t mqtt_topic_from_gale(const char *t, char *out, size_t cap);

/**
 * The MQTT filter of gale topic or pattern @t into @out (@cap bytes, NUL-terminated): `.`
 * becomes `/`, a `*` level `+`, a last `>` level `#`. Returns its length, 0 if it does not
 * fit or gale's pattern has no MQTT equivalent (an empty level, one holding `/`, `+` or `#`,
 * or a `*` or `>` inside a level, a `>` not last).
 */
size_t mqtt_filter_from_gale(const char *t, char *out, size_t cap);

/**
 * Writes CONNECT (MQTT 3.1.1, clean session, @keepalive seconds, client id @client_id; with
 * @password, not NULL, a user name "gale" and that password: gale-broker reads a token
 * there) as one masked binary frame into @dst (@cap bytes). Returns the frame's length, 0 if
 * it does not fit or a field is over 65535 bytes.
 */
size_t mqtt_connect_frame(uint8_t *dst, size_t cap, const char *client_id, const char *password,
                          uint16_t keepalive);

/**
 * Writes SUBSCRIBE packet id @packet_id of the MQTT filter of gale topic @topic at QoS 0 as
 * one masked binary frame into @dst (@cap bytes). Returns the frame's length, 0 if it does
 * not fit or the topic has no MQTT filter.
 */
size_t mqtt_sub_frame(uint8_t *dst, size_t cap, const char *topic, uint16_t packet_id);

/** Filters per SUBSCRIBE in mqtt_subs_frame() (a packet of about 25 KiB). */
#define MQTT_SUBS_PER_PACKET 1000

/**
 * Like mqtt_sub_frame with @count filters: the MQTT filters of `<prefix><first + j>` for j in
 * [0, count), all at QoS 0, MQTT_SUBS_PER_PACKET per SUBSCRIBE, packet ids 1, 2, .. up to
 * mqtt_subs_packets(count), all in one frame. SUBACKs come in order: the last one's ends the
 * set-up. Returns the frame's length, 0 if it does not fit in @cap, @count is 0 or the prefix
 * has no MQTT filter (40 bytes per filter plus 64 always do with a prefix of up to 16 bytes).
 */
size_t mqtt_subs_frame(uint8_t *dst, size_t cap, const char *prefix, uint64_t first,
                       uint32_t count);

/** The SUBSCRIBE packets of mqtt_subs_frame(.., @count): the packet id of the last SUBACK. */
uint32_t mqtt_subs_packets(uint32_t count);

/** Writes a masked binary frame carrying PINGREQ into @dst (8 bytes); returns its length. */
size_t mqtt_pingreq_frame(uint8_t *dst);

/** Writes a masked binary frame carrying DISCONNECT into @dst (8 bytes); returns its length. */
size_t mqtt_disconnect_frame(uint8_t *dst);

/**
 * Builds the publish frame of publisher @pub to gale topic @topic: PUBLISH at QoS 0 of the
 * MQTT topic name with the bench data, payload about @size bytes, then PINGREQ, in one binary
 * frame, with the fields patched by pubtpl_set() (no request id: the PINGRESP acknowledges the
 * publish). If @topic_indexed, the topic's last TOPIC_IDX_DIGITS characters are patched per
 * send. Returns 0, or -1 when out of memory or the topic has no MQTT topic name.
 */
int mqtt_pubtpl_build(pubtpl_t *t, const char *topic, bool topic_indexed, uint32_t pub,
                      size_t size);

#endif
