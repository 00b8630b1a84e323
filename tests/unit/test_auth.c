/*
 * Unit tests for broker/auth.c: strict base64url, JWT (HS256) verification
 * against vectors computed independently, claims parsing with hostile input,
 * {sub} substitution, and pattern containment checked exhaustively against a
 * brute-force model over a small alphabet.
 *
 * The tokens were made with Python's hmac/hashlib/base64 (no JWT library):
 *   def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
 *   def tok(h, c, k=b"unit-test-secret-0123456789abcdef"):
 *       hh = b64(h.encode()); pp = b64(c.encode())
 *       return hh + "." + pp + "." + b64(hmac.new(k, (hh + "." + pp).encode(),
 *                                                  hashlib.sha256).digest())
 * with the header and claims given above each one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "auth.h"
#include "gale_json.h"

static const char KEY[] = "unit-test-secret-0123456789abcdef";
#define NOW 1700000000

/* {"alg":"HS256","typ":"JWT"}
 * {"sub":"alice","exp":2000000000,"gale":{"sub":["user.{sub}.>","news.*"],"pub":["chat.>"]}} */
static const char GOOD[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMCwiZ2FsZSI6eyJzdWIiOlsidXNlci57c3VifS4-"
    "IiwibmV3cy4qIl0sInB1YiI6WyJjaGF0Lj4iXX19.l5B6bUhyfxT-XGMj7IzYa9syH8Cqw6rNZOPKg122_vs";

static auth_grant_t *verify(const char *tok, const char **why)
{
    *why = NULL;
    return auth_verify((const uint8_t *)KEY, strlen(KEY), tok, strlen(tok), NOW, why);
}

static void refused(const char *tok)
{
    const char *why;
    auth_grant_t *g = verify(tok, &why);
    if (g)
        fail_msg("accepted: %s", tok);
    assert_non_null(why);
}

static void test_b64url(void **state)
{
    (void)state;
    uint8_t out[16];
    size_t n;
    assert_true(auth_b64url_decode("", 0, out, sizeof(out), &n));
    assert_int_equal(n, 0);
    assert_true(auth_b64url_decode("Zm9vYmFy", 8, out, sizeof(out), &n)); /* RFC 4648 */
    assert_int_equal(n, 6);
    assert_memory_equal(out, "foobar", 6);
    assert_true(auth_b64url_decode("Zm9vYg", 6, out, sizeof(out), &n));
    assert_int_equal(n, 4);
    assert_memory_equal(out, "foob", 4);
    assert_true(auth_b64url_decode("-_8", 3, out, sizeof(out), &n)); /* 0xfb 0xff */
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_false(auth_b64url_decode("Zm9vYg==", 8, out, sizeof(out), &n)); /* padding */
    assert_false(auth_b64url_decode("Zm9vY", 5, out, sizeof(out), &n));    /* 1 mod 4 */
    assert_false(auth_b64url_decode("Zm9vYh", 6, out, sizeof(out), &n));   /* trailing bits */
    assert_false(auth_b64url_decode("+/8A", 4, out, sizeof(out), &n));     /* base64, not url */
    assert_false(auth_b64url_decode("Zm 9", 4, out, sizeof(out), &n));
    assert_false(auth_b64url_decode("Zm9v\0mFy", 8, out, sizeof(out), &n));
    assert_false(auth_b64url_decode("Zm9vYmFy", 8, out, 5, &n)); /* does not fit */
}

static void test_verify_good(void **state)
{
    (void)state;
    const char *why;
    auth_grant_t *g = verify(GOOD, &why);
    assert_non_null(g);
    assert_string_equal(g->user, "alice");
    assert_int_equal(g->exp, 2000000000);
    assert_int_equal(g->nsub, 2);
    assert_string_equal(g->sub[0], "user.alice.>");
    assert_string_equal(g->sub[1], "news.*");
    assert_int_equal(g->npub, 1);
    assert_string_equal(g->pub[0], "chat.>");
    assert_int_equal(g->token_len, strlen(GOOD));
    assert_true(auth_may_sub(g, "user.alice.x", 12));
    assert_true(auth_may_sub(g, "user.alice.*.y", 14));
    assert_true(auth_may_sub(g, "user.alice.>", 12));
    assert_false(auth_may_sub(g, "user.bob.x", 10));
    assert_false(auth_may_sub(g, "user.*.x", 8));
    assert_false(auth_may_sub(g, "user.alice", 10));
    assert_false(auth_may_sub(g, ">", 1));
    assert_true(auth_may_sub(g, "news.a", 6));
    assert_false(auth_may_sub(g, "news.>", 6));
    assert_true(auth_may_pub(g, "chat.a.b", 8));
    assert_false(auth_may_pub(g, "chat", 4));
    assert_false(auth_may_pub(g, "news.a", 6));
    /* Expired at exp, not before. */
    assert_null(
        auth_verify((const uint8_t *)KEY, strlen(KEY), GOOD, strlen(GOOD), 2000000000, &why));
    assert_non_null(why);
    auth_grant_t *g2 =
        auth_verify((const uint8_t *)KEY, strlen(KEY), GOOD, strlen(GOOD), 1999999999, &why);
    assert_non_null(g2);
    auth_grant_free(g2);
    auth_grant_free(g);
}

static void test_verify_refused(void **state)
{
    (void)state;
    char t[sizeof(GOOD)];
    const char *why;
    /* Wrong key. */
    assert_null(auth_verify((const uint8_t *)"other", 5, GOOD, strlen(GOOD), NOW, &why));
    /* Every single-character change is refused (the signature covers it, or it breaks it). */
    for (size_t i = 0; i < strlen(GOOD); i++) {
        if (GOOD[i] == '.')
            continue;
        memcpy(t, GOOD, sizeof(GOOD));
        t[i] = t[i] == 'A' ? 'B' : 'A';
        refused(t);
    }
    /* Truncated signature, segment counts. */
    memcpy(t, GOOD, sizeof(GOOD));
    t[strlen(t) - 1] = '\0';
    refused(t);
    refused("");
    refused("abc");
    refused("a.b");
    refused("a.b.c.d");
    refused("..");
    refused("eyJhbGciOiJIUzI1NiJ9..l5B6bUhyfxT-XGMj7IzYa9syH8Cqw6rNZOPKg122_vs");
    /* {"alg":"none"} {"sub":"alice"}, signed anyway; and unsigned. */
    refused("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.Pr3Wqf_VvHqJ9IGV1UQXY3Dxo34_Uc4hgdjFrUwgWO8");
    refused("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.");
    /* {"alg":"HS512"} {"sub":"alice"} (an HS256 MAC, so only the pinned alg refuses it). */
    refused(
        "eyJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJhbGljZSJ9.49vNJZtgZZj7hXO-RdFm56mSbn9qRwJo5tGbDa5JfcI");
    /* {"alg":"HS256","crit":["exp"]} */
    refused("eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiZXhwIl19.eyJzdWIiOiJhbGljZSJ9."
            "NRuGz9ev99TaTmz6JHaFKpiiz1JcPZE4knoXzOiFzjA");
    /* {"exp":1000} */
    refused("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjEwMDB9.RV1pz1Ovl1uBk2RI5RNjMbvKIgBWO2f8jT8SjlKFeYE");
    /* {"nbf":3000000000} */
    refused("eyJhbGciOiJIUzI1NiJ9.eyJuYmYiOjMwMDAwMDAwMDB9."
            "SRhdcPlwXKBlPN5CVPmvqTEonkJNWXqeoQy50-rDRp8");
    /* {"alg":"HS256","alg":"HS256"} {} */
    refused(
        "eyJhbGciOiJIUzI1NiIsImFsZyI6IkhTMjU2In0.e30.B2JDkS22Q6jwU3I3PMssPwho349ih__4PPhLQgxhD8U");
    /* {"sub":"x","sub":"y"} */
    refused("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4Iiwic3ViIjoieSJ9."
            "pCkvfhBvyiuYNCtbP04Hisifq4kQ3TE-RObjXDi6gt8");
    /* [1] */
    refused("eyJhbGciOiJIUzI1NiJ9.WzFd.18qNXIfd1W15iLjwSJ52TmVmvAe4Kvd6BGec69wZAwQ");
    /* {"exp":"soon"} */
    refused("eyJhbGciOiJIUzI1NiJ9.eyJleHAiOiJzb29uIn0.eIGN2C979ao5eJ2VtO4l4rHv2cZC4Zb3XzabEIKKEgQ");
}

static void test_sub_placeholder_dropped(void **state)
{
    (void)state;
    const char *why;
    /* {"alg":"HS256"} {"sub":"a.b","gale":{"sub":["user.{sub}.>","x"]}}: a user id with a dot
     * must not be substituted: that grant is dropped, the other stays. */
    auth_grant_t *g = verify("eyJhbGciOiJIUzI1NiJ9."
                             "eyJzdWIiOiJhLmIiLCJnYWxlIjp7InN1YiI6WyJ1c2VyLntzdWJ9Lj4iLCJ4Il19fQ."
                             "75D955ty68_kav-Jn7W1mX8QsMO1oZeDDdIgP7B1uDs",
                             &why);
    assert_non_null(g);
    assert_int_equal(g->nsub, 1);
    assert_string_equal(g->sub[0], "x");
    assert_false(auth_may_sub(g, "user.a.b.c", 10));
    auth_grant_free(g);
}

static auth_grant_t *claims(const char *json)
{
    const char *why = NULL;
    auth_grant_t *g = auth_claims_parse((const uint8_t *)json, strlen(json), NOW, &why);
    if (!g)
        assert_non_null(why);
    return g;
}

/* gale.info: the member's info of presence, kept as the token wrote it. */
static void test_claims_info(void **state)
{
    (void)state;
    auth_grant_t *g = claims("{\"sub\":\"ann\",\"gale\":{\"sub\":[\"a\"],"
                             "\"info\":{\"nick\": \"Ann\",\"n\":[1,2]}}}");
    assert_non_null(g);
    assert_string_equal(g->user, "ann");
    assert_int_equal(g->info_len, strlen("{\"nick\": \"Ann\",\"n\":[1,2]}"));
    assert_memory_equal(g->info, "{\"nick\": \"Ann\",\"n\":[1,2]}", g->info_len);
    auth_grant_free(g);
    g = claims("{\"sub\":\"bob\"}");
    assert_non_null(g);
    assert_null(g->info);
    assert_int_equal(g->info_len, 0);
    auth_grant_free(g);
}

static void test_claims_hostile(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "null",
        "[]",
        "{",
        "{\"exp\":1}",
        "{\"exp\":\"2000000000\"}",
        "{\"exp\":null}",
        "{\"nbf\":1e300}",
        "{\"sub\":5}",
        "{\"sub\":\"a\\u0000b\"}",
        "{\"sub\":\"a\\nb\"}",
        "{\"sub\":\"x\",\"s\\u0075b\":\"y\"}", /* a duplicate through an escape */
        "{\"gale\":[]}",
        "{\"gale\":{\"sub\":\"a\"}}",
        "{\"gale\":{\"sub\":[1]}}",
        "{\"gale\":{\"sub\":[[\"a\"]]}}",
        "{\"gale\":{\"pub\":[\"a\"],\"pub\":[\"b\"]}}",
        "{\"gale\":{\"sub\":[\"a\"]}} x",
        "{\"gale\":{\"info\":\"ann\"}}", /* gale.info must be an object */
        "{\"gale\":{\"info\":[1]}}",
        "{\"gale\":{\"info\":null}}",
        "{\"gale\":{\"info\":{},\"info\":{}}}",
        "{\"a\":\"\xff\"}",
        "{\"a\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        auth_grant_t *g = claims(bad[i]);
        if (g)
            fail_msg("accepted claims %s", bad[i]);
    }
    /* Invalid patterns are dropped; the valid ones stay; unknown claims are ignored. */
    auth_grant_t *g = claims("{\"iss\":{\"x\":[1,2]},\"sub\":\"u1\",\"exp\":1700000000.5,"
                             "\"gale\":{\"sub\":[\"\",\"a..b\",\"a.>.b\",\"a b\",\"a.*\","
                             "\"{sub}\",\"x{sub}y.>\",\"\\u0061.b\",\">\"],\"pub\":[\"*\"],"
                             "\"other\":true}}");
    assert_non_null(g);
    assert_int_equal(g->exp, 1700000001);
    assert_int_equal(g->nsub, 5);
    assert_string_equal(g->sub[0], "a.*");
    assert_string_equal(g->sub[1], "u1");
    assert_string_equal(g->sub[2], "xu1y.>");
    assert_string_equal(g->sub[3], "a.b");
    assert_string_equal(g->sub[4], ">");
    assert_int_equal(g->npub, 1);
    auth_grant_free(g);
    /* No gale claim: nothing allowed. No exp: does not expire. */
    g = claims("{}");
    assert_non_null(g);
    assert_int_equal(g->nsub + g->npub, 0);
    assert_int_equal(g->exp, AUTH_NO_TIME);
    assert_false(auth_may_sub(g, "a", 1));
    assert_false(auth_may_pub(g, "a", 1));
    auth_grant_free(g);
    /* User ids that may not stand for {sub}. */
    static const char *const bad_users[] = {"", "a.b", "*", ">", "a b", "a\\tb"};
    for (size_t i = 0; i < sizeof(bad_users) / sizeof(bad_users[0]); i++) {
        char json[128];
        snprintf(json, sizeof(json), "{\"sub\":\"%s\",\"gale\":{\"sub\":[\"u.{sub}\"]}}",
                 bad_users[i]);
        g = claims(json);
        if (g) {
            assert_int_equal(g->nsub, 0);
            auth_grant_free(g);
        }
    }
    /* Too many patterns. */
    char big[8192] = "{\"gale\":{\"sub\":[";
    for (int i = 0; i <= AUTH_MAX_PATTERNS; i++)
        strcat(big, i ? ",\"a\"" : "\"a\"");
    strcat(big, "]}}");
    assert_null(claims(big));
}

