/*
 * Unit tests for broker/history.c through history.h: rule matching, epochs and
 * offsets, eviction by SIZE, TTL (at access and by the sweep) and the total byte
 * cap (idle states first, least recently used, then the globally oldest messages),
 * the recovery decision (history_covers), the frames kept per message, and the
 * byte accounting. The ASan build runs these, so a leak at history_free fails.
 */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"
#include "gale_protocol.h"
#include "history.h"

/* --- helpers ---------------------------------------------------------------------------- */

static gale_history_rule_t rule(const char *pattern, uint64_t size, uint64_t ttl_ms)
{
    gale_history_rule_t r = {.size = size, .ttl_ms = ttl_ms};
    assert_true(strlen(pattern) < sizeof(r.pattern));
    strcpy(r.pattern, pattern);
    return r;
}

/* A history of one rule, "t.>" keeping `size` messages for `ttl_ms`, within max_bytes. */
static history_t *one_rule(uint64_t size, uint64_t ttl_ms, uint64_t max_bytes)
{
    gale_history_rule_t r = rule("t.>", size, ttl_ms);
    history_t *h = history_new(&r, 1, max_bytes, 0x1234);
    assert_non_null(h);
    return h;
}

/* The state of `name`, which must match one of h's rules. */
static hist_topic_t *topic(history_t *h, const char *name, uint64_t now_ms)
{
    const gale_history_rule_t *r = history_rule(h, name, strlen(name));
    assert_non_null(r);
    hist_topic_t *t = history_topic(h, r, name, strlen(name), now_ms);
    assert_non_null(t);
    return t;
}

/* Appends the JSON data `json` to t. */
static hist_msg_t *append(history_t *h, hist_topic_t *t, const char *json, uint64_t now_ms)
{
    hist_msg_t *m =
        history_append(h, t, GALE_ENC_JSON, (const uint8_t *)json, strlen(json), now_ms);
    assert_non_null(m);
    return m;
}

static history_stats_t stats(const history_t *h)
{
    history_stats_t s;
    history_stats(h, &s);
    return s;
}

/* A copy of t's epoch, NUL-terminated. */
static void ep_copy(const hist_topic_t *t, char out[64])
{
    gale_pos_t p = history_pos(t);
    assert_non_null(p.ep);
    assert_true(p.ep_len > 0 && p.ep_len < 64);
    memcpy(out, p.ep, p.ep_len);
    out[p.ep_len] = '\0';
}

static bool same_ep(const hist_topic_t *t, const char *ep)
{
    gale_pos_t p = history_pos(t);
    return p.ep_len == strlen(ep) && memcmp(p.ep, ep, p.ep_len) == 0;
}

static bool covers(const hist_topic_t *t, const char *ep, uint64_t off, uint64_t max,
                   uint64_t *missed)
{
    gale_pos_t since = {.ep = ep, .ep_len = ep ? strlen(ep) : 0, .off = off};
    *missed = 12345; /* must be overwritten */
    return history_covers(t, &since, max, missed);
}

/* The payload of a server frame: checks its header (FIN, opcode, no mask, lengths). */
static const uint8_t *test_frame_payload(const frame_t *f, int opcode, size_t *len)
{
    const uint8_t *b = frame_bytes(f);
    assert_int_equal(b[0], 0x80 | opcode);
    assert_int_equal(b[1] & 0x80, 0); /* a server frame is not masked */
    size_t n = b[1] & 0x7f, hl = 2;
    if (n == 126) {
        n = (size_t)b[2] << 8 | b[3];
        hl = 4;
    } else if (n == 127) {
        n = 0;
        for (int i = 2; i < 10; i++)
            n = n << 8 | b[i];
        hl = 10;
    }
    assert_int_equal(hl + n, f->len);
    *len = n;
    return b + hl;
}

/* Decodes f (a `msg` of enc) and checks its topic, position and JSON data. */
static void check_msg_frame(const frame_t *f, gale_enc_t enc, const char *topic_name,
                            const hist_topic_t *t, uint64_t off, const char *json)
{
    size_t len;
    const uint8_t *p =
        test_frame_payload(f, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY, &len);
    gale_reply_t r;
    const char *why = NULL;
    assert_int_equal(gale_decode_reply(enc, p, len, &r, &why), GALE_OK);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_int_equal(r.topic_len, strlen(topic_name));
    assert_memory_equal(r.topic, topic_name, r.topic_len);
    gale_pos_t pos = history_pos(t);
    assert_true(r.has_ep);
    assert_int_equal(r.ep_len, pos.ep_len);
    assert_memory_equal(r.ep, pos.ep, pos.ep_len);
    assert_true(r.has_off);
    assert_int_equal(r.off, off);
    if (enc == GALE_ENC_JSON) {
        assert_int_equal(r.data_len, strlen(json));
        assert_memory_equal(r.data, json, r.data_len);
    } else {
        assert_true(r.data_len > 0);
    }
}

/* --- rules ------------------------------------------------------------------------------ */

