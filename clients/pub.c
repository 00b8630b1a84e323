/*
 * `gale pub`: publish DATA, each line of stdin, or a file's bytes to a topic.
 *
 * Every publish carries an id (1, 2, 3, ...: message N has id N) and the
 * command succeeds only when every one has been acknowledged. At most
 * WINDOW publishes are unacknowledged at a time; stdin is read on a thread of
 * its own (cli_lines) so the loop stays responsive. The first error (a
 * broker err, an invalid --json line) stops publishing: what was sent is
 * still waited for, then the connection is closed cleanly.
 *
 * --mid makes publishes idempotent (docs/PROTOCOL.md "Idempotent publish"):
 * one message carries MID itself; when several may be sent (stdin lines,
 * --repeat), message N carries MID-N, so the same input sent again is
 * deduplicated message by message. An ack with "dup" is reported, not an error.
 */
#include "cli.h"
#include "cli_conn.h"
#include "cli_lines.h"
#include "pub.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WINDOW 256             /* unacknowledged publishes */
#define STDIN_QUEUE (4u << 20) /* bytes of stdin lines read ahead */
#define FILE_MAX (256u << 20)  /* largest --file we read */

typedef enum { SRC_ARG, SRC_LINES, SRC_FILE } source_t;

typedef struct {
    cli_common_t o;
    const char *topic;
    const char *data; /* DATA argument */
    const char *file; /* --file PATH ("-": stdin) */
    bool json;
    long repeat;
    double rate;       /* messages per second; 0: as fast as acks allow */
    const char *mid;   /* --mid; NULL: none */
    bool mid_numbered; /* message N carries MID-N */
    source_t src;

    cli_conn_t *conn;
    cli_lines_t *lines;
    uint8_t *file_bytes;
    size_t file_len;
    gale_buf_t frame;
    gale_buf_t scratch; /* --mid: the message without its mid */

    /* the message being repeated */
    char *cur; /* SRC_LINES: the current line (owned) */
    size_t cur_len;
    uint64_t cur_lineno;
    long cur_left; /* repeats of it still to send */
    bool source_done;

    uint64_t next_id; /* ids sent so far: 1 .. next_id - 1 */
    uint64_t acked;
    uint64_t dups; /* acks with "dup" */
    uint64_t inflight;
    uint64_t max_msg;
    double next_at; /* --rate: when the next message may go */
    bool stopping;  /* no more publishing (error, interrupt, done) */
    bool finished;  /* close requested or loop stopped */
    int exit_code;

    lws_sorted_usec_list_t rate_sul;
    lws_sorted_usec_list_t timeout_sul;
} pub_t;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gale pub [options] TOPIC [DATA]\n"
            "\n"
            "Publish DATA to TOPIC; without DATA, publish each line of stdin as one message\n"
            "(blank lines are skipped). Every message carries an id and must be acknowledged\n"
            "by the broker: gale pub exits 0 only when all of them were.\n"
            "\n"
            "Options:\n"
            "  --json               DATA and lines are JSON values (validated before sending);\n"
            "                       without it they are sent as strings\n"
            "  --file PATH          send the bytes of PATH (- for stdin) as one binary message:\n"
            "                       a MessagePack bin, so --encoding msgpack is implied\n"
            "  --repeat N           publish each message N times (default 1)\n"
            "  --rate R             at most R messages per second (default: as fast as the\n"
            "                       broker acknowledges, %d unacknowledged at most)\n"
            "  --mid MID            idempotent publish (MID: 1-64 bytes): a message whose MID\n"
            "                       the broker has already seen on this topic (within its\n"
            "                       dedup window) is not delivered again; its ack says so and\n"
            "                       a line on stderr reports it (not an error). When several\n"
            "                       messages may be sent (stdin lines, --repeat N), message N\n"
            "                       carries MID-N (N = 1, 2, ... in the order sent), so the\n"
            "                       same input published again is not delivered twice; MID-N\n"
            "                       must fit in 64 bytes too\n"
            "\n"
            "%s\n%s\n"
            "Examples:\n"
            "  gale pub chat.room-1 'hello world'\n"
            "  gale pub --json sensors.t1 '{\"celsius\": 21.5}'\n"
            "  tail -f app.log | gale pub logs.app\n"
            "  gale pub --file photo.jpg files.photos\n"
            "  gale pub --json --mid order-1234 orders.new '{\"id\": 1234}'\n",
            WINDOW, cli_common_help, cli_exit_codes_help);
}

