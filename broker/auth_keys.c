/* auth_keys: key sets for token verification: the HS256 secret and the public keys of a JWKS
 * document (RFC 7517), parsed with protocol/'s JSON walk, every member checked, keys built
 * with OpenSSL 3's EVP_PKEY_fromdata. See auth.h. */
#include "auth_internal.h"

#include "gale_json.h"

#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nesting of a JWKS document: {"keys": [{..., "x5c": [...]}]} and room to spare. */
#define JSON_DEPTH 16

auth_keys_t *auth_keys_new(const uint8_t *secret, size_t len)
{
    auth_keys_t *k = calloc(1, sizeof(*k));
    if (!k)
        return NULL;
    if (len) {
        if (!(k->secret = malloc(len))) {
            free(k);
            return NULL;
        }
        memcpy(k->secret, secret, len);
        k->secret_len = len;
    }
    return k;
}

void auth_keys_free(auth_keys_t *k)
{
    if (!k)
        return;
    if (k->secret)
        OPENSSL_cleanse(k->secret, k->secret_len);
    free(k->secret);
    for (size_t i = 0; i < k->nkeys; i++)
        EVP_PKEY_free(k->keys[i].pkey);
    free(k->keys);
    free(k);
}

bool auth_keys_has_secret(const auth_keys_t *k)
{
    return k->secret != NULL;
}

size_t auth_keys_count(const auth_keys_t *k)
{
    return k->nkeys;
}

/* Appends printf-formatted text to out[0..cap) at *o; on overflow ends it with "...". */
static void __attribute__((format(printf, 4, 5)))
append(char *out, size_t cap, size_t *o, const char *fmt, ...)
{
    if (*o >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + *o, cap - *o, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *o) {
        if (cap >= 4)
            memcpy(out + cap - 4, "...", 4);
        *o = cap;
        return;
    }
    *o += (size_t)n;
}

void auth_keys_describe(const auth_keys_t *k, char *out, size_t cap)
{
    size_t o = 0;
    if (cap == 0)
        return;
    out[0] = '\0';
    if (k->secret)
        append(out, cap, &o, "HS256 secret%s", k->nkeys ? "; " : "");
    if (k->nkeys)
        append(out, cap, &o, "%zu JWKS key%s:", k->nkeys, k->nkeys == 1 ? "" : "s");
    for (size_t i = 0; i < k->nkeys; i++) {
        const pubkey_t *p = &k->keys[i];
        if (p->has_kid)
            append(out, cap, &o, "%s kid \"%s\"", i ? "," : "", p->kid);
        else
            append(out, cap, &o, "%s no kid", i ? "," : "");
        if (p->type == KEY_RSA)
            append(out, cap, &o, " RSA %u bits", p->bits);
        else
            append(out, cap, &o, " EC P-256");
    }
    if (!k->secret && !k->nkeys)
        append(out, cap, &o, "no keys");
}

void auth_keys_algs(const auth_keys_t *k, char *out, size_t cap)
{
    bool rsa = false, ec = false;
    for (size_t i = 0; i < k->nkeys; i++) {
        rsa |= k->keys[i].type == KEY_RSA;
        ec |= k->keys[i].type == KEY_EC;
    }
    size_t o = 0;
    if (cap == 0)
        return;
    out[0] = '\0';
    if (k->secret)
        append(out, cap, &o, "HS256");
    if (rsa)
        append(out, cap, &o, "%sRS256", o ? ", " : "");
    if (ec)
        append(out, cap, &o, "%sES256", o ? ", " : "");
}

/* Members of a JWK that gale reads, and those that hold private key material (RFC 7518 section
 * 6: RSA's d, p, q, dp, dq, qi, oth; EC's and OKP's d; a symmetric key's k). */
enum { M_KTY, M_KID, M_USE, M_KEY_OPS, M_ALG, M_CRV, M_N, M_E, M_X, M_Y, M_COUNT };
static const char *const jwk_names[M_COUNT] = {"kty", "kid", "use", "key_ops", "alg",
                                               "crv", "n",   "e",   "x",       "y"};
static const char *const private_names[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};

typedef struct {
    const uint8_t *val[M_COUNT];
    size_t len[M_COUNT];
    const char *name; /* the member why is about */
    const char *why;
} jwk_t;

