/*
 * gale_decode_reply: one broker-to-client frame (hello, msg, ack, pong, err,
 * hist, presence, join, leave), JSON or MessagePack, into a gale_reply_t whose
 * pointers reference the frame; gale_reply_hist_next walks the messages of a
 * hist answer, gale_reply_member_next the members of a presence answer. For
 * clients: the broker is trusted to follow docs/PROTOCOL.md, but the frame is
 * still parsed strictly and bounded like any other input.
 */
#include "internal.h"

#include "gale_json.h"

enum {
    R_OP,
    R_ID,
    R_TOPIC,
    R_DATA,
    R_BIN,
    R_CODE,
    R_MSG,
    R_V,
    R_MAX_MSG,
    R_EP,
    R_OFF,
    R_RECOVERED,
    R_DUP,
    R_MSGS,
    R_MEMBER_COUNT,
    R_MEMBERS,
    R_CONN,
    R_USER,
    R_INFO,
    R_COUNT
};
static const char *const REPLY_FIELDS[R_COUNT] = {
    "op",  "id",        "topic", "data", "bin",   "code",    "msg",  "v",    "max_msg", "ep",
    "off", "recovered", "dup",   "msgs", "count", "members", "conn", "user", "info"};

/* The members of one item of a hist answer's msgs. */
enum { I_OFF, I_DATA, I_BIN, I_COUNT };
static const char *const ITEM_FIELDS[I_COUNT] = {"off", "data", "bin"};

/* The fields of a member of a presence answer (and of a join/leave event). */
enum { M_CONN, M_USER, M_INFO, M_COUNT };
static const char *const MEMBER_FIELDS[M_COUNT] = {"conn", "user", "info"};

/*
 * Nesting accepted in a frame: a msg's data is one level below the top-level
 * object, a hist item's data three (msgs array, item object), as is a presence
 * member's info (members array, member object); one more level is kept as
 * margin, as before the hist answer existed.
 */
#define REPLY_DEPTH (GALE_MAX_DEPTH + 3)

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

/* A boolean field: 1 true, 0 false, -1 absent or not a boolean. */
static int8_t take_bool(gale_enc_t enc, const gale__field_t *f)
{
    if (!f->present)
        return -1;
    if (enc == GALE_ENC_JSON) {
        if (f->val_len == 4 && !memcmp(f->val, "true", 4))
            return 1;
        if (f->val_len == 5 && !memcmp(f->val, "false", 5))
            return 0;
        return -1;
    }
    return f->val[0] == 0xc3 ? 1 : f->val[0] == 0xc2 ? 0 : -1;
}

/* True if field f holds an array value. */
static bool is_array(gale_enc_t enc, const gale__field_t *f)
{
    if (!f->present)
        return false;
    if (enc == GALE_ENC_JSON)
        return f->val[0] == '[';
    gale__mphead_t h;
    return gale__mp_head(f->val, f->val_len, &h) && h.kind == GALE__MP_ARRAY;
}

/* Where take_member puts a member's fields: gale_reply_t's (join, leave) or gale_member_t's. */
typedef struct {
    const char **conn;
    size_t *conn_len;
    char *conn_buf;
    size_t conn_cap;
    bool *has_user;
    const char **user;
    size_t *user_len;
    bool *user_truncated;
    char *user_buf;
    size_t user_cap;
    const uint8_t **info;
    size_t *info_len;
} member_out_t;

/* A designated initializer of member_out_t for gale_reply_t or gale_member_t p. */
#define MEMBER_OUT(p)                                                                              \
    {                                                                                              \
        .conn = &(p)->conn, .conn_len = &(p)->conn_len, .conn_buf = (p)->_conn_buf,                \
        .conn_cap = sizeof((p)->_conn_buf), .has_user = &(p)->has_user, .user = &(p)->user,        \
        .user_len = &(p)->user_len, .user_truncated = &(p)->user_truncated,                        \
        .user_buf = (p)->_user_buf, .user_cap = sizeof((p)->_user_buf), .info = &(p)->info,        \
        .info_len = &(p)->info_len                                                                 \
    }

/* A member's conn, user and info (f: fields M_CONN..); false when conn is not a string or does
 * not fit its buffer once unescaped. */
static bool take_member(const gale__field_t *f, const member_out_t *o)
{
    if (!f[M_CONN].present || !f[M_CONN].is_str ||
        !take_str(&f[M_CONN], o->conn, o->conn_len, o->conn_buf, o->conn_cap))
        return false;
    if (f[M_USER].present && f[M_USER].is_str) {
        *o->has_user = true;
        *o->user_truncated = !take_str(&f[M_USER], o->user, o->user_len, o->user_buf, o->user_cap);
    }
    if (f[M_INFO].present) {
        *o->info = f[M_INFO].val;
        *o->info_len = f[M_INFO].val_len;
    }
    return true;
}

