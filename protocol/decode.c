/*
 * gale_decode_request: one client frame, JSON or MessagePack, into a
 * gale_request_t whose pointers reference the frame. The checks and their
 * order are those listed in gale_protocol.h; the reasons are static strings.
 */
#include "internal.h"

/* The four fields gale reads, wherever they appear among the members. */
enum { F_OP, F_ID, F_TOPIC, F_DATA, F_COUNT };
static const char *const FIELD_NAMES[F_COUNT] = {"op", "id", "topic", "data"};

/* A field in the encoding's own terms, collected before any semantic check. */
typedef struct {
    bool present;
    bool is_str;
    const uint8_t *str; /* str payload (JSON: raw contents between the quotes) */
    size_t str_len;
    bool str_escaped; /* JSON only */
    bool id_ok;       /* the value is an integer 0..GALE_ID_MAX */
    uint64_t id;
    const uint8_t *val; /* the whole value */
    size_t val_len;
} field_t;

typedef struct {
    field_t f[F_COUNT];
    bool dup;
} fields_t;

/* ---- JSON ---- */

/* A JSON id: a plain integer literal (digits only) <= GALE_ID_MAX. */
static bool json_id(const uint8_t *s, size_t n, uint64_t *id)
{
    if (n == 0 || n > 16)
        return false; /* 2^53-1 has 16 digits */
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v > GALE_ID_MAX)
        return false;
    *id = v;
    return true;
}

static bool json_member(const gale__jmember_t *m, void *arg)
{
    fields_t *fs = arg;
    for (int k = 0; k < F_COUNT; k++) {
        if (!gale__json_str_eq(m->key, m->key_len, m->key_escaped, FIELD_NAMES[k]))
            continue;
        field_t *f = &fs->f[k];
        if (f->present)
            fs->dup = true;
        f->present = true;
        f->val = m->val;
        f->val_len = m->val_len;
        f->is_str = m->kind == GALE__J_STRING;
        if (f->is_str) {
            f->str = m->val + 1;
            f->str_len = m->val_len - 2;
            f->str_escaped = memchr(f->str, '\\', f->str_len) != NULL;
        }
        f->id_ok = m->kind == GALE__J_NUMBER && json_id(m->val, m->val_len, &f->id);
        break;
    }
    return true;
}

/* ---- MessagePack ---- */

/* Returns NULL on success, else the reason. */
static const char *msgpack_fields(const uint8_t *buf, size_t len, fields_t *fs)
{
    unsigned json_depth;
    if (!gale__mp_scan(buf, len, GALE_MAX_DEPTH, NULL, &json_depth))
        return "malformed MessagePack";
    if (json_depth > GALE_MAX_DEPTH)
        return "ext nested too deeply"; /* its JSON form would be too deep */
    gale__mphead_t h;
    gale__mp_head(buf, len, &h);
    if (h.kind != GALE__MP_MAP)
        return "message is not a map";
    size_t pos = h.hdr;
    for (uint64_t i = 0; i < h.n; i++) {
        gale__mphead_t k;
        gale__mp_head(buf + pos, len - pos, &k);
        if (k.kind != GALE__MP_STR)
            return "map key is not a string";
        const uint8_t *key = buf + pos + k.hdr;
        size_t key_len = (size_t)k.n;
        pos += k.hdr + key_len;
        const uint8_t *val = buf + pos;
        size_t val_len = gale__mp_skip(val, len - pos);
        pos += val_len;
        for (int idx = 0; idx < F_COUNT; idx++) {
            if (key_len != strlen(FIELD_NAMES[idx]) || memcmp(key, FIELD_NAMES[idx], key_len) != 0)
                continue;
            field_t *f = &fs->f[idx];
            if (f->present)
                fs->dup = true;
            f->present = true;
            f->val = val;
            f->val_len = val_len;
            gale__mphead_t v;
            gale__mp_head(val, val_len, &v);
            f->is_str = v.kind == GALE__MP_STR;
            if (f->is_str) {
                f->str = val + v.hdr;
                f->str_len = (size_t)v.n;
            }
            f->id_ok = (v.kind == GALE__MP_UINT && v.u <= GALE_ID_MAX) ||
                       (v.kind == GALE__MP_INT && v.i >= 0 && (uint64_t)v.i <= GALE_ID_MAX);
            f->id = v.kind == GALE__MP_UINT ? v.u : (uint64_t)v.i;
            break;
        }
    }
    return NULL;
}

/* ---- common ---- */

static bool str_is(const field_t *f, const char *lit)
{
    return gale__json_str_eq(f->str, f->str_len, f->str_escaped, lit);
}

gale_err_t gale_decode_request(gale_enc_t enc, const uint8_t *buf, size_t len, gale_request_t *req,
                               const char **why)
{
    const char *unused;
    fields_t fs;
    if (why == NULL)
        why = &unused;
    memset(req, 0, sizeof(*req));
    memset(&fs, 0, sizeof(fs));
    if (buf == NULL || len == 0) {
        *why = "empty message";
        return GALE_ERR_BAD_REQUEST;
    }
    if (enc == GALE_ENC_JSON) {
        int r = gale__json_object(buf, len, GALE_MAX_DEPTH, json_member, &fs);
        if (r <= 0) {
            *why = r < 0 ? "message is not an object" : "malformed JSON";
            return GALE_ERR_BAD_REQUEST;
        }
    } else if (enc == GALE_ENC_MSGPACK) {
        const char *e = msgpack_fields(buf, len, &fs);
        if (e != NULL) {
            *why = e;
            return GALE_ERR_BAD_REQUEST;
        }
    } else {
        *why = "unknown encoding";
        return GALE_ERR_BAD_REQUEST;
    }
    if (fs.dup) {
        *why = "duplicate field";
        return GALE_ERR_BAD_REQUEST;
    }
    const field_t *op = &fs.f[F_OP], *id = &fs.f[F_ID], *topic = &fs.f[F_TOPIC];
    const field_t *data = &fs.f[F_DATA];
    if (id->present && id->id_ok) {
        req->has_id = true;
        req->id = id->id;
    }
    if (!op->present || !op->is_str) {
        *why = op->present ? "op is not a string" : "op is missing";
        return GALE_ERR_BAD_REQUEST;
    }
    if (id->present && !id->id_ok) {
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
