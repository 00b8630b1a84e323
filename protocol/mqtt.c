/*
 * MQTT 3.1.1 and 3.1 (gale_mqtt.h): framing, the strict decode of client packets, the
 * encoders of server packets, and the mapping between MQTT topics and gale's.
 *
 * Every read is bounded by the remaining length of the packet being read, which is itself
 * checked against the input length before anything else, so no field can reach past it.
 */
#include "gale_mqtt.h"
#include "internal.h"

/* The high bit of a remaining-length byte: another byte follows (2.2.3). */
#define LEN_MORE 0x80
/* At most four remaining-length bytes: 4 x 7 bits is GALE_MQTT_REMAINING_MAX. */
#define LEN_BYTES_MAX 4
/* Largest fixed header: the type byte and four length bytes. */
#define FIXED_HEADER_MAX (1 + LEN_BYTES_MAX)
/* The length prefix of an MQTT string or binary field (1.5.3). */
#define STR_MAX 65535u

/* PUBLISH fixed-header flags (3.3.1). */
#define PUB_RETAIN 0x01
#define PUB_QOS_SHIFT 1
#define PUB_QOS_MASK 0x06
#define PUB_DUP 0x08

/* CONNECT flags (3.1.2.3). */
#define CF_RESERVED 0x01
#define CF_CLEAN 0x02
#define CF_WILL 0x04
#define CF_WILL_QOS_SHIFT 3
#define CF_WILL_RETAIN 0x20
#define CF_PASSWORD 0x40
#define CF_USERNAME 0x80

/* ---- framing ---- */

/*
 * Reads the fixed header at buf[0..len): 1 when it is complete (*hdr: its size, *rem: the
 * remaining length), 0 when more bytes are needed, -1 when a fifth length byte would follow.
 * The fifth byte itself need not have arrived: the fourth one's continuation bit says it.
 */
static int fixed_header(const uint8_t *buf, size_t len, size_t *hdr, size_t *rem)
{
    size_t v = 0;
    for (size_t i = 1; i <= LEN_BYTES_MAX; i++) {
        if (i >= len)
            return 0;
        v |= (size_t)(buf[i] & ~LEN_MORE) << (7 * (i - 1));
        if (!(buf[i] & LEN_MORE)) {
            *hdr = i + 1;
            *rem = v;
            return 1;
        }
    }
    return -1;
}

int gale_mqtt_frame(const uint8_t *buf, size_t len, size_t *total)
{
    size_t hdr, rem;
    *total = 0;
    int r = fixed_header(buf, len, &hdr, &rem);
    if (r != 1)
        return r;
    *total = hdr + rem;
    return len >= *total ? 1 : 0;
}

/* Writes remaining length v (<= GALE_MQTT_REMAINING_MAX) at dst; returns its size, 1..4. */
static size_t put_remaining(uint8_t *dst, size_t v)
{
    size_t n = 0;
    do {
        uint8_t b = (uint8_t)(v & 0x7F);
        v >>= 7;
        dst[n++] = v != 0 ? (uint8_t)(b | LEN_MORE) : b;
    } while (v != 0);
    return n;
}

/* Writes the fixed header of a packet at dst (room for FIXED_HEADER_MAX); returns its size. */
static size_t put_fixed_header(uint8_t *dst, uint8_t byte0, size_t rem)
{
    dst[0] = byte0;
    return 1 + put_remaining(dst + 1, rem);
}

static void put_u16(uint8_t *dst, uint16_t v)
{
    dst[0] = (uint8_t)(v >> 8);
    dst[1] = (uint8_t)v;
}

/* ---- decoding ---- */

/* A cursor over a packet's variable header and payload. */
typedef struct {
    const uint8_t *p;
    size_t n;
    size_t pos;
} reader_t;

static size_t rd_left(const reader_t *r)
{
    return r->n - r->pos;
}

static bool rd_u8(reader_t *r, uint8_t *v)
{
    if (rd_left(r) < 1)
        return false;
    *v = r->p[r->pos++];
    return true;
}

static bool rd_u16(reader_t *r, uint16_t *v)
{
    if (rd_left(r) < 2)
        return false;
    *v = (uint16_t)(r->p[r->pos] << 8 | r->p[r->pos + 1]);
    r->pos += 2;
    return true;
}

