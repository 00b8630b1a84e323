/*
 * `gale presence`: print who is present on one topic (docs/PROTOCOL.md "Presence"): the
 * count, then one line per member, or the answer as one JSON line; then exit.
 *
 * One connection, one `presence` request (id 1) once hello has arrived; its answer is
 * printed and the connection closed cleanly. An err (e.g. a topic without presence) ends
 * the command with exit 1, like any broker error.
 */
#include "presence.h"
#include "cli.h"
#include "cli_conn.h"

#include <string.h>

typedef struct {
    cli_common_t o;
    const char *topic;
    cli_format_t format;

    cli_conn_t *conn;
    gale_buf_t frame;
    gale_buf_t line;
    bool finished;
    int exit_code;
    lws_sorted_usec_list_t timeout_sul;
} presence_t;

#define PRESENCE_ID 1

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: gale presence [options] TOPIC\n"
        "\n"
        "Print who is present on TOPIC (a topic, no * or >): the connections holding a\n"
        "subscription of exactly TOPIC, anywhere in the cluster, then exit. Only topics\n"
        "the broker tracks presence for (gale-broker --presence) have any; for others the\n"
        "broker answers an error (exit 1).\n"
        "\n"
        "Options:\n"
        "  --format FMT         line (default): the count on the first line, then one\n"
        "                       line per member: CONN USER INFO (USER: the token's sub,\n"
        "                       - without one, a JSON string when it has spaces or\n"
        "                       quotes; INFO: compact JSON, - without one)\n"
        "                       json: the answer as one line,\n"
        "                             {\"op\":\"presence\",\"topic\":...,\"count\":N,\n"
        "                              \"members\":[{\"conn\":...,\"user\":...,\"info\":...}]}\n"
        "\n"
        "The broker lists at most its --presence-list-max members (the count stays\n"
        "exact); when it listed fewer than the count, a note goes to stderr.\n"
        "`gale sub --presence TOPIC` follows joins and leaves as they happen.\n"
        "\n"
        "%s\n%s\n"
        "Examples:\n"
        "  gale presence chat.lobby\n"
        "  gale presence --format json chat.lobby | jq '.members[].user'\n",
        cli_common_help, cli_exit_codes_help);
}

/* ---- ending ---- */

static void finish(presence_t *p, int code)
{
    if (p->finished)
        return;
    p->finished = true;
    p->exit_code = code;
    if (cli_conn_active(p->conn))
        cli_conn_close(p->conn); /* on_closed stops the loop */
    else
        cli_conn_stop(p->conn);
}

static void timeout_timer(lws_sorted_usec_list_t *sul)
{
    presence_t *p = lws_container_of(sul, presence_t, timeout_sul);
    if (p->finished)
        return;
    cli_error(&p->o, "timed out after %g s %s", p->o.timeout,
              cli_conn_ready(p->conn) ? "waiting for the answer" : "connecting");
    finish(p, CLI_EXIT_TIMEOUT);
}

/* ---- the answer ---- */

/* Writes the line; returns -1 to go on, else the exit code. */
static int write_line(presence_t *p)
{
    gale_buf_append(&p->line, "\n", 1);
    if (p->line.oom) {
        cli_error(&p->o, "out of memory");
        return CLI_EXIT_USAGE;
    }
    int w = cli_write_line(&p->o, &p->line);
    return w == 0 ? -1 : w > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
}

/* The answer as one JSON line: op, topic, count and the members as the broker sent them. */
static int print_json(presence_t *p, const gale_reply_t *r)
{
    char num[32];
    p->line.len = 0;
    static const char head[] = "{\"op\":\"presence\",\"topic\":";
    gale_buf_append(&p->line, head, strlen(head));
    cli_json_str(&p->line, r->topic, r->topic_len);
    snprintf(num, sizeof(num), ",\"count\":%llu", (unsigned long long)r->count);
    gale_buf_append(&p->line, num, strlen(num));
    gale_buf_append(&p->line, ",\"members\":", strlen(",\"members\":"));
    if (r->members == NULL)
        gale_buf_append(&p->line, "[]", 2);
    else if (!cli_data_json(&p->line, p->o.enc, r->members, r->members_len)) {
        cli_error(&p->o, "the broker's presence answer has members that are not convertible "
                         "to JSON");
        return CLI_EXIT_SERVER;
    }
    gale_buf_append(&p->line, "}", 1);
    int rc = write_line(p);
    return rc < 0 ? CLI_EXIT_OK : rc;
}

/* The count, then one line per member; returns the exit code. */
static int print_lines(presence_t *p, const gale_reply_t *r, long *listed)
{
    char num[32];
    int rc;
    p->line.len = 0;
    snprintf(num, sizeof(num), "%llu", (unsigned long long)r->count);
    gale_buf_append(&p->line, num, strlen(num));
    if ((rc = write_line(p)) >= 0)
        return rc;
    size_t pos = 0;
    gale_member_t m;
    int res;
    while ((res = gale_reply_member_next(p->o.enc, r, &pos, &m)) == 1) {
        cli_member_t cm = {m.conn, m.conn_len, m.has_user, m.user, m.user_len, m.info, m.info_len};
        p->line.len = 0;
        if (!cli_member_text(&p->line, p->o.enc, &cm)) {
            cli_error(&p->o, "cannot print member %.*s: its info is not convertible to JSON",
                      (int)m.conn_len, m.conn);
            continue;
        }
        if ((rc = write_line(p)) >= 0)
            return rc;
        (*listed)++;
    }
    if (res < 0) {
        cli_error(&p->o, "the broker's presence answer has a malformed member after %ld printed",
                  *listed);
        return CLI_EXIT_SERVER;
    }
    return CLI_EXIT_OK;
}

