/*
 * Fuzzes token verification (broker/auth.c). The first byte picks a mode:
 *   even: the rest is a token, verified with a fixed HS256 key and with a key
 *         set of that secret and a JWKS of one RSA and one EC key (forgeries
 *         must fail; base64url decoding must be canonical: what decodes
 *         re-encodes to the same text);
 *   odd:  the rest is "header\0claims" (or claims with a standard header),
 *         signed here, so that header and claims parsing are reached through
 *         every algorithm. Bits 2-3 pick the signer: HS256 with the secret,
 *         ES256 with the EC key, RS256 with the RSA key, or HS256 keyed with
 *         the RSA public key's PEM (the algorithm confusion attack: never
 *         verified).
 * A verified grant holds only valid patterns and is current; a token is
 * verified by one key only.
 *
 * The keys are test keys made once for this target with python3-cryptography (PKCS#8 PEM);
 * JWKS holds their public halves as python3-jwt's to_jwk writes them, with kid, use and alg
 * added.
 */
#include "fuzz_check.h"

#include "auth.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[] = "fuzz-secret-0123456789abcdef0123";
#define NOW 1700000000

static const char RSA_PRIV[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDmffizQdhAr6xR\n"
                               "UJPKfHU9ULwa6Ys3QBpXjzbRVxd0PknSOGDrdyfa1rdYjVadT7JBqmuLsRg4B671\n"
                               "3pvfl4zC7mTHmTbtBvaCV+5zdwVH3frrkm4T2H90xrbtTEMaCDCbfV6iZh4e+Y+T\n"
                               "Idnhi1Is8Kilo4CezIdEGA9jDrA9sD+CU8cw9CMMvKFS+9kQHzjAjy2maL/aTwgB\n"
                               "0nqvzezbHqaLBr53XozVzv0eUbHGWfFjCg6DLk4TkiWhE++Pa2O38HMUDYk+Om+0\n"
                               "RB3xcrzwx4esR47sVvpLiEfcKSn3vaa/i45u6nFJaZzj6NqtNDHYID/20ml1YvdS\n"
                               "GvXxs7DzAgMBAAECggEAE4rFrckc4Ssj1Icc6LORqx+vuyZm78nHEfpp/ui/69Km\n"
                               "JqUyDnS9U9AVnnPpTpAlwGyHDsJ2l7WLD3yOwa/TNunIcKXcYs9O0jFLXc3PDE9V\n"
                               "SWjSXWtjLw70Dn2DSO8908kW33UCA8VL94EMvJM35eiHm/eXXZ9grpTNpSvnJGum\n"
                               "Wy9p0rjgePgrsOeAn987rMcADXDAG7OqGu1R3pZQx85fhshgqu1+2Q/RxAIwxQvY\n"
                               "clpJ445N2Ooyet8iapcEeK+ug4um91DsG8tiQGC/Nt7/xu5i5Utr+7iGPMKIt5s/\n"
                               "u5EOajLc9xzC0hIhvcg1AfgTsQDgkN8ytPu14g/gOQKBgQD4ldNx5+7nuGNVlalS\n"
                               "X61+YWTlM0gIWuNSbS9u61SQMcIuFDdv+xl8LHr3jR5J05fcGT5dFStRkG5c+ATw\n"
                               "PxPRuiuaneAh02FFO8JeR71XNRbdd4ua/721imOd8mx9Kxoqupqis1kw/uaUSCAw\n"
                               "u/oTkDImxBix8qFkTrb9dOUtawKBgQDtXfzXwV/wWqdzLII1oYvlFIUrDvP0l3U1\n"
                               "hNCHUHSxFU0c+wqUqY0b+DIwj3mhV+GYyslyjGMqntO9AD6xGJMjhhzJwQ9dSHAC\n"
                               "eFiO3EXaOKDDXVba/adge7wyb0+N2v3cx4N6LROPB47+ENUWxMr0sVbb8QX8ckAJ\n"
                               "6sqx2KmkmQKBgB7aSaILjUVJR1rp9lf49AmJgQJJeRlAXpJuZsK3holXA6jAbZkC\n"
                               "a0lUI/bxlt7G2kRBBdJ7vCKlcG0tgz9mNMmE98B688R+/cWgAyG8ea2HM01NdxBH\n"
                               "yX3srSx/WCO448iF3IdxBxLjsC6bPROPYRxoezEAiagcWxeeBWwzw/X9AoGBAISO\n"
                               "o1/+DszUY4UPSxwWPmDNB91W+WgTmRItPKMEjFZEVg8kJvGEilgfUDAMP9mZkVPZ\n"
                               "k4xT2CF6FzcKRvhxh+IjyDnnheQLSvomKRaG7r+CNk1D9/hOBUX9c8kanmvS60h7\n"
                               "ZvI48B5FE1bRIZ8YgVsLGj2zqSskxpyDMXUGUR6pAoGBAM1LSFiWsHkiauSi2JKH\n"
                               "T0Y04LFiSegsIWMvlFV86prEr3kKp05A8fuDeyyhuUO870BWIQqs6pIEzjpv2cJc\n"
                               "A4R/U2KXkPwcTpLDl2FNdoiqsZR9V8f/q8WTwtKbTk1e3DfQJ7UWBe1wrMy306tc\n"
                               "GkoaycTrncpt5dZllAKDnxBO\n"
                               "-----END PRIVATE KEY-----\n";
static const char EC_PRIV[] = "-----BEGIN PRIVATE KEY-----\n"
                              "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLaL/Du0yeNTUuJoF\n"
                              "FutdO5kHJGVmLK80wch9mfTpRJmhRANCAAT4lDrb0dLMl+QoPzyZEb+SawOQX0sV\n"
                              "BWypvPUKvdB6G7IfzLlMSRP3VZiMilFcUxNlKZd9VKHUjOgiL/oOpch2\n"
                              "-----END PRIVATE KEY-----\n";
static const char RSA_PUB_PEM[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5n34s0HYQK+sUVCTynx1\n"
    "PVC8GumLN0AaV4820VcXdD5J0jhg63cn2ta3WI1WnU+yQapri7EYOAeu9d6b35eM\n"
    "wu5kx5k27Qb2glfuc3cFR93665JuE9h/dMa27UxDGggwm31eomYeHvmPkyHZ4YtS\n"
    "LPCopaOAnsyHRBgPYw6wPbA/glPHMPQjDLyhUvvZEB84wI8tpmi/2k8IAdJ6r83s\n"
    "2x6miwa+d16M1c79HlGxxlnxYwoOgy5OE5IloRPvj2tjt/BzFA2JPjpvtEQd8XK8\n"
    "8MeHrEeO7Fb6S4hH3Ckp972mv4uObupxSWmc4+jarTQx2CA/9tJpdWL3Uhr18bOw\n"
    "8wIDAQAB\n"
    "-----END PUBLIC KEY-----\n";
static const char JWKS[] =
    "{\"keys\":["
    "{\"kty\":\"RSA\",\"key_ops\":[\"verify\"],\"n\":\"5n34s0HYQK-sUVCTynx1PVC8GumLN0AaV4820"
    "VcXdD5J0jhg63cn2ta3WI1WnU-yQapri7EYOAeu9d6b35eMwu5kx5k27Qb2glfuc3cFR93665JuE"
    "9h_dMa27UxDGggwm31eomYeHvmPkyHZ4YtSLPCopaOAnsyHRBgPYw6wPbA_glPHMPQjDLyhUvvZE"
    "B84wI8tpmi_2k8IAdJ6r83s2x6miwa-d16M1c79HlGxxlnxYwoOgy5OE5IloRPvj2tjt_BzFA2JP"
    "jpvtEQd8XK88MeHrEeO7Fb6S4hH3Ckp972mv4uObupxSWmc4-jarTQx2CA_9tJpdWL3Uhr18bOw8"
    "w\",\"e\":\"AQAB\",\"kid\":\"rsa\",\"use\":\"sig\",\"alg\":\"RS256\"},"
    "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"-JQ629HSzJfkKD88mRG_kmsDkF9LFQVsqbz1Cr3Qehs\","
    "\"y\":\"sh_MuUxJE_dVmIyKUVxTE2Upl31UodSM6CIv-g6lyHY\",\"kid\":\"ec\",\"use\":\"sig\",\"al"
    "g\":\"ES256\"}]}";

enum { SIGN_HS, SIGN_ES, SIGN_RS, SIGN_CONFUSED };

static EVP_PKEY *rsa_priv, *ec_priv;
static auth_keys_t *keyset; /* the secret and JWKS */

static EVP_PKEY *read_key(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    CHECK(k);
    return k;
}

static void init(void)
{
    char err[256];
    if (keyset)
        return;
    rsa_priv = read_key(RSA_PRIV);
    ec_priv = read_key(EC_PRIV);
    keyset = auth_keys_new(key, sizeof(key) - 1);
    CHECK(keyset && auth_keys_add_jwks(keyset, (const uint8_t *)JWKS, strlen(JWKS), NULL, NULL, err,
                                       sizeof(err)));
    CHECK(auth_keys_count(keyset) == 2);
}

/* Signs msg[0..n) with the signer's key into sig; returns its length. */
static size_t sign(int signer, const uint8_t *msg, size_t n, uint8_t *sig)
{
    unsigned mlen = 0;
    if (signer == SIGN_HS || signer == SIGN_CONFUSED) {
        const void *k = signer == SIGN_HS ? (const void *)key : (const void *)RSA_PUB_PEM;
        int kl = signer == SIGN_HS ? (int)sizeof(key) - 1 : (int)strlen(RSA_PUB_PEM);
        CHECK(HMAC(EVP_sha256(), k, kl, msg, n, sig, &mlen));
        return mlen;
    }
    uint8_t der[600];
    size_t dlen = sizeof(der);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    CHECK(ctx &&
          EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL,
                             signer == SIGN_RS ? rsa_priv : ec_priv) == 1 &&
          EVP_DigestSign(ctx, der, &dlen, msg, n) == 1);
    EVP_MD_CTX_free(ctx);
    if (signer == SIGN_RS) {
        memcpy(sig, der, dlen);
        return dlen;
    }
    /* ES256 in JWS: r || s, 32 bytes each. */
    const uint8_t *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
    CHECK(es);
    CHECK(BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32) == 32 &&
          BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32) == 32);
    ECDSA_SIG_free(es);
    return 64;
}

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = a[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = a[v & 63];
    }
    return o;
}

