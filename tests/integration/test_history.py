"""History, recovery and idempotent publish on a single broker (PROTOCOL.md "Additions"):
stream positions (ep/off) on msg, sub ack and pub ack; sub with since (replay, refusals,
caps, epochs across a restart, TTL, displacement); hist (limits, caps, bin, tokens); mid
(dedup, invalid mids, --dedup-max); malformed since; the --history-memory bound under a
flood of topics; the history metrics.

Broker choices checked here (beyond PROTOCOL.md): ep is "<16 hex>-<hex>"; a recovery whose
messages would exceed half of --queue-limit answers recovered false; a hist answer holds
at most --hist-max-limit messages and only the newest that fit in half of --queue-limit; a
dup ack carries "dup":true and "off" but no "ep"; the ack of a pattern sub carries no
position; success without id stays silent (as in v1). The HTTP API is covered by
test_history_api below.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import time

import msgpack
import pytest

from galetest import HOST, JSON, MSGPACK, Broker, broker_binary, connect, free_port, run

pytestmark = pytest.mark.gale_only

EP_RE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]+$")
MAX_ID = 2 ** 53 - 1

# Rules of the module's broker. Topics: h.* (SIZE 200), small.* (3), big.* (2000),
# ttl.* (10, 1 s), ttl2.* (10, 2 s), first.a.* (2, before first.* with 50), anything
# else: no history.
HIST_RULES = ["first.a.>=2", "first.>=50", "h.>=200", "small.>=3", "big.>=2000",
              "ttl.>=10/1s", "ttl2.>=10/2s"]


def hist_args(rules):
    out = []
    for r in rules:
        out += ["--history", r]
    return out


@pytest.fixture(scope="module")
def _hist_broker(logdir):
    b = Broker(logdir, args=hist_args(HIST_RULES), name="history").start()
    yield b
    rc = b.stop(signal.SIGTERM, 5)
    san = b.sanitizer_errors()
    assert rc == 0, "history broker exit %r after SIGTERM\n%s" % (rc, b.log_tail())
    assert not san, "sanitizer report: %s\n%s" % (san, b.log_tail())


@pytest.fixture
def hb(_hist_broker):
    """The module's broker with HIST_RULES; a test that kills it fails here."""
    assert _hist_broker.alive(), "history broker died earlier:\n" + _hist_broker.log_tail()
    yield _hist_broker
    assert _hist_broker.alive(), "history broker died in this test:\n" + _hist_broker.log_tail()
    san = _hist_broker.sanitizer_errors()
    assert not san, "sanitizer report: %s\n%s" % (san, _hist_broker.log_tail())


ENCODINGS = [JSON, pytest.param(MSGPACK, marks=pytest.mark.needs_msgpack)]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

async def until_reply(c, timeout=10.0, limit=5000):
    """Read messages until one that is not a `msg`; return (msgs before it, that one)."""
    msgs = []
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        left = deadline - time.monotonic()
        assert left > 0, "no reply within %.1fs (%d msgs first)" % (timeout, len(msgs))
        m = await c.recv(left)
        if m.get("op") != "msg":
            return msgs, m
        msgs.append(m)
    raise AssertionError("more than %d msgs before a reply" % limit)


async def sub_since(c, topic, ep, off, rid=None):
    rid = c.next_id() if rid is None else rid
    await c.send({"op": "sub", "topic": topic, "since": {"ep": ep, "off": off}, "id": rid})
    msgs, reply = await until_reply(c)
    return rid, msgs, reply


async def pub_many(p, topic, values, mid_prefix=None):
    """Publishes each value without id (pipelined), then syncs: nothing may come back."""
    for i, v in enumerate(values):
        m = {"op": "pub", "topic": topic, "data": v}
        if mid_prefix is not None:
            m["mid"] = "%s%d" % (mid_prefix, i)
        await p.send(m)
    extra = await p.sync(timeout=20)
    assert extra == [], extra[:3]


async def hist(c, topic, **kw):
    m = {"op": "hist", "topic": topic}
    m.update(kw)
    return await c.request(m)


def msg(topic, ep, off, data):
    return {"op": "msg", "topic": topic, "ep": ep, "off": off, "data": data}


def metric(b, name):
    return b.metrics().get(name, 0.0)


async def close_all(*cs):
    for c in cs:
        await c.close()


# ---------------------------------------------------------------------------------------
# Stream positions
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ENCODINGS)
def test_positions_on_msg_for_exact_and_pattern_subscribers(hb, enc, topic):
    t = "h.%s.a" % topic

    async def main():
        exact = await connect(hb.url, enc)
        pat = await connect(hb.url, enc)
        both = await connect(hb.url, enc)
        p = await connect(hb.url, JSON)
        r = await exact.request({"op": "sub", "topic": t, "id": 11})
        ep = r.get("ep")
        assert isinstance(ep, str) and EP_RE.match(ep), r
        assert r == {"op": "ack", "id": 11, "ep": ep, "off": 0}
        # A pattern subscription has no position of its own.
        assert await pat.request({"op": "sub", "topic": "h.%s.*" % topic, "id": 12}) == \
            {"op": "ack", "id": 12}
        assert await both.request({"op": "sub", "topic": "h.%s.>" % topic, "id": 13}) == \
            {"op": "ack", "id": 13}
        r = await both.request({"op": "sub", "topic": t, "id": 14})
        assert r == {"op": "ack", "id": 14, "ep": ep, "off": 0}
        for k in (1, 2, 3):
            r = await p.request({"op": "pub", "topic": t, "data": {"k": k}, "id": 100 + k})
            assert r == {"op": "ack", "id": 100 + k, "ep": ep, "off": k}
        for c in (exact, pat, both):
            for k in (1, 2, 3):
                m = await c.recv()
                assert m == msg(t, ep, k, {"k": k})
                assert type(m["off"]) is int and type(m["ep"]) is str
            await c.expect_silence()   # `both` too: one delivery per connection
        await close_all(exact, pat, both, p)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_topic_without_rule_carries_no_position(hb, enc, topic):
    t = "nohist.%s" % topic

    async def main():
        s = await connect(hb.url, enc)
        p = await connect(hb.url, enc)
        assert await s.request({"op": "sub", "topic": t, "id": 1}) == {"op": "ack", "id": 1}
        assert await p.request({"op": "pub", "topic": t, "data": "x", "id": 2}) == \
            {"op": "ack", "id": 2}
        assert await s.recv() == {"op": "msg", "topic": t, "data": "x"}
        await s.expect_silence()
        await close_all(s, p)
    run(main())