/* --- containment against brute force ---------------------------------------- */

#define SEGS_MAX 4
static const char *const SEGV[] = {"a", "b", "*", ">"};

/* All patterns of 1..SEGS_MAX segments over {a, b, *} with an optional final `>`. */
static size_t gen_patterns(char out[][16])
{
    size_t n = 0;
    for (int len = 1; len <= SEGS_MAX; len++) {
        int total = 1;
        for (int i = 0; i < len; i++)
            total *= 4;
        for (int code = 0; code < total; code++) {
            char p[16] = "";
            int c = code;
            bool ok = true;
            for (int i = 0; i < len; i++) {
                int s = c % 4;
                c /= 4;
                if (s == 3 && i != len - 1)
                    ok = false;
                if (i)
                    strcat(p, ".");
                strcat(p, SEGV[s]);
            }
            if (ok)
                strcpy(out[n++], p);
        }
    }
    return n;
}

/* All topics of 1..SEGS_MAX+1 segments over {a, b, c} (c: named by no pattern). */
static size_t gen_topics(char out[][16])
{
    size_t n = 0;
    for (int len = 1; len <= SEGS_MAX + 1; len++) {
        int total = 1;
        for (int i = 0; i < len; i++)
            total *= 3;
        for (int code = 0; code < total; code++) {
            char t[16] = "";
            int c = code;
            for (int i = 0; i < len; i++) {
                if (i)
                    strcat(t, ".");
                strcat(t, (const char *[]){"a", "b", "c"}[c % 3]);
                c /= 3;
            }
            strcpy(out[n++], t);
        }
    }
    return n;
}

