/*
 * Presence (docs/PROTOCOL.md "Presence") without lws or sockets: the member bookkeeping of
 * presence.c driven through the core (core_open, core_message with JSON and MessagePack
 * requests, core_close) with fake connections (conn.h), single node and, with a fake
 * cluster bus (bus.h) recording its join/leave/presence calls, in cluster mode. Frames the
 * fake connections receive are decoded with gale_decode_reply.
 */
#include "auth.h"
#include "broker.h"
#include "core.h"
#include "frame.h"
#include "pending.h"
#include "presence.h"

#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* --- a fake connection: records what the core hands it --------------------------------- */

#define MAX_SEEN 128

typedef struct {
    conn_t conn;
    frame_t *frames[MAX_SEEN];
    size_t nframes;
    conn_reply_t replies[MAX_SEEN];
    size_t nreplies;
    uint16_t closed;
    bool refuse; /* deliver answers false: a connection that takes nothing more */
    bool freed;  /* core_close done (fake_close_conn) */
} fake_conn_t;

static bool fake_deliver(broker_t *b, conn_t *c, frame_t *f)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    if (fc->refuse || fc->nframes == MAX_SEEN)
        return false;
    fc->frames[fc->nframes++] = frame_ref(f);
    return true;
}

static void fake_reply(broker_t *b, conn_t *c, const conn_reply_t *r)
{
    (void)b;
    fake_conn_t *fc = (fake_conn_t *)c;
    assert_true(fc->nreplies < MAX_SEEN);
    fc->replies[fc->nreplies++] = *r; /* takes the answer's frame (unref in fake_free) */
}

static void fake_close(broker_t *b, conn_t *c, uint16_t code)
{
    (void)b;
    ((fake_conn_t *)c)->closed = code;
}

static const conn_ops_t fake_ops = {
    .deliver = fake_deliver, .reply = fake_reply, .close = fake_close};

/* The connection closes (core_close); what it received stays readable until fake_free. */
static void fake_close_conn(broker_t *b, fake_conn_t *fc)
{
    if (!fc->freed)
        core_close(b, &fc->conn);
    fc->freed = true;
}

static void fake_free(broker_t *b, fake_conn_t *fc)
{
    fake_close_conn(b, fc);
    for (size_t i = 0; i < fc->nframes; i++)
        frame_unref(fc->frames[i]);
    for (size_t i = 0; i < fc->nreplies; i++)
        frame_unref(fc->replies[i].frame);
    free(fc);
}

/* --- a fake cluster bus: records the presence calls, holds what Redis would answer ------ */

#define MAX_CALLS 64

typedef struct {
    broker_t *b;
    bool down; /* sub answers unavailable */
    /* join: the member JSON and topic of each call */
    size_t njoins;
    char join_json[MAX_CALLS][512];
    char join_topic[MAX_CALLS][64];
    /* leave: the member, its topic's nlocal at the call, whether it was still linked */
    size_t nleaves;
    char leave_json[MAX_CALLS][512];
    char leave_conn[MAX_CALLS][64];
    char leave_topic[MAX_CALLS][64];
    uint32_t leave_nlocal[MAX_CALLS];
    bool leave_linked[MAX_CALLS];
    /* the scripts "in flight": each join/leave holds its topic (t->inflight) */
    pres_topic_t *held[MAX_CALLS];
    size_t nheld;
    /* presence: the last call, and the answer held */
    size_t npresence;
    char pres_topic[64];
    gale_enc_t pres_enc;
    bool pres_has_id;
    uint64_t pres_id;
    gale_err_t pres_err; /* returned at once when not GALE_OK */
    pending_t *pres_done;
    size_t nreleased;
} fake_bus_t;

static gale_err_t bus_sub(void *bus, pending_t *done, const char *p, size_t len, const char **why,
                          bool *deferred)
{
    fake_bus_t *fb = bus;
    (void)done;
    (void)p;
    (void)len;
    *deferred = false;
    if (fb->down) {
        *why = "bus down";
        return GALE_ERR_UNAVAILABLE;
    }
    return GALE_OK;
}

static void bus_release(const char *p, size_t len, void *bus)
{
    (void)p;
    (void)len;
    ((fake_bus_t *)bus)->nreleased++;
}

static void bus_hold(fake_bus_t *fb, pres_topic_t *t)
{
    assert_true(fb->nheld < MAX_CALLS);
    t->inflight++; /* as cluster_presence.c: the script names t until Redis answers */
    fb->held[fb->nheld++] = t;
}

static void bus_join(void *bus, pres_member_t *m)
{
    fake_bus_t *fb = bus;
    assert_true(fb->njoins < MAX_CALLS);
    assert_true(m->json_len < sizeof(fb->join_json[0]));
    snprintf(fb->join_json[fb->njoins], sizeof(fb->join_json[0]), "%.*s", (int)m->json_len,
             m->json);
    snprintf(fb->join_topic[fb->njoins], sizeof(fb->join_topic[0]), "%.*s", (int)m->t->len,
             m->t->name);
    fb->njoins++;
    bus_hold(fb, m->t);
}

static void bus_leave(void *bus, pres_member_t *m)
{
    fake_bus_t *fb = bus;
    size_t i = fb->nleaves++;
    assert_true(i < MAX_CALLS);
    snprintf(fb->leave_json[i], sizeof(fb->leave_json[0]), "%.*s", (int)m->json_len, m->json);
    snprintf(fb->leave_conn[i], sizeof(fb->leave_conn[0]), "%.*s", (int)m->conn_len, m->conn);
    snprintf(fb->leave_topic[i], sizeof(fb->leave_topic[0]), "%.*s", (int)m->t->len, m->t->name);
    fb->leave_nlocal[i] = m->t->nlocal;
    fb->leave_linked[i] = presence_of(m->c, m->t->name, m->t->len) == m;
    bus_hold(fb, m->t);
    presence_forget(fb->b->presence, m); /* the bus owns a detached member (Redis took it) */
}

static gale_err_t bus_presence(void *bus, pending_t *done, const char *topic, size_t len,
                               gale_enc_t enc, bool has_id, uint64_t id, const char **why)
{
    fake_bus_t *fb = bus;
    fb->npresence++;
    snprintf(fb->pres_topic, sizeof(fb->pres_topic), "%.*s", (int)len, topic);
    fb->pres_enc = enc;
    fb->pres_has_id = has_id;
    fb->pres_id = id;
    if (fb->pres_err != GALE_OK) {
        *why = "bus down";
        return fb->pres_err;
    }
    assert_null(fb->pres_done);
    fb->pres_done = done;
    return GALE_OK;
}

static const bus_ops_t fake_bus_ops = {.sub = bus_sub,
                                       .release = bus_release,
                                       .join = bus_join,
                                       .leave = bus_leave,
                                       .presence = bus_presence};

/* Redis answers every script in flight: their topics are released. */
static void bus_settle(fake_bus_t *fb)
{
    while (fb->nheld) {
        pres_topic_t *t = fb->held[--fb->nheld];
        assert_true(t->inflight > 0);
        t->inflight--;
        presence_release(fb->b->presence, t);
    }
}

/* --- fixture --------------------------------------------------------------------------- */

#define INSTANCE 0x00c0ffee12345678ULL

typedef struct {
    uv_loop_t loop;
    broker_t b;
    fake_bus_t bus;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    uv_loop_init(&f->loop);
    config_defaults(&f->b.cfg);
    f->b.loop = &f->loop;
    f->b.topics = topics_new();
    f->b.instance = INSTANCE;
    strcpy(f->b.cfg.presence[0], "room.>");
    strcpy(f->b.cfg.presence[1], "big.*");
    f->b.cfg.npresence = 2;
    f->bus.b = &f->b;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    presence_free(f->b.presence);
    topics_free(f->b.topics);
    uv_loop_close(&f->loop);
    free(f);
    return 0;
}

/* Creates the presence from the configuration as it is now (limits included). */
static void start(fixture_t *f, bool clustered)
{
    f->b.presence = presence_new(&f->b.cfg, clustered);
    assert_non_null(f->b.presence);
    if (clustered)
        f->b.bus = (bus_t){.ops = &fake_bus_ops, .ctx = &f->bus};
}

static fake_conn_t *open_grant(fixture_t *f, gale_enc_t enc, auth_grant_t *g)
{
    fake_conn_t *fc = calloc(1, sizeof(*fc));
    assert_non_null(fc);
    core_open(&f->b, &fc->conn, &fake_ops, enc, g);
    return fc;
}

static fake_conn_t *open_conn(fixture_t *f, gale_enc_t enc)
{
    return open_grant(f, enc, NULL);
}

static void send_raw(fixture_t *f, fake_conn_t *fc, const uint8_t *msg, size_t len)
{
    assert_int_equal(core_message(&f->b, &fc->conn, msg, len, fc->conn.enc == GALE_ENC_MSGPACK), 0);
}

static void send_json(fixture_t *f, fake_conn_t *fc, const char *json)
{
    assert_int_equal(fc->conn.enc, GALE_ENC_JSON);
    send_raw(f, fc, (const uint8_t *)json, strlen(json));
}

static void send_buf(fixture_t *f, fake_conn_t *fc, gale_buf_t *buf)
{
    send_raw(f, fc, gale_buf_payload(buf), buf->len - buf->headroom);
    gale_buf_free(buf);
}

/* A sub in fc's encoding: id < 0 none; info_json (JSON text, converted for MessagePack). */
static void sub(fixture_t *f, fake_conn_t *fc, const char *topic, int64_t id, bool presence,
                const char *info_json)
{
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    assert_int_equal(gale_encode_sub_ext(&buf, (gale_enc_t)fc->conn.enc, id >= 0, (uint64_t)id,
                                         topic, strlen(topic), NULL, presence,
                                         (const uint8_t *)info_json,
                                         info_json ? strlen(info_json) : 0),
                     GALE_OK);
    send_buf(f, fc, &buf);
}

