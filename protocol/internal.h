/*
 * Private helpers shared by the protocol/ sources. Not part of the API.
 */
#ifndef GALE_PROTOCOL_INTERNAL_H
#define GALE_PROTOCOL_INTERNAL_H

#include "gale_protocol.h"

#include <string.h>

/** max_depth values above this are treated as this (bounds the recursion and scan stacks). */
#define GALE__DEPTH_CAP 256

/* ---- buf.c ---- */

/** Makes room for n more bytes and returns where they go (len unchanged); NULL on failure. */
uint8_t *gale__buf_reserve(gale_buf_t *b, size_t n);

static inline bool gale__buf_put(gale_buf_t *b, uint8_t c)
{
    if (b->len < b->cap) {
        b->data[b->len++] = c;
        return true;
    }
    return gale_buf_append(b, &c, 1);
}

static inline bool gale__buf_puts(gale_buf_t *b, const char *s)
{
    return gale_buf_append(b, s, strlen(s));
}

/** Appends v in decimal. */
bool gale__buf_put_u64(gale_buf_t *b, uint64_t v);
/** Appends v in decimal (with '-' when negative). */
bool gale__buf_put_i64(gale_buf_t *b, int64_t v);

/* ---- utf8.c ---- */

#define GALE__UTF8_BAD UINT32_C(0xFFFFFFFF)

/**
 * Decodes one UTF-8 character from s[0..n) (n >= 1). Returns the number of
 * bytes it takes and sets *cp; for an ill-formed sequence sets *cp to
 * GALE__UTF8_BAD and returns the length of its maximal subpart (>= 1), the
 * unit that one U+FFFD replaces (Unicode 15 section 3.9, "U+FFFD substitution
 * of maximal subparts").
 */
size_t gale__utf8_next(const uint8_t *s, size_t n, uint32_t *cp);

/** Appends code point cp (<= U+10FFFF, not a surrogate) as UTF-8. */
bool gale__utf8_put(gale_buf_t *b, uint32_t cp);
/** Writes code point cp as UTF-8 to dst (room for 4 bytes); returns its length. */
size_t gale__utf8_encode(uint8_t *dst, uint32_t cp);

/* ---- json.c ---- */

/** Appends s[0..n) as a JSON string (quotes included); invalid UTF-8 becomes U+FFFD. */
bool gale__json_put_str(gale_buf_t *b, const uint8_t *s, size_t n);

/** Kinds of JSON values, by their first byte. */
typedef enum {
    GALE__J_OBJECT,
    GALE__J_ARRAY,
    GALE__J_STRING,
    GALE__J_NUMBER,
    GALE__J_TRUE,
    GALE__J_FALSE,
    GALE__J_NULL,
} gale__jkind_t;

/** One member of a top-level JSON object: raw key (between the quotes) and value span. */
typedef struct {
    const uint8_t *key;
    size_t key_len;
    bool key_escaped; /* the key contains backslash escapes */
    const uint8_t *val;
    size_t val_len;
    gale__jkind_t kind;
} gale__jmember_t;

typedef bool (*gale__jmember_fn)(const gale__jmember_t *m, void *arg);

/**
 * Parses buf[0..len) strictly; it must be one JSON object. Calls fn for each
 * of its members, in order (fn returns false to stop with failure). Returns
 * 1 on success, 0 if not well-formed or too deep, -1 if well-formed but not
 * an object, -2 if fn stopped it.
 */
int gale__json_object(const uint8_t *buf, size_t len, unsigned max_depth, gale__jmember_fn fn,
                      void *arg);

/**
 * Unescapes the raw JSON string contents s[0..n) (already validated) into
 * dst (room for n bytes); lone surrogates become U+FFFD when `lenient`, and
 * make it fail (return SIZE_MAX) otherwise. Returns the length written.
 */
size_t gale__json_unescape(uint8_t *dst, const uint8_t *s, size_t n, bool lenient);

/** True if the raw JSON string contents s[0..n) unescape to exactly lit. */
bool gale__json_str_eq(const uint8_t *s, size_t n, bool escaped, const char *lit);

/** Appends the JSON value data[0..len) converted to MessagePack; BAD_REQUEST if malformed. */
gale_err_t gale__json_to_msgpack(gale_buf_t *out, const uint8_t *data, size_t len);

/* ---- fields.c ---- */

/** A wanted member of a top-level object/map, in the encoding's own terms. */
typedef struct {
    bool present;
    bool dup; /* the key appeared more than once (the first value is kept) */
    bool is_str;
    const uint8_t *str; /* str payload (JSON: raw contents between the quotes) */
    size_t str_len;
    bool str_escaped; /* JSON only */
    bool is_uint;     /* a non-negative integer that fits uint64 (JSON: digits only) */
    uint64_t u;
    const uint8_t *val; /* the whole value */
    size_t val_len;
} gale__field_t;

