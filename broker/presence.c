#include "presence.h"

#include "broker.h"
#include "conn.h"
#include "frame.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

struct presence {
    pres_topic_t **slots;
    size_t nslots, ntopics;
    uint64_t nmembers;
    uint64_t bytes, memory_max; /* held by members and topic states; --presence-memory */
    pres_topic_t *dirty;        /* topics owing their watchers a count-only message */
    const char (*patterns)[256];
    uint32_t npatterns;
    uint64_t list_max, events_max;
    uint64_t gone_dropped; /* leaves never announced: over PRESENCE_GONE_MAX per topic */
    bool clustered;
};

static uint64_t hash_of(const char *s, size_t len)
{
    uint64_t h = 14695981039346656037ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

presence_t *presence_new(const gale_config_t *cfg, bool clustered)
{
    presence_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->nslots = 64;
    if (!(p->slots = calloc(p->nslots, sizeof(*p->slots)))) {
        free(p);
        return NULL;
    }
    p->patterns = cfg->presence;
    p->npatterns = cfg->npresence;
    p->list_max = cfg->presence_list_max;
    p->events_max = cfg->presence_events_max;
    p->memory_max = cfg->presence_memory;
    p->clustered = clustered;
    return p;
}

void presence_free(presence_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->nslots; i++) {
        for (pres_topic_t *t = p->slots[i], *tn; t; t = tn) {
            tn = t->hnext;
            for (pres_member_t *m = t->members, *mn; m; m = mn) {
                mn = m->next;
                free(m);
            }
            for (pres_member_t *m = t->gone, *mn; m; m = mn) {
                mn = m->cnext;
                free(m);
            }
            free(t);
        }
    }
    free(p->slots);
    free(p);
}

bool presence_on(const presence_t *p, const char *topic, size_t len)
{
    for (uint32_t i = 0; p && i < p->npatterns; i++)
        if (gale_pattern_match(p->patterns[i], strlen(p->patterns[i]), topic, len))
            return true;
    return false;
}

pres_member_t *presence_of(const conn_t *c, const char *topic, size_t len)
{
    for (pres_member_t *m = c->present; m; m = m->cnext)
        if (m->t->len == len && memcmp(m->t->name, topic, len) == 0)
            return m;
    return NULL;
}

pres_topic_t *presence_topic(presence_t *p, const char *topic, size_t len)
{
    uint64_t h = hash_of(topic, len);
    for (pres_topic_t *t = p->slots[h & (p->nslots - 1)]; t; t = t->hnext)
        if (t->hash == h && t->len == len && memcmp(t->name, topic, len) == 0)
            return t;
    return NULL;
}

static void grow(presence_t *p)
{
    size_t n = p->nslots * 2;
    pres_topic_t **slots = calloc(n, sizeof(*slots));
    if (!slots)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < p->nslots; i++) {
        for (pres_topic_t *t = p->slots[i], *tn; t; t = tn) {
            tn = t->hnext;
            t->hnext = slots[t->hash & (n - 1)];
            slots[t->hash & (n - 1)] = t;
        }
    }
    free(p->slots);
    p->slots = slots;
    p->nslots = n;
}

static pres_topic_t *topic_get(presence_t *p, const char *topic, size_t len)
{
    pres_topic_t *t = presence_topic(p, topic, len);
    if (t)
        return t;
    if (!(t = calloc(1, sizeof(*t) + len + 1)))
        return NULL;
    p->bytes += sizeof(*t) + len + 1;
    t->hash = hash_of(topic, len);
    t->len = (uint16_t)len;
    memcpy(t->name, topic, len);
    if (p->ntopics >= p->nslots)
        grow(p);
    t->hnext = p->slots[t->hash & (p->nslots - 1)];
    p->slots[t->hash & (p->nslots - 1)] = t;
    p->ntopics++;
    return t;
}

/* Frees t once nothing refers to it: no local member, no script, not on the dirty list. */
static void topic_maybe_free(presence_t *p, pres_topic_t *t)
{
    if (t->members || t->unsynced || t->inflight || t->dirty || t->gone)
        return;
    pres_topic_t **pp = &p->slots[t->hash & (p->nslots - 1)];
    while (*pp != t)
        pp = &(*pp)->hnext;
    *pp = t->hnext;
    p->ntopics--;
    p->bytes -= sizeof(*t) + t->len + 1;
    free(t);
}

static void watchers_add(pres_member_t *m)
{
    pres_topic_t *t = m->t;
    m->wprev = NULL;
    m->wnext = t->watchers;
    if (t->watchers)
        t->watchers->wprev = m;
    t->watchers = m;
}

static void watchers_remove(pres_member_t *m)
{
    if (m->wprev)
        m->wprev->wnext = m->wnext;
    else
        m->t->watchers = m->wnext;
    if (m->wnext)
        m->wnext->wprev = m->wprev;
    m->wprev = m->wnext = NULL;
}