/* A length-prefixed field (binary data, or a string before its checks). */
static bool rd_bin(reader_t *r, const uint8_t **s, size_t *n)
{
    uint16_t len;
    if (!rd_u16(r, &len) || rd_left(r) < len)
        return false;
    *s = r->p + r->pos;
    *n = len;
    r->pos += len;
    return true;
}

/* 1.5.3: well-formed UTF-8 without U+0000 (a NUL byte is only ever U+0000 in UTF-8). */
static bool str_ok(const uint8_t *s, size_t n)
{
    return gale_utf8_valid(s, n) && (n == 0 || memchr(s, 0, n) == NULL);
}

/* A UTF-8 string field; *bad is set when it is there but not a valid string. */
static bool rd_str(reader_t *r, const char **s, size_t *n, bool *bad)
{
    const uint8_t *b;
    *bad = false;
    if (!rd_bin(r, &b, n))
        return false;
    *s = (const char *)b;
    *bad = !str_ok(b, *n);
    return !*bad;
}

/* 4.7.1-1, 4.7.3-1: a topic name is not empty and holds no wildcard. */
static bool topic_name_ok(const char *t, size_t n)
{
    return n > 0 && memchr(t, '+', n) == NULL && memchr(t, '#', n) == NULL;
}

static gale_mqtt_status_t malformed(const char **why, const char *reason)
{
    *why = reason;
    return GALE_MQTT_MALFORMED;
}

/* Reads a string field, or says why it is missing or invalid. */
static const char *need_str(reader_t *r, const char **s, size_t *n, const char *what_missing,
                            const char *what_bad)
{
    bool bad;
    if (rd_str(r, s, n, &bad))
        return NULL;
    return bad ? what_bad : what_missing;
}

/*
 * The protocol name and level. An unknown level is answered before the rest is read: a
 * client of another version (MQTT 5 adds properties) lays the rest out differently, and
 * still deserves its CONNACK 1.
 */
static gale_mqtt_status_t connect_protocol(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    const uint8_t *name;
    size_t name_len;
    uint8_t level;
    if (!rd_bin(r, &name, &name_len) || !rd_u8(r, &level))
        return malformed(why, "truncated CONNECT");
    bool v311 = name_len == 4 && memcmp(name, "MQTT", 4) == 0;
    bool v31 = name_len == 6 && memcmp(name, "MQIsdp", 6) == 0;
    if (!v311 && !v31)
        return malformed(why, "unknown protocol name");
    if (level != (v311 ? 4 : 3)) {
        *why = "unsupported protocol level";
        return GALE_MQTT_BAD_LEVEL;
    }
    p->level = level;
    return GALE_MQTT_OK;
}

/* The connect flags and keep alive (3.1.2.3 to 3.1.2.10). */
static gale_mqtt_status_t connect_flags(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    uint8_t f;
    if (!rd_u8(r, &f) || !rd_u16(r, &p->keepalive))
        return malformed(why, "truncated CONNECT");
    if (f & CF_RESERVED)
        return malformed(why, "reserved CONNECT flag set"); /* MQTT-3.1.2-3 */
    p->clean_session = f & CF_CLEAN;
    p->will = f & CF_WILL;
    p->will_qos = (uint8_t)((f >> CF_WILL_QOS_SHIFT) & 3);
    p->will_retain = f & CF_WILL_RETAIN;
    p->has_username = f & CF_USERNAME;
    p->has_password = f & CF_PASSWORD;
    if (p->will_qos == 3)
        return malformed(why, "will QoS 3"); /* MQTT-3.1.2-14 */
    if (!p->will && (p->will_qos != 0 || p->will_retain))
        return malformed(why, "will QoS or retain without a will"); /* MQTT-3.1.2-13, -15 */
    if (p->has_password && !p->has_username)
        return malformed(why, "password without user name"); /* MQTT-3.1.2-22 */
    return GALE_MQTT_OK;
}

/* The payload: client id, will topic and message, user name, password, in that order. */
static const char *connect_payload(reader_t *r, gale_mqtt_packet_t *p)
{
    const char *e;
    if ((e = need_str(r, &p->client_id, &p->client_id_len, "truncated client id",
                      "client id is not valid UTF-8")))
        return e;
    if (p->will) {
        if ((e = need_str(r, &p->will_topic, &p->will_topic_len, "truncated will topic",
                          "will topic is not valid UTF-8")))
            return e;
        /* The will is published under this name: the rules of a PUBLISH topic apply. */
        if (!topic_name_ok(p->will_topic, p->will_topic_len))
            return "invalid will topic";
        if (!rd_bin(r, &p->will_payload, &p->will_payload_len))
            return "truncated will message";
    }
    if (p->has_username && (e = need_str(r, &p->username, &p->username_len, "truncated user name",
                                         "user name is not valid UTF-8")))
        return e;
    if (p->has_password && !rd_bin(r, &p->password, &p->password_len))
        return "truncated password";
    return NULL;
}

