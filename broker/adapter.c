#include "adapter.h"

#include "core.h"
#include "frame.h"
#include "log.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

const uint8_t *adapter_rx_take(adapter_rx_t *rx, const uint8_t *in, size_t len, size_t *n)
{
    if (!rx->len) {
        *n = len;
        return in;
    }
    if (rx->len + len > rx->cap) {
        size_t cap = rx->cap ? rx->cap : 256;
        while (cap < rx->len + len)
            cap *= 2;
        uint8_t *nb = realloc(rx->buf, cap);
        if (!nb)
            return NULL;
        rx->buf = nb;
        rx->cap = cap;
    }
    memcpy(rx->buf + rx->len, in, len);
    rx->len += len;
    *n = rx->len;
    return rx->buf;
}

bool adapter_rx_keep(adapter_rx_t *rx, const uint8_t *data, size_t used, size_t n)
{
    size_t left = n - used;
    if (data == rx->buf) { /* the leftover buffer itself */
        memmove(rx->buf, rx->buf + used, left);
        rx->len = left;
    } else if (left) {
        if (left > rx->cap) {
            uint8_t *nb = realloc(rx->buf, left);
            if (!nb)
                return false;
            rx->buf = nb;
            rx->cap = left;
        }
        memcpy(rx->buf, data + used, left);
        rx->len = left;
    } else {
        rx->len = 0;
    }
    if (!rx->len && rx->cap > 4096) { /* a big packet passed: give its room back */
        free(rx->buf);
        rx->buf = NULL;
        rx->cap = 0;
    }
    return true;
}

void adapter_rx_free(adapter_rx_t *rx)
{
    free(rx->buf);
    *rx = (adapter_rx_t){0};
}

bool adapter_request(broker_t *b, session_t *s, adapter_waits_t *waits, gale_request_t *req,
                     adapter_wait_t w)
{
    if (!adapter_waits_push(waits, w)) {
        log_error("%s conn %" PRIu64 ": out of memory: closing", s->ad->proto->name, s->conn.id);
        session_begin_close(b, s, CONN_CLOSE_INTERNAL, true);
        return false;
    }
    req->has_id = true;
    req->id = 0;
    core_request(b, &s->conn, req);
    return true;
}

bool adapter_topic_request(broker_t *b, session_t *s, adapter_waits_t *waits, gale_op_t op,
                           const char *t, size_t len, adapter_wait_t w)
{
    gale_request_t req;
    memset(&req, 0, sizeof(req));
    req.op = op;
    req.topic = t;
    req.topic_len = len;
    gale_pattern_valid(t, len, &req.is_pattern);
    return adapter_request(b, s, waits, &req, w);
}

void adapter_send(broker_t *b, session_t *s, gale_buf_t *buf, gale_err_t e)
{
    session_send(b, s, e == GALE_OK ? frame_finish(buf, FRAME_BINARY) : NULL);
    if (e != GALE_OK)
        gale_buf_free(buf);
}

void adapter_fail(broker_t *b, session_t *s, uint16_t code, const char *why)
{
    if (s->close_code || s->killed)
        return;
    b->m.proto_errors[s->ad->proto->index]++;
    log_info("%s conn %" PRIu64 ": %s: closing with %u", s->ad->proto->name, s->conn.id, why,
             (unsigned)code);
    session_begin_close(b, s, code, false);
}
