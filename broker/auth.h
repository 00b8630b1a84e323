/*
 * auth: who may connect, subscribe and publish. Pure code (OpenSSL's HMAC,
 * protocol/ for JSON and topics; no sockets, no event loop, no logging), so
 * that unit tests and the fuzz targets drive it directly.
 *
 * Tokens are JWTs signed with HMAC-SHA256 (RFC 7519, JWS compact form). The
 * algorithm is pinned: the header must say exactly "alg":"HS256"; "none" and
 * every other algorithm are refused, and so is a "crit" header. Segments are
 * strict base64url (RFC 4648 section 5: no padding, no whitespace, canonical
 * trailing bits). The signature is compared in constant time (CRYPTO_memcmp).
 *
 * Claims (docs/ARCHITECTURE.md "Security"):
 *   exp, nbf  NumericDate; exp refused when now >= exp, nbf when now < nbf.
 *   sub       the user id (a string): logged, and substituted for {sub} in grants.
 *   gale      {"sub": [patterns], "pub": [patterns]}: what the token may
 *             subscribe to and publish to. Missing: nothing.
 *
 * A grant pattern containing {sub} has it replaced by the user id, but only
 * when the id is a valid single topic segment (no '.', '*', '>', whitespace,
 * control characters); otherwise that grant is dropped. Patterns that are not
 * valid gale patterns (after substitution) are dropped too.
 *
 * A verified token becomes an auth_grant_t, shared (refcounted) by every
 * connection presenting the same token through auth_t's cache.
 */
#ifndef GALE_AUTH_H
#define GALE_AUTH_H

#include "gale_protocol.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Longest token accepted (bytes). */
#define AUTH_TOKEN_MAX 8192
/** Most patterns a token may grant per list. */
#define AUTH_MAX_PATTERNS 256
/** exp/nbf absent. */
#define AUTH_NO_TIME INT64_MAX

typedef struct auth_grant {
    struct auth_grant *hnext; /* the cache's hash chain */
    uint64_t hash;
    uint32_t refs;       /* connections holding it (auth_grant_ref) */
    uint32_t nsub, npub; /* patterns in sub[], pub[] */
    int64_t exp, nbf;    /* unix seconds, or AUTH_NO_TIME (nbf: INT64_MIN when absent) */
    char *user;          /* the sub claim ("" when absent); printable for logs */
    char *info;          /* the gale.info claim, a JSON object as the token has it; NULL: none */
    size_t info_len;
    const char **sub; /* allowed subscription patterns (NUL-terminated) */
    const char **pub; /* allowed publish patterns */
    size_t token_len;
    char *token; /* the token this grant was verified from (cache key) */
} auth_grant_t;

/**
 * Decodes strict base64url in[0..n) into out (cap bytes). Returns false on a
 * character outside the alphabet, padding, a length of 1 mod 4, non-zero
 * trailing bits, or when it does not fit.
 */
bool auth_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen);

/**
 * Parses a claims set (JSON object) at time `now` into a new grant (refs 0,
 * no token). Returns NULL with *why set when it is malformed (not an object,
 * a claim of the wrong type, a duplicate claim), expired or not yet valid.
 */
auth_grant_t *auth_claims_parse(const uint8_t *json, size_t len, int64_t now, const char **why);

/**
 * Verifies token[0..len) with key[0..key_len) at time now: the full JWT
 * check, then auth_claims_parse. Returns a new grant (refs 0, token copied)
 * or NULL with *why set.
 */
auth_grant_t *auth_verify(const uint8_t *key, size_t key_len, const char *token, size_t len,
                          int64_t now, const char **why);

/** Frees a grant (whatever its refs). NULL is ignored. */
void auth_grant_free(auth_grant_t *g);

/** True if g is valid at time now (nbf <= now < exp). */
bool auth_grant_current(const auth_grant_t *g, int64_t now);

/**
 * True if every concrete topic matched by pattern p is matched by pattern g
 * (both valid patterns). Conservative at the 255-byte topic limit: a pattern
 * whose extra matches would all be over-long is still refused.
 */
bool auth_pattern_contains(const char *g, size_t glen, const char *p, size_t plen);

/** True if g lets its holder subscribe to pattern p: one granted pattern contains p. */
bool auth_may_sub(const auth_grant_t *g, const char *p, size_t len);

/** True if g lets its holder publish to concrete topic t: one granted pattern matches t. */
bool auth_may_pub(const auth_grant_t *g, const char *t, size_t len);

/**
 * The authorization of one decoded request: GALE_OK, or GALE_ERR_FORBIDDEN
 * with *why set. A NULL grant (no authentication configured) allows all;
 * unsub and ping are always allowed.
 */
gale_err_t auth_check(const auth_grant_t *g, const gale_request_t *req, const char **why);

/** True if a[0..alen) equals b[0..blen), in time independent of where they differ. */
bool auth_secret_equal(const void *a, size_t alen, const void *b, size_t blen);

/** The cache of verified tokens, with the secret. */
typedef struct auth auth_t;

/** Creates the verifier for key[0..key_len) (copied). NULL when out of memory. */
auth_t *auth_new(const uint8_t *key, size_t key_len);

/** Frees a and every cached grant. */
void auth_free(auth_t *a);

/**
 * The grant of token[0..len) at time now: a cached one (re-checked against
 * now), or a newly verified one added to the cache. Its refs are unchanged:
 * take a reference with auth_grant_ref to keep it past the next
 * auth_cache_sweep. NULL with *why set when refused.
 */
auth_grant_t *auth_lookup(auth_t *a, const char *token, size_t len, int64_t now, const char **why);

static inline void auth_grant_ref(auth_grant_t *g)
{
    g->refs++;
}

/** Drops a reference; the grant stays cached until the next auth_cache_sweep. */
static inline void auth_grant_unref(auth_grant_t *g)
{
    if (g && g->refs)
        g->refs--;
}

/** Frees cached grants nobody references. Returns how many remain. */
size_t auth_cache_sweep(auth_t *a);

#endif
