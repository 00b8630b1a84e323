/*
 * `gale sub`: subscribe to one or more patterns and print each message as
 * one line on stdout, flushed at once so pipes see it.
 *
 * The subscriptions are sent with ids as soon as hello arrives; an err for
 * one of them ends the command (exit 1). With --reconnect, a failed attempt
 * or a lost connection is retried with exponential backoff (0.25 s doubling
 * to 5 s, with jitter) and every pattern is subscribed again; what is
 * published while disconnected is missed (delivery is at most once).
 *
 * --since EP:OFF subscribes to one topic with recovery (docs/PROTOCOL.md
 * "Recovery"): the broker first sends what was published after that
 * position, then the ack says whether it could. The position of every
 * message received is kept, so a --reconnect resumes after the last one, and
 * it is reported on stderr when the command ends.
 *
 * --presence subscribes to topics with `presence: true` (docs/PROTOCOL.md
 * "Presence") and prints the join, leave and count-only presence updates among
 * the messages; --info sends the member's info with each sub (a broker without
 * tokens).
 *
 * --token-file is checked once a second (its inode, size and mtime): a new token in it is
 * sent as a `refresh` on the live connection (docs/PROTOCOL.md "Token refresh"), and used by
 * the next connection in any case. A refused refresh is reported; the connection keeps its
 * token (and is closed with 1008 when that one expires, then --reconnect uses the file's).
 */
#include "cli.h"
#include "cli_conn.h"
#include "sub.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BACKOFF_MIN 0.25
#define BACKOFF_MAX 5.0
#define TOKEN_CHECK_S 1.0 /* how often --token-file is checked for a new token */

typedef struct {
    cli_common_t o;
    char **patterns;
    int npatterns;
    cli_format_t format;
    long count; /* 0: no limit */
    bool reconnect;
    bool has_since;  /* --since: one topic, subscribed with `since` */
    cli_pos_t pos;   /* --since: the position to resume after (then: of the last message) */
    cli_pos_t asked; /* the position the last sub with since asked to resume after */
    long replayed;   /* messages received between that sub and its ack */
    bool pos_seen;   /* the broker named a position of the topic (msg or ack) */
    bool presence;   /* --presence: subs ask for join/leave events */
    gale_buf_t info; /* --info: the JSON object, compacted (len 0: none) */

    cli_conn_t *conn;
    gale_buf_t frame;
    gale_buf_t line;
    uint64_t next_id;
    uint64_t first_id; /* ids of this connection's subs: first_id .. first_id + npatterns - 1 */
    int acks_pending;
    bool subscribed_once;
    long received;
    double backoff;
    bool finished;
    int exit_code;
    uint64_t refresh_id;   /* the refresh awaiting its answer on this connection; 0: none */
    const char *token_why; /* the last --token-file problem reported (not again until fixed) */
    lws_sorted_usec_list_t reconnect_sul;
    lws_sorted_usec_list_t timeout_sul;
    lws_sorted_usec_list_t token_sul;
} sub_t;

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: gale sub [options] PATTERN...\n"
        "\n"
        "Subscribe to each PATTERN and print every message as one line, flushed at once.\n"
        "A pattern is a topic whose segments may be * (any one segment), and whose last\n"
        "segment may be > (one or more segments): chat.*, sensors.>, >.\n"
        "\n"
        "Options:\n"
        "  --format FMT         line (default): TOPIC DATA, data as compact JSON\n"
        "                       json: {\"topic\":...,\"data\":...} per line (for jq); a binary\n"
        "                             message has \"bin\" (base64) instead of \"data\"; a\n"
        "                             message of a topic with history also has its\n"
        "                             position, \"ep\" and \"off\", after \"topic\"\n"
        "                       data: the data only, as compact JSON\n"
        "  -n, --count N        exit 0 after N lines (messages, and with --presence the\n"
        "                       presence lines too)\n"
        "  --since EP:OFF       recover what was missed: with exactly one TOPIC (no * or\n"
        "                       >) that keeps history, first print the messages published\n"
        "                       after position EP:OFF, then continue live. EP:OFF is the\n"
        "                       \"ep\" and \"off\" of the last message received (--format\n"
        "                       json), or comes from gale hist -v; OFF 0: every message of\n"
        "                       epoch EP the broker still holds. One line on stderr says\n"
        "                       whether the broker could (\"recovered N missed messages\"\n"
        "                       or \"not recovered\") and the position; the last position\n"
        "                       is printed on stderr at the end\n"
        "  --reconnect          when the connection fails or is lost, reconnect with\n"
        "                       backoff (0.25 s to 5 s) and subscribe again (with\n"
        "                       --since: after the last message received, so nothing is\n"
        "                       missed while the broker still holds it)\n"
        "  --timeout SECONDS    stop after this long: exit 4 if --count was given and not\n"
        "                       reached (or never subscribed), else 0\n"
        "  --presence           with topics (no * or >) that the broker tracks presence\n"
        "                       for (gale-broker --presence): also print who joins and\n"
        "                       leaves them (never this connection itself), as lines\n"
        "                       line: TOPIC join CONN USER INFO, TOPIC leave CONN USER INFO\n"
        "                             (USER: - without one; INFO: compact JSON, - without\n"
        "                             one), TOPIC count N (a busy topic's member count,\n"
        "                             instead of joins and leaves)\n"
        "                       json: the broker's objects, {\"op\":\"join\",\"topic\":...,\n"
        "                             \"conn\":...,\"user\":...,\"info\":...}, \"leave\" alike,\n"
        "                             {\"op\":\"presence\",\"topic\":...,\"count\":N}\n"
        "                       `gale presence TOPIC` prints the members present now\n"
        "  --info JSON          this connection's info as a member of each topic (a JSON\n"
        "                       object; topics only), for a broker without tokens (with\n"
        "                       tokens it comes from the token's gale.info claim)\n"
        "\n"
        "Binary data (MessagePack bin) prints as a base64 JSON string.\n"
        "\n"
        "%s\n%s\n"
        "Examples:\n"
        "  gale sub 'chat.>'\n"
        "  gale sub --format json --count 1 sensors.t1 | jq .data.celsius\n"
        "  gale sub --reconnect --url wss://broker.example/ws --token \"$T\" 'logs.*'\n"
        "  gale sub --reconnect --token-file /run/secrets/gale-token 'logs.*'\n"
        "  gale sub --since 1f3a9c:41 --reconnect chat.lobby\n"
        "  gale sub --presence --info '{\"nick\":\"ann\"}' chat.lobby\n",
        cli_common_help, cli_exit_codes_help);
}