def test_sub_ack_gives_current_position(hb, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        r1 = await p.request({"op": "pub", "topic": t, "data": 1})
        ep = r1["ep"]
        assert r1["off"] == 1
        await p.pub(t, 2)
        s = await connect(hb.url, MSGPACK)
        r = await s.request({"op": "sub", "topic": t, "id": 5})
        assert r == {"op": "ack", "id": 5, "ep": ep, "off": 2}
        await p.pub(t, 3)
        assert await s.recv() == msg(t, ep, 3, 3)
        await close_all(p, s)
    run(main())


def test_first_matching_rule_wins(hb, topic):
    async def main():
        p = await connect(hb.url)
        # first.a.> (SIZE 2) comes before first.> (SIZE 50).
        ta, tb = "first.a.%s" % topic, "first.%s" % topic
        await pub_many(p, ta, list(range(1, 6)))
        await pub_many(p, tb, list(range(1, 6)))
        r = await hist(p, ta)
        assert r["off"] == 5 and r["msgs"] == [{"off": 4, "data": 4}, {"off": 5, "data": 5}], r
        r = await hist(p, tb)
        assert r["off"] == 5 and [m["off"] for m in r["msgs"]] == [1, 2, 3, 4, 5], r
        await p.close()
    run(main())


def test_history_rules_from_environment(make_broker, topic):
    # GALE_HISTORY holds several rules separated by spaces.
    b = make_broker(env={"GALE_HISTORY": "e1.>=2 e2.>=3/1h"})

    async def main():
        p = await connect(b.url)
        await pub_many(p, "e1.x", [1, 2, 3, 4])
        await pub_many(p, "e2.x", [1, 2, 3, 4])
        await pub_many(p, "e3.x", [1, 2, 3, 4])
        assert [m["off"] for m in (await hist(p, "e1.x"))["msgs"]] == [3, 4]
        assert [m["off"] for m in (await hist(p, "e2.x"))["msgs"]] == [2, 3, 4]
        r = await hist(p, "e3.x", id=9)
        assert r == {"op": "hist", "id": 9, "off": 0, "msgs": []}
        await p.close()
    run(main())


def test_history_rule_splits_at_the_last_equals_sign(make_broker):
    b = make_broker(hist_args(["k=v.>=2"]))

    async def main():
        p = await connect(b.url)
        await pub_many(p, "k=v.x", [1, 2, 3])
        r = await hist(p, "k=v.x")
        assert r["off"] == 3 and r["msgs"] == [{"off": 2, "data": 2}, {"off": 3, "data": 3}], r
        await p.close()
    run(main())


@pytest.mark.parametrize("args,mention", [
    (["--history", "h.>"], "history"),
    (["--history", "h.>=0"], "history"),
    (["--history", "h.>=1000001"], "history"),
    (["--history", "h.>=5/10x"], "history"),
    (["--history", "h..x=5"], "history"),
    (["--recovery-max", "999"], "recovery-max"),      # the cap is at least 1000
    (["--dedup-window", "119"], "dedup-window"),      # the window is at least 2 minutes
    (["--dedup-max", "999"], "dedup-max"),
    (["--hist-max-limit", "0"], "hist-max-limit"),
    (["--history-memory", "1000"], "history-memory"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_history_flags_exit_2(args, mention):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    r = subprocess.run([broker_binary(), "--listen", "%s:%d" % (HOST, free_port())] + args,
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                       env=env)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert mention in r.stderr, r.stderr


# ---------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ENCODINGS)
def test_recovery_replays_exactly_the_missed_then_continues_live(hb, enc, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url, enc)
        p = await connect(hb.url, JSON)
        ep = (await s.sub(t))["ep"]
        for k in (1, 2, 3):
            await p.pub(t, "m%d" % k)
        for k in (1, 2, 3):
            assert await s.recv() == msg(t, ep, k, "m%d" % k)
        await s.close()
        for k in range(4, 9):
            await p.pub(t, "m%d" % k)
        s2 = await connect(hb.url, enc)
        rid, msgs, ack = await sub_since(s2, t, ep, 3)
        assert msgs == [msg(t, ep, k, "m%d" % k) for k in range(4, 9)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 8}
        # Live from off 9: no gap, no duplicate.
        for k in (9, 10):
            await p.pub(t, "m%d" % k)
        assert await s2.recv() == msg(t, ep, 9, "m9")
        assert await s2.recv() == msg(t, ep, 10, "m10")
        await s2.expect_silence()
        await close_all(s2, p)
    run(main())


def test_recovery_from_zero_and_at_top(hb, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await p.pub(t, 2)
        await p.pub(t, 3)
        s = await connect(hb.url)
        rid, msgs, ack = await sub_since(s, t, ep, 0)
        assert msgs == [msg(t, ep, k, k) for k in (1, 2, 3)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 3}
        s2 = await connect(hb.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 3)
        assert msgs == []
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 3}
        await s2.expect_silence()
        await p.pub(t, 4)
        assert await s2.recv() == msg(t, ep, 4, 4)
        assert await s.recv() == msg(t, ep, 4, 4)
        await close_all(p, s, s2)
    run(main())


def test_recovery_while_others_publish_has_no_gap_or_duplicate(hb, topic):
    t = "h.%s" % topic
    total = 180

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, list(range(2, 21)))          # offsets 1..20
        s = await connect(hb.url)

        async def publisher():
            for k in range(21, total + 1):
                await p.send({"op": "pub", "topic": t, "data": k})
                if k % 20 == 0:
                    await asyncio.sleep(0)
            await p.sync()

        task = asyncio.ensure_future(publisher())
        await asyncio.sleep(0.005)
        rid = s.next_id()
        await s.send({"op": "sub", "topic": t, "since": {"ep": ep, "off": 10}, "id": rid})
        await task
        got, ack = [], None
        deadline = time.monotonic() + 10
        while len(got) < total - 10 or ack is None:
            m = await s.recv(max(0.01, deadline - time.monotonic()))
            if m.get("op") == "msg":
                got.append(m)
            else:
                assert ack is None, m
                ack = m
                assert m["recovered"] is True and m["ep"] == ep, m
                # everything before the ack is replayed, up to ack.off exactly
                assert [x["off"] for x in got] == list(range(11, m["off"] + 1)), m
        assert ack is not None
        assert [x["off"] for x in got] == list(range(11, total + 1))
        assert [x["data"] for x in got] == list(range(11, total + 1))
        await s.expect_silence()
        await close_all(p, s)
    run(main())


def test_recovery_refused_for_another_epoch(hb, topic):
    ta, tb = "h.%s.a" % topic, "h.%s.b" % topic

    async def main():
        p = await connect(hb.url)
        ep_a = (await p.request({"op": "pub", "topic": ta, "data": 1}))["ep"]
        ep_b = (await p.request({"op": "pub", "topic": tb, "data": 1}))["ep"]
        await p.pub(tb, 2)
        assert ep_a != ep_b
        s = await connect(hb.url)
        for ep, off in ((ep_a, 1), (ep_a, 0), ("nope", 0), ("", 0), (ep_b + "0", 1),
                        (ep_b[:-1], 1)):
            rid, msgs, ack = await sub_since(s, tb, ep, off)
            assert msgs == [], (ep, msgs)
            assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep_b, "off": 2}, ep
        await p.pub(tb, 3)
        assert await s.recv() == msg(tb, ep_b, 3, 3)       # live all the same, once
        await s.expect_silence()
        await close_all(p, s)
    run(main())


def test_recovery_after_restart_gets_a_new_epoch(make_broker, topic):
    b = make_broker(hist_args(["r.>=100"]))
    t = "r.%s" % topic

    async def before():
        p = await connect(b.url)
        await p.pub(t, 1)
        r = await p.request({"op": "pub", "topic": t, "data": 2})
        await p.close()
        return r["ep"]

    ep = run(before())
    assert b.stop() == 0
    b.start()

    async def after():
        s = await connect(b.url)
        rid, msgs, ack = await sub_since(s, t, ep, 2)
        assert msgs == []
        new_ep = ack.get("ep")
        assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": new_ep, "off": 0}
        assert new_ep != ep and EP_RE.match(new_ep)
        assert new_ep.split("-")[0] != ep.split("-")[0], (ep, new_ep)   # a new instance
        rid, msgs, ack = await sub_since(s, t, ep, 0)
        assert msgs == [] and ack["recovered"] is False and ack["ep"] == new_ep
        p = await connect(b.url)
        assert await p.request({"op": "pub", "topic": t, "data": 3, "id": 4}) == \
            {"op": "ack", "id": 4, "ep": new_ep, "off": 1}
        assert await s.recv() == msg(t, new_ep, 1, 3)
        await close_all(s, p)
    run(after())


def test_recovery_refused_above_top(hb, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await p.pub(t, 2)
        s = await connect(hb.url)
        for off in (3, 1000, MAX_ID, 2 ** 64 - 1):
            rid, msgs, ack = await sub_since(s, t, ep, off)
            assert msgs == [], off
            assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 2}, off
        await close_all(p, s)
    run(main())


def test_recovery_refused_when_displaced_by_size(hb, topic):
    t = "small.%s" % topic     # SIZE 3

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, [2, 3, 4, 5])
        s = await connect(hb.url)
        for off in (0, 1):      # 2 (or 1) is gone
            rid, msgs, ack = await sub_since(s, t, ep, off)
            assert msgs == [], off
            assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 5}
        s2 = await connect(hb.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 2)      # 3, 4, 5 held
        assert msgs == [msg(t, ep, k, k) for k in (3, 4, 5)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 5}
        await close_all(p, s, s2)
    run(main())