static void test_contains_exhaustive(void **state)
{
    (void)state;
    static char pats[512][16], tops[512][16];
    static bool m[512][512];
    size_t np = gen_patterns(pats), nt = gen_topics(tops);
    assert_int_equal(np, 4 + 12 + 36 + 108);
    assert_int_equal(nt, 3 + 9 + 27 + 81 + 243);
    for (size_t i = 0; i < np; i++) {
        assert_true(gale_pattern_valid(pats[i], strlen(pats[i]), NULL));
        for (size_t t = 0; t < nt; t++)
            m[i][t] = gale_pattern_match(pats[i], strlen(pats[i]), tops[t], strlen(tops[t]));
    }
    size_t contained = 0;
    for (size_t g = 0; g < np; g++)
        for (size_t p = 0; p < np; p++) {
            /* Brute force: every topic p matches (up to one segment longer than any pattern,
             * over an alphabet with a letter no pattern names) is matched by g. */
            bool model = true;
            for (size_t t = 0; t < nt && model; t++)
                if (m[p][t] && !m[g][t])
                    model = false;
            bool got = auth_pattern_contains(pats[g], strlen(pats[g]), pats[p], strlen(pats[p]));
            if (got != model)
                fail_msg("contains(%s, %s) = %d, brute force says %d", pats[g], pats[p], got,
                         model);
            contained += got;
        }
    assert_true(contained > np); /* reflexive, and more */
}

