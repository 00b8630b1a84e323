/*
 * Fuzzes the whole message path without sockets: decode, validate,
 * authorize, route into fake sessions. The input is lines:
 *   line 0: flags (the first byte, whatever it is) then a claims set (JSON) giving the grant
 *           of sessions 0 and 1 (sessions 2 and 3 are open, no grant);
 *   line i: one client message (JSON, or MessagePack when flag bit 0),
 *           from session (i % 4).
 * Each message goes through gale_decode_request and auth_check; an allowed
 * sub/unsub changes the session's subscriptions in a real topics index, an
 * allowed pub is matched against it and encoded for each receiving session
 * (the other encoding for odd sessions: conversion). Checked: a session
 * with a grant only ever receives topics one of its grant's sub patterns
 * matches (containment is sound), pubs it made were allowed, every
 * delivery matches a pattern the session holds, at most once per publish.
 */
#include "fuzz_check.h"

#include "auth.h"
#include "topics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSESS 4
#define MAXHELD 8
#define NOW 1700000000

typedef struct {
    topics_owner_t owner;
    int idx;
    const auth_grant_t *grant;
    char held[MAXHELD][GALE_TOPIC_MAX + 1];
    int nheld;
    unsigned hits;
} fake_t;

typedef struct {
    const char *topic;
    size_t len;
    gale_enc_t enc;
    const uint8_t *data;
    size_t data_len;
} route_t;

static fake_t sess[NSESS];

static void visit(topics_owner_t *o, void *arg)
{
    route_t *r = arg;
    fake_t *f = (fake_t *)o;
    CHECK(f >= sess && f < sess + NSESS);
    f->hits++;
    bool held = false;
    for (int i = 0; i < f->nheld && !held; i++)
        held = gale_pattern_match(f->held[i], strlen(f->held[i]), r->topic, r->len);
    CHECK(held);
    if (f->grant) {
        bool granted = false;
        for (uint32_t i = 0; i < f->grant->nsub && !granted; i++)
            granted =
                gale_pattern_match(f->grant->sub[i], strlen(f->grant->sub[i]), r->topic, r->len);
        CHECK(granted);
    }
    gale_buf_t out;
    gale_buf_init(&out, 16);
    gale_enc_t enc = (gale_enc_t)(f->idx & 1);
    (void)gale_encode_msg(&out, enc, r->topic, r->len, r->enc, r->data, r->data_len);
    gale_buf_free(&out);
}