/* ---- ending ---- */

static void finish(sub_t *s, int code)
{
    if (s->finished)
        return;
    s->finished = true;
    s->exit_code = code;
    lws_sul_cancel(&s->reconnect_sul);
    if (cli_conn_active(s->conn))
        cli_conn_close(s->conn); /* on_closed stops the loop */
    else
        cli_conn_stop(s->conn);
}

static void timeout_timer(lws_sorted_usec_list_t *sul)
{
    sub_t *s = lws_container_of(sul, sub_t, timeout_sul);
    if (s->finished)
        return;
    if (s->count > 0) {
        cli_error(&s->o, "timed out after %g s with %ld of %ld messages", s->o.timeout, s->received,
                  s->count);
        finish(s, CLI_EXIT_TIMEOUT);
    } else if (!s->subscribed_once) {
        cli_error(&s->o, "timed out after %g s before subscribing", s->o.timeout);
        finish(s, CLI_EXIT_TIMEOUT);
    } else {
        finish(s, CLI_EXIT_OK);
    }
}

/* ---- output ---- */

static void print_message(sub_t *s, const gale_reply_t *r)
{
    cli_message_t m = {.topic = r->topic,
                       .topic_len = r->topic_len,
                       .has_ep = r->has_ep,
                       .ep = r->ep,
                       .ep_len = r->ep_len,
                       .has_off = r->has_off,
                       .off = r->off,
                       .data = r->data,
                       .data_len = r->data_len,
                       .bin = r->bin};
    if (!cli_format_message(&s->line, s->format, s->o.enc, &m)) {
        cli_error(&s->o, "cannot print a message on %.*s: its data is not convertible to JSON",
                  (int)r->topic_len, r->topic);
        return;
    }
    int w = cli_write_line(&s->o, &s->line);
    if (w != 0) {
        finish(s, w > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE);
        return;
    }
    s->received++;
    if (s->count > 0 && s->received >= s->count)
        finish(s, CLI_EXIT_OK);
}

/* ---- presence (--presence) ---- */

