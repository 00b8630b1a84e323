/*
 * cluster: several gale-broker instances acting as one broker, through
 * Redis pub/sub (--redis). Off (b->cluster NULL) unless configured.
 *
 * Interest-based: the broker SUBSCRIBEs to a topic's channel (prefix +
 * topic, on the shard the consistent-hash ring gives the topic) only while a
 * local connection holds that exact topic, PSUBSCRIBEs to the Redis glob of
 * each local pattern on every shard, and unsubscribes when the last local
 * holder leaves (topics_subscribe's `first`, topics_unsubscribe's `last`).
 *
 * Per shard, one redis_conn_t (redis_conn.h) keeps the connection to its
 * Redis: two hiredis contexts on the broker's loop, one in subscribe mode,
 * one for PUBLISH (never PING the subscribed one: hiredis 0.14 misroutes the
 * reply). A shard is up when both are connected and, when its URL (or
 * --redis-password) has credentials, both answered AUTH, the first command
 * on every connection; any error, a refused AUTH, a connect or command
 * timeout (--redis-timeout) takes both down, and they are reconnected after
 * a jittered exponential backoff (100 ms to 5 s), every subscription being
 * sent again.
 *
 * Answers that wait for Redis are pending_t (pending.h), whoever waits (the
 * core's answers to WebSocket clients and to HTTP publishes). The cluster
 * holds one until Redis answers, then finishes it.
 *
 * Topics with history (--history) and publishes with a mid go through Lua scripts on the
 * topic's shard instead of a bare PUBLISH, and their messages are delivered from Redis in
 * offset order: cluster_history.c (cluster_internal.h is what the two files share).
 *
 * The behaviour clients see is described in README.md "Cluster" and "History and
 * recovery".
 */
#ifndef GALE_CLUSTER_H
#define GALE_CLUSTER_H

#include "broker.h"
#include "pending.h"

#include <stdbool.h>

typedef struct cluster cluster_t;

/**
 * Creates the cluster of b from b->cfg (redis_urls non-empty; already
 * validated by config_parse) and starts connecting every shard. Returns NULL
 * (after logging why) on failure.
 */
cluster_t *cluster_new(broker_t *b);

/**
 * Drops every Redis connection (pending replies are finished with err
 * `unavailable`) and closes the cluster's uv handles; nothing reconnects
 * afterwards. Called while the broker shuts down. Safe to call twice.
 */
void cluster_close(cluster_t *c);

/** Frees c after cluster_close and after the last session closed. NULL is ignored. */
void cluster_free(cluster_t *c);

/**
 * Makes the subscription to pattern p[0..len), already in the local index,
 * live cluster-wide. Returns GALE_OK with *deferred false: live now (the
 * pattern is confirmed by Redis); GALE_OK with *deferred true: done is
 * finished once Redis confirms it, or with an error if a shard goes down
 * first; or an error (GALE_ERR_UNAVAILABLE while a shard it needs is down,
 * GALE_ERR_INTERNAL) with done untouched. Undoing the local subscription
 * after an error is the caller's.
 */
gale_err_t cluster_sub(cluster_t *c, pending_t *done, const char *p, size_t len, const char **why,
                       bool *deferred);

/**
 * The pattern p[0..len) has no local holder any more (topics' on_last; arg
 * is the cluster): unsubscribe from Redis. Subs still waiting for it are
 * acknowledged (a later unsub of the same connection undid them).
 */
void cluster_release(const char *p, size_t len, void *arg);

/**
 * Publishes m. Without history or mid: delivers to local subscribers now and PUBLISHes the
 * envelope to the topic's shard. With either: runs the publish script on the shard
 * (cluster_wire.h), and every subscriber, this broker's too, gets the message from Redis;
 * done->out receives its position, or dup and the original's offset. Returns GALE_OK: done
 * is finished with Redis's answer (possibly before this returns); or an error with nothing
 * delivered and done untouched: GALE_ERR_UNAVAILABLE when the shard is down or its
 * pending-command buffer (--redis-max-pending) is full, GALE_ERR_INTERNAL when out of
 * memory.
 */
gale_err_t cluster_pub(cluster_t *c, pending_t *done, const bus_pub_t *m, const char **why);

/**
 * A sub of topic[0..len), which has history (rule), by connection k, already in the local
 * index: makes the topic live here (cluster_sub), then reads its position (and with since,
 * what k missed) from its shard, sharing one read among the recoveries of the topic that
 * wait at the same time. Until then deliveries of the topic skip k and are held; k then
 * gets the missed messages, done->out the position and `recovered`, and the held messages
 * follow in offset order. Returns GALE_OK (done finished later, with an error if Redis
 * fails first), or an error with done untouched.
 */
gale_err_t cluster_recover(void *c, pending_t *done, conn_t *k, const char *topic, size_t len,
                           const gale_history_rule_t *rule, const gale_pos_t *since,
                           const char **why);

/**
 * The hist answer for topic[0..len) (with history): its newest `limit` messages from the
 * stream, oldest first, built for enc into done->out->frame. Returns GALE_OK (done finished
 * later) or an error with done untouched.
 */
gale_err_t cluster_hist(void *c, pending_t *done, const char *topic, size_t len,
                        const gale_history_rule_t *rule, uint64_t limit, gale_enc_t enc,
                        bool has_id, uint64_t id, const char **why);

/** Connection k closes: the recoveries it waits for forget it (conn.h waits). */
void cluster_forget(void *c, conn_t *k);

/** The cluster as the core's bus (bus.h): ctx is the cluster_t. */
extern const bus_ops_t cluster_bus;

/** Whether a shard that is up has commands awaiting Redis's answer. NULL: false. */
bool cluster_busy(const cluster_t *c);

/** Shards configured and shards up (both connections ready). */
void cluster_state(const cluster_t *c, uint32_t *shards, uint32_t *up);

/** Appends the per-shard Prometheus lines (gale_redis_shard_up{shard="..."}). */
void cluster_render_metrics(const cluster_t *c, gale_buf_t *out);

#endif