static void test_contains_examples(void **state)
{
    (void)state;
#define C(g, p) auth_pattern_contains(g, strlen(g), p, strlen(p))
    assert_false(C("sec.>", ">"));
    assert_true(C("a.>", "a.*"));
    assert_true(C("*.*", "a.*"));
    assert_false(C("a.*", "a.>"));
    assert_true(C(">", ">"));
    assert_true(C(">", "a"));
    assert_false(C("a", "a.b"));
    assert_false(C("a.b", "a"));
    assert_false(C("*", "a.b"));
    assert_true(C("*.>", "a.b.>"));
    assert_false(C("*.>", ">"));
    assert_false(C("a.b.>", "a.*.c"));
    assert_true(C("room-1.*", "room-1.x"));
    assert_false(C("room-1.*", "room-10.x"));
#undef C
}

static gale_request_t req(gale_op_t op, const char *topic)
{
    gale_request_t r;
    memset(&r, 0, sizeof(r));
    r.op = op;
    r.topic = topic;
    r.topic_len = topic ? strlen(topic) : 0;
    return r;
}

static void test_check(void **state)
{
    (void)state;
    const char *why = NULL;
    auth_grant_t *g = claims("{\"gale\":{\"sub\":[\"a.>\"],\"pub\":[\"b.*\"]}}");
    assert_non_null(g);
    gale_request_t r = req(GALE_OP_SUB, "a.x");
    assert_int_equal(auth_check(g, &r, &why), GALE_OK);
    r = req(GALE_OP_SUB, "b.x");
    assert_int_equal(auth_check(g, &r, &why), GALE_ERR_FORBIDDEN);
    assert_non_null(why);
    r = req(GALE_OP_UNSUB, "zzz"); /* unsub is always allowed */
    assert_int_equal(auth_check(g, &r, &why), GALE_OK);
    r = req(GALE_OP_PUB, "b.x");
    assert_int_equal(auth_check(g, &r, &why), GALE_OK);
    r = req(GALE_OP_PUB, "a.x"); /* subscribe rights do not give publish rights */
    assert_int_equal(auth_check(g, &r, &why), GALE_ERR_FORBIDDEN);
    r = req(GALE_OP_PING, NULL);
    assert_int_equal(auth_check(g, &r, &why), GALE_OK);
    r = req(GALE_OP_PUB, "anything"); /* no grant: open */
    assert_int_equal(auth_check(NULL, &r, &why), GALE_OK);
    auth_grant_free(g);
}

