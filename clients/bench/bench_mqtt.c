/* bench_mqtt: MQTT 3.1.1 for the load generator, see bench_mqtt.h. */
#include "bench_mqtt.h"

#include "gale_mqtt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOT_MQTT "not an MQTT server (the first packet is not a CONNACK: is this an MQTT endpoint?)"
#define STR_MAX 65535u
#define PINGREQ_BYTE (GALE_MQTT_PINGREQ << 4)
#define SUBSCRIBE_BYTE (GALE_MQTT_SUBSCRIBE << 4 | 0x02) /* reserved flags 0b0010 (3.8.1) */
#define CONNECT_CLEAN 0x02
#define CONNECT_PASSWORD 0x40
#define CONNECT_USERNAME 0x80
#define MQTT_PACKET_MAX (BENCH_MAX_FRAME + 1024) /* bench data up to 1 MiB, and a header */

void mqtt_rx_reset(mqtt_rx_t *r, uint64_t first_ack_id)
{
    r->len = 0;
    r->next_ack_id = first_ack_id;
    r->connected = false;
}

void mqtt_rx_free(mqtt_rx_t *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
}

/* One mqtt_rx_feed() call. */
typedef struct {
    mqtt_rx_t *r;
    mqtt_event_cb cb;
    void *user;
    int rc; /* 1: the callback said stop; -1: protocol error (why) */
    const char *why;
} feed_t;

static bool stop(feed_t *f, const char *why)
{
    f->rc = -1;
    f->why = why;
    return false;
}

static const char *connack_text(uint8_t code)
{
    static const char *const text[] = {
        "accepted",           "unacceptable protocol version", "identifier rejected",
        "server unavailable", "bad user name or password",     "not authorized"};
    return code < sizeof(text) / sizeof(text[0]) ? text[code] : "unknown return code";
}

/* A PUBLISH from the server: QoS 0 (the subscriptions are), bench data in the payload. */
static bool read_publish(feed_t *f, const uint8_t *pkt, size_t len, gmsg_t *m)
{
    gale_mqtt_packet_t p;
    const char *why = NULL;
    if (gale_mqtt_decode(pkt, len, &p, &why) != GALE_MQTT_OK)
        return stop(f, why ? why : "malformed PUBLISH");
    if (p.qos != 0)
        return stop(f, "a PUBLISH at QoS 1 or 2 on subscriptions granted QoS 0");
    m->op = GM_MSG;
    bench_data_parse_json(m, p.payload, p.payload_len);
    return true;
}

/* SUBACK: its packet id, one return code per filter (0, 1, 2 or 0x80). */
static bool read_suback(feed_t *f, const uint8_t *b, size_t rem, gmsg_t *m)
{
    if (rem < 3)
        return stop(f, "malformed SUBACK (no return code)");
    m->has_id = true;
    m->id = (uint64_t)b[0] << 8 | b[1];
    m->op = GM_ACK;
    for (size_t i = 2; i < rem; i++) {
        if (b[i] == GALE_MQTT_SUBACK_FAILURE) {
            m->op = GM_ERR;
            snprintf(m->code, sizeof(m->code), "SUBACK 0x80");
            snprintf(m->text, sizeof(m->text), "the server refused a subscription (filter %zu)",
                     i - 1);
        } else if (b[i] > 2) {
            return stop(f, "malformed SUBACK (a return code other than 0, 1, 2 or 0x80)");
        }
    }
    return true;
}

/* Reads the whole packet pkt[0..len) into @m; false on a protocol error. */
static bool read_packet(feed_t *f, const uint8_t *pkt, size_t len, gmsg_t *m)
{
    size_t h = 2;
    while (h < len && h < 5 && (pkt[h - 1] & 0x80))
        h++;
    const uint8_t *b = pkt + h;
    size_t rem = len - h;
    unsigned type = pkt[0] >> 4, flags = pkt[0] & 0x0f;
    memset(m, 0, sizeof(*m));
    if (type != GALE_MQTT_PUBLISH && flags != (type == GALE_MQTT_PUBREL ? 2u : 0u))
        return stop(f, "an MQTT packet with wrong reserved flags (2.2.2)");
    switch (type) {
    case GALE_MQTT_CONNACK:
        if (rem != 2 || (b[0] & 0xfe))
            return stop(f, "malformed CONNACK");
        if (f->r->connected)
            return stop(f, "a second CONNACK");
        if (b[1] != GALE_MQTT_ACCEPTED) {
            m->op = GM_ERR;
            snprintf(m->code, sizeof(m->code), "CONNACK %u", b[1]);
            snprintf(m->text, sizeof(m->text), "connection refused: %s", connack_text(b[1]));
            return true;
        }
        f->r->connected = true;
        m->op = GM_HELLO;
        return true;
    case GALE_MQTT_PUBLISH:
        return read_publish(f, pkt, len, m);
    case GALE_MQTT_SUBACK:
        return read_suback(f, b, rem, m);
    case GALE_MQTT_PINGRESP:
        if (rem != 0)
            return stop(f, "malformed PINGRESP");
        m->op = GM_ACK;
        m->has_id = true;
        m->id = f->r->next_ack_id++;
        return true;
    case GALE_MQTT_PUBACK:
    case GALE_MQTT_PUBREC:
    case GALE_MQTT_PUBREL:
    case GALE_MQTT_PUBCOMP:
    case GALE_MQTT_UNSUBACK:
        if (rem != 2)
            return stop(f, "malformed acknowledgement packet");
        m->op = GM_OTHER;
        return true;
    default:
        return stop(f, "a packet an MQTT server does not send");
    }
}

