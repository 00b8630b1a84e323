/*
 * cli_common: the options, errors, URL parsing, positions and output helpers
 * that `gale pub`, `gale sub`, `gale hist` and `gale presence` share (see cli.h).
 */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char cli_exit_codes_help[] =
    "Exit status (pub, sub, hist, presence):\n"
    "  0    success (pub: every message acknowledged; sub: --count reached or stopped cleanly;\n"
    "       hist, presence: the answer printed)\n"
    "  1    the broker answered an error (its code and message are printed)\n"
    "  2    usage error: bad option or argument, invalid topic, invalid --json input\n"
    "  3    cannot connect (refused, unreachable, TLS or handshake refused) or connection lost\n"
    "  4    --timeout passed first\n"
    "  130  interrupted (SIGINT, SIGTERM), after closing the connection cleanly\n";

const char cli_common_help[] =
    "Connection options:\n"
    "  --url URL            broker WebSocket URL (default " CLI_DEFAULT_URL ", env GALE_URL);\n"
    "                       ws://HOST:PORT alone means path /ws\n"
    "  --encoding ENC       json (default) or msgpack: the subprotocol gale.v1.ENC\n"
    "  --token TOKEN        access token, sent as the query parameter token (env GALE_TOKEN)\n"
    "  --token-file PATH    read the token from PATH (surrounding whitespace ignored); gale\n"
    "                       sub reads it again when it changes and sends it as a refresh\n"
    "  --cafile PATH        CA certificates (PEM) to verify a wss:// broker\n"
    "  --insecure           wss:// without verifying the broker's certificate\n"
    "  --timeout SECONDS    give up after this long (exit 4)\n"
    "  -v, --verbose        log connection events and every frame on stderr (-vv: and lws)\n"
    "  -h, --help           print this help\n";

void cli_common_init(cli_common_t *c, const char *cmd)
{
    memset(c, 0, sizeof(*c));
    c->cmd = cmd;
    const char *env = getenv("GALE_URL");
    c->url = env != NULL && *env ? env : CLI_DEFAULT_URL;
    env = getenv("GALE_TOKEN");
    c->token = env != NULL && *env ? env : NULL;
    c->enc = GALE_ENC_JSON;
}

int cli_common_option(cli_common_t *c, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_URL: {
        cli_url_t u;
        const char *why;
        if (!cli_url_parse(arg, NULL, &u, &why)) {
            cli_usage_error(c->cmd, "invalid --url '%s': %s", arg, why);
            return -1;
        }
        c->url = arg;
        return 1;
    }
    case CLI_OPT_ENCODING:
        if (!strcmp(arg, "json")) {
            c->enc = GALE_ENC_JSON;
        } else if (!strcmp(arg, "msgpack")) {
            c->enc = GALE_ENC_MSGPACK;
        } else {
            cli_usage_error(c->cmd, "invalid --encoding '%s': use json or msgpack", arg);
            return -1;
        }
        c->enc_set = true;
        return 1;
    case CLI_OPT_TOKEN:
        if (c->token_file) {
            cli_usage_error(c->cmd, "--token and --token-file exclude each other");
            return -1;
        }
        c->token = *arg ? arg : NULL;
        c->token_opt = true;
        return 1;
    case CLI_OPT_TOKEN_FILE: {
        const char *why;
        if (c->token_opt || c->token_file) {
            cli_usage_error(c->cmd, c->token_opt ? "--token and --token-file exclude each other"
                                                 : "--token-file given twice");
            return -1;
        }
        c->token_file = arg;
        if (cli_token_file_check(c, &why) < 0) {
            cli_usage_error(c->cmd, "cannot use --token-file '%s': %s", arg, why);
            return -1;
        }
        return 1;
    }
    case CLI_OPT_CAFILE:
        c->cafile = arg;
        return 1;
    case CLI_OPT_INSECURE:
        c->insecure = true;
        return 1;
    case CLI_OPT_TIMEOUT:
        if (!cli_parse_double(arg, &c->timeout)) {
            cli_usage_error(c->cmd, "invalid --timeout '%s': a number of seconds > 0", arg);
            return -1;
        }
        return 1;
    case 'v':
        c->verbose++;
        return 1;
    }
    return 0;
}

