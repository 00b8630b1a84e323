#include "mqtt.h"

#include "adapter.h"
#include "auth.h"
#include "core.h"
#include "frame.h"
#include "gale_mqtt.h"
#include "log.h"
#include "loops.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long the first packet (CONNECT) may take after the upgrade: --handshake-timeout. */

/* One subscription: an MQTT filter as its one or two gale patterns, and its granted QoS. */
typedef struct msub {
    struct msub *next;
    uint8_t qos;
    uint8_t npat;
    uint8_t len[2];
    char pat[]; /* pattern 0, then pattern 1 */
} msub_t;

/* A SUBSCRIBE or UNSUBSCRIBE whose core answers are being collected. */
typedef struct mack {
    uint16_t packet_id;
    bool unsub;
    uint32_t n;           /* filters */
    uint32_t outstanding; /* core answers still awaited (and one while requests go out) */
    uint8_t *codes;       /* SUBACK: per filter, the granted QoS or 0x80 */
    size_t filters_len;
    uint8_t filters[]; /* a copy of the packet's filter list, then the codes */
} mack_t;

/* What an awaited core answer is for (adapter_wait_t.kind). */
enum { W_SUB, W_UNSUB, W_PUB, W_WILL };

/* A retained PUBLISH awaiting the core's answer: kept as its topic's retained message only
 * once the publish was accepted (W_PUB's ctx). */
typedef struct pretain {
    uint8_t qos;
    size_t topic_len, payload_len;
    char topic[GALE_TOPIC_MAX];
    uint8_t payload[];
} pretain_t;

/* The will of a connection: published if it ends without DISCONNECT. */
typedef struct will {
    uint8_t qos;
    bool retain;
    size_t topic_len;
    size_t payload_len;
    char topic[GALE_TOPIC_MAX];
    uint8_t payload[];
} will_t;

typedef struct mqtt_conn {
    session_adapter_t ad; /* first: s->ad */
    session_t *s;
    adapter_rx_t rx;
    adapter_waits_t waits;
    msub_t *subs;
    msub_t *stale; /* refused after the core took a part: unsubscribed at the next packet */
    will_t *will;
    char *client_id; /* NUL-terminated; NULL before CONNECT */
    uint64_t opened_ms, last_packet_ms;
    uint32_t keepalive_ms; /* 1.5 x the client's keepalive; 0: none */
    uint32_t qos1_subs;    /* subscriptions granted QoS 1 */
    uint32_t unacked;      /* QoS 1 PUBLISHes sent and not acknowledged */
    uint16_t next_id;      /* packet id of our next QoS 1 PUBLISH */
    uint16_t *rel;         /* QoS 2 packet ids received, awaiting their PUBREL */
    uint32_t nrel, rel_cap;
    bool connected;
    bool disconnected; /* DISCONNECT received: no will */
    bool taken_over;   /* another connection took its client id: no will */
    struct mqtt_conn *hnext;
    uint64_t hash;
    uint32_t loop; /* its loop (broker_t.loop_idx): a takeover from another loop goes there */
} mqtt_conn_t;

/* A retained message: the payload of its topic's last PUBLISH with the retain flag. */
typedef struct retained {
    struct retained *hnext;
    uint64_t hash;
    size_t topic_len, payload_len;
    uint8_t qos; /* of its PUBLISH: the most its subscribers get */
    char *topic; /* the gale topic */
    uint8_t payload[];
} retained_t;

/* The broker's MQTT state: connections by client id, retained messages by topic. */
typedef struct mqtt_state {
    mqtt_conn_t **clients;
    uint32_t nclients, clients_cap;
    retained_t **retained;
    uint32_t nretained, retained_cap;
    uint64_t retained_bytes;
    uint64_t refused_log_ms; /* broker uptime when a refused retained message was last logged */
    uint64_t refused;        /* retained messages not kept since then */
} mqtt_state_t;

/* At most this many QoS 2 publishes of one connection awaiting PUBREL (its receive window). */
#define MQTT_MAX_QOS2_PENDING 1024
/* At most this many of our QoS 1 PUBLISHes unacknowledged: past it the client is not reading
 * its acknowledgements and is closed as a slow consumer. */
#define MQTT_MAX_UNACKED 65535

static mqtt_conn_t *mqtt_of(session_t *s)
{
    return (mqtt_conn_t *)s->ad;
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h ? h : 1;
}

static mqtt_state_t *state(broker_t *b)
{
    if (!b->mqtt)
        b->mqtt = calloc(1, sizeof(mqtt_state_t));
    return b->mqtt;
}

/* With several loops the state is theirs (loops.h), used under their lock. */
static void lock(const broker_t *b)
{
    if (b->loops)
        loops_lock(b->loops);
}

static void unlock(const broker_t *b)
{
    if (b->loops)
        loops_unlock(b->loops);
}

struct mqtt_state *mqtt_state_new(void)
{
    return calloc(1, sizeof(mqtt_state_t));
}

/* Grows a chained table of next-pointer-first nodes to twice its size; false: no memory. */
static bool table_grow(void ***tab, uint32_t *cap, size_t next_off, size_t hash_off)
{
    uint32_t ncap = *cap ? *cap * 2 : 64;
    void **nt = calloc(ncap, sizeof(*nt));
    if (!nt)
        return false;
    for (uint32_t i = 0; i < *cap; i++) {
        void *e = (*tab)[i];
        while (e) {
            void *next = *(void **)((char *)e + next_off);
            uint64_t h = *(uint64_t *)((char *)e + hash_off);
            *(void **)((char *)e + next_off) = nt[h & (ncap - 1)];
            nt[h & (ncap - 1)] = e;
            e = next;
        }
    }
    free(*tab);
    *tab = (void **)nt;
    *cap = ncap;
    return true;
}

