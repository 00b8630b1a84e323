"""Several event loops in one broker (--loops N, GALE_LOOPS): each loop a thread with its own
libuv loop, lws context and SO_REUSEPORT listener on the one port, the kernel spreading the
accepted connections over them; a message published on one loop reaches the subscribers of
every loop.

A connection does not know its loop. The per-loop gauge gale_loop_connections{loop="K"}
tells: connections are opened one at a time and the loop whose gauge grew by one holds the
new one (`Loops`). `Steer` and `ASteer` use that to put clients on chosen loops (a client
another loop took waits in a pool for a later request of that loop). Figures of other loops
may lag a few milliseconds in /metrics: every read of them is polled with a deadline.

Delivery across loops is asynchronous: a publisher's ack or pong does not mean that a
subscriber on another loop has the message yet. Subscribers therefore read until an end
marker that each publisher sends last (its messages arrive in order, so nothing of it comes
after the marker).
"""
import asyncio
import json
import os
import signal
import socket
import struct
import time

import jwt
import msgpack
import pytest

import galetest
from test_cluster import redis, redis_factory  # noqa: F401 (a fixture: a real redis-server)
from galetest import (HOST, JSON, MSGPACK, RawWS, connect, connect_status, free_port,
                      http_get, run)
from test_lifecycle import run_cli
from test_mqtt import PINGREQ_PACKET, RawMQTT, publish_packet, subscribe_packet
from test_nats import NatsWS
from test_security import api_post

pytestmark = pytest.mark.gale_only

LOOP_SERIES = 'gale_loop_connections{loop="%d"}'
API_KEY = "loops-api-key-0123456789"
STEER_ATTEMPTS = 40   # per loop: a loop the kernel never picks fails after ~40*N opens


# ---------------------------------------------------------------------------------------
# Which loop holds a connection
# ---------------------------------------------------------------------------------------

def loop_gauges(m, n):
    return [m.get(LOOP_SERIES % k) for k in range(n)]


def settled(b, n, total, timeout=3.0):
    """(metrics, per-loop gauges) once gale_connections and the n per-loop gauges all add up
    to total."""
    deadline = time.monotonic() + timeout
    while True:
        m = b.metrics()
        g = loop_gauges(m, n)
        if None not in g and m.get("gale_connections") == total and sum(g) == total:
            return m, [int(x) for x in g]
        if time.monotonic() > deadline:
            raise AssertionError("per-loop gauges %r and gale_connections %r never added up "
                                 "to %d within %.0fs" % (g, m.get("gale_connections"), total,
                                                         timeout))
        time.sleep(0.005)


def wait_metrics(b, pred, what, timeout=5.0):
    """The metrics once pred(metrics) holds (polled)."""
    deadline = time.monotonic() + timeout
    while True:
        m = b.metrics()
        if pred(m):
            return m
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %.0fs: %r" % (
                what, timeout, {k: v for k, v in m.items() if not k.startswith("#")}))
        time.sleep(0.01)


class Loops:
    """Tracks the connections the test opened: added() after each new one (returns the loop
    holding it), removed(k) after one on loop k is gone (waits until the gauges show it)."""

    def __init__(self, b, n):
        self.b, self.n = b, n
        self.total = 0
        self.accepted = 0
        self.gauges = settled(b, n, 0)[1]

    def added(self):
        self.total += 1
        self.accepted += 1
        _, g = settled(self.b, self.n, self.total)
        diff = [g[k] - self.gauges[k] for k in range(self.n)]
        assert sorted(diff) == [0] * (self.n - 1) + [1], \
            "per-loop gauges went %r -> %r for one new connection" % (self.gauges, g)
        self.gauges = g
        return diff.index(1)

    def removed(self, loop):
        self.total -= 1
        _, g = settled(self.b, self.n, self.total)
        want = list(self.gauges)
        want[loop] -= 1
        assert g == want, "per-loop gauges went %r -> %r, a connection of loop %d closed" % (
            self.gauges, g, loop)
        self.gauges = g


class Steer:
    """Blocking clients on chosen loops: get(loop, key) returns a client from open_(key) that
    the loop holds; clients other loops took wait in a pool (by loop and key)."""

    def __init__(self, lm, open_, close=lambda c: c.close()):
        self.lm, self.open, self.close = lm, open_, close
        self.pool = {}

    def get(self, loop, key=None):
        spare = self.pool.get((loop, key))
        if spare:
            return spare.pop()
        for _ in range(STEER_ATTEMPTS * self.lm.n):
            c = self.open(key)
            k = self.lm.added()
            if k == loop:
                return c
            self.pool.setdefault((k, key), []).append(c)
        raise AssertionError("no connection landed on loop %d in %d attempts (gauges %r)"
                             % (loop, STEER_ATTEMPTS * self.lm.n, self.lm.gauges))

    def close_spares(self):
        for (k, _), cs in self.pool.items():
            for c in cs:
                self.close(c)
                self.lm.removed(k)
        self.pool.clear()


class ASteer:
    """Steer for asyncio clients: await get(loop, key); open_(key) is a coroutine function."""

    def __init__(self, lm, open_):
        self.lm, self.open = lm, open_
        self.pool = {}

    async def get(self, loop, key=None):
        spare = self.pool.get((loop, key))
        if spare:
            return spare.pop()
        for _ in range(STEER_ATTEMPTS * self.lm.n):
            c = await self.open(key)
            k = await asyncio.to_thread(self.lm.added)
            if k == loop:
                return c
            self.pool.setdefault((k, key), []).append(c)
        raise AssertionError("no connection landed on loop %d in %d attempts (gauges %r)"
                             % (loop, STEER_ATTEMPTS * self.lm.n, self.lm.gauges))

    async def close_spares(self):
        for (k, _), cs in self.pool.items():
            for c in cs:
                await c.close()
                await asyncio.to_thread(self.lm.removed, k)
        self.pool.clear()


def loops_broker(make_broker, n=2, args=(), env=None):
    b = make_broker(["--loops", str(n)] + list(args), env=env)
    return b, Loops(b, n)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

async def read_until_ends(c, ends, timeout=20.0):
    """Every msg c receives until it has the end marker ({"end": k}) of each publisher k in
    ends (markers not returned; a second marker of one publisher fails)."""
    got, seen = [], set()
    ends = set(ends)
    deadline = time.monotonic() + timeout
    while not ends <= seen:
        left = deadline - time.monotonic()
        assert left > 0, "end markers %r of %r after %d messages" % (seen, ends, len(got))
        m = await c.recv(timeout=left)
        assert m.get("op") == "msg", m
        d = m.get("data")
        if isinstance(d, dict) and "end" in d:
            assert d["end"] not in seen, "end marker of %r twice" % d["end"]
            seen.add(d["end"])
        else:
            got.append(m)
    return got


def by_publisher(datas):
    """{publisher: [its i, in arrival order]} of data {"p": k, "i": i}."""
    out = {}
    for d in datas:
        out.setdefault(d["p"], []).append(d["i"])
    return out


