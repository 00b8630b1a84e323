/*
 * Fuzzes the JWKS parser (broker/auth_keys.c): the input is a JWKS document
 * added to an empty key set. Checked: a refused document leaves the set as
 * it was (no keys) with a reason; an accepted one holds 1 to
 * AUTH_JWKS_MAX_KEYS keys, each usable key or skipped one accounted for,
 * the same result twice (no hidden state); its description is bounded and
 * free of control characters (kids reach the log); tokens verify against it
 * without crashing (a refusal is fine).
 */
#include "fuzz_check.h"

#include "auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NOW 1700000000

static void count_note(void *arg, const char *msg)
{
    size_t *n = arg;
    CHECK(msg && msg[0]);
    for (const char *p = msg; *p; p++)
        CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
    (*n)++;
}

/* RS256 {"kid":"k"}, ES256 {"kid":"k"}, HS256 and none headers over the same claims: whatever
 * the set holds, each is verified or refused with a reason. */
static const char *const tokens[] = {
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJhIn0.AAAA",
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.eyJzdWIiOiJhIn0."
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.AAAA",
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0."
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512], desc[2048];
    size_t notes = 0, notes2 = 0;
    if (size > AUTH_JWKS_MAX_BYTES + 1)
        return 0;
    auth_keys_t *k = auth_keys_new(NULL, 0), *k2 = auth_keys_new(NULL, 0);
    CHECK(k && k2);
    err[0] = '\0';
    bool ok = auth_keys_add_jwks(k, data, size, count_note, &notes, err, sizeof(err));
    bool ok2 = auth_keys_add_jwks(k2, data, size, count_note, &notes2, err, sizeof(err));
    CHECK(ok == ok2 && notes == notes2);
    CHECK(auth_keys_count(k) == auth_keys_count(k2));
    if (!ok) {
        CHECK(err[0] != '\0' && strlen(err) < sizeof(err));
        CHECK(auth_keys_count(k) == 0);
    } else {
        CHECK(auth_keys_count(k) >= 1 && auth_keys_count(k) <= AUTH_JWKS_MAX_KEYS);
        CHECK(auth_keys_count(k) + notes <= AUTH_JWKS_MAX_KEYS);
        CHECK(!auth_keys_has_secret(k));
    }
    auth_keys_describe(k, desc, sizeof(desc));
    CHECK(strlen(desc) < sizeof(desc));
    for (const char *p = desc; *p; p++)
        CHECK((unsigned char)*p >= 0x20 && *p != 0x7f);
    auth_keys_algs(k, desc, sizeof(desc));
    for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); i++) {
        const char *why = NULL;
        auth_grant_t *g = auth_verify_keys(k, tokens[i], strlen(tokens[i]), NOW, &why);
        CHECK(g == NULL && why != NULL); /* no signature here is valid */
    }
    auth_keys_free(k);
    auth_keys_free(k2);
    return 0;
}