/* The topic of a msg, presence, join or leave; NULL, or the reason it is missing or too long. */
static const char *take_topic(const gale__field_t *fs, gale_reply_t *r, const char *missing,
                              const char *too_long)
{
    const gale__field_t *topic = &fs[R_TOPIC];
    if (!topic->present || !topic->is_str)
        return missing;
    if (!take_str(topic, &r->topic, &r->topic_len, r->_topic_buf, sizeof(r->_topic_buf)))
        return too_long;
    return NULL;
}

/* The stream position fields "ep" and "off" of a msg, ack or hist. */
static void take_pos(const gale__field_t *fs, gale_reply_t *r)
{
    const gale__field_t *ep = &fs[R_EP], *off = &fs[R_OFF];
    if (ep->present && ep->is_str) {
        r->has_ep = true;
        take_str(ep, &r->ep, &r->ep_len, r->_ep_buf, sizeof(r->_ep_buf));
    }
    if (off->present && off->is_uint) {
        r->has_off = true;
        r->off = off->u;
    }
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
    r->recovered = -1;
    if (buf == NULL || len == 0) {
        *why = "empty message";
        return GALE_ERR_BAD_REQUEST;
    }
    if (enc == GALE_ENC_JSON) {
        int res = gale__fields_json(buf, len, REPLY_DEPTH, REPLY_FIELDS, R_COUNT, fs);
        if (res <= 0) {
            *why = res < 0 ? "message is not an object" : "malformed JSON";
            return GALE_ERR_BAD_REQUEST;
        }
    } else if (enc == GALE_ENC_MSGPACK) {
        const char *e = gale__mp_scan(buf, len, REPLY_DEPTH, NULL, NULL)
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
        const gale__field_t *data = &fs[R_DATA], *bin = &fs[R_BIN];
        if ((*why = take_topic(fs, r, "msg without a string topic", "msg topic too long")))
            return GALE_ERR_BAD_REQUEST;
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
        take_pos(fs, r);
        r->op = GALE_REPLY_MSG;
    } else if (str_is(op, "ack")) {
        if (!r->has_id) {
            *why = "ack without a valid id";
            return GALE_ERR_BAD_REQUEST;
        }
        take_pos(fs, r);
        r->recovered = take_bool(enc, &fs[R_RECOVERED]);
        r->dup = take_bool(enc, &fs[R_DUP]) == 1;
        r->op = GALE_REPLY_ACK;
    } else if (str_is(op, "hist")) {
        if (!is_array(enc, &fs[R_MSGS])) {
            *why = "hist without a msgs array";
            return GALE_ERR_BAD_REQUEST;
        }
        take_pos(fs, r);
        r->msgs = fs[R_MSGS].val;
        r->msgs_len = fs[R_MSGS].val_len;
        r->op = GALE_REPLY_HIST;
    } else if (str_is(op, "presence")) {
        const gale__field_t *count = &fs[R_MEMBER_COUNT], *members = &fs[R_MEMBERS];
        if ((*why =
                 take_topic(fs, r, "presence without a string topic", "presence topic too long")))
            return GALE_ERR_BAD_REQUEST;
        if (members->present && !is_array(enc, members)) {
            *why = "presence members is not an array";
            return GALE_ERR_BAD_REQUEST;
        }
        if (count->present && count->is_uint) {
            r->has_count = true;
            r->count = count->u;
        }
        if (members->present) {
            r->members = members->val;
            r->members_len = members->val_len;
        }
        r->op = GALE_REPLY_PRESENCE;
    } else if (str_is(op, "join") || str_is(op, "leave")) {
        bool join = str_is(op, "join");
        const gale__field_t mf[M_COUNT] = {fs[R_CONN], fs[R_USER], fs[R_INFO]};
        const member_out_t out = MEMBER_OUT(r);
        if ((*why = take_topic(
                 fs, r, join ? "join without a string topic" : "leave without a string topic",
                 join ? "join topic too long" : "leave topic too long")))
            return GALE_ERR_BAD_REQUEST;
        if (!take_member(mf, &out)) {
            *why = join ? "join without a string conn (or one too long)"
                        : "leave without a string conn (or one too long)";
            return GALE_ERR_BAD_REQUEST;
        }
        r->op = join ? GALE_REPLY_JOIN : GALE_REPLY_LEAVE;
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
        if (fs[R_TOPIC].present && fs[R_TOPIC].is_str &&
            !take_str(&fs[R_TOPIC], &r->topic, &r->topic_len, r->_topic_buf, sizeof(r->_topic_buf)))
            r->topic = NULL, r->topic_len = 0; /* too long for a topic: names none */
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
        if (fs[R_CONN].present && fs[R_CONN].is_str)
            take_str(&fs[R_CONN], &r->conn, &r->conn_len, r->_conn_buf, sizeof(r->_conn_buf));
        r->op = GALE_REPLY_HELLO;
    } else {
        r->op = GALE_REPLY_UNKNOWN; /* receivers ignore what they do not know */
    }
    return GALE_OK;
}

