/*
 * conn: a client connection as the broker's core sees it, whatever carries
 * it. A transport embeds a conn_t in its own connection and implements
 * conn_ops_t: session.c for gale v1 over WebSocket; a second wire protocol
 * (MQTT, NATS) becomes another adapter without touching the core. The core
 * (core.c) and the router (router.c) reach a connection only through these
 * operations and fields; they include no transport header.
 */
#ifndef GALE_CONN_H
#define GALE_CONN_H

#include "frame.h"
#include "gale_protocol.h"
#include "topics.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct broker broker_t;
typedef struct conn conn_t;
struct reply_ring;
struct auth_grant;
struct pres_member;

/**
 * Delivery formats: the form of the frames conn_ops_t.deliver gets (conn_t.enc). gale v1's
 * two encodings (gale_enc_t) come first; then the adapters': an MQTT PUBLISH at QoS 0 in a
 * binary frame (mqtt.c copies it for a QoS 1 subscription), and a NATS MSG template (a
 * binary frame holding "MSG <subject> ", a NUL, then "[reply ]<#bytes>\r\n<payload>\r\n":
 * nats.c writes one MSG per matching subscription id from it). router.c builds them.
 */
enum { CONN_FMT_MQTT = GALE_ENC_COUNT, CONN_FMT_NATS, CONN_FMT_COUNT };

/** The close code the core asks for when out of memory (RFC 6455 numbering). */
#define CONN_CLOSE_INTERNAL 1011

/**
 * The answer to one request: when err is GALE_OK, `ack` (with the fields below), `pong` for a
 * ping, or the prebuilt `hist` frame; else `err`.
 */
typedef struct conn_reply {
    gale_op_t op;
    bool has_id;
    uint64_t id;
    gale_err_t err;
    const char *why;  /* with err: a string with static storage */
    int8_t recovered; /* sub with since: 1 or 0; -1: not asked */
    bool dup;         /* pub: a duplicate mid, not delivered again */
    bool has_pos;     /* ep[0..ep_len) and off: the topic's position (sub), the message's (pub) */
    bool has_off;     /* off alone: a duplicate's original offset */
    uint8_t ep_len;
    uint64_t off;
    char ep[GALE_EP_MAX];
    /* with err: NULL, or static text that goes before why in the message ("token refused: "
     * and the verifier's reason) */
    const char *why_prefix;
    frame_t *frame; /* hist: the answer, built for the connection's encoding; whoever
                       consumes the reply (reply(), or the core when it drops it) unrefs it */
} conn_reply_t;

typedef struct conn_ops {
    /**
     * Queues a reference to frame f, built for c->enc (a `msg`). Returns
     * false when c takes nothing more (closing, or closed right now as a slow
     * consumer). The fan-out path: once per delivery.
     */
    bool (*deliver)(broker_t *b, conn_t *c, frame_t *f);
    /**
     * Sends the answer to one request. The core calls it in the order of the
     * requests, holding back answers behind one that waits for the cluster.
     * A success without id (anything but a ping) is never passed.
     */
    void (*reply)(broker_t *b, conn_t *c, const conn_reply_t *r);
    /** Starts closing c with code (CONN_CLOSE_*), dropping what it has queued. */
    void (*close)(broker_t *b, conn_t *c, uint16_t code);
    /**
     * MQTT: a retained message of topic for one of c's subscriptions, at qos (the lower of
     * the message's and the subscription's), read from the cluster. NULL for other protocols.
     */
    void (*retained)(broker_t *b, conn_t *c, const char *topic, size_t len, uint8_t qos,
                     const uint8_t *payload, size_t plen);
} conn_ops_t;

/**
 * What a connection waits for in a cluster: the streams (cluster_history.c) whose recovery
 * reads it joined, each with its joiner. Deliveries of those topics skip it until the read
 * answers (router.c).
 */
typedef struct conn_wait {
    const void *stream;
    void *joiner;
} conn_wait_t;

typedef struct conn_waits {
    uint32_t n, cap;
    conn_wait_t *on;
} conn_waits_t;

/** The core's part of a connection: zeroed by the transport, filled by core_open. */
struct conn {
    const conn_ops_t *ops;
    topics_owner_t owner;        /* its subscriptions */
    struct reply_ring *replies;  /* answers held back behind one that waits for the cluster
                                    (core.c); NULL until the first is held */
    struct auth_grant *grant;    /* with --jwt-secret: the token's permissions (refcounted) */
    conn_waits_t *waits;         /* cluster: recoveries in progress; NULL: none */
    struct pres_member *present; /* its memberships (presence.h); NULL: none */
    uint64_t id;                 /* in logs and in `hello` */
    uint32_t rl_tokens;          /* --pub-rate bucket, in thousandths of a publish */
    uint32_t rl_ms;              /* broker_uptime_ms() (truncated) of its last refill */
    uint8_t enc;                 /* the delivery format (CONN_FMT_*, gale_enc_t first) */
    uint8_t noecho;              /* set by the transport: its own publishes skip it (NATS) */
    uint8_t closing;             /* set by the transport: deliver nothing more */
    uint8_t unmetered;           /* set by the transport: --pub-rate does not apply (the API) */
};

/** c's wire protocol for metrics: 0 gale v1, 1 MQTT, 2 NATS (metrics.h METRICS_PROTOS). */
static inline int conn_proto(const conn_t *c)
{
    return c->enc < GALE_ENC_COUNT ? 0 : c->enc - GALE_ENC_COUNT + 1;
}

/** Whether c waits for stream s. */
static inline bool conn_waits_on(const conn_t *c, const void *s)
{
    for (uint32_t i = 0; c->waits && i < c->waits->n; i++)
        if (c->waits->on[i].stream == s)
            return true;
    return false;
}

#endif