def test_recovery_refused_after_ttl(hb, topic):
    t = "ttl.%s" % topic       # TTL 1 s

    async def main():
        expired0 = metric(hb, "gale_history_expired_total")
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, [2, 3])
        s = await connect(hb.url)
        rid, msgs, ack = await sub_since(s, t, ep, 1)      # still within the TTL
        assert [m["off"] for m in msgs] == [2, 3] and ack["recovered"] is True
        await s.close()
        await asyncio.sleep(1.6)
        s = await connect(hb.url)
        rid, msgs, ack = await sub_since(s, t, ep, 1)
        assert msgs == []
        assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 3}
        r = await hist(s, t, id=77)
        assert r == {"op": "hist", "id": 77, "ep": ep, "off": 3, "msgs": []}
        # Nothing missed since the top: recovered, the stream goes on at 4.
        s2 = await connect(hb.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 3)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep,
                                      "off": 3}
        await p.pub(t, 4)
        assert await s2.recv() == msg(t, ep, 4, 4)
        assert metric(hb, "gale_history_expired_total") - expired0 == 3
        await close_all(p, s, s2)
    run(main())


def test_recovery_after_partial_ttl_expiry(hb, topic):
    t = "ttl2.%s" % topic      # TTL 2 s

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await asyncio.sleep(1.2)
        await pub_many(p, t, [2, 3])
        await asyncio.sleep(1.0)   # 1 is 2.2 s old (gone), 2 and 3 are 1 s old (held)
        s = await connect(hb.url)
        rid, msgs, ack = await sub_since(s, t, ep, 0)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep,
                                      "off": 3}
        rid, msgs, ack = await sub_since(s, t, ep, 1)
        assert msgs == [msg(t, ep, 2, 2), msg(t, ep, 3, 3)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 3}
        r = await hist(s, t, id=4)
        assert r == {"op": "hist", "id": 4, "ep": ep, "off": 3,
                     "msgs": [{"off": 2, "data": 2}, {"off": 3, "data": 3}]}
        await close_all(p, s)
    run(main())


def test_recovery_max_default_1000(hb, topic):
    t = "big.%s" % topic      # SIZE 2000

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, list(range(2, 1002)))         # offsets 1..1001
        s = await connect(hb.url)
        rid, msgs, ack = await sub_since(s, t, ep, 0)      # 1001 missed > 1000
        assert msgs == []
        assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 1001}
        s2 = await connect(hb.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 1)     # 1000 missed: the cap itself
        assert [m["off"] for m in msgs] == list(range(2, 1002))
        assert [m["data"] for m in msgs] == list(range(2, 1002))
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 1001}
        await close_all(p, s, s2)
    run(main())


def test_recovery_max_flag_raises_the_cap(make_broker, topic):
    b = make_broker(hist_args(["big.>=2000"]) + ["--recovery-max", "1001"])
    t = "big.%s" % topic

    async def main():
        p = await connect(b.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, list(range(2, 1003)))         # offsets 1..1002
        s = await connect(b.url)
        rid, msgs, ack = await sub_since(s, t, ep, 1)      # 1001 missed: allowed now
        assert [m["off"] for m in msgs] == list(range(2, 1003))
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 1002}
        s2 = await connect(b.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 0)     # 1002 missed
        assert msgs == [] and ack["recovered"] is False and ack["off"] == 1002
        await close_all(p, s, s2)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_recovery_on_topic_without_history(hb, enc, topic):
    t = "nohist.%s" % topic

    async def main():
        p = await connect(hb.url)
        await p.pub(t, 1)
        s = await connect(hb.url, enc)
        rid, msgs, ack = await sub_since(s, t, "0123456789abcdef-1", 0)
        assert msgs == []
        assert ack == {"op": "ack", "id": rid, "recovered": False}
        await p.pub(t, 2)                   # live all the same
        assert await s.recv() == {"op": "msg", "topic": t, "data": 2}
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
def test_msgpack_client_recovers_json_published_messages(hb, topic):
    t = "h.%s" % topic
    values = [{"a": [1, 2.5, "x\u00e9"], "n": None, "t": True}, "s", -3, 2 ** 63 - 1, 0.1]

    async def main():
        p = await connect(hb.url, JSON)
        ep = (await p.request({"op": "pub", "topic": t, "data": "first"}))["ep"]
        for v in values:
            await p.pub(t, v)
        s = await connect(hb.url, MSGPACK)
        rid, msgs, ack = await sub_since(s, t, ep, 1)
        assert msgs == [msg(t, ep, k + 2, v) for k, v in enumerate(values)]
        assert type(msgs[0]["data"]["a"][1]) is float and type(msgs[2]["data"]) is int
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 6}
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
def test_json_client_recovers_msgpack_bin_as_base64(hb, topic):
    t = "h.%s" % topic
    blob = b"\x00\x01\xfe\xffhi"

    async def main():
        p = await connect(hb.url, MSGPACK)
        ep = (await p.request({"op": "pub", "topic": t, "data": blob}))["ep"]
        await p.pub(t, {"k": b"\x01"})
        s = await connect(hb.url, JSON)
        rid, msgs, ack = await sub_since(s, t, ep, 0)
        assert msgs == [
            {"op": "msg", "topic": t, "ep": ep, "off": 1,
             "bin": base64.b64encode(blob).decode()},
            msg(t, ep, 2, {"k": base64.b64encode(b"\x01").decode()}),
        ]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 2}
        await close_all(p, s)
    run(main())


