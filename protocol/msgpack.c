/*
 * MessagePack: header reader, pre-scan of untrusted input, minimal
 * (canonical) encoders, and conversion of a value to JSON.
 *
 * msgpack-c has no limits of its own (a 5-byte array32 header makes it
 * reserve 0xffffffff objects), so every input is pre-scanned first: each
 * container count and str/bin/ext length must fit in the bytes that remain,
 * nesting is bounded, and there must be exactly one object. Only then is it
 * handed to msgpack_unpack_next(), whose allocation is then bounded by a
 * small multiple of the input.
 */
#include "internal.h"

#include <float.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>

static inline uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

bool gale__mp_head(const uint8_t *p, size_t n, gale__mphead_t *h)
{
    if (n == 0)
        return false;
    uint8_t c = p[0];
    memset(h, 0, sizeof(*h));
    h->hdr = 1;
    if (c <= 0x7f) {
        h->kind = GALE__MP_UINT;
        h->u = c;
        return true;
    }
    if (c >= 0xe0) {
        h->kind = GALE__MP_INT;
        h->i = (int8_t)c;
        return true;
    }
    if (c <= 0x8f) {
        h->kind = GALE__MP_MAP;
        h->n = c & 0x0f;
        return true;
    }
    if (c <= 0x9f) {
        h->kind = GALE__MP_ARRAY;
        h->n = c & 0x0f;
        return true;
    }
    if (c <= 0xbf) {
        h->kind = GALE__MP_STR;
        h->n = c & 0x1f;
        return true;
    }
    /* 0xc0..0xdf: the size of what follows the type byte */
    static const uint8_t extra[32] = {
        0, 0, 0, 0, 1,  2, 4, 2, 3, 5, 4, 8, /* c0..cb */
        1, 2, 4, 8, 1,  2, 4, 8,             /* cc..d3 */
        2, 3, 5, 9, 17, 1, 2, 4,             /* d4..db */
        2, 4, 2, 4,                          /* dc..df */
    };
    size_t x = extra[c - 0xc0];
    if (c == 0xc1 || n - 1 < x)
        return false;
    h->hdr = 1 + x;
    const uint8_t *q = p + 1;
    switch (c) {
    case 0xc0:
        h->kind = GALE__MP_NIL;
        break;
    case 0xc2:
    case 0xc3:
        h->kind = GALE__MP_BOOL;
        h->u = c & 1;
        break;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        h->kind = GALE__MP_BIN;
        h->n = c == 0xc4 ? q[0] : c == 0xc5 ? be16(q) : be32(q);
        break;
    case 0xc7:
    case 0xc8:
    case 0xc9:
        h->kind = GALE__MP_EXT;
        h->n = c == 0xc7 ? q[0] : c == 0xc8 ? be16(q) : be32(q);
        h->ext_type = (int8_t)q[x - 1];
        break;
    case 0xca:
        h->kind = GALE__MP_F32;
        break;
    case 0xcb:
        h->kind = GALE__MP_F64;
        break;
    case 0xcc:
        h->kind = GALE__MP_UINT;
        h->u = q[0];
        break;
    case 0xcd:
        h->kind = GALE__MP_UINT;
        h->u = be16(q);
        break;
    case 0xce:
        h->kind = GALE__MP_UINT;
        h->u = be32(q);
        break;
    case 0xcf:
        h->kind = GALE__MP_UINT;
        h->u = be64(q);
        break;
    case 0xd0:
        h->kind = GALE__MP_INT;
        h->i = (int8_t)q[0];
        break;
    case 0xd1:
        h->kind = GALE__MP_INT;
        h->i = (int16_t)be16(q);
        break;
    case 0xd2:
        h->kind = GALE__MP_INT;
        h->i = (int32_t)be32(q);
        break;
    case 0xd3:
        h->kind = GALE__MP_INT;
        h->i = (int64_t)be64(q);
        break;
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        /* fixext 1/2/4/8/16: the type byte; the payload follows the header */
        h->kind = GALE__MP_EXT;
        h->ext_type = (int8_t)q[0];
        h->hdr = 2;
        h->n = (uint64_t)1 << (c - 0xd4);
        break;
    case 0xd9:
    case 0xda:
    case 0xdb:
        h->kind = GALE__MP_STR;
        h->n = c == 0xd9 ? q[0] : c == 0xda ? be16(q) : be32(q);
        break;
    case 0xdc:
    case 0xdd:
        h->kind = GALE__MP_ARRAY;
        h->n = c == 0xdc ? be16(q) : be32(q);
        break;
    default: /* 0xde, 0xdf */
        h->kind = GALE__MP_MAP;
        h->n = c == 0xde ? be16(q) : be32(q);
        break;
    }
    return true;
}