/* A topic that p matches: wildcards replaced by a segment no grant names. */
static size_t instance(const char *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        bool seg_start = i == 0 || p[i - 1] == '.';
        bool seg_end = i + 1 == n || p[i + 1] == '.';
        if (seg_start && seg_end && (p[i] == '*' || p[i] == '>'))
            out[o++] = '~';
        else
            out[o++] = p[i];
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *why;
    if (size < 1)
        return 0;
    const uint8_t *end = data + size, *nl = memchr(data + 1, '\n', size - 1);
    const uint8_t *line_end = nl ? nl : end;
    gale_enc_t enc = (data[0] & 1) ? GALE_ENC_MSGPACK : GALE_ENC_JSON;
    auth_grant_t *g = auth_claims_parse(data + 1, (size_t)(line_end - data - 1), NOW, &why);
    if (!g) {
        static const char open_claims[] = "{\"sub\":\"u\",\"gale\":{\"sub\":[\"a.>\",\"*.{sub}\","
                                          "\"b.*.c\"],\"pub\":[\"a.*\",\"u.{sub}.>\"]}}";
        g = auth_claims_parse((const uint8_t *)open_claims, sizeof(open_claims) - 1, NOW, &why);
        CHECK(g);
    }
    topics_t *t = topics_new();
    CHECK(t);
    memset(sess, 0, sizeof(sess));
    for (int i = 0; i < NSESS; i++) {
        sess[i].idx = i;
        sess[i].grant = i < 2 ? g : NULL;
    }
    /* Containment against instances of the grant's own patterns. */
    for (uint32_t i = 0; i < g->nsub; i++) {
        const char *p = g->sub[i];
        size_t n = strlen(p);
        CHECK(auth_pattern_contains(p, n, p, n));
        CHECK(auth_pattern_contains(">", 1, p, n));
        char inst[GALE_TOPIC_MAX + 1];
        size_t m = instance(p, n, inst);
        CHECK(auth_may_sub(g, inst, m));
    }
    const uint8_t *p = nl ? nl + 1 : end;
    for (unsigned k = 1; p < end && k < 64; k++) {
        const uint8_t *e = memchr(p, '\n', (size_t)(end - p));
        size_t len = e ? (size_t)(e - p) : (size_t)(end - p);
        fake_t *f = &sess[k % NSESS];
        gale_request_t req;
        why = NULL;
        gale_err_t err = gale_decode_request(enc, p, len, &req, &why);
        if (err == GALE_OK)
            err = auth_check(f->grant, &req, &why);
        if (err == GALE_ERR_FORBIDDEN)
            CHECK(f->grant && (req.op == GALE_OP_SUB || req.op == GALE_OP_PUB ||
                               req.op == GALE_OP_HIST || req.op == GALE_OP_PRESENCE));
        if (err == GALE_ERR_FORBIDDEN && (req.op == GALE_OP_HIST || req.op == GALE_OP_PRESENCE))
            CHECK(!auth_may_sub(f->grant, req.topic, req.topic_len)); /* they need sub */
        /* With tokens, a member's info comes from the token, never from the sub. */
        if (f->grant && req.op == GALE_OP_SUB && req.info)
            CHECK(err == GALE_ERR_FORBIDDEN);
        if (err == GALE_OK) {
            switch (req.op) {
            case GALE_OP_SUB:
                if (f->nheld < MAXHELD && topics_subscribe(t, &f->owner, req.topic, req.topic_len,
                                                           NULL) == TOPICS_ADDED) {
                    memcpy(f->held[f->nheld], req.topic, req.topic_len);
                    f->held[f->nheld++][req.topic_len] = '\0';
                }
                break;
            case GALE_OP_UNSUB:
                if (topics_unsubscribe(t, &f->owner, req.topic, req.topic_len, NULL)) {
                    for (int i = 0; i < f->nheld; i++)
                        if (strlen(f->held[i]) == req.topic_len &&
                            memcmp(f->held[i], req.topic, req.topic_len) == 0) {
                            memcpy(f->held[i], f->held[--f->nheld], sizeof(f->held[i]));
                            break;
                        }
                }
                break;
            case GALE_OP_PUB: {
                if (f->grant)
                    CHECK(auth_may_pub(f->grant, req.topic, req.topic_len));
                route_t r = {req.topic, req.topic_len, enc, req.data, req.data_len};
                for (int i = 0; i < NSESS; i++)
                    sess[i].hits = 0;
                topics_match(t, req.topic, req.topic_len, visit, &r);
                for (int i = 0; i < NSESS; i++)
                    CHECK(sess[i].hits <= 1);
                break;
            }
            case GALE_OP_HIST: /* allowed: the grant lets it subscribe to the topic */
            case GALE_OP_PRESENCE:
                if (f->grant)
                    CHECK(auth_may_sub(f->grant, req.topic, req.topic_len));
                break;
            case GALE_OP_PING:
            case GALE_OP_REFRESH: /* never refused by auth_check: the core verifies the token */
                break;
            }
        } else {
            CHECK(why != NULL);
            gale_buf_t out;
            gale_buf_init(&out, 16);
            CHECK(gale_encode_err(&out, enc, req.has_id, req.id, err, why) == GALE_OK);
            gale_buf_free(&out);
        }
        p = e ? e + 1 : end;
    }
    for (int i = 0; i < NSESS; i++)
        topics_unsubscribe_all(t, &sess[i].owner, NULL, NULL);
    topics_free(t);
    auth_grant_free(g);
    return 0;
}