static void unsub(fixture_t *f, fake_conn_t *fc, const char *topic)
{
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    assert_int_equal(gale_encode_sub(&buf, (gale_enc_t)fc->conn.enc, GALE_OP_UNSUB, false, 0, topic,
                                     strlen(topic)),
                     GALE_OK);
    send_buf(f, fc, &buf);
}

static void ask_presence(fixture_t *f, fake_conn_t *fc, const char *topic, int64_t id)
{
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    assert_int_equal(gale_encode_presence(&buf, (gale_enc_t)fc->conn.enc, id >= 0, (uint64_t)id,
                                          topic, strlen(topic)),
                     GALE_OK);
    send_buf(f, fc, &buf);
}

static const conn_reply_t *last_reply(const fake_conn_t *fc)
{
    assert_true(fc->nreplies > 0);
    return &fc->replies[fc->nreplies - 1];
}

/* fc's name, as in `hello` and in its member JSON. */
static const char *name_of(fixture_t *f, const fake_conn_t *fc, char out[CORE_CONN_NAME_MAX])
{
    size_t n = core_conn_name(&f->b, &fc->conn, out);
    assert_true(n > 0 && n < CORE_CONN_NAME_MAX);
    return out;
}

static void decode_frame(const fake_conn_t *fc, const frame_t *fr, gale_reply_t *r)
{
    size_t len;
    const uint8_t *p = frame_payload(fr, &len);
    const char *why = NULL;
    /* a frame of the connection's encoding: text for JSON, binary for MessagePack */
    assert_int_equal(frame_bytes(fr)[0] & 0x0f,
                     fc->conn.enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    assert_int_equal(gale_decode_reply((gale_enc_t)fc->conn.enc, p, len, r, &why), GALE_OK);
}

/* A value of the frame's encoding as JSON text (a copy, NUL-terminated, to free). */
static char *as_json(gale_enc_t enc, const uint8_t *v, size_t len)
{
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    assert_int_equal(gale_convert_data(&buf, GALE_ENC_JSON, enc, v, len), GALE_OK);
    char *s = calloc(1, buf.len + 1);
    assert_non_null(s);
    memcpy(s, buf.data, buf.len);
    gale_buf_free(&buf);
    return s;
}

static void assert_str_n(const char *want, const char *got, size_t got_len)
{
    if (strlen(want) != got_len || memcmp(want, got, got_len) != 0)
        fail_msg("want \"%s\", got \"%.*s\"", want, (int)got_len, got);
}

/*
 * fc's frame i is a join (or leave) of topic about conn, with user and info (JSON text,
 * compact when fc is MessagePack); NULL: absent.
 */
static void assert_event(const fake_conn_t *fc, size_t i, bool join, const char *topic,
                         const char *conn, const char *user, const char *info)
{
    assert_true(i < fc->nframes);
    gale_reply_t r;
    decode_frame(fc, fc->frames[i], &r);
    assert_int_equal(r.op, join ? GALE_REPLY_JOIN : GALE_REPLY_LEAVE);
    assert_str_n(topic, r.topic, r.topic_len);
    assert_str_n(conn, r.conn, r.conn_len);
    assert_int_equal(r.has_user, user != NULL);
    if (user)
        assert_str_n(user, r.user, r.user_len);
    if (!info) {
        assert_null(r.info);
        return;
    }
    assert_non_null(r.info);
    if (fc->conn.enc == GALE_ENC_JSON) {
        assert_str_n(info, (const char *)r.info, r.info_len);
    } else {
        char *s = as_json(GALE_ENC_MSGPACK, r.info, r.info_len);
        assert_string_equal(s, info);
        free(s);
    }
}

/* fc's frame i is a count-only presence message of topic with count. */
static void assert_count_frame(const fake_conn_t *fc, size_t i, const char *topic, uint64_t count)
{
    assert_true(i < fc->nframes);
    gale_reply_t r;
    decode_frame(fc, fc->frames[i], &r);
    assert_int_equal(r.op, GALE_REPLY_PRESENCE);
    assert_str_n(topic, r.topic, r.topic_len);
    assert_false(r.has_id);
    assert_true(r.has_count);
    assert_int_equal(r.count, count);
    assert_null(r.members); /* no members: a count-only update */
}

/* The presence answer in fc's reply i, decoded into *r (members iterated by the caller). */
static void decode_answer(const fake_conn_t *fc, size_t i, gale_reply_t *r)
{
    assert_true(i < fc->nreplies);
    const conn_reply_t *rep = &fc->replies[i];
    assert_int_equal(rep->op, GALE_OP_PRESENCE);
    assert_int_equal(rep->err, GALE_OK);
    assert_non_null(rep->frame);
    decode_frame(fc, rep->frame, r);
    assert_int_equal(r->op, GALE_REPLY_PRESENCE);
    assert_true(r->has_count);
}

static size_t count_members(const fake_conn_t *fc, const gale_reply_t *r)
{
    size_t pos = 0, n = 0;
    gale_member_t m;
    int k;
    while ((k = gale_reply_member_next((gale_enc_t)fc->conn.enc, r, &pos, &m)) == 1)
        n++;
    assert_int_equal(k, 0);
    return n;
}

static void assert_stats(fixture_t *f, uint64_t topics, uint64_t members)
{
    uint64_t t, m, bytes;
    presence_stats(f->b.presence, &t, &m, &bytes);
    assert_int_equal(t, topics);
    assert_int_equal(m, members);
    if (!topics)
        assert_int_equal(bytes, 0); /* every member and topic state accounted for */
    else
        assert_true(bytes > 0);
}

/* The member JSON the core should build (gale_encode_member), NUL-terminated in out. */
static void member_of(const char *conn, const char *user, const char *info, char *out, size_t cap)
{
    gale_buf_t buf;
    gale_buf_init(&buf, 0);
    assert_int_equal(gale_encode_member(&buf, conn, strlen(conn), user, user ? strlen(user) : 0,
                                        (const uint8_t *)info, info ? strlen(info) : 0),
                     GALE_OK);
    assert_true(buf.len < cap);
    memcpy(out, buf.data, buf.len);
    out[buf.len] = '\0';
    gale_buf_free(&buf);
}

/* --- single node ----------------------------------------------------------------------- */

static void test_join_goes_to_watchers_only_never_about_themselves(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_JSON),
                *c = open_conn(f, GALE_ENC_MSGPACK), *d = open_conn(f, GALE_ENC_JSON);
    char na[CORE_CONN_NAME_MAX], nb[CORE_CONN_NAME_MAX], nc[CORE_CONN_NAME_MAX];
    name_of(f, a, na);
    name_of(f, b, nb);
    name_of(f, c, nc);

    sub(f, a, "room.a", 1, true, NULL); /* a watcher: nobody to tell, not even itself */
    assert_int_equal(a->nreplies, 1);
    assert_int_equal(a->replies[0].err, GALE_OK);
    assert_int_equal(a->nframes, 0);
    sub(f, d, "room.b", -1, true, NULL); /* watches another topic */

    sub(f, b, "room.a", -1, false, NULL); /* a plain member */
    assert_int_equal(a->nframes, 1);
    assert_event(a, 0, true, "room.a", nb, NULL, NULL);
    assert_int_equal(b->nframes, 0);

    sub(f, c, "room.a", 3, true, NULL); /* a MessagePack watcher */
    assert_int_equal(c->replies[0].err, GALE_OK);
    assert_int_equal(a->nframes, 2);
    assert_event(a, 1, true, "room.a", nc, NULL, NULL);
    assert_int_equal(b->nframes, 0); /* not a watcher */
    assert_int_equal(c->nframes, 0); /* never about itself */
    assert_int_equal(d->nframes, 0); /* another topic */

    /* A plain sub of a topic without presence is allowed and changes nothing here. */
    sub(f, b, "other.t", 4, false, NULL);
    assert_int_equal(last_reply(b)->err, GALE_OK);
    assert_stats(f, 2, 4);
    assert_int_equal(f->b.m.presence_joins, 4);
    assert_int_equal(f->b.m.presence_events, 2);

    fake_free(&f->b, a);
    fake_free(&f->b, b);
    fake_free(&f->b, c);
    fake_free(&f->b, d);
    assert_stats(f, 0, 0);
}

static void test_unsub_and_close_give_leaves_like_the_join(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *m = open_conn(f, GALE_ENC_MSGPACK),
                *b = open_conn(f, GALE_ENC_JSON);
    char nb[CORE_CONN_NAME_MAX];
    name_of(f, b, nb);
    const char *info = "{\"nick\": \"bo\", \"n\":[1,2]}"; /* byte-exact in JSON */
    sub(f, w, "room.a", -1, false, NULL); /* not watching yet: m's join is not sent to it */
    sub(f, m, "room.a", -1, true, NULL);
    sub(f, w, "room.a", -1, true, NULL); /* now watching */
    assert_int_equal(w->nframes + m->nframes, 0);
    sub(f, b, "room.a", -1, false, info);
    assert_event(w, 0, true, "room.a", nb, NULL, info);
    assert_event(m, 0, true, "room.a", nb, NULL, "{\"nick\":\"bo\",\"n\":[1,2]}");

    unsub(f, b, "room.a");
    assert_int_equal(w->nframes, 2);
    assert_int_equal(m->nframes, 2);
    assert_event(w, 1, false, "room.a", nb, NULL, info);
    assert_event(m, 1, false, "room.a", nb, NULL, "{\"nick\":\"bo\",\"n\":[1,2]}");
    assert_null(presence_of(&b->conn, "room.a", 6));
    assert_stats(f, 1, 2);
    unsub(f, b, "room.a"); /* not held any more: nothing */
    assert_int_equal(w->nframes, 2);

    /* Subscribed again, then closing: a join, then the same member leaves. */
    sub(f, b, "room.a", -1, false, "{\"v\":2}");
    assert_event(w, 2, true, "room.a", nb, NULL, "{\"v\":2}");
    fake_close_conn(&f->b, b);
    assert_int_equal(w->nframes, 4);
    assert_event(w, 3, false, "room.a", nb, NULL, "{\"v\":2}");
    assert_event(m, 3, false, "room.a", nb, NULL, "{\"v\":2}");
    assert_int_equal(f->b.m.presence_leaves, 2);

    /* A watcher that leaves gets no event about its own leave, and no more events. */
    unsub(f, m, "room.a");
    assert_int_equal(m->nframes, 4);
    assert_int_equal(w->nframes, 5);
    fake_conn_t *late = open_conn(f, GALE_ENC_JSON);
    sub(f, late, "room.a", -1, false, NULL);
    assert_int_equal(m->nframes, 4);
    assert_int_equal(w->nframes, 6);
    fake_free(&f->b, late);
    assert_int_equal(w->nframes, 7);

    fake_free(&f->b, b);
    fake_free(&f->b, w);
    fake_free(&f->b, m);
    assert_stats(f, 0, 0);
}

