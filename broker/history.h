/*
 * history: the messages a single broker keeps per topic (--history
 * PATTERN=SIZE[/TTL]), and the stream positions they carry
 * (docs/PROTOCOL.md "Additions").
 *
 * A topic matching a rule has a state: its epoch (ep), the last offset
 * given (1 for its first message, +1 for each), and a ring of the messages
 * still held, oldest first. A message leaves when SIZE newer ones follow it,
 * when it is older than TTL, or when the bytes of all history in the process
 * exceed --history-memory: then states without messages go first (least
 * recently used), then the oldest messages of any topic. A state that goes
 * and comes back gets a new epoch, so a position is never resumed against
 * another stream. Epochs are "<instance>-<generation>" in hex: the broker's
 * random instance number (a new one at every start) and a counter of states
 * created.
 *
 * Each held message keeps the frames built for it (one per encoding, made
 * once when it was published or first replayed), so a replay to many
 * clients queues references, encoding nothing again.
 *
 * Pure bookkeeping: no I/O, no clock (callers pass the time); the core
 * (core.c) decides what to deliver. Unit tested in tests/unit/test_history.c.
 */
#ifndef GALE_HISTORY_H
#define GALE_HISTORY_H

#include "config.h"
#include "frame.h"
#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct history history_t;
typedef struct hist_topic hist_topic_t;

/** One held message. */
typedef struct hist_msg {
    struct hist_msg *older, *newer; /* the process-wide list, by age (history.c) */
    hist_topic_t *topic;
    uint64_t off;
    uint64_t at_ms;                  /* when it was published */
    frame_t *frames[GALE_ENC_COUNT]; /* its `msg` frames, built on first need */
    uint8_t failed[GALE_ENC_COUNT];  /* frames[enc] cannot be built (data not convertible) */
    uint32_t len;                    /* of data */
    uint8_t enc;                     /* gale_enc_t of data */
    uint8_t reply_len;               /* the publisher's reply topic, after data; 0: none */
    uint8_t data[];
} hist_msg_t;

/**
 * A history of the rules (copied), held within max_bytes in all, with epochs naming
 * `instance`. NULL when out of memory.
 */
history_t *history_new(const gale_history_rule_t *rules, uint32_t nrules, uint64_t max_bytes,
                       uint64_t instance);

/** Frees h and everything it holds (frames are unreferenced). NULL is ignored. */
void history_free(history_t *h);

/** The first rule whose pattern matches the concrete topic, or NULL: no history. */
const gale_history_rule_t *history_rule(const history_t *h, const char *topic, size_t len);

/** The first of rules[0..n) whose pattern matches the concrete topic, or NULL. */
const gale_history_rule_t *history_match(const gale_history_rule_t *rules, uint32_t n,
                                         const char *topic, size_t len);

/**
 * The state of topic t[0..len), which matches rule: found, or created with a new epoch
 * (NULL when out of memory). Its messages older than the rule's TTL are dropped first.
 */
hist_topic_t *history_topic(history_t *h, const gale_history_rule_t *rule, const char *t,
                            size_t len, uint64_t now_ms);

/** The topic's name. */
const char *history_topic_name(const hist_topic_t *t, size_t *len);

/** The topic's current position: its epoch and the last offset given (0: none yet). */
gale_pos_t history_pos(const hist_topic_t *t);

/**
 * Stores a new message of t (data in encoding enc) at the next offset; NULL when out of
 * memory (nothing changes). The memory bound is enforced by history_enforce, which the
 * caller runs once it no longer holds t or the message.
 */
/**
 * history_append of a message whose publisher named a reply topic reply[0..reply_len) (NULL:
 * none; at most GALE_TOPIC_MAX bytes): frames built later for a replay carry it too.
 */
hist_msg_t *history_append_reply(history_t *h, hist_topic_t *t, gale_enc_t enc, const uint8_t *data,
                                 size_t len, const char *reply, size_t reply_len, uint64_t now_ms);

hist_msg_t *history_append(history_t *h, hist_topic_t *t, gale_enc_t enc, const uint8_t *data,
                           size_t len, uint64_t now_ms);

/** Gives m the frames built for it (each non-NULL one's reference is taken). */
void history_keep_frames(history_t *h, hist_msg_t *m, frame_t *const frames[GALE_ENC_COUNT]);

/**
 * m's `msg` frame in encoding enc, built now when missing (a borrowed reference); NULL
 * when m's data cannot be converted to enc (as for live delivery, the message is then not
 * sent in that encoding) or out of memory (*nomem set).
 */
frame_t *history_frame(history_t *h, hist_msg_t *m, gale_enc_t enc, bool *nomem);

/** Messages held by t, the oldest one's offset (0 when none). */
uint32_t history_count(const hist_topic_t *t);
uint64_t history_first(const hist_topic_t *t);

/** The held message at offset off, or NULL. */
hist_msg_t *history_at(const hist_topic_t *t, uint64_t off);

/**
 * Whether a client that received everything of epoch since->ep up to since->off can be
 * given the rest from what t holds, at most max messages: the epoch is t's, since->off is
 * not above t's last offset, and every message after it is held. *missed: how many.
 */
bool history_covers(const hist_topic_t *t, const gale_pos_t *since, uint64_t max, uint64_t *missed);

/** Evicts until the bytes held are within the bound (see the top of this file). */
void history_enforce(history_t *h);

/** Drops every message older than its rule's TTL (the 1 s sweep). */
void history_sweep(history_t *h, uint64_t now_ms);

typedef struct {
    uint64_t bytes;       /* counted against max_bytes */
    uint64_t topics;      /* states */
    uint64_t messages;    /* held */
    uint64_t evicted;     /* messages dropped to stay within max_bytes */
    uint64_t expired;     /* messages dropped by TTL */
    uint64_t states_lost; /* states dropped to stay within max_bytes (their epoch ended) */
} history_stats_t;

void history_stats(const history_t *h, history_stats_t *s);

#endif
