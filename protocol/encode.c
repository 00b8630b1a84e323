/*
 * Encoders of server messages (hello, msg, ack, pong, err, hist, presence and
 * its events) in JSON and MessagePack, and conversion of `data` between the
 * two.
 *
 * MessagePack output is canonical: minimal integer, str and container
 * headers. JSON output has no whitespace; strings are escaped (", \ and
 * control characters) and invalid UTF-8 becomes U+FFFD, so it is always
 * valid JSON whatever the caller passes. The exceptions are values copied
 * byte-exact: data (validated when it was decoded), a member's info
 * (gale_encode_member: the caller's guarantee) and members (validated here).
 */
#include "internal.h"

static const char *const ERR_NAMES[GALE_ERR_COUNT] = {
    "ok",        "bad_request", "unknown_op",  "bad_topic", "too_large",
    "forbidden", "limit",       "unavailable", "internal",
};

const char *gale_err_name(gale_err_t err)
{
    if ((unsigned)err >= GALE_ERR_COUNT)
        return "internal";
    return ERR_NAMES[err];
}

const char *gale_enc_subprotocol(gale_enc_t enc)
{
    switch (enc) {
    case GALE_ENC_JSON:
        return "gale.v1.json";
    case GALE_ENC_MSGPACK:
        return "gale.v1.msgpack";
    }
    return NULL;
}

/* JSON: ,"key": */
static void jkey(gale_buf_t *b, const char *key)
{
    gale__buf_put(b, ',');
    gale__buf_put(b, '"');
    gale__buf_puts(b, key);
    gale__buf_put(b, '"');
    gale__buf_put(b, ':');
}

static void jstr(gale_buf_t *b, const char *s)
{
    if (s == NULL)
        s = "";
    gale__json_put_str(b, (const uint8_t *)s, strlen(s));
}

gale_err_t gale_encode_hello(gale_buf_t *out, gale_enc_t enc, const char *node, const char *conn,
                             uint64_t max_msg)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, "{\"op\":\"hello\",\"v\":1");
        jkey(out, "node");
        jstr(out, node);
        jkey(out, "conn");
        jstr(out, conn);
        jkey(out, "max_msg");
        gale__buf_put_u64(out, max_msg);
        gale__buf_put(out, '}');
    } else {
        gale__mp_put_map_hdr(out, 5);
        gale__mp_put_cstr(out, "op");
        gale__mp_put_cstr(out, "hello");
        gale__mp_put_cstr(out, "v");
        gale__mp_put_uint(out, GALE_PROTOCOL_VERSION);
        gale__mp_put_cstr(out, "node");
        gale__mp_put_cstr(out, node);
        gale__mp_put_cstr(out, "conn");
        gale__mp_put_cstr(out, conn);
        gale__mp_put_cstr(out, "max_msg");
        gale__mp_put_uint(out, max_msg);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

/* {"op":op} or {"op":op,"id":id}, leaving a JSON object open for more fields. */
static void head(gale_buf_t *out, gale_enc_t enc, const char *op, bool has_id, uint64_t id,
                 size_t more_fields)
{
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, "{\"op\":\"");
        gale__buf_puts(out, op);
        gale__buf_put(out, '"');
        if (has_id) {
            jkey(out, "id");
            gale__buf_put_u64(out, id);
        }
    } else {
        gale__mp_put_map_hdr(out, 1 + has_id + more_fields);
        gale__mp_put_cstr(out, "op");
        gale__mp_put_cstr(out, op);
        if (has_id) {
            gale__mp_put_cstr(out, "id");
            gale__mp_put_uint(out, id);
        }
    }
}