static void test_repeated_sub_keeps_the_member_and_its_latest_flag_decides(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_JSON),
                *c = open_conn(f, GALE_ENC_JSON), *d = open_conn(f, GALE_ENC_JSON),
                *r = open_conn(f, GALE_ENC_JSON);
    char nc[CORE_CONN_NAME_MAX], nd[CORE_CONN_NAME_MAX];
    sub(f, w, "room.a", -1, true, NULL);
    sub(f, b, "room.a", 1, false, "{\"a\":1}");
    assert_int_equal(w->nframes, 1);

    /* Again, now watching and with another info: no join, the info stays. */
    sub(f, b, "room.a", 2, true, "{\"a\":2}");
    assert_int_equal(b->nreplies, 2);
    assert_int_equal(b->replies[1].err, GALE_OK);
    assert_int_equal(w->nframes, 1);
    assert_int_equal(f->b.m.presence_joins, 2);
    assert_stats(f, 1, 2);
    ask_presence(f, r, "room.a", 5);
    gale_reply_t ans;
    decode_answer(r, 0, &ans);
    assert_int_equal(ans.count, 2);
    size_t pos = 0;
    gale_member_t mem;
    bool seen_info = false;
    while (gale_reply_member_next(GALE_ENC_JSON, &ans, &pos, &mem) == 1) {
        if (mem.info) {
            assert_str_n("{\"a\":1}", (const char *)mem.info, mem.info_len);
            seen_info = true;
        }
    }
    assert_true(seen_info);

    /* b watches now. */
    sub(f, c, "room.a", -1, false, NULL);
    assert_int_equal(b->nframes, 1);
    assert_event(b, 0, true, "room.a", name_of(f, c, nc), NULL, NULL);

    /* A repeated sub with presence false (or none) stops the events. */
    sub(f, b, "room.a", -1, false, NULL);
    sub(f, d, "room.a", -1, false, NULL);
    assert_int_equal(b->nframes, 1);
    assert_int_equal(w->nframes, 3);
    assert_event(w, 2, true, "room.a", name_of(f, d, nd), NULL, NULL);
    /* ... and a later presence:true starts them again. */
    sub(f, b, "room.a", -1, true, NULL);
    unsub(f, d, "room.a");
    assert_int_equal(b->nframes, 2);
    assert_event(b, 1, false, "room.a", nd, NULL, NULL);
    assert_int_equal(f->b.m.presence_joins, 4);

    fake_free(&f->b, w);
    fake_free(&f->b, b);
    fake_free(&f->b, c);
    fake_free(&f->b, d);
    fake_free(&f->b, r);
    assert_stats(f, 0, 0);
}

