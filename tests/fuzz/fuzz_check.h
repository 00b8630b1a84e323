/*
 * Shared helpers of the fuzz targets: CHECK aborts (so libFuzzer records a
 * crash) whatever NDEBUG says.
 */
#ifndef GALE_FUZZ_CHECK_H
#define GALE_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gale_protocol.h"
#include "internal.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static inline bool buf_eq(const gale_buf_t *a, const gale_buf_t *b)
{
    return gale_buf_payload_len(a) == gale_buf_payload_len(b) &&
           (gale_buf_payload_len(a) == 0 ||
            memcmp(gale_buf_payload(a), gale_buf_payload(b), gale_buf_payload_len(a)) == 0);
}

/*
 * True if the (pre-scanned) MessagePack value p[0..n) has a map key that is
 * an array or a map. Only such keys, escaped once per level of nesting, can
 * exceed the conversion's output budget (docs/PROTOCOL-NOTES.md).
 */
static inline bool has_container_key(const uint8_t *p, size_t n)
{
    size_t pos = 0;
    while (pos < n) {
        gale__mphead_t h;
        if (!gale__mp_head(p + pos, n - pos, &h))
            return false;
        if (h.kind == GALE__MP_MAP) {
            size_t q = pos + h.hdr;
            for (uint64_t i = 0; i < h.n && q < n; i++) {
                gale__mphead_t k;
                if (!gale__mp_head(p + q, n - q, &k))
                    return false;
                if (k.kind == GALE__MP_ARRAY || k.kind == GALE__MP_MAP)
                    return true;
                q += gale__mp_skip(p + q, n - q);
                q += gale__mp_skip(p + q, n - q);
            }
        }
        /* Step into containers, over everything else. */
        if (h.kind == GALE__MP_ARRAY || h.kind == GALE__MP_MAP)
            pos += h.hdr;
        else
            pos += gale__mp_skip(p + pos, n - pos);
    }
    return false;
}

/*
 * A sub with presence or info, re-encoded as a client does (gale_encode_sub_ext, info given
 * as JSON text), decodes to the same sub: same flag, same info (byte-exact in JSON; in
 * MessagePack a map with the same JSON form).
 */
static inline void check_sub_ext(gale_enc_t enc, const gale_request_t *r)
{
    gale_buf_t info, re, back_info;
    gale_request_t back;
    gale_buf_init(&info, 0);
    gale_buf_init(&re, 0);
    gale_buf_init(&back_info, 0);
    if (r->info) {
        gale_err_t e = gale_convert_data(&info, GALE_ENC_JSON, enc, r->info, r->info_len);
        if (e != GALE_OK) {
            /* Only over the conversion's output budget (container keys). */
            CHECK(e == GALE_ERR_BAD_REQUEST && enc == GALE_ENC_MSGPACK &&
                  has_container_key(r->info, r->info_len));
            goto out;
        }
    }
    gale_pos_t since = {r->since.ep, r->since.ep_len, r->since.off};
    bool with_since = r->has_since && r->since.ep != NULL;
    CHECK(gale_encode_sub_ext(&re, enc, r->has_id, r->id, r->topic, r->topic_len,
                              with_since ? &since : NULL, r->presence, r->info ? info.data : NULL,
                              info.len) == GALE_OK);
    CHECK(gale_decode_request(enc, re.data, re.len, &back, NULL) == GALE_OK);
    CHECK(back.op == GALE_OP_SUB && back.presence == r->presence && back.has_since == with_since);
    CHECK(back.topic_len == r->topic_len && !memcmp(back.topic, r->topic, r->topic_len));
    CHECK((back.info != NULL) == (r->info != NULL));
    if (r->info && enc == GALE_ENC_JSON) {
        CHECK(back.info_len == r->info_len && !memcmp(back.info, r->info, r->info_len));
    } else if (r->info) {
        CHECK(gale_convert_data(&back_info, GALE_ENC_JSON, enc, back.info, back.info_len) ==
              GALE_OK);
        CHECK(gale_json_valid(back_info.data, back_info.len, GALE__DEPTH_CAP));
    }
out:
    gale_buf_free(&info);
    gale_buf_free(&re);
    gale_buf_free(&back_info);
}

