/*
 * The payload of a WebSocket close frame a peer sent (RFC 6455 5.5.1, 7.4):
 * empty, or a 2-byte status code in network byte order followed by a reason
 * in UTF-8, 125 bytes at most in all (a control frame's limit).
 *
 * Which codes a peer may put on the wire is a choice: see
 * docs/PROTOCOL-NOTES.md "WebSocket close frames".
 */
#include "internal.h"

bool gale_close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999)
        return true; /* libraries and frameworks (IANA), private use */
    /* 1004 reserved; 1005, 1006, 1015 never sent; 1012-1014 and 1016-2999: see the notes. */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011);
}

const char *gale_close_payload_check(const uint8_t *p, size_t len, uint16_t *code)
{
    uint16_t unused;
    if (code == NULL)
        code = &unused;
    *code = GALE_CLOSE_NO_STATUS;
    if (len > GALE_CONTROL_MAX)
        return "close payload over 125 bytes";
    if (len == 0)
        return NULL;
    if (len == 1)
        return "close payload of 1 byte";
    *code = (uint16_t)(p[0] << 8 | p[1]);
    if (!gale_close_code_valid(*code))
        return "close code not allowed on the wire";
    if (!gale_utf8_valid(p + 2, len - 2))
        return "close reason is not UTF-8";
    return NULL;
}
