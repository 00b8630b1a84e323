/*
 * `gale pub`: publish to a topic from the command line (pub.c).
 */
#ifndef GALE_PUB_H
#define GALE_PUB_H

/** `gale pub` entry point: argv[0] is "pub". Returns the exit status (cli.h). */
int pub_main(int argc, char **argv);

#endif
