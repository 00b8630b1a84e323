/*
 * Fuzzes cluster_envelope_decode (broker/cluster_wire.c) on what a broker
 * receives from Redis: the input is the payload of a `message`/`pmessage`,
 * decoded as cluster.c's on_message does (max_data CLUSTER_DATA_MAX), then
 * taken through the rest of that path without a loop or Redis: the channel
 * check, the duplicate filter, and the `msg` frames router_deliver builds for
 * subscribers of each encoding. Checked, beyond "no crash":
 *
 *   - the verdict agrees with an independent model of the documented shape,
 *     read with the protocol module's MessagePack header reader, and the two
 *     find the same fields;
 *   - decoding is deterministic: a copy at another address gives the same
 *     verdict, reason and field offsets;
 *   - a failure has a non-empty reason; a success has reason "", and every
 *     field is in bounds: node, topic and data lie inside the input in that
 *     order, data ends the input, the headers between them take 9..52 bytes,
 *     each field is valid (node printable, topic concrete, ids non-zero,
 *     encoding known, data well-formed and nested at most GALE_MAX_DEPTH - 1
 *     like a pub's) and the whole input is one MessagePack object;
 *   - an accepted envelope is refused when cut by one byte or when max_data
 *     is one byte below its data, and accepted at exactly its data length;
 *   - round trip: cluster_envelope_encode of the decoded fields fits
 *     cluster_envelope_size, is refused (within bounds) with less room, decodes to
 *     the same fields, and encodes again to the same bytes (the encoding is
 *     canonical); its truncations and a trailing byte are refused;
 *   - the channel the broker compares against has room for the topic, and
 *     the duplicate filter takes (instance, seq) once, drops the copy, and
 *     takes the next seq;
 *   - delivery: the data converts to a `msg` frame in both encodings (only
 *     the documented output budget of container map keys may refuse
 *     MessagePack -> JSON), and each frame decodes as a client reads it
 *     (gale_decode_reply) to the same topic, same-encoding data unchanged.
 *     (This found MessagePack data with an ext at the 64th level: accepted,
 *     then silently not delivered to JSON subscribers.)
 *
 * The envelope ends exactly where its data does, so a byte-level mutation
 * that changes the data's length breaks the bin header before it and gets
 * no further than the length check. Half of the mutations therefore work on
 * the data alone and rewrite its header for the new length (see
 * LLVMFuzzerCustomMutator), which takes the data deep into the validation.
 */
#include "fuzz_check.h"

#include "cluster_wire.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

/* What cluster.c's on_message calls. */
static bool decode(const uint8_t *p, size_t n, cluster_envelope_t *e, const char **why)
{
    *why = NULL;
    return cluster_envelope_decode(p, n, CLUSTER_DATA_MAX, e, why);
}

/* Offset of p in buf[0..len), or SIZE_MAX when [p, p + n) is not inside it. */
static size_t offset_in(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)buf;
    if (a < b || a - b > len || n > len - (a - b))
        return SIZE_MAX;
    return (size_t)(a - b);
}

static bool same_fields(const cluster_envelope_t *a, const cluster_envelope_t *b)
{
    return a->node_len == b->node_len && memcmp(a->node, b->node, a->node_len) == 0 &&
           a->instance == b->instance && a->seq == b->seq && a->topic_len == b->topic_len &&
           memcmp(a->topic, b->topic, a->topic_len) == 0 && a->enc == b->enc &&
           a->data_len == b->data_len && memcmp(a->data, b->data, a->data_len) == 0;
}

/* Same fields at the same offsets of two buffers. */
static bool same_offsets(const cluster_envelope_t *a, const uint8_t *abuf,
                         const cluster_envelope_t *b, const uint8_t *bbuf)
{
    return (const uint8_t *)a->node - abuf == (const uint8_t *)b->node - bbuf &&
           (const uint8_t *)a->topic - abuf == (const uint8_t *)b->topic - bbuf &&
           a->data - abuf == b->data - bbuf && same_fields(a, b);
}

/* --- the model: the header's contract, read with gale__mp_head --------------- */

