"""Cluster: several gale-broker processes fanning out through real redis-server processes.

Each test starts its own redis-server (Debian's, on a free loopback port, no persistence)
and three brokers with --redis. Checked: cross-node delivery exactly once per connection,
the publisher's echo once, per-publisher order across nodes, encodings across nodes,
interest-based subscriptions (PUBSUB CHANNELS / NUMSUB / NUMPAT on Redis), release on
unsub and disconnect, two shards, Redis killed (SIGKILL) and restarted under traffic, and
Redis authentication (requirepass, an ACL user, percent-encoded passwords, a wrong password
recovering when Redis's password is changed at runtime; the password never shown), and host
names in --redis: resolved off the loop (a resolver that never answers does not freeze the
broker), an unresolvable name keeping its shard down.
"""
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from galetest import (HOST, JSON, MSGPACK, Broker, RawWS, connect, free_port, http_get,
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
    """One redis-server process on 127.0.0.1.

    args: extra redis-server arguments (e.g. --requirepass PW, --user NAME on >PW ...);
    auth: what cmd() sends as AUTH first, (password,) or (user, password), or None."""

    def __init__(self, logdir, port=None, args=(), auth=None):
        self.logdir = logdir
        self.port = port or free_port()
        self.args = list(args)
        self.auth = auth
        self.proc = None
        self.logpath = os.path.join(logdir, "redis-%d.log" % self.port)

    def start(self, timeout=10.0):
        with open(self.logpath, "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--save", "", "--appendonly", "no", "--port", str(self.port),
                 "--bind", "127.0.0.1"] + self.args,
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
            with s.makefile("rb") as f:
                if self.auth:
                    s.sendall(_resp_encode(("AUTH",) + tuple(self.auth)))
                    _resp_read(f)
                s.sendall(_resp_encode(args))
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

    def url_with(self, userinfo):
        """The URL with credentials: userinfo is ':PASSWORD' or 'USER:PASSWORD' (encoded)."""
        return "redis://%s@127.0.0.1:%d" % (userinfo, self.port)

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

    def factory(port=None, args=(), auth=None):
        r = Redis(logdir, port, args, auth).start()
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
    # One loop each: the SUBSCRIBEs counted below are a node's, and with several loops every
    # loop is a node of its own on the bus (s1 and s2 could land on two of them).
    a, b, c = cluster(make_broker, [redis.url], extra=["--loops", "1"])
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
        assert wait_for(lambda: redis.numsub(chan) == 1)   # the ack does not wait for Redis
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
        # Each topic once. Across topics no order: they come over two Redis connections.
        assert sorted(m["data"] for m in got_s) == list(range(len(topics)))
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
        # Every loop of a broker reconnects on its own schedule: an idle one may come back
        # after the busy one (a broker is "ok" once all of its loops are).
        assert wait_for(lambda: a.healthz()["status"] == "ok", 5), a.healthz()
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
                 ["--redis-timeout", "10"],
                 # Credentials: empty password, bad escape, a user without a password, a
                 # good password on a bad URL, too long a --redis-password.
                 ["--redis", "redis://:@h:1"], ["--redis", "redis://:hunter2%zz@h:1"],
                 ["--redis", "redis://gale@h:1"], ["--redis", "redis://gale:hunter2@h"],
                 ["--redis", "redis://:hunter2@h:1,redis://:hunter2@h:1"],
                 ["--redis", "redis://h:1", "--redis-password", "hunter2" * 80]):
        p = subprocess.run([gale_binary] + args, capture_output=True, timeout=10)
        assert p.returncode == 2, (args, p.stderr)
        assert b"gale-broker:" in p.stderr
        assert b"hunter2" not in p.stderr, p.stderr   # never echo a password


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


# ---------------------------------------------------------------------------------------
# Redis authentication
# ---------------------------------------------------------------------------------------

