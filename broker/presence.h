/*
 * presence: who is on a topic (--presence). A connection is present on topic T while it holds
 * a sub of exactly T (patterns do not count); a watcher is a present connection whose sub
 * asked `presence: true`, and gets join and leave events of T, never about itself.
 *
 * This module keeps this broker's members: per topic, its local members (each with its
 * member JSON `{"conn":..,"user":..,"info":..}`, built once at the join) and, among them, its
 * watchers; per connection, its memberships, so a close costs O(its memberships).
 *
 * Single node (presence_new with clustered false) the local members are all the members:
 * presence_join and presence_leave deliver the events at once and presence_answer lists them.
 * In a cluster (cluster_presence.c) the members of every broker are kept in Redis; this
 * module still holds the local ones (to refresh, re-sync and remove them), and the events,
 * whoever caused them, arrive from Redis through presence_event.
 *
 * Fan-out bound: while a topic has more than --presence-events-max members its join and
 * leave events stop; its watchers get instead one count-only presence message per second
 * while the count changes, and one more when it falls back to at most the max
 * (presence_tick). See docs/PROTOCOL-NOTES.md "Presence".
 *
 * Not thread-safe; all calls come from the broker's one event loop.
 */
#ifndef GALE_PRESENCE_H
#define GALE_PRESENCE_H

#include "config.h"
#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct broker broker_t;
typedef struct conn conn_t;
typedef struct pres_topic pres_topic_t;
typedef struct pres_member pres_member_t;
typedef struct presence presence_t;

/** Bytes a member may take in a `presence` answer beyond its JSON (its framing, in either
 * encoding): with its JSON length, what the answer's budget of half --queue-limit counts. */
#define PRESENCE_MEMBER_OVERHEAD 16

/** Longest conn id: 16 hex digits, '-', a decimal uint64. */
#define PRESENCE_CONN_MAX 40

/** One connection present on one topic, on this broker. */
struct pres_member {
    conn_t *c;
    pres_topic_t *t;
    pres_member_t *cnext;         /* the connection's next membership */
    pres_member_t *prev, *next;   /* the topic's local members */
    pres_member_t *wprev, *wnext; /* the topic's local watchers, when watch */
    uint8_t watch;                /* asked presence: true */
    uint8_t sent;                 /* cluster: its JOIN (or a SYNC listing it) went to Redis */
    uint8_t maybe_left;           /* cluster: its LEAVE went out and its answer was lost */
    uint8_t conn_len;
    char conn[PRESENCE_CONN_MAX];
    uint32_t json_len;
    char json[]; /* the member JSON, json_len bytes */
};

/**
 * A topic with local members, or in a cluster one that scripts in flight name or whose
 * members Redis may not hold as they are here (unsynced, until a re-sync).
 */
struct pres_topic {
    pres_topic_t *hnext; /* hash chain */
    uint64_t hash;
    pres_member_t *members, *watchers;
    uint32_t nlocal;     /* local members */
    uint64_t count;      /* members everywhere: local ones single node, else Redis's last */
    uint8_t over;        /* count was above --presence-events-max when watchers last heard */
    uint8_t dirty;       /* a count-only message is due (on the dirty list) */
    uint8_t unsynced;    /* cluster: a script failed, Redis may not hold the local members */
    uint32_t inflight;   /* cluster: scripts sent for it and not answered yet */
    uint32_t heard;      /* cluster: events received for it (wraps) */
    uint32_t heard_at;   /* cluster: heard when the oldest script in flight was sent */
    pres_member_t *gone; /* cluster: members whose leave Redis has not taken (cnext list) */
    uint32_t ngone;
    pres_topic_t *dnext; /* the dirty list */
    uint16_t len;
    char name[]; /* the topic, len bytes and a NUL */
};

/** Creates the presence of cfg's --presence patterns; NULL when out of memory. */
presence_t *presence_new(const gale_config_t *cfg, bool clustered);

/** Frees p and every member and topic; the connections must be gone. NULL is ignored. */
void presence_free(presence_t *p);

/** Whether concrete topic[0..len) matches a --presence pattern. */
bool presence_on(const presence_t *p, const char *topic, size_t len);

