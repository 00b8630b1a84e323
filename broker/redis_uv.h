/*
 * redis_uv: hiredis's asynchronous API driven by the broker's libuv loop.
 *
 * The project's own adapter (the one hiredis 0.14.1 ships drops poll errors:
 * a refused or reset connect then fires neither the connect nor the
 * disconnect callback and the context hangs). Here a poll error is handed
 * to hiredis as readiness of the events it waits for, so hiredis itself
 * finds the socket error and runs its callbacks.
 */
#ifndef GALE_REDIS_UV_H
#define GALE_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/**
 * Attaches ac (just created by redisAsyncConnect, not yet attached) to
 * loop: one uv_poll on its socket, closed when hiredis frees the context.
 * Attach before setting the connect callback (hiredis 0.14 arms the first
 * write event there). Returns 0, or a negative libuv error (ac is then
 * unchanged; the caller frees it).
 */
int redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
