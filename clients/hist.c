/*
 * `gale hist`: print the messages a broker holds for one topic (docs/PROTOCOL.md
 * "History"), oldest first, in the output formats of `gale sub`, then exit.
 *
 * One connection, one `hist` request (id 1) once hello has arrived; its answer
 * is printed and the connection closed cleanly (cli_request_run). An err ends
 * the command with exit 1, like any broker error.
 */
#include "hist.h"
#include "cli.h"
#include "cli_conn.h"

#include <string.h>

typedef struct {
    cli_common_t o;
    const char *topic;
    cli_format_t format;
    bool has_limit;
    long limit;
    gale_buf_t line;
} hist_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale hist [options] TOPIC\n"
            "\n"
            "Print the messages the broker holds for TOPIC (a topic, no * or >), oldest\n"
            "first, one line each, then exit. Only topics the broker keeps history for\n"
            "(gale-broker --history) have any; for others nothing is printed and a note\n"
            "goes to stderr.\n"
            "\n"
            "Options:\n"
            "  --limit N            the last N messages at most (default: the broker's, 100;\n"
            "                       the broker caps it). 0 prints none: with -v, the\n"
            "                       position alone\n"
            "  --format FMT         as gale sub: line (default): TOPIC DATA\n"
            "                       json: {\"topic\":...,\"ep\":...,\"off\":...,\"data\":...}\n"
            "                             (\"bin\", base64, for binary data)\n"
            "                       data: the data only, as compact JSON\n"
            "\n"
            "With -v, the topic's position (EP:OFF, the offset of its last message) goes to\n"
            "stderr: `gale sub --since EP:OFF TOPIC` continues from there without a gap.\n"
            "\n"
            "%s\n%s\n"
            "Examples:\n"
            "  gale hist chat.lobby\n"
            "  gale hist --limit 10 --format json sensors.t1 | jq .data.celsius\n",
            cli_common_help, cli_exit_codes_help);
}

/* ---- the request and its answer ---- */

/* The hist request (id CLI_REQUEST_ID). */
static bool encode(void *arg, gale_buf_t *frame)
{
    const hist_t *h = arg;
    return gale_encode_hist(frame, h->o.enc, true, CLI_REQUEST_ID, h->topic, strlen(h->topic),
                            h->has_limit, (uint64_t)h->limit) == GALE_OK;
}

/* Prints every message of a hist answer; returns the exit code. */
static int print_answer(void *arg, const gale_reply_t *r)
{
    hist_t *h = arg;
    size_t pos = 0;
    gale_hist_item_t it;
    long n = 0;
    int res;
    while ((res = gale_reply_hist_next(h->o.enc, r, &pos, &it)) == 1) {
        cli_message_t m = {.topic = h->topic,
                           .topic_len = strlen(h->topic),
                           .has_ep = r->has_ep,
                           .ep = r->ep,
                           .ep_len = r->ep_len,
                           .has_off = true,
                           .off = it.off,
                           .data = it.data,
                           .data_len = it.data_len,
                           .bin = it.bin};
        if (!cli_format_message(&h->line, h->format, h->o.enc, &m)) {
            cli_error(&h->o, "cannot print message %llu: its data is not convertible to JSON",
                      (unsigned long long)it.off);
            continue;
        }
        int w = cli_write_line(&h->o, &h->line);
        if (w != 0)
            return w > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
        n++;
    }
    if (res < 0) {
        cli_error(&h->o, "the broker's hist answer has a malformed message after %ld printed", n);
        return CLI_EXIT_SERVER;
    }
    if (!r->has_ep)
        cli_error(&h->o, "%s keeps no history on this broker", h->topic);
    else if (h->o.verbose)
        fprintf(stderr, "* %ld message%s of %s; position %.*s:%llu\n", n, n == 1 ? "" : "s",
                h->topic, (int)r->ep_len, r->ep, (unsigned long long)r->off);
    return CLI_EXIT_OK;
}

/* ---- command line ---- */

enum { OPT_FORMAT = CLI_OPT_FIRST_OWN, OPT_LIMIT };

/* One of hist's own options (cli_parse_options); returns 0 or an exit code. */
static int option(void *arg, int opt, const char *val)
{
    hist_t *h = arg;
    switch (opt) {
    case OPT_FORMAT:
        if (!cli_format_parse(val, &h->format))
            return cli_usage_error("hist", "invalid --format '%s': use line, json or data", val);
        break;
    case OPT_LIMIT:
        if (!cli_parse_long(val, 0, &h->limit))
            return cli_usage_error("hist", "invalid --limit '%s': a whole number >= 0", val);
        h->has_limit = true;
        break;
    }
    return 0;
}

int hist_main(int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"format", required_argument, NULL, OPT_FORMAT},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {NULL, 0, NULL, 0},
    };
    static const cli_request_t req = {encode, GALE_REPLY_HIST, print_answer,
                                      "waiting for the history"};
    hist_t h;
    memset(&h, 0, sizeof(h));
    cli_common_init(&h.o, "hist");
    int rc = cli_parse_options(&h.o, argc, argv, CLI_SHORTOPTS(""), lo, usage, option, &h);
    if (rc != 0)
        return rc < 0 ? CLI_EXIT_OK : rc;
    rc = cli_topic_operand("hist", argc, argv,
                           "history is kept per topic, not per pattern (no * or >)", &h.topic);
    if (rc != 0)
        return rc;
    gale_buf_init(&h.line, 0);
    rc = cli_request_run(&h.o, &req, &h);
    gale_buf_free(&h.line);
    return rc;
}