int gale_reply_hist_next(gale_enc_t enc, const gale_reply_t *r, size_t *pos, gale_hist_item_t *item)
{
    const uint8_t *el;
    size_t el_len;
    gale__field_t f[I_COUNT];
    memset(item, 0, sizeof(*item));
    if (r->msgs == NULL || *pos >= r->msgs_len)
        return 0;
    if (enc == GALE_ENC_JSON) {
        if (!gale_json_array_next(r->msgs, r->msgs_len, pos, &el, &el_len))
            return *pos >= r->msgs_len ? 0 : -1;
        if (gale__fields_json(el, el_len, REPLY_DEPTH, ITEM_FIELDS, I_COUNT, f) <= 0)
            return -1;
    } else if (enc == GALE_ENC_MSGPACK) {
        /* *pos is the offset of the next item in msgs (0: before the array header). */
        size_t p = *pos;
        if (p == 0) {
            gale__mphead_t h;
            if (!gale__mp_head(r->msgs, r->msgs_len, &h) || h.kind != GALE__MP_ARRAY)
                return -1;
            p = h.hdr;
            if (p >= r->msgs_len) {
                *pos = r->msgs_len;
                return 0;
            }
        }
        el = r->msgs + p;
        el_len = gale__mp_skip(el, r->msgs_len - p);
        if (el_len == 0 || el_len > r->msgs_len - p)
            return -1;
        *pos = p + el_len;
        if (gale__fields_msgpack(el, el_len, ITEM_FIELDS, I_COUNT, f, false) != NULL)
            return -1;
    } else {
        return -1;
    }
    if (!f[I_OFF].present || !f[I_OFF].is_uint)
        return -1;
    item->off = f[I_OFF].u;
    if (f[I_DATA].present) {
        item->data = f[I_DATA].val;
        item->data_len = f[I_DATA].val_len;
        item->bin = enc == GALE_ENC_MSGPACK && item->data[0] >= 0xc4 && item->data[0] <= 0xc6;
    } else if (enc == GALE_ENC_JSON && f[I_BIN].present && f[I_BIN].is_str) {
        item->data = f[I_BIN].val;
        item->data_len = f[I_BIN].val_len;
        item->bin = true;
    } else {
        return -1;
    }
    return 1;
}

int gale_reply_member_next(gale_enc_t enc, const gale_reply_t *r, size_t *pos, gale_member_t *m)
{
    const uint8_t *el;
    size_t el_len;
    gale__field_t f[M_COUNT];
    memset(m, 0, sizeof(*m));
    if (r->members == NULL || *pos >= r->members_len)
        return 0;
    if (enc == GALE_ENC_JSON) {
        if (!gale_json_array_next(r->members, r->members_len, pos, &el, &el_len))
            return *pos >= r->members_len ? 0 : -1;
        if (gale__fields_json(el, el_len, REPLY_DEPTH, MEMBER_FIELDS, M_COUNT, f) <= 0)
            return -1;
    } else if (enc == GALE_ENC_MSGPACK) {
        /* *pos is the offset of the next member in members (0: before the array header). */
        size_t p = *pos;
        if (p == 0) {
            gale__mphead_t h;
            if (!gale__mp_head(r->members, r->members_len, &h) || h.kind != GALE__MP_ARRAY)
                return -1;
            p = h.hdr;
            if (p >= r->members_len) {
                *pos = r->members_len;
                return 0;
            }
        }
        el = r->members + p;
        el_len = gale__mp_skip(el, r->members_len - p);
        if (el_len == 0 || el_len > r->members_len - p)
            return -1;
        *pos = p + el_len;
        if (gale__fields_msgpack(el, el_len, MEMBER_FIELDS, M_COUNT, f, false) != NULL)
            return -1;
    } else {
        return -1;
    }
    const member_out_t out = MEMBER_OUT(m);
    if (take_member(f, &out))
        return 1;
    memset(m, 0, sizeof(*m));
    return -1;
}