/* Parses and reports every complete packet of p[0..n); returns the bytes consumed. */
static size_t parse(feed_t *f, const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        if (!f->r->connected && p[off] >> 4 != GALE_MQTT_CONNACK) {
            stop(f, NOT_MQTT);
            break;
        }
        size_t total = 0;
        int fr = gale_mqtt_frame(p + off, n - off, &total);
        if (fr < 0) {
            stop(f, "malformed MQTT remaining length");
            break;
        }
        if (total > MQTT_PACKET_MAX) {
            stop(f, "MQTT packet larger than 1 MiB");
            break;
        }
        if (fr == 0)
            break;
        gmsg_t m;
        if (!read_packet(f, p + off, total, &m))
            break;
        off += total;
        if (f->cb(f->user, &m)) {
            f->rc = 1;
            break;
        }
    }
    return off;
}

static int carry(mqtt_rx_t *r, const uint8_t *p, size_t n)
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

int mqtt_rx_feed(mqtt_rx_t *r, bool binary, const uint8_t *p, size_t n, mqtt_event_cb cb,
                 void *user, const char **why)
{
    feed_t f = {.r = r, .cb = cb, .user = user};
    if (!binary && n) {
        *why = "a text frame: MQTT travels in binary frames (is this an MQTT endpoint?)";
        return -1;
    }
    /* First complete the carried packet, taking no more of @p than it needs (while its fixed
     * header is incomplete, a byte at a time: at most four). The rest is parsed where it lies. */
    while (r->len && n) {
        size_t total = 0;
        gale_mqtt_frame(r->buf, r->len, &total);
        size_t take = total > r->len ? total - r->len : 1;
        if (take > n)
            take = n;
        if (carry(r, p, take) < 0) {
            *why = "out of memory";
            return -1;
        }
        p += take;
        n -= take;
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

/* --- topics ------------------------------------------------------------------------------ */

/* Maps gale topic or pattern @t to MQTT (@filter: `*` and a last `>` allowed); 0 if not. */
static size_t map_topic(const char *t, char *out, size_t cap, bool filter)
{
    size_t n = strlen(t), o = 0;
    if (n == 0 || n >= cap)
        return 0;
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && t[j] != '.')
            j++;
        size_t lv = j - i; /* the level t[i..j) */
        if (lv == 0)
            return 0;
        if (filter && lv == 1 && t[i] == '*') {
            out[o++] = '+';
        } else if (filter && lv == 1 && t[i] == '>' && j == n) {
            out[o++] = '#';
        } else {
            for (size_t k = i; k < j; k++) {
                if (strchr("/+#*>", t[k]))
                    return 0;
                out[o++] = t[k];
            }
        }
        if (j < n)
            out[o++] = '/';
        i = j + 1;
    }
    out[o] = 0;
    return o;
}

size_t mqtt_topic_from_gale(const char *t, char *out, size_t cap)
{
    return map_topic(t, out, cap, false);
}

size_t mqtt_filter_from_gale(const char *t, char *out, size_t cap)
{
    return map_topic(t, out, cap, true);
}

/* --- packets ----------------------------------------------------------------------------- */

/* Writes the fixed header of a packet with remaining length @rem; returns its size (2..5). */
static size_t put_header(uint8_t *dst, uint8_t byte0, size_t rem)
{
    size_t n = 0;
    dst[n++] = byte0;
    do {
        uint8_t b = (uint8_t)(rem & 0x7f);
        rem >>= 7;
        dst[n++] = rem ? (uint8_t)(b | 0x80) : b;
    } while (rem);
    return n;
}

static size_t put_u16(uint8_t *dst, size_t v)
{
    dst[0] = (uint8_t)(v >> 8);
    dst[1] = (uint8_t)v;
    return 2;
}

static size_t put_str(uint8_t *dst, const char *s, size_t n)
{
    put_u16(dst, n);
    memcpy(dst + 2, s, n);
    return n + 2;
}

size_t mqtt_connect_frame(uint8_t *dst, size_t cap, const char *client_id, const char *password,
                          uint16_t keepalive)
{
    size_t id = strlen(client_id), pw = password ? strlen(password) : 0;
    if (id > STR_MAX || pw > STR_MAX)
        return 0;
    size_t rem = 10 + 2 + id + (password ? 2 + 4 + 2 + pw : 0);
    size_t need = 5 + rem;
    if (need + 14 > cap)
        return 0;
    uint8_t *pkt = malloc(need);
    if (!pkt)
        return 0;
    size_t k = put_header(pkt, GALE_MQTT_CONNECT << 4, rem);
    k += put_str(pkt + k, "MQTT", 4);
    pkt[k++] = 4; /* protocol level: 3.1.1 */
    pkt[k++] = CONNECT_CLEAN | (password ? CONNECT_USERNAME | CONNECT_PASSWORD : 0);
    k += put_u16(pkt + k, keepalive);
    k += put_str(pkt + k, client_id, id);
    if (password) { /* a password needs a user name (MQTT-3.1.2-22) */
        k += put_str(pkt + k, "gale", 4);
        k += put_str(pkt + k, password, pw);
    }
    size_t len = ws_frame(dst, WS_BINARY, pkt, k, 0);
    free(pkt);
    return len;
}

