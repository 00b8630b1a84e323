/*
 * frame: one complete, unmasked WebSocket server frame (header + payload),
 * refcounted and shared by every connection it is queued on. A published
 * message is encoded once per encoding into a frame; each subscriber's queue
 * holds a reference, never a copy.
 *
 * A frame lives in the allocation its payload was encoded into: the encoder
 * writes into a gale_buf_t whose headroom (FRAME_HEADROOM) holds the frame_t
 * and room for the largest header, so finishing a frame copies nothing.
 */
#ifndef GALE_FRAME_H
#define GALE_FRAME_H

#include "gale_protocol.h"

#include <stddef.h>
#include <stdint.h>

typedef struct frame {
    uint32_t refs; /* FRAME_STATIC: never freed */
    uint32_t off;  /* offset of the first header byte from the frame_t */
    size_t len;    /* header + payload bytes */
    uint8_t qos;   /* an MQTT PUBLISH (conn.h CONN_FMT_MQTT): the most QoS its subscribers get,
                      0 for a QoS 0 publish of an MQTT client, else 1; 0 for other frames */
} frame_t;

#define FRAME_STATIC UINT32_MAX
/** Largest server frame header: 2 bytes + 64-bit length. */
#define FRAME_MAX_HEADER 10
/** Headroom to pass to gale_buf_init for a buffer that will become a frame. */
#define FRAME_HEADROOM (sizeof(frame_t) + FRAME_MAX_HEADER)

/** WebSocket opcodes the broker sends itself. */
enum { FRAME_TEXT = 0x1, FRAME_BINARY = 0x2, FRAME_CLOSE = 0x8, FRAME_PING = 0x9 };

/**
 * Turns a buffer initialised with FRAME_HEADROOM and holding an encoded
 * payload into a frame with one reference, taking ownership of the buffer's
 * storage (the buffer is left empty). Returns NULL if the buffer had run out
 * of memory (its storage is freed).
 */
frame_t *frame_finish(gale_buf_t *b, int opcode);

/**
 * An answer or event encoded into b (initialised with FRAME_HEADROOM) for a connection of
 * encoding enc: when e is GALE_OK, frame_finish as a text frame (JSON) or a binary one
 * (MessagePack); otherwise b is freed. NULL when e was an error or memory ran out.
 */
frame_t *frame_built(gale_buf_t *b, gale_err_t e, gale_enc_t enc);

/** The frame's bytes: header then payload. */
static inline const uint8_t *frame_bytes(const frame_t *f)
{
    return (const uint8_t *)f + f->off;
}

/** The frame's payload (after its header) and its length. */
static inline const uint8_t *frame_payload(const frame_t *f, size_t *len)
{
    const uint8_t *p = frame_bytes(f);
    size_t h = (p[1] & 0x7f) == 127 ? 10 : (p[1] & 0x7f) == 126 ? 4 : 2;
    *len = f->len - h;
    return p + h;
}

static inline frame_t *frame_ref(frame_t *f)
{
    if (f->refs != FRAME_STATIC)
        f->refs++;
    return f;
}

/** Drops one reference; frees the frame with the last. NULL is ignored. */
void frame_unref(frame_t *f);

/** Writes a server frame header for a payload of `len` bytes ending at `end`; returns its size. */
size_t frame_write_header(uint8_t *end, int opcode, size_t len);

/**
 * A new CLOSE frame with status `code` and a reason (truncated to fit the
 * 125-byte control frame limit), one reference; NULL on allocation failure.
 */
frame_t *frame_close(uint16_t code, const char *reason);

/** A shared, never-freed PING frame with the 4-byte payload "gale" (keepalive). */
frame_t *frame_ping(void);

#endif