static void test_pattern_subs_are_not_members(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *p = open_conn(f, GALE_ENC_JSON),
                *r = open_conn(f, GALE_ENC_MSGPACK);
    sub(f, w, "room.a", -1, true, NULL);
    sub(f, p, "room.*", 1, false, NULL);
    sub(f, p, "room.>", 2, false, NULL);
    assert_int_equal(p->replies[0].err, GALE_OK);
    assert_int_equal(p->replies[1].err, GALE_OK);
    assert_int_equal(p->conn.owner.nsubs, 2);
    assert_int_equal(w->nframes, 0);
    assert_null(p->conn.present);
    assert_stats(f, 1, 1);

    /* presence:true or info on a pattern: bad_request, nothing registered. */
    send_json(f, p, "{\"op\":\"sub\",\"topic\":\"room.*\",\"presence\":true,\"id\":3}");
    assert_int_equal(last_reply(p)->err, GALE_ERR_BAD_REQUEST);
    send_json(f, p, "{\"op\":\"sub\",\"topic\":\"big.>\",\"info\":{},\"id\":4}");
    assert_int_equal(last_reply(p)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(p->conn.owner.nsubs, 2);
    assert_null(p->conn.present);

    /* The pattern subscriber does get the topic's messages, and the count leaves it out. */
    ask_presence(f, r, "room.a", 1);
    gale_reply_t ans;
    decode_answer(r, 0, &ans);
    assert_int_equal(ans.count, 1);
    assert_true(ans.has_id && ans.id == 1);
    assert_int_equal(count_members(r, &ans), 1);

    /* A presence request names a concrete topic. */
    send_json(f, p, "{\"op\":\"presence\",\"topic\":\"room.*\",\"id\":5}");
    assert_int_equal(last_reply(p)->err, GALE_ERR_BAD_TOPIC);
    assert_null(last_reply(p)->frame);

    fake_free(&f->b, w);
    fake_free(&f->b, p);
    fake_free(&f->b, r);
    assert_stats(f, 0, 0);
}

static void test_info_from_the_sub_in_both_encodings(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *j = open_conn(f, GALE_ENC_JSON),
                *m = open_conn(f, GALE_ENC_MSGPACK), *r = open_conn(f, GALE_ENC_JSON);
    char nj[CORE_CONN_NAME_MAX], nm[CORE_CONN_NAME_MAX];
    name_of(f, j, nj);
    name_of(f, m, nm);
    sub(f, w, "room.i", -1, true, NULL);
    const char *jinfo = "{ \"name\" : \"ann\\u00e9\", \"n\": 1.5 }";
    sub(f, j, "room.i", 1, false, jinfo);
    assert_int_equal(last_reply(j)->err, GALE_OK);
    sub(f, m, "room.i", 1, false, "{\"name\":\"bob\",\"tags\":[\"x\",true,null],\"o\":{\"k\":-3}}");
    assert_int_equal(last_reply(m)->err, GALE_OK);

    /* The member JSON: JSON info byte-exact, MessagePack info converted to JSON. */
    char want[512];
    member_of(nj, NULL, jinfo, want, sizeof(want));
    pres_member_t *pm = presence_of(&j->conn, "room.i", 6);
    assert_non_null(pm);
    assert_str_n(want, pm->json, pm->json_len);
    member_of(nm, NULL, "{\"name\":\"bob\",\"tags\":[\"x\",true,null],\"o\":{\"k\":-3}}", want,
              sizeof(want));
    pm = presence_of(&m->conn, "room.i", 6);
    assert_non_null(pm);
    assert_str_n(want, pm->json, pm->json_len);

    assert_event(w, 0, true, "room.i", nj, NULL, jinfo);
    assert_event(w, 1, true, "room.i", nm, NULL,
                 "{\"name\":\"bob\",\"tags\":[\"x\",true,null],\"o\":{\"k\":-3}}");

    /* And in the presence answer. */
    ask_presence(f, r, "room.i", 2);
    gale_reply_t ans;
    decode_answer(r, 0, &ans);
    assert_int_equal(ans.count, 3);
    size_t pos = 0, n = 0;
    gale_member_t mem;
    while (gale_reply_member_next(GALE_ENC_JSON, &ans, &pos, &mem) == 1) {
        n++;
        assert_false(mem.has_user); /* an open broker has no users */
        if (mem.conn_len == strlen(nj) && memcmp(mem.conn, nj, mem.conn_len) == 0)
            assert_str_n(jinfo, (const char *)mem.info, mem.info_len);
        else if (mem.conn_len == strlen(nm) && memcmp(mem.conn, nm, mem.conn_len) == 0)
            assert_str_n("{\"name\":\"bob\",\"tags\":[\"x\",true,null],\"o\":{\"k\":-3}}",
                         (const char *)mem.info, mem.info_len);
        else
            assert_null(mem.info);
    }
    assert_int_equal(n, 3);

    /* A MessagePack map's other keys become their JSON text; an empty object is an info. */
    fake_conn_t *k = open_conn(f, GALE_ENC_MSGPACK), *e = open_conn(f, GALE_ENC_JSON);
    const uint8_t ksub[] = {0x83, 0xa2, 'o', 'p',  0xa3, 's',  'u',  'b', 0xa5, 't', 'o',
                            'p',  'i',  'c', 0xa6, 'r',  'o',  'o',  'm', '.',  'i', 0xa4,
                            'i',  'n',  'f', 'o',  0x82, 0x01, 0xa1, 'x', 0xc0, 0xc3};
    send_raw(f, k, ksub, sizeof(ksub));
    pm = presence_of(&k->conn, "room.i", 6);
    assert_non_null(pm);
    char kn[CORE_CONN_NAME_MAX];
    member_of(name_of(f, k, kn), NULL, "{\"1\":\"x\",\"null\":true}", want, sizeof(want));
    assert_str_n(want, pm->json, pm->json_len);
    sub(f, e, "room.i", -1, false, "{}");
    assert_event(w, 3, true, "room.i", name_of(f, e, kn), NULL, "{}");

    /* A MessagePack info that cannot become JSON (keys inside keys: the conversion's output
     * budget): bad_request, nothing registered. */
    fake_conn_t *x2 = open_conn(f, GALE_ENC_MSGPACK);
    uint8_t boom[128];
    size_t bl = 0;
    const uint8_t head[] = {0x82, 0xa2, 'o', 'p',  0xa3, 's', 'u', 'b', 0xa5, 't', 'o',
                            'p',  'i',  'c', 0xa6, 'r',  'o', 'o', 'm', '.',  'i'};
    memcpy(boom, head, sizeof(head));
    bl = sizeof(head);
    boom[0] = 0x83;
    const uint8_t ikey[] = {0xa4, 'i', 'n', 'f', 'o'};
    memcpy(boom + bl, ikey, sizeof(ikey));
    bl += sizeof(ikey);
    for (int lvl = 0; lvl < 24; lvl++) /* {{{...{"a":1}:nil...}:nil}:nil} */
        boom[bl++] = 0x81;
    boom[bl++] = 0xa1;
    boom[bl++] = '"'; /* escaped at every level */
    boom[bl++] = 0x01;
    for (int lvl = 1; lvl < 24; lvl++)
        boom[bl++] = 0xc0;
    send_raw(f, x2, boom, bl);
    assert_int_equal(last_reply(x2)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(x2->conn.owner.nsubs, 0);
    assert_null(x2->conn.present);
    assert_int_equal(w->nframes, 4);

    /* info that is not an object: bad_request, nothing registered. */
    fake_conn_t *x = open_conn(f, GALE_ENC_JSON);
    send_json(f, x, "{\"op\":\"sub\",\"topic\":\"room.i\",\"info\":[1],\"id\":1}");
    assert_int_equal(last_reply(x)->err, GALE_ERR_BAD_REQUEST);
    send_json(f, x, "{\"op\":\"sub\",\"topic\":\"room.i\",\"presence\":1,\"id\":2}");
    assert_int_equal(last_reply(x)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(x->conn.owner.nsubs, 0);
    assert_null(x->conn.present);
    assert_int_equal(w->nframes, 4);

    fake_free(&f->b, x);
    fake_free(&f->b, x2);
    fake_free(&f->b, k);
    fake_free(&f->b, e);
    fake_free(&f->b, w);
    fake_free(&f->b, j);
    fake_free(&f->b, m);
    fake_free(&f->b, r);
    assert_stats(f, 0, 0);
}

/* --presence-memory: a join past it answers limit and registers nothing; room comes back. */
static void test_presence_memory_bounds_members(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_memory = 4096;
    start(f, false);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_JSON);
    char topic[32];
    int joined = 0;
    for (int i = 0; i < 100; i++) {
        snprintf(topic, sizeof(topic), "room.%d", i);
        sub(f, a, topic, i + 1, false, "{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}");
        if (last_reply(a)->err != GALE_OK) {
            assert_int_equal(last_reply(a)->err, GALE_ERR_LIMIT);
            break;
        }
        joined++;
    }
    assert_true(joined > 0 && joined < 100);
    uint64_t topics, members, bytes;
    presence_stats(f->b.presence, &topics, &members, &bytes);
    assert_int_equal(members, joined);
    assert_true(bytes <= 4096);
    assert_int_equal(a->conn.owner.nsubs, joined); /* the refused sub registered nothing */
    sub(f, b, "room.0", 1, false, NULL);
    assert_int_equal(last_reply(b)->err, GALE_ERR_LIMIT);
    /* A topic without presence is not bounded by it. */
    sub(f, b, "plain.t", 2, false, NULL);
    assert_int_equal(last_reply(b)->err, GALE_OK);
    /* Leaves give the room back. */
    fake_free(&f->b, a);
    sub(f, b, "room.0", 3, false, NULL);
    assert_int_equal(last_reply(b)->err, GALE_OK);
    fake_free(&f->b, b);
    assert_stats(f, 0, 0);
}

static void test_info_over_the_max_is_a_limit_and_registers_nothing(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_info_max = 16;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *j = open_conn(f, GALE_ENC_JSON),
                *m = open_conn(f, GALE_ENC_MSGPACK);
    sub(f, w, "room.a", -1, true, NULL);

    sub(f, j, "room.a", 1, true, "{\"k\":\"123456789\"}"); /* 17 bytes */
    assert_int_equal(last_reply(j)->err, GALE_ERR_LIMIT);
    assert_int_equal(j->conn.owner.nsubs, 0);
    assert_null(j->conn.present);
    assert_int_equal(w->nframes, 0);
    assert_stats(f, 1, 1);
    /* The member did not subscribe either: no message reaches it. */
    send_json(f, w, "{\"op\":\"pub\",\"topic\":\"room.a\",\"data\":1}");
    assert_int_equal(j->nframes, 0);

    /* Spaces count (the JSON as sent). */
    sub(f, j, "room.a", 2, false, "{ \"k\":\"12345678\"}"); /* 17 bytes */
    assert_int_equal(last_reply(j)->err, GALE_ERR_LIMIT);
    assert_int_equal(j->conn.owner.nsubs, 0);

    /* MessagePack: measured once converted to JSON. The map {"k":"123456789"} is 14 bytes
     * of MessagePack, 17 of JSON. */
    sub(f, m, "room.a", 1, false, "{\"k\":\"123456789\"}");
    assert_int_equal(last_reply(m)->err, GALE_ERR_LIMIT);
    assert_int_equal(m->conn.owner.nsubs, 0);
    assert_null(m->conn.present);

    /* At most the max: fine. */
    sub(f, j, "room.a", 3, false, "{\"k\":\"12345678\"}"); /* 16 bytes */
    assert_int_equal(last_reply(j)->err, GALE_OK);
    sub(f, m, "room.a", 2, false, "{\"k\":\"12345678\"}");
    assert_int_equal(last_reply(m)->err, GALE_OK);
    assert_int_equal(w->nframes, 3); /* the message, then two joins */
    gale_reply_t r;
    decode_frame(w, w->frames[0], &r);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_stats(f, 1, 3);
    assert_int_equal(f->b.m.protocol_errors[GALE_ERR_LIMIT], 3);

    fake_free(&f->b, w);
    fake_free(&f->b, j);
    fake_free(&f->b, m);
    assert_stats(f, 0, 0);
}

static void test_presence_fields_on_a_topic_without_presence(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *c = open_conn(f, GALE_ENC_JSON), *m = open_conn(f, GALE_ENC_MSGPACK);
    sub(f, c, "other.t", 1, true, NULL);
    assert_int_equal(last_reply(c)->err, GALE_ERR_BAD_REQUEST);
    sub(f, c, "other.t", 2, false, "{\"a\":1}");
    assert_int_equal(last_reply(c)->err, GALE_ERR_BAD_REQUEST);
    sub(f, m, "big.x.y", 1, true, NULL); /* big.* matches one segment only */
    assert_int_equal(last_reply(m)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(c->conn.owner.nsubs, 0);
    assert_int_equal(m->conn.owner.nsubs, 0);
    assert_stats(f, 0, 0);

    ask_presence(f, c, "other.t", 3);
    assert_int_equal(last_reply(c)->err, GALE_ERR_BAD_REQUEST);
    assert_null(last_reply(c)->frame);
    ask_presence(f, m, "big.x.y", 2);
    assert_int_equal(last_reply(m)->err, GALE_ERR_BAD_REQUEST);

    /* presence false is a plain sub, anywhere. */
    sub(f, c, "other.t", 4, false, NULL);
    assert_int_equal(last_reply(c)->err, GALE_OK);
    assert_null(c->conn.present);
    sub(f, m, "big.x", 3, true, NULL);
    assert_int_equal(last_reply(m)->err, GALE_OK);
    assert_non_null(presence_of(&m->conn, "big.x", 5));
    assert_stats(f, 1, 1);

    fake_free(&f->b, c);
    fake_free(&f->b, m);
    assert_stats(f, 0, 0);
}

static auth_grant_t *grant(const char *claims)
{
    const char *why = NULL;
    auth_grant_t *g = auth_claims_parse((const uint8_t *)claims, strlen(claims), 1700000000, &why);
    if (!g)
        fail_msg("claims refused: %s", why ? why : "?");
    return g;
}

static void test_tokens_give_user_and_info(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_info_max = 32;
    start(f, false);
    auth_grant_t *ga = grant("{\"sub\":\"alice\",\"gale\":{\"sub\":[\"room.>\"],"
                             "\"info\":{\"role\": \"admin\"}}}");
    auth_grant_t *gw = grant("{\"gale\":{\"sub\":[\"room.>\"]}}"); /* no sub claim, no info */
    auth_grant_t *gb = grant("{\"sub\":\"bob\",\"gale\":{\"sub\":[\"room.a\"]}}");
    auth_grant_t *gx = grant("{\"sub\":\"xavier\",\"gale\":{\"sub\":[\"room.>\"],"
                             "\"info\":{\"role\":\"administrator of all topics\"}}}");
    fake_conn_t *w = open_grant(f, GALE_ENC_JSON, gw), *mw = open_grant(f, GALE_ENC_MSGPACK, gw),
                *a = open_grant(f, GALE_ENC_MSGPACK, ga), *b = open_grant(f, GALE_ENC_JSON, gb),
                *x = open_grant(f, GALE_ENC_JSON, gx);
    char na[CORE_CONN_NAME_MAX], nb[CORE_CONN_NAME_MAX];
    name_of(f, a, na);
    name_of(f, b, nb);

    sub(f, w, "room.a", 1, true, NULL);
    assert_int_equal(last_reply(w)->err, GALE_OK);
    sub(f, mw, "room.a", 1, true, NULL);
    assert_int_equal(mw->nframes, 0);
    char nmw[CORE_CONN_NAME_MAX];
    assert_event(w, 0, true, "room.a", name_of(f, mw, nmw), NULL,
                 NULL); /* a token without sub: no user */

    sub(f, a, "room.a", 1, false, NULL);
    assert_int_equal(last_reply(a)->err, GALE_OK);
    /* gale.info as the token has it, even for a MessagePack member. */
    assert_event(w, 1, true, "room.a", na, "alice", "{\"role\": \"admin\"}");
    assert_event(mw, 0, true, "room.a", na, "alice", "{\"role\":\"admin\"}");
    char want[256];
    member_of(na, "alice", "{\"role\": \"admin\"}", want, sizeof(want));
    pres_member_t *pm = presence_of(&a->conn, "room.a", 6);
    assert_non_null(pm);
    assert_str_n(want, pm->json, pm->json_len);

    sub(f, b, "room.a", 2, false, NULL);
    assert_event(w, 2, true, "room.a", nb, "bob", NULL);

    /* info on a sub with a token: forbidden, nothing registered. */
    sub(f, b, "room.b", 3, false, "{\"x\":1}");
    assert_int_equal(last_reply(b)->err, GALE_ERR_FORBIDDEN);
    sub(f, a, "room.b", 2, true, "{\"x\":1}");
    assert_int_equal(last_reply(a)->err, GALE_ERR_FORBIDDEN);
    assert_null(presence_of(&a->conn, "room.b", 6));
    assert_int_equal(a->conn.owner.nsubs, 1);
    /* A topic the token does not grant: forbidden. */
    sub(f, b, "room.c", 4, true, NULL);
    assert_int_equal(last_reply(b)->err, GALE_ERR_FORBIDDEN);
    ask_presence(f, b, "room.c", 5);
    assert_int_equal(last_reply(b)->err, GALE_ERR_FORBIDDEN);
    assert_int_equal(b->conn.owner.nsubs, 1);

    /* A token's gale.info over --presence-info-max: limit, nothing registered. */
    sub(f, x, "room.a", 1, false, NULL);
    assert_int_equal(last_reply(x)->err, GALE_ERR_LIMIT);
    assert_int_equal(x->conn.owner.nsubs, 0);
    assert_null(x->conn.present);
    assert_int_equal(w->nframes, 3);

    /* The answer lists users and infos. */
    ask_presence(f, b, "room.a", 6);
    gale_reply_t ans;
    decode_answer(b, b->nreplies - 1, &ans);
    assert_int_equal(ans.count, 4);
    size_t pos = 0, users = 0, infos = 0;
    gale_member_t mem;
    while (gale_reply_member_next(GALE_ENC_JSON, &ans, &pos, &mem) == 1) {
        if (mem.has_user) {
            users++;
            if (mem.user_len == 5)
                assert_str_n("alice", mem.user, mem.user_len);
            else
                assert_str_n("bob", mem.user, mem.user_len);
        }
        if (mem.info) {
            infos++;
            assert_str_n("{\"role\": \"admin\"}", (const char *)mem.info, mem.info_len);
        }
    }
    assert_int_equal(users, 2);
    assert_int_equal(infos, 1);

    /* Leaves carry the same user and info. */
    fake_close_conn(&f->b, a);
    assert_event(w, 3, false, "room.a", na, "alice", "{\"role\": \"admin\"}");
    assert_event(mw, 2, false, "room.a", na, "alice", "{\"role\":\"admin\"}");

    fake_free(&f->b, w);
    fake_free(&f->b, mw);
    fake_free(&f->b, a);
    fake_free(&f->b, b);
    fake_free(&f->b, x);
    assert_stats(f, 0, 0);
    assert_int_equal(ga->refs + gw->refs + gb->refs + gx->refs, 0);
    auth_grant_free(ga);
    auth_grant_free(gw);
    auth_grant_free(gb);
    auth_grant_free(gx);
}

static void test_token_user_with_quotes_and_utf8(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    auth_grant_t *gq = grant("{\"sub\":\"q\\\"u\\\\o zo\\u00eb\",\"gale\":{\"sub\":[\"room.>\"]}}");
    auth_grant_t *gw = grant("{\"gale\":{\"sub\":[\"room.>\"]}}");
    const char *user = "q\"u\\o zo\xc3\xab";
    assert_string_equal(gq->user, user);
    fake_conn_t *w = open_grant(f, GALE_ENC_JSON, gw), *mw = open_grant(f, GALE_ENC_MSGPACK, gw),
                *q = open_grant(f, GALE_ENC_JSON, gq);
    char nq[CORE_CONN_NAME_MAX];
    name_of(f, q, nq);
    sub(f, w, "room.u", -1, true, NULL);
    sub(f, mw, "room.u", -1, true, NULL);
    sub(f, q, "room.u", 1, false, NULL);
    assert_int_equal(last_reply(q)->err, GALE_OK);
    assert_event(w, 1, true, "room.u", nq, user, NULL);
    assert_event(mw, 0, true, "room.u", nq, user, NULL);
    pres_member_t *pm = presence_of(&q->conn, "room.u", 6);
    assert_non_null(pm);
    assert_true(gale_json_valid((const uint8_t *)pm->json, pm->json_len, 8));
    ask_presence(f, mw, "room.u", 2);
    gale_reply_t ans;
    decode_answer(mw, 0, &ans);
    size_t pos = 0, seen = 0;
    gale_member_t m;
    while (gale_reply_member_next(GALE_ENC_MSGPACK, &ans, &pos, &m) == 1) {
        if (m.has_user) {
            assert_str_n(user, m.user, m.user_len);
            seen++;
        }
    }
    assert_int_equal(seen, 1);
    fake_free(&f->b, w);
    fake_free(&f->b, mw);
    fake_free(&f->b, q);
    assert_stats(f, 0, 0);
    auth_grant_free(gq);
    auth_grant_free(gw);
}

static void test_presence_answer_counts_all_and_lists_at_most_the_max(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_list_max = 3;
    start(f, false);
    fake_conn_t *mem[5];
    char names[5][CORE_CONN_NAME_MAX];
    for (int i = 0; i < 5; i++) {
        mem[i] = open_conn(f, i % 2 ? GALE_ENC_MSGPACK : GALE_ENC_JSON);
        name_of(f, mem[i], names[i]);
        sub(f, mem[i], "room.p", -1, false, NULL);
    }
    fake_conn_t *r = open_conn(f, GALE_ENC_JSON), *rm = open_conn(f, GALE_ENC_MSGPACK);

    ask_presence(f, r, "room.p", 9);
    assert_int_equal(r->nreplies, 1);
    gale_reply_t ans;
    decode_answer(r, 0, &ans);
    assert_true(ans.has_id);
    assert_int_equal(ans.id, 9);
    assert_str_n("room.p", ans.topic, ans.topic_len);
    assert_int_equal(ans.count, 5);
    size_t pos = 0, n = 0;
    gale_member_t m;
    bool seen[5] = {false};
    while (gale_reply_member_next(GALE_ENC_JSON, &ans, &pos, &m) == 1) {
        int k = -1;
        for (int i = 0; i < 5; i++)
            if (m.conn_len == strlen(names[i]) && memcmp(m.conn, names[i], m.conn_len) == 0)
                k = i;
        assert_true(k >= 0);
        assert_false(seen[k]); /* each member once */
        seen[k] = true;
        n++;
    }
    assert_int_equal(n, 3);
    assert_true(seen[2] && seen[3] && seen[4]); /* a single broker lists the newest */

    /* Without id: answered all the same, without id. MessagePack: the same answer. */
    ask_presence(f, r, "room.p", -1);
    assert_int_equal(r->nreplies, 2);
    decode_answer(r, 1, &ans);
    assert_false(ans.has_id);
    assert_int_equal(ans.count, 5);
    assert_int_equal(count_members(r, &ans), 3);
    ask_presence(f, rm, "room.p", 4);
    decode_answer(rm, 0, &ans);
    assert_true(ans.has_id && ans.id == 4);
    assert_int_equal(ans.count, 5);
    assert_int_equal(count_members(rm, &ans), 3);

    /* No member: count 0, an empty list. */
    ask_presence(f, r, "room.none", 10);
    decode_answer(r, 2, &ans);
    assert_int_equal(ans.count, 0);
    assert_non_null(ans.members);
    assert_int_equal(count_members(r, &ans), 0);
    assert_stats(f, 1, 5); /* asking creates no topic state */

    /* Fewer than the max: every member. */
    fake_close_conn(&f->b, mem[0]);
    unsub(f, mem[1], "room.p");
    fake_close_conn(&f->b, mem[2]);
    ask_presence(f, rm, "room.p", 5);
    decode_answer(rm, 1, &ans);
    assert_int_equal(ans.count, 2);
    assert_int_equal(count_members(rm, &ans), 2);
    assert_int_equal(f->b.m.presence_events, 0); /* nobody watches */

    for (int i = 0; i < 5; i++)
        fake_free(&f->b, mem[i]);
    fake_free(&f->b, r);
    fake_free(&f->b, rm);
    assert_stats(f, 0, 0);
}

static void test_events_max_gives_way_to_count_updates(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_events_max = 3;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *m = open_conn(f, GALE_ENC_MSGPACK),
                *n = open_conn(f, GALE_ENC_JSON), *x[3];
    char nn[CORE_CONN_NAME_MAX], nx0[CORE_CONN_NAME_MAX];
    name_of(f, n, nn);
    sub(f, w, "room.e", -1, true, NULL);
    sub(f, m, "room.e", -1, true, NULL);
    sub(f, n, "room.e", -1, false, NULL); /* 3 members: at the max, events still */
    assert_int_equal(w->nframes, 2);
    assert_int_equal(m->nframes, 1);
    assert_event(w, 1, true, "room.e", nn, NULL, NULL);
    presence_tick(&f->b); /* nothing due */
    assert_int_equal(w->nframes, 2);
    assert_int_equal(m->nframes, 1);

    for (int i = 0; i < 3; i++)
        x[i] = open_conn(f, GALE_ENC_JSON);
    name_of(f, x[0], nx0);
    sub(f, x[0], "room.e", -1, false, NULL); /* 4: above, no event */
    assert_int_equal(w->nframes, 2);
    assert_int_equal(m->nframes, 1);
    presence_tick(&f->b); /* one count-only message per watcher */
    assert_int_equal(w->nframes, 3);
    assert_int_equal(m->nframes, 2);
    assert_int_equal(n->nframes, 0);
    assert_count_frame(w, 2, "room.e", 4);
    assert_count_frame(m, 1, "room.e", 4);
    presence_tick(&f->b); /* no change since: nothing */
    assert_int_equal(w->nframes, 3);

    sub(f, x[1], "room.e", -1, false, NULL); /* 5 */
    sub(f, x[2], "room.e", -1, false, NULL); /* 6 */
    assert_int_equal(w->nframes, 3);
    presence_tick(&f->b); /* one message for both changes, with the latest count */
    presence_tick(&f->b);
    assert_int_equal(w->nframes, 4);
    assert_int_equal(m->nframes, 3);
    assert_count_frame(w, 3, "room.e", 6);
    assert_count_frame(m, 2, "room.e", 6);

    unsub(f, x[2], "room.e");     /* 5 */
    fake_close_conn(&f->b, x[1]); /* 4 */
    assert_int_equal(w->nframes, 4);
    presence_tick(&f->b);
    assert_count_frame(w, 4, "room.e", 4);
    assert_int_equal(w->nframes, 5);

    /* Back at the max: one more count-only message at the next tick. (Whether the leave that
     * brings it back is sent as an event too is left open: at most that one.) */
    size_t before = w->nframes;
    fake_close_conn(&f->b, x[0]); /* 3 */
    assert_true(w->nframes <= before + 1);
    if (w->nframes == before + 1)
        assert_event(w, before, false, "room.e", nx0, NULL, NULL);
    before = w->nframes;
    presence_tick(&f->b);
    assert_int_equal(w->nframes, before + 1);
    assert_count_frame(w, before, "room.e", 3);
    assert_count_frame(m, m->nframes - 1, "room.e", 3);
    presence_tick(&f->b);
    assert_int_equal(w->nframes, before + 1);

    /* Events again. */
    unsub(f, n, "room.e"); /* 2 */
    assert_int_equal(w->nframes, before + 2);
    assert_event(w, before + 1, false, "room.e", nn, NULL, NULL);
    sub(f, n, "room.e", -1, false, NULL); /* 3 */
    assert_int_equal(w->nframes, before + 3);
    assert_event(w, before + 2, true, "room.e", nn, NULL, NULL);
    presence_tick(&f->b);
    assert_int_equal(w->nframes, before + 3); /* no count-only message at or below the max */

    for (int i = 0; i < 3; i++)
        fake_free(&f->b, x[i]);
    fake_free(&f->b, w);
    fake_free(&f->b, m);
    fake_free(&f->b, n);
    presence_tick(&f->b);
    assert_stats(f, 0, 0);
}

static void test_events_max_zero_and_a_topic_emptied_while_dirty(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_events_max = 0;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_JSON);
    sub(f, w, "room.z", -1, true, NULL);
    sub(f, b, "room.z", -1, false, NULL);
    assert_int_equal(w->nframes, 0);
    presence_tick(&f->b);
    assert_int_equal(w->nframes, 1);
    assert_count_frame(w, 0, "room.z", 2);
    unsub(f, b, "room.z");
    fake_close_conn(&f->b, w); /* everyone gone while a count is due */
    assert_stats(f, 1, 0);     /* held for its tick ... */
    presence_tick(&f->b);      /* ... which has nobody to tell */
    assert_int_equal(w->nframes, 1);
    assert_stats(f, 0, 0);
    fake_free(&f->b, w);
    fake_free(&f->b, b);
}

static void test_closing_and_refusing_watchers(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_events_max = 5;
    start(f, false);
    fake_conn_t *w[4], *j = open_conn(f, GALE_ENC_JSON), *k = open_conn(f, GALE_ENC_JSON);
    for (int i = 0; i < 4; i++) {
        w[i] = open_conn(f, i == 3 ? GALE_ENC_MSGPACK : GALE_ENC_JSON);
        sub(f, w[i], "room.c", -1, true, NULL);
    }
    size_t base[4];
    for (int i = 0; i < 4; i++)
        base[i] = w[i]->nframes;
    w[0]->refuse = true;    /* deliver fails: the others still get it */
    w[2]->conn.closing = 1; /* the transport closes it: skipped */
    w[3]->refuse = true;    /* the only MessagePack watcher refuses too */
    uint64_t events = f->b.m.presence_events;
    sub(f, j, "room.c", -1, false, NULL);
    assert_int_equal(w[0]->nframes, base[0]);
    assert_int_equal(w[1]->nframes, base[1] + 1);
    assert_int_equal(w[2]->nframes, base[2]);
    assert_int_equal(w[3]->nframes, base[3]);
    assert_int_equal(f->b.m.presence_events, events + 1); /* only what was queued */

    w[3]->refuse = false;
    w[0]->refuse = false;
    w[1]->refuse = true;
    sub(f, k, "room.c", -1, false, NULL); /* 6 > 5: count-only at the tick */
    presence_tick(&f->b);
    assert_int_equal(w[0]->nframes, base[0] + 1);
    assert_int_equal(w[1]->nframes, base[1] + 1);
    assert_int_equal(w[2]->nframes, base[2]); /* closing: skipped */
    assert_int_equal(w[3]->nframes, base[3] + 1);
    assert_count_frame(w[0], base[0], "room.c", 6);
    assert_count_frame(w[3], base[3], "room.c", 6);

    fake_free(&f->b, j);
    fake_free(&f->b, k);
    for (int i = 0; i < 4; i++)
        fake_free(&f->b, w[i]);
    presence_tick(&f->b);
    assert_stats(f, 0, 0);
}

static void test_memory_is_returned_when_every_connection_closes(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    enum { N = 40 };
    fake_conn_t *c[N];
    char topic[32];
    for (int i = 0; i < N; i++) {
        c[i] = open_conn(f, i % 3 ? GALE_ENC_JSON : GALE_ENC_MSGPACK);
        for (int t = 0; t < 30; t++) { /* enough topics for the table to grow */
            if ((i + t) % 4 == 0)
                continue;
            snprintf(topic, sizeof(topic), "room.t%d", (i * 7 + t) % 90);
            sub(f, c[i], topic, -1, t % 2 == 0, i % 5 ? NULL : "{\"i\":1}");
        }
        sub(f, c[i], "room.>", -1, false, NULL);
        sub(f, c[i], "plain.t", -1, false, NULL);
    }
    uint64_t topics, members, bytes;
    presence_stats(f->b.presence, &topics, &members, &bytes);
    assert_true(topics > 64);
    assert_int_equal(members, f->b.m.presence_joins);
    for (int i = 0; i < N; i += 2) /* half unsub some topics first */
        for (int t = 0; t < 30; t += 3) {
            snprintf(topic, sizeof(topic), "room.t%d", (i * 7 + t) % 90);
            unsub(f, c[i], topic);
        }
    for (int i = 0; i < N; i++)
        fake_free(&f->b, c[i]);
    assert_stats(f, 0, 0);
    assert_int_equal(f->b.m.presence_joins, f->b.m.presence_leaves);
}

static void test_conn_name_is_cluster_unique(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    regex_t re;
    assert_int_equal(regcomp(&re, "^[0-9a-f]{16}-[0-9]+$", REG_EXTENDED | REG_NOSUB), 0);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_MSGPACK),
                *w = open_conn(f, GALE_ENC_JSON);
    char na[CORE_CONN_NAME_MAX], nb[CORE_CONN_NAME_MAX];
    name_of(f, a, na);
    name_of(f, b, nb);
    assert_int_equal(regexec(&re, na, 0, NULL, 0), 0);
    assert_int_equal(regexec(&re, nb, 0, NULL, 0), 0);
    assert_string_not_equal(na, nb);
    char want[CORE_CONN_NAME_MAX];
    snprintf(want, sizeof(want), "00c0ffee12345678-%llu", (unsigned long long)a->conn.id);
    assert_string_equal(na, want);
    /* Leading zeros kept; the largest ids fit. */
    f->b.instance = 1;
    fake_conn_t big = {0};
    big.conn.id = UINT64_MAX;
    char nbig[CORE_CONN_NAME_MAX];
    size_t nlen = core_conn_name(&f->b, &big.conn, nbig);
    assert_int_equal(nlen, strlen(nbig));
    assert_string_equal(nbig, "0000000000000001-18446744073709551615");
    assert_int_equal(regexec(&re, nbig, 0, NULL, 0), 0);
    f->b.instance = UINT64_MAX;
    core_conn_name(&f->b, &big.conn, nbig);
    assert_string_equal(nbig, "ffffffffffffffff-18446744073709551615");
    assert_int_equal(regexec(&re, nbig, 0, NULL, 0), 0);
    f->b.instance = INSTANCE;

    /* The member's conn is that name. */
    sub(f, w, "room.n", -1, true, NULL);
    sub(f, a, "room.n", -1, false, NULL);
    assert_event(w, 0, true, "room.n", na, NULL, NULL);
    regfree(&re);
    fake_free(&f->b, a);
    fake_free(&f->b, b);
    fake_free(&f->b, w);
}

static void test_absent_leaves_now_and_close_adds_nothing(void **state)
{
    fixture_t *f = *state;
    start(f, false);
    fake_conn_t *w = open_conn(f, GALE_ENC_JSON), *a = open_conn(f, GALE_ENC_JSON),
                *p = open_conn(f, GALE_ENC_JSON);
    char na[CORE_CONN_NAME_MAX];
    name_of(f, a, na);
    sub(f, w, "room.s", -1, true, NULL);
    sub(f, a, "room.s", -1, false, "{\"a\":1}");
    sub(f, a, "room.t", -1, false, NULL);
    assert_int_equal(w->nframes, 1);

    core_absent(&f->b, &a->conn); /* the broker stops: a's leaves go out now */
    assert_int_equal(w->nframes, 2);
    assert_event(w, 1, false, "room.s", na, NULL, "{\"a\":1}");
    assert_null(a->conn.present);
    assert_stats(f, 1, 1);
    assert_int_equal(a->conn.owner.nsubs, 2); /* still subscribed until it closes */
    send_json(f, p, "{\"op\":\"pub\",\"topic\":\"room.s\",\"data\":1}");
    assert_int_equal(a->nframes, 1);
    fake_close_conn(&f->b, a); /* no second leave */
    assert_int_equal(w->nframes, 3);
    gale_reply_t r;
    decode_frame(w, w->frames[2], &r);
    assert_int_equal(r.op, GALE_REPLY_MSG);
    assert_int_equal(f->b.m.presence_leaves, 2);

    fake_free(&f->b, a);
    fake_free(&f->b, w);
    fake_free(&f->b, p);
    assert_stats(f, 0, 0);
}

/* --- cluster ----------------------------------------------------------------------------- */

static void test_cluster_join_and_leave_go_to_the_bus(void **state)
{
    fixture_t *f = *state;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_MSGPACK);
    char na[CORE_CONN_NAME_MAX], nb[CORE_CONN_NAME_MAX], want[512];
    name_of(f, a, na);
    name_of(f, b, nb);

    sub(f, a, "room.a", 1, true, NULL);
    assert_int_equal(a->nreplies, 1);
    assert_int_equal(a->replies[0].err, GALE_OK);
    assert_int_equal(f->bus.njoins, 1);
    member_of(na, NULL, NULL, want, sizeof(want));
    assert_string_equal(f->bus.join_json[0], want);
    assert_string_equal(f->bus.join_topic[0], "room.a");

    sub(f, b, "room.a", 1, false, "{\"x\":1}");
    assert_int_equal(f->bus.njoins, 2);
    member_of(nb, NULL, "{\"x\":1}", want, sizeof(want));
    assert_string_equal(f->bus.join_json[1], want);
    assert_int_equal(a->nframes, 0); /* events come from Redis, not from here */
    assert_int_equal(b->nframes, 0);

    sub(f, b, "room.a", 2, true, NULL); /* repeated: no second join */
    assert_int_equal(f->bus.njoins, 2);
    sub(f, a, "room.b", 2, false, NULL);
    assert_int_equal(f->bus.njoins, 3);
    sub(f, a, "room.*", 3, false, NULL); /* a pattern: no join */
    sub(f, a, "other.t", 4, false, NULL);
    assert_int_equal(f->bus.njoins, 3);
    assert_stats(f, 2, 3);

    unsub(f, b, "room.a");
    assert_int_equal(f->bus.nleaves, 1);
    assert_string_equal(f->bus.leave_conn[0], nb);
    assert_string_equal(f->bus.leave_json[0], f->bus.join_json[1]);
    assert_string_equal(f->bus.leave_topic[0], "room.a");
    assert_false(f->bus.leave_linked[0]);        /* detached, handed to the bus */
    assert_int_equal(f->bus.leave_nlocal[0], 1); /* a stays: not the last */
    assert_int_equal(a->nframes, 0);

    fake_close_conn(&f->b, a);
    assert_int_equal(f->bus.nleaves, 3);
    for (size_t i = 1; i < 3; i++) {
        assert_string_equal(f->bus.leave_conn[i], na);
        assert_false(f->bus.leave_linked[i]);
        assert_int_equal(f->bus.leave_nlocal[i], 0); /* the last local member of each */
    }
    assert_true((strcmp(f->bus.leave_topic[1], "room.a") == 0 &&
                 strcmp(f->bus.leave_topic[2], "room.b") == 0) ||
                (strcmp(f->bus.leave_topic[1], "room.b") == 0 &&
                 strcmp(f->bus.leave_topic[2], "room.a") == 0));
    assert_int_equal(b->nframes, 0);
    assert_stats(f, 2, 0); /* held by the scripts in flight */
    bus_settle(&f->bus);
    assert_stats(f, 0, 0);
    fake_free(&f->b, a);
    fake_free(&f->b, b);
}