static bool m_head(const uint8_t *buf, size_t len, size_t *pos, gale__mphead_t *h)
{
    if (!gale__mp_head(buf + *pos, len - *pos, h))
        return false;
    *pos += h->hdr;
    return true;
}

static bool m_uint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *v)
{
    gale__mphead_t h;
    if (!m_head(buf, len, pos, &h) || h.kind != GALE__MP_UINT)
        return false;
    *v = h.u;
    return true;
}

static bool m_bytes(const uint8_t *buf, size_t len, size_t *pos, gale__mpkind_t kind,
                    const uint8_t **s, size_t *n)
{
    gale__mphead_t h;
    if (!m_head(buf, len, pos, &h) || h.kind != kind || h.n > len - *pos)
        return false;
    *s = buf + *pos;
    *n = (size_t)h.n;
    *pos += *n;
    return true;
}

/* [1, node, instance, seq, topic, enc, data] as a fixarray, nothing after it. */
static bool model(const uint8_t *buf, size_t len, cluster_envelope_t *e)
{
    size_t pos = 0;
    uint64_t version, enc;
    const uint8_t *node, *topic, *d;
    gale__mphead_t h;

    memset(e, 0, sizeof(*e));
    if (len == 0 || buf[0] != 0x97 || !m_head(buf, len, &pos, &h) || h.kind != GALE__MP_ARRAY ||
        h.n != 7)
        return false;
    if (!m_uint(buf, len, &pos, &version) || version != CLUSTER_ENVELOPE_VERSION)
        return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_STR, &node, &e->node_len) || e->node_len == 0 ||
        e->node_len > CLUSTER_NODE_MAX)
        return false;
    for (size_t i = 0; i < e->node_len; i++)
        if (node[i] < 0x21 || node[i] > 0x7e)
            return false;
    if (!m_uint(buf, len, &pos, &e->instance) || e->instance == 0 ||
        !m_uint(buf, len, &pos, &e->seq) || e->seq == 0)
        return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_STR, &topic, &e->topic_len) ||
        !gale_topic_valid((const char *)topic, e->topic_len))
        return false;
    if (!m_uint(buf, len, &pos, &enc) || enc >= GALE_ENC_COUNT)
        return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_BIN, &d, &e->data_len) || e->data_len == 0 ||
        e->data_len > CLUSTER_DATA_MAX || pos != len)
        return false;
    e->node = (const char *)node;
    e->topic = (const char *)topic;
    e->enc = (gale_enc_t)enc;
    e->data = d;
    return enc == GALE_ENC_JSON ? gale_json_valid(d, e->data_len, GALE_MAX_DEPTH - 1)
                                : gale_msgpack_prescan(d, e->data_len, GALE_MAX_DEPTH - 1);
}

/* --- properties of an accepted envelope ------------------------------------ */

static void check_fields(const cluster_envelope_t *e, const uint8_t *buf, size_t len)
{
    size_t node = offset_in(e->node, e->node_len, buf, len);
    size_t topic = offset_in(e->topic, e->topic_len, buf, len);
    size_t d = offset_in(e->data, e->data_len, buf, len);
    CHECK(node != SIZE_MAX && topic != SIZE_MAX && d != SIZE_MAX);
    CHECK(node + e->node_len <= topic && topic + e->topic_len <= d);
    CHECK(d + e->data_len == len);
    size_t headers = len - e->node_len - e->topic_len - e->data_len;
    CHECK(headers >= 9 && headers <= 52); /* 1+1+1+1+1+1+1+2 .. 1+9+5+9+9+5+9+5 */
    CHECK(e->node_len >= 1 && e->node_len <= CLUSTER_NODE_MAX);
    for (size_t i = 0; i < e->node_len; i++)
        CHECK(e->node[i] > ' ' && e->node[i] < 0x7f);
    CHECK(e->instance != 0 && e->seq != 0);
    CHECK(e->topic_len <= GALE_TOPIC_MAX && gale_topic_valid(e->topic, e->topic_len));
    CHECK(e->enc == GALE_ENC_JSON || e->enc == GALE_ENC_MSGPACK);
    CHECK(e->data_len >= 1 && e->data_len <= CLUSTER_DATA_MAX);
    if (e->enc == GALE_ENC_JSON)
        CHECK(gale_json_valid(e->data, e->data_len, GALE_MAX_DEPTH - 1));
    else
        CHECK(gale_msgpack_prescan(e->data, e->data_len, GALE_MAX_DEPTH - 1));
    CHECK(gale_msgpack_prescan(buf, len, 2)); /* the envelope is one MessagePack array */
}

