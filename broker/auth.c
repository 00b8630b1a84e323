/* auth: key sets (HS256 secret, JWKS), JWT verification (HS256, RS256, ES256), claims, topic
 * permissions, the grant cache. See auth.h. */
#include "auth_internal.h"

#include "gale_json.h"

#include <math.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

/* Decoded JOSE header and claims are bounded by the token's length. */
#define JSON_DEPTH 16

/* --- base64url ------------------------------------------------------------ */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

bool auth_b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap, size_t *outlen)
{
    if (n % 4 == 1)
        return false;
    size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (need > cap)
        return false;
    uint32_t acc = 0;
    size_t bits = 0, o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)in[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* non-canonical: the unused trailing bits must be zero */
        return false;
    *outlen = o;
    return true;
}

/* --- claims --------------------------------------------------------------- */

typedef struct {
    const uint8_t *exp, *nbf, *sub, *gale;
    size_t exp_len, nbf_len, sub_len, gale_len;
    gale_json_kind_t exp_kind, nbf_kind, sub_kind, gale_kind;
    const char *why;
} claims_t;

static bool take(const gale_json_member_t *m, const uint8_t **v, size_t *vl, gale_json_kind_t *k,
                 claims_t *c)
{
    if (*v) {
        c->why = "duplicate claim";
        return false;
    }
    *v = m->val;
    *vl = m->val_len;
    *k = m->kind;
    return true;
}

static bool claim_member(const gale_json_member_t *m, void *arg)
{
    claims_t *c = arg;
    if (gale_json_key_is(m, "exp"))
        return take(m, &c->exp, &c->exp_len, &c->exp_kind, c);
    if (gale_json_key_is(m, "nbf"))
        return take(m, &c->nbf, &c->nbf_len, &c->nbf_kind, c);
    if (gale_json_key_is(m, "sub"))
        return take(m, &c->sub, &c->sub_len, &c->sub_kind, c);
    if (gale_json_key_is(m, "gale"))
        return take(m, &c->gale, &c->gale_len, &c->gale_kind, c);
    return true;
}

typedef struct {
    const uint8_t *sub, *pub, *info;
    size_t sub_len, pub_len, info_len;
    const char *why;
} gale_claim_t;

static bool gale_member(const gale_json_member_t *m, void *arg)
{
    gale_claim_t *g = arg;
    const uint8_t **v = NULL;
    size_t *vl = NULL;
    if (gale_json_key_is(m, "sub")) {
        v = &g->sub;
        vl = &g->sub_len;
    } else if (gale_json_key_is(m, "pub")) {
        v = &g->pub;
        vl = &g->pub_len;
    } else if (gale_json_key_is(m, "info")) {
        v = &g->info;
        vl = &g->info_len;
    } else {
        return true;
    }
    if (*v) {
        g->why = "duplicate key in the gale claim";
        return false;
    }
    if (v == &g->info) {
        if (m->kind != GALE_JSON_OBJECT) {
            g->why = "gale.info must be an object";
            return false;
        }
    } else if (m->kind != GALE_JSON_ARRAY) {
        g->why = "gale.sub and gale.pub must be arrays of patterns";
        return false;
    }
    *v = m->val;
    *vl = m->val_len;
    return true;
}

/* A NumericDate, rounded up to whole seconds and clamped to int64. */
static bool numeric_date(const uint8_t *v, size_t len, int64_t *out)
{
    char tmp[64];
    if (len == 0 || len >= sizeof(tmp))
        return false;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    char *end;
    double d = strtod(tmp, &end);
    if (*end || !isfinite(d))
        return false;
    d = ceil(d);
    if (d >= 9.2e18)
        *out = INT64_MAX - 1;
    else if (d <= -9.2e18)
        *out = INT64_MIN + 1;
    else
        *out = (int64_t)d;
    return true;
}

/* The user id may stand for {sub}: a valid concrete topic of one segment. */
static bool user_is_segment(const char *u, size_t n)
{
    return n > 0 && memchr(u, '.', n) == NULL && gale_topic_valid(u, n);
}

