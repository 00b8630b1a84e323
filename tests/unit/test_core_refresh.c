/*
 * refresh (docs/PROTOCOL.md "Token refresh") through the core, without lws or sockets: a
 * fake connection (conn.h) with a grant, tokens minted here (HS256 with OpenSSL's HMAC, exp
 * relative to now), the broker's auth_t. Checks the answers (ack; err bad_request "token
 * refused: ..." for an invalid or expired token, forbidden for another user's, bad_request
 * without authentication), that the connection's grant is replaced only on success (its
 * expiry and permissions), that subscriptions the new grant does not allow are dropped and
 * announced, and the counters.
 */
#include "auth.h"
#include "broker.h"
#include "core.h"
#include "frame.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

static const char KEY[] = "core-refresh-secret-0123456789abcdef";

/* --- tokens ------------------------------------------------------------------------------ */

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = A[v >> 18 & 63];
        out[o++] = A[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = A[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = A[v & 63];
    }
    out[o] = '\0';
    return o;
}

/* An HS256 token of claims (JSON) signed with key; out holds at least 2048 bytes. */
static const char *mint_with(const char *key, const char *claims, char *out)
{
    static const char head[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t o = b64url((const uint8_t *)head, strlen(head), out);
    out[o++] = '.';
    o += b64url((const uint8_t *)claims, strlen(claims), out + o);
    uint8_t mac[32];
    unsigned mlen = 0;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)out, o, mac, &mlen);
    out[o++] = '.';
    b64url(mac, mlen, out + o);
    return out;
}

/* A token of user (NULL: no sub claim), valid for ttl seconds, granting sub/pub (JSON arrays). */
static const char *mint(const char *user, long ttl, const char *sub, const char *pub, char *out)
{
    char claims[1024];
    long exp = (long)time(NULL) + ttl;
    if (user)
        snprintf(claims, sizeof(claims),
                 "{\"sub\":\"%s\",\"exp\":%ld,\"gale\":{\"sub\":%s,\"pub\":%s}}", user, exp, sub,
                 pub);
    else
        snprintf(claims, sizeof(claims), "{\"exp\":%ld,\"gale\":{\"sub\":%s,\"pub\":%s}}", exp, sub,
                 pub);
    return mint_with(KEY, claims, out);
}

/* --- a fake connection ------------------------------------------------------------------- */

#define MAX_SEEN 64

typedef struct {
    conn_t conn;
    frame_t *frames[MAX_SEEN];
    size_t nframes;
    conn_reply_t replies[MAX_SEEN];
    size_t nreplies;
    uint16_t closed;
} fake_conn_t;

static bool fake_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    if (fc->nframes == MAX_SEEN)
        return false;
    fc->frames[fc->nframes++] = frame_ref(f);
    return true;
}

static void fake_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    assert_true(fc->nreplies < MAX_SEEN);
    fc->replies[fc->nreplies++] = *r;
}

static void fake_close(broker_t *b, conn_t *c, uint16_t code)
{
    (void)b;
    ((fake_conn_t *)c)->closed = code;
}

static const conn_ops_t fake_ops = {
    .deliver = fake_deliver, .reply = fake_reply, .close = fake_close};

/* --- fixture ----------------------------------------------------------------------------- */

typedef struct {
    uv_loop_t loop;
    broker_t b;
    char released[MAX_SEEN][64];
    size_t nreleased;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    uv_loop_init(&f->loop);
    config_defaults(&f->b.cfg);
    f->b.loop = &f->loop;
    f->b.topics = topics_new();
    f->b.auth = auth_new((const uint8_t *)KEY, strlen(KEY));
    assert_non_null(f->b.auth);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    auth_free(f->b.auth);
    topics_free(f->b.topics);
    uv_loop_close(&f->loop);
    free(f);
    return 0;
}