static void check_grant(const auth_grant_t *g)
{
    if (!g)
        return;
    CHECK(auth_grant_current(g, NOW));
    for (uint32_t i = 0; i < g->nsub; i++)
        CHECK(gale_pattern_valid(g->sub[i], strlen(g->sub[i]), NULL));
    for (uint32_t i = 0; i < g->npub; i++)
        CHECK(gale_pattern_valid(g->pub[i], strlen(g->pub[i]), NULL));
    CHECK(strchr(g->user, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *why = NULL;
    if (size < 1 || size > 4 * AUTH_TOKEN_MAX)
        return 0;
    init();
    uint8_t mode = data[0];
    int signer = (mode >> 2) & 3;
    data++;
    size--;
    if ((mode & 1) == 0) {
        /* base64url: strict and canonical. */
        uint8_t *dec = malloc(size + 1);
        char *enc = malloc(size * 2 + 4);
        size_t n;
        if (auth_b64url_decode((const char *)data, size, dec, size + 1, &n)) {
            size_t m = b64url(dec, n, enc);
            CHECK(m == size && memcmp(enc, data, size) == 0);
        }
        free(dec);
        free(enc);
        auth_grant_t *g = auth_verify(key, sizeof(key) - 1, (const char *)data, size, NOW, &why);
        CHECK(g != NULL || why != NULL);
        check_grant(g);
        auth_grant_free(g);
        why = NULL;
        g = auth_verify_keys(keyset, (const char *)data, size, NOW, &why);
        CHECK(g != NULL || why != NULL);
        check_grant(g);
        auth_grant_free(g);
        return 0;
    }
    const uint8_t *nul = memchr(data, 0, size);
    static const char *const headers[] = {
        "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", "{\"alg\":\"ES256\",\"kid\":\"ec\"}",
        "{\"alg\":\"RS256\",\"kid\":\"rsa\"}", "{\"alg\":\"HS256\",\"kid\":\"rsa\"}"};
    const uint8_t *hdr = (const uint8_t *)headers[signer], *claims = data;
    size_t hlen = strlen(headers[signer]), clen = size;
    if (nul && (mode & 2)) {
        hdr = data;
        hlen = (size_t)(nul - data);
        claims = nul + 1;
        clen = size - hlen - 1;
    }
    char *tok = malloc((hlen + clen) * 2 + 64 + 2 * 512);
    size_t t = b64url(hdr, hlen, tok);
    tok[t++] = '.';
    t += b64url(claims, clen, tok + t);
    uint8_t sig[512];
    size_t slen = sign(signer, (const uint8_t *)tok, t, sig);
    tok[t++] = '.';
    t += b64url(sig, slen, tok + t);
    auth_grant_t *g = auth_verify_keys(keyset, tok, t, NOW, &why);
    CHECK(g != NULL || why != NULL);
    CHECK(g == NULL || signer != SIGN_CONFUSED); /* a public key is never an HMAC secret */
    check_grant(g);
    if (g && t <= AUTH_TOKEN_MAX) {
        /* Only its own key verifies it; a flipped signature bit fails. */
        const char *why2;
        auth_grant_t *hs = auth_verify(key, sizeof(key) - 1, tok, t, NOW, &why2);
        CHECK((hs != NULL) == (signer == SIGN_HS));
        auth_grant_free(hs);
        CHECK(auth_verify((const uint8_t *)"other", 5, tok, t, NOW, &why2) == NULL);
        tok[t - 1] = tok[t - 1] == 'A' ? 'B' : 'A';
        CHECK(auth_verify_keys(keyset, tok, t, NOW, &why2) == NULL);
    }
    auth_grant_free(g);
    /* The claims alone, directly. */
    g = auth_claims_parse(claims, clen, NOW, &why);
    check_grant(g);
    auth_grant_free(g);
    free(tok);
    return 0;
}