static gale_mqtt_status_t decode_connect(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    gale_mqtt_status_t st;
    if ((st = connect_protocol(r, p, why)) != GALE_MQTT_OK ||
        (st = connect_flags(r, p, why)) != GALE_MQTT_OK)
        return st;
    const char *e = connect_payload(r, p);
    if (e != NULL)
        return malformed(why, e);
    if (rd_left(r) != 0)
        return malformed(why, "trailing bytes after CONNECT");
    /* Checked last: a packet that is malformed as well is closed without a CONNACK. */
    if (p->client_id_len == 0 && !p->clean_session) {
        *why = "empty client id without clean session"; /* MQTT-3.1.3-8 */
        return GALE_MQTT_BAD_CLIENT_ID;
    }
    if (p->client_id_len > GALE_MQTT_CLIENT_ID_MAX) {
        *why = "client id too long";
        return GALE_MQTT_BAD_CLIENT_ID;
    }
    return GALE_MQTT_OK;
}

static gale_mqtt_status_t decode_publish(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    p->qos = (uint8_t)((p->flags & PUB_QOS_MASK) >> PUB_QOS_SHIFT);
    p->dup = p->flags & PUB_DUP;
    p->retain = p->flags & PUB_RETAIN;
    if (p->qos == 3)
        return malformed(why, "PUBLISH QoS 3"); /* MQTT-3.3.1-4 */
    if (p->dup && p->qos == 0)
        return malformed(why, "DUP set on a QoS 0 PUBLISH"); /* MQTT-3.3.1-2 */
    const char *e =
        need_str(r, &p->topic, &p->topic_len, "truncated topic", "topic is not valid UTF-8");
    if (e != NULL)
        return malformed(why, e);
    if (!topic_name_ok(p->topic, p->topic_len))
        return malformed(why, "empty topic or wildcard in topic"); /* MQTT-3.3.2-2 */
    if (p->qos > 0) {
        if (!rd_u16(r, &p->packet_id))
            return malformed(why, "truncated packet id");
        if (p->packet_id == 0)
            return malformed(why, "packet id 0"); /* MQTT-2.3.1-1 */
    }
    p->payload = r->p + r->pos;
    p->payload_len = rd_left(r);
    return GALE_MQTT_OK;
}

/*
 * The next entry of a filter list: the filter and, for a SUBSCRIBE, its requested QoS byte.
 * Returns 1 with the entry, 0 at the end of the list, -1 when malformed (*why says how).
 */
static int next_entry(reader_t *r, bool with_qos, const char **f, size_t *n, uint8_t *q,
                      const char **why)
{
    bool bad;
    *q = 0;
    if (rd_left(r) == 0)
        return 0;
    if (!rd_str(r, f, n, &bad)) {
        *why = bad ? "topic filter is not valid UTF-8" : "truncated topic filter";
        return -1;
    }
    if (with_qos && !rd_u8(r, q)) {
        *why = "truncated requested QoS";
        return -1;
    }
    return 1;
}

/* SUBSCRIBE and UNSUBSCRIBE: a packet id, then one filter (and QoS) or more. */
static gale_mqtt_status_t decode_filters(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    bool sub = p->type == GALE_MQTT_SUBSCRIBE;
    if (!rd_u16(r, &p->packet_id))
        return malformed(why, "truncated packet id");
    if (p->packet_id == 0)
        return malformed(why, "packet id 0"); /* MQTT-2.3.1-1 */
    if (rd_left(r) == 0)
        return malformed(why, "no topic filter"); /* MQTT-3.8.3-3, MQTT-3.10.3-2 */
    p->filters = r->p + r->pos;
    p->filters_len = rd_left(r);
    const char *f;
    size_t n;
    uint8_t q;
    int got;
    while ((got = next_entry(r, sub, &f, &n, &q, why)) > 0) {
        if (!gale_mqtt_filter_valid(f, n))
            return malformed(why, "invalid topic filter");
        if (q & 0xFC)
            return malformed(why, "reserved bits set in requested QoS"); /* MQTT-3.8.3-4 */
        if (q == 3)
            return malformed(why, "requested QoS 3");
    }
    return got == 0 ? GALE_MQTT_OK : GALE_MQTT_MALFORMED;
}