static int print_answer(presence_t *p, const gale_reply_t *r)
{
    long listed = 0;
    if (p->format == CLI_FMT_JSON)
        return print_json(p, r);
    int rc = print_lines(p, r, &listed);
    if (rc != CLI_EXIT_OK)
        return rc;
    if ((uint64_t)listed < r->count)
        cli_error(&p->o,
                  "%ld of %llu members listed (the broker lists at most its "
                  "--presence-list-max)",
                  listed, (unsigned long long)r->count);
    else if (p->o.verbose)
        fprintf(stderr, "* %ld member%s on %s\n", listed, listed == 1 ? "" : "s", p->topic);
    return CLI_EXIT_OK;
}

/* ---- connection events ---- */

static void on_open(void *arg, const gale_reply_t *hello)
{
    presence_t *p = arg;
    (void)hello;
    p->frame.len = p->frame.headroom;
    if (gale_encode_presence(&p->frame, p->o.enc, true, PRESENCE_ID, p->topic, strlen(p->topic)) !=
        GALE_OK) {
        cli_error(&p->o, "out of memory");
        finish(p, CLI_EXIT_USAGE);
        return;
    }
    cli_conn_send(p->conn, &p->frame);
}

static void on_reply(void *arg, const gale_reply_t *r)
{
    presence_t *p = arg;
    if (p->finished)
        return;
    if (r->op == GALE_REPLY_PRESENCE && r->has_id && r->id == PRESENCE_ID) {
        finish(p, print_answer(p, r));
    } else if (r->op == GALE_REPLY_ERR) {
        cli_error(&p->o, "server error %.*s: %.*s%s", (int)r->code_name_len, r->code_name,
                  (int)r->msg_len, r->msg, r->msg_truncated ? "..." : "");
        finish(p, CLI_EXIT_SERVER);
    }
}

static void on_closed(void *arg, const cli_end_info_t *end)
{
    presence_t *p = arg;
    if (!p->finished && end->kind != CLI_END_CLOSED) {
        cli_report_end(&p->o, end);
        p->exit_code = CLI_EXIT_CONNECT;
    }
    p->finished = true;
    cli_conn_stop(p->conn);
}

static void on_wake(void *arg)
{
    presence_t *p = arg;
    if (cli_interrupted() && !p->finished)
        finish(p, CLI_EXIT_INTERRUPTED);
}

/* ---- command line ---- */

enum { OPT_FORMAT = CLI_OPT_FIRST_OWN };

static int parse(presence_t *p, int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"format", required_argument, NULL, OPT_FORMAT},
        {NULL, 0, NULL, 0},
    };
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":" CLI_COMMON_SHORTOPTS, lo, NULL)) != -1) {
        int r = cli_common_option(&p->o, c, optarg);
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
            if (!cli_format_parse(optarg, &p->format) || p->format == CLI_FMT_DATA)
                return cli_usage_error("presence", "invalid --format '%s': use line or json",
                                       optarg);
            break;
        default:
            return cli_bad_option("presence", c, argv);
        }
    }
    return 0;
}

int presence_main(int argc, char **argv)
{
    presence_t p;
    memset(&p, 0, sizeof(p));
    cli_common_init(&p.o, "presence");
    int rc = parse(&p, argc, argv);
    if (rc != 0)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (argc - optind == 0)
        return cli_usage_error("presence", "missing TOPIC");
    if (argc - optind > 1)
        return cli_usage_error("presence", "too many arguments: one TOPIC");
    p.topic = argv[optind];
    if (!gale_topic_valid(p.topic, strlen(p.topic))) {
        bool pattern = gale_pattern_valid(p.topic, strlen(p.topic), NULL);
        return cli_usage_error(
            "presence", "invalid topic '%s': %s", p.topic,
            pattern ? "presence is kept per topic, not per pattern (no * or >)"
                    : "a topic is 1-255 bytes of dot-separated, non-empty segments without "
                      "spaces, '*' or '>'");
    }
    gale_buf_init(&p.frame, LWS_PRE);
    gale_buf_init(&p.line, 0);

    static const cli_handler_t handler = {on_open, on_reply, on_closed, on_wake};
    p.conn = cli_conn_new(&p.o, &handler, &p);
    if (p.conn == NULL) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (p.o.timeout > 0)
        cli_conn_timer(p.conn, &p.timeout_sul, timeout_timer, p.o.timeout);
    cli_conn_connect(p.conn); /* a failure at once has already stopped the loop */
    if (cli_conn_run(p.conn) < 0 && p.exit_code == CLI_EXIT_OK) {
        cli_error(&p.o, "libwebsockets service loop failed");
        p.exit_code = CLI_EXIT_CONNECT;
    }
    rc = p.exit_code;
out:
    lws_sul_cancel(&p.timeout_sul);
    cli_conn_free(p.conn);
    gale_buf_free(&p.frame);
    gale_buf_free(&p.line);
    return rc;
}
