/*
 * gale v1 wire protocol: decoding of client messages, encoding of server
 * messages, conversion of `data` between JSON and MessagePack, validation of
 * topics and patterns, and of the payload of a WebSocket close frame.
 *
 * Pure code: no sockets, no event loop, no global mutable state. Every input
 * is untrusted: each function bounds its work by the input length and by
 * GALE_MAX_DEPTH, and never allocates more than a small multiple of the input.
 *
 * The contract is docs/PROTOCOL.md; the choices it leaves open are
 * documented in docs/PROTOCOL-NOTES.md.
 */
#ifndef GALE_PROTOCOL_H
#define GALE_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GALE_PROTOCOL_VERSION 1
#define GALE_TOPIC_MAX 255
/** Deepest nesting of arrays/maps accepted in a message (the top-level map is depth 1). */
#define GALE_MAX_DEPTH 64
/** Largest `id` a client may send: 2^53 - 1. */
#define GALE_ID_MAX ((UINT64_C(1) << 53) - 1)

/** Encodings, chosen per connection by Sec-WebSocket-Protocol. */
typedef enum {
    GALE_ENC_JSON = 0,    /* "gale.v1.json": text frames */
    GALE_ENC_MSGPACK = 1, /* "gale.v1.msgpack": binary frames */
} gale_enc_t;
#define GALE_ENC_COUNT 2

/** Subprotocol name of an encoding ("gale.v1.json", "gale.v1.msgpack"). */
const char *gale_enc_subprotocol(gale_enc_t enc);

/** Client operations. */
typedef enum {
    GALE_OP_SUB = 1,
    GALE_OP_UNSUB,
    GALE_OP_PUB,
    GALE_OP_PING,
    GALE_OP_HIST,
    GALE_OP_PRESENCE,
    GALE_OP_REFRESH, /* gale's addition: a new token for the connection (docs/PROTOCOL.md) */
} gale_op_t;

/** Longest `token` of a refresh, in bytes (the broker's AUTH_TOKEN_MAX). */
#define GALE_TOKEN_MAX 8192

/** Longest `mid` of a pub (docs/PROTOCOL.md "Idempotent publish"). */
#define GALE_MID_MAX 64
/** Longest `ep` a request may name: a longer one is well-formed but names no epoch. */
#define GALE_EP_MAX 64

/**
 * A stream position (docs/PROTOCOL.md "Stream positions"): the epoch
 * ep[0..ep_len) and the offset.
 */
typedef struct {
    const char *ep;
    size_t ep_len;
    uint64_t off;
} gale_pos_t;

/** Error codes of the `err` message, in docs/PROTOCOL.md's order. GALE_OK is not an error. */
typedef enum {
    GALE_OK = 0,
    GALE_ERR_BAD_REQUEST,
    GALE_ERR_UNKNOWN_OP,
    GALE_ERR_BAD_TOPIC,
    GALE_ERR_TOO_LARGE,
    GALE_ERR_FORBIDDEN,
    GALE_ERR_LIMIT,
    GALE_ERR_UNAVAILABLE,
    GALE_ERR_INTERNAL,
} gale_err_t;
#define GALE_ERR_COUNT 9

/** Wire name of an error code ("bad_request", ...); "ok" for GALE_OK, "internal" if out of range.
 */
const char *gale_err_name(gale_err_t err);

/**
 * One decoded client message. Pointers point into the caller's input buffer
 * and are valid as long as it is. Exception: a JSON `topic` written with
 * escape sequences (e.g. "a\u002eb") is unescaped into _topic_buf, and then
 * `topic` points there: use it through the same gale_request_t (do not copy
 * the struct by value and keep the copy's `topic`).
 *
 * The fields of an op that does not take them stay zero (NULL, false), even
 * when the message carried them: e.g. `info` on an unsub is ignored.
 */