/* Payload bytes that follow the header (float bits are part of the header). */
static inline uint64_t payload_len(const gale__mphead_t *h)
{
    return h->kind == GALE__MP_STR || h->kind == GALE__MP_BIN || h->kind == GALE__MP_EXT ? h->n : 0;
}

bool gale__mp_scan(const uint8_t *buf, size_t len, unsigned max_depth, unsigned *depth_out,
                   unsigned *json_depth_out)
{
    uint64_t left[GALE__DEPTH_CAP + 1]; /* items still expected at each open level */
    unsigned depth = 0, deepest = 0, json_deepest = 0;
    size_t pos = 0;
    if (buf == NULL)
        return false;
    if (max_depth > GALE__DEPTH_CAP)
        max_depth = GALE__DEPTH_CAP;
    left[0] = 1;
    for (;;) {
        while (depth > 0 && left[depth] == 0)
            depth--;
        if (depth == 0 && left[0] == 0)
            break;
        gale__mphead_t h;
        if (!gale__mp_head(buf + pos, len - pos, &h))
            return false;
        left[depth]--;
        pos += h.hdr;
        size_t rest = len - pos;
        uint64_t pl = payload_len(&h);
        if (pl > rest)
            return false;
        pos += (size_t)pl;
        if (h.kind == GALE__MP_EXT && depth + 1 > json_deepest)
            json_deepest = depth + 1;
        if (h.kind == GALE__MP_ARRAY || h.kind == GALE__MP_MAP) {
            uint64_t items = h.kind == GALE__MP_MAP ? h.n * 2 : h.n;
            if (items > rest || depth + 1 > max_depth)
                return false;
            left[++depth] = items;
            if (depth > deepest)
                deepest = depth;
        }
    }
    if (pos != len)
        return false;
    if (depth_out != NULL)
        *depth_out = deepest;
    if (json_depth_out != NULL)
        *json_depth_out = json_deepest > deepest ? json_deepest : deepest;
    return true;
}

bool gale_msgpack_prescan(const uint8_t *buf, size_t len, unsigned max_depth)
{
    return gale__mp_scan(buf, len, max_depth, NULL, NULL);
}

size_t gale__mp_skip(const uint8_t *p, size_t n)
{
    size_t pos = 0;
    uint64_t pending = 1;
    while (pending > 0) {
        gale__mphead_t h;
        if (!gale__mp_head(p + pos, n - pos, &h))
            return n; /* not reached on pre-scanned input */
        pending--;
        pos += h.hdr;
        pos += (size_t)payload_len(&h);
        if (h.kind == GALE__MP_ARRAY)
            pending += h.n;
        else if (h.kind == GALE__MP_MAP)
            pending += h.n * 2;
        if (pos > n)
            return n;
    }
    return pos;
}

/* ---- encoders ---- */

static bool put_be(gale_buf_t *b, uint8_t type, uint64_t v, size_t nbytes)
{
    uint8_t tmp[9];
    tmp[0] = type;
    for (size_t i = 0; i < nbytes; i++)
        tmp[1 + i] = (uint8_t)(v >> (8 * (nbytes - 1 - i)));
    return gale_buf_append(b, tmp, 1 + nbytes);
}

bool gale__mp_put_uint(gale_buf_t *b, uint64_t v)
{
    if (v <= 0x7f)
        return gale__buf_put(b, (uint8_t)v);
    if (v <= 0xff)
        return put_be(b, 0xcc, v, 1);
    if (v <= 0xffff)
        return put_be(b, 0xcd, v, 2);
    if (v <= 0xffffffff)
        return put_be(b, 0xce, v, 4);
    return put_be(b, 0xcf, v, 8);
}

