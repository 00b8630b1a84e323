/*
 * cluster_internal: what cluster.c (the shards, interest, publishing) and
 * cluster_history.c (streams of topics with history in Redis: positions,
 * recovery reads, gap repair, hist) share. Not for the rest of the broker:
 * cluster.h and bus.h are the interfaces.
 */
#ifndef GALE_CLUSTER_INTERNAL_H
#define GALE_CLUSTER_INTERNAL_H

#include "cluster.h"
#include "cluster_wire.h"
#include "redis_conn.h"
#include "ring.h"

#include <stdbool.h>
#include <stdint.h>

/** What a command in flight on a shard's command context is, for its reply. */
typedef enum {
    CMD_PUBLISH = 0,    /* ctx: the pending_t of a publish without history or mid */
    CMD_SCRIPT_PUB,     /* ctx: the pending_t of a publish through the publish script */
    CMD_READ,           /* ctx: a read of cluster_history.c */
    CMD_LOAD,           /* ctx: NULL; SCRIPT LOAD on a new connection */
    CMD_PRESENCE,       /* ctx: the pres_topic_t a presence script changes (cluster_presence.c) */
    CMD_PRESENCE_LEAVE, /* ctx: the detached pres_member_t whose leave it is */
    CMD_PRESENCE_SYNC,  /* ctx: a SYNC of cluster_presence.c (its topic and gone members) */
    CMD_PRESENCE_READ,  /* ctx: a presence read of cluster_presence.c */
    CMD_PRESENCE_NODE,  /* ctx: non-NULL for TAKEOVER, NULL for the SET of pn:NODE */
    CMD_RETAIN,         /* ctx: NULL; an MQTT retained message written (cluster_retain.c) */
    CMD_RETAINED,       /* ctx: one shard's part of a read of retained messages */
} cmd_kind_t;

/** The presence scripts, in cluster_t.sha_presence. */
enum { CPRES_JOIN, CPRES_LEAVE, CPRES_SYNC, CPRES_REFRESH, CPRES_READ, CPRES_TAKEOVER, CPRES_N };

typedef struct {
    void *ctx;
    uint64_t sent_ms;
    size_t bytes;
    uint8_t kind; /* cmd_kind_t */
} inflight_t;

RING_OF(inflight_ring, inflight_t)

typedef struct shard {
    cluster_t *c;
    uint32_t idx;
    redis_conn_t *rc;          /* up while it is READY */
    const char *label;         /* rc's, in logs and metrics */
    bool auth_error;           /* the last attempt failed on AUTH or -NOAUTH (metrics) */
    inflight_ring_t inflight;  /* commands awaiting their reply, oldest first */
    size_t inflight_bytes;     /* bounded by --redis-max-pending */
    uint64_t seq;              /* last sequence number published to this shard */
    uint32_t subs_waiting;     /* SUBSCRIBE/PSUBSCRIBE replies outstanding */
    uint64_t subs_progress_ms; /* when one was last sent (from none) or answered */
    cluster_dedupe_t dedupe;   /* of the messages received from this shard */
    bool pres_taken;           /* presence TAKEOVER sent on it since start */
} shard_t;

typedef struct interest interest_t;
typedef struct chist chist_t;
typedef struct cretain_read cretain_read_t;

struct cluster {
    broker_t *b;
    shard_t *shards;
    uint32_t nshards;
    uint64_t all; /* mask of every shard */
    cluster_ring_t ring;
    interest_t **buckets; /* power-of-two count */
    size_t nbuckets, ninterests;
    uv_timer_t watchdog;
    uint8_t *env; /* envelope encoding buffer */
    size_t env_cap;
    uint64_t rng; /* seeds each connection's backoff jitter */
    size_t prefix_len;
    bool closed;
    chist_t *hist;                  /* cluster_history.c's state */
    char sha_pub[41];               /* SHA1 of CLUSTER_SCRIPT_PUB, hex */
    char sha_read[41];              /* SHA1 of CLUSTER_SCRIPT_READ, hex */
    char sha_presence[CPRES_N][41]; /* of the presence scripts */
    uint64_t pres_next_ms;          /* broker uptime of the next presence refresh */
    cretain_read_t *retain_reads;   /* reads of MQTT retained messages in flight */
};

/* --- cluster.c, for cluster_history.c ----------------------------------------------- */

/** The shard of topic t[0..len). */
shard_t *cluster_shard_of(cluster_t *c, const char *t, size_t len);