typedef struct {
    gale_op_t op;
    bool has_id;
    uint64_t id;       /* valid when has_id; 0 .. GALE_ID_MAX */
    const char *topic; /* sub/unsub/pub/hist/presence: validated topic or pattern; NULL for ping */
    size_t topic_len;
    bool is_pattern;     /* topic has a `*` or `>` segment */
    const uint8_t *data; /* pub: the raw bytes of the `data` value, in data_enc */
    size_t data_len;
    gale_enc_t data_enc; /* the encoding of data and info: the input's (an adapter of another
                            protocol sets it per message, gale_payload_to_data) */
    const char *reply;   /* pub: `reply`, a concrete topic for answers (gale's addition, carried
                            to subscribers; NATS reply subjects), NULL when absent */
    size_t reply_len;
    bool qos0;      /* pub: an MQTT client's QoS 0 PUBLISH: MQTT subscribers get it at QoS 0 (set by
                       the MQTT adapter; gale's own pubs and NATS's count as QoS 1) */
    bool has_since; /* sub: `since` was given (then the topic is concrete) */
    gale_pos_t since; /* sub: the position to resume after; since.ep_len > GALE_EP_MAX names
                         no epoch (and since.ep is then NULL) */
    bool has_limit;   /* hist: `limit` was given */
    uint64_t limit;   /* hist: the limit (any integer >= 0) */
    const char *mid;  /* pub: the `mid` (1..GALE_MID_MAX bytes), NULL when absent */
    size_t mid_len;
    bool presence;       /* sub: `presence` was true (then the topic is concrete) */
    const uint8_t *info; /* sub: the raw bytes of the `info` value, in the input encoding: a
                            JSON object (byte-exact, as for data) or a MessagePack map (its
                            keys may be of any type); NULL when absent. Then the topic is
                            concrete. Its size is not limited here (the broker's
                            --presence-info-max is) */
    size_t info_len;
    const char *token; /* refresh: the token (1..GALE_TOKEN_MAX bytes, written without JSON
                          escapes), pointing into the input; NULL for every other op */
    size_t token_len;
    char _topic_buf[GALE_TOPIC_MAX]; /* private: an unescaped JSON topic */
    char _ep_buf[GALE_EP_MAX];       /* private: an unescaped JSON `since.ep` */
    char _mid_buf[GALE_MID_MAX];     /* private: an unescaped JSON `mid` */
    char _reply_buf[GALE_TOPIC_MAX]; /* private: an unescaped JSON `reply` */
} gale_request_t;

/**
 * Decodes one client message of encoding `enc` from buf[0..len).
 *
 * Returns GALE_OK and fills *req, or an error code (GALE_ERR_BAD_REQUEST,
 * GALE_ERR_UNKNOWN_OP, GALE_ERR_BAD_TOPIC) with *why set to a static,
 * human-readable reason. Even on error, req->has_id/req->id are set when the
 * message carried a valid `id`, so the `err` reply can carry it.
 *
 * Checks, in this order: the whole input is one well-formed value of the
 * encoding (JSON: strict RFC 8259, valid UTF-8, nothing but whitespace after
 * it; MessagePack: pre-scanned for hostile sizes, nothing after it), within
 * GALE_MAX_DEPTH (in MessagePack an ext counts as one more level, since it
 * converts to a JSON object); it is an object/map with string keys and no duplicate key
 * among the fields gale reads (op, id, topic, data, since, limit, mid, presence, info,
 * token); `op` is a string; `id`, when present, is an integer 0..2^53-1; `op` is known;
 * refresh: `token` is a string of 1..GALE_TOKEN_MAX bytes without JSON escapes (a JWT never
 * needs one; GALE_ERR_BAD_REQUEST otherwise) and nothing else is read; `topic`
 * is present and a string for every op but ping and refresh; it is a valid pattern (sub/unsub) or
 * concrete topic (pub, hist, presence: else GALE_ERR_BAD_TOPIC); then the op's own
 * fields (GALE_ERR_BAD_REQUEST): sub: `since` (an object/map of a string ep and an
 * integer off >= 0, on a topic), `presence` (a boolean; true only on a topic), `info`
 * (an object/map, only on a topic), in that order; hist: `limit` (an integer >= 0); pub:
 * `data` is present, `mid` (a string of 1..GALE_MID_MAX bytes). Unknown fields are
 * ignored.
 *
 * JSON `data` and `info` are forwarded byte-exact: req->data (req->info) spans
 * exactly the bytes of the value as the client sent them (without surrounding
 * whitespace).
 */
