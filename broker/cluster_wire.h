/*
 * cluster_wire: the pure parts of clustering over Redis, with no event loop
 * and no Redis connection, so that they can be unit-tested and fuzzed:
 *
 *   - the envelope a message travels in on Redis (encode, and a strict,
 *     bounded decode: its input comes from the network), and the strict
 *     decode of a presence envelope (a join or leave published by a script);
 *   - the Lua scripts of history and presence, and their Redis keys;
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
 * A message with a reply topic or a publisher that takes none of its own messages carries
 * [enc, reply (str, empty: none), noecho (uint: the publishing connection's id, 0: none),
 * flags (uint: 1, an MQTT QoS 0 publish)] in place of enc; brokers older than that field
 * drop such a message as invalid.
 * Pointers point into the caller's buffer.
 */
typedef struct {
    const char *node;
    size_t node_len;
    uint64_t instance;
    uint64_t seq;
    const char *topic;
    size_t topic_len;
    gale_enc_t enc;    /* encoding of data */
    const char *reply; /* the publisher's reply topic; NULL: none */
    size_t reply_len;
    uint64_t noecho; /* the publishing connection (of instance) to skip; 0: none */
    bool qos0;       /* an MQTT QoS 0 publish */
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
/** The same with a reply topic of reply_len bytes and a noecho id. */
size_t cluster_envelope_size_ext(size_t node_len, size_t topic_len, size_t reply_len,
                                 size_t data_len);

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

/* --- presence in Redis --------------------------------------------------- */

/*
 * The members of a topic with presence (issue 15) live on the topic's shard, under PREFIX
 * (--redis-prefix):
 *
 *   PREFIX "p:" TOPIC    hash: conn id -> the member's JSON text ({"conn":..,"user":..,
 *                        "info":..}, as gale_encode_member writes it);
 *   PREFIX "pz:" TOPIC   sorted set: instance (16 lowercase hex) -> the time its members of
 *                        TOPIC expire unless it refreshes them (Redis TIME, ms);
 *   PREFIX "pi:" INST    set, on every shard: the topics of that shard where instance INST
 *                        has had members (what TAKEOVER cleans);
 *   PREFIX "pn:" NODE    string: the instance that last started with --node-id NODE.
 *
 * A conn id is "<instance hex>-<n>": an instance's members of a topic are the fields of its
 * hash that start with the instance and a '-' (compared as plain bytes, never as a pattern;
 * an instance id must not itself contain '-'). Only the six scripts below write these keys;
 * every PEXPIRE they set is 2 x expiry_ms. Each join or leave is PUBLISHed on the topic's
 * message channel (PREFIX TOPIC) as a presence envelope (cluster_presence_decode), packed in
 * Lua with cmsgpack.pack: join events only for conns that were absent, leave events only for
 * conns that were present, so replaying a script changes nothing and announces nothing.
 *
 * Common to the scripts: now is Redis's TIME in ms; SWEEP (inside REFRESH and READ) takes
 * every instance of pz:T whose expiry is <= now, HDELs each of its fields of p:T with a leave
 * event, and removes it from pz:T; it costs O(log n) when no instance is dead, and a pass over
 * the hash's fields (HKEYS) when one is. SYNC and TAKEOVER make such a pass too; JOIN, LEAVE
 * and the rest cost O(the conns given).
 *
 * All ARGV numbers are decimal integers; expiry_ms > 0.
 */

/**
 * JOIN. KEYS: p:T, pz:T, pi:INST. ARGV: inst, expiry_ms, topic, channel, conn1, member1,
 * conn2, member2, ... (pairs; an odd last one is ignored). ZADD pz:T now+expiry_ms inst;
 * SADD pi:INST topic; HSET each pair, PUBLISHing [2, topic, 0, HLEN, conn, member] on channel
 * when the conn was new (none when it was already there: the member JSON is replaced
 * silently); PEXPIRE the three keys. Returns HLEN of p:T (an integer). Also the re-join of
 * every member after a reconnect.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_JOIN[];

/**
 * LEAVE. KEYS: p:T, pz:T, pi:INST. ARGV: inst, last ("1": inst has no member left on T, else
 * "0"), topic, channel, conn1, conn2, ... For each conn present in p:T: HDEL it and PUBLISH
 * [2, topic, 1, HLEN, conn, member] (member: the JSON it had); absent ones are skipped. With
 * last "1": ZREM pz:T inst and SREM pi:INST topic. Sets no expiry. Returns HLEN of p:T.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_LEAVE[];

/**
 * SYNC. KEYS: p:T, pz:T, pi:INST. ARGV: inst, expiry_ms, topic, channel, ngone, then ngone
 * pairs gone_conn, gone_member, then pairs conn1, member1, ... First each gone conn (one of
 * inst's that stopped being present while Redis could not be told) is HDELed with a leave
 * event; one p:T no longer has gets its event too when inst is not in pz:T (Redis lost
 * inst's state, and watchers never heard the leave), not when it is (its LEAVE ran: Redis
 * got it before the connection failed), nor when its member is empty (the broker sent its
 * LEAVE and lost the answer: it may have run, with its event, and taken inst out of pz:T as
 * its last member); an event carries the member Redis held, else the one given. Then it removes,
 * with a leave event each, every field of p:T that starts with inst "-" and is not one of the conns
 * listed; then does what JOIN does with the pairs (join events for the absent ones). With no pair
 * it is LEAVE with last "1" for all of inst's members of T: every one removed with its event, ZREM
 * pz:T inst, SREM pi:INST topic, no expiry set. Returns HLEN of p:T. For each topic a broker holds
 * (or has unsynced leaves for) after its shard reconnects.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_SYNC[];

/**
 * REFRESH. KEYS: p:T, pz:T, pi:INST. ARGV: inst, expiry_ms, topic, channel. ZADD pz:T
 * now+expiry_ms inst; PEXPIRE the three keys; then SWEEP (leave events on channel). Returns
 * {HLEN of p:T after the sweep, lost}: lost 1 when inst was not in pz:T (another broker swept
 * it after it failed to refresh in time, or Redis lost the key): its members may be gone,
 * and the broker re-writes them (SYNC). Every expiry/3, per topic where it has members.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_REFRESH[];

/**
 * READ. KEYS: p:T, pz:T. ARGV: cap (>= 0), topic, channel. SWEEP (leave events on channel),
 * then returns the array {HLEN, member1, member2, ...}: HLEN an integer (exact), then every
 * member JSON (HVALS) when HLEN <= cap, else cap distinct ones picked at random (HRANDFIELD
 * p:T cap WITHVALUES). No order. Sets no expiry.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_READ[];

/**
 * TAKEOVER. KEYS: pn:NODE. ARGV: inst, prefix (--redis-prefix), expiry_ms. old = GET pn:NODE;
 * SET pn:NODE inst PX 2 x expiry_ms; when old exists and differs from inst: for each topic T
 * of SMEMBERS prefix "pi:" old, every field of prefix "p:" T starting with old "-" is HDELed
 * with a leave event [2, T, 1, HLEN, conn, member] on channel prefix T, and old is ZREMed from
 * prefix "pz:" T; then DEL prefix "pi:" old. Returns the number of members removed (an
 * integer; 0 when there was nothing to take over). Touches keys it derives from prefix (not
 * in KEYS): fine on the standalone Redis servers gale shards over. Once per shard, when it
 * first becomes ready after start.
 */
extern const char CLUSTER_SCRIPT_PRESENCE_TAKEOVER[];

/** Longest presence key: prefix, "pz:", a topic (an instance or a node id is shorter). */
#define CLUSTER_PRESENCE_KEY_MAX (CLUSTER_PREFIX_MAX + 3 + GALE_TOPIC_MAX + 1)

/**
 * Writes a presence key under prefix: kind 'p' gives PREFIX "p:" NAME (NAME a topic), 'z'
 * PREFIX "pz:" NAME (a topic), 'i' PREFIX "pi:" NAME (an instance, 16 lowercase hex), 'n'
 * PREFIX "pn:" NAME (a node id). Returns its length (out is NUL-terminated), or 0 (out
 * untouched) when it does not fit in cap or kind is none of these.
 */
size_t cluster_presence_key(char *out, size_t cap, const char *prefix, size_t prefix_len, char kind,
                            const char *name, size_t len);

/** Version written in (and required of) every presence envelope. */
#define CLUSTER_PRESENCE_VERSION 2
/** Longest conn id in a presence envelope ("<16 hex>-<n>" takes at most 37). */
#define CLUSTER_CONN_MAX 96
/** Largest member JSON in a presence envelope (--presence-info-max is at most 64 KiB). */
#define CLUSTER_MEMBER_MAX (70u << 10)
/** Deepest member JSON accepted (gale_json_valid's max_depth; the member object is 1). */
#define CLUSTER_MEMBER_DEPTH GALE_MAX_DEPTH

typedef enum {
    CLUSTER_PRESENCE_JOIN = 0,
    CLUSTER_PRESENCE_LEAVE = 1,
} cluster_presence_kind_t;

/**
 * A join or leave on the cluster bus, as the presence scripts publish it: a MessagePack
 * array of 6, [2, topic (str), kind (0 join, 1 leave), count (uint: the topic's members
 * after the change), conn (str), member (str: the member JSON)]. Pointers point into the
 * caller's buffer.
 */
typedef struct {
    const char *topic;
    size_t topic_len;
    cluster_presence_kind_t kind;
    uint64_t count;
    const char *conn;
    size_t conn_len;
    const uint8_t *member;
    size_t member_len;
} cluster_presence_t;

/** What a payload on a topic's channel is, by its first byte. */
typedef enum {
    CLUSTER_ENV_UNKNOWN = 0,  /* neither: drop it (counts as invalid) */
    CLUSTER_ENV_MESSAGE = 1,  /* an array of 7, 8 or 9: cluster_envelope_decode */
    CLUSTER_ENV_PRESENCE = 2, /* an array of 6: cluster_presence_decode */
} cluster_env_kind_t;

/**
 * Tells a message envelope from a presence envelope by the array header alone (buf[0]:
 * 0x97..0x99 or 0x96), in O(1); it validates nothing else. Every payload
 * cluster_envelope_decode accepts is CLUSTER_ENV_MESSAGE, every one cluster_presence_decode
 * accepts CLUSTER_ENV_PRESENCE. buf may be NULL when len is 0.
 */
cluster_env_kind_t cluster_envelope_kind(const uint8_t *buf, size_t len);

/**
 * Decodes and validates a presence envelope received from Redis: exactly an array of 6
 * (fixarray) and nothing after it; version 2; topic a valid concrete topic (str); kind 0 or
 * 1; count any uint; conn a str of 1..CLUSTER_CONN_MAX printable ASCII bytes, no space;
 * member a str of at most CLUSTER_MEMBER_MAX bytes holding exactly one strict JSON object
 * (gale_json_valid, nested at most CLUSTER_MEMBER_DEPTH), starting with '{' and ending with
 * '}' (no surrounding whitespace). Integers in any MessagePack uint width, strings in any
 * str width (cmsgpack writes the smallest). Linear in len. Returns false (e zeroed) on any
 * failure; buf may be NULL when len is 0.
 */
bool cluster_presence_decode(const uint8_t *buf, size_t len, cluster_presence_t *e);

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
