"""Cluster: several gale-broker processes fanning out through real redis-server processes.

Each test starts its own redis-server (Debian's, on a free loopback port, no persistence)
and three brokers with --redis. Checked: cross-node delivery exactly once per connection,
the publisher's echo once, per-publisher order across nodes, encodings across nodes,
interest-based subscriptions (PUBSUB CHANNELS / NUMSUB / NUMPAT on Redis), release on
unsub and disconnect, two shards, Redis killed (SIGKILL) and restarted under traffic.
"""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from galetest import (HOST, JSON, MSGPACK, Broker, connect, free_port, http_get,
                      run, stop_process)
from test_delivery import TOPICS, WILDCARD_CASES

pytestmark = [pytest.mark.gale_only,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (scripts/deps test)")]

PREFIX = "gale:"


# ---------------------------------------------------------------------------------------
# redis-server and a raw RESP client
# ---------------------------------------------------------------------------------------

def _resp_read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError("bad RESP reply %r" % line)


def _resp_encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    """One redis-server process on 127.0.0.1."""

    def __init__(self, logdir, port=None):
        self.logdir = logdir
        self.port = port or free_port()
        self.proc = None
        self.logpath = os.path.join(logdir, "redis-%d.log" % self.port)

    def start(self, timeout=10.0):
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port),
                 "--bind", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: see %s" % self.logpath)
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except (OSError, ConnectionError, RuntimeError):
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server not ready within %.0fs" % timeout)

    def cmd(self, *args, timeout=5.0):
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.sendall(_resp_encode(args))
            with s.makefile("rb") as f:
                return _resp_read(f)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self):
        stop_process(self.proc)

    @property
    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- PUBSUB introspection -------------------------------------------------------------
    def channels(self, prefix):
        return sorted(c.decode() for c in self.cmd("PUBSUB", "CHANNELS", prefix + "*"))

    def numsub(self, channel):
        r = self.cmd("PUBSUB", "NUMSUB", channel)
        return r[1]

    def numpat(self):
        return self.cmd("PUBSUB", "NUMPAT")


@pytest.fixture
def redis_factory(logdir):
    started = []

    def factory(port=None):
        r = Redis(logdir, port).start()
        started.append(r)
        return r

    yield factory
    for r in started:
        r.stop()


@pytest.fixture
def redis(redis_factory):
    return redis_factory()


def _healthz_status(self):
    try:
        return http_get(self.port, "/healthz", timeout=1)[0]
    except OSError:
        return None


Broker.healthz_status = _healthz_status