def test_recovery_without_id_replays_silently(hb, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await p.pub(t, 2)
        s = await connect(hb.url)
        await s.send({"op": "sub", "topic": t, "since": {"ep": ep, "off": 0}})
        assert await s.sync() == [msg(t, ep, 1, 1), msg(t, ep, 2, 2)]   # no ack
        await p.pub(t, 3)
        assert await s.recv() == msg(t, ep, 3, 3)
        await close_all(p, s)
    run(main())


def test_recovery_ep_with_json_escapes_is_the_same_epoch(hb, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await p.pub(t, 2)
        s = await connect(hb.url)
        escaped = "".join("\\u%04x" % ord(ch) for ch in ep)
        await s.send_raw('{"op":"sub","id":5,"topic":"%s","since":{"ep":"%s","off":1}}'
                         % (t, escaped))
        msgs, ack = await until_reply(s)
        assert msgs == [msg(t, ep, 2, 2)]
        assert ack == {"op": "ack", "id": 5, "recovered": True, "ep": ep, "off": 2}
        await close_all(p, s)
    run(main())


def test_sub_and_pub_without_id_stay_silent_on_history_topics(hb, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        await s.send({"op": "sub", "topic": t})
        await s.send({"op": "pub", "topic": t, "data": 1})
        got = await s.sync()
        assert len(got) == 1 and got[0]["op"] == "msg" and got[0]["off"] == 1, got
        await s.close()
    run(main())


def _nested_key_map(depth):
    """MessagePack data whose JSON form passes the 32x conversion budget: maps used as
    keys of maps, each level doubling the escapes (docs/PROTOCOL-NOTES.md)."""
    x = b"\x81\xa1a\x01"
    for _ in range(depth):
        x = b"\x81" + x + b"\x01"
    return x


@pytest.mark.needs_msgpack
def test_unconvertible_data_is_refused_on_a_history_topic(hb, topic):
    """A MessagePack message whose data cannot be converted to JSON is refused on a topic
    with history (err bad_request, nothing stored or delivered), even with no JSON client
    subscribed: JSON subscribers could never be given its offset, and a recovery that says
    recovered true must send every missed offset (PROTOCOL-NOTES "History and recovery")."""
    t = "h.%s" % topic

    async def main():
        mp = await connect(hb.url, MSGPACK)
        r = await mp.request({"op": "sub", "topic": t, "id": 9})
        ep = r["ep"]
        frame = (b"\x84" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic")
                 + msgpack.packb(t) + msgpack.packb("id") + msgpack.packb(1)
                 + msgpack.packb("data") + _nested_key_map(22))
        await mp.send_raw(frame)
        r = await mp.recv()
        assert r["op"] == "err" and r["code"] == "bad_request" and r["id"] == 1, r
        r = await mp.request({"op": "pub", "topic": t, "data": "ok", "id": 2})
        assert r == {"op": "ack", "id": 2, "ep": ep, "off": 1}, r
        m = await mp.recv()
        assert m["off"] == 1 and m["data"] == "ok", m
        j = await connect(hb.url, JSON)
        rid, msgs, ack = await sub_since(j, t, ep, 0)
        assert [(m["off"], m["data"]) for m in msgs] == [(1, "ok")]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 1}, ack
        await close_all(mp, j)
    run(main())


# --- the queue-limit budget of recovery and hist (broker choices) ------------------------

def test_recovery_and_hist_within_half_the_queue_limit(make_broker, topic):
    b = make_broker(hist_args(["q.>=500"]) + ["--queue-limit", "64K"])
    t = "q.%s" % topic
    big = "x" * 1000          # ~1.1 KB per msg frame; half the queue limit is 32 KiB

    async def main():
        p = await connect(b.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": big}))["ep"]
        await pub_many(p, t, [big] * 99)                    # offsets 1..100
        s = await connect(b.url)
        rid, msgs, ack = await sub_since(s, t, ep, 60)      # 40 missed: ~44 KB
        assert msgs == []
        assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 100}
        s2 = await connect(b.url)
        rid, msgs, ack = await sub_since(s2, t, ep, 80)     # 20 missed: ~22 KB
        assert [m["off"] for m in msgs] == list(range(81, 101))
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 100}
        r = await hist(s2, t, limit=100)
        offs = [m["off"] for m in r["msgs"]]
        n = len(offs)
        assert r["ep"] == ep and r["off"] == 100
        assert offs == list(range(101 - n, 101)), offs       # the newest, contiguous
        assert all(m["data"] == big for m in r["msgs"])
        assert 25 <= n and n * len(json.dumps(big)) <= 32 * 1024, n
        assert len(json.dumps(r)) < 64 * 1024
        await close_all(p, s, s2)
    run(main())


# ---------------------------------------------------------------------------------------
# hist
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ENCODINGS)
def test_hist_default_and_explicit_limits(hb, enc, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, list(range(2, 151)))          # offsets 1..150 (SIZE 200)
        c = await connect(hb.url, enc)
        r = await c.request({"op": "hist", "topic": t, "id": 3})
        assert r == {"op": "hist", "id": 3, "ep": ep, "off": 150,
                     "msgs": [{"off": k, "data": k} for k in range(51, 151)]}
        r = await hist(c, t, limit=5, id=4)
        assert r == {"op": "hist", "id": 4, "ep": ep, "off": 150,
                     "msgs": [{"off": k, "data": k} for k in range(146, 151)]}
        r = await hist(c, t, limit=0, id=5)
        assert r == {"op": "hist", "id": 5, "ep": ep, "off": 150, "msgs": []}
        for lim in (150, 151, 1000, 1001, MAX_ID, 2 ** 64 - 1):   # default cap is 1000
            r = await hist(c, t, limit=lim)
            assert [m["off"] for m in r["msgs"]] == list(range(1, 151)), lim
        await close_all(p, c)
    run(main())