def raw_msgs(ws, n, timeout=10.0):
    """The next n gale msgs of a RawWS (JSON)."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, "%d of %d messages within %.0fs" % (len(out), n, timeout)
        m = ws.recv_json(left)
        assert m.get("op") == "msg", m
        out.append(m)
    return out


def raw_client(port, enc=JSON, **kw):
    ws = RawWS(port, protocols=(enc,), **kw)
    assert ws.status == 101, ws.status
    ws.recv_json() if enc == JSON else ws.recv_msgpack()   # hello
    return ws


def raw_sub(ws, pattern, rid=1):
    ws.send_json({"op": "sub", "topic": pattern, "id": rid})
    assert ws.recv_json() == {"op": "ack", "id": rid}


def nats_client(port, **opts):
    n = NatsWS(port)
    n.handshake(**opts)
    return n


def mqtt_publish(pkt):
    """(topic, payload, retain) of a PUBLISH packet (first byte, body)."""
    first, body = pkt
    assert first & 0xF0 == 0x30, "expected PUBLISH, got %r" % (pkt,)
    n = struct.unpack("!H", body[:2])[0]
    rest = body[2 + n:]
    if (first >> 1) & 3:
        rest = rest[2:]
    return body[2:2 + n].decode(), rest, bool(first & 1)


def mqtt_quiet(r):
    """PINGREQ answered with nothing before its PINGRESP."""
    r.send(PINGREQ_PACKET)
    assert r.recv() == (0xD0, b""), "a packet came before PINGRESP"


def mqtt_connect_sub(r, client_id, filt):
    r.connect(client_id)
    r.send(subscribe_packet(1, [(filt, 0)]))
    assert r.recv() == (0x90, b"\x00\x01\x00")


def close_answered(ws, timeout=5.0):
    """The code of the broker's close frame, answered as a client does (then the broker
    need not wait for the socket to end)."""
    code, _ = ws.recv_until_closed(timeout)
    try:
        ws.send_close(code or 1000)
    except OSError:
        pass
    ws.close()
    return code


def wait_log(b, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while text not in b.log_text():
        assert time.monotonic() < deadline, "%r not logged:\n%s" % (text, b.log_tail())
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# Command line and environment
# ---------------------------------------------------------------------------------------

def _assert_loops_flag(gale_binary):
    rc, out, _ = run_cli(gale_binary, ["--help"])
    assert rc == 0 and "--loops" in out and "GALE_LOOPS" in out, \
        "--help does not document --loops [GALE_LOOPS]"


def test_help_documents_loops(gale_binary):
    _assert_loops_flag(gale_binary)


@pytest.mark.parametrize("value", ["0", "65", "-1", "abc", "", "2x", "1.5", "0x2",
                                   "99999999999999999999", None])
def test_bad_loops_value_exit_2(gale_binary, value):
    _assert_loops_flag(gale_binary)
    args = ["--listen", "%s:%d" % (HOST, free_port()), "--loops"]
    if value is not None:    # None: the flag without its value
        args.append(value)
    rc, out, err = run_cli(gale_binary, args)
    assert rc == 2, "exit %d for --loops %r; stderr %r" % (rc, value, err)
    assert "loops" in err.lower(), "stderr does not name --loops: %r" % err


@pytest.mark.parametrize("value", ["0", "65", "many", "-2"])
def test_bad_loops_env_exit_2(gale_binary, value):
    _assert_loops_flag(gale_binary)
    rc, out, err = run_cli(gale_binary, [], env={"GALE_LISTEN": "%s:%d" % (HOST, free_port()),
                                                 "GALE_LOOPS": value})
    assert rc == 2, "exit %d for GALE_LOOPS=%r; stderr %r" % (rc, value, err)
    assert "loops" in err.lower(), "stderr does not name GALE_LOOPS: %r" % err


# Single node only: with --redis they live in Redis (test_cluster_every_loop_a_node).
REFUSED = [
    (["--history", "h.>=10"], "--history"),
    (["--presence", "p.>"], "--presence"),
]


@pytest.mark.parametrize("extra,flag", REFUSED, ids=[f for _, f in REFUSED])
@pytest.mark.parametrize("n", ["2", "64"])
def test_loops_refuse_features_not_divided(gale_binary, extra, flag, n):
    _assert_loops_flag(gale_binary)
    args = ["--listen", "%s:%d" % (HOST, free_port()), "--loops", n] + extra
    rc, out, err = run_cli(gale_binary, args)
    assert rc == 2, "exit %d for %r; stderr %r" % (rc, args, err)
    assert "--loops" in err and flag in err, "stderr names not both --loops and %s: %r" % (
        flag, err)


@pytest.mark.parametrize("env", [{"GALE_LOOPS": "2", "GALE_HISTORY": "h.>=10"},
                                 {"GALE_LOOPS": "3", "GALE_PRESENCE": "p.>"}],
                         ids=["history", "presence"])
def test_loops_refusals_from_the_environment(gale_binary, env):
    _assert_loops_flag(gale_binary)
    env = dict(env, GALE_LISTEN="%s:%d" % (HOST, free_port()))
    rc, out, err = run_cli(gale_binary, [], env=env)
    assert rc == 2, "exit %d for %r; stderr %r" % (rc, env, err)
    other = [k for k in env if k not in ("GALE_LOOPS", "GALE_LISTEN")][0][5:].lower()
    assert "loops" in err.lower() and other in err.lower(), err


def _one_loop_checks(b):
    m = b.metrics()
    assert m.get("#TYPE gale_loops") == "gauge", "no gauge gale_loops"
    assert m["gale_loops"] == 1
    assert LOOP_SERIES % 1 not in m
    assert "loops: 1" in b.log_text(), b.log_tail()

    async def main():
        s = await connect(b.url, JSON)
        t = await connect(b.url, MSGPACK)
        p = await connect(b.url, JSON)
        await s.sub("one.>")
        await t.sub("one.x")
        m = await asyncio.to_thread(b.metrics)
        assert m[LOOP_SERIES % 0] == m["gale_connections"] == 3
        for i in range(20):
            await p.send({"op": "pub", "topic": "one.x", "data": i})
        await p.sync()
        for c in (s, t):
            got = await c.sync()
            assert [x["data"] for x in got] == list(range(20))
        m = await asyncio.to_thread(b.metrics)
        assert (m["gale_messages_published_total"], m["gale_messages_delivered_total"]) == (20, 40)
        for c in (s, t, p):
            await c.close()
    run(main())
    settled(b, 1, 0)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_one_loop_is_todays_broker(make_broker, how):
    args = {"flag": ["--loops", "1"], "env": []}[how]
    env = {"GALE_LOOPS": "1"} if how == "env" else None
    _one_loop_checks(make_broker(args, env=env))


def test_default_is_the_cpus_it_may_run_on(make_broker):
    """Without --loops: one loop per CPU of the process's affinity (at most 64); one with
    --history or --presence on a single node, said in the log."""
    cpus = min(len(os.sched_getaffinity(0)), 64)
    b = make_broker()
    m = b.metrics()
    assert m["gale_loops"] == cpus, (m["gale_loops"], cpus)
    assert "loops: %d (the CPUs this process may run on)" % cpus in b.log_text(), b.log_tail()
    for flags, why in ((["--history", "h.>=10"], "--history"), (["--presence", "p.>"],
                                                                 "--presence")):
        b = make_broker(flags)
        assert b.metrics()["gale_loops"] == 1
        assert "loops: 1 (%s on a single node keeps one loop for now)" % why in b.log_text()


def test_one_loop_keeps_history_and_presence(make_broker):
    b = make_broker(["--loops", "1", "--history", "h.>=10", "--presence", "p.>"])

    async def main():
        c = await connect(b.url)
        ack = await c.sub("h.a")
        assert "ep" in ack, ack     # history on
        r = await c.ask({"op": "sub", "topic": "p.a", "presence": True})
        assert r.get("op") == "ack", r
        r = await c.ask({"op": "presence", "topic": "p.a"})
        assert r.get("count") == 1, r
        await c.close()
    run(main())


def test_env_loops_and_flag_wins(make_broker):
    b = make_broker(env={"GALE_LOOPS": "2"})
    assert b.metrics()["gale_loops"] == 2
    assert "loops: 2" in b.log_text(), b.log_tail()
    settled(b, 2, 0)
    b = make_broker(["--loops", "3"], env={"GALE_LOOPS": "2"})
    m = b.metrics()
    assert m["gale_loops"] == 3
    assert LOOP_SERIES % 2 in m and LOOP_SERIES % 3 not in m
    assert "loops: 3" in b.log_text(), b.log_tail()


# ---------------------------------------------------------------------------------------
# Connections spread, delivery across loops
# ---------------------------------------------------------------------------------------

def test_connections_spread_over_both_loops(make_broker):
    b = make_broker(["--loops", "2"])
    m = b.metrics()
    assert m.get("#TYPE gale_loops") == "gauge" and m["gale_loops"] == 2
    assert m.get("#TYPE gale_loop_connections") == "gauge"
    assert loop_gauges(m, 2) == [0, 0] and LOOP_SERIES % 2 not in m
    assert "loops: 2" in b.log_text(), b.log_tail()

    async def main():
        cs = [await connect(b.url, JSON if i % 2 else MSGPACK) for i in range(64)]
        m, g = await asyncio.to_thread(settled, b, 2, 64)
        assert g[0] > 0 and g[1] > 0, "64 connections, per loop %r" % g
        assert m["gale_connections_accepted_total"] == 64
        h = await asyncio.to_thread(b.healthz)
        assert h["connections"] == 64
        conns = [c.hello["conn"] for c in cs]
        assert len(set(conns)) == 64, "conn ids repeat across loops: %r" % sorted(conns)
        assert len({c.hello["node"] for c in cs}) == 1
        for c in cs:   # every one of them is served
            assert await c.request({"op": "ping", "id": 7}) == {"op": "pong", "id": 7}
        for c in cs:
            await c.close()
    run(main())
    settled(b, 2, 0)


NPUB, NMSG, NSUB = 4, 100, 40


def test_fan_out_across_loops_exactly_once_in_order(make_broker, topic):
    """40 subscribers (JSON and MessagePack; exact, `*`, `>`, a top-level `*` and overlapping
    patterns), each kind on both loops; 4 publishers, two per loop, publishing at once."""
    b, lm = loops_broker(make_broker)

    def t(k):
        return "%s.a.%d" % (topic, k)

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        subs = []   # (client, loop, publishers it hears)
        for i in range(NSUB):
            loop, enc, kind = i % 2, (JSON, MSGPACK)[(i // 2) % 2], (i // 4) % 5
            c = await st.get(loop, enc)
            if kind == 0:
                await c.sub(t(i % NPUB))
                hears = {i % NPUB}
            else:
                pats = {1: [topic + ".a.*"], 2: [topic + ".>"], 3: ["*.a.*"],
                        4: [topic + ".a.*", topic + ".>", t(i % NPUB), "*.*.%d" % (i % NPUB)]}
                for pat in pats[kind]:
                    await c.sub(pat)
                hears = set(range(NPUB))
            subs.append((c, loop, hears))
        pubs = [await st.get(k % 2, JSON if k < 2 else MSGPACK) for k in range(NPUB)]
        await st.close_spares()
        _, g = await asyncio.to_thread(settled, b, 2, NSUB + NPUB)
        assert g == [(NSUB + NPUB) // 2] * 2, g

        readers = [asyncio.ensure_future(read_until_ends(c, hears)) for c, _, hears in subs]

        async def publish(k, p):
            for i in range(NMSG):
                await p.send({"op": "pub", "topic": t(k), "data": {"p": k, "i": i}})
            await p.send({"op": "pub", "topic": t(k), "data": {"end": k}})
            assert await p.sync() == []

        await asyncio.gather(*(publish(k, p) for k, p in enumerate(pubs)))
        results = await asyncio.gather(*readers)
        for (c, loop, hears), got in zip(subs, results):
            seqs = by_publisher(m["data"] for m in got)
            assert set(seqs) == hears, (loop, c.encoding, hears, sorted(seqs))
            for k in hears:
                assert seqs[k] == list(range(NMSG)), \
                    "subscriber on loop %d (%s) from publisher %d on loop %d: %d messages, " \
                    "first out of place at %r" % (
                        loop, c.encoding, k, k % 2, len(seqs[k]),
                        next((j for j, v in enumerate(seqs[k]) if v != j), len(seqs[k])))
            assert all(m["topic"] == t(m["data"]["p"]) for m in got)
            await c.expect_silence()
        for c in [s for s, _, _ in subs] + pubs:
            await c.close()
    run(main(), timeout=60)
    settled(b, 2, 0)
    total = NPUB * (NMSG + 1)
    exact = sum(1 for i in range(NSUB) if (i // 4) % 5 == 0)
    delivered = (NMSG + 1) * exact + total * (NSUB - exact)
    m = wait_metrics(b, lambda m: m["gale_messages_published_total"] >= total
                     and m["gale_messages_delivered_total"] >= delivered, "the counters")
    assert m["gale_messages_published_total"] == total
    assert m["gale_messages_delivered_total"] == delivered


def test_unsub_stops_delivery_on_every_loop(make_broker, topic):
    b, lm = loops_broker(make_broker)
    x, mark = topic + ".x", topic + "m.mark"

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        pats = [x, topic + ".*", topic + ".>"]
        subs = []   # (client, loop, pattern)
        for loop in (0, 1):
            for j, pat in enumerate(pats):
                c = await st.get(loop, (JSON, MSGPACK)[j % 2])
                await c.sub(pat)
                await c.sub(mark)
                subs.append((c, loop, pat))
        pubs = [await st.get(k) for k in (0, 1)]
        await st.close_spares()

        async def phase(tag, hearing):
            """Each publisher: one message on x, then a marker; the subscribers in
            `hearing` get the two x messages, the others nothing but the markers."""
            for k, p in enumerate(pubs):
                await p.send({"op": "pub", "topic": x, "data": {"p": k, "i": tag}})
                await p.send({"op": "pub", "topic": mark, "data": {"end": k}})
            for p in pubs:
                assert await p.sync() == []
            for c, loop, pat in subs:
                got = await read_until_ends(c, {0, 1}, timeout=5)
                want = [{"p": 0, "i": tag}, {"p": 1, "i": tag}] if c in hearing else []
                assert sorted((m["data"] for m in got), key=lambda d: d["p"]) == want, \
                    "%s: subscriber of %s on loop %d got %r" % (tag, pat, loop, got)
                await c.expect_silence()

        everyone = [c for c, _, _ in subs]
        await phase("before", everyone)
        for c, loop, pat in subs:       # loop 0's subscribers leave x
            if loop == 0:
                await c.unsub(pat)
        await phase("loop 0 gone", [c for c, loop, _ in subs if loop == 1])
        for c, loop, pat in subs:
            if loop == 1:
                await c.unsub(pat)
        await phase("all gone", [])
        await asyncio.to_thread(wait_metrics, b, lambda m: m["gale_subscriptions"] == len(subs),
                                "only the markers' subscriptions")
        for c, _, pat in subs:
            await c.sub(pat)
        await phase("back", everyone)
        for c in everyone + pubs:
            await c.close()
    run(main())


def test_subscribers_come_and_go_while_loops_publish(make_broker, topic):
    """Connections subscribing, then closing or vanishing (TCP reset) while publishers on
    both loops publish to them: the steady subscribers get everything, once, in order."""
    b, lm = loops_broker(make_broker)
    t = topic + ".c"
    batches, batch = 12, 50

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        steady = []
        for loop in (0, 1):
            for enc in (JSON, MSGPACK):
                c = await st.get(loop, enc)
                await c.sub(t)
                steady.append(c)
        pubs = [await st.get(k) for k in (0, 1)]
        await st.close_spares()
        readers = [asyncio.ensure_future(read_until_ends(c, {0, 1})) for c in steady]
        done = asyncio.Event()

        async def publish(k, p):
            for n in range(batches):
                for i in range(n * batch, (n + 1) * batch):
                    await p.send({"op": "pub", "topic": t, "data": {"p": k, "i": i}})
                assert await p.sync() == []
            await p.send({"op": "pub", "topic": t, "data": {"end": k}})
            assert await p.sync() == []

        async def churn():
            rounds = 0
            while not done.is_set() or rounds < 16:
                # max_queue None: a clean close is not held up behind unread messages
                c = await connect(b.url, (JSON, MSGPACK)[rounds % 2], max_queue=None)
                await c.sub(t if rounds % 3 else topic + ".>")
                if rounds % 2:
                    c.ws.transport.abort()
                else:
                    await c.close()
                rounds += 1
            return rounds

        churner = asyncio.ensure_future(churn())
        await asyncio.gather(*(publish(k, p) for k, p in enumerate(pubs)))
        done.set()
        rounds = await churner
        for c, got in zip(steady, await asyncio.gather(*readers)):
            seqs = by_publisher(m["data"] for m in got)
            for k in (0, 1):
                assert seqs.get(k) == list(range(batches * batch)), \
                    "%s subscriber: %d messages of publisher %d" % (c.encoding,
                                                                   len(seqs.get(k, [])), k)
            await c.expect_silence()
        # The churners are gone: 4 steady subscribers and 2 publishers are left.
        _, g = await asyncio.to_thread(settled, b, 2, 6, 5.0)
        assert g == [3, 3], g
        await asyncio.to_thread(wait_metrics, b, lambda m: m["gale_subscriptions"] == 4,
                                "the steady subscriptions only")
        for c in steady + pubs:
            await c.close()
        return rounds

    rounds = run(main(), timeout=60)
    assert rounds >= 16


# ---------------------------------------------------------------------------------------
# mid: deduplicated across loops
# ---------------------------------------------------------------------------------------

def test_mid_deduplicated_across_loops(make_broker, topic):
    b, lm = loops_broker(make_broker)
    t, t2 = topic + ".d", topic + ".e"

    async def main():
        st = ASteer(lm, lambda _: connect(b.url))
        subs = [await st.get(k) for k in (0, 1)]
        for s in subs:
            await s.sub(topic + ".>")
        pubs = [await st.get(k % 2) for k in range(6)]   # 0, 2, 4 on loop 0
        await st.close_spares()
        p0, p1 = pubs[0], pubs[1]
        # Loop 0 first, then the same topic and mid from loop 1: a duplicate.
        assert await p0.ask({"op": "pub", "topic": t, "data": "a0", "mid": "m-a", "id": 1}) \
            == {"op": "ack", "id": 1}
        assert await p1.ask({"op": "pub", "topic": t, "data": "a1", "mid": "m-a", "id": 2}) \
            == {"op": "ack", "id": 2, "dup": True}
        # Loop 1 first, then loop 0.
        assert await p1.ask({"op": "pub", "topic": t, "data": "b1", "mid": "m-b", "id": 3}) \
            == {"op": "ack", "id": 3}
        assert await p0.ask({"op": "pub", "topic": t, "data": "b0", "mid": "m-b", "id": 4}) \
            == {"op": "ack", "id": 4, "dup": True}
        # The same mid on another topic is another message.
        assert await p1.ask({"op": "pub", "topic": t2, "data": "a-e", "mid": "m-a", "id": 5}) \
            == {"op": "ack", "id": 5}
        # Six publishers, three per loop, send one mid at once: one is published.
        for j, p in enumerate(pubs):
            await p.send({"op": "pub", "topic": t, "data": {"race": j}, "mid": "m-race",
                          "id": 100 + j})
        acks = [await p.reply(100 + j) for j, p in enumerate(pubs)]
        firsts = [j for j, a in enumerate(acks) if a == {"op": "ack", "id": 100 + j}]
        dups = [j for j, a in enumerate(acks) if a == {"op": "ack", "id": 100 + j, "dup": True}]
        assert len(firsts) == 1 and len(dups) == 5, acks
        for k, p in enumerate(pubs):
            await p.send({"op": "pub", "topic": t, "data": {"end": k}})
        for s in subs:
            got = [(m["topic"], m["data"]) for m in await read_until_ends(s, range(6))]
            want = [(t, "a0"), (t, "b1"), (t2, "a-e"), (t, {"race": firsts[0]})]
            assert sorted(got, key=repr) == sorted(want, key=repr), got
            await s.expect_silence()
        for c in subs + pubs:
            await c.close()
    run(main())
    wait_metrics(b, lambda m: m["gale_publish_duplicates_total"] == 7
                 and m["gale_messages_published_total"] == 3 + 1 + 6,
                 "7 duplicates, 10 messages published")


# ---------------------------------------------------------------------------------------
# NATS and MQTT clients across loops
# ---------------------------------------------------------------------------------------

def assert_every_publisher_in_order(kind, j, seqs, names, count):
    """Subscriber j (of kind) got every publisher's count messages, in order."""
    assert sorted(seqs) == names and all(s == list(range(count)) for s in seqs.values()), \
        "%s subscriber %d: %r" % (kind, j, {k: len(v) for k, v in seqs.items()})


