/*
 * Fuzzes protocol/mqtt.c on a byte stream as a client sends it: frames it packet by packet
 * (checked against the length rule written out here), decodes each packet and checks what
 * an accepted one promises, answers it with the encoders and checks their bytes, re-encodes
 * a PUBLISH (and its QoS 1 copy), and maps every topic and filter to gale and back. The
 * topics and filters of the stream are then matched against each other both ways: MQTT's
 * rule (4.7, written out here) and gale_pattern_match on the mapped forms must agree.
 * Whatever is left after the last whole packet is also taken as a raw topic and filter.
 */
#include "fuzz_check.h"

#include "gale_mqtt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* How many topics and filters of one input are kept for the cross-matching. */
#define KEEP 16

typedef struct {
    char mqtt[GALE_TOPIC_MAX];
    size_t mqtt_len;
    char gale[2][GALE_TOPIC_MAX];
    size_t gale_len[2];
    int n; /* gale forms: 1 for a topic, 1 or 2 for a filter */
} mapped_t;

typedef struct {
    mapped_t topics[KEEP];
    size_t ntopics;
    mapped_t filters[KEEP];
    size_t nfilters;
} seen_t;

/* ---- references ---- */

/*
 * 2.2.3 written out: 1 and the packet size when whole, 0 when more is needed (with the size
 * once the length is complete), -1 when the fourth length byte has its continuation bit.
 */
static int ref_frame(const uint8_t *b, size_t len, size_t *total, size_t *hdr)
{
    size_t mul = 1, v = 0;
    *total = 0;
    for (size_t i = 1; i <= 4; i++) {
        if (len <= i)
            return 0;
        v += (size_t)(b[i] % 128) * mul;
        mul *= 128;
        if (b[i] < 128) {
            *hdr = i + 1;
            *total = i + 1 + v;
            return len >= *total ? 1 : 0;
        }
    }
    return -1;
}

/* Bytes of the shortest encoding of remaining length v. */
static size_t varint_len(size_t v)
{
    return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4;
}

/* The next level of s[0..n) from *i: its start and length; false after the last one. */
static bool next_level(const char *s, size_t n, size_t *i, const char **lv, size_t *ln)
{
    if (*i > n)
        return false;
    const char *slash = memchr(s + *i, '/', n - *i);
    size_t end = slash ? (size_t)(slash - s) : n;
    *lv = s + *i;
    *ln = end - *i;
    *i = end + 1;
    return true;
}

/* 4.7.1 written out by levels: `#` whole and last, `+` whole. */
static bool ref_filter_valid(const char *f, size_t n)
{
    if (n == 0 || n > 65535)
        return false;
    size_t i = 0, ln;
    const char *lv;
    while (next_level(f, n, &i, &lv, &ln)) {
        bool last = i > n;
        bool has_hash = memchr(lv, '#', ln) != NULL, has_plus = memchr(lv, '+', ln) != NULL;
        if (has_hash && !(ln == 1 && last))
            return false;
        if (has_plus && ln != 1)
            return false;
    }
    return true;
}

/* 4.7 matching by levels (without 4.7.2's `$` rule: the mapping leaves it out too). */
static bool ref_match(const char *f, size_t fn, const char *t, size_t tn)
{
    size_t fi = 0, ti = 0, fl, tl;
    const char *fv, *tv;
    for (;;) {
        bool fmore = next_level(f, fn, &fi, &fv, &fl);
        if (fmore && fl == 1 && fv[0] == '#')
            return true; /* this level and everything below, or nothing */
        bool tmore = next_level(t, tn, &ti, &tv, &tl);
        if (!fmore || !tmore)
            return fmore == tmore;
        if (!(fl == 1 && fv[0] == '+') && (fl != tl || memcmp(fv, tv, fl) != 0))
            return false;
    }
}

/* ---- mapping ---- */

