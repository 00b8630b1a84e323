/*
 * process: runs a gale-broker: one broker_t per event loop, each loop a thread (process.c).
 */
#ifndef GALE_PROCESS_H
#define GALE_PROCESS_H

#include "config.h"

/** Runs the broker of cfg until it stops (SIGTERM, SIGINT): its exit code. */
int process_run(const gale_config_t *cfg);

#endif
