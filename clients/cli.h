/*
 * cli: what `gale pub`, `gale sub`, `gale hist` and `gale presence` share: exit
 * codes, the common options (--url, --encoding, --token, --token-file, --cafile,
 * --insecure, --timeout, -v), the token file, URL parsing, error reporting, stream positions
 * (EP:OFF), and turning a received message or presence member into one line of output
 * (--format).
 *
 * The connection itself lives in cli_conn.h (libwebsockets client API), the
 * stdin line reader in cli_lines.h.
 */
#ifndef GALE_CLI_H
#define GALE_CLI_H

#include "gale_protocol.h"

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Exit codes, documented in `gale --help`, `gale CMD --help` and README.md. */
#define CLI_EXIT_OK 0
#define CLI_EXIT_SERVER 1        /* the broker answered err (its code and msg are printed) */
#define CLI_EXIT_USAGE 2         /* bad command line or input (e.g. invalid --json line) */
#define CLI_EXIT_CONNECT 3       /* refused, unreachable, handshake refused, connection lost */
#define CLI_EXIT_TIMEOUT 4       /* --timeout passed before the work was done */
#define CLI_EXIT_INTERRUPTED 130 /* SIGINT or SIGTERM, after a clean close */

#define CLI_DEFAULT_URL "ws://127.0.0.1:8080/ws"

/** Text for `gale --help` and the commands' --help: the exit codes. */
extern const char cli_exit_codes_help[];
/** Text for the commands' --help: the common options. */
extern const char cli_common_help[];

/** What identifies a version of a file: cli_token_file_check reads it again when it changes. */
typedef struct {
    bool known; /* stat succeeded at least once */
    uint64_t dev, ino, size;
    int64_t mtime_ns;
} cli_stamp_t;

/** The options every connecting command takes. */
typedef struct {
    const char *cmd; /* "pub", "sub", "hist", "presence": prefixes messages ("gale pub: ...") */
    const char *url; /* --url, else $GALE_URL, else CLI_DEFAULT_URL */
    gale_enc_t enc;
    bool enc_set;            /* --encoding was given */
    const char *token;       /* --token, else the --token-file's, else $GALE_TOKEN; NULL: none */
    bool token_opt;          /* --token was given */
    const char *token_file;  /* --token-file PATH; NULL: none */
    cli_stamp_t token_stamp; /* the version of token_file read last */
    char token_buf[GALE_TOKEN_MAX + 1]; /* the token read from token_file (token points here) */
    const char *cafile;
    bool insecure;
    int verbose;    /* -v: frames on stderr; -vv: libwebsockets' own log too */
    double timeout; /* --timeout seconds; 0: none */
} cli_common_t;

/** Long options shared by the commands; their `val`s are the CLI_OPT_* below. */
enum {
    CLI_OPT_URL = 0x100,
    CLI_OPT_ENCODING,
    CLI_OPT_TOKEN,
    CLI_OPT_TOKEN_FILE,
    CLI_OPT_CAFILE,
    CLI_OPT_INSECURE,
    CLI_OPT_TIMEOUT,
    CLI_OPT_HELP,
    CLI_OPT_FIRST_OWN, /* commands number their own options from here */
};
#define CLI_COMMON_LONGOPTS                                                                        \
    {"url", required_argument, NULL, CLI_OPT_URL},                                                 \
        {"encoding", required_argument, NULL, CLI_OPT_ENCODING},                                   \
        {"token", required_argument, NULL, CLI_OPT_TOKEN},                                         \
        {"token-file", required_argument, NULL, CLI_OPT_TOKEN_FILE},                               \
        {"cafile", required_argument, NULL, CLI_OPT_CAFILE},                                       \
        {"insecure", no_argument, NULL, CLI_OPT_INSECURE},                                         \
        {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},                                     \
        {"verbose", no_argument, NULL, 'v'},                                                       \
    {                                                                                              \
        "help", no_argument, NULL, CLI_OPT_HELP                                                    \
    }
