#include "history.h"

#include "cluster_wire.h"
#include "ring.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

RING_OF(msg_ring, hist_msg_t *)

struct hist_topic {
    hist_topic_t *hnext;             /* hash chain */
    hist_topic_t *prev, *next;       /* the idle list (no message held) or the busy list */
    const gale_history_rule_t *rule; /* one of h->rules */
    msg_ring_t msgs;                 /* held, oldest first, consecutive offsets */
    uint64_t off;                    /* the last offset given */
    uint64_t hash;
    char ep[40];
    uint8_t ep_len;
    uint8_t len;
    char name[];
};

typedef struct {
    hist_topic_t *head, *tail;
} tlist_t;

struct history {
    gale_history_rule_t *rules;
    uint32_t nrules;
    bool any_ttl;
    uint64_t max_bytes;
    uint64_t instance;
    uint64_t generation;
    hist_topic_t **buckets; /* power-of-two count */
    size_t nbuckets;
    tlist_t idle; /* states holding no message, least recently used first */
    tlist_t busy; /* states holding messages */
    hist_msg_t *oldest, *newest;
    history_stats_t st;
};

/* --- accounting ----------------------------------------------------------- */

static uint64_t frame_cost(const frame_t *f)
{
    return f ? f->off + f->len : 0;
}

static uint64_t msg_cost(const hist_msg_t *m)
{
    return sizeof(*m) + m->len + m->reply_len + frame_cost(m->frames[0]) + frame_cost(m->frames[1]);
}

static uint64_t topic_cost(const hist_topic_t *t)
{
    return sizeof(*t) + t->len; /* its ring and the buckets are counted apart */
}

/* --- lists ---------------------------------------------------------------- */

static void tlist_remove(tlist_t *l, hist_topic_t *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        l->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        l->tail = t->prev;
    t->prev = t->next = NULL;
}

static void tlist_append(tlist_t *l, hist_topic_t *t)
{
    t->prev = l->tail;
    t->next = NULL;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
}

static void age_unlink(history_t *h, hist_msg_t *m)
{
    if (m->older)
        m->older->newer = m->newer;
    else
        h->oldest = m->newer;
    if (m->newer)
        m->newer->older = m->older;
    else
        h->newest = m->older;
}

/* --- the table ------------------------------------------------------------ */

static hist_topic_t **bucket(const history_t *h, uint64_t hash)
{
    return &h->buckets[hash & (h->nbuckets - 1)];
}

static void table_grow(history_t *h)
{
    size_t n = h->nbuckets * 2;
    hist_topic_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return; /* longer chains */
    for (size_t i = 0; i < h->nbuckets; i++) {
        hist_topic_t *t = h->buckets[i], *next;
        for (; t; t = next) {
            next = t->hnext;
            t->hnext = nb[t->hash & (n - 1)];
            nb[t->hash & (n - 1)] = t;
        }
    }
    h->st.bytes -= h->nbuckets * sizeof(*nb);
    free(h->buckets);
    h->buckets = nb;
    h->nbuckets = n;
    h->st.bytes += n * sizeof(*nb);
}

/* --- messages ------------------------------------------------------------- */

static void msg_free(history_t *h, hist_msg_t *m)
{
    h->st.bytes -= msg_cost(m);
    h->st.messages--;
    age_unlink(h, m);
    for (int e = 0; e < GALE_ENC_COUNT; e++)
        frame_unref(m->frames[e]);
    free(m);
}

/* Drops t's oldest message; t goes idle with its last. */
static void drop_oldest(history_t *h, hist_topic_t *t)
{
    msg_free(h, msg_ring_shift(&t->msgs));
    if (t->msgs.count == 0) {
        tlist_remove(&h->busy, t);
        tlist_append(&h->idle, t);
        h->st.bytes -= (uint64_t)t->msgs.cap * sizeof(hist_msg_t *);
        msg_ring_free(&t->msgs);
    }
}

static void expire(history_t *h, hist_topic_t *t, uint64_t now_ms)
{
    uint64_t ttl = t->rule->ttl_ms;
    while (ttl && t->msgs.count && now_ms - (*msg_ring_at(&t->msgs, 0))->at_ms >= ttl) {
        drop_oldest(h, t);
        h->st.expired++;
    }
}

/* --- topics --------------------------------------------------------------- */