gale_err_t gale_encode_ack(gale_buf_t *out, gale_enc_t enc, uint64_t id)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    head(out, enc, "ack", true, id, 0);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_pong(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    head(out, enc, "pong", has_id, id, 0);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_err(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                           gale_err_t code, const char *msg)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    head(out, enc, "err", has_id, id, 2);
    if (enc == GALE_ENC_JSON) {
        jkey(out, "code");
        jstr(out, gale_err_name(code));
        jkey(out, "msg");
        jstr(out, msg);
        gale__buf_put(out, '}');
    } else {
        gale__mp_put_cstr(out, "code");
        gale__mp_put_cstr(out, gale_err_name(code));
        gale__mp_put_cstr(out, "msg");
        gale__mp_put_cstr(out, msg);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_err_topic(gale_buf_t *out, gale_enc_t enc, gale_err_t code,
                                 const char *topic, size_t topic_len, const char *msg)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || (topic == NULL && topic_len > 0))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic = "";
    head(out, enc, "err", false, 0, 3);
    if (enc == GALE_ENC_JSON) {
        jkey(out, "code");
        jstr(out, gale_err_name(code));
        jkey(out, "topic");
        gale__json_put_str(out, (const uint8_t *)topic, topic_len);
        jkey(out, "msg");
        jstr(out, msg);
        gale__buf_put(out, '}');
    } else {
        gale__mp_put_cstr(out, "code");
        gale__mp_put_cstr(out, gale_err_name(code));
        gale__mp_put_cstr(out, "topic");
        gale__mp_put_str(out, topic, topic_len);
        gale__mp_put_cstr(out, "msg");
        gale__mp_put_cstr(out, msg);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_convert_data(gale_buf_t *out, gale_enc_t to, gale_enc_t from, const uint8_t *data,
                             size_t len)
{
    size_t start = out->len;
    gale_err_t err;
    if (!gale__valid_enc(to) || !gale__valid_enc(from))
        return GALE_ERR_INTERNAL;
    if (data == NULL && len > 0)
        return GALE_ERR_BAD_REQUEST;
    if (to == from) {
        if (len == 0)
            return GALE_ERR_BAD_REQUEST; /* no value at all */
        gale_buf_append(out, data, len);
        err = GALE_OK;
    } else if (from == GALE_ENC_JSON) {
        err = gale__json_to_msgpack(out, data, len);
    } else {
        err = gale__msgpack_to_json(out, data, len);
    }
    return gale__encode_finish(out, start, err);
}

/* The value of a data field: "data":D, or "bin":B64 for a top-level bin to JSON. */
static bool json_bin(gale_enc_t enc, gale_enc_t data_enc, const uint8_t *data, size_t data_len)
{
    return enc == GALE_ENC_JSON && data_enc == GALE_ENC_MSGPACK && data != NULL && data_len > 0 &&
           data[0] >= 0xc4 && data[0] <= 0xc6;
}

/* "ep":E,"off":N (in JSON each preceded by a comma). */
static void put_pos(gale_buf_t *out, gale_enc_t enc, const gale_pos_t *pos)
{
    if (enc == GALE_ENC_JSON) {
        jkey(out, "ep");
        gale__json_put_str(out, (const uint8_t *)pos->ep, pos->ep_len);
        jkey(out, "off");
        gale__buf_put_u64(out, pos->off);
    } else {
        gale__mp_put_cstr(out, "ep");
        gale__mp_put_str(out, pos->ep, pos->ep_len);
        gale__mp_put_cstr(out, "off");
        gale__mp_put_uint(out, pos->off);
    }
}

gale_err_t gale_encode_msg_pos(gale_buf_t *out, gale_enc_t enc, const char *topic, size_t topic_len,
                               const gale_pos_t *pos, gale_enc_t data_enc, const uint8_t *data,
                               size_t data_len)
{
    return gale_encode_msg_reply(out, enc, topic, topic_len, pos, NULL, 0, data_enc, data,
                                 data_len);
}

gale_err_t gale_encode_msg_reply(gale_buf_t *out, gale_enc_t enc, const char *topic,
                                 size_t topic_len, const gale_pos_t *pos, const char *reply,
                                 size_t reply_len, gale_enc_t data_enc, const uint8_t *data,
                                 size_t data_len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || !gale__valid_enc(data_enc))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic_len = 0, topic = "";
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, "{\"op\":\"msg\",\"topic\":");
        gale__json_put_str(out, (const uint8_t *)topic, topic_len);
        if (pos)
            put_pos(out, enc, pos);
        if (reply) {
            jkey(out, "reply");
            gale__json_put_str(out, (const uint8_t *)reply, reply_len);
        }
        gale__buf_puts(out, json_bin(enc, data_enc, data, data_len) ? ",\"bin\":" : ",\"data\":");
    } else {
        gale__buf_put(out, (uint8_t)(0x83 + (pos ? 2 : 0) + (reply != NULL)));
        gale__mp_put_cstr(out, "op");
        gale__mp_put_cstr(out, "msg");
        gale__mp_put_cstr(out, "topic");
        gale__mp_put_str(out, topic, topic_len);
        if (pos)
            put_pos(out, enc, pos);
        if (reply) {
            gale__mp_put_cstr(out, "reply");
            gale__mp_put_str(out, reply, reply_len);
        }
        gale__mp_put_cstr(out, "data");
    }
    gale_err_t err = gale_convert_data(out, enc, data_enc, data, data_len);
    if (err == GALE_OK && enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_msg(gale_buf_t *out, gale_enc_t enc, const char *topic, size_t topic_len,
                           gale_enc_t data_enc, const uint8_t *data, size_t data_len)
{
    return gale_encode_msg_pos(out, enc, topic, topic_len, NULL, data_enc, data, data_len);
}

gale_err_t gale_encode_ack_ext(gale_buf_t *out, gale_enc_t enc, uint64_t id,
                               const gale_ack_ext_t *x)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    size_t more = (x->recovered >= 0) + (x->pos ? 2 : x->has_off) + x->dup;
    head(out, enc, "ack", true, id, more);
    if (enc == GALE_ENC_JSON) {
        if (x->recovered >= 0)
            gale__buf_puts(out, x->recovered ? ",\"recovered\":true" : ",\"recovered\":false");
        if (x->pos) {
            put_pos(out, enc, x->pos);
        } else if (x->has_off) {
            jkey(out, "off");
            gale__buf_put_u64(out, x->off);
        }
        if (x->dup)
            gale__buf_puts(out, ",\"dup\":true");
        gale__buf_put(out, '}');
    } else {
        if (x->recovered >= 0) {
            gale__mp_put_cstr(out, "recovered");
            gale__buf_put(out, x->recovered ? 0xc3 : 0xc2);
        }
        if (x->pos) {
            put_pos(out, enc, x->pos);
        } else if (x->has_off) {
            gale__mp_put_cstr(out, "off");
            gale__mp_put_uint(out, x->off);
        }
        if (x->dup) {
            gale__mp_put_cstr(out, "dup");
            gale__buf_put(out, 0xc3);
        }
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_hist_begin(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                  const gale_pos_t *pos, size_t count)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    head(out, enc, "hist", has_id, id, (pos ? 2 : 1) + 1);
    if (enc == GALE_ENC_JSON) {
        if (pos)
            put_pos(out, enc, pos);
        else
            gale__buf_puts(out, ",\"off\":0");
        gale__buf_puts(out, ",\"msgs\":[");
    } else {
        if (pos) {
            put_pos(out, enc, pos);
        } else {
            gale__mp_put_cstr(out, "off");
            gale__mp_put_uint(out, 0);
        }
        gale__mp_put_cstr(out, "msgs");
        gale__mp_put_array_hdr(out, count);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_hist_item(gale_buf_t *out, gale_enc_t enc, bool first, uint64_t off,
                                 gale_enc_t data_enc, const uint8_t *data, size_t data_len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc) || !gale__valid_enc(data_enc))
        return GALE_ERR_INTERNAL;
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, first ? "{\"off\":" : ",{\"off\":");
        gale__buf_put_u64(out, off);
        gale__buf_puts(out, json_bin(enc, data_enc, data, data_len) ? ",\"bin\":" : ",\"data\":");
    } else {
        gale__buf_put(out, 0x82);
        gale__mp_put_cstr(out, "off");
        gale__mp_put_uint(out, off);
        gale__mp_put_cstr(out, "data");
    }
    gale_err_t err = gale_convert_data(out, enc, data_enc, data, data_len);
    if (err == GALE_OK && enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_hist_end(gale_buf_t *out, gale_enc_t enc)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (enc == GALE_ENC_JSON)
        gale__buf_puts(out, "]}");
    return gale__encode_finish(out, start, GALE_OK);
}