def wait_for(pred, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def cluster(make_broker, urls, n=3, extra=()):
    """n brokers on the Redis URLs (a list); each is up (/healthz 200) when returned."""
    return [make_broker(["--redis", ",".join(urls), "--node-id", "node%d" % (i + 1)]
                        + list(extra)) for i in range(n)]


async def drain(c, timeout=5.0):
    """Every message that reached c up to a ping round trip."""
    return await c.sync(timeout)


async def settle(*clients, wait=0.2):
    """Let Redis echoes and cross-node copies arrive, then sync every client."""
    await asyncio.sleep(wait)
    return [await c.sync() for c in clients]


# ---------------------------------------------------------------------------------------
# Delivery across nodes
# ---------------------------------------------------------------------------------------

def test_cross_node_delivery(redis, make_broker, topic):
    a, b, c = cluster(make_broker, [redis.url])

    async def main():
        pa = await connect(a.url, JSON)
        sb = await connect(b.url, JSON)
        sc = await connect(c.url, MSGPACK)
        assert sb.hello["node"] == "node2"
        await sb.sub(topic + ".x")
        await sc.sub(topic + ".*")
        # ack of sub = live everywhere: a pub right after it reaches the subscriber.
        await pa.pub(topic + ".x", {"n": 1})
        got_b, got_c = await settle(sb, sc)
        assert got_b == [{"op": "msg", "topic": topic + ".x", "data": {"n": 1}}]
        assert got_c == [{"op": "msg", "topic": topic + ".x", "data": {"n": 1}}]
        # A topic nobody subscribes to goes nowhere.
        await pa.pub(topic + ".y.z", 1)
        assert await settle(sb, sc) == [[], []]
        for x in (pa, sb, sc):
            await x.close()
    run(main())


@pytest.mark.parametrize("pattern,expected", WILDCARD_CASES)
def test_wildcards_across_nodes(redis, make_broker, topic, pattern, expected):
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        s = await connect(b.url, JSON)
        p = await connect(a.url, JSON)
        await s.sub(topic + "." + pattern)
        for t in TOPICS:
            await p.pub(topic + "." + t, t)
        got = (await settle(s))[0]
        assert [m["topic"] for m in got] == [topic + "." + t for t in expected]
        await s.close()
        await p.close()
    run(main())


def test_sub_ack_means_live_everywhere(redis, make_broker, topic):
    # Repeatedly: a fresh topic, sub on B, and the moment the ack arrives publish on A.
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        s = await connect(b.url, JSON)
        p = await connect(a.url, MSGPACK)
        for i in range(60):
            t = "%s.fresh%d" % (topic, i)
            await s.sub(t if i % 2 else t + ".>")
            await p.pub(t if i % 2 else t + ".leaf", i)
            m = await s.recv(5)
            assert m["op"] == "msg" and m["data"] == i, m
        assert await s.sync() == []
        await s.close()
        await p.close()
    run(main())


def test_exactly_once_overlapping_channel_and_patterns(redis, make_broker, topic):
    a, b, c = cluster(make_broker, [redis.url])

    async def main():
        p = await connect(a.url, JSON)
        s1 = await connect(b.url, JSON)        # channel + three patterns on one connection
        s2 = await connect(b.url, MSGPACK)     # the channel only
        s3 = await connect(b.url, JSON)        # one pattern only
        for pat in ("x.y", "x.*", "x.>", "*.y"):
            await s1.sub(topic + "." + pat)
        await s2.sub(topic + ".x.y")
        await s3.sub(topic + ".x.>")
        await s3.sub(topic + ".>")
        for i in range(50):
            await p.send({"op": "pub", "topic": topic + ".x.y", "data": i, "id": 10 + i})
        await p.sync()
        got = await settle(s1, s2, s3, wait=0.3)
        for g in got:
            assert [m["data"] for m in g] == list(range(50))
        m = b.metrics()
        assert m["gale_redis_duplicates_dropped_total"] >= 50  # the copies Redis sent
        for x in (p, s1, s2, s3):
            await x.close()
    run(main())


def test_publisher_gets_its_own_message_once(redis, make_broker, topic):
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        p = await connect(a.url, JSON)
        other = await connect(a.url, JSON)
        remote = await connect(b.url, JSON)
        await p.sub(topic + ".t")
        await p.sub(topic + ".>")
        await other.sub(topic + ".*")
        await remote.sub(topic + ".t")
        r = await p.request({"op": "pub", "topic": topic + ".t", "data": "me"})
        assert r["op"] == "ack"
        got = await settle(p, other, remote, wait=0.4)
        for g in got:
            assert g == [{"op": "msg", "topic": topic + ".t", "data": "me"}], got
        assert a.metrics()["gale_redis_echoes_dropped_total"] >= 1
        for x in (p, other, remote):
            await x.close()
    run(main())


def test_order_across_nodes(redis, make_broker, topic):
    a, b, c = cluster(make_broker, [redis.url])
    n = 2000

    async def main():
        p = await connect(a.url, MSGPACK)
        local = await connect(a.url, JSON)
        sb = await connect(b.url, JSON)
        sc = await connect(c.url, MSGPACK)
        for s in (local, sb, sc):
            await s.sub(topic + ".o")
        pub2 = await connect(c.url, JSON)   # a second publisher, interleaved
        for i in range(n):
            await p.send({"op": "pub", "topic": topic + ".o", "data": i, "id": i + 1})
            if i % 10 == 0:
                await pub2.send({"op": "pub", "topic": topic + ".o", "data": "x%d" % i})
        # Acks come back in request order.
        ids = []
        while len(ids) < n:
            m = await p.recv(10)
            assert m["op"] == "ack", m
            ids.append(m["id"])
        assert ids == list(range(1, n + 1))
        await pub2.sync()
        for s in (local, sb, sc):
            got = []
            deadline = time.monotonic() + 20
            while len(got) < n + n // 10 and time.monotonic() < deadline:
                m = await s.recv(10)
                got.append(m["data"])
            mine = [d for d in got if isinstance(d, int)]
            theirs = [d for d in got if isinstance(d, str)]
            assert mine == list(range(n))
            assert theirs == ["x%d" % i for i in range(0, n, 10)]
            assert await s.sync() == []
        for x in (p, local, sb, sc, pub2):
            await x.close()
    run(main(), timeout=120)


def test_encodings_across_nodes(redis, make_broker, topic):
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        pj = await connect(a.url, JSON)
        pm = await connect(a.url, MSGPACK)
        sj = await connect(b.url, JSON)
        sm = await connect(b.url, MSGPACK)
        await sj.sub(topic + ".e")
        await sm.sub(topic + ".e")
        # JSON text published is forwarded byte-exact to JSON subscribers on other nodes.
        await pj.send_raw('{"op":"pub","topic":"%s.e","data":{"b":1.50,"a":[1,2e0,"\\u00e9"]},'
                          '"id":1}' % topic)
        assert (await pj.recv())["op"] == "ack"
        raw = await sj.recv_raw()
        assert raw == '{"op":"msg","topic":"%s.e","data":{"b":1.50,"a":[1,2e0,"\\u00e9"]}}' % topic
        m = await sm.recv()
        assert m["data"] == {"b": 1.5, "a": [1, 2.0, "\u00e9"]}
        # MessagePack bin reaches JSON as base64 field "bin", MessagePack as bin.
        await pm.pub(topic + ".e", b"\x00\x01\xff")
        m = await sj.recv()
        assert m == {"op": "msg", "topic": topic + ".e", "bin": "AAH/"}
        m = await sm.recv()
        assert m["data"] == b"\x00\x01\xff"
        await pm.pub(topic + ".e", {"k": [1, -2, 3.25, None, True]})
        assert (await sj.recv())["data"] == {"k": [1, -2, 3.25, None, True]}
        assert (await sm.recv())["data"] == {"k": [1, -2, 3.25, None, True]}
        for x in (pj, pm, sj, sm):
            await x.close()
    run(main())


# ---------------------------------------------------------------------------------------
# Interest-based subscriptions
# ---------------------------------------------------------------------------------------

def test_interest_follows_local_subscribers(redis, make_broker, topic):
    a, b, c = cluster(make_broker, [redis.url])
    chan = PREFIX + topic + ".i"

    async def main():
        assert redis.channels(PREFIX + topic) == []
        numpat0 = redis.numpat()
        s1 = await connect(b.url, JSON)
        s2 = await connect(b.url, JSON)
        s3 = await connect(c.url, JSON)
        await s1.sub(topic + ".i")
        assert redis.channels(PREFIX + topic) == [chan]
        assert redis.numsub(chan) == 1
        await s2.sub(topic + ".i")          # the node already listens: no second SUBSCRIBE
        assert redis.numsub(chan) == 1
        await s3.sub(topic + ".i")          # another node
        assert redis.numsub(chan) == 2
        await s1.sub(topic + ".*")
        await s2.sub(topic + ".*")
        await s3.sub(topic + ".i.>")
        assert redis.numpat() == numpat0 + 2
        # Nodes hear only what they serve: node A (no subscriber) holds nothing.
        await s1.unsub(topic + ".i")
        assert redis.numsub(chan) == 2       # s2 still holds it on node B
        await s2.unsub(topic + ".i")
        assert redis.numsub(chan) == 1
        await s2.close()                     # node B keeps `.*` for s1
        assert wait_for(lambda: b.healthz()["connections"] == 1)
        assert redis.numpat() == numpat0 + 2
        await s1.close()                     # last holder of `.*` on node B disconnects
        assert wait_for(lambda: redis.numpat() == numpat0 + 1)
        await s3.close()
        assert wait_for(lambda: redis.numpat() == numpat0 and redis.channels(PREFIX + topic) == [])
    run(main())


def test_glob_metacharacters_are_literal(redis, make_broker, topic):
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        s = await connect(b.url, JSON)
        p = await connect(a.url, JSON)
        await s.sub(topic + ".a?[x]\\.*")
        for t in ("a?[x]\\.1", "ab[x]\\.2", "a?x\\.3", "a?[x]\\.4.5", "aZ[x]\\.6"):
            await p.pub(topic + "." + t, t)
        got = (await settle(s))[0]
        assert [m["data"] for m in got] == ["a?[x]\\.1"]
        await s.close()
        await p.close()
    run(main())


def test_prefix_flag(redis, make_broker, topic):
    bs = cluster(make_broker, [redis.url], n=2, extra=["--redis-prefix", "other{ns}:"])

    async def main():
        s = await connect(bs[1].url, JSON)
        p = await connect(bs[0].url, JSON)
        await s.sub(topic + ".p")
        await s.sub(topic + ".q.*")
        assert redis.channels("other{ns}:" + topic) == ["other{ns}:" + topic + ".p"]
        assert redis.channels(PREFIX + topic) == []
        pats = redis.cmd("PUBSUB", "NUMPAT")
        assert pats >= 1
        await p.pub(topic + ".p", 1)
        await p.pub(topic + ".q.r", 2)
        got = (await settle(s))[0]
        assert [m["data"] for m in got] == [1, 2]
        await s.close()
        await p.close()
    run(main())


# ---------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------

def test_two_shards(redis_factory, make_broker, topic):
    r1, r2 = redis_factory(), redis_factory()
    # Each broker lists the shards in a different order: the ring does not depend on it.
    a = make_broker(["--redis", ",".join([r1.url, r2.url]), "--node-id", "a"])
    b = make_broker(["--redis", " %s , %s " % (r2.url, r1.url), "--node-id", "b"])
    c = make_broker(["--redis", ",".join([r1.url, r2.url]), "--node-id", "c"])
    topics = ["%s.s%d" % (topic, i) for i in range(40)]

    async def main():
        s = await connect(b.url, JSON)
        pat = await connect(c.url, MSGPACK)
        p = await connect(a.url, JSON)
        for t in topics:
            await s.sub(t)
        await pat.sub(topic + ".*")
        on1, on2 = r1.channels(PREFIX + topic), r2.channels(PREFIX + topic)
        assert len(on1) + len(on2) == len(topics) and set(on1).isdisjoint(on2)
        assert len(on1) >= 5 and len(on2) >= 5, (len(on1), len(on2))   # spread over both
        assert r1.numpat() == 1 and r2.numpat() == 1                      # a pattern: everywhere
        for i, t in enumerate(topics):
            await p.pub(t, i)
        got_s, got_pat = await settle(s, pat, wait=0.3)
        assert [m["data"] for m in got_s] == list(range(len(topics)))
        assert sorted(m["data"] for m in got_pat) == list(range(len(topics)))
        m = c.metrics()
        assert m['gale_redis_shard_up{shard="127.0.0.1:%d/0"}' % r1.port] == 1
        assert m["gale_redis_connected"] == 2 and m["gale_redis_shards"] == 2
        for x in (s, pat, p):
            await x.close()
    run(main())


# ---------------------------------------------------------------------------------------
# Redis down
# ---------------------------------------------------------------------------------------

def test_redis_killed_and_restarted_under_traffic(redis, make_broker, topic):
    a, b, c = cluster(make_broker, [redis.url])
    t = topic + ".k"

    async def main():
        p = await connect(a.url, JSON)
        sb = await connect(b.url, JSON)
        sc = await connect(c.url, MSGPACK)
        await sb.sub(t)
        await sc.sub(topic + ".*")
        seq = 0
        acked, refused = [], []

        async def publish_one():
            nonlocal seq
            seq += 1
            r = await p.request({"op": "pub", "topic": t, "data": seq})
            if r["op"] == "ack":
                acked.append(seq)
            else:
                assert r["op"] == "err" and r["code"] == "unavailable", r
                refused.append(seq)
            return r["op"]

        for _ in range(200):
            assert await publish_one() == "ack"
        # (An ack means Redis took the message; Redis dying right after may still lose it
        # for other nodes: at most once. So the first 200 are received before the kill.)
        before_b, before_c = await settle(sb, sc)
        assert [m["data"] for m in before_b] == acked and [m["data"] for m in before_c] == acked
        redis.kill()
        t_kill = time.monotonic()
        # While Redis is down: pub answers unavailable, a new sub too, /healthz says degraded
        # (still 200: liveness, so load balancers keep the brokers).
        while time.monotonic() - t_kill < 0.5:
            await publish_one()
            await asyncio.sleep(0.005)
        assert await publish_one() == "err"
        r = await sb.request({"op": "sub", "topic": topic + ".new"})
        assert r["op"] == "err" and r["code"] == "unavailable", r
        st, _, body = http_get(a.port, "/healthz")
        assert st == 200 and b'"degraded"' in body and b'"state":"down"' in body
        # ... and nothing was delivered of the refused messages, not even locally.
        await asyncio.sleep(0.5)
        redis.start()
        t_back = time.monotonic()
        while await publish_one() != "ack":
            assert time.monotonic() - t_back < 2.0, "no ack within 2 s of Redis being back"
            await asyncio.sleep(0.01)
        # Every broker is back, and delivers again, within 2 s: subscriptions were restored
        # (each broker reconnects on its own jittered schedule).
        deadline = t_back + 2.0
        assert wait_for(lambda: all(x.healthz_status() == 200 for x in (a, b, c)),
                        max(0.0, deadline - time.monotonic())), "a broker is not back in 2 s"
        got_b, got_c = before_b, before_c
        while True:
            await publish_one()
            await asyncio.sleep(0.02)
            got_b += await sb.sync()
            got_c += await sc.sync()
            data_b = [m["data"] for m in got_b]
            data_c = [m["data"] for m in got_c]
            if acked[-1] in data_b and acked[-1] in data_c:
                break
            assert time.monotonic() < deadline, "no delivery within 2 s of Redis being back"
        for _ in range(100):
            await publish_one()
        got_b += (await settle(sb, wait=0.3))[0]
        got_c += (await settle(sc))[0]
        for got in (got_b, got_c):
            data = [m["data"] for m in got]
            assert len(data) == len(set(data)), "duplicates"
            assert data == sorted(data), "out of order"
            assert not set(data) & set(refused), "a refused message was delivered"
            assert set(acked[:200]) <= set(data), sorted(set(acked[:200]) - set(data))
            assert set(acked[-100:]) <= set(data)
        assert refused
        h = a.healthz()
        assert h["status"] == "ok" and h["redis"] == {"state": "up", "shards": 1, "connected": 1}
        assert a.metrics()["gale_redis_reconnects_total"] >= 1
        # A new subscription works again.
        await sb.sub(topic + ".new")
        for x in (p, sb, sc):
            await x.close()
    run(main(), timeout=60)
    for x in (a, b, c):
        assert x.alive()


def test_redis_hang_times_out(redis, make_broker, topic):
    # A Redis that stops answering (SIGSTOP): the pending pub fails with unavailable after
    # --redis-timeout, and everything recovers once it answers again (SIGCONT).
    a, b = cluster(make_broker, [redis.url], n=2, extra=["--redis-timeout", "300"])

    async def main():
        p = await connect(a.url, JSON)
        s = await connect(b.url, JSON)
        await s.sub(topic + ".h")
        await p.pub(topic + ".h", 0)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = await p.request({"op": "pub", "topic": topic + ".h", "data": 1}, timeout=5)
            assert r["op"] == "err" and r["code"] == "unavailable", r
            assert 0.2 < time.monotonic() - t0 < 3
            pong = await p.request({"op": "ping"})       # the connection itself is fine
            assert pong["op"] == "pong"
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        t_back = time.monotonic()
        n = 100
        while True:
            n += 1
            r = await p.request({"op": "pub", "topic": topic + ".h", "data": n})
            if r["op"] == "ack":
                got = [m["data"] for m in (await settle(s))[0]]
                if n in got:
                    break
            assert time.monotonic() - t_back < 5, "no recovery within 5 s of SIGCONT"
            await asyncio.sleep(0.05)
        # No copies, in order. (Message 1 may or may not arrive: its PUBLISH was sent before
        # the timeout, and `unavailable` after a timeout means the outcome is unknown.)
        assert got == sorted(set(got))
        await p.close()
        await s.close()
    run(main(), timeout=60)


def test_broker_starts_before_redis(make_broker, logdir, topic):
    port = free_port()
    url = "redis://127.0.0.1:%d" % port
    b = make_broker(["--redis", url, "--redis-timeout", "300"], start=False)
    r = Redis(logdir, port)
    timer = threading.Timer(1.0, r.start)
    timer.start()
    try:
        b.start(timeout=10)  # /healthz answers at once, "degraded" until Redis is there
    finally:
        timer.join()
    assert wait_for(lambda: b'"state":"up"' in http_get(b.port, "/healthz")[2], 10)

    async def main():
        s = await connect(b.url, JSON)
        await s.sub(topic + ".late")
        await s.pub(topic + ".late", 7)
        assert [m["data"] for m in await s.sync()] == [7]
        await s.close()
    try:
        run(main())
        assert b.metrics()["gale_redis_connect_failures_total"] >= 1
    finally:
        r.stop()


def test_unreachable_redis_degrades_but_serves(gale_binary, logdir, topic):
    # No Redis at all: the broker runs, /healthz answers 200 "degraded", pub and a new sub
    # answer unavailable, ping still works, and SIGTERM stops it cleanly.
    port, rport = free_port(), free_port()
    log = open(os.path.join(logdir, "noredis-%d.log" % port), "wb")
    proc = subprocess.Popen([gale_binary, "--listen", "%s:%d" % (HOST, port), "--redis",
                             "redis://127.0.0.1:%d" % rport, "--redis-timeout", "200"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def degraded():
            try:
                st, _, body = http_get(port, "/healthz", timeout=1)
            except OSError:
                return False
            return st == 200 and b'"status":"degraded"' in body and b'"state":"down"' in body
        assert wait_for(degraded, 10)

        async def main():
            c = await connect("ws://%s:%d/ws" % (HOST, port), JSON)
            r = await c.request({"op": "pub", "topic": topic, "data": 1})
            assert r["op"] == "err" and r["code"] == "unavailable", r
            r = await c.request({"op": "sub", "topic": topic})
            assert r["op"] == "err" and r["code"] == "unavailable", r
            await c.send({"op": "pub", "topic": topic, "data": 2})   # no id: err without id
            r = await c.recv()
            assert r["op"] == "err" and "id" not in r
            assert await c.sync() == []                                # not subscribed
            await c.close()
        run(main())
        st, _, body = http_get(port, "/metrics")
        assert b"gale_redis_connected 0" in body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        log.close()


def test_bad_redis_flags_exit_2(gale_binary):
    for args in (["--redis", "http://x:1"], ["--redis", "redis://h"], ["--redis", "redis://h:0"],
                 ["--redis", "redis://h:1,redis://h:1"], ["--redis", "redis://h:1/x"],
                 ["--redis-prefix", ""], ["--redis-prefix", "a b"],
                 ["--redis-timeout", "10"]):
        p = subprocess.run([gale_binary] + args, capture_output=True, timeout=10)
        assert p.returncode == 2, (args, p.stderr)
        assert b"gale-broker:" in p.stderr


def test_cluster_metrics_and_healthz(redis, make_broker, topic):
    a, b = cluster(make_broker, [redis.url], n=2)

    async def main():
        s = await connect(b.url, JSON)
        p = await connect(a.url, JSON)
        await s.sub(topic + ".m")
        for i in range(5):
            await p.pub(topic + ".m", i)
        await settle(s)
        ma, mb = a.metrics(), b.metrics()
        assert ma["gale_redis_publishes_total"] == 5
        assert mb["gale_redis_messages_received_total"] >= 5
        assert ma["#TYPE gale_redis_connected"] == "gauge"
        assert ma["gale_redis_connected"] == 1
        h = b.healthz()
        assert h["status"] == "ok" and h["redis"]["state"] == "up"
        await s.close()
        await p.close()
    run(main())