static void topic_free(history_t *h, hist_topic_t *t)
{
    while (t->msgs.count)
        drop_oldest(h, t); /* leaves t idle */
    tlist_remove(&h->idle, t);
    hist_topic_t **pp = bucket(h, t->hash);
    while (*pp != t)
        pp = &(*pp)->hnext;
    *pp = t->hnext;
    h->st.bytes -= topic_cost(t);
    h->st.topics--;
    free(t);
}

history_t *history_new(const gale_history_rule_t *rules, uint32_t nrules, uint64_t max_bytes,
                       uint64_t instance)
{
    history_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->nbuckets = 64;
    h->buckets = calloc(h->nbuckets, sizeof(*h->buckets));
    h->rules = calloc(nrules ? nrules : 1, sizeof(*h->rules));
    if (!h->buckets || !h->rules) {
        history_free(h);
        return NULL;
    }
    memcpy(h->rules, rules, nrules * sizeof(*rules));
    h->nrules = nrules;
    for (uint32_t i = 0; i < nrules; i++)
        h->any_ttl |= rules[i].ttl_ms != 0;
    h->max_bytes = max_bytes;
    h->instance = instance;
    h->st.bytes = h->nbuckets * sizeof(*h->buckets);
    return h;
}

void history_free(history_t *h)
{
    if (!h)
        return;
    while (h->busy.head)
        topic_free(h, h->busy.head);
    while (h->idle.head)
        topic_free(h, h->idle.head);
    free(h->buckets);
    free(h->rules);
    free(h);
}

const gale_history_rule_t *history_match(const gale_history_rule_t *rules, uint32_t n,
                                         const char *topic, size_t len)
{
    for (uint32_t i = 0; i < n; i++)
        if (gale_pattern_match(rules[i].pattern, strlen(rules[i].pattern), topic, len))
            return &rules[i];
    return NULL;
}

const gale_history_rule_t *history_rule(const history_t *h, const char *topic, size_t len)
{
    return h ? history_match(h->rules, h->nrules, topic, len) : NULL;
}

hist_topic_t *history_topic(history_t *h, const gale_history_rule_t *rule, const char *name,
                            size_t len, uint64_t now_ms)
{
    uint64_t hash = cluster_hash64(name, len);
    for (hist_topic_t *t = *bucket(h, hash); t; t = t->hnext) {
        if (t->hash == hash && t->len == len && memcmp(t->name, name, len) == 0) {
            expire(h, t, now_ms);
            if (!t->msgs.count) { /* used: the most recent of the idle */
                tlist_remove(&h->idle, t);
                tlist_append(&h->idle, t);
            }
            return t;
        }
    }
    if (len > GALE_TOPIC_MAX)
        return NULL;
    hist_topic_t *t = calloc(1, sizeof(*t) + len);
    if (!t)
        return NULL;
    t->rule = rule;
    t->hash = hash;
    t->len = (uint8_t)len;
    memcpy(t->name, name, len);
    int n = snprintf(t->ep, sizeof(t->ep), "%016" PRIx64 "-%" PRIx64, h->instance, ++h->generation);
    t->ep_len = (uint8_t)n;
    if (h->st.topics >= h->nbuckets)
        table_grow(h);
    t->hnext = *bucket(h, hash);
    *bucket(h, hash) = t;
    tlist_append(&h->idle, t);
    h->st.topics++;
    h->st.bytes += topic_cost(t);
    return t;
}

const char *history_topic_name(const hist_topic_t *t, size_t *len)
{
    *len = t->len;
    return t->name;
}

gale_pos_t history_pos(const hist_topic_t *t)
{
    return (gale_pos_t){.ep = t->ep, .ep_len = t->ep_len, .off = t->off};
}

hist_msg_t *history_append(history_t *h, hist_topic_t *t, gale_enc_t enc, const uint8_t *data,
                           size_t len, uint64_t now_ms)
{
    return history_append_reply(h, t, enc, data, len, NULL, 0, now_ms);
}

