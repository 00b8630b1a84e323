/*
 * session: one WebSocket connection. Lives in lws's per-session storage
 * (zeroed by lws), so the struct is kept small: at 19,000 connections every
 * byte here costs 19 KB.
 */
#ifndef GALE_SESSION_H
#define GALE_SESSION_H

#include "broker.h"
#include "frame.h"
#include "outq.h"
#include "topics.h"

#include <stdbool.h>
#include <stdint.h>

struct lws;
struct auth_grant;

#define SESSION_NOT_DIRTY UINT32_MAX

typedef struct session_reply session_reply_t;

typedef struct session {
    struct lws *wsi;
    topics_owner_t owner;     /* subscriptions, back-pointers into the topic index */
    outq_t q;                 /* frames waiting to be written */
    uint8_t *rx;              /* reassembly of a message spanning several receives */
    session_reply_t *replies; /* replies held back behind one that waits for the cluster
                                 (tail of a circular FIFO); NULL: reply at once */
    size_t rx_len;
    uint64_t conn_id;
    uint64_t last_rx_ms;      /* broker_uptime_ms() of the last inbound frame; once
                                 closing, of the start of the close */
    struct auth_grant *grant; /* with --jwt-secret: the token's permissions (shared, refcounted) */
    uint32_t rl_tokens;       /* --pub-rate bucket, in thousandths of a publish */
    uint32_t rl_ms;           /* broker_uptime_ms() (truncated) of its last refill */
    uint32_t slot;            /* index in broker.sessions */
    uint32_t dirty_slot;      /* index in broker.dirty, or SESSION_NOT_DIRTY */
    uint16_t close_code;      /* non-zero: closing with this code once flushed */
    uint8_t enc;              /* gale_enc_t */
    uint8_t ping_sent : 1;    /* a keepalive ping is unanswered */
    uint8_t rx_binary : 1;    /* the message being reassembled is binary */
    uint8_t killed : 1;       /* dropped without a close frame */
    uint8_t live : 1;         /* opened and its wsi not yet destroyed (broker.nlive) */
} session_t;

/**
 * A reply held in a session's reply FIFO: one that waits for the cluster
 * (Redis) or one queued behind such a reply, so that a connection's replies
 * go out in the order of its requests. Used only with --redis.
 */
struct session_reply {
    session_reply_t *next;  /* the session's FIFO */
    session_reply_t *wnext; /* the cluster's list of subs waiting on one interest */
    session_t *s;           /* NULL once the session has closed (or for an HTTP publish) */
    void *api;              /* an HTTP publish (api.c) waiting for this reply, or NULL */
    uint32_t api_idx;       /* the message's index in it */
    frame_t *frame;         /* the reply once done; NULL when silent or not done */
    const char *why;        /* pub: why the local delivery failed, with local_err */
    uint64_t id;
    uint8_t has_id;
    uint8_t op;        /* gale_op_t */
    uint8_t done;      /* finished: not held by the cluster any more */
    uint8_t added;     /* sub: this request added the subscription */
    uint8_t local_err; /* pub: gale_err_t of the local delivery */
    uint8_t plen;      /* sub: pattern length (patterns are <= 255 bytes) */
    char pattern[];    /* sub: the pattern */
};

/**
 * Appends to s's reply FIFO an entry for req's reply, to be finished by the
 * cluster (which holds it until session_reply_finish). A sub's entry carries
 * its pattern. Returns NULL when out of memory.
 */
session_reply_t *session_reply_defer(session_t *s, const gale_request_t *req);

/**
 * The cluster is done with r: success (e == GALE_OK) answers `ack` when the
 * request had an id, failure answers `err` e with why. Then every finished
 * reply at the head of the FIFO is sent. An entry whose session closed is
 * freed.
 */
void session_reply_finish(broker_t *b, session_reply_t *r, gale_err_t e, const char *why);

/**
 * Sets up a newly established session of encoding enc; queues hello. grant
 * (with --jwt-secret) is the token's, of which the session takes a reference.
 */
bool session_open(broker_t *b, session_t *s, struct lws *wsi, gale_enc_t enc,
                  struct auth_grant *grant);

/** Releases everything the session holds (subscriptions, queue, buffers). */
void session_close(broker_t *b, session_t *s);

/**
 * Feeds one lws RECEIVE chunk. Returns 0, or -1 when the connection must be
 * closed (the close reason has been set on the wsi).
 */
int session_receive(broker_t *b, session_t *s, const uint8_t *in, size_t len);

/** Notes inbound traffic (any frame, including pongs) for the keepalive. */
void session_touch(broker_t *b, session_t *s);

/**
 * Queues a reference to f for sending. When the queue would pass
 * --queue-limit, the session is closed as a slow consumer (4001) instead and
 * false is returned.
 */
bool session_enqueue(broker_t *b, session_t *s, frame_t *f);

/**
 * Writes queued frames, coalesced into as few writes as possible. Called
 * from the per-turn flush and from WRITEABLE; asks for WRITEABLE itself when
 * the socket cannot take everything.
 */
void session_flush(broker_t *b, session_t *s);

/**
 * Starts closing with `code` (1001, 4001, ...): a close frame is queued
 * after the queued frames (or instead of them, with drop_queue) and nothing
 * more is accepted. The peer's answering close, or a timeout, ends it.
 */
void session_begin_close(broker_t *b, session_t *s, uint16_t code, bool drop_queue);

/**
 * The peer's close frame arrived (its payload, as lws passes it): the answer for lws's
 * WS_PEER_INITIATED_CLOSE. A valid payload (gale_close_payload_check) is echoed, an invalid
 * one answered with 1002. -1 (end the connection now) if our own close went out first or if
 * we answered theirs right here; 0 to let lws echo it (it then waits for WRITEABLE).
 */
int session_peer_close(broker_t *b, session_t *s, const uint8_t *payload, size_t len);

/**
 * Drops the connection without a close frame (unresponsive peer, write
 * failure): the socket is shut down at once, writable or not, and lws closes
 * the session on its next poll.
 */
void session_kill(broker_t *b, session_t *s);

/** Writes every dirty session's queue now. */
void session_flush_all(broker_t *b);

/**
 * The per-turn flush (uv_check): session_flush_all, unless a connection
 * that published this turn has more input waiting, in which case the flush
 * waits for it, a few turns at most, to coalesce larger writes.
 */
void session_flush_turn(broker_t *b);

/**
 * The once-a-second sweep: pings sessions silent for --keepalive, drops
 * those that stayed silent as long again, drops closing sessions whose
 * peer did not answer the close within 10 s, and closes with 1008 those
 * whose token expired.
 */
void session_sweep(broker_t *b);

#endif
