/*
 * Fuzzes gale_decode_request on JSON frames: no crash, the result agrees with
 * gale_json_valid, and accepted requests re-encode to well-formed output.
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_request_t r;
    const char *why = NULL;
    gale_err_t e = gale_decode_request(GALE_ENC_JSON, data, size, &r, &why);
    bool valid = gale_json_valid(data, size, GALE_MAX_DEPTH);
    if (e == GALE_OK) {
        CHECK(valid);
        check_request(GALE_ENC_JSON, data, size, &r);
    } else {
        check_error(GALE_ENC_JSON, &r, e, why);
        if (!valid)
            CHECK(e == GALE_ERR_BAD_REQUEST);
    }
    return 0;
}