/* --- client ids --------------------------------------------------------- */

static mqtt_conn_t **client_slot(mqtt_state_t *st, const char *id, uint64_t h)
{
    if (!st->clients_cap)
        return NULL;
    mqtt_conn_t **p = &st->clients[h & (st->clients_cap - 1)];
    while (*p && ((*p)->hash != h || strcmp((*p)->client_id, id) != 0))
        p = &(*p)->hnext;
    return p;
}

/* Takes m out of the client ids; false when it held none (another connection took it). */
static bool client_remove(broker_t *b, mqtt_conn_t *m)
{
    bool held = false;
    if (!b->mqtt || !m->client_id)
        return false;
    lock(b);
    mqtt_conn_t **p = client_slot(b->mqtt, m->client_id, m->hash);
    if (p && *p == m) {
        *p = m->hnext;
        b->mqtt->nclients--;
        held = true;
    }
    unlock(b);
    return held;
}

/* The old holder of a client id, on this loop: it closes without its will. */
static void take_over(broker_t *b, mqtt_conn_t *old, const char *id, uint64_t by)
{
    old->taken_over = true;
    free(old->will);
    old->will = NULL;
    log_info("mqtt conn %" PRIu64 ": client id '%s' taken over by conn %" PRIu64 ": closing",
             old->s->conn.id, id, by);
    session_begin_close(b, old->s, SESSION_CLOSE_NORMAL, false);
}

void mqtt_taken_over(broker_t *b, uint64_t conn, uint64_t by)
{
    for (uint32_t i = 0; i < b->nsessions; i++) {
        session_t *s = b->sessions[i];
        if (s->conn.id == conn && s->ad && s->ad->proto == &mqtt_proto) {
            mqtt_conn_t *m = mqtt_of(s);
            if (m->connected && !m->taken_over && !s->close_code && !s->killed)
                take_over(b, m, m->client_id, by);
            return;
        }
    }
}

/* Registers m under its client id, taking it over from a connection that holds it. */
static bool client_add(broker_t *b, mqtt_conn_t *m)
{
    m->hash = hash_bytes(m->client_id, strlen(m->client_id));
    m->loop = b->loop_idx;
    mqtt_conn_t *old = NULL;
    uint32_t old_loop = 0;
    uint64_t old_conn = 0;
    bool ok = false;
    lock(b);
    mqtt_state_t *st = state(b);
    mqtt_conn_t **p = st ? client_slot(st, m->client_id, m->hash) : NULL;
    if (p && *p) { /* takeover (3.1.4-2): the old connection goes, without its will */
        old = *p;
        *p = old->hnext;
        st->nclients--;
        old_loop = old->loop;
        old_conn = old->s->conn.id;
    }
    if (st && (st->nclients + 1 <= st->clients_cap / 2 ||
               table_grow((void ***)&st->clients, &st->clients_cap, offsetof(mqtt_conn_t, hnext),
                          offsetof(mqtt_conn_t, hash)))) {
        mqtt_conn_t **head = &st->clients[m->hash & (st->clients_cap - 1)];
        m->hnext = *head;
        *head = m;
        st->nclients++;
        ok = true;
    }
    unlock(b);
    if (old && old_loop == b->loop_idx)
        take_over(b, old, m->client_id, m->s->conn.id);
    else if (old && !loops_takeover(b, old_loop, old_conn, m->s->conn.id))
        log_error("mqtt: out of memory closing conn %" PRIu64 ", whose client id '%s' conn "
                  "%" PRIu64 " took over",
                  old_conn, m->client_id, m->s->conn.id);
    return ok;
}

/* --- retained messages --------------------------------------------------- */

static retained_t **retained_slot(mqtt_state_t *st, const char *t, size_t len, uint64_t h)
{
    if (!st->retained_cap)
        return NULL;
    retained_t **p = &st->retained[h & (st->retained_cap - 1)];
    while (*p && ((*p)->hash != h || (*p)->topic_len != len || memcmp((*p)->topic, t, len) != 0))
        p = &(*p)->hnext;
    return p;
}

static void retained_drop(mqtt_state_t *st, retained_t **p)
{
    retained_t *r = *p;
    *p = r->hnext;
    st->nretained--;
    st->retained_bytes -= sizeof(*r) + r->topic_len + r->payload_len;
    free(r->topic);
    free(r);
}

static void keep(broker_t *b, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                 size_t plen);

/*
 * Keeps payload as topic's retained message (an empty payload clears it, 3.3.1-10/11). Past
 * --mqtt-retained-max topics a new one is not kept (logged); the message is delivered all the
 * same.
 */
static void retain(broker_t *b, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                   size_t plen)
{
    if (b->bus.ops) { /* a cluster keeps them in Redis (cluster_retain.c) */
        b->bus.ops->retain(b->bus.ctx, topic, len, qos, payload, plen);
        return;
    }
    lock(b);
    keep(b, topic, len, qos, payload, plen);
    unlock(b);
}