bool gale__mp_put_int(gale_buf_t *b, int64_t v)
{
    if (v >= 0)
        return gale__mp_put_uint(b, (uint64_t)v);
    if (v >= -32)
        return gale__buf_put(b, (uint8_t)(int8_t)v);
    if (v >= INT8_MIN)
        return put_be(b, 0xd0, (uint64_t)v, 1);
    if (v >= INT16_MIN)
        return put_be(b, 0xd1, (uint64_t)v, 2);
    if (v >= INT32_MIN)
        return put_be(b, 0xd2, (uint64_t)v, 4);
    return put_be(b, 0xd3, (uint64_t)v, 8);
}

bool gale__mp_put_f64(gale_buf_t *b, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    return put_be(b, 0xcb, bits, 8);
}

size_t gale__mp_str_hdr_len(size_t n)
{
    return n <= 31 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : 5;
}

size_t gale__mp_write_str_hdr(uint8_t *d, size_t n)
{
    if (n <= 31) {
        d[0] = (uint8_t)(0xa0 | n);
        return 1;
    }
    if (n <= 0xff) {
        d[0] = 0xd9;
        d[1] = (uint8_t)n;
        return 2;
    }
    if (n <= 0xffff) {
        d[0] = 0xda;
        d[1] = (uint8_t)(n >> 8);
        d[2] = (uint8_t)n;
        return 3;
    }
    d[0] = 0xdb;
    d[1] = (uint8_t)(n >> 24);
    d[2] = (uint8_t)(n >> 16);
    d[3] = (uint8_t)(n >> 8);
    d[4] = (uint8_t)n;
    return 5;
}

bool gale__mp_put_str_hdr(gale_buf_t *b, size_t n)
{
    uint8_t tmp[5];
    if ((uint64_t)n > 0xffffffff)
        return gale__buf_reserve(b, SIZE_MAX) != NULL; /* cannot be encoded: fail as oom */
    return gale_buf_append(b, tmp, gale__mp_write_str_hdr(tmp, n));
}

bool gale__mp_put_str(gale_buf_t *b, const void *s, size_t n)
{
    return gale__mp_put_str_hdr(b, n) && gale_buf_append(b, s, n);
}

static bool put_container_hdr(gale_buf_t *b, size_t n, uint8_t fix, uint8_t t16)
{
    if (n <= 15)
        return gale__buf_put(b, (uint8_t)(fix | n));
    if (n <= 0xffff)
        return put_be(b, t16, n, 2);
    if ((uint64_t)n <= 0xffffffff)
        return put_be(b, (uint8_t)(t16 + 1), n, 4);
    return gale__buf_reserve(b, SIZE_MAX) != NULL;
}

bool gale__mp_put_array_hdr(gale_buf_t *b, size_t n)
{
    return put_container_hdr(b, n, 0x90, 0xdc);
}

bool gale__mp_put_map_hdr(gale_buf_t *b, size_t n)
{
    return put_container_hdr(b, n, 0x80, 0xde);
}

/* ---- MessagePack to JSON ---- */

/*
 * msgpack-c 4.0's unpacker has a fixed stack of MSGPACK_EMBED_STACK_SIZE (32)
 * open containers and fails beyond it, while gale accepts GALE_MAX_DEPTH (64).
 * Subtrees at most this deep go through msgpack_unpack_next(); the levels
 * above a deeper subtree are walked here, one container at a time.
 */
#define UNPACK_DEPTH_MAX 32

/* Writes a double as the shortest "%.*g" that reads back equal; null if not finite. */
static bool put_double(gale_buf_t *b, double d, bool single)
{
    if (!isfinite(d))
        return gale__buf_puts(b, "null");
    char tmp[40];
    int n = 0;
    /*
     * A normal double's shortest round-trip form has at most 17 digits, and
     * when it has 15 or fewer "%.15g" finds it (%g drops trailing zeros).
     * Subnormals carry fewer digits, so start from 1 for them (rare).
     */
    int prec = single ? 6 : 15;
    if (fabs(d) < (single ? (double)FLT_MIN : DBL_MIN))
        prec = 1;
    for (; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (single ? strtof(tmp, NULL) == (float)d : strtod(tmp, NULL) == d)
            break;
    }
    /* Whatever LC_NUMERIC says, JSON wants a '.' decimal point. */
    for (int i = 0; i < n; i++)
        if (tmp[i] == ',')
            tmp[i] = '.';
    return gale_buf_append(b, tmp, (size_t)n);
}