/* Expands {sub} in pattern p and validates it; NULL when dropped. */
static char *expand(const char *p, size_t plen, const char *user, size_t ulen, bool user_ok)
{
    char out[GALE_TOPIC_MAX + 1];
    size_t o = 0;
    for (size_t i = 0; i < plen;) {
        if (plen - i >= 5 && memcmp(p + i, "{sub}", 5) == 0) {
            if (!user_ok || ulen > GALE_TOPIC_MAX - o)
                return NULL;
            memcpy(out + o, user, ulen);
            o += ulen;
            i += 5;
            continue;
        }
        if (o >= GALE_TOPIC_MAX)
            return NULL;
        out[o++] = p[i++];
    }
    if (!gale_pattern_valid(out, o, NULL))
        return NULL;
    char *r = malloc(o + 1);
    if (r) {
        memcpy(r, out, o);
        r[o] = '\0';
    }
    return r;
}

/* Fills *list and *n from the array arr (NULL: none). False (with *why) when malformed. */
static bool pattern_list(const uint8_t *arr, size_t len, const char *user, size_t ulen,
                         bool user_ok, const char ***list, uint32_t *n, const char **why)
{
    size_t pos = 0, el_len;
    const uint8_t *el;
    char tmp[4 * GALE_TOPIC_MAX + 1];
    *list = NULL;
    *n = 0;
    if (!arr)
        return true;
    const char **l = calloc(AUTH_MAX_PATTERNS, sizeof(*l));
    if (!l) {
        *why = "out of memory";
        return false;
    }
    *list = l;
    while (gale_json_array_next(arr, len, &pos, &el, &el_len)) {
        if (gale_json_kind(el) != GALE_JSON_STRING) {
            *why = "gale.sub and gale.pub must be arrays of strings";
            return false;
        }
        if (*n >= AUTH_MAX_PATTERNS) {
            *why = "too many patterns in the gale claim";
            return false;
        }
        size_t m = gale_json_string(el, el_len, tmp, sizeof(tmp));
        if (m == SIZE_MAX)
            continue; /* too long or not a string gale accepts: cannot be a valid pattern */
        char *p = expand(tmp, m, user, ulen, user_ok);
        if (p)
            l[(*n)++] = p;
    }
    return true;
}

void auth_grant_free(auth_grant_t *g)
{
    if (!g)
        return;
    for (uint32_t i = 0; g->sub && i < g->nsub; i++)
        free((char *)g->sub[i]);
    for (uint32_t i = 0; g->pub && i < g->npub; i++)
        free((char *)g->pub[i]);
    free(g->sub);
    free(g->pub);
    free(g->user);
    free(g->info);
    free(g->token);
    free(g);
}

bool auth_grant_current(const auth_grant_t *g, int64_t now)
{
    return now < g->exp && now >= g->nbf;
}