static void keep(broker_t *b, const char *topic, size_t len, uint8_t qos, const uint8_t *payload,
                 size_t plen)
{
    mqtt_state_t *st = state(b);
    if (!st)
        return;
    uint64_t h = hash_bytes(topic, len);
    retained_t **p = retained_slot(st, topic, len, h);
    if (p && *p)
        retained_drop(st, p);
    if (!plen)
        return;
    bool count = st->nretained >= b->cfg.mqtt_retained_max;
    if (count ||
        st->retained_bytes + sizeof(retained_t) + len + plen > b->cfg.mqtt_retained_memory) {
        /* Logged at most once a minute, with the count of those refused meanwhile. */
        uint64_t now = b->loops ? loops_now_ms() : broker_uptime_ms(b); /* the state's clock */
        st->refused++;
        if (!st->refused_log_ms || now - st->refused_log_ms >= 60000) {
            log_warn("mqtt: %" PRIu64 " retained messages (%" PRIu64 " bytes) held, at %s: "
                     "'%.*s' and %" PRIu64 " other retained publishes since the last report "
                     "were delivered but not kept",
                     (uint64_t)st->nretained, st->retained_bytes,
                     count ? "--mqtt-retained-max" : "--mqtt-retained-memory", (int)len, topic,
                     st->refused - 1);
            st->refused_log_ms = now;
            st->refused = 0;
        }
        return;
    }
    if (st->nretained + 1 > st->retained_cap / 2 &&
        !table_grow((void ***)&st->retained, &st->retained_cap, offsetof(retained_t, hnext),
                    offsetof(retained_t, hash)))
        return;
    retained_t *r = malloc(sizeof(*r) + plen);
    char *t = malloc(len);
    if (!r || !t) {
        free(r);
        free(t);
        log_error("mqtt: out of memory keeping a retained message");
        return;
    }
    memcpy(t, topic, len);
    memcpy(r->payload, payload, plen);
    r->topic = t;
    r->topic_len = len;
    r->payload_len = plen;
    r->qos = qos;
    r->hash = h;
    retained_t **head = &st->retained[h & (st->retained_cap - 1)];
    r->hnext = *head;
    *head = r;
    st->nretained++;
    st->retained_bytes += sizeof(*r) + len + plen;
}

void mqtt_retained_stats(const broker_t *b, uint64_t *count, uint64_t *bytes)
{
    lock(b);
    const mqtt_state_t *st = b->mqtt;
    *count = st ? st->nretained : 0;
    *bytes = st ? st->retained_bytes : 0;
    unlock(b);
}

void mqtt_state_free(struct mqtt_state *st)
{
    if (!st)
        return;
    for (uint32_t i = 0; i < st->retained_cap; i++)
        while (st->retained[i])
            retained_drop(st, &st->retained[i]);
    free(st->retained);
    free(st->clients);
    free(st);
}

void mqtt_free(broker_t *b)
{
    if (!b->loops) /* else the loops' (loops.c) */
        mqtt_state_free(b->mqtt);
    b->mqtt = NULL;
}

/* --- sending ------------------------------------------------------------- */

static void send_ack(broker_t *b, session_t *s, gale_mqtt_type_t type, uint16_t id)
{
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    adapter_send(b, s, &buf, gale_mqtt_encode_ack(&buf, type, id));
}

static void send_connack(broker_t *b, session_t *s, uint8_t code)
{
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    adapter_send(b, s, &buf, gale_mqtt_encode_connack(&buf, false, code));
}

static uint16_t next_packet_id(mqtt_conn_t *m)
{
    if (++m->next_id == 0)
        m->next_id = 1;
    return m->next_id;
}

/* Queues a PUBLISH at QoS 1 built from the QoS 0 one in f (shared), or f itself at QoS 0. */
static bool send_publish(broker_t *b, session_t *s, frame_t *f, uint8_t qos)
{
    mqtt_conn_t *m = mqtt_of(s);
    if (qos == 0)
        return session_enqueue(b, s, f);
    if (m->unacked >= MQTT_MAX_UNACKED) {
        b->m.slow_consumer_closes++;
        log_info("mqtt conn %" PRIu64 ": %u QoS 1 messages unacknowledged: closing with 4001",
                 s->conn.id, m->unacked);
        session_begin_close(b, s, 4001, true);
        return false;
    }
    size_t len;
    const uint8_t *pkt = frame_payload(f, &len);
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    frame_t *q = NULL;
    if (gale_mqtt_publish_at_qos1(&buf, pkt, len, next_packet_id(m)) == GALE_OK)
        q = frame_finish(&buf, FRAME_BINARY);
    else
        gale_buf_free(&buf);
    if (!q) {
        log_error("mqtt conn %" PRIu64 ": out of memory building a PUBLISH: closing", s->conn.id);
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return false;
    }
    bool ok = session_enqueue(b, s, q);
    frame_unref(q);
    m->unacked += ok;
    return ok;
}

/* The highest QoS granted to m's subscriptions matching gale topic t. */
/* Whether gale pattern p[0..len) starts with a wildcard segment (MQTT '+' or '#'). */
static bool wild_first(const char *p, size_t len)
{
    return (p[0] == '*' || p[0] == '>') && (len == 1 || p[1] == '.');
}

/*
 * The highest QoS granted to m's subscriptions matching gale topic t; -1 when none may have
 * it: a topic starting with '$' is not matched by a filter starting with a wildcard (4.7.2).
 */
static int granted_qos(const mqtt_conn_t *m, const char *t, size_t len)
{
    bool dollar = t[0] == '$';
    int q = dollar ? -1 : 0;
    for (const msub_t *x = m->subs; x && q < 1; x = x->next) {
        const char *p = x->pat;
        for (uint8_t i = 0; i < x->npat; p += x->len[i], i++)
            if (x->qos > q && (!dollar || !wild_first(p, x->len[i])) &&
                gale_pattern_match(p, x->len[i], t, len))
                q = x->qos;
    }
    return q;
}