static void test_cluster_refused_sub_takes_the_membership_back(void **state)
{
    fixture_t *f = *state;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON);
    f->bus.down = true;
    sub(f, a, "room.a", 1, true, NULL);
    assert_int_equal(last_reply(a)->err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(a->conn.owner.nsubs, 0);
    assert_null(a->conn.present);
    assert_int_equal(f->bus.njoins, 1);
    assert_int_equal(f->bus.nleaves, 1);
    assert_string_equal(f->bus.leave_json[0], f->bus.join_json[0]);
    bus_settle(&f->bus);
    assert_stats(f, 0, 0);
    fake_free(&f->b, a);
}

static void test_cluster_events_from_redis(void **state)
{
    fixture_t *f = *state;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *b = open_conn(f, GALE_ENC_MSGPACK),
                *c = open_conn(f, GALE_ENC_JSON);
    char na[CORE_CONN_NAME_MAX], nc[CORE_CONN_NAME_MAX], ma[512], mr[512];
    name_of(f, a, na);
    name_of(f, c, nc);
    sub(f, a, "room.a", -1, true, NULL);
    sub(f, b, "room.a", -1, true, NULL);
    sub(f, c, "room.a", -1, false, NULL);
    bus_settle(&f->bus);
    assert_int_equal(a->nframes + b->nframes + c->nframes, 0);

    /* a's own join, as Redis publishes it: to every watcher but a. */
    member_of(na, NULL, NULL, ma, sizeof(ma));
    presence_event(&f->b, "room.a", 6, true, 3, na, strlen(na), ma, strlen(ma));
    assert_int_equal(a->nframes, 0);
    assert_int_equal(b->nframes, 1);
    assert_int_equal(c->nframes, 0);
    assert_event(b, 0, true, "room.a", na, NULL, NULL);

    /* Another broker's member: to both watchers, join then leave. */
    const char *rc = "ffffffffffffffff-7";
    member_of(rc, "zoe", "{\"z\":[1]}", mr, sizeof(mr));
    presence_event(&f->b, "room.a", 6, true, 4, rc, strlen(rc), mr, strlen(mr));
    presence_event(&f->b, "room.a", 6, false, 3, rc, strlen(rc), mr, strlen(mr));
    assert_int_equal(a->nframes, 2);
    assert_int_equal(b->nframes, 3);
    assert_event(a, 0, true, "room.a", rc, "zoe", "{\"z\":[1]}");
    assert_event(a, 1, false, "room.a", rc, "zoe", "{\"z\":[1]}");
    assert_event(b, 2, false, "room.a", rc, "zoe", "{\"z\":[1]}");
    assert_int_equal(presence_topic(f->b.presence, "room.a", 6)->count, 3);

    /* c's leave (it is no watcher): to a and b. */
    char mc[512];
    member_of(nc, NULL, NULL, mc, sizeof(mc));
    presence_event(&f->b, "room.a", 6, false, 2, nc, strlen(nc), mc, strlen(mc));
    assert_event(a, 2, false, "room.a", nc, NULL, NULL);
    assert_int_equal(b->nframes, 4);

    /* A topic without local state: nothing, and no state made. */
    presence_event(&f->b, "room.zzz", 8, true, 1, rc, strlen(rc), mr, strlen(mr));
    presence_event(&f->b, "other.t", 7, true, 1, rc, strlen(rc), mr, strlen(mr));
    assert_null(presence_topic(f->b.presence, "room.zzz", 8));
    assert_stats(f, 1, 3);
    assert_int_equal(a->nframes, 3);
    assert_int_equal(b->nframes, 4);
    assert_int_equal(c->nframes, 0);

    fake_free(&f->b, a);
    fake_free(&f->b, b);
    fake_free(&f->b, c);
    bus_settle(&f->bus);
    assert_stats(f, 0, 0);
}