void presence_watch(presence_t *p, pres_member_t *m, bool watch)
{
    (void)p;
    if (watch == (m->watch != 0))
        return;
    if (watch)
        watchers_add(m);
    else
        watchers_remove(m);
    m->watch = watch;
}

/* Queues the count-only message of t for the next tick. */
static void mark_dirty(presence_t *p, pres_topic_t *t)
{
    if (t->dirty)
        return;
    t->dirty = 1;
    t->dnext = p->dirty;
    p->dirty = t;
}

/* What a topic's watchers are told. */
typedef enum { TELL_JOIN, TELL_LEAVE, TELL_COUNT } tell_t;

/*
 * Queues to each watcher of t but the member named skip[0..skip_len) (NULL: none) a join or
 * leave of the member json[0..json_len), or t's count alone, built once per encoding.
 * Returns how many watchers took it.
 */
static uint64_t tell_watchers(broker_t *b, pres_topic_t *t, tell_t what, const char *skip,
                              size_t skip_len, const char *json, size_t json_len)
{
    frame_t *f[GALE_ENC_COUNT] = {NULL};
    bool failed[GALE_ENC_COUNT] = {false};
    uint64_t n = 0;
    for (pres_member_t *w = t->watchers; w; w = w->wnext) {
        conn_t *c = w->c;
        gale_enc_t enc = (gale_enc_t)c->enc;
        if (c->closing || failed[enc] ||
            (skip && w->conn_len == skip_len && memcmp(w->conn, skip, skip_len) == 0))
            continue;
        if (!f[enc]) {
            gale_buf_t buf;
            gale_buf_init(&buf, FRAME_HEADROOM);
            gale_err_t e =
                what == TELL_COUNT
                    ? gale_encode_presence_count(&buf, enc, t->name, t->len, t->count)
                    : gale_encode_presence_event(&buf, enc, what == TELL_JOIN, t->name, t->len,
                                                 (const uint8_t *)json, json_len);
            if (!(f[enc] = frame_built(&buf, e, enc))) {
                failed[enc] = true; /* out of memory, or a member that is not an object */
                continue;
            }
        }
        n += c->ops->deliver(b, c, f[enc]);
    }
    for (int e = 0; e < GALE_ENC_COUNT; e++)
        frame_unref(f[e]);
    return n;
}

/*
 * t now has `count` members after a join (or leave) of member json whose id is conn: the
 * event to every local watcher but that member, or, above --presence-events-max, a
 * count-only message at the next tick.
 */
static void notify(broker_t *b, pres_topic_t *t, bool join, const char *conn, size_t conn_len,
                   const char *json, size_t json_len)
{
    presence_t *p = b->presence;
    if (!t->watchers && !t->over)
        return;
    if (t->count > p->events_max) {
        t->over = 1;
        mark_dirty(p, t);
        return;
    }
    if (t->over) { /* back at most the max: one last count, then events again */
        t->over = 0;
        mark_dirty(p, t);
    }
    b->m.presence_events +=
        tell_watchers(b, t, join ? TELL_JOIN : TELL_LEAVE, conn, conn_len, json, json_len);
}

pres_member_t *presence_join(broker_t *b, conn_t *c, const char *topic, size_t len,
                             const char *conn, size_t conn_len, const char *json, size_t json_len,
                             bool watch)
{
    presence_t *p = b->presence;
    if (conn_len >= PRESENCE_CONN_MAX || json_len > UINT32_MAX)
        return NULL;
    pres_topic_t *t = topic_get(p, topic, len);
    pres_member_t *m = t ? calloc(1, sizeof(*m) + json_len) : NULL;
    if (!m) {
        if (t)
            topic_maybe_free(p, t);
        return NULL;
    }
    p->bytes += sizeof(*m) + json_len;
    m->c = c;
    m->t = t;
    m->conn_len = (uint8_t)conn_len;
    memcpy(m->conn, conn, conn_len);
    m->json_len = (uint32_t)json_len;
    memcpy(m->json, json, json_len);
    m->next = t->members;
    if (t->members)
        t->members->prev = m;
    t->members = m;
    t->nlocal++;
    m->cnext = c->present;
    c->present = m;
    p->nmembers++;
    b->m.presence_joins++;
    if (!p->clustered) {
        t->count = t->nlocal;
        notify(b, t, true, conn, conn_len, json, json_len);
    }
    presence_watch(p, m, watch); /* after the event: never about itself */
    return m;
}

/* Takes m out of its topic's and its connection's lists. */
static void member_unlink(pres_member_t *m)
{
    pres_topic_t *t = m->t;
    if (m->watch)
        watchers_remove(m);
    if (m->prev)
        m->prev->next = m->next;
    else
        t->members = m->next;
    if (m->next)
        m->next->prev = m->prev;
    t->nlocal--;
    for (pres_member_t **pp = &m->c->present; *pp; pp = &(*pp)->cnext) {
        if (*pp == m) {
            *pp = m->cnext;
            break;
        }
    }
}