/* Where the topic name of the QoS 0 PUBLISH pkt[0..len) starts (its length before it). */
static size_t topic_at(const uint8_t *pkt, size_t len)
{
    size_t i = 1;
    while (i < len && (pkt[i] & 0x80))
        i++;
    return i + 1;
}

/* The gale topic of the QoS 0 PUBLISH pkt[0..len) the router built (valid by construction). */
static size_t publish_topic(const uint8_t *pkt, size_t len, char *out)
{
    size_t i = topic_at(pkt, len);
    if (i + 2 > len)
        return 0;
    size_t n = (size_t)pkt[i] << 8 | pkt[i + 1];
    if (n == 0 || n > GALE_TOPIC_MAX || i + 2 + n > len)
        return 0;
    for (size_t k = 0; k < n; k++)
        out[k] = pkt[i + 2 + k] == '/' ? '.' : (char)pkt[i + 2 + k];
    return n;
}

/* conn_ops_t.deliver: f is a QoS 0 PUBLISH (conn.h CONN_FMT_MQTT). */
static bool op_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    session_t *s = session_of_conn(c);
    mqtt_conn_t *m = mqtt_of(s);
    size_t len;
    const uint8_t *pkt = frame_payload(f, &len);
    size_t at = topic_at(pkt, len);
    bool dollar = at + 2 < len && pkt[at + 2] == '$';
    if (!dollar && (!m->qos1_subs || !f->qos))
        return session_enqueue(b, s, f);
    char topic[GALE_TOPIC_MAX];
    size_t tl = publish_topic(pkt, len, topic);
    int q = tl ? granted_qos(m, topic, tl) : 0;
    if (q < 0)
        return true; /* only wildcard filters matched a '$' topic: not for this client */
    return send_publish(b, s, f, (uint8_t)q < f->qos ? (uint8_t)q : f->qos); /* 3.8.4 */
}

/* Sends one retained message of gale topic t at qos, with the retain flag (3.3.1-8). */
static void send_one_retained(broker_t *b, session_t *s, const char *t, size_t tl, uint8_t qos,
                              const uint8_t *payload, size_t plen)
{
    char name[GALE_TOPIC_MAX];
    if (!gale_mqtt_topic_from_gale(t, tl, name))
        return;
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    uint16_t id = qos ? next_packet_id(mqtt_of(s)) : 0;
    gale_err_t e = gale_mqtt_encode_publish(&buf, name, tl, qos, true, false, id, payload, plen);
    mqtt_of(s)->unacked += qos && e == GALE_OK;
    adapter_send(b, s, &buf, e);
}

/* conn_ops_t.retained: one read from the cluster. */
static void op_retained(broker_t *b, conn_t *c, const char *t, size_t tl, uint8_t qos,
                        const uint8_t *payload, size_t plen)
{
    session_t *s = session_of_conn(c);
    if (!s->close_code && !s->killed)
        send_one_retained(b, s, t, tl, qos, payload, plen);
}

/* Sends the retained messages matching sub x at its QoS, with the retain flag (3.3.1-8). */
static void send_retained(broker_t *b, session_t *s, const msub_t *x)
{
    if (b->bus.ops) { /* read from Redis: they come later, through op_retained */
        const char *p = x->pat;
        for (uint8_t k = 0; k < x->npat; p += x->len[k], k++)
            b->bus.ops->retained(b->bus.ctx, &s->conn, p, x->len[k], x->qos);
        return;
    }
    lock(b);
    mqtt_state_t *st = b->mqtt;
    for (uint32_t i = 0; st && st->nretained && i < st->retained_cap; i++)
        for (retained_t *r = st->retained[i]; r; r = r->hnext) {
            const char *p = x->pat;
            bool match = false;
            for (uint8_t k = 0; k < x->npat && !match; p += x->len[k], k++)
                match = (r->topic[0] != '$' || !wild_first(p, x->len[k])) &&
                        gale_pattern_match(p, x->len[k], r->topic, r->topic_len);
            if (match) /* the sub was allowed: so is every topic it matches */
                send_one_retained(b, s, r->topic, r->topic_len, x->qos < r->qos ? x->qos : r->qos,
                                  r->payload, r->payload_len);
        }
    unlock(b);
}

/* --- core requests -------------------------------------------------------- */

static msub_t *sub_new(uint8_t qos, int npat, char pats[2][GALE_TOPIC_MAX], size_t lens[2])
{
    msub_t *x = malloc(sizeof(*x) + lens[0] + (npat > 1 ? lens[1] : 0));
    if (!x)
        return NULL;
    x->next = NULL;
    x->qos = qos;
    x->npat = (uint8_t)npat;
    for (int i = 0; i < npat; i++) {
        x->len[i] = (uint8_t)lens[i];
        memcpy(x->pat + (i ? lens[0] : 0), pats[i], lens[i]);
    }
    return x;
}

/* m's subscription of these patterns, or NULL. */
static msub_t **sub_find(mqtt_conn_t *m, int npat, char pats[2][GALE_TOPIC_MAX], size_t lens[2])
{
    for (msub_t **p = &m->subs; *p; p = &(*p)->next)
        if ((*p)->npat == npat && (*p)->len[0] == lens[0] &&
            memcmp((*p)->pat, pats[0], lens[0]) == 0)
            return p;
    return NULL;
}

/* Whether a subscription of m other than `except` holds gale pattern p. */
static bool pattern_held(const mqtt_conn_t *m, const msub_t *except, const char *p, size_t len)
{
    for (const msub_t *x = m->subs; x; x = x->next) {
        const char *q = x->pat;
        for (uint8_t i = 0; x != except && i < x->npat; q += x->len[i], i++)
            if (x->len[i] == len && memcmp(q, p, len) == 0)
                return true;
    }
    return false;
}

