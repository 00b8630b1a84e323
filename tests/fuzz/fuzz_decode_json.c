/*
 * Fuzzes gale_decode_request on JSON frames: no crash, the result agrees with
 * gale_json_valid, accepted requests are valid UTF-8 (the broker's check of
 * text frames relies on it) and re-encode to well-formed output. The same
 * bytes, as the payload of a client's close frame, go through
 * gale_close_payload_check, checked against the rule written out here.
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_close_payload(const uint8_t *data, size_t size)
{
    uint16_t code = 0;
    const char *why = gale_close_payload_check(data, size, &code);
    unsigned c = size >= 2 ? (unsigned)data[0] << 8 | data[1] : GALE_CLOSE_NO_STATUS;
    bool code_ok = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || (c >= 3000 && c <= 4999);
    bool valid = size == 0 || (size >= 2 && size <= GALE_CONTROL_MAX && code_ok &&
                               gale_utf8_valid(data + 2, size - 2));
    CHECK((why == NULL) == valid);
    CHECK(code == (size >= 2 && size <= GALE_CONTROL_MAX ? c : GALE_CLOSE_NO_STATUS));
    CHECK(why == NULL || (strlen(why) > 0 && strlen(why) <= GALE_CONTROL_MAX - 2));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_request_t r;
    const char *why = NULL;
    gale_err_t e = gale_decode_request(GALE_ENC_JSON, data, size, &r, &why);
    bool valid = gale_json_valid(data, size, GALE_MAX_DEPTH);
    if (e == GALE_OK) {
        CHECK(valid);
        CHECK(gale_utf8_valid(data, size));
        check_request(GALE_ENC_JSON, data, size, &r);
    } else {
        check_error(GALE_ENC_JSON, &r, e, why);
        if (!valid)
            CHECK(e == GALE_ERR_BAD_REQUEST);
    }
    check_close_payload(data, size);
    return 0;
}