def test_hist_max_limit_caps_the_answer(make_broker, topic):
    b = make_broker(hist_args(["h.>=100"]) + ["--hist-max-limit", "10"])
    t = "h.%s" % topic

    async def main():
        p = await connect(b.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await pub_many(p, t, list(range(2, 31)))
        for kw in ({}, {"limit": 11}, {"limit": 50}, {"limit": MAX_ID}):
            r = await hist(p, t, id=8, **kw)
            assert r == {"op": "hist", "id": 8, "ep": ep, "off": 30,
                         "msgs": [{"off": k, "data": k} for k in range(21, 31)]}, kw
        r = await hist(p, t, limit=3)
        assert [m["off"] for m in r["msgs"]] == [28, 29, 30]
        await p.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_hist_topic_without_history(hb, enc, topic):
    t = "nohist.%s" % topic

    async def main():
        c = await connect(hb.url, enc)
        await c.pub(t, 1)
        assert await hist(c, t, id=21) == {"op": "hist", "id": 21, "off": 0, "msgs": []}
        assert await hist(c, t, id=22, limit=5) == {"op": "hist", "id": 22, "off": 0,
                                                    "msgs": []}
        await c.close()
    run(main())


def test_hist_of_fresh_topic_gives_the_epoch_of_its_first_message(hb, topic):
    t = "h.%s" % topic

    async def main():
        c = await connect(hb.url)
        r = await hist(c, t, id=1)
        ep = r.get("ep")
        assert ep and EP_RE.match(ep) and r == {"op": "hist", "id": 1, "ep": ep, "off": 0,
                                                "msgs": []}
        assert await c.request({"op": "pub", "topic": t, "data": "a", "id": 2}) == \
            {"op": "ack", "id": 2, "ep": ep, "off": 1}
        await c.close()
    run(main())


def test_hist_without_id_is_answered(hb, topic):
    t = "h.%s" % topic

    async def main():
        c = await connect(hb.url)
        ep = (await c.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        await c.send({"op": "hist", "topic": t})
        assert await c.sync() == [{"op": "hist", "ep": ep, "off": 1,
                                   "msgs": [{"off": 1, "data": 1}]}]
        await c.close()
    run(main())


@pytest.mark.parametrize("pattern", ["h.*", "h.>", ">", "h.*.x"])
def test_hist_of_pattern_is_bad_topic(hb, pattern):
    async def main():
        c = await connect(hb.url)
        r = await hist(c, pattern, id=6)
        assert r.get("op") == "err" and r.get("id") == 6 and r.get("code") == "bad_topic", r
        await c.sync()
        await c.close()
    run(main())


@pytest.mark.parametrize("limit", [-1, 1.5, "5", None, True, [5], {"n": 5}])
def test_hist_bad_limit_is_bad_request(hb, topic, limit):
    async def main():
        c = await connect(hb.url)
        r = await hist(c, "h.%s" % topic, id=7, limit=limit)
        assert r.get("op") == "err" and r.get("id") == 7 and r.get("code") == "bad_request", r
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
def test_hist_binary_data_is_base64_for_json_readers(hb, topic):
    t = "h.%s" % topic
    blob = bytes(range(256))

    async def main():
        p = await connect(hb.url, MSGPACK)
        ep = (await p.request({"op": "pub", "topic": t, "data": blob}))["ep"]
        await p.pub(t, {"x": 1})
        j = await connect(hb.url, JSON)
        r = await hist(j, t, id=1)
        assert r == {"op": "hist", "id": 1, "ep": ep, "off": 2, "msgs": [
            {"off": 1, "bin": base64.b64encode(blob).decode()}, {"off": 2, "data": {"x": 1}}]}
        r = await hist(p, t, id=2)
        assert r == {"op": "hist", "id": 2, "ep": ep, "off": 2,
                     "msgs": [{"off": 1, "data": blob}, {"off": 2, "data": {"x": 1}}]}
        assert type(r["msgs"][0]["data"]) is bytes
        await close_all(p, j)
    run(main())


# --- tokens ------------------------------------------------------------------------------

SECRET = "history-test-secret-0123456789abcdef"


def _b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(sub=(), pub=(), user="alice", ttl=300):
    claims = {"sub": user, "exp": int(time.time()) + ttl,
              "gale": {"sub": list(sub), "pub": list(pub)}}
    h = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = _b64(json.dumps(claims).encode())
    sig = _b64(hmac.new(SECRET.encode(), (h + "." + p).encode(), hashlib.sha256).digest())
    return h + "." + p + "." + sig


def test_hist_and_recovery_need_the_right_to_subscribe(make_broker, topic):
    b = make_broker(hist_args(["h.>=100"]) + ["--jwt-secret", SECRET])

    def url(tok):
        return b.url + "?token=" + tok

    async def main():
        pubber = await connect(url(make_token(pub=["h.>"])))
        ep = (await pubber.request({"op": "pub", "topic": "h.a.x", "data": 1}))["ep"]
        await pubber.pub("h.b.x", 2)
        # The publisher may not read: hist is forbidden for it.
        r = await hist(pubber, "h.a.x", id=1)
        assert r.get("op") == "err" and r.get("code") == "forbidden" and r.get("id") == 1, r
        reader = await connect(url(make_token(sub=["h.a.>"])))
        r = await hist(reader, "h.a.x", id=2)
        assert r == {"op": "hist", "id": 2, "ep": ep, "off": 1, "msgs": [{"off": 1, "data": 1}]}
        r = await hist(reader, "h.b.x", id=3)
        assert r.get("op") == "err" and r.get("code") == "forbidden" and r.get("id") == 3, r
        await reader.send({"op": "hist", "topic": "h.b.x"})
        got = await reader.sync()
        assert len(got) == 1 and got[0]["op"] == "err" and got[0]["code"] == "forbidden" \
            and "id" not in got[0], got
        # A recovery is a sub: the same right, nothing replayed when forbidden.
        r = await reader.request({"op": "sub", "topic": "h.b.x", "id": 4,
                                  "since": {"ep": ep, "off": 0}})
        assert r.get("op") == "err" and r.get("code") == "forbidden", r
        await reader.expect_silence()
        rid, msgs, ack = await sub_since(reader, "h.a.x", ep, 0)
        assert msgs == [msg("h.a.x", ep, 1, 1)] and ack["recovered"] is True
        exact = await connect(url(make_token(sub=["h.c.x"])))
        r = await hist(exact, "h.c.x", id=5)
        assert r.get("op") == "hist" and r.get("off") == 0 and r.get("msgs") == [], r
        r = await hist(exact, "h.c.y", id=6)
        assert r.get("code") == "forbidden", r
        await close_all(pubber, reader, exact)
    run(main())


# ---------------------------------------------------------------------------------------
# Idempotent publish: mid
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("enc", ENCODINGS)
def test_mid_duplicate_not_delivered_again(hb, enc, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url, enc)
        ps = await connect(hb.url, JSON)      # pattern subscriber
        p = await connect(hb.url, enc)
        ep = (await s.sub(t))["ep"]
        await ps.sub("h.*")
        r = await p.request({"op": "pub", "topic": t, "data": "a", "mid": "m-1", "id": 1})
        assert r == {"op": "ack", "id": 1, "ep": ep, "off": 1}
        r = await p.request({"op": "pub", "topic": t, "data": "b", "id": 2})
        assert r == {"op": "ack", "id": 2, "ep": ep, "off": 2}
        # Same mid, other data: not delivered, the original's offset.
        r = await p.request({"op": "pub", "topic": t, "data": "c", "mid": "m-1", "id": 3})
        assert r == {"op": "ack", "id": 3, "off": 1, "dup": True}
        r = await p.request({"op": "pub", "topic": t, "data": "a", "mid": "m-1", "id": 4})
        assert r == {"op": "ack", "id": 4, "off": 1, "dup": True}
        assert await s.recv() == msg(t, ep, 1, "a")
        assert await s.recv() == msg(t, ep, 2, "b")
        await s.expect_silence()
        mine = [m for m in await ps.sync() if m.get("topic") == t]
        assert mine == [msg(t, ep, 1, "a"), msg(t, ep, 2, "b")]
        r = await hist(s, t)
        assert r["off"] == 2 and r["msgs"] == [{"off": 1, "data": "a"}, {"off": 2, "data": "b"}]
        await close_all(s, ps, p)
    run(main())


def test_mid_on_topic_without_history(hb, topic):
    t = "nohist.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url)
        await s.sub(t)
        assert await p.request({"op": "pub", "topic": t, "data": 1, "mid": "x", "id": 1}) == \
            {"op": "ack", "id": 1}
        assert await p.request({"op": "pub", "topic": t, "data": 2, "mid": "x", "id": 2}) == \
            {"op": "ack", "id": 2, "dup": True}
        assert await s.recv() == {"op": "msg", "topic": t, "data": 1}
        await s.expect_silence()
        await close_all(s, p)
    run(main())


def test_mid_is_scoped_per_topic(hb, topic):
    ta, tb, tc = "h.%s.a" % topic, "h.%s.b" % topic, "nohist.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url)
        ep_a = (await s.sub(ta))["ep"]
        ep_b = (await s.sub(tb))["ep"]
        await s.sub(tc)
        assert await p.request({"op": "pub", "topic": ta, "data": 1, "mid": "same", "id": 1}) \
            == {"op": "ack", "id": 1, "ep": ep_a, "off": 1}
        assert await p.request({"op": "pub", "topic": tb, "data": 2, "mid": "same", "id": 2}) \
            == {"op": "ack", "id": 2, "ep": ep_b, "off": 1}
        assert await p.request({"op": "pub", "topic": tc, "data": 3, "mid": "same", "id": 3}) \
            == {"op": "ack", "id": 3}
        assert await s.sync() == [msg(ta, ep_a, 1, 1), msg(tb, ep_b, 1, 2),
                                  {"op": "msg", "topic": tc, "data": 3}]
        await close_all(s, p)
    run(main())


def test_mid_without_id_duplicate_is_silent(hb, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url)
        ep = (await s.sub(t))["ep"]
        for _ in range(3):
            await p.send({"op": "pub", "topic": t, "data": "once", "mid": "q"})
        assert await p.sync() == []
        assert await s.sync() == [msg(t, ep, 1, "once")]
        await close_all(s, p)
    run(main())


def test_mid_resent_after_reconnect_is_delivered_once(hb, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        ep = (await s.sub(t))["ep"]
        p = await connect(hb.url)
        await p.send({"op": "pub", "topic": t, "data": "order-1", "mid": "uuid-1", "id": 1})
        await p.close()                      # the ack may be lost
        p = await connect(hb.url)
        r = await p.request({"op": "pub", "topic": t, "data": "order-1", "mid": "uuid-1",
                             "id": 2})
        assert r == {"op": "ack", "id": 2, "off": 1, "dup": True}
        assert await s.sync() == [msg(t, ep, 1, "order-1")]
        await close_all(s, p)
    run(main())


BAD_MIDS = [
    ("65 bytes", "m" * 65),
    ("33 two-byte chars", "\u00e9" * 33),
    ("empty", ""),
    ("integer", 123),
    ("null", None),
    ("bool", True),
    ("array", ["a"]),
    ("object", {"a": "b"}),
    ("float", 1.5),
]


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("case", [c[0] for c in BAD_MIDS])
def test_invalid_mid_is_bad_request_and_not_delivered(hb, enc, topic, case):
    bad = dict(BAD_MIDS)[case]
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url, enc)
        ep = (await s.sub(t))["ep"]
        r = await p.request({"op": "pub", "topic": t, "data": 1, "mid": bad, "id": 9})
        assert r.get("op") == "err" and r.get("id") == 9 and r.get("code") == "bad_request", r
        await s.expect_silence()
        # Nothing was stored either: the next message is offset 1.
        assert await p.request({"op": "pub", "topic": t, "data": 2, "id": 10}) == \
            {"op": "ack", "id": 10, "ep": ep, "off": 1}
        assert await s.recv() == msg(t, ep, 1, 2)
        await close_all(s, p)
    run(main())


def test_mid_limits_exact_bytes_and_escapes(hb, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url)
        ep = (await s.sub(t))["ep"]
        # 64 bytes: fine (ASCII, and 32 two-byte characters).
        for k, mid in enumerate(("m" * 64, "\u00e9" * 32), start=1):
            r = await p.request({"op": "pub", "topic": t, "data": k, "mid": mid, "id": k})
            assert r == {"op": "ack", "id": k, "ep": ep, "off": k}, mid
        # The same 32 characters written as JSON escapes are the same mid: a duplicate.
        await p.send_raw('{"op":"pub","topic":"%s","data":0,"id":3,"mid":"%s"}'
                         % (t, "\\u00e9" * 32))
        assert await p.recv() == {"op": "ack", "id": 3, "off": 2, "dup": True}
        # 33 escaped two-byte characters: 66 bytes, refused.
        await p.send_raw('{"op":"pub","topic":"%s","data":0,"id":4,"mid":"%s"}'
                         % (t, "\\u00e9" * 33))
        r = await p.recv()
        assert r.get("op") == "err" and r.get("code") == "bad_request" and r.get("id") == 4, r
        assert await s.sync() == [msg(t, ep, 1, 1), msg(t, ep, 2, 2)]
        await close_all(s, p)
    run(main())


@pytest.mark.needs_msgpack
def test_mid_as_msgpack_bin_is_bad_request(hb, topic):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url, MSGPACK)
        await s.sub(t)
        r = await p.request({"op": "pub", "topic": t, "data": 1, "mid": b"abc", "id": 1})
        assert r.get("op") == "err" and r.get("code") == "bad_request", r
        await s.expect_silence()
        await close_all(s, p)
    run(main())


def test_dedup_max_refuses_new_mids(make_broker, topic):
    b = make_broker(["--dedup-max", "1000"])
    t = "d.%s" % topic

    async def main():
        s = await connect(b.url)
        p = await connect(b.url)
        await s.sub(t)
        await pub_many(p, t, list(range(1000)), mid_prefix="k")
        got = await s.sync(timeout=20)
        assert [m["data"] for m in got] == list(range(1000))
        assert b.metrics()["gale_dedup_entries"] == 1000
        r = await p.request({"op": "pub", "topic": t, "data": "new", "mid": "k1000", "id": 1})
        assert r.get("op") == "err" and r.get("code") == "limit" and r.get("id") == 1, r
        # Not on another topic either (the table is global).
        r = await p.request({"op": "pub", "topic": t + ".z", "data": "new", "mid": "z", "id": 2})
        assert r.get("code") == "limit", r
        # A remembered mid is still a duplicate; a pub without mid still goes through.
        assert await p.request({"op": "pub", "topic": t, "data": "again", "mid": "k7",
                                "id": 3}) == {"op": "ack", "id": 3, "dup": True}
        assert await p.request({"op": "pub", "topic": t, "data": "plain", "id": 4}) == \
            {"op": "ack", "id": 4}
        assert await s.sync() == [{"op": "msg", "topic": t, "data": "plain"}]
        m = b.metrics()
        assert m["gale_dedup_entries"] == 1000
        assert m["gale_publish_duplicates_total"] == 1
        assert m['gale_protocol_errors_total{code="limit"}'] == 2
        await close_all(s, p)
    run(main())


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["h.{t}.*", "h.{t}.>", "h.*.{t}", ">"])
def test_since_on_pattern_is_bad_request_and_not_registered(hb, topic, pattern):
    pat = pattern.format(t=topic)
    t = "h.%s.x" % topic if not pattern.startswith("h.*") else "h.y.%s" % topic

    async def main():
        s = await connect(hb.url)
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 0}))["ep"]
        r = await s.request({"op": "sub", "topic": pat, "id": 3, "since": {"ep": ep, "off": 0}})
        assert r.get("op") == "err" and r.get("id") == 3 and r.get("code") == "bad_request", r
        await s.expect_silence()                      # nothing replayed
        await p.pub(t, 1)
        await s.expect_silence()                      # nothing registered
        # unsub of it answers ack (not held) and the connection is fine
        assert await s.request({"op": "unsub", "topic": pat, "id": 4}) == {"op": "ack", "id": 4}
        await close_all(s, p)
    run(main())


