/*
 * The NATS client protocol, server side (gale_nats.h): the parser of what a client sends and
 * the encoders of what the server sends. nats-server 2.9 (server/parser.go, client.go) is the
 * reference; where gale differs, the comment says so and why.
 *
 * The parser is a pure function of the bytes given: it keeps no state between calls, so a
 * reader appends what arrives and calls again from the first unconsumed byte. Everything it
 * decides on a prefix of a stream (an error, or a complete message) it decides the same way
 * on the whole stream, whatever the split.
 */
#include "gale_nats.h"

#include "gale_json.h"
#include "internal.h"

#define WHY_UNKNOWN "Unknown Protocol Operation"
#define WHY_CONTROL "maximum control line exceeded"
#define WHY_PAYLOAD "Maximum Payload Violation"
#define WHY_PUB_ARGS "Invalid Publish Arguments"
#define WHY_SIZE "Bad or Missing Size"
#define WHY_HDR_SIZE "Bad or Missing Header Size"
#define WHY_TOTAL_SIZE "Bad or Missing Total Size"
#define WHY_HDR_OVER "Header Size Larger Than Total Size"
#define WHY_SUB_ARGS "Invalid Subscription Arguments"
#define WHY_UNSUB_ARGS "Invalid Unsubscribe Arguments"
#define WHY_UNSUB_MAX "Invalid Unsubscribe Maximum"
#define WHY_SID "Invalid Subscription ID"

/* The operations a client may send, upper case (names are matched case-insensitively). */
static const struct {
    const char *name;
    gale_nats_op_t op;
} OPS[] = {
    {"CONNECT", GALE_NATS_CONNECT}, {"PUB", GALE_NATS_PUB},     {"HPUB", GALE_NATS_HPUB},
    {"SUB", GALE_NATS_SUB},         {"UNSUB", GALE_NATS_UNSUB}, {"PING", GALE_NATS_PING},
    {"PONG", GALE_NATS_PONG},       {"+OK", GALE_NATS_OK},      {"-ERR", GALE_NATS_ERR},
};
#define NOPS (sizeof(OPS) / sizeof(OPS[0]))

/* HPUB's four arguments, and one more to notice extras. */
#define MAX_ARGS 5

/* The longest -ERR text sent. */
#define ERR_TEXT_MAX 200