/* An MQTT topic name both ways; kept for matching when gale can express it. */
static void check_topic(const char *t, size_t n, seen_t *seen)
{
    char out[GALE_TOPIC_MAX];
    size_t g = gale_mqtt_topic_to_gale(t, n, out);
    if (g == 0) {
        /* Only what the top of gale_mqtt.h lists is refused. */
        bool refusable = n == 0 || n > GALE_TOPIC_MAX;
        for (size_t i = 0; i < n && !refusable; i++)
            refusable = strchr(".*>+#", t[i]) != NULL && t[i] != '\0';
        if (!refusable) {
            char tmp[GALE_TOPIC_MAX];
            for (size_t i = 0; i < n; i++)
                tmp[i] = t[i] == '/' ? '.' : t[i];
            CHECK(!gale_topic_valid(tmp, n));
        }
        return;
    }
    CHECK(g == n && gale_topic_valid(out, g));
    for (size_t i = 0; i < n; i++)
        CHECK(out[i] == (t[i] == '/' ? '.' : t[i]) && t[i] != '+' && t[i] != '#');
    /* And back to the same name. */
    char back[GALE_TOPIC_MAX];
    CHECK(gale_mqtt_topic_from_gale(out, g, back));
    CHECK(memcmp(back, t, n) == 0);
    if (seen != NULL && seen->ntopics < KEEP) {
        mapped_t *m = &seen->topics[seen->ntopics++];
        memcpy(m->mqtt, t, n);
        m->mqtt_len = n;
        memcpy(m->gale[0], out, g);
        m->gale_len[0] = g;
        m->n = 1;
    }
}

/* A gale topic (here: any bytes gale_topic_valid accepts) to MQTT and back. */
static void check_gale_topic(const char *t, size_t n)
{
    if (!gale_topic_valid(t, n))
        return;
    char out[GALE_TOPIC_MAX];
    bool ok = gale_mqtt_topic_from_gale(t, n, out);
    bool special = memchr(t, '/', n) || memchr(t, '+', n) || memchr(t, '#', n);
    CHECK(ok == !special);
    if (!ok)
        return;
    char back[GALE_TOPIC_MAX];
    CHECK(gale_mqtt_topic_to_gale(out, n, back) == n);
    CHECK(memcmp(back, t, n) == 0);
}

/* An MQTT topic filter to gale patterns. */
static void check_filter(const char *f, size_t n, seen_t *seen)
{
    bool valid = gale_mqtt_filter_valid(f, n);
    CHECK(valid == ref_filter_valid(f, n));
    char out[2][GALE_TOPIC_MAX];
    size_t len[2] = {0, 0};
    int k = gale_mqtt_filter_to_gale(f, n, out, len);
    CHECK(k >= 0 && k <= 2);
    if (k == 0)
        return;
    CHECK(valid && n <= GALE_TOPIC_MAX);
    bool parent = n >= 2 && f[n - 2] == '/' && f[n - 1] == '#';
    CHECK(k == (parent ? 2 : 1));
    CHECK(len[k - 1] == n);
    for (size_t i = 0; i < n; i++) {
        char c = f[i];
        char want = c == '/' ? '.' : c == '+' ? '*' : c == '#' ? '>' : c;
        CHECK(out[k - 1][i] == want && c != '.' && c != '*' && c != '>');
    }
    for (int i = 0; i < k; i++)
        CHECK(gale_pattern_valid(out[i], len[i], NULL));
    if (k == 2)
        CHECK(len[0] == n - 2 && memcmp(out[0], out[1], n - 2) == 0);
    if (seen != NULL && seen->nfilters < KEEP) {
        mapped_t *m = &seen->filters[seen->nfilters++];
        memcpy(m->mqtt, f, n);
        m->mqtt_len = n;
        memcpy(m->gale, out, sizeof(out));
        memcpy(m->gale_len, len, sizeof(len));
        m->n = k;
    }
}

/* Every kept filter against every kept topic: gale must deliver what MQTT would. */
static void check_matching(const seen_t *s)
{
    for (size_t i = 0; i < s->nfilters; i++) {
        const mapped_t *f = &s->filters[i];
        for (size_t j = 0; j < s->ntopics; j++) {
            const mapped_t *t = &s->topics[j];
            bool want = ref_match(f->mqtt, f->mqtt_len, t->mqtt, t->mqtt_len);
            bool got = false;
            for (int k = 0; k < f->n; k++)
                got |= gale_pattern_match(f->gale[k], f->gale_len[k], t->gale[0], t->gale_len[0]);
            CHECK(got == want);
        }
    }
}

/* ---- packets ---- */

