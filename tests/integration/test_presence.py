"""Presence on a single broker (PROTOCOL.md "Presence"): the `presence` op (count and
members with conn, user, info; id echoed; JSON and MessagePack), who is present (exact subs
only, never a pattern), join and leave events (only to watchers that asked presence:true,
never about the watcher itself, on unsub and on close, none for a repeated sub), the
refusals (a pattern, a topic without presence, presence not a boolean, info not an object,
info over --presence-info-max, info with tokens), tokens (the sub right; user = the `sub`
claim, info = the `gale.info` claim), the cluster-unique conn id of `hello`,
--presence-list-max (members capped, count exact), an answer larger than --queue-limit
(members left out, never a 4001), --presence-events-max (count-only `presence` messages at
most about once per second instead of events), GET /api/presence, the gale_presence_*
metrics, the flags and GALE_PRESENCE*.

Broker choices checked here (the design the implementation follows, beyond PROTOCOL.md):
`hello`'s conn is "<16 lowercase hex of the broker instance>-<decimal n>" and is the
member's conn; `info` on a sub is allowed only on a broker without tokens (else
`forbidden`) and is at most --presence-info-max bytes in JSON (else `limit`); `presence` of
a pattern is `bad_topic` (as `hist`); a repeated sub changes nothing about membership and
info, its presence flag decides whether the connection gets events; above
--presence-events-max members the watchers get {"op":"presence","topic":T,"count":C} (no id,
no members) instead of join/leave. The presence answer always holds `members` (empty: []).
A token's gale.info counts against --presence-info-max by its bytes in the token (the tokens
here are compact JSON); one that is not an object refuses the token (401). GET
/api/presence of a topic without presence is 400, POST is 405 (as /api/history).
"""
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time

import pytest

from galetest import (HOST, JSON, MSGPACK, Broker, broker_binary, connect, connect_status,
                      decode_frame, free_port, run)

pytestmark = pytest.mark.gale_only

CONN_RE = re.compile(r"^[0-9a-f]{16}-[0-9]+$")
API_KEY = "presence-api-key-0123456789"
SECRET = "presence-test-secret-0123456789abcdef"
MAX_ID = 2 ** 53 - 1

# Topics of the module's brokers: p.> and q.*.live have presence, anything else not.
PRESENCE = ["--presence", "p.>", "--presence", "q.*.live"]

ENCODINGS = [JSON, pytest.param(MSGPACK, marks=pytest.mark.needs_msgpack)]


def _module_broker(logdir, args, name):
    b = Broker(logdir, args=args, name=name).start()
    return b


def _finish(b):
    rc = b.stop(signal.SIGTERM, 5)
    san = b.sanitizer_errors()
    assert rc == 0, "%s broker exit %r after SIGTERM\n%s" % (b.name, rc, b.log_tail())
    assert not san, "sanitizer report: %s\n%s" % (san, b.log_tail())


@pytest.fixture(scope="module")
def _open_broker(logdir):
    b = _module_broker(logdir, PRESENCE + ["--api-key", API_KEY], "presence")
    yield b
    _finish(b)


@pytest.fixture(scope="module")
def _token_broker(logdir):
    b = _module_broker(logdir, PRESENCE + ["--api-key", API_KEY, "--jwt-secret", SECRET],
                       "presence-jwt")
    yield b
    _finish(b)


def _guard(b):
    assert b.alive(), "%s broker died earlier:\n%s" % (b.name, b.log_tail())
    yield b
    assert b.alive(), "%s broker died in this test:\n%s" % (b.name, b.log_tail())
    san = b.sanitizer_errors()
    assert not san, "sanitizer report: %s\n%s" % (san, b.log_tail())


@pytest.fixture
def pb(_open_broker):
    """The module's broker without tokens (PRESENCE, --api-key)."""
    yield from _guard(_open_broker)


@pytest.fixture
def tb(_token_broker):
    """The module's broker with --jwt-secret (PRESENCE, --api-key)."""
    yield from _guard(_token_broker)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def member(c, user=None, info=None):
    """The member entry of client c (its hello conn), with user/info when given."""
    m = {"conn": c.hello["conn"]}
    if user is not None:
        m["user"] = user
    if info is not None:
        m["info"] = info
    return m


def event(kind, t, c, user=None, info=None):
    e = {"op": kind, "topic": t}
    e.update(member(c, user, info))
    return e


def answer(t, members, rid=None, count=None):
    """The expected presence answer (members sorted by conn, as norm() sorts)."""
    a = {"op": "presence"}
    if rid is not None:
        a["id"] = rid
    a["topic"] = t
    a["count"] = len(members) if count is None else count
    a["members"] = sorted(members, key=lambda m: m["conn"])
    return a


def norm(r):
    """A presence answer with its members sorted by conn (their order is not specified)."""
    if isinstance(r, dict) and isinstance(r.get("members"), list):
        r = dict(r)
        r["members"] = sorted(r["members"], key=lambda m: m.get("conn", ""))
    return r


async def presence(c, t, rid=None, **kw):
    """The answer of a presence request (events arriving meanwhile are kept for recv)."""
    m = {"op": "presence", "topic": t, "id": c.next_id() if rid is None else rid}
    m.update(kw)
    return norm(await c.ask(m))


async def sub(c, t, **kw):
    m = {"op": "sub", "topic": t}
    m.update(kw)
    return await c.ask(m)


def is_err(r, code, rid=None):
    return (isinstance(r, dict) and r.get("op") == "err" and r.get("code") == code
            and (rid is None or r.get("id") == rid))


