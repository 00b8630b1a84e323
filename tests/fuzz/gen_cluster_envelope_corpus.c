/*
 * Writes the seed corpus of fuzz_cluster_envelope into the directory given:
 * valid envelopes made by cluster_envelope_encode (both encodings, field
 * lengths at the MessagePack size boundaries, deep and odd data; tails 0, 8
 * and 9, the last with ep and off appended as the publish script does), accepted
 * non-canonical spellings (wider ints, str8/16/32 and bin8/16 headers), and
 * hostile ones (truncations, huge array/map/str/bin/ext counts, lengths past
 * the input, deep nesting, wrong types, negative ints, ext values, invalid
 * fields, trailing bytes, a tail that does not match the array's size or
 * an ep or off out of bounds). Then presence envelopes (what the presence
 * scripts publish, cluster_presence_decode): two captured from Redis 7.0,
 * and one field replaced at a time by accepted and refused spellings. Each
 * seed's expected verdict is checked against the decoder, so the file also
 * says what the decoder must do with it.
 *
 *   cmake --build BUILD --target gen_cluster_envelope_corpus
 *   BUILD/tests/fuzz/gen_cluster_envelope_corpus tests/fuzz/corpus/fuzz_cluster_envelope
 */
#include "cluster_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEED_MAX 8192

typedef struct {
    uint8_t b[SEED_MAX];
    size_t n;
} bytes_t;

static const char *dir;
static int written, failed;

static void put(bytes_t *x, const void *p, size_t n)
{
    if (x->n + n > sizeof(x->b)) {
        fprintf(stderr, "seed too large\n");
        exit(1);
    }
    memcpy(x->b + x->n, p, n);
    x->n += n;
}

static void put_u8(bytes_t *x, uint8_t c)
{
    put(x, &c, 1);
}

static void put_be(bytes_t *x, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        put_u8(x, (uint8_t)(v >> (8 * i)));
}

static void put_rep(bytes_t *x, uint8_t c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put_u8(x, c);
}