/* Re-encodes e, and decodes and encodes the result again. */
static void check_round_trip(const cluster_envelope_t *e)
{
    cluster_envelope_t back, again;
    const char *why;
    size_t cap = cluster_envelope_size(e->node_len, e->topic_len, e->data_len);
    uint8_t *out = malloc(cap + 1);
    CHECK(out);
    size_t n = cluster_envelope_encode(out, cap, e);
    CHECK(n > 0 && n <= cap);
    uint8_t *small = malloc(n - 1); /* exactly n - 1 bytes: ASan sees any write past them */
    CHECK(small && cluster_envelope_encode(small, n - 1, e) == 0);
    free(small);

    CHECK(decode(out, n, &back, &why) && why && *why == '\0');
    check_fields(&back, out, n);
    CHECK(same_fields(e, &back));
    uint8_t *out2 = malloc(cap);
    CHECK(out2);
    CHECK(cluster_envelope_encode(out2, cap, &back) == n && memcmp(out, out2, n) == 0);
    free(out2);

    /* Truncations (empty, in the data header, before and in the data) and a trailing byte. */
    size_t d = (size_t)(back.data - out), cuts[] = {0, 1, d - 5, d - 1, d, n - 1, e->seq % n};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++)
        CHECK(!decode(out, cuts[i], &again, &why) && why && *why);
    out[n] = 0xc0;
    CHECK(!decode(out, n + 1, &again, &why) && strcmp(why, "bytes after the envelope") == 0);
    free(out);
}

/* What the rest of on_message does with it: channel check, duplicates. */
static void check_receive(const cluster_envelope_t *e)
{
    char channel[CLUSTER_PREFIX_MAX + GALE_TOPIC_MAX + 1]; /* cluster.c's channel buffer */
    CHECK(CLUSTER_PREFIX_MAX + e->topic_len + 1 <= sizeof(channel));

    static cluster_dedupe_t dd;
    cluster_dedupe_reset(&dd);
    CHECK(cluster_dedupe_check(&dd, e->instance, e->seq));
    CHECK(!cluster_dedupe_check(&dd, e->instance, e->seq)); /* the copy of a PSUBSCRIBE */
    if (e->seq > 1)
        CHECK(!cluster_dedupe_check(&dd, e->instance, e->seq - 1));
    if (e->seq < UINT64_MAX)
        CHECK(cluster_dedupe_check(&dd, e->instance, e->seq + 1));
}

