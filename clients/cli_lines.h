/*
 * cli_lines: reads a file descriptor (stdin) line by line on a thread of its
 * own, so the lws loop never blocks on it. At most `max_bytes` of lines wait
 * in the queue; the reader blocks when it is full (back-pressure up the pipe).
 * The reader calls wake(arg) when lines arrive or the input ends; the
 * consumer (on the loop thread) takes them with cli_lines_next.
 */
#ifndef GALE_CLI_LINES_H
#define GALE_CLI_LINES_H

#include <stddef.h>
#include <stdint.h>

typedef struct cli_lines cli_lines_t;

/** Starts the reader; NULL on failure (errno set). */
cli_lines_t *cli_lines_start(int fd, size_t max_bytes, void (*wake)(void *), void *arg);

/** Results of cli_lines_next. */
enum { CLI_LINES_ERROR = -2, CLI_LINES_END = -1, CLI_LINES_NONE = 0, CLI_LINES_LINE = 1 };

/**
 * Takes the next line: CLI_LINES_LINE with *line (malloc'd, NUL-terminated,
 * without its '\n'; the caller frees it), *len and its 1-based *lineno;
 * CLI_LINES_NONE if none is ready yet; CLI_LINES_END after the last line;
 * CLI_LINES_ERROR if reading failed (*err is an errno value). A last line
 * without '\n' counts as a line.
 */
int cli_lines_next(cli_lines_t *r, char **line, size_t *len, uint64_t *lineno, int *err);

/** Stops the reader (even while it waits on input) and frees everything. NULL is fine. */
void cli_lines_free(cli_lines_t *r);

#endif