def assert_secret_hidden(brokers, *secrets):
    """No password, raw or percent-encoded, in a broker's log, /metrics or /healthz."""
    for b in brokers:
        shown = {"log": b.log_text().encode()}
        for path in ("/metrics", "/healthz"):
            st, _, body = http_get(b.port, path)
            assert st == 200
            shown[path] = body
        for secret in secrets:
            for form in {secret, urllib.parse.quote(secret, safe="")}:
                for where, text in shown.items():
                    assert form.encode() not in text, "password shown in %s of %s" % (where, b.logpath)


async def cross_node_round_trip(a, b, topic):
    """A sub on b hears a pub on a (through Redis), and the reverse."""
    pa = await connect(a.url, JSON)
    sb = await connect(b.url, MSGPACK)
    await sb.sub(topic + ".x")
    await pa.sub(topic + ".y")
    await pa.pub(topic + ".x", {"n": 1})
    await sb.pub(topic + ".y", "back")
    got_b, got_a = await settle(sb, pa)
    assert got_b == [{"op": "msg", "topic": topic + ".x", "data": {"n": 1}}]
    assert got_a == [{"op": "msg", "topic": topic + ".y", "data": "back"}]
    await pa.close()
    await sb.close()


def test_password_cross_node_and_reconnect(redis_factory, make_broker, topic):
    pw = "Pw-" + topic
    r = redis_factory(args=["--requirepass", pw], auth=(pw,))
    a, b = cluster(make_broker, [r.url_with(":" + pw)], n=2)
    assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)))
    run(cross_node_round_trip(a, b, topic))
    # Every connection to Redis is authenticated as the default user.
    clients = r.cmd("CLIENT", "LIST").decode()
    assert clients.count("user=default") >= 5   # 2 x (sub + pub) + this one
    # Redis drops every broker connection (both kinds) while b holds a subscription: each
    # is made again, AUTH first, and the subscription is replayed after it.

    async def across_reconnect():
        s = await connect(b.url, JSON)
        p = await connect(a.url, JSON)
        await s.sub(topic + ".kept")
        assert r.cmd("CLIENT", "KILL", "TYPE", "pubsub") == 1      # b's subscribe context
        assert r.cmd("CLIENT", "KILL", "TYPE", "normal") >= 2      # a's (b dropped its own)
        assert wait_for(lambda: all(x.metrics()["gale_redis_reconnects_total"] >= 1
                                    and x.healthz()["status"] == "ok" for x in (a, b)), 5)
        assert wait_for(lambda: r.numsub(PREFIX + topic + ".kept") == 1, 5)
        await p.pub(topic + ".kept", "after")
        assert (await settle(s))[0] == [{"op": "msg", "topic": topic + ".kept", "data": "after"}]
        await s.close()
        await p.close()
    run(across_reconnect())
    run(cross_node_round_trip(a, b, topic + "again"))
    assert b.metrics()['gale_redis_shard_auth_error{shard="127.0.0.1:%d/0"}' % r.port] == 0
    assert "authenticated" in a.log_text()
    assert "authentication failed" not in a.log_text()
    assert_secret_hidden([a, b], pw)


