/*
 * cluster_wire: the pure parts of clustering over Redis, with no event loop
 * and no Redis connection, so that they can be unit-tested and fuzzed:
 *
 *   - the envelope a message travels in on Redis (encode, and a strict,
 *     bounded decode: its input comes from the network);
 *   - the Redis names of interest: a topic's channel, and the Redis glob
 *     pattern of a gale pattern;
 *   - the --redis URL list, with its credentials (and their masking for logs);
 *   - the consistent-hash ring that maps a topic to a shard;
 *   - the duplicate filter of messages arriving from one shard.
 *
 * See docs/ARCHITECTURE.md "Cluster" for how the broker uses them.
 */
#ifndef GALE_CLUSTER_WIRE_H
#define GALE_CLUSTER_WIRE_H

#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* --- envelope ------------------------------------------------------------- */

/** Version written in (and required of) every envelope. */
#define CLUSTER_ENVELOPE_VERSION 1
/** Longest origin node id in an envelope (config.c bounds --node-id to 63 bytes). */
#define CLUSTER_NODE_MAX 63
/** Largest data value an envelope may carry (the largest --max-message). */
#define CLUSTER_DATA_MAX (64u << 20)

/**
 * One message on the cluster bus. Encoded as a MessagePack array of 7:
 * [version, node (str), instance (uint), seq (uint), topic (str), enc (0 or 1), data (bin)],
 * or of 8, [..., true]: a message the origin delivers to its own subscribers from Redis's
 * copy too (its delivery waited for the publish script: a mid), or of 9, [..., ep (str),
 * off (uint)]: a message of a topic with history at its stream position, which the publish
 * script appends (the broker writes the array header and the first 7), delivered from
 * Redis's copy everywhere, the origin included.
 * `instance` is a random 64-bit number drawn when the origin broker started:
 * (instance, seq) names a message; seq counts from 1 per (origin, shard).
 * Pointers point into the caller's buffer.
 */
typedef struct {
    const char *node;
    size_t node_len;
    uint64_t instance;
    uint64_t seq;
    const char *topic;
    size_t topic_len;
    gale_enc_t enc; /* encoding of data */
    const uint8_t *data;
    size_t data_len;
    uint8_t tail;   /* encode: 0 (array of 7), 8 (with true), 9 (header of 9, the script adds
                       ep and off); decode: 0, 8 or 9 as received */
    const char *ep; /* decode, tail 9: the position (ep at most GALE_EP_MAX bytes) */
    size_t ep_len;
    uint64_t off;
} cluster_envelope_t;

/** Upper bound of the encoded size of an envelope with these lengths. */
size_t cluster_envelope_size(size_t node_len, size_t topic_len, size_t data_len);

/**
 * Encodes e into out[0..cap). Returns the bytes written, or 0 if cap is too
 * small or a field is out of bounds (node or topic too long, data over
 * CLUSTER_DATA_MAX).
 */
size_t cluster_envelope_encode(uint8_t *out, size_t cap, const cluster_envelope_t *e);

/**
 * Decodes and validates an envelope received from Redis: exactly the shape
 * above and nothing after it; version 1; node 1..CLUSTER_NODE_MAX printable
 * ASCII bytes; seq >= 1; a valid concrete topic; enc 0 or 1; data at most
 * max_data bytes and well-formed in its encoding (strict JSON, or one
 * MessagePack object passing gale_msgpack_prescan), nested at most
 * GALE_MAX_DEPTH - 1, as the data of a client's pub (it sits inside the
 * `msg` frame): so whatever is accepted converts to the other encoding
 * within GALE_MAX_DEPTH, a MessagePack ext counting one more level. Linear
 * in len. On failure returns false with *why set to a static reason.
 */
bool cluster_envelope_decode(const uint8_t *buf, size_t len, size_t max_data, cluster_envelope_t *e,
                             const char **why);

/* --- Redis names ---------------------------------------------------------- */

/** Longest channel prefix (--redis-prefix). */
#define CLUSTER_PREFIX_MAX 64
/** Room for any channel name or glob: prefix and pattern, every byte escaped. */
#define CLUSTER_NAME_MAX (2 * (CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX) + 2)

