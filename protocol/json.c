/*
 * Strict JSON (RFC 8259): validation, top-level member spans, string
 * escaping and unescaping, and conversion of a JSON value to MessagePack.
 *
 * One recursive-descent parser serves three modes:
 *  - J_VALIDATE: grammar, UTF-8 and depth checks only;
 *  - J_COUNT: the same, and records the element count of every container in
 *    the order the containers open (MessagePack needs counts up front);
 *  - J_EMIT: a second pass over input J_COUNT accepted, writing MessagePack.
 * Recursion is bounded by max_depth (at most GALE__DEPTH_CAP).
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

enum { J_VALIDATE, J_COUNT, J_EMIT };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    unsigned depth;
    unsigned max_depth;
    int mode;
    gale_buf_t *out;  /* J_EMIT */
    size_t *counts;   /* J_COUNT fills, J_EMIT reads, in container order */
    size_t ncounts;   /* J_COUNT: used; J_EMIT: next to read */
    size_t cap;       /* capacity of counts */
    bool heap_counts; /* counts is malloc'ed */
    bool oom;
} jparser_t;

static bool parse_value(jparser_t *j);

static inline void skip_ws(jparser_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\r' || *j->p == '\t'))
        j->p++;
}

static inline int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Four hex digits at s (already checked). */
static uint32_t hex4(const uint8_t *s)
{
    return (uint32_t)(hexval(s[0]) << 12 | hexval(s[1]) << 8 | hexval(s[2]) << 4 | hexval(s[3]));
}

/* Bytes that stand for themselves inside a string: printable ASCII but '"' and '\\'. */
static const uint8_t PLAIN[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/*
 * Scans a string starting at the opening quote. On success j->p is past the
 * closing quote, *s and *n span the raw contents and *escaped tells whether it
 * holds a backslash.
 */
static bool scan_string(jparser_t *j, const uint8_t **s, size_t *n, bool *escaped)
{
    const uint8_t *p = j->p + 1, *end = j->end;
    bool esc = false;
    *s = p;
    for (;;) {
        while (p < end && PLAIN[*p])
            p++;
        if (p >= end)
            return false;
        uint8_t c = *p;
        if (c == '"')
            break;
        if (c < 0x20)
            return false;
        if (c == '\\') {
            esc = true;
            if (end - p < 2)
                return false;
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                break;
            case 'u':
                if (end - p < 6 || hexval(p[2]) < 0 || hexval(p[3]) < 0 || hexval(p[4]) < 0 ||
                    hexval(p[5]) < 0)
                    return false;
                p += 6;
                break;
            default:
                return false;
            }
            continue;
        }
        uint32_t cp;
        p += gale__utf8_next(p, (size_t)(end - p), &cp);
        if (cp == GALE__UTF8_BAD)
            return false;
    }
    *n = (size_t)(p - *s);
    *escaped = esc;
    j->p = p + 1;
    return true;
}

size_t gale__json_unescape(uint8_t *dst, const uint8_t *s, size_t n, bool lenient)
{
    uint8_t *d = dst;
    size_t i = 0;
    while (i < n) {
        const uint8_t *bs = memchr(s + i, '\\', n - i);
        size_t run = bs != NULL ? (size_t)(bs - (s + i)) : n - i;
        memcpy(d, s + i, run);
        d += run;
        i += run;
        if (i >= n)
            break;
        uint8_t e = s[i + 1];
        i += 2;
        switch (e) {
        case 'b':
            *d++ = '\b';
            continue;
        case 'f':
            *d++ = '\f';
            continue;
        case 'n':
            *d++ = '\n';
            continue;
        case 'r':
            *d++ = '\r';
            continue;
        case 't':
            *d++ = '\t';
            continue;
        case 'u':
            break;
        default: /* " \ / */
            *d++ = e;
            continue;
        }
        uint32_t cp = hex4(s + i);
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && n - i >= 6 && s[i] == '\\' && s[i + 1] == 'u') {
            uint32_t lo = hex4(s + i + 2);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) {
            if (!lenient)
                return SIZE_MAX;
            cp = 0xFFFD; /* lone surrogate */
        }
        d += gale__utf8_encode(d, cp);
    }
    return (size_t)(d - dst);
}