/*
 * Appends SUBSCRIBE @packet_id of the MQTT filters of `<prefix><first + j>` (j < count), or of
 * @prefix alone when @count is 0, at QoS 0 to out[*len..cap); false if it does not fit.
 */
static bool put_subscribe(uint8_t *out, size_t *len, size_t cap, uint16_t packet_id,
                          const char *prefix, uint64_t first, uint32_t count)
{
    size_t rem = 2, n = count ? count : 1;
    char topic[MQTT_TOPIC_MAX], filter[MQTT_TOPIC_MAX];
    for (int pass = 0; pass < 2; pass++) { /* the remaining length, then the packet */
        uint8_t *p = out + *len;
        if (pass == 1) {
            if (*len + 5 + rem > cap)
                return false;
            p += put_header(p, SUBSCRIBE_BYTE, rem);
            p += put_u16(p, packet_id);
        }
        for (size_t j = 0; j < n; j++) {
            if (count)
                snprintf(topic, sizeof(topic), "%s%llu", prefix, (unsigned long long)(first + j));
            size_t fl = mqtt_filter_from_gale(count ? topic : prefix, filter, sizeof(filter));
            if (!fl)
                return false;
            if (pass == 0) {
                rem += 2 + fl + 1;
                continue;
            }
            p += put_str(p, filter, fl);
            *p++ = 0; /* requested QoS 0 */
        }
        if (pass == 1)
            *len = (size_t)(p - out);
    }
    return true;
}

size_t mqtt_sub_frame(uint8_t *dst, size_t cap, const char *topic, uint16_t packet_id)
{
    uint8_t pkt[5 + 2 + 2 + MQTT_TOPIC_MAX + 1];
    size_t len = 0;
    if (!put_subscribe(pkt, &len, sizeof(pkt), packet_id, topic, 0, 0) || len + 14 > cap)
        return 0;
    return ws_frame(dst, WS_BINARY, pkt, len, 0);
}

uint32_t mqtt_subs_packets(uint32_t count)
{
    return (count + MQTT_SUBS_PER_PACKET - 1) / MQTT_SUBS_PER_PACKET;
}

size_t mqtt_subs_frame(uint8_t *dst, size_t cap, const char *prefix, uint64_t first, uint32_t count)
{
    uint8_t *pkt = cap > 14 ? malloc(cap - 14) : NULL;
    size_t len = 0, out = 0;
    bool ok = pkt && count;
    for (uint32_t j = 0, id = 1; ok && j < count; j += MQTT_SUBS_PER_PACKET, id++) {
        uint32_t n = count - j < MQTT_SUBS_PER_PACKET ? count - j : MQTT_SUBS_PER_PACKET;
        ok = put_subscribe(pkt, &len, cap - 14, (uint16_t)id, prefix, first + j, n);
    }
    if (ok)
        out = ws_frame(dst, WS_BINARY, pkt, len, 0);
    free(pkt);
    return out;
}

size_t mqtt_pingreq_frame(uint8_t *dst)
{
    static const uint8_t pkt[2] = {PINGREQ_BYTE, 0};
    return ws_frame(dst, WS_BINARY, pkt, sizeof(pkt), 0);
}

size_t mqtt_disconnect_frame(uint8_t *dst)
{
    static const uint8_t pkt[2] = {GALE_MQTT_DISCONNECT << 4, 0};
    return ws_frame(dst, WS_BINARY, pkt, sizeof(pkt), 0);
}

int mqtt_pubtpl_build(pubtpl_t *t, const char *topic, bool topic_indexed, uint32_t pub, size_t size)
{
    memset(t, 0, sizeof(*t));
    char name[MQTT_TOPIC_MAX];
    size_t nl = mqtt_topic_from_gale(topic, name, sizeof(name));
    size_t cap = size + 256;
    uint8_t *data = nl ? malloc(cap) : NULL;
    size_t d = data ? bench_data_json(data, cap, pub, size) : 0;
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    static const uint8_t ping[2] = {PINGREQ_BYTE, 0};
    int rc = -1;
    if (d && gale_mqtt_encode_publish(&buf, name, nl, 0, false, false, 0, data, d) == GALE_OK &&
        gale_buf_append(&buf, ping, sizeof(ping)))
        rc = pubtpl_frame(t, false, WS_BINARY, gale_buf_payload(&buf), gale_buf_payload_len(&buf),
                          name, topic_indexed);
    gale_buf_free(&buf);
    free(data);
    return rc;
}