static void test_rule_matching(void **state)
{
    (void)state;
    gale_history_rule_t rules[] = {rule("chat.>", 10, 0), rule("chat.room1", 5, 0),
                                   rule("*.x", 3, 60000), rule("exact", 7, 0)};
    history_t *h = history_new(rules, 4, 1 << 20, 1);
    assert_non_null(h);
    const gale_history_rule_t *r = history_rule(h, "chat.room1", 10);
    assert_non_null(r); /* the first match wins, not the most specific one */
    assert_string_equal(r->pattern, "chat.>");
    assert_int_equal(r->size, 10);
    r = history_rule(h, "chat.a.b", 8);
    assert_non_null(r);
    assert_string_equal(r->pattern, "chat.>");
    r = history_rule(h, "chat.x", 6); /* matches "chat.>" and "*.x": the first */
    assert_non_null(r);
    assert_string_equal(r->pattern, "chat.>");
    r = history_rule(h, "news.x", 6);
    assert_non_null(r);
    assert_string_equal(r->pattern, "*.x");
    assert_int_equal(r->size, 3);
    assert_int_equal(r->ttl_ms, 60000);
    r = history_rule(h, "exact", 5);
    assert_non_null(r);
    assert_int_equal(r->size, 7);
    assert_null(history_rule(h, "chat", 4)); /* ">" needs one segment at least */
    assert_null(history_rule(h, "news.x.y", 8));
    assert_null(history_rule(h, "exactly", 7));
    assert_null(history_rule(h, "other", 5));
    /* The length is honoured: "chat.room1" cut to "chat" matches nothing. */
    assert_null(history_rule(h, "chat.room1", 4));
    history_free(h);

    /* No rules at all, and the rules are copied. */
    gale_history_rule_t tmp = rule("a.*", 2, 0);
    h = history_new(&tmp, 0, 1 << 20, 1);
    assert_non_null(h);
    assert_null(history_rule(h, "a.b", 3));
    history_free(h);
    h = history_new(&tmp, 1, 1 << 20, 1);
    assert_non_null(h);
    strcpy(tmp.pattern, "zzz");
    r = history_rule(h, "a.b", 3);
    assert_non_null(r);
    assert_string_equal(r->pattern, "a.*");
    assert_null(history_rule(h, "zzz", 3));
    history_free(h);
    history_free(NULL);
    assert_null(history_rule(NULL, "a.b", 3)); /* no history at all */

    /* history_match: the same decision over a bare list of rules (the cluster's). */
    assert_ptr_equal(history_match(rules, 4, "chat.room1", 10), &rules[0]);
    assert_ptr_equal(history_match(rules + 1, 3, "chat.room1", 10), &rules[1]);
    assert_ptr_equal(history_match(rules, 4, "news.x", 6), &rules[2]);
    assert_ptr_equal(history_match(rules, 4, "exact", 5), &rules[3]);
    assert_null(history_match(rules, 3, "exact", 5)); /* only the first n */
    assert_null(history_match(rules, 4, "other", 5));
    assert_null(history_match(rules, 0, "chat.room1", 10));
    assert_null(history_match(rules, 4, "chat.room1", 4));
}

/* --- epochs and offsets ------------------------------------------------------------------ */