/* Prints a join/leave event or a count-only presence update of a topic. */
static void print_presence(sub_t *s, const gale_reply_t *r)
{
    gale_buf_t *b = &s->line;
    const char *kind = r->op == GALE_REPLY_JOIN    ? "join"
                       : r->op == GALE_REPLY_LEAVE ? "leave"
                                                   : "presence";
    cli_member_t m = {r->conn,     r->conn_len, r->has_user, r->user,
                      r->user_len, r->info,     r->info_len};
    char num[32];
    bool ok = true;
    b->len = 0;
    if (s->format == CLI_FMT_JSON) {
        gale_buf_append(b, "{\"op\":\"", 7);
        gale_buf_append(b, kind, strlen(kind));
        gale_buf_append(b, "\",\"topic\":", 10);
        cli_json_str(b, r->topic, r->topic_len);
        if (r->op == GALE_REPLY_PRESENCE) {
            snprintf(num, sizeof(num), ",\"count\":%llu", (unsigned long long)r->count);
            gale_buf_append(b, num, strlen(num));
        } else {
            gale_buf_append(b, ",", 1);
            ok = cli_member_json(b, s->o.enc, &m);
        }
        gale_buf_append(b, "}", 1);
    } else {
        gale_buf_append(b, r->topic, r->topic_len);
        if (r->op == GALE_REPLY_PRESENCE) {
            snprintf(num, sizeof(num), " count %llu", (unsigned long long)r->count);
            gale_buf_append(b, num, strlen(num));
        } else {
            gale_buf_append(b, " ", 1);
            gale_buf_append(b, kind, strlen(kind));
            gale_buf_append(b, " ", 1);
            ok = cli_member_text(b, s->o.enc, &m);
        }
    }
    gale_buf_append(b, "\n", 1);
    if (!ok || b->oom) {
        cli_error(&s->o, "cannot print a %s on %.*s: its info is not convertible to JSON", kind,
                  (int)r->topic_len, r->topic);
        return;
    }
    int w = cli_write_line(&s->o, b);
    if (w != 0) {
        finish(s, w > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE);
        return;
    }
    s->received++;
    if (s->count > 0 && s->received >= s->count)
        finish(s, CLI_EXIT_OK);
}

/* ---- positions (--since) ---- */

/* Keeps the position of a message of the --since topic. */
static void track_message(sub_t *s, const gale_reply_t *r)
{
    if (!s->has_since)
        return;
    s->replayed++;
    if (r->has_ep && r->has_off && cli_pos_set(&s->pos, r->ep, r->ep_len, r->off))
        s->pos_seen = true;
}

/* Reports the outcome of a sub with since on stderr, in one line, and keeps its position. */
static void report_recovery(sub_t *s, const gale_reply_t *r, bool again)
{
    const char *topic = s->patterns[0];
    const char *pre = again ? "reconnected: " : "";
    bool has_pos = r->has_ep && r->has_off && cli_pos_set(&s->pos, r->ep, r->ep_len, r->off);
    s->pos_seen |= has_pos;
    if (r->recovered == 1) {
        cli_error(&s->o, "%srecovered %ld missed message%s of %s after %s:%llu; position %s:%llu",
                  pre, s->replayed, s->replayed == 1 ? "" : "s", topic, s->asked.ep,
                  (unsigned long long)s->asked.off, s->pos.ep, (unsigned long long)s->pos.off);
    } else if (r->recovered == 0 && has_pos) {
        cli_error(&s->o,
                  "%snot recovered: the broker cannot replay %s after %s:%llu (another epoch, "
                  "or messages no longer held); live from position %s:%llu",
                  pre, topic, s->asked.ep, (unsigned long long)s->asked.off, s->pos.ep,
                  (unsigned long long)s->pos.off);
    } else if (r->recovered == 0) {
        cli_error(&s->o, "%snot recovered: %s keeps no history on this broker; live from now", pre,
                  topic);
    } else {
        cli_error(&s->o,
                  "%sthe broker did not say whether it recovered %s (does it support since?); "
                  "live from now",
                  pre, topic);
    }
}

/* ---- the token file (--token-file) ---- */

/* Checks the token file; true when it holds a new token (then in s->o.token). */
static bool token_changed(sub_t *s)
{
    const char *why;
    int r = cli_token_file_check(&s->o, &why);
    if (r < 0 && why != s->token_why)
        cli_error(&s->o,
                  "cannot read a token from --token-file '%s': %s (keeping the token in use)",
                  s->o.token_file, why);
    s->token_why = r < 0 ? why : NULL;
    return r > 0;
}

