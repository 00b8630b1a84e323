/*
 * gale_decode_request: one client frame, JSON or MessagePack, into a
 * gale_request_t whose pointers reference the frame. The checks and their
 * order are those listed in gale_protocol.h; the reasons are static strings.
 */
#include "internal.h"

/* The fields gale reads, wherever they appear among the members. */
enum {
    F_OP,
    F_ID,
    F_TOPIC,
    F_DATA,
    F_SINCE,
    F_LIMIT,
    F_MID,
    F_PRESENCE,
    F_INFO,
    F_TOKEN,
    F_REPLY,
    F_COUNT
};
static const char *const FIELD_NAMES[F_COUNT] = {
    "op", "id", "topic", "data", "since", "limit", "mid", "presence", "info", "token", "reply"};

/* The members of `since`. */
enum { S_EP, S_OFF, S_COUNT };
static const char *const SINCE_NAMES[S_COUNT] = {"ep", "off"};

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

/*
 * A string field into *out: its bytes, or a JSON string with escapes unescaped into
 * dst[0..cap). Returns false when it does not fit (or a JSON escape is a lone surrogate).
 */
static bool take_str(const gale__field_t *f, char *dst, size_t cap, const char **out,
                     size_t *out_len)
{
    if (!f->str_escaped) {
        *out = (const char *)f->str;
        *out_len = f->str_len;
        return true;
    }
    if (f->str_len > 6 * cap)
        return false;                /* every escape yields at least one byte per 6 */
    uint8_t tmp[6 * GALE_TOPIC_MAX]; /* the longest string taken: a reply topic */
    if (f->str_len > sizeof(tmp))
        return false;
    size_t n = gale__json_unescape(tmp, f->str, f->str_len, false);
    if (n == SIZE_MAX || n > cap)
        return false;
    memcpy(dst, tmp, n);
    *out = dst;
    *out_len = n;
    return true;
}

/* `since` of a sub: an object/map of a string ep and an integer off >= 0. */
static const char *decode_since(gale_enc_t enc, const gale__field_t *f, gale_request_t *req)
{
    gale__field_t s[S_COUNT];
    static const char bad[] = "since is not an object of a string ep and an integer off >= 0";
    if (enc == GALE_ENC_JSON) {
        if (f->val[0] != '{' ||
            gale__fields_json(f->val, f->val_len, GALE_MAX_DEPTH, SINCE_NAMES, S_COUNT, s) <= 0)
            return bad;
    } else if (gale__fields_msgpack(f->val, f->val_len, SINCE_NAMES, S_COUNT, s, false)) {
        return bad;
    }
    if (!s[S_EP].present || !s[S_EP].is_str || !s[S_OFF].present || !s[S_OFF].is_uint ||
        s[S_EP].dup || s[S_OFF].dup)
        return bad;
    req->has_since = true;
    req->since.off = s[S_OFF].u;
    if (!take_str(&s[S_EP], req->_ep_buf, sizeof(req->_ep_buf), &req->since.ep,
                  &req->since.ep_len) ||
        req->since.ep_len > GALE_EP_MAX) {
        /* Well-formed, but longer than any epoch: it names none. */
        req->since.ep = NULL;
        req->since.ep_len = GALE_EP_MAX + 1;
    }
    return NULL;
}

static bool str_is(const gale__field_t *f, const char *lit)
{
    return gale__json_str_eq(f->str, f->str_len, f->str_escaped, lit);
}

/*
 * The `token` of a refresh: a string of 1..GALE_TOKEN_MAX bytes, taken as it is in the
 * frame. A JSON token with escapes is refused rather than unescaped: a JWT (base64url and
 * dots) never needs one, and the request stays small (no 8 KiB buffer in it).
 */
static const char *decode_token(const gale__field_t *f, gale_request_t *req)
{
    if (!f->present)
        return "token is missing";
    if (!f->is_str || f->str_escaped || f->str_len == 0 || f->str_len > GALE_TOKEN_MAX)
        return "token is not a string of 1 to 8192 bytes without escapes";
    req->token = (const char *)f->str;
    req->token_len = f->str_len;
    return NULL;
}

/* A boolean field: 1 true, 0 false, -1 not a boolean. */
static int take_bool(gale_enc_t enc, const gale__field_t *f)
{
    if (enc == GALE_ENC_JSON) {
        if (f->val_len == 4 && !memcmp(f->val, "true", 4))
            return 1;
        if (f->val_len == 5 && !memcmp(f->val, "false", 5))
            return 0;
        return -1;
    }
    return f->val[0] == 0xc3 ? 1 : f->val[0] == 0xc2 ? 0 : -1;
}

