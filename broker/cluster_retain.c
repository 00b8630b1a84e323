/*
 * cluster_retain: MQTT retained messages in a cluster (bus_ops_t retain, retained). Each
 * shard holds a hash PREFIX "retained": gale topic -> one byte of QoS (0 or 1) and the
 * payload, for the topics the shard owns (cluster_shard_of). A retained publish writes its
 * topic's field through a script that bounds the hash to --mqtt-retained-max fields; a
 * subscription reads the field of an exact topic (HGET on its shard) or scans every shard
 * (HSCAN MATCH the pattern's glob, which may over-match: each topic is checked with the
 * pattern) and hands what matches to the connection's conn_ops_t.retained as it comes.
 */
#include "cluster_internal.h"
#include "conn.h"
#include "log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * KEYS[1]: the hash; ARGV: topic, value (empty: clear), the most fields. Returns 1 (kept or
 * cleared) or -1 (the hash is full and the topic has no field yet: not kept).
 */
static const char retain_script[] =
    "if ARGV[2] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end "
    "if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) and "
    "redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end "
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1";

/* Fields asked of one HSCAN round. */
#define SCAN_COUNT "500"

/* A read of the retained messages matching one pattern, for one connection. */
struct cretain_read {
    cretain_read_t *next, **pprev; /* in cluster_t.retain_reads */
    conn_t *conn;                  /* NULL once it closed (cluster_forget) */
    uint32_t outstanding;          /* shards still answering */
    uint8_t qos;                   /* the subscription's */
    uint8_t len;
    char pattern[GALE_TOPIC_MAX];
};

/* One shard's part of a read. */
typedef struct {
    cretain_read_t *read;
    uint32_t shard;
} cretain_scan_t;

static size_t hash_key(const cluster_t *c, char *out)
{
    size_t n = c->prefix_len;
    memcpy(out, c->b->cfg.redis_prefix, n);
    memcpy(out + n, "retained", 9);
    return n + 8;
}

void cretain_write(void *bus, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                   size_t plen)
{
    cluster_t *c = bus;
    char key[CLUSTER_PREFIX_MAX + 16], max[24];
    uint8_t *value = plen ? malloc(plen + 1) : NULL;
    if (plen && !value) {
        log_error("mqtt: out of memory keeping a retained message");
        return;
    }
    if (value) {
        value[0] = qos ? 1 : 0;
        memcpy(value + 1, payload, plen);
    }
    size_t kl = hash_key(c, key);
    snprintf(max, sizeof(max), "%" PRIu64, c->b->cfg.mqtt_retained_max);
    const char *argv[] = {"EVAL", retain_script, "1", key, topic, value ? (const char *)value : "",
                          max};
    size_t lens[] = {4, sizeof(retain_script) - 1, 1, kl, len, value ? plen + 1 : 0, strlen(max)};
    if (!cluster_send(cluster_shard_of(c, topic, len), CMD_RETAIN, NULL, plen, 7, argv, lens))
        log_warn("mqtt: the retained message of '%.*s' could not be kept: its Redis shard is "
                 "down",
                 (int)len, topic);
    free(value);
}

/* Sends the next step of a scan (cursor) or the HGET of an exact topic; false: not sent. */
static bool scan_send(cluster_t *c, cretain_scan_t *sc, const char *cursor, size_t cursor_len)
{
    cretain_read_t *r = sc->read;
    char key[CLUSTER_PREFIX_MAX + 16], glob[CLUSTER_NAME_MAX];
    size_t kl = hash_key(c, key);
    bool wild;
    gale_pattern_valid(r->pattern, r->len, &wild);
    if (!wild) {
        const char *argv[] = {"HGET", key, r->pattern};
        size_t lens[] = {4, kl, r->len};
        return cluster_send(&c->shards[sc->shard], CMD_RETAINED, sc, 0, 3, argv, lens);
    }
    size_t gl = cluster_glob(glob, sizeof(glob), "", 0, r->pattern, r->len);
    const char *argv[] = {"HSCAN", key, cursor, "MATCH", glob, "COUNT", SCAN_COUNT};
    size_t lens[] = {5, kl, cursor_len, 5, gl, 5, sizeof(SCAN_COUNT) - 1};
    return gl && cluster_send(&c->shards[sc->shard], CMD_RETAINED, sc, 0, 7, argv, lens);
}

