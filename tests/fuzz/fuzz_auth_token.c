/*
 * Fuzzes token verification (broker/auth.c). The first byte picks a mode:
 *   even: the rest is a token, verified with a fixed key (forgeries must fail;
 *         base64url decoding must be canonical: what decodes re-encodes to the same text);
 *   odd:  the rest is "header\0claims" (or claims with the standard header),
 *         signed here with the key, so header and claims parsing are reached.
 * A verified grant holds only valid patterns and is current.
 */
#include "fuzz_check.h"

#include "auth.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t key[] = "fuzz-secret-0123456789abcdef0123";
#define NOW 1700000000

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
    uint8_t mode = data[0];
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
        return 0;
    }
    const uint8_t *nul = memchr(data, 0, size);
    const uint8_t *hdr = (const uint8_t *)"{\"alg\":\"HS256\",\"typ\":\"JWT\"}", *claims = data;
    size_t hlen = 27, clen = size;
    if (nul && (mode & 2)) {
        hdr = data;
        hlen = (size_t)(nul - data);
        claims = nul + 1;
        clen = size - hlen - 1;
    }
    char *tok = malloc((hlen + clen) * 2 + 64);
    size_t t = b64url(hdr, hlen, tok);
    tok[t++] = '.';
    t += b64url(claims, clen, tok + t);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned mlen = 0;
    CHECK(HMAC(EVP_sha256(), key, (int)sizeof(key) - 1, (const uint8_t *)tok, t, mac, &mlen));
    tok[t++] = '.';
    t += b64url(mac, mlen, tok + t);
    auth_grant_t *g = auth_verify(key, sizeof(key) - 1, tok, t, NOW, &why);
    CHECK(g != NULL || why != NULL);
    check_grant(g);
    if (g && t <= AUTH_TOKEN_MAX) {
        /* Any other key, or a flipped signature bit, fails. */
        const char *why2;
        CHECK(auth_verify((const uint8_t *)"other", 5, tok, t, NOW, &why2) == NULL);
        tok[t - 1] = tok[t - 1] == 'A' ? 'B' : 'A';
        CHECK(auth_verify(key, sizeof(key) - 1, tok, t, NOW, &why2) == NULL);
    }
    auth_grant_free(g);
    /* The claims alone, directly. */
    g = auth_claims_parse(claims, clen, NOW, &why);
    check_grant(g);
    auth_grant_free(g);
    free(tok);
    return 0;
}
