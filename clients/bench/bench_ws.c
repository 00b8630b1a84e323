/* bench_ws: raw WebSocket client connections on epoll, see bench_ws.h. */
#include "bench_ws.h"
#include "bench_msg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { KIND_CONN = 1, KIND_WATCH = 2 };
enum { ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DEAD };

/* A read lands after the carried bytes of an incomplete frame (up to BENCH_MAX_FRAME). */
#define RX_CAP (BENCH_MAX_FRAME + 256 * 1024)
#define MAX_HTTP_ANSWER 8192
#define EVENTS 256

/* RFC 6455 section 1.3's sample nonce and its accept value. */
#define WS_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

struct bws_loop {
    int ep;
    bws_target_t target;
    bws_handlers_t h;
    char request[2048];
    size_t request_len;
    uint8_t *rx;
    bws_conn_t *live; /* every connection not yet closed, doubly linked */
    bws_conn_t *dead; /* closed, freed after the current batch of events */
};

/* Writes the upgrade request for @target into l->request; -1 if it does not fit. */
static int build_request(bws_loop_t *l, const bws_target_t *target)
{
    int n = snprintf(l->request, sizeof(l->request),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: "
                     "Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\nSec-WebSocket-Version: 13\r\n"
                     "%s%s%s\r\n",
                     target->path, target->host, target->proto ? "Sec-WebSocket-Protocol: " : "",
                     target->proto ? target->proto : "", target->proto ? "\r\n" : "");
    if (n <= 0 || (size_t)n >= sizeof(l->request))
        return -1;
    l->target = *target;
    l->request_len = (size_t)n;
    return 0;
}

bws_loop_t *bws_loop_new(const bws_target_t *target, const bws_handlers_t *handlers)
{
    bws_loop_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    l->h = *handlers;
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    l->rx = malloc(RX_CAP);
    if (l->ep < 0 || !l->rx || build_request(l, target) < 0) {
        int e = l->ep < 0 ? errno : ENOMEM;
        bws_loop_free(l);
        errno = e;
        return NULL;
    }
    return l;
}