def test_wrong_password_stays_down_then_recovers(redis_factory, make_broker, topic):
    right, wrong = "right-" + topic, "wrong-" + topic
    r = redis_factory(args=["--requirepass", right], auth=(right,))
    b = make_broker(["--redis", r.url_with(":" + wrong), "--node-id", "w"])
    shard = '{shard="127.0.0.1:%d/0"}' % r.port

    def down():
        h = b.healthz()
        return (h["status"] == "degraded" and h["redis"]["state"] == "down"
                and b.metrics()["gale_redis_shard_auth_error" + shard] == 1)
    assert wait_for(down, 5)

    async def refused():
        c = await connect(b.url, JSON)
        resp = await c.request({"op": "pub", "topic": topic, "data": 1})
        assert resp["op"] == "err" and resp["code"] == "unavailable", resp
        resp = await c.request({"op": "sub", "topic": topic + ".s"})
        assert resp["op"] == "err" and resp["code"] == "unavailable", resp
        await c.close()
    run(refused())
    # Retried with the backoff, but logged once: not once per attempt.
    t0 = time.monotonic()
    assert wait_for(lambda: b.metrics()["gale_redis_connect_failures_total"] >= 4, 5)
    log = b.log_text()
    fails = [line for line in log.splitlines() if "authentication failed" in line]
    assert len(fails) == 1, fails
    assert "WRONGPASS" in fails[0] and " ERROR " in fails[0], fails
    m = b.metrics()
    assert m["gale_redis_connected"] == 0 and m["gale_redis_shard_up" + shard] == 0
    assert_secret_hidden([b], wrong, right)
    # Redis's password becomes the configured one: the next retry succeeds, no restart.
    pid = b.pid
    assert r.cmd("CONFIG", "SET", "requirepass", wrong) == "OK"
    r.auth = (wrong,)
    assert wait_for(lambda: b.healthz()["status"] == "ok", 10), b.log_tail()
    assert b.pid == pid and b.alive()
    assert time.monotonic() - t0 < 15
    assert b.metrics()["gale_redis_shard_auth_error" + shard] == 0

    async def works():
        c = await connect(b.url, JSON)
        await c.sub(topic + ".s")
        assert r.channels(PREFIX + topic) == [PREFIX + topic + ".s"]
        await c.pub(topic + ".s", 2)
        assert [m["data"] for m in await c.sync()] == [2]
        await c.close()
    run(works())
    assert_secret_hidden([b], wrong, right)


def test_acl_user_and_password_from_environment(redis_factory, make_broker, topic):
    user, pw = "gale", "acl-" + topic
    r = redis_factory(args=["--user", user, "on", ">" + pw, "~*", "&*", "+@all",
                            "--user", "default", "off"], auth=(user, pw))
    a = make_broker(["--redis", r.url_with(user + ":" + pw), "--node-id", "a"])
    # The password from GALE_REDIS_PASSWORD, the user from the URL.
    b = make_broker(["--node-id", "b"], env={"GALE_REDIS_URL": r.url_with(user),
                                             "GALE_REDIS_PASSWORD": pw})
    # GALE_REDIS_PASSWORD replaces the URL's password.
    c = make_broker(["--node-id", "c"], env={"GALE_REDIS_URL": r.url_with(user + ":nope"),
                                             "GALE_REDIS_PASSWORD": pw})
    assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b, c)), 5)
    run(cross_node_round_trip(a, b, topic))
    run(cross_node_round_trip(c, a, topic + "c"))
    clients = r.cmd("CLIENT", "LIST").decode()
    assert clients.count("user=gale") >= 7   # 3 x (sub + pub) + this one
    assert "as user gale" in a.log_text()
    # A wrong user: down, logged as an authentication failure.
    d = make_broker(["--redis", r.url_with("nobody:" + pw), "--node-id", "d"])
    assert wait_for(lambda: d.healthz()["status"] == "degraded"
                    and "authentication failed" in d.log_text(), 5)
    assert_secret_hidden([a, b, c, d], pw)


def test_percent_encoded_password(redis_factory, make_broker, topic):
    pw = "p@ss:w/rd%1 #?" + topic
    r = redis_factory(args=["--requirepass", pw], auth=(pw,))
    enc = urllib.parse.quote(pw, safe="")
    assert "%40" in enc and "%3A" in enc
    a, b = cluster(make_broker, [r.url_with(":" + enc)], n=2)
    # The raw '@' and ':' are taken too (the credentials end at the last '@').
    raw = "p@ss:w" + topic
    r.cmd("CONFIG", "SET", "requirepass", raw)
    r.auth = (raw,)
    c = make_broker(["--redis", "redis://:%s@127.0.0.1:%d" % (raw, r.port), "--node-id", "c"])
    assert wait_for(lambda: c.healthz()["status"] == "ok", 5)
    # a and b stay authenticated on their connections (Redis keeps them).
    assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)), 5)
    run(cross_node_round_trip(a, b, topic))
    run(cross_node_round_trip(b, c, topic + "c"))
    assert_secret_hidden([a, b, c], pw, raw)