static void test_secret_equal(void **state)
{
    (void)state;
    assert_true(auth_secret_equal("key", 3, "key", 3));
    assert_false(auth_secret_equal("key", 3, "kez", 3));
    assert_false(auth_secret_equal("key", 3, "key1", 4));
    assert_false(auth_secret_equal("", 0, "k", 1));
}

static void test_cache(void **state)
{
    (void)state;
    const char *why;
    auth_t *a = auth_new((const uint8_t *)KEY, strlen(KEY));
    assert_non_null(a);
    auth_grant_t *g = auth_lookup(a, GOOD, strlen(GOOD), NOW, &why);
    assert_non_null(g);
    assert_ptr_equal(auth_lookup(a, GOOD, strlen(GOOD), NOW, &why), g); /* shared */
    auth_grant_ref(g);
    assert_int_equal(auth_cache_sweep(a), 1); /* held */
    /* A cached token is re-checked against the clock. */
    assert_null(auth_lookup(a, GOOD, strlen(GOOD), 2000000000, &why));
    auth_grant_unref(g);
    assert_int_equal(auth_cache_sweep(a), 0);
    assert_null(auth_lookup(a, "x.y.z", 5, NOW, &why));
    assert_int_equal(auth_cache_sweep(a), 0);
    auth_free(a);
}

static void test_json_walk(void **state)
{
    (void)state;
    const char arr[] = " [ \"a\" , {\"x\":[1,\"]\"]} ,[],\"\\\"\" ] ";
    size_t pos = 0, len, n = 0;
    const uint8_t *el;
    const char *want[] = {"\"a\"", "{\"x\":[1,\"]\"]}", "[]", "\"\\\"\""};
    while (gale_json_array_next((const uint8_t *)arr, strlen(arr), &pos, &el, &len)) {
        assert_true(n < 4);
        assert_int_equal(len, strlen(want[n]));
        assert_memory_equal(el, want[n], len);
        n++;
    }
    assert_int_equal(n, 4);
    pos = 0;
    assert_false(gale_json_array_next((const uint8_t *)"[]", 2, &pos, &el, &len));
    char out[8];
    assert_int_equal(gale_json_string((const uint8_t *)"\"a\\u0062\"", 9, out, sizeof(out)), 2);
    assert_string_equal(out, "ab");
    assert_int_equal(gale_json_string((const uint8_t *)"\"\\u0000\"", 8, out, sizeof(out)),
                     SIZE_MAX);
    assert_int_equal(gale_json_string((const uint8_t *)"\"12345678\"", 10, out, sizeof(out)),
                     SIZE_MAX);
    assert_int_equal(gale_json_string((const uint8_t *)"\"\\ud800\"", 8, out, sizeof(out)),
                     SIZE_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url),
        cmocka_unit_test(test_verify_good),
        cmocka_unit_test(test_verify_refused),
        cmocka_unit_test(test_sub_placeholder_dropped),
        cmocka_unit_test(test_claims_hostile),
        cmocka_unit_test(test_claims_info),
        cmocka_unit_test(test_contains_exhaustive),
        cmocka_unit_test(test_contains_examples),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_secret_equal),
        cmocka_unit_test(test_cache),
        cmocka_unit_test(test_json_walk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