/* Unsubscribes from the core the patterns of x that no other subscription holds; frees x. */
static void sub_release(broker_t *b, session_t *s, msub_t *x, void *ctx)
{
    mqtt_conn_t *m = mqtt_of(s);
    const char *p = x->pat;
    for (uint8_t i = 0; i < x->npat; p += x->len[i], i++)
        if (!pattern_held(m, x, p, x->len[i])) {
            if (ctx)
                ((mack_t *)ctx)->outstanding++;
            adapter_topic_request(b, s, &mqtt_of(s)->waits, GALE_OP_UNSUB, p, x->len[i],
                                  (adapter_wait_t){.kind = W_UNSUB, .ctx = ctx});
        }
    free(x);
}

/* A SUBSCRIBE or UNSUBSCRIBE has all its answers: SUBACK (then retained messages) or
 * UNSUBACK. */
static void ack_done(broker_t *b, session_t *s, mack_t *a)
{
    mqtt_conn_t *m = mqtt_of(s);
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    if (a->unsub) {
        adapter_send(b, s, &buf, gale_mqtt_encode_ack(&buf, GALE_MQTT_UNSUBACK, a->packet_id));
        free(a);
        return;
    }
    adapter_send(b, s, &buf, gale_mqtt_encode_suback(&buf, a->packet_id, a->codes, a->n));
    gale_mqtt_packet_t p = {
        .type = GALE_MQTT_SUBSCRIBE, .filters = a->filters, .filters_len = a->filters_len};
    size_t pos = 0, flen;
    const char *f;
    uint8_t qos;
    for (uint32_t i = 0; gale_mqtt_next_filter(&p, &pos, &f, &flen, &qos); i++) {
        char pats[2][GALE_TOPIC_MAX];
        size_t lens[2];
        int npat = gale_mqtt_filter_to_gale(f, flen, pats, lens);
        msub_t **x = npat ? sub_find(m, npat, pats, lens) : NULL;
        if (!x || !*x)
            continue;
        if (a->codes[i] == GALE_MQTT_SUBACK_FAILURE) { /* refused after all: let it go */
            msub_t *gone = *x;
            *x = gone->next;
            m->qos1_subs -= gone->qos == 1;
            gone->next = m->stale;
            m->stale = gone;
        } else {
            send_retained(b, s, *x); /* 3.8.4-3: on a repeated SUBSCRIBE too */
        }
    }
    free(a);
}

/* conn_ops_t.reply: the core's answer to the oldest awaited request. */
static void op_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    session_t *s = session_of_conn(c);
    mqtt_conn_t *m = mqtt_of(s);
    frame_unref(r->frame);
    if (!m->waits.count)
        return;
    adapter_wait_t w = adapter_waits_shift(&m->waits);
    if (w.kind == W_PUB) { /* whatever becomes of the connection */
        pretain_t *pr = w.ctx;
        if (pr && r->err == GALE_OK)
            retain(b, pr->topic, pr->topic_len, pr->qos, pr->payload, pr->payload_len);
        free(pr);
    }
    if (s->close_code || s->killed) {
        if ((w.kind == W_SUB || w.kind == W_UNSUB) && w.ctx &&
            --((mack_t *)w.ctx)->outstanding == 0)
            free(w.ctx);
        return;
    }
    switch (w.kind) {
    case W_SUB:
    case W_UNSUB: {
        mack_t *a = w.ctx;
        if (!a)
            return; /* a stale subscription's unsub */
        if (r->err != GALE_OK && w.kind == W_SUB)
            a->codes[w.index] = GALE_MQTT_SUBACK_FAILURE;
        if (--a->outstanding == 0)
            ack_done(b, s, a);
        return;
    }
    case W_PUB:
        /* Refused by the token: acknowledged all the same and dropped (3.3.5: the server
         * cannot tell the client; mosquitto does the same). Any other refusal (the cluster
         * unreachable, --pub-rate) closes a QoS 1 or 2 publisher, which then sends it again
         * on its next connection, rather than acknowledge what was not delivered. */
        if (r->err != GALE_OK && r->err != GALE_ERR_FORBIDDEN) {
            if (w.qos) {
                char why[160];
                snprintf(why, sizeof(why), "a QoS %u PUBLISH was refused (%s: %s)", w.qos,
                         gale_err_name(r->err), r->why);
                log_info("mqtt conn %" PRIu64 ": %s: closing with 1011", s->conn.id, why);
                session_begin_close(b, s, CONN_CLOSE_INTERNAL, false);
            }
            return;
        }
        if (w.qos == 1)
            send_ack(b, s, GALE_MQTT_PUBACK, w.packet_id);
        else if (w.qos == 2)
            send_ack(b, s, GALE_MQTT_PUBREC, w.packet_id);
        return;
    default:
        return;
    }
}

/* conn_ops_t.close */
static void op_close(broker_t *b, conn_t *c, uint16_t code)
{
    session_begin_close(b, session_of_conn(c), code, true);
}

static const conn_ops_t mqtt_ops = {
    .deliver = op_deliver, .reply = op_reply, .close = op_close, .retained = op_retained};

/* --- packets --------------------------------------------------------------- */

static bool rel_has(const mqtt_conn_t *m, uint16_t id, uint32_t *at)
{
    for (uint32_t i = 0; i < m->nrel; i++)
        if (m->rel[i] == id) {
            *at = i;
            return true;
        }
    return false;
}

