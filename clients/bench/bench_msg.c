/* bench_msg: gale v1 messages for the load generator, see bench_msg.h. */
#include "bench_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t ws_frame(uint8_t *dst, int opcode, const void *payload, size_t n, uint32_t mask_key)
{
    size_t h = 0;
    dst[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        dst[h++] = (uint8_t)(0x80 | n);
    } else if (n <= 0xffff) {
        dst[h++] = 0x80 | 126;
        dst[h++] = (uint8_t)(n >> 8);
        dst[h++] = (uint8_t)n;
    } else {
        dst[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            dst[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    uint8_t key[4] = {(uint8_t)(mask_key >> 24), (uint8_t)(mask_key >> 16),
                      (uint8_t)(mask_key >> 8), (uint8_t)mask_key};
    memcpy(dst + h, key, 4);
    h += 4;
    const uint8_t *src = payload;
    if (mask_key == 0) {
        memmove(dst + h, src, n);
    } else {
        for (size_t i = 0; i < n; i++)
            dst[h + i] = src[i] ^ key[i & 3];
    }
    return h + n;
}

/* --- MessagePack writing -------------------------------------------------------------- */

static uint8_t *mp_str(uint8_t *o, const char *s, size_t n)
{
    if (n < 32) {
        *o++ = (uint8_t)(0xa0 | n);
    } else if (n < 256) {
        *o++ = 0xd9;
        *o++ = (uint8_t)n;
    } else {
        *o++ = 0xda;
        *o++ = (uint8_t)(n >> 8);
        *o++ = (uint8_t)n;
    }
    memcpy(o, s, n);
    return o + n;
}

static uint8_t *mp_cstr(uint8_t *o, const char *s)
{
    return mp_str(o, s, strlen(s));
}

static uint8_t *mp_u64(uint8_t *o, uint64_t v)
{
    *o++ = 0xcf;
    for (int i = 7; i >= 0; i--)
        *o++ = (uint8_t)(v >> (8 * i));
    return o;
}

size_t msg_encode_op(uint8_t *dst, size_t cap, bool msgpack, const char *op, const char *topic,
                     uint64_t id)
{
    bool with_id = id != UINT64_MAX;
    if (strlen(topic) > 255 || cap < 300 + strlen(topic))
        return 0;
    if (!msgpack) {
        int n = with_id ? snprintf((char *)dst, cap, "{\"op\":\"%s\",\"topic\":\"%s\",\"id\":%llu}",
                                   op, topic, (unsigned long long)id)
                        : snprintf((char *)dst, cap, "{\"op\":\"%s\",\"topic\":\"%s\"}", op, topic);
        return n > 0 && (size_t)n < cap ? (size_t)n : 0;
    }
    uint8_t *o = dst;
    *o++ = (uint8_t)(0x80 | (with_id ? 3 : 2));
    o = mp_cstr(mp_cstr(o, "op"), op);
    o = mp_cstr(mp_cstr(o, "topic"), topic);
    if (with_id)
        o = mp_u64(mp_cstr(o, "id"), id);
    return (size_t)(o - dst);
}

size_t msg_encode_sub_since(uint8_t *dst, size_t cap, bool msgpack, const char *topic, uint64_t id,
                            const char *ep, uint64_t off)
{
    if (strlen(topic) > 255 || strlen(ep) >= BENCH_EP_MAX || cap < 400 + strlen(topic))
        return 0;
    if (!msgpack) {
        int n = snprintf((char *)dst, cap,
                         "{\"op\":\"sub\",\"topic\":\"%s\",\"id\":%llu,\"since\":{\"ep\":\"%s\","
                         "\"off\":%llu}}",
                         topic, (unsigned long long)id, ep, (unsigned long long)off);
        return n > 0 && (size_t)n < cap ? (size_t)n : 0;
    }
    uint8_t *o = dst;
    *o++ = 0x84;
    o = mp_cstr(mp_cstr(o, "op"), "sub");
    o = mp_cstr(mp_cstr(o, "topic"), topic);
    o = mp_u64(mp_cstr(o, "id"), id);
    o = mp_cstr(o, "since");
    *o++ = 0x82;
    o = mp_cstr(mp_cstr(o, "ep"), ep);
    o = mp_u64(mp_cstr(o, "off"), off);
    return (size_t)(o - dst);
}

/* --- Publish templates ---------------------------------------------------------------- */

static void put_dec(uint8_t *at, uint64_t v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        at[i] = (uint8_t)('0' + v % 10);
        v /= 10;
    }
}

static void put_be64(uint8_t *at, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        at[i] = (uint8_t)v;
        v >>= 8;
    }
}

/* Marker values, distinct digit patterns, written at build time and found by searching the
 * payload, then replaced by pubtpl_set(). */
#define MARK_ID 1111111111111ULL
#define MARK_SEQ 2222222222222ULL
#define MARK_TIME 3333333333333333ULL

/* Offset of @needle in p[0..n), or 0 when absent (no field starts a payload). */
static size_t find(const uint8_t *p, size_t n, const void *needle, size_t k)
{
    const uint8_t *at = memmem(p, n, needle, k);
    return at ? (size_t)(at - p) : 0;
}

/* Fixed part of the data object is about 60 bytes; the padding makes up the rest. */
static size_t pad_for(size_t size)
{
    return size > 64 ? size - 64 : 1;
}

size_t bench_data_json(uint8_t *dst, size_t cap, uint32_t pub, size_t size)
{
    size_t pad = pad_for(size);
    int k = snprintf((char *)dst, cap, "{\"p\":%u,\"s\":%llu,\"t\":%llu,\"x\":\"", pub,
                     (unsigned long long)MARK_SEQ, (unsigned long long)MARK_TIME);
    if (k < 0 || (size_t)k + pad + 2 > cap)
        return 0;
    size_t n = (size_t)k;
    memset(dst + n, 'x', pad);
    n += pad;
    memcpy(dst + n, "\"}", 2);
    return n + 2;
}

/* {"op":"pub","topic":T,"id":MARK_ID,"data":{...}} as JSON; returns the length or 0. */
static size_t gale_pub_json(uint8_t *dst, size_t cap, const char *topic, uint32_t pub, size_t size)
{
    int k =
        snprintf((char *)dst, cap, "{\"op\":\"pub\",\"topic\":\"%s\",\"id\":%llu,\"data\":", topic,
                 (unsigned long long)MARK_ID);
    if (k < 0 || (size_t)k >= cap)
        return 0;
    size_t d = bench_data_json(dst + k, cap - (size_t)k - 1, pub, size);
    if (!d)
        return 0;
    dst[(size_t)k + d] = '}';
    return (size_t)k + d + 1;
}

/* The same as a MessagePack map, numbers as uint64; returns the length or 0. */
static size_t gale_pub_msgpack(uint8_t *dst, const char *topic, uint32_t pub, size_t size)
{
    size_t pad = pad_for(size);
    char *x = malloc(pad);
    if (!x)
        return 0;
    memset(x, 'x', pad);
    uint8_t *o = dst;
    *o++ = 0x84;
    o = mp_cstr(mp_cstr(o, "op"), "pub");
    o = mp_cstr(mp_cstr(o, "topic"), topic);
    o = mp_u64(mp_cstr(o, "id"), MARK_ID);
    o = mp_cstr(o, "data");
    *o++ = 0x84;
    o = mp_u64(mp_cstr(o, "p"), pub);
    o = mp_u64(mp_cstr(o, "s"), MARK_SEQ);
    o = mp_u64(mp_cstr(o, "t"), MARK_TIME);
    o = mp_cstr(o, "x");
    o = mp_str(o, x, pad);
    free(x);
    return (size_t)(o - dst);
}

int pubtpl_frame(pubtpl_t *t, bool msgpack, int opcode, const uint8_t *payload, size_t n,
                 const char *topic, bool topic_indexed)
{
    memset(t, 0, sizeof(*t));
    t->frame = malloc(n + 14);
    if (!t->frame)
        return -1;
    t->msgpack = msgpack;
    t->len = ws_frame(t->frame, opcode, payload, n, 0);
    t->payload_off = t->len - n;
    size_t id, seq, time;
    if (!msgpack) {
        id = find(payload, n, "1111111111111", 13);
        seq = find(payload, n, "2222222222222", 13);
        time = find(payload, n, "3333333333333333", 16);
    } else {
        uint8_t m[8];
        put_be64(m, MARK_ID);
        id = find(payload, n, m, 8);
        put_be64(m, MARK_SEQ);
        seq = find(payload, n, m, 8);
        put_be64(m, MARK_TIME);
        time = find(payload, n, m, 8);
    }
    t->off_id = id ? t->payload_off + id : 0;
    t->off_seq = t->payload_off + seq;
    t->off_time = t->payload_off + time;
    if (topic_indexed)
        t->off_topic = t->payload_off + find(payload, n, topic, strlen(topic)) + strlen(topic) -
                       TOPIC_IDX_DIGITS;
    return 0;
}

int pubtpl_build(pubtpl_t *t, bool msgpack, const char *topic, bool topic_indexed, uint32_t pub,
                 size_t size)
{
    memset(t, 0, sizeof(*t));
    size_t cap = size + strlen(topic) + 256;
    uint8_t *payload = malloc(cap);
    if (!payload)
        return -1;
    size_t n = msgpack ? gale_pub_msgpack(payload, topic, pub, size)
                       : gale_pub_json(payload, cap, topic, pub, size);
    int rc = n ? pubtpl_frame(t, msgpack, msgpack ? WS_BINARY : WS_TEXT, payload, n, topic,
                              topic_indexed)
               : -1;
    free(payload);
    return rc;
}

void pubtpl_set(pubtpl_t *t, uint64_t seq, uint64_t time_ns, uint32_t topic_idx)
{
    uint64_t s = BENCH_SEQ_BASE + seq, tm = BENCH_TIME_BASE + time_ns;
    if (t->msgpack) {
        if (t->off_id)
            put_be64(t->frame + t->off_id, s);
        put_be64(t->frame + t->off_seq, s);
        put_be64(t->frame + t->off_time, tm);
    } else {
        if (t->off_id)
            put_dec(t->frame + t->off_id, s, 13);
        put_dec(t->frame + t->off_seq, s, 13);
        put_dec(t->frame + t->off_time, tm, 16);
    }
    if (t->off_topic)
        put_dec(t->frame + t->off_topic, topic_idx, TOPIC_IDX_DIGITS);
}

void pubtpl_free(pubtpl_t *t)
{
    free(t->frame);
    t->frame = NULL;
}

/* --- JSON reading: find a key anywhere, read a string or unsigned integer ------------- */

static const uint8_t *skip_ws(const uint8_t *p, const uint8_t *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* The value after `"key":`, or NULL. An escaped quote before the match is not a key. */
static const uint8_t *json_value(const uint8_t *p, size_t n, const char *key)
{
    char pat[16];
    size_t k = strlen(key);
    if (k + 2 > sizeof(pat))
        return NULL;
    pat[0] = '"';
    memcpy(pat + 1, key, k);
    pat[k + 1] = '"';
    k += 2; /* not snprintf: this runs several times per received message */
    const uint8_t *end = p + n, *at = p;
    while ((at = memmem(at, (size_t)(end - at), pat, (size_t)k)) != NULL) {
        const uint8_t *v = skip_ws(at + k, end);
        if ((at == p || at[-1] != '\\') && v < end && *v == ':')
            return skip_ws(v + 1, end);
        at += k;
    }
    return NULL;
}

static bool json_uint(const uint8_t *p, size_t n, const char *key, uint64_t *out)
{
    const uint8_t *v = json_value(p, n, key), *end = p + n;
    if (!v || v >= end || *v < '0' || *v > '9')
        return false;
    uint64_t x = 0;
    for (; v < end && *v >= '0' && *v <= '9'; v++)
        x = x * 10 + (uint64_t)(*v - '0');
    *out = x;
    return true;
}

/* Copies a string value (escapes left as they are), truncated to @cap - 1. */
static bool json_str(const uint8_t *p, size_t n, const char *key, char *out, size_t cap)
{
    const uint8_t *v = json_value(p, n, key), *end = p + n;
    if (!v || v >= end || *v != '"')
        return false;
    size_t i = 0;
    for (v++; v < end && *v != '"'; v++) {
        if (*v == '\\' && v + 1 < end)
            v++;
        if (i + 1 < cap)
            out[i++] = (char)*v;
    }
    out[i] = 0;
    return true;
}

/* --- MessagePack reading: a small bounded cursor -------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} mpr_t;

static uint64_t mpr_be(mpr_t *r, int bytes)
{
    if (r->end - r->p < bytes) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = v << 8 | *r->p++;
    return v;
}

/* Reads a str header; returns the length and leaves p at the bytes, or -1 if not a str. */
static int64_t mpr_strlen(mpr_t *r)
{
    if (r->p >= r->end)
        return -1;
    uint8_t b = *r->p;
    int64_t n;
    if ((b & 0xe0) == 0xa0) {
        r->p++;
        n = b & 0x1f;
    } else if (b == 0xd9 || b == 0xda || b == 0xdb) {
        r->p++;
        n = (int64_t)mpr_be(r, b == 0xd9 ? 1 : b == 0xda ? 2 : 4);
    } else {
        return -1;
    }
    if (r->bad || n > r->end - r->p)
        return -1;
    return n;
}

static bool mpr_uint(mpr_t *r, uint64_t *out)
{
    if (r->p >= r->end)
        return false;
    uint8_t b = *r->p;
    if (b < 0x80) {
        r->p++;
        *out = b;
        return true;
    }
    if (b >= 0xcc && b <= 0xcf) {
        r->p++;
        *out = mpr_be(r, 1 << (b - 0xcc));
        return !r->bad;
    }
    if (b >= 0xd0 && b <= 0xd3) { /* signed but non-negative is fine */
        r->p++;
        int bytes = 1 << (b - 0xd0);
        uint64_t v = mpr_be(r, bytes);
        if (r->bad || (v >> (8 * bytes - 1)) & 1)
            return false;
        *out = v;
        return true;
    }
    return false;
}

/* Skips one object; containers to a bounded depth. */
static void mpr_skip(mpr_t *r, int depth)
{
    if (r->p >= r->end || depth > 32) {
        r->bad = 1;
        return;
    }
    uint8_t b = *r->p++;
    uint64_t n = 0, items = 0;
    if (b < 0x80 || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return;
    if ((b & 0xe0) == 0xa0) {
        n = b & 0x1f;
    } else if ((b & 0xf0) == 0x90) {
        items = b & 0x0f;
    } else if ((b & 0xf0) == 0x80) {
        items = 2 * (uint64_t)(b & 0x0f);
    } else {
        switch (b) {
        case 0xc4:
        case 0xd9:
            n = mpr_be(r, 1);
            break; /* bin8, str8 */
        case 0xc5:
        case 0xda:
            n = mpr_be(r, 2);
            break;
        case 0xc6:
        case 0xdb:
            n = mpr_be(r, 4);
            break;
        case 0xc7:
            n = mpr_be(r, 1) + 1;
            break; /* ext: type byte + data */
        case 0xc8:
            n = mpr_be(r, 2) + 1;
            break;
        case 0xc9:
            n = mpr_be(r, 4) + 1;
            break;
        case 0xca:
            n = 4;
            break;
        case 0xcb:
            n = 8;
            break;
        case 0xcc:
        case 0xd0:
            n = 1;
            break;
        case 0xcd:
        case 0xd1:
            n = 2;
            break;
        case 0xce:
        case 0xd2:
            n = 4;
            break;
        case 0xcf:
        case 0xd3:
            n = 8;
            break;
        case 0xd4:
            n = 2;
            break; /* fixext 1..16: type + data */
        case 0xd5:
            n = 3;
            break;
        case 0xd6:
            n = 5;
            break;
        case 0xd7:
            n = 9;
            break;
        case 0xd8:
            n = 17;
            break;
        case 0xdc:
            items = mpr_be(r, 2);
            break;
        case 0xdd:
            items = mpr_be(r, 4);
            break;
        case 0xde:
            items = 2 * mpr_be(r, 2);
            break;
        case 0xdf:
            items = 2 * mpr_be(r, 4);
            break;
        default:
            r->bad = 1;
            return;
        }
    }
    if (r->bad || n > (uint64_t)(r->end - r->p) || items > (uint64_t)(r->end - r->p)) {
        r->bad = 1;
        return;
    }
    r->p += n;
    for (uint64_t i = 0; i < items && !r->bad; i++)
        mpr_skip(r, depth + 1);
}

/* Reads a map header; returns its number of pairs or -1. */
static int64_t mpr_map(mpr_t *r)
{
    if (r->p >= r->end)
        return -1;
    uint8_t b = *r->p++;
    if ((b & 0xf0) == 0x80)
        return b & 0x0f;
    if (b == 0xde || b == 0xdf) {
        int64_t n = (int64_t)mpr_be(r, b == 0xde ? 2 : 4);
        return r->bad ? -1 : n;
    }
    return -1;
}

static bool key_is(const uint8_t *k, int64_t n, const char *s)
{
    return (size_t)n == strlen(s) && memcmp(k, s, (size_t)n) == 0;
}

static void mpr_copy_str(mpr_t *r, char *out, size_t cap)
{
    int64_t n = mpr_strlen(r);
    if (n < 0) {
        mpr_skip(r, 0);
        return;
    }
    size_t c = (size_t)n < cap - 1 ? (size_t)n : cap - 1;
    memcpy(out, r->p, c);
    out[c] = 0;
    r->p += n;
}

static void mp_bench_data(gmsg_t *m, mpr_t *r)
{
    int64_t pairs = mpr_map(r);
    int found = 0;
    for (int64_t i = 0; i < pairs && !r->bad; i++) {
        int64_t kn = mpr_strlen(r);
        if (kn < 0) {
            r->bad = 1;
            return;
        }
        const uint8_t *k = r->p;
        r->p += kn;
        uint64_t *dst = key_is(k, kn, "p")   ? &m->p
                        : key_is(k, kn, "s") ? &m->s
                        : key_is(k, kn, "t") ? &m->t
                                             : NULL;
        if (dst && mpr_uint(r, dst))
            found++;
        else if (!dst)
            mpr_skip(r, 1);
        else
            r->bad = 1;
    }
    m->has_bench = !r->bad && found == 3;
}

static int parse_msgpack(gmsg_t *m, const uint8_t *p, size_t n)
{
    mpr_t r = {p, p + n, 0};
    int64_t pairs = mpr_map(&r);
    if (pairs < 0)
        return -1;
    char op[16] = "";
    for (int64_t i = 0; i < pairs && !r.bad; i++) {
        int64_t kn = mpr_strlen(&r);
        if (kn < 0)
            return -1;
        const uint8_t *k = r.p;
        r.p += kn;
        if (key_is(k, kn, "op"))
            mpr_copy_str(&r, op, sizeof(op));
        else if (key_is(k, kn, "id"))
            m->has_id = mpr_uint(&r, &m->id);
        else if (key_is(k, kn, "data"))
            mp_bench_data(m, &r);
        else if (key_is(k, kn, "code"))
            mpr_copy_str(&r, m->code, sizeof(m->code));
        else if (key_is(k, kn, "msg"))
            mpr_copy_str(&r, m->text, sizeof(m->text));
        else if (key_is(k, kn, "ep")) {
            mpr_copy_str(&r, m->ep, sizeof(m->ep)); /* not a str: skipped, left empty */
            m->has_ep = m->ep[0] != 0;
        } else if (key_is(k, kn, "off")) {
            if (!(m->has_off = mpr_uint(&r, &m->off)))
                mpr_skip(&r, 0);
        } else if (key_is(k, kn, "recovered") && r.p < r.end && (*r.p == 0xc2 || *r.p == 0xc3)) {
            m->has_recovered = true;
            m->recovered = *r.p++ == 0xc3;
        } else
            mpr_skip(&r, 0);
    }
    if (r.bad || !op[0])
        return -1;
    m->op = !strcmp(op, "msg")     ? GM_MSG
            : !strcmp(op, "ack")   ? GM_ACK
            : !strcmp(op, "hello") ? GM_HELLO
            : !strcmp(op, "err")   ? GM_ERR
            : !strcmp(op, "pong")  ? GM_PONG
                                   : GM_OTHER;
    return 0;
}

/* Reads p, s, t of a JSON data object; the offsets are removed by bench_fix(). */
static bool json_bench(gmsg_t *m, const uint8_t *d, size_t n)
{
    return json_uint(d, n, "p", &m->p) && json_uint(d, n, "s", &m->s) &&
           json_uint(d, n, "t", &m->t);
}

/* Checks the fixed offsets of s and t and removes them. */
static void bench_fix(gmsg_t *m)
{
    m->has_bench = m->has_bench && m->s >= BENCH_SEQ_BASE && m->t >= BENCH_TIME_BASE;
    m->s -= BENCH_SEQ_BASE; /* meaningless when has_bench is false */
    m->t -= BENCH_TIME_BASE;
}

void bench_data_parse_json(gmsg_t *m, const uint8_t *p, size_t n)
{
    m->has_bench = json_bench(m, p, n);
    bench_fix(m);
}

static int parse_json(gmsg_t *m, const uint8_t *p, size_t n)
{
    char op[16];
    if (!json_str(p, n, "op", op, sizeof(op)))
        return -1;
    if (!strcmp(op, "msg")) {
        m->op = GM_MSG;
        const uint8_t *d = json_value(p, n, "data");
        if (d)
            m->has_bench = json_bench(m, d, (size_t)(p + n - d));
        return 0;
    }
    m->op = !strcmp(op, "ack")     ? GM_ACK
            : !strcmp(op, "hello") ? GM_HELLO
            : !strcmp(op, "err")   ? GM_ERR
            : !strcmp(op, "pong")  ? GM_PONG
                                   : GM_OTHER;
    m->has_id = json_uint(p, n, "id", &m->id);
    if (m->op == GM_ERR) {
        json_str(p, n, "code", m->code, sizeof(m->code));
        json_str(p, n, "msg", m->text, sizeof(m->text));
    }
    return 0;
}

void gmsg_parse_pos(gmsg_t *m, bool binary, const uint8_t *p, size_t n)
{
    if (binary)
        return; /* read by parse_msgpack() */
    m->has_ep = json_str(p, n, "ep", m->ep, sizeof(m->ep));
    m->has_off = json_uint(p, n, "off", &m->off);
    if (m->op != GM_ACK)
        return;
    const uint8_t *v = json_value(p, n, "recovered"), *end = p + n;
    if (v && end - v >= 4 && !memcmp(v, "true", 4))
        m->has_recovered = m->recovered = true;
    else if (v && end - v >= 5 && !memcmp(v, "false", 5))
        m->has_recovered = true;
}

int gmsg_parse(gmsg_t *m, bool binary, const uint8_t *p, size_t n)
{
    memset(m, 0, sizeof(*m));
    int rc = binary ? parse_msgpack(m, p, n) : parse_json(m, p, n);
    if (rc == 0 && m->has_bench)
        bench_fix(m);
    return rc;
}