auth_grant_t *auth_claims_parse(const uint8_t *json, size_t len, int64_t now, const char **why)
{
    claims_t c;
    memset(&c, 0, sizeof(c));
    int r = gale_json_object(json, len, JSON_DEPTH, claim_member, &c);
    if (r != 1) {
        *why = r == -2 ? c.why : "the claims are not a JSON object";
        return NULL;
    }
    auth_grant_t *g = calloc(1, sizeof(*g));
    if (!g) {
        *why = "out of memory";
        return NULL;
    }
    g->exp = AUTH_NO_TIME;
    g->nbf = INT64_MIN;
    if (c.exp && (c.exp_kind != GALE_JSON_NUMBER || !numeric_date(c.exp, c.exp_len, &g->exp))) {
        *why = "exp is not a number";
        goto Fail;
    }
    if (c.nbf && (c.nbf_kind != GALE_JSON_NUMBER || !numeric_date(c.nbf, c.nbf_len, &g->nbf))) {
        *why = "nbf is not a number";
        goto Fail;
    }
    char user[GALE_TOPIC_MAX + 1] = "";
    size_t ulen = 0;
    if (c.sub) {
        if (c.sub_kind != GALE_JSON_STRING ||
            (ulen = gale_json_string(c.sub, c.sub_len, user, sizeof(user))) == SIZE_MAX) {
            *why = "sub is not a string of at most 255 bytes";
            goto Fail;
        }
        for (size_t i = 0; i < ulen; i++)
            if ((unsigned char)user[i] < 0x20 || user[i] == 0x7f) {
                *why = "sub has control characters";
                goto Fail;
            }
    }
    if (!(g->user = malloc(ulen + 1))) {
        *why = "out of memory";
        goto Fail;
    }
    memcpy(g->user, user, ulen + 1);
    if (c.gale) {
        gale_claim_t gc;
        memset(&gc, 0, sizeof(gc));
        if (c.gale_kind != GALE_JSON_OBJECT) {
            *why = "the gale claim is not an object";
            goto Fail;
        }
        if (gale_json_object(c.gale, c.gale_len, JSON_DEPTH, gale_member, &gc) != 1) {
            *why = gc.why ? gc.why : "the gale claim is not an object";
            goto Fail;
        }
        bool user_ok = user_is_segment(user, ulen);
        if (!pattern_list(gc.sub, gc.sub_len, user, ulen, user_ok, &g->sub, &g->nsub, why) ||
            !pattern_list(gc.pub, gc.pub_len, user, ulen, user_ok, &g->pub, &g->npub, why))
            goto Fail;
        if (gc.info) { /* presence's member info, kept as the token wrote it */
            if (!(g->info = malloc(gc.info_len))) {
                *why = "out of memory";
                goto Fail;
            }
            memcpy(g->info, gc.info, gc.info_len);
            g->info_len = gc.info_len;
        }
    }
    if (now >= g->exp) {
        *why = "the token has expired";
        goto Fail;
    }
    if (now < g->nbf) {
        *why = "the token is not valid yet (nbf)";
        goto Fail;
    }
    return g;
Fail:
    auth_grant_free(g);
    return NULL;
}

/* --- the JWT ---------------------------------------------------------------- */

enum { ALG_ABSENT, ALG_HS256, ALG_RS256, ALG_ES256, ALG_NONE, ALG_OTHER };

typedef struct {
    int alg;
    const uint8_t *kid; /* the kid value (a JSON string); NULL: none */
    size_t kid_len;
    bool crit;
    const char *why; /* why the walk stopped */
} header_t;

/* The alg value v[0..n) (a JSON string, quotes included), compared as written: no escapes. */
static int alg_of(const uint8_t *v, size_t n, gale_json_kind_t kind)
{
    static const struct {
        const char *lit;
        int alg;
    } algs[] = {{"\"HS256\"", ALG_HS256},
                {"\"RS256\"", ALG_RS256},
                {"\"ES256\"", ALG_ES256},
                {"\"none\"", ALG_NONE}};
    for (size_t i = 0; kind == GALE_JSON_STRING && i < sizeof(algs) / sizeof(algs[0]); i++)
        if (n == strlen(algs[i].lit) && memcmp(v, algs[i].lit, n) == 0)
            return algs[i].alg;
    return ALG_OTHER;
}

static bool header_member(const gale_json_member_t *m, void *arg)
{
    header_t *h = arg;
    if (gale_json_key_is(m, "alg")) {
        if (h->alg) {
            h->why = "duplicate alg";
            return false;
        }
        h->alg = alg_of(m->val, m->val_len, m->kind);
    } else if (gale_json_key_is(m, "kid")) {
        if (h->kid) {
            h->why = "duplicate kid";
            return false;
        }
        if (m->kind != GALE_JSON_STRING) {
            h->why = "the kid is not a string";
            return false;
        }
        h->kid = m->val;
        h->kid_len = m->val_len;
    } else if (gale_json_key_is(m, "crit")) {
        h->crit = true;
    }
    return true;
}

