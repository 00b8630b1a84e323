#include "frame.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

size_t frame_write_header(uint8_t *end, int opcode, size_t len)
{
    uint8_t *h;
    if (len < 126) {
        h = end - 2;
        h[1] = (uint8_t)len;
    } else if (len <= 0xffff) {
        h = end - 4;
        h[1] = 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
    } else {
        h = end - 10;
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
    }
    h[0] = (uint8_t)(0x80 | opcode); /* FIN, no RSV bits, unmasked */
    return (size_t)(end - h);
}

frame_t *frame_finish(gale_buf_t *b, int opcode)
{
    if (b->oom || !b->data) {
        gale_buf_free(b);
        return NULL;
    }
    size_t plen = gale_buf_payload_len(b);
    size_t hlen = frame_write_header(gale_buf_payload(b), opcode, plen);
    frame_t *f = (frame_t *)b->data;
    f->refs = 1;
    f->qos = 0;
    f->off = (uint32_t)(b->headroom - hlen);
    f->len = hlen + plen;
    b->data = NULL;
    b->len = b->cap = 0;
    return f;
}

frame_t *frame_built(gale_buf_t *b, gale_err_t e, gale_enc_t enc)
{
    if (e != GALE_OK) {
        gale_buf_free(b);
        return NULL;
    }
    return frame_finish(b, enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
}

void frame_unref(frame_t *f)
{
    if (!f || f->refs == FRAME_STATIC)
        return;
    if (--f->refs == 0)
        free(f);
}

frame_t *frame_close(uint16_t code, const char *reason)
{
    size_t rlen = strnlen(reason, 123); /* control payloads are at most 125 bytes */
    frame_t *f = malloc(sizeof(*f) + 2 + 2 + rlen);
    if (!f)
        return NULL;
    uint8_t *p = (uint8_t *)(f + 1);
    p[0] = 0x80 | FRAME_CLOSE;
    p[1] = (uint8_t)(2 + rlen);
    p[2] = (uint8_t)(code >> 8);
    p[3] = (uint8_t)code;
    memcpy(p + 4, reason, rlen);
    f->refs = 1;
    f->off = sizeof(*f);
    f->len = 4 + rlen;
    return f;
}

/* The payload is not empty: lws 4.1.6 raises no RECEIVE_PONG for an empty pong. */
struct ping_frame {
    frame_t f;
    uint8_t bytes[6];
};
static const struct ping_frame ping = {{FRAME_STATIC, offsetof(struct ping_frame, bytes), 6, 0},
                                       {0x80 | FRAME_PING, 4, 'g', 'a', 'l', 'e'}};

frame_t *frame_ping(void)
{
    /* Read-only memory: frame_ref/frame_unref never write a FRAME_STATIC frame. */
    return (frame_t *)&ping.f;
}
