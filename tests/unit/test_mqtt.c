/*
 * Unit tests of protocol/mqtt.c (gale_mqtt.h): framing, the decode of every client packet
 * (valid and each rule broken), filters, the topic mapping both ways and every encoder,
 * checked against packets written out by hand from the MQTT 3.1.1 specification.
 */
#include "test_protocol_util.h"

#include "gale_mqtt.h"

/* ---- helpers ---- */

/* A packet body under construction. */
typedef struct {
    uint8_t b[4096];
    size_t n;
} body_t;

static void put(body_t *k, const void *p, size_t n)
{
    assert_true(k->n + n <= sizeof(k->b));
    memcpy(k->b + k->n, p, n);
    k->n += n;
}

static void put_u8(body_t *k, uint8_t v)
{
    put(k, &v, 1);
}

static void put_u16(body_t *k, uint16_t v)
{
    uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(k, b, 2);
}

/* A length-prefixed field of n bytes. */
static void put_field(body_t *k, const void *s, size_t n)
{
    put_u16(k, (uint16_t)n);
    put(k, s, n);
}

static void put_str(body_t *k, const char *s)
{
    put_field(k, s, strlen(s));
}

/*
 * The whole packet byte0 + remaining length + body into out; returns its size. The
 * remaining length is written here the way 2.2.3 spells it, independently of mqtt.c.
 */
static size_t wrap(uint8_t byte0, const body_t *k, uint8_t *out)
{
    size_t n = 0, v = k->n;
    out[n++] = byte0;
    do {
        uint8_t d = v % 128;
        v /= 128;
        if (v > 0)
            d |= 128;
        out[n++] = d;
    } while (v > 0);
    memcpy(out + n, k->b, k->n);
    return n + k->n;
}

/* Decodes, and checks that *why is set exactly on failure. */
static gale_mqtt_status_t dec(const uint8_t *b, size_t n, gale_mqtt_packet_t *p)
{
    const char *why = "unset";
    gale_mqtt_status_t st = gale_mqtt_decode(b, n, p, &why);
    if (st == GALE_MQTT_OK)
        assert_null(why);
    else
        assert_true(why != NULL && strlen(why) > 0 && strcmp(why, "unset") != 0);
    return st;
}

/* The status of the packet written in hex. */
static gale_mqtt_status_t st_hex(const char *hex)
{
    uint8_t b[1024];
    gale_mqtt_packet_t p;
    return dec(b, hex2bin(hex, b, sizeof(b)), &p);
}

static gale_mqtt_status_t st_body(uint8_t byte0, const body_t *k)
{
    uint8_t b[sizeof(k->b) + 8];
    gale_mqtt_packet_t p;
    return dec(b, wrap(byte0, k, b), &p);
}

static bool span_eq(const void *p, size_t n, const char *s)
{
    return n == strlen(s) && (n == 0 || memcmp(p, s, n) == 0);
}

/* ---- framing ---- */

/* Each remaining length with its encoding, at every boundary of 2.2.3's table. */
static const struct {
    size_t rem;
    const char *hex;
} lengths[] = {
    {0, "00"},
    {1, "01"},
    {127, "7f"},
    {128, "80 01"},
    {16383, "ff 7f"},
    {16384, "80 80 01"},
    {2097151, "ff ff 7f"},
    {2097152, "80 80 80 01"},
    {268435455, "ff ff ff 7f"},
};

static void test_frame_lengths(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
        uint8_t h[8] = {0x30};
        size_t hn = 1 + hex2bin(lengths[i].hex, h + 1, sizeof(h) - 1);
        size_t total = 99;
        /* Every strict prefix of the fixed header: more needed, size unknown. */
        for (size_t k = 0; k < hn; k++) {
            total = 99;
            assert_int_equal(gale_mqtt_frame(h, k, &total), 0);
            assert_int_equal(total, 0);
        }
        /* The whole fixed header: the size is known. */
        total = 99;
        int r = gale_mqtt_frame(h, hn, &total);
        assert_int_equal(total, hn + lengths[i].rem);
        assert_int_equal(r, lengths[i].rem == 0 ? 1 : 0);
    }
}

static void test_frame_whole(void **state)
{
    (void)state;
    /* A whole packet, then one with the next packet's bytes behind it. */
    uint8_t b[300];
    memset(b, 0xAA, sizeof(b));
    b[0] = 0x30;
    b[1] = 0x80;
    b[2] = 0x01; /* 128 */
    size_t total = 0;
    assert_int_equal(gale_mqtt_frame(b, 130, &total), 0);
    assert_int_equal(total, 131);
    assert_int_equal(gale_mqtt_frame(b, 131, &total), 1);
    assert_int_equal(total, 131);
    assert_int_equal(gale_mqtt_frame(b, sizeof(b), &total), 1);
    assert_int_equal(total, 131);
    /* Empty input, and the shortest packets. */
    assert_int_equal(gale_mqtt_frame(b, 0, &total), 0);
    assert_int_equal(total, 0);
    uint8_t ping[] = {0xC0, 0x00, 0xE0};
    assert_int_equal(gale_mqtt_frame(ping, 1, &total), 0);
    assert_int_equal(total, 0);
    assert_int_equal(gale_mqtt_frame(ping, 2, &total), 1);
    assert_int_equal(total, 2);
    assert_int_equal(gale_mqtt_frame(ping, 3, &total), 1);
    assert_int_equal(total, 2);
    uint8_t one[] = {0x40, 0x02, 0x00};
    assert_int_equal(gale_mqtt_frame(one, 3, &total), 0);
    assert_int_equal(total, 4);
    /* A longer encoding than needed is still a length (3.1.1 does not forbid it). */
    uint8_t loose[] = {0xC0, 0x80, 0x00};
    assert_int_equal(gale_mqtt_frame(loose, 3, &total), 1);
    assert_int_equal(total, 3);
}

