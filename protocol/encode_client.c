/*
 * Encoders of client requests (sub, unsub, pub, ping, hist, presence, refresh) in JSON and
 * MessagePack: what a client such as the `gale` CLI sends to a broker.
 * Same conventions as encode.c: canonical MessagePack, JSON without
 * whitespace, and nothing appended on failure.
 */
#include "internal.h"

/*
 * Opens a request: {"op":op[,"id":id],"topic":topic and, in JSON, leaves the
 * object open; in MessagePack the map header counts `more` fields after topic.
 */
static void head(gale_buf_t *out, gale_enc_t enc, const char *op, bool has_id, uint64_t id,
                 const char *topic, size_t topic_len, size_t more)
{
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, "{\"op\":\"");
        gale__buf_puts(out, op);
        gale__buf_put(out, '"');
        if (has_id) {
            gale__buf_puts(out, ",\"id\":");
            gale__buf_put_u64(out, id);
        }
        if (topic != NULL) {
            gale__buf_puts(out, ",\"topic\":");
            gale__json_put_str(out, (const uint8_t *)topic, topic_len);
        }
    } else {
        gale__mp_put_map_hdr(out, 1 + has_id + (topic != NULL) + more);
        gale__mp_put_cstr(out, "op");
        gale__mp_put_cstr(out, op);
        if (has_id) {
            gale__mp_put_cstr(out, "id");
            gale__mp_put_uint(out, id);
        }
        if (topic != NULL) {
            gale__mp_put_cstr(out, "topic");
            gale__mp_put_str(out, topic, topic_len);
        }
    }
}

gale_err_t gale_encode_sub(gale_buf_t *out, gale_enc_t enc, gale_op_t op, bool has_id, uint64_t id,
                           const char *pattern, size_t len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || (op != GALE_OP_SUB && op != GALE_OP_UNSUB))
        return GALE_ERR_INTERNAL;
    if (pattern == NULL)
        pattern = "", len = 0;
    head(out, enc, op == GALE_OP_SUB ? "sub" : "unsub", has_id, id, pattern, len, 0);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_sub_ext(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t len, const gale_pos_t *since,
                               bool presence, const uint8_t *info_json, size_t info_len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || (since != NULL && since->ep == NULL && since->ep_len > 0))
        return GALE_ERR_INTERNAL;
    if (info_json == NULL)
        info_len = 0;
    else if (!gale_json_valid(info_json, info_len, GALE_MAX_DEPTH))
        return GALE_ERR_BAD_REQUEST;
    if (topic == NULL)
        topic = "", len = 0;
    head(out, enc, "sub", has_id, id, topic, len,
         (size_t)(since != NULL) + presence + (info_json != NULL));
    if (since != NULL) {
        const char *ep = since->ep != NULL ? since->ep : "";
        if (enc == GALE_ENC_JSON) {
            gale__buf_puts(out, ",\"since\":{\"ep\":");
            gale__json_put_str(out, (const uint8_t *)ep, since->ep_len);
            gale__buf_puts(out, ",\"off\":");
            gale__buf_put_u64(out, since->off);
            gale__buf_put(out, '}');
        } else {
            gale__mp_put_cstr(out, "since");
            gale__mp_put_map_hdr(out, 2);
            gale__mp_put_cstr(out, "ep");
            gale__mp_put_str(out, ep, since->ep_len);
            gale__mp_put_cstr(out, "off");
            gale__mp_put_uint(out, since->off);
        }
    }
    if (presence) {
        if (enc == GALE_ENC_JSON) {
            gale__buf_puts(out, ",\"presence\":true");
        } else {
            gale__mp_put_cstr(out, "presence");
            gale__buf_put(out, 0xc3);
        }
    }
    gale_err_t err = GALE_OK;
    if (info_json != NULL) {
        if (enc == GALE_ENC_JSON) {
            gale__buf_puts(out, ",\"info\":");
            gale_buf_append(out, info_json, info_len);
        } else {
            gale__mp_put_cstr(out, "info");
            err = gale__json_to_msgpack(out, info_json, info_len);
        }
    }
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_sub_since(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                 const char *topic, size_t len, const gale_pos_t *since)
{
    return gale_encode_sub_ext(out, enc, has_id, id, topic, len, since, false, NULL, 0);
}