/* A connection opened with token tok (as the transport does after the handshake). */
static fake_conn_t *open_with(fixture_t *f, const char *tok)
{
    const char *why = "";
    auth_grant_t *g = NULL;
    if (tok) {
        g = auth_lookup(f->b.auth, tok, strlen(tok), (int64_t)time(NULL), &why);
        assert_non_null(g);
    }
    fake_conn_t *fc = calloc(1, sizeof(*fc));
    core_open(&f->b, &fc->conn, &fake_ops, GALE_ENC_JSON, g);
    return fc;
}

static void fake_free(broker_t *b, fake_conn_t *fc)
{
    core_close(b, &fc->conn);
    for (size_t i = 0; i < fc->nframes; i++)
        frame_unref(fc->frames[i]);
    free(fc);
}

static void send_json(fixture_t *f, fake_conn_t *fc, const char *json)
{
    assert_int_equal(core_message(&f->b, &fc->conn, (const uint8_t *)json, strlen(json), false), 0);
}

static void refresh(fixture_t *f, fake_conn_t *fc, uint64_t id, const char *tok)
{
    char m[4096];
    snprintf(m, sizeof(m), "{\"op\":\"refresh\",\"id\":%llu,\"token\":\"%s\"}",
             (unsigned long long)id, tok);
    send_json(f, fc, m);
}

static const conn_reply_t *last_reply(const fake_conn_t *fc)
{
    assert_true(fc->nreplies > 0);
    return &fc->replies[fc->nreplies - 1];
}