static bool jwk_member(const gale_json_member_t *m, void *arg)
{
    jwk_t *j = arg;
    for (size_t i = 0; i < sizeof(private_names) / sizeof(private_names[0]); i++)
        if (gale_json_key_is(m, private_names[i])) {
            j->name = private_names[i];
            j->why = "private key material: a JWKS file must hold public keys only";
            return false;
        }
    for (int i = 0; i < M_COUNT; i++) {
        if (!gale_json_key_is(m, jwk_names[i]))
            continue;
        j->name = jwk_names[i];
        if (j->val[i]) {
            j->why = "duplicate member";
            return false;
        }
        if (m->kind != (i == M_KEY_OPS ? GALE_JSON_ARRAY : GALE_JSON_STRING)) {
            j->why = i == M_KEY_OPS ? "not an array of strings" : "not a string";
            return false;
        }
        j->val[i] = m->val;
        j->len[i] = m->val_len;
        return true;
    }
    return true; /* x5c, x5t, x5u and the like: not used */
}

/* Member i of j unescaped into dst[0..cap) (NUL-terminated); false if absent or it does not fit
 * (or holds a NUL or a lone surrogate). */
static bool jwk_string(const jwk_t *j, int i, char *dst, size_t cap, size_t *n)
{
    if (!j->val[i])
        return false;
    *n = gale_json_string(j->val[i], j->len[i], dst, cap);
    return *n != SIZE_MAX;
}

/* A short value of j for a message: printable ASCII, else "(...)". */
static const char *shown(const jwk_t *j, int i, char *dst, size_t cap)
{
    size_t n;
    if (!jwk_string(j, i, dst, cap, &n))
        return "(...)";
    for (size_t c = 0; c < n; c++)
        if ((unsigned char)dst[c] < 0x20 || (unsigned char)dst[c] >= 0x7f)
            return "(...)";
    return dst;
}

/* A short member of j (kty, use, alg, crv) equals lit. */
static bool jwk_is(const jwk_t *j, int i, const char *lit)
{
    char v[16];
    size_t n;
    return jwk_string(j, i, v, sizeof(v), &n) && n == strlen(lit) && memcmp(v, lit, n) == 0;
}

/* Decodes the base64url member i of j into out[0..cap). */
static bool jwk_b64(const jwk_t *j, int i, char *scratch, size_t scap, uint8_t *out, size_t cap,
                    size_t *n)
{
    size_t sl;
    return jwk_string(j, i, scratch, scap, &sl) && auth_b64url_decode(scratch, sl, out, cap, n);
}

/*
 * Makes an EVP_PKEY of `type` ("RSA", "EC") from params; NULL on failure. With check, OpenSSL's
 * public key validation too (used for EC: the point is on the curve; not for RSA, where it runs
 * a Miller-Rabin test with random bases that can accept a crafted modulus one time and refuse
 * it the next: a reload must not depend on chance).
 */
static EVP_PKEY *pkey_fromdata(const char *type, OSSL_PARAM_BLD *bld, bool check)
{
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM *params = bld ? OSSL_PARAM_BLD_to_param(bld) : NULL;
    EVP_PKEY_CTX *ctx = params ? EVP_PKEY_CTX_new_from_name(NULL, type, NULL) : NULL;
    if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    if (pkey && check) {
        EVP_PKEY_CTX *cctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!cctx || EVP_PKEY_public_check(cctx) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(cctx);
    }
    ERR_clear_error(); /* a refused key leaves nothing on the queue lws's TLS reads */
    return pkey;
}

#define N_CHARS_MAX 8192 /* base64url characters of n read (6144 bytes, 49152 bits) */
#define N_BYTES_MAX (N_CHARS_MAX / 4 * 3)

static const char rsa_size_why[] = "RSA keys of 2048 to 8192 bits only";

/* The RSA key of j into p; 1, 0 (skipped) or -1 (refused) with *why. */
static int jwk_rsa(const jwk_t *j, pubkey_t *p, char *scratch, uint8_t *bin, const char **why)
{
    uint8_t e[32];
    size_t nl, el;
    if (!j->val[M_N] || !j->val[M_E]) {
        *why = j->val[M_N] ? "no e" : "no n";
        return -1;
    }
    if (!jwk_b64(j, M_N, scratch, N_CHARS_MAX + 1, bin, N_BYTES_MAX, &nl)) {
        *why = "n: not base64url (of at most 49152 bits)";
        return -1;
    }
    if (!jwk_b64(j, M_E, scratch, N_CHARS_MAX + 1, e, sizeof(e), &el) || el == 0) {
        *why = "e: not base64url of 1 to 32 bytes";
        return -1;
    }
    const uint8_t *n = bin;
    while (nl && *n == 0) { /* leading zero octets (RFC 7518 asks for none; some add one) */
        n++;
        nl--;
    }
    unsigned bits = 0;
    if (nl) {
        bits = (unsigned)(nl - 1) * 8;
        for (unsigned top = n[0]; top; top >>= 1)
            bits++;
    }
    p->bits = bits;
    if (bits < AUTH_RSA_MIN_BITS || bits > AUTH_RSA_MAX_BITS) {
        *why = rsa_size_why;
        return 0;
    }
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int r = -1;
    if (!(n[nl - 1] & 1) || (be && (!BN_is_odd(be) || BN_is_one(be)))) {
        *why = "not an RSA public key: n and e must be odd, e above 1";
    } else if (be && BN_num_bits(be) < 17) {
        *why = "an RSA public exponent below 65537"; /* valid, weak, and no provider's */
        r = 0;
    } else if (bld && bn && be && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
               OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
               (p->pkey = pkey_fromdata("RSA", bld, false))) {
        r = 1;
    } else {
        *why = "out of memory";
    }
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    if (r != 1)
        return r;
    p->type = KEY_RSA;
    p->sig_len = (bits + 7) / 8;
    return 1;
}

