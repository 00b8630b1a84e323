/*
 * bench_msg: the few gale v1 messages the load generator sends and reads, in JSON or
 * MessagePack, encoded and decoded by hand, and RFC 6455 client framing. The bench data
 * object and the publish templates are shared with the NATS mode (bench_nats.h).
 *
 * Bench data is an object {"p":P,"s":S,"t":T,"x":"xxx..."}: publisher index, sequence
 * number and send time. To patch them in place in a precomputed frame they are written at
 * a fixed width: s = BENCH_SEQ_BASE + seq (13 digits), t = BENCH_TIME_BASE + ns since the
 * run's clock base (16 digits, good for 92 days), both below 2^53 so that JavaScript
 * brokers forward them exactly. MessagePack uses uint64 (0xcf) at any value. Receivers do
 * not rely on the width: brokers may re-encode.
 */
#ifndef GALE_BENCH_MSG_H
#define GALE_BENCH_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_SEQ_BASE 1000000000000ULL     /* 10^12 */
#define BENCH_TIME_BASE 1000000000000000ULL /* 10^15 */
#define BENCH_MAX_FRAME (1u << 20)          /* largest incoming frame accepted */
#define BENCH_MAX_SIZE 60000                /* largest --size */
#define TOPIC_IDX_DIGITS 6                  /* bench.topic.NNNNNN */

/** The WebSocket opcodes used here. */
enum { WS_CONT = 0, WS_TEXT = 1, WS_BINARY = 2, WS_CLOSE = 8, WS_PING = 9, WS_PONG = 10 };

/**
 * Writes a masked client frame (FIN set) of @n payload bytes into @dst, which must hold
 * n + 14 bytes. The mask key 0 leaves the payload bytes as they are (masking is XOR), which
 * RFC 6455 servers must accept; any other key masks them. Returns the frame's length.
 */
size_t ws_frame(uint8_t *dst, int opcode, const void *payload, size_t n, uint32_t mask_key);

/**
 * Encodes {"op":OP,"topic":TOPIC,"id":ID} (id omitted when @id is UINT64_MAX) as JSON or
 * MessagePack into @dst (@cap bytes). Returns the length, 0 if it does not fit.
 */
size_t msg_encode_op(uint8_t *dst, size_t cap, bool msgpack, const char *op, const char *topic,
                     uint64_t id);

/** The longest stream epoch (`ep`) the load generator keeps; a longer one is cut. */
#define BENCH_EP_MAX 64

/**
 * Encodes {"op":"sub","topic":TOPIC,"id":ID,"since":{"ep":EP,"off":OFF}} as JSON or
 * MessagePack into @dst (@cap bytes); @ep is written as it is (JSON: it must need no
 * escaping, as the broker's epochs do not). Returns the length, 0 if it does not fit.
 */
size_t msg_encode_sub_since(uint8_t *dst, size_t cap, bool msgpack, const char *topic, uint64_t id,
                            const char *ep, uint64_t off);

/**
 * Writes the bench data object of publisher @pub as JSON into @dst (@cap bytes), padded to
 * about @size bytes, with marker values in place of the sequence number and time for
 * pubtpl_frame() to find. Returns the length, 0 if it does not fit (cap >= size + 128 does).
 */
size_t bench_data_json(uint8_t *dst, size_t cap, uint32_t pub, size_t size);

/** A precomputed publish frame with fixed-width fields patched per send. */
typedef struct {
    uint8_t *frame; /* ws header (masked, key 0) + payload */
    size_t len;
    size_t payload_off; /* where the payload starts (after the 4 mask bytes) */
    bool msgpack;
    /* where the fields are in frame; 0: not present (off_id: NATS has no request id) */
    size_t off_id, off_seq, off_time, off_topic;
} pubtpl_t;

/**
 * Makes @t the frame (@opcode, mask key 0) carrying @payload, which holds the marker values
 * of bench_data_json() (or their MessagePack uint64 form when @msgpack) and possibly a
 * request id marker; if @topic_indexed, the last TOPIC_IDX_DIGITS characters of the first
 * occurrence of @topic are patched too. Returns 0, or -1 when out of memory.
 */
int pubtpl_frame(pubtpl_t *t, bool msgpack, int opcode, const uint8_t *payload, size_t n,
                 const char *topic, bool topic_indexed);

/**
 * Builds the publish frame for @topic (if @topic_indexed, its last TOPIC_IDX_DIGITS
 * characters are patched per send) from publisher @pub, payload about @size bytes.
 * Returns 0, or -1 when out of memory. Free with pubtpl_free().
 */
int pubtpl_build(pubtpl_t *t, bool msgpack, const char *topic, bool topic_indexed, uint32_t pub,
                 size_t size);

/** Patches sequence number (also the request id, if any), send time and topic index. */
void pubtpl_set(pubtpl_t *t, uint64_t seq, uint64_t time_ns, uint32_t topic_idx);

/** Releases the frame. Safe on a zeroed template. */
void pubtpl_free(pubtpl_t *t);

/** What a received message is. GM_PING: only from NATS (a server PING to answer). */
enum { GM_OTHER = 0, GM_MSG, GM_ACK, GM_HELLO, GM_ERR, GM_PONG, GM_PING };

typedef struct {
    int op;
    bool has_id;
    uint64_t id;
    bool has_bench; /* a msg carrying bench data: p, s, t (offsets removed) */
    uint64_t p, s, t;
    char code[32]; /* err: code and human text, truncated, for messages */
    char text[96];
    /* stream position (msg, ack): MessagePack always; JSON only after gmsg_parse_pos() */
    bool has_ep, has_off, has_recovered, recovered;
    uint64_t off;
    char ep[BENCH_EP_MAX];
} gmsg_t;

/**
 * Reads the fields the load generator needs from one received message (@binary: MessagePack,
 * else JSON). Returns 0, or -1 if it is not a readable gale message.
 */
int gmsg_parse(gmsg_t *m, bool binary, const uint8_t *p, size_t n);

/**
 * Adds the stream position of a message gmsg_parse() read from the same bytes: `ep`, `off`
 * and (an ack) `recovered`. JSON is searched again (only callers that need the position pay
 * for it); MessagePack was read already.
 */
void gmsg_parse_pos(gmsg_t *m, bool binary, const uint8_t *p, size_t n);

/**
 * Reads p, s, t from a JSON bench data object @p[0..n) into @m (offsets removed) and sets
 * m->has_bench to whether all three were there and in range. Leaves the other fields.
 */
void bench_data_parse_json(gmsg_t *m, const uint8_t *p, size_t n);

#endif