/** Short options shared by the commands (for getopt_long's optstring). */
#define CLI_COMMON_SHORTOPTS "vh"
/** getopt_long's optstring for a command with its own short options `own` (e.g. "n:" or ""). */
#define CLI_SHORTOPTS(own) ":" own CLI_COMMON_SHORTOPTS

/** Sets defaults (from the environment too) before option parsing. */
void cli_common_init(cli_common_t *c, const char *cmd);

/**
 * Handles a common option (getopt_long's return value and optarg). Returns 1
 * if handled, 0 if opt is not a common option, -1 after printing a usage error.
 * --help is not handled here.
 */
int cli_common_option(cli_common_t *c, int opt, const char *arg);

/** Largest token file read, in bytes (a token is at most GALE_TOKEN_MAX, plus whitespace). */
#define CLI_TOKEN_FILE_MAX (64 * 1024)

/**
 * Reads the token of file `path` into buf (cap bytes, NUL-terminated): the file's contents
 * without leading and trailing whitespace, 1..min(cap - 1, GALE_TOKEN_MAX) bytes of
 * printable ASCII other than '"' and '\\' (what a JWT is made of). false with *why set (a
 * static string, or errno's text) when it cannot be read or holds no such token.
 */
bool cli_token_read(const char *path, char *buf, size_t cap, const char **why);

/**
 * Checks c->token_file (given) for a new version: when its identity, size or mtime differ
 * from c->token_stamp, reads it again. Returns 1 when it holds a new token (now in
 * c->token_buf and c->token), 0 when nothing changed (or the same token), -1 when the new
 * version cannot be read or holds no token (*why set; the token in use is kept, and the
 * file is read again once it changes again).
 */
int cli_token_file_check(cli_common_t *c, const char **why);

/** Prints "gale CMD: unknown option ..." for getopt's '?' or ':' result; returns CLI_EXIT_USAGE. */
int cli_bad_option(const char *cmd, int opt, char **argv);

/**
 * Parses a command's options with getopt_long (options may follow operands; "--" ends
 * them): the common ones go into *c (cli_common_option), -h/--help prints usage(stdout),
 * an unknown option or a missing value is a usage error (cli_bad_option), and each of the
 * command's own options is handed to own(arg, its val, optarg), which returns 0 or, after
 * printing a usage error, an exit code. shortopts: CLI_SHORTOPTS(...); longopts:
 * CLI_COMMON_LONGOPTS, the command's own, then {NULL, 0, NULL, 0}.
 * Returns 0 (the operands are argv[optind..argc)), -1 after --help, or an exit code.
 */
int cli_parse_options(cli_common_t *c, int argc, char **argv, const char *shortopts,
                      const struct option *longopts, void (*usage)(FILE *f),
                      int (*own)(void *arg, int opt, const char *val), void *arg);

/**
 * Checks a TOPIC operand. Returns 0 if topic is a valid topic, else CLI_EXIT_USAGE after
 * "invalid topic 'TOPIC': ...", saying pattern_why when it is a valid pattern (has * or >).
 */
int cli_check_topic(const char *cmd, const char *topic, const char *pattern_why);

/**
 * Takes the operands argv[optind..argc) as exactly one TOPIC (checked as by
 * cli_check_topic). Returns 0 with *topic set, or CLI_EXIT_USAGE after saying why.
 */
int cli_topic_operand(const char *cmd, int argc, char **argv, const char *pattern_why,
                      const char **topic);