bool gale__json_str_eq(const uint8_t *s, size_t n, bool escaped, const char *lit)
{
    size_t ln = strlen(lit);
    if (!escaped)
        return n == ln && memcmp(s, lit, n) == 0;
    uint8_t tmp[32];
    if (n > sizeof(tmp))
        return false; /* callers compare against short names; escapes shrink at most 6:1 */
    size_t m = gale__json_unescape(tmp, s, n, true);
    return m == ln && memcmp(tmp, lit, m) == 0;
}

/* ---- numbers ---- */

/* Scans a number; *integer is set when it has neither fraction nor exponent. */
static bool scan_number(jparser_t *j, bool *integer)
{
    const uint8_t *p = j->p, *end = j->end;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return false;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    else
        return false;
    *integer = true;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return false;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        *integer = false;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return false;
        while (p < end && *p >= '0' && *p <= '9')
            p++;
        *integer = false;
    }
    j->p = p;
    return true;
}

/* Parses s[0..n) (a valid JSON number) with strtod, which needs a terminator. */
static bool number_to_double(const uint8_t *s, size_t n, double *d)
{
    char small[128];
    char *tmp = small;
    if (n >= sizeof(small)) {
        tmp = malloc(n + 1);
        if (tmp == NULL)
            return false;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    *d = strtod(tmp, NULL); /* overflow gives +-HUGE_VAL (inf), underflow 0 or a subnormal */
    if (tmp != small)
        free(tmp);
    return true;
}

static bool emit_number(jparser_t *j, const uint8_t *s, size_t n, bool integer)
{
    gale_buf_t *b = j->out;
    if (integer) {
        bool neg = s[0] == '-';
        uint64_t mag = 0;
        bool overflow = false;
        for (size_t i = neg; i < n; i++) {
            unsigned dgt = (unsigned)(s[i] - '0');
            if (mag > (UINT64_MAX - dgt) / 10) {
                overflow = true;
                break;
            }
            mag = mag * 10 + dgt;
        }
        if (!overflow && !neg)
            return gale__mp_put_uint(b, mag);
        if (!overflow && mag <= (UINT64_C(1) << 63)) {
            int64_t v = mag == (UINT64_C(1) << 63) ? INT64_MIN : -(int64_t)mag;
            return gale__mp_put_int(b, v);
        }
        /* An integer literal beyond int64/uint64 is a float64, even if it rounds to 2^63. */
        double big;
        if (!number_to_double(s, n, &big)) {
            b->oom = true;
            return false;
        }
        return gale__mp_put_f64(b, big);
    }
    double d;
    if (!number_to_double(s, n, &d)) {
        b->oom = true;
        return false;
    }
    if (isfinite(d) && d == trunc(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0)
        return gale__mp_put_int(b, (int64_t)d);
    return gale__mp_put_f64(b, d);
}

/* ---- strings ---- */

static bool emit_string(jparser_t *j, const uint8_t *s, size_t n, bool escaped)
{
    gale_buf_t *b = j->out;
    size_t h = gale__mp_str_hdr_len(n);
    if (n > SIZE_MAX - h)
        return gale__buf_reserve(b, SIZE_MAX) != NULL;
    uint8_t *d = gale__buf_reserve(b, h + n);
    if (d == NULL)
        return false;
    size_t m = n;
    if (escaped)
        m = gale__json_unescape(d + h, s, n, true); /* m <= n: escapes never grow */
    else
        memcpy(d + h, s, n);
    size_t h2 = gale__mp_str_hdr_len(m);
    if (h2 != h)
        memmove(d + h2, d + h, m);
    gale__mp_write_str_hdr(d, m);
    b->len += h2 + m;
    return true;
}

/* ---- containers ---- */

/* J_COUNT: reserves the next count slot; returns its index or SIZE_MAX on failure. */
static size_t count_slot(jparser_t *j)
{
    if (j->ncounts == j->cap) {
        size_t cap = j->cap * 2;
        size_t *c = malloc(cap * sizeof(*c));
        if (c == NULL) {
            j->oom = true;
            return SIZE_MAX;
        }
        memcpy(c, j->counts, j->ncounts * sizeof(*c));
        if (j->heap_counts)
            free(j->counts);
        j->counts = c;
        j->cap = cap;
        j->heap_counts = true;
    }
    j->counts[j->ncounts] = 0;
    return j->ncounts++;
}

/* Opens a container: depth check, count slot or emitted header. */
static bool open_container(jparser_t *j, bool map, size_t *slot)
{
    if (++j->depth > j->max_depth)
        return false;
    j->p++;
    if (j->mode == J_COUNT) {
        *slot = count_slot(j);
        return *slot != SIZE_MAX;
    }
    if (j->mode == J_EMIT) {
        size_t n = j->counts[j->ncounts++];
        return map ? gale__mp_put_map_hdr(j->out, n) : gale__mp_put_array_hdr(j->out, n);
    }
    return true;
}

static bool parse_array(jparser_t *j)
{
    size_t slot = 0, n = 0;
    if (!open_container(j, false, &slot))
        return false;
    skip_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        goto Done;
    }
    for (;;) {
        if (!parse_value(j))
            return false;
        n++;
        skip_ws(j);
        if (j->p >= j->end)
            return false;
        if (*j->p == ']') {
            j->p++;
            break;
        }
        if (*j->p != ',')
            return false;
        j->p++;
        skip_ws(j);
    }
Done:
    if (j->mode == J_COUNT)
        j->counts[slot] = n;
    j->depth--;
    return true;
}

static bool parse_object(jparser_t *j)
{
    size_t slot = 0, n = 0;
    if (!open_container(j, true, &slot))
        return false;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        goto Done;
    }
    for (;;) {
        const uint8_t *s;
        size_t sn;
        bool esc;
        if (j->p >= j->end || *j->p != '"' || !scan_string(j, &s, &sn, &esc))
            return false;
        if (j->mode == J_EMIT && !emit_string(j, s, sn, esc))
            return false;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':')
            return false;
        j->p++;
        skip_ws(j);
        if (!parse_value(j))
            return false;
        n++;
        skip_ws(j);
        if (j->p >= j->end)
            return false;
        if (*j->p == '}') {
            j->p++;
            break;
        }
        if (*j->p != ',')
            return false;
        j->p++;
        skip_ws(j);
    }