gale_err_t gale_decode_request(gale_enc_t enc, const uint8_t *buf, size_t len, gale_request_t *req,
                               const char **why);

/** True if s[0..len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool gale_utf8_valid(const uint8_t *s, size_t len);

/** Largest payload of a WebSocket control frame (RFC 6455 5.5). */
#define GALE_CONTROL_MAX 125
/** The close status that stands for "no status code present" (RFC 6455 7.4.1); never sent. */
#define GALE_CLOSE_NO_STATUS 1005

/**
 * True if `code` is a status code a peer may send in a close frame: 1000-1003, 1007-1011 and
 * 3000-4999. Everything else (below 1000, 1004-1006, 1012-2999, 5000 and up) is not
 * (docs/PROTOCOL-NOTES.md "WebSocket close frames" says why for each range).
 */
bool gale_close_code_valid(unsigned code);

/**
 * Checks the payload p[0..len) of a close frame received from a peer: valid when it is empty,
 * or a status code (network byte order) that gale_close_code_valid accepts followed by a
 * reason in valid UTF-8, GALE_CONTROL_MAX bytes at most in all. Returns NULL when valid, else
 * a static string saying what is wrong (the answer is then a close with 1002). *code (may be
 * NULL) receives the status code the payload carries, GALE_CLOSE_NO_STATUS when it carries
 * none (fewer than 2 bytes or over the limit).
 */
const char *gale_close_payload_check(const uint8_t *p, size_t len, uint16_t *code);

/** True if t[0..len) is a valid concrete topic (docs/PROTOCOL.md "Topics"). */
bool gale_topic_valid(const char *t, size_t len);

/**
 * True if t[0..len) is a valid pattern: a concrete topic, or one with `*`
 * segments and/or a final `>` segment. *is_pattern (may be NULL) is set when
 * it has a wildcard segment.
 */
bool gale_pattern_valid(const char *t, size_t len, bool *is_pattern);

/** True if concrete `topic` matches `pattern` (both assumed valid). */
bool gale_pattern_match(const char *pattern, size_t plen, const char *topic, size_t tlen);

/**
 * A growable output buffer. Encoders append at data+len. `headroom` bytes
 * are reserved at the front by gale_buf_init (len starts there) so the owner
 * can later prepend a header (the broker puts its frame header there) without
 * copying. After an allocation failure `oom` is set and appends become no-ops;
 * encoders then return GALE_ERR_INTERNAL.
 */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    size_t headroom;
    bool oom;
} gale_buf_t;

/** Initialises *b with `headroom` reserved bytes (allocates lazily on first append). */
void gale_buf_init(gale_buf_t *b, size_t headroom);
/** Frees b's storage; safe on a zeroed or already-freed buffer. */
void gale_buf_free(gale_buf_t *b);
/** Appends n bytes; returns false (and sets oom) on allocation failure. */
bool gale_buf_append(gale_buf_t *b, const void *p, size_t n);
/** Payload start (after the headroom) and payload length. */
static inline uint8_t *gale_buf_payload(const gale_buf_t *b)
{
    return b->data + b->headroom;
}
static inline size_t gale_buf_payload_len(const gale_buf_t *b)
{
    return b->len - b->headroom;
}

/*
 * Encoders of server messages. Each appends one complete message (a JSON
 * object or a MessagePack map) to *out and returns GALE_OK, or
 * GALE_ERR_INTERNAL on allocation failure. Strings are escaped as needed.
 */