/*
 * A publish of gale topic t with payload (MQTT publish or will) to the core. With retain_it,
 * a PUBLISH's retained message is kept when the core accepts it (op_reply); a will's at once
 * (its connection is closing: the answer may never come back to it).
 */
static bool publish(broker_t *b, session_t *s, const char *t, size_t tl, uint8_t qos,
                    const uint8_t *payload, size_t plen, bool retain_it, adapter_wait_t w)
{
    gale_buf_t scratch;
    gale_buf_init(&scratch, 0);
    gale_request_t req;
    memset(&req, 0, sizeof(req));
    req.op = GALE_OP_PUB;
    req.topic = t;
    req.topic_len = tl;
    req.qos0 = qos == 0;
    req.data_enc = gale_payload_to_data(payload, plen, &scratch, &req.data, &req.data_len);
    if (!req.data) {
        gale_buf_free(&scratch);
        log_error("mqtt conn %" PRIu64 ": out of memory: closing", s->conn.id);
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return false;
    }
    const char *why;
    if (retain_it && w.kind == W_WILL && auth_check(s->conn.grant, &req, &why) == GALE_OK) {
        retain(b, t, tl, qos, payload, plen);
    } else if (retain_it && w.kind == W_PUB) {
        pretain_t *pr = malloc(sizeof(*pr) + plen);
        if (!pr) {
            gale_buf_free(&scratch);
            session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
            return false;
        }
        pr->qos = qos;
        pr->topic_len = tl;
        memcpy(pr->topic, t, tl);
        pr->payload_len = plen;
        if (plen)
            memcpy(pr->payload, payload, plen);
        w.ctx = pr;
    }
    bool ok = adapter_request(b, s, &mqtt_of(s)->waits, &req, w);
    if (!ok)
        free(w.ctx);
    gale_buf_free(&scratch);
    return ok;
}

static void on_publish(broker_t *b, session_t *s, const gale_mqtt_packet_t *p)
{
    mqtt_conn_t *m = mqtt_of(s);
    char topic[GALE_TOPIC_MAX];
    size_t tl = gale_mqtt_topic_to_gale(p->topic, p->topic_len, topic);
    if (!tl) {
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL,
                     "PUBLISH to a topic gale cannot express (a level empty or holding '.', "
                     "'*', '>' or whitespace)");
        return;
    }
    if (p->qos == 2) {
        uint32_t at;
        if (rel_has(m, p->packet_id, &at)) { /* a resend before PUBREL: delivered already */
            send_ack(b, s, GALE_MQTT_PUBREC, p->packet_id);
            return;
        }
        if (m->nrel >= MQTT_MAX_QOS2_PENDING) {
            adapter_fail(b, s, SESSION_CLOSE_PROTOCOL,
                         "too many QoS 2 PUBLISHes awaiting their PUBREL");
            return;
        }
        if (m->nrel == m->rel_cap) {
            uint32_t cap = m->rel_cap ? m->rel_cap * 2 : 8;
            uint16_t *nr = realloc(m->rel, cap * sizeof(*nr));
            if (!nr) {
                session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
                return;
            }
            m->rel = nr;
            m->rel_cap = cap;
        }
        m->rel[m->nrel++] = p->packet_id;
    }
    publish(b, s, topic, tl, p->qos, p->payload, p->payload_len, p->retain,
            (adapter_wait_t){.kind = W_PUB, .qos = p->qos, .packet_id = p->packet_id});
}

static void on_subscribe(broker_t *b, session_t *s, const gale_mqtt_packet_t *p)
{
    mqtt_conn_t *m = mqtt_of(s);
    size_t pos = 0, flen;
    const char *f;
    uint8_t qos;
    uint32_t n = 0;
    while (gale_mqtt_next_filter(p, &pos, &f, &flen, &qos))
        n++;
    mack_t *a = malloc(sizeof(*a) + p->filters_len + n);
    if (!a) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return;
    }
    a->packet_id = p->packet_id;
    a->unsub = false;
    a->n = n;
    a->outstanding = 1;
    a->filters_len = p->filters_len;
    memcpy(a->filters, p->filters, p->filters_len);
    a->codes = a->filters + p->filters_len;
    pos = 0;
    for (uint32_t i = 0; gale_mqtt_next_filter(p, &pos, &f, &flen, &qos); i++) {
        char pats[2][GALE_TOPIC_MAX];
        size_t lens[2];
        int npat = gale_mqtt_filter_to_gale(f, flen, pats, lens);
        uint8_t granted = qos > 1 ? 1 : qos; /* no QoS 2 outbound */
        a->codes[i] = npat ? granted : GALE_MQTT_SUBACK_FAILURE;
        if (!npat) {
            log_info("mqtt conn %" PRIu64 ": SUBSCRIBE '%.*s' refused: gale cannot express it",
                     s->conn.id, (int)flen, f);
            continue;
        }
        msub_t **x = sub_find(m, npat, pats, lens);
        if (x) { /* a repeat replaces the subscription's QoS (3.8.4-3) */
            m->qos1_subs += (granted == 1) - ((*x)->qos == 1);
            (*x)->qos = granted;
        } else {
            msub_t *nx = sub_new(granted, npat, pats, lens);
            if (!nx) {
                a->codes[i] = GALE_MQTT_SUBACK_FAILURE;
                continue;
            }
            nx->next = m->subs;
            m->subs = nx;
            m->qos1_subs += granted == 1;
        }
        for (int k = 0; k < npat; k++) {
            a->outstanding++;
            if (!adapter_topic_request(b, s, &mqtt_of(s)->waits, GALE_OP_SUB, pats[k], lens[k],
                                       (adapter_wait_t){.kind = W_SUB, .index = i, .ctx = a})) {
                a->outstanding--;
                break;
            }
        }
    }
    if (--a->outstanding == 0)
        ack_done(b, s, a);
}