BAD_SINCE = [
    ("string", "0123456789abcdef-1:3"),
    ("number", 3),
    ("null", None),
    ("array", ["0123456789abcdef-1", 3]),
    ("empty object", {}),
    ("ep missing", {"off": 0}),
    ("off missing", {"ep": "{ep}"}),
    ("ep number", {"ep": 1, "off": 0}),
    ("ep null", {"ep": None, "off": 0}),
    ("ep object", {"ep": {"x": 1}, "off": 0}),
    ("off negative", {"ep": "{ep}", "off": -1}),
    ("off float", {"ep": "{ep}", "off": 1.5}),
    ("off string", {"ep": "{ep}", "off": "1"}),
    ("off null", {"ep": "{ep}", "off": None}),
    ("off bool", {"ep": "{ep}", "off": True}),
    ("off array", {"ep": "{ep}", "off": [1]}),
]


def _fill_ep(v, ep):
    if isinstance(v, dict):
        return {k: (ep if x == "{ep}" else x) for k, x in v.items()}
    return v


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("case", [c[0] for c in BAD_SINCE])
def test_malformed_since_is_bad_request_and_not_registered(hb, enc, topic, case):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 0}))["ep"]
        since = _fill_ep(dict(BAD_SINCE)[case], ep)
        s = await connect(hb.url, enc)
        r = await s.request({"op": "sub", "topic": t, "id": 8, "since": since})
        assert r.get("op") == "err" and r.get("id") == 8 and r.get("code") == "bad_request", r
        await s.expect_silence()
        await p.pub(t, 1)
        await s.expect_silence()
        await close_all(s, p)
    run(main())


