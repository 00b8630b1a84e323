/*
 * Fuzzes cluster_envelope_decode (broker/cluster_wire.c) on what a broker
 * receives from Redis: the input is the payload of a `message`/`pmessage`,
 * decoded as cluster.c's on_message does (max_data CLUSTER_DATA_MAX), then
 * taken through the rest of that path without a loop or Redis: the channel
 * check, the duplicate filter, and the `msg` frames router_deliver builds for
 * subscribers of each encoding. Checked, beyond "no crash":
 *
 *   - the verdict agrees with an independent model of the documented shape
 *     (an array of 7; of 8 ending in true; of 9 ending in ep, a str of
 *     1..GALE_EP_MAX bytes, and off, a uint >= 1), read with the protocol
 *     module's MessagePack header reader, and the two find the same fields
 *     (the tail, ep and off included);
 *   - decoding is deterministic: a copy at another address gives the same
 *     verdict, reason and field offsets;
 *   - a failure has a non-empty reason; a success has reason "", and every
 *     field is in bounds: node, topic and data (and ep) lie inside the input
 *     in that order, data ends the input (tail 0), or is followed by the true
 *     alone (tail 8) or by ep and off alone (tail 9), the headers between
 *     them take 9..52 bytes (10..53, 11..66),
 *     each field is valid (node printable, topic concrete, ids non-zero,
 *     encoding known, data well-formed and nested at most GALE_MAX_DEPTH - 1
 *     like a pub's) and the whole input is one MessagePack object;
 *   - an accepted envelope is refused when cut by one byte or when max_data
 *     is one byte below its data, and accepted at exactly its data length;
 *   - round trip: cluster_envelope_encode of the decoded fields fits
 *     cluster_envelope_size, is refused (within bounds) with less room, decodes to
 *     the same fields, and encodes again to the same bytes (the encoding is
 *     canonical); with tail 9 it writes the header of 9 and the first 7 only,
 *     refused as such, and decodes once ep and off are appended as the publish
 *     script does (0xd9 LEN EP 0xcf OFF); its truncations and a trailing byte
 *     are refused;
 *   - the channel the broker compares against has room for the topic, and
 *     the duplicate filter takes (instance, seq) once, drops the copy, and
 *     takes the next seq;
 *   - delivery: the data converts to a `msg` frame in both encodings (only
 *     the documented output budget of container map keys may refuse
 *     MessagePack -> JSON), and each frame decodes as a client reads it
 *     (gale_decode_reply) to the same topic, same-encoding data unchanged,
 *     and with tail 9 (router_deliver_at) to the same ep and off.
 *     (This found MessagePack data with an ext at the 64th level: accepted,
 *     then silently not delivered to JSON subscribers.)
 *
 * The same input is also a candidate presence envelope (what the presence
 * scripts publish: cluster_presence_decode), checked against its own model
 * ([2, topic, kind 0/1, count, conn, member] as a fixarray of 6, nothing
 * after): the same verdict and fields; deterministic; e zeroed on failure;
 * never accepted by both decoders, and cluster_envelope_kind names the one
 * that accepts; fields in order inside the input, the member ending it;
 * every prefix refused, a trailing byte refused; the canonical re-encoding
 * (as cmsgpack writes it) decodes to the same fields; and the member makes
 * a join/leave event and a `presence` answer entry in both encodings (what
 * the broker builds from it).
 *
 * The envelope ends where its data does (or its short tail after it), so a
 * byte-level mutation that changes the data's length breaks the bin header
 * before it and gets no further than the length check. Half of the mutations
 * therefore work on the data alone and rewrite its header for the new length,
 * keeping the tail after it, and now and then replace the tail (see
 * LLVMFuzzerCustomMutator), which takes the data deep into the validation.
 * A presence envelope's member (its last field) is mutated the same way.
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
           a->data_len == b->data_len && memcmp(a->data, b->data, a->data_len) == 0 &&
           a->tail == b->tail && a->off == b->off && a->ep_len == b->ep_len &&
           (a->ep == NULL) == (b->ep == NULL) &&
           (a->ep_len == 0 || memcmp(a->ep, b->ep, a->ep_len) == 0);
}

/* Same fields at the same offsets of two buffers. */
static bool same_offsets(const cluster_envelope_t *a, const uint8_t *abuf,
                         const cluster_envelope_t *b, const uint8_t *bbuf)
{
    return (const uint8_t *)a->node - abuf == (const uint8_t *)b->node - bbuf &&
           (const uint8_t *)a->topic - abuf == (const uint8_t *)b->topic - bbuf &&
           a->data - abuf == b->data - bbuf &&
           (a->ep == NULL ? b->ep == NULL
                          : b->ep != NULL &&
                                (const uint8_t *)a->ep - abuf == (const uint8_t *)b->ep - bbuf) &&
           same_fields(a, b);
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

/*
 * [1, node, instance, seq, topic, enc, data] as a fixarray, or [..., true] (8), or
 * [..., ep, off] (9), nothing after it.
 */
static bool model(const uint8_t *buf, size_t len, cluster_envelope_t *e)
{
    size_t pos = 0;
    uint64_t version, enc;
    const uint8_t *node, *topic, *d;
    gale__mphead_t h;

    memset(e, 0, sizeof(*e));
    if (len == 0 || (buf[0] & 0xf0) != 0x90 || !m_head(buf, len, &pos, &h) ||
        h.kind != GALE__MP_ARRAY || h.n < 7 || h.n > 9)
        return false;
    e->tail = h.n == 7 ? 0 : (uint8_t)h.n;
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
        e->data_len > CLUSTER_DATA_MAX)
        return false;
    if (e->tail == 8) {
        gale__mphead_t t;
        if (!m_head(buf, len, &pos, &t) || t.kind != GALE__MP_BOOL || t.u != 1)
            return false;
    } else if (e->tail == 9) {
        const uint8_t *ep;
        if (!m_bytes(buf, len, &pos, GALE__MP_STR, &ep, &e->ep_len) || e->ep_len == 0 ||
            e->ep_len > GALE_EP_MAX || !m_uint(buf, len, &pos, &e->off) || e->off == 0)
            return false;
        e->ep = (const char *)ep;
    }
    if (pos != len)
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
    CHECK(buf[0] == (e->tail == 0 ? 0x97 : e->tail == 8 ? 0x98 : 0x99));
    size_t headers = len - e->node_len - e->topic_len - e->data_len;
    if (e->tail == 0) {
        CHECK(e->ep == NULL && e->ep_len == 0 && e->off == 0);
        CHECK(d + e->data_len == len);
        CHECK(headers >= 9 && headers <= 52); /* 1+1+1+1+1+1+1+2 .. 1+9+5+9+9+5+9+5 */
    } else if (e->tail == 8) {
        CHECK(e->ep == NULL && e->ep_len == 0 && e->off == 0);
        CHECK(d + e->data_len == len - 1 && buf[len - 1] == 0xc3);
        CHECK(headers >= 10 && headers <= 53);
    } else {
        CHECK(e->tail == 9);
        size_t ep = offset_in(e->ep, e->ep_len, buf, len);
        CHECK(ep != SIZE_MAX && e->ep_len >= 1 && e->ep_len <= GALE_EP_MAX && e->off >= 1);
        size_t ep_hdr = ep - (d + e->data_len), off_len = len - (ep + e->ep_len);
        CHECK(d + e->data_len < ep && (ep_hdr == 1 || ep_hdr == 2 || ep_hdr == 3 || ep_hdr == 5));
        gale__mphead_t h;
        CHECK(off_len >= 1 && off_len <= 9 && gale__mp_head(buf + ep + e->ep_len, off_len, &h) &&
              h.kind == GALE__MP_UINT && h.hdr == off_len && h.u == e->off);
        headers -= e->ep_len;
        CHECK(headers >= 11 && headers <= 66); /* ... + 1+1 .. + 5+9 */
    }
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

/* Appends ep and off to a tail-9 envelope as the publish script does: str8, uint64. */
static size_t put_position(uint8_t *out, size_t n, const cluster_envelope_t *e)
{
    out[n++] = 0xd9;
    out[n++] = (uint8_t)e->ep_len;
    memcpy(out + n, e->ep, e->ep_len);
    n += e->ep_len;
    out[n++] = 0xcf;
    for (int i = 7; i >= 0; i--)
        out[n++] = (uint8_t)(e->off >> (8 * i));
    return n;
}

/* Re-encodes e, and decodes and encodes the result again. */
static void check_round_trip(const cluster_envelope_t *e)
{
    cluster_envelope_t back, again;
    const char *why;
    size_t size = cluster_envelope_size(e->node_len, e->topic_len, e->data_len);
    size_t extra = e->tail == 9 ? 2 + e->ep_len + 9 : 0; /* what the script appends */
    size_t cap = size + extra;
    uint8_t *out = malloc(cap + 1);
    CHECK(out);
    size_t enc_n = cluster_envelope_encode(out, size, e);
    CHECK(enc_n > 0 && enc_n <= size);
    uint8_t *small = malloc(enc_n - 1); /* exactly n - 1 bytes: ASan sees any write past them */
    CHECK(small && cluster_envelope_encode(small, enc_n - 1, e) == 0);
    free(small);
    CHECK(out[0] == (e->tail == 0 ? 0x97 : e->tail == 8 ? 0x98 : 0x99));
    if (e->tail == 8)
        CHECK(out[enc_n - 1] == 0xc3);
    size_t n = enc_n;
    if (e->tail == 9) {
        /* The broker's part alone is not an envelope; with the script's part it is. */
        CHECK(!decode(out, enc_n, &again, &why) && strcmp(why, "bad stream position") == 0);
        n = put_position(out, enc_n, e);
        CHECK(n == enc_n + extra);
    }

    CHECK(decode(out, n, &back, &why) && why && *why == '\0');
    check_fields(&back, out, n);
    CHECK(same_fields(e, &back));
    uint8_t *out2 = malloc(cap);
    CHECK(out2);
    CHECK(cluster_envelope_encode(out2, cap, &back) == enc_n && memcmp(out, out2, enc_n) == 0);
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

static bool utf8_valid(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += gale__utf8_next(p + i, n - i, &cp);
        if (cp == GALE__UTF8_BAD)
            return false;
    }
    return true;
}

/* The frames router_deliver (router_deliver_at with tail 9) builds for subscribers of each
 * encoding. */
static void check_delivery(const cluster_envelope_t *e)
{
    for (int to = 0; to < GALE_ENC_COUNT; to++) {
        gale_buf_t out;
        gale_buf_init(&out, 32);
        gale_pos_t pos = {.ep = e->ep, .ep_len = e->ep_len, .off = e->off};
        gale_err_t err =
            gale_encode_msg_pos(&out, (gale_enc_t)to, e->topic, e->topic_len,
                                e->tail == 9 ? &pos : NULL, e->enc, e->data, e->data_len);
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
        if (e->tail == 9) {
            CHECK(r.has_ep && r.has_off && r.off == e->off);
            /* JSON carries ep as text: the same bytes when they are UTF-8 (else U+FFFD). */
            if (to == GALE_ENC_MSGPACK || utf8_valid(e->ep, e->ep_len))
                CHECK(r.ep_len == e->ep_len && memcmp(r.ep, e->ep, e->ep_len) == 0);
        } else {
            CHECK(!r.has_ep && !r.has_off);
        }
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

/* --- presence envelopes ------------------------------------------------------ */

static bool same_presence(const cluster_presence_t *a, const cluster_presence_t *b)
{
    return a->topic == b->topic && a->topic_len == b->topic_len && a->kind == b->kind &&
           a->count == b->count && a->conn == b->conn && a->conn_len == b->conn_len &&
           a->member == b->member && a->member_len == b->member_len;
}

static bool same_presence_values(const cluster_presence_t *a, const cluster_presence_t *b)
{
    return a->topic_len == b->topic_len && memcmp(a->topic, b->topic, a->topic_len) == 0 &&
           a->kind == b->kind && a->count == b->count && a->conn_len == b->conn_len &&
           memcmp(a->conn, b->conn, a->conn_len) == 0 && a->member_len == b->member_len &&
           memcmp(a->member, b->member, a->member_len) == 0;
}

/* [2, topic, kind, count, conn, member] as a fixarray of 6, nothing after it. */
static bool presence_model(const uint8_t *buf, size_t len, cluster_presence_t *e)
{
    size_t pos = 0;
    uint64_t version, kind;
    const uint8_t *topic, *conn, *member;
    gale__mphead_t h;

    memset(e, 0, sizeof(*e));
    if (len == 0 || buf[0] != 0x96 || !m_head(buf, len, &pos, &h) || h.kind != GALE__MP_ARRAY ||
        h.n != 6)
        return false;
    if (!m_uint(buf, len, &pos, &version) || version != CLUSTER_PRESENCE_VERSION)
        return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_STR, &topic, &e->topic_len) ||
        !gale_topic_valid((const char *)topic, e->topic_len))
        return false;
    if (!m_uint(buf, len, &pos, &kind) || kind > 1 || !m_uint(buf, len, &pos, &e->count))
        return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_STR, &conn, &e->conn_len) || e->conn_len == 0 ||
        e->conn_len > CLUSTER_CONN_MAX)
        return false;
    for (size_t i = 0; i < e->conn_len; i++)
        if (conn[i] < 0x21 || conn[i] > 0x7e)
            return false;
    if (!m_bytes(buf, len, &pos, GALE__MP_STR, &member, &e->member_len) || e->member_len == 0 ||
        e->member_len > CLUSTER_MEMBER_MAX || member[0] != '{' ||
        member[e->member_len - 1] != '}' || pos != len ||
        !gale_json_valid(member, e->member_len, CLUSTER_MEMBER_DEPTH)) {
        memset(e, 0, sizeof(*e));
        return false;
    }
    e->topic = (const char *)topic;
    e->kind = (cluster_presence_kind_t)kind;
    e->conn = (const char *)conn;
    e->member = member;
    return true;
}

