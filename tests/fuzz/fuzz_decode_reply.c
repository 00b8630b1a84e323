/*
 * Fuzzes the client side's decoder of broker frames, gale_decode_reply, on the
 * same bytes as JSON and as MessagePack: no crash, every span it reports lies
 * in the frame (or in the reply's own buffers, within their size), the fields
 * of the additions (ep, off, recovered, dup; count, members, conn, user, info)
 * are consistent, and every `hist` answer is walked to its end with
 * gale_reply_hist_next, each item's data being one well-formed value that
 * converts to JSON as `gale sub` prints it. Every `presence` answer is walked
 * with gale_reply_member_next; each member found, and the member of every
 * join/leave event, is written again by the broker's encoders
 * (gale_encode_member, gale_encode_presence_event and the answer's) in both
 * encodings, which must decode back to the same conn, user and info.
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* True if p[0..n) lies within base[0..len). */
static bool within(const void *p, size_t n, const void *base, size_t len)
{
    const uint8_t *q = p, *b = base;
    return q >= b && n <= len && q + n <= b + len;
}

/* A string field: in the frame, or unescaped into buf[0..cap). */
static void check_str(const char *s, size_t n, const uint8_t *in, size_t len, const char *buf,
                      size_t cap)
{
    CHECK(s != NULL);
    CHECK(within(s, n, in, len) || within(s, n, buf, cap));
}

/* A data value as a client prints it: converted to JSON, or a base64 JSON string. */
static void check_data(gale_enc_t enc, const uint8_t *d, size_t n, bool bin)
{
    CHECK(n > 0);
    if (enc == GALE_ENC_JSON) {
        CHECK(gale_json_valid(d, n, GALE_MAX_DEPTH + 3));
        if (bin)
            CHECK(d[0] == '"');
        return;
    }
    CHECK(gale_msgpack_prescan(d, n, GALE_MAX_DEPTH + 3));
    CHECK(bin == (d[0] >= 0xc4 && d[0] <= 0xc6));
    gale_buf_t out;
    gale_buf_init(&out, 0);
    gale_err_t e = gale_convert_data(&out, GALE_ENC_JSON, GALE_ENC_MSGPACK, d, n);
    if (e == GALE_OK)
        CHECK(gale_json_valid(out.data, out.len, GALE__DEPTH_CAP));
    else
        CHECK(e == GALE_ERR_BAD_REQUEST && out.len == 0);
    gale_buf_free(&out);
}

static void check_hist(gale_enc_t enc, const gale_reply_t *r, const uint8_t *in, size_t len)
{
    CHECK(r->msgs != NULL && r->msgs_len > 0 && within(r->msgs, r->msgs_len, in, len));
    size_t pos = 0, prev = 0;
    gale_hist_item_t it;
    /* Each item takes at least one byte of msgs: the walk is bounded by its length. */
    for (size_t k = 0; k <= r->msgs_len; k++) {
        int res = gale_reply_hist_next(enc, r, &pos, &it);
        CHECK(res >= -1 && res <= 1);
        if (res <= 0) {
            if (res == 0) {
                CHECK(gale_reply_hist_next(enc, r, &pos, &it) == 0);
            }
            return;
        }
        CHECK(pos > prev && pos <= r->msgs_len);
        prev = pos;
        CHECK(within(it.data, it.data_len, r->msgs, r->msgs_len));
        check_data(enc, it.data, it.data_len, it.bin);
    }
    CHECK(!"gale_reply_hist_next did not end");
}

/* A value as sent (info): one well-formed value of the encoding, nested as a frame allows. */
static void check_value(gale_enc_t enc, const uint8_t *v, size_t n)
{
    CHECK(n > 0);
    if (enc == GALE_ENC_JSON)
        CHECK(gale_json_valid(v, n, GALE_MAX_DEPTH + 3));
    else
        CHECK(gale_msgpack_prescan(v, n, GALE_MAX_DEPTH + 3));
}

/* True if a[0..an) equals b[0..bn). */
static bool same(const void *a, size_t an, const void *b, size_t bn)
{
    return an == bn && (an == 0 || memcmp(a, b, an) == 0);
}

/*
 * A member (conn, user, info in encoding enc) written again as the broker does: as member
 * JSON, then as a join event and a one-member presence answer in both encodings, each of
 * which decodes back to the same fields.
 */