/** {"op":"hello","v":1,"node":node,"conn":conn,"max_msg":max_msg} */
gale_err_t gale_encode_hello(gale_buf_t *out, gale_enc_t enc, const char *node, const char *conn,
                             uint64_t max_msg);
/** {"op":"ack","id":id} */
gale_err_t gale_encode_ack(gale_buf_t *out, gale_enc_t enc, uint64_t id);

/** The optional fields of an `ack` (docs/PROTOCOL.md "Additions"). */
typedef struct {
    const gale_pos_t *pos; /* "ep" and "off"; NULL: neither */
    bool has_off;          /* "off" alone (a dup on a topic whose epoch is not known here) */
    uint64_t off;          /* with has_off */
    int8_t recovered;      /* "recovered": -1 absent, 0 false, 1 true */
    bool dup;              /* "dup": true */
} gale_ack_ext_t;

/** {"op":"ack","id":id} with the fields of x, in the order recovered, ep, off, dup. */
gale_err_t gale_encode_ack_ext(gale_buf_t *out, gale_enc_t enc, uint64_t id,
                               const gale_ack_ext_t *x);
/** {"op":"pong"} or {"op":"pong","id":id} */
gale_err_t gale_encode_pong(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id);
/** {"op":"err","code":gale_err_name(code),"msg":msg} plus "id" when has_id. */
gale_err_t gale_encode_err(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                           gale_err_t code, const char *msg);
/**
 * {"op":"err","code":gale_err_name(code),"topic":topic,"msg":msg}, without "id": an error
 * about a subscription rather than a request, e.g. one a refresh took away (docs/PROTOCOL.md
 * "Token refresh").
 */
gale_err_t gale_encode_err_topic(gale_buf_t *out, gale_enc_t enc, gale_err_t code,
                                 const char *topic, size_t topic_len, const char *msg);

/**
 * {"op":"msg","topic":topic,"data":DATA} in encoding `enc`, where the data
 * value data[0..data_len) is in encoding `data_enc` (as validated by
 * gale_decode_request). Same encoding: DATA is copied byte-exact. Different
 * encodings: DATA is converted (gale_convert_data); a top-level MessagePack
 * bin sent to JSON becomes the field "bin" (base64 string) instead of "data".
 * Returns GALE_ERR_BAD_REQUEST if data cannot be converted (not well-formed,
 * or its JSON form would exceed 32x its size + 256 bytes: only map keys nested
 * inside non-string map keys get there);
 * same-encoding data is copied without being validated again. On any error
 * nothing is appended.
 */
gale_err_t gale_encode_msg(gale_buf_t *out, gale_enc_t enc, const char *topic, size_t topic_len,
                           gale_enc_t data_enc, const uint8_t *data, size_t data_len);

/** gale_encode_msg with the message's stream position: "ep" and "off" after "topic". */
gale_err_t gale_encode_msg_pos(gale_buf_t *out, gale_enc_t enc, const char *topic, size_t topic_len,
                               const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                               size_t data_len);

/**
 * gale_encode_msg_pos with the publisher's reply topic reply[0..reply_len) (NULL: none) as
 * "reply" after the position.
 */
gale_err_t gale_encode_msg_reply(gale_buf_t *out, gale_enc_t enc, const char *topic,
                                 size_t topic_len, const gale_pos_t *pos, const char *reply,
                                 size_t reply_len, gale_enc_t data_enc, const uint8_t *data,
                                 size_t data_len);

/*
 * Payloads of protocols without gale's data model (MQTT, NATS: bytes). docs/PROTOCOL-NOTES.md
 * "Payloads of MQTT and NATS".
 */

/**
 * Payload bytes p[0..len) as gale data: when they are one strict JSON value (gale_json_valid,
 * nested at most GALE_MAX_DEPTH - 1), JSON data that is those very bytes (*data = p); else a
 * MessagePack bin of them, written to scratch (initialised by the caller, headroom 0), which
 * JSON subscribers receive as "bin". Returns the data's encoding; *data NULL when scratch ran
 * out of memory.
 */