def test_malformed_since_raw_json(hb, topic):
    """Duplicate members and since without id (an err without id)."""
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 0}))["ep"]
        s = await connect(hb.url)
        await s.send_raw('{"op":"sub","topic":"%s","id":1,"since":{"ep":"%s","off":0,"off":1}}'
                         % (t, ep))
        r = await s.recv()
        assert r.get("op") == "err" and r.get("code") == "bad_request" and r.get("id") == 1, r
        await s.send({"op": "sub", "topic": t, "since": {"ep": ep}})
        got = await s.sync()
        assert len(got) == 1 and got[0].get("code") == "bad_request" and "id" not in got[0], got
        await p.pub(t, 1)
        await s.expect_silence()
        await close_all(s, p)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.parametrize("since", [
    {"ep": b"bytes-ep", "off": 0},
    {"ep": "e", "off": -5},
    {"ep": "e", "off": 2.0},
    {1: "e", 2: 0},
], ids=["ep bin", "off negative", "off float64", "int keys"])
def test_malformed_since_msgpack_types(hb, topic, since):
    t = "h.%s" % topic

    async def main():
        s = await connect(hb.url, MSGPACK)
        r = await s.request({"op": "sub", "topic": t, "id": 2, "since": since})
        assert r.get("op") == "err" and r.get("code") == "bad_request", r
        p = await connect(hb.url)
        await p.pub(t, 1)
        await s.expect_silence()
        await close_all(s, p)
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_since_with_huge_ep_is_not_recovered(hb, enc, topic):
    t = "h.%s" % topic

    async def main():
        p = await connect(hb.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        s = await connect(hb.url, enc)
        # 10000 bytes starting with the real epoch; and one repeating it.
        for long_ep in (ep + "0" * (10000 - len(ep)), (ep * 10000)[:10000], "\u00e9" * 5000):
            assert len(long_ep.encode()) == 10000
            rid, msgs, ack = await sub_since(s, t, long_ep, 0)
            assert msgs == []
            assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep, "off": 1}
        # An escaped long ep (JSON) too.
        if enc == JSON:
            await s.send_raw('{"op":"sub","topic":"%s","id":99,"since":{"ep":"%s","off":0}}'
                             % (t, "\\u0041" * 1000))
            assert await s.recv() == {"op": "ack", "id": 99, "recovered": False, "ep": ep,
                                      "off": 1}
        await p.pub(t, 2)
        assert await s.recv() == msg(t, ep, 2, 2)
        await s.expect_silence()
        await close_all(p, s)
    run(main())


def test_flood_of_history_topics_stays_within_history_memory(make_broker, topic):
    mem = 1 << 20
    b = make_broker(hist_args(["f.>=10"]) + ["--history-memory", "1M"])
    n_pub, n_sub, n_hist = 16000, 2000, 2000

    async def main():
        t0 = time.monotonic()
        p = await connect(b.url)
        first = await p.request({"op": "pub", "topic": "f.p0", "data": "first"})
        ep0 = first["ep"]
        for i in range(1, n_pub):
            await p.send({"op": "pub", "topic": "f.p%d" % i, "data": "v%d" % i})
            if i % 2000 == 0:
                assert await p.sync() == []
                assert metric(b, "gale_history_bytes") <= mem
        assert await p.sync(timeout=20) == []
        # subs with since and hist requests on other distinct topics (states without
        # messages); unsub keeps the connection under --max-subscriptions.
        s = await connect(b.url)
        for i in range(n_sub):
            tt = "f.s%d" % i
            await s.send({"op": "sub", "topic": tt, "since": {"ep": "x", "off": 0}})
            await s.send({"op": "unsub", "topic": tt})
        for i in range(n_hist):
            await s.send({"op": "hist", "topic": "f.q%d" % i})
        got = await s.sync(timeout=20)
        assert len(got) == n_hist and all(g["op"] == "hist" and g["off"] == 0 for g in got)
        assert time.monotonic() - t0 < 30
        m = b.metrics()
        assert m["gale_history_bytes"] <= mem, m["gale_history_bytes"]
        assert m["gale_history_bytes"] > mem // 2      # it did fill up
        assert m["gale_history_evicted_total"] + m["gale_history_epochs_ended_total"] > 0
        assert m["gale_history_messages"] < n_pub
        assert m["gale_history_topics"] < n_pub + n_sub + n_hist
        # The broker still answers; the oldest topic lost its state (a new epoch), the
        # newest kept its message.
        r = await hist(p, "f.p%d" % (n_pub - 1), id=5)
        assert r["op"] == "hist" and r["off"] == 1 and \
            r["msgs"] == [{"off": 1, "data": "v%d" % (n_pub - 1)}], r
        r = await hist(p, "f.p0", id=6)
        assert r["op"] == "hist" and r["off"] == 0 and r["msgs"] == [] and r["ep"] != ep0, r
        assert await p.request({"op": "ping", "id": 7}) == {"op": "pong", "id": 7}
        assert metric(b, "gale_history_bytes") <= mem
        await close_all(p, s)
    run(main(), timeout=50)