/* The JWKS key that verifies an RS256 or ES256 token with this kid (NULL: none), or NULL with
 * *why. */
static const pubkey_t *select_key(const auth_keys_t *k, int alg, const char *kid, const char **why)
{
    const pubkey_t *p = NULL;
    if (k->nkeys == 0) {
        *why = "RS256 and ES256 tokens are not accepted: no JWKS keys are configured";
        return NULL;
    }
    if (kid) {
        for (size_t i = 0; i < k->nkeys && !p; i++)
            if (k->keys[i].has_kid && strcmp(k->keys[i].kid, kid) == 0)
                p = &k->keys[i];
        if (!p) {
            *why = "unknown kid: no key of the JWKS has it";
            return NULL;
        }
    } else if (k->nkeys == 1) {
        p = &k->keys[0];
    } else {
        *why = "the token has no kid and the JWKS holds several keys";
        return NULL;
    }
    if (p->type != (alg == ALG_RS256 ? KEY_RSA : KEY_EC)) {
        *why = alg == ALG_RS256 ? "alg RS256 does not fit the key: it is an EC key"
                                : "alg ES256 does not fit the key: it is an RSA key";
        return NULL;
    }
    return p;
}

static bool digest_verify(EVP_PKEY *pkey, const uint8_t *data, size_t n, const uint8_t *sig,
                          size_t sig_len)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
              EVP_DigestVerify(ctx, sig, sig_len, data, n) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

/* ES256: JWS's r || s (RFC 7518 section 3.4), as the DER ECDSA-Sig-Value OpenSSL verifies. */
static bool verify_es256(EVP_PKEY *pkey, const uint8_t *data, size_t n, const uint8_t *sig)
{
    bool ok = false;
    unsigned char *der = NULL;
    int der_len = -1;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* es owns them */
        der_len = i2d_ECDSA_SIG(es, &der);
    }
    if (der_len > 0)
        ok = digest_verify(pkey, data, n, der, (size_t)der_len);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    BN_free(r);
    BN_free(s);
    return ok;
}

/* The signature sig[0..sig_len) of data[0..n) checked with the header's algorithm and key. */
static bool signature_ok(const auth_keys_t *k, int alg, const pubkey_t *p, const uint8_t *data,
                         size_t n, const uint8_t *sig, size_t sig_len, const char **why)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    bool ok;
    switch (alg) {
    case ALG_HS256:
        if (sig_len != 32) {
            *why = "the signature is not an HS256 signature (32 bytes)";
            return false;
        }
        ok = HMAC(EVP_sha256(), k->secret, (int)k->secret_len, data, n, mac, &mac_len) &&
             mac_len == 32 && CRYPTO_memcmp(mac, sig, 32) == 0;
        OPENSSL_cleanse(mac, sizeof(mac));
        break;
    case ALG_ES256:
        if (sig_len != 64) {
            *why = "the signature is not an ES256 signature (r||s, 64 bytes)";
            return false;
        }
        ok = verify_es256(p->pkey, data, n, sig);
        break;
    default: /* ALG_RS256 */
        if (sig_len != p->sig_len) {
            *why = "the signature is not an RS256 signature of the key's size";
            return false;
        }
        ok = digest_verify(p->pkey, data, n, sig, sig_len);
        break;
    }
    ERR_clear_error(); /* a failed check leaves nothing on the queue lws's TLS reads */
    if (!ok)
        *why = "bad signature";
    return ok;
}

/* Why alg (not a usable one, or without its key) is refused; NULL when it is usable. */
static const char *alg_refused(const auth_keys_t *k, int alg)
{
    switch (alg) {
    case ALG_ABSENT:
        return "the header has no alg";
    case ALG_NONE:
        return "alg none is refused: tokens must be signed";
    case ALG_OTHER:
        return "the algorithm must be HS256, RS256 or ES256";
    case ALG_HS256:
        return k->secret ? NULL : "HS256 tokens are not accepted: no HS256 secret is configured";
    default:
        return NULL;
    }
}