gale_enc_t gale_payload_to_data(const uint8_t *p, size_t len, gale_buf_t *scratch,
                                const uint8_t **data, size_t *data_len);

/**
 * gale data as payload bytes, appended to out: JSON data as its text (the bytes as
 * published); MessagePack data that is one bin, its bytes; other MessagePack data converted
 * to JSON text. GALE_ERR_BAD_REQUEST when it cannot be converted (gale_convert_data), and
 * then nothing is appended.
 */
gale_err_t gale_payload_from_data(gale_buf_t *out, gale_enc_t enc, const uint8_t *data, size_t len);

/*
 * The `hist` answer, {"op":"hist","id":id,"ep":E,"off":N,"msgs":[{"off":K,"data":D},...]},
 * written in three steps: begin (pos NULL: no "ep" and "off" 0; count: the items that will
 * follow), one item per message, oldest first, then end. An item whose data cannot be
 * converted to enc (as gale_encode_msg) is left out and its call returns
 * GALE_ERR_BAD_REQUEST; that happens only for JSON output, where no count is written, so
 * the answer stays well-formed. Any other error leaves the answer unusable: drop it.
 */
gale_err_t gale_encode_hist_begin(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                  const gale_pos_t *pos, size_t count);
gale_err_t gale_encode_hist_item(gale_buf_t *out, gale_enc_t enc, bool first, uint64_t off,
                                 gale_enc_t data_enc, const uint8_t *data, size_t data_len);
gale_err_t gale_encode_hist_end(gale_buf_t *out, gale_enc_t enc);

/*
 * Presence (docs/PROTOCOL.md "Presence"). A member is kept as JSON text whatever the
 * encodings of the connections involved (in a cluster it is what Redis holds):
 * gale_encode_member writes it, and the encoders below splice or convert it.
 */

/**
 * The member {"conn":conn,"user":user,"info":INFO}, always as JSON text: "user" only when
 * user is not NULL, "info" only when info_json is not NULL. conn and user are escaped
 * (ill-formed UTF-8 becomes U+FFFD); info_json[0..info_len) is a JSON object that the
 * caller guarantees well-formed, copied byte-exact. GALE_ERR_INTERNAL (nothing appended)
 * on allocation failure or info_json with info_len 0.
 */
gale_err_t gale_encode_member(gale_buf_t *out, const char *conn, size_t conn_len, const char *user,
                              size_t user_len, const uint8_t *info_json, size_t info_len);

/*
 * The `presence` answer, {"op":"presence","id":id,"topic":T,"count":C,"members":[M,...]}
 * ("id" only when has_id), written in three steps: begin (nmembers: how many members will
 * follow; MessagePack writes it as the array's length), one call per member, then end.
 * member_json[0..len) is a member as gale_encode_member writes it: copied in JSON,
 * converted to a map in MessagePack. A member that is not a well-formed JSON object is
 * refused with GALE_ERR_BAD_REQUEST and nothing appended: in JSON the answer stays
 * well-formed without it; in MessagePack its array length is then wrong, so check members
 * (gale_json_valid) before begin when they come from elsewhere. Any other error leaves the
 * answer unusable: drop it.
 */
gale_err_t gale_encode_presence_begin(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                      const char *topic, size_t topic_len, uint64_t count,
                                      size_t nmembers);
gale_err_t gale_encode_presence_member(gale_buf_t *out, gale_enc_t enc, bool first,
                                       const uint8_t *member_json, size_t len);
gale_err_t gale_encode_presence_end(gale_buf_t *out, gale_enc_t enc);

/** The count-only update {"op":"presence","topic":T,"count":C} (no id, no members). */
gale_err_t gale_encode_presence_count(gale_buf_t *out, gale_enc_t enc, const char *topic,
                                      size_t topic_len, uint64_t count);

