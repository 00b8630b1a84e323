/*
 * auth_internal: what broker/auth.c (verification) and broker/auth_keys.c (key
 * sets: JWKS parsing, loading) share. Not for other modules: see auth.h.
 */
#ifndef GALE_AUTH_INTERNAL_H
#define GALE_AUTH_INTERNAL_H

#include "auth.h"

#include <openssl/evp.h>

typedef enum { KEY_RSA, KEY_EC } key_type_t;

typedef struct {
    EVP_PKEY *pkey;
    key_type_t type;
    bool has_kid;
    unsigned bits;  /* RSA: the modulus's; EC: 256 */
    size_t sig_len; /* bytes of a signature: RS256 the modulus's, ES256 64 */
    char kid[AUTH_KID_MAX + 1];
} pubkey_t;

struct auth_keys {
    uint8_t *secret; /* the HS256 secret; NULL: none */
    size_t secret_len;
    pubkey_t *keys; /* AUTH_JWKS_MAX_KEYS slots once a JWKS was added */
    size_t nkeys;
};

#endif