/* ---- ending ---- */

static void finish(pub_t *p, int code)
{
    if (p->exit_code == CLI_EXIT_OK)
        p->exit_code = code;
    p->stopping = true;
    if (p->finished)
        return;
    p->finished = true;
    lws_sul_cancel(&p->rate_sul);
    if (cli_conn_active(p->conn))
        cli_conn_close(p->conn); /* on_closed stops the loop */
    else
        cli_conn_stop(p->conn);
}

/* Stops publishing; closes once every sent message has its answer. */
static void stop_publishing(pub_t *p, int code)
{
    if (p->exit_code == CLI_EXIT_OK)
        p->exit_code = code;
    p->stopping = true;
    if (p->inflight == 0)
        finish(p, code);
}

/* ---- the next message ---- */

/* Sets cur to the next message; returns 1, 0 (none yet) or -1 (no more). */
static int next_message(pub_t *p)
{
    if (p->cur_left > 0)
        return 1;
    if (p->src != SRC_LINES) {
        if (p->source_done)
            return -1;
        p->source_done = true;
        p->cur_left = p->repeat;
        return 1;
    }
    for (;;) {
        free(p->cur);
        p->cur = NULL;
        int err = 0;
        int r = p->source_done
                    ? CLI_LINES_END
                    : cli_lines_next(p->lines, &p->cur, &p->cur_len, &p->cur_lineno, &err);
        if (r == CLI_LINES_NONE)
            return 0;
        if (r == CLI_LINES_END) {
            p->source_done = true;
            return -1;
        }
        if (r == CLI_LINES_ERROR) {
            p->source_done = true;
            cli_error(&p->o, "cannot read stdin: %s",
                      err == EMSGSIZE ? "a line is longer than 64 MiB" : strerror(err));
            stop_publishing(p, CLI_EXIT_USAGE);
            return -1;
        }
        if (p->cur_len == 0 || (p->cur_len == 1 && p->cur[0] == '\r'))
            continue; /* blank line */
        if (p->json && !gale_json_valid((const uint8_t *)p->cur, p->cur_len, GALE_MAX_DEPTH - 1)) {
            gale_buf_t ex;
            gale_buf_init(&ex, 0);
            cli_excerpt(&ex, (const uint8_t *)p->cur, p->cur_len, 60);
            cli_error(&p->o, "line %llu of stdin is not valid JSON: %.*s%s",
                      (unsigned long long)p->cur_lineno, (int)ex.len,
                      ex.data ? (const char *)ex.data : "",
                      p->next_id > 1 ? " (the lines before it were published)" : "");
            gale_buf_free(&ex);
            p->source_done = true;
            stop_publishing(p, CLI_EXIT_USAGE);
            return -1;
        }
        p->cur_left = p->repeat;
        return 1;
    }
}

static gale_err_t encode_current(pub_t *p, gale_buf_t *out, uint64_t id)
{
    size_t tl = strlen(p->topic);
    switch (p->src) {
    case SRC_FILE:
        return gale_encode_pub_bin(out, true, id, p->topic, tl, p->file_bytes, p->file_len);
    case SRC_ARG:
        if (p->json)
            return gale_encode_pub(out, p->o.enc, true, id, p->topic, tl, GALE_ENC_JSON,
                                   (const uint8_t *)p->data, strlen(p->data));
        return gale_encode_pub_str(out, p->o.enc, true, id, p->topic, tl, (const uint8_t *)p->data,
                                   strlen(p->data));
    case SRC_LINES:
        if (p->json)
            return gale_encode_pub(out, p->o.enc, true, id, p->topic, tl, GALE_ENC_JSON,
                                   (const uint8_t *)p->cur, p->cur_len);
        return gale_encode_pub_str(out, p->o.enc, true, id, p->topic, tl, (const uint8_t *)p->cur,
                                   p->cur_len);
    }
    return GALE_ERR_INTERNAL;
}