/**
 * The event {"op":"join"|"leave","topic":T,...} followed by the fields of the member
 * member_json[0..len) in their order ({"op":"join","topic":T,"conn":C,"user":U,"info":I}):
 * spliced byte-exact in JSON, converted in MessagePack. GALE_ERR_BAD_REQUEST (nothing
 * appended) when member_json is not a well-formed JSON object.
 */
gale_err_t gale_encode_presence_event(gale_buf_t *out, gale_enc_t enc, bool join, const char *topic,
                                      size_t topic_len, const uint8_t *member_json, size_t len);

/**
 * Appends the value data[0..len) of encoding `from` converted to encoding
 * `to` (a plain copy when they are equal). Rules (docs/PROTOCOL-NOTES.md):
 * JSON numbers that are integral and fit int64/uint64 become integers, others
 * float64; MessagePack bin becomes a base64 string, ext becomes
 * {"ext":type,"base64":"..."}, non-string map keys become their JSON text,
 * invalid UTF-8 in str becomes U+FFFD, NaN/Infinity become null.
 */
gale_err_t gale_convert_data(gale_buf_t *out, gale_enc_t to, gale_enc_t from, const uint8_t *data,
                             size_t len);

/**
 * Pre-scan of untrusted MessagePack: true if buf[0..len) holds exactly one
 * well-formed object whose every container count and str/bin/ext length fits
 * in the remaining bytes, nested at most max_depth deep. Linear in len.
 * A max_depth above 256 is treated as 256.
 */
bool gale_msgpack_prescan(const uint8_t *buf, size_t len, unsigned max_depth);

/**
 * Strict JSON validation: true if buf[0..len) is exactly one RFC 8259 value
 * (surrounding whitespace allowed), valid UTF-8, nested at most max_depth.
 * A max_depth above 256 is treated as 256.
 */
bool gale_json_valid(const uint8_t *buf, size_t len, unsigned max_depth);

/*
 * Client side: encoders of requests (client to broker) and the decoder of
 * broker messages, for clients such as the `gale` command-line tool.
 * Encoders append one complete message and return GALE_OK, or
 * GALE_ERR_INTERNAL on allocation failure or a bad argument; on any error
 * nothing is appended. Topics are not validated here (the broker does).
 */

/** {"op":"sub"|"unsub","id":id,"topic":pattern}; op is GALE_OP_SUB or GALE_OP_UNSUB; "id" only
 * when has_id. */
gale_err_t gale_encode_sub(gale_buf_t *out, gale_enc_t enc, gale_op_t op, bool has_id, uint64_t id,
                           const char *pattern, size_t len);
/** {"op":"sub","id":id,"topic":topic,"since":{"ep":since->ep,"off":since->off}} */
gale_err_t gale_encode_sub_since(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                 const char *topic, size_t len, const gale_pos_t *since);
/**
 * A sub with every optional field: {"op":"sub","id":id,"topic":topic,"since":{...},
 * "presence":true,"info":INFO}, each of since (NULL: none; as gale_encode_sub_since),
 * "presence" (only when true) and "info" (info_json NULL: none) only when given.
 * info_json[0..info_len) is JSON text (the broker wants an object): copied byte-exact to a
 * JSON connection, converted to a map for a MessagePack one; GALE_ERR_BAD_REQUEST (nothing
 * appended) when it is not one well-formed JSON value. Without the optional fields it is
 * gale_encode_sub, byte for byte.
 */
gale_err_t gale_encode_sub_ext(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t len, const gale_pos_t *since,
                               bool presence, const uint8_t *info_json, size_t info_len);
/** {"op":"presence","id":id,"topic":topic}; "id" only when has_id. */
gale_err_t gale_encode_presence(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                const char *topic, size_t len);
/** {"op":"hist","id":id,"topic":topic} plus "limit" when has_limit. */
gale_err_t gale_encode_hist(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                            const char *topic, size_t len, bool has_limit, uint64_t limit);
/**
 * {"op":"refresh","id":id,"token":token}; "id" only when has_id. GALE_ERR_INTERNAL (nothing
 * appended) when len is 0 or over GALE_TOKEN_MAX. The token is not checked here: one the
 * broker cannot take without JSON escapes (a quote, a backslash, a control character) is
 * refused by it.
 */