/*
 * The reserved flags each client packet type must carry (2.2.2), or -1 for PUBLISH (its
 * flags are its own) and for types a client never sends (refused before this is read).
 */
static int required_flags(gale_mqtt_type_t type)
{
    switch (type) {
    case GALE_MQTT_PUBREL:
    case GALE_MQTT_SUBSCRIBE:
    case GALE_MQTT_UNSUBSCRIBE:
        return 0x2;
    case GALE_MQTT_PUBLISH:
        return -1;
    default:
        return 0;
    }
}

static bool client_type(unsigned t)
{
    switch (t) {
    case GALE_MQTT_CONNECT:
    case GALE_MQTT_PUBLISH:
    case GALE_MQTT_PUBACK:
    case GALE_MQTT_PUBREC:
    case GALE_MQTT_PUBREL:
    case GALE_MQTT_PUBCOMP:
    case GALE_MQTT_SUBSCRIBE:
    case GALE_MQTT_UNSUBSCRIBE:
    case GALE_MQTT_PINGREQ:
    case GALE_MQTT_DISCONNECT:
        return true;
    default:
        return false;
    }
}

static gale_mqtt_status_t decode_body(reader_t *r, gale_mqtt_packet_t *p, const char **why)
{
    switch (p->type) {
    case GALE_MQTT_CONNECT:
        return decode_connect(r, p, why);
    case GALE_MQTT_PUBLISH:
        return decode_publish(r, p, why);
    case GALE_MQTT_SUBSCRIBE:
    case GALE_MQTT_UNSUBSCRIBE:
        return decode_filters(r, p, why);
    case GALE_MQTT_PINGREQ:
    case GALE_MQTT_DISCONNECT:
        if (rd_left(r) != 0)
            return malformed(why, "remaining length is not 0");
        return GALE_MQTT_OK;
    default: /* PUBACK, PUBREC, PUBREL, PUBCOMP */
        if (rd_left(r) != 2)
            return malformed(why, "remaining length is not 2");
        rd_u16(r, &p->packet_id);
        return GALE_MQTT_OK;
    }
}

gale_mqtt_status_t gale_mqtt_decode(const uint8_t *pkt, size_t len, gale_mqtt_packet_t *p,
                                    const char **why)
{
    const char *unused;
    if (why == NULL)
        why = &unused;
    *why = NULL;
    memset(p, 0, sizeof(*p));
    size_t hdr, rem;
    if (pkt == NULL || fixed_header(pkt, len, &hdr, &rem) != 1 || hdr + rem != len)
        return malformed(why, "packet length does not match its remaining length");
    unsigned t = pkt[0] >> 4;
    if (!client_type(t))
        return malformed(why, "not a client packet type");
    p->type = (gale_mqtt_type_t)t;
    p->flags = pkt[0] & 0x0F;
    int want = required_flags(p->type);
    if (want >= 0 && p->flags != want)
        return malformed(why, "reserved flags of the fixed header"); /* MQTT-2.2.2-2 */
    reader_t r = {pkt + hdr, rem, 0};
    gale_mqtt_status_t st = decode_body(&r, p, why);
    if (st == GALE_MQTT_OK)
        *why = NULL;
    return st;
}

bool gale_mqtt_next_filter(const gale_mqtt_packet_t *p, size_t *pos, const char **filter,
                           size_t *len, uint8_t *qos)
{
    if (p->type != GALE_MQTT_SUBSCRIBE && p->type != GALE_MQTT_UNSUBSCRIBE)
        return false;
    if (p->filters == NULL || *pos >= p->filters_len)
        return false;
    reader_t r = {p->filters, p->filters_len, *pos};
    const char *why;
    if (next_entry(&r, p->type == GALE_MQTT_SUBSCRIBE, filter, len, qos, &why) != 1)
        return false;
    *pos = r.pos;
    return true;
}

/* ---- topics ---- */

/* Whether the one-byte level at f[i] stands alone between separators (or the ends). */
static bool whole_level(const char *f, size_t len, size_t i)
{
    return (i == 0 || f[i - 1] == '/') && (i + 1 == len || f[i + 1] == '/');
}