static bool within(const void *p, size_t n, const uint8_t *pkt, size_t len)
{
    const uint8_t *b = p;
    return b >= pkt && n <= len && b + n <= pkt + len;
}

/* A string field: in the packet, well-formed UTF-8 without U+0000. */
static void check_str(const char *s, size_t n, const uint8_t *pkt, size_t len)
{
    CHECK(s != NULL && within(s, n, pkt, len));
    CHECK(gale_utf8_valid((const uint8_t *)s, n) && memchr(s, 0, n) == NULL);
}

static void check_topic_name(const char *t, size_t n)
{
    CHECK(n > 0 && !memchr(t, '+', n) && !memchr(t, '#', n));
}

/* The buffer holds exactly one whole packet of the given first byte and remaining length. */
static void check_framed(const gale_buf_t *b, uint8_t byte0, size_t rem)
{
    size_t total = 0;
    CHECK(gale_mqtt_frame(b->data, b->len, &total) == 1 && total == b->len);
    CHECK(b->data[0] == byte0 && b->len == 1 + varint_len(rem) + rem);
}

/*
 * A decoded PUBLISH re-encoded: the same bytes when the client wrote its length the short
 * way, the same fields in any case; at QoS 0, its QoS 1 copy is encode_publish's at QoS 1.
 */
static void check_publish(const gale_mqtt_packet_t *p, const uint8_t *pkt, size_t len, size_t hdr)
{
    gale_buf_t re, q1, want;
    gale_buf_init(&re, 0);
    gale_buf_init(&q1, 0);
    gale_buf_init(&want, 0);
    CHECK(gale_mqtt_encode_publish(&re, p->topic, p->topic_len, p->qos, p->retain, p->dup,
                                   p->packet_id, p->payload, p->payload_len) == GALE_OK);
    size_t rem = len - hdr;
    check_framed(&re, pkt[0], rem);
    if (hdr == 1 + varint_len(rem))
        CHECK(re.len == len && memcmp(re.data, pkt, len) == 0);
    gale_mqtt_packet_t back;
    CHECK(gale_mqtt_decode(re.data, re.len, &back, NULL) == GALE_MQTT_OK);
    CHECK(back.qos == p->qos && back.dup == p->dup && back.retain == p->retain);
    CHECK(back.packet_id == p->packet_id && back.topic_len == p->topic_len);
    CHECK(memcmp(back.topic, p->topic, p->topic_len) == 0);
    CHECK(back.payload_len == p->payload_len);
    CHECK(p->payload_len == 0 || memcmp(back.payload, p->payload, p->payload_len) == 0);
    uint16_t id = (uint16_t)(p->payload_len % 65535 + 1);
    if (p->qos == 0) {
        CHECK(gale_mqtt_encode_publish(&want, p->topic, p->topic_len, 1, p->retain, false, id,
                                       p->payload, p->payload_len) == GALE_OK);
        CHECK(gale_mqtt_publish_at_qos1(&q1, re.data, re.len, id) == GALE_OK);
        CHECK(buf_eq(&q1, &want));
        /* From the client's own bytes too, however it wrote the length. */
        q1.len = 0;
        CHECK(gale_mqtt_publish_at_qos1(&q1, pkt, len, id) == GALE_OK);
        CHECK(buf_eq(&q1, &want));
        check_framed(&q1, (uint8_t)(pkt[0] | 0x02), rem + 2);
    } else {
        CHECK(gale_mqtt_publish_at_qos1(&q1, re.data, re.len, id) == GALE_ERR_BAD_REQUEST);
        CHECK(q1.len == 0);
    }
    gale_buf_free(&re);
    gale_buf_free(&q1);
    gale_buf_free(&want);
}