static void on_unsubscribe(broker_t *b, session_t *s, const gale_mqtt_packet_t *p)
{
    mqtt_conn_t *m = mqtt_of(s);
    mack_t *a = malloc(sizeof(*a));
    if (!a) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return;
    }
    *a = (mack_t){.packet_id = p->packet_id, .unsub = true, .outstanding = 1};
    size_t pos = 0, flen;
    const char *f;
    uint8_t qos;
    while (gale_mqtt_next_filter(p, &pos, &f, &flen, &qos)) {
        char pats[2][GALE_TOPIC_MAX];
        size_t lens[2];
        int npat = gale_mqtt_filter_to_gale(f, flen, pats, lens);
        msub_t **x = npat ? sub_find(m, npat, pats, lens) : NULL;
        if (!x)
            continue; /* not held: nothing to do, UNSUBACK all the same (3.10.4-5) */
        msub_t *gone = *x;
        *x = gone->next;
        m->qos1_subs -= gone->qos == 1;
        sub_release(b, s, gone, a);
    }
    if (--a->outstanding == 0)
        ack_done(b, s, a);
}

/* CONNECT: the client's identity and token; CONNACK. */
static void on_connect(broker_t *b, session_t *s, const gale_mqtt_packet_t *p)
{
    mqtt_conn_t *m = mqtt_of(s);
    auth_grant_t *grant = NULL;
    if (b->auth) {
        const char *why = "no password (a gale token)";
        if (p->has_password && p->password_len)
            grant = auth_lookup(b->auth, (const char *)p->password, p->password_len,
                                (int64_t)time(NULL), &why);
        if (!grant) {
            log_info("mqtt: CONNECT refused with 5 (not authorized): %s", why);
            send_connack(b, s, GALE_MQTT_REFUSED_NOT_AUTHORIZED);
            session_begin_close(b, s, SESSION_CLOSE_NORMAL, false);
            return;
        }
    }
    char wtopic[GALE_TOPIC_MAX];
    size_t wlen = 0;
    if (p->will && !(wlen = gale_mqtt_topic_to_gale(p->will_topic, p->will_topic_len, wtopic))) {
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, "the will's topic is one gale cannot express");
        return;
    }
    core_open(b, &s->conn, &mqtt_ops, CONN_FMT_MQTT, grant);
    char name[CORE_CONN_NAME_MAX];
    size_t idlen = p->client_id_len;
    const char *id = p->client_id;
    if (!idlen) { /* 3.1.3-6: the server assigns one */
        idlen = core_conn_name(b, &s->conn, name);
        id = name;
    }
    if (p->will) {
        m->will = malloc(sizeof(*m->will) + p->will_payload_len);
        if (m->will) {
            m->will->qos = p->will_qos;
            m->will->retain = p->will_retain;
            m->will->topic_len = wlen;
            memcpy(m->will->topic, wtopic, wlen);
            m->will->payload_len = p->will_payload_len;
            if (p->will_payload_len)
                memcpy(m->will->payload, p->will_payload, p->will_payload_len);
        }
    }
    m->client_id = malloc(idlen + 1);
    if ((p->will && !m->will) || !m->client_id) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return;
    }
    memcpy(m->client_id, id, idlen);
    m->client_id[idlen] = '\0';
    m->connected = true;
    m->keepalive_ms = p->keepalive * 1500u; /* 3.1.2-24: one and a half times */
    if (!client_add(b, m)) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return;
    }
    send_connack(b, s, GALE_MQTT_ACCEPTED); /* no session is kept: session present 0 */
    log_debug("mqtt conn %" PRIu64 ": CONNECT client id '%s'%s", s->conn.id, m->client_id,
              grant ? ", with a token" : "");
}

static void packet(broker_t *b, session_t *s, const uint8_t *pkt, size_t len)
{
    mqtt_conn_t *m = mqtt_of(s);
    gale_mqtt_packet_t p;
    const char *why = "";
    gale_mqtt_status_t st = gale_mqtt_decode(pkt, len, &p, &why);
    m->last_packet_ms = broker_uptime_ms(b);
    if (st == GALE_MQTT_OK && !m->connected && p.type != GALE_MQTT_CONNECT) {
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, "the first packet is not CONNECT");
        return;
    }
    if (st == GALE_MQTT_OK && m->connected && p.type == GALE_MQTT_CONNECT) {
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, "a second CONNECT (3.1.0-2)");
        return;
    }
    if (st == GALE_MQTT_BAD_LEVEL || st == GALE_MQTT_BAD_CLIENT_ID) {
        if (!m->connected)
            send_connack(b, s,
                         st == GALE_MQTT_BAD_LEVEL ? GALE_MQTT_REFUSED_PROTOCOL
                                                   : GALE_MQTT_REFUSED_IDENTIFIER);
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, why);
        return;
    }
    if (st != GALE_MQTT_OK) {
        adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, why);
        return;
    }
    uint32_t at;
    switch (p.type) {
    case GALE_MQTT_CONNECT:
        on_connect(b, s, &p);
        return;
    case GALE_MQTT_PUBLISH:
        on_publish(b, s, &p);
        return;
    case GALE_MQTT_PUBACK:
        m->unacked -= m->unacked > 0;
        return;
    case GALE_MQTT_PUBREL:
        if (rel_has(m, p.packet_id, &at))
            m->rel[at] = m->rel[--m->nrel];
        send_ack(b, s, GALE_MQTT_PUBCOMP, p.packet_id);
        return;
    case GALE_MQTT_SUBSCRIBE:
        on_subscribe(b, s, &p);
        return;
    case GALE_MQTT_UNSUBSCRIBE:
        on_unsubscribe(b, s, &p);
        return;
    case GALE_MQTT_PINGREQ: {
        gale_buf_t buf;
        gale_buf_init(&buf, FRAME_HEADROOM);
        adapter_send(b, s, &buf, gale_mqtt_encode_pingresp(&buf));
        return;
    }
    case GALE_MQTT_DISCONNECT: /* 3.14.4: the will is discarded */
        m->disconnected = true;
        free(m->will);
        m->will = NULL;
        session_begin_close(b, s, SESSION_CLOSE_NORMAL, false);
        return;
    default: /* PUBREC, PUBCOMP: answers to QoS 2 PUBLISHes gale never sends */
        return;
    }
}