Done:
    if (j->mode == J_COUNT)
        j->counts[slot] = n;
    j->depth--;
    return true;
}

static bool parse_literal(jparser_t *j, const char *lit, size_t n, uint8_t mp)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return false;
    j->p += n;
    return j->mode != J_EMIT || gale__buf_put(j->out, mp);
}

/* Parses one value at j->p (no leading whitespace). */
static bool parse_value(jparser_t *j)
{
    if (j->p >= j->end)
        return false;
    switch (*j->p) {
    case '{':
        return parse_object(j);
    case '[':
        return parse_array(j);
    case '"': {
        const uint8_t *s;
        size_t n;
        bool esc;
        if (!scan_string(j, &s, &n, &esc))
            return false;
        return j->mode != J_EMIT || emit_string(j, s, n, esc);
    }
    case 't':
        return parse_literal(j, "true", 4, 0xc3);
    case 'f':
        return parse_literal(j, "false", 5, 0xc2);
    case 'n':
        return parse_literal(j, "null", 4, 0xc0);
    default: {
        const uint8_t *s = j->p;
        bool integer;
        if (!scan_number(j, &integer))
            return false;
        return j->mode != J_EMIT || emit_number(j, s, (size_t)(j->p - s), integer);
    }
    }
}

static void jinit(jparser_t *j, const uint8_t *buf, size_t len, unsigned max_depth, int mode)
{
    memset(j, 0, sizeof(*j));
    j->p = buf;
    j->end = buf + len;
    j->max_depth = max_depth > GALE__DEPTH_CAP ? GALE__DEPTH_CAP : max_depth;
    j->mode = mode;
}

/* One value with optional surrounding whitespace, nothing else. */
static bool parse_document(jparser_t *j)
{
    skip_ws(j);
    if (!parse_value(j))
        return false;
    skip_ws(j);
    return j->p == j->end;
}

bool gale_json_valid(const uint8_t *buf, size_t len, unsigned max_depth)
{
    if (buf == NULL && len > 0)
        return false;
    jparser_t j;
    jinit(&j, buf, len, max_depth, J_VALIDATE);
    return parse_document(&j);
}