static bool put_ext(gale_buf_t *b, int8_t type, const uint8_t *p, size_t n)
{
    gale__buf_puts(b, "{\"ext\":");
    gale__buf_put_i64(b, type);
    gale__buf_puts(b, ",\"base64\":\"");
    gale__base64_put(b, p, n);
    return gale__buf_puts(b, "\"}");
}

/*
 * Output budget of one conversion. A non-str key becomes its JSON text, which
 * is then escaped as a string; keys nested inside such keys are escaped once
 * per level, so each level roughly doubles their backslashes. Without a
 * bound, a few KB of keys-inside-keys would expand exponentially. Everything
 * else expands at most ~13x (an ext key), so the bound only refuses nested
 * non-str keys.
 */
#define OUT_FACTOR 32
#define OUT_SLACK 256

/* GALE_OK while b is within its absolute length limit and not out of memory. */
static inline gale_err_t budget(const gale_buf_t *b, size_t limit)
{
    if (b->oom)
        return GALE_ERR_INTERNAL;
    return b->len > limit ? GALE_ERR_BAD_REQUEST : GALE_OK;
}

static gale_err_t obj_to_json(gale_buf_t *b, const msgpack_object *o, size_t limit);

/* Appends the string s (its escaped form) if it fits; frees nothing. */
static gale_err_t put_key_text(gale_buf_t *b, gale_buf_t *text, gale_err_t err, size_t limit)
{
    if (err == GALE_OK && text->oom)
        err = GALE_ERR_INTERNAL;
    if (err == GALE_OK) {
        gale__json_put_str(b, text->data, text->len - text->headroom);
        err = budget(b, limit);
    }
    gale_buf_free(text);
    return err;
}

/* A map key: str as is, bin as its base64 text, anything else as its JSON text. */
static gale_err_t key_to_json(gale_buf_t *b, const msgpack_object *k, size_t limit)
{
    if (k->type == MSGPACK_OBJECT_STR) {
        gale__json_put_str(b, (const uint8_t *)k->via.str.ptr, k->via.str.size);
        return budget(b, limit);
    }
    if (b->len > limit)
        return GALE_ERR_BAD_REQUEST;
    size_t room = limit - b->len; /* the escaped text is at least as long as the text */
    gale_buf_t tmp;
    gale_err_t err = GALE_OK;
    gale_buf_init(&tmp, 0);
    if (k->type == MSGPACK_OBJECT_BIN) {
        if ((uint64_t)k->via.bin.size / 3 * 4 > room)
            err = GALE_ERR_BAD_REQUEST;
        else
            gale__base64_put(&tmp, (const uint8_t *)k->via.bin.ptr, k->via.bin.size);
    } else {
        err = obj_to_json(&tmp, k, room);
    }
    return put_key_text(b, &tmp, err, limit);
}

static gale_err_t obj_to_json(gale_buf_t *b, const msgpack_object *o, size_t limit)
{
    gale_err_t err;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        gale__buf_puts(b, "null");
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        gale__buf_puts(b, o->via.boolean ? "true" : "false");
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        gale__buf_put_u64(b, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        gale__buf_put_i64(b, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
        put_double(b, o->via.f64, true);
        break;
    case MSGPACK_OBJECT_FLOAT64:
        put_double(b, o->via.f64, false);
        break;
    case MSGPACK_OBJECT_STR:
        gale__json_put_str(b, (const uint8_t *)o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        gale__buf_put(b, '"');
        gale__base64_put(b, (const uint8_t *)o->via.bin.ptr, o->via.bin.size);
        gale__buf_put(b, '"');
        break;
    case MSGPACK_OBJECT_EXT:
        put_ext(b, o->via.ext.type, (const uint8_t *)o->via.ext.ptr, o->via.ext.size);
        break;
    case MSGPACK_OBJECT_ARRAY:
        gale__buf_put(b, '[');
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i > 0)
                gale__buf_put(b, ',');
            if ((err = obj_to_json(b, &o->via.array.ptr[i], limit)) != GALE_OK)
                return err;
        }
        gale__buf_put(b, ']');
        break;
    case MSGPACK_OBJECT_MAP:
        gale__buf_put(b, '{');
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (i > 0)
                gale__buf_put(b, ',');
            if ((err = key_to_json(b, &o->via.map.ptr[i].key, limit)) != GALE_OK)
                return err;
            gale__buf_put(b, ':');
            if ((err = obj_to_json(b, &o->via.map.ptr[i].val, limit)) != GALE_OK)
                return err;
        }
        gale__buf_put(b, '}');
        break;
    default:
        return GALE_ERR_BAD_REQUEST;
    }
    return budget(b, limit);
}

