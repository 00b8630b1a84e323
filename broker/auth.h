/*
 * auth: who may connect, subscribe and publish. Pure code (OpenSSL's HMAC,
 * RSA and ECDSA; protocol/ for JSON and topics; no sockets, no event loop, no
 * logging: what is worth logging goes back to the caller; files are read only
 * by auth_keys_load and auth_reload), so that unit tests and the fuzz targets
 * drive it directly. Key sets live in auth_keys.c, verification in auth.c.
 *
 * Tokens are JWTs (RFC 7519, JWS compact form) verified with a key set
 * (auth_keys_t): an HMAC secret for HS256 and the public keys of a JWKS
 * document (RFC 7517) for RS256 (RSASSA-PKCS1-v1_5 SHA-256, RSA keys of 2048
 * to 8192 bits) and ES256 (ECDSA P-256 SHA-256, the signature r||s in 64
 * bytes). The header's "alg" must be exactly one of these three and must fit
 * the key: HS256 only ever uses the secret (never a public key's bytes: the
 * algorithm confusion attack), RS256 an RSA key, ES256 an EC key. The
 * header's "kid" names the JWKS key; without one, the JWKS must hold exactly
 * one key. "none", every other algorithm, a "crit" header, duplicate "alg"
 * or "kid" headers are refused; "jku", "jwk", "x5u", "x5c" headers are
 * ignored (keys come from the configuration only). Segments are strict
 * base64url (RFC 4648 section 5: no padding, no whitespace, canonical
 * trailing bits). An HS256 MAC is compared in constant time (CRYPTO_memcmp).
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
 * connection presenting the same token through auth_t's cache. Replacing the
 * keys (auth_set_keys, auth_reload: SIGHUP) empties the cache: grants held by
 * connections stay theirs, new handshakes are verified with the new keys.
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
/** Most keys (usable or not) one JWKS document may list. */
#define AUTH_JWKS_MAX_KEYS 64
/** Largest JWKS file read (bytes). */
#define AUTH_JWKS_MAX_BYTES (1024 * 1024)
/** Longest key id ("kid") accepted, in bytes. */
#define AUTH_KID_MAX 255
/** RSA moduli accepted, in bits. */
#define AUTH_RSA_MIN_BITS 2048
#define AUTH_RSA_MAX_BITS 8192

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

/* --- key sets ------------------------------------------------------------------ */

/**
 * A set of verification keys: the HS256 secret (optional) and the public keys
 * of a JWKS document (RSA, EC P-256). Immutable once built; an auth_t holds
 * one at a time.
 */
typedef struct auth_keys auth_keys_t;

/** Receives a line worth logging (a JWKS key skipped, and why). */
typedef void (*auth_note_fn)(void *arg, const char *msg);

/** A key set with the HS256 secret[0..len) (copied; len 0: none) and no public keys. NULL when
 * out of memory. */
auth_keys_t *auth_keys_new(const uint8_t *secret, size_t len);

/** Frees k (the secret is wiped first). NULL is ignored. */
void auth_keys_free(auth_keys_t *k);

/**
 * Adds the keys of the JWKS document json[0..len) to k: {"keys": [JWK, ...]},
 * at most AUTH_JWKS_MAX_KEYS of them. Usable: kty "RSA" (n, e; 2048 to 8192
 * bits) and kty "EC" with crv "P-256" (x, y: 32 bytes each, a point on the
 * curve), with optional kid (unique among the usable keys), use (must be
 * "sig"), key_ops (must list "verify"), alg (must be RS256 for RSA, ES256 for
 * EC). Other keys (another kty or crv, use other than "sig", key_ops without
 * "verify", another alg, an RSA size out of range, an RSA exponent below
 * 65537) are skipped, each reported through note (may be NULL).
 * Refused (false, k unchanged, err filled with which key and why): malformed
 * JSON, a member of the wrong type, a duplicate member, a malformed value,
 * private key material in any key ("d", "p", "q", "dp", "dq", "qi", "oth",
 * "k"), a duplicate kid, too many keys, no usable key.
 */
bool auth_keys_add_jwks(auth_keys_t *k, const uint8_t *json, size_t len, auth_note_fn note,
                        void *arg, char *err, size_t errcap);

/**
 * Builds a key set from the configuration's sources: the HS256 secret read
 * from secret_file (as --jwt-secret-file reads it: one trailing newline
 * dropped, 1 to 1023 bytes) when secret_file is non-empty, else
 * secret[0..secret_len) (len 0: none); the JWKS read from jwks_file (at most
 * AUTH_JWKS_MAX_BYTES) when non-empty. NULL with err filled when a file
 * cannot be read, the JWKS is refused, or no key at all results.
 */
auth_keys_t *auth_keys_load(const uint8_t *secret, size_t secret_len, const char *secret_file,
                            const char *jwks_file, auth_note_fn note, void *arg, char *err,
                            size_t errcap);

/** True if k holds an HS256 secret. */
bool auth_keys_has_secret(const auth_keys_t *k);

/** Number of public (JWKS) keys in k. */
size_t auth_keys_count(const auth_keys_t *k);

/**
 * Describes k for the log into out[0..cap) (NUL-terminated, truncated with
 * "..." if need be), e.g. `HS256 secret; 2 JWKS keys: kid "a" RSA 2048 bits,
 * kid "b" EC P-256`. Kids hold no control characters.
 */
void auth_keys_describe(const auth_keys_t *k, char *out, size_t cap);

/** The algorithms k verifies, e.g. "HS256, RS256, ES256", into out[0..cap). */
void auth_keys_algs(const auth_keys_t *k, char *out, size_t cap);

/**
 * Verifies token[0..len) with key set k at time now: the full JWT check,
 * then auth_claims_parse. Returns a new grant (refs 0, token copied) or NULL
 * with *why set to a static string saying why.
 */
auth_grant_t *auth_verify_keys(const auth_keys_t *k, const char *token, size_t len, int64_t now,
                               const char **why);

/** auth_verify_keys with a key set of the HS256 secret key[0..key_len) alone. */
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

/** The cache of verified tokens, with the key set they are verified with. */
typedef struct auth auth_t;

/** Creates the verifier for the HS256 secret key[0..key_len) (copied). NULL when out of
 * memory. */
auth_t *auth_new(const uint8_t *key, size_t key_len);

/** Creates the verifier for key set k, which it takes over (freed here on failure). NULL when
 * out of memory. */
auth_t *auth_new_keys(auth_keys_t *k);

/** Frees a, its keys and every grant it made (cached or retired). */
void auth_free(auth_t *a);

/** The key set a verifies with. */
const auth_keys_t *auth_get_keys(const auth_t *a);

/**
 * Replaces a's key set with k (taken over; the previous one is freed) and
 * empties the cache: grants nobody holds are freed, grants connections hold
 * stay valid for them (freed by auth_cache_sweep once released), and every
 * token presented from now on is verified with k.
 */
void auth_set_keys(auth_t *a, auth_keys_t *k);

/**
 * Reloads a's keys from their files (SIGHUP): auth_keys_load with
 * secret_file and jwks_file, the current secret kept when secret_file is
 * empty, then auth_set_keys. On failure returns false with err filled and a
 * keeps its keys and cache.
 */
bool auth_reload(auth_t *a, const char *secret_file, const char *jwks_file, auth_note_fn note,
                 void *arg, char *err, size_t errcap);

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

/** Frees grants nobody references (cached, or retired by auth_set_keys). Returns how many
 * remain. */
size_t auth_cache_sweep(auth_t *a);

#endif