def gale_subscribers_got_all(gsubs, names, count):
    for j, g in enumerate(gsubs):
        seqs = by_publisher(m["data"] for m in raw_msgs(g, 4 * count))
        assert_every_publisher_in_order("gale", j, seqs, names, count)
        assert g.ping_sync(99) == []


def test_nats_across_loops(make_broker, topic):
    """NATS and gale subscribers on both loops get every message of NATS and gale publishers
    on both loops, once, in order per publisher."""
    b, lm = loops_broker(make_broker)
    nst = Steer(lm, lambda _: nats_client(b.port))
    gst = Steer(lm, lambda _: raw_client(b.port))
    nsubs = [nst.get(k) for k in (0, 0, 1, 1)]
    gsubs = [gst.get(k) for k in (0, 1)]
    npubs = [nst.get(k) for k in (0, 1)]
    gpubs = [gst.get(k) for k in (0, 1)]
    nst.close_spares()
    gst.close_spares()
    for n in nsubs:
        n.sub(topic + ".>", "1")
        assert n.sync() == []
    for g in gsubs:
        raw_sub(g, topic + ".*")
    count = 40
    for k, n in enumerate(npubs):
        for i in range(count):
            n.pub("%s.n%d" % (topic, k), json.dumps({"p": "n%d" % k, "i": i}))
    for k, g in enumerate(gpubs):
        for i in range(count):
            g.send_json({"op": "pub", "topic": "%s.g%d" % (topic, k),
                         "data": {"p": "g%d" % k, "i": i}})
    for n in npubs:
        assert n.sync() == []
    for k, g in enumerate(gpubs):
        assert g.ping_sync(k + 1) == []
    names = sorted("%s%d" % (w, k) for w in "ng" for k in (0, 1))
    for j, n in enumerate(nsubs):
        got = n.msgs(4 * count, timeout=10)
        assert all(m[1] == "%s.%s" % (topic, json.loads(m[4])["p"]) and m[2] == "1"
                   for m in got), got[:3]
        seqs = by_publisher(json.loads(m[4]) for m in got)
        assert_every_publisher_in_order("NATS", j, seqs, names, count)
        n.expect_silence()
    gale_subscribers_got_all(gsubs, names, count)
    for c in nsubs + npubs + gsubs + gpubs:
        c.close()