bool gale_mqtt_filter_valid(const char *f, size_t len)
{
    if (f == NULL || len == 0 || len > STR_MAX)
        return false; /* MQTT-4.7.3-1, and what a string can hold */
    /* Bytewise is enough: no byte of a multi-byte UTF-8 character is ASCII. */
    for (size_t i = 0; i < len; i++) {
        if (f[i] == '+' && !whole_level(f, len, i))
            return false; /* MQTT-4.7.1-3 */
        if (f[i] == '#' && (!whole_level(f, len, i) || i + 1 != len))
            return false; /* MQTT-4.7.1-2 */
    }
    return true;
}

/*
 * Copies MQTT t[0..len) to out with `/` as `.`, `+` as `*` and `#` as `>` when wild, else
 * refusing `+` and `#`. False for the characters that are gale's own separator and
 * wildcards: passing them through would make a level mean several, or a wildcard.
 */
static bool mqtt_to_gale_chars(const char *t, size_t len, bool wild, char *out)
{
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        switch (c) {
        case '/':
            c = '.';
            break;
        case '+':
        case '#':
            if (!wild)
                return false;
            c = c == '+' ? '*' : '>';
            break;
        case '.':
        case '*':
        case '>':
            return false;
        default:
            break;
        }
        out[i] = c;
    }
    return true;
}

size_t gale_mqtt_topic_to_gale(const char *t, size_t len, char *out)
{
    /* The mapping keeps the length, so an over-long name is refused before any write. */
    if (t == NULL || len == 0 || len > GALE_TOPIC_MAX)
        return 0;
    if (!mqtt_to_gale_chars(t, len, false, out))
        return 0;
    /* Empty levels, whitespace, control characters and bad UTF-8 are refused here. */
    return gale_topic_valid(out, len) ? len : 0;
}

int gale_mqtt_filter_to_gale(const char *f, size_t len, char out[2][GALE_TOPIC_MAX],
                             size_t out_len[2])
{
    if (!gale_mqtt_filter_valid(f, len) || len > GALE_TOPIC_MAX)
        return 0;
    /* `x/#` also matches `x` itself (4.7.1.2), which gale's `>` (one or more) does not. */
    bool parent = len >= 2 && f[len - 1] == '#';
    char *full = out[parent ? 1 : 0];
    if (!mqtt_to_gale_chars(f, len, true, full) || !gale_pattern_valid(full, len, NULL))
        return 0;
    if (!parent) {
        out_len[0] = len;
        return 1;
    }
    /* The parent: the same without its last two characters `.>`; its levels were checked. */
    memcpy(out[0], full, len - 2);
    out_len[0] = len - 2;
    out_len[1] = len;
    return 2;
}

bool gale_mqtt_topic_from_gale(const char *t, size_t len, char *out)
{
    if (t == NULL || len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (c == '/' || c == '+' || c == '#')
            return false;
        out[i] = c == '.' ? '/' : c;
    }
    return true;
}

/* ---- encoders ---- */

