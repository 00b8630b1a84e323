/*
 * cli_conn: one gale connection for the command-line client, on the
 * libwebsockets 4.1 client API and lws's own poll loop (one thread).
 *
 * The owner gets callbacks, all on the loop thread: on_open once the broker's
 * hello has arrived, on_reply for every later broker message, on_closed once
 * per connection attempt (failed or ended), and on_wake after lws_cancel_service
 * (another thread has work for the loop, or a signal arrived: see
 * cli_interrupted). A connection can be opened again after on_closed
 * (--reconnect).
 *
 * cli_request_run drives a whole command that sends one request and prints its answer.
 */
#ifndef GALE_CLI_CONN_H
#define GALE_CLI_CONN_H

#include "cli.h"

#include <libwebsockets.h>

typedef struct cli_conn cli_conn_t;

/** Why a connection attempt failed or a connection ended. */
typedef enum {
    CLI_END_CLOSED = 0,  /* we closed it (cli_conn_close) */
    CLI_END_REFUSED,     /* TCP connection refused */
    CLI_END_UNREACHABLE, /* no route, name not resolved, connect timed out */
    CLI_END_HANDSHAKE,   /* TLS or WebSocket handshake failed or was refused */
    CLI_END_LOST,        /* the broker closed it, or it broke */
} cli_end_t;

typedef struct {
    cli_end_t kind;
    bool established; /* the WebSocket was open (hello or not) */
    int http_status;  /* CLI_END_HANDSHAKE: the HTTP status, 0 if none */
    int close_code;   /* CLI_END_LOST: the broker's close code, 0 if none */
    char detail[256]; /* human-readable reason */
} cli_end_info_t;

typedef struct {
    void (*on_open)(void *arg, const gale_reply_t *hello);
    void (*on_reply)(void *arg, const gale_reply_t *r);
    void (*on_closed)(void *arg, const cli_end_info_t *end);
    void (*on_wake)(void *arg);
} cli_handler_t;

/**
 * Creates the lws context for opts (NULL and a message printed on failure).
 * Installs SIGINT/SIGTERM handlers that set cli_interrupted() and wake the loop.
 */
cli_conn_t *cli_conn_new(const cli_common_t *opts, const cli_handler_t *h, void *arg);
/** Stops the loop, closes any connection without ceremony, frees everything. NULL is fine. */
void cli_conn_free(cli_conn_t *c);

/**
 * Starts connecting to opts->url, with opts->token as it is now (a --token-file may have
 * changed it since the last attempt). false (on_closed already called) if it failed at once.
 */
bool cli_conn_connect(cli_conn_t *c);
/** True between cli_conn_connect and on_closed. */
bool cli_conn_active(const cli_conn_t *c);
/** True once the WebSocket is open and hello has arrived (until on_closed). */
bool cli_conn_ready(const cli_conn_t *c);

/**
 * Queues one message for sending. *frame must have been initialised with
 * gale_buf_init(frame, LWS_PRE); its storage moves into the queue and *frame
 * is left empty (ready for reuse). Dropped if the connection is not ready.
 */
void cli_conn_send(cli_conn_t *c, gale_buf_t *frame);
/** Messages queued and not yet handed to the socket. */
size_t cli_conn_queued(const cli_conn_t *c);

/**
 * Closes the connection cleanly (close frame 1000 after the queued
 * messages; at most 2 s for the broker's answer); on_closed follows with
 * CLI_END_CLOSED. Not yet connected: the attempt is dropped at once.
 */
void cli_conn_close(cli_conn_t *c);

/** Runs the loop until cli_conn_stop. Returns 0, or -1 if lws failed. */
int cli_conn_run(cli_conn_t *c);
/** Makes cli_conn_run return (after the current callback). */
void cli_conn_stop(cli_conn_t *c);

/** Calls cb after `seconds` on the loop (re-arming a pending sul moves it). */
void cli_conn_timer(cli_conn_t *c, lws_sorted_usec_list_t *sul, sul_cb_t cb, double seconds);

/** The lws context (for lws_cancel_service from another thread). */
struct lws_context *cli_conn_context(cli_conn_t *c);

/** True once SIGINT or SIGTERM has arrived. */
bool cli_interrupted(void);

/** Prints "cannot connect to URL: ..." or "connection to URL lost: ..." for end. */
void cli_report_end(const cli_common_t *opts, const cli_end_info_t *end);

/* ---- one request, one answer (`gale hist`, `gale presence`) ---- */

/** The id the request of cli_request_run carries. */
#define CLI_REQUEST_ID 1

/** One request and what answers it. */
typedef struct {
    /**
     * Encodes the request, with id CLI_REQUEST_ID, at the end of frame (empty, LWS_PRE
     * headroom). false: out of memory.
     */
    bool (*encode)(void *arg, gale_buf_t *frame);
    gale_reply_op_t answer; /* the op of the answer (with id CLI_REQUEST_ID) */
    /** Prints the answer; returns the exit code. */
    int (*print)(void *arg, const gale_reply_t *answer);
    const char *awaited; /* --timeout once connected: "timed out after N s AWAITED" */
} cli_request_t;

/**
 * Runs a command that sends one request and prints its answer: connects (opts), sends the
 * request once hello has arrived, hands the answer to req->print and closes the connection
 * cleanly. An err from the broker ("server error CODE: MSG") ends it with CLI_EXIT_SERVER;
 * --timeout, SIGINT/SIGTERM and connection failures as for the other commands. Returns the
 * exit code.
 */
int cli_request_run(const cli_common_t *opts, const cli_request_t *req, void *arg);

#endif