def test_no_password_given_to_a_protected_redis(redis_factory, make_broker, topic):
    pw = "needed-" + topic
    r = redis_factory(args=["--requirepass", pw], auth=(pw,))
    b = make_broker(["--redis", r.url, "--node-id", "n"])
    assert wait_for(lambda: b.healthz()["status"] == "degraded"
                    and "authentication failed" in b.log_text(), 5)
    line = [x for x in b.log_text().splitlines() if "authentication failed" in x][0]
    assert "NOAUTH" in line and "requires a password" in line
    assert b.metrics()['gale_redis_shard_auth_error{shard="127.0.0.1:%d/0"}' % r.port] == 1


def test_password_given_to_redis_without_one_is_a_warning(redis, make_broker, topic):
    # Decided: a warning, the shard is up (the broker may get its password before Redis
    # does; CONFIG SET requirepass then keeps its connections).
    pw = "unneeded-" + topic
    a, b = cluster(make_broker, [redis.url_with(":" + pw)], n=2)
    assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)), 5)
    run(cross_node_round_trip(a, b, topic))
    warn = [x for x in a.log_text().splitlines() if "this Redis has none" in x]
    assert len(warn) == 1, warn                   # once, not per context or connection
    assert "authentication failed" not in a.log_text()
    # Redis gets that password at runtime: nothing changes for the brokers.
    assert redis.cmd("CONFIG", "SET", "requirepass", pw) == "OK"
    redis.auth = (pw,)
    run(cross_node_round_trip(a, b, topic + "set"))
    assert all(x.metrics()["gale_redis_reconnects_total"] == 0 for x in (a, b))
    assert_secret_hidden([a, b], pw)


# ---------------------------------------------------------------------------------------
# Host names: resolved asynchronously (uv_getaddrinfo), never on the broker's loop
# ---------------------------------------------------------------------------------------
def test_host_name_resolves(redis, make_broker, topic):
    a, b = cluster(make_broker, ["redis://localhost:%d" % redis.port], n=2)
    run(cross_node_round_trip(a, b, topic))
    assert b'"state":"up"' in http_get(a.port, "/healthz")[2]
    for x in (a, b):
        # The shard keeps the name it was given, in logs and metrics.
        assert "redis localhost:%d/0: connected" % redis.port in x.log_text()
        assert x.metrics()['gale_redis_shard_up{shard="localhost:%d/0"}' % redis.port] == 1
        assert "cannot resolve" not in x.log_text()


class FakeDNS:
    """A DNS server on a random 127.x.y.z:53 (UDP): answers every query NXDOMAIN, or (answer=
    False) none at all, counting them. resolv_conf is a resolv.conf naming it."""

    def __init__(self, logdir, answer):
        self.answer = answer
        self.queries = 0
        rnd = int.from_bytes(os.urandom(3), "big")
        self.addr = "127.%d.%d.%d" % (rnd >> 16 & 255, rnd >> 8 & 255, 2 + (rnd & 255) % 250)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.addr, 53))
        self.sock.settimeout(0.1)
        self.resolv_conf = os.path.join(logdir, "resolv-%s.conf" % self.addr)
        with open(self.resolv_conf, "w") as f:
            f.write("nameserver %s\noptions timeout:2 attempts:1\n" % self.addr)
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.done:
            try:
                q, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            if self.answer and len(q) >= 12:
                # Same id and question, QR|RD|RA, rcode 3 (NXDOMAIN), no records.
                self.sock.sendto(q[:2] + b"\x81\x83" + q[4:6] + b"\0\0\0\0\0\0" + q[12:], peer)

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