void presence_detach(broker_t *b, pres_member_t *m)
{
    presence_t *p = b->presence;
    pres_topic_t *t = m->t;
    member_unlink(m);
    m->cnext = NULL;
    p->nmembers--;
    b->m.presence_leaves++;
    if (!p->clustered) {
        t->count = t->nlocal;
        notify(b, t, false, m->conn, m->conn_len, m->json, m->json_len);
    }
}

/* Frees a member out of every list. */
static void member_free(presence_t *p, pres_member_t *m)
{
    p->bytes -= sizeof(*m) + m->json_len;
    free(m);
}

bool presence_room(const presence_t *p, size_t json_len)
{
    return p->bytes + sizeof(pres_member_t) + json_len + sizeof(pres_topic_t) + GALE_TOPIC_MAX <=
           p->memory_max;
}

void presence_leave(broker_t *b, pres_member_t *m)
{
    pres_topic_t *t = m->t;
    presence_detach(b, m);
    member_free(b->presence, m);
    topic_maybe_free(b->presence, t);
}

void presence_gone(presence_t *p, pres_member_t *m)
{
    pres_topic_t *t = m->t;
    t->unsynced = 1;
    if (t->ngone >= PRESENCE_GONE_MAX) {
        if (!p->gone_dropped++)
            log_warn("presence %.*s: over %d leaves waiting for Redis: the next are not "
                     "announced (their members still leave Redis at the re-sync)",
                     (int)t->len, t->name, PRESENCE_GONE_MAX);
        member_free(p, m);
        return;
    }
    m->cnext = t->gone;
    t->gone = m;
    t->ngone++;
}

void presence_forget(presence_t *p, pres_member_t *m)
{
    member_free(p, m);
}

void presence_release(presence_t *p, pres_topic_t *t)
{
    topic_maybe_free(p, t);
}

void presence_each(presence_t *p, void (*fn)(pres_topic_t *t, void *arg), void *arg)
{
    for (size_t i = 0; i < p->nslots; i++)
        for (pres_topic_t *t = p->slots[i]; t; t = t->hnext)
            fn(t, arg);
}

void presence_event(broker_t *b, const char *topic, size_t len, bool join, uint64_t count,
                    const char *conn, size_t conn_len, const char *json, size_t json_len)
{
    pres_topic_t *t = presence_topic(b->presence, topic, len);
    if (!t)
        return; /* no local member, so no watcher */
    t->heard++;
    t->count = count;
    notify(b, t, join, conn, conn_len, json, json_len);
}

void presence_stale(presence_t *p, pres_topic_t *t)
{
    if (t->watchers)
        mark_dirty(p, t);
}

void presence_count(presence_t *p, pres_topic_t *t, uint64_t count, uint32_t heard)
{
    (void)p;
    if (t->heard == heard)
        t->count = count;
}

gale_err_t presence_answer(broker_t *b, const char *topic, size_t len, gale_enc_t enc, bool has_id,
                           uint64_t id, gale_buf_t *out)
{
    presence_t *p = b->presence;
    pres_topic_t *t = presence_topic(p, topic, len);
    uint64_t count = t ? t->nlocal : 0, n = 0, bytes = 0;
    /* The newest, as many as --presence-list-max and half of --queue-limit allow. */
    for (pres_member_t *m = t ? t->members : NULL; m && n < p->list_max; m = m->next, n++)
        if ((bytes += m->json_len + PRESENCE_MEMBER_OVERHEAD) > b->cfg.queue_limit / 2)
            break;
    gale_err_t e = gale_encode_presence_begin(out, enc, has_id, id, topic, len, count, n);
    uint64_t i = 0;
    for (pres_member_t *m = t ? t->members : NULL; e == GALE_OK && m && i < n; m = m->next, i++)
        e = gale_encode_presence_member(out, enc, i == 0, (const uint8_t *)m->json, m->json_len);
    if (e == GALE_OK)
        e = gale_encode_presence_end(out, enc);
    return e;
}

void presence_tick(broker_t *b)
{
    presence_t *p = b->presence;
    if (!p)
        return;
    pres_topic_t *list = p->dirty;
    p->dirty = NULL;
    while (list) {
        pres_topic_t *t = list;
        list = t->dnext;
        t->dirty = 0;
        t->dnext = NULL;
        b->m.presence_counts += tell_watchers(b, t, TELL_COUNT, NULL, 0, NULL, 0);
        topic_maybe_free(p, t);
    }
}

void presence_stats(const presence_t *p, uint64_t *topics, uint64_t *members, uint64_t *bytes)
{
    *bytes = p ? p->bytes : 0;
    *topics = p ? p->ntopics : 0;
    *members = p ? p->nmembers : 0;
}
