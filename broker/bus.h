/*
 * bus: how the core reaches the other brokers, as one
 * small interface: cluster.c implements it over Redis (--redis); unit tests
 * put a fake one in its place. Without --redis there is none (b->bus.ops
 * NULL) and everything stays on this node.
 *
 * What each operation promises is written at cluster_sub, cluster_pub and
 * cluster_release (cluster.h), the implementation.
 */
#ifndef GALE_BUS_H
#define GALE_BUS_H

#include "config.h"
#include "gale_protocol.h"
#include "pending.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct conn conn_t;
typedef struct pres_member pres_member_t;

/** A publish on the bus. */
typedef struct bus_pub {
    const char *topic;
    size_t topic_len;
    gale_enc_t enc; /* of data */
    const uint8_t *data;
    size_t data_len;
    const char *mid; /* NULL: none */
    size_t mid_len;
    const char *reply; /* the publisher's reply topic; NULL: none */
    size_t reply_len;
    uint64_t noecho; /* the publishing connection when it takes none of its own messages */
    bool qos0;       /* an MQTT QoS 0 publish (gale_request_t.qos0) */
    const gale_history_rule_t *rule; /* the topic's --history; NULL: none */
} bus_pub_t;

typedef struct bus_ops {
    /** Makes the subscription to pattern p live on every broker (cluster_sub). */
    gale_err_t (*sub)(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                      bool *deferred);
    /** No local connection holds pattern p any more (cluster_release; a topics on_last). */
    void (*release)(const char *p, size_t len, void *bus);
    /** Delivers locally and to every broker; done follows Redis's answer (cluster_pub). */
    gale_err_t (*pub)(void *bus, pending_t *done, const bus_pub_t *m, const char **why);
    /** A sub of a topic with history: live, positioned, replayed to c (cluster_recover). */
    gale_err_t (*recover)(void *bus, pending_t *done, conn_t *c, const char *topic, size_t len,
                          const gale_history_rule_t *rule, const gale_pos_t *since,
                          const char **why);
    /** The hist answer of a topic with history, built for enc (cluster_hist). */
    gale_err_t (*hist)(void *bus, pending_t *done, const char *topic, size_t len,
                       const gale_history_rule_t *rule, uint64_t limit, gale_enc_t enc, bool has_id,
                       uint64_t id, const char **why);
    /** c closes: recoveries it waits for deliver nothing more to it (cluster_forget). */
    void (*forget)(void *bus, conn_t *c);
    /** m just became present here: recorded on its topic's shard (cpres_join). */
    void (*join)(void *bus, pres_member_t *m);
    /** m stopped being present (presence_detach): its leave; m is the bus's (cpres_leave). */
    void (*leave)(void *bus, pres_member_t *m);
    /** The presence answer of a topic with presence, built for enc (cpres_read). */
    gale_err_t (*presence)(void *bus, pending_t *done, const char *topic, size_t len,
                           gale_enc_t enc, bool has_id, uint64_t id, const char **why);
    /** MQTT: topic's retained message (empty payload: cleared) on its shard (cretain_write). */
    void (*retain)(void *bus, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                   size_t plen);
    /** MQTT: the retained messages matching pattern p, to c's ops->retained (cretain_read). */
    void (*retained)(void *bus, conn_t *c, const char *p, size_t len, uint8_t qos);
} bus_ops_t;

typedef struct bus {
    const bus_ops_t *ops; /* NULL: single node */
    void *ctx;            /* the implementation's (cluster_t) */
} bus_t;

#endif
