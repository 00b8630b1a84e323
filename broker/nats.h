/*
 * nats: NATS clients over WebSocket at /nats, as an adapter of the core (session.h
 * session_proto_t, conn.h conn_ops_t): INFO first, CONNECT (a gale token as auth_token),
 * PING/PONG, PUB (with reply subjects), SUB (one MSG per matching subscription id), UNSUB
 * with an optional max, echo:false, -ERR for permission violations with the connection kept
 * open. Parsing and encoding are protocol/gale_nats.h's. docs/PROTOCOL-NOTES.md "NATS" lists
 * what is supported and what is not.
 */
#ifndef GALE_NATS_ADAPTER_H
#define GALE_NATS_ADAPTER_H

#include "broker.h"
#include "session.h"

extern const session_proto_t nats_proto;

/** Frees the broker-wide NATS state (the last MSG frame built) at teardown. */
void nats_free(broker_t *b);

#endif