/* --- session_proto_t ------------------------------------------------------ */

static bool proto_open(broker_t *b, session_t *s)
{
    mqtt_conn_t *m = calloc(1, sizeof(*m));
    if (!m || !state(b)) {
        free(m);
        return false;
    }
    m->ad.proto = &mqtt_proto;
    m->s = s;
    m->opened_ms = m->last_packet_ms = broker_uptime_ms(b);
    s->ad = &m->ad;
    return true;
}

static int proto_receive(broker_t *b, session_t *s, const uint8_t *in, size_t len, bool binary)
{
    mqtt_conn_t *m = mqtt_of(s);
    if (!binary) { /* 6.0.0-1 */
        adapter_fail(b, s, SESSION_CLOSE_UNSUPPORTED,
                     "MQTT packets come in binary frames (a text frame arrived)");
        return 0;
    }
    while (m->stale) { /* subscriptions refused after the core took a part */
        msub_t *x = m->stale;
        m->stale = x->next;
        sub_release(b, s, x, NULL);
    }
    size_t n, off = 0;
    const uint8_t *data = adapter_rx_take(&m->rx, in, len, &n);
    if (!data) {
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return 0;
    }
    /* A packet, headers included, may be --max-message bytes (mosquitto's max_packet_size). */
    uint64_t limit = b->cfg.max_message;
    while (off < n && !s->close_code && !s->killed) {
        size_t total = 0;
        int r = gale_mqtt_frame(data + off, n - off, &total);
        if (r < 0) {
            adapter_fail(b, s, SESSION_CLOSE_PROTOCOL, "malformed remaining length");
            return 0;
        }
        if (total > limit) {
            b->m.oversize_closes++;
            adapter_fail(b, s, SESSION_CLOSE_TOO_LARGE, "a packet over --max-message");
            return 0;
        }
        if (r == 0)
            break;
        packet(b, s, data + off, total);
        off += total;
    }
    if (s->close_code || s->killed)
        off = n; /* closing: what follows no longer matters */
    if (!adapter_rx_keep(&m->rx, data, off, n))
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
    return 0;
}

static void proto_closing(broker_t *b, session_t *s)
{
    mqtt_conn_t *m = mqtt_of(s);
    /* A connection whose client id was taken over (on any loop) leaves no will. */
    bool held = client_remove(b, m);
    if (m->connected && m->will && held) { /* 3.1.2-8: ended without DISCONNECT */
        will_t *w = m->will;
        m->will = NULL;
        log_debug("mqtt conn %" PRIu64 ": publishing the will of client '%s'", s->conn.id,
                  m->client_id);
        publish(b, s, w->topic, w->topic_len, w->qos, w->payload, w->payload_len, w->retain,
                (adapter_wait_t){.kind = W_WILL});
        free(w);
    }
}

static void proto_free(broker_t *b, session_t *s)
{
    mqtt_conn_t *m = mqtt_of(s);
    void *last = NULL;
    while (m->waits.count) {
        adapter_wait_t w = adapter_waits_shift(&m->waits);
        if (w.ctx && w.ctx != last && (w.kind == W_SUB || w.kind == W_UNSUB || w.kind == W_PUB))
            free(w.ctx);
        last = w.ctx;
    }
    adapter_waits_free(&m->waits);
    adapter_rx_free(&m->rx);
    for (msub_t *lists[2] = {m->subs, m->stale}, *x; lists[0] || lists[1];) {
        int i = lists[0] ? 0 : 1;
        x = lists[i];
        lists[i] = x->next;
        free(x);
    }
    free(m->will);
    free(m->rel);
    free(m->client_id);
    free(m);
}

static void proto_sweep(broker_t *b, session_t *s, uint64_t now)
{
    mqtt_conn_t *m = mqtt_of(s);
    if (!m->connected && now - m->opened_ms >= b->cfg.handshake_timeout_s * 1000) {
        log_info("mqtt conn: no CONNECT within --handshake-timeout: dropping");
        session_kill(b, s);
    } else if (m->connected && m->keepalive_ms && now - m->last_packet_ms >= m->keepalive_ms) {
        b->m.keepalive_closes++;
        log_info("mqtt conn %" PRIu64 ": nothing received for 1.5 x its keepalive (%u ms): "
                 "dropping",
                 s->conn.id, m->keepalive_ms);
        session_kill(b, s);
    }
}

const session_proto_t mqtt_proto = {.name = "mqtt",
                                    .index = SESSION_PROTO_MQTT,
                                    .open = proto_open,
                                    .receive = proto_receive,
                                    .closing = proto_closing,
                                    .free = proto_free,
                                    .sweep = proto_sweep};