def _namespace_problem():
    """Why a broker cannot run under its own resolv.conf here (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (a private mount namespace replaces /etc/resolv.conf)"
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount --bind /etc/resolv.conf /etc/resolv.conf"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if probe.returncode != 0:
        return "unshare --mount / mount --bind not permitted: %s" % probe.stderr.decode().strip()
    return None


class NamespacedBroker(Broker):
    """A broker in a private mount namespace whose /etc/resolv.conf is resolv_conf."""

    def __init__(self, logdir, resolv_conf, **kw):
        super().__init__(logdir, **kw)
        self.resolv_conf = resolv_conf

    def command(self, port):
        cmd, cwd = super().command(port)
        return (["unshare", "--mount", "sh", "-c",
                 'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv_conf] + cmd, cwd)


@pytest.fixture
def dns_broker(logdir):
    """dns_broker(answer, args): a broker whose resolver is a FakeDNS; stopped (exit 0,
    within 10 s: a resolution under way is waited for) at teardown. Skips where a mount
    namespace cannot be made."""
    why = _namespace_problem()
    if why:
        pytest.skip(why)
    made = []

    def factory(answer, args):
        dns = FakeDNS(logdir, answer)
        b = NamespacedBroker(logdir, dns.resolv_conf, args=args,
                             env={"RES_OPTIONS": "timeout:2 attempts:1"}, name="dns-broker")
        made.append((b, dns))
        b.start(timeout=20)
        return b, dns

    yield factory
    try:
        for b, _ in made:
            assert b.stop(timeout=10) == 0, b.log_tail()
            assert "handles still open" not in b.log_text()
            assert not b.sanitizer_errors(), b.log_tail()
    finally:
        for _, dns in made:
            dns.close()


def _ping_rtts(port, seconds):
    """Round trips (s) of gale pings on one connection, back to back for `seconds`."""
    ws = RawWS(port, timeout=10)
    rtts, end, n = [], time.monotonic() + seconds, 0
    try:
        while time.monotonic() < end:
            n += 1
            t = time.monotonic()
            ws.ping_sync(n, timeout=10)
            rtts.append(time.monotonic() - t)
            time.sleep(0.02)
    finally:
        ws.close()
    return rtts


def test_unresolvable_host_stays_down_and_serves(dns_broker, topic):
    host = "no-such-host.invalid"
    b, dns = dns_broker(True, ["--redis", "redis://%s:6379" % host, "--redis-timeout", "500"])
    assert wait_for(lambda: b.metrics()["gale_redis_connect_failures_total"] >= 4, 10)
    assert dns.queries >= 4   # each attempt asks the resolver again

    async def main():
        c = await connect(b.url, JSON)
        r = await c.request({"op": "pub", "topic": topic, "data": 1})
        assert r["op"] == "err" and r["code"] == "unavailable", r
        assert await c.sync() == []
        await c.close()
    run(main())
    h = b.healthz()
    assert h["status"] == "degraded" and h["redis"]["state"] == "down", h
    assert b.metrics()['gale_redis_shard_up{shard="%s:6379/0"}' % host] == 0
    assert max(_ping_rtts(b.port, 0.5)) < 0.25
    lines = [l for l in b.log_text().splitlines() if "cannot resolve" in l]
    assert len(lines) == 1, b.log_tail()   # once, not once per retry
    assert "redis %s:6379/0: cannot resolve %s: " % (host, host) in lines[0], lines[0]


def test_silent_resolver_does_not_freeze_the_broker(dns_broker, topic):
    # A resolver that never answers: each getaddrinfo blocks for RES_OPTIONS's 2 s. On the
    # loop that froze every client for seconds per attempt; off it, pings stay fast.
    host = "gale-dns-test.invalid"
    b, dns = dns_broker(False, ["--redis", "redis://%s:6379" % host, "--redis-timeout", "1000"])
    rtts = _ping_rtts(b.port, 3.0)
    assert dns.queries >= 1, "the broker never asked the fake resolver"
    assert len(rtts) >= 20 and max(rtts) < 0.25, (len(rtts), max(rtts), b.log_tail())
    assert b.healthz()["status"] == "degraded"
    assert wait_for(lambda: "cannot resolve %s: timed out" % host in b.log_text(), 5), \
        b.log_tail()