static void check_connect(const gale_mqtt_packet_t *p, const uint8_t *pkt, size_t len, seen_t *seen)
{
    CHECK(p->level == 3 || p->level == 4);
    CHECK(p->client_id_len <= GALE_MQTT_CLIENT_ID_MAX);
    CHECK(p->client_id_len > 0 || p->clean_session);
    check_str(p->client_id, p->client_id_len, pkt, len);
    CHECK(p->will_qos <= 2 && (p->will || (p->will_qos == 0 && !p->will_retain)));
    CHECK(!p->has_password || p->has_username);
    CHECK(p->will == (p->will_topic != NULL) && p->will == (p->will_payload != NULL));
    CHECK(p->has_username == (p->username != NULL));
    CHECK(p->has_password == (p->password != NULL));
    if (p->will) {
        check_str(p->will_topic, p->will_topic_len, pkt, len);
        check_topic_name(p->will_topic, p->will_topic_len);
        CHECK(within(p->will_payload, p->will_payload_len, pkt, len));
        check_topic(p->will_topic, p->will_topic_len, seen);
    }
    if (p->has_username)
        check_str(p->username, p->username_len, pkt, len);
    if (p->has_password)
        CHECK(within(p->password, p->password_len, pkt, len));
    gale_buf_t b;
    gale_buf_init(&b, 0);
    CHECK(gale_mqtt_encode_connack(&b, p->clean_session, GALE_MQTT_ACCEPTED) == GALE_OK);
    CHECK(b.len == 4 && b.data[0] == 0x20 && b.data[1] == 2);
    CHECK(b.data[2] == (p->clean_session ? 1 : 0) && b.data[3] == 0);
    gale_buf_free(&b);
}

/* SUBSCRIBE or UNSUBSCRIBE: walk the filters, map them, and answer. */
static void check_filters(const gale_mqtt_packet_t *p, const uint8_t *pkt, size_t len, seen_t *seen)
{
    bool sub = p->type == GALE_MQTT_SUBSCRIBE;
    CHECK(p->packet_id != 0 && p->filters_len > 0 && within(p->filters, p->filters_len, pkt, len));
    CHECK(p->filters + p->filters_len == pkt + len);
    uint8_t codes[256];
    size_t n = 0, pos = 0, fl;
    const char *f;
    uint8_t q;
    while (gale_mqtt_next_filter(p, &pos, &f, &fl, &q)) {
        check_str(f, fl, pkt, len);
        CHECK(gale_mqtt_filter_valid(f, fl) && q <= 2 && (sub || q == 0));
        char out[2][GALE_TOPIC_MAX];
        size_t ol[2];
        bool ok = gale_mqtt_filter_to_gale(f, fl, out, ol) > 0;
        check_filter(f, fl, seen);
        if (n < sizeof(codes))
            codes[n] = ok ? q : GALE_MQTT_SUBACK_FAILURE;
        n++;
    }
    CHECK(n >= 1 && pos == p->filters_len);
    gale_buf_t b;
    gale_buf_init(&b, 0);
    if (sub) {
        size_t nc = n < sizeof(codes) ? n : sizeof(codes);
        CHECK(gale_mqtt_encode_suback(&b, p->packet_id, codes, nc) == GALE_OK);
        check_framed(&b, 0x90, 2 + nc);
        size_t h = b.len - 2 - nc;
        CHECK(b.data[h] == p->packet_id >> 8 && b.data[h + 1] == (p->packet_id & 0xFF));
        CHECK(memcmp(b.data + h + 2, codes, nc) == 0);
    } else {
        CHECK(gale_mqtt_encode_ack(&b, GALE_MQTT_UNSUBACK, p->packet_id) == GALE_OK);
        check_framed(&b, 0xB0, 2);
    }
    gale_buf_free(&b);
}

/* The flags 2.2.2 requires of each client type (PUBLISH: its own rules). */
static void check_flags(const gale_mqtt_packet_t *p)
{
    switch (p->type) {
    case GALE_MQTT_PUBLISH:
        CHECK(p->flags == ((p->dup ? 8 : 0) | p->qos << 1 | (p->retain ? 1 : 0)));
        CHECK(p->qos <= 2 && !(p->dup && p->qos == 0));
        break;
    case GALE_MQTT_PUBREL:
    case GALE_MQTT_SUBSCRIBE:
    case GALE_MQTT_UNSUBSCRIBE:
        CHECK(p->flags == 2);
        break;
    case GALE_MQTT_CONNECT:
    case GALE_MQTT_PUBACK:
    case GALE_MQTT_PUBREC:
    case GALE_MQTT_PUBCOMP:
    case GALE_MQTT_PINGREQ:
    case GALE_MQTT_DISCONNECT:
        CHECK(p->flags == 0);
        break;
    default:
        CHECK(!"a server type decoded");
    }
}

