/*
 * Fuzzes the NATS client protocol, server side (protocol/nats.c). The input is two control
 * bytes and a stream: byte 0 picks max_payload, byte 1 where the stream is cut in two.
 *
 * The stream is parsed message by message, as a connection reads it; every result is
 * checked (used within the input, pointers inside the message, lengths consistent, the
 * payload followed by CRLF, error texts that go out unchanged in -ERR) and must be the same
 * when the stream arrives in two chunks cut at the chosen place. Each CONNECT's options (and
 * the whole stream, as JSON) go through gale_nats_parse_connect; each PUB, HPUB and SUB is
 * encoded back as a MSG, read back by an independent reader here.
 */
#include "fuzz_check.h"
#include "gale_nats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One parse result, pointers as offsets into the stream, so two reads can be compared. */
typedef struct {
    int rc;
    const char *why;
    size_t at, used;
    gale_nats_op_t op;
    ptrdiff_t subject, reply, queue, sid, payload, json;
    size_t subject_len, reply_len, queue_len, sid_len, payload_len, header_len, json_len;
    bool has_max;
    uint64_t max;
} rec_t;

static ptrdiff_t off_of(const void *p, const uint8_t *base)
{
    return p != NULL ? (const uint8_t *)p - base : -1;
}

static bool rec_eq(const rec_t *a, const rec_t *b)
{
    return a->rc == b->rc && (a->why == b->why || (a->why && b->why && !strcmp(a->why, b->why))) &&
           a->at == b->at && a->used == b->used && a->op == b->op && a->subject == b->subject &&
           a->reply == b->reply && a->queue == b->queue && a->sid == b->sid &&
           a->payload == b->payload && a->json == b->json && a->subject_len == b->subject_len &&
           a->reply_len == b->reply_len && a->queue_len == b->queue_len &&
           a->sid_len == b->sid_len && a->payload_len == b->payload_len &&
           a->header_len == b->header_len && a->json_len == b->json_len &&
           a->has_max == b->has_max && a->max == b->max;
}