static bool is_sep(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* What ends the operation's name: an argument separator or the line end. */
static bool ends_word(uint8_t c)
{
    return is_sep(c) || c == '\r' || c == '\n';
}

static uint8_t ascii_upper(uint8_t c)
{
    return c >= 'a' && c <= 'z' ? (uint8_t)(c - 'a' + 'A') : c;
}

/* True if w[0..n) is, ignoring ASCII case, the start of name (or all of it). */
static bool starts_name(const uint8_t *w, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (name[i] == '\0' || ascii_upper(w[i]) != (uint8_t)name[i])
            return false;
    return true;
}

/* The operation named exactly w[0..n), or 0. */
static gale_nats_op_t op_named(const uint8_t *w, size_t n)
{
    for (size_t i = 0; i < NOPS; i++)
        if (starts_name(w, n, OPS[i].name) && OPS[i].name[n] == '\0')
            return OPS[i].op;
    return 0;
}

/* True if more bytes could still make w[0..n) the name of an operation. */
static bool op_possible(const uint8_t *w, size_t n)
{
    for (size_t i = 0; i < NOPS; i++)
        if (starts_name(w, n, OPS[i].name))
            return true;
    return false;
}

static int fail(const char **why, const char *text)
{
    if (why != NULL)
        *why = text;
    return -1;
}

/* The arguments of a control line, split at runs of spaces and tabs. */
typedef struct {
    const uint8_t *p[MAX_ARGS];
    size_t n[MAX_ARGS];
    int count; /* MAX_ARGS means "too many" for every operation */
} args_t;

static void split_args(const uint8_t *s, size_t n, args_t *a)
{
    size_t i = 0;
    a->count = 0;
    while (a->count < MAX_ARGS) {
        while (i < n && is_sep(s[i]))
            i++;
        if (i == n)
            return;
        a->p[a->count] = s + i;
        while (i < n && !is_sep(s[i]))
            i++;
        a->n[a->count] = (size_t)(s + i - a->p[a->count]);
        a->count++;
    }
}

/*
 * A size or count: decimal digits only (no sign, leading zeros allowed) whose value fits
 * uint64. nats-server takes at most 9 digits; gale takes any value and lets max_payload
 * refuse the large ones, so a 10-digit size is a payload violation rather than a parse error.
 */
static bool parse_u64(const uint8_t *s, size_t n, uint64_t *v)
{
    uint64_t x = 0;
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *v = x;
    return true;
}

/* s[0..*n) without its leading and trailing spaces and tabs. */
static const uint8_t *trim(const uint8_t *s, size_t *n)
{
    while (*n > 0 && is_sep(*s))
        s++, (*n)--;
    while (*n > 0 && is_sep(s[*n - 1]))
        (*n)--;
    return s;
}

/*
 * PUB <subject> [reply-to] <#bytes> or HPUB <subject> [reply-to] <#header bytes> <#total
 * bytes>: fills the subject, reply and header_len of *m and the payload size in *size.
 */
static int pub_args(const args_t *a, bool hpub, size_t max_payload, gale_nats_msg_t *m,
                    size_t *size, const char **why)
{
    int least = hpub ? 3 : 2;
    if (a->count != least && a->count != least + 1)
        return fail(why, WHY_PUB_ARGS);
    int last = a->count - 1;
    uint64_t total, hdr = 0;
    if (hpub && !parse_u64(a->p[last - 1], a->n[last - 1], &hdr))
        return fail(why, WHY_HDR_SIZE);
    if (!parse_u64(a->p[last], a->n[last], &total))
        return fail(why, hpub ? WHY_TOTAL_SIZE : WHY_SIZE);
    if (hdr > total)
        return fail(why, WHY_HDR_OVER);
    if (total > max_payload)
        return fail(why, WHY_PAYLOAD);
    m->subject = (const char *)a->p[0];
    m->subject_len = a->n[0];
    if (a->count == least + 1) {
        m->reply = (const char *)a->p[1];
        m->reply_len = a->n[1];
    }
    m->header_len = (size_t)hdr;
    *size = (size_t)total;
    return 1;
}

static bool sid_ok(size_t n)
{
    return n >= 1 && n <= GALE_NATS_SID_MAX;
}

/* SUB <subject> [queue group] <sid> */
static int sub_args(const args_t *a, gale_nats_msg_t *m, const char **why)
{
    if (a->count != 2 && a->count != 3)
        return fail(why, WHY_SUB_ARGS);
    int last = a->count - 1;
    if (!sid_ok(a->n[last]))
        return fail(why, WHY_SID);
    m->subject = (const char *)a->p[0];
    m->subject_len = a->n[0];
    if (a->count == 3) {
        m->queue = (const char *)a->p[1];
        m->queue_len = a->n[1];
    }
    m->sid = (const char *)a->p[last];
    m->sid_len = a->n[last];
    return 1;
}

/*
 * UNSUB <sid> [max_msgs]. nats-server reads a max that is not a number as "none" and
 * unsubscribes at once; gale refuses it, as any other malformed number.
 */
static int unsub_args(const args_t *a, gale_nats_msg_t *m, const char **why)
{
    if (a->count != 1 && a->count != 2)
        return fail(why, WHY_UNSUB_ARGS);
    if (!sid_ok(a->n[0]))
        return fail(why, WHY_SID);
    if (a->count == 2) {
        if (!parse_u64(a->p[1], a->n[1], &m->max))
            return fail(why, WHY_UNSUB_MAX);
        m->has_max = true;
    }
    m->sid = (const char *)a->p[0];
    m->sid_len = a->n[0];
    return 1;
}

/*
 * The payload of size bytes at buf[head..) and the CRLF after it. nats-server requires
 * exactly CRLF there (a bare LF is a protocol error) and so does gale: a client that
 * miscounted its payload is told at once rather than having its next message misread.
 */
static int take_payload(const uint8_t *buf, size_t len, size_t head, size_t size,
                        gale_nats_msg_t *m, size_t *used, const char **why)
{
    size_t avail = len - head;
    const uint8_t *p = buf + head;
    if (avail > size && p[size] != '\r')
        return fail(why, WHY_UNKNOWN);
    if (avail < size || avail - size < 2)
        return 0;
    if (p[size + 1] != '\n')
        return fail(why, WHY_UNKNOWN);
    m->payload = p;
    m->payload_len = size;
    *used = head + size + 2;
    return 1;
}

/* The arguments of the complete control line of operation op: args[0..n), head its size. */
static int parse_line(const uint8_t *buf, size_t len, size_t head, const uint8_t *args, size_t n,
                      size_t max_payload, gale_nats_msg_t *m, size_t *used, const char **why)
{
    args_t a;
    size_t size = 0;
    int rc;
    switch (m->op) {
    case GALE_NATS_PUB:
    case GALE_NATS_HPUB:
        split_args(args, n, &a);
        rc = pub_args(&a, m->op == GALE_NATS_HPUB, max_payload, m, &size, why);
        return rc < 0 ? rc : take_payload(buf, len, head, size, m, used, why);
    case GALE_NATS_SUB:
        split_args(args, n, &a);
        rc = sub_args(&a, m, why);
        break;
    case GALE_NATS_UNSUB:
        split_args(args, n, &a);
        rc = unsub_args(&a, m, why);
        break;
    case GALE_NATS_CONNECT:
    case GALE_NATS_ERR:
        /* The rest of the line, as sent: CONNECT's JSON (checked by gale_nats_parse_connect),
         * or -ERR's text (which gale ignores, so it need not be quoted). */
        m->json = (const char *)trim(args, &n);
        m->json_len = n;
        rc = 1;
        break;
    default:
        /* PING, PONG, +OK take nothing. nats-server skips whatever follows them up to the
         * line end ("PINGPONG" is a PING there); gale allows spaces and tabs only. */
        trim(args, &n);
        rc = n == 0 ? 1 : fail(why, WHY_UNKNOWN);
        break;
    }
    if (rc == 1)
        *used = head;
    return rc;
}

int gale_nats_parse(const uint8_t *buf, size_t len, size_t max_payload, gale_nats_msg_t *m,
                    size_t *used, const char **why)
{
    *used = 0;
    if (why != NULL)
        *why = NULL;
    if (len == 0)
        return 0;
    /* Only the first GALE_NATS_CONTROL_MAX bytes can hold the line end: the answer on a
     * prefix of a stream is then the answer on the whole stream. */
    size_t scan = len < GALE_NATS_CONTROL_MAX ? len : GALE_NATS_CONTROL_MAX;
    const uint8_t *nl = memchr(buf, '\n', scan);
    size_t end = nl != NULL ? (size_t)(nl - buf) : scan;
    size_t w = 0;
    while (w < end && !ends_word(buf[w]))
        w++;
    /* The name is checked as soon as it is known to be wrong (as nats-server does, byte by
     * byte), so that another protocol (an HTTP request, a gale hello) is refused at once.
     * An empty line has an empty name: nats-server refuses it too. */
    gale_nats_op_t op = op_named(buf, w);
    bool name_done = w < end || nl != NULL;
    if (name_done ? op == 0 : !op_possible(buf, w))
        return fail(why, WHY_UNKNOWN);
    if (nl == NULL)
        return len >= GALE_NATS_CONTROL_MAX ? fail(why, WHY_CONTROL) : 0;
    /* A line ends with CRLF or a bare LF (nats-server takes both). A CR anywhere else in the
     * line would be taken into an argument by nats-server; gale refuses it. */
    size_t line = end;
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    if (memchr(buf, '\r', line) != NULL)
        return fail(why, WHY_UNKNOWN);
    memset(m, 0, sizeof(*m));
    m->op = op;
    return parse_line(buf, len, end + 1, buf + w, line - w, max_payload, m, used, why);
}

/* ---- CONNECT ---- */

/* The walk over CONNECT's members: the last occurrence of a field wins, as in Go's JSON. */
typedef struct {
    gale_nats_connect_t *c;
    const uint8_t *token; /* the auth_token and name values (quotes included), NULL if absent */
    size_t token_len;
    const uint8_t *name;
    size_t name_len;
    const char *why;
} connect_walk_t;

static bool stop(connect_walk_t *w, const char *why)
{
    w->why = why;
    return false;
}

/* A boolean field; null leaves the default, as Go's encoding/json (nats-server) does. */
static bool bool_field(connect_walk_t *w, const gale_json_member_t *m, bool *v, const char *why)
{
    if (m->kind == GALE_JSON_TRUE || m->kind == GALE_JSON_FALSE)
        *v = m->kind == GALE_JSON_TRUE;
    else if (m->kind != GALE_JSON_NULL)
        return stop(w, why);
    return true;
}

static bool string_field(connect_walk_t *w, const gale_json_member_t *m, const uint8_t **v,
                         size_t *n, const char *why)
{
    if (m->kind == GALE_JSON_STRING) {
        *v = m->val;
        *n = m->val_len;
    } else if (m->kind != GALE_JSON_NULL) {
        return stop(w, why);
    }
    return true;
}

/* An integer that fits int64: no fraction or exponent (Go refuses 1.0 for an int). */
static bool parse_i64(const uint8_t *s, size_t n, int64_t *v)
{
    bool neg = n > 0 && s[0] == '-';
    uint64_t u;
    if (!parse_u64(s + neg, n - neg, &u))
        return false;
    if (u > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
        return false;
    *v = neg ? (u == 0 ? 0 : -(int64_t)(u - 1) - 1) : (int64_t)u;
    return true;
}

static bool connect_member(const gale_json_member_t *m, void *arg)
{
    connect_walk_t *w = arg;
    gale_nats_connect_t *c = w->c;
    if (gale_json_key_is(m, "verbose"))
        return bool_field(w, m, &c->verbose, "verbose is not a boolean");
    if (gale_json_key_is(m, "pedantic"))
        return bool_field(w, m, &c->pedantic, "pedantic is not a boolean");
    if (gale_json_key_is(m, "echo"))
        return bool_field(w, m, &c->echo, "echo is not a boolean");
    if (gale_json_key_is(m, "headers"))
        return bool_field(w, m, &c->headers, "headers is not a boolean");
    if (gale_json_key_is(m, "auth_token"))
        return string_field(w, m, &w->token, &w->token_len, "auth_token is not a string");
    if (gale_json_key_is(m, "name"))
        return string_field(w, m, &w->name, &w->name_len, "name is not a string");
    if (gale_json_key_is(m, "protocol")) {
        if (m->kind == GALE_JSON_NULL)
            return true;
        if (m->kind != GALE_JSON_NUMBER || !parse_i64(m->val, m->val_len, &c->protocol))
            return stop(w, "protocol is not an integer");
        return true;
    }
    return true; /* user, pass, lang, version, sig, jwt, nkey, ...: not gale's business */
}

/*
 * Unescapes the string value v[0..n) (quotes included) into buf[*off..cap), NUL-terminated.
 * Only when its escaped form fits there, so that gale_json_string never needs a temporary.
 */
static bool put_string(const uint8_t *v, size_t n, char *buf, size_t cap, size_t *off,
                       const char **s, size_t *len)
{
    size_t room = cap - *off;
    if (n - 2 >= room)
        return false;
    size_t k = gale_json_string(v, n, buf + *off, room);
    if (k == SIZE_MAX)
        return false;
    *s = buf + *off;
    *len = k;
    *off += k + 1;
    return true;
}

bool gale_nats_parse_connect(const char *json, size_t len, gale_nats_connect_t *c, char *buf,
                             size_t cap, const char **why)
{
    /* nats-server's defaults for a client (defaultOpts in client.go): a field left out of
     * CONNECT keeps them. */
    *c = (gale_nats_connect_t){.verbose = true, .pedantic = true, .echo = true};
    connect_walk_t w = {.c = c};
    int rc = gale_json_object((const uint8_t *)json, len, GALE_MAX_DEPTH, connect_member, &w);
    const char *bad = NULL;
    if (rc == 0)
        bad = "options are not well-formed JSON";
    else if (rc == -1)
        bad = "options are not a JSON object";
    else if (rc == -2)
        bad = w.why;
    size_t off = 0;
    if (bad == NULL && w.token != NULL &&
        !put_string(w.token, w.token_len, buf, cap, &off, &c->auth_token, &c->auth_token_len))
        bad = "auth_token is too long or has a NUL or lone surrogate";
    if (bad == NULL && w.name != NULL &&
        !put_string(w.name, w.name_len, buf, cap, &off, &c->name, &c->name_len))
        bad = "name is too long or has a NUL or lone surrogate";
    if (bad != NULL) {
        if (why != NULL)
            *why = bad;
        return false;
    }
    return true;
}

/* ---- encoders ---- */

/* key (with its punctuation, e.g. ,"name":) and the JSON string v (NULL: ""). */
static void put_str_field(gale_buf_t *out, const char *key, const char *v)
{
    gale__buf_puts(out, key);
    gale__json_put_str(out, (const uint8_t *)(v != NULL ? v : ""), v != NULL ? strlen(v) : 0);
}

gale_err_t gale_nats_encode_info(gale_buf_t *out, const gale_nats_info_t *i)
{
    size_t start = out->len;
    /* nats-server's field order (Info in server.go); auth_required is left out when false, as
     * there. jetstream false is written although nats-server omits it: clients read both the
     * same way, and it says plainly that there is none. */
    put_str_field(out, "INFO {\"server_id\":", i->server_id);
    put_str_field(out, ",\"server_name\":", i->server_name);
    put_str_field(out, ",\"version\":", i->version);
    gale__buf_puts(out, ",\"proto\":1");
    put_str_field(out, ",\"host\":", i->host);
    gale__buf_puts(out, ",\"port\":");
    gale__buf_put_i64(out, i->port);
    gale__buf_puts(out, ",\"headers\":false");
    if (i->auth_required)
        gale__buf_puts(out, ",\"auth_required\":true");
    gale__buf_puts(out, ",\"max_payload\":");
    gale__buf_put_u64(out, i->max_payload);
    gale__buf_puts(out, ",\"jetstream\":false,\"client_id\":");
    gale__buf_put_u64(out, i->client_id);
    gale__buf_puts(out, "}\r\n");
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_nats_encode_msg(gale_buf_t *out, const char *subject, size_t subject_len,
                                const char *sid, size_t sid_len, const char *reply,
                                size_t reply_len, const uint8_t *payload, size_t payload_len)
{
    size_t start = out->len;
    gale__buf_puts(out, "MSG ");
    gale_buf_append(out, subject, subject_len);
    gale__buf_put(out, ' ');
    gale_buf_append(out, sid, sid_len);
    if (reply != NULL) {
        gale__buf_put(out, ' ');
        gale_buf_append(out, reply, reply_len);
    }
    gale__buf_put(out, ' ');
    gale__buf_put_u64(out, payload_len);
    gale_buf_append(out, "\r\n", 2);
    gale_buf_append(out, payload, payload_len);
    gale_buf_append(out, "\r\n", 2);
    return gale__encode_finish(out, start, GALE_OK);
}

static gale_err_t put_line(gale_buf_t *out, const char *line)
{
    size_t start = out->len;
    gale__buf_puts(out, line);
    return gale__encode_finish(out, start, GALE_OK);
}

gale_err_t gale_nats_encode_ping(gale_buf_t *out)
{
    return put_line(out, "PING\r\n");
}

gale_err_t gale_nats_encode_pong(gale_buf_t *out)
{
    return put_line(out, "PONG\r\n");
}

gale_err_t gale_nats_encode_ok(gale_buf_t *out)
{
    return put_line(out, "+OK\r\n");
}

gale_err_t gale_nats_encode_err(gale_buf_t *out, const char *text)
{
    size_t start = out->len;
    char t[ERR_TEXT_MAX];
    size_t n = 0;
    /* Clients take the text between the quotes up to the line end: a quote or a line break
     * in it would cut it short or start a bogus message. */
    for (; text != NULL && text[n] != '\0' && n < ERR_TEXT_MAX; n++) {
        unsigned char c = (unsigned char)text[n];
        t[n] = c >= 0x20 && c < 0x7F && c != '\'' ? (char)c : '?';
    }
    gale__buf_puts(out, "-ERR '");
    gale_buf_append(out, t, n);
    gale__buf_puts(out, "'\r\n");
    return gale__encode_finish(out, start, GALE_OK);
}