/* The mid of message id into buf (room for GALE_MID_MAX + 1); its length, 0 if too long. */
static size_t mid_of(const pub_t *p, uint64_t id, char *buf)
{
    int n = p->mid_numbered
                ? snprintf(buf, GALE_MID_MAX + 1, "%s-%llu", p->mid, (unsigned long long)id)
                : snprintf(buf, GALE_MID_MAX + 1, "%s", p->mid);
    return n > 0 && n <= GALE_MID_MAX ? (size_t)n : 0;
}

/*
 * Encodes message id into p->frame, with its mid under --mid: the message is encoded as
 * without one, and its data, as the broker would read it, sent again with the mid.
 */
static gale_err_t encode_message(pub_t *p, uint64_t id)
{
    if (p->mid == NULL)
        return encode_current(p, &p->frame, id);
    char mid[GALE_MID_MAX + 1];
    size_t mid_len = mid_of(p, id, mid);
    if (mid_len == 0)
        return GALE_ERR_LIMIT;
    p->scratch.len = 0;
    gale_err_t err = encode_current(p, &p->scratch, id);
    if (err != GALE_OK)
        return err;
    gale_request_t req;
    err = gale_decode_request(p->o.enc, p->scratch.data, p->scratch.len, &req, NULL);
    if (err != GALE_OK)
        return err;
    return gale_encode_pub_mid(&p->frame, p->o.enc, true, id, p->topic, strlen(p->topic), mid,
                               mid_len, p->o.enc, req.data, req.data_len);
}

static void rate_timer(lws_sorted_usec_list_t *sul);

/* Sends what the window, the rate and the source allow. */
static void pump(pub_t *p)
{
    while (!p->stopping && cli_conn_ready(p->conn) && p->inflight < WINDOW) {
        if (p->rate > 0) {
            double now = cli_now();
            if (now < p->next_at) {
                cli_conn_timer(p->conn, &p->rate_sul, rate_timer, p->next_at - now);
                return;
            }
            p->next_at =
                (p->next_at > 0 && now - p->next_at < 1.0 ? p->next_at : now) + 1.0 / p->rate;
        }
        int r = next_message(p);
        if (r == 0)
            return;
        if (r < 0) {
            if (!p->stopping && p->inflight == 0)
                finish(p, CLI_EXIT_OK);
            return;
        }
        uint64_t id = p->next_id;
        p->frame.len = p->frame.headroom;
        gale_err_t err = encode_message(p, id);
        if (err == GALE_ERR_LIMIT) {
            cli_error(&p->o,
                      "cannot publish message %llu: its mid '%s-%llu' is longer than %d bytes",
                      (unsigned long long)id, p->mid, (unsigned long long)id, GALE_MID_MAX);
            stop_publishing(p, CLI_EXIT_USAGE);
            return;
        }
        if (err != GALE_OK) {
            cli_error(&p->o, "cannot encode message %llu%s", (unsigned long long)id,
                      err == GALE_ERR_BAD_REQUEST ? ": its data cannot be converted" : "");
            stop_publishing(p, CLI_EXIT_USAGE);
            return;
        }
        size_t n = gale_buf_payload_len(&p->frame);
        if (p->max_msg > 0 && n > p->max_msg) {
            cli_error(&p->o,
                      "too_large: message %llu is %zu bytes; the broker accepts at most %llu "
                      "(max_msg)",
                      (unsigned long long)id, n, (unsigned long long)p->max_msg);
            stop_publishing(p, CLI_EXIT_SERVER);
            return;
        }
        p->next_id++;
        p->cur_left--;
        p->inflight++;
        cli_conn_send(p->conn, &p->frame);
    }
}

