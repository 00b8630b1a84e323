/*
 * `gale hist`: print the messages a broker holds for one topic (docs/PROTOCOL.md
 * "History"), oldest first, in the output formats of `gale sub`, then exit.
 *
 * One connection, one `hist` request (id 1) once hello has arrived; its answer
 * is printed and the connection closed cleanly. An err ends the command with
 * exit 1, like any broker error.
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

    cli_conn_t *conn;
    gale_buf_t frame;
    gale_buf_t line;
    bool finished;
    int exit_code;
    lws_sorted_usec_list_t timeout_sul;
} hist_t;

#define HIST_ID 1

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

/* ---- ending ---- */

static void finish(hist_t *h, int code)
{
    if (h->finished)
        return;
    h->finished = true;
    h->exit_code = code;
    if (cli_conn_active(h->conn))
        cli_conn_close(h->conn); /* on_closed stops the loop */
    else
        cli_conn_stop(h->conn);
}

static void timeout_timer(lws_sorted_usec_list_t *sul)
{
    hist_t *h = lws_container_of(sul, hist_t, timeout_sul);
    if (h->finished)
        return;
    cli_error(&h->o, "timed out after %g s %s", h->o.timeout,
              cli_conn_ready(h->conn) ? "waiting for the history" : "connecting");
    finish(h, CLI_EXIT_TIMEOUT);
}

/* ---- the answer ---- */

/* Prints every message of a hist answer; returns the exit code. */
static int print_answer(hist_t *h, const gale_reply_t *r)
{
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

/* ---- connection events ---- */

static void on_open(void *arg, const gale_reply_t *hello)
{
    hist_t *h = arg;
    (void)hello;
    h->frame.len = h->frame.headroom;
    if (gale_encode_hist(&h->frame, h->o.enc, true, HIST_ID, h->topic, strlen(h->topic),
                         h->has_limit, (uint64_t)h->limit) != GALE_OK) {
        cli_error(&h->o, "out of memory");
        finish(h, CLI_EXIT_USAGE);
        return;
    }
    cli_conn_send(h->conn, &h->frame);
}

static void on_reply(void *arg, const gale_reply_t *r)
{
    hist_t *h = arg;
    if (h->finished)
        return;
    if (r->op == GALE_REPLY_HIST && r->has_id && r->id == HIST_ID) {
        finish(h, print_answer(h, r));
    } else if (r->op == GALE_REPLY_ERR) {
        cli_error(&h->o, "server error %.*s: %.*s%s", (int)r->code_name_len, r->code_name,
                  (int)r->msg_len, r->msg, r->msg_truncated ? "..." : "");
        finish(h, CLI_EXIT_SERVER);
    }
}

static void on_closed(void *arg, const cli_end_info_t *end)
{
    hist_t *h = arg;
    if (!h->finished && end->kind != CLI_END_CLOSED) {
        cli_report_end(&h->o, end);
        h->exit_code = CLI_EXIT_CONNECT;
    }
    h->finished = true;
    cli_conn_stop(h->conn);
}

static void on_wake(void *arg)
{
    hist_t *h = arg;
    if (cli_interrupted() && !h->finished)
        finish(h, CLI_EXIT_INTERRUPTED);
}

/* ---- command line ---- */

enum { OPT_FORMAT = CLI_OPT_FIRST_OWN, OPT_LIMIT };

static int parse(hist_t *h, int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"format", required_argument, NULL, OPT_FORMAT},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":" CLI_COMMON_SHORTOPTS, lo, NULL)) != -1) {
        int r = cli_common_option(&h->o, c, optarg);
        if (r < 0)
            return CLI_EXIT_USAGE;
        if (r > 0)
            continue;
        switch (c) {
        case 'h':
        case CLI_OPT_HELP:
            usage(stdout);
            return -1;
        case OPT_FORMAT:
            if (!cli_format_parse(optarg, &h->format))
                return cli_usage_error("hist", "invalid --format '%s': use line, json or data",
                                       optarg);
            break;
        case OPT_LIMIT:
            if (!cli_parse_long(optarg, 0, &h->limit))
                return cli_usage_error("hist", "invalid --limit '%s': a whole number >= 0", optarg);
            h->has_limit = true;
            break;
        default:
            return cli_bad_option("hist", c, argv);
        }
    }
    return 0;
}

int hist_main(int argc, char **argv)
{
    hist_t h;
    memset(&h, 0, sizeof(h));
    cli_common_init(&h.o, "hist");
    int rc = parse(&h, argc, argv);
    if (rc != 0)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (argc - optind == 0)
        return cli_usage_error("hist", "missing TOPIC");
    if (argc - optind > 1)
        return cli_usage_error("hist", "too many arguments: one TOPIC");
    h.topic = argv[optind];
    if (!gale_topic_valid(h.topic, strlen(h.topic))) {
        bool pattern = gale_pattern_valid(h.topic, strlen(h.topic), NULL);
        return cli_usage_error(
            "hist", "invalid topic '%s': %s", h.topic,
            pattern ? "history is kept per topic, not per pattern (no * or >)"
                    : "a topic is 1-255 bytes of dot-separated, non-empty segments without "
                      "spaces, '*' or '>'");
    }
    gale_buf_init(&h.frame, LWS_PRE);
    gale_buf_init(&h.line, 0);

    static const cli_handler_t handler = {on_open, on_reply, on_closed, on_wake};
    h.conn = cli_conn_new(&h.o, &handler, &h);
    if (h.conn == NULL) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (h.o.timeout > 0)
        cli_conn_timer(h.conn, &h.timeout_sul, timeout_timer, h.o.timeout);
    cli_conn_connect(h.conn); /* a failure at once has already stopped the loop */
    if (cli_conn_run(h.conn) < 0 && h.exit_code == CLI_EXIT_OK) {
        cli_error(&h.o, "libwebsockets service loop failed");
        h.exit_code = CLI_EXIT_CONNECT;
    }
    rc = h.exit_code;
out:
    lws_sul_cancel(&h.timeout_sul);
    cli_conn_free(h.conn);
    gale_buf_free(&h.frame);
    gale_buf_free(&h.line);
    return rc;
}