/* An argument: 1 or more bytes, none of them a separator or a line end. */
static void check_arg(const char *p, size_t n, const uint8_t *msg, size_t used)
{
    CHECK(p != NULL && n >= 1);
    CHECK((const uint8_t *)p >= msg && (const uint8_t *)p + n <= msg + used);
    for (size_t i = 0; i < n; i++)
        CHECK(p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n');
}

/* A message msg[0..used) that parsed as *m. */
static void check_msg(const uint8_t *msg, size_t len, size_t used, size_t max_payload,
                      const gale_nats_msg_t *m)
{
    CHECK(used >= 2 && used <= len);
    CHECK(m->op >= GALE_NATS_CONNECT && m->op <= GALE_NATS_ERR);
    bool pub = m->op == GALE_NATS_PUB || m->op == GALE_NATS_HPUB;
    bool sub = m->op == GALE_NATS_SUB;
    /* The control line ends with the first LF, within the limit. */
    const uint8_t *nl = memchr(msg, '\n', used);
    CHECK(nl != NULL);
    size_t head = (size_t)(nl - msg) + 1;
    CHECK(head <= GALE_NATS_CONTROL_MAX);
    CHECK(memchr(msg, '\r', head) == NULL || memchr(msg, '\r', head) == nl - 1);
    if (pub) {
        CHECK(m->payload == msg + head);
        CHECK(m->payload_len == used - head - 2 && m->payload_len <= max_payload);
        CHECK(msg[used - 2] == '\r' && msg[used - 1] == '\n');
        CHECK(m->header_len <= m->payload_len);
        CHECK(m->op == GALE_NATS_HPUB || m->header_len == 0);
    } else {
        CHECK(used == head && m->payload == NULL && m->payload_len == 0 && m->header_len == 0);
    }
    if (pub || sub)
        check_arg(m->subject, m->subject_len, msg, head);
    else
        CHECK(m->subject == NULL && m->subject_len == 0);
    if (m->reply != NULL)
        check_arg(m->reply, m->reply_len, msg, head);
    CHECK(m->reply == NULL ? m->reply_len == 0 : pub);
    if (m->queue != NULL)
        check_arg(m->queue, m->queue_len, msg, head);
    CHECK(m->queue == NULL ? m->queue_len == 0 : sub);
    if (sub || m->op == GALE_NATS_UNSUB) {
        check_arg(m->sid, m->sid_len, msg, head);
        CHECK(m->sid_len <= GALE_NATS_SID_MAX);
    } else {
        CHECK(m->sid == NULL && m->sid_len == 0);
    }
    CHECK(!m->has_max || m->op == GALE_NATS_UNSUB);
    CHECK(m->has_max || m->max == 0);
    if (m->op == GALE_NATS_CONNECT || m->op == GALE_NATS_ERR) {
        CHECK(m->json != NULL && (const uint8_t *)m->json >= msg);
        CHECK((const uint8_t *)m->json + m->json_len <= nl);
        CHECK(memchr(m->json, '\r', m->json_len) == NULL);
        if (m->json_len > 0) {
            CHECK(m->json[0] != ' ' && m->json[0] != '\t');
            CHECK(m->json[m->json_len - 1] != ' ' && m->json[m->json_len - 1] != '\t');
        }
    } else {
        CHECK(m->json == NULL && m->json_len == 0);
    }
    /* The message alone parses the same; one byte less is incomplete. */
    gale_nats_msg_t again;
    size_t u = 0;
    const char *why = NULL;
    CHECK(gale_nats_parse(msg, used, max_payload, &again, &u, &why) == 1 && u == used);
    CHECK(again.op == m->op && again.payload_len == m->payload_len && again.sid == m->sid);
    CHECK(gale_nats_parse(msg, used - 1, max_payload, &again, &u, &why) == 0 && u == 0);
}

/* An error text goes out in -ERR as it is. */
static void check_why(const char *why)
{
    CHECK(why != NULL);
    size_t n = strlen(why);
    CHECK(n > 0 && n <= 200);
    gale_buf_t b;
    gale_buf_init(&b, 0);
    CHECK(gale_nats_encode_err(&b, why) == GALE_OK);
    CHECK(b.len == n + 9 && !memcmp(b.data, "-ERR '", 6) && !memcmp(b.data + 6, why, n) &&
          !memcmp(b.data + 6 + n, "'\r\n", 3));
    gale_buf_free(&b);
}

/*
 * Reads s[0..n) as a connection does, in two chunks cut at `cut` (n: one chunk), into
 * out[0..); pointers are made relative to the connection's own copy. Returns the count.
 */
static size_t read_stream(const uint8_t *s, size_t n, size_t cut, size_t max_payload, rec_t *out,
                          bool check)
{
    uint8_t *acc = malloc(n > 0 ? n : 1);
    CHECK(acc != NULL);
    size_t have = 0, pos = 0, k = 0;
    for (int c = 0; c < 2; c++) {
        size_t upto = c == 0 ? cut : n;
        memcpy(acc + have, s + have, upto - have);
        have = upto;
        for (;;) {
            gale_nats_msg_t m;
            size_t used = 99;
            const char *why = NULL;
            int rc = gale_nats_parse(acc + pos, have - pos, max_payload, &m, &used, &why);
            CHECK(rc >= -1 && rc <= 1);
            CHECK(rc == 1 ? used > 0 && used <= have - pos : used == 0);
            CHECK((rc == -1) == (why != NULL));
            if (rc == 0)
                break;
            rec_t *r = &out[k++];
            memset(r, 0, sizeof(*r));
            r->rc = rc;
            r->why = why;
            r->at = pos;
            r->used = used;
            if (rc < 0) {
                check_why(why);
                goto done;
            }
            if (check)
                check_msg(acc + pos, have - pos, used, max_payload, &m);
            r->op = m.op;
            r->subject = off_of(m.subject, acc);
            r->reply = off_of(m.reply, acc);
            r->queue = off_of(m.queue, acc);
            r->sid = off_of(m.sid, acc);
            r->payload = off_of(m.payload, acc);
            r->json = off_of(m.json, acc);
            r->subject_len = m.subject_len;
            r->reply_len = m.reply_len;
            r->queue_len = m.queue_len;
            r->sid_len = m.sid_len;
            r->payload_len = m.payload_len;
            r->header_len = m.header_len;
            r->json_len = m.json_len;
            r->has_max = m.has_max;
            r->max = m.max;
            pos += used;
        }
    }
    /* Left over: an incomplete message, which cannot be a whole control line too long. */
    if (have - pos >= GALE_NATS_CONTROL_MAX)
        CHECK(memchr(acc + pos, '\n', GALE_NATS_CONTROL_MAX) != NULL);
done:
    free(acc);
    return k;
}

/* CONNECT's options json[0..len), with a large buffer and with a small one. */
static void check_connect(const char *json, size_t len, size_t small)
{
    char big[GALE_NATS_CONTROL_MAX];
    char tiny[64];
    gale_nats_connect_t c, d;
    const char *why = NULL;
    bool ok = gale_nats_parse_connect(json, len, &c, big, sizeof(big), &why);
    CHECK(ok == (why == NULL));
    if (!ok) {
        CHECK(strlen(why) > 0);
        CHECK(!gale_nats_parse_connect(json, len, &d, tiny, small % sizeof(tiny), NULL));
        return;
    }
    CHECK(gale_json_valid((const uint8_t *)json, len, GALE_MAX_DEPTH));
    const char *strs[2] = {c.auth_token, c.name};
    size_t lens[2] = {c.auth_token_len, c.name_len};
    size_t total = 0;
    for (int i = 0; i < 2; i++) {
        if (strs[i] == NULL) {
            CHECK(lens[i] == 0);
            continue;
        }
        CHECK(strs[i] >= big && strs[i] + lens[i] < big + sizeof(big));
        CHECK(strs[i][lens[i]] == '\0' && memchr(strs[i], 0, lens[i]) == NULL);
        CHECK(gale_utf8_valid((const uint8_t *)strs[i], lens[i]));
        total += lens[i] + 1;
    }
    CHECK(total <= len);
    /* A smaller buffer gives the same options or fails for lack of room. */
    if (gale_nats_parse_connect(json, len, &d, tiny, small % sizeof(tiny), &why)) {
        CHECK(d.verbose == c.verbose && d.pedantic == c.pedantic && d.echo == c.echo &&
              d.headers == c.headers && d.protocol == c.protocol);
        CHECK((d.auth_token == NULL) == (c.auth_token == NULL));
        CHECK(d.auth_token_len == c.auth_token_len &&
              (!d.auth_token || !memcmp(d.auth_token, c.auth_token, c.auth_token_len)));
        CHECK((d.name == NULL) == (c.name == NULL));
        CHECK(d.name_len == c.name_len && (!d.name || !memcmp(d.name, c.name, c.name_len)));
    } else {
        CHECK(total > 0);
    }
}

/* Splits a MSG control line at single spaces; returns the number of tokens (at most max). */
static int msg_tokens(const uint8_t *p, size_t n, const uint8_t **tok, size_t *len, int max)
{
    int k = 0;
    size_t i = 0;
    while (i <= n && k < max) {
        size_t s = i;
        while (i < n && p[i] != ' ')
            i++;
        tok[k] = p + s;
        len[k++] = i - s;
        i++;
    }
    return i <= n ? max + 1 : k;
}

static bool tok_is(const uint8_t *t, size_t n, const char *p, size_t pn)
{
    return n == pn && (n == 0 || !memcmp(t, p, n));
}

/* MSG subject sid [reply] #bytes, read back by hand. */
static void check_msg_encoding(const char *subject, size_t subject_len, const char *sid,
                               size_t sid_len, const char *reply, size_t reply_len,
                               const uint8_t *payload, size_t payload_len)
{
    gale_buf_t b;
    gale_buf_init(&b, 3);
    CHECK(gale_nats_encode_msg(&b, subject, subject_len, sid, sid_len, reply, reply_len, payload,
                               payload_len) == GALE_OK);
    const uint8_t *p = gale_buf_payload(&b);
    size_t n = gale_buf_payload_len(&b);
    const uint8_t *nl = memchr(p, '\n', n);
    CHECK(nl != NULL && nl > p && nl[-1] == '\r');
    size_t line = (size_t)(nl - p) - 1, head = line + 2;
    const uint8_t *tok[6];
    size_t len[6];
    int k = msg_tokens(p, line, tok, len, 5);
    CHECK(k == (reply != NULL ? 5 : 4));
    CHECK(tok_is(tok[0], len[0], "MSG", 3));
    CHECK(tok_is(tok[1], len[1], subject, subject_len));
    CHECK(tok_is(tok[2], len[2], sid, sid_len));
    if (reply != NULL)
        CHECK(tok_is(tok[3], len[3], reply, reply_len));
    uint64_t v = 0;
    for (size_t i = 0; i < len[k - 1]; i++) {
        CHECK(tok[k - 1][i] >= '0' && tok[k - 1][i] <= '9');
        v = v * 10 + (uint64_t)(tok[k - 1][i] - '0');
    }
    CHECK(len[k - 1] > 0 && v == payload_len);
    CHECK(n == head + payload_len + 2);
    CHECK(payload_len == 0 || !memcmp(p + head, payload, payload_len));
    CHECK(p[n - 2] == '\r' && p[n - 1] == '\n');
    gale_buf_free(&b);
}

/* INFO with a fuzzed server name (escaped as needed) is INFO, one JSON object, CRLF. */
static void check_info(const char *name, size_t n)
{
    char s[GALE_TOPIC_MAX + 1];
    n = n < GALE_TOPIC_MAX ? n : GALE_TOPIC_MAX;
    memcpy(s, name, n);
    s[n] = '\0';
    gale_nats_info_t i = {.server_id = "id",
                          .server_name = s,
                          .version = "1",
                          .host = s,
                          .port = (int)n - 100,
                          .max_payload = n * 1000003u,
                          .auth_required = n % 2,
                          .client_id = n};
    gale_buf_t b;
    gale_buf_init(&b, 0);
    CHECK(gale_nats_encode_info(&b, &i) == GALE_OK);
    CHECK(b.len > 7 && !memcmp(b.data, "INFO {", 6));
    CHECK(b.data[b.len - 2] == '\r' && b.data[b.len - 1] == '\n');
    CHECK(gale_json_valid(b.data + 5, b.len - 7, 1));
    CHECK(memchr(b.data, '\n', b.len) == b.data + b.len - 1);
    gale_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t payloads[] = {0, 1, 16, 1024, 1048576, SIZE_MAX};
    if (size < 2)
        return 0;
    size_t max_payload = payloads[data[0] % (sizeof(payloads) / sizeof(payloads[0]))];
    const uint8_t *s = data + 2;
    size_t n = size - 2;
    size_t cut = n == 0 ? 0 : (size_t)data[1] * n / 255;

    /* Each message takes at least 2 bytes; one more for an error. */
    rec_t *whole = malloc((n / 2 + 2) * sizeof(rec_t));
    rec_t *split = malloc((n / 2 + 2) * sizeof(rec_t));
    CHECK(whole != NULL && split != NULL);
    size_t k = read_stream(s, n, n, max_payload, whole, true);
    size_t k2 = read_stream(s, n, cut, max_payload, split, false);
    CHECK(k == k2);
    for (size_t i = 0; i < k; i++)
        CHECK(rec_eq(&whole[i], &split[i]));

    bool info_done = false;
    for (size_t i = 0; i < k; i++) {
        const rec_t *r = &whole[i];
        if (r->rc != 1)
            break;
        const char *base = (const char *)s;
        if (r->op == GALE_NATS_CONNECT)
            check_connect(base + r->json, r->json_len, data[1]);
        if (r->op == GALE_NATS_PUB || r->op == GALE_NATS_HPUB)
            check_msg_encoding(base + r->subject, r->subject_len, "1", 1,
                               r->reply >= 0 ? base + r->reply : NULL, r->reply_len, s + r->payload,
                               r->payload_len);
        if (r->op == GALE_NATS_SUB)
            check_msg_encoding(base + r->subject, r->subject_len, base + r->sid, r->sid_len,
                               r->queue >= 0 ? base + r->queue : NULL, r->queue_len, s + r->at,
                               r->used);
        if (!info_done && r->subject >= 0) {
            check_info(base + r->subject, r->subject_len);
            info_done = true;
        }
    }
    /* The whole stream as CONNECT's options: JSON beyond what fits in a control line. */
    check_connect((const char *)s, n, data[0]);
    free(whole);
    free(split);
    return 0;
}