int gale__json_object(const uint8_t *buf, size_t len, unsigned max_depth, gale__jmember_fn fn,
                      void *arg)
{
    jparser_t j;
    jinit(&j, buf, len, max_depth, J_VALIDATE);
    skip_ws(&j);
    if (j.p >= j.end || *j.p != '{')
        return parse_document(&j) ? -1 : 0;
    if (j.max_depth < 1)
        return 0;
    j.depth = 1;
    j.p++;
    skip_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            gale__jmember_t m;
            if (j.p >= j.end || *j.p != '"' || !scan_string(&j, &m.key, &m.key_len, &m.key_escaped))
                return 0;
            skip_ws(&j);
            if (j.p >= j.end || *j.p != ':')
                return 0;
            j.p++;
            skip_ws(&j);
            m.val = j.p;
            if (!parse_value(&j))
                return 0;
            m.val_len = (size_t)(j.p - m.val);
            switch (*m.val) {
            case '{':
                m.kind = GALE__J_OBJECT;
                break;
            case '[':
                m.kind = GALE__J_ARRAY;
                break;
            case '"':
                m.kind = GALE__J_STRING;
                break;
            case 't':
                m.kind = GALE__J_TRUE;
                break;
            case 'f':
                m.kind = GALE__J_FALSE;
                break;
            case 'n':
                m.kind = GALE__J_NULL;
                break;
            default:
                m.kind = GALE__J_NUMBER;
                break;
            }
            if (!fn(&m, arg))
                return -2;
            skip_ws(&j);
            if (j.p >= j.end)
                return 0;
            if (*j.p == '}') {
                j.p++;
                break;
            }
            if (*j.p != ',')
                return 0;
            j.p++;
            skip_ws(&j);
        }
    }
    skip_ws(&j);
    return j.p == j.end ? 1 : 0;
}

gale_err_t gale__json_to_msgpack(gale_buf_t *out, const uint8_t *data, size_t len)
{
    size_t small[32];
    jparser_t j;
    gale_err_t err = GALE_ERR_BAD_REQUEST;
    jinit(&j, data, len, GALE_MAX_DEPTH, J_COUNT);
    j.counts = small;
    j.cap = sizeof(small) / sizeof(small[0]);
    if (data == NULL || !parse_document(&j)) {
        if (j.oom)
            err = GALE_ERR_INTERNAL;
        goto Exit;
    }
    j.mode = J_EMIT;
    j.out = out;
    j.p = data;
    j.ncounts = 0;
    if (!parse_document(&j) || out->oom) {
        err = GALE_ERR_INTERNAL; /* the first pass accepted it: only allocation can fail */
        goto Exit;
    }
    err = GALE_OK;
Exit:
    if (j.heap_counts)
        free(j.counts);
    return err;
}

/* ---- escaping ---- */

bool gale__json_put_str(gale_buf_t *b, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    enum { CHUNK = 4096 };
    if (n == 0) /* s may be NULL then (msgpack-c's empty str, an empty key buffer) */
        return gale_buf_append(b, "\"\"", 2);
    gale__buf_put(b, '"');
    size_t i = 0;
    while (i < n) {
        /* Each input byte yields at most 6 output bytes (\u00XX); a character that
         * starts in this chunk may end up to 3 bytes past it. */
        size_t end = n - i < CHUNK ? n : i + CHUNK;
        uint8_t *d = gale__buf_reserve(b, (end - i + 3) * 6);
        if (d == NULL)
            return false;
        uint8_t *d0 = d;
        while (i < end) {
            uint8_t c = s[i];
            if (PLAIN[c]) {
                *d++ = c;
                i++;
                continue;
            }
            if (c >= 0x80) {
                uint32_t cp;
                size_t k = gale__utf8_next(s + i, n - i, &cp);
                if (cp == GALE__UTF8_BAD) {
                    memcpy(d, "\xEF\xBF\xBD", 3);
                    d += 3;
                } else {
                    memcpy(d, s + i, k);
                    d += k;
                }
                i += k;
                continue;
            }
            *d++ = '\\';
            switch (c) {
            case '"':
            case '\\':
                *d++ = c;
                break;
            case '\b':
                *d++ = 'b';
                break;
            case '\f':
                *d++ = 'f';
                break;
            case '\n':
                *d++ = 'n';
                break;
            case '\r':
                *d++ = 'r';
                break;
            case '\t':
                *d++ = 't';
                break;
            default:
                memcpy(d, "u00", 3);
                d[3] = (uint8_t)hex[c >> 4];
                d[4] = (uint8_t)hex[c & 15];
                d += 5;
                break;
            }
            i++;
        }
        b->len += (size_t)(d - d0);
    }
    return gale__buf_put(b, '"');
}