/* The EC key of j into p; 1, 0 (skipped) or -1 (refused) with *why. */
static int jwk_ec(const jwk_t *j, pubkey_t *p, char *scratch, const char **why)
{
    uint8_t pt[65];
    size_t xl, yl;
    if (!j->val[M_CRV]) {
        *why = "no crv";
        return -1;
    }
    if (!jwk_is(j, M_CRV, "P-256")) {
        *why = "a curve other than P-256";
        return 0;
    }
    if (!j->val[M_X] || !j->val[M_Y]) {
        *why = j->val[M_X] ? "no y" : "no x";
        return -1;
    }
    pt[0] = 0x04; /* uncompressed: 04 || x || y */
    if (!jwk_b64(j, M_X, scratch, N_CHARS_MAX + 1, pt + 1, 32, &xl) || xl != 32 ||
        !jwk_b64(j, M_Y, scratch, N_CHARS_MAX + 1, pt + 33, 32, &yl) || yl != 32) {
        *why = "x and y must be 32 bytes of base64url each";
        return -1;
    }
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt)))
        p->pkey = pkey_fromdata("EC", bld, true);
    OSSL_PARAM_BLD_free(bld);
    if (!p->pkey) {
        *why = "(x, y) is not a point of the P-256 curve";
        return -1;
    }
    p->type = KEY_EC;
    p->bits = 256;
    p->sig_len = 64;
    return 1;
}

/* Whether the JWK j is one gale verifies with (by kty, use, key_ops, alg): 1, or 0 with *why. */
static int jwk_usable(const jwk_t *j, bool rsa, const char **why, char *v, size_t vcap)
{
    if (j->val[M_USE] && !jwk_is(j, M_USE, "sig")) {
        *why = "use is not \"sig\"";
        return 0;
    }
    if (j->val[M_KEY_OPS]) {
        size_t pos = 0, len, n;
        const uint8_t *el;
        bool verify = false;
        while (gale_json_array_next(j->val[M_KEY_OPS], j->len[M_KEY_OPS], &pos, &el, &len)) {
            if (gale_json_kind(el) != GALE_JSON_STRING) {
                *why = "key_ops: not an array of strings";
                return -1;
            }
            n = gale_json_string(el, len, v, vcap);
            verify |= n == 6 && memcmp(v, "verify", 6) == 0;
        }
        if (!verify) {
            *why = "key_ops does not list \"verify\"";
            return 0;
        }
    }
    if (j->val[M_ALG] && !jwk_is(j, M_ALG, rsa ? "RS256" : "ES256")) {
        *why = rsa ? "alg is not RS256" : "alg is not ES256";
        return 0;
    }
    return 1;
}

/* The kid of j into kid[0..cap): 1 to AUTH_KID_MAX bytes, no control characters (it is
 * logged). */
static bool kid_of(const jwk_t *j, char *kid, size_t cap)
{
    size_t n;
    bool ok = jwk_string(j, M_KID, kid, cap, &n) && n > 0;
    for (size_t c = 0; ok && c < n; c++)
        ok = (unsigned char)kid[c] >= 0x20 && kid[c] != 0x7f;
    return ok;
}

/*
 * Key number idx of a JWKS, the JSON value el[0..len): added to k (1), skipped (0: msg says
 * why) or refused (-1: msg says why).
 */
