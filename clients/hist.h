/*
 * `gale hist`: print the history a broker holds for a topic (hist.c).
 */
#ifndef GALE_HIST_H
#define GALE_HIST_H

/** `gale hist` entry point: argv[0] is "hist". Returns the exit status (cli.h). */
int hist_main(int argc, char **argv);

#endif
