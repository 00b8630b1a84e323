/* bench_nats: the NATS client protocol for the load generator, see bench_nats.h. */
#include "bench_nats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What the client says about itself: no +OK after each message, no headers (MSG, not HMSG),
 * protocol 1 (the server may send INFO updates, which the parser takes). */
#define CONNECT_LINE                                                                               \
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"headers\":false,"      \
    "\"protocol\":1,\"name\":\"gale-bench\",\"lang\":\"c\",\"version\":\"1\"}\r\n"

#define NOT_NATS "not a NATS protocol message (is this a nats-server websocket port?)"
#define MAX_TOKENS 6 /* HMSG subject sid reply hdr total, and one more to notice extras */

void nats_rx_reset(nats_rx_t *r, uint64_t first_ack_id)
{
    r->len = 0;
    r->next_ack_id = first_ack_id;
    r->seen_info = false;
}

void nats_rx_free(nats_rx_t *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
}

/* One nats_rx_feed() call. */
typedef struct {
    nats_rx_t *r;
    nats_event_cb cb;
    void *user;
    int rc; /* 1: the callback said stop; -1: protocol error (why) */
    const char *why;
    size_t missing; /* after an incomplete MSG: bytes still needed; 0: the line is incomplete */
} feed_t;

static bool word_is(const uint8_t *w, size_t n, const char *s)
{
    return n == strlen(s) && strncasecmp((const char *)w, s, n) == 0;
}

/* Splits p[0..n) at spaces and tabs; returns the number of tokens (at most max). */
static int tokens(const uint8_t *p, size_t n, const uint8_t **tok, size_t *len, int max)
{
    int k = 0;
    size_t i = 0;
    while (k < max) {
        while (i < n && (p[i] == ' ' || p[i] == '\t'))
            i++;
        if (i == n)
            break;
        tok[k] = p + i;
        while (i < n && p[i] != ' ' && p[i] != '\t')
            i++;
        len[k] = (size_t)(p + i - tok[k]);
        k++;
    }
    return k;
}

/* A decimal size of at most 9 digits (up to 1 GB), or -1. */
static int64_t size_of(const uint8_t *p, size_t n)
{
    if (n == 0 || n > 9)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* The header and total sizes of a MSG (subject sid [reply] total) or HMSG (subject sid
 * [reply] hdr total) line's arguments; false if malformed. */
static bool msg_sizes(const uint8_t *args, size_t n, bool hmsg, int64_t *hdr, int64_t *total)
{
    const uint8_t *tok[MAX_TOKENS];
    size_t len[MAX_TOKENS];
    int k = tokens(args, n, tok, len, MAX_TOKENS);
    int least = hmsg ? 4 : 3;
    if (k < least || k > least + 1)
        return false;
    *total = size_of(tok[k - 1], len[k - 1]);
    *hdr = hmsg ? size_of(tok[k - 2], len[k - 2]) : 0;
    return *total >= 0 && *hdr >= 0 && *hdr <= *total;
}

static size_t stop(feed_t *f, const char *why)
{
    f->rc = -1;
    f->why = why;
    return 0;
}

/* The text of -ERR 'text', quotes removed, into m->text. */
static void err_text(gmsg_t *m, const uint8_t *args, size_t n)
{
    while (n && (*args == ' ' || *args == '\t'))
        args++, n--;
    if (n >= 2 && args[0] == '\'' && args[n - 1] == '\'')
        args++, n -= 2;
    size_t c = n < sizeof(m->text) - 1 ? n : sizeof(m->text) - 1;
    memcpy(m->text, args, c);
    m->text[c] = 0;
    snprintf(m->code, sizeof(m->code), "-ERR");
}

/* Whether p[0..n), the start of a line, can begin a NATS operation: a wrong stream is then
 * told at once, not after 64 KiB without an end of line (a gale hello has none). */
static bool op_start(const uint8_t *p, size_t n)
{
    static const char *const ops[] = {"INFO", "MSG", "HMSG", "PING", "PONG", "+OK", "-ERR"};
    size_t w = 0;
    while (w < n && w < 5 && p[w] != ' ' && p[w] != '\t' && p[w] != '\r')
        w++;
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
        if (w <= strlen(ops[i]) && strncasecmp((const char *)p, ops[i], w) == 0 &&
            (w == n || w == strlen(ops[i])))
            return true;
    return false;
}

/*
 * Reads the protocol message at p[0..n) into @m; returns its length, or 0 if incomplete
 * (f->missing says how many bytes a MSG still lacks) or on an error (f->rc = -1).
 */
static size_t parse_one(feed_t *f, const uint8_t *p, size_t n, gmsg_t *m)
{
    const uint8_t *nl = memchr(p, '\n', n < NATS_MAX_LINE ? n : NATS_MAX_LINE);
    if (!nl && !op_start(p, n))
        return stop(f, NOT_NATS);
    if (!nl)
        return n >= NATS_MAX_LINE ? stop(f, "NATS protocol line longer than 64 KiB") : 0;
    size_t used = (size_t)(nl - p) + 1, ll = used - 1;
    if (ll && p[ll - 1] == '\r')
        ll--;
    size_t w = 0;
    while (w < ll && p[w] != ' ' && p[w] != '\t')
        w++;
    memset(m, 0, sizeof(*m));
    bool hmsg = word_is(p, w, "HMSG");
    if (hmsg || word_is(p, w, "MSG")) {
        int64_t hdr, total;
        if (!msg_sizes(p + w, ll - w, hmsg, &hdr, &total))
            return stop(f, "malformed NATS MSG line");
        if (total > BENCH_MAX_FRAME)
            return stop(f, "NATS message larger than 1 MiB");
        size_t whole = used + (size_t)total + 2;
        if (n < whole) {
            f->missing = whole - n;
            return 0;
        }
        if (p[whole - 2] != '\r' || p[whole - 1] != '\n')
            return stop(f, "NATS message payload not followed by CRLF");
        m->op = GM_MSG;
        bench_data_parse_json(m, p + used + hdr, (size_t)(total - hdr));
        return whole;
    }
    if (word_is(p, w, "PING")) {
        m->op = GM_PING;
    } else if (word_is(p, w, "PONG")) {
        m->op = GM_ACK;
        m->has_id = true;
        m->id = f->r->next_ack_id++;
    } else if (word_is(p, w, "INFO")) {
        m->op = f->r->seen_info ? GM_OTHER : GM_HELLO;
        f->r->seen_info = true;
    } else if (word_is(p, w, "-ERR")) {
        m->op = GM_ERR;
        err_text(m, p + w, ll - w);
    } else if (word_is(p, w, "+OK")) {
        m->op = GM_OTHER;
    } else {
        return stop(f, NOT_NATS);
    }
    return used;
}

/* Parses and reports every complete message of p[0..n); returns the bytes consumed. */
static size_t parse(feed_t *f, const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        gmsg_t m;
        size_t k = parse_one(f, p + off, n - off, &m);
        if (k == 0)
            break;
        off += k;
        if (f->cb(f->user, &m)) {
            f->rc = 1;
            break;
        }
    }
    return off;
}