static int jwk_add(auth_keys_t *k, size_t idx, const uint8_t *el, size_t len, char *scratch,
                   uint8_t *bin, char *msg, size_t cap)
{
    jwk_t j;
    pubkey_t *p = &k->keys[k->nkeys];
    const char *why = NULL;
    char where[AUTH_KID_MAX + 48], v[24];
    int r = -1;
    memset(&j, 0, sizeof(j));
    memset(p, 0, sizeof(*p));
    snprintf(where, sizeof(where), "keys[%zu]", idx);
    if (gale_json_kind(el) != GALE_JSON_OBJECT) {
        snprintf(msg, cap, "%s: not an object", where);
        return -1;
    }
    bool whole = gale_json_object(el, len, JSON_DEPTH, jwk_member, &j) == 1;
    bool kid_ok = j.val[M_KID] && kid_of(&j, p->kid, sizeof(p->kid));
    if (kid_ok) { /* named in what follows (the walk may have stopped after it) */
        p->has_kid = true;
        snprintf(where, sizeof(where), "keys[%zu] (kid \"%s\")", idx, p->kid);
    }
    if (!whole) {
        snprintf(msg, cap, "%s: %s: %s", where, j.name ? j.name : "", j.why ? j.why : "malformed");
        return -1;
    }
    if (j.val[M_KID] && !kid_ok) {
        snprintf(msg, cap, "%s: kid: not 1 to %d bytes without control characters", where,
                 AUTH_KID_MAX);
        return -1;
    }
    if (!j.val[M_KTY]) {
        snprintf(msg, cap, "%s: no kty", where);
        return -1;
    }
    bool rsa = jwk_is(&j, M_KTY, "RSA");
    if (!rsa && !jwk_is(&j, M_KTY, "EC")) {
        snprintf(msg, cap, "%s skipped: kty \"%s\" (only RSA and EC keys are used)", where,
                 shown(&j, M_KTY, v, sizeof(v)));
        return 0;
    }
    r = jwk_usable(&j, rsa, &why, v, sizeof(v));
    if (r == 1)
        r = rsa ? jwk_rsa(&j, p, scratch, bin, &why) : jwk_ec(&j, p, scratch, &why);
    if (r == 1) {
        for (size_t i = 0; p->has_kid && i < k->nkeys; i++)
            if (k->keys[i].has_kid && strcmp(k->keys[i].kid, p->kid) == 0) {
                snprintf(msg, cap, "%s: duplicate kid", where);
                EVP_PKEY_free(p->pkey);
                p->pkey = NULL;
                return -1;
            }
        k->nkeys++;
        return 1;
    }
    if (r == 0 && why == rsa_size_why)
        snprintf(msg, cap, "%s skipped: %s (this one: %u)", where, why, p->bits);
    else if (r == 0)
        snprintf(msg, cap, "%s skipped: %s", where, why);
    else
        snprintf(msg, cap, "%s: %s", where, why);
    return r;
}

typedef struct {
    const uint8_t *keys;
    size_t len;
    gale_json_kind_t kind;
} jwks_t;

static bool jwks_member(const gale_json_member_t *m, void *arg)
{
    jwks_t *t = arg;
    if (!gale_json_key_is(m, "keys"))
        return true;
    if (t->keys)
        return false;
    t->keys = m->val;
    t->len = m->val_len;
    t->kind = m->kind;
    return true;
}

bool auth_keys_add_jwks(auth_keys_t *k, const uint8_t *json, size_t len, auth_note_fn note,
                        void *arg, char *err, size_t errcap)
{
    jwks_t t = {0};
    size_t first = k->nkeys, idx = 0, pos = 0, el_len;
    const uint8_t *el;
    char msg[AUTH_KID_MAX + 256];
    char *scratch = NULL;
    uint8_t *bin = NULL;
    bool ok = false;
    if (len > AUTH_JWKS_MAX_BYTES) {
        snprintf(err, errcap, "larger than %d bytes", AUTH_JWKS_MAX_BYTES);
        return false;
    }
    int r = gale_json_object(json, len, JSON_DEPTH, jwks_member, &t);
    if (r != 1 || !t.keys || t.kind != GALE_JSON_ARRAY) {
        snprintf(err, errcap, "%s",
                 r == 0    ? "not well-formed JSON (RFC 8259, UTF-8, nested at most 16 deep)"
                 : r == -1 ? "not a JSON object: a JWKS is {\"keys\": [...]}"
                 : r == -2 ? "duplicate \"keys\" member"
                 : !t.keys ? "no \"keys\" member: a JWKS is {\"keys\": [...]}"
                           : "\"keys\" is not an array");
        return false;
    }
    if (!k->keys && !(k->keys = calloc(AUTH_JWKS_MAX_KEYS, sizeof(*k->keys)))) {
        snprintf(err, errcap, "out of memory");
        return false;
    }
    scratch = malloc(N_CHARS_MAX + 1);
    bin = malloc(N_BYTES_MAX);
    if (!scratch || !bin) {
        snprintf(err, errcap, "out of memory");
        goto Exit;
    }
    for (; gale_json_array_next(t.keys, t.len, &pos, &el, &el_len); idx++) {
        if (idx >= AUTH_JWKS_MAX_KEYS || k->nkeys >= AUTH_JWKS_MAX_KEYS) {
            snprintf(err, errcap, "more than %d keys", AUTH_JWKS_MAX_KEYS);
            goto Exit;
        }
        r = jwk_add(k, idx, el, el_len, scratch, bin, msg, sizeof(msg));
        if (r < 0) {
            snprintf(err, errcap, "%s", msg);
            goto Exit;
        }
        if (r == 0 && note)
            note(arg, msg);
    }
    if (k->nkeys == first) {
        snprintf(err, errcap, idx ? "no usable key (%zu skipped)" : "no keys", idx);
        goto Exit;
    }
    ok = true;
Exit:
    if (!ok) { /* the set stays as it was */
        for (size_t i = first; i < k->nkeys; i++)
            EVP_PKEY_free(k->keys[i].pkey);
        k->nkeys = first;
    }
    free(scratch);
    free(bin);
    return ok;
}