/* Sends the token as a refresh on the live connection (else the next connection uses it). */
static void send_refresh(sub_t *s)
{
    if (!cli_conn_ready(s->conn)) {
        if (s->o.verbose)
            fprintf(stderr, "* new token in --token-file: the next connection uses it\n");
        return;
    }
    s->frame.len = s->frame.headroom;
    s->refresh_id = s->next_id++;
    if (gale_encode_refresh(&s->frame, s->o.enc, true, s->refresh_id, s->o.token,
                            strlen(s->o.token)) != GALE_OK) {
        cli_error(&s->o, "out of memory");
        finish(s, CLI_EXIT_USAGE);
        return;
    }
    if (s->o.verbose)
        fprintf(stderr, "* new token in --token-file: sending it as a refresh\n");
    cli_conn_send(s->conn, &s->frame);
}

static void token_timer(lws_sorted_usec_list_t *sul)
{
    sub_t *s = lws_container_of(sul, sub_t, token_sul);
    if (s->finished)
        return;
    if (token_changed(s))
        send_refresh(s);
    cli_conn_timer(s->conn, &s->token_sul, token_timer, TOKEN_CHECK_S);
}

/* The answer to a refresh: the connection's token is the new one, or still the old one. */
static void refresh_answered(sub_t *s, const gale_reply_t *r)
{
    s->refresh_id = 0;
    if (r->op == GALE_REPLY_ACK) {
        if (s->o.verbose)
            fprintf(stderr, "* token refreshed: the connection now runs on the new token\n");
        return;
    }
    cli_error(&s->o,
              "token refresh refused: %.*s: %.*s%s (the connection keeps its token until it "
              "expires)",
              (int)r->code_name_len, r->code_name, (int)r->msg_len, r->msg,
              r->msg_truncated ? "..." : "");
}

/* ---- connection events ---- */

static void reconnect_timer(lws_sorted_usec_list_t *sul)
{
    sub_t *s = lws_container_of(sul, sub_t, reconnect_sul);
    if (s->finished)
        return;
    if (s->o.token_file)
        token_changed(s); /* the newest token for the handshake */
    cli_conn_connect(s->conn);
}

static void on_open(void *arg, const gale_reply_t *hello)
{
    sub_t *s = arg;
    (void)hello;
    s->refresh_id = 0; /* an answer the last connection took with it */
    s->first_id = s->next_id;
    s->acks_pending = s->npatterns;
    for (int i = 0; i < s->npatterns; i++) {
        s->frame.len = s->frame.headroom;
        gale_err_t err;
        if (s->has_since || s->presence || s->info.len > 0) {
            /* With since: after the last message received, or the position given. */
            gale_pos_t since = {s->pos.ep, s->pos.ep_len, s->pos.off};
            if (s->has_since) {
                s->asked = s->pos;
                s->replayed = 0;
            }
            err = gale_encode_sub_ext(&s->frame, s->o.enc, true, s->next_id++, s->patterns[i],
                                      strlen(s->patterns[i]), s->has_since ? &since : NULL,
                                      s->presence, s->info.len > 0 ? s->info.data : NULL,
                                      s->info.len);
        } else {
            err = gale_encode_sub(&s->frame, s->o.enc, GALE_OP_SUB, true, s->next_id++,
                                  s->patterns[i], strlen(s->patterns[i]));
        }
        if (err != GALE_OK) {
            cli_error(&s->o, "out of memory");
            finish(s, CLI_EXIT_USAGE);
            return;
        }
        cli_conn_send(s->conn, &s->frame);
    }
}