static void rate_timer(lws_sorted_usec_list_t *sul)
{
    pub_t *p = lws_container_of(sul, pub_t, rate_sul);
    pump(p);
}

static void timeout_timer(lws_sorted_usec_list_t *sul)
{
    pub_t *p = lws_container_of(sul, pub_t, timeout_sul);
    if (p->finished)
        return;
    if (cli_conn_ready(p->conn))
        cli_error(&p->o, "timed out after %g s: %llu of %llu messages acknowledged", p->o.timeout,
                  (unsigned long long)p->acked, (unsigned long long)(p->next_id - 1));
    else
        cli_error(&p->o, "timed out after %g s connecting to %s", p->o.timeout, p->o.url);
    finish(p, CLI_EXIT_TIMEOUT);
}

/* ---- connection events ---- */

static void on_open(void *arg, const gale_reply_t *hello)
{
    pub_t *p = arg;
    p->max_msg = hello->max_msg;
    pump(p);
}

/* An ack with "dup": the broker had the message already and did not deliver it again. */
static void report_dup(pub_t *p, const gale_reply_t *r)
{
    char mid[GALE_MID_MAX + 1] = "";
    char off[48] = "";
    p->dups++;
    if (p->mid != NULL)
        mid_of(p, r->id, mid);
    if (r->has_off)
        snprintf(off, sizeof(off), " at offset %llu", (unsigned long long)r->off);
    cli_error(&p->o,
              "message %llu is a duplicate (mid '%s'): the broker already had it%s and did not "
              "deliver it again",
              (unsigned long long)r->id, mid, off);
}

static void on_reply(void *arg, const gale_reply_t *r)
{
    pub_t *p = arg;
    bool ours = r->has_id && r->id >= 1 && r->id < p->next_id;
    if (r->op == GALE_REPLY_ACK && ours) {
        p->acked++;
        p->inflight--;
        if (r->dup)
            report_dup(p, r);
    } else if (r->op == GALE_REPLY_ERR) {
        char id[48] = "";
        if (ours) {
            p->inflight--;
            snprintf(id, sizeof(id), " (message %llu)", (unsigned long long)r->id);
        }
        cli_error(&p->o, "server error %.*s: %.*s%s%s", (int)r->code_name_len, r->code_name,
                  (int)r->msg_len, r->msg, r->msg_truncated ? "..." : "", id);
        if (ours)
            stop_publishing(p, CLI_EXIT_SERVER);
        else
            finish(p, CLI_EXIT_SERVER); /* an error we cannot place: nothing to wait for */
        return;
    } else {
        return; /* msg (we hold no subscription), pong, stray ack */
    }
    if (p->stopping) {
        if (p->inflight == 0)
            finish(p, p->exit_code);
        return;
    }
    pump(p);
}

static void on_closed(void *arg, const cli_end_info_t *end)
{
    pub_t *p = arg;
    if (end->kind != CLI_END_CLOSED) {
        cli_report_end(&p->o, end);
        if (end->established && p->next_id > 1 && p->acked < p->next_id - 1)
            cli_error(&p->o, "%llu of %llu messages were acknowledged",
                      (unsigned long long)p->acked, (unsigned long long)(p->next_id - 1));
        if (p->exit_code == CLI_EXIT_OK)
            p->exit_code = CLI_EXIT_CONNECT;
    }
    p->finished = true;
    p->stopping = true;
    cli_conn_stop(p->conn);
}

static void on_wake(void *arg)
{
    pub_t *p = arg;
    if (cli_interrupted()) {
        if (!p->finished) {
            p->exit_code = CLI_EXIT_INTERRUPTED;
            finish(p, CLI_EXIT_INTERRUPTED);
        }
        return;
    }
    pump(p);
}

static void lines_wake(void *arg)
{
    pub_t *p = arg;
    lws_cancel_service(cli_conn_context(p->conn));
}

/* ---- command line ---- */

enum { OPT_JSON = CLI_OPT_FIRST_OWN, OPT_FILE, OPT_REPEAT, OPT_RATE, OPT_MID };

