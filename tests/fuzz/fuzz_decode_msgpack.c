/*
 * Fuzzes gale_decode_request on MessagePack frames: no crash or huge
 * allocation, the result agrees with gale_msgpack_prescan, and accepted
 * requests re-encode to well-formed output (converting data to JSON).
 */
#include "fuzz_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gale_request_t r;
    const char *why = NULL;
    gale_err_t e = gale_decode_request(GALE_ENC_MSGPACK, data, size, &r, &why);
    bool valid = gale_msgpack_prescan(data, size, GALE_MAX_DEPTH);
    if (e == GALE_OK) {
        CHECK(valid);
        check_request(GALE_ENC_MSGPACK, data, size, &r);
    } else {
        check_error(GALE_ENC_MSGPACK, &r, e, why);
        if (!valid)
            CHECK(e == GALE_ERR_BAD_REQUEST);
    }
    return 0;
}