static void check_member_roundtrip(gale_enc_t enc, const char *conn, size_t conn_len, bool has_user,
                                   const char *user, size_t user_len, bool user_truncated,
                                   const uint8_t *info, size_t info_len)
{
    /* Strings that would change on the way: cut ones, ill-formed UTF-8 (becomes U+FFFD). */
    if (user_truncated || !gale_utf8_valid((const uint8_t *)conn, conn_len) ||
        (has_user && !gale_utf8_valid((const uint8_t *)user, user_len)))
        return;
    if (conn_len > 64 || (has_user && user_len > 256))
        return; /* escaped by the encoder, they might no longer fit the decoder's buffers */
    gale_buf_t ij, member, out;
    gale_buf_init(&ij, 0);
    gale_buf_init(&member, 0);
    gale_buf_init(&out, 0);
    if (info != NULL) {
        gale__mphead_t h;
        if (enc == GALE_ENC_JSON ? info[0] != '{'
                                 : !gale__mp_head(info, info_len, &h) || h.kind != GALE__MP_MAP)
            goto out; /* the broker only sends objects/maps */
        if (gale_convert_data(&ij, GALE_ENC_JSON, enc, info, info_len) != GALE_OK)
            goto out; /* over the conversion's output budget */
    }
    CHECK(gale_encode_member(&member, conn, conn_len, has_user ? user : NULL, user_len,
                             info ? ij.data : NULL, ij.len) == GALE_OK);
    CHECK(gale_json_valid(member.data, member.len, GALE__DEPTH_CAP));
    bool fits = gale_json_valid(member.data, member.len, GALE_MAX_DEPTH);
    for (int e = 0; e < GALE_ENC_COUNT; e++) {
        gale_enc_t to = (gale_enc_t)e;
        gale_reply_t back;
        out.len = 0;
        gale_err_t err =
            gale_encode_presence_event(&out, to, true, "t", 1, member.data, member.len);
        if (!fits) {
            /* Deeper than a member may be: refused, nothing written. */
            CHECK(err == GALE_ERR_BAD_REQUEST && out.len == 0);
            continue;
        }
        CHECK(err == GALE_OK);
        CHECK(gale_decode_reply(to, out.data, out.len, &back, NULL) == GALE_OK);
        CHECK(back.op == GALE_REPLY_JOIN && same(back.topic, back.topic_len, "t", 1));
        CHECK(same(back.conn, back.conn_len, conn, conn_len));
        CHECK(back.has_user == has_user && !back.user_truncated);
        if (has_user)
            CHECK(same(back.user, back.user_len, user, user_len));
        CHECK((back.info != NULL) == (info != NULL));
        if (info != NULL && to == GALE_ENC_JSON)
            CHECK(same(back.info, back.info_len, ij.data, ij.len));

        out.len = 0;
        CHECK(gale_encode_presence_begin(&out, to, true, 1, "t", 1, 1, 1) == GALE_OK);
        CHECK(gale_encode_presence_member(&out, to, true, member.data, member.len) == GALE_OK);
        CHECK(gale_encode_presence_end(&out, to) == GALE_OK);
        CHECK(gale_decode_reply(to, out.data, out.len, &back, NULL) == GALE_OK);
        CHECK(back.op == GALE_REPLY_PRESENCE && back.has_count && back.count == 1);
        size_t pos = 0;
        gale_member_t m;
        CHECK(gale_reply_member_next(to, &back, &pos, &m) == 1);
        CHECK(same(m.conn, m.conn_len, conn, conn_len));
        CHECK(m.has_user == has_user && !m.user_truncated);
        if (has_user)
            CHECK(same(m.user, m.user_len, user, user_len));
        CHECK((m.info != NULL) == (info != NULL));
        if (info != NULL && to == GALE_ENC_JSON)
            CHECK(same(m.info, m.info_len, ij.data, ij.len));
        CHECK(gale_reply_member_next(to, &back, &pos, &m) == 0);
    }
out:
    gale_buf_free(&ij);
    gale_buf_free(&member);
    gale_buf_free(&out);
}

static void check_members(gale_enc_t enc, const gale_reply_t *r, const uint8_t *in, size_t len)
{
    size_t pos = 0, prev = 0;
    gale_member_t m;
    if (r->members == NULL) {
        CHECK(r->members_len == 0 && gale_reply_member_next(enc, r, &pos, &m) == 0);
        return;
    }
    CHECK(r->members_len > 0 && within(r->members, r->members_len, in, len));
    /* Each member takes at least one byte of members: the walk is bounded by its length. */
    for (size_t k = 0; k <= r->members_len; k++) {
        int res = gale_reply_member_next(enc, r, &pos, &m);
        CHECK(res >= -1 && res <= 1);
        if (res <= 0) {
            if (res == 0)
                CHECK(gale_reply_member_next(enc, r, &pos, &m) == 0);
            return;
        }
        CHECK(pos > prev && pos <= r->members_len);
        prev = pos;
        check_str(m.conn, m.conn_len, r->members, r->members_len, m._conn_buf, sizeof(m._conn_buf));
        if (m.has_user)
            check_str(m.user, m.user_len, r->members, r->members_len, m._user_buf,
                      sizeof(m._user_buf));
        else
            CHECK(m.user == NULL && m.user_len == 0 && !m.user_truncated);
        CHECK((m.info == NULL) == (m.info_len == 0));
        if (m.info) {
            CHECK(within(m.info, m.info_len, r->members, r->members_len));
            check_value(enc, m.info, m.info_len);
        }
        check_member_roundtrip(enc, m.conn, m.conn_len, m.has_user, m.user, m.user_len,
                               m.user_truncated, m.info, m.info_len);
    }
    CHECK(!"gale_reply_member_next did not end");
}

