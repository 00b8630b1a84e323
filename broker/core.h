/*
 * core: request handling, whatever transport carries the requests. Decodes a
 * gale v1 message (or takes a decoded request from an adapter of another
 * protocol), authorizes it (--jwt-secret grants), applies --pub-rate, and
 * carries out sub, unsub, pub, hist, presence, ping and refresh (a new token for the
 * connection, whose grant then replaces its own): the local topic index and router,
 * history (history.h), presence (presence.h), and
 * with --redis the cluster, whose answers come later (pending.h). Answers go
 * back through the connection's conn_ops_t in the order of the requests.
 *
 * Includes no transport header: tests/unit/test_core.c drives it with a fake
 * connection.
 */
#ifndef GALE_CORE_H
#define GALE_CORE_H

#include "broker.h"
#include "conn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct auth_grant;

/**
 * Sets up the core's part of a newly opened connection c (zeroed by its
 * transport): ops, delivery format (conn.h CONN_FMT_*, a gale_enc_t for gale v1), a new id,
 * a reference to grant (NULL when the broker is open), a full --pub-rate bucket.
 */
void core_open(broker_t *b, conn_t *c, const conn_ops_t *ops, int fmt, struct auth_grant *grant);

/**
 * One whole gale v1 message of c: `binary` when it came as a binary frame.
 * Returns 0, or the close code the transport must close with now: 1007 for
 * a text message that is not UTF-8 (RFC 6455 8.1).
 */
uint16_t core_message(broker_t *b, conn_t *c, const uint8_t *msg, size_t len, bool binary);

/** Longest name of a connection, NUL included (see core_conn_name). */
#define CORE_CONN_NAME_MAX 40

/**
 * Writes c's id unique across a cluster, `<16 hex digits of b->instance>-<c->id>`, to out
 * (CORE_CONN_NAME_MAX bytes); returns its length. In `hello` and in presence.
 */
size_t core_conn_name(const broker_t *b, const conn_t *c, char *out);

/** The `limit` of a `hist` that gives none (docs/PROTOCOL.md). */
#define CORE_HIST_LIMIT 100

/** One decoded request of c (an adapter's, or core_message's). */
void core_request(broker_t *b, conn_t *c, const gale_request_t *req);

/**
 * c stops being present on every topic now (the broker is stopping and c will close): its
 * leaves go out at once rather than when its close completes.
 */
void core_absent(broker_t *b, conn_t *c);

/**
 * c closes: drops its subscriptions, releases its grant, and detaches its
 * answers the cluster still holds (they are freed when finished). c may be
 * freed afterwards.
 */
void core_close(broker_t *b, conn_t *c);

#endif