static void vmsg(const char *cmd, const char *fmt, va_list ap)
{
    fprintf(stderr, "gale %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void cli_error(const cli_common_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(c->cmd, fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vmsg(cmd, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'gale %s --help'.\n", cmd);
    return CLI_EXIT_USAGE;
}

int cli_bad_option(const char *cmd, int opt, char **argv)
{
    const char *arg = argv[optind - 1];
    if (opt == ':')
        return cli_usage_error(cmd, "option '%s' needs a value", arg);
    if (optopt != 0 && optopt < 0x100 && strncmp(arg, "--", 2) != 0)
        return cli_usage_error(cmd, "unknown option '-%c'", optopt);
    return cli_usage_error(cmd, "unknown option '%s'", arg);
}

int cli_parse_options(cli_common_t *c, int argc, char **argv, const char *shortopts,
                      const struct option *longopts, void (*usage)(FILE *f),
                      int (*own)(void *arg, int opt, const char *val), void *arg)
{
    int opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        int r = cli_common_option(c, opt, optarg);
        if (r < 0)
            return CLI_EXIT_USAGE;
        if (r > 0)
            continue;
        if (opt == 'h' || opt == CLI_OPT_HELP) {
            usage(stdout);
            return -1;
        }
        if (opt == '?' || opt == ':')
            return cli_bad_option(c->cmd, opt, argv);
        if ((r = own(arg, opt, optarg)) != 0)
            return r;
    }
    return 0;
}

int cli_check_topic(const char *cmd, const char *topic, const char *pattern_why)
{
    if (gale_topic_valid(topic, strlen(topic)))
        return 0;
    bool pattern = gale_pattern_valid(topic, strlen(topic), NULL);
    return cli_usage_error(cmd, "invalid topic '%s': %s", topic,
                           pattern ? pattern_why
                                   : "a topic is 1-255 bytes of dot-separated, non-empty "
                                     "segments without spaces, '*' or '>'");
}

int cli_topic_operand(const char *cmd, int argc, char **argv, const char *pattern_why,
                      const char **topic)
{
    if (argc - optind == 0)
        return cli_usage_error(cmd, "missing TOPIC");
    if (argc - optind > 1)
        return cli_usage_error(cmd, "too many arguments: one TOPIC");
    *topic = argv[optind];
    return cli_check_topic(cmd, *topic, pattern_why);
}

/* The token of a token file's contents raw[0..n) (see cli_token_read). */
static bool token_take(const char *raw, size_t n, char *buf, size_t cap, const char **why)
{
    size_t a = 0, b = n;
    while (a < b && isspace((unsigned char)raw[a]))
        a++;
    while (b > a && isspace((unsigned char)raw[b - 1]))
        b--;
    size_t max = cap - 1 < GALE_TOKEN_MAX ? cap - 1 : GALE_TOKEN_MAX;
    if (a == b) {
        *why = "the file is empty";
        return false;
    }
    if (b - a > max) {
        *why = "the token is longer than 8192 bytes";
        return false;
    }
    for (size_t i = a; i < b; i++) {
        unsigned char ch = (unsigned char)raw[i];
        if (ch < 0x21 || ch > 0x7e || ch == '"' || ch == '\\') {
            *why = "the token has whitespace, quotes, backslashes or non-ASCII bytes";
            return false;
        }
    }
    memcpy(buf, raw + a, b - a);
    buf[b - a] = '\0';
    return true;
}

bool cli_token_read(const char *path, char *buf, size_t cap, const char **why)
{
    const size_t raw_cap = CLI_TOKEN_FILE_MAX + 1;
    char *raw = malloc(raw_cap);
    bool ok = false;
    size_t n = 0;
    int fd = raw ? open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY) : -1;
    if (fd < 0) {
        *why = raw ? strerror(errno) : "out of memory";
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, raw + n, raw_cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            *why = strerror(errno);
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == raw_cap) {
            *why = "the file is larger than 64 KiB";
            goto out;
        }
    }
    ok = token_take(raw, n, buf, cap, why);