auth_grant_t *auth_verify_keys(const auth_keys_t *k, const char *token, size_t len, int64_t now,
                               const char **why)
{
    if (len == 0 || len > AUTH_TOKEN_MAX) {
        *why = len ? "the token is too long" : "no token";
        return NULL;
    }
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) || d1 == token || d2 == d1 + 1 ||
        d2 + 1 == token + len) {
        *why = "the token is not three non-empty base64url segments";
        return NULL;
    }
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    size_t slen = len - (size_t)(d2 + 1 - token);
    uint8_t *buf = malloc(len);
    if (!buf) {
        *why = "out of memory";
        return NULL;
    }
    size_t n, sig_len;
    header_t h = {0};
    auth_grant_t *g = NULL;
    const pubkey_t *p = NULL;
    char kid[AUTH_KID_MAX + 1];
    uint8_t sig[AUTH_RSA_MAX_BITS / 8];

    /* The header says which algorithm and key; the claims are read only once the signature
     * over both is found authentic. */
    if (!auth_b64url_decode(token, hlen, buf, len, &n) ||
        gale_json_object(buf, n, JSON_DEPTH, header_member, &h) != 1) {
        *why = h.why ? h.why : "the header is not a base64url JSON object";
        goto Exit;
    }
    if (h.crit) {
        *why = "crit header not supported";
        goto Exit;
    }
    if ((*why = alg_refused(k, h.alg)))
        goto Exit;
    if (h.kid && gale_json_string(h.kid, h.kid_len, kid, sizeof(kid)) == SIZE_MAX) {
        *why = "the kid is not a string of at most 255 bytes";
        goto Exit;
    }
    if (h.alg != ALG_HS256 && !(p = select_key(k, h.alg, h.kid ? kid : NULL, why)))
        goto Exit;
    if (!auth_b64url_decode(d2 + 1, slen, sig, sizeof(sig), &sig_len)) {
        *why = "the signature is not base64url of at most 1024 bytes";
        goto Exit;
    }
    if (!signature_ok(k, h.alg, p, (const uint8_t *)token, (size_t)(d2 - token), sig, sig_len, why))
        goto Exit;
    if (!auth_b64url_decode(d1 + 1, plen, buf, len, &n)) {
        *why = "the claims are not base64url";
        goto Exit;
    }
    g = auth_claims_parse(buf, n, now, why);
    if (g && !(g->token = malloc(len + 1))) {
        *why = "out of memory";
        auth_grant_free(g);
        g = NULL;
    }
    if (g) {
        memcpy(g->token, token, len);
        g->token[len] = '\0';
        g->token_len = len;
    }
Exit:
    free(buf);
    return g;
}

auth_grant_t *auth_verify(const uint8_t *key, size_t key_len, const char *token, size_t len,
                          int64_t now, const char **why)
{
    auth_keys_t k = {.secret = (uint8_t *)key, .secret_len = key_len};
    if (!key_len) {
        *why = "HS256 tokens are not accepted: no HS256 secret is configured";
        return NULL;
    }
    return auth_verify_keys(&k, token, len, now, why);
}

/* --- permissions ------------------------------------------------------------ */

/* The next segment of s[0..n) from *pos: its start and length; false at the end. */
static bool next_seg(const char *s, size_t n, size_t *pos, const char **seg, size_t *len)
{
    if (*pos > n)
        return false;
    const char *dot = memchr(s + *pos, '.', n - *pos);
    size_t end = dot ? (size_t)(dot - s) : n;
    *seg = s + *pos;
    *len = end - *pos;
    *pos = end + 1;
    return true;
}

static bool is_wild(const char *seg, size_t len, char w)
{
    return len == 1 && seg[0] == w;
}