/**
 * Writes the Redis glob pattern of gale pattern p[0..len) (valid, with at
 * least one wildcard segment) under prefix: the prefix and literal segments
 * with the glob metacharacters * ? [ ] \ escaped by a backslash, a `*`
 * segment as `*`, a final `>` segment as `?*`. Redis may over-match (a glob
 * `*` also matches dots); the broker filters exactly with its own index. The
 * mapping is one-to-one, so distinct gale patterns never share a Redis
 * pattern. Returns the length written (out is NUL-terminated), or 0 if it
 * does not fit in cap.
 */
size_t cluster_glob(char *out, size_t cap, const char *prefix, size_t prefix_len, const char *p,
                    size_t len);

/* --- history in Redis ---------------------------------------------------- */

/*
 * A topic with history has, on its shard, a hash PREFIX "h:" TOPIC (fields ep and off: its
 * epoch and last offset) and a stream PREFIX "s:" TOPIC whose entry IDs are "OFF-0", each
 * entry holding the message's envelope (tail 9) in field e and Redis's TIME in ms in t. A
 * publish's mid is a key PREFIX "m:" TOPIC " " MID holding the offset it got (0 without
 * history), expiring after the dedup window. Only the two scripts below write them.
 */

/**
 * The publish script. KEYS: hash, stream, mid key ("" without mid). ARGV: channel,
 * envelope (tail 9 when history: the script appends ep and off; else 0 or 8), SIZE (0: no
 * history), TTL ms (0: none), dedup window ms, a new epoch in case the topic has none.
 * Returns {dup (0/1), ep ("" without history), off}: a duplicate mid publishes nothing
 * and returns the original's offset. Counter, stream, PUBLISH and mid are written in one
 * atomic script, so live delivery and history never diverge.
 */
extern const char CLUSTER_SCRIPT_PUB[];

/**
 * The read script. KEYS: hash, stream. ARGV: mode, N, MAX, a new epoch, TTL ms. Gives the
 * topic an epoch when it has none (what a subscriber's first position names). Returns
 * {ep, off, entries}: mode "range", the XRANGE of the entries after offset
 * max(N, off - MAX) up to off; mode "last", the XREVRANGE of the newest N entries.
 */
extern const char CLUSTER_SCRIPT_READ[];

/** Longest key: prefix, "m:", a topic, a space, a mid. */
#define CLUSTER_KEY_MAX (CLUSTER_PREFIX_MAX + 2 + GALE_TOPIC_MAX + 1 + GALE_MID_MAX + 1)

/**
 * Writes the key of `kind` ('h' hash, 's' stream, 'm' mid: then mid[0..mid_len) follows
 * after a space) of topic t[0..len) under prefix; returns its length, 0 if it does not fit.
 */
size_t cluster_key(char *out, size_t cap, const char *prefix, size_t prefix_len, char kind,
                   const char *t, size_t len, const char *mid, size_t mid_len);

/* --- URLs ----------------------------------------------------------------- */

/** Most Redis shards in --redis. */
#define CLUSTER_MAX_SHARDS 64
/** Longest Redis ACL user name and password in a URL (after percent-decoding). */
#define CLUSTER_USER_MAX 128
#define CLUSTER_PASS_MAX 512

typedef struct {
    char host[256]; /* a name or an address; IPv6 without its brackets */
    int port;
    int db;
    char label[300]; /* "host:port/db" (IPv6 in brackets): the shard's name on the ring and
                        in logs and metrics; never holds credentials */
    char user[CLUSTER_USER_MAX + 1]; /* ACL user (AUTH USER PASSWORD); empty: AUTH PASSWORD */
    char pass[CLUSTER_PASS_MAX + 1]; /* password, percent-decoded; empty: no AUTH */
    size_t user_len, pass_len;
} cluster_addr_t;

