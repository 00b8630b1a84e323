/*
 * adapter: what the MQTT and NATS adapters (mqtt.c, nats.c) share on top of a session: the
 * inbound byte stream (frames of any size carry packets or lines that may span them), the
 * FIFO of the core requests whose answers they await (the core answers in request order),
 * and sending a packet they built.
 */
#ifndef GALE_ADAPTER_H
#define GALE_ADAPTER_H

#include "ring.h"
#include "session.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** The bytes of a stream not yet consumed (a packet or line cut by a frame's end). */
typedef struct adapter_rx {
    uint8_t *buf;
    size_t len, cap;
} adapter_rx_t;

/**
 * The bytes to parse: rx's leftover followed by in[0..len) (copied behind it), or in itself
 * when nothing is left over (no copy in the common case). *n receives their count. NULL when
 * out of memory.
 */
const uint8_t *adapter_rx_take(adapter_rx_t *rx, const uint8_t *in, size_t len, size_t *n);

/** Keeps data[used..n) (as returned by adapter_rx_take) for the next chunk; false: no memory. */
bool adapter_rx_keep(adapter_rx_t *rx, const uint8_t *data, size_t used, size_t n);

void adapter_rx_free(adapter_rx_t *rx);

/** One awaited answer of the core: what to do with it, by the adapter's own kinds. */
typedef struct adapter_wait {
    uint8_t kind;
    uint8_t qos;
    uint16_t packet_id;
    uint32_t index;
    void *ctx; /* the adapter's (a SUBSCRIBE's collected answer, ...) */
} adapter_wait_t;

RING_OF(adapter_waits, adapter_wait_t)

/**
 * Sends req to the core (core_request), awaiting its answer as w at the end of waits: with
 * has_id set, every request answers, in order (the answer may come before this returns).
 * False when out of memory: s is closing.
 */
bool adapter_request(broker_t *b, session_t *s, adapter_waits_t *waits, gale_request_t *req,
                     adapter_wait_t w);

/** adapter_request of a sub or unsub (op) of topic or pattern t[0..len), valid. */
bool adapter_topic_request(broker_t *b, session_t *s, adapter_waits_t *waits, gale_op_t op,
                           const char *t, size_t len, adapter_wait_t w);

/**
 * Sends the packet or lines encoded into buf (initialised with FRAME_HEADROOM) as one binary
 * frame, e the encoder's status: anything but GALE_OK closes s with 1011 (out of memory).
 */
void adapter_send(broker_t *b, session_t *s, gale_buf_t *buf, gale_err_t e);

/**
 * Closes s for a protocol error of its client (code: the WebSocket close code, 1002 or 1009),
 * after what is queued (a CONNACK, an -ERR); counted by protocol and logged with why.
 */
void adapter_fail(broker_t *b, session_t *s, uint16_t code, const char *why);

#endif