bool auth_pattern_contains(const char *g, size_t glen, const char *p, size_t plen)
{
    size_t gi = 0, pi = 0, gl, pl;
    const char *gs, *ps;
    for (;;) {
        bool gmore = next_seg(g, glen, &gi, &gs, &gl);
        bool pmore = next_seg(p, plen, &pi, &ps, &pl);
        if (!gmore) /* g ends: p must end too */
            return !pmore;
        if (is_wild(gs, gl, '>')) /* g takes one or more segments: p must have one left */
            return pmore;
        if (!pmore) /* g needs more segments than p's topics have */
            return false;
        if (is_wild(ps, pl, '>')) /* p takes any number of segments, g a fixed one here */
            return false;
        if (is_wild(gs, gl, '*'))
            continue; /* any single segment of p (a literal or `*`) */
        if (is_wild(ps, pl, '*') || gl != pl || memcmp(gs, ps, gl) != 0)
            return false;
    }
}

bool auth_may_sub(const auth_grant_t *g, const char *p, size_t len)
{
    for (uint32_t i = 0; i < g->nsub; i++)
        if (auth_pattern_contains(g->sub[i], strlen(g->sub[i]), p, len))
            return true;
    return false;
}

bool auth_may_pub(const auth_grant_t *g, const char *t, size_t len)
{
    for (uint32_t i = 0; i < g->npub; i++)
        if (gale_pattern_match(g->pub[i], strlen(g->pub[i]), t, len))
            return true;
    return false;
}

gale_err_t auth_check(const auth_grant_t *g, const gale_request_t *req, const char **why)
{
    if (!g)
        return GALE_OK;
    if (req->op == GALE_OP_SUB && !auth_may_sub(g, req->topic, req->topic_len)) {
        *why = "the token does not allow subscribing to this pattern";
        return GALE_ERR_FORBIDDEN;
    }
    if (req->op == GALE_OP_HIST && !auth_may_sub(g, req->topic, req->topic_len)) {
        *why = "the token does not allow subscribing to this topic (needed to read its history)";
        return GALE_ERR_FORBIDDEN;
    }
    if (req->op == GALE_OP_PRESENCE && !auth_may_sub(g, req->topic, req->topic_len)) {
        *why = "the token does not allow subscribing to this topic (needed to see its presence)";
        return GALE_ERR_FORBIDDEN;
    }
    if (req->op == GALE_OP_SUB && req->info) {
        *why = "a member's info comes from the token's gale.info claim";
        return GALE_ERR_FORBIDDEN;
    }
    if (req->op == GALE_OP_PUB && !auth_may_pub(g, req->topic, req->topic_len)) {
        *why = "the token does not allow publishing to this topic";
        return GALE_ERR_FORBIDDEN;
    }
    return GALE_OK;
}

bool auth_secret_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    uint8_t da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
    SHA256(a, alen, da);
    SHA256(b, blen, db);
    /* Equal digests of equal length: both compared without an early exit. */
    return (CRYPTO_memcmp(da, db, sizeof(da)) | (alen != blen)) == 0;
}

/* --- the cache -------------------------------------------------------------- */

struct auth {
    auth_keys_t *keys;
    uint64_t seed; /* keys the hash: bucket placement reveals nothing about tokens */
    auth_grant_t **buckets;
    size_t nbuckets, count;
    auth_grant_t *retired; /* out of the cache since the keys changed, still held (hnext) */
    size_t nretired;
};

static uint64_t token_hash(const auth_t *a, const char *t, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ a->seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)t[i];
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 32);
}

auth_t *auth_new(const uint8_t *key, size_t key_len)
{
    auth_keys_t *k = auth_keys_new(key, key_len);
    return k ? auth_new_keys(k) : NULL;
}

auth_t *auth_new_keys(auth_keys_t *k)
{
    auth_t *a = calloc(1, sizeof(*a));
    if (!a) {
        auth_keys_free(k);
        return NULL;
    }
    a->keys = k;
    a->nbuckets = 64;
    a->buckets = calloc(a->nbuckets, sizeof(*a->buckets));
    if (!a->buckets) {
        auth_free(a);
        return NULL;
    }
    if (RAND_bytes((unsigned char *)&a->seed, sizeof(a->seed)) != 1)
        a->seed = (uint64_t)(uintptr_t)a * 0x9e3779b97f4a7c15ULL;
    return a;
}