/* Converts the pre-scanned object p[0..n), nested `depth` deep, with msgpack-c or by hand. */
static gale_err_t span_to_json(gale_buf_t *b, const uint8_t *p, size_t n, unsigned depth,
                               bool as_key, size_t limit);

static gale_err_t unpack_to_json(gale_buf_t *b, const uint8_t *p, size_t n, bool as_key,
                                 size_t limit)
{
    msgpack_unpacked u;
    size_t off = 0;
    gale_err_t err = GALE_ERR_BAD_REQUEST;
    msgpack_unpacked_init(&u);
    msgpack_unpack_return r = msgpack_unpack_next(&u, (const char *)p, n, &off);
    if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        err = GALE_ERR_INTERNAL;
    else if (r == MSGPACK_UNPACK_SUCCESS && off == n)
        err = as_key ? key_to_json(b, &u.data, limit) : obj_to_json(b, &u.data, limit);
    msgpack_unpacked_destroy(&u);
    return err;
}

/* Hand walk of one container level whose subtree is too deep for msgpack-c. */
static gale_err_t walk_to_json(gale_buf_t *b, const uint8_t *p, size_t n, size_t limit)
{
    gale__mphead_t h;
    if (!gale__mp_head(p, n, &h) || (h.kind != GALE__MP_ARRAY && h.kind != GALE__MP_MAP))
        return GALE_ERR_BAD_REQUEST;
    bool map = h.kind == GALE__MP_MAP;
    size_t pos = h.hdr;
    gale__buf_put(b, map ? '{' : '[');
    for (uint64_t i = 0; i < h.n; i++) {
        if (i > 0)
            gale__buf_put(b, ',');
        for (int part = 0; part < (map ? 2 : 1); part++) {
            size_t sz = gale__mp_skip(p + pos, n - pos);
            unsigned d = 0;
            if (!gale__mp_scan(p + pos, sz, GALE__DEPTH_CAP, &d, NULL))
                return GALE_ERR_BAD_REQUEST;
            gale_err_t err = span_to_json(b, p + pos, sz, d, map && part == 0, limit);
            if (err != GALE_OK)
                return err;
            if (map && part == 0)
                gale__buf_put(b, ':');
            pos += sz;
        }
    }
    gale__buf_put(b, map ? '}' : ']');
    return budget(b, limit);
}

static gale_err_t span_to_json(gale_buf_t *b, const uint8_t *p, size_t n, unsigned depth,
                               bool as_key, size_t limit)
{
    if (depth <= UNPACK_DEPTH_MAX)
        return unpack_to_json(b, p, n, as_key, limit);
    if (!as_key)
        return walk_to_json(b, p, n, limit);
    /* A (very deep) container used as a map key: its JSON text, as a string. */
    if (b->len > limit)
        return GALE_ERR_BAD_REQUEST;
    gale_buf_t tmp;
    gale_buf_init(&tmp, 0);
    gale_err_t err = walk_to_json(&tmp, p, n, limit - b->len);
    return put_key_text(b, &tmp, err, limit);
}

gale_err_t gale__msgpack_to_json(gale_buf_t *out, const uint8_t *data, size_t len)
{
    unsigned depth, json_depth;
    if (data == NULL || !gale__mp_scan(data, len, GALE_MAX_DEPTH, &depth, &json_depth))
        return GALE_ERR_BAD_REQUEST;
    if (json_depth > GALE_MAX_DEPTH)
        return GALE_ERR_BAD_REQUEST; /* an ext at the deepest level: its object is too deep */
    size_t limit = SIZE_MAX;
    if (len < (SIZE_MAX - OUT_SLACK - out->len) / OUT_FACTOR)
        limit = out->len + len * OUT_FACTOR + OUT_SLACK;
    gale_err_t err = span_to_json(out, data, len, depth, false, limit);
    if (err == GALE_OK && out->oom)
        err = GALE_ERR_INTERNAL;
    return err;
}