def test_nats_echo_false_across_loops(make_broker, topic):
    b, lm = loops_broker(make_broker)
    st = Steer(lm, lambda echo: nats_client(b.port, echo=echo))
    quiet = [st.get(k, False) for k in (0, 1)]     # echo false
    plain = [st.get(k, True) for k in (0, 1)]
    st.close_spares()
    subj = topic + ".e"
    for n in quiet + plain:
        n.sub(subj, "1")
        assert n.sync() == []
    for k, me in enumerate(quiet):
        me.pub(subj, "from-%d" % k)
        assert me.sync() == [], "echo false, yet its own message came back"
        for other in [quiet[1 - k]] + plain:
            assert other.msgs(1) == [("MSG", subj, "1", None, b"from-%d" % k)]
        me.expect_silence()
        for n in quiet + plain:
            n.expect_silence()
    for n in quiet + plain:
        n.close()


def test_mqtt_across_loops(make_broker, topic):
    """MQTT and gale subscribers on both loops get the messages of MQTT (QoS 1) and gale
    publishers on both loops, once, in order per publisher."""
    b, lm = loops_broker(make_broker)
    mst = Steer(lm, lambda _: RawMQTT(b.port))
    gst = Steer(lm, lambda _: raw_client(b.port))
    msubs = [mst.get(k) for k in (0, 0, 1, 1)]
    gsubs = [gst.get(k) for k in (0, 1)]
    mpubs = [mst.get(k) for k in (0, 1)]
    gpubs = [gst.get(k) for k in (0, 1)]
    mst.close_spares()
    gst.close_spares()
    for j, r in enumerate(msubs):
        mqtt_connect_sub(r, "sub%d" % j, topic + ("/#" if j % 2 else "/+"))
    for g in gsubs:
        raw_sub(g, topic + ".>")
    count = 30
    for k, r in enumerate(mpubs):
        r.connect("pub%d" % k)
        for i in range(count):
            r.send(publish_packet("%s/m%d" % (topic, k),
                                  json.dumps({"p": "m%d" % k, "i": i}).encode(), qos=1,
                                  pid=i + 1))
    for k, g in enumerate(gpubs):
        for i in range(count):
            g.send_json({"op": "pub", "topic": "%s.g%d" % (topic, k),
                         "data": {"p": "g%d" % k, "i": i}})
    for r in mpubs:
        assert [r.recv() for _ in range(count)] == \
            [(0x40, struct.pack("!H", i + 1)) for i in range(count)]
    names = sorted("%s%d" % (w, k) for w in "mg" for k in (0, 1))
    for j, r in enumerate(msubs):
        got = [mqtt_publish(r.recv()) for _ in range(4 * count)]
        assert all(tp == "%s/%s" % (topic, json.loads(pl)["p"]) and not rt
                   for tp, pl, rt in got), got[:3]
        seqs = by_publisher(json.loads(pl) for _, pl, _ in got)
        assert_every_publisher_in_order("MQTT", j, seqs, names, count)
        mqtt_quiet(r)
    gale_subscribers_got_all(gsubs, names, count)
    for c in msubs + mpubs + gsubs + gpubs:
        c.close()


