/*
 * The NATS client protocol (docs.nats.io "Client Protocol"; nats-server 2.9 as the reference)
 * as the broker's NATS adapter needs it: parsing the byte stream a client sends (CONNECT,
 * PUB, HPUB, SUB, UNSUB, PING, PONG, +OK, -ERR) one message at a time, CONNECT's options,
 * and the encoders of what the server sends (INFO, MSG, PING, PONG, +OK, -ERR).
 *
 * Pure code: no sockets, no event loop, no allocation beyond the gale_buf_t it appends to.
 * Every input is untrusted; each function bounds its work by the input length.
 *
 * NATS subjects are gale topics: `.`-separated tokens, `*` one token, a last `>` one or
 * more. A subject gale cannot express (over GALE_TOPIC_MAX bytes, an empty token, not UTF-8)
 * is refused with -ERR, as nats-server refuses invalid subjects.
 */
#ifndef GALE_NATS_H
#define GALE_NATS_H

#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Longest control line (an operation and its arguments, the line end included): nats-server's
 *  default max_control_line (which it applies to the arguments alone, a few bytes more). */
#define GALE_NATS_CONTROL_MAX 4096
/** Longest subscription id the adapter keeps. */
#define GALE_NATS_SID_MAX 64

typedef enum {
    GALE_NATS_CONNECT = 1,
    GALE_NATS_PUB,
    GALE_NATS_HPUB, /* parsed (so the stream stays in step) but refused: no headers */
    GALE_NATS_SUB,
    GALE_NATS_UNSUB,
    GALE_NATS_PING,
    GALE_NATS_PONG,
    GALE_NATS_OK,  /* +OK from a client: ignored */
    GALE_NATS_ERR, /* -ERR from a client: ignored */
} gale_nats_op_t;

/** One parsed client message. Pointers point into the input buffer. */
typedef struct {
    gale_nats_op_t op;
    const char *subject; /* PUB, HPUB, SUB: as sent (not yet validated as a gale topic) */
    size_t subject_len;
    const char *reply; /* PUB, HPUB: the reply subject, NULL when absent */
    size_t reply_len;
    const char *queue; /* SUB: the queue group, NULL when absent */
    size_t queue_len;
    const char *sid; /* SUB, UNSUB: 1..GALE_NATS_SID_MAX bytes */
    size_t sid_len;
    bool has_max; /* UNSUB: max_msgs given (0, as any max not above the messages already
                     delivered, unsubscribes at once in nats-server) */
    uint64_t max;
    const uint8_t *payload; /* PUB: the payload; HPUB: headers and payload */
    size_t payload_len;
    size_t header_len; /* HPUB: the header bytes at the start of payload */
    const char *json;  /* CONNECT: the options object (or -ERR's text) as sent, without the
                          spaces around it; empty (not NULL) when nothing follows the name */
    size_t json_len;
} gale_nats_msg_t;

/**
 * Parses the client message at the start of buf[0..len). Operation names are
 * case-insensitive and followed by a space, a tab or the line end; arguments are separated by
 * runs of spaces or tabs; lines end with CRLF (a bare LF is accepted, as nats-server does; a
 * CR elsewhere in a line is an error). PING, PONG and +OK take no argument (trailing spaces
 * allowed). An empty line is an unknown operation, as in nats-server. Sizes and max_msgs are
 * decimal digits only and must fit uint64. Returns:
 *   1  one message: *m filled, *used = its bytes (control line, and payload with its CRLF);
 *   0  incomplete: call again with more bytes appended (nothing consumed);
 *  -1  protocol error: *why (may be NULL) is the -ERR text to send: nats-server's where it
 *      sends one ("Unknown Protocol Operation", also for a payload not followed by CRLF;
 *      "maximum control line exceeded" (nats-server 2.9's spelling) when no line end is within
 * GALE_NATS_CONTROL_MAX bytes; "Maximum Payload Violation" when a PUB/HPUB announces more than
 * max_payload bytes), else a short text in its style for malformed arguments ("Invalid Publish
 *      Arguments", "Bad or Missing Size", "Invalid Subscription ID", ...); the server then
 *      sends it and closes.
 * An error is reported as soon as the bytes given show it (a wrong operation name at once),
 * and a prefix of a stream never gives another answer than the whole stream but 0.
 */
