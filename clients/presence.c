/*
 * `gale presence`: print who is present on one topic (docs/PROTOCOL.md "Presence"): the
 * count, then one line per member, or the answer as one JSON line; then exit.
 *
 * One connection, one `presence` request (id 1) once hello has arrived; its answer is
 * printed and the connection closed cleanly (cli_request_run). An err (e.g. a topic
 * without presence) ends the command with exit 1, like any broker error.
 */
#include "presence.h"
#include "cli.h"
#include "cli_conn.h"

#include <string.h>

typedef struct {
    cli_common_t o;
    const char *topic;
    cli_format_t format;
    gale_buf_t line;
} presence_t;

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

/* ---- the request and its answer ---- */

/* The presence request (id CLI_REQUEST_ID). */
static bool encode(void *arg, gale_buf_t *frame)
{
    const presence_t *p = arg;
    return gale_encode_presence(frame, p->o.enc, true, CLI_REQUEST_ID, p->topic,
                                strlen(p->topic)) == GALE_OK;
}

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

/* Prints the answer in p->format; returns the exit code. */
static int print_answer(void *arg, const gale_reply_t *r)
{
    presence_t *p = arg;
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

/* ---- command line ---- */

enum { OPT_FORMAT = CLI_OPT_FIRST_OWN };

/* One of presence's own options (cli_parse_options); returns 0 or an exit code. */
static int option(void *arg, int opt, const char *val)
{
    presence_t *p = arg;
    if (opt == OPT_FORMAT && (!cli_format_parse(val, &p->format) || p->format == CLI_FMT_DATA))
        return cli_usage_error("presence", "invalid --format '%s': use line or json", val);
    return 0;
}

int presence_main(int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"format", required_argument, NULL, OPT_FORMAT},
        {NULL, 0, NULL, 0},
    };
    static const cli_request_t req = {encode, GALE_REPLY_PRESENCE, print_answer,
                                      "waiting for the answer"};
    presence_t p;
    memset(&p, 0, sizeof(p));
    cli_common_init(&p.o, "presence");
    int rc = cli_parse_options(&p.o, argc, argv, CLI_SHORTOPTS(""), lo, usage, option, &p);
    if (rc != 0)
        return rc < 0 ? CLI_EXIT_OK : rc;
    rc = cli_topic_operand("presence", argc, argv,
                           "presence is kept per topic, not per pattern (no * or >)", &p.topic);
    if (rc != 0)
        return rc;
    gale_buf_init(&p.line, 0);
    rc = cli_request_run(&p.o, &req, &p);
    gale_buf_free(&p.line);
    return rc;
}