/* Writes one seed and checks the decoder's verdict on it. */
static void emit(const char *name, const uint8_t *p, size_t n, bool accept)
{
    cluster_envelope_t e;
    const char *why;
    bool ok = cluster_envelope_decode(p, n, CLUSTER_DATA_MAX, &e, &why);
    if (ok != accept) {
        fprintf(stderr, "%s: expected %s, got %s (%s)\n", name, accept ? "accept" : "reject",
                ok ? "accept" : "reject", why);
        failed++;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    written++;
}

static void emit_bytes(const char *name, const bytes_t *x, bool accept)
{
    emit(name, x->b, x->n, accept);
}

/* --- valid envelopes from the encoder --------------------------------------- */

/* Encodes e; with tail 9, appends ep and off as the publish script does (str8, uint64). */
static size_t encode_as_published(uint8_t *out, size_t cap, const cluster_envelope_t *e)
{
    size_t n = cluster_envelope_encode(out, cap, e);
    if (n == 0 || e->tail != 9)
        return n;
    if (n + 2 + e->ep_len + 9 > cap)
        return 0;
    out[n++] = 0xd9;
    out[n++] = (uint8_t)e->ep_len;
    memcpy(out + n, e->ep, e->ep_len);
    n += e->ep_len;
    out[n++] = 0xcf;
    for (int i = 7; i >= 0; i--)
        out[n++] = (uint8_t)(e->off >> (8 * i));
    return n;
}

static void valid_tail(const char *name, const char *node, size_t node_len, uint64_t inst,
                       uint64_t seq, const char *topic, size_t topic_len, gale_enc_t enc,
                       const void *data, size_t data_len, uint8_t tail, const char *ep,
                       uint64_t off)
{
    cluster_envelope_t e = {.node = node,
                            .node_len = node_len,
                            .instance = inst,
                            .seq = seq,
                            .topic = topic,
                            .topic_len = topic_len,
                            .enc = enc,
                            .data = data,
                            .data_len = data_len,
                            .tail = tail,
                            .ep = ep,
                            .ep_len = ep ? strlen(ep) : 0,
                            .off = off};
    static uint8_t out[SEED_MAX];
    size_t n = encode_as_published(out, sizeof(out), &e);
    if (n == 0) {
        fprintf(stderr, "%s: the encoder refused it\n", name);
        exit(1);
    }
    emit(name, out, n, true);
}

static void valid(const char *name, const char *node, size_t node_len, uint64_t inst, uint64_t seq,
                  const char *topic, size_t topic_len, gale_enc_t enc, const void *data,
                  size_t data_len)
{
    cluster_envelope_t e = {.node = node,
                            .node_len = node_len,
                            .instance = inst,
                            .seq = seq,
                            .topic = topic,
                            .topic_len = topic_len,
                            .enc = enc,
                            .data = data,
                            .data_len = data_len};
    static uint8_t out[SEED_MAX];
    size_t n = cluster_envelope_encode(out, sizeof(out), &e);
    if (n == 0) {
        fprintf(stderr, "%s: the encoder refused it\n", name);
        exit(1);
    }
    emit(name, out, n, true);
}

#define VALID_JSON(name, lit)                                                                      \
    valid(name, "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11, GALE_ENC_JSON, lit,     \
          sizeof(lit) - 1)
#define VALID_MP(name, lit)                                                                        \
    valid(name, "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11, GALE_ENC_MSGPACK, lit,  \
          sizeof(lit) - 1)

static void valid_seeds(void)
{
    char s[300];
    bytes_t d;

    VALID_JSON("valid-json-object", "{\"text\":\"hi\",\"n\":[1,2.5,-3e2,true,false,null]}");
    VALID_JSON("valid-json-string-escapes", "\"a\\u00e9\\ud83d\\ude00\\n\\\"\\\\\xc3\xa9\"");
    VALID_JSON("valid-json-number", "-12.5e-3");
    VALID_JSON("valid-json-null", "null");
    VALID_JSON("valid-json-whitespace", " \t[1, {\"a\" : {}}]\r\n");
    VALID_MP("valid-mp-map", "\x82\xa1k\x01\xa1j\xc4\x01\x00");
    VALID_MP("valid-mp-bin", "\xc4\x03\x00\x01\xff");
    VALID_MP("valid-mp-fixext", "\xd4\x01\x02");
    VALID_MP("valid-mp-ext8-negative-type", "\xc7\x02\xff\xaa\xbb");
    VALID_MP("valid-mp-scalars",
             "\x97\xc0\xc2\xff\xd3\x80\x00\x00\x00\x00\x00\x00\x00\xcf\xff\xff\xff\xff\xff\xff\xff"
             "\xff\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xa2\xc3\x28");
    VALID_MP("valid-mp-container-key", "\x81\x91\x01\x81\x92\x02\x03\xc0");
    VALID_MP("valid-mp-int-key", "\x81\x01\xa1v");

    /* Field lengths at the fixstr/str8 boundary and the limits; ids at the uint boundaries. */
    memset(s, 'n', sizeof(s));
    valid("valid-node-1", "n", 1, 1, 1, "t", 1, GALE_ENC_JSON, "1", 1);
    valid("valid-node-31", s, 31, 127, 128, "t", 1, GALE_ENC_JSON, "1", 1);
    valid("valid-node-32", s, 32, 128, 127, "t", 1, GALE_ENC_JSON, "1", 1);
    valid("valid-node-63", s, 63, UINT64_MAX, UINT64_MAX, "t", 1, GALE_ENC_JSON, "1", 1);
    memset(s, 't', sizeof(s));
    valid("valid-topic-31", "n", 1, 65536, 65535, s, 31, GALE_ENC_JSON, "1", 1);
    valid("valid-topic-32", "n", 1, 4294967296ULL, 4294967295ULL, s, 32, GALE_ENC_JSON, "1", 1);
    for (int i = 1; i < 255; i += 2)
        s[i] = '.';
    valid("valid-topic-255-segments", "n", 1, 7, 7, s, 255, GALE_ENC_MSGPACK, "\x01", 1);
    valid("valid-topic-utf8", "n", 1, 7, 7, "caf\xc3\xa9.\xf0\x9f\x98\x80-_~", 13, GALE_ENC_JSON,
          "1", 1);

    /* Deep data at the limit, 63 levels (a pub's data: GALE_MAX_DEPTH - 1), and an ext (one
     * more level in JSON) at the 63rd. */
    d.n = 0;
    put_rep(&d, '[', 63);
    put_rep(&d, ']', 63);
    valid("valid-json-depth-63", "n", 1, 1, 1, "t", 1, GALE_ENC_JSON, d.b, d.n);
    d.n = 0;
    put_rep(&d, 0x91, 63);
    put_u8(&d, 0x2a);
    valid("valid-mp-depth-63", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n);
    d.n = 0;
    for (int i = 0; i < 31; i++)
        put(&d, "\x81\xa0", 2); /* {"": */
    put_rep(&d, 0x91, 32);
    put(&d, "\xcd\x01\x00", 3);
    valid("valid-mp-depth-63-maps", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n);
    d.n = 0;
    put_rep(&d, 0x91, 62);
    put(&d, "\x92\x01\xd4\x01\x00", 5);
    valid("valid-mp-ext-at-depth-63", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n);

    /* Larger data: a 3000-byte JSON string, a bin16 inside MessagePack data. */
    d.n = 0;
    put_u8(&d, '"');
    put_rep(&d, 'x', 2998);
    put_u8(&d, '"');
    valid("valid-json-3000", "n", 1, 1, 1, "t", 1, GALE_ENC_JSON, d.b, d.n);
    d.n = 0;
    put_u8(&d, 0xc5);
    put_be(&d, 300, 2);
    put_rep(&d, 0xee, 300);
    valid("valid-mp-bin16", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n);

    /* Tail 8 (a mid: delivered from Redis's copy), tail 9 (a topic with history: the
     * broker's part, then the script's ep and off). */
    static const char js[] = "{\"text\":\"hi\"}", mp[] = "\x82\xa1k\x01\xa1j\xc4\x01\x00";
    valid_tail("valid-tail8-json", "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11,
               GALE_ENC_JSON, js, sizeof(js) - 1, 8, NULL, 0);
    valid_tail("valid-tail8-mp", "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11,
               GALE_ENC_MSGPACK, mp, sizeof(mp) - 1, 8, NULL, 0);
    valid_tail("valid-tail9-json", "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11,
               GALE_ENC_JSON, js, sizeof(js) - 1, 9, "0123456789abcdef", 1);
    valid_tail("valid-tail9-mp", "node-1", 6, 0x1122334455667788ULL, 42, "chat.room-1", 11,
               GALE_ENC_MSGPACK, mp, sizeof(mp) - 1, 9, "fedcba9876543210", 1000000);
    valid_tail("valid-tail9-off-max", "n", 1, UINT64_MAX, UINT64_MAX, "t", 1, GALE_ENC_JSON, "1", 1,
               9, "e", UINT64_MAX);
    memset(s, 'e', sizeof(s));
    s[GALE_EP_MAX] = '\0';
    valid_tail("valid-tail9-ep-64", "n", 1, 1, 1, "t", 1, GALE_ENC_JSON, "1", 1, 9, s, 7);
    d.n = 0;
    put_rep(&d, 0x91, 63);
    put_u8(&d, 0x2a);
    valid_tail("valid-tail9-mp-depth-63", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n, 9,
               "0000000000000001", 2);
    valid_tail("valid-tail8-mp-depth-63", "n", 1, 1, 1, "t", 1, GALE_ENC_MSGPACK, d.b, d.n, 8, NULL,
               0);
}

/* --- hand-made envelopes: one field replaced at a time ---------------------- */

enum { P_HEAD, P_VER, P_NODE, P_INST, P_SEQ, P_TOPIC, P_ENC, P_DATA, P_TAIL, P_COUNT };

typedef struct {
    const char *p[P_COUNT];
    size_t n[P_COUNT];
} parts_t;

#define LIT(s) s, sizeof(s) - 1

static parts_t base(void)
{
    parts_t x;
    static const struct {
        const char *s;
        size_t n;
    } def[P_COUNT] = {
        {LIT("\x97")},                 /* fixarray 7 */
        {LIT("\x01")},                 /* version */
        {LIT("\xa4node")},             /* node */
        {LIT("\xce\x12\x34\x56\x78")}, /* instance */
        {LIT("\x05")},                 /* seq */
        {LIT("\xa5"
             "a.b.c")},             /* topic */
        {LIT("\x00")},              /* enc: JSON */
        {LIT("\xc4\x07{\"a\":1}")}, /* data: bin8 */
        {LIT("")},                  /* tail: none (array of 7) */
    };
    for (int i = 0; i < P_COUNT; i++) {
        x.p[i] = def[i].s;
        x.n[i] = def[i].n;
    }
    return x;
}

static void emit_parts(const char *name, const parts_t *x, bool accept)
{
    bytes_t b = {.n = 0};
    for (int i = 0; i < P_COUNT; i++)
        put(&b, x->p[i], x->n[i]);
    emit_bytes(name, &b, accept);
}

/* The base envelope with part `which` spelled p[0..n). */
static void with(const char *name, int which, const char *p, size_t n, bool accept)
{
    parts_t x = base();
    x.p[which] = p;
    x.n[which] = n;
    emit_parts(name, &x, accept);
}

#define ACCEPT(name, which, lit) with(name, which, LIT(lit), true)
#define REJECT(name, which, lit) with(name, which, LIT(lit), false)

static void hand_seeds(void)
{
    parts_t x = base();
    emit_parts("hand-valid", &x, true);

    /* Accepted spellings the encoder never writes. */
    ACCEPT("wide-version-uint8", P_VER, "\xcc\x01");
    ACCEPT("wide-version-uint64", P_VER, "\xcf\x00\x00\x00\x00\x00\x00\x00\x01");
    ACCEPT("wide-seq-uint16", P_SEQ, "\xcd\x00\x05");
    ACCEPT("wide-enc-uint32", P_ENC, "\xce\x00\x00\x00\x00");
    ACCEPT("wide-node-str8", P_NODE, "\xd9\x04node");
    ACCEPT("wide-node-str16", P_NODE, "\xda\x00\x04node");
    ACCEPT("wide-node-str32", P_NODE, "\xdb\x00\x00\x00\x04node");
    ACCEPT("wide-topic-str16", P_TOPIC,
           "\xda\x00\x05"
           "a.b.c");
    ACCEPT("wide-data-bin16", P_DATA, "\xc5\x00\x07{\"a\":1}");
    ACCEPT("wide-data-bin32", P_DATA, "\xc6\x00\x00\x00\x07{\"a\":1}");

    /* The envelope's own container. */
    REJECT("head-array16", P_HEAD, "\xdc\x00\x07");
    REJECT("head-array32", P_HEAD, "\xdd\x00\x00\x00\x07");
    REJECT("head-array-6", P_HEAD, "\x96");
    REJECT("head-array-8", P_HEAD, "\x98");
    REJECT("head-array-9", P_HEAD, "\x99"); /* the broker's part alone, no ep and off */
    REJECT("head-array-10", P_HEAD, "\x9a");
    REJECT("head-array-15", P_HEAD, "\x9f");
    REJECT("head-map-7", P_HEAD, "\x87");
    REJECT("head-array32-huge", P_HEAD, "\xdd\xff\xff\xff\xff");
    REJECT("head-map32-huge", P_HEAD, "\xdf\xff\xff\xff\xff");
    REJECT("head-fixext", P_HEAD, "\xd4\x01");
    REJECT("head-nil", P_HEAD, "\xc0");
    REJECT("head-c1", P_HEAD, "\xc1");

    /* Wrong types and values, negative ints. */
    REJECT("version-2", P_VER, "\x02");
    REJECT("version-0", P_VER, "\x00");
    REJECT("version-str", P_VER,
           "\xa1"
           "1");
    REJECT("version-int8", P_VER, "\xd0\x01");
    REJECT("version-negative", P_VER, "\xff");
    REJECT("version-float", P_VER, "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00");
    REJECT("node-bin", P_NODE, "\xc4\x04node");
    REJECT("node-int", P_NODE, "\x07");
    REJECT("node-empty", P_NODE, "\xa0");
    REJECT("node-space", P_NODE, "\xa3n o");
    REJECT("node-del", P_NODE, "\xa2n\x7f");
    REJECT("node-utf8", P_NODE, "\xa2\xc3\xa9");
    REJECT("node-nul", P_NODE, "\xa2n\x00");
    REJECT("node-str32-4g", P_NODE, "\xdb\xff\xff\xff\xffnode");
    REJECT("node-str8-past-end", P_NODE, "\xd9\xffnode");
    REJECT("node-fixext", P_NODE, "\xd6\x01node");
    REJECT("instance-0", P_INST, "\x00");
    REJECT("instance-nil", P_INST, "\xc0");
    REJECT("instance-int64-minus-1", P_INST, "\xd3\xff\xff\xff\xff\xff\xff\xff\xff");
    REJECT("instance-int64-positive", P_INST, "\xd3\x00\x00\x00\x00\x00\x00\x00\x05");
    REJECT("instance-negative-fixint", P_INST, "\xe0");
    REJECT("instance-uint64-truncated", P_INST, "\xcf\x00\x00");
    REJECT("seq-0", P_SEQ, "\x00");
    REJECT("seq-wide-0", P_SEQ, "\xcf\x00\x00\x00\x00\x00\x00\x00\x00");
    REJECT("seq-float", P_SEQ, "\xca\x3f\x80\x00\x00");
    REJECT("seq-negative", P_SEQ, "\xff");
    REJECT("seq-bool", P_SEQ, "\xc3");
    REJECT("topic-bin", P_TOPIC,
           "\xc4\x05"
           "a.b.c");
    REJECT("topic-empty", P_TOPIC, "\xa0");
    REJECT("topic-star", P_TOPIC,
           "\xa3"
           "a.*");
    REJECT("topic-gt", P_TOPIC,
           "\xa3"
           "a.>");
    REJECT("topic-empty-segment", P_TOPIC,
           "\xa4"
           "a..b");
    REJECT("topic-leading-dot", P_TOPIC,
           "\xa2"
           ".a");
    REJECT("topic-bad-utf8", P_TOPIC, "\xa2\xc3\x28");
    REJECT("topic-nul", P_TOPIC,
           "\xa3"
           "a\x00"
           "b");
    REJECT("topic-str16-past-end", P_TOPIC,
           "\xda\xff\xff"
           "a.b.c");
    REJECT("topic-map", P_TOPIC,
           "\x81\xa1"
           "a\x01");
    REJECT("enc-2", P_ENC, "\x02");
    REJECT("enc-negative", P_ENC, "\xe0");
    REJECT("enc-bool", P_ENC, "\xc3");
    REJECT("enc-int8", P_ENC, "\xd0\x00");

    /* Data: type, sizes, well-formedness. */
    REJECT("data-str", P_DATA, "\xa7{\"a\":1}");
    REJECT("data-empty", P_DATA, "\xc4\x00");
    REJECT("data-ext8", P_DATA, "\xc7\x07\x01{\"a\":1}");
    REJECT("data-fixext16", P_DATA, "\xd8\x01{\"a\":1}{\"a\":1}xx");
    REJECT("data-array", P_DATA, "\x91\x01");
    REJECT("data-bin8-past-end", P_DATA, "\xc4\x08{\"a\":1}");
    REJECT("data-bin16-past-end", P_DATA, "\xc5\xff\xff{\"a\":1}");
    REJECT("data-bin32-4g", P_DATA, "\xc6\xff\xff\xff\xff{\"a\":1}");
    REJECT("data-bin32-over-max", P_DATA, "\xc6\x04\x00\x00\x01{\"a\":1}");
    REJECT("data-bin32-truncated", P_DATA, "\xc6\x00\x00");
    REJECT("data-json-trailing-comma", P_DATA, "\xc4\x08[1,2,3,]");
    REJECT("data-json-two-values", P_DATA,
           "\xc4\x03"
           "1 2");
    REJECT("data-json-nan", P_DATA, "\xc4\x03NaN");
    REJECT("data-json-bad-utf8", P_DATA, "\xc4\x04\"\xc3\x28\"");
    REJECT("data-json-unclosed", P_DATA, "\xc4\x06{\"a\":1");

    x = base();
    x.p[P_ENC] = "\x01";
    x.n[P_ENC] = 1;
#define MP_DATA(name, lit, accept)                                                                 \
    do {                                                                                           \
        x.p[P_DATA] = lit;                                                                         \
        x.n[P_DATA] = sizeof(lit) - 1;                                                             \
        emit_parts(name, &x, accept);                                                              \
    } while (0)
    MP_DATA("mp-array32-huge", "\xc4\x05\xdd\xff\xff\xff\xff", false);
    MP_DATA("mp-map32-huge", "\xc4\x05\xdf\xff\xff\xff\xff", false);
    MP_DATA("mp-str32-huge", "\xc4\x05\xdb\xff\xff\xff\xff", false);
    MP_DATA("mp-bin32-huge", "\xc4\x05\xc6\xff\xff\xff\xff", false);
    MP_DATA("mp-ext32-huge", "\xc4\x06\xc9\xff\xff\xff\xff\x01", false);
    MP_DATA("mp-array16-short", "\xc4\x04\xdc\x00\x03\x01", false);
    MP_DATA("mp-c1", "\xc4\x01\xc1", false);
    MP_DATA("mp-two-objects", "\xc4\x02\x01\x02", false);
    MP_DATA("mp-str-truncated", "\xc4\x03\xa5xy", false);
    MP_DATA("mp-fixext-negative-type", "\xc4\x03\xd4\x80\x00", true);
    MP_DATA("mp-ext8-empty", "\xc4\x03\xc7\x00\x05", true);
    MP_DATA("mp-ext-in-map", "\xc4\x06\x81\xa1k\xd4\x01\x02", true);
    MP_DATA("mp-ext-key", "\xc4\x05\x81\xd4\x01\x02\x01", true);
    MP_DATA("mp-negative-ints", "\xc4\x0d\x93\xff\xd0\x80\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
            true);
    MP_DATA("mp-int64-truncated", "\xc4\x0c\x93\xff\xd0\x80\xd3\x80\x00\x00\x00\x00\x00\x00",
            false);
    MP_DATA("mp-float32-nan", "\xc4\x05\xca\x7f\xc0\x00\x00", true);

    /* Deep nesting beyond the limit. */
    bytes_t d = {.n = 0}, b = {.n = 0};
    put(&d, "\xc4\x80", 2);
    put_rep(&d, '[', 64);
    put_rep(&d, ']', 64);
    x = base();
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-json-depth-64", &x, false);
    d.n = 0;
    put(&d, "\xc4\x43", 2);
    put_rep(&d, 0x91, 64);
    put(&d, "\xd4\x01\x00", 3);
    x.p[P_ENC] = "\x01";
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-mp-ext-at-depth-64", &x, false); /* not convertible to JSON */
    /* What fuzz_cluster_envelope found (minimised): accepted, then not delivered to JSON
     * subscribers, when data could be GALE_MAX_DEPTH deep. */
    static const char found[] =
        "\x97\x01\xa1n\x01\x01\xa1t\x01\xc4\x45\x91\x91\x91\x91\x91\x91\x91\x91\x81\xa0\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x81\xa0\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91"
        "\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\x91\xd4\x01\x91";
    emit("found-mp-ext-at-depth-64", (const uint8_t *)found, sizeof(found) - 1, false);
    x = base();
    d.n = 0;
    put(&d, "\xc4\x82", 2);
    put_rep(&d, '[', 65);
    put_rep(&d, ']', 65);
    x = base();
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-json-depth-65", &x, false);
    d.n = 0;
    put(&d, "\xc5\x07\xd0", 3);
    put_rep(&d, '[', 1000);
    put_rep(&d, ']', 1000);
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-json-depth-1000", &x, false);
    d.n = 0;
    put(&d, "\xc4\x42", 2);
    put_rep(&d, 0x91, 65);
    put_u8(&d, 0x01);
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    x.p[P_ENC] = "\x01";
    emit_parts("data-mp-depth-65", &x, false);
    d.n = 0;
    put(&d, "\xc5\x0f\xa1", 3);
    put_rep(&d, 0x81, 2000); /* maps nested as keys */
    put_rep(&d, 0xc0, 2001);
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-mp-depth-2000-maps", &x, false);
    d.n = 0;
    put(&d, "\xc4\x41", 2);
    put_rep(&d, 0x9f, 65);
    x.p[P_DATA] = (const char *)d.b;
    x.n[P_DATA] = d.n;
    emit_parts("data-mp-fixarray15-x65", &x, false);

    /* A too long node and topic, and the largest ones. */
    char s[300];
    memset(s, 'n', sizeof(s));
    b.n = 0;
    put(&b, "\x97\x01\xd9\x40", 4);
    put(&b, s, 64);
    put(&b,
        "\x01\x01\xa1t\x00\xc4\x01"
        "1",
        8);
    emit_bytes("node-64", &b, false);
    memset(s, 't', sizeof(s));
    b.n = 0;
    put(&b, "\x97\x01\xa1n\x01\x01\xda\x01\x00", 9);
    put(&b, s, 256);
    put(&b,
        "\x00\xc4\x01"
        "1",
        4);
    emit_bytes("topic-256", &b, false);

    /* Tails: 8 ends in true, 9 in ep (a str of 1..GALE_EP_MAX bytes) and off (a uint >= 1). */
#define TAIL(name, head, tail, accept)                                                             \
    do {                                                                                           \
        x = base();                                                                                \
        x.p[P_HEAD] = head;                                                                        \
        x.p[P_TAIL] = tail;                                                                        \
        x.n[P_TAIL] = sizeof(tail) - 1;                                                            \
        emit_parts(name, &x, accept);                                                              \
    } while (0)
    TAIL("tail8-true", "\x98", "\xc3", true);
    TAIL("tail8-false", "\x98", "\xc2", false);
    TAIL("tail8-nil", "\x98", "\xc0", false);
    TAIL("tail8-one", "\x98", "\x01", false);
    TAIL("tail8-missing", "\x98", "", false);
    TAIL("tail8-true-true", "\x98", "\xc3\xc3", false);
    TAIL("tail8-under-head-7", "\x97", "\xc3", false);
    TAIL("tail8-under-head-9", "\x99", "\xc3", false);
    TAIL("tail9-fixstr-fixint", "\x99",
         "\xa2"
         "ep\x01",
         true);
    TAIL("tail9-str8-uint64", "\x99",
         "\xd9\x10"
         "0123456789abcdef\xcf\x00\x00\x00\x00\x00\x00\x00\x07",
         true);
    TAIL("tail9-str16-uint8", "\x99",
         "\xda\x00\x02"
         "ep\xcc\xff",
         true);
    TAIL("tail9-str32-uint16", "\x99",
         "\xdb\x00\x00\x00\x02"
         "ep\xcd\x01\x00",
         true);
    TAIL("tail9-uint32", "\x99",
         "\xa2"
         "ep\xce\x00\x01\x00\x00",
         true);
    TAIL("tail9-ep-empty", "\x99", "\xa0\x01", false);
    TAIL("tail9-ep-str8-empty", "\x99", "\xd9\x00\x01", false);
    TAIL("tail9-ep-bin", "\x99",
         "\xc4\x02"
         "ep\x01",
         false);
    TAIL("tail9-ep-int", "\x99", "\x07\x01", false);
    TAIL("tail9-ep-nil", "\x99", "\xc0\x01", false);
    TAIL("tail9-ep-true", "\x99", "\xc3", false);
    TAIL("tail9-ep-past-end", "\x99",
         "\xd9\x40"
         "ep\x01",
         false);
    TAIL("tail9-ep-str32-4g", "\x99",
         "\xdb\xff\xff\xff\xff"
         "ep\x01",
         false);
    TAIL("tail9-off-0", "\x99",
         "\xa2"
         "ep\x00",
         false);
    TAIL("tail9-off-uint64-0", "\x99",
         "\xa2"
         "ep\xcf\x00\x00\x00\x00\x00\x00\x00\x00",
         false);
    TAIL("tail9-off-negative", "\x99",
         "\xa2"
         "ep\xff",
         false);
    TAIL("tail9-off-int64", "\x99",
         "\xa2"
         "ep\xd3\x00\x00\x00\x00\x00\x00\x00\x05",
         false);
    TAIL("tail9-off-float", "\x99",
         "\xa2"
         "ep\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00",
         false);
    TAIL("tail9-off-str", "\x99",
         "\xa2"
         "ep\xa1"
         "1",
         false);
    TAIL("tail9-off-missing", "\x99",
         "\xa2"
         "ep",
         false);
    TAIL("tail9-off-truncated", "\x99",
         "\xa2"
         "ep\xcf\x00\x00",
         false);
    TAIL("tail9-missing", "\x99", "", false);
    TAIL("tail9-bytes-after", "\x99",
         "\xa2"
         "ep\x01\xc0",
         false);
    TAIL("tail9-true-after", "\x99",
         "\xa2"
         "ep\x01\xc3",
         false);
    TAIL("tail9-under-head-6", "\x96",
         "\xa2"
         "ep\x01",
         false);
    TAIL("tail9-under-head-7", "\x97",
         "\xa2"
         "ep\x01",
         false);
    TAIL("tail9-under-head-8", "\x98",
         "\xa2"
         "ep\x01",
         false);
    TAIL("tail9-under-head-10", "\x9a",
         "\xa2"
         "ep\x01",
         false);
    TAIL("tail9-under-array16", "\xdc\x00\x09",
         "\xa2"
         "ep\x01",
         false);
    b.n = 0;
    x = base();
    x.p[P_HEAD] = "\x99";
    for (int i = 0; i < P_TAIL; i++)
        put(&b, x.p[i], x.n[i]);
    size_t at = b.n;
    for (int len = GALE_EP_MAX; len <= GALE_EP_MAX + 1; len++) {
        b.n = at;
        put_u8(&b, 0xd9);
        put_u8(&b, (uint8_t)len);
        put_rep(&b, 'e', (size_t)len);
        put_u8(&b, 0x01);
        emit_bytes(len == GALE_EP_MAX ? "tail9-ep-64" : "tail9-ep-65", &b, len == GALE_EP_MAX);
    }
    b.n = at;
    put_u8(&b, 0xda);
    put_be(&b, GALE_EP_MAX + 1, 2);
    put_rep(&b, 'e', GALE_EP_MAX + 1);
    put_u8(&b, 0x01);
    emit_bytes("tail9-ep-65-str16", &b, false);

    /* Trailing bytes, truncations, nothing at all. */
    b.n = 0;
    x = base();
    for (int i = 0; i < P_COUNT; i++)
        put(&b, x.p[i], x.n[i]);
    size_t full = b.n;
    put_u8(&b, 0xc0);
    emit_bytes("trailing-nil", &b, false);
    b.n = full;
    put(&b, b.b, full);
    emit_bytes("two-envelopes", &b, false);
    b.n = full - 1;
    emit_bytes("truncated-by-one", &b, false);
    b.n = full / 2;
    emit_bytes("truncated-half", &b, false);
    b.n = 1;
    emit_bytes("only-head", &b, false);
    emit("empty", (const uint8_t *)"", 0, false);
}

/* --- presence envelopes ------------------------------------------------------ */

/* Writes one presence seed and checks the verdicts: cluster_presence_decode's, and never a
 * message envelope. */
static void emit_presence(const char *name, const uint8_t *p, size_t n, bool accept)
{
    cluster_presence_t e;
    cluster_envelope_t m;
    const char *why;
    bool ok = cluster_presence_decode(p, n, &e);
    if (ok != accept || cluster_envelope_decode(p, n, CLUSTER_DATA_MAX, &m, &why)) {
        fprintf(stderr, "%s: expected %s, got %s\n", name, accept ? "accept" : "reject",
                ok ? "accept" : "reject");
        failed++;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    written++;
}

enum { Q_HEAD, Q_VER, Q_TOPIC, Q_KIND, Q_COUNT, Q_CONN, Q_MEMBER, Q_AFTER, Q_COUNT_ };

typedef struct {
    const char *p[Q_COUNT_];
    size_t n[Q_COUNT_];
} qparts_t;

static qparts_t qbase(void)
{
    qparts_t x;
    static const struct {
        const char *s;
        size_t n;
    } def[Q_COUNT_] = {
        {LIT("\x96")}, /* fixarray 6 */
        {LIT("\x02")}, /* version */
        {LIT("\xab"
             "chat.room-1")}, /* topic */
        {LIT("\x00")},        /* kind: join */
        {LIT("\x03")},        /* count */
        {LIT("\xb2"
             "00000000000000aa-7")},                  /* conn */
        {LIT("\xb7{\"conn\":\"x\",\"user\":\"u\"}")}, /* member */
        {LIT("")},                                    /* nothing after */
    };
    for (int i = 0; i < Q_COUNT_; i++) {
        x.p[i] = def[i].s;
        x.n[i] = def[i].n;
    }
    return x;
}

static void qwith(const char *name, int which, const char *p, size_t n, bool accept)
{
    qparts_t x = qbase();
    bytes_t b = {.n = 0};
    x.p[which] = p;
    x.n[which] = n;
    for (int i = 0; i < Q_COUNT_; i++)
        put(&b, x.p[i], x.n[i]);
    emit_presence(name, b.b, b.n, accept);
}

#define QACCEPT(name, which, lit) qwith("presence-" name, which, LIT(lit), true)
#define QREJECT(name, which, lit) qwith("presence-" name, which, LIT(lit), false)

/* The base presence envelope with a member of `len` bytes ({"a":"xx..x"}), str8/16/32. */
static void member_of(const char *name, size_t len, bool accept)
{
    static bytes_t b;
    b.n = 0;
    qparts_t x = qbase();
    for (int i = 0; i < Q_MEMBER; i++)
        put(&b, x.p[i], x.n[i]);
    if (len < 256) {
        put_u8(&b, 0xd9);
        put_be(&b, len, 1);
    } else if (len < 65536) {
        put_u8(&b, 0xda);
        put_be(&b, len, 2);
    } else {
        put_u8(&b, 0xdb);
        put_be(&b, len, 4);
    }
    put(&b, "{\"a\":\"", 6);
    put_rep(&b, 'x', len - 8);
    put(&b, "\"}", 2);
    emit_presence(name, b.b, b.n, accept);
}

static void presence_seeds(void)
{
    /* Captured from Redis 7.0 running the presence scripts (cmsgpack.pack). */
    static const char join[] =
        "\x96\x02\xab"
        "chat.room-1\x00\x01\xb2"
        "00000000000000aa-1\xd9\x39{\"conn\":\"00000000000000aa-1\",\"user\":\"ann\",\"info\":{"
        "\"n\":1}}";
    static const char leave[] =
        "\x96\x02\xab"
        "chat.room-1\x01\xcc\xc8\xb2"
        "00000000000000aa-1\xd9\x39{\"conn\":\"00000000000000aa-1\",\"user\":\"ann\",\"info\":{"
        "\"n\":1}}";
    emit_presence("presence-redis-join", (const uint8_t *)join, sizeof(join) - 1, true);
    emit_presence("presence-redis-leave", (const uint8_t *)leave, sizeof(leave) - 1, true);

    QACCEPT("valid", Q_AFTER, "");
    QACCEPT("leave", Q_KIND, "\x01");
    QACCEPT("count-0", Q_COUNT, "\x00");
    QACCEPT("count-uint16", Q_COUNT, "\xcd\x01\x00");
    QACCEPT("count-uint64-max", Q_COUNT, "\xcf\xff\xff\xff\xff\xff\xff\xff\xff");
    QACCEPT("version-uint8", Q_VER, "\xcc\x02");
    QACCEPT("topic-str16", Q_TOPIC,
            "\xda\x00\x03"
            "a.b");
    QACCEPT("topic-utf8", Q_TOPIC,
            "\xa6"
            "caf\xc3\xa9!");
    QACCEPT("conn-str8", Q_CONN,
            "\xd9\x01"
            "c");
    QACCEPT("conn-punct", Q_CONN, "\xa5!~{}\"");
    QACCEPT("member-empty-object", Q_MEMBER, "\xa2{}");
    QACCEPT("member-inner-space", Q_MEMBER, "\xaa{ \"a\" : 1}");
    QACCEPT("member-nested", Q_MEMBER, "\xbd{\"info\":{\"a\":[1,{\"b\":null}]}}");
    QACCEPT("member-escapes", Q_MEMBER, "\xba{\"u\":\"\\u00e9\\ud83d\\ude00\"}");
    QACCEPT("member-str32", Q_MEMBER, "\xdb\x00\x00\x00\x02{}");

    QREJECT("array-5", Q_HEAD, "\x95");
    QREJECT("array-7", Q_HEAD, "\x97");
    QREJECT("array16-6", Q_HEAD, "\xdc\x00\x06");
    QREJECT("map-6", Q_HEAD, "\x86");
    QREJECT("version-1", Q_VER, "\x01");
    QREJECT("version-3", Q_VER, "\x03");
    QREJECT("version-int8", Q_VER, "\xd0\x02");
    QREJECT("topic-pattern", Q_TOPIC,
            "\xa3"
            "a.*");
    QREJECT("topic-gt", Q_TOPIC,
            "\xa3"
            "a.>");
    QREJECT("topic-empty", Q_TOPIC, "\xa0");
    QREJECT("topic-bin", Q_TOPIC, "\xc4\x01t");
    QREJECT("topic-bad-utf8", Q_TOPIC, "\xa2\xc3\x28");
    QREJECT("kind-2", Q_KIND, "\x02");
    QREJECT("kind-negative", Q_KIND, "\xff");
    QREJECT("kind-true", Q_KIND, "\xc3");
    QREJECT("count-negative", Q_COUNT, "\xff");
    QREJECT("count-int64", Q_COUNT, "\xd3\x00\x00\x00\x00\x00\x00\x00\x01");
    QREJECT("count-float", Q_COUNT, "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00");
    QREJECT("count-truncated", Q_COUNT, "\xcf\x00\x00");
    QREJECT("conn-empty", Q_CONN, "\xa0");
    QREJECT("conn-space", Q_CONN,
            "\xa3"
            "a b");
    QREJECT("conn-del", Q_CONN, "\xa1\x7f");
    QREJECT("conn-nul", Q_CONN,
            "\xa2"
            "a\x00");
    QREJECT("conn-utf8", Q_CONN, "\xa2\xc3\xa9");
    QREJECT("conn-bin", Q_CONN,
            "\xc4\x01"
            "c");
    QREJECT("conn-97", Q_CONN,
            "\xd9\x61"
            "0123456789012345678901234567890123456789012345678901234567890123456789012345678901"
            "234567890123456");
    QREJECT("member-array", Q_MEMBER, "\xa3[1]");
    QREJECT("member-string", Q_MEMBER, "\xa3\"s\"");
    QREJECT("member-null", Q_MEMBER, "\xa4null");
    QREJECT("member-unclosed", Q_MEMBER, "\xa6{\"a\":1");
    QREJECT("member-trailing-comma", Q_MEMBER, "\xa7{\"a\":1,}");
    QREJECT("member-leading-space", Q_MEMBER, "\xa3 {}");
    QREJECT("member-trailing-newline", Q_MEMBER, "\xa3{}\n");
    QREJECT("member-two-objects", Q_MEMBER, "\xa4{}{}");
    QREJECT("member-bad-utf8", Q_MEMBER, "\xa9{\"a\":\"\xc3\x28\"}");
    QREJECT("member-bin", Q_MEMBER, "\xc4\x02{}");
    QREJECT("member-map", Q_MEMBER,
            "\x81\xa1"
            "a\x01");
    QREJECT("member-past-end", Q_MEMBER, "\xa5{}");
    QREJECT("member-str32-4g", Q_MEMBER, "\xdb\xff\xff\xff\xff{}");
    QREJECT("trailing-nil", Q_AFTER, "\xc0");
    QREJECT("trailing-envelope", Q_AFTER, "\x96");

    /* The member's size and depth at their limits. */
    member_of("presence-member-str8", 200, true);
    member_of("presence-member-str16", 3000, true);
    static bytes_t d;
    d.n = 0;
    put_u8(&d, '{');
    for (int i = 1; i < CLUSTER_MEMBER_DEPTH; i++)
        put(&d, "\"a\":{", 5);
    put_rep(&d, '}', CLUSTER_MEMBER_DEPTH);
    char len[3] = {(char)0xda, (char)(d.n >> 8), (char)d.n};
    qparts_t x = qbase();
    bytes_t b = {.n = 0};
    for (int i = 0; i < Q_MEMBER; i++)
        put(&b, x.p[i], x.n[i]);
    size_t at = b.n;
    put(&b, len, 3);
    put(&b, d.b, d.n);
    emit_presence("presence-member-depth-max", b.b, b.n, true);
    b.n = at;
    len[1] = (char)((d.n + 6) >> 8);
    len[2] = (char)(d.n + 6);
    put(&b, len, 3);
    put(&b, "{\"a\":", 5);
    put(&b, d.b, d.n);
    put_u8(&b, '}');
    emit_presence("presence-member-depth-over", b.b, b.n, false);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    valid_seeds();
    hand_seeds();
    presence_seeds();
    printf("%d seeds written to %s\n", written, dir);
    return failed ? 1 : 0;
}