/** Prints "gale CMD: " + message + "\n" on stderr. */
void cli_error(const cli_common_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Like cli_error and adds "Try 'gale CMD --help'."; returns CLI_EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Parses a positive number (seconds, rate); false if arg is not one. */
bool cli_parse_double(const char *arg, double *out);
/** Parses an integer >= min; false if arg is not one. */
bool cli_parse_long(const char *arg, long min, long *out);

/** A parsed ws:// or wss:// URL. */
typedef struct {
    bool tls;
    char host[256]; /* without brackets for IPv6 */
    int port;
    char hostport[300]; /* for the Host header */
    char path[4096];    /* path and query, token appended; "/ws" when the URL has no path */
} cli_url_t;

/** Parses url (appending token as the query parameter `token` when not NULL). */
bool cli_url_parse(const char *url, const char *token, cli_url_t *u, const char **why);

/**
 * Appends data (a data value as received, in encoding enc; bin: a top-level
 * binary, see gale_reply_t) as one line of compact JSON (no newline). Returns
 * false if it cannot be converted.
 */
bool cli_data_json(gale_buf_t *out, gale_enc_t enc, const uint8_t *data, size_t len);

/** Appends s[0..n) as a JSON string. */
void cli_json_str(gale_buf_t *out, const char *s, size_t n);

/** Appends buf[0..len) (valid JSON) without whitespace outside strings. */
void cli_json_compact(gale_buf_t *out, const uint8_t *buf, size_t len);

/** A stream position (docs/PROTOCOL.md "Stream positions"), written EP:OFF on the command line. */
typedef struct {
    bool known;
    char ep[GALE_EP_MAX + 1]; /* NUL-terminated */
    size_t ep_len;
    uint64_t off;
} cli_pos_t;

/**
 * Parses EP:OFF (split at the last ':'; EP 1..GALE_EP_MAX bytes, OFF a whole
 * number >= 0). false with *why set if arg is not one.
 */
bool cli_pos_parse(const char *arg, cli_pos_t *pos, const char **why);

/** Sets *pos to ep[0..ep_len):off; false (pos unchanged) if ep is longer than GALE_EP_MAX. */
bool cli_pos_set(cli_pos_t *pos, const char *ep, size_t ep_len, uint64_t off);

/** Output formats of received messages (`--format`, sub and hist). */
typedef enum { CLI_FMT_LINE, CLI_FMT_JSON, CLI_FMT_DATA } cli_format_t;

/** Parses "line", "json" or "data"; false if arg is none of them. */
bool cli_format_parse(const char *arg, cli_format_t *fmt);

/** One received message to print: a `msg`, or an item of a `hist` answer. */
typedef struct {
    const char *topic;
    size_t topic_len;
    bool has_ep; /* the message's stream position, when it carried one */
    const char *ep;
    size_t ep_len;
    bool has_off;
    uint64_t off;
    const uint8_t *data; /* in the connection's encoding; bin as in gale_reply_t */
    size_t data_len;
    bool bin;
} cli_message_t;

/**
 * Replaces line's contents with m in format fmt, newline included:
 *   line: TOPIC DATA
 *   json: {"topic":T[,"ep":E][,"off":N],"data":D} ("bin":B64 for a top-level binary)
 *   data: DATA
 * DATA is compact JSON (binary: a base64 string). false if the data cannot be converted.
 */
bool cli_format_message(gale_buf_t *line, cli_format_t fmt, gale_enc_t enc, const cli_message_t *m);

/** A presence member to print: of a `presence` answer, or of a join/leave event. */
typedef struct {
    const char *conn;
    size_t conn_len;
    bool has_user;
    const char *user;
    size_t user_len;
    const uint8_t *info; /* in the connection's encoding; NULL: none */
    size_t info_len;
} cli_member_t;

/**
 * Appends the member as text, "CONN USER INFO" (no newline): USER is - when the member has
 * none, and is written as a JSON string when it is empty, is "-", or has whitespace, quotes,
 * backslashes or control characters; INFO is compact JSON, - when absent. false if info
 * cannot be converted.
 */
bool cli_member_text(gale_buf_t *out, gale_enc_t enc, const cli_member_t *m);

/** Appends the member's fields as JSON object members: "conn":C[,"user":U][,"info":I]. */
bool cli_member_json(gale_buf_t *out, gale_enc_t enc, const cli_member_t *m);

/**
 * Writes line to stdout and flushes it. Returns 0; 1 when the reader went away (EPIPE:
 * stop quietly, exit 0); -1 after printing another write error (exit CLI_EXIT_USAGE).
 */
int cli_write_line(const cli_common_t *c, const gale_buf_t *line);

/** Appends a printable excerpt of s[0..n) (at most max bytes, control characters escaped). */
void cli_excerpt(gale_buf_t *out, const uint8_t *s, size_t n, size_t max);

/** Monotonic time in seconds. */
double cli_now(void);

#endif
