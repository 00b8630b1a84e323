/*
 * gale-broker: a WebSocket pub/sub message broker speaking the gale v1
 * protocol. See README.md and gale-broker --help.
 */
#include "config.h"
#include "log.h"
#include "process.h"
#include "server.h"

#include <stdio.h>
#include <uv.h>

extern char **environ;

int main(int argc, char **argv)
{
    gale_config_t cfg;

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

    int code = process_run(&cfg); /* one loop, or --loops N */
    if (code == 0)
        log_info("stopped");
    return code;
}
