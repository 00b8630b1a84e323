/*
 * gale_decode_request: one client frame, JSON or MessagePack, into a
 * gale_request_t whose pointers reference the frame. The checks and their
 * order are those listed in gale_protocol.h; the reasons are static strings.
 */
#include "internal.h"

/* The four fields gale reads, wherever they appear among the members. */
enum { F_OP, F_ID, F_TOPIC, F_DATA, F_COUNT };
static const char *const FIELD_NAMES[F_COUNT] = {"op", "id", "topic", "data"};

/* Returns NULL on success, else the reason. */
static const char *msgpack_fields(const uint8_t *buf, size_t len, gale__field_t *f)
{
    unsigned json_depth;
    if (!gale__mp_scan(buf, len, GALE_MAX_DEPTH, NULL, &json_depth))
        return "malformed MessagePack";
    if (json_depth > GALE_MAX_DEPTH)
        return "ext nested too deeply"; /* its JSON form would be too deep */
    return gale__fields_msgpack(buf, len, FIELD_NAMES, F_COUNT, f, true);
}

/* ---- common ---- */

static bool str_is(const gale__field_t *f, const char *lit)
{
    return gale__json_str_eq(f->str, f->str_len, f->str_escaped, lit);
}

gale_err_t gale_decode_request(gale_enc_t enc, const uint8_t *buf, size_t len, gale_request_t *req,
                               const char **why)
{
    const char *unused;
    gale__field_t fs[F_COUNT];
    if (why == NULL)
        why = &unused;
    memset(req, 0, sizeof(*req));
    memset(fs, 0, sizeof(fs));
    if (buf == NULL || len == 0) {
        *why = "empty message";
        return GALE_ERR_BAD_REQUEST;
    }
    if (enc == GALE_ENC_JSON) {
        int r = gale__fields_json(buf, len, GALE_MAX_DEPTH, FIELD_NAMES, F_COUNT, fs);
        if (r <= 0) {
            *why = r < 0 ? "message is not an object" : "malformed JSON";
            return GALE_ERR_BAD_REQUEST;
        }
    } else if (enc == GALE_ENC_MSGPACK) {
        const char *e = msgpack_fields(buf, len, fs);
        if (e != NULL) {
            *why = e;
            return GALE_ERR_BAD_REQUEST;
        }
    } else {
        *why = "unknown encoding";
        return GALE_ERR_BAD_REQUEST;
    }
    for (int k = 0; k < F_COUNT; k++) {
        if (fs[k].dup) {
            *why = "duplicate field";
            return GALE_ERR_BAD_REQUEST;
        }
    }
    const gale__field_t *op = &fs[F_OP], *id = &fs[F_ID], *topic = &fs[F_TOPIC];
    const gale__field_t *data = &fs[F_DATA];
    bool id_ok = id->is_uint && id->u <= GALE_ID_MAX;
    if (id->present && id_ok) {
        req->has_id = true;
        req->id = id->u;
    }
    if (!op->present || !op->is_str) {
        *why = op->present ? "op is not a string" : "op is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    if (id->present && !id_ok) {
        *why = "id is not an integer from 0 to 2^53-1";
        return GALE_ERR_BAD_REQUEST;
    }
    if (str_is(op, "pub"))
        req->op = GALE_OP_PUB;
    else if (str_is(op, "sub"))
        req->op = GALE_OP_SUB;
    else if (str_is(op, "unsub"))
        req->op = GALE_OP_UNSUB;
    else if (str_is(op, "ping"))
        req->op = GALE_OP_PING;
    else {
        *why = "unknown op";
        return GALE_ERR_UNKNOWN_OP;
    }
    if (req->op == GALE_OP_PING)
        return GALE_OK;
    if (!topic->present || !topic->is_str) {
        *why = topic->present ? "topic is not a string" : "topic is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    req->topic = (const char *)topic->str;
    req->topic_len = topic->str_len;
    if (topic->str_escaped) {
        /* Unescape into the request's own storage; lone surrogates are not a topic. */
        if (topic->str_len > 6 * GALE_TOPIC_MAX) {
            *why = "invalid topic";
            req->topic = NULL;
            req->topic_len = 0;
            return GALE_ERR_BAD_TOPIC;
        }
        uint8_t tmp[6 * GALE_TOPIC_MAX];
        size_t n = gale__json_unescape(tmp, topic->str, topic->str_len, false);
        if (n == SIZE_MAX || n > GALE_TOPIC_MAX) {
            *why = "invalid topic";
            req->topic = NULL;
            req->topic_len = 0;
            return GALE_ERR_BAD_TOPIC;
        }
        memcpy(req->_topic_buf, tmp, n);
        req->topic = req->_topic_buf;
        req->topic_len = n;
    }
    bool wild = false;
    bool ok = req->op == GALE_OP_PUB ? gale_topic_valid(req->topic, req->topic_len)
                                     : gale_pattern_valid(req->topic, req->topic_len, &wild);
    if (!ok) {
        *why = req->op == GALE_OP_PUB && gale_pattern_valid(req->topic, req->topic_len, NULL)
                   ? "cannot publish to a pattern"
                   : "invalid topic";
        return GALE_ERR_BAD_TOPIC;
    }
    req->is_pattern = wild;
    if (req->op != GALE_OP_PUB)
        return GALE_OK;
    if (!data->present) {
        *why = "data is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    req->data = data->val;
    req->data_len = data->val_len;
    return GALE_OK;
}