static void on_reply(void *arg, const gale_reply_t *r)
{
    sub_t *s = arg;
    if (s->finished)
        return;
    bool ours = r->has_id && r->id >= s->first_id && r->id < s->first_id + (uint64_t)s->npatterns;
    if (s->refresh_id && r->has_id && r->id == s->refresh_id &&
        (r->op == GALE_REPLY_ACK || r->op == GALE_REPLY_ERR)) {
        refresh_answered(s, r);
        return;
    }
    switch (r->op) {
    case GALE_REPLY_MSG:
        track_message(s, r);
        print_message(s, r);
        return;
    case GALE_REPLY_JOIN:
    case GALE_REPLY_LEAVE:
    case GALE_REPLY_PRESENCE:
        if (s->presence)
            print_presence(s, r);
        return;
    case GALE_REPLY_ACK:
        if (ours && s->acks_pending > 0 && --s->acks_pending == 0) {
            if (s->has_since)
                report_recovery(s, r, s->subscribed_once);
            if (s->o.verbose)
                fprintf(stderr, "* subscribed to %d pattern%s\n", s->npatterns,
                        s->npatterns > 1 ? "s" : "");
            else if (s->subscribed_once && s->reconnect && !s->has_since)
                cli_error(&s->o, "reconnected and subscribed again");
            s->subscribed_once = true;
            s->backoff = 0;
        }
        return;
    case GALE_REPLY_ERR: {
        char what[300] = "";
        if (ours)
            snprintf(what, sizeof(what), " (pattern '%s')", s->patterns[r->id - s->first_id]);
        else if (!r->has_id && r->topic) /* a subscription the broker dropped */
            snprintf(what, sizeof(what), " (pattern '%.*s')", (int)r->topic_len, r->topic);
        cli_error(&s->o, "server error %.*s: %.*s%s%s", (int)r->code_name_len, r->code_name,
                  (int)r->msg_len, r->msg, r->msg_truncated ? "..." : "", what);
        finish(s, CLI_EXIT_SERVER);
        return;
    }
    default:
        return;
    }
}

static void on_closed(void *arg, const cli_end_info_t *end)
{
    sub_t *s = arg;
    if (s->finished || end->kind == CLI_END_CLOSED) {
        cli_conn_stop(s->conn);
        return;
    }
    cli_report_end(&s->o, end);
    if (!s->reconnect) {
        s->finished = true;
        s->exit_code = CLI_EXIT_CONNECT;
        cli_conn_stop(s->conn);
        return;
    }
    s->backoff = s->backoff <= 0 ? BACKOFF_MIN : s->backoff * 2;
    if (s->backoff > BACKOFF_MAX)
        s->backoff = BACKOFF_MAX;
    double delay = s->backoff * (0.8 + 0.4 * ((double)rand() / RAND_MAX));
    cli_error(&s->o, "reconnecting in %.1f s", delay);
    cli_conn_timer(s->conn, &s->reconnect_sul, reconnect_timer, delay);
}

static void on_wake(void *arg)
{
    sub_t *s = arg;
    if (cli_interrupted() && !s->finished)
        finish(s, CLI_EXIT_INTERRUPTED);
}

/* ---- command line ---- */

enum {
    OPT_FORMAT = CLI_OPT_FIRST_OWN,
    OPT_COUNT,
    OPT_RECONNECT,
    OPT_SINCE,
    OPT_PRESENCE,
    OPT_INFO
};

/* One of sub's own options (cli_parse_options); returns 0 or an exit code. */
static int option(void *arg, int opt, const char *val)
{
    sub_t *s = arg;
    switch (opt) {
    case OPT_FORMAT:
        if (!cli_format_parse(val, &s->format))
            return cli_usage_error("sub", "invalid --format '%s': use line, json or data", val);
        break;
    case 'n':
        if (!cli_parse_long(val, 1, &s->count))
            return cli_usage_error("sub", "invalid --count '%s': a whole number >= 1", val);
        break;
    case OPT_RECONNECT:
        s->reconnect = true;
        break;
    case OPT_SINCE: {
        const char *why;
        if (!cli_pos_parse(val, &s->pos, &why))
            return cli_usage_error("sub", "invalid --since '%s': %s (use EP:OFF)", val, why);
        s->has_since = true;
        break;
    }
    case OPT_PRESENCE:
        s->presence = true;
        break;
    case OPT_INFO: {
        size_t n = strlen(val), i = 0;
        while (i < n && strchr(" \t\r\n", val[i]))
            i++;
        if (i == n || val[i] != '{' || !gale_json_valid((const uint8_t *)val, n, 256))
            return cli_usage_error("sub", "invalid --info '%s': not a JSON object", val);
        s->info.len = 0;
        cli_json_compact(&s->info, (const uint8_t *)val, n);
        if (s->info.oom)
            return cli_usage_error("sub", "out of memory");
        break;
    }
    }
    return 0;
}