def test_mqtt_retained_across_loops(make_broker, topic):
    """A retained message published on one loop is kept for subscribers of every loop;
    replaced and cleared from the other loop."""
    b, lm = loops_broker(make_broker)
    st = Steer(lm, lambda _: RawMQTT(b.port))
    rt = topic + "/r"
    pubs = [st.get(k) for k in (0, 1)]
    for k, r in enumerate(pubs):
        r.connect("rpub%d" % k)
    cid = iter(range(100))

    def late_sub(loop, filt):
        r = st.get(loop)
        mqtt_connect_sub(r, "rsub%d" % next(cid), filt)
        return r

    pubs[0].send(publish_packet(rt, b"kept", qos=1, pid=1, retain=True))
    assert pubs[0].recv() == (0x40, b"\x00\x01")
    held = []
    for loop in (0, 1):
        for filt in (rt, topic + "/#"):
            r = late_sub(loop, filt)
            assert mqtt_publish(r.recv()) == (rt, b"kept", True), (loop, filt)
            mqtt_quiet(r)
            held.append((loop, r))
    # Replaced from loop 1: live to the held ones, retained for new ones on loop 0.
    pubs[1].send(publish_packet(rt, b"newer", qos=1, pid=2, retain=True))
    assert pubs[1].recv() == (0x40, b"\x00\x02")
    for loop, r in held:
        assert mqtt_publish(r.recv()) == (rt, b"newer", False), loop
    r = late_sub(0, topic + "/+")
    assert mqtt_publish(r.recv()) == (rt, b"newer", True)
    mqtt_quiet(r)
    held.append((0, r))
    # Cleared from loop 0: nothing retained for new ones on loop 1.
    pubs[0].send(publish_packet(rt, b"", qos=1, pid=3, retain=True))
    assert pubs[0].recv() == (0x40, b"\x00\x03")
    for loop, r in held:
        assert mqtt_publish(r.recv()) == (rt, b"", False), loop
    last = late_sub(1, topic + "/#")
    mqtt_quiet(last)
    for c in pubs + [h for _, h in held] + [last] + [c for cs in st.pool.values() for c in cs]:
        c.close()


def test_mqtt_client_id_takeover_across_loops(make_broker, topic):
    """A CONNECT with a client id in use on the other loop takes the session over: the
    older connection is closed, the newer one works."""
    b, lm = loops_broker(make_broker)
    st = Steer(lm, lambda _: RawMQTT(b.port))
    first = st.get(0)
    first.connect("same-id")
    second = st.get(1)
    second.connect("same-id")
    first.expect_closed()
    first.close()          # the broker may wait for the close handshake: end it here
    lm.removed(0)
    third = st.get(0)      # and back from loop 1 to loop 0
    third.connect("same-id")
    second.expect_closed()
    second.close()
    lm.removed(1)
    t = topic + "/tk"
    third.send(subscribe_packet(1, [(t, 1)]))
    assert third.recv() == (0x90, b"\x00\x01\x01")
    third.send(publish_packet(t, b"still here", qos=1, pid=2))
    got = [third.recv(), third.recv()]
    assert (0x40, b"\x00\x02") in got, got     # PUBACK, and its own message
    got.remove((0x40, b"\x00\x02"))
    assert mqtt_publish(got[0])[:2] == (t, b"still here"), got
    mqtt_quiet(third)
    for c in [third] + [c for cs in st.pool.values() for c in cs]:
        c.close()


# ---------------------------------------------------------------------------------------
# HTTP publish API
# ---------------------------------------------------------------------------------------

def test_api_publish_reaches_every_loop(make_broker, topic):
    b, lm = loops_broker(make_broker, args=["--api-key", API_KEY])
    st = Steer(lm, lambda enc: raw_client(b.port, enc))
    subs = [(st.get(k, enc), k, enc) for k in (0, 1) for enc in (JSON, MSGPACK, JSON)]
    st.close_spares()
    for j, (ws, _, enc) in enumerate(subs):
        pat = (topic + ".>", topic + ".*", topic + ".*")[j % 3]
        body = {"op": "sub", "topic": pat, "id": 1}
        if enc == JSON:
            raw_sub(ws, pat)
        else:
            ws.send_binary(msgpack.packb(body))
            assert ws.recv_msgpack() == {"op": "ack", "id": 1}
    batches, size, singles = 10, 5, 6
    for r in range(batches):
        status, res = api_post(b.port, {"messages": [
            {"topic": topic + ".a", "data": {"p": r, "i": i}} for i in range(size)]},
            key=API_KEY)
        assert (status, res) == (200, {"ok": True, "results": [{"ok": True}] * size}), res
    for j in range(singles):
        status, res = api_post(b.port, {"topic": topic + ".b", "data": {"p": "s", "i": j}},
                               key=API_KEY)
        assert (status, res) == (200, {"ok": True}), res
    total = batches * size + singles
    for ws, loop, enc in subs:
        got = []
        deadline = time.monotonic() + 10
        while len(got) < total:
            left = deadline - time.monotonic()
            assert left > 0, "subscriber on loop %d: %d of %d messages" % (loop, len(got), total)
            m = ws.recv_json(left) if enc == JSON else ws.recv_msgpack(left)
            assert m.get("op") == "msg", m
            got.append(m)
        seqs = by_publisher(m["data"] for m in got)
        singles_got = sorted(seqs.pop("s", []))
        # In order within a request; requests may land on either loop, so not across them.
        assert seqs == {r: list(range(size)) for r in range(batches)}, (loop, enc, seqs)
        assert singles_got == list(range(singles)), (loop, enc, singles_got)
        if enc == JSON:
            assert ws.ping_sync(5) == []
        else:
            ws.send_binary(msgpack.packb({"op": "ping", "id": 5}))
            assert ws.recv_msgpack() == {"op": "pong", "id": 5}
    m = wait_metrics(b, lambda m: m["gale_messages_delivered_total"] >= total * len(subs),
                     "the deliveries")
    assert m["gale_messages_published_total"] == total
    assert m["gale_messages_delivered_total"] == total * len(subs)
    for ws, _, _ in subs:
        ws.close()


# ---------------------------------------------------------------------------------------
# Limits, global across loops
# ---------------------------------------------------------------------------------------

def _upgrade(port, source=None):
    """(status, the open RawWS or None)."""
    ws = RawWS(port, source=source)
    if ws.status != 101:
        ws.close()
        return ws.status, None
    ws.recv_json()
    return 101, ws


def _steer_raw(lm, loop, refusal, source=None, timeout=10.0):
    """An open RawWS on loop `loop` from source; connections on the other loop are closed,
    and `refusal` answers (a slot not yet given back) retried. Returns (ws, refusals)."""
    refusals = 0
    deadline = time.monotonic() + timeout
    for _ in range(STEER_ATTEMPTS * lm.n):
        assert time.monotonic() < deadline, "no connection on loop %d within %.0fs" % (
            loop, timeout)
        status, ws = _upgrade(lm.b.port, source)
        if status == refusal:
            refusals += 1
            time.sleep(0.02)
            continue
        assert status == 101, status
        k = lm.added()
        if k == loop:
            return ws, refusals
        ws.close()
        lm.removed(k)
    raise AssertionError("no connection landed on loop %d" % loop)


def test_max_connections_is_global(make_broker):
    """--max-connections 3, all three on loop 0 (a limit divided among the loops refuses
    the second or third), then upgrades landing on either loop get 503 (a limit per loop
    lets loop 1 take more)."""
    b, lm = loops_broker(make_broker, args=["--max-connections", "3"])
    held, refusals = [], 0
    for _ in range(3):
        ws, r = _steer_raw(lm, 0, 503)
        held.append(ws)
        refusals += r
    assert lm.gauges == [3, 0]
    attempts = 24
    for _ in range(attempts):
        status, ws = _upgrade(b.port)
        assert status == 503, "upgrade %d past a limit of 3 with per-loop gauges %r" % (
            status, lm.gauges)
    # HTTP still answers at the limit; a slot freed on loop 0 may be taken on loop 1.
    st, _, body = http_get(b.port, "/healthz")
    assert st == 200 and json.loads(body)["connections"] == 3
    held.pop().close()
    lm.removed(0)
    ws, r = _steer_raw(lm, 1, 503)
    refusals += r
    held.append(ws)
    assert lm.gauges == [2, 1]
    for _ in range(attempts):
        status, _ = _upgrade(b.port)
        assert status == 503, "upgrade %d past a limit of 3 with per-loop gauges %r" % (
            status, lm.gauges)
    # The held connections work, across loops.
    held[0].send_json({"op": "sub", "topic": "lim", "id": 1})
    assert held[0].recv_json() == {"op": "ack", "id": 1}
    held[2].send_json({"op": "pub", "topic": "lim", "data": 1})
    assert held[0].recv_json() == {"op": "msg", "topic": "lim", "data": 1}
    wait_metrics(b, lambda m: m["gale_connections_refused_total"] == 2 * attempts + refusals
                 and m["gale_connections_accepted_total"] == lm.accepted,
                 "%d refusals, %d accepted" % (2 * attempts + refusals, lm.accepted))
    for ws in held:
        ws.close()