static void test_epoch_and_offsets(void **state)
{
    (void)state;
    history_t *h = one_rule(100, 0, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 0);
    gale_pos_t p = history_pos(t);
    assert_non_null(p.ep);
    assert_true(p.ep_len > 0);
    assert_int_equal(p.off, 0);
    assert_int_equal(history_count(t), 0);
    assert_int_equal(history_first(t), 0);
    assert_null(history_at(t, 0));
    assert_null(history_at(t, 1));
    size_t len;
    const char *name = history_topic_name(t, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(name, "t.a", 3);
    char ep[64];
    ep_copy(t, ep);

    /* The same topic is the same state, the same epoch. */
    assert_ptr_equal(topic(h, "t.a", 10), t);
    assert_true(same_ep(t, ep));

    const char *data[] = {"1", "\"two\"", "{\"n\":3}"};
    for (int i = 0; i < 3; i++) {
        hist_msg_t *m = append(h, t, data[i], 100 + i);
        assert_int_equal(m->off, i + 1);
        assert_int_equal(history_pos(t).off, i + 1);
        assert_true(same_ep(t, ep)); /* appends keep the epoch */
    }
    assert_int_equal(history_count(t), 3);
    assert_int_equal(history_first(t), 1);
    for (uint64_t off = 1; off <= 3; off++) {
        hist_msg_t *m = history_at(t, off);
        assert_non_null(m);
        assert_int_equal(m->off, off);
        assert_int_equal(m->len, strlen(data[off - 1]));
        assert_memory_equal(m->data, data[off - 1], m->len);
        assert_int_equal(m->enc, GALE_ENC_JSON);
        assert_int_equal(m->at_ms, 100 + off - 1);
    }
    assert_null(history_at(t, 4));
    assert_null(history_at(t, 0));

    /* Another topic: its own epoch, its own offsets from 1. */
    hist_topic_t *u = topic(h, "t.b", 0);
    assert_ptr_not_equal(u, t);
    assert_false(same_ep(u, ep));
    assert_int_equal(history_pos(u).off, 0);
    assert_int_equal(append(h, u, "0", 0)->off, 1);
    assert_int_equal(history_pos(t).off, 3);

    history_stats_t s = stats(h);
    assert_int_equal(s.topics, 2);
    assert_int_equal(s.messages, 4);
    assert_int_equal(s.evicted + s.expired + s.states_lost, 0);
    assert_true(s.bytes > 0);
    history_free(h);

    /* Another instance (a restart) names other epochs for the same topic. */
    gale_history_rule_t r = rule("t.>", 100, 0);
    history_t *h2 = history_new(&r, 1, 1 << 20, 0x9999);
    assert_non_null(h2);
    hist_topic_t *t2 = topic(h2, "t.a", 0);
    assert_false(same_ep(t2, ep));
    history_free(h2);
}

static void test_size_eviction(void **state)
{
    (void)state;
    history_t *h = one_rule(3, 0, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 0);
    char buf[16];
    for (int i = 1; i <= 5; i++) {
        snprintf(buf, sizeof(buf), "%d", i);
        append(h, t, buf, 0);
        assert_int_equal(history_count(t), i < 3 ? i : 3);
    }
    assert_int_equal(history_pos(t).off, 5);
    assert_int_equal(history_first(t), 3);
    assert_null(history_at(t, 1));
    assert_null(history_at(t, 2));
    for (uint64_t off = 3; off <= 5; off++) {
        hist_msg_t *m = history_at(t, off);
        assert_non_null(m);
        assert_int_equal(m->off, off);
        snprintf(buf, sizeof(buf), "%d", (int)off);
        assert_int_equal(m->len, strlen(buf));
        assert_memory_equal(m->data, buf, m->len);
    }
    assert_null(history_at(t, 6));
    history_stats_t s = stats(h);
    assert_int_equal(s.messages, 3);
    assert_int_equal(s.evicted, 0); /* SIZE is not the memory bound */
    assert_int_equal(s.expired, 0);

    /* Many more: the ring wraps and keeps the last three. */
    for (int i = 6; i <= 1000; i++)
        append(h, t, "0", 0);
    assert_int_equal(history_count(t), 3);
    assert_int_equal(history_first(t), 998);
    assert_int_equal(history_at(t, 1000)->off, 1000);
    assert_int_equal(stats(h).messages, 3);

    /* SIZE 1 keeps the last message only. */
    gale_history_rule_t r = rule("one", 1, 0);
    history_t *h1 = history_new(&r, 1, 1 << 20, 2);
    assert_non_null(h1);
    hist_topic_t *o = topic(h1, "one", 0);
    append(h1, o, "1", 0);
    hist_msg_t *m = append(h1, o, "2", 0);
    assert_int_equal(history_count(o), 1);
    assert_ptr_equal(history_at(o, 2), m);
    assert_null(history_at(o, 1));
    history_free(h1);
    history_free(h);
}

/* --- TTL ---------------------------------------------------------------------------------- */

static void test_ttl_at_access(void **state)
{
    (void)state;
    history_t *h = one_rule(100, 5000, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 1000);
    char ep[64];
    ep_copy(t, ep);
    append(h, t, "1", 1000);
    append(h, t, "2", 2000);
    append(h, t, "3", 3000);

    /* Nothing is older than 5 s at 5999. */
    assert_ptr_equal(topic(h, "t.a", 5999), t);
    assert_int_equal(history_count(t), 3);
    /* At 6500 the first is 5.5 s old. */
    assert_ptr_equal(topic(h, "t.a", 6500), t);
    assert_int_equal(history_count(t), 2);
    assert_int_equal(history_first(t), 2);
    assert_null(history_at(t, 1));
    assert_int_equal(stats(h).expired, 1);
    /* Much later: all gone, the state stays with its epoch and offset. */
    assert_ptr_equal(topic(h, "t.a", 60000), t);
    assert_int_equal(history_count(t), 0);
    assert_int_equal(history_first(t), 0);
    assert_int_equal(history_pos(t).off, 3);
    assert_true(same_ep(t, ep));
    history_stats_t s = stats(h);
    assert_int_equal(s.expired, 3);
    assert_int_equal(s.messages, 0);
    assert_int_equal(s.topics, 1);
    assert_int_equal(s.evicted, 0);

    /* A client at 3 missed nothing; one at 2 missed an expired message. */
    uint64_t missed;
    assert_true(covers(t, ep, 3, 1000, &missed));
    assert_int_equal(missed, 0);
    assert_false(covers(t, ep, 2, 1000, &missed));
    /* The stream goes on at 4. */
    assert_int_equal(append(h, t, "4", 60000)->off, 4);
    assert_int_equal(history_first(t), 4);
    history_free(h);
}

static void test_ttl_sweep(void **state)
{
    (void)state;
    gale_history_rule_t rules[] = {rule("short.>", 100, 1000), rule("long.>", 100, 10000),
                                   rule("forever.>", 100, 0)};
    history_t *h = history_new(rules, 3, 1 << 20, 3);
    assert_non_null(h);
    hist_topic_t *s1 = topic(h, "short.a", 0), *s2 = topic(h, "short.b", 0);
    hist_topic_t *l = topic(h, "long.a", 0), *f = topic(h, "forever.a", 0);
    for (uint64_t now = 0; now < 500; now += 100) {
        append(h, s1, "1", now);
        append(h, s2, "2", now + 50);
        append(h, l, "3", now);
        append(h, f, "4", now);
    }
    history_sweep(h, 999); /* nothing 1 s old yet */
    assert_int_equal(stats(h).messages, 20);
    assert_int_equal(stats(h).expired, 0);
    history_sweep(h, 1260); /* short.a: 0, 100, 200 expire; short.b: 50, 150, 250 */
    assert_int_equal(history_count(s1), 2);
    assert_int_equal(history_first(s1), 4);
    assert_int_equal(history_count(s2), 2);
    assert_int_equal(history_first(s2), 4);
    assert_int_equal(history_count(l), 5);
    assert_int_equal(history_count(f), 5);
    assert_int_equal(stats(h).expired, 6);
    history_sweep(h, 5000);
    assert_int_equal(history_count(s1), 0);
    assert_int_equal(history_count(s2), 0);
    assert_int_equal(history_count(l), 5);
    history_sweep(h, 100000);
    assert_int_equal(history_count(l), 0);
    assert_int_equal(history_count(f), 5); /* no TTL: kept until displaced */
    history_stats_t s = stats(h);
    assert_int_equal(s.expired, 15);
    assert_int_equal(s.messages, 5);
    assert_int_equal(s.topics, 4); /* states outlive their messages */
    assert_int_equal(history_pos(s1).off, 5);
    history_sweep(NULL, 0);
    history_free(h);
}

/* --- recovery decisions ----------------------------------------------------------------- */

static void test_covers(void **state)
{
    (void)state;
    history_t *h = one_rule(3, 0, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 0);
    char ep[64];
    ep_copy(t, ep);
    uint64_t missed;

    /* An empty stream: a client at 0 of this epoch missed nothing. */
    assert_true(covers(t, ep, 0, 1000, &missed));
    assert_int_equal(missed, 0);
    assert_false(covers(t, ep, 1, 1000, &missed)); /* above the top */

    for (int i = 0; i < 5; i++)
        append(h, t, "0", 0); /* offsets 1..5, held 3..5 */
    assert_true(covers(t, ep, 5, 1000, &missed));
    assert_int_equal(missed, 0);
    assert_true(covers(t, ep, 4, 1000, &missed));
    assert_int_equal(missed, 1);
    assert_true(covers(t, ep, 2, 1000, &missed)); /* 3, 4, 5: all held */
    assert_int_equal(missed, 3);
    assert_false(covers(t, ep, 1, 1000, &missed)); /* 2 was displaced */
    assert_false(covers(t, ep, 0, 1000, &missed));
    assert_false(covers(t, ep, 6, 1000, &missed)); /* above the top */
    assert_false(covers(t, ep, UINT64_MAX, 1000, &missed));
    assert_false(covers(t, ep, 6, UINT64_MAX, &missed)); /* whatever the cap */

    /* The replay cap. */
    assert_false(covers(t, ep, 2, 2, &missed));
    assert_true(covers(t, ep, 2, 3, &missed));
    assert_int_equal(missed, 3);
    assert_true(covers(t, ep, 5, 0, &missed)); /* nothing missed is within any cap */
    assert_int_equal(missed, 0);
    assert_false(covers(t, ep, 4, 0, &missed));

    /* Other epochs: another topic's, a prefix, a longer one, an unknown one, none. */
    hist_topic_t *u = topic(h, "t.b", 0);
    char other[64];
    ep_copy(u, other);
    assert_false(covers(t, other, 5, 1000, &missed));
    assert_false(covers(u, ep, 0, 1000, &missed));
    char prefix[64];
    strcpy(prefix, ep);
    prefix[strlen(prefix) - 1] = '\0';
    assert_false(covers(t, prefix, 5, 1000, &missed));
    char longer[80];
    snprintf(longer, sizeof(longer), "%s0", ep);
    assert_false(covers(t, longer, 5, 1000, &missed));
    assert_false(covers(t, "nope", 5, 1000, &missed));
    assert_false(covers(t, "", 5, 1000, &missed));
    assert_false(covers(t, NULL, 5, 1000, &missed)); /* a too long ep names no epoch */
    gale_pos_t null_ep = {.ep = NULL, .ep_len = strlen(ep), .off = 5};
    assert_false(history_covers(t, &null_ep, 1000, &missed));
    history_free(h);
}

/* --- the total byte cap ------------------------------------------------------------------- */

#define CAP_TOPICS 4
#define CAP_MSGS 400

/*
 * Messages of several topics, interleaved unevenly and of varying sizes, under a small cap:
 * after each history_enforce the bytes are within the cap and the messages held are exactly
 * the newest ones of all (the globally oldest went first, whatever their topic).
 */
static void test_cap_evicts_oldest_across_topics(void **state)
{
    (void)state;
    const uint64_t max = 8192;
    history_t *h = one_rule(1000, 0, max);
    static const char *names[CAP_TOPICS] = {"t.0", "t.1", "t.2", "t.3"};
    hist_topic_t *ts[CAP_TOPICS];
    for (int k = 0; k < CAP_TOPICS; k++)
        ts[k] = topic(h, names[k], 0);
    int topic_of[CAP_MSGS];
    uint64_t off_of[CAP_MSGS];
    char data[256];
    for (int i = 0; i < CAP_MSGS; i++) {
        /* 0, 0, 1, 2, 3, 0, 0, 1, ...: each topic gets one of every five, topic 0 two */
        int k = i % 5 < 2 ? 0 : i % 5 - 1;
        size_t n = 10 + (size_t)(i * 37) % 190;
        memset(data, 'x', n);
        data[0] = '"';
        data[n - 1] = '"';
        data[n] = '\0';
        hist_topic_t *t = topic(h, names[k], (uint64_t)i);
        assert_ptr_equal(t, ts[k]); /* never idle, so never dropped */
        hist_msg_t *m = append(h, t, data, (uint64_t)i);
        topic_of[i] = k;
        off_of[i] = m->off;
        history_enforce(h);

        history_stats_t s = stats(h);
        assert_true(s.bytes <= max);
        assert_int_equal(s.states_lost, 0);
        assert_int_equal(s.expired, 0);
        /* Held: exactly the messages from global index s.evicted to i. */
        assert_int_equal(s.messages, (uint64_t)i + 1 - s.evicted);
        for (int kk = 0; kk < CAP_TOPICS; kk++) {
            uint64_t want_first = 0, want_count = 0;
            for (int j = (int)s.evicted; j <= i; j++) {
                if (topic_of[j] != kk)
                    continue;
                if (!want_count)
                    want_first = off_of[j];
                want_count++;
            }
            if (history_first(ts[kk]) != want_first || history_count(ts[kk]) != want_count)
                fail_msg("after %d: topic %d holds %u from %" PRIu64 ", want %" PRIu64
                         " from %" PRIu64 " (evicted %" PRIu64 ")",
                         i, kk, history_count(ts[kk]), history_first(ts[kk]), want_count,
                         want_first, s.evicted);
        }
    }
    history_stats_t s = stats(h);
    assert_true(s.evicted > CAP_MSGS / 2); /* the cap, not SIZE, bounded it */
    assert_true(s.messages >= 10);
    history_free(h);
}

/*
 * A cap below what the states alone take: every message goes, then states, least recently
 * used first, until the bytes are within it.
 */
static void test_cap_below_states(void **state)
{
    (void)state;
    static const char *names[] = {"t.0", "t.1", "t.2", "t.3", "t.4", "t.5"};
    history_t *probe = one_rule(10, 0, UINT64_MAX);
    uint64_t none = stats(probe).bytes;
    for (int i = 0; i < 6; i++)
        topic(probe, names[i], 0);
    uint64_t per_state = (stats(probe).bytes - none) / 6;
    history_free(probe);

    uint64_t max = none + 2 * per_state; /* room for two empty states */
    history_t *h = one_rule(10, 0, max);
    for (int i = 0; i < 6; i++)
        append(h, topic(h, names[i], 0), "\"message\"", 0);
    char ep4[64], ep5[64];
    ep_copy(topic(h, "t.4", 0), ep4);
    ep_copy(topic(h, "t.5", 0), ep5);
    history_enforce(h);
    history_stats_t s = stats(h);
    assert_true(s.bytes <= max);
    assert_int_equal(s.messages, 0);
    assert_int_equal(s.evicted, 6);
    assert_int_equal(s.topics, 2);
    assert_int_equal(s.states_lost, 4);
    /* The states whose messages went last were used last: they stay. */
    assert_true(same_ep(topic(h, "t.4", 0), ep4));
    assert_true(same_ep(topic(h, "t.5", 0), ep5));
    assert_int_equal(stats(h).topics, 2);
    history_free(h);
}

/* Runs the same steps on h (see test_idle_states_first). */
static void idle_steps(history_t *h, hist_topic_t **a, hist_topic_t **b, hist_topic_t **c)
{
    *a = topic(h, "t.a", 0);
    append(h, *a, "\"a message\"", 0);
    *b = topic(h, "t.b", 1);                  /* idle */
    *c = topic(h, "t.c", 2);                  /* idle */
    assert_ptr_equal(topic(h, "t.b", 3), *b); /* b used again: c is the least recent */
}

/*
 * Over the cap by one byte: one idle state goes (the least recently used), no message,
 * and that topic comes back with a new epoch.
 */
static void test_idle_states_first(void **state)
{
    (void)state;
    hist_topic_t *a, *b, *c;
    history_t *probe = one_rule(100, 0, UINT64_MAX);
    idle_steps(probe, &a, &b, &c);
    uint64_t need = stats(probe).bytes;
    history_enforce(probe);
    assert_int_equal(stats(probe).bytes, need); /* within its cap: nothing goes */
    assert_int_equal(stats(probe).topics, 3);
    history_free(probe);

    history_t *h = one_rule(100, 0, need - 1);
    idle_steps(h, &a, &b, &c);
    assert_int_equal(stats(h).bytes, need);
    char ep_a[64], ep_b[64], ep_c[64];
    ep_copy(a, ep_a);
    ep_copy(b, ep_b);
    ep_copy(c, ep_c);
    history_enforce(h);
    history_stats_t s = stats(h);
    assert_true(s.bytes <= need - 1);
    assert_int_equal(s.topics, 2);
    assert_int_equal(s.states_lost, 1);
    assert_int_equal(s.messages, 1); /* the message stays while an idle state can go */
    assert_int_equal(s.evicted, 0);
    assert_int_equal(history_count(a), 1);
    /* b and a are the same states (c's pointer is gone: look the names up again). */
    assert_ptr_equal(topic(h, "t.a", 4), a);
    assert_true(same_ep(a, ep_a));
    hist_topic_t *b2 = topic(h, "t.b", 4);
    assert_true(same_ep(b2, ep_b));
    assert_int_equal(stats(h).topics, 2);
    /* c comes back as a new stream: another epoch, offsets from 0 again. */
    hist_topic_t *c2 = topic(h, "t.c", 4);
    assert_int_equal(stats(h).topics, 3);
    assert_false(same_ep(c2, ep_c));
    assert_false(same_ep(c2, ep_a));
    assert_false(same_ep(c2, ep_b));
    assert_int_equal(history_pos(c2).off, 0);
    uint64_t missed;
    assert_false(covers(c2, ep_c, 0, 1000, &missed)); /* the old epoch is never resumed */
    char ep_c2[64];
    ep_copy(c2, ep_c2);
    assert_true(covers(c2, ep_c2, 0, 1000, &missed));
    history_free(h);
}

/*
 * A topic whose messages were all evicted goes idle, then its state goes: when it comes
 * back, a position in its old epoch is not covered, even at an offset the new stream
 * reaches again.
 */
static void test_evicted_topic_new_epoch(void **state)
{
    (void)state;
    history_t *h = one_rule(1000, 0, 4096);
    hist_topic_t *d = topic(h, "t.d", 0);
    char ep_d[64];
    ep_copy(d, ep_d);
    for (int i = 0; i < 3; i++)
        append(h, d, "\"d\"", 0);
    history_enforce(h);
    assert_int_equal(history_count(d), 3);
    hist_topic_t *e = topic(h, "t.e", 1);
    for (int i = 0; i < 200 && stats(h).states_lost == 0; i++) {
        append(h, e, "\"some data for e, more than d's\"", 1);
        history_enforce(h);
        assert_true(stats(h).bytes <= 4096);
    }
    history_stats_t s = stats(h);
    assert_int_equal(s.states_lost, 1); /* d's */
    assert_int_equal(s.topics, 1);
    assert_true(s.evicted >= 3);
    assert_true(history_count(e) > 0);
    assert_int_equal(history_pos(e).off, history_first(e) + history_count(e) - 1);

    d = topic(h, "t.d", 2);
    assert_false(same_ep(d, ep_d));
    assert_int_equal(history_pos(d).off, 0);
    assert_int_equal(history_count(d), 0);
    uint64_t missed;
    assert_false(covers(d, ep_d, 0, 1000, &missed));
    assert_false(covers(d, ep_d, 3, 1000, &missed));
    for (int i = 0; i < 3; i++)
        assert_int_equal(append(h, d, "\"d\"", 2)->off, (uint64_t)i + 1);
    assert_false(covers(d, ep_d, 3, 1000, &missed)); /* same offset, other stream */
    assert_false(covers(d, ep_d, 2, 1000, &missed));
    char ep_d2[64];
    ep_copy(d, ep_d2);
    assert_true(covers(d, ep_d2, 2, 1000, &missed));
    assert_int_equal(missed, 1);
    history_free(h);
}

/* --- frames ------------------------------------------------------------------------------- */

static void test_frame_built_and_cached(void **state)
{
    (void)state;
    gale_history_rule_t r = rule("chat.>", 10, 0);
    history_t *h = history_new(&r, 1, 1 << 20, 0xabcdef);
    assert_non_null(h);
    hist_topic_t *t = topic(h, "chat.x", 0);
    const char *small = "{\"a\":1}";
    hist_msg_t *m1 = append(h, t, small, 0);
    char big[300]; /* a payload over 125 bytes: a 4-byte header */
    memset(big, 'b', sizeof(big) - 1);
    big[0] = '"';
    big[sizeof(big) - 2] = '"';
    big[sizeof(big) - 1] = '\0';
    hist_msg_t *m2 = append(h, t, big, 0);

    uint64_t before = stats(h).bytes;
    bool nomem = true;
    frame_t *f = history_frame(h, m1, GALE_ENC_JSON, &nomem);
    assert_non_null(f);
    assert_false(nomem);
    assert_int_equal(f->refs, 1); /* the history's own */
    check_msg_frame(f, GALE_ENC_JSON, "chat.x", t, 1, small);
    assert_true(stats(h).bytes > before); /* frames count against the cap */
    uint64_t after = stats(h).bytes;
    assert_ptr_equal(history_frame(h, m1, GALE_ENC_JSON, &nomem), f); /* cached */
    assert_false(nomem);
    assert_int_equal(f->refs, 1);
    assert_int_equal(stats(h).bytes, after);

    frame_t *g = history_frame(h, m2, GALE_ENC_JSON, &nomem);
    assert_non_null(g);
    assert_ptr_not_equal(g, f);
    check_msg_frame(g, GALE_ENC_JSON, "chat.x", t, 2, big);
    assert_int_equal(frame_bytes(g)[1] & 0x7f, 126);

    /* MessagePack: converted from the JSON data, with the same position. */
    frame_t *p = history_frame(h, m1, GALE_ENC_MSGPACK, &nomem);
    assert_non_null(p);
    assert_false(nomem);
    assert_ptr_not_equal(p, f);
    check_msg_frame(p, GALE_ENC_MSGPACK, "chat.x", t, 1, NULL);
    assert_ptr_equal(history_frame(h, m1, GALE_ENC_MSGPACK, &nomem), p);
    assert_ptr_equal(history_frame(h, m1, GALE_ENC_JSON, &nomem), f);

    /* A message whose frames were built is displaced: no leak (ASan). */
    for (int i = 0; i < 12; i++)
        append(h, t, "0", 0);
    assert_null(history_at(t, 1));
    history_free(h);
}

static void test_frame_not_convertible(void **state)
{
    (void)state;
    history_t *h = one_rule(10, 0, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 0);
    const uint8_t bad[] = {0xc1}; /* never used in MessagePack */
    hist_msg_t *m = history_append(h, t, GALE_ENC_MSGPACK, bad, sizeof(bad), 0);
    assert_non_null(m);
    bool nomem = true;
    assert_null(history_frame(h, m, GALE_ENC_JSON, &nomem));
    assert_false(nomem); /* not convertible is not out of memory */
    nomem = true;
    assert_null(history_frame(h, m, GALE_ENC_JSON, &nomem));
    assert_false(nomem);
    /* Its own encoding is copied as it is. */
    frame_t *f = history_frame(h, m, GALE_ENC_MSGPACK, &nomem);
    assert_non_null(f);
    assert_false(nomem);
    history_free(h);
}

/* A `msg` frame for m as the core builds it when publishing. */
static frame_t *build_frame(const hist_topic_t *t, const hist_msg_t *m, gale_enc_t enc)
{
    gale_pos_t pos = history_pos(t);
    pos.off = m->off;
    size_t len;
    const char *name = history_topic_name(t, &len);
    gale_buf_t b;
    gale_buf_init(&b, FRAME_HEADROOM);
    assert_int_equal(
        gale_encode_msg_pos(&b, enc, name, len, &pos, (gale_enc_t)m->enc, m->data, m->len),
        GALE_OK);
    frame_t *f = frame_finish(&b, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    assert_non_null(f);
    assert_int_equal(f->refs, 1);
    return f;
}

static void test_keep_frames(void **state)
{
    (void)state;
    history_t *h = one_rule(2, 0, 1 << 20);
    hist_topic_t *t = topic(h, "t.a", 0);
    hist_msg_t *m = append(h, t, "\"kept\"", 0);
    frame_t *f = build_frame(t, m, GALE_ENC_JSON);
    frame_t *frames[GALE_ENC_COUNT] = {f, NULL};
    uint64_t before = stats(h).bytes;
    history_keep_frames(h, m, frames);
    assert_int_equal(f->refs, 2); /* one reference taken */
    assert_true(stats(h).bytes >= before + f->len);
    bool nomem;
    assert_ptr_equal(history_frame(h, m, GALE_ENC_JSON, &nomem), f); /* not built again */
    assert_int_equal(f->refs, 2);
    /* A second keep does not replace the frame nor take another reference. */
    frame_t *g = build_frame(t, m, GALE_ENC_JSON);
    frame_t *again[GALE_ENC_COUNT] = {g, NULL};
    uint64_t mid = stats(h).bytes;
    history_keep_frames(h, m, again);
    assert_int_equal(g->refs, 1);
    assert_int_equal(f->refs, 2);
    assert_int_equal(stats(h).bytes, mid);
    assert_ptr_equal(history_frame(h, m, GALE_ENC_JSON, &nomem), f);
    frame_unref(g);
    /* The MessagePack frame was not given: built on demand. */
    frame_t *p = history_frame(h, m, GALE_ENC_MSGPACK, &nomem);
    assert_non_null(p);
    check_msg_frame(p, GALE_ENC_MSGPACK, "t.a", t, 1, NULL);

    /* The caller's reference goes; the history's keeps the frame alive. */
    frame_unref(f);
    assert_int_equal(f->refs, 1);
    check_msg_frame(f, GALE_ENC_JSON, "t.a", t, 1, "\"kept\"");

    /* Displacing a message gives its references back. */
    hist_msg_t *m2 = append(h, t, "\"second\"", 0);
    frame_t *f2 = build_frame(t, m2, GALE_ENC_JSON);
    frame_t *p2 = build_frame(t, m2, GALE_ENC_MSGPACK);
    frame_t *both[GALE_ENC_COUNT] = {f2, p2};
    history_keep_frames(h, m2, both);
    assert_int_equal(f2->refs, 2);
    assert_int_equal(p2->refs, 2);
    append(h, t, "3", 0);
    append(h, t, "4", 0); /* m2 displaced (SIZE 2) */
    assert_null(history_at(t, 2));
    assert_int_equal(f2->refs, 1);
    assert_int_equal(p2->refs, 1);
    frame_unref(f2);
    frame_unref(p2);

    /* Frames kept with messages still held at history_free: freed there (ASan). */
    hist_msg_t *m4 = history_at(t, 4);
    assert_non_null(m4);
    frame_t *f4 = build_frame(t, m4, GALE_ENC_JSON);
    frame_t *four[GALE_ENC_COUNT] = {f4, NULL};
    history_keep_frames(h, m4, four);
    frame_unref(f4);
    assert_int_equal(f4->refs, 1);
    assert_non_null(history_frame(h, history_at(t, 3), GALE_ENC_MSGPACK, &nomem));
    history_free(h);
}

/* --- accounting --------------------------------------------------------------------------- */

/* Bytes come back to what the empty state took once every message expired. */
static void test_bytes_accounting(void **state)
{
    (void)state;
    history_t *h = one_rule(1000, 1000, 1 << 20);
    uint64_t empty = stats(h).bytes;
    hist_topic_t *t = topic(h, "t.a", 0);
    uint64_t with_state = stats(h).bytes;
    assert_true(with_state > empty);
    uint64_t prev = with_state;
    for (int i = 0; i < 100; i++) {
        hist_msg_t *m = append(h, t, "\"0123456789\"", 0);
        assert_true(stats(h).bytes > prev);
        prev = stats(h).bytes;
        bool nomem;
        if (i % 2)
            assert_non_null(history_frame(h, m, GALE_ENC_JSON, &nomem));
        if (i % 3 == 0) {
            frame_t *f = build_frame(t, m, GALE_ENC_MSGPACK);
            frame_t *fs[GALE_ENC_COUNT] = {NULL, f};
            history_keep_frames(h, m, fs);
            frame_unref(f);
        }
        prev = stats(h).bytes;
    }
    history_sweep(h, 1000);
    history_stats_t s = stats(h);
    assert_int_equal(s.messages, 0);
    assert_int_equal(s.expired, 100);
    assert_int_equal(s.bytes, with_state);
    /* A message costs the same again once the state held none. */
    append(h, t, "\"0123456789\"", 2000);
    uint64_t one = stats(h).bytes;
    history_sweep(h, 3000);
    assert_int_equal(stats(h).bytes, with_state);
    append(h, t, "\"0123456789\"", 3000);
    assert_int_equal(stats(h).bytes, one);
    history_free(h);
}

/* Many topics: the table grows; each name keeps its state and its own epoch. */
static int cmp_str(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

static void test_many_topics(void **state)
{
    (void)state;
    enum { N = 2000 };
    history_t *h = one_rule(2, 0, 1ull << 30);
    static hist_topic_t *ts[N];
    static char eps[N][64];
    char name[32];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "t.%d", i);
        ts[i] = topic(h, name, 0);
        append(h, ts[i], "1", 0);
        ep_copy(ts[i], eps[i]);
    }
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof(name), "t.%d", i);
        assert_ptr_equal(topic(h, name, 0), ts[i]);
        assert_int_equal(history_count(ts[i]), 1);
        size_t len;
        const char *n = history_topic_name(ts[i], &len);
        assert_int_equal(len, strlen(name));
        assert_memory_equal(n, name, len);
    }
    history_stats_t s = stats(h);
    assert_int_equal(s.topics, N);
    assert_int_equal(s.messages, N);
    qsort(eps, N, sizeof(eps[0]), cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(eps[i - 1], eps[i]);
    /* A name longer than a topic may be gets no state. */
    char longname[GALE_TOPIC_MAX + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[0] = 't';
    longname[1] = '.';
    longname[sizeof(longname) - 1] = '\0';
    assert_null(history_topic(h, history_rule(h, "t.x", 3), longname, strlen(longname), 0));
    history_free(h);

    history_stats(NULL, &s);
    assert_int_equal(s.bytes + s.topics + s.messages, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule_matching),
        cmocka_unit_test(test_epoch_and_offsets),
        cmocka_unit_test(test_size_eviction),
        cmocka_unit_test(test_ttl_at_access),
        cmocka_unit_test(test_ttl_sweep),
        cmocka_unit_test(test_covers),
        cmocka_unit_test(test_cap_evicts_oldest_across_topics),
        cmocka_unit_test(test_cap_below_states),
        cmocka_unit_test(test_idle_states_first),
        cmocka_unit_test(test_evicted_topic_new_epoch),
        cmocka_unit_test(test_frame_built_and_cached),
        cmocka_unit_test(test_frame_not_convertible),
        cmocka_unit_test(test_keep_frames),
        cmocka_unit_test(test_bytes_accounting),
        cmocka_unit_test(test_many_topics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
