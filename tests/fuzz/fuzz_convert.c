/*
 * Fuzzes conversion of `data` between encodings. The first byte picks the
 * input encoding (even: JSON, odd: MessagePack); the rest is the value.
 * Valid input must convert, invalid input must be refused, every output
 * must be well-formed, and JSON -> MessagePack -> JSON reaches a fixpoint
 * after one round (J2 == J3 below).
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void convert(gale_buf_t *out, gale_enc_t to, gale_enc_t from, const uint8_t *p, size_t n)
{
    gale_buf_init(out, 0);
    CHECK(gale_convert_data(out, to, from, p, n) == GALE_OK);
    if (to == GALE_ENC_JSON)
        CHECK(gale_json_valid(out->data, out->len, GALE_MAX_DEPTH));
    else
        CHECK(gale_msgpack_prescan(out->data, out->len, GALE_MAX_DEPTH));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    gale_enc_t from = (data[0] & 1) ? GALE_ENC_MSGPACK : GALE_ENC_JSON;
    gale_enc_t to = from == GALE_ENC_JSON ? GALE_ENC_MSGPACK : GALE_ENC_JSON;
    const uint8_t *v = data + 1;
    size_t n = size - 1;
    bool valid;
    if (from == GALE_ENC_JSON) {
        valid = gale_json_valid(v, n, GALE_MAX_DEPTH);
    } else {
        /* An ext becomes a JSON object: one more level, which must fit too. */
        unsigned jd = 0;
        valid = gale_msgpack_prescan(v, n, GALE_MAX_DEPTH);
        CHECK(valid == gale__mp_scan(v, n, GALE_MAX_DEPTH, NULL, &jd));
        valid = valid && jd <= GALE_MAX_DEPTH;
    }
    gale_buf_t first;
    gale_buf_init(&first, 5);
    gale_err_t e = gale_convert_data(&first, to, from, v, n);
    if (!valid) {
        CHECK(e == GALE_ERR_BAD_REQUEST);
        CHECK(first.len == 5);
        gale_buf_free(&first);
        return 0;
    }
    if (e == GALE_ERR_BAD_REQUEST && from == GALE_ENC_MSGPACK) {
        CHECK(has_container_key(v, n)); /* over the output budget */
        CHECK(first.len == 5);
        gale_buf_free(&first);
        return 0;
    }
    CHECK(e == GALE_OK);
    const uint8_t *fp = gale_buf_payload(&first);
    size_t fn = gale_buf_payload_len(&first);
    if (to == GALE_ENC_JSON)
        CHECK(gale_json_valid(fp, fn, GALE_MAX_DEPTH));
    else
        CHECK(gale_msgpack_prescan(fp, fn, GALE_MAX_DEPTH));

    /* J1: the value in JSON; then J2 = JSON(MP(J1)), J3 = JSON(MP(J2)). */
    gale_buf_t j1, m1, j2, m2, j3;
    if (to == GALE_ENC_JSON)
        convert(&j1, GALE_ENC_JSON, GALE_ENC_JSON, fp, fn);
    else
        convert(&j1, GALE_ENC_JSON, GALE_ENC_MSGPACK, fp, fn);
    convert(&m1, GALE_ENC_MSGPACK, GALE_ENC_JSON, j1.data, j1.len);
    convert(&j2, GALE_ENC_JSON, GALE_ENC_MSGPACK, m1.data, m1.len);
    convert(&m2, GALE_ENC_MSGPACK, GALE_ENC_JSON, j2.data, j2.len);
    convert(&j3, GALE_ENC_JSON, GALE_ENC_MSGPACK, m2.data, m2.len);
    CHECK(buf_eq(&j2, &j3));
    gale_buf_free(&first);
    gale_buf_free(&j1);
    gale_buf_free(&m1);
    gale_buf_free(&j2);
    gale_buf_free(&m2);
    gale_buf_free(&j3);
    return 0;
}