int gale_nats_parse(const uint8_t *buf, size_t len, size_t max_payload, gale_nats_msg_t *m,
                    size_t *used, const char **why);

/** CONNECT's options (only those the adapter uses; others are ignored). */
typedef struct {
    bool verbose;           /* answer +OK to every accepted message; default true (nats-server's
                               default for a client, which every client library overrides) */
    bool pedantic;          /* parsed, no effect; default true (nats-server's) */
    bool echo;              /* default true: deliver the connection's own messages to it */
    bool headers;           /* the client wants headers (refused: INFO says headers false) */
    const char *auth_token; /* NULL when absent (or null); unescaped into the caller's buffer,
                               NUL-terminated */
    size_t auth_token_len;
    const char *name; /* NULL when absent (or null); unescaped into the caller's buffer,
                         NUL-terminated */
    size_t name_len;
    int64_t protocol; /* as sent (clients send 0 or 1); 0 when absent */
} gale_nats_connect_t;

/**
 * Parses CONNECT's JSON object json[0..len) into *c: strict JSON (gale_json_valid); the
 * fields above with their JSON types (a wrong type is an error; null counts as absent, and
 * the last of repeated fields wins, as in nats-server's Go decoding); keys match exactly
 * (Go's would match "Verbose" too); unknown fields ignored whatever their type. Strings are
 * unescaped into buf[0..cap), each NUL-terminated; one containing a NUL or a lone surrogate
 * escape is an error, and so is one whose escaped form, plus one byte, does not fit in what
 * is left of buf (so a cap of GALE_NATS_CONTROL_MAX always suffices for a CONNECT line).
 * Returns false with *why (may be NULL) when malformed: a static reason that names the field,
 * without saying CONNECT (e.g. "echo is not a boolean").
 */
bool gale_nats_parse_connect(const char *json, size_t len, gale_nats_connect_t *c, char *buf,
                             size_t cap, const char **why);

/** What INFO announces. */
typedef struct {
    const char *server_id; /* printable ASCII, no quote or backslash */
    const char *server_name;
    const char *version;
    const char *host;
    int port;
    uint64_t max_payload;
    bool auth_required;
    uint64_t client_id;
} gale_nats_info_t;

/**
 * INFO {...}CRLF with headers false, proto 1, jetstream false, in nats-server's order:
 * server_id, server_name, version, proto, host, port, headers, auth_required (only when
 * true, as nats-server), max_payload, jetstream, client_id. NULL strings are "".
 */
gale_err_t gale_nats_encode_info(gale_buf_t *out, const gale_nats_info_t *i);

/**
 * MSG subject sid [reply] #bytes CRLF payload CRLF. subject, sid and reply are written as
 * given (validated by the caller); reply NULL: none.
 */
gale_err_t gale_nats_encode_msg(gale_buf_t *out, const char *subject, size_t subject_len,
                                const char *sid, size_t sid_len, const char *reply,
                                size_t reply_len, const uint8_t *payload, size_t payload_len);

/** PING, PONG or +OK, with CRLF. */
gale_err_t gale_nats_encode_ping(gale_buf_t *out);
gale_err_t gale_nats_encode_pong(gale_buf_t *out);
gale_err_t gale_nats_encode_ok(gale_buf_t *out);

/**
 * -ERR 'text'CRLF. text is ASCII without `'` or line breaks (others are replaced by `?`),
 * cut at 200 bytes.
 */
gale_err_t gale_nats_encode_err(gale_buf_t *out, const char *text);

#endif