/**
 * Parses a comma-separated list of redis://[[USER]:PASSWORD@]HOST:PORT[/DB]
 * (spaces around commas allowed) into out[0..max). The credentials end at
 * the last `@` and the user at the first `:` of them; both are
 * percent-decoded (%XX; a `%` must be written %25; no NUL byte, and the
 * user name, which is logged, decodes to printable bytes without spaces);
 * raw bytes must be printable and not spaces. An empty password (`:@`), an
 * empty `@` and a user name or password longer than CLUSTER_USER_MAX or
 * CLUSTER_PASS_MAX are refused; `USER@` (a user without a password) is
 * accepted here with pass_len 0, for cluster_set_password to complete.
 * Returns the number of URLs, or -1 with *why set (a static string that
 * never quotes the input) when the list is empty, malformed, longer than
 * max, or names the same shard (label) twice.
 */
int cluster_parse_urls(const char *list, cluster_addr_t *out, int max, const char **why);

/**
 * Completes the credentials of a[0..n): a non-empty password (the
 * --redis-password option) replaces every URL's own password (the URL's
 * user, if any, is kept); NULL or "" keeps them. Returns false with *why set
 * when an address names a user but has no password, or password is longer
 * than CLUSTER_PASS_MAX.
 */
bool cluster_set_password(cluster_addr_t *a, int n, const char *password, const char **why);

/**
 * Copies the URL list `list` to out[0..cap) (NUL-terminated, truncated to
 * fit) with the credentials of every URL masked: USER:PASSWORD@ becomes
 * USER:***@, and credentials without a `:` become ***@. Works on any text,
 * well-formed or not, so error messages may quote what was given. Returns
 * the length written.
 */
size_t cluster_mask_urls(char *out, size_t cap, const char *list);

/* --- consistent hashing --------------------------------------------------- */

/** Points each shard gets on the ring. */
#define CLUSTER_RING_VNODES 160

typedef struct {
    uint64_t *points; /* sorted; each point's shard in shards[] */
    uint8_t *shards;
    uint32_t npoints;
} cluster_ring_t;

/** 64-bit hash of s[0..len) (FNV-1a with a final avalanche). */
uint64_t cluster_hash64(const void *s, size_t len);

/**
 * Builds the ring of n (1..CLUSTER_MAX_SHARDS) shards named by labels: a
 * shard's points depend only on its label, so every broker given the same
 * set of URLs, in any order, maps each topic to the same URL, and adding a
 * shard moves only about 1/(n+1) of the topics. Returns false on allocation
 * failure.
 */
bool cluster_ring_init(cluster_ring_t *r, const char *const *labels, uint32_t n);

/** The shard (index into the labels given to init) of topic t[0..len). */
uint32_t cluster_ring_shard(const cluster_ring_t *r, const char *t, size_t len);

/** Frees the ring; safe on a zeroed ring. */
void cluster_ring_free(cluster_ring_t *r);

/* --- duplicate filter ----------------------------------------------------- */

/** Origins remembered per shard. */
#define CLUSTER_DEDUPE_SLOTS 256

/**
 * The last sequence number delivered per origin instance, for the messages
 * of one shard connection. An origin publishes to a shard over one
 * connection, and Redis hands one subscriber connection the messages of one
 * publisher connection in order, with all the copies of one PUBLISH (one per
 * matching SUBSCRIBE and PSUBSCRIBE) next to each other: so a message is new
 * exactly when its seq is above the last one delivered from its origin.
 * When the table is full, the origin seen longest ago is forgotten (it can
 * only matter again if over 256 other origins published between two copies
 * of one message, which Redis never does).
 */
typedef struct {
    struct {
        uint64_t instance; /* 0: free */
        uint64_t seq;
        uint64_t used; /* tick of the last update */
    } slots[CLUSTER_DEDUPE_SLOTS];
    uint64_t tick;
} cluster_dedupe_t;

/** Forgets every origin. */
void cluster_dedupe_reset(cluster_dedupe_t *d);

/**
 * Returns true if (instance, seq) is new and records it; false for a
 * duplicate (seq not above the last one delivered from instance).
 * instance 0 is never new.
 */
bool cluster_dedupe_check(cluster_dedupe_t *d, uint64_t instance, uint64_t seq);

#endif