@pytest.mark.needs_msgpack
def test_large_messages_stay_within_history_memory(make_broker, topic):
    mem = 1 << 20
    b = make_broker(hist_args(["b.>=1000"]) + ["--history-memory", "1M"])
    t = "b.%s" % topic
    big = "y" * 60000

    async def main():
        js = await connect(b.url)
        ms = await connect(b.url, MSGPACK)
        ep = (await js.sub(t))["ep"]
        await ms.sub("b.>")                    # frames in both encodings are kept
        p = await connect(b.url)
        await pub_many(p, t, [big] * 50)
        assert len(await js.sync(timeout=20)) == 50
        assert len(await ms.sync(timeout=20)) == 50
        m = b.metrics()
        held = int(m["gale_history_messages"])
        assert m["gale_history_bytes"] <= mem
        assert 2 <= held <= 8, held
        assert m["gale_history_evicted_total"] == 50 - held
        r = await hist(js, t, limit=1000)
        assert r["ep"] == ep and r["off"] == 50
        assert [x["off"] for x in r["msgs"]] == list(range(51 - held, 51))
        ms2 = await connect(b.url, MSGPACK)
        rid, msgs, ack = await sub_since(ms2, t, ep, 50 - held)
        assert [x["off"] for x in msgs] == list(range(51 - held, 51))
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 50}
        rid, msgs, ack = await sub_since(ms2, t, ep, 49 - held)
        assert msgs == [] and ack["recovered"] is False
        assert metric(b, "gale_history_bytes") <= mem
        await close_all(js, ms, p, ms2)
    run(main())


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

def test_history_metrics_move_as_expected(make_broker, topic):
    b = make_broker(hist_args(["m.>=3"]))
    t = "m.%s" % topic

    async def main():
        m0 = b.metrics()
        assert m0['gale_recoveries_total{recovered="true"}'] == 0
        assert m0['gale_recoveries_total{recovered="false"}'] == 0
        assert m0["gale_messages_replayed_total"] == 0
        assert m0["gale_publish_duplicates_total"] == 0
        assert m0["gale_dedup_entries"] == 0
        assert m0["gale_history_topics"] == 0 and m0["gale_history_messages"] == 0
        p = await connect(b.url)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1, "mid": "a"}))["ep"]
        await p.request({"op": "pub", "topic": t, "data": 2, "mid": "b"})
        await p.request({"op": "pub", "topic": t, "data": 1, "mid": "a"})     # dup
        await p.request({"op": "pub", "topic": t, "data": 2, "mid": "b"})     # dup
        await p.request({"op": "pub", "topic": t, "data": 3})
        s = await connect(b.url)
        _, msgs, ack = await sub_since(s, t, ep, 0)        # 3 replayed
        assert len(msgs) == 3 and ack["recovered"] is True
        _, msgs, ack = await sub_since(s, t, ep, 2)        # 1 replayed
        assert len(msgs) == 1 and ack["recovered"] is True
        _, msgs, ack = await sub_since(s, t, "other", 0)   # refused
        assert ack["recovered"] is False
        await pub_many(p, t, [4, 5])                       # SIZE 3: 1 and 2 displaced
        await s.sync()
        _, msgs, ack = await sub_since(s, t, ep, 0)        # refused: displaced
        assert ack["recovered"] is False
        m = b.metrics()
        assert m['gale_recoveries_total{recovered="true"}'] == 2
        assert m['gale_recoveries_total{recovered="false"}'] == 2
        assert m["gale_messages_replayed_total"] == 4
        assert m["gale_publish_duplicates_total"] == 2
        assert m["gale_dedup_entries"] == 2
        assert m["gale_history_topics"] == 1
        assert m["gale_history_messages"] == 3
        assert m["gale_history_evicted_total"] == 0
        assert m["gale_history_expired_total"] == 0
        assert m["gale_history_epochs_ended_total"] == 0
        assert 0 < m["gale_history_bytes"] < 64 * 1024
        for name in ("gale_recoveries_total", "gale_messages_replayed_total",
                     "gale_publish_duplicates_total", "gale_history_evicted_total",
                     "gale_history_expired_total", "gale_history_epochs_ended_total"):
            assert m["#TYPE " + name] == "counter", name
        for name in ("gale_dedup_entries", "gale_history_bytes", "gale_history_topics",
                     "gale_history_messages"):
            assert m["#TYPE " + name] == "gauge", name
        await close_all(p, s)
    run(main())


def test_recovery_metric_counts_a_since_on_a_topic_without_history(make_broker, topic):
    """A sub with since on a topic without history answers recovered false and counts in
    gale_recoveries_total{recovered="false"} ("Subscriptions with since, by outcome")."""
    b = make_broker(hist_args(["m.>=3"]))

    async def main():
        s = await connect(b.url)
        _, msgs, ack = await sub_since(s, "nohist.%s" % topic, "0123456789abcdef-1", 0)
        assert ack == {"op": "ack", "id": ack["id"], "recovered": False}
        m = b.metrics()
        assert m['gale_recoveries_total{recovered="false"}'] == 1, \
            "a sub with since answered recovered:false but was not counted"
        await s.close()
    run(main())


# --- the HTTP API ------------------------------------------------------------------------

def _http(b, method, path, body=None, key="k"):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=5)
    headers = {"Authorization": "Bearer " + key} if key else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else None


def test_history_api(make_broker, topic):
    """POST /api/publish with mid returns positions and dup; GET /api/history answers the
    JSON hist object; bad queries and keys are refused."""
    b = make_broker(hist_args(["api.>=3"]) + ["--api-key", "k"])
    t = "api.%s" % topic
    st, r = _http(b, "POST", "/api/publish", {"topic": t, "data": 1, "mid": "m1"})
    assert st == 200 and r == {"ok": True, "ep": r["ep"], "off": 1}, (st, r)
    ep = r["ep"]
    st, r = _http(b, "POST", "/api/publish", {"topic": t, "data": 1, "mid": "m1"})
    assert (st, r) == (200, {"ok": True, "dup": True, "off": 1})
    st, r = _http(b, "POST", "/api/publish",
                  {"messages": [{"topic": t, "data": i} for i in range(2, 6)]
                   + [{"topic": "other." + topic, "data": 0, "mid": ""}]})
    assert st == 200 and r["ok"] is False
    assert [x.get("off") for x in r["results"][:4]] == [2, 3, 4, 5]
    assert r["results"][4]["code"] == "bad_request"
    st, r = _http(b, "GET", "/api/history?topic=%s&limit=2" % t)
    assert (st, r) == (200, {"op": "hist", "ep": ep, "off": 5,
                             "msgs": [{"off": 4, "data": 4}, {"off": 5, "data": 5}]})
    st, r = _http(b, "GET", "/api/history?topic=%s" % t)   # default limit, SIZE 3 held
    assert [m["off"] for m in r["msgs"]] == [3, 4, 5]
    st, r = _http(b, "GET", "/api/history?topic=none.%s" % topic)
    assert (st, r) == (200, {"op": "hist", "off": 0, "msgs": []})
    assert _http(b, "GET", "/api/history?topic=api.%3E")[0] == 400
    assert _http(b, "GET", "/api/history?topic=%s&limit=-1" % t)[0] == 400
    assert _http(b, "GET", "/api/history?topic=%s" % t, key="wrong")[0] == 401
    assert _http(b, "POST", "/api/history?topic=%s" % t, body={})[0] == 405

