/*
 * `gale sub`: subscribe to patterns and print what arrives (sub.c).
 */
#ifndef GALE_SUB_H
#define GALE_SUB_H

/** `gale sub` entry point: argv[0] is "sub". Returns the exit status (cli.h). */
int sub_main(int argc, char **argv);

#endif
