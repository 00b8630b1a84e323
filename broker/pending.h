/*
 * pending: an answer that waits for the cluster bus (Redis), whoever asked.
 *
 * The core's answer to a request (core.c: a WebSocket client's, or one
 * message of an HTTP publish, api.c being an adapter like session.c)
 * embeds a pending_t; the cluster (cluster.c) holds it until Redis answers
 * and then finishes it, knowing nothing of who waits: done() does the rest.
 * This is the one completion mechanism of the broker.
 */
#ifndef GALE_PENDING_H
#define GALE_PENDING_H

#include "gale_protocol.h"

#include <stdint.h>

typedef struct broker broker_t;
typedef struct pending pending_t;
struct conn_reply;

struct pending {
    /**
     * Called once with the outcome: GALE_OK, or the error and why (a string
     * with static storage). The waiter may free the pending_t here.
     */
    void (*done)(broker_t *b, pending_t *p, gale_err_t e, const char *why);
    pending_t *wnext;       /* the cluster's list of subs waiting for one interest */
    struct conn_reply *out; /* where the cluster writes what the answer carries besides its
                               outcome (positions, recovered, dup, a hist frame); NULL: none */
    const char *local_why;  /* pub: why the local delivery failed (cluster.c) */
    uint8_t local_err;      /* pub: gale_err_t of the local delivery (cluster.c) */
};

/** Finishes p: its waiter learns the outcome (and may free p). */
static inline void pending_finish(broker_t *b, pending_t *p, gale_err_t e, const char *why)
{
    p->done(b, p, e, why);
}

#endif