static void test_cluster_events_max_uses_redis_count(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_events_max = 2;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON);
    sub(f, a, "room.a", -1, true, NULL);
    bus_settle(&f->bus);
    const char *rc = "ffffffffffffffff-7";
    char mr[128];
    member_of(rc, NULL, NULL, mr, sizeof(mr));
    presence_event(&f->b, "room.a", 6, true, 50, rc, strlen(rc), mr, strlen(mr));
    assert_int_equal(a->nframes, 0);
    presence_tick(&f->b);
    assert_int_equal(a->nframes, 1);
    assert_count_frame(a, 0, "room.a", 50);
    presence_event(&f->b, "room.a", 6, false, 2, rc, strlen(rc), mr, strlen(mr));
    presence_tick(&f->b);
    assert_count_frame(a, a->nframes - 1, "room.a", 2);
    size_t n = a->nframes;
    presence_event(&f->b, "room.a", 6, true, 2, rc, strlen(rc), mr, strlen(mr));
    assert_int_equal(a->nframes, n + 1);
    assert_event(a, n, true, "room.a", rc, NULL, NULL);
    fake_free(&f->b, a);
    bus_settle(&f->bus);
    presence_tick(&f->b);
    assert_stats(f, 0, 0);
}

/* A script's reply read after an event Redis published later must not undo its count. */
static void test_cluster_reply_count_older_than_an_event_is_dropped(void **state)
{
    fixture_t *f = *state;
    f->b.cfg.presence_events_max = 2;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON);
    sub(f, a, "room.a", -1, true, NULL);
    bus_settle(&f->bus);
    pres_topic_t *t = presence_topic(f->b.presence, "room.a", 6);
    assert_non_null(t);
    const char *rc = "ffffffffffffffff-7";
    char mr[128];
    member_of(rc, NULL, NULL, mr, sizeof(mr));
    presence_event(&f->b, "room.a", 6, true, 3, rc, strlen(rc), mr, strlen(mr));
    presence_tick(&f->b);
    assert_count_frame(a, a->nframes - 1, "room.a", 3);
    uint32_t sent = t->heard; /* a refresh goes out now ... */
    presence_event(&f->b, "room.a", 6, false, 2, rc, strlen(rc), mr, strlen(mr));
    presence_count(f->b.presence, t, 3, sent); /* ... its older answer is read after */
    presence_tick(&f->b);
    assert_count_frame(a, a->nframes - 1, "room.a", 2);
    assert_int_equal(t->count, 2);
    presence_count(f->b.presence, t, 5, t->heard); /* no event since: Redis's count holds */
    assert_int_equal(t->count, 5);
    fake_free(&f->b, a);
    bus_settle(&f->bus);
    presence_tick(&f->b);
    assert_stats(f, 0, 0);
}