/** c's membership of topic[0..len), or NULL. */
pres_member_t *presence_of(const conn_t *c, const char *topic, size_t len);

/**
 * Makes c a member of topic[0..len) with the member JSON json[0..json_len) (conn[0..conn_len)
 * its id). Single node: its join goes to the topic's watchers now. Returns the member, or
 * NULL when out of memory (nothing changed).
 */
pres_member_t *presence_join(broker_t *b, conn_t *c, const char *topic, size_t len,
                             const char *conn, size_t conn_len, const char *json, size_t json_len,
                             bool watch);

/** Sets whether m gets the topic's events. */
void presence_watch(presence_t *p, pres_member_t *m, bool watch);

/** Ends membership m (freed). Single node: its leave goes to the topic's watchers now. */
void presence_leave(broker_t *b, pres_member_t *m);

/**
 * Whether a new member with a JSON of json_len bytes fits in --presence-memory (with a new
 * topic state, as the worst case). Past it a sub that would join answers err limit.
 */
bool presence_room(const presence_t *p, size_t json_len);

/** Most members kept per topic whose leave could not reach Redis (presence_gone). */
#define PRESENCE_GONE_MAX 10000

/**
 * Cluster: ends membership m like presence_leave but does not free it: the caller (the
 * cluster, sending its leave) owns it, and its topic stays while the caller counts it in
 * t->inflight. Hand it back with presence_gone or presence_forget.
 */
void presence_detach(broker_t *b, pres_member_t *m);

/**
 * Cluster: m's leave did not reach Redis: m is kept on its topic's gone list (the topic is
 * unsynced) for the next re-sync to announce; past PRESENCE_GONE_MAX per topic it is freed
 * unannounced (the re-sync still removes it from Redis).
 */
void presence_gone(presence_t *p, pres_member_t *m);

/** Frees a detached member whose leave Redis took. */
void presence_forget(presence_t *p, pres_member_t *m);

/** The topic state of topic[0..len), or NULL. */
pres_topic_t *presence_topic(presence_t *p, const char *topic, size_t len);

/** Frees t when nothing holds it any more (cluster: after changing inflight or unsynced). */
void presence_release(presence_t *p, pres_topic_t *t);

/** Calls fn(t, arg) for every topic state; fn must not free or add topics. */
void presence_each(presence_t *p, void (*fn)(pres_topic_t *t, void *arg), void *arg);

/**
 * Cluster: a join (or leave) of the member json[0..json_len) whose id is conn[0..conn_len),
 * taking topic[0..len) to `count` members, as Redis published it: delivered to the local
 * watchers but the member itself.
 */
void presence_event(broker_t *b, const char *topic, size_t len, bool join, uint64_t count,
                    const char *conn, size_t conn_len, const char *json, size_t json_len);

/**
 * Cluster: t's watchers may have missed events (this broker lost Redis for a while): they get
 * a count-only presence message at the next tick, which tells a client to read the list
 * again.
 */
void presence_stale(presence_t *p, pres_topic_t *t);

/**
 * Cluster: Redis answered that t has `count` members, in the reply to a script or read sent
 * when t had heard `heard` events. A reply and the events come on different connections, so
 * one may be read after an event Redis published later: the count is taken only when no event
 * arrived since (events carry their own counts, in Redis's order).
 */
void presence_count(presence_t *p, pres_topic_t *t, uint64_t count, uint32_t heard);

/**
 * Single node: appends the `presence` answer for topic[0..len) in encoding enc to out: its
 * count and its newest members, at most --presence-list-max and as many as fit in half of
 * --queue-limit (a larger answer would close the client as a slow consumer).
 */
gale_err_t presence_answer(broker_t *b, const char *topic, size_t len, gale_enc_t enc, bool has_id,
                           uint64_t id, gale_buf_t *out);

/** Sends the count-only messages due (once a second, from the broker's sweep). */
void presence_tick(broker_t *b);

/** Gauges: topic states, local members, and the bytes they hold (members, gone, topics). */
void presence_stats(const presence_t *p, uint64_t *topics, uint64_t *members, uint64_t *bytes);

#endif