static uint8_t *put_mp_uint(uint8_t *p, uint64_t v)
{
    if (v < 128) {
        *p++ = (uint8_t)v;
        return p;
    }
    int w = v <= 0xff ? 1 : v <= 0xffff ? 2 : v <= 0xffffffffULL ? 4 : 8;
    *p++ = w == 1 ? 0xcc : w == 2 ? 0xcd : w == 4 ? 0xce : 0xcf;
    for (int i = w - 1; i >= 0; i--)
        *p++ = (uint8_t)(v >> (8 * i));
    return p;
}

static uint8_t *put_mp_str(uint8_t *p, const void *s, size_t n)
{
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else if (n <= 0xff) {
        *p++ = 0xd9;
        *p++ = (uint8_t)n;
    } else if (n <= 0xffff) {
        *p++ = 0xda;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)n;
    } else {
        *p++ = 0xdb;
        for (int i = 3; i >= 0; i--)
            *p++ = (uint8_t)(n >> (8 * i));
    }
    memcpy(p, s, n);
    return p + n;
}

/* The envelope as the presence scripts' cmsgpack.pack writes it (the smallest forms). */
static size_t presence_encode(uint8_t *out, const cluster_presence_t *e)
{
    uint8_t *p = out;
    *p++ = 0x96;
    *p++ = CLUSTER_PRESENCE_VERSION;
    p = put_mp_str(p, e->topic, e->topic_len);
    *p++ = (uint8_t)e->kind;
    p = put_mp_uint(p, e->count);
    p = put_mp_str(p, e->conn, e->conn_len);
    p = put_mp_str(p, e->member, e->member_len);
    return (size_t)(p - out);
}