static void check_accepted(const gale_mqtt_packet_t *p, const uint8_t *pkt, size_t len, size_t hdr,
                           seen_t *seen)
{
    check_flags(p);
    size_t rem = len - hdr;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    switch (p->type) {
    case GALE_MQTT_CONNECT:
        check_connect(p, pkt, len, seen);
        break;
    case GALE_MQTT_PUBLISH:
        check_str(p->topic, p->topic_len, pkt, len);
        check_topic_name(p->topic, p->topic_len);
        CHECK((p->packet_id != 0) == (p->qos > 0));
        CHECK(p->payload + p->payload_len == pkt + len);
        check_topic(p->topic, p->topic_len, seen);
        check_publish(p, pkt, len, hdr);
        break;
    case GALE_MQTT_SUBSCRIBE:
    case GALE_MQTT_UNSUBSCRIBE:
        check_filters(p, pkt, len, seen);
        break;
    case GALE_MQTT_PINGREQ:
        CHECK(rem == 0);
        CHECK(gale_mqtt_encode_pingresp(&b) == GALE_OK);
        CHECK(b.len == 2 && b.data[0] == 0xD0 && b.data[1] == 0);
        break;
    case GALE_MQTT_DISCONNECT:
        CHECK(rem == 0);
        break;
    default: /* PUBACK, PUBREC, PUBREL, PUBCOMP: the same bytes as our own ack */
        CHECK(rem == 2);
        CHECK(gale_mqtt_encode_ack(&b, p->type, p->packet_id) == GALE_OK);
        check_framed(&b, pkt[0], 2);
        if (hdr == 2)
            CHECK(b.len == len && memcmp(b.data, pkt, len) == 0);
        break;
    }
    gale_buf_free(&b);
}

/* One whole packet pkt[0..len) with a fixed header of hdr bytes. */
static void check_packet(const uint8_t *pkt, size_t len, size_t hdr, seen_t *seen)
{
    gale_mqtt_packet_t p;
    const char *why = "unset";
    gale_mqtt_status_t st = gale_mqtt_decode(pkt, len, &p, &why);
    unsigned t = pkt[0] >> 4;
    bool client = t == 1 || (t >= 3 && t <= 8) || t == 10 || t == 12 || t == 14;
    if (st == GALE_MQTT_OK) {
        CHECK(why == NULL && client && p.type == (gale_mqtt_type_t)t);
        check_accepted(&p, pkt, len, hdr, seen);
    } else {
        CHECK(why != NULL && strcmp(why, "unset") != 0 && strlen(why) > 0);
        CHECK(st == GALE_MQTT_MALFORMED || st == GALE_MQTT_BAD_LEVEL ||
              st == GALE_MQTT_BAD_CLIENT_ID);
        if (st != GALE_MQTT_MALFORMED)
            CHECK(t == GALE_MQTT_CONNECT && p.type == GALE_MQTT_CONNECT);
        if (st == GALE_MQTT_BAD_LEVEL)
            CHECK(p.level == 0);
        if (st == GALE_MQTT_BAD_CLIENT_ID)
            CHECK((p.client_id_len == 0 && !p.clean_session) ||
                  p.client_id_len > GALE_MQTT_CLIENT_ID_MAX);
    }
    /* A byte short is never a packet. */
    CHECK(gale_mqtt_decode(pkt, len - 1, &p, NULL) == GALE_MQTT_MALFORMED);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    seen_t seen;
    seen.ntopics = seen.nfilters = 0;
    size_t pos = 0;
    while (pos < size) {
        size_t total = 99, want_total, hdr = 0;
        int r = gale_mqtt_frame(data + pos, size - pos, &total);
        CHECK(r == ref_frame(data + pos, size - pos, &want_total, &hdr));
        CHECK(total == want_total);
        if (r != 1)
            break;
        check_packet(data + pos, total, hdr, &seen);
        pos += total;
    }
    check_matching(&seen);
    /* The rest, raw, as a topic name, a filter and a gale topic. */
    const char *rest = (const char *)data + pos;
    size_t n = size - pos;
    if (n > 65536)
        n = 65536;
    check_topic(rest, n, NULL);
    check_filter(rest, n, NULL);
    check_gale_topic(rest, n);
    return 0;
}