/* Checks the operands against the options; returns 0, or CLI_EXIT_USAGE after saying why. */
static int check_operands(const sub_t *s)
{
    if (s->npatterns == 0)
        return cli_usage_error("sub", "missing PATTERN (e.g. 'chat.>' or '>' for everything)");
    for (int i = 0; i < s->npatterns; i++) {
        if (!gale_pattern_valid(s->patterns[i], strlen(s->patterns[i]), NULL))
            return cli_usage_error("sub",
                                   "invalid pattern '%s': dot-separated, non-empty segments "
                                   "without spaces; a segment may be * and the last one >",
                                   s->patterns[i]);
    }
    if (s->has_since) {
        if (s->npatterns != 1)
            return cli_usage_error("sub", "--since takes exactly one TOPIC (got %d)", s->npatterns);
        if (!gale_topic_valid(s->patterns[0], strlen(s->patterns[0])))
            return cli_usage_error("sub", "--since needs a topic, not a pattern: '%s' has * or >",
                                   s->patterns[0]);
    }
    if (s->presence || s->info.len > 0) {
        const char *opt = s->presence ? "--presence" : "--info";
        for (int i = 0; i < s->npatterns; i++)
            if (!gale_topic_valid(s->patterns[i], strlen(s->patterns[i])))
                return cli_usage_error("sub",
                                       "%s needs topics, not patterns: '%s' has * or > "
                                       "(presence is kept per topic)",
                                       opt, s->patterns[i]);
    }
    if (s->presence && s->format == CLI_FMT_DATA)
        return cli_usage_error("sub", "--presence needs --format line or json (data has no "
                                      "room for joins and leaves)");
    return 0;
}

int sub_main(int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"format", required_argument, NULL, OPT_FORMAT},
        {"count", required_argument, NULL, 'n'},
        {"reconnect", no_argument, NULL, OPT_RECONNECT},
        {"since", required_argument, NULL, OPT_SINCE},
        {"presence", no_argument, NULL, OPT_PRESENCE},
        {"info", required_argument, NULL, OPT_INFO},
        {NULL, 0, NULL, 0},
    };
    sub_t s;
    memset(&s, 0, sizeof(s));
    cli_common_init(&s.o, "sub");
    s.next_id = 1;
    gale_buf_init(&s.frame, LWS_PRE);
    gale_buf_init(&s.line, 0);
    gale_buf_init(&s.info, 0);
    int rc = cli_parse_options(&s.o, argc, argv, CLI_SHORTOPTS("n:"), lo, usage, option, &s);
    if (rc == 0) {
        s.patterns = argv + optind;
        s.npatterns = argc - optind;
        rc = check_operands(&s);
    }
    if (rc != 0) {
        gale_buf_free(&s.info);
        return rc < 0 ? CLI_EXIT_OK : rc;
    }
    srand((unsigned)getpid() ^ (unsigned)(cli_now() * 1e6));

    static const cli_handler_t h = {on_open, on_reply, on_closed, on_wake};
    s.conn = cli_conn_new(&s.o, &h, &s);
    if (s.conn == NULL) {
        gale_buf_free(&s.info);
        return CLI_EXIT_USAGE;
    }
    if (s.o.timeout > 0)
        cli_conn_timer(s.conn, &s.timeout_sul, timeout_timer, s.o.timeout);
    if (s.o.token_file)
        cli_conn_timer(s.conn, &s.token_sul, token_timer, TOKEN_CHECK_S);
    cli_conn_connect(s.conn); /* a failure at once has already stopped the loop (or retries) */
    if (cli_conn_run(s.conn) < 0 && s.exit_code == CLI_EXIT_OK) {
        cli_error(&s.o, "libwebsockets service loop failed");
        s.exit_code = CLI_EXIT_CONNECT;
    }
    rc = s.exit_code;
    if (s.has_since && s.pos_seen)
        cli_error(&s.o, "last position %s:%llu (resume with --since %s:%llu)", s.pos.ep,
                  (unsigned long long)s.pos.off, s.pos.ep, (unsigned long long)s.pos.off);
    lws_sul_cancel(&s.reconnect_sul);
    lws_sul_cancel(&s.timeout_sul);
    lws_sul_cancel(&s.token_sul);
    cli_conn_free(s.conn);
    gale_buf_free(&s.frame);
    gale_buf_free(&s.line);
    gale_buf_free(&s.info);
    return rc;
}