int bws_loop_retarget(bws_loop_t *l, const bws_target_t *target)
{
    if (build_request(l, target) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

static void conn_free(bws_conn_t *c)
{
    free(c->carry);
    free(c->frag);
    free(c->out);
    free(c);
}

static void reap(bws_loop_t *l)
{
    while (l->dead) {
        bws_conn_t *c = l->dead;
        l->dead = c->next_dead;
        conn_free(c);
    }
}

void bws_loop_free(bws_loop_t *l)
{
    if (!l)
        return;
    while (l->live)
        bws_close(l->live);
    reap(l);
    if (l->ep >= 0)
        close(l->ep);
    free(l->rx);
    free(l);
}

int bws_watch_add(bws_loop_t *l, bws_watch_t *w)
{
    w->kind = KIND_WATCH;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
    return epoll_ctl(l->ep, EPOLL_CTL_ADD, w->fd, &ev);
}

void bws_watch_del(bws_loop_t *l, bws_watch_t *w)
{
    epoll_ctl(l->ep, EPOLL_CTL_DEL, w->fd, NULL);
}

static void unlink_conn(bws_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->loop->live = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

void bws_close(bws_conn_t *c)
{
    if (c->state == ST_DEAD)
        return;
    c->state = ST_DEAD;
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    unlink_conn(c);
    c->next_dead = c->loop->dead;
    c->loop->dead = c;
}

static void fail(bws_conn_t *c, int code, const char *why)
{
    if (c->state == ST_DEAD)
        return;
    bws_close(c);
    if (c->loop->h.on_close)
        c->loop->h.on_close(c, code, why);
}

bws_conn_t *bws_connect(bws_loop_t *l, uint32_t index, void *user)
{
    bws_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->kind = KIND_CONN;
    c->index = index;
    c->user = user;
    c->loop = l;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        goto Error;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const bws_target_t *t = &l->target;
    if (t->src_addrs > 0 && (ntohl(t->addr.sin_addr.s_addr) >> 24) == 127) {
        /* Spread sources over 127.0.1.1 .. so each (source, destination) pair gets its own
         * ephemeral port range; the port is chosen at connect time. */
        unsigned k = index % t->src_addrs;
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000000u | (1u + k / 254) << 8 | (1u + k % 254));
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0)
            goto Error;
    }
    if (connect(c->fd, (const struct sockaddr *)&t->addr, sizeof(t->addr)) < 0 &&
        errno != EINPROGRESS)
        goto Error;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        goto Error;
    c->state = ST_CONNECTING;
    c->next = l->live;
    if (l->live)
        l->live->prev = c;
    l->live = c;
    return c;
Error:;
    int e = errno;
    if (c->fd >= 0)
        close(c->fd);
    free(c);
    errno = e;
    return NULL;
}

static int buf_append(uint8_t **buf, uint32_t *len, uint32_t *cap, const void *p, size_t n)
{
    if (*len + n > *cap) {
        size_t want = *cap ? *cap : 256;
        while (want < *len + n)
            want *= 2;
        if (want > UINT32_MAX)
            return -1;
        uint8_t *nb = realloc(*buf, want);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = (uint32_t)want;
    }
    memcpy(*buf + *len, p, n);
    *len += (uint32_t)n;
    return 0;
}

/* Writes what is queued; returns -1 if the connection failed (and is closed). */
static int flush_out(bws_conn_t *c)
{
    uint32_t off = 0;
    while (off < c->out_len) {
        ssize_t n = send(c->fd, c->out + off, c->out_len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            fail(c, 0, strerror(errno));
            return -1;
        }
        off += (uint32_t)n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    return 0;
}

int bws_send(bws_conn_t *c, const void *p, size_t n)
{
    if (c->state == ST_DEAD)
        return -1;
    size_t off = 0;
    if (c->out_len == 0 && c->state != ST_CONNECTING) {
        while (off < n) {
            ssize_t k = send(c->fd, (const uint8_t *)p + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k < 0) {
                if (errno == EAGAIN || errno == EINTR)
                    break;
                fail(c, 0, strerror(errno));
                return -1;
            }
            off += (size_t)k;
        }
    }
    if (off < n &&
        buf_append(&c->out, &c->out_len, &c->out_cap, (const uint8_t *)p + off, n - off)) {
        fail(c, 0, "out of memory");
        return -1;
    }
    return 0;
}

static void send_control(bws_conn_t *c, int opcode, const void *p, size_t n)
{
    uint8_t f[140];
    if (n > 125)
        n = 125;
    bws_send(c, f, ws_frame(f, opcode, p, n, 0));
}

void bws_send_close(bws_conn_t *c, int code)
{
    uint8_t b[2] = {(uint8_t)(code >> 8), (uint8_t)code};
    if (!c->close_sent)
        send_control(c, WS_CLOSE, b, 2);
    c->close_sent = true;
}

static void on_connected(bws_conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        fail(c, 0, strerror(err));
        return;
    }
    c->state = ST_HANDSHAKE;
    bws_send(c, c->loop->request, c->loop->request_len);
}

/* The value of header @name in the HTTP answer @h (NUL-terminated), copied into @out. */
static bool header(const char *h, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    for (const char *line = strstr(h, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *s = line + 2;
        if (strncasecmp(s, name, k) == 0 && s[k] == ':') {
            s += k + 1;
            while (*s == ' ' || *s == '\t')
                s++;
            size_t n = strcspn(s, "\r\n");
            while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
            if (n >= cap)
                n = cap - 1;
            memcpy(out, s, n);
            out[n] = 0;
            return true;
        }
    }
    return false;
}

/* Checks the upgrade answer in p[0..n) (ending at the blank line). */
static const char *check_answer(bws_conn_t *c, char *p, size_t n)
{
    static char why[160];
    p[n - 1] = 0; /* the last \n: the text stays NUL-terminated */
    if (strncmp(p, "HTTP/1.1 101", 12) != 0) {
        snprintf(why, sizeof(why), "upgrade refused: %.*s", (int)strcspn(p, "\r\n"), p);
        return why;
    }
    char v[128];
    if (!header(p, "Sec-WebSocket-Accept", v, sizeof(v)) || strcmp(v, WS_ACCEPT) != 0)
        return "bad Sec-WebSocket-Accept in the 101 answer";
    const char *proto = c->loop->target.proto;
    bool has = header(p, "Sec-WebSocket-Protocol", v, sizeof(v));
    if (proto && has && strcmp(v, proto) != 0) {
        snprintf(why, sizeof(why), "the server chose subprotocol %.60s, not %.40s", v, proto);
        return why;
    }
    if (proto && !has && strcmp(proto, "gale.v1.json") != 0) {
        snprintf(why, sizeof(why),
                 "the server accepted no subprotocol, not the one offered (%.40s)", proto);
        return why;
    }
    return NULL;
}

static void handle_frame(bws_conn_t *c, int fin, int opcode, const uint8_t *p, size_t n)
{
    bws_loop_t *l = c->loop;
    if (opcode >= 8) {
        if (opcode == WS_PING) {
            send_control(c, WS_PONG, p, n);
        } else if (opcode == WS_CLOSE) {
            int code = n >= 2 ? p[0] << 8 | p[1] : 1005;
            static char why[160];
            snprintf(why, sizeof(why), "closed by the server with %d%s%.*s", code,
                     n > 2 ? ": " : "", n > 2 ? (int)(n - 2 > 100 ? 100 : n - 2) : 0,
                     n > 2 ? (const char *)p + 2 : "");
            if (!c->close_sent)
                send_control(c, WS_CLOSE, p, n >= 2 ? 2 : 0);
            c->close_sent = true;
            fail(c, code, why);
        }
        return;
    }
    if (opcode == WS_CONT || !fin) {
        if (opcode != WS_CONT) {
            c->frag_len = 0;
            c->frag_opcode = opcode;
        } else if (!c->frag_opcode) {
            fail(c, 0, "continuation frame without a first fragment");
            return;
        }
        if (c->frag_len + n > BENCH_MAX_FRAME ||
            buf_append(&c->frag, &c->frag_len, &c->frag_cap, p, n)) {
            fail(c, 0, "fragmented message too large");
            return;
        }
        if (!fin)
            return;
        opcode = c->frag_opcode;
        c->frag_opcode = 0;
        p = c->frag;
        n = c->frag_len;
    }
    if (l->h.on_message)
        l->h.on_message(c, opcode == WS_BINARY, p, n);
}

/* Stream mode: hands over what p[0..n) holds of the current data frame; returns its size. */
static size_t stream_payload(bws_conn_t *c, uint8_t *p, size_t n)
{
    size_t k = c->stream_left < n ? (size_t)c->stream_left : n;
    if (c->stream_masked)
        for (size_t i = 0; i < k; i++)
            p[i] ^= c->stream_key[c->stream_kpos++ & 3];
    c->stream_left -= k;
    if (k && c->loop->h.on_message)
        c->loop->h.on_message(c, c->stream_binary, p, k);
    return k;
}

/* Parses as many whole frames as p[0..n) holds (in stream mode, data frames in pieces);
 * returns the bytes consumed. */
static size_t parse_frames(bws_conn_t *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    bool stream = c->loop->target.stream;
    while (c->state == ST_OPEN && off < n) {
        if (c->stream_left) {
            off += stream_payload(c, p + off, n - off);
            continue;
        }
        if (n - off < 2)
            break;
        uint8_t b0 = p[off], b1 = p[off + 1];
        size_t h = 2;
        uint64_t len = b1 & 0x7f;
        if (len == 126) {
            if (n - off < 4)
                break;
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            h = 4;
        } else if (len == 127) {
            if (n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[off + 2 + i];
            h = 10;
        }
        if (b0 & 0x70) {
            fail(c, 0, "frame with reserved bits set (no extension was negotiated)");
            break;
        }
        int opcode = b0 & 0x0f;
        bool data = opcode < 8;
        if (len > BENCH_MAX_FRAME && !(stream && data)) {
            fail(c, 0, "frame larger than 1 MiB");
            break;
        }
        uint8_t key[4] = {0};
        if (b1 & 0x80) { /* servers must not mask; unmask anyway */
            if (n - off < h + 4)
                break;
            memcpy(key, p + off + h, 4);
            h += 4;
        }
        if (stream && data) {
            if (opcode != WS_CONT)
                c->stream_binary = opcode == WS_BINARY;
            c->stream_left = len;
            c->stream_masked = b1 & 0x80;
            memcpy(c->stream_key, key, 4);
            c->stream_kpos = 0;
            off += h;
            continue;
        }
        if (n - off < h + len)
            break;
        uint8_t *pl = p + off + h;
        if (b1 & 0x80)
            for (uint64_t i = 0; i < len; i++)
                pl[i] ^= key[i & 3];
        handle_frame(c, b0 & 0x80, opcode, pl, (size_t)len);
        off += h + (size_t)len;
    }
    return off;
}

/* Handles bytes received while the upgrade answer is awaited; returns bytes consumed. */
static size_t parse_answer(bws_conn_t *c, uint8_t *p, size_t n)
{
    uint8_t *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > MAX_HTTP_ANSWER)
            fail(c, 0, "upgrade answer too long");
        return 0;
    }
    size_t hl = (size_t)(end - p) + 4;
    uint8_t save = p[hl - 1];
    const char *why = check_answer(c, (char *)p, hl);
    p[hl - 1] = save;
    if (why) {
        fail(c, 0, why);
        return hl;
    }
    c->state = ST_OPEN;
    if (c->loop->h.on_open)
        c->loop->h.on_open(c);
    return hl;
}

static void on_readable(bws_conn_t *c)
{
    bws_loop_t *l = c->loop;
    for (;;) {
        size_t have = c->carry_len;
        if (have)
            memcpy(l->rx, c->carry, have);
        ssize_t n = recv(c->fd, l->rx + have, RX_CAP - have, 0);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                fail(c, 0, strerror(errno));
            return;
        }
        if (n == 0) {
            fail(c, 0,
                 c->state == ST_OPEN ? "connection closed by the server without a close frame"
                                     : "connection closed by the server during the upgrade");
            return;
        }
        size_t total = have + (size_t)n, off = 0;
        if (c->state == ST_HANDSHAKE)
            off = parse_answer(c, l->rx, total);
        if (c->state == ST_OPEN)
            off += parse_frames(c, l->rx + off, total - off);
        if (c->state == ST_DEAD)
            return;
        c->carry_len = 0;
        if (off < total &&
            buf_append(&c->carry, &c->carry_len, &c->carry_cap, l->rx + off, total - off)) {
            fail(c, 0, "out of memory");
            return;
        }
        if ((size_t)n < RX_CAP - have)
            return; /* a short read: the socket is drained (edge-triggered) */
    }
}

int bws_loop_run(bws_loop_t *l, int timeout_ms)
{
    struct epoll_event ev[EVENTS];
    int n = epoll_wait(l->ep, ev, EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < n; i++) {
        int kind = *(int *)ev[i].data.ptr;
        if (kind == KIND_WATCH) {
            bws_watch_t *w = ev[i].data.ptr;
            w->cb(w, ev[i].events);
            continue;
        }
        bws_conn_t *c = ev[i].data.ptr;
        uint32_t e = ev[i].events;
        if (c->state == ST_CONNECTING && (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            on_connected(c);
        if (c->state != ST_DEAD && c->state != ST_CONNECTING && c->out_len && (e & EPOLLOUT))
            flush_out(c);
        if (c->state != ST_DEAD && c->state != ST_CONNECTING &&
            (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            on_readable(c);
    }
    reap(l);
    return n;
}