/* True if field f holds an object (JSON) or a map (MessagePack). */
static bool is_map(gale_enc_t enc, const gale__field_t *f)
{
    if (enc == GALE_ENC_JSON)
        return f->val[0] == '{';
    gale__mphead_t h;
    return gale__mp_head(f->val, f->val_len, &h) && h.kind == GALE__MP_MAP;
}

/* The presence fields of a sub: `presence` (a boolean) and `info` (an object/map), each on a
 * topic only. */
static const char *decode_presence(gale_enc_t enc, const gale__field_t *fs, gale_request_t *req)
{
    const gale__field_t *presence = &fs[F_PRESENCE], *info = &fs[F_INFO];
    if (presence->present) {
        int v = take_bool(enc, presence);
        if (v < 0)
            return "presence is not a boolean";
        if (v && req->is_pattern)
            return "presence needs a topic, not a pattern";
        req->presence = v;
    }
    if (info->present) {
        if (!is_map(enc, info))
            return "info is not an object";
        if (req->is_pattern)
            return "info needs a topic, not a pattern";
        req->info = info->val;
        req->info_len = info->val_len;
    }
    return NULL;
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
    req->data_enc = enc;
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
    else if (str_is(op, "hist"))
        req->op = GALE_OP_HIST;
    else if (str_is(op, "presence"))
        req->op = GALE_OP_PRESENCE;
    else if (str_is(op, "refresh"))
        req->op = GALE_OP_REFRESH;
    else {
        *why = "unknown op";
        return GALE_ERR_UNKNOWN_OP;
    }
    if (req->op == GALE_OP_PING)
        return GALE_OK;
    if (req->op == GALE_OP_REFRESH)
        return (*why = decode_token(&fs[F_TOKEN], req)) == NULL ? GALE_OK : GALE_ERR_BAD_REQUEST;
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
    bool concrete =
        req->op == GALE_OP_PUB || req->op == GALE_OP_HIST || req->op == GALE_OP_PRESENCE;
    bool ok = concrete ? gale_topic_valid(req->topic, req->topic_len)
                       : gale_pattern_valid(req->topic, req->topic_len, &wild);
    if (!ok) {
        *why = !concrete || !gale_pattern_valid(req->topic, req->topic_len, NULL) ? "invalid topic"
               : req->op == GALE_OP_PUB  ? "cannot publish to a pattern"
               : req->op == GALE_OP_HIST ? "history is kept per topic, not per pattern"
                                         : "presence is kept per topic, not per pattern";
        return GALE_ERR_BAD_TOPIC;
    }
    req->is_pattern = wild;
    switch (req->op) {
    case GALE_OP_SUB:
        if (fs[F_SINCE].present) {
            if (wild) {
                *why = "since needs a topic, not a pattern";
                return GALE_ERR_BAD_REQUEST;
            }
            if ((*why = decode_since(enc, &fs[F_SINCE], req)) != NULL)
                return GALE_ERR_BAD_REQUEST;
        }
        if ((*why = decode_presence(enc, fs, req)) != NULL) {
            req->presence = false;
            req->info = NULL;
            req->info_len = 0;
            return GALE_ERR_BAD_REQUEST;
        }
        return GALE_OK;
    case GALE_OP_HIST:
        if (!fs[F_LIMIT].present)
            return GALE_OK;
        if (!fs[F_LIMIT].is_uint) {
            *why = "limit is not an integer >= 0";
            return GALE_ERR_BAD_REQUEST;
        }
        req->has_limit = true;
        req->limit = fs[F_LIMIT].u;
        return GALE_OK;
    case GALE_OP_PUB:
        break;
    default:
        return GALE_OK;
    }
    if (!data->present) {
        *why = "data is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    if (fs[F_MID].present) {
        const gale__field_t *mid = &fs[F_MID];
        if (!mid->is_str ||
            !take_str(mid, req->_mid_buf, sizeof(req->_mid_buf), &req->mid, &req->mid_len) ||
            req->mid_len == 0 || req->mid_len > GALE_MID_MAX) {
            req->mid = NULL;
            req->mid_len = 0;
            *why = "mid is not a string of 1 to 64 bytes";
            return GALE_ERR_BAD_REQUEST;
        }
    }
    if (fs[F_REPLY].present) {
        const gale__field_t *r = &fs[F_REPLY];
        if (!r->is_str ||
            !take_str(r, req->_reply_buf, sizeof(req->_reply_buf), &req->reply, &req->reply_len) ||
            !gale_topic_valid(req->reply, req->reply_len)) {
            req->reply = NULL;
            req->reply_len = 0;
            *why = "reply is not a topic";
            return GALE_ERR_BAD_TOPIC;
        }
    }
    req->data = data->val;
    req->data_len = data->val_len;
    return GALE_OK;
}