/* Reads path whole into a new buffer (at most max bytes); err names it "what 'path'". */
static bool read_file(const char *what, const char *path, size_t max, uint8_t **out, size_t *n,
                      char *err, size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errcap, "%s '%s': %s", what, path, strerror(errno));
        return false;
    }
    uint8_t *buf = malloc(max + 1);
    size_t got = buf ? fread(buf, 1, max + 1, f) : 0;
    int e = ferror(f) ? errno : 0;
    fclose(f);
    if (!buf || e || got > max) {
        snprintf(err, errcap, "%s '%s': %s", what, path,
                 !buf ? "out of memory"
                 : e  ? strerror(e)
                      : "too large");
        free(buf);
        return false;
    }
    *out = buf;
    *n = got;
    return true;
}

typedef struct {
    auth_note_fn note;
    void *arg;
    const char *path;
} note_prefix_t;

static void note_with_path(void *arg, const char *msg)
{
    note_prefix_t *np = arg;
    char line[4096 + AUTH_KID_MAX + 256];
    snprintf(line, sizeof(line), "JWKS '%s': %s", np->path, msg);
    np->note(np->arg, line);
}

auth_keys_t *auth_keys_load(const uint8_t *secret, size_t secret_len, const char *secret_file,
                            const char *jwks_file, auth_note_fn note, void *arg, char *err,
                            size_t errcap)
{
    uint8_t sbuf[1024], *json = NULL;
    size_t jlen = 0;
    auth_keys_t *k = NULL;
    if (secret_file && secret_file[0]) { /* as config.c reads --jwt-secret-file */
        uint8_t *data;
        size_t n;
        if (!read_file("secret file", secret_file, sizeof(sbuf), &data, &n, err, errcap))
            return NULL;
        memcpy(sbuf, data, n);
        OPENSSL_cleanse(data, n);
        free(data);
        if (n > 0 && sbuf[n - 1] == '\n')
            n--;
        if (n > 0 && sbuf[n - 1] == '\r')
            n--;
        if (n == 0 || n >= sizeof(sbuf)) {
            snprintf(err, errcap, "secret file '%s': the secret must be 1 to %zu bytes",
                     secret_file, sizeof(sbuf) - 1);
            goto Exit;
        }
        secret = sbuf;
        secret_len = n;
    }
    if (!(k = auth_keys_new(secret, secret_len))) {
        snprintf(err, errcap, "out of memory");
        goto Exit;
    }
    if (jwks_file && jwks_file[0]) {
        note_prefix_t np = {note, arg, jwks_file};
        char why[AUTH_KID_MAX + 256];
        if (!read_file("JWKS", jwks_file, AUTH_JWKS_MAX_BYTES, &json, &jlen, err, errcap))
            goto Fail;
        if (!auth_keys_add_jwks(k, json, jlen, note ? note_with_path : NULL, &np, why,
                                sizeof(why))) {
            snprintf(err, errcap, "JWKS '%s': %s", jwks_file, why);
            goto Fail;
        }
    }
    if (!k->secret && !k->nkeys) {
        snprintf(err, errcap, "no keys: neither an HS256 secret nor a JWKS");
        goto Fail;
    }
    goto Exit;
Fail:
    auth_keys_free(k);
    k = NULL;
Exit:
    OPENSSL_cleanse(sbuf, sizeof(sbuf));
    free(json);
    return k;
}