/**
 * Sends argv[0..argc) on sh's command context; its reply goes to the handler of `kind`
 * with ctx. Returns false (nothing sent) when sh is down or out of memory.
 */
bool cluster_send(shard_t *sh, cmd_kind_t kind, void *ctx, size_t bytes, int argc,
                  const char **argv, const size_t *lens);

/**
 * When a local connection holds topic t[0..len) and Redis has not confirmed its SUBSCRIBE
 * on the current connection yet: p is finished once it has (or with an error if the shard
 * goes down first) and true is returned. Otherwise false, p untouched.
 */
bool cluster_when_live(cluster_t *c, const char *t, size_t len, pending_t *p);

/** A random 64-bit number. */
uint64_t cluster_random(cluster_t *c);

/** Wall-clock milliseconds (the clock Redis's TIME is compared with). */
uint64_t cluster_wall_ms(void);

/* --- cluster_history.c, for cluster.c ----------------------------------------------- */

/** Sets up the history part of c (false when out of memory). */
bool chist_init(cluster_t *c);
void chist_free(cluster_t *c);

/** The reply to a CMD_READ (answer OK: value; else an error or DROPPED). */
void chist_read_reply(cluster_t *c, void *ctx, redis_conn_reply_t answer,
                      const redis_value_t *value);

/** A message with a stream position from Redis (e: tail 9, decoded from raw[0..len)). */
void chist_message(cluster_t *c, const cluster_envelope_t *e, const uint8_t *raw, size_t len);

/* --- cluster_retain.c ---------------------------------------------------------------- */

/** bus_ops_t.retain: topic's retained message (qos, payload; empty: cleared) on its shard. */
void cretain_write(void *bus, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                   size_t plen);

/** bus_ops_t.retained: the retained messages matching pattern p, to k's ops->retained. */
void cretain_read(void *bus, conn_t *k, const char *p, size_t len, uint8_t qos);

/** The reply to a CMD_RETAIN or CMD_RETAINED command. */
void cretain_reply(cluster_t *c, cmd_kind_t kind, void *ctx, redis_conn_reply_t answer,
                   const redis_value_t *v);

/** k closes: its reads hand it nothing more. */
void cretain_forget(cluster_t *c, conn_t *k);

/**
 * Delivers message e (decoded from Redis; pos: its stream position, or NULL) to the local
 * subscribers, skipping those waiting for `skip` (router_deliver).
 */
gale_err_t cluster_deliver(cluster_t *c, const cluster_envelope_t *e, const gale_pos_t *pos,
                           const void *skip);

/**
 * sh is connected again: each topic of sh this broker follows reads what was published
 * after the last message it delivered (gap repair across a reconnection).
 */
void chist_shard_ready(cluster_t *c, shard_t *sh);

/** sh went down: messages may be missed until it is back; caches are no longer complete. */
void chist_shard_down(cluster_t *c, shard_t *sh);

/** The topic t[0..len) is no longer SUBSCRIBEd here: its messages stop coming. */
void chist_released(cluster_t *c, const char *t, size_t len);

/** The 1 s sweep: forgets streams idle for a while. */
void chist_sweep(cluster_t *c);

/* --- cluster_presence.c, for cluster.c ---------------------------------------------- */

/** The presence scripts' sources, in CPRES_ order. */
extern const char *const cpres_scripts[CPRES_N];

/** bus.h join, leave and presence (cluster_presence.c). */
void cpres_join(void *bus, pres_member_t *m);
void cpres_leave(void *bus, pres_member_t *m);
gale_err_t cpres_read(void *bus, pending_t *done, const char *topic, size_t len, gale_enc_t enc,
                      bool has_id, uint64_t id, const char **why);

/** The reply to a CMD_PRESENCE* command. */
void cpres_reply(cluster_t *c, cmd_kind_t kind, void *ctx, redis_conn_reply_t answer,
                 const redis_value_t *v);

/** A presence envelope raw[0..len) received on channel[0..channel_len) (not a pmessage). */
void cpres_message(cluster_t *c, const char *channel, size_t channel_len, const uint8_t *raw,
                   size_t len);

/** sh is ready (after SCRIPT LOAD): takeover once after start, then SYNC of its topics. */
void cpres_shard_ready(cluster_t *c, shard_t *sh);

/** From the watchdog: every expiry/3, the node key and REFRESH of the topics with members. */
void cpres_sweep(cluster_t *c);

#endif