def test_max_connections_per_ip_is_global(make_broker):
    b, lm = loops_broker(make_broker, args=["--max-connections-per-ip", "3"])
    held, refusals = [], 0
    for _ in range(3):
        ws, r = _steer_raw(lm, 0, 429, source="127.0.0.2")
        held.append(ws)
        refusals += r
    attempts = 24
    for _ in range(attempts):
        status, _ = _upgrade(b.port, source="127.0.0.2")
        assert status == 429, "upgrade %d from an address at its limit (gauges %r)" % (
            status, lm.gauges)
    # Another address connects, on both loops.
    for k in (0, 1):
        ws, r = _steer_raw(lm, k, 429, source="127.0.0.3")
        assert r == 0, "127.0.0.3 refused %d times" % r
        held.append(ws)
    assert lm.gauges == [4, 1]
    held.pop(0).close()     # a slot of 127.0.0.2 freed on loop 0, taken on loop 1
    lm.removed(0)
    ws, r = _steer_raw(lm, 1, 429, source="127.0.0.2")
    refusals += r
    held.append(ws)
    for _ in range(attempts):
        status, _ = _upgrade(b.port, source="127.0.0.2")
        assert status == 429, "upgrade %d from an address at its limit (gauges %r)" % (
            status, lm.gauges)
    refused = 2 * attempts + refusals
    wait_metrics(b, lambda m: m["gale_connections_refused_per_ip_total"] == refused
                 and m["gale_connections_refused_total"] == refused
                 and m["gale_client_addresses"] == 2,
                 "%d refusals per address and 2 client addresses" % refused)
    for ws in held:
        ws.close()
    wait_metrics(b, lambda m: m["gale_client_addresses"] == 0 and m["gale_connections"] == 0,
                 "no address left")


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------