static bool json_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The frames router_deliver builds for subscribers of each encoding. */
static void check_delivery(const cluster_envelope_t *e)
{
    for (int to = 0; to < GALE_ENC_COUNT; to++) {
        gale_buf_t out;
        gale_buf_init(&out, 32);
        gale_err_t err = gale_encode_msg(&out, (gale_enc_t)to, e->topic, e->topic_len, e->enc,
                                         e->data, e->data_len);
        if (err == GALE_ERR_BAD_REQUEST && e->enc == GALE_ENC_MSGPACK && to == GALE_ENC_JSON) {
            CHECK(has_container_key(e->data, e->data_len)); /* over the output budget */
            CHECK(out.len == out.headroom);
            gale_buf_free(&out);
            continue;
        }
        CHECK(err == GALE_OK);
        gale_reply_t r;
        const char *why = NULL;
        CHECK(gale_decode_reply((gale_enc_t)to, gale_buf_payload(&out), gale_buf_payload_len(&out),
                                &r, &why) == GALE_OK);
        CHECK(r.op == GALE_REPLY_MSG && !r.has_id);
        CHECK(r.topic_len == e->topic_len && memcmp(r.topic, e->topic, e->topic_len) == 0);
        if (to == (int)e->enc) {
            const uint8_t *p = e->data, *end = e->data + e->data_len;
            if (e->enc == GALE_ENC_JSON) {
                while (p < end && json_ws(*p))
                    p++;
                while (end > p && json_ws(end[-1]))
                    end--;
            }
            CHECK(r.data_len == (size_t)(end - p) && memcmp(r.data, p, r.data_len) == 0);
        }
        gale_buf_free(&out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cluster_envelope_t e, e2, m;
    const char *why, *why2;
    bool ok = decode(data, size, &e, &why);
    CHECK(why != NULL);

    /* Deterministic, and independent of where the bytes are. */
    uint8_t *copy = malloc(size ? size : 1);
    CHECK(copy);
    if (size)
        memcpy(copy, data, size);
    CHECK(decode(copy, size, &e2, &why2) == ok && why2 == why);
    if (ok)
        CHECK(same_offsets(&e, data, &e2, copy));
    free(copy);

    /* The same verdict and fields as the model. */
    CHECK(model(data, size, &m) == ok);
    if (!ok) {
        CHECK(*why != '\0');
        return 0;
    }
    CHECK(*why == '\0');
    CHECK(same_offsets(&e, data, &m, data));
    check_fields(&e, data, size);

    /* Prefixes and the max_data bound. */
    CHECK(!decode(data, size - 1, &e2, &why2));
    CHECK(!cluster_envelope_decode(data, size, e.data_len - 1, &e2, &why2) &&
          strcmp(why2, "bad data") == 0);
    CHECK(cluster_envelope_decode(data, size, e.data_len, &e2, &why2) &&
          same_offsets(&e, data, &e2, data));

    check_round_trip(&e);
    check_receive(&e);
    check_delivery(&e);
    return 0;
}

/* --- structure-aware mutation ---------------------------------------------- */

/*
 * If p[0..n) reads as an envelope up to its data's header (any field values),
 * sets *at to where that header starts and returns true.
 */
static bool find_data(const uint8_t *p, size_t n, size_t *at)
{
    size_t pos = 1;
    if (n == 0 || p[0] != 0x97)
        return false;
    for (int field = 0; field < 6; field++) {
        gale__mphead_t h;
        if (!gale__mp_head(p + pos, n - pos, &h) || h.kind == GALE__MP_ARRAY ||
            h.kind == GALE__MP_MAP)
            return false;
        pos += h.hdr;
        if (h.kind == GALE__MP_STR || h.kind == GALE__MP_BIN || h.kind == GALE__MP_EXT) {
            if (h.n > n - pos)
                return false;
            pos += (size_t)h.n;
        }
    }
    *at = pos;
    return pos < n && p[pos] >= 0xc4 && p[pos] <= 0xc6;
}

/* Mutates the data of an envelope and fixes its bin header; else the whole input. */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    size_t at;
    gale__mphead_t h;
    if ((seed & 1) || !find_data(data, size, &at) || max_size < at + 6 ||
        !gale__mp_head(data + at, size - at, &h))
        return LLVMFuzzerMutate(data, size, max_size);
    size_t start = at + h.hdr, len = size - start, room = max_size - at - 5;
    if (h.n < len)
        len = (size_t)h.n; /* drop whatever follows the data */
    if (len > room)
        len = room;
    uint8_t *tmp = malloc(room);
    if (!tmp)
        return LLVMFuzzerMutate(data, size, max_size);
    memcpy(tmp, data + start, len);
    if (len == 0)
        tmp[len++] = (uint8_t)(seed >> 8);
    len = LLVMFuzzerMutate(tmp, len, room);
    /* Header width: the smallest, or bin16/bin32 now and then (all are accepted). */
    unsigned wide = (seed >> 1) % 4;
    uint8_t *o = data + at;
    if (len < 256 && wide < 2) {
        *o++ = 0xc4;
        *o++ = (uint8_t)len;
    } else if (len < 65536 && wide < 3) {
        *o++ = 0xc5;
        *o++ = (uint8_t)(len >> 8);
        *o++ = (uint8_t)len;
    } else {
        *o++ = 0xc6;
        for (int i = 3; i >= 0; i--)
            *o++ = (uint8_t)(len >> (8 * i));
    }
    memcpy(o, tmp, len);
    free(tmp);
    return (size_t)(o - data) + len;
}