static int carry(nats_rx_t *r, const uint8_t *p, size_t n)
{
    if (r->len + n > r->cap) {
        size_t want = r->cap ? r->cap : 512;
        while (want < r->len + n)
            want *= 2;
        uint8_t *nb = want <= UINT32_MAX ? realloc(r->buf, want) : NULL;
        if (!nb)
            return -1;
        r->buf = nb;
        r->cap = (uint32_t)want;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += (uint32_t)n;
    return 0;
}

int nats_rx_feed(nats_rx_t *r, const uint8_t *p, size_t n, nats_event_cb cb, void *user,
                 const char **why)
{
    feed_t f = {.r = r, .cb = cb, .user = user};
    /* First complete the carried message, taking no more of @p than it needs: to the end of
     * its line, then what its payload lacks. The rest is parsed where it lies. */
    while (r->len && n) {
        size_t take = n;
        if (f.missing) {
            take = f.missing < n ? f.missing : n;
        } else {
            const uint8_t *nl = memchr(p, '\n', n);
            if (nl)
                take = (size_t)(nl - p) + 1;
        }
        if (carry(r, p, take) < 0) {
            *why = "out of memory";
            return -1;
        }
        p += take;
        n -= take;
        f.missing = 0;
        size_t used = parse(&f, r->buf, r->len);
        if (f.rc) {
            *why = f.why;
            return f.rc;
        }
        memmove(r->buf, r->buf + used, r->len - used);
        r->len -= (uint32_t)used;
    }
    if (n) {
        size_t used = parse(&f, p, n);
        if (f.rc) {
            *why = f.why;
            return f.rc;
        }
        if (used < n && carry(r, p + used, n - used) < 0) {
            *why = "out of memory";
            return -1;
        }
    }
    return 0;
}

size_t nats_hello_frame(uint8_t *dst, size_t cap, const char *subject)
{
    char text[512];
    int k = subject ? snprintf(text, sizeof(text), CONNECT_LINE "SUB %s 1\r\nPING\r\n", subject)
                    : snprintf(text, sizeof(text), CONNECT_LINE);
    if (k < 0 || (size_t)k >= sizeof(text) || cap < (size_t)k + 14)
        return 0;
    return ws_frame(dst, WS_BINARY, text, (size_t)k, 0);
}

size_t nats_subs_frame(uint8_t *dst, size_t cap, const char *prefix, uint64_t first, uint32_t count)
{
    char *text = malloc(cap);
    size_t len = 0, out = 0;
    int k = text ? snprintf(text, cap, CONNECT_LINE) : -1;
    if (k < 0 || (size_t)k >= cap)
        goto Exit;
    len = (size_t)k;
    for (uint32_t j = 0; j < count; j++) {
        k = snprintf(text + len, cap - len, "SUB %s%llu %u\r\n", prefix,
                     (unsigned long long)(first + j), j + 1);
        if (k < 0 || (size_t)k >= cap - len)
            goto Exit;
        len += (size_t)k;
    }
    if (len + 6 + 14 > cap)
        goto Exit;
    memcpy(text + len, "PING\r\n", 6);
    out = ws_frame(dst, WS_BINARY, text, len + 6, 0);
Exit:
    free(text);
    return out;
}

size_t nats_pong_frame(uint8_t *dst)
{
    return ws_frame(dst, WS_BINARY, "PONG\r\n", 6, 0);
}

int nats_pubtpl_build(pubtpl_t *t, const char *subject, bool topic_indexed, uint32_t pub,
                      size_t size)
{
    memset(t, 0, sizeof(*t));
    size_t cap = size + strlen(subject) + 256;
    uint8_t *data = malloc(cap), *payload = malloc(cap + 64);
    int rc = -1;
    size_t d = data ? bench_data_json(data, cap, pub, size) : 0;
    if (!payload || !d)
        goto Exit;
    int k = snprintf((char *)payload, cap, "PUB %s %zu\r\n", subject, d);
    if (k < 0 || (size_t)k + d + 8 > cap + 64)
        goto Exit;
    memcpy(payload + k, data, d);
    memcpy(payload + k + d, "\r\nPING\r\n", 8);
    rc = pubtpl_frame(t, false, WS_BINARY, payload, (size_t)k + d + 8, subject, topic_indexed);
Exit:
    free(data);
    free(payload);
    return rc;
}