def test_sigterm_closes_every_loop_1001(make_broker):
    b, lm = loops_broker(make_broker)
    rst = Steer(lm, lambda kind: {"ws": lambda: raw_client(b.port),
                                  "nats": lambda: nats_client(b.port)}[kind]())
    raws = [rst.get(k, kind) for k in (0, 1) for kind in ("ws", "ws", "nats")]
    rst.close_spares()

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        cs = [await st.get(k % 2, (JSON, MSGPACK)[k // 2 % 2]) for k in range(12)]
        for i, c in enumerate(cs):
            await c.sub("x.%d" % i)
        await st.close_spares()
        _, g = await asyncio.to_thread(settled, b, 2, 18)
        assert g == [9, 9], g
        t0 = time.monotonic()
        b.send_signal(signal.SIGTERM)

        def raw_code(c):
            return close_answered(c.ws if hasattr(c, "ws") else c)

        codes = await asyncio.gather(*(c.expect_close(timeout=5) for c in cs),
                                     *(asyncio.to_thread(raw_code, r) for r in raws))
        return [c if isinstance(c, int) or c is None else c[0] for c in codes], t0

    codes, t0 = run(main())
    rc = b.wait(max(0.1, 5 - (time.monotonic() - t0)))
    assert codes == [1001] * 18, codes
    assert rc == 0, "exit %r within 5 s of SIGTERM" % rc
    with pytest.raises(OSError):
        socket.create_connection((HOST, b.port), timeout=1).close()


def test_sigterm_closes_mqtt_on_every_loop_1001(make_broker):
    b, lm = loops_broker(make_broker)
    st = Steer(lm, lambda _: RawMQTT(b.port))
    rs = [st.get(k) for k in (0, 0, 1, 1)]
    st.close_spares()
    for j, r in enumerate(rs):
        mqtt_connect_sub(r, "term%d" % j, "a/#")
    t0 = time.monotonic()
    b.send_signal(signal.SIGTERM)
    codes = [close_answered(r.ws) for r in rs]
    rc = b.wait(max(0.1, 5 - (time.monotonic() - t0)))
    assert codes == [1001] * 4, codes
    assert rc == 0, "exit %r within 5 s of SIGTERM" % rc


def _token(secret, user="u"):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 300,
                       "gale": {"sub": [">"], "pub": [">"]}}, secret, algorithm="HS256")


def test_sighup_reloads_the_secret_on_every_loop(make_broker, tmp_path, topic):
    first, second = "first-secret-0123456789abcdef0123", "second-secret-0123456789abcdef012"
    path = tmp_path / "secret"
    path.write_text(first + "\n")
    b, lm = loops_broker(make_broker, args=["--jwt-secret-file", str(path)])
    old, new = _token(first, "old"), _token(second, "new")

    def url(tok):
        return b.url + "?token=" + tok

    async def main():
        st = ASteer(lm, lambda tok: connect(url(tok)))
        kept = [await st.get(k, old) for k in (0, 1)]
        await st.close_spares()
        for _ in range(16):
            assert await connect_status(url(new)) == 401
        path.write_text(second + "\n")
        b.send_signal(signal.SIGHUP)
        await asyncio.to_thread(wait_log, b, "token keys reloaded")
        fresh = [await st.get(k, new) for k in (0, 1)]     # a 401 here fails the test
        await st.close_spares()
        for _ in range(16):
            assert await connect_status(url(old)) == 401
        # The connections made before stay, and talk across loops with the new ones.
        for c in kept + fresh:
            await c.sub(topic)
        for k, c in enumerate(kept + fresh):
            await c.pub(topic, k)
        for c in kept + fresh:
            got = []
            while len(got) < 4:
                m = await c.recv()
                got.append(m["data"])
            assert sorted(got) == [0, 1, 2, 3], got
        for c in kept + fresh:
            await c.close()
    run(main())
    assert b.alive()


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

def test_metrics_summed_across_loops(make_broker, topic):
    b, lm = loops_broker(make_broker)

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        subs = [await st.get(k, enc) for k in (0, 1) for enc in (JSON, MSGPACK)]
        pubs = [await st.get(k) for k in (0, 1)]
        await st.close_spares()
        for j, s in enumerate(subs):
            await s.sub(topic + ".>")
            if j % 2 == 0:
                await s.sub(topic + ".a")     # overlapping: still one delivery
        m, g = await asyncio.to_thread(settled, b, 2, 6)
        assert g == [3, 3]
        assert m["gale_subscriptions"] == 6
        counts = {0: 7, 1: 5}
        for k, p in enumerate(pubs):
            for i in range(counts[k]):
                await p.send({"op": "pub", "topic": topic + ".a", "data": {"p": k, "i": i}})
            for i in range(3):
                await p.send({"op": "pub", "topic": topic + "x.none", "data": i})
            await p.send({"op": "pub", "topic": topic + ".a", "data": {"end": k}})
        await pubs[0].send_raw('{"op":"nope"}')
        await pubs[1].send_raw("{")
        await pubs[1].send_raw('{"op":"pub","topic":"%s.*","data":1}' % topic)
        for p in pubs:
            got = await p.sync()
            assert [x["op"] for x in got] == ["err"] * (1 if p is pubs[0] else 2), got
        for s in subs:
            seqs = by_publisher(x["data"] for x in await read_until_ends(s, {0, 1}))
            assert seqs == {0: list(range(7)), 1: list(range(5))}, seqs
        published = 7 + 5 + 2 * 3 + 2
        delivered = (7 + 5 + 2) * len(subs)
        m = await asyncio.to_thread(
            wait_metrics, b, lambda m: m["gale_messages_published_total"] >= published
            and m["gale_messages_delivered_total"] >= delivered, "the published messages")
        assert m["gale_messages_published_total"] == published
        assert m["gale_messages_delivered_total"] == delivered
        assert m['gale_protocol_errors_total{code="unknown_op"}'] == 1
        assert m['gale_protocol_errors_total{code="bad_request"}'] == 1
        assert m['gale_protocol_errors_total{code="bad_topic"}'] == 1
        assert m['gale_protocol_connections{proto="gale"}'] == 6
        assert m['gale_protocol_messages_published_total{proto="gale"}'] == published
        assert m["gale_connections_accepted_total"] == lm.accepted
        assert m["gale_bytes_out_total"] >= delivered * 30
        for c in subs + pubs:
            await c.close()
        return published, delivered

    published, delivered = run(main())
    m, g = settled(b, 2, 0)
    assert g == [0, 0]
    assert m["gale_subscriptions"] == 0
    assert m["gale_messages_published_total"] == published
    assert m["gale_messages_delivered_total"] == delivered
    assert m["gale_connections_accepted_total"] == lm.accepted
    assert m["gale_connections_refused_total"] == 0


# ---------------------------------------------------------------------------------------
# Slow consumers and keepalive on every loop
# ---------------------------------------------------------------------------------------

PAD = "p" * 1000


def test_slow_consumers_closed_4001_on_every_loop(make_broker, topic):
    """A stalled subscriber on each loop (the publisher's and the other) is closed with
    4001; a reading subscriber on each loop gets everything, in order."""
    b, lm = loops_broker(make_broker, args=["--queue-limit", "64K"])
    rst = Steer(lm, lambda _: raw_client(b.port, rcvbuf=4096))
    stalled = [rst.get(k) for k in (0, 1)]
    rst.close_spares()
    for s in stalled:
        raw_sub(s, topic)

    async def main():
        st = ASteer(lm, lambda _: connect(b.url))
        fast = [await st.get(k) for k in (0, 1)]
        p = await st.get(0)
        await st.close_spares()
        counts, bad, ended = [0, 0], [], [None, None]
        for f in fast:
            await f.sub(topic)

        async def read(j):
            try:
                while True:
                    m = await fast[j].recv(timeout=30)
                    if m["data"]["seq"] != counts[j] and not bad:
                        bad.append((j, counts[j], m["data"]["seq"]))
                    counts[j] += 1
            except Exception as e:    # reported below
                ended[j] = "reading subscriber on loop %d ended after %d messages: %r" % (
                    j, counts[j], e)

        readers = [asyncio.ensure_future(read(j)) for j in (0, 1)]
        seq, hit = 0, None
        deadline = time.monotonic() + 25
        while seq < 40000 and time.monotonic() < deadline:
            for _ in range(50):
                await p.send({"op": "pub", "topic": topic, "data": {"seq": seq, "pad": PAD}})
                seq += 1
            await p.sync()
            t0 = time.monotonic()
            while min(counts) < seq - 100 and time.monotonic() - t0 < 5 and not any(ended):
                await asyncio.sleep(0.002)
            assert not any(ended), ended
            m = await asyncio.to_thread(b.metrics)
            if m["gale_slow_consumer_closes_total"] >= 2:
                hit = m
                break
        assert hit is not None, "fewer than 2 slow-consumer closes after %d messages" % seq
        for i in range(100):
            await p.send({"op": "pub", "topic": topic, "data": {"seq": seq + i, "pad": PAD}})
        await p.sync()
        total = seq + 100
        t0 = time.monotonic()
        while min(counts) < total and time.monotonic() - t0 < 10 and not any(ended):
            await asyncio.sleep(0.01)
        for r in readers:
            r.cancel()
        assert not any(ended), ended
        assert not bad, "a reading subscriber saw seq out of place: %r" % bad
        assert counts == [total, total], (counts, total)
        for c in fast + [p]:
            await c.close()
        return total

    total = run(main(), timeout=60)
    for k, s in enumerate(stalled):
        code, got = s.recv_until_closed(timeout=8)
        s.close()
        seqs = [json.loads(x)["data"]["seq"] for _, x in got]
        assert code == 4001, "stalled subscriber on loop %d: close %r after %d messages" % (
            k, code, len(seqs))
        assert seqs == list(range(len(seqs))) and len(seqs) < total
    m = wait_metrics(b, lambda m: m["gale_connections"] == 0, "all connections gone")
    assert m["gale_slow_consumer_closes_total"] == 2
    assert "slow consumer" in b.log_text()


def test_reading_subscriber_on_another_loop_is_not_a_slow_consumer(make_broker, topic):
    """--queue-limit 64K, ~1 KB messages published in batches of 50 on loop 0, the
    publisher never more than 100 messages ahead of two subscribers that read all the time
    (as test_limits' flood): the kernel's socket buffers take that much, and one loop never
    closes them. Neither may the other loop, which gets the messages from loop 0."""
    b, lm = loops_broker(make_broker, args=["--queue-limit", "64K"])
    count = 12000

    async def main():
        st = ASteer(lm, lambda _: connect(b.url))
        readers_c = [await st.get(k) for k in (0, 1)]
        p = await st.get(0)
        await st.close_spares()
        counts, ended = [0, 0], [None, None]
        for c in readers_c:
            await c.sub(topic)

        async def read(j):
            try:
                while counts[j] < count:
                    m = await readers_c[j].recv(timeout=10)
                    assert m["data"]["seq"] == counts[j], (j, counts[j], m["data"]["seq"])
                    counts[j] += 1
            except Exception as e:    # reported below
                ended[j] = "subscriber on loop %d ended after %d of %d messages: %r" % (
                    j, counts[j], count, e)

        readers = [asyncio.ensure_future(read(j)) for j in (0, 1)]
        seq = 0
        while seq < count and not any(ended):
            for _ in range(50):
                await p.send({"op": "pub", "topic": topic, "data": {"seq": seq, "pad": PAD}})
                seq += 1
            await p.sync()
            t0 = time.monotonic()
            while min(counts) < seq - 100 and time.monotonic() - t0 < 5 and not any(ended):
                await asyncio.sleep(0.002)
        assert not any(ended), ended
        await asyncio.wait(readers, timeout=10)
        assert not any(ended), ended
        assert counts == [count, count]
        for c in readers_c + [p]:
            await c.close()
    run(main(), timeout=60)
    assert b.metrics()["gale_slow_consumer_closes_total"] == 0
    assert "slow consumer" not in b.log_text()


def test_keepalive_on_every_loop(make_broker):
    """--keepalive 1: a silent client on each loop is pinged and dropped within ~2 s; a
    client answering pings on each loop stays."""
    b, lm = loops_broker(make_broker, args=["--keepalive", "1"])

    async def main():
        st = ASteer(lm, lambda _: connect(b.url))
        alive = [await st.get(k) for k in (0, 1)]
        await st.close_spares()
        t_alive = time.monotonic()
        rst = Steer(lm, lambda _: raw_client(b.port))

        def silent_pair():
            s = [rst.get(k) for k in (0, 1)]
            rst.close_spares()
            return s

        silent = await asyncio.to_thread(silent_pair)
        t0 = time.monotonic()
        m = await asyncio.to_thread(wait_metrics, b, lambda m:
                                    m["gale_keepalive_closes_total"] >= 2, "2 keepalive closes",
                                    6.0)
        took = time.monotonic() - t0
        assert m["gale_keepalive_closes_total"] == 2, m["gale_keepalive_closes_total"]
        assert took >= 1.0, "dropped %.2fs after the open, before a keepalive" % took
        _, g = await asyncio.to_thread(settled, b, 2, 2)
        assert g == [1, 1], g
        for s in silent:
            s.sock.settimeout(2)
            try:
                while s.sock.recv(65536):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass
            s.close()
        # The answering ones went through at least two keepalive periods.
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - t_alive)))
        for c in alive:
            assert await c.request({"op": "ping", "id": 3}) == {"op": "pong", "id": 3}
            await c.close()
    run(main())
    assert b.metrics()["gale_keepalive_closes_total"] == 2


# ---------------------------------------------------------------------------------------
# More loops
# ---------------------------------------------------------------------------------------

