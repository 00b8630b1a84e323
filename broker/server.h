/*
 * server: the broker's network edge, libwebsockets 4.1.6 on the broker's
 * libuv loop: the listener, the WebSocket endpoint, the HTTP mounts, and the
 * lws callback that hands connections to session.c, http.c and api.c.
 * Started and stopped by the lifecycle (broker.c).
 */
#ifndef GALE_SERVER_H
#define GALE_SERVER_H

#include "broker.h"

#include <stdbool.h>

/** The WebSocket endpoint's path. */
#define SERVER_WS_PATH "/ws"
/** MQTT 3.1.1 over WebSocket (mqtt.c). */
#define SERVER_MQTT_PATH "/mqtt"
/** NATS over WebSocket (nats.c). */
#define SERVER_NATS_PATH "/nats"

/**
 * Sends libwebsockets' log lines to the broker's log (after log_set_level:
 * lws notices only at debug). Once per process, before server_start.
 */
void server_attach_log(void);

/**
 * Creates the lws context on b's loop and its vhost on --listen (b->port is
 * the port listened on). Returns false after logging why (the address in
 * use, the TLS files, the lws plugin missing); server_close and server_free
 * are still to be called.
 */
bool server_start(broker_t *b);

/**
 * With --max-connections-per-ip: true, and *n the client addresses holding WebSocket
 * connections now; false (*n 0) without.
 */
bool server_client_addresses(const broker_t *b, uint64_t *n);

/** From the 1 s sweep: returns memory lws no longer needs (lws_mem_trim). */
void server_sweep(broker_t *b);

/**
 * Starts lws's teardown (its first lws_context_destroy): every connection is
 * closed, its handles close on the loop. Call after closing the broker's own
 * handles, from a fresh loop turn.
 */
void server_close(broker_t *b);

/** After uv_run() returned: lws's second teardown step, then frees. Safe without a start. */
void server_free(broker_t *b);

#endif