hist_msg_t *history_append_reply(history_t *h, hist_topic_t *t, gale_enc_t enc, const uint8_t *data,
                                 size_t len, const char *reply, size_t reply_len, uint64_t now_ms)
{
    if (len > UINT32_MAX || reply_len > GALE_TOPIC_MAX)
        return NULL;
    uint32_t cap = t->msgs.cap;
    if (!msg_ring_reserve(&t->msgs))
        return NULL;
    h->st.bytes += (uint64_t)(t->msgs.cap - cap) * sizeof(hist_msg_t *);
    hist_msg_t *m = calloc(1, sizeof(*m) + len + (reply ? reply_len : 0));
    if (!m)
        return NULL;
    if (reply) {
        m->reply_len = (uint8_t)reply_len;
        memcpy(m->data + len, reply, reply_len);
    }
    m->topic = t;
    m->off = ++t->off;
    m->at_ms = now_ms;
    m->len = (uint32_t)len;
    m->enc = (uint8_t)enc;
    memcpy(m->data, data, len);
    if (t->msgs.count == 0) {
        tlist_remove(&h->idle, t);
        tlist_append(&h->busy, t);
    }
    (void)msg_ring_push(&t->msgs, m); /* room reserved above */
    m->older = h->newest;
    if (h->newest)
        h->newest->newer = m;
    else
        h->oldest = m;
    h->newest = m;
    h->st.messages++;
    h->st.bytes += msg_cost(m);
    while (t->msgs.count > t->rule->size)
        drop_oldest(h, t);
    return m;
}

void history_keep_frames(history_t *h, hist_msg_t *m, frame_t *const frames[GALE_ENC_COUNT])
{
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        if (!frames[e] || m->frames[e])
            continue;
        m->frames[e] = frame_ref(frames[e]);
        h->st.bytes += frame_cost(m->frames[e]);
    }
}

frame_t *history_frame(history_t *h, hist_msg_t *m, gale_enc_t enc, bool *nomem)
{
    *nomem = false;
    if (m->frames[enc] || m->failed[enc])
        return m->frames[enc];
    gale_pos_t pos = history_pos(m->topic);
    pos.off = m->off;
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    gale_err_t e = gale_encode_msg_reply(&buf, enc, m->topic->name, m->topic->len, &pos,
                                         m->reply_len ? (const char *)m->data + m->len : NULL,
                                         m->reply_len, (gale_enc_t)m->enc, m->data, m->len);
    if (e != GALE_OK) {
        gale_buf_free(&buf);
        if (e == GALE_ERR_INTERNAL)
            *nomem = true;
        else
            m->failed[enc] = 1;
        return NULL;
    }
    m->frames[enc] = frame_finish(&buf, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    if (!m->frames[enc]) {
        *nomem = true;
        return NULL;
    }
    h->st.bytes += frame_cost(m->frames[enc]);
    return m->frames[enc];
}

uint32_t history_count(const hist_topic_t *t)
{
    return t->msgs.count;
}

uint64_t history_first(const hist_topic_t *t)
{
    return t->msgs.count ? (*msg_ring_at(&t->msgs, 0))->off : 0;
}

hist_msg_t *history_at(const hist_topic_t *t, uint64_t off)
{
    uint64_t first = history_first(t);
    if (!first || off < first || off - first >= t->msgs.count)
        return NULL;
    return *msg_ring_at(&t->msgs, (uint32_t)(off - first));
}

bool history_covers(const hist_topic_t *t, const gale_pos_t *since, uint64_t max, uint64_t *missed)
{
    *missed = 0;
    if (!since->ep || since->ep_len != t->ep_len || memcmp(since->ep, t->ep, t->ep_len) != 0 ||
        since->off > t->off)
        return false;
    uint64_t n = t->off - since->off;
    if (n > max)
        return false;
    if (n && (!history_first(t) || history_first(t) > since->off + 1))
        return false; /* some were displaced or expired */
    *missed = n;
    return true;
}

void history_enforce(history_t *h)
{
    while (h->st.bytes > h->max_bytes && h->idle.head) {
        topic_free(h, h->idle.head);
        h->st.states_lost++;
    }
    while (h->st.bytes > h->max_bytes && h->oldest) {
        drop_oldest(h, h->oldest->topic);
        h->st.evicted++;
    }
    /* Every state is idle now; keep dropping the least recently used. */
    while (h->st.bytes > h->max_bytes && h->idle.head) {
        topic_free(h, h->idle.head);
        h->st.states_lost++;
    }
}

void history_sweep(history_t *h, uint64_t now_ms)
{
    if (!h || !h->any_ttl)
        return;
    hist_topic_t *t = h->busy.head, *next;
    for (; t; t = next) {
        next = t->next; /* expire may move t to the idle list */
        expire(h, t, now_ms);
    }
}

void history_stats(const history_t *h, history_stats_t *s)
{
    if (h)
        *s = h->st;
    else
        memset(s, 0, sizeof(*s));
}