def test_four_loops_on_two_cores(make_broker, topic):
    b, lm = loops_broker(make_broker, n=4)
    m = b.metrics()
    assert m["gale_loops"] == 4 and LOOP_SERIES % 4 not in m
    assert "loops: 4" in b.log_text(), b.log_tail()

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        subs = [await st.get(k, enc) for k in range(4) for enc in (JSON, MSGPACK)]
        pubs = [await st.get(k) for k in range(4)]
        await st.close_spares()
        for j, s in enumerate(subs):
            await s.sub(topic + (".>" if j % 2 else ".*"))
        readers = [asyncio.ensure_future(read_until_ends(s, range(4))) for s in subs]

        async def publish(k, p):
            for i in range(50):
                await p.send({"op": "pub", "topic": "%s.p%d" % (topic, k),
                              "data": {"p": k, "i": i}})
            await p.send({"op": "pub", "topic": "%s.p%d" % (topic, k), "data": {"end": k}})
            assert await p.sync() == []

        await asyncio.gather(*(publish(k, p) for k, p in enumerate(pubs)))
        for s, got in zip(subs, await asyncio.gather(*readers)):
            assert by_publisher(m["data"] for m in got) == {k: list(range(50))
                                                            for k in range(4)}
        # More connections spread over the four.
        more = [await connect(b.url) for _ in range(48)]
        _, g = await asyncio.to_thread(settled, b, 4, 12 + 48)
        assert all(x > 3 for x in g), "48 connections more over 4 loops holding 3 each: %r" % g
        for c in subs + pubs + more:
            await c.close()
    run(main())
    settled(b, 4, 0)


def test_sixty_four_loops(make_broker, topic):
    b = make_broker(["--loops", "64"])
    m = b.metrics()
    assert m["gale_loops"] == 64
    assert loop_gauges(m, 64) == [0] * 64 and LOOP_SERIES % 64 not in m
    assert "loops: 64" in b.log_text(), b.log_tail()

    async def main():
        subs = [await connect(b.url) for _ in range(24)]
        for s in subs:
            await s.sub(topic)
        p = await connect(b.url)
        _, g = await asyncio.to_thread(settled, b, 64, 25)
        assert sum(1 for x in g if x) > 1, g
        for i in range(10):
            await p.send({"op": "pub", "topic": topic, "data": {"p": 0, "i": i}})
        await p.send({"op": "pub", "topic": topic, "data": {"end": 0}})
        for s in subs:
            got = await read_until_ends(s, {0})
            assert [m["data"]["i"] for m in got] == list(range(10))
        for c in subs + [p]:
            await c.close()
    run(main())
    settled(b, 64, 0)


# ---------------------------------------------------------------------------------------
# With --redis: every loop is a node of its own on the bus
# ---------------------------------------------------------------------------------------

def test_cluster_every_loop_a_node(make_broker, redis, topic):
    """--loops 2 with --redis, next to a one-loop broker: history offsets, mids and presence
    hold across the loops and the brokers (Redis keeps them; each loop is a node there)."""
    args = ["--redis", redis.url, "--history", "h.>=100", "--presence", "p.>"]
    a, lm = loops_broker(make_broker, args=args)
    b = make_broker(["--loops", "1"] + args)
    t, room = "h.%s" % topic, "p.%s" % topic

    async def main():
        st = ASteer(lm, lambda _: connect(a.url))
        c0, c1 = await st.get(0), await st.get(1)
        await st.close_spares()
        cb = await connect(b.url)
        for c in (c0, c1, cb):
            await c.sub(t)
        offs = []
        for i in range(6):   # publishers on loop 0, loop 1 and the other broker in turn
            p = (c0, c1, cb)[i % 3]
            r = await p.ask({"op": "pub", "topic": t, "data": i, "mid": "m%d" % i})
            assert r.get("op") == "ack" and not r.get("dup"), r
            offs.append(r["off"])
        assert offs == list(range(offs[0], offs[0] + 6)), offs
        for c in (c0, c1, cb):   # every subscriber: every message once, in offset order
            got = [m for m in await c.sync() if m.get("op") == "msg"]
            while len(got) < 6:
                got.append(await c.recv(timeout=5))
            assert [m["data"] for m in got] == list(range(6)), got
            assert [m["off"] for m in got] == offs, got
        for i, p in enumerate((c1, cb, c0, c1, cb, c0)):   # the same mids elsewhere: dups
            r = await p.ask({"op": "pub", "topic": t, "data": i, "mid": "m%d" % i})
            assert r.get("dup") is True and r.get("off") == offs[i], r
        for c in (c0, c1, cb):
            await c.expect_silence()
        rec = await connect(a.url)   # a recovery on either loop reads the stream
        r = await rec.request({"op": "sub", "topic": t, "since": {"ep": got[0]["ep"],
                                                                  "off": offs[2]}})
        missed = [m for m in rec.pending if m.get("op") == "msg"]
        assert r.get("op") == "ack" and r.get("recovered") is True, r
        assert [m["off"] for m in missed] == offs[3:], missed
        for c in (c0, c1, cb):   # presence: members of both loops and the other broker
            await c.sub(room)
        deadline = time.monotonic() + 10
        while True:
            r = await cb.ask({"op": "presence", "topic": room})
            if r.get("count") == 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert r.get("count") == 3, r
        for c in (c0, c1, cb, rec):
            await c.close()

    run(main(), timeout=60)


def test_unconvertible_data_reported_for_another_loops_subscribers(make_broker, topic):
    """MessagePack data that cannot become JSON (docs/PROTOCOL-NOTES.md), published on one
    loop while the JSON subscriber is on the other: the publisher gets err bad_request as on
    one loop, the MessagePack subscriber the exact bytes, the JSON one nothing."""
    b, lm = loops_broker(make_broker)
    key = msgpack.packb("leaf")
    for _ in range(24):
        key = b"\x81" + key + b"\x01"  # {key: 1}, nested: the JSON text doubles per level
    data = b"\x81" + key + b"\xc0"
    frame = (b"\x84\xa2op\xa3pub\xa5topic" + msgpack.packb(topic) + b"\xa4data" + data
             + b"\xa2id\x07")

    async def main():
        st = ASteer(lm, lambda enc: connect(b.url, enc))
        js = await st.get(1, JSON)
        mp = await st.get(0, MSGPACK)
        pub = await st.get(0, MSGPACK)
        await st.close_spares()
        await js.sub(topic)
        await mp.sub(topic)
        await pub.send_raw(frame)
        reply = await pub.recv()
        assert reply["op"] == "err" and reply["code"] == "bad_request" and reply["id"] == 7, \
            reply
        assert (await mp.recv_raw()).endswith(b"\xa4data" + data)
        await js.expect_silence()
        ok = await pub.ask({"op": "pub", "topic": topic, "data": 1})   # convertible: an ack
        assert ok["op"] == "ack", ok
        assert (await js.recv())["data"] == 1
        for c in (js, mp, pub):
            await c.close()
    run(main())


class _LimitedBroker(galetest.Broker):
    """A broker whose open-file limit is `nofile` (prlimit, util-linux)."""
    nofile = 96

    def command(self, port):
        cmd, cwd = super().command(port)
        return ["prlimit", "--nofile=%d:%d" % (self.nofile, self.nofile)] + cmd, cwd


def test_accept_past_the_file_limit_waits_and_recovers(logdir):
    """More connections than the loops' open-file limit allows: each loop's listener logs
    that it rests, keeps the rest in the kernel's backlog instead of spinning on accept, and
    serves again once connections close."""
    b = _LimitedBroker(logdir, args=["--loops", "2", "--keepalive", "0"], name="nofile")
    b.start()
    held = []
    try:
        for _ in range(2 * _LimitedBroker.nofile):
            held.append(socket.create_connection((HOST, b.port), timeout=5))
        deadline = time.monotonic() + 10
        while "not accepting for" not in b.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "not accepting for" in b.log_text(), b.log_tail()
        time.sleep(0.5)   # several rests: said once per loop, not once per rest
        assert b.log_text().count("not accepting for") <= 2, b.log_tail()
        assert b.proc.poll() is None
        for s in held:
            s.close()
        held = []
        deadline = time.monotonic() + 10
        while True:   # the backlog's dead connections are accepted and closed, then ours
            try:
                status = run(connect_status(b.url), timeout=5)
            except (AssertionError, OSError, asyncio.TimeoutError):
                status = None
            if status == 101 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 101, b.log_tail()
        assert b.healthz()["status"] == "ok"
    finally:
        for s in held:
            s.close()
        assert b.stop() == 0, b.log_tail()