static void test_cluster_topic_state_lives_while_scripts_or_unsynced(void **state)
{
    fixture_t *f = *state;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON);
    sub(f, a, "room.a", -1, false, NULL);
    pres_topic_t *t = presence_topic(f->b.presence, "room.a", 6);
    assert_non_null(t);
    assert_int_equal(t->inflight, 1); /* the fake bus's join script */
    bus_settle(&f->bus);
    assert_int_equal(t->inflight, 0);
    assert_int_equal(t->nlocal, 1);

    /* Unsubscribed: the leave script holds it. */
    unsub(f, a, "room.a");
    assert_stats(f, 1, 0);
    assert_ptr_equal(presence_topic(f->b.presence, "room.a", 6), t);
    /* The script failed: unsynced holds it after the answer. */
    t->unsynced = 1;
    bus_settle(&f->bus);
    assert_stats(f, 1, 0);
    presence_release(f->b.presence, t);
    assert_stats(f, 1, 0);
    /* A member again meanwhile, then gone, then re-synced. */
    sub(f, a, "room.a", -1, false, NULL);
    assert_ptr_equal(presence_topic(f->b.presence, "room.a", 6), t);
    unsub(f, a, "room.a");
    bus_settle(&f->bus);
    t->unsynced = 0;
    presence_release(f->b.presence, t);
    assert_stats(f, 0, 0);
    assert_null(presence_topic(f->b.presence, "room.a", 6));

    /* Two scripts in flight: freed with the last answer only. */
    sub(f, a, "room.b", -1, false, NULL);
    unsub(f, a, "room.b");
    t = presence_topic(f->b.presence, "room.b", 6);
    assert_non_null(t);
    assert_int_equal(t->inflight, 2);
    pres_topic_t *held = f->bus.held[--f->bus.nheld];
    held->inflight--;
    presence_release(f->b.presence, held);
    assert_ptr_equal(presence_topic(f->b.presence, "room.b", 6), t);
    bus_settle(&f->bus);
    assert_null(presence_topic(f->b.presence, "room.b", 6));
    assert_stats(f, 0, 0);
    fake_free(&f->b, a);
}