gale_err_t gale_encode_presence(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                const char *topic, size_t len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic = "", len = 0;
    head(out, enc, "presence", has_id, id, topic, len, 0);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_hist(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                            const char *topic, size_t len, bool has_limit, uint64_t limit)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic = "", len = 0;
    head(out, enc, "hist", has_id, id, topic, len, has_limit);
    if (enc == GALE_ENC_JSON) {
        if (has_limit) {
            gale__buf_puts(out, ",\"limit\":");
            gale__buf_put_u64(out, limit);
        }
        gale__buf_put(out, '}');
    } else if (has_limit) {
        gale__mp_put_cstr(out, "limit");
        gale__mp_put_uint(out, limit);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_ping(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    head(out, enc, "ping", has_id, id, NULL, 0, 0);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_refresh(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *token, size_t len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || token == NULL || len == 0 || len > GALE_TOKEN_MAX)
        return GALE_ERR_INTERNAL;
    head(out, enc, "refresh", has_id, id, NULL, 0, 1);
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, ",\"token\":");
        gale__json_put_str(out, (const uint8_t *)token, len);
        gale__buf_put(out, '}');
    } else {
        gale__mp_put_cstr(out, "token");
        gale__mp_put_str(out, token, len);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

/* Opens a pub request up to and including the "data" key, with "mid" before it when
 * mid_len > 0. */
static void pub_head_mid(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                         const char *topic, size_t topic_len, const char *mid, size_t mid_len)
{
    if (topic == NULL)
        topic = "", topic_len = 0;
    head(out, enc, "pub", has_id, id, topic, topic_len, 1 + (mid_len > 0));
    if (enc == GALE_ENC_JSON) {
        if (mid_len > 0) {
            gale__buf_puts(out, ",\"mid\":");
            gale__json_put_str(out, (const uint8_t *)mid, mid_len);
        }
        gale__buf_puts(out, ",\"data\":");
    } else {
        if (mid_len > 0) {
            gale__mp_put_cstr(out, "mid");
            gale__mp_put_str(out, mid, mid_len);
        }
        gale__mp_put_cstr(out, "data");
    }
}

static void pub_head(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id, const char *topic,
                     size_t topic_len)
{
    pub_head_mid(out, enc, has_id, id, topic, topic_len, NULL, 0);
}

gale_err_t gale_encode_pub(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                           const char *topic, size_t topic_len, gale_enc_t data_enc,
                           const uint8_t *data, size_t data_len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || !gale__valid_enc(data_enc))
        return GALE_ERR_INTERNAL;
    pub_head(out, enc, has_id, id, topic, topic_len);
    gale_err_t err = gale_convert_data(out, enc, data_enc, data, data_len);
    if (err == GALE_OK && enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_pub_mid(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t topic_len, const char *mid, size_t mid_len,
                               gale_enc_t data_enc, const uint8_t *data, size_t data_len)
{
    size_t start = out->len;
    if (mid == NULL)
        mid_len = 0;
    if (!gale__valid_enc(enc) || !gale__valid_enc(data_enc) || mid_len > GALE_MID_MAX)
        return GALE_ERR_INTERNAL;
    pub_head_mid(out, enc, has_id, id, topic, topic_len, mid, mid_len);
    gale_err_t err = gale_convert_data(out, enc, data_enc, data, data_len);
    if (err == GALE_OK && enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_pub_str(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                               const char *topic, size_t topic_len, const uint8_t *s, size_t n)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || (s == NULL && n > 0))
        return GALE_ERR_INTERNAL;
    pub_head(out, enc, has_id, id, topic, topic_len);
    if (enc == GALE_ENC_JSON) {
        gale__json_put_str(out, s, n);
        gale__buf_put(out, '}');
    } else if (gale_utf8_valid(s, n)) {
        gale__mp_put_str(out, s, n);
    } else {
        /* Replace each ill-formed subsequence by U+FFFD, as the JSON form does. */
        size_t clean = 0;
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t k = gale__utf8_next(s + i, n - i, &cp);
            clean += cp == GALE__UTF8_BAD ? 3 : k;
            i += k;
        }
        gale__mp_put_str_hdr(out, clean);
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            size_t k = gale__utf8_next(s + i, n - i, &cp);
            if (cp == GALE__UTF8_BAD)
                gale__utf8_put(out, 0xFFFD);
            else
                gale_buf_append(out, s + i, k);
            i += k;
        }
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_pub_bin(gale_buf_t *out, bool has_id, uint64_t id, const char *topic,
                               size_t topic_len, const uint8_t *bytes, size_t n)
{
    size_t start = out->len;
    if ((bytes == NULL && n > 0) || (uint64_t)n > UINT32_MAX)
        return GALE_ERR_INTERNAL;
    pub_head(out, GALE_ENC_MSGPACK, has_id, id, topic, topic_len);
    uint8_t hdr[5];
    size_t hn;
    if (n <= UINT8_MAX) {
        hdr[0] = 0xc4;
        hdr[1] = (uint8_t)n;
        hn = 2;
    } else if (n <= UINT16_MAX) {
        hdr[0] = 0xc5;
        hdr[1] = (uint8_t)(n >> 8);
        hdr[2] = (uint8_t)n;
        hn = 3;
    } else {
        hdr[0] = 0xc6;
        hdr[1] = (uint8_t)(n >> 24);
        hdr[2] = (uint8_t)(n >> 16);
        hdr[3] = (uint8_t)(n >> 8);
        hdr[4] = (uint8_t)n;
        hn = 5;
    }
    gale_buf_append(out, hdr, hn);
    if (n > 0)
        gale_buf_append(out, bytes, n);
    return gale__encode_finish(out, start, GALE_OK);
}