/* ---- presence ---- */

gale_err_t gale_encode_member(gale_buf_t *out, const char *conn, size_t conn_len, const char *user,
                              size_t user_len, const uint8_t *info_json, size_t info_len)
{
    size_t start = out->len;
    if (info_json != NULL && info_len == 0)
        return GALE_ERR_INTERNAL;
    if (conn == NULL)
        conn = "", conn_len = 0;
    gale__buf_puts(out, "{\"conn\":");
    gale__json_put_str(out, (const uint8_t *)conn, conn_len);
    if (user != NULL) {
        jkey(out, "user");
        gale__json_put_str(out, (const uint8_t *)user, user_len);
    }
    if (info_json != NULL) {
        jkey(out, "info");
        gale_buf_append(out, info_json, info_len);
    }
    gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

/* True if member_json[0..len) is one well-formed JSON object, without surrounding whitespace. */
static bool member_valid(const uint8_t *member_json, size_t len)
{
    return member_json != NULL && len >= 2 && member_json[0] == '{' &&
           member_json[len - 1] == '}' && gale_json_valid(member_json, len, GALE_MAX_DEPTH);
}

/* The "topic" and "count" fields of a presence answer or count-only message, after head(). */
static void put_topic_count(gale_buf_t *out, gale_enc_t enc, const char *topic, size_t topic_len,
                            uint64_t count)
{
    if (enc == GALE_ENC_JSON) {
        jkey(out, "topic");
        gale__json_put_str(out, (const uint8_t *)topic, topic_len);
        jkey(out, "count");
        gale__buf_put_u64(out, count);
    } else {
        gale__mp_put_cstr(out, "topic");
        gale__mp_put_str(out, topic, topic_len);
        gale__mp_put_cstr(out, "count");
        gale__mp_put_uint(out, count);
    }
}

gale_err_t gale_encode_presence_begin(gale_buf_t *out, gale_enc_t enc, bool has_id, uint64_t id,
                                      const char *topic, size_t topic_len, uint64_t count,
                                      size_t nmembers)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic = "", topic_len = 0;
    head(out, enc, "presence", has_id, id, 3);
    put_topic_count(out, enc, topic, topic_len, count);
    if (enc == GALE_ENC_JSON) {
        gale__buf_puts(out, ",\"members\":[");
    } else {
        gale__mp_put_cstr(out, "members");
        gale__mp_put_array_hdr(out, nmembers);
    }
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_presence_member(gale_buf_t *out, gale_enc_t enc, bool first,
                                       const uint8_t *member_json, size_t len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (!member_valid(member_json, len))
        return GALE_ERR_BAD_REQUEST;
    gale_err_t err = GALE_OK;
    if (enc == GALE_ENC_JSON) {
        if (!first)
            gale__buf_put(out, ',');
        gale_buf_append(out, member_json, len);
    } else {
        err = gale__json_to_msgpack(out, member_json, len);
    }
    return gale__encode_finish(out, start, err);
}

gale_err_t gale_encode_presence_end(gale_buf_t *out, gale_enc_t enc)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (enc == GALE_ENC_JSON)
        gale__buf_puts(out, "]}");
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_presence_count(gale_buf_t *out, gale_enc_t enc, const char *topic,
                                      size_t topic_len, uint64_t count)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (topic == NULL)
        topic = "", topic_len = 0;
    head(out, enc, "presence", false, 0, 2);
    put_topic_count(out, enc, topic, topic_len, count);
    if (enc == GALE_ENC_JSON)
        gale__buf_put(out, '}');
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_encode_presence_event(gale_buf_t *out, gale_enc_t enc, bool join, const char *topic,
                                      size_t topic_len, const uint8_t *member_json, size_t len)
{
    size_t start = out->len;
    if (!gale__valid_enc(enc))
        return GALE_ERR_INTERNAL;
    if (!member_valid(member_json, len))
        return GALE_ERR_BAD_REQUEST;
    if (topic == NULL)
        topic = "", topic_len = 0;
    const char *op = join ? "join" : "leave";
    if (enc == GALE_ENC_JSON) {
        /* The member's members follow "topic": splice them in after its '{'. */
        size_t i = 1;
        while (i < len && (member_json[i] == ' ' || member_json[i] == '\t' ||
                           member_json[i] == '\n' || member_json[i] == '\r'))
            i++;
        head(out, enc, op, false, 0, 0);
        jkey(out, "topic");
        gale__json_put_str(out, (const uint8_t *)topic, topic_len);
        if (member_json[i] != '}')
            gale__buf_put(out, ',');
        gale_buf_append(out, member_json + i, len - i);
        return gale__encode_finish(out, start, GALE_OK);
    }
    /* MessagePack: the member as a map, whose pairs follow "op" and "topic". */
    gale_buf_t m;
    gale__mphead_t h;
    gale_buf_init(&m, 0);
    gale_err_t err = gale__json_to_msgpack(&m, member_json, len);
    if (err == GALE_OK && (!gale__mp_head(m.data, m.len, &h) || h.kind != GALE__MP_MAP))
        err = GALE_ERR_INTERNAL; /* the JSON was an object: cannot happen */
    if (err == GALE_OK) {
        head(out, enc, op, false, 0, 1 + (size_t)h.n);
        gale__mp_put_cstr(out, "topic");
        gale__mp_put_str(out, topic, topic_len);
        gale_buf_append(out, m.data + h.hdr, m.len - h.hdr);
    }
    gale_buf_free(&m);
    return gale__encode_finish(out, start, err);
}