static void read_done(cretain_read_t *r)
{
    if (--r->outstanding)
        return;
    *r->pprev = r->next;
    if (r->next)
        r->next->pprev = r->pprev;
    free(r);
}

void cretain_read(void *bus, conn_t *k, const char *p, size_t len, uint8_t qos)
{
    cluster_t *c = bus;
    bool wild;
    if (!k->ops->retained || !gale_pattern_valid(p, len, &wild))
        return;
    cretain_read_t *r = calloc(1, sizeof(*r));
    if (!r) {
        log_error("mqtt: out of memory reading retained messages");
        return;
    }
    r->conn = k;
    r->qos = qos;
    r->len = (uint8_t)len;
    memcpy(r->pattern, p, len);
    r->next = c->retain_reads;
    if (r->next)
        r->next->pprev = &r->next;
    c->retain_reads = r;
    r->pprev = &c->retain_reads;
    r->outstanding = 1; /* while the scans go out */
    uint32_t first = wild ? 0 : cluster_shard_of(c, p, len)->idx;
    uint32_t last = wild ? c->nshards : first + 1;
    for (uint32_t i = first; i < last; i++) {
        cretain_scan_t *sc = malloc(sizeof(*sc));
        if (!sc)
            break;
        *sc = (cretain_scan_t){.read = r, .shard = i};
        r->outstanding++;
        if (!scan_send(c, sc, "0", 1)) {
            log_warn("mqtt: the retained messages matching '%.*s' on shard %u are not sent: "
                     "it is down",
                     (int)len, p, i);
            r->outstanding--;
            free(sc);
        }
    }
    read_done(r);
}

/* Hands the field topic -> value to the reading connection when it matches. */
static void one(cluster_t *c, cretain_read_t *r, const redis_value_t *field,
                const redis_value_t *value)
{
    size_t tl = 0, vl = 0;
    const char *t = field ? redis_value_str(field, &tl) : r->pattern;
    const char *v = redis_value_str(value, &vl);
    if (!field)
        tl = r->len;
    bool wild_first =
        (r->pattern[0] == '*' || r->pattern[0] == '>') && (r->len == 1 || r->pattern[1] == '.');
    if (!t || !v || vl < 2 || (uint8_t)v[0] > 1 || !gale_topic_valid(t, tl) ||
        !gale_pattern_match(r->pattern, r->len, t, tl) || (t[0] == '$' && wild_first))
        return; /* MQTT 4.7.2: a filter starting with a wildcard matches no '$' topic */
    uint8_t qos = (uint8_t)v[0] < r->qos ? (uint8_t)v[0] : r->qos;
    r->conn->ops->retained(c->b, r->conn, t, tl, qos, (const uint8_t *)v + 1, vl - 1);
}

void cretain_reply(cluster_t *c, cmd_kind_t kind, void *ctx, redis_conn_reply_t answer,
                   const redis_value_t *v)
{
    if (kind == CMD_RETAIN) {
        if (answer == REDIS_CONN_REPLY_OK && redis_value_int(v) < 0)
            log_warn("mqtt: a Redis shard holds --mqtt-retained-max retained messages: a new "
                     "topic's retained message is not kept");
        return;
    }
    cretain_scan_t *sc = ctx;
    cretain_read_t *r = sc->read;
    bool wild;
    gale_pattern_valid(r->pattern, r->len, &wild);
    if (answer != REDIS_CONN_REPLY_OK || !r->conn) {
        free(sc);
        read_done(r);
        return;
    }
    if (!wild) {
        one(c, r, NULL, v);
        free(sc);
        read_done(r);
        return;
    }
    size_t cl = 0;
    const char *cursor = redis_value_str(redis_value_at(v, 0), &cl);
    const redis_value_t *items = redis_value_at(v, 1);
    for (size_t i = 0; i + 1 < redis_value_count(items) && r->conn; i += 2)
        one(c, r, redis_value_at(items, i), redis_value_at(items, i + 1));
    if (cursor && r->conn && !(cl == 1 && cursor[0] == '0')) {
        char next[32];
        if (cl < sizeof(next)) {
            memcpy(next, cursor, cl);
            if (scan_send(c, sc, next, cl))
                return;
        }
    }
    free(sc);
    read_done(r);
}

void cretain_forget(cluster_t *c, conn_t *k)
{
    for (cretain_read_t *r = c->retain_reads; r; r = r->next)
        if (r->conn == k)
            r->conn = NULL;
}