/*
 * Checks a decoded request's invariants, then encodes its data as a `msg` in
 * both encodings and checks that each output is well-formed.
 */
static inline void check_request(gale_enc_t enc, const uint8_t *in, size_t len,
                                 const gale_request_t *r)
{
    CHECK(r->op >= GALE_OP_SUB && r->op <= GALE_OP_REFRESH);
    if (r->has_id)
        CHECK(r->id <= GALE_ID_MAX);
    CHECK((r->token != NULL) == (r->op == GALE_OP_REFRESH));
    if (r->op == GALE_OP_PING) {
        CHECK(r->topic == NULL);
        return;
    }
    if (r->op == GALE_OP_REFRESH) {
        /* A token points into the frame, 1..GALE_TOKEN_MAX bytes; a client's refresh with
         * the same token decodes to the same request. */
        CHECK(r->topic == NULL && r->data == NULL && r->info == NULL && r->mid == NULL);
        CHECK(r->token_len >= 1 && r->token_len <= GALE_TOKEN_MAX);
        CHECK(r->token >= (const char *)in && r->token + r->token_len <= (const char *)in + len);
        gale_buf_t re;
        gale_request_t back;
        gale_buf_init(&re, 0);
        CHECK(gale_encode_refresh(&re, enc, r->has_id, r->id, r->token, r->token_len) == GALE_OK);
        /* JSON: the token had no escape, so it holds nothing the encoder escapes. */
        CHECK(gale_decode_request(enc, re.data, re.len, &back, NULL) == GALE_OK);
        CHECK(back.op == GALE_OP_REFRESH && back.has_id == r->has_id && back.id == r->id);
        CHECK(back.token_len == r->token_len && !memcmp(back.token, r->token, r->token_len));
        gale_buf_free(&re);
        return;
    }
    bool pat = !r->is_pattern;
    CHECK(gale_pattern_valid(r->topic, r->topic_len, &pat));
    CHECK(pat == r->is_pattern);
    /* The additions: since only on a concrete sub, limit only on hist, mid only on pub. */
    CHECK(!r->has_since || (r->op == GALE_OP_SUB && !r->is_pattern));
    if (r->has_since)
        CHECK(r->since.ep ? r->since.ep_len <= GALE_EP_MAX : r->since.ep_len > GALE_EP_MAX);
    CHECK(!r->has_limit || r->op == GALE_OP_HIST);
    CHECK(r->op != GALE_OP_HIST || !r->is_pattern);
    if (r->mid) {
        CHECK(r->op == GALE_OP_PUB && r->mid_len >= 1 && r->mid_len <= GALE_MID_MAX);
        CHECK((r->mid >= (const char *)in && r->mid + r->mid_len <= (const char *)in + len) ||
              r->mid == r->_mid_buf);
    }
    /* Presence: per topic; presence and info only on a sub of a topic, info an object/map. */
    CHECK(r->op != GALE_OP_PRESENCE || !r->is_pattern);
    CHECK(!r->presence || (r->op == GALE_OP_SUB && !r->is_pattern));
    CHECK((r->info == NULL) == (r->info_len == 0));
    if (r->info) {
        CHECK(r->op == GALE_OP_SUB && !r->is_pattern);
        CHECK(r->info >= in && r->info + r->info_len <= in + len);
        if (enc == GALE_ENC_JSON) {
            CHECK(r->info[0] == '{' && r->info[r->info_len - 1] == '}');
            CHECK(gale_json_valid(r->info, r->info_len, GALE_MAX_DEPTH - 1));
        } else {
            gale__mphead_t h;
            CHECK(gale__mp_head(r->info, r->info_len, &h) && h.kind == GALE__MP_MAP);
            CHECK(gale_msgpack_prescan(r->info, r->info_len, GALE_MAX_DEPTH - 1));
        }
    }
    if (r->op == GALE_OP_SUB && (r->presence || r->info))
        check_sub_ext(enc, r);
    if (r->op == GALE_OP_PRESENCE) {
        /* A client's presence request for the same topic decodes to the same request. */
        gale_buf_t re;
        gale_request_t back;
        gale_buf_init(&re, 0);
        CHECK(gale_encode_presence(&re, enc, r->has_id, r->id, r->topic, r->topic_len) == GALE_OK);
        CHECK(gale_decode_request(enc, re.data, re.len, &back, NULL) == GALE_OK);
        CHECK(back.op == GALE_OP_PRESENCE && back.has_id == r->has_id && back.id == r->id);
        CHECK(back.topic_len == r->topic_len && !memcmp(back.topic, r->topic, r->topic_len));
        gale_buf_free(&re);
    }
    if (r->op != GALE_OP_PUB)
        return;
    /* What a client re-encodes with the mid decodes to the same request. */
    if (r->mid) {
        gale_buf_t re;
        gale_request_t back;
        gale_buf_init(&re, 0);
        CHECK(gale_encode_pub_mid(&re, enc, r->has_id, r->id, r->topic, r->topic_len, r->mid,
                                  r->mid_len, enc, r->data, r->data_len) == GALE_OK);
        CHECK(gale_decode_request(enc, re.data, re.len, &back, NULL) == GALE_OK);
        CHECK(back.mid_len == r->mid_len && memcmp(back.mid, r->mid, r->mid_len) == 0);
        gale_buf_free(&re);
    }
    CHECK(!r->is_pattern && gale_topic_valid(r->topic, r->topic_len));
    CHECK(r->data >= in && r->data_len > 0 && r->data + r->data_len <= in + len);
    if (enc == GALE_ENC_JSON)
        CHECK(gale_json_valid(r->data, r->data_len, GALE_MAX_DEPTH - 1));
    else
        CHECK(gale_msgpack_prescan(r->data, r->data_len, GALE_MAX_DEPTH - 1));
    for (int to = 0; to < GALE_ENC_COUNT; to++) {
        gale_buf_t out;
        gale_buf_init(&out, 14);
        gale_err_t e = gale_encode_msg(&out, (gale_enc_t)to, r->topic, r->topic_len, enc, r->data,
                                       r->data_len);
        if (e == GALE_ERR_BAD_REQUEST && enc == GALE_ENC_MSGPACK && to == GALE_ENC_JSON) {
            CHECK(has_container_key(r->data, r->data_len)); /* over the output budget */
            CHECK(out.len == out.headroom);
            gale_buf_free(&out);
            continue;
        }
        CHECK(e == GALE_OK);
        const uint8_t *p = gale_buf_payload(&out);
        size_t n = gale_buf_payload_len(&out);
        if (to == GALE_ENC_JSON)
            CHECK(gale_json_valid(p, n, GALE_MAX_DEPTH));
        else
            CHECK(gale_msgpack_prescan(p, n, GALE_MAX_DEPTH));
        /* It is a well-formed map/object whose op ("msg") is not a client op. */
        gale_request_t back;
        CHECK(gale_decode_request((gale_enc_t)to, p, n, &back, NULL) == GALE_ERR_UNKNOWN_OP);
        gale_buf_free(&out);
    }
}

/* The error reply for a failed decode must be well-formed too. */
static inline void check_error(gale_enc_t enc, const gale_request_t *r, gale_err_t e,
                               const char *why)
{
    CHECK(e == GALE_ERR_BAD_REQUEST || e == GALE_ERR_UNKNOWN_OP || e == GALE_ERR_BAD_TOPIC);
    CHECK(why != NULL);
    CHECK(!r->presence && r->info == NULL && r->info_len == 0);
    if (r->has_id)
        CHECK(r->id <= GALE_ID_MAX);
    gale_buf_t out;
    gale_buf_init(&out, 0);
    CHECK(gale_encode_err(&out, enc, r->has_id, r->id, e, why) == GALE_OK);
    if (enc == GALE_ENC_JSON)
        CHECK(gale_json_valid(out.data, out.len, 1));
    else
        CHECK(gale_msgpack_prescan(out.data, out.len, 1));
    gale_buf_free(&out);
}

#endif