static void test_frame_malformed(void **state)
{
    (void)state;
    size_t total = 99;
    /* A fourth length byte with its continuation bit: a fifth would follow. */
    uint8_t five[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F};
    for (size_t n = 0; n <= 4; n++) {
        assert_int_equal(gale_mqtt_frame(five, n, &total), 0);
        assert_int_equal(total, 0);
    }
    for (size_t n = 5; n <= sizeof(five); n++) {
        total = 99;
        assert_int_equal(gale_mqtt_frame(five, n, &total), -1);
        assert_int_equal(total, 0);
    }
    uint8_t zeros[] = {0x30, 0x80, 0x80, 0x80, 0x80, 0x00};
    assert_int_equal(gale_mqtt_frame(zeros, sizeof(zeros), &total), -1);
    /* Decode refuses it too, and any length that is not the packet's. */
    assert_int_equal(st_hex("30 ff ff ff ff 7f"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("c0 01"), GALE_MQTT_MALFORMED);    /* short */
    assert_int_equal(st_hex("c0 00 00"), GALE_MQTT_MALFORMED); /* long */
    assert_int_equal(st_hex("c0"), GALE_MQTT_MALFORMED);       /* no length */
    assert_int_equal(st_hex(""), GALE_MQTT_MALFORMED);         /* nothing */
    assert_int_equal(st_hex("c0 00"), GALE_MQTT_OK);           /* PINGREQ */
    /* A length written in more bytes than needed (82 00 is 2) frames as that length. */
    assert_int_equal(st_hex("40 82 00 00 01"), GALE_MQTT_OK);
}

/* ---- CONNECT ---- */

typedef struct {
    const char *name;
    uint8_t level;
    uint8_t flags;
    uint16_t keepalive;
    const char *client_id, *will_topic, *will_msg, *user, *password; /* NULL: left out */
} connect_t;

static void connect_body(const connect_t *c, body_t *k)
{
    k->n = 0;
    put_str(k, c->name);
    put_u8(k, c->level);
    put_u8(k, c->flags);
    put_u16(k, c->keepalive);
    const char *fields[] = {c->client_id, c->will_topic, c->will_msg, c->user, c->password};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (fields[i] != NULL)
            put_str(k, fields[i]);
}

static gale_mqtt_status_t st_connect(const connect_t *c)
{
    body_t k;
    connect_body(c, &k);
    return st_body(0x10, &k);
}

static void test_connect_valid(void **state)
{
    (void)state;
    gale_mqtt_packet_t p;
    uint8_t b[256];
    /* 3.1.1, clean session, empty client id (the broker assigns one), keep alive 60. */
    size_t n = hex2bin("10 0c 00 04 4d 51 54 54 04 02 00 3c 00 00", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_CONNECT);
    assert_int_equal(p.flags, 0);
    assert_int_equal(p.level, 4);
    assert_true(p.clean_session);
    assert_int_equal(p.keepalive, 60);
    assert_int_equal(p.client_id_len, 0);
    assert_false(p.will || p.has_username || p.has_password);
    assert_null(p.will_topic);
    assert_null(p.username);
    assert_null(p.password);
    assert_null(p.topic);
    assert_null(p.filters);
    assert_int_equal(p.packet_id, 0);

    /* 3.1 ("MQIsdp", level 3), client id "c1", no clean session. */
    n = hex2bin("10 10 00 06 4d 51 49 73 64 70 03 00 ff ff 00 02 63 31", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.level, 3);
    assert_false(p.clean_session);
    assert_int_equal(p.keepalive, 65535);
    assert_true(span_eq(p.client_id, p.client_id_len, "c1"));

    /* Every field: will QoS 1 retained, user name, password. */
    connect_t c = {"MQTT", 4, 0xEE, 10, "id", "w/t", "bye", "u", "pw"};
    body_t k;
    connect_body(&c, &k);
    n = wrap(0x10, &k, b);
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_true(p.clean_session && p.will && p.will_retain && p.has_username && p.has_password);
    assert_int_equal(p.will_qos, 1);
    assert_int_equal(p.keepalive, 10);
    assert_true(span_eq(p.client_id, p.client_id_len, "id"));
    assert_true(span_eq(p.will_topic, p.will_topic_len, "w/t"));
    assert_true(span_eq(p.will_payload, p.will_payload_len, "bye"));
    assert_true(span_eq(p.username, p.username_len, "u"));
    assert_true(span_eq(p.password, p.password_len, "pw"));
    /* Pointers point into the packet. */
    assert_true((const uint8_t *)p.client_id > b && (const uint8_t *)p.client_id < b + n);
    assert_true(p.password + p.password_len == b + n);

    /* Will QoS 2 without retain; user name alone; empty will message and user name. */
    connect_t c2 = {"MQTT", 4, 0x80 | 0x10 | 0x04, 0, "x", "t", "", "", NULL};
    assert_int_equal(st_connect(&c2), GALE_MQTT_OK);
    /* Empty client id with clean session, at 3.1 too. */
    connect_t c3 = {"MQIsdp", 3, 0x02, 0, "", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&c3), GALE_MQTT_OK);
    /* Any UTF-8 in a client id: "é€😀" and characters MQTT-3.1.3-5 does not list. */
    connect_t c4 = {"MQTT", 4,    0,    0,   "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 /+#",
                    NULL,   NULL, NULL, NULL};
    assert_int_equal(st_connect(&c4), GALE_MQTT_OK);
}

static void test_connect_binary_fields(void **state)
{
    (void)state;
    /* The will message and the password are binary data: any bytes, NUL included. */
    body_t k = {.n = 0};
    put_str(&k, "MQTT");
    put_u8(&k, 4);
    put_u8(&k, 0xC0 | 0x04 | 0x02);
    put_u16(&k, 0);
    put_str(&k, "id");
    put_str(&k, "t");
    put_field(&k, "\x00\xff\xc3", 3);
    put_str(&k, "u");
    put_field(&k, "\x00\xfe", 2);
    uint8_t b[128];
    gale_mqtt_packet_t p;
    size_t n = wrap(0x10, &k, b);
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.will_payload_len, 3);
    assert_int_equal(p.will_payload[1], 0xff);
    assert_int_equal(p.password_len, 2);
    assert_int_equal(p.password[1], 0xfe);
}