/* A frame's payload as a C string (in a static buffer: one at a time). */
static const char *payload(const frame_t *fr)
{
    static char out[1024];
    size_t n;
    const uint8_t *p = frame_payload(fr, &n);
    assert_true(n < sizeof(out));
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

/* --- tests ------------------------------------------------------------------------------- */

static void test_refresh_replaces_the_grant(void **state)
{
    fixture_t *f = *state;
    char t1[2048], t2[2048];
    fake_conn_t *c = open_with(f, mint("alice", 5, "[\"a.>\"]", "[\"a.x\"]", t1));
    auth_grant_t *old = c->conn.grant;
    assert_int_equal(old->refs, 1);

    /* The new token: a longer life, publishing to b.x too. */
    mint("alice", 600, "[\"a.>\",\"b.>\"]", "[\"a.x\",\"b.x\"]", t2);
    send_json(f, c, "{\"op\":\"pub\",\"id\":1,\"topic\":\"b.x\",\"data\":1}");
    assert_int_equal(last_reply(c)->err, GALE_ERR_FORBIDDEN);
    refresh(f, c, 2, t2);
    const conn_reply_t *r = last_reply(c);
    assert_int_equal(r->err, GALE_OK);
    assert_int_equal(r->op, GALE_OP_REFRESH);
    assert_true(r->has_id && r->id == 2);
    assert_ptr_not_equal(c->conn.grant, old);
    assert_int_equal(c->conn.grant->refs, 1);
    assert_int_equal(old->refs, 0);
    assert_true(c->conn.grant->exp >= (int64_t)time(NULL) + 590); /* the new expiry */
    send_json(f, c, "{\"op\":\"pub\",\"id\":3,\"topic\":\"b.x\",\"data\":1}");
    assert_int_equal(last_reply(c)->err, GALE_OK);
    assert_int_equal(f->b.m.refreshes[1], 1);
    assert_int_equal(f->b.m.refreshes[0], 0);

    /* The same token again, and without id: silent success. */
    size_t n = c->nreplies;
    char m[4096];
    snprintf(m, sizeof(m), "{\"op\":\"refresh\",\"token\":\"%s\"}", t2);
    send_json(f, c, m);
    assert_int_equal(c->nreplies, n);
    assert_int_equal(c->conn.grant->refs, 1);
    assert_int_equal(f->b.m.refreshes[1], 2);
    assert_int_equal(c->nframes, 0);
    fake_free(&f->b, c);
}

static void test_refused_tokens_keep_the_grant(void **state)
{
    fixture_t *f = *state;
    char t1[2048];
    fake_conn_t *c = open_with(f, mint("alice", 300, "[\"a.>\"]", "[]", t1));
    auth_grant_t *old = c->conn.grant;
    struct {
        const char *tok;
        gale_err_t err;
        const char *prefix, *why;
    } cases[] = {
        {mint("alice", -10, "[\"a.>\"]", "[]", (char[2048]){0}), GALE_ERR_BAD_REQUEST,
         "token refused: ", "the token has expired"},
        {mint_with("another-key", "{\"sub\":\"alice\"}", (char[2048]){0}), GALE_ERR_BAD_REQUEST,
         "token refused: ", NULL},
        {"not-a-token", GALE_ERR_BAD_REQUEST, "token refused: ", NULL},
        {mint("bob", 300, "[\"a.>\"]", "[]", (char[2048]){0}), GALE_ERR_FORBIDDEN, NULL, NULL},
        {mint(NULL, 300, "[\"a.>\"]", "[]", (char[2048]){0}), GALE_ERR_FORBIDDEN, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        refresh(f, c, 10 + i, cases[i].tok);
        const conn_reply_t *r = last_reply(c);
        assert_int_equal(r->err, cases[i].err);
        assert_true(r->has_id && r->id == 10 + i);
        if (cases[i].prefix)
            assert_string_equal(r->why_prefix, cases[i].prefix);
        else
            assert_null(r->why_prefix);
        if (cases[i].why)
            assert_string_equal(r->why, cases[i].why);
        assert_ptr_equal(c->conn.grant, old);
        assert_int_equal(old->refs, 1);
    }
    assert_int_equal(f->b.m.refreshes[0], 5);
    assert_int_equal(f->b.m.refreshes[1], 0);
    assert_int_equal(f->b.m.protocol_errors[GALE_ERR_FORBIDDEN], 2);
    /* A malformed refresh is refused too (and counted). */
    send_json(f, c, "{\"op\":\"refresh\",\"id\":99,\"token\":\"\"}");
    assert_int_equal(last_reply(c)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(f->b.m.refreshes[0], 6);
    fake_free(&f->b, c);
}

static void test_no_authentication(void **state)
{
    fixture_t *f = *state;
    char t1[2048];
    mint("alice", 300, "[]", "[]", t1);
    /* A connection without a grant on a broker with authentication (the HTTP API's). */
    fake_conn_t *api = open_with(f, NULL);
    refresh(f, api, 1, t1);
    assert_int_equal(last_reply(api)->err, GALE_ERR_BAD_REQUEST);
    assert_string_equal(last_reply(api)->why, "this connection has no token to refresh");
    assert_null(api->conn.grant);
    fake_free(&f->b, api);
    /* An open broker. */
    auth_free(f->b.auth);
    f->b.auth = NULL;
    fake_conn_t *c = open_with(f, NULL);
    refresh(f, c, 2, t1);
    assert_int_equal(last_reply(c)->err, GALE_ERR_BAD_REQUEST);
    assert_string_equal(last_reply(c)->why, "this broker has no authentication");
    assert_null(c->conn.grant);
    assert_int_equal(f->b.m.refreshes[0], 2);
    fake_free(&f->b, c);
}

static void test_subscriptions_not_allowed_are_dropped(void **state)
{
    fixture_t *f = *state;
    char t1[2048], t2[2048];
    fake_conn_t *c =
        open_with(f, mint("alice", 300, "[\"a.>\",\"b.>\",\"user.{sub}.>\"]", "[\">\"]", t1));
    fake_conn_t *other = open_with(f, mint("bob", 300, "[\"b.>\"]", "[\">\"]", t2));
    send_json(f, c, "{\"op\":\"sub\",\"id\":1,\"topic\":\"a.>\"}");
    send_json(f, c, "{\"op\":\"sub\",\"id\":2,\"topic\":\"b.x\"}");
    send_json(f, c, "{\"op\":\"sub\",\"id\":3,\"topic\":\"b.*\"}");
    send_json(f, c, "{\"op\":\"sub\",\"id\":4,\"topic\":\"user.alice.inbox\"}");
    send_json(f, other, "{\"op\":\"sub\",\"id\":1,\"topic\":\"b.x\"}");
    assert_int_equal(c->conn.owner.nsubs, 4);

    /* The new token allows a.x (narrower than a.>), b.x and the user's inbox. */
    mint("alice", 300, "[\"a.x\",\"b.x\",\"user.{sub}.>\"]", "[\">\"]", t2);
    refresh(f, c, 9, t2);
    assert_int_equal(last_reply(c)->err, GALE_OK);
    assert_int_equal(c->conn.owner.nsubs, 2);
    assert_true(topics_holds(f->b.topics, &c->conn.owner, "b.x", 3));
    assert_true(topics_holds(f->b.topics, &c->conn.owner, "user.alice.inbox", 16));
    assert_false(topics_holds(f->b.topics, &c->conn.owner, "a.>", 3));
    assert_false(topics_holds(f->b.topics, &c->conn.owner, "b.*", 3));
    assert_int_equal(f->b.m.refresh_dropped, 2);
    /* Each dropped one is announced once, after the ack. */
    assert_int_equal(c->nframes, 2);
    bool seen_a = false, seen_b = false;
    for (size_t i = 0; i < c->nframes; i++) {
        const char *p = payload(c->frames[i]);
        assert_non_null(strstr(p, "{\"op\":\"err\",\"code\":\"forbidden\",\"topic\":\""));
        seen_a |= strstr(p, "\"topic\":\"a.>\"") != NULL;
        seen_b |= strstr(p, "\"topic\":\"b.*\"") != NULL;
    }
    assert_true(seen_a && seen_b);
    /* The other connection's subscription is untouched; deliveries follow the new set. */
    send_json(f, other, "{\"op\":\"pub\",\"id\":2,\"topic\":\"b.x\",\"data\":1}");
    send_json(f, other, "{\"op\":\"pub\",\"id\":3,\"topic\":\"a.y\",\"data\":1}");
    assert_int_equal(other->nframes, 1);
    assert_int_equal(c->nframes, 3);
    assert_non_null(strstr(payload(c->frames[2]), "\"topic\":\"b.x\""));
    fake_free(&f->b, c);
    fake_free(&f->b, other);
}

static void bus_release(const char *p, size_t len, void *bus)
{
    fixture_t *f = bus;
    snprintf(f->released[f->nreleased++], 64, "%.*s", (int)len, p);
}

static gale_err_t bus_sub(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                          bool *deferred)
{
    (void)bus, (void)done, (void)p, (void)len, (void)why;
    *deferred = false;
    return GALE_OK;
}

static void test_dropped_pattern_released_in_a_cluster(void **state)
{
    fixture_t *f = *state;
    static const bus_ops_t ops = {.sub = bus_sub, .release = bus_release};
    f->b.bus = (bus_t){.ops = &ops, .ctx = f};
    char t1[2048], t2[2048];
    fake_conn_t *c = open_with(f, mint("alice", 300, "[\">\"]", "[]", t1));
    send_json(f, c, "{\"op\":\"sub\",\"id\":1,\"topic\":\"x.y\"}");
    send_json(f, c, "{\"op\":\"sub\",\"id\":2,\"topic\":\"z\"}");
    assert_int_equal(c->nreplies, 2);
    refresh(f, c, 3, mint("alice", 300, "[\"z\"]", "[]", t2));
    assert_int_equal(last_reply(c)->err, GALE_OK);
    assert_int_equal(f->nreleased, 1); /* the node no longer needs x.y from the cluster */
    assert_string_equal(f->released[0], "x.y");
    fake_free(&f->b, c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_refresh_replaces_the_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_tokens_keep_the_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_authentication, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscriptions_not_allowed_are_dropped, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dropped_pattern_released_in_a_cluster, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
