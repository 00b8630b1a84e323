/*
 * gale-broker: a WebSocket pub/sub message broker speaking the gale v1
 * protocol. See README.md and gale-broker --help.
 */
#include "broker.h"
#include "config.h"
#include "log.h"
#include "server.h"

#include <stdio.h>
#include <uv.h>

extern char **environ;

int main(int argc, char **argv)
{
    gale_config_t cfg;
    uv_loop_t loop;

    config_defaults(&cfg);
    switch (config_parse(&cfg, argc, argv, environ, stdout, stderr)) {
    case CONFIG_EXIT:
        return 0;
    case CONFIG_ERROR:
        return 2;
    case CONFIG_RUN:
        break;
    }
    log_set_level((log_level_t)cfg.log_level);
    server_attach_log();

    if (uv_loop_init(&loop) != 0) {
        log_error("could not create the event loop");
        return 1;
    }
    broker_t *b = broker_start(&cfg, &loop);
    if (!b) {
        log_error("out of memory");
        return 1;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    int code = broker_free(b);
    if (uv_loop_close(&loop) != 0)
        log_warn("event loop closed with handles still open");
    if (code == 0)
        log_info("stopped");
    return code;
}