async def events(c, n, timeout=5.0):
    """The next n messages of c, which must all be join/leave events (bounded)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, "%d of %d events within %.1fs: %r" % (len(got), n, timeout, got)
        try:
            m = await c.recv(left)
        except AssertionError:
            raise AssertionError("%d of %d events within %.1fs: %r"
                                 % (len(got), n, timeout, got)) from None
        assert m.get("op") in ("join", "leave"), "not an event: %r (events so far %r)" % (m, got)
        got.append(m)
    return got


def key(e):
    return (e.get("op"), e.get("topic"), e.get("conn"))


async def close_all(*cs):
    for c in cs:
        await c.close()


def metrics_with(b, word="presence"):
    return {k: v for k, v in b.metrics().items() if word in k and not k.startswith("#")}


# ---------------------------------------------------------------------------------------
# hello's conn and the presence answer
# ---------------------------------------------------------------------------------------

def test_hello_conn_is_instance_and_counter(pb):
    async def main():
        cs = [await connect(pb.url, (JSON, MSGPACK)[i % 2]) for i in range(4)]
        conns = [c.hello["conn"] for c in cs]
        for x in conns:
            assert isinstance(x, str) and CONN_RE.match(x), conns
        assert len(set(conns)) == 4, conns
        assert len({x.split("-")[0] for x in conns}) == 1, "one instance per broker: %r" % conns
        ns = [int(x.split("-")[1]) for x in conns]
        assert all(str(n) == x.split("-")[1] for n, x in zip(ns, conns)), "decimal n: %r" % conns
        await close_all(*cs)
    run(main())


def test_hello_conn_instance_changes_with_a_restart(make_broker):
    b = make_broker(PRESENCE)

    async def conn():
        c = await connect(b.url)
        x = c.hello["conn"]
        await c.close()
        return x

    first = run(conn())
    assert b.stop() == 0
    b.start()
    second = run(conn())
    assert CONN_RE.match(first) and CONN_RE.match(second)
    assert first.split("-")[0] != second.split("-")[0], (first, second)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_presence_answer_lists_exact_subscribers(pb, enc, topic):
    t = "p.%s.room" % topic

    async def main():
        q = await connect(pb.url, enc)
        assert await presence(q, t, rid=7) == answer(t, [], rid=7)
        s1 = await connect(pb.url, JSON)
        s2 = await connect(pb.url, MSGPACK)
        both = await connect(pb.url, JSON)         # a pattern and the exact topic
        pat = await connect(pb.url, enc)           # a pattern only: not present
        assert await sub(s1, t, id=1) == {"op": "ack", "id": 1}
        assert await sub(s2, t, id=2) == {"op": "ack", "id": 2}
        assert await sub(both, "p.%s.*" % topic, id=3) == {"op": "ack", "id": 3}
        assert await sub(both, t, id=4) == {"op": "ack", "id": 4}
        for p in ("p.%s.*" % topic, "p.%s.>" % topic, "p.>", ">"):
            assert await sub(pat, p, id=5) == {"op": "ack", "id": 5}, p
        r = await presence(q, t, rid=MAX_ID)
        assert r == answer(t, [member(s1), member(s2), member(both)], rid=MAX_ID)
        assert type(r["count"]) is int
        for m in r["members"]:
            assert set(m) == {"conn"}, m            # no tokens, no info: conn only
        # Every client sees the same, whatever its own subscriptions.
        for c in (s1, s2, both, pat):
            assert await presence(c, t, rid=8) == r | {"id": 8}
        # Another topic of the same rule nobody holds, and the pattern's own name.
        assert await presence(q, t + ".x", rid=9) == answer(t + ".x", [], rid=9)
        # The subscription of `both` that counts is the exact one.
        assert await both.ask({"op": "unsub", "topic": t, "id": 10}) == {"op": "ack", "id": 10}
        assert await presence(q, t, rid=11) == answer(t, [member(s1), member(s2)], rid=11)
        for c in (q, s1, s2, both, pat):
            await c.expect_silence()                 # no events without presence:true
        await close_all(q, s1, s2, both, pat)
    run(main())


def test_presence_without_id_is_answered(pb, topic):
    t = "p.%s" % topic

    async def main():
        s = await connect(pb.url)
        await s.sub(t)
        q = await connect(pb.url, MSGPACK)
        await q.send({"op": "presence", "topic": t})
        assert [norm(m) for m in await q.sync()] == [answer(t, [member(s)])]
        await close_all(s, q)
    run(main())


def test_second_presence_rule_and_no_rule(pb, topic):
    async def main():
        s = await connect(pb.url)
        live, other = "q.%s.live" % topic, "q.%s.other" % topic
        await s.sub(live)
        assert await presence(s, live, rid=1) == answer(live, [member(s)], rid=1)
        await s.sub(other)
        r = await s.ask({"op": "presence", "topic": other, "id": 2})
        assert is_err(r, "bad_request", 2), r
        await s.close()
    run(main())


# ---------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["p.{t}.*", "p.{t}.>", "p.*", "p.>", "p.*.{t}"])
def test_presence_of_a_pattern_is_bad_topic(pb, topic, pattern):
    async def main():
        c = await connect(pb.url)
        r = await c.ask({"op": "presence", "topic": pattern.format(t=topic), "id": 6})
        assert is_err(r, "bad_topic", 6), r
        await c.expect_silence()
        await c.close()
    run(main())


@pytest.mark.parametrize("body", ['{"op":"presence","id":3}',
                                  '{"op":"presence","id":3,"topic":5}',
                                  '{"op":"presence","id":3,"topic":null}',
                                  '{"op":"presence","id":3,"topic":["p.x"]}'])
def test_presence_without_a_topic_string_is_bad_request(pb, body):
    async def main():
        c = await connect(pb.url)
        await c.send_raw(body)
        r = await c.reply(3)
        assert is_err(r, "bad_request", 3), r
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("extra", [{"presence": True}, {"info": {"a": 1}},
                                   {"presence": True, "info": {"a": 1}}],
                         ids=["presence", "info", "both"])
def test_presence_or_info_on_a_pattern_is_bad_request_and_not_registered(pb, enc, topic,
                                                                         extra):
    t = "p.%s.x" % topic

    async def main():
        c = await connect(pb.url, enc)
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        for p in ("p.%s.*" % topic, "p.%s.>" % topic):
            r = await sub(c, p, id=4, **extra)
            assert is_err(r, "bad_request", 4), (p, r)
        await c.expect_silence()
        pub = await connect(pb.url)
        await pub.pub(t, 1)
        assert await w.recv() == {"op": "msg", "topic": t, "data": 1}
        await c.expect_silence()                 # nothing registered
        j = await connect(pb.url)
        await j.sub(t)
        assert await events(w, 1) == [event("join", t, j)]
        await c.expect_silence()                 # no events either
        assert await c.ask({"op": "unsub", "topic": "p.%s.*" % topic, "id": 5}) == \
            {"op": "ack", "id": 5}
        assert await presence(c, t, rid=78) == answer(t, [member(w), member(j)], rid=78)
        await close_all(c, w, pub, j)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_topic_without_presence_is_bad_request(pb, enc, topic):
    t = "np.%s" % topic

    async def main():
        c = await connect(pb.url, enc)
        r = await c.ask({"op": "presence", "topic": t, "id": 1})
        assert is_err(r, "bad_request", 1), r
        for extra in ({"presence": True}, {"info": {"n": 1}},
                      {"presence": True, "info": {"n": 1}}):
            r = await sub(c, t, id=2, **extra)
            assert is_err(r, "bad_request", 2), (extra, r)
        p = await connect(pb.url)
        await p.pub(t, 1)
        await c.expect_silence()                 # none of them registered
        # presence:false is a plain sub, there as anywhere.
        assert await sub(c, t, id=3, presence=False) == {"op": "ack", "id": 3}
        await p.pub(t, 2)
        assert await c.recv() == {"op": "msg", "topic": t, "data": 2}
        await close_all(c, p)
    run(main())


BAD_PRESENCE = [("int 1", 1), ("int 0", 0), ("string", "true"), ("null", None),
                ("object", {}), ("array", [True]), ("float", 1.0)]


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("case", [c[0] for c in BAD_PRESENCE])
def test_presence_not_a_boolean_is_bad_request_and_not_registered(pb, enc, topic, case):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        c = await connect(pb.url, enc)
        r = await sub(c, t, id=4, presence=dict(BAD_PRESENCE)[case])
        assert is_err(r, "bad_request", 4), r
        p = await connect(pb.url)
        await p.pub(t, 1)
        assert await w.recv() == {"op": "msg", "topic": t, "data": 1}
        await w.expect_silence()                 # no join of c
        await c.expect_silence()                 # not subscribed
        assert await presence(p, t, rid=5) == answer(t, [member(w)], rid=5)
        await close_all(w, c, p)
    run(main())


BAD_INFO = [("string", "x"), ("int", 1), ("array", [1]), ("null", None), ("bool", True),
            ("empty array", [])]


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("case", [c[0] for c in BAD_INFO])
def test_info_not_an_object_is_bad_request_and_not_registered(pb, enc, topic, case):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        c = await connect(pb.url, enc)
        r = await sub(c, t, id=4, info=dict(BAD_INFO)[case])
        assert is_err(r, "bad_request", 4), r
        p = await connect(pb.url)
        await p.pub(t, 1)
        assert await w.recv() == {"op": "msg", "topic": t, "data": 1}
        await w.expect_silence()
        await c.expect_silence()
        assert await presence(p, t, rid=5) == answer(t, [member(w)], rid=5)
        await close_all(w, c, p)
    run(main())


def test_presence_memory_bounds_members(make_broker, topic):
    """--presence-memory caps what members hold on a broker: past it a sub that would join
    answers limit and registers nothing (no subscription either); leaves give room back."""
    b = make_broker(PRESENCE + ["--presence-memory", "1M", "--max-subscriptions", "4096"])
    info = {"pad": "x" * 1000}

    async def main():
        c = await connect(b.url)
        joined, refused = 0, None
        for i in range(2000):                 # 2 MB of info: the cap is reached first
            r = await sub(c, "p.%s.%d" % (topic, i), id=i + 1, info=info)
            if r != {"op": "ack", "id": i + 1}:
                refused = (i, r)
                break
            joined += 1
        assert refused is not None, "2000 members of 1 KB each under --presence-memory 1M"
        i, r = refused
        assert is_err(r, "limit", i + 1), r
        assert 500 < joined < 1024, joined
        m = metrics_with(b)
        assert m["gale_presence_members"] == joined
        assert m["gale_presence_bytes"] <= 1024 * 1024
        # The refused sub registered nothing: a message to that topic does not reach c.
        other = await connect(b.url)
        assert await other.ask({"op": "pub", "topic": "p.%s.%d" % (topic, i), "data": 1,
                                "id": 1}) == {"op": "ack", "id": 1}
        await c.expect_silence()
        # A topic without presence is not bounded by it; closing gives the room back.
        assert await sub(other, "np.%s" % topic, id=2) == {"op": "ack", "id": 2}
        await c.close()
        assert await sub(other, "p.%s.0" % topic, id=3, info=info) == {"op": "ack", "id": 3}
        await other.close()
    run(main())


def test_info_over_the_max_is_limit(make_broker, topic):
    b = make_broker(PRESENCE + ["--presence-info-max", "64"])
    t = "p.%s" % topic

    def info_of(size):
        """A JSON object of exactly `size` bytes in compact JSON."""
        base = len('{"k":""}')
        return {"k": "x" * (size - base)}

    async def main():
        w = await connect(b.url)
        await sub(w, t, presence=True)
        ok = await connect(b.url)
        exact = info_of(64)
        assert len(json.dumps(exact, separators=(",", ":"))) == 64
        assert await sub(ok, t, id=1, info=exact) == {"op": "ack", "id": 1}
        assert await events(w, 1) == [event("join", t, ok, info=exact)]
        for size in (65, 100, 2000):
            c = await connect(b.url)
            r = await sub(c, t, id=2, info=info_of(size))
            assert is_err(r, "limit", 2), (size, r)
            await c.expect_silence()
            await c.close()
        # MessagePack: the size counts once converted to JSON.
        m = await connect(b.url, MSGPACK)
        r = await sub(m, t, id=3, info=info_of(80))
        assert is_err(r, "limit", 3), r
        assert await sub(m, t, id=4, info=info_of(50)) == {"op": "ack", "id": 4}
        assert await events(w, 1) == [event("join", t, m, info=info_of(50))]
        await w.expect_silence()
        assert await presence(w, t, rid=5) == answer(
            t, [member(w), member(ok, info=exact), member(m, info=info_of(50))], rid=5)
        await close_all(w, ok, m)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_huge_info_is_limit_by_default(pb, enc, topic):
    t = "p.%s" % topic

    async def main():
        c = await connect(pb.url, enc)
        for size in (1025, 4000, 60000):           # the default --presence-info-max: 1024
            r = await sub(c, t, id=6, info={"k": "y" * size})
            assert is_err(r, "limit", 6), (size, r)
        assert await sub(c, t, id=7, info={"k": "y" * 1000}) == {"op": "ack", "id": 7}
        assert await presence(c, t, rid=8) == answer(t, [member(c, info={"k": "y" * 1000})],
                                                     rid=8)
        await c.close()
    run(main())


# ---------------------------------------------------------------------------------------
# info on a broker without tokens
# ---------------------------------------------------------------------------------------

INFO = {"name": "Ann \u00e9\u4e2d", "n": 3, "x": -1.5, "ok": True, "no": None,
        "tags": ["a", 1, [2]], "deep": {"k": {"j": []}}}


@pytest.mark.parametrize("enc", ENCODINGS)
def test_info_is_shown_on_a_broker_without_tokens(pb, enc, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url, JSON)
        wm = await connect(pb.url, MSGPACK)
        await sub(w, t, presence=True)
        await sub(wm, t, presence=True)
        assert await events(w, 1) == [event("join", t, wm)]
        c = await connect(pb.url, enc)
        assert await sub(c, t, id=1, info=INFO) == {"op": "ack", "id": 1}
        e = event("join", t, c, info=INFO)
        for x in (w, wm):
            got = await events(x, 1)
            assert got == [e], got
        e2 = await presence(wm, t, rid=2)
        assert e2 == answer(t, [member(w), member(wm), member(c, info=INFO)], rid=2)
        mine = [m for m in e2["members"] if m["conn"] == c.hello["conn"]][0]
        assert type(mine["info"]["n"]) is int and type(mine["info"]["x"]) is float
        assert await presence(w, t, rid=3) == e2 | {"id": 3}
        empty = await connect(pb.url, enc)
        assert await sub(empty, t, id=4, info={}) == {"op": "ack", "id": 4}
        for x in (w, wm):
            assert await events(x, 1) == [event("join", t, empty, info={})]
        await c.close()
        for x in (w, wm):
            assert await events(x, 1) == [event("leave", t, c, info=INFO)]
            await x.expect_silence()
        await close_all(w, wm, empty)
    run(main())


# ---------------------------------------------------------------------------------------
# join and leave
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ENCODINGS)
def test_join_and_leave_events(pb, enc, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url, enc)
        assert await sub(w, t, id=1, presence=True) == {"op": "ack", "id": 1}
        await w.expect_silence()                   # nothing about itself
        a = await connect(pb.url, JSON)
        assert await sub(a, t, id=2) == {"op": "ack", "id": 2}
        assert await events(w, 1) == [event("join", t, a)]
        await a.expect_silence()                   # a plain subscriber gets no events
        # A second watcher: the members already there give it no join.
        v = await connect(pb.url, MSGPACK)
        assert await sub(v, t, id=3, presence=True) == {"op": "ack", "id": 3}
        assert await events(w, 1) == [event("join", t, v)]
        await v.expect_silence()
        assert await a.ask({"op": "unsub", "topic": t, "id": 4}) == {"op": "ack", "id": 4}
        for x in (w, v):
            assert await events(x, 1) == [event("leave", t, a)]
        # Present again: a new join.
        await a.sub(t)
        for x in (w, v):
            assert await events(x, 1) == [event("join", t, a)]
        await v.close()
        assert await events(w, 1) == [event("leave", t, v)]
        await a.close()
        assert await events(w, 1) == [event("leave", t, a)]
        await w.expect_silence()
        assert await presence(w, t, rid=5) == answer(t, [member(w)], rid=5)
        await w.close()
        q = await connect(pb.url)
        assert await presence(q, t, rid=6) == answer(t, [], rid=6)
        await q.close()
    run(main())


def test_events_go_to_watchers_only(pb, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        plain = await connect(pb.url)
        await plain.sub(t)
        pat = await connect(pb.url)
        await pat.sub("p.>")
        other = await connect(pb.url)              # watches another topic
        await sub(other, t + ".other", presence=True)
        assert await events(w, 1) == [event("join", t, plain)]
        j = await connect(pb.url)
        await j.sub(t)
        await j.unsub(t)
        assert await events(w, 2) == [event("join", t, j), event("leave", t, j)]
        for x in (plain, pat, other, j):
            await x.expect_silence()
        await w.expect_silence()
        await close_all(w, plain, pat, other, j)
    run(main())


def test_repeated_sub_changes_nothing_but_the_event_flag(pb, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        a = await connect(pb.url)
        assert await sub(a, t, id=1, info={"v": 1}) == {"op": "ack", "id": 1}
        assert await events(w, 1) == [event("join", t, a, info={"v": 1})]
        # Repeated subs: no join, no leave, info unchanged.
        for extra in ({}, {"info": {"v": 2}}, {"presence": False}, {"presence": True}):
            assert await sub(a, t, id=2, **extra) == {"op": "ack", "id": 2}, extra
        await w.expect_silence()
        assert await presence(w, t, rid=3) == answer(t, [member(w), member(a, info={"v": 1})],
                                                     rid=3)
        # a's latest sub said presence:true: it gets events now.
        b = await connect(pb.url)
        await b.sub(t)
        for x in (w, a):
            assert await events(x, 1) == [event("join", t, b)]
        # The latest sub (plain) turns them off again.
        assert await sub(a, t, id=4) == {"op": "ack", "id": 4}
        await b.unsub(t)
        assert await events(w, 1) == [event("leave", t, b)]
        await a.expect_silence()
        # w repeats its sub with presence:false: it stays present, without events.
        assert await sub(w, t, id=5, presence=False) == {"op": "ack", "id": 5}
        await b.sub(t)
        await w.expect_silence()
        await a.expect_silence()
        assert await presence(b, t, rid=6) == answer(
            t, [member(w), member(a, info={"v": 1}), member(b)], rid=6)
        await close_all(w, a, b)
    run(main())


def test_watcher_that_is_not_yet_present_by_pattern(pb, topic):
    """A connection holding only a pattern that covers T is not present; its exact sub of
    T with presence:true makes it present (a join to others) and a watcher."""
    t = "p.%s.x" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        c = await connect(pb.url)
        await c.sub("p.%s.*" % topic)
        await w.expect_silence()
        await sub(c, t, presence=True)
        assert await events(w, 1) == [event("join", t, c)]
        await c.expect_silence()
        await c.unsub(t)                         # the pattern stays: not present any more
        assert await events(w, 1) == [event("leave", t, c)]
        d = await connect(pb.url)
        await d.sub(t)
        assert await events(w, 1) == [event("join", t, d)]
        await c.expect_silence()                 # c no longer watches
        await close_all(w, c, d)
    run(main())


def test_close_gives_a_leave_on_every_topic(pb, topic):
    ts = ["p.%s.%d" % (topic, i) for i in range(5)]

    async def main():
        ws = []
        for t in ts:
            w = await connect(pb.url)
            await sub(w, t, presence=True)
            ws.append(w)
        all_w = await connect(pb.url, MSGPACK)   # watches all five
        for t in ts:
            await sub(all_w, t, presence=True)
        for i, w in enumerate(ws):
            assert await events(w, 1) == [event("join", ts[i], all_w)]
        c = await connect(pb.url)
        for t in ts:
            await sub(c, t, info={"t": t})
        for i, w in enumerate(ws):
            assert await events(w, 1) == [event("join", ts[i], c, info={"t": ts[i]})]
        got = await events(all_w, len(ts))       # the watchers were there before it
        assert got == [event("join", t, c, info={"t": t}) for t in ts]
        await c.close()
        for i, w in enumerate(ws):
            assert await events(w, 1) == [event("leave", ts[i], c, info={"t": ts[i]})]
        got = await events(all_w, len(ts))
        assert sorted(got, key=key) == sorted([event("leave", t, c, info={"t": t})
                                               for t in ts], key=key)
        for x in ws + [all_w]:
            await x.expect_silence()
        await close_all(all_w, *ws)
    run(main())


def test_unsub_of_a_topic_not_held_gives_no_leave(pb, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(pb.url)
        await sub(w, t, presence=True)
        c = await connect(pb.url)
        await c.unsub(t)
        await c.sub("p.%s.*" % topic)
        await c.unsub(t)
        await w.expect_silence()
        await c.close()
        await w.expect_silence()
        await w.close()
    run(main())


def test_membership_churn_stays_consistent(pb, topic):
    t = "p.%s" % topic
    n = 40

    async def main():
        w = await connect(pb.url, MSGPACK)
        await sub(w, t, presence=True)
        cs = [await connect(pb.url, (JSON, MSGPACK)[i % 2]) for i in range(n)]
        for i, c in enumerate(cs):
            await c.send({"op": "sub", "topic": t, "info": {"i": i}} if i % 3 == 0
                         else {"op": "sub", "topic": t})
        for c in cs:
            assert await c.sync() == []
        for c in cs[:10]:
            await c.send({"op": "unsub", "topic": t})
        for c in cs[10:20]:
            await c.close()
        for c in cs[:10]:
            assert await c.sync() == []
        got = await events(w, n + 20, timeout=10)
        joins = [e for e in got if e["op"] == "join"]
        leaves = [e for e in got if e["op"] == "leave"]
        assert len(joins) == n and len(leaves) == 20
        info = {c.hello["conn"]: ({"i": i} if i % 3 == 0 else None) for i, c in enumerate(cs)}
        for e in got:
            assert e == event(e["op"], t, _Conn(e["conn"]), info=info[e["conn"]]), e
        assert {e["conn"] for e in joins} == set(info)
        assert {e["conn"] for e in leaves} == {c.hello["conn"] for c in cs[:20]}
        # Per connection: its join before its leave.
        for c in cs[:20]:
            x = c.hello["conn"]
            kinds = [e["op"] for e in got if e["conn"] == x]
            assert kinds == ["join", "leave"], (x, kinds)
        await w.expect_silence()
        r = await presence(w, t, rid=1)
        assert r == answer(t, [member(w)] + [member(c, info=info[c.hello["conn"]])
                                             for c in cs[20:]], rid=1)
        await close_all(w, *cs)
    run(main())


class _Conn:
    """Stands for a client in member()/event() when only its conn id is known."""

    def __init__(self, conn):
        self.hello = {"conn": conn}


# ---------------------------------------------------------------------------------------
# --presence-list-max and --presence-events-max
# ---------------------------------------------------------------------------------------

def test_list_max_caps_members_count_stays_exact(make_broker, topic):
    b = make_broker(PRESENCE + ["--presence-list-max", "3", "--api-key", API_KEY])
    t = "p.%s" % topic

    async def main():
        cs = [await connect(b.url) for _ in range(7)]
        for i, c in enumerate(cs):
            await sub(c, t, info={"i": i})
        everyone = {c.hello["conn"]: {"conn": c.hello["conn"], "info": {"i": i}}
                    for i, c in enumerate(cs)}
        for enc in (JSON, MSGPACK):
            q = await connect(b.url, enc)
            r = await presence(q, t, rid=1)
            assert r["op"] == "presence" and r["id"] == 1 and r["topic"] == t
            assert r["count"] == 7, r
            assert len(r["members"]) == 3, r
            assert len({m["conn"] for m in r["members"]}) == 3, r
            for m in r["members"]:
                assert everyone.get(m["conn"]) == m, m
            await q.close()
        st, body = _http(b, "/api/presence?topic=" + t)
        assert st == 200 and body["count"] == 7 and len(body["members"]) == 3, body
        # At the cap: everyone.
        for c in cs[3:]:
            await c.unsub(t)
        q = await connect(b.url)
        assert await presence(q, t, rid=2) == answer(t, [everyone[c.hello["conn"]]
                                                         for c in cs[:3]], rid=2)
        await close_all(q, *cs)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_presence_answer_fits_the_queue_limit(make_broker, enc, topic):
    """A presence answer never closes the client that asked it with 4001: members whose
    info would make it larger than --queue-limit are left out (count stays exact), as a
    hist answer holds only the messages that fit."""
    b = make_broker(PRESENCE + ["--queue-limit", "64K"])
    t = "p.%s" % topic
    n = 100

    async def main():
        cs = [await connect(b.url) for _ in range(n)]
        for i, c in enumerate(cs):
            await sub(c, t, info={"i": i, "pad": "x" * 1000})   # ~100 KB of members
        everyone = {c.hello["conn"]: {"conn": c.hello["conn"],
                                      "info": {"i": i, "pad": "x" * 1000}}
                    for i, c in enumerate(cs)}
        q = await connect(b.url, enc)
        rid = q.next_id()
        await q.send({"op": "presence", "topic": t, "id": rid})
        frame = await q.recv_raw()
        r = decode_frame(frame)
        assert r.get("op") == "presence" and r.get("id") == rid and r.get("count") == n, \
            {k: v for k, v in r.items() if k != "members"}
        assert len(frame) <= 64 * 1024
        assert 0 < len(r["members"]) < n
        assert len({m["conn"] for m in r["members"]}) == len(r["members"])
        for m in r["members"]:
            assert everyone.get(m["conn"]) == m
        assert await q.ask({"op": "ping", "id": 1}) == {"op": "pong", "id": 1}
        await close_all(q, *cs)
    run(main())


async def _collect(c, seconds, until=None):
    """Every message c receives within `seconds` (or until until(msgs) is true), each with
    its arrival time."""
    got = []
    deadline = time.monotonic() + seconds
    while True:
        if until is not None and until([m for _, m in got]):
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            return got
        try:
            m = await c.recv(left)
        except AssertionError:
            return got
        got.append((time.monotonic(), m))


def _counts(t, got):
    return [m for _, m in got if m.get("op") == "presence"]


def _assert_spaced(got, label, gap=0.75):
    times = [x for x, m in got if m.get("op") == "presence"]
    for a, b in zip(times, times[1:]):
        assert b - a >= gap, "%s: count messages %.2fs apart (%r)" % (
            label, b - a, [(round(x - times[0], 2), m) for x, m in got])


def test_events_max_switches_to_count_messages(make_broker, topic):
    b = make_broker(PRESENCE + ["--presence-events-max", "3"])
    t = "p.%s" % topic

    async def main():
        w = await connect(b.url)
        await sub(w, t, presence=True)                   # count 1
        ms = [await connect(b.url) for _ in range(10)]
        for m in ms[:2]:
            await m.sub(t)                               # count 2, 3: events
        assert await events(w, 2) == [event("join", t, m) for m in ms[:2]]
        # Above 3: no more joins; count-only messages, at most about one per second.
        t0 = time.monotonic()
        for m in ms[2:7]:
            await m.sub(t)                               # count 4..8
        got = await _collect(w, 4.0, until=lambda msgs: msgs and msgs[-1].get("count") == 8)
        assert got, "no count message within 4 s"
        for _, m in got:
            assert m.get("op") == "presence" and set(m) == {"op", "topic", "count"} and \
                m["topic"] == t, got
        assert got[-1][1]["count"] == 8, got
        assert got[-1][0] - t0 < 3.0, "the final count came %.1fs late" % (got[-1][0] - t0)
        assert [m["count"] for _, m in got] == sorted(m["count"] for _, m in got)
        assert len(got) <= 3, got
        _assert_spaced(got, "rise")
        # Churn around 8 members for 2.5 s: still count messages only, spaced.
        t1 = time.monotonic()
        spare = list(ms[7:])
        held = list(ms[2:7])
        churn = []
        i = 0
        while time.monotonic() - t1 < 2.5:
            if i % 2 == 0:
                await held.pop(0).unsub(t)
            else:
                c = spare.pop(0) if spare else None
                if c is None:
                    c = await connect(b.url)
                await c.sub(t)
                held.append(c)
            i += 1
            churn += await _collect(w, 0.1)
        churn += await _collect(w, 1.5)
        assert churn, "no count message while the count changed for 2.5 s"
        for _, m in churn:
            assert m.get("op") == "presence" and set(m) == {"op", "topic", "count"}, churn
        assert len(churn) <= 5, churn
        _assert_spaced(churn, "churn")
        present = 3 + len(held)
        assert churn[-1][1]["count"] == present, (present, churn)
        assert 7 <= present <= 8
        r = await presence(w, t, rid=1)
        assert r["count"] == present and len(r["members"]) == present
        # Back to <= 3: one more count message, then events again.
        leaving = held[:present - 3]
        for c in leaving:
            await c.unsub(t)
        back = await _collect(w, 4.0, until=lambda msgs: msgs and msgs[-1].get("count") == 3)
        assert back and back[-1][1] == {"op": "presence", "topic": t, "count": 3}, back
        # (The leave that crosses the max itself may come as an event or not; none other.)
        stray = [m for _, m in back if m.get("op") != "presence"]
        assert len(stray) <= 1 and all(m["op"] == "leave" for m in stray), back
        await ms[0].unsub(t)                             # count 2: a leave
        assert await events(w, 1) == [event("leave", t, ms[0])]
        extra = await connect(b.url)
        await extra.sub(t)                               # count 3: a join
        assert await events(w, 1) == [event("join", t, extra)]
        late = await _collect(w, 1.3)
        assert late == [], late
        await close_all(w, extra, *ms)
    run(main(), timeout=40)


def test_events_max_zero_gives_counts_only(make_broker, topic):
    b = make_broker(PRESENCE + ["--presence-events-max", "0"])
    t = "p.%s" % topic

    async def main():
        w = await connect(b.url)
        wm = await connect(b.url, MSGPACK)
        await sub(w, t, presence=True)
        await sub(wm, t, presence=True)
        m = await connect(b.url)
        await m.sub(t)
        for x in (w, wm):
            got = await _collect(x, 3.0, until=lambda ms: ms and ms[-1].get("count") == 3)
            assert got and got[-1][1] == {"op": "presence", "topic": t, "count": 3}, got
            assert all(y.get("op") == "presence" and "id" not in y and "members" not in y
                       for _, y in got), got
        await close_all(w, wm, m)
    run(main())


# ---------------------------------------------------------------------------------------
# tokens
# ---------------------------------------------------------------------------------------

def _b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(sub=(), pub=(), user="alice", info=None, ttl=300):
    """A HS256 token; user None: no `sub` claim; info: the gale.info claim."""
    claims = {"exp": int(time.time()) + ttl, "gale": {"sub": list(sub), "pub": list(pub)}}
    if user is not None:
        claims["sub"] = user
    if info is not None:
        claims["gale"]["info"] = info
    h = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    # Compact JSON: the broker measures a gale.info claim by its bytes in the token.
    p = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(SECRET.encode(), (h + "." + p).encode(), hashlib.sha256).digest())
    return h + "." + p + "." + sig


def turl(b, tok):
    return b.url + "?token=" + tok


ALICE = {"name": "Alice", "color": "#f00", "n": 7, "tags": ["admin"]}


@pytest.mark.parametrize("enc", ENCODINGS)
def test_tokens_give_user_and_info(tb, enc, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(turl(tb, make_token(sub=["p.>"], user="watcher")), enc)
        assert await sub(w, t, id=1, presence=True) == {"op": "ack", "id": 1}
        alice = await connect(turl(tb, make_token(sub=["p.>"], user="alice", info=ALICE)))
        bob = await connect(turl(tb, make_token(sub=[t], user="bob")), MSGPACK)
        anon = await connect(turl(tb, make_token(sub=["p.%s" % topic], user=None,
                                                 info={"anon": True})))
        for c in (alice, bob, anon):
            await c.sub(t)
        assert await events(w, 3) == [event("join", t, alice, user="alice", info=ALICE),
                                      event("join", t, bob, user="bob"),
                                      event("join", t, anon, info={"anon": True})]
        want = answer(t, [member(w, user="watcher"), member(alice, user="alice", info=ALICE),
                          member(bob, user="bob"), member(anon, info={"anon": True})], rid=2)
        for c in (w, alice, bob, anon):
            assert await presence(c, t, rid=2) == want
        await bob.close()
        assert await events(w, 1) == [event("leave", t, bob, user="bob")]
        await alice.unsub(t)
        assert await events(w, 1) == [event("leave", t, alice, user="alice", info=ALICE)]
        await w.expect_silence()
        await close_all(w, alice, anon)
    run(main())


def test_presence_needs_the_right_to_subscribe(tb, topic):
    t = "p.%s.x" % topic

    async def main():
        member_ = await connect(turl(tb, make_token(sub=[t], user="m")))
        await member_.sub(t)
        pubber = await connect(turl(tb, make_token(pub=["p.>"], user="p")))
        other = await connect(turl(tb, make_token(sub=["p.%s.y" % topic, "p.other.>"])))
        for c in (pubber, other):
            r = await c.ask({"op": "presence", "topic": t, "id": 1})
            assert is_err(r, "forbidden", 1), r
            r = await sub(c, t, id=2, presence=True)
            assert is_err(r, "forbidden", 2), r
            await c.send({"op": "presence", "topic": t})
            got = await c.sync()
            assert len(got) == 1 and is_err(got[0], "forbidden") and "id" not in got[0], got
        # A pattern grant covering the topic is enough.
        wide = await connect(turl(tb, make_token(sub=["p.%s.*" % topic])))
        assert await presence(wide, t, rid=3) == answer(t, [member(member_, user="m")], rid=3)
        await member_.expect_silence()
        await close_all(member_, pubber, other, wide)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_info_on_sub_with_tokens_is_forbidden(tb, enc, topic):
    t = "p.%s" % topic

    async def main():
        w = await connect(turl(tb, make_token(sub=["p.>"], user="w")))
        await sub(w, t, presence=True)
        c = await connect(turl(tb, make_token(sub=["p.>"], user="c", info={"a": 1})), enc)
        for info in ({"b": 2}, {}):
            r = await sub(c, t, id=5, info=info)
            assert is_err(r, "forbidden", 5), r
            r = await sub(c, t, id=6, info=info, presence=True)
            assert is_err(r, "forbidden", 6), r
        p = await connect(turl(tb, make_token(pub=["p.>"])))
        await p.pub(t, 1)
        assert await w.recv() == {"op": "msg", "topic": t, "data": 1}
        await w.expect_silence()                # no join of c
        await c.expect_silence()                # not subscribed
        assert await presence(w, t, rid=7) == answer(t, [member(w, user="w")], rid=7)
        await close_all(w, c, p)
    run(main())


def test_gale_info_claim_over_the_max_is_limit(make_broker, topic):
    b = make_broker(PRESENCE + ["--jwt-secret", SECRET, "--presence-info-max", "64"])
    t = "p.%s" % topic

    async def main():
        w = await connect(turl(b, make_token(sub=["p.>"], user="w")))
        await sub(w, t, presence=True)
        big = await connect(turl(b, make_token(sub=["p.>", "np.>"], user="big",
                                               info={"k": "x" * 100})))
        r = await sub(big, t, id=1)
        assert is_err(r, "limit", 1), r
        r = await sub(big, t, id=2, presence=True)
        assert is_err(r, "limit", 2), r
        await w.expect_silence()
        # Its other rights are intact: a topic without presence is a plain sub.
        assert await sub(big, "np.%s" % topic, id=3) == {"op": "ack", "id": 3}
        fits = {"k": "x" * (64 - len('{"k":""}'))}
        ok = await connect(turl(b, make_token(sub=["p.>"], user="ok", info=fits)))
        assert await sub(ok, t, id=4) == {"op": "ack", "id": 4}
        assert await events(w, 1) == [event("join", t, ok, user="ok", info=fits)]
        assert await presence(w, t, rid=5) == answer(
            t, [member(w, user="w"), member(ok, user="ok", info=fits)], rid=5)
        await close_all(w, big, ok)
    run(main())


@pytest.mark.parametrize("info", ["str", 5, [1], None, True], ids=repr)
def test_gale_info_claim_not_an_object_refuses_the_token(tb, info):
    """Broker choice: a token whose gale.info is not an object is invalid (401)."""
    claims = {"exp": int(time.time()) + 300, "sub": "u", "gale": {"sub": ["p.>"],
                                                                   "info": info}}
    h = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(SECRET.encode(), (h + "." + p).encode(), hashlib.sha256).digest())
    assert run(connect_status(turl(tb, h + "." + p + "." + sig))) == 401


# ---------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------

def test_presence_metrics_move(make_broker, topic):
    b = make_broker(PRESENCE + ["--presence-events-max", "3"])
    t, t2, t3 = "p.%s.a" % topic, "p.%s.b" % topic, "p.%s.c" % topic
    names = ["gale_presence_topics", "gale_presence_members", "gale_presence_joins_total",
             "gale_presence_leaves_total", "gale_presence_events_total",
             "gale_presence_counts_total"]

    def now():
        m = b.metrics()
        for n in names:
            assert n in m, "no %s in /metrics: %r" % (n, metrics_with(b))
        return {n: m[n] for n in names}

    def moved(before, **want):
        after = now()
        got = {n: after[n] - before[n] for n in names}
        exp = {n: want.get(n.replace("gale_presence_", "").replace("_total", ""), 0)
               for n in names}
        assert got == exp, (got, exp)
        return after

    async def main():
        m = b.metrics()
        for n in names:
            assert m["#TYPE " + n] == ("counter" if n.endswith("_total") else "gauge"), n
        m0 = now()
        assert m0 == {n: 0 for n in names}, m0
        w1 = await connect(b.url)
        w2 = await connect(b.url)
        await sub(w1, t, presence=True)
        m1 = moved(m0, topics=1, members=1, joins=1)
        await sub(w2, t, presence=True)
        await events(w1, 1)
        m1 = moved(m1, members=1, joins=1, events=1)        # w2's join to w1
        a = await connect(b.url)
        await a.sub(t)
        await a.sub(t)                                      # repeated: nothing moves
        await events(w1, 1)
        await events(w2, 1)
        m1 = moved(m1, members=1, joins=1, events=2)
        await a.sub(t2)                                     # nobody watches t2
        m1 = moved(m1, topics=1, members=1, joins=1)
        await a.sub("p.>")                                  # a pattern: not present
        m1 = moved(m1)
        await a.unsub(t)
        await events(w1, 1)
        await events(w2, 1)
        m1 = moved(m1, members=-1, leaves=1, events=2)
        await a.close()
        assert wait_for_sync(lambda: now()["gale_presence_members"] == m1[
            "gale_presence_members"] - 1)
        m1 = moved(m1, topics=-1, members=-1, leaves=1)
        # Above --presence-events-max 3 on t3: count messages, counted as such.
        w3 = await connect(b.url)
        await sub(w3, t3, presence=True)
        cs = [await connect(b.url) for _ in range(3)]
        for c in cs[:2]:
            await c.sub(t3)
        assert len(await events(w3, 2)) == 2
        m1 = moved(m1, topics=1, members=3, joins=3, events=2)
        await cs[2].sub(t3)                                 # count 4: a count message
        got = await _collect(w3, 3.0, until=lambda ms: ms and ms[-1].get("count") == 4)
        assert got and got[-1][1]["count"] == 4, got
        moved(m1, members=1, joins=1, counts=len(got))
        await close_all(w1, w2, w3, *cs)
    run(main())


def wait_for_sync(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


# ---------------------------------------------------------------------------------------
# GET /api/presence
# ---------------------------------------------------------------------------------------

def _http(b, path, key=API_KEY, method="GET"):
    import http.client
    conn = http.client.HTTPConnection(HOST, b.port, timeout=5)
    headers = {"Authorization": "Bearer " + key} if key else {}
    conn.request(method, path, headers=headers, body=b"{}" if method == "POST" else None)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        body = json.loads(data) if data else None
    except ValueError:
        body = data
    return r.status, body


def test_presence_api(pb, topic):
    t = "p.%s" % topic

    async def main():
        a = await connect(pb.url)
        await sub(a, t, info={"name": "a"})
        b = await connect(pb.url, MSGPACK)
        await b.sub(t)
        st, body = _http(pb, "/api/presence?topic=" + t)
        assert st == 200, (st, body)
        want = answer(t, [member(a, info={"name": "a"}), member(b)])
        assert norm(body) == want
        ws = await presence(a, t, rid=1)
        del ws["id"]
        assert ws == want                          # the WebSocket answer without id
        st, body = _http(pb, "/api/presence?topic=p.%s.none" % topic)
        assert (st, body) == (200, answer("p.%s.none" % topic, []))
        await close_all(a, b)
    run(main())
    # Refusals.
    assert _http(pb, "/api/presence?topic=" + t, key=None)[0] == 401
    assert _http(pb, "/api/presence?topic=" + t, key="wrong")[0] == 401
    assert _http(pb, "/api/presence?topic=p.%3E")[0] == 400
    assert _http(pb, "/api/presence?topic=p.%2A")[0] == 400
    assert _http(pb, "/api/presence")[0] == 400
    assert _http(pb, "/api/presence?topic=")[0] == 400
    assert _http(pb, "/api/presence?topic=np.%s" % topic)[0] == 400   # no presence there
    assert _http(pb, "/api/presence?topic=" + t, method="POST")[0] == 405


def test_presence_api_with_tokens_shows_users(tb, topic):
    t = "p.%s" % topic

    async def main():
        a = await connect(turl(tb, make_token(sub=["p.>"], user="ann", info={"k": 1})))
        await a.sub(t)
        st, body = _http(tb, "/api/presence?topic=" + t)
        assert (st, norm(body)) == (200, answer(t, [member(a, user="ann", info={"k": 1})]))
        await a.close()
    run(main())
    assert _http(tb, "/api/presence?topic=" + t, key=None)[0] == 401


# ---------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------

def test_presence_rules_from_environment(make_broker, topic):
    b = make_broker(env={"GALE_PRESENCE": "e1.> e2.*"})

    async def main():
        c = await connect(b.url)
        for t in ("e1.%s.x" % topic, "e2.%s" % topic):
            await sub(c, t, presence=True)
            assert await presence(c, t, rid=1) == answer(t, [member(c)], rid=1)
        r = await c.ask({"op": "presence", "topic": "e3.%s" % topic, "id": 2})
        assert is_err(r, "bad_request", 2), r
        r = await c.ask({"op": "presence", "topic": "e2.%s.deeper" % topic, "id": 3})
        assert is_err(r, "bad_request", 3), r
        await c.close()
    run(main())


def test_presence_limits_from_environment(make_broker, topic):
    b = make_broker(PRESENCE, env={"GALE_PRESENCE_LIST_MAX": "2",
                                   "GALE_PRESENCE_INFO_MAX": "32",
                                   "GALE_PRESENCE_EVENTS_MAX": "1"})
    t = "p.%s" % topic

    async def main():
        cs = [await connect(b.url) for _ in range(3)]
        for c in cs:
            await c.sub(t)
        r = await presence(cs[0], t, rid=1)
        assert r["count"] == 3 and len(r["members"]) == 2, r
        x = await connect(b.url)
        r = await sub(x, t + ".i", id=2, info={"k": "z" * 40})
        assert is_err(r, "limit", 2), r
        w = await connect(b.url)
        await sub(w, t + ".e", presence=True)        # count 1 = the max
        await cs[0].sub(t + ".e")                    # 2: above
        got = await _collect(w, 3.0, until=lambda msgs: msgs and msgs[-1].get("count") == 2)
        assert got and got[-1][1] == {"op": "presence", "topic": t + ".e", "count": 2}, got
        await close_all(x, w, *cs)
    run(main())


@pytest.mark.parametrize("args", [
    ["--presence", "p..x"],
    ["--presence", ""],
    ["--presence-list-max", "0"],
    ["--presence-list-max", "100001"],
    ["--presence-list-max", "x"],
    ["--presence-info-max", "15"],
    ["--presence-info-max", "65537"],
    ["--presence-expiry", "2"],
    ["--presence-expiry", "46"],
    ["--presence-events-max", "-1"],
    ["--presence-events-max", "1000001"],
], ids=lambda a: " ".join(a))
def test_bad_presence_flags_exit_2(args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    r = subprocess.run([broker_binary(), "--listen", "%s:%d" % (HOST, free_port())] + args,
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                       env=env)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert "presence" in r.stderr, r.stderr


@pytest.mark.parametrize("args", [
    ["--presence-list-max", "1"], ["--presence-list-max", "100000"],
    ["--presence-info-max", "16"], ["--presence-info-max", "65536"],
    ["--presence-expiry", "3"], ["--presence-expiry", "45"],
    ["--presence-events-max", "0"], ["--presence-events-max", "1000000"],
], ids=lambda a: " ".join(a))
def test_presence_flag_bounds_are_accepted(make_broker, args):
    b = make_broker(PRESENCE + args)
    assert b.healthz()["status"] == "ok"
