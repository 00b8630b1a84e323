/*
 * gale_decode_reply: one broker-to-client frame (hello, msg, ack, pong, err),
 * JSON or MessagePack, into a gale_reply_t whose pointers reference the
 * frame. For clients: the broker is trusted to follow docs/PROTOCOL.md, but the
 * frame is still parsed strictly and bounded like any other input.
 */
#include "internal.h"

enum { R_OP, R_ID, R_TOPIC, R_DATA, R_BIN, R_CODE, R_MSG, R_V, R_MAX_MSG, R_COUNT };
static const char *const REPLY_FIELDS[R_COUNT] = {"op",   "id",  "topic", "data",   "bin",
                                                  "code", "msg", "v",     "max_msg"};

static bool str_is(const gale__field_t *f, const char *lit)
{
    return gale__json_str_eq(f->str, f->str_len, f->str_escaped, lit);
}

static uint32_t hex4(const uint8_t *s)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = s[i];
        v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/*
 * Length of the longest prefix of the (validated) raw JSON string contents
 * s[0..n) that ends neither inside an escape sequence (a surrogate pair counts
 * as one) nor inside a UTF-8 character, and unescapes to at most cap bytes.
 */
static size_t json_cut(const uint8_t *s, size_t n, size_t cap)
{
    size_t i = 0, out = 0;
    while (i < n) {
        size_t step = 1, produced = 1;
        if (s[i] == '\\' && s[i + 1] == 'u') {
            uint32_t cp = hex4(s + i + 2);
            step = 6;
            produced = cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
            if (cp >= 0xD800 && cp <= 0xDBFF && n - i >= 12 && s[i + 6] == '\\' &&
                s[i + 7] == 'u') {
                uint32_t lo = hex4(s + i + 8);
                if (lo >= 0xDC00 && lo <= 0xDFFF)
                    step = 12, produced = 4;
            }
        } else if (s[i] == '\\') {
            step = 2;
        } else if (s[i] >= 0x80) {
            uint32_t cp;
            step = produced = gale__utf8_next(s + i, n - i, &cp);
        }
        if (out + produced > cap)
            break;
        i += step;
        out += produced;
    }
    return i;
}

/*
 * Points *out and *out_len at string field f, unescaping a JSON string into
 * dst[0..cap) when it has escapes (truncated to what fits). Returns true if
 * the whole string is there.
 */
static bool take_str(const gale__field_t *f, const char **out, size_t *out_len, char *dst,
                     size_t cap)
{
    if (!f->str_escaped) {
        *out = (const char *)f->str;
        *out_len = f->str_len;
        return true;
    }
    size_t raw = json_cut(f->str, f->str_len, cap);
    *out_len = gale__json_unescape((uint8_t *)dst, f->str, raw, true);
    *out = dst;
    return raw == f->str_len;
}

gale_err_t gale_decode_reply(gale_enc_t enc, const uint8_t *buf, size_t len, gale_reply_t *r,
                             const char **why)
{
    const char *unused;
    gale__field_t fs[R_COUNT];
    if (why == NULL)
        why = &unused;
    memset(r, 0, sizeof(*r));
    memset(fs, 0, sizeof(fs));
    if (buf == NULL || len == 0) {
        *why = "empty message";
        return GALE_ERR_BAD_REQUEST;
    }
    if (enc == GALE_ENC_JSON) {
        int res = gale__fields_json(buf, len, GALE_MAX_DEPTH + 1, REPLY_FIELDS, R_COUNT, fs);
        if (res <= 0) {
            *why = res < 0 ? "message is not an object" : "malformed JSON";
            return GALE_ERR_BAD_REQUEST;
        }
    } else if (enc == GALE_ENC_MSGPACK) {
        const char *e = gale__mp_scan(buf, len, GALE_MAX_DEPTH + 1, NULL, NULL)
                            ? gale__fields_msgpack(buf, len, REPLY_FIELDS, R_COUNT, fs, false)
                            : "malformed MessagePack";
        if (e != NULL) {
            *why = e;
            return GALE_ERR_BAD_REQUEST;
        }
    } else {
        *why = "unknown encoding";
        return GALE_ERR_BAD_REQUEST;
    }
    const gale__field_t *op = &fs[R_OP], *id = &fs[R_ID];
    if (!op->present || !op->is_str) {
        *why = op->present ? "op is not a string" : "op is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    if (id->present && id->is_uint && id->u <= GALE_ID_MAX) {
        r->has_id = true;
        r->id = id->u;
    }
    if (str_is(op, "msg")) {
        const gale__field_t *topic = &fs[R_TOPIC], *data = &fs[R_DATA], *bin = &fs[R_BIN];
        if (!topic->present || !topic->is_str) {
            *why = "msg without a string topic";
            return GALE_ERR_BAD_REQUEST;
        }
        if (!take_str(topic, &r->topic, &r->topic_len, r->_topic_buf, sizeof(r->_topic_buf))) {
            *why = "msg topic too long";
            return GALE_ERR_BAD_REQUEST;
        }
        if (data->present) {
            r->data = data->val;
            r->data_len = data->val_len;
            r->bin = enc == GALE_ENC_MSGPACK && data->val[0] >= 0xc4 && data->val[0] <= 0xc6;
        } else if (enc == GALE_ENC_JSON && bin->present && bin->is_str) {
            r->data = bin->val;
            r->data_len = bin->val_len;
            r->bin = true;
        } else {
            *why = "msg without data";
            return GALE_ERR_BAD_REQUEST;
        }
        r->op = GALE_REPLY_MSG;
    } else if (str_is(op, "ack")) {
        if (!r->has_id) {
            *why = "ack without a valid id";
            return GALE_ERR_BAD_REQUEST;
        }
        r->op = GALE_REPLY_ACK;
    } else if (str_is(op, "pong")) {
        r->op = GALE_REPLY_PONG;
    } else if (str_is(op, "err")) {
        const gale__field_t *code = &fs[R_CODE], *msg = &fs[R_MSG];
        if (!code->present || !code->is_str) {
            *why = "err without a string code";
            return GALE_ERR_BAD_REQUEST;
        }
        take_str(code, &r->code_name, &r->code_name_len, r->_code_buf, sizeof(r->_code_buf));
        r->code = GALE_ERR_INTERNAL;
        for (int c = 1; c < GALE_ERR_COUNT; c++) {
            const char *name = gale_err_name((gale_err_t)c);
            if (strlen(name) == r->code_name_len && !memcmp(name, r->code_name, r->code_name_len))
                r->code = (gale_err_t)c;
        }
        if (msg->present && msg->is_str)
            r->msg_truncated =
                !take_str(msg, &r->msg, &r->msg_len, r->_msg_buf, sizeof(r->_msg_buf));
        else
            r->msg = "", r->msg_len = 0;
        r->op = GALE_REPLY_ERR;
    } else if (str_is(op, "hello")) {
        const gale__field_t *v = &fs[R_V], *max_msg = &fs[R_MAX_MSG];
        r->v = v->present && v->is_uint ? v->u : 0;
        r->max_msg = max_msg->present && max_msg->is_uint ? max_msg->u : 0;
        r->op = GALE_REPLY_HELLO;
    } else {
        r->op = GALE_REPLY_UNKNOWN; /* receivers ignore what they do not know */
    }
    return GALE_OK;
}