out:
    if (fd >= 0)
        close(fd);
    free(raw);
    return ok;
}

int cli_token_file_check(cli_common_t *c, const char **why)
{
    struct stat st;
    if (stat(c->token_file, &st) != 0) {
        *why = strerror(errno);
        c->token_stamp.known = false; /* read it again when it is back, whatever it is */
        return -1;
    }
    cli_stamp_t now = {.known = true,
                       .dev = (uint64_t)st.st_dev,
                       .ino = (uint64_t)st.st_ino,
                       .size = (uint64_t)st.st_size,
                       .mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec};
    const cli_stamp_t *was = &c->token_stamp;
    if (was->known && was->dev == now.dev && was->ino == now.ino && was->size == now.size &&
        was->mtime_ns == now.mtime_ns)
        return 0;
    c->token_stamp = now;
    char tok[GALE_TOKEN_MAX + 1];
    if (!cli_token_read(c->token_file, tok, sizeof(tok), why))
        return -1;
    if (c->token == c->token_buf && !strcmp(tok, c->token_buf))
        return 0;
    memcpy(c->token_buf, tok, strlen(tok) + 1);
    c->token = c->token_buf;
    return 1;
}

bool cli_parse_double(const char *arg, double *out)
{
    char *end;
    errno = 0;
    double d = strtod(arg, &end);
    if (errno || end == arg || *end || !isfinite(d) || d <= 0)
        return false;
    *out = d;
    return true;
}

bool cli_parse_long(const char *arg, long min, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < min)
        return false;
    *out = v;
    return true;
}

static bool unreserved(unsigned char ch)
{
    return isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

bool cli_url_parse(const char *url, const char *token, cli_url_t *u, const char **why)
{
    memset(u, 0, sizeof(*u));
    const char *p;
    if (!strncmp(url, "ws://", 5)) {
        p = url + 5;
        u->port = 80;
    } else if (!strncmp(url, "wss://", 6)) {
        p = url + 6;
        u->tls = true;
        u->port = 443;
    } else {
        *why = "the URL must start with ws:// or wss://";
        return false;
    }
    const char *host_end;
    const char *h = p;
    size_t hlen;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (host_end == NULL) {
            *why = "unclosed '[' in the host";
            return false;
        }
        h = p + 1;
        hlen = (size_t)(host_end - h);
        p = host_end + 1;
    } else {
        hlen = strcspn(p, ":/?#");
        p += hlen;
    }
    if (hlen == 0 || hlen >= sizeof(u->host)) {
        *why = hlen ? "host name too long" : "no host";
        return false;
    }
    memcpy(u->host, h, hlen);
    if (memchr(u->host, '@', hlen) != NULL) {
        *why = "user:password@ is not supported (use --token)";
        return false;
    }
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port < 1 || port > 65535 || (*end && !strchr("/?#", *end))) {
            *why = "invalid port";
            return false;
        }
        u->port = (int)port;
        p = end;
    } else if (*p && !strchr("/?#", *p)) {
        *why = "invalid host";
        return false;
    }
    const char *frag = strchr(p, '#');
    size_t plen = frag ? (size_t)(frag - p) : strlen(p);
    size_t o = 0;
    if (plen == 0 || *p == '?') {
        o = (size_t)snprintf(u->path, sizeof(u->path), "/ws");
    }
    if (o + plen >= sizeof(u->path)) {
        *why = "path too long";
        return false;
    }
    memcpy(u->path + o, p, plen);
    o += plen;
    for (size_t i = 0; i < o; i++) {
        if ((unsigned char)u->path[i] <= ' ' || u->path[i] == 0x7f) {
            *why = "spaces or control characters in the path (percent-encode them)";
            return false;
        }
    }
    if (token != NULL) {
        const char *sep = memchr(u->path, '?', o) ? "&" : "?";
        o += (size_t)snprintf(u->path + o, sizeof(u->path) - o, "%stoken=", sep);
        for (const unsigned char *t = (const unsigned char *)token; *t; t++) {
            if (o + 4 >= sizeof(u->path)) {
                *why = "token too long";
                return false;
            }
            if (unreserved(*t))
                u->path[o++] = (char)*t;
            else
                o += (size_t)snprintf(u->path + o, sizeof(u->path) - o, "%%%02X", *t);
        }
        u->path[o] = '\0';
    }
    bool v6 = strchr(u->host, ':') != NULL;
    bool default_port = u->port == (u->tls ? 443 : 80);
    if (default_port)
        snprintf(u->hostport, sizeof(u->hostport), v6 ? "[%s]" : "%s", u->host);
    else
        snprintf(u->hostport, sizeof(u->hostport), v6 ? "[%s]:%d" : "%s:%d", u->host, u->port);
    return true;
}