gale_err_t gale_encode_refresh(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *token, size_t len);
/** {"op":"ping"} or {"op":"ping","id":id} */
gale_err_t gale_encode_ping(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id);
/**
 * {"op":"pub","id":id,"topic":topic,"data":DATA} where DATA is the value
 * data[0..data_len) of encoding data_enc, converted to enc as gale_convert_data
 * does (a copy when they are equal: validate it first, e.g. gale_json_valid).
 * Returns GALE_ERR_BAD_REQUEST if it cannot be converted.
 */
gale_err_t gale_encode_pub(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                           const char *topic, size_t topic_len, gale_enc_t data_enc,
                           const uint8_t *data, size_t data_len);
/**
 * gale_encode_pub with a "mid" of mid[0..mid_len) (NULL or 0: none; longer than
 * GALE_MID_MAX: GALE_ERR_INTERNAL).
 */
gale_err_t gale_encode_pub_mid(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t topic_len, const char *mid, size_t mid_len,
                               gale_enc_t data_enc, const uint8_t *data, size_t data_len);
/** A pub whose data is the string s[0..n); ill-formed UTF-8 becomes U+FFFD in both encodings. */
gale_err_t gale_encode_pub_str(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t topic_len, const uint8_t *s, size_t n);
/** A MessagePack pub whose data is a bin of bytes[0..n) (n < 2^32). */
gale_err_t gale_encode_pub_bin(gale_buf_t *out, bool has_id, uint64_t id, const char *topic,
                               size_t topic_len, const uint8_t *bytes, size_t n);

/** Broker-to-client operations; GALE_REPLY_UNKNOWN is an op this decoder does not know. */
typedef enum {
    GALE_REPLY_UNKNOWN = 0,
    GALE_REPLY_HELLO,
    GALE_REPLY_MSG,
    GALE_REPLY_ACK,
    GALE_REPLY_PONG,
    GALE_REPLY_ERR,
    GALE_REPLY_HIST,
    GALE_REPLY_PRESENCE, /* the answer to `presence`, or a count-only update (no members) */
    GALE_REPLY_JOIN,
    GALE_REPLY_LEAVE,
} gale_reply_op_t;

/**
 * One decoded broker message. Strings are (pointer, length), not
 * NUL-terminated; they point into the frame, or into the private buffers
 * below when a JSON string had escapes (then use them through the same
 * gale_reply_t, as with gale_request_t).
 */
typedef struct {
    gale_reply_op_t op;
    bool has_id; /* a valid id (0 .. GALE_ID_MAX) was present */
    uint64_t id;
    const char *topic; /* msg (and the events); err: the subscription it is about, NULL when
                          it names none (or a string that does not fit _topic_buf) */
    size_t topic_len;
    /* msg: the data value's bytes in the frame's encoding. bin: the value is a
     * top-level binary: in JSON the "bin" field (a base64 string, quotes
     * included), in MessagePack a bin. */
    const uint8_t *data;
    size_t data_len;
    bool bin;
    gale_err_t code;       /* err: the code (GALE_ERR_INTERNAL for an unknown name) */
    const char *code_name; /* err: the code as sent */
    size_t code_name_len;
    const char *msg; /* err: the human text ("" when absent) */
    size_t msg_len;
    bool msg_truncated; /* msg was unescaped into _msg_buf and cut to fit */
    uint64_t v;         /* hello: protocol version (0 when absent) */
    uint64_t max_msg;   /* hello: largest message the broker accepts (0 when absent) */
    bool has_ep;        /* msg, ack, hist: a string "ep" was present */
    const char *ep;     /* its bytes (cut to GALE_EP_MAX when escaped) */
    size_t ep_len;
    bool has_off; /* msg, ack, hist: an integer "off" >= 0 was present */
    uint64_t off;
    int8_t recovered;    /* ack: -1 absent, 0 false, 1 true */
    bool dup;            /* ack: "dup" was true */
    const uint8_t *msgs; /* hist: the "msgs" array value, for gale_reply_hist_next */
    size_t msgs_len;
    bool has_count; /* presence: an integer "count" >= 0 was present */
    uint64_t count;
    /* presence: the "members" array value, for gale_reply_member_next; NULL when absent (a
     * count-only update) */
    const uint8_t *members;
    size_t members_len;
    const char *conn; /* join, leave: the member's connection id; hello: the connection's own
                         (NULL when a hello has no string conn) */
    size_t conn_len;
    bool has_user;    /* join, leave: a string "user" was present */
    const char *user; /* its bytes */
    size_t user_len;
    bool user_truncated; /* user was unescaped into _user_buf and cut to fit */
    /* join, leave: the "info" value's bytes in the frame's encoding (the broker sends an
     * object/map); NULL when absent */
    const uint8_t *info;
    size_t info_len;
    char _ep_buf[GALE_EP_MAX];       /* private */
    char _topic_buf[GALE_TOPIC_MAX]; /* private */
    char _code_buf[32];              /* private */
    char _msg_buf[512];              /* private */
    char _conn_buf[64];              /* private */
    char _user_buf[256];             /* private */
} gale_reply_t;

