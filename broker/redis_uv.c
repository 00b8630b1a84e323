#include "redis_uv.h"

#include <stdlib.h>

typedef struct {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis has let go of the context */
    int events;            /* UV_READABLE | UV_WRITABLE that hiredis waits for */
} redis_uv_t;

static void on_poll(uv_poll_t *h, int status, int events)
{
    redis_uv_t *p = h->data;
    /*
     * On an error (refused connect, reset) libuv reports no events: pass on
     * what hiredis waits for, and its read or write finds the error. hiredis
     * may free the context in either call (cleanup clears p->ac); p itself
     * lives until the poll handle's close callback.
     */
    int ev = status < 0 ? p->events : events;
    if (p->ac && (ev & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void update(redis_uv_t *p, int events)
{
    if (events == p->events)
        return;
    p->events = events;
    if (events)
        uv_poll_start(&p->poll, events, on_poll);
    else
        uv_poll_stop(&p->poll);
}

static void add_read(void *d)
{
    redis_uv_t *p = d;
    update(p, p->events | UV_READABLE);
}

static void del_read(void *d)
{
    redis_uv_t *p = d;
    update(p, p->events & ~UV_READABLE);
}

static void add_write(void *d)
{
    redis_uv_t *p = d;
    update(p, p->events | UV_WRITABLE);
}

static void del_write(void *d)
{
    redis_uv_t *p = d;
    update(p, p->events & ~UV_WRITABLE);
}

static void on_closed(uv_handle_t *h)
{
    free(h->data);
}

static void cleanup(void *d)
{
    redis_uv_t *p = d;
    p->ac = NULL;
    p->events = 0;
    uv_close((uv_handle_t *)&p->poll, on_closed); /* before hiredis closes the socket */
}

int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    if (ac->ev.data != NULL)
        return UV_EBUSY;
    redis_uv_t *p = calloc(1, sizeof(*p));
    if (!p)
        return UV_ENOMEM;
    int rc = uv_poll_init(loop, &p->poll, ac->c.fd);
    if (rc != 0) {
        free(p);
        return rc;
    }
    p->poll.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return 0;
}