static void free_chain(auth_grant_t *g)
{
    for (auth_grant_t *next; g; g = next) {
        next = g->hnext;
        auth_grant_free(g);
    }
}

void auth_free(auth_t *a)
{
    if (!a)
        return;
    for (size_t i = 0; a->buckets && i < a->nbuckets; i++)
        free_chain(a->buckets[i]);
    free_chain(a->retired);
    auth_keys_free(a->keys);
    free(a->buckets);
    free(a);
}

const auth_keys_t *auth_get_keys(const auth_t *a)
{
    return a->keys;
}

void auth_set_keys(auth_t *a, auth_keys_t *k)
{
    auth_keys_free(a->keys);
    a->keys = k;
    for (size_t i = 0; i < a->nbuckets; i++) {
        for (auth_grant_t *g = a->buckets[i], *next; g; g = next) {
            next = g->hnext;
            if (g->refs == 0) {
                auth_grant_free(g);
                continue;
            }
            g->hnext = a->retired; /* its connections keep it; no new one finds it */
            a->retired = g;
            a->nretired++;
        }
        a->buckets[i] = NULL;
    }
    a->count = 0;
}

bool auth_reload(auth_t *a, const char *secret_file, const char *jwks_file, auth_note_fn note,
                 void *arg, char *err, size_t errcap)
{
    auth_keys_t *k = auth_keys_load(a->keys->secret, a->keys->secret_len, secret_file, jwks_file,
                                    note, arg, err, errcap);
    if (!k)
        return false;
    auth_set_keys(a, k);
    return true;
}

static void cache_grow(auth_t *a)
{
    size_t n = a->nbuckets * 2;
    auth_grant_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return;
    for (size_t i = 0; i < a->nbuckets; i++) {
        auth_grant_t *g = a->buckets[i], *next;
        for (; g; g = next) {
            next = g->hnext;
            g->hnext = nb[g->hash & (n - 1)];
            nb[g->hash & (n - 1)] = g;
        }
    }
    free(a->buckets);
    a->buckets = nb;
    a->nbuckets = n;
}

auth_grant_t *auth_lookup(auth_t *a, const char *token, size_t len, int64_t now, const char **why)
{
    uint64_t h = token_hash(a, token, len);
    for (auth_grant_t *g = a->buckets[h & (a->nbuckets - 1)]; g; g = g->hnext) {
        if (g->hash != h || g->token_len != len || CRYPTO_memcmp(g->token, token, len) != 0)
            continue;
        if (auth_grant_current(g, now))
            return g;
        *why = now >= g->exp ? "the token has expired" : "the token is not valid yet (nbf)";
        return NULL;
    }
    auth_grant_t *g = auth_verify_keys(a->keys, token, len, now, why);
    if (!g)
        return NULL;
    if (a->count >= a->nbuckets)
        cache_grow(a);
    g->hash = h;
    g->hnext = a->buckets[h & (a->nbuckets - 1)];
    a->buckets[h & (a->nbuckets - 1)] = g;
    a->count++;
    return g;
}

/* Frees the grants of the chain *pp nobody holds; returns how many were freed. */
static size_t sweep_chain(auth_grant_t **pp)
{
    size_t freed = 0;
    while (*pp) {
        auth_grant_t *g = *pp;
        if (g->refs == 0) {
            *pp = g->hnext;
            auth_grant_free(g);
            freed++;
        } else {
            pp = &g->hnext;
        }
    }
    return freed;
}

size_t auth_cache_sweep(auth_t *a)
{
    for (size_t i = 0; i < a->nbuckets; i++)
        a->count -= sweep_chain(&a->buckets[i]);
    a->nretired -= sweep_chain(&a->retired);
    return a->count + a->nretired;
}