/**
 * Decodes one broker message of encoding enc from buf[0..len). Returns
 * GALE_OK and fills *r, or GALE_ERR_BAD_REQUEST with *why set to a static
 * reason when the frame is not one well-formed object/map (nested at most
 * GALE_MAX_DEPTH + 3: a hist item's data is two levels deeper than a msg's)
 * with a string `op`, or a known op lacks a required field (msg: string topic
 * and data, or JSON bin; ack: id; err: string code; hist: msgs array;
 * presence: string topic, members an array when present; join/leave: string
 * topic and conn). A topic or conn that had JSON escapes and does not fit its
 * private buffer once unescaped is an error too; an err's msg and an event's user
 * are cut to fit instead (msg_truncated, user_truncated); an ep and a hello's
 * conn are cut silently. Unknown ops and unknown fields are not errors.
 */
gale_err_t gale_decode_reply(gale_enc_t enc, const uint8_t *buf, size_t len, gale_reply_t *r,
                             const char **why);

/** One item of a `hist` answer's msgs: its offset and data, as gale_reply_t's msg fields. */
typedef struct {
    uint64_t off;
    const uint8_t *data;
    size_t data_len;
    bool bin;
} gale_hist_item_t;

/**
 * Iterates over r->msgs of a decoded `hist` answer (enc: the frame's encoding): *pos starts
 * at 0. Returns 1 and fills *item, 0 at the end, -1 when an item is not an object/map with an
 * integer off and data (or JSON bin).
 */
int gale_reply_hist_next(gale_enc_t enc, const gale_reply_t *r, size_t *pos,
                         gale_hist_item_t *item);

/**
 * One member of a `presence` answer: the strings and info as gale_reply_t's join/leave
 * fields, unescaped into the private buffers (then use them through the same
 * gale_member_t).
 */
typedef struct {
    const char *conn;
    size_t conn_len;
    bool has_user;
    const char *user;
    size_t user_len;
    bool user_truncated; /* user was unescaped into _user_buf and cut to fit */
    const uint8_t *info; /* the info value in the frame's encoding; NULL when absent */
    size_t info_len;
    char _conn_buf[64];  /* private */
    char _user_buf[256]; /* private */
} gale_member_t;

/**
 * Iterates over r->members of a decoded `presence` answer (enc: the frame's encoding):
 * *pos starts at 0. Returns 1 and fills *m, 0 at the end (or when there are no members),
 * -1 when a member is not an object/map with a string conn (or one whose unescaped form
 * does not fit).
 */
int gale_reply_member_next(gale_enc_t enc, const gale_reply_t *r, size_t *pos, gale_member_t *m);

#endif