/* What the broker builds from an accepted event: a join/leave and a `presence` answer
 * entry, in both encodings. */
static void check_presence_delivery(const cluster_presence_t *e)
{
    for (int to = 0; to < GALE_ENC_COUNT; to++) {
        gale_buf_t out;
        gale_buf_init(&out, 32);
        CHECK(gale_encode_presence_event(&out, (gale_enc_t)to, e->kind == CLUSTER_PRESENCE_JOIN,
                                         e->topic, e->topic_len, e->member,
                                         e->member_len) == GALE_OK);
        gale_buf_free(&out);
        gale_buf_init(&out, 32);
        CHECK(gale_encode_presence_begin(&out, (gale_enc_t)to, false, 0, e->topic, e->topic_len,
                                         e->count, 1) == GALE_OK);
        CHECK(gale_encode_presence_member(&out, (gale_enc_t)to, true, e->member, e->member_len) ==
              GALE_OK);
        CHECK(gale_encode_presence_end(&out, (gale_enc_t)to) == GALE_OK);
        gale_buf_free(&out);
    }
}

static void check_presence(const uint8_t *data, size_t size, bool message_ok)
{
    cluster_presence_t e, e2, m;
    bool ok = cluster_presence_decode(data, size, &e);

    /* Deterministic, and independent of where the bytes are. */
    uint8_t *copy = malloc(size + 1);
    CHECK(copy);
    if (size)
        memcpy(copy, data, size);
    CHECK(cluster_presence_decode(copy, size, &e2) == ok);
    if (ok)
        CHECK(same_presence_values(&e, &e2) &&
              (const uint8_t *)e2.topic - copy == (const uint8_t *)e.topic - data);

    /* The model's verdict and fields. */
    CHECK(presence_model(data, size, &m) == ok);
    /* Never both; the kind names the decoder that accepts. */
    CHECK(!(ok && message_ok));
    if (ok)
        CHECK(cluster_envelope_kind(data, size) == CLUSTER_ENV_PRESENCE);
    if (message_ok)
        CHECK(cluster_envelope_kind(data, size) == CLUSTER_ENV_MESSAGE);
    if (!ok) {
        cluster_presence_t zero;
        memset(&zero, 0, sizeof(zero));
        CHECK(memcmp(&e, &zero, sizeof(e)) == 0);
        free(copy);
        return;
    }
    CHECK(same_presence(&e, &m));

    /* In order inside the input, the member ending it; each field valid. */
    CHECK((const uint8_t *)e.topic > data && e.topic + e.topic_len <= e.conn &&
          e.conn + e.conn_len <= (const char *)e.member && e.member + e.member_len == data + size);
    CHECK(gale_topic_valid(e.topic, e.topic_len));
    CHECK(e.kind == CLUSTER_PRESENCE_JOIN || e.kind == CLUSTER_PRESENCE_LEAVE);
    CHECK(e.conn_len >= 1 && e.conn_len <= CLUSTER_CONN_MAX);
    for (size_t i = 0; i < e.conn_len; i++)
        CHECK(e.conn[i] > ' ' && e.conn[i] < 0x7f);
    CHECK(e.member_len >= 2 && e.member_len <= CLUSTER_MEMBER_MAX && e.member[0] == '{' &&
          e.member[e.member_len - 1] == '}');
    CHECK(gale_json_valid(e.member, e.member_len, CLUSTER_MEMBER_DEPTH));
    /* The headers between the fields: 1 + 1..9 (version) + 1..5 + 1..9 + 1..9 + 1..5 + 1..5. */
    size_t hdrs = size - e.topic_len - e.conn_len - e.member_len;
    CHECK(hdrs >= 7 && hdrs <= 43);

    /* Every prefix (the first and last 64 when long), and a trailing byte, refused. */
    for (size_t cut = 0; cut < size; cut++) {
        if (cut == 64 && size > 128)
            cut = size - 64;
        CHECK(!cluster_presence_decode(data, cut, &e2));
    }
    copy[size] = data[size - 1];
    CHECK(!cluster_presence_decode(copy, size + 1, &e2));
    free(copy);

    /* The canonical encoding decodes to the same values, and encodes again the same. */
    size_t cap = size + 32;
    uint8_t *out = malloc(cap), *out2 = malloc(cap);
    CHECK(out && out2);
    size_t n = presence_encode(out, &e);
    CHECK(n <= size && n <= cap);
    CHECK(cluster_presence_decode(out, n, &e2) && same_presence_values(&e, &e2));
    CHECK(presence_encode(out2, &e2) == n && memcmp(out, out2, n) == 0);
    free(out);
    free(out2);

    check_presence_delivery(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cluster_envelope_t e, e2, m;
    const char *why, *why2;
    bool ok = decode(data, size, &e, &why);
    CHECK(why != NULL);
    check_presence(data, size, ok);

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
    if (n == 0 || p[0] < 0x97 || p[0] > 0x99)
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

/*
 * The tail an envelope ends with, chosen by v: nothing (array of 7), true (8), or a
 * position (9) whose ep and off are now and then out of bounds. Returns its length
 * (at most 2 + GALE_EP_MAX + 1 + 9) and sets *head to the array header.
 */
static size_t make_tail(uint8_t *t, unsigned v, uint8_t *head)
{
    switch (v % 3) {
    case 0:
        *head = 0x97;
        return 0;
    case 1:
        *head = 0x98;
        t[0] = 0xc3;
        return 1;
    default: {
        *head = 0x99;
        v /= 3;
        size_t ep_len = v % 8 == 0 ? (v / 8) % (GALE_EP_MAX + 2) : 16, n = 0;
        if (ep_len < 32 && (v & 0x100)) {
            t[n++] = (uint8_t)(0xa0 | ep_len);
        } else {
            t[n++] = 0xd9;
            t[n++] = (uint8_t)ep_len;
        }
        for (size_t i = 0; i < ep_len; i++)
            t[n++] = "0123456789abcdef"[(v + i) % 16];
        uint64_t off = (v >> 9) % 4 == 0 ? 0 : (v >> 11);
        if (off < 128 && (v & 0x200)) {
            t[n++] = (uint8_t)off;
        } else {
            t[n++] = 0xcf;
            for (int i = 7; i >= 0; i--)
                t[n++] = (uint8_t)(off >> (8 * i));
        }
        return n;
    }
    }
}

/*
 * If p[0..n) reads as a presence envelope up to its member's header (a fixarray of 6, then
 * five scalars or strs), sets *at to where that header starts and returns true.
 */
static bool find_member(const uint8_t *p, size_t n, size_t *at)
{
    size_t pos = 1;
    if (n == 0 || p[0] != 0x96)
        return false;
    for (int field = 0; field < 5; field++) {
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
    return pos < n && ((p[pos] & 0xe0) == 0xa0 || (p[pos] >= 0xd9 && p[pos] <= 0xdb));
}

/*
 * Mutates the member (the str at `at`, to the end of the input) of a presence envelope as
 * JSON text and rewrites its str header for the new length, in the smallest form or now and
 * then a wider one.
 */
static size_t mutate_member(uint8_t *data, size_t size, size_t max_size, size_t at,
                            unsigned int seed)
{
    gale__mphead_t h;
    if (!gale__mp_head(data + at, size - at, &h) || max_size < at + 6)
        return LLVMFuzzerMutate(data, size, max_size);
    size_t start = at + h.hdr, len = start <= size ? size - start : 0;
    if (h.n < len)
        len = (size_t)h.n;
    size_t room = max_size - at - 5;
    if (len > room)
        len = room;
    uint8_t *tmp = malloc(room + 1);
    if (!tmp)
        return LLVMFuzzerMutate(data, size, max_size);
    memcpy(tmp, data + start, len);
    if (len == 0)
        tmp[len++] = '{';
    len = LLVMFuzzerMutate(tmp, len, room);
    unsigned wide = (seed >> 1) % 4;
    uint8_t *o = data + at;
    if (len < 32 && wide < 2) {
        *o++ = (uint8_t)(0xa0 | len);
    } else if (len < 256 && wide < 3) {
        *o++ = 0xd9;
        *o++ = (uint8_t)len;
    } else if (len < 65536 && wide < 3) {
        *o++ = 0xda;
        *o++ = (uint8_t)(len >> 8);
        *o++ = (uint8_t)len;
    } else {
        *o++ = 0xdb;
        for (int i = 3; i >= 0; i--)
            *o++ = (uint8_t)(len >> (8 * i));
    }
    memcpy(o, tmp, len);
    free(tmp);
    return (size_t)(o - data) + len;
}

/*
 * Mutates the data of an envelope and fixes its bin header, keeping what follows the data
 * of an array of 8 or 9 (its tail), or now and then replacing the tail; else the whole input.
 */
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed)
{
    size_t at;
    gale__mphead_t h;
    if (!(seed & 1) && find_member(data, size, &at))
        return mutate_member(data, size, max_size, at, seed);
    if ((seed & 1) || !find_data(data, size, &at) || !gale__mp_head(data + at, size - at, &h))
        return LLVMFuzzerMutate(data, size, max_size);
    size_t start = at + h.hdr, len = size - start;
    if (start > size)
        return LLVMFuzzerMutate(data, size, max_size);
    if (h.n < len)
        len = (size_t)h.n;
    /* The tail: what follows the data (nothing for an array of 7), or a new one. */
    uint8_t tail[2 + GALE_EP_MAX + 1 + 9 + 64], head = data[0];
    size_t tail_len = head == 0x97 ? 0 : size - start - len;
    if ((seed >> 3) % 8 == 0 || tail_len > sizeof(tail))
        tail_len = make_tail(tail, seed >> 6, &head);
    else
        memcpy(tail, data + start + len, tail_len);
    if (max_size < at + 6 + tail_len)
        return LLVMFuzzerMutate(data, size, max_size);
    size_t room = max_size - at - 5 - tail_len;
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
    data[0] = head;
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
    o += len;
    memcpy(o, tail, tail_len);
    return (size_t)(o - data) + tail_len;
}
