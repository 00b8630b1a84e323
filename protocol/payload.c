/*
 * Payloads of protocols that carry bytes (MQTT, NATS) as gale data and back: bytes that are
 * one JSON value travel as that JSON, anything else as a MessagePack bin, so a gale client
 * gets `data` for the first and `bin` (JSON) or a bin (MessagePack) for the second, and the
 * bytes come out unchanged on the other side.
 */
#include "internal.h"

gale_enc_t gale_payload_to_data(const uint8_t *p, size_t len, gale_buf_t *scratch,
                                const uint8_t **data, size_t *data_len)
{
    if (len && gale_json_valid(p, len, GALE_MAX_DEPTH - 1)) {
        *data = p;
        *data_len = len;
        return GALE_ENC_JSON;
    }
    uint8_t head[5];
    size_t h;
    if (len <= 0xff) {
        head[0] = 0xc4;
        head[1] = (uint8_t)len;
        h = 2;
    } else if (len <= 0xffff) {
        head[0] = 0xc5;
        head[1] = (uint8_t)(len >> 8);
        head[2] = (uint8_t)len;
        h = 3;
    } else {
        head[0] = 0xc6;
        for (int i = 0; i < 4; i++)
            head[1 + i] = (uint8_t)((uint64_t)len >> (24 - 8 * i));
        h = 5;
    }
    size_t start = scratch->len;
    gale_buf_append(scratch, head, h);
    if (len)
        gale_buf_append(scratch, p, len);
    *data = scratch->oom ? NULL : scratch->data + start;
    *data_len = scratch->oom ? 0 : h + len;
    return GALE_ENC_MSGPACK;
}

/* The bytes of data when it is exactly one MessagePack bin; NULL otherwise. */
static const uint8_t *bin_bytes(const uint8_t *d, size_t len, size_t *n)
{
    size_t h;
    uint64_t v = 0;
    if (len < 2)
        return NULL;
    switch (d[0]) {
    case 0xc4:
        h = 2;
        break;
    case 0xc5:
        h = 3;
        break;
    case 0xc6:
        h = 5;
        break;
    default:
        return NULL;
    }
    if (len < h)
        return NULL;
    for (size_t i = 1; i < h; i++)
        v = (v << 8) | d[i];
    if (v != len - h)
        return NULL;
    *n = (size_t)v;
    return d + h;
}

gale_err_t gale_payload_from_data(gale_buf_t *out, gale_enc_t enc, const uint8_t *data, size_t len)
{
    size_t n;
    const uint8_t *bin = enc == GALE_ENC_MSGPACK ? bin_bytes(data, len, &n) : NULL;
    if (enc == GALE_ENC_JSON || bin) {
        size_t start = out->len;
        if ((bin ? n : len) && !gale_buf_append(out, bin ? bin : data, bin ? n : len)) {
            out->len = start;
            return GALE_ERR_INTERNAL;
        }
        return GALE_OK;
    }
    return gale_convert_data(out, GALE_ENC_JSON, enc, data, len);
}
