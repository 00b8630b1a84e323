/*
 * gale: the project's command-line tool. A small dispatcher: `gale COMMAND [options]`,
 * each command in its own file with an `int cmd_main(int argc, char **argv)` entry point
 * (argv[0] is the command name). Add a command by adding a row to `commands`.
 */
#include "bench.h"
#include "cli.h"
#include "hist.h"
#include "presence.h"
#include "pub.h"
#include "sub.h"

#include <stdio.h>
#include <string.h>

#ifndef GALE_VERSION
#define GALE_VERSION "unknown"
#endif

static const struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"pub", pub_main, "publish DATA, stdin lines or a file to a topic"},
    {"sub", sub_main, "subscribe to patterns and print each message as a line"},
    {"hist", hist_main, "print the messages a broker holds for a topic (history)"},
    {"presence", presence_main, "print who is present on a topic (presence)"},
    {"bench", bench_main, "load generator: fan-out, topics, connections, handshake rate"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: gale COMMAND [options]\n       gale --help | --version\n\nCommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`gale COMMAND --help` describes a command.\n\n");
    fprintf(f, "Environment: GALE_URL (default " CLI_DEFAULT_URL "), GALE_TOKEN.\n\n");
    fprintf(f, "%s", cli_exit_codes_help);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V")) {
        printf("gale %s\n", GALE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].main(argc - 1, argv + 1);
    fprintf(stderr, "gale: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
