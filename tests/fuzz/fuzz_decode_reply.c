/*
 * Fuzzes the client side's decoder of broker frames, gale_decode_reply, on the
 * same bytes as JSON and as MessagePack: no crash, every span it reports lies
 * in the frame (or in the reply's own buffers, within their size), the fields
 * of the additions (ep, off, recovered, dup) are consistent, and every `hist`
 * answer is walked to its end with gale_reply_hist_next, each item's data
 * being one well-formed value that converts to JSON as `gale sub` prints it.
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

static void check_reply(gale_enc_t enc, const uint8_t *in, size_t len)
{
    gale_reply_t r;
    const char *why = NULL;
    gale_err_t e = gale_decode_reply(enc, in, len, &r, &why);
    if (e != GALE_OK) {
        CHECK(e == GALE_ERR_BAD_REQUEST && why != NULL && *why);
        return;
    }
    CHECK(r.op >= GALE_REPLY_UNKNOWN && r.op <= GALE_REPLY_HIST);
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
        break;
    default:
        break;
    }
    if (r.op != GALE_REPLY_HIST)
        CHECK(r.msgs == NULL && r.msgs_len == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_reply(GALE_ENC_JSON, data, size);
    check_reply(GALE_ENC_MSGPACK, data, size);
    return 0;
}