static void test_connect_protocol(void **state)
{
    (void)state;
    connect_t c = {"MQTT", 4, 0x02, 0, "id", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&c), GALE_MQTT_OK);
    /* Another level for the name: CONNACK 1. */
    static const uint8_t bad_levels[] = {0, 1, 2, 3, 5, 6, 255};
    for (size_t i = 0; i < sizeof(bad_levels); i++) {
        c.level = bad_levels[i];
        assert_int_equal(st_connect(&c), GALE_MQTT_BAD_LEVEL);
    }
    connect_t c31 = {"MQIsdp", 4, 0x02, 0, "id", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&c31), GALE_MQTT_BAD_LEVEL);
    c31.level = 3;
    assert_int_equal(st_connect(&c31), GALE_MQTT_OK);
    /* An MQTT 5 CONNECT (properties after the keep alive) is answered, not parsed. */
    assert_int_equal(st_hex("10 11 00 04 4d 51 54 54 05 02 00 3c 03 21 00 14 00 01 61"),
                     GALE_MQTT_BAD_LEVEL);
    /* Even when nothing follows the level. */
    assert_int_equal(st_hex("10 07 00 04 4d 51 54 54 05"), GALE_MQTT_BAD_LEVEL);
    /* Another protocol name: malformed, whatever the level. */
    static const char *const names[] = {"MQTX", "mqtt", "MQIsdP", "MQTT ", "", "MQT", "MQIsdpX"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        connect_t cn = {names[i], 4, 0x02, 0, "id", NULL, NULL, NULL, NULL};
        assert_int_equal(st_connect(&cn), GALE_MQTT_MALFORMED);
        cn.level = 3;
        assert_int_equal(st_connect(&cn), GALE_MQTT_MALFORMED);
    }
    /* Truncated before or inside the name, or before the level. */
    assert_int_equal(st_hex("10 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("10 01 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("10 04 00 04 4d 51"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("10 06 00 04 4d 51 54 54"), GALE_MQTT_MALFORMED);
    /* Fixed header flags must be 0. */
    assert_int_equal(st_hex("11 0c 00 04 4d 51 54 54 04 02 00 3c 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("18 0c 00 04 4d 51 54 54 04 02 00 3c 00 00"), GALE_MQTT_MALFORMED);
}

static void test_connect_flags(void **state)
{
    (void)state;
    connect_t c = {"MQTT", 4, 0x02, 0, "id", NULL, NULL, NULL, NULL};
    /* The reserved flag. */
    c.flags = 0x03;
    assert_int_equal(st_connect(&c), GALE_MQTT_MALFORMED);
    /* Will QoS 3, with the will flag and its fields. */
    connect_t w = {"MQTT", 4, 0x04 | 0x18, 0, "id", "t", "m", NULL, NULL};
    assert_int_equal(st_connect(&w), GALE_MQTT_MALFORMED);
    w.flags = 0x04 | 0x10 | 0x20; /* QoS 2, retained: fine */
    assert_int_equal(st_connect(&w), GALE_MQTT_OK);
    /* Will QoS or retain without the will flag. */
    static const uint8_t no_will[] = {0x08, 0x10, 0x18, 0x20, 0x28};
    for (size_t i = 0; i < sizeof(no_will); i++) {
        c.flags = (uint8_t)(0x02 | no_will[i]);
        assert_int_equal(st_connect(&c), GALE_MQTT_MALFORMED);
    }
    /* A password without a user name (the password field present or not). */
    connect_t pw = {"MQTT", 4, 0x02 | 0x40, 0, "id", NULL, NULL, NULL, "pw"};
    assert_int_equal(st_connect(&pw), GALE_MQTT_MALFORMED);
    pw.password = NULL;
    assert_int_equal(st_connect(&pw), GALE_MQTT_MALFORMED);
    /* A flag whose field is missing. */
    connect_t miss = {"MQTT", 4, 0x02 | 0x80, 0, "id", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&miss), GALE_MQTT_MALFORMED);
    miss.flags = 0x02 | 0x04;
    miss.will_topic = "t";
    assert_int_equal(st_connect(&miss), GALE_MQTT_MALFORMED); /* no will message */
    /* A field without its flag: trailing bytes. */
    connect_t extra = {"MQTT", 4, 0x02, 0, "id", NULL, NULL, "u", NULL};
    assert_int_equal(st_connect(&extra), GALE_MQTT_MALFORMED);
    /* The will topic follows the rules of a topic name. */
    static const char *const bad_topics[] = {"", "a/+", "#", "a/#", "+"};
    for (size_t i = 0; i < sizeof(bad_topics) / sizeof(bad_topics[0]); i++) {
        connect_t bt = {"MQTT", 4, 0x06, 0, "id", bad_topics[i], "m", NULL, NULL};
        assert_int_equal(st_connect(&bt), GALE_MQTT_MALFORMED);
    }
}

static void test_connect_client_id(void **state)
{
    (void)state;
    /* Empty: only with clean session. */
    connect_t c = {"MQTT", 4, 0x00, 0, "", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&c), GALE_MQTT_BAD_CLIENT_ID);
    c.flags = 0x02;
    assert_int_equal(st_connect(&c), GALE_MQTT_OK);
    connect_t c31 = {"MQIsdp", 3, 0x00, 0, "", NULL, NULL, NULL, NULL};
    assert_int_equal(st_connect(&c31), GALE_MQTT_BAD_CLIENT_ID);
    /* Up to GALE_MQTT_CLIENT_ID_MAX bytes. */
    char id[GALE_MQTT_CLIENT_ID_MAX + 2];
    memset(id, 'x', sizeof(id));
    id[GALE_MQTT_CLIENT_ID_MAX] = '\0';
    c.client_id = id;
    assert_int_equal(st_connect(&c), GALE_MQTT_OK);
    id[GALE_MQTT_CLIENT_ID_MAX] = 'x';
    id[GALE_MQTT_CLIENT_ID_MAX + 1] = '\0';
    assert_int_equal(st_connect(&c), GALE_MQTT_BAD_CLIENT_ID);
    /* Malformed as well: closed without a CONNACK. */
    c.user = "u"; /* without its flag */
    assert_int_equal(st_connect(&c), GALE_MQTT_MALFORMED);
    connect_t e = {"MQTT", 4, 0x00, 0, "", NULL, NULL, "u", NULL};
    assert_int_equal(st_connect(&e), GALE_MQTT_MALFORMED);
    /* The fields decoded so far are there for the log. */
    uint8_t b[512];
    body_t k;
    gale_mqtt_packet_t p;
    connect_t l = {"MQTT", 4, 0x02, 0, id, NULL, NULL, NULL, NULL};
    connect_body(&l, &k);
    assert_int_equal(dec(b, wrap(0x10, &k, b), &p), GALE_MQTT_BAD_CLIENT_ID);
    assert_int_equal(p.client_id_len, GALE_MQTT_CLIENT_ID_MAX + 1);
}

static void test_connect_strings(void **state)
{
    (void)state;
    /* U+0000, ill-formed UTF-8 (bad continuation, overlong, surrogate, over U+10FFFF, lone
     * continuation, truncated) in each string field. */
    static const char *const bad[] = {
        "a\xc3", "\xc3\x28", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80", "\xe2\x82",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]) + 1; i++) {
        body_t k = {.n = 0};
        bool nul = i == sizeof(bad) / sizeof(bad[0]);
        const char *s = nul ? "a\0b" : bad[i];
        size_t sn = nul ? 3 : strlen(s);
        for (int field = 0; field < 3; field++) {
            k.n = 0;
            put_str(&k, "MQTT");
            put_u8(&k, 4);
            put_u8(&k, 0x80 | 0x04 | 0x02);
            put_u16(&k, 0);
            if (field == 0)
                put_field(&k, s, sn);
            else
                put_str(&k, "id");
            if (field == 1)
                put_field(&k, s, sn);
            else
                put_str(&k, "t");
            put_str(&k, "m");
            if (field == 2)
                put_field(&k, s, sn);
            else
                put_str(&k, "u");
            assert_int_equal(st_body(0x10, &k), GALE_MQTT_MALFORMED);
        }
    }
}

static void test_connect_truncated(void **state)
{
    (void)state;
    /* Every strict prefix of a full CONNECT, framed as a whole packet, is malformed. */
    connect_t c = {"MQTT", 4, 0xEE, 10, "id", "w/t", "bye", "user", "pw"};
    body_t k;
    connect_body(&c, &k);
    assert_int_equal(st_body(0x10, &k), GALE_MQTT_OK);
    size_t full = k.n;
    for (size_t n = 0; n < full; n++) {
        k.n = n;
        assert_int_equal(st_body(0x10, &k), GALE_MQTT_MALFORMED);
    }
    /* And with a byte more. */
    k.n = full;
    put_u8(&k, 0);
    assert_int_equal(st_body(0x10, &k), GALE_MQTT_MALFORMED);
}

/* ---- PUBLISH ---- */

static void test_publish_valid(void **state)
{
    (void)state;
    gale_mqtt_packet_t p;
    uint8_t b[64];
    /* QoS 0, empty payload. */
    size_t n = hex2bin("30 05 00 03 61 2f 62", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_PUBLISH);
    assert_int_equal(p.qos, 0);
    assert_false(p.dup || p.retain);
    assert_true(span_eq(p.topic, p.topic_len, "a/b"));
    assert_int_equal(p.payload_len, 0);
    assert_ptr_equal(p.payload, b + n);
    assert_int_equal(p.packet_id, 0);
    /* QoS 1, retained, packet id 0x1234, payload "hi". */
    n = hex2bin("33 09 00 03 61 2f 62 12 34 68 69", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.flags, 3);
    assert_int_equal(p.qos, 1);
    assert_true(p.retain);
    assert_false(p.dup);
    assert_int_equal(p.packet_id, 0x1234);
    assert_true(span_eq(p.payload, p.payload_len, "hi"));
    /* QoS 2 with DUP; QoS 1 with DUP. */
    n = hex2bin("3c 07 00 01 74 ff ff 00 01", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.qos, 2);
    assert_true(p.dup);
    assert_int_equal(p.packet_id, 0xffff);
    assert_int_equal(p.payload_len, 2);
    assert_int_equal(st_hex("3a 05 00 01 74 00 01"), GALE_MQTT_OK);
    /* A payload that holds anything, and a topic of any UTF-8 and of one `/`. */
    assert_int_equal(st_hex("30 06 00 02 c3 a9 00 ff"), GALE_MQTT_OK);
    assert_int_equal(st_hex("30 03 00 01 2f"), GALE_MQTT_OK);
    assert_int_equal(st_hex("30 07 00 05 24 53 59 53 2f"), GALE_MQTT_OK); /* "$SYS/" */
}

static void test_publish_invalid(void **state)
{
    (void)state;
    /* QoS 3, with and without DUP/retain. */
    assert_int_equal(st_hex("36 07 00 01 74 00 01 78 78"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("3f 07 00 01 74 00 01 78 78"), GALE_MQTT_MALFORMED);
    /* DUP at QoS 0. */
    assert_int_equal(st_hex("38 03 00 01 74"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("39 03 00 01 74"), GALE_MQTT_MALFORMED);
    /* Wildcards in the topic name, and an empty one. */
    assert_int_equal(st_hex("30 05 00 03 61 2f 2b"), GALE_MQTT_MALFORMED); /* a/+ */
    assert_int_equal(st_hex("30 05 00 03 61 2f 23"), GALE_MQTT_MALFORMED); /* a/# */
    assert_int_equal(st_hex("30 03 00 01 23"), GALE_MQTT_MALFORMED);       /* # */
    assert_int_equal(st_hex("30 04 00 02 61 2b"), GALE_MQTT_MALFORMED);    /* a+ */
    assert_int_equal(st_hex("30 02 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("32 04 00 00 00 01"), GALE_MQTT_MALFORMED);
    /* U+0000 and ill-formed UTF-8 in the topic. */
    assert_int_equal(st_hex("30 05 00 03 61 00 62"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("30 04 00 02 c3 28"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("30 05 00 03 ed a0 80"), GALE_MQTT_MALFORMED);
    /* Packet id 0 at QoS 1 and 2; a packet id cut short or missing. */
    assert_int_equal(st_hex("32 05 00 01 74 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("34 05 00 01 74 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("32 04 00 01 74 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("32 03 00 01 74"), GALE_MQTT_MALFORMED);
    /* The topic cut short, or no topic at all. */
    assert_int_equal(st_hex("30 05 00 05 61 2f 62"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("30 01 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("30 00"), GALE_MQTT_MALFORMED);
}

static void test_publish_long(void **state)
{
    (void)state;
    /* A payload that takes three length bytes: 3 + 2 + 20000 = 20005. */
    size_t plen = 20000;
    uint8_t *b = malloc(16 + plen);
    assert_non_null(b);
    size_t n = hex2bin("32 a5 9c 01 00 01 74 00 07", b, 16);
    memset(b + n, 'z', plen);
    gale_mqtt_packet_t p;
    assert_int_equal(dec(b, n + plen, &p), GALE_MQTT_OK);
    assert_int_equal(p.payload_len, plen);
    assert_int_equal(p.packet_id, 7);
    size_t total;
    assert_int_equal(gale_mqtt_frame(b, n + plen, &total), 1);
    assert_int_equal(total, n + plen);
    free(b);
}

/* ---- SUBSCRIBE, UNSUBSCRIBE ---- */

static void test_subscribe(void **state)
{
    (void)state;
    gale_mqtt_packet_t p;
    uint8_t b[128];
    /* id 1: "a/b" QoS 0, "#" QoS 2, "+/x" QoS 1. */
    size_t n = hex2bin("82 12 00 01 00 03 61 2f 62 00 00 01 23 02 00 03 2b 2f 78 01", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_SUBSCRIBE);
    assert_int_equal(p.flags, 2);
    assert_int_equal(p.packet_id, 1);
    assert_ptr_equal(p.filters, b + 4);
    assert_int_equal(p.filters_len, n - 4);
    static const char *const want[] = {"a/b", "#", "+/x"};
    static const uint8_t want_qos[] = {0, 2, 1};
    size_t pos = 0, i = 0;
    const char *f;
    size_t fl;
    uint8_t q = 9;
    while (gale_mqtt_next_filter(&p, &pos, &f, &fl, &q)) {
        assert_true(i < 3);
        assert_true(span_eq(f, fl, want[i]));
        assert_int_equal(q, want_qos[i]);
        i++;
    }
    assert_int_equal(i, 3);
    assert_int_equal(pos, p.filters_len);
    assert_false(gale_mqtt_next_filter(&p, &pos, &f, &fl, &q)); /* stays at the end */
    /* One filter of 65535 bytes... is too long for this buffer: one of 200 suffices. */
    body_t k = {.n = 0};
    put_u16(&k, 0xffff);
    char lng[200];
    memset(lng, 'a', sizeof(lng));
    put_field(&k, lng, sizeof(lng));
    put_u8(&k, 1);
    assert_int_equal(st_body(0x82, &k), GALE_MQTT_OK);
}

static void test_subscribe_invalid(void **state)
{
    (void)state;
    /* Reserved flags: must be 0b0010. */
    assert_int_equal(st_hex("80 06 00 01 00 01 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("83 06 00 01 00 01 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("8a 06 00 01 00 01 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 01 00 01 61 00"), GALE_MQTT_OK);
    /* No filter; packet id 0; packet id cut short. */
    assert_int_equal(st_hex("82 02 00 01"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 00 00 01 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 01 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 00"), GALE_MQTT_MALFORMED);
    /* Requested QoS 3, or reserved bits set. */
    assert_int_equal(st_hex("82 06 00 01 00 01 61 03"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 01 00 01 61 04"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 01 00 01 61 80"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 01 00 01 61 fd"), GALE_MQTT_MALFORMED);
    /* ... in the second filter. */
    assert_int_equal(st_hex("82 0a 00 01 00 01 61 00 00 01 62 03"), GALE_MQTT_MALFORMED);
    /* The QoS byte missing; the filter cut short. */
    assert_int_equal(st_hex("82 05 00 01 00 01 61"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 09 00 01 00 01 61 00 00 01 62"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 06 00 01 00 03 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 03 00 01 00"), GALE_MQTT_MALFORMED);
    /* Invalid filters. */
    static const char *const bad[] = {"a/b#", "a/#/b", "a+", "#a", "+a", "a/+b", "##", "", "#/"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        body_t k = {.n = 0};
        put_u16(&k, 5);
        put_str(&k, bad[i]);
        put_u8(&k, 0);
        assert_int_equal(st_body(0x82, &k), GALE_MQTT_MALFORMED);
        /* The same list in an UNSUBSCRIBE. */
        k.n -= 1;
        assert_int_equal(st_body(0xA2, &k), GALE_MQTT_MALFORMED);
    }
    /* U+0000 and ill-formed UTF-8 in a filter. */
    assert_int_equal(st_hex("82 07 00 01 00 02 61 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("82 07 00 01 00 02 c3 28 00"), GALE_MQTT_MALFORMED);
}

static void test_unsubscribe(void **state)
{
    (void)state;
    gale_mqtt_packet_t p;
    uint8_t b[64];
    /* id 0x0102: "a/+", "#". */
    size_t n = hex2bin("a2 0a 01 02 00 03 61 2f 2b 00 01 23", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_UNSUBSCRIBE);
    assert_int_equal(p.packet_id, 0x0102);
    size_t pos = 0;
    const char *f;
    size_t fl;
    uint8_t q = 9;
    assert_true(gale_mqtt_next_filter(&p, &pos, &f, &fl, &q));
    assert_true(span_eq(f, fl, "a/+"));
    assert_int_equal(q, 0);
    q = 9;
    assert_true(gale_mqtt_next_filter(&p, &pos, &f, &fl, &q));
    assert_true(span_eq(f, fl, "#"));
    assert_int_equal(q, 0);
    assert_false(gale_mqtt_next_filter(&p, &pos, &f, &fl, &q));
    /* Flags, no filter, packet id 0, a trailing byte (a QoS byte has no place here). */
    assert_int_equal(st_hex("a0 05 00 01 00 01 61"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("a3 05 00 01 00 01 61"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("a2 02 00 01"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("a2 05 00 00 00 01 61"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("a2 06 00 01 00 01 61 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("a2 05 00 01 00 01 61"), GALE_MQTT_OK);
    /* A list that decode would refuse ends the walk, never passes its end. */
    gale_mqtt_packet_t h;
    memset(&h, 0, sizeof(h));
    h.type = GALE_MQTT_SUBSCRIBE;
    static const uint8_t cut[] = {0x00, 0x01, 'a', 0x01, 0x00, 0x05, 'b'};
    h.filters = cut;
    h.filters_len = sizeof(cut);
    pos = 0;
    assert_true(gale_mqtt_next_filter(&h, &pos, &f, &fl, &q));
    assert_int_equal(q, 1);
    assert_false(gale_mqtt_next_filter(&h, &pos, &f, &fl, &q)); /* filter cut short */
    assert_int_equal(pos, 4);
    h.filters_len = 3;
    pos = 0;
    assert_false(gale_mqtt_next_filter(&h, &pos, &f, &fl, &q)); /* QoS byte missing */
    h.filters = NULL;
    assert_false(gale_mqtt_next_filter(&h, &pos, &f, &fl, &q));
    /* next_filter reads nothing from another packet type. */
    n = hex2bin("30 05 00 03 61 2f 62", b, sizeof(b));
    assert_int_equal(dec(b, n, &p), GALE_MQTT_OK);
    pos = 0;
    assert_false(gale_mqtt_next_filter(&p, &pos, &f, &fl, &q));
}

/* ---- the other client packets ---- */

static void test_small_packets(void **state)
{
    (void)state;
    gale_mqtt_packet_t p;
    uint8_t b[16];
    assert_int_equal(dec(b, hex2bin("c0 00", b, sizeof(b)), &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_PINGREQ);
    assert_int_equal(dec(b, hex2bin("e0 00", b, sizeof(b)), &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_DISCONNECT);
    assert_int_equal(st_hex("c0 01 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("e0 01 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("e0 02 00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("c1 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("c2 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("e8 00"), GALE_MQTT_MALFORMED);
    /* PUBACK, PUBREC, PUBREL (flags 0b0010), PUBCOMP: remaining length 2. */
    static const struct {
        uint8_t byte0;
        gale_mqtt_type_t type;
    } acks[] = {{0x40, GALE_MQTT_PUBACK},
                {0x50, GALE_MQTT_PUBREC},
                {0x62, GALE_MQTT_PUBREL},
                {0x70, GALE_MQTT_PUBCOMP}};
    for (size_t i = 0; i < sizeof(acks) / sizeof(acks[0]); i++) {
        uint8_t a[] = {acks[i].byte0, 0x02, 0xAB, 0xCD, 0x00};
        assert_int_equal(dec(a, 4, &p), GALE_MQTT_OK);
        assert_int_equal(p.type, acks[i].type);
        assert_int_equal(p.packet_id, 0xABCD);
        assert_int_equal(p.flags, acks[i].byte0 & 0x0F);
        a[2] = a[3] = 0; /* packet id 0: well-formed, matches nothing */
        assert_int_equal(dec(a, 4, &p), GALE_MQTT_OK);
        /* Lengths 0, 1, 3. */
        uint8_t l0[] = {acks[i].byte0, 0x00};
        assert_int_equal(dec(l0, 2, &p), GALE_MQTT_MALFORMED);
        uint8_t l1[] = {acks[i].byte0, 0x01, 0x01};
        assert_int_equal(dec(l1, 3, &p), GALE_MQTT_MALFORMED);
        uint8_t l3[] = {acks[i].byte0, 0x03, 0x00, 0x01, 0x00};
        assert_int_equal(dec(l3, 5, &p), GALE_MQTT_MALFORMED);
        /* Any other flags. */
        for (uint8_t fl = 0; fl < 16; fl++) {
            if (fl == (acks[i].byte0 & 0x0F))
                continue;
            uint8_t f[] = {(uint8_t)((acks[i].byte0 & 0xF0) | fl), 0x02, 0x00, 0x01};
            assert_int_equal(dec(f, 4, &p), GALE_MQTT_MALFORMED);
        }
    }
}

static void test_server_types(void **state)
{
    (void)state;
    /* What only a server sends, and the reserved types 0 and 15. */
    assert_int_equal(st_hex("20 02 00 00"), GALE_MQTT_MALFORMED);    /* CONNACK */
    assert_int_equal(st_hex("90 03 00 01 00"), GALE_MQTT_MALFORMED); /* SUBACK */
    assert_int_equal(st_hex("b0 02 00 01"), GALE_MQTT_MALFORMED);    /* UNSUBACK */
    assert_int_equal(st_hex("d0 00"), GALE_MQTT_MALFORMED);          /* PINGRESP */
    assert_int_equal(st_hex("00 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("f0 00"), GALE_MQTT_MALFORMED);
    assert_int_equal(st_hex("f0 02 00 01"), GALE_MQTT_MALFORMED);
    /* A failed decode still says nothing of other types' fields. */
    gale_mqtt_packet_t p;
    uint8_t b[8];
    assert_int_equal(dec(b, hex2bin("d0 00", b, sizeof(b)), &p), GALE_MQTT_MALFORMED);
    assert_null(p.topic);
    assert_null(p.client_id);
    /* why may be NULL. */
    assert_int_equal(gale_mqtt_decode(b, 2, &p, NULL), GALE_MQTT_MALFORMED);
    b[0] = 0xC0;
    assert_int_equal(gale_mqtt_decode(b, 2, &p, NULL), GALE_MQTT_OK);
}

/* ---- filters and topics ---- */

static bool fv(const char *f)
{
    return gale_mqtt_filter_valid(f, strlen(f));
}

static void test_filter_valid(void **state)
{
    (void)state;
    static const char *const good[] = {
        "a",          "#",    "+",          "a/+/c", "a/#", "+/#",    "/",
        "//",         "a//b", "/+",         "+/+",   "/#",  "$SYS/#", "sport/tennis/#",
        "+/tennis/#", "a b",  "\xc3\xa9/+",
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(fv(good[i]));
    static const char *const bad[] = {
        "", "a/b#", "a/#/b", "a+", "#a", "+a", "a/+b", "##", "a/##", "++", "#/", "#/#", "a#", "+#",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(fv(bad[i]));
    assert_false(gale_mqtt_filter_valid(NULL, 0));
    char *big = malloc(65536);
    assert_non_null(big);
    memset(big, 'a', 65536);
    assert_true(gale_mqtt_filter_valid(big, 65535));
    assert_false(gale_mqtt_filter_valid(big, 65536));
    free(big);
}

/* gale topic of an MQTT name, as a C string ("" when refused). */
static const char *to_gale(const char *t, char *out)
{
    size_t n = gale_mqtt_topic_to_gale(t, strlen(t), out);
    out[n] = '\0';
    if (n > 0)
        assert_true(gale_topic_valid(out, n));
    return out;
}

static void test_topic_to_gale(void **state)
{
    (void)state;
    char out[GALE_TOPIC_MAX + 1];
    assert_string_equal(to_gale("a/b", out), "a.b");
    assert_string_equal(to_gale("a", out), "a");
    assert_string_equal(to_gale("$SYS/x", out), "$SYS.x");
    assert_string_equal(to_gale("caf\xc3\xa9/\xe2\x82\xac", out), "caf\xc3\xa9.\xe2\x82\xac");
    static const char *const refused[] = {
        "a//b", "a.b/c", "a/*", "a/>", "a/ b", "/a",   "a/",        "/", "a\tb", "a\x7f",
        "a/+",  "a/#",   "#",   "a+",  "",     "\xc3", "a\xc2\xa0", "*", ">",    "a.b",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        assert_string_equal(to_gale(refused[i], out), "");
    /* Up to GALE_TOPIC_MAX bytes. */
    char lng[GALE_TOPIC_MAX + 2];
    memset(lng, 'x', sizeof(lng));
    lng[GALE_TOPIC_MAX] = '\0';
    lng[1] = '/';
    assert_int_equal(gale_mqtt_topic_to_gale(lng, GALE_TOPIC_MAX, out), GALE_TOPIC_MAX);
    assert_int_equal(out[1], '.');
    assert_int_equal(gale_mqtt_topic_to_gale(lng, GALE_TOPIC_MAX + 1, out), 0);
}

/* The patterns of an MQTT filter, as "p1" or "p1|p2" ("" when refused). */
static const char *filter_to_gale(const char *f, char *s)
{
    char out[2][GALE_TOPIC_MAX];
    size_t len[2] = {0, 0};
    int n = gale_mqtt_filter_to_gale(f, strlen(f), out, len);
    assert_true(n >= 0 && n <= 2);
    s[0] = '\0';
    for (int i = 0; i < n; i++) {
        assert_true(gale_pattern_valid(out[i], len[i], NULL));
        if (i > 0)
            strcat(s, "|");
        strncat(s, out[i], len[i]);
    }
    return s;
}

static void test_filter_to_gale(void **state)
{
    (void)state;
    char s[2 * GALE_TOPIC_MAX + 2];
    assert_string_equal(filter_to_gale("a/+/c", s), "a.*.c");
    assert_string_equal(filter_to_gale("a/#", s), "a|a.>");
    assert_string_equal(filter_to_gale("#", s), ">");
    assert_string_equal(filter_to_gale("+/#", s), "*|*.>");
    assert_string_equal(filter_to_gale("+", s), "*");
    assert_string_equal(filter_to_gale("a/b", s), "a.b");
    assert_string_equal(filter_to_gale("a/+/#", s), "a.*|a.*.>");
    assert_string_equal(filter_to_gale("+/+", s), "*.*");
    assert_string_equal(filter_to_gale("$SYS/#", s), "$SYS|$SYS.>");
    static const char *const refused[] = {
        "a//b", "/#",  "a//#", "/", "a/", "a.b/#", "a/*", "a/>",  "a/ b/#",
        "a/b#", "#/a", "a+",   "",  "+/", "/+",    "*",   "a\tb", "\xc3/#",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        assert_string_equal(filter_to_gale(refused[i], s), "");
    /* Up to GALE_TOPIC_MAX bytes, `/#` included. */
    char lng[GALE_TOPIC_MAX + 2];
    memset(lng, 'x', sizeof(lng));
    char out[2][GALE_TOPIC_MAX];
    size_t len[2];
    memcpy(lng + GALE_TOPIC_MAX - 2, "/#", 2);
    assert_int_equal(gale_mqtt_filter_to_gale(lng, GALE_TOPIC_MAX, out, len), 2);
    assert_int_equal(len[0], GALE_TOPIC_MAX - 2);
    assert_int_equal(len[1], GALE_TOPIC_MAX);
    assert_memory_equal(out[1] + GALE_TOPIC_MAX - 2, ".>", 2);
    memcpy(lng + GALE_TOPIC_MAX - 1, "/#", 2);
    assert_int_equal(gale_mqtt_filter_to_gale(lng, GALE_TOPIC_MAX + 1, out, len), 0);
    memset(lng, 'x', sizeof(lng));
    assert_int_equal(gale_mqtt_filter_to_gale(lng, GALE_TOPIC_MAX, out, len), 1);
    assert_int_equal(gale_mqtt_filter_to_gale(lng, GALE_TOPIC_MAX + 1, out, len), 0);
}

static void test_topic_from_gale(void **state)
{
    (void)state;
    char out[GALE_TOPIC_MAX + 1];
    static const struct {
        const char *gale, *mqtt;
    } ok[] = {{"a.b", "a/b"},
              {"a", "a"},
              {"x.y.z", "x/y/z"},
              {"$SYS.x", "$SYS/x"},
              {"caf\xc3\xa9.b", "caf\xc3\xa9/b"}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        size_t n = strlen(ok[i].gale);
        assert_true(gale_mqtt_topic_from_gale(ok[i].gale, n, out));
        assert_memory_equal(out, ok[i].mqtt, n);
        /* And back. */
        char back[GALE_TOPIC_MAX];
        assert_int_equal(gale_mqtt_topic_to_gale(out, n, back), n);
        assert_memory_equal(back, ok[i].gale, n);
    }
    static const char *const refused[] = {"a/b", "a.+", "a.#", "a+b", "#", "+", "a.b/c", "a#"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        assert_false(gale_mqtt_topic_from_gale(refused[i], strlen(refused[i]), out));
    assert_false(gale_mqtt_topic_from_gale("", 0, out));
    assert_false(gale_mqtt_topic_from_gale(NULL, 0, out));
    assert_int_equal(gale_mqtt_topic_to_gale(NULL, 0, out), 0);
    size_t len[2];
    char pats[2][GALE_TOPIC_MAX];
    assert_int_equal(gale_mqtt_filter_to_gale(NULL, 0, pats, len), 0);
}

/* ---- encoders ---- */

#define assert_buf_hex(b, hex) assert_bytes_hex(gale_buf_payload(b), gale_buf_payload_len(b), hex)

static void test_encode_control(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 14);
    assert_int_equal(gale_mqtt_encode_connack(&b, false, 0), GALE_OK);
    assert_buf_hex(&b, "20 02 00 00");
    gale_buf_free(&b);
    assert_int_equal(gale_mqtt_encode_connack(&b, true, 0), GALE_OK);
    assert_buf_hex(&b, "20 02 01 00");
    gale_buf_free(&b);
    /* A refusal never claims a session. */
    assert_int_equal(gale_mqtt_encode_connack(&b, true, GALE_MQTT_REFUSED_NOT_AUTHORIZED), GALE_OK);
    assert_buf_hex(&b, "20 02 00 05");
    gale_buf_free(&b);
    assert_int_equal(gale_mqtt_encode_connack(&b, false, GALE_MQTT_REFUSED_PROTOCOL), GALE_OK);
    assert_int_equal(gale_mqtt_encode_connack(&b, false, GALE_MQTT_REFUSED_IDENTIFIER), GALE_OK);
    assert_buf_hex(&b, "20 02 00 01 20 02 00 02"); /* appended */
    gale_buf_free(&b);

    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_PUBACK, 0x1234), GALE_OK);
    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_PUBREC, 0x0001), GALE_OK);
    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_PUBREL, 0xBEEF), GALE_OK);
    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_PUBCOMP, 0xFFFF), GALE_OK);
    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_UNSUBACK, 0x0100), GALE_OK);
    assert_buf_hex(&b, "40 02 12 34 50 02 00 01 62 02 be ef 70 02 ff ff b0 02 01 00");
    /* Other types append nothing. */
    size_t before = b.len;
    static const gale_mqtt_type_t not_acks[] = {
        GALE_MQTT_CONNECT,     GALE_MQTT_CONNACK,   GALE_MQTT_PUBLISH,   GALE_MQTT_SUBSCRIBE,
        GALE_MQTT_SUBACK,      GALE_MQTT_PINGREQ,   GALE_MQTT_PINGRESP,  GALE_MQTT_DISCONNECT,
        GALE_MQTT_UNSUBSCRIBE, (gale_mqtt_type_t)0, (gale_mqtt_type_t)15};
    for (size_t i = 0; i < sizeof(not_acks) / sizeof(not_acks[0]); i++)
        assert_int_equal(gale_mqtt_encode_ack(&b, not_acks[i], 1), GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, before);
    gale_buf_free(&b);

    assert_int_equal(gale_mqtt_encode_pingresp(&b), GALE_OK);
    assert_buf_hex(&b, "d0 00");
    gale_buf_free(&b);

    /* The acks a client sends back decode as such. */
    gale_buf_init(&b, 0);
    assert_int_equal(gale_mqtt_encode_ack(&b, GALE_MQTT_PUBREL, 9), GALE_OK);
    gale_mqtt_packet_t p;
    assert_int_equal(dec(b.data, b.len, &p), GALE_MQTT_OK);
    assert_int_equal(p.type, GALE_MQTT_PUBREL);
    assert_int_equal(p.packet_id, 9);
    gale_buf_free(&b);
}

static void test_encode_suback(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    static const uint8_t codes[] = {0, 1, 2, GALE_MQTT_SUBACK_FAILURE};
    assert_int_equal(gale_mqtt_encode_suback(&b, 1, codes, 4), GALE_OK);
    assert_buf_hex(&b, "90 06 00 01 00 01 02 80");
    gale_buf_free(&b);
    assert_int_equal(gale_mqtt_encode_suback(&b, 0xA0B0, codes, 1), GALE_OK);
    assert_buf_hex(&b, "90 03 a0 b0 00");
    gale_buf_free(&b);
    /* 200 codes: 202 = 0xca 0x01. */
    uint8_t many[200];
    memset(many, 1, sizeof(many));
    assert_int_equal(gale_mqtt_encode_suback(&b, 2, many, sizeof(many)), GALE_OK);
    assert_int_equal(b.len, 3 + 2 + 200);
    assert_bytes_hex(b.data, 5, "90 ca 01 00 02");
    assert_memory_equal(b.data + 5, many, 200);
    gale_buf_free(&b);
    /* Over the largest remaining length (nothing is read). */
    assert_int_equal(gale_mqtt_encode_suback(&b, 2, many, GALE_MQTT_REMAINING_MAX - 1),
                     GALE_ERR_TOO_LARGE);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

/* Encodes a PUBLISH and checks it against the hex of its first bytes, then the payload. */
static void check_publish(const char *topic, uint8_t qos, bool retain, bool dup, uint16_t id,
                          size_t plen, const char *head_hex)
{
    uint8_t *payload = malloc(plen + 1);
    assert_non_null(payload);
    for (size_t i = 0; i < plen; i++)
        payload[i] = (uint8_t)(i * 7);
    gale_buf_t b;
    gale_buf_init(&b, 10);
    assert_int_equal(
        gale_mqtt_encode_publish(&b, topic, strlen(topic), qos, retain, dup, id, payload, plen),
        GALE_OK);
    uint8_t head[64];
    size_t hn = hex2bin(head_hex, head, sizeof(head));
    const uint8_t *o = gale_buf_payload(&b);
    assert_int_equal(gale_buf_payload_len(&b), hn + plen);
    assert_bytes_hex(o, hn, head_hex);
    assert_true(plen == 0 || memcmp(o + hn, payload, plen) == 0);
    /* A client's PUBLISH of the same bytes decodes to the same fields. */
    gale_mqtt_packet_t p;
    assert_int_equal(dec(o, hn + plen, &p), GALE_MQTT_OK);
    assert_int_equal(p.qos, qos);
    assert_int_equal(p.retain, retain);
    assert_int_equal(p.dup, dup);
    assert_int_equal(p.packet_id, qos > 0 ? id : 0);
    assert_true(span_eq(p.topic, p.topic_len, topic));
    assert_int_equal(p.payload_len, plen);
    gale_buf_free(&b);
    free(payload);
}

static void test_encode_publish(void **state)
{
    (void)state;
    check_publish("a/b", 0, false, false, 0, 0, "30 05 00 03 61 2f 62");
    check_publish("a/b", 0, false, false, 77, 0, "30 05 00 03 61 2f 62"); /* id unused */
    check_publish("a/b", 1, true, false, 10, 0, "33 07 00 03 61 2f 62 00 0a");
    check_publish("t", 2, false, true, 0xFFFF, 1, "3c 06 00 01 74 ff ff");
    check_publish("t", 1, false, true, 1, 0, "3a 05 00 01 74 00 01");
    check_publish("t", 0, true, false, 0, 2, "31 05 00 01 74");
    /* Remaining lengths at the boundaries: 127 and 128 (3 + 124, 3 + 125 at QoS 0). */
    check_publish("t", 0, false, false, 0, 124, "30 7f 00 01 74");
    check_publish("t", 0, false, false, 0, 125, "30 80 01 00 01 74");
    /* 200 bytes: 203; 20000 at QoS 1: 20005 (three length bytes). */
    check_publish("t", 0, false, false, 0, 200, "30 cb 01 00 01 74");
    check_publish("t", 1, false, false, 7, 20000, "32 a5 9c 01 00 01 74 00 07");
    /* 16383 and 16384. */
    check_publish("t", 0, false, false, 0, 16380, "30 ff 7f 00 01 74");
    check_publish("t", 0, false, false, 0, 16381, "30 80 80 01 00 01 74");
    /* 2097152: four length bytes. */
    check_publish("t", 1, false, false, 3, 2097152 - 5, "32 80 80 80 01 00 01 74 00 03");
}

static void test_encode_publish_refused(void **state)
{
    (void)state;
    gale_buf_t b;
    gale_buf_init(&b, 0);
    static const uint8_t pl[] = "x";
    assert_int_equal(gale_mqtt_encode_publish(&b, "t", 1, 3, false, false, 1, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_mqtt_encode_publish(&b, "t", 1, 0, false, true, 1, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_mqtt_encode_publish(&b, "", 0, 0, false, false, 0, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_mqtt_encode_publish(&b, "t", 1, 1, false, false, 0, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_mqtt_encode_publish(&b, "t", 1, 2, false, false, 0, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    char *big = malloc(65536);
    assert_non_null(big);
    memset(big, 'a', 65536);
    assert_int_equal(gale_mqtt_encode_publish(&b, big, 65536, 0, false, false, 0, pl, 1),
                     GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    /* A topic of 65535 bytes is fine. */
    assert_int_equal(gale_mqtt_encode_publish(&b, big, 65535, 0, false, false, 0, pl, 1), GALE_OK);
    assert_int_equal(b.len, 1 + 3 + 2 + 65535 + 1);
    gale_buf_free(&b);
    free(big);
    /* Over the largest remaining length (the payload is not read). */
    assert_int_equal(
        gale_mqtt_encode_publish(&b, "t", 1, 0, false, false, 0, pl, GALE_MQTT_REMAINING_MAX - 2),
        GALE_ERR_TOO_LARGE);
    assert_int_equal(
        gale_mqtt_encode_publish(&b, "t", 1, 1, false, false, 1, pl, GALE_MQTT_REMAINING_MAX - 4),
        GALE_ERR_TOO_LARGE);
    assert_int_equal(gale_mqtt_encode_publish(&b, "t", 1, 0, false, false, 0, pl, SIZE_MAX),
                     GALE_ERR_TOO_LARGE);
    assert_int_equal(b.len, 0);
    gale_buf_free(&b);
}

/* publish_at_qos1 of encode_publish(QoS 0) is encode_publish(QoS 1) of the same fields. */
static void check_qos1(const char *topic, bool retain, size_t plen, uint16_t id)
{
    uint8_t *payload = malloc(plen + 1);
    assert_non_null(payload);
    memset(payload, 'p', plen);
    gale_buf_t q0, q1, want;
    gale_buf_init(&q0, 14);
    gale_buf_init(&q1, 14);
    gale_buf_init(&want, 14);
    size_t tl = strlen(topic);
    assert_int_equal(gale_mqtt_encode_publish(&q0, topic, tl, 0, retain, false, 0, payload, plen),
                     GALE_OK);
    assert_int_equal(
        gale_mqtt_encode_publish(&want, topic, tl, 1, retain, false, id, payload, plen), GALE_OK);
    assert_int_equal(
        gale_mqtt_publish_at_qos1(&q1, gale_buf_payload(&q0), gale_buf_payload_len(&q0), id),
        GALE_OK);
    assert_int_equal(gale_buf_payload_len(&q1), gale_buf_payload_len(&want));
    assert_memory_equal(gale_buf_payload(&q1), gale_buf_payload(&want), gale_buf_payload_len(&q1));
    gale_buf_free(&q0);
    gale_buf_free(&q1);
    gale_buf_free(&want);
    free(payload);
}

static void test_publish_at_qos1(void **state)
{
    (void)state;
    check_qos1("a/b", false, 0, 1);
    check_qos1("a/b", true, 5, 0xFFFF);
    /* Remaining length 127 at QoS 0 (2 + 3 + 122) becomes 129: one more length byte. */
    check_qos1("a/b", false, 122, 0x0102);
    check_qos1("a/b", true, 121, 5);
    check_qos1("a/b", false, 123, 5);
    /* 16383 -> 16385, 2097151 -> 2097153. */
    check_qos1("a/b", false, 16383 - 5, 9);
    check_qos1("a/b", false, 2097151 - 5, 9);
    /* By hand: 30 05 00 03 a/b -> 32 07 00 03 a/b 00 2a. */
    gale_buf_t b;
    gale_buf_init(&b, 0);
    uint8_t in[16];
    size_t n = hex2bin("31 07 00 03 61 2f 62 68 69", in, sizeof(in));
    assert_int_equal(gale_mqtt_publish_at_qos1(&b, in, n, 42), GALE_OK);
    assert_buf_hex(&b, "33 09 00 03 61 2f 62 00 2a 68 69");
    gale_buf_free(&b);
    /* 127 -> 129 by hand. */
    uint8_t big[200];
    memset(big, 'q', sizeof(big));
    memcpy(big, "\x30\x7f\x00\x01\x74", 5);
    assert_int_equal(gale_mqtt_publish_at_qos1(&b, big, 2 + 127, 1), GALE_OK);
    assert_int_equal(b.len, 3 + 129);
    assert_bytes_hex(b.data, 8, "32 81 01 00 01 74 00 01");
    assert_memory_equal(b.data + 8, big + 5, 124);
    gale_buf_free(&b);
}

static void test_publish_at_qos1_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "32 07 00 03 61 2f 62 00 01", /* QoS 1 already */
        "34 07 00 03 61 2f 62 00 01", /* QoS 2 */
        "38 05 00 03 61 2f 62",       /* DUP */
        "40 02 00 01",                /* PUBACK */
        "30 05 00 03 61 2f",          /* cut short */
        "30 05 00 03 61 2f 62 00",    /* a byte more */
        "30 02 00 00",                /* empty topic */
        "30 03 00 04 61",             /* topic past the end */
        "30 01 00",                   /* no topic length */
        "30 00",                      /* nothing */
        "30 ff ff ff ff 7f",          /* malformed length */
        "",
    };
    gale_buf_t b;
    gale_buf_init(&b, 0);
    uint8_t in[32];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = hex2bin(bad[i], in, sizeof(in));
        assert_int_equal(gale_mqtt_publish_at_qos1(&b, in, n, 1), GALE_ERR_BAD_REQUEST);
    }
    size_t n = hex2bin("30 05 00 03 61 2f 62", in, sizeof(in));
    assert_int_equal(gale_mqtt_publish_at_qos1(&b, in, n, 0), GALE_ERR_BAD_REQUEST);
    assert_int_equal(gale_mqtt_publish_at_qos1(&b, NULL, 0, 1), GALE_ERR_BAD_REQUEST);
    assert_int_equal(b.len, 0);
    assert_int_equal(gale_mqtt_publish_at_qos1(&b, in, n, 1), GALE_OK);
    gale_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_lengths),
        cmocka_unit_test(test_frame_whole),
        cmocka_unit_test(test_frame_malformed),
        cmocka_unit_test(test_connect_valid),
        cmocka_unit_test(test_connect_binary_fields),
        cmocka_unit_test(test_connect_protocol),
        cmocka_unit_test(test_connect_flags),
        cmocka_unit_test(test_connect_client_id),
        cmocka_unit_test(test_connect_strings),
        cmocka_unit_test(test_connect_truncated),
        cmocka_unit_test(test_publish_valid),
        cmocka_unit_test(test_publish_invalid),
        cmocka_unit_test(test_publish_long),
        cmocka_unit_test(test_subscribe),
        cmocka_unit_test(test_subscribe_invalid),
        cmocka_unit_test(test_unsubscribe),
        cmocka_unit_test(test_small_packets),
        cmocka_unit_test(test_server_types),
        cmocka_unit_test(test_filter_valid),
        cmocka_unit_test(test_topic_to_gale),
        cmocka_unit_test(test_filter_to_gale),
        cmocka_unit_test(test_topic_from_gale),
        cmocka_unit_test(test_encode_control),
        cmocka_unit_test(test_encode_suback),
        cmocka_unit_test(test_encode_publish),
        cmocka_unit_test(test_encode_publish_refused),
        cmocka_unit_test(test_publish_at_qos1),
        cmocka_unit_test(test_publish_at_qos1_refused),
    };
    return cmocka_run_group_tests_name("mqtt", tests, NULL, NULL);
}
