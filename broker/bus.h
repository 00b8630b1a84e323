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

#include "gale_protocol.h"
#include "pending.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bus_ops {
    /** Makes the subscription to pattern p live on every broker (cluster_sub). */
    gale_err_t (*sub)(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                      bool *deferred);
    /** No local connection holds pattern p any more (cluster_release; a topics on_last). */
    void (*release)(const char *p, size_t len, void *bus);
    /** Delivers locally and to every broker; done follows Redis's answer (cluster_pub). */
    gale_err_t (*pub)(void *bus, pending_t *done, const char *topic, size_t topic_len,
                      gale_enc_t enc, const uint8_t *data, size_t data_len, const char **why);
} bus_ops_t;

typedef struct bus {
    const bus_ops_t *ops; /* NULL: single node */
    void *ctx;            /* the implementation's (cluster_t) */
} bus_t;

#endif