/* One of pub's own options (cli_parse_options); returns 0 or an exit code. */
static int option(void *arg, int opt, const char *val)
{
    pub_t *p = arg;
    switch (opt) {
    case OPT_JSON:
        p->json = true;
        break;
    case OPT_FILE:
        p->file = val;
        break;
    case OPT_REPEAT:
        if (!cli_parse_long(val, 1, &p->repeat))
            return cli_usage_error("pub", "invalid --repeat '%s': a whole number >= 1", val);
        break;
    case OPT_RATE:
        if (!cli_parse_double(val, &p->rate))
            return cli_usage_error("pub", "invalid --rate '%s': messages per second > 0", val);
        break;
    case OPT_MID:
        if (!*val || strlen(val) > GALE_MID_MAX ||
            !gale_utf8_valid((const uint8_t *)val, strlen(val)))
            return cli_usage_error("pub", "invalid --mid '%s': 1 to %d bytes of UTF-8", val,
                                   GALE_MID_MAX);
        p->mid = val;
        break;
    }
    return 0;
}

static int read_file(pub_t *p)
{
    int fd = strcmp(p->file, "-") ? open(p->file, O_RDONLY | O_CLOEXEC) : 0;
    if (fd < 0)
        return cli_usage_error("pub", "cannot open --file '%s': %s", p->file, strerror(errno));
    size_t cap = 65536;
    p->file_bytes = malloc(cap);
    int rc = 0;
    for (;;) {
        if (p->file_bytes == NULL) {
            rc = cli_usage_error("pub", "out of memory reading '%s'", p->file);
            break;
        }
        if (p->file_len == cap) {
            if (cap >= FILE_MAX) {
                rc = cli_usage_error("pub", "--file '%s' is larger than %u MiB", p->file,
                                     FILE_MAX >> 20);
                break;
            }
            uint8_t *nb = realloc(p->file_bytes, cap * 2);
            if (nb == NULL) {
                free(p->file_bytes);
                p->file_bytes = NULL;
                continue;
            }
            p->file_bytes = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, p->file_bytes + p->file_len, cap - p->file_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = cli_usage_error("pub", "cannot read --file '%s': %s", p->file, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        p->file_len += (size_t)n;
    }
    if (fd != 0)
        close(fd);
    return rc;
}

/* --mid with several messages: MID-N for message N; the last N must fit when it is known. */
static int check_mid(pub_t *p)
{
    if (p->mid == NULL)
        return 0;
    p->mid_numbered = p->src == SRC_LINES || p->repeat > 1;
    char mid[GALE_MID_MAX + 1];
    if (p->src != SRC_LINES && mid_of(p, (uint64_t)p->repeat, mid) == 0)
        return cli_usage_error("pub",
                               "--mid '%s' with --repeat %ld: message %ld would carry the mid "
                               "'%s-%ld', longer than %d bytes",
                               p->mid, p->repeat, p->repeat, p->mid, p->repeat, GALE_MID_MAX);
    return 0;
}

static int check_args(pub_t *p, const char **ops, int nops)
{
    if (nops == 0)
        return cli_usage_error("pub", "missing TOPIC");
    if (nops > 2)
        return cli_usage_error("pub", "too many arguments (quote DATA if it has spaces)");
    p->topic = ops[0];
    p->data = nops == 2 ? ops[1] : NULL;
    if (cli_check_topic("pub", p->topic, "cannot publish to a pattern (* and > are for gale sub)"))
        return CLI_EXIT_USAGE;
    if (p->file != NULL) {
        if (p->data != NULL)
            return cli_usage_error("pub", "give either DATA or --file, not both");
        if (p->json)
            return cli_usage_error("pub", "--json and --file do not mix (--file sends bytes)");
        if (p->o.enc_set && p->o.enc != GALE_ENC_MSGPACK)
            return cli_usage_error("pub", "--file sends a MessagePack bin: use --encoding "
                                          "msgpack, or leave --encoding out");
        p->o.enc = GALE_ENC_MSGPACK;
        p->src = SRC_FILE;
        return read_file(p);
    }
    if (p->data != NULL) {
        p->src = SRC_ARG;
        if (p->json &&
            !gale_json_valid((const uint8_t *)p->data, strlen(p->data), GALE_MAX_DEPTH - 1)) {
            gale_buf_t ex;
            gale_buf_init(&ex, 0);
            cli_excerpt(&ex, (const uint8_t *)p->data, strlen(p->data), 60);
            int rc = cli_usage_error("pub",
                                     "DATA is not valid JSON: %.*s (without --json it is sent as "
                                     "a string)",
                                     (int)ex.len, ex.data ? (const char *)ex.data : "");
            gale_buf_free(&ex);
            return rc;
        }
        return 0;
    }
    p->src = SRC_LINES;
    return 0;
}

int pub_main(int argc, char **argv)
{
    static const struct option lo[] = {
        CLI_COMMON_LONGOPTS,
        {"json", no_argument, NULL, OPT_JSON},
        {"file", required_argument, NULL, OPT_FILE},
        {"repeat", required_argument, NULL, OPT_REPEAT},
        {"rate", required_argument, NULL, OPT_RATE},
        {"mid", required_argument, NULL, OPT_MID},
        {NULL, 0, NULL, 0},
    };
    pub_t p;
    memset(&p, 0, sizeof(p));
    cli_common_init(&p.o, "pub");
    p.repeat = 1;
    p.next_id = 1;
    gale_buf_init(&p.frame, LWS_PRE);
    gale_buf_init(&p.scratch, 0);
    int rc = cli_parse_options(&p.o, argc, argv, CLI_SHORTOPTS(""), lo, usage, option, &p);
    if (rc != 0)
        return rc < 0 ? CLI_EXIT_OK : rc;
    rc = check_args(&p, (const char **)argv + optind, argc - optind);
    if (rc == 0)
        rc = check_mid(&p);
    if (rc != 0)
        goto out;

    static const cli_handler_t h = {on_open, on_reply, on_closed, on_wake};
    p.conn = cli_conn_new(&p.o, &h, &p);
    if (p.conn == NULL) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (p.src == SRC_LINES) {
        if (isatty(0))
            fprintf(stderr, "gale pub: publishing each line of stdin to %s (Ctrl-D ends)\n",
                    p.topic);
        p.lines = cli_lines_start(0, STDIN_QUEUE, lines_wake, &p);
        if (p.lines == NULL) {
            cli_error(&p.o, "cannot start reading stdin: %s", strerror(errno));
            rc = CLI_EXIT_USAGE;
            goto out;
        }
    }
    if (p.o.timeout > 0)
        cli_conn_timer(p.conn, &p.timeout_sul, timeout_timer, p.o.timeout);
    cli_conn_connect(p.conn); /* a failure at once has already stopped the loop */
    if (cli_conn_run(p.conn) < 0 && p.exit_code == CLI_EXIT_OK) {
        cli_error(&p.o, "libwebsockets service loop failed");
        p.exit_code = CLI_EXIT_CONNECT;
    }
    rc = p.exit_code;
    if (rc == CLI_EXIT_OK && p.acked != p.next_id - 1)
        rc = CLI_EXIT_CONNECT; /* never report success for an unacknowledged message */
    if (p.o.verbose && rc == CLI_EXIT_OK && p.dups == 0)
        fprintf(stderr, "* %llu message%s published and acknowledged\n",
                (unsigned long long)p.acked, p.acked == 1 ? "" : "s");
    else if (p.o.verbose && rc == CLI_EXIT_OK)
        fprintf(stderr, "* %llu message%s acknowledged, %llu of them as duplicates\n",
                (unsigned long long)p.acked, p.acked == 1 ? "" : "s", (unsigned long long)p.dups);
out:
    lws_sul_cancel(&p.rate_sul);
    lws_sul_cancel(&p.timeout_sul);
    cli_lines_free(p.lines);
    cli_conn_free(p.conn);
    free(p.cur);
    free(p.file_bytes);
    gale_buf_free(&p.frame);
    gale_buf_free(&p.scratch);
    return rc;
}