/*
 * Finishes the held presence request with e: with GALE_OK an answer of count members; with
 * an error, count 0 sets no frame, another count sets one all the same.
 */
static void bus_presence_answer(fixture_t *f, gale_err_t e, uint64_t count)
{
    pending_t *p = f->bus.pres_done;
    assert_non_null(p);
    f->bus.pres_done = NULL;
    if (e != GALE_OK && !count) {
        pending_finish(&f->b, p, e, "shard down");
        return;
    }
    gale_buf_t buf;
    gale_buf_init(&buf, FRAME_HEADROOM);
    const char *mj = "{\"conn\":\"ffffffffffffffff-1\",\"user\":\"u\"}";
    assert_int_equal(gale_encode_presence_begin(&buf, f->bus.pres_enc, f->bus.pres_has_id,
                                                f->bus.pres_id, f->bus.pres_topic,
                                                strlen(f->bus.pres_topic), count, 1),
                     GALE_OK);
    assert_int_equal(
        gale_encode_presence_member(&buf, f->bus.pres_enc, true, (const uint8_t *)mj, strlen(mj)),
        GALE_OK);
    assert_int_equal(gale_encode_presence_end(&buf, f->bus.pres_enc), GALE_OK);
    frame_t *fr = frame_finish(&buf, f->bus.pres_enc == GALE_ENC_JSON ? FRAME_TEXT : FRAME_BINARY);
    assert_non_null(fr);
    if (p->out)
        p->out->frame = fr;
    else
        frame_unref(fr);
    pending_finish(&f->b, p, e, e == GALE_OK ? "" : "shard down");
}

static void test_cluster_presence_request_goes_to_the_bus(void **state)
{
    fixture_t *f = *state;
    start(f, true);
    fake_conn_t *a = open_conn(f, GALE_ENC_JSON), *m = open_conn(f, GALE_ENC_MSGPACK);
    ask_presence(f, a, "room.q", 5);
    send_json(f, a, "{\"op\":\"ping\",\"id\":6}"); /* held behind it */
    assert_int_equal(f->bus.npresence, 1);
    assert_string_equal(f->bus.pres_topic, "room.q");
    assert_int_equal(f->bus.pres_enc, GALE_ENC_JSON);
    assert_true(f->bus.pres_has_id);
    assert_int_equal(f->bus.pres_id, 5);
    assert_int_equal(a->nreplies, 0);
    bus_presence_answer(f, GALE_OK, 42);
    assert_int_equal(a->nreplies, 2);
    gale_reply_t ans;
    decode_answer(a, 0, &ans);
    assert_true(ans.has_id && ans.id == 5);
    assert_int_equal(ans.count, 42);
    assert_int_equal(count_members(a, &ans), 1);
    assert_int_equal(a->replies[1].op, GALE_OP_PING);
    assert_int_equal(a->replies[1].id, 6);
    assert_stats(f, 0, 0); /* nothing kept for a question */

    /* MessagePack, without id. */
    ask_presence(f, m, "big.x", -1);
    assert_int_equal(f->bus.pres_enc, GALE_ENC_MSGPACK);
    assert_false(f->bus.pres_has_id);
    bus_presence_answer(f, GALE_OK, 7);
    decode_answer(m, 0, &ans);
    assert_false(ans.has_id);
    assert_int_equal(ans.count, 7);

    /* A shard down: err, no frame. */
    ask_presence(f, a, "room.q", 7);
    bus_presence_answer(f, GALE_ERR_UNAVAILABLE, 0);
    assert_int_equal(last_reply(a)->err, GALE_ERR_UNAVAILABLE);
    assert_null(last_reply(a)->frame);
    f->bus.pres_err = GALE_ERR_UNAVAILABLE; /* refused at once */
    ask_presence(f, a, "room.q", 8);
    assert_int_equal(last_reply(a)->err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(last_reply(a)->id, 8);
    f->bus.pres_err = GALE_OK;

    /* An answer built but finished with an error: its frame is dropped (LeakSanitizer). */
    ask_presence(f, a, "room.q", 10);
    bus_presence_answer(f, GALE_ERR_UNAVAILABLE, 3);
    assert_int_equal(last_reply(a)->err, GALE_ERR_UNAVAILABLE);
    assert_int_equal(last_reply(a)->id, 10);
    assert_null(last_reply(a)->frame);

    /* A topic without presence never reaches the bus. */
    size_t calls = f->bus.npresence;
    ask_presence(f, a, "other.t", 9);
    assert_int_equal(last_reply(a)->err, GALE_ERR_BAD_REQUEST);
    assert_int_equal(f->bus.npresence, calls);

    /* The asker closes before the answer: the answer is dropped (LeakSanitizer checks). */
    ask_presence(f, m, "room.q", 3);
    size_t nm = m->nreplies;
    fake_close_conn(&f->b, m);
    bus_presence_answer(f, GALE_OK, 1);
    assert_int_equal(m->nreplies, nm);

    fake_free(&f->b, a);
    fake_free(&f->b, m);
    bus_settle(&f->bus);
    assert_stats(f, 0, 0);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_join_goes_to_watchers_only_never_about_themselves),
        T(test_unsub_and_close_give_leaves_like_the_join),
        T(test_repeated_sub_keeps_the_member_and_its_latest_flag_decides),
        T(test_pattern_subs_are_not_members),
        T(test_info_from_the_sub_in_both_encodings),
        T(test_info_over_the_max_is_a_limit_and_registers_nothing),
        T(test_presence_memory_bounds_members),
        T(test_presence_fields_on_a_topic_without_presence),
        T(test_tokens_give_user_and_info),
        T(test_token_user_with_quotes_and_utf8),
        T(test_presence_answer_counts_all_and_lists_at_most_the_max),
        T(test_events_max_gives_way_to_count_updates),
        T(test_events_max_zero_and_a_topic_emptied_while_dirty),
        T(test_closing_and_refusing_watchers),
        T(test_memory_is_returned_when_every_connection_closes),
        T(test_conn_name_is_cluster_unique),
        T(test_absent_leaves_now_and_close_adds_nothing),
        T(test_cluster_join_and_leave_go_to_the_bus),
        T(test_cluster_refused_sub_takes_the_membership_back),
        T(test_cluster_events_from_redis),
        T(test_cluster_events_max_uses_redis_count),
        T(test_cluster_reply_count_older_than_an_event_is_dropped),
        T(test_cluster_topic_state_lives_while_scripts_or_unsynced),
        T(test_cluster_presence_request_goes_to_the_bus),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
