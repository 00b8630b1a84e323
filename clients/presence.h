/*
 * `gale presence`: print who is present on a topic (presence.c).
 */
#ifndef GALE_PRESENCE_H
#define GALE_PRESENCE_H

/** `gale presence` entry point: argv[0] is "presence". Returns the exit status (cli.h). */
int presence_main(int argc, char **argv);

#endif