void cli_json_str(gale_buf_t *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    gale_buf_append(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') {
            run++;
            continue;
        }
        gale_buf_append(out, s + i - run, run);
        run = 0;
        char esc[6] = {'\\', (char)ch, 0, 0, 0, 0};
        size_t en = 2;
        switch (ch) {
        case '"':
        case '\\':
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 15];
            en = 6;
        }
        gale_buf_append(out, esc, en);
    }
    gale_buf_append(out, s + n - run, run);
    gale_buf_append(out, "\"", 1);
}

void cli_json_compact(gale_buf_t *out, const uint8_t *buf, size_t len)
{
    size_t start = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        uint8_t ch = buf[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            gale_buf_append(out, buf + start, i - start);
            start = i + 1;
        }
    }
    if (len > start)
        gale_buf_append(out, buf + start, len - start);
}

bool cli_data_json(gale_buf_t *out, gale_enc_t enc, const uint8_t *data, size_t len)
{
    if (enc == GALE_ENC_MSGPACK)
        return gale_convert_data(out, GALE_ENC_JSON, GALE_ENC_MSGPACK, data, len) == GALE_OK;
    if (!gale_json_valid(data, len, 256))
        return false;
    cli_json_compact(out, data, len);
    return !out->oom;
}

void cli_excerpt(gale_buf_t *out, const uint8_t *s, size_t n, size_t max)
{
    size_t take = n < max ? n : max;
    for (size_t i = 0; i < take; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f) {
            char esc[8];
            int k = snprintf(esc, sizeof(esc), "\\x%02x", s[i]);
            gale_buf_append(out, esc, (size_t)k);
        } else {
            gale_buf_append(out, s + i, 1);
        }
    }
    if (take < n)
        gale_buf_append(out, "...", 3);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- stream positions ---- */

bool cli_pos_set(cli_pos_t *pos, const char *ep, size_t ep_len, uint64_t off)
{
    if (ep_len > GALE_EP_MAX)
        return false;
    memcpy(pos->ep, ep, ep_len);
    pos->ep[ep_len] = '\0';
    pos->ep_len = ep_len;
    pos->off = off;
    pos->known = true;
    return true;
}

bool cli_pos_parse(const char *arg, cli_pos_t *pos, const char **why)
{
    const char *colon = strrchr(arg, ':');
    if (colon == NULL) {
        *why = "no ':' between EP and OFF";
        return false;
    }
    size_t ep_len = (size_t)(colon - arg);
    if (ep_len == 0) {
        *why = "EP (the epoch) is empty";
        return false;
    }
    const char *o = colon + 1;
    if (*o == '\0' || strspn(o, "0123456789") != strlen(o)) {
        *why = "OFF is not a whole number >= 0";
        return false;
    }
    errno = 0;
    unsigned long long off = strtoull(o, NULL, 10);
    if (errno == ERANGE) {
        *why = "OFF is too large";
        return false;
    }
    if (!cli_pos_set(pos, arg, ep_len, off)) {
        *why = "EP is longer than 64 bytes";
        return false;
    }
    return true;
}