/* Appends a packet of the given first byte whose whole variable part is body[0..n), n small. */
static gale_err_t put_packet(gale_buf_t *out, uint8_t byte0, const uint8_t *body, size_t n)
{
    size_t start = out->len;
    uint8_t hdr[FIXED_HEADER_MAX];
    gale_buf_append(out, hdr, put_fixed_header(hdr, byte0, n));
    gale_buf_append(out, body, n);
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_mqtt_encode_connack(gale_buf_t *out, bool session_present, uint8_t code)
{
    /* MQTT-3.2.2-4: a refusal never claims a session. */
    uint8_t body[2] = {session_present && code == GALE_MQTT_ACCEPTED ? 1 : 0, code};
    return put_packet(out, GALE_MQTT_CONNACK << 4, body, sizeof(body));
}

gale_err_t gale_mqtt_encode_ack(gale_buf_t *out, gale_mqtt_type_t type, uint16_t packet_id)
{
    if (type != GALE_MQTT_PUBACK && type != GALE_MQTT_PUBREC && type != GALE_MQTT_PUBREL &&
        type != GALE_MQTT_PUBCOMP && type != GALE_MQTT_UNSUBACK)
        return GALE_ERR_BAD_REQUEST;
    uint8_t body[2];
    put_u16(body, packet_id);
    uint8_t flags = type == GALE_MQTT_PUBREL ? 0x2 : 0; /* MQTT-3.6.1-1 */
    return put_packet(out, (uint8_t)(type << 4 | flags), body, sizeof(body));
}

gale_err_t gale_mqtt_encode_suback(gale_buf_t *out, uint16_t packet_id, const uint8_t *codes,
                                   size_t n)
{
    if (n > GALE_MQTT_REMAINING_MAX - 2)
        return GALE_ERR_TOO_LARGE;
    size_t start = out->len;
    uint8_t hdr[FIXED_HEADER_MAX + 2];
    size_t h = put_fixed_header(hdr, GALE_MQTT_SUBACK << 4, 2 + n);
    put_u16(hdr + h, packet_id);
    gale_buf_append(out, hdr, h + 2);
    gale_buf_append(out, codes, n);
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_mqtt_encode_pingresp(gale_buf_t *out)
{
    return put_packet(out, GALE_MQTT_PINGRESP << 4, NULL, 0);
}

/*
 * Appends a PUBLISH from its parts (topic_len <= STR_MAX). encode_publish and
 * publish_at_qos1 both write through here, so the two agree byte for byte.
 */
static gale_err_t put_publish(gale_buf_t *out, uint8_t byte0, const char *topic, size_t topic_len,
                              bool with_id, uint16_t packet_id, const uint8_t *payload,
                              size_t payload_len)
{
    size_t head = 2 + topic_len + (with_id ? 2 : 0); /* <= 2 + STR_MAX + 2 */
    if (payload_len > GALE_MQTT_REMAINING_MAX - head)
        return GALE_ERR_TOO_LARGE;
    size_t start = out->len;
    uint8_t hdr[FIXED_HEADER_MAX + 2];
    size_t h = put_fixed_header(hdr, byte0, head + payload_len);
    put_u16(hdr + h, (uint16_t)topic_len);
    gale_buf_append(out, hdr, h + 2);
    gale_buf_append(out, topic, topic_len);
    if (with_id) {
        uint8_t id[2];
        put_u16(id, packet_id);
        gale_buf_append(out, id, sizeof(id));
    }
    gale_buf_append(out, payload, payload_len);
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_mqtt_encode_publish(gale_buf_t *out, const char *topic, size_t topic_len,
                                    uint8_t qos, bool retain, bool dup, uint16_t packet_id,
                                    const uint8_t *payload, size_t payload_len)
{
    /* Never write what gale_mqtt_decode would call malformed. */
    if (qos > 2 || (dup && qos == 0) || topic_len == 0 || topic_len > STR_MAX ||
        (qos > 0 && packet_id == 0))
        return GALE_ERR_BAD_REQUEST;
    uint8_t byte0 = (uint8_t)(GALE_MQTT_PUBLISH << 4 | (dup ? PUB_DUP : 0) | qos << PUB_QOS_SHIFT |
                              (retain ? PUB_RETAIN : 0));
    return put_publish(out, byte0, topic, topic_len, qos > 0, packet_id, payload, payload_len);
}

gale_err_t gale_mqtt_publish_at_qos1(gale_buf_t *out, const uint8_t *pkt, size_t len,
                                     uint16_t packet_id)
{
    size_t hdr, rem;
    if (pkt == NULL || packet_id == 0 || fixed_header(pkt, len, &hdr, &rem) != 1 ||
        hdr + rem != len)
        return GALE_ERR_BAD_REQUEST;
    /* A QoS 0 PUBLISH: no QoS bits, hence no DUP either (MQTT-3.3.1-2). */
    if (pkt[0] >> 4 != GALE_MQTT_PUBLISH || (pkt[0] & (PUB_QOS_MASK | PUB_DUP)) != 0)
        return GALE_ERR_BAD_REQUEST;
    const uint8_t *body = pkt + hdr;
    size_t topic_len = rem >= 2 ? (size_t)(body[0] << 8 | body[1]) : 0;
    if (topic_len == 0 || 2 + topic_len > rem)
        return GALE_ERR_BAD_REQUEST;
    /* Rewritten rather than patched: the remaining length grows by 2 and may take one more
     * byte, so the header cannot be edited in place. */
    uint8_t byte0 = (uint8_t)(pkt[0] | 1 << PUB_QOS_SHIFT);
    return put_publish(out, byte0, (const char *)body + 2, topic_len, true, packet_id,
                       body + 2 + topic_len, rem - 2 - topic_len);
}