static void check_reply(gale_enc_t enc, const uint8_t *in, size_t len)
{
    gale_reply_t r;
    const char *why = NULL;
    gale_err_t e = gale_decode_reply(enc, in, len, &r, &why);
    if (e != GALE_OK) {
        CHECK(e == GALE_ERR_BAD_REQUEST && why != NULL && *why);
        return;
    }
    CHECK(r.op >= GALE_REPLY_UNKNOWN && r.op <= GALE_REPLY_LEAVE);
    if (r.has_id)
        CHECK(r.id <= GALE_ID_MAX);
    CHECK(r.recovered >= -1 && r.recovered <= 1);
    if (r.op != GALE_REPLY_ACK)
        CHECK(r.recovered == -1 && !r.dup);
    bool pos_op = r.op == GALE_REPLY_MSG || r.op == GALE_REPLY_ACK || r.op == GALE_REPLY_HIST;
    if (!pos_op)
        CHECK(!r.has_ep && !r.has_off);
    if (r.has_ep)
        check_str(r.ep, r.ep_len, in, len, r._ep_buf, sizeof(r._ep_buf));
    else
        CHECK(r.ep == NULL && r.ep_len == 0);
    if (!r.has_off)
        CHECK(r.off == 0);
    switch (r.op) {
    case GALE_REPLY_MSG:
        check_str(r.topic, r.topic_len, in, len, r._topic_buf, sizeof(r._topic_buf));
        CHECK(within(r.data, r.data_len, in, len));
        check_data(enc, r.data, r.data_len, r.bin);
        break;
    case GALE_REPLY_ACK:
        CHECK(r.has_id);
        break;
    case GALE_REPLY_HIST:
        check_hist(enc, &r, in, len);
        break;
    case GALE_REPLY_ERR:
        check_str(r.code_name, r.code_name_len, in, len, r._code_buf, sizeof(r._code_buf));
        CHECK(r.code > GALE_OK && r.code < GALE_ERR_COUNT);
        if (r.topic) /* the subscription it is about (an err about a dropped one) */
            check_str(r.topic, r.topic_len, in, len, r._topic_buf, sizeof(r._topic_buf));
        else
            CHECK(r.topic_len == 0);
        break;
    case GALE_REPLY_PRESENCE:
        check_str(r.topic, r.topic_len, in, len, r._topic_buf, sizeof(r._topic_buf));
        check_members(enc, &r, in, len);
        break;
    case GALE_REPLY_JOIN:
    case GALE_REPLY_LEAVE:
        check_str(r.topic, r.topic_len, in, len, r._topic_buf, sizeof(r._topic_buf));
        check_str(r.conn, r.conn_len, in, len, r._conn_buf, sizeof(r._conn_buf));
        if (r.has_user)
            check_str(r.user, r.user_len, in, len, r._user_buf, sizeof(r._user_buf));
        if (r.info) {
            CHECK(within(r.info, r.info_len, in, len));
            check_value(enc, r.info, r.info_len);
        }
        check_member_roundtrip(enc, r.conn, r.conn_len, r.has_user, r.user, r.user_len,
                               r.user_truncated, r.info, r.info_len);
        break;
    case GALE_REPLY_HELLO:
        if (r.conn)
            check_str(r.conn, r.conn_len, in, len, r._conn_buf, sizeof(r._conn_buf));
        break;
    default:
        break;
    }
    if (r.op != GALE_REPLY_HIST)
        CHECK(r.msgs == NULL && r.msgs_len == 0);
    if (r.op != GALE_REPLY_PRESENCE)
        CHECK(!r.has_count && r.count == 0 && r.members == NULL && r.members_len == 0);
    if (!r.has_count)
        CHECK(r.count == 0);
    bool event = r.op == GALE_REPLY_JOIN || r.op == GALE_REPLY_LEAVE;
    if (!event && r.op != GALE_REPLY_HELLO)
        CHECK(r.conn == NULL && r.conn_len == 0);
    if (!event)
        CHECK(!r.has_user && r.info == NULL && r.info_len == 0);
    if (!r.has_user)
        CHECK(r.user == NULL && r.user_len == 0 && !r.user_truncated);
    CHECK((r.info == NULL) == (r.info_len == 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_reply(GALE_ENC_JSON, data, size);
    check_reply(GALE_ENC_MSGPACK, data, size);
    return 0;
}
