/*
 * A small read-only walk over strict JSON, for the broker's own JSON inputs
 * (token claims, the HTTP publish API) beyond the wire messages of
 * gale_protocol.h. Pure code; every function is bounded by its input length.
 */
#ifndef GALE_JSON_H
#define GALE_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Kinds of JSON values, by their first byte. */
typedef enum {
    GALE_JSON_OBJECT,
    GALE_JSON_ARRAY,
    GALE_JSON_STRING,
    GALE_JSON_NUMBER,
    GALE_JSON_TRUE,
    GALE_JSON_FALSE,
    GALE_JSON_NULL,
} gale_json_kind_t;

/** One member of an object: the raw key (between its quotes) and the value's bytes. */
typedef struct {
    const uint8_t *key;
    size_t key_len;
    bool key_escaped; /* the key has backslash escapes */
    const uint8_t *val;
    size_t val_len;
    gale_json_kind_t kind;
} gale_json_member_t;

typedef bool (*gale_json_member_fn)(const gale_json_member_t *m, void *arg);

/**
 * Parses buf[0..len) strictly (RFC 8259, valid UTF-8, nested at most
 * max_depth); it must be one object. Calls fn for each member in order (fn
 * returns false to stop). Returns 1 on success, 0 if not well-formed or too
 * deep, -1 if well-formed but not an object, -2 if fn stopped.
 */
int gale_json_object(const uint8_t *buf, size_t len, unsigned max_depth, gale_json_member_fn fn,
                     void *arg);

/** True if the member's key unescapes to exactly lit. */
bool gale_json_key_is(const gale_json_member_t *m, const char *lit);

/** Kind of the well-formed value starting at v[0] (len >= 1). */
gale_json_kind_t gale_json_kind(const uint8_t *v);

/**
 * Iterates the elements of a well-formed array arr[0..len) (a value span
 * reported by gale_json_object, or validated with gale_json_valid). *pos
 * starts at 0. Sets the next element's span and returns true, or returns
 * false after the last one.
 */
bool gale_json_array_next(const uint8_t *arr, size_t len, size_t *pos, const uint8_t **el,
                          size_t *el_len);

/**
 * Unescapes a well-formed string value v[0..len) (quotes included) into
 * dst[0..cap) and NUL-terminates it. Returns its length, or SIZE_MAX if it
 * does not fit, has a lone surrogate escape, or contains a NUL character.
 */
size_t gale_json_string(const uint8_t *v, size_t len, char *dst, size_t cap);

#endif