/* ---- printing messages ---- */

bool cli_format_parse(const char *arg, cli_format_t *fmt)
{
    if (!strcmp(arg, "line"))
        *fmt = CLI_FMT_LINE;
    else if (!strcmp(arg, "json"))
        *fmt = CLI_FMT_JSON;
    else if (!strcmp(arg, "data"))
        *fmt = CLI_FMT_DATA;
    else
        return false;
    return true;
}

bool cli_format_message(gale_buf_t *b, cli_format_t fmt, gale_enc_t enc, const cli_message_t *m)
{
    b->len = 0;
    switch (fmt) {
    case CLI_FMT_LINE:
        gale_buf_append(b, m->topic, m->topic_len);
        gale_buf_append(b, " ", 1);
        if (!cli_data_json(b, enc, m->data, m->data_len))
            return false;
        break;
    case CLI_FMT_JSON:
        gale_buf_append(b, "{\"topic\":", 9);
        cli_json_str(b, m->topic, m->topic_len);
        if (m->has_ep) {
            gale_buf_append(b, ",\"ep\":", 6);
            cli_json_str(b, m->ep, m->ep_len);
        }
        if (m->has_off) {
            char num[32];
            int n = snprintf(num, sizeof(num), ",\"off\":%llu", (unsigned long long)m->off);
            gale_buf_append(b, num, (size_t)n);
        }
        if (m->bin)
            gale_buf_append(b, ",\"bin\":", 7);
        else
            gale_buf_append(b, ",\"data\":", 8);
        if (!cli_data_json(b, enc, m->data, m->data_len))
            return false;
        gale_buf_append(b, "}", 1);
        break;
    case CLI_FMT_DATA:
        if (!cli_data_json(b, enc, m->data, m->data_len))
            return false;
        break;
    }
    gale_buf_append(b, "\n", 1);
    return !b->oom;
}

/* ---- printing presence members ---- */

/* A user as one word of a text line: raw when that is unambiguous, else a JSON string. */
static void put_word(gale_buf_t *out, const char *s, size_t n)
{
    bool raw = n > 0 && !(n == 1 && s[0] == '-');
    for (size_t i = 0; i < n && raw; i++) {
        unsigned char ch = (unsigned char)s[i];
        raw = ch > ' ' && ch != '"' && ch != '\\' && ch != 0x7f;
    }
    if (raw)
        gale_buf_append(out, s, n);
    else
        cli_json_str(out, s, n);
}

bool cli_member_text(gale_buf_t *out, gale_enc_t enc, const cli_member_t *m)
{
    put_word(out, m->conn, m->conn_len);
    gale_buf_append(out, " ", 1);
    if (m->has_user)
        put_word(out, m->user, m->user_len);
    else
        gale_buf_append(out, "-", 1);
    gale_buf_append(out, " ", 1);
    if (m->info == NULL)
        gale_buf_append(out, "-", 1);
    else if (!cli_data_json(out, enc, m->info, m->info_len))
        return false;
    return !out->oom;
}

bool cli_member_json(gale_buf_t *out, gale_enc_t enc, const cli_member_t *m)
{
    gale_buf_append(out, "\"conn\":", 7);
    cli_json_str(out, m->conn, m->conn_len);
    if (m->has_user) {
        gale_buf_append(out, ",\"user\":", 8);
        cli_json_str(out, m->user, m->user_len);
    }
    if (m->info != NULL) {
        gale_buf_append(out, ",\"info\":", 8);
        if (!cli_data_json(out, enc, m->info, m->info_len))
            return false;
    }
    return !out->oom;
}

int cli_write_line(const cli_common_t *c, const gale_buf_t *line)
{
    if (fwrite(line->data, 1, line->len, stdout) == line->len && fflush(stdout) == 0)
        return 0;
    if (errno == EPIPE)
        return 1; /* the reader went away (gale sub | head -1): stop quietly */
    cli_error(c, "cannot write to stdout: %s", strerror(errno));
    return -1;
}