/**
 * Parses buf[0..len) strictly as one JSON object (as gale__json_object, whose
 * result it returns) and fills f[i] for the member named names[i], i < n.
 */
int gale__fields_json(const uint8_t *buf, size_t len, unsigned max_depth, const char *const *names,
                      int n, gale__field_t *f);

/**
 * Fills f[i] from the member named names[i] of the MessagePack map buf[0..len),
 * which must already have passed gale__mp_scan. Returns NULL, or the reason it
 * is not a map, or (with str_keys_only) has a key that is not a string; other
 * non-string keys are skipped.
 */
const char *gale__fields_msgpack(const uint8_t *buf, size_t len, const char *const *names, int n,
                                 gale__field_t *f, bool str_keys_only);

/* ---- msgpack.c ---- */

typedef enum {
    GALE__MP_NIL,
    GALE__MP_BOOL,
    GALE__MP_UINT,
    GALE__MP_INT,
    GALE__MP_F32,
    GALE__MP_F64,
    GALE__MP_STR,
    GALE__MP_BIN,
    GALE__MP_EXT,
    GALE__MP_ARRAY,
    GALE__MP_MAP,
} gale__mpkind_t;

/** A decoded MessagePack header. */
typedef struct {
    gale__mpkind_t kind;
    size_t hdr;      /* header bytes (type byte and size/value fields, ext type included) */
    uint64_t n;      /* str/bin/ext: payload bytes; array: elements; map: pairs */
    uint64_t u;      /* UINT: value; BOOL: 0/1 */
    int64_t i;       /* INT: value (negative or not) */
    int8_t ext_type; /* EXT */
} gale__mphead_t;

/** Reads the header at p[0..n); false if truncated or 0xc1. Does not check payload sizes. */
bool gale__mp_head(const uint8_t *p, size_t n, gale__mphead_t *h);

/**
 * Pre-scan (see gale_msgpack_prescan); on success also reports the deepest
 * container nesting found in *depth (0 for a scalar), and in *json_depth the
 * nesting of its JSON form, where an ext counts as one more level (it becomes
 * an object). Either pointer may be NULL.
 */
bool gale__mp_scan(const uint8_t *buf, size_t len, unsigned max_depth, unsigned *depth,
                   unsigned *json_depth);

/** Size of the (pre-scanned) object starting at p[0..n). */
size_t gale__mp_skip(const uint8_t *p, size_t n);

/** Appends the MessagePack value data[0..len) converted to JSON; BAD_REQUEST if malformed. */
gale_err_t gale__msgpack_to_json(gale_buf_t *out, const uint8_t *data, size_t len);

/* Minimal MessagePack encoders. */
bool gale__mp_put_uint(gale_buf_t *b, uint64_t v);
bool gale__mp_put_int(gale_buf_t *b, int64_t v);
bool gale__mp_put_f64(gale_buf_t *b, double d);
bool gale__mp_put_str_hdr(gale_buf_t *b, size_t n);
bool gale__mp_put_str(gale_buf_t *b, const void *s, size_t n);
bool gale__mp_put_array_hdr(gale_buf_t *b, size_t n);
bool gale__mp_put_map_hdr(gale_buf_t *b, size_t n);
/** A str from a C string (NULL: empty). */
static inline bool gale__mp_put_cstr(gale_buf_t *b, const char *s)
{
    return s ? gale__mp_put_str(b, s, strlen(s)) : gale__mp_put_str(b, "", 0);
}
/** Header size of a str of n bytes: 1, 2, 3 or 5. */
size_t gale__mp_str_hdr_len(size_t n);
/** Writes a str header for n bytes at dst (room for 5); returns its size. */
size_t gale__mp_write_str_hdr(uint8_t *dst, size_t n);

/* ---- encode.c, encode_client.c ---- */

static inline bool gale__valid_enc(gale_enc_t enc)
{
    return enc == GALE_ENC_JSON || enc == GALE_ENC_MSGPACK;
}

/** Ends an encoder that started at out->len == start: undoes partial output on failure. */
static inline gale_err_t gale__encode_finish(gale_buf_t *out, size_t start, gale_err_t err)
{
    if (err == GALE_OK && out->oom)
        err = GALE_ERR_INTERNAL;
    if (err != GALE_OK && out->len > start)
        out->len = start;
    return err;
}

/* ---- base64.c ---- */

/** Appends the base64 (RFC 4648, padded) of s[0..n). */
bool gale__base64_put(gale_buf_t *b, const uint8_t *s, size_t n);

#endif
