"""History, recovery, hist and mid in a cluster (PROTOCOL.md "Additions"): several real
gale-broker processes with --redis sharing a real redis-server (started here, no
persistence), real WebSocket clients (JSON and MessagePack).

Checked: one stream position per topic for the whole cluster (publishes on several
brokers get consecutive offsets of one epoch; exact and pattern subscribers on every
broker get each message once, in offset order, with ep/off; pub acks carry ep/off; the
hash and stream in Redis); the position in a sub ack is exact while another broker
publishes; recovery on another broker than the one a client left (and its refusals: above
the top, another epoch, no history, over --recovery-max); clients of a broker killed with
SIGKILL recovering on another; 20 clients reconnecting with since while a publisher
publishes 300 messages (each ends with exactly 1..300); Redis restarted empty (meanwhile
unavailable; then a new epoch, recovered false, offsets from 1); mid deduplicated across
brokers (with and without history; a publish re-sent on another broker after a lost ack);
hist on a broker that never saw the topic; binary data across brokers and encodings; two
shards; a reconnect storm of 200 subs with since sharing a few reads (Redis INFO
commandstats), 20 of them leaving mid-read; a gap in a broker's pub/sub feed (CLIENT KILL
TYPE pubsub) filled from the stream; TTL in a cluster (recovery and hist).

Broker choices assumed (docs, beyond PROTOCOL.md): in a cluster an epoch is 16 hex digits
(the scripts' random epoch); the ack of a pattern sub carries no position; a dup ack
carries "dup": true and, on a topic with history, "off" (no "ep"); the topic's Redis keys
expire TTL after its last publish (then a read gives a new epoch).
"""
import asyncio
import base64
import json
import re
import signal
import time

import msgpack
import pytest
import websockets.exceptions

import test_cluster
from galetest import JSON, MSGPACK, OP_BINARY, OP_TEXT, Broker, RawWS, connect, run
# Reused fixtures and helpers of the cluster tests (redis-server on a free loopback port).
from test_cluster import cluster, redis, redis_factory, wait_for  # noqa: F401

pytestmark = test_cluster.pytestmark

EP_RE = re.compile(r"^[0-9a-f]{16}$")

# h.> keeps 1000 messages, ttl.> 100 for 2 s; anything else has no history.
HIST = ["--history", "h.>=1000", "--history", "ttl.>=100/2s"]


def hist_cluster(make_broker, r, n=2, extra=()):
    """n brokers (node1..) on Redis r with the HIST rules, each up when returned."""
    bs = cluster(make_broker, [r.url], n, HIST + list(extra))
    assert wait_for(lambda: all(b.healthz()["status"] == "ok" for b in bs), 10)
    return bs


def msg(t, ep, off, data):
    return {"op": "msg", "topic": t, "ep": ep, "off": off, "data": data}


def offs(msgs):
    return [m.get("off") for m in msgs]


def evalsha_calls(r):
    info = r.cmd("INFO", "commandstats").decode()
    m = re.search(r"^cmdstat_evalsha:calls=(\d+)", info, re.M)
    return int(m.group(1)) if m else 0


async def until_reply(c, timeout=10.0, limit=5000):
    """Read until a message that is not a `msg`; return (msgs before it, that one)."""
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


async def sub_since(c, t, ep, off):
    rid = c.next_id()
    await c.send({"op": "sub", "topic": t, "since": {"ep": ep, "off": off}, "id": rid})
    msgs, reply = await until_reply(c)
    return rid, msgs, reply


async def read_until_off(c, t, last, timeout=10.0, limit=5000):
    """Read c's messages until the msg of t at offset `last`; returns all read (that one
    included). Fails at once on a msg of t above `last`, or when time runs out."""
    got = []
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            m = await c.recv(left)
        except AssertionError:
            break
        got.append(m)
        if m.get("op") == "msg" and m.get("topic") == t:
            assert m.get("off", 0) <= last, "offset above %d: %r (offsets read: %r)" % (
                last, m, offs(got))
            if m.get("off") == last:
                return got
    raise AssertionError("no msg of %s at off %d within %.1fs; read %d: offsets %r" % (
        t, last, timeout, len(got), offs(got)))


async def close_all(*cs):
    for c in cs:
        await c.close()


class Follower:
    """One subscriber of topic t that may leave and come back with since: every msg it
    ever received, across its connections, in order."""

    def __init__(self, name, t, ep):
        self.name, self.t, self.ep = name, t, ep
        self.msgs = []
        self.c = None
        self.resumes = []   # acks of its subs with since

    @property
    def last(self):
        return self.msgs[-1]["off"] if self.msgs else 0

    async def attach(self, url, enc):
        """Connect to url and sub (with since when it has a position)."""
        self.c = await connect(url, enc)
        rid = self.c.next_id()
        await self.c.send({"op": "sub", "topic": self.t, "since": {"ep": self.ep,
                                                                    "off": self.last},
                           "id": rid})
        msgs, ack = await until_reply(self.c)
        self.msgs += msgs
        self.resumes.append(ack)
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": self.ep,
                       "off": self.last}, (self.name, ack, offs(msgs))

    async def take(self, until, timeout=10.0):
        """Read until the last offset received is >= until (bounded)."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if self.last >= until:
                return
            left = deadline - time.monotonic()
            assert left > 0, "%s: stuck at off %d, waiting for %d" % (self.name, self.last, until)
            m = await self.c.recv(left)
            assert m.get("op") == "msg", (self.name, m)
            self.msgs.append(m)

    def check(self, expected):
        """expected: the full list of msgs 1..N."""
        got = offs(self.msgs)
        assert got == list(range(1, len(expected) + 1)), (
            "%s: offsets %r" % (self.name, describe(got, len(expected))))
        assert self.msgs == expected, self.name


def describe(got, n, first=1):
    """A short account of what is wrong with an offset sequence meant to be first..n."""
    seen = set(got)
    dups = sorted({o for o in got if got.count(o) > 1})
    missing = sorted(set(range(first, n + 1)) - seen)
    disorder = [(a, b) for a, b in zip(got, got[1:]) if b <= a][:5]
    return {"count": len(got), "missing": missing[:40], "n_missing": len(missing),
            "duplicates": dups[:20], "out_of_order": disorder}


# ---------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------

def test_positions_are_cluster_wide(redis, make_broker, topic):
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s.x" % topic

    async def main():
        ea = await connect(a.url, JSON)          # exact, A, JSON
        pa = await connect(a.url, MSGPACK)       # pattern, A, msgpack
        eb = await connect(b.url, MSGPACK)       # exact, B, msgpack
        pb = await connect(b.url, JSON)          # pattern AND exact, B, JSON
        r = await ea.request({"op": "sub", "topic": t, "id": 1})
        ep = r.get("ep")
        assert isinstance(ep, str) and EP_RE.match(ep), r
        assert r == {"op": "ack", "id": 1, "ep": ep, "off": 0}
        assert await eb.request({"op": "sub", "topic": t, "id": 2}) == \
            {"op": "ack", "id": 2, "ep": ep, "off": 0}
        assert await pa.request({"op": "sub", "topic": "h.%s.*" % topic, "id": 3}) == \
            {"op": "ack", "id": 3}
        assert await pb.request({"op": "sub", "topic": "h.%s.>" % topic, "id": 4}) == \
            {"op": "ack", "id": 4}
        assert await pb.request({"op": "sub", "topic": t, "id": 5}) == \
            {"op": "ack", "id": 5, "ep": ep, "off": 0}
        puba = await connect(a.url, JSON)
        pubb = await connect(b.url, MSGPACK)
        data = {}
        # One at a time, alternating brokers: consecutive offsets, one epoch.
        for i in range(20):
            p = puba if i % 2 == 0 else pubb
            d = "s%d" % i if i % 3 else {"n": i, "from": "AB"[i % 2]}
            r = await p.request({"op": "pub", "topic": t, "data": d, "id": 100 + i})
            assert r == {"op": "ack", "id": 100 + i, "ep": ep, "off": i + 1}, r
            data[i + 1] = d

        # Pipelined from both brokers at once: every offset 21..100 given once, each
        # publisher's in its own order.
        async def burst(p, tag, n):
            ids = {}
            for k in range(n):
                rid = p.next_id()
                ids[rid] = "%s%d" % (tag, k)
                await p.send({"op": "pub", "topic": t, "data": ids[rid], "id": rid})
            acks = {}
            for _ in range(n):
                r = await p.recv(10)
                assert r.get("op") == "ack" and r.get("ep") == ep and r.get("id") in ids, r
                assert r == {"op": "ack", "id": r["id"], "ep": ep, "off": r["off"]}, r
                acks[r["id"]] = r["off"]
            assert sorted(acks) == sorted(ids)
            got = [acks[rid] for rid in ids]           # in send order
            assert got == sorted(got), "%s: offsets not increasing in send order" % tag
            return {acks[rid]: ids[rid] for rid in ids}

        da, db = await asyncio.gather(burst(puba, "a", 40), burst(pubb, "b", 40))
        assert not set(da) & set(db) and sorted(set(da) | set(db)) == list(range(21, 101))
        data.update(da)
        data.update(db)
        expected = [msg(t, ep, k, data[k]) for k in range(1, 101)]
        for name, c in (("exact A json", ea), ("pattern A msgpack", pa),
                        ("exact B msgpack", eb), ("pattern+exact B json", pb)):
            got = await read_until_off(c, t, 100)
            assert offs(got) == list(range(1, 101)), (name, describe(offs(got), 100))
            assert got == expected, name
            await c.expect_silence()
        # The publishers got nothing but their acks.
        await puba.expect_silence()
        await pubb.expect_silence()
        # What Redis holds (--redis-prefix gale:): the position and the stream.
        assert redis.cmd("HMGET", "gale:h:" + t, "ep", "off") == [ep.encode(), b"100"]
        assert redis.cmd("XLEN", "gale:s:" + t) == 100
        assert redis.cmd("XRANGE", "gale:s:" + t, "-", "+", "COUNT", 1)[0][0] == b"1-0"
        await close_all(ea, pa, eb, pb, puba, pubb)
    run(main())
    assert a.metrics()["gale_redis_publishes_total"] == 50
    assert b.metrics()["gale_redis_publishes_total"] == 50


# ---------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------

def test_sub_ack_position_is_exact_while_publishing(redis, make_broker, topic):
    # A sub without since answers the current position X; what follows is exactly X+1..,
    # even while another broker publishes. Fresh topics too: ack off 0, first msg off 1.
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic
    total = 200

    async def main():
        p = await connect(a.url, JSON)
        for i in range(15):                        # fresh topics, sub on B, pub on A at once
            ft = "h.%s.fresh%d" % (topic, i)
            s = await connect(b.url, (JSON, MSGPACK)[i % 2])
            r = await s.request({"op": "sub", "topic": ft, "id": 1})
            ep = r.get("ep")
            assert r == {"op": "ack", "id": 1, "ep": ep, "off": 0} and EP_RE.match(ep), r
            assert await p.request({"op": "pub", "topic": ft, "data": i, "id": 2}) == \
                {"op": "ack", "id": 2, "ep": ep, "off": 1}
            assert await s.recv() == msg(ft, ep, 1, i)
            await s.close()
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        progress = {"off": 1}

        async def publisher():
            for k in range(2, total + 1):
                r = await p.request({"op": "pub", "topic": t, "data": k})
                assert r["off"] == k
                progress["off"] = k
                await asyncio.sleep(0.003)

        async def joiner(i):
            for _ in range(2000):
                if progress["off"] >= 8 * i:
                    break
                await asyncio.sleep(0.003)
            s = await connect((a.url, b.url)[i % 2], (JSON, MSGPACK)[i % 2])
            r = await s.request({"op": "sub", "topic": t, "id": 1})
            x = r.get("off")
            assert r == {"op": "ack", "id": 1, "ep": ep, "off": x}, r
            got = await read_until_off(s, t, total, timeout=20) if x < total else []
            assert got == [msg(t, ep, k, k) for k in range(x + 1, total + 1)], \
                (i, x, describe(offs(got), total, x + 1))
            await s.expect_silence()
            await s.close()

        await asyncio.gather(publisher(), *[joiner(i) for i in range(20)])
        await p.close()
    run(main(), timeout=60)


@pytest.mark.parametrize("enc", [JSON, MSGPACK])
def test_recovery_on_another_broker(redis, make_broker, topic, enc):
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic

    async def main():
        c = await connect(a.url, enc)
        pa = await connect(a.url, JSON)
        pb = await connect(b.url, MSGPACK)
        ep = (await c.sub(t))["ep"]
        data = {}
        for k in range(1, 6):
            r = await pa.request({"op": "pub", "topic": t, "data": [k]})
            assert r["off"] == k and r["ep"] == ep
            data[k] = [k]
        got = await read_until_off(c, t, 5)
        assert got == [msg(t, ep, k, data[k]) for k in range(1, 6)]
        await c.close()
        # Missed: 6..13, published on A and B.
        for k in range(6, 14):
            r = await (pa if k % 2 else pb).request({"op": "pub", "topic": t, "data": {"k": k}})
            assert r["off"] == k and r["ep"] == ep
            data[k] = {"k": k}
        m0 = b.metrics()
        c2 = await connect(b.url, enc)
        rid, msgs, ack = await sub_since(c2, t, ep, 5)
        assert msgs == [msg(t, ep, k, data[k]) for k in range(6, 14)], offs(msgs)
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 13}
        # Live continues at 14: no gap, no duplicate.
        for k in range(14, 20):
            r = await (pb if k % 2 else pa).request({"op": "pub", "topic": t, "data": k})
            assert r["off"] == k
            data[k] = k
        got = await read_until_off(c2, t, 19)
        assert got == [msg(t, ep, k, data[k]) for k in range(14, 20)]
        await c2.expect_silence()
        # Nothing missed: recovered true, nothing replayed, off = N.
        c3 = await connect(b.url, enc)
        rid, msgs, ack = await sub_since(c3, t, ep, 19)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep,
                                      "off": 19}
        m1 = b.metrics()
        assert m1['gale_recoveries_total{recovered="true"}'] - \
            m0['gale_recoveries_total{recovered="true"}'] == 2
        assert m1["gale_messages_replayed_total"] - m0["gale_messages_replayed_total"] == 8
        # Above the top, and another epoch: recovered false with the current position.
        c4 = await connect(a.url, enc)
        rid, msgs, ack = await sub_since(c4, t, ep, 25)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep,
                                      "off": 19}
        rid, msgs, ack = await sub_since(c4, "h.%s.other" % topic, ep, 0)
        assert msgs == [] and ack["recovered"] is False and ack["off"] == 0
        assert ack["ep"] != ep and EP_RE.match(ack["ep"]), ack
        # A topic without history: recovered false, no position.
        rid, msgs, ack = await sub_since(c4, "nohist.%s" % topic, ep, 0)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False}
        await close_all(c2, c3, c4, pa, pb)
    run(main())


def test_broker_killed_clients_recover_on_another(redis, make_broker, logdir, topic):
    (b,) = hist_cluster(make_broker, redis, 1)
    victim = Broker(logdir, args=["--redis", redis.url, "--node-id", "victim"] + HIST,
                    name="victim").start()
    t = "h.%s" % topic
    total = 200

    async def main():
        pub = await connect(b.url, JSON)
        ep = (await pub.request({"op": "sub", "topic": t}))["ep"]
        await pub.unsub(t)
        fs = []
        for i in range(6):
            f = Follower("client%d" % i, t, ep)
            await f.attach(victim.url, (JSON, MSGPACK)[i % 2])
            fs.append(f)
        data = {}
        reached = asyncio.Event()
        killed_at = []

        async def publisher():
            for k in range(1, total + 1):
                r = await pub.request({"op": "pub", "topic": t, "data": "d%d" % k})
                assert r == {"op": "ack", "id": r["id"], "ep": ep, "off": k}, r
                data[k] = "d%d" % k
                if k == 60:
                    reached.set()
                await asyncio.sleep(0.008)

        async def killer():
            await reached.wait()
            victim.send_signal(signal.SIGKILL)
            killed_at.append(len(data))

        async def follow(f, i):
            # Live on the victim until its connection dies, then back on b with since.
            for _ in range(2):
                try:
                    await f.take(total, timeout=30)
                    return
                except websockets.exceptions.ConnectionClosed:
                    await asyncio.sleep(0.01 * i)
                    await f.attach(b.url, (JSON, MSGPACK)[i % 2])
            raise AssertionError("%s: its connection closed twice" % f.name)

        await asyncio.gather(publisher(), killer(), *[follow(f, i) for i, f in enumerate(fs)])
        expected = [msg(t, ep, k, data[k]) for k in range(1, total + 1)]
        for f in fs:
            assert len(f.resumes) == 2, (f.name, f.resumes)   # the first sub and the resume
            f.check(expected)
            await f.c.expect_silence()
        assert killed_at and killed_at[0] < total
        await close_all(pub, *[f.c for f in fs])
    try:
        run(main(), timeout=60)
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        victim.kill()


def test_recovery_while_publishing_continuously(redis, make_broker, topic):
    a, b, c = hist_cluster(make_broker, redis, 3)
    t = "h.%s" % topic
    total = 300
    urls = [a.url, b.url]

    async def main():
        pub = await connect(c.url, MSGPACK)
        ep = (await pub.request({"op": "sub", "topic": t}))["ep"]
        await pub.unsub(t)
        data = {}
        progress = {"off": 0}
        # 15 clients live from the start, each leaving at its own offset and coming back
        # on the other broker; 5 more arriving late with since 0 (all from history).
        fs = [Follower("c%d" % i, t, ep) for i in range(20)]
        for i, f in enumerate(fs[:15]):
            await f.attach(urls[i % 2], (JSON, MSGPACK)[i % 2])

        async def publisher():
            for k in range(1, total + 1):
                data[k] = {"k": k, "s": "x" * (k % 7)}
                r = await pub.request({"op": "pub", "topic": t, "data": data[k]})
                assert r == {"op": "ack", "id": r["id"], "ep": ep, "off": k}, r
                progress["off"] = k
                await asyncio.sleep(0.004)

        async def leaver(i, f):
            stop = 3 + 19 * i               # 3 .. 269
            await f.take(stop)
            await f.c.close()
            await asyncio.sleep(0.02 * (i % 5))
            await f.attach(urls[(i + 1) % 2], (MSGPACK, JSON)[i % 2])
            await f.take(total, timeout=30)

        async def late(i, f):
            when = 40 + 50 * (i - 15)       # 40 .. 240
            for _ in range(3000):
                if progress["off"] >= when:
                    break
                await asyncio.sleep(0.005)
            await f.attach((a.url, b.url, c.url)[i % 3], (JSON, MSGPACK)[i % 2])
            await f.take(total, timeout=30)

        await asyncio.gather(publisher(), *[leaver(i, f) for i, f in enumerate(fs[:15])],
                             *[late(i, f) for i, f in enumerate(fs) if i >= 15])
        expected = [msg(t, ep, k, data[k]) for k in range(1, total + 1)]
        for f in fs:
            f.check(expected)
            await f.c.expect_silence()
        await close_all(pub, *[f.c for f in fs])
    run(main(), timeout=60)


def test_redis_restarted_empty_gives_a_new_epoch(redis, make_broker, topic):
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic

    async def main():
        live = await connect(a.url, JSON)
        ep1 = (await live.sub(t))["ep"]
        p = await connect(b.url, JSON)
        for k in range(1, 4):
            assert (await p.request({"op": "pub", "topic": t, "data": k}))["off"] == k
        assert await read_until_off(live, t, 3) == [msg(t, ep1, k, k) for k in range(1, 4)]
        # Redis loses everything (no persistence): SIGKILL, a new one on the same port.
        redis.kill()
        assert wait_for(lambda: all(x.healthz()["status"] != "ok" for x in (a, b)), 5)
        # Meanwhile: pub, sub with since and hist answer unavailable.
        d = await connect(b.url, JSON)
        r = await d.request({"op": "pub", "topic": t, "data": "lost", "id": 1})
        assert r.get("op") == "err" and r.get("code") == "unavailable" and r.get("id") == 1, r
        r = await d.request({"op": "sub", "topic": t, "since": {"ep": ep1, "off": 3}, "id": 2})
        assert r.get("op") == "err" and r.get("code") == "unavailable" and r.get("id") == 2, r
        r = await d.request({"op": "hist", "topic": t, "id": 3})
        assert r.get("op") == "err" and r.get("code") == "unavailable" and r.get("id") == 3, r
        await d.expect_silence()
        redis.start()
        assert redis.cmd("EXISTS", "gale:s:" + t) == 0          # the stream is gone
        assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)), 10), \
            (a.healthz(), b.healthz())
        # A client resuming its old position: recovered false, a new epoch at 0.
        c = await connect(b.url, MSGPACK)
        rid, msgs, ack = await sub_since(c, t, ep1, 3)
        ep2 = ack.get("ep")
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep2,
                                      "off": 0}, ack
        assert EP_RE.match(ep2) and ep2 != ep1
        # New messages start at 1 of the new epoch, on either broker.
        r = await p.request({"op": "pub", "topic": t, "data": "n1", "id": 7})
        assert r == {"op": "ack", "id": 7, "ep": ep2, "off": 1}
        p2 = await connect(a.url, JSON)
        r = await p2.request({"op": "pub", "topic": t, "data": "n2", "id": 8})
        assert r == {"op": "ack", "id": 8, "ep": ep2, "off": 2}
        assert await read_until_off(c, t, 2) == [msg(t, ep2, 1, "n1"), msg(t, ep2, 2, "n2")]
        # The client that stayed connected through it continues in the new epoch.
        assert await read_until_off(live, t, 2) == [msg(t, ep2, 1, "n1"), msg(t, ep2, 2, "n2")]
        await live.expect_silence()
        await c.expect_silence()
        await d.expect_silence()          # its failed sub registered nothing
        # The new epoch is resumable.
        c2 = await connect(a.url, JSON)
        rid, msgs, ack = await sub_since(c2, t, ep2, 0)
        assert msgs == [msg(t, ep2, 1, "n1"), msg(t, ep2, 2, "n2")]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep2, "off": 2}
        await close_all(live, p, c, p2, c2, d)
    run(main(), timeout=60)


# ---------------------------------------------------------------------------------------
# mid, hist
# ---------------------------------------------------------------------------------------

def test_mid_dedup_across_brokers(redis, make_broker, topic):
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic
    tn = "nohist.%s" % topic

    async def main():
        sa = await connect(a.url, JSON)
        sb = await connect(b.url, MSGPACK)
        psb = await connect(b.url, JSON)
        ep = (await sa.sub(t))["ep"]
        await sb.sub(t)
        await psb.sub("h.>")
        await sa.sub(tn)
        await sb.sub(tn)
        await psb.sub("nohist.*")
        pa = await connect(a.url, JSON)
        pb = await connect(b.url, MSGPACK)
        r = await pa.request({"op": "pub", "topic": t, "data": "x", "mid": "m-1", "id": 1})
        assert r == {"op": "ack", "id": 1, "ep": ep, "off": 1}
        r = await pb.request({"op": "pub", "topic": t, "data": "y", "mid": "m-1", "id": 2})
        assert r == {"op": "ack", "id": 2, "off": 1, "dup": True}
        r = await pb.request({"op": "pub", "topic": t, "data": "z", "id": 3})
        assert r == {"op": "ack", "id": 3, "ep": ep, "off": 2}
        r = await pa.request({"op": "pub", "topic": t, "data": "w", "mid": "m-1", "id": 4})
        assert r == {"op": "ack", "id": 4, "off": 1, "dup": True}
        # Without history: deduplicated across brokers too, no position.
        r = await pa.request({"op": "pub", "topic": tn, "data": 1, "mid": "k", "id": 5})
        assert r == {"op": "ack", "id": 5}
        r = await pb.request({"op": "pub", "topic": tn, "data": 2, "mid": "k", "id": 6})
        assert r.get("dup") is True and r.get("off", 0) == 0 and "ep" not in r, r
        assert r in ({"op": "ack", "id": 6, "dup": True}, {"op": "ack", "id": 6, "dup": True,
                                                           "off": 0})
        r = await pb.request({"op": "pub", "topic": tn, "data": 3, "mid": "k2", "id": 7})
        assert r == {"op": "ack", "id": 7}
        for c in (sa, sb, psb):
            got = await read_until_off(c, t, 2)
            assert got == [msg(t, ep, 1, "x"), msg(t, ep, 2, "z")]
            rest = await c.sync()
            # (the no-history copies may arrive before the sync)
            for _ in range(10):
                if len(rest) >= 2:
                    break
                await asyncio.sleep(0.05)
                rest += await c.sync()
            assert rest == [{"op": "msg", "topic": tn, "data": 1},
                            {"op": "msg", "topic": tn, "data": 3}], rest
        # Each broker counts the duplicates its publishers sent.
        assert a.metrics()["gale_publish_duplicates_total"] == 1
        assert b.metrics()["gale_publish_duplicates_total"] == 2
        # A publisher whose ack is lost (it closes right after sending) re-sends with the
        # same mid on the other broker: each message is delivered exactly once.
        t2 = "h.%s.resend" % topic
        s2 = await connect(b.url, JSON)
        ep2 = (await s2.sub(t2))["ep"]
        for i in range(20):
            q = await connect(a.url, JSON)
            await q.send({"op": "pub", "topic": t2, "data": i, "mid": "r%d" % i, "id": 1})
            await q.ws.close()
            r = await pb.request({"op": "pub", "topic": t2, "data": i, "mid": "r%d" % i,
                                  "id": 2})
            assert r in ({"op": "ack", "id": 2, "ep": ep2, "off": i + 1},
                         {"op": "ack", "id": 2, "off": i + 1, "dup": True}), (i, r)
        got = await read_until_off(s2, t2, 20)
        assert got == [msg(t2, ep2, i + 1, i) for i in range(20)]
        await s2.expect_silence()
        await s2.close()
        h = await connect(b.url)
        r = await h.request({"op": "hist", "topic": t, "id": 9})
        assert r == {"op": "hist", "id": 9, "ep": ep, "off": 2,
                     "msgs": [{"off": 1, "data": "x"}, {"off": 2, "data": "z"}]}
        await close_all(sa, sb, psb, pa, pb, h)
    run(main())


@pytest.mark.parametrize("enc", [JSON, MSGPACK])
def test_hist_on_a_broker_that_never_saw_the_topic(redis, make_broker, topic, enc):
    a, b, c = hist_cluster(make_broker, redis, 3)
    t = "h.%s" % topic
    fresh = "h.%s.fresh" % topic

    async def main():
        p = await connect(a.url, JSON)
        data = {}
        for k in range(1, 13):
            d = {"k": k} if k % 2 else "v%d" % k
            r = await p.request({"op": "pub", "topic": t, "data": d})
            data[k] = d
            ep = r["ep"]
            assert r["off"] == k
        h = await connect(c.url, enc)
        r = await h.request({"op": "hist", "topic": t, "limit": 5, "id": 1})
        assert r == {"op": "hist", "id": 1, "ep": ep, "off": 12,
                     "msgs": [{"off": k, "data": data[k]} for k in range(8, 13)]}
        r = await h.request({"op": "hist", "topic": t, "id": 2})
        assert r == {"op": "hist", "id": 2, "ep": ep, "off": 12,
                     "msgs": [{"off": k, "data": data[k]} for k in range(1, 13)]}
        r = await h.request({"op": "hist", "topic": t, "limit": 1, "id": 3})
        assert r == {"op": "hist", "id": 3, "ep": ep, "off": 12,
                     "msgs": [{"off": 12, "data": data[12]}]}
        # A topic without history: nothing, no epoch.
        r = await h.request({"op": "hist", "topic": "nohist.%s" % topic, "id": 4})
        assert r == {"op": "hist", "id": 4, "off": 0, "msgs": []}
        # A fresh topic: its epoch, which its first message (published elsewhere) carries.
        r = await h.request({"op": "hist", "topic": fresh, "id": 5})
        fep = r.get("ep")
        assert r == {"op": "hist", "id": 5, "ep": fep, "off": 0, "msgs": []} and \
            EP_RE.match(fep), r
        pb = await connect(b.url)
        r = await pb.request({"op": "pub", "topic": fresh, "data": 0, "id": 6})
        assert r == {"op": "ack", "id": 6, "ep": fep, "off": 1}
        await close_all(p, h, pb)
    run(main())


def test_two_shards_keep_one_position_per_topic(redis_factory, make_broker, topic):
    # Topics spread over two Redis shards: each topic's position, stream and hash live on
    # its shard only; a pattern subscriber gets every topic's messages in offset order.
    r1, r2 = redis_factory(), redis_factory()
    a, b, c = cluster(make_broker, [r1.url, r2.url], 3, HIST)
    assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b, c)), 10)
    topics = ["h.%s.t%d" % (topic, i) for i in range(24)]    # all on one shard: 2^-23
    n = 6

    async def main():
        pat = await connect(c.url, MSGPACK)
        await pat.sub("h.%s.*" % topic)
        exact = await connect(c.url, JSON)
        eps = {}
        for t in topics:
            eps[t] = (await exact.sub(t))["ep"]
        pa, pb = await connect(a.url, JSON), await connect(b.url, MSGPACK)
        for k in range(1, n + 1):
            for i, t in enumerate(topics):
                r = await (pa if (i + k) % 2 else pb).request(
                    {"op": "pub", "topic": t, "data": [i, k]})
                assert r == {"op": "ack", "id": r["id"], "ep": eps[t], "off": k}, r
        for name, cl in (("pattern", pat), ("exact", exact)):
            got = []
            for _ in range(50):
                got += await cl.sync()
                if len(got) >= n * len(topics):
                    break
                await asyncio.sleep(0.05)
            for i, t in enumerate(topics):
                mine = [m for m in got if m.get("topic") == t]
                assert mine == [msg(t, eps[t], k, [i, k]) for k in range(1, n + 1)], \
                    (name, t, offs(mine))
            assert len(got) == n * len(topics), name
        on = {t: [r.cmd("EXISTS", "gale:h:" + t, "gale:s:" + t) for r in (r1, r2)]
              for t in topics}
        for t, where in on.items():
            assert sorted(where) == [0, 2], (t, where)
        assert {tuple(w) for w in on.values()} == {(0, 2), (2, 0)}, "one shard held all"
        # Recovery of each topic on a third broker.
        rc = await connect(b.url, JSON)
        for i, t in enumerate(topics):
            rid, msgs, ack = await sub_since(rc, t, eps[t], n - 3)
            assert msgs == [msg(t, eps[t], k, [i, k]) for k in range(n - 2, n + 1)]
            assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": eps[t], "off": n}
        await close_all(pat, exact, pa, pb, rc)
    run(main())


def test_binary_data_across_brokers(redis, make_broker, topic):
    # A msgpack bin published on A: live on B, recovered on C, hist on C, in both encodings.
    a, b, c = hist_cluster(make_broker, redis, 3)
    t = "h.%s" % topic
    blob = bytes(range(256))
    b64 = base64.b64encode(blob).decode()

    async def main():
        lj, lm = await connect(b.url, JSON), await connect(b.url, MSGPACK)
        ep = (await lj.sub(t))["ep"]
        await lm.sub(t)
        p = await connect(a.url, MSGPACK)
        assert (await p.request({"op": "pub", "topic": t, "data": blob}))["off"] == 1
        assert (await p.request({"op": "pub", "topic": t, "data": {"x": 1}}))["off"] == 2
        j1 = {"op": "msg", "topic": t, "ep": ep, "off": 1, "bin": b64}
        j2 = msg(t, ep, 2, {"x": 1})
        assert await read_until_off(lj, t, 2) == [j1, j2]
        assert await read_until_off(lm, t, 2) == [msg(t, ep, 1, blob), j2]
        rj, rm = await connect(c.url, JSON), await connect(c.url, MSGPACK)
        rid, msgs, ack = await sub_since(rj, t, ep, 0)
        assert msgs == [j1, j2] and ack["recovered"] is True
        rid, msgs, ack = await sub_since(rm, t, ep, 0)
        assert msgs == [msg(t, ep, 1, blob), j2] and ack["recovered"] is True
        assert await rj.request({"op": "hist", "topic": t, "id": 5}) == \
            {"op": "hist", "id": 5, "ep": ep, "off": 2,
             "msgs": [{"off": 1, "bin": b64}, {"off": 2, "data": {"x": 1}}]}
        assert await rm.request({"op": "hist", "topic": t, "id": 6}) == \
            {"op": "hist", "id": 6, "ep": ep, "off": 2,
             "msgs": [{"off": 1, "data": blob}, {"off": 2, "data": {"x": 1}}]}
        await close_all(lj, lm, p, rj, rm)
    run(main())


def test_recovery_max_in_a_cluster(redis, make_broker, topic):
    # --recovery-max (default and least 1000): 1000 missed are replayed, 1001 are not.
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic
    total = 1001

    async def main():
        p = await connect(a.url, JSON)
        ep = (await p.request({"op": "pub", "topic": t, "data": 1}))["ep"]
        for k in range(2, total + 1):
            await p.send({"op": "pub", "topic": t, "data": k})
        assert await p.sync(timeout=20) == []
        c = await connect(b.url, MSGPACK)
        rid, msgs, ack = await sub_since(c, t, ep, 1)          # 1000 missed: the cap
        assert msgs == [msg(t, ep, k, k) for k in range(2, total + 1)], \
            describe(offs(msgs), total, 2)
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": total}
        c2 = await connect(b.url, JSON)
        rid, msgs, ack = await sub_since(c2, t, ep, 0)         # 1001 missed: over it
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep,
                                      "off": total}
        # Live all the same, from 1002.
        await p.request({"op": "pub", "topic": t, "data": 0})
        assert await read_until_off(c2, t, total + 1) == [msg(t, ep, total + 1, 0)]
        assert await read_until_off(c, t, total + 1) == [msg(t, ep, total + 1, 0)]
        await close_all(p, c, c2)
    run(main())


# ---------------------------------------------------------------------------------------
# Shared reads
# ---------------------------------------------------------------------------------------

def test_reconnect_storm_shares_reads(redis, make_broker, topic):
    # 200 connections on A send their sub with since at once (pre-built frames written in
    # a tight loop: a few ms), while B publishes 10 more: all recover, and the subs share
    # the reads (INFO commandstats: EVALSHA calls minus publishes).
    a, b = hist_cluster(make_broker, redis, 2)
    t = "h.%s" % topic
    n_clients, before, during = 200, 50, 10
    top = before + during

    async def prepare():
        p = await connect(b.url, JSON)
        for k in range(1, before + 1):
            r = await p.request({"op": "pub", "topic": t, "data": k})
            assert r["off"] == k
        await p.close()
        return r["ep"]

    ep = run(prepare())
    # The topic is live on A already (its subs are confirmed at once: the harder case).
    live = RawWS(a.port, protocols=(MSGPACK,))
    live.recv_msgpack()
    live.send_binary(msgpack.packb({"op": "sub", "topic": t, "id": 1}))
    assert live.recv_msgpack() == {"op": "ack", "id": 1, "ep": ep, "off": before}
    encs = [(JSON, MSGPACK)[i % 2] for i in range(n_clients)]
    since = [i % (before + 1) for i in range(n_clients)]          # 0..50
    cs = []
    try:
        for i in range(n_clients):
            c = RawWS(a.port, protocols=(encs[i],))
            assert c.protocol == encs[i]
            cs.append(c)
            recv(c, encs[i])                                        # hello
        frames = []
        for i in range(n_clients):
            m = {"op": "sub", "topic": t, "since": {"ep": ep, "off": since[i]}, "id": 10000 + i}
            frames.append(RawWS.frame(OP_TEXT, json.dumps(m).encode()) if encs[i] == JSON
                          else RawWS.frame(OP_BINARY, msgpack.packb(m)))
        # 20 more that leave while their read is in flight.
        quitters = []
        for i in range(20):
            q = RawWS(a.port)
            q.recv_json()
            quitters.append(q)
        pub = RawWS(b.port)
        pub.recv_json()
        calls0 = evalsha_calls(redis)
        pubs0 = b.metrics()["gale_redis_publishes_total"]
        for i, (c, f) in enumerate(zip(cs, frames)):
            c.sock.sendall(f)
            if i % 10 == 0:
                q = quitters[i // 10]
                q.send_json({"op": "sub", "topic": t, "since": {"ep": ep, "off": i % 50},
                             "id": 1})
                q.close()
        for k in range(before + 1, top + 1):
            pub.send_json({"op": "pub", "topic": t, "data": k, "id": k})
            assert pub.recv_json() == {"op": "ack", "id": k, "ep": ep, "off": k}
        for i, c in enumerate(cs):
            msgs, ack = [], None
            for _ in range(top + 5):
                m = recv(c, encs[i], timeout=10)
                if m.get("op") != "msg":
                    assert ack is None, (i, m)
                    ack = m
                    assert ack == {"op": "ack", "id": 10000 + i, "recovered": True, "ep": ep,
                                   "off": ack.get("off")}, (i, ack)
                    assert before <= ack["off"] <= top and \
                        ack["off"] == (msgs[-1]["off"] if msgs else since[i]), (i, ack, offs(msgs))
                else:
                    msgs.append(m)
                if ack and msgs and msgs[-1]["off"] == top:
                    break
            assert msgs == [msg(t, ep, k, k) for k in range(since[i] + 1, top + 1)], \
                (i, since[i], describe(offs(msgs), top, since[i] + 1))
        got = [live.recv_msgpack() for _ in range(during)]
        assert got == [msg(t, ep, k, k) for k in range(before + 1, top + 1)]
        calls = evalsha_calls(redis) - calls0
        pubs = b.metrics()["gale_redis_publishes_total"] - pubs0
        assert pubs == during
        reads = calls - pubs
        assert reads < 20, "%d reads for %d subs with since" % (reads, n_clients)
        m = a.metrics()
        assert n_clients <= m['gale_recoveries_total{recovered="true"}'] <= n_clients + 20
        assert wait_for(lambda: a.healthz()["connections"] == n_clients + 1, 5), a.healthz()
        assert m["gale_messages_replayed_total"] >= sum(before - s for s in since)
        for i in range(0, n_clients, 7):                           # nothing more came
            ping = {"op": "ping", "id": 77}
            if encs[i] == JSON:
                cs[i].send_json(ping)
            else:
                cs[i].send_binary(msgpack.packb(ping))
            assert recv(cs[i], encs[i]) == {"op": "pong", "id": 77}
    finally:
        for c in cs + [live]:
            c.close()


def recv(c, enc, timeout=5.0):
    return c.recv_json(timeout) if enc == JSON else c.recv_msgpack(timeout)


# ---------------------------------------------------------------------------------------
# Gaps
# ---------------------------------------------------------------------------------------

def test_gap_in_pubsub_feed_is_filled_from_the_stream(redis, make_broker, topic):
    # A's pub/sub connection to Redis is killed (CLIENT KILL TYPE pubsub) while P keeps
    # publishing: A's subscribers, still connected, must get every offset once, in order.
    # One loop each: the copies of a message on A's feed are counted for one node.
    a, p = hist_cluster(make_broker, redis, 2, ["--loops", "1"])  # subscribers on a, publisher p
    t = "h.%s" % topic
    phase = 40

    async def main():
        subs = [await connect(a.url, (JSON, MSGPACK)[i % 2]) for i in range(4)]
        ep = (await subs[0].sub(t))["ep"]
        await subs[1].sub(t)
        await subs[2].sub("h.*")
        await subs[3].sub(t)
        await subs[3].sub("h.>")
        pub = await connect(p.url, JSON)
        n = 0

        async def publish(count, pace=0.005):
            nonlocal n
            for _ in range(count):
                r = await pub.request({"op": "pub", "topic": t, "data": n + 1})
                assert r == {"op": "ack", "id": r["id"], "ep": ep, "off": n + 1}, r
                n += 1
                await asyncio.sleep(pace)

        m0 = a.metrics()
        await publish(phase)
        for c in subs:
            assert offs(await read_until_off(c, t, phase)) == list(range(1, phase + 1))
        m1 = a.metrics()
        # Copies of one message on A's feed (its channel and two patterns).
        copies = (m1["gale_redis_messages_received_total"]
                  - m0["gale_redis_messages_received_total"]) / phase
        assert copies == 3, copies
        # Only a's subscribe connection is in pubsub mode (p holds no subscription).
        clients = redis.cmd("CLIENT", "LIST", "TYPE", "pubsub").decode().strip().splitlines()
        assert len(clients) == 1, clients
        assert redis.cmd("CLIENT", "KILL", "TYPE", "pubsub") == 1
        # p keeps publishing while a is away, and after it is back (bounded: 10 s).
        back = None
        for i in range(3000):
            await publish(1, pace=0.003)
            if back is None and i % 5 == 4 and \
                    a.metrics()["gale_redis_reconnects_total"] > m1["gale_redis_reconnects_total"]:
                back = n
            if back is not None and n >= back + phase:
                break
        assert back is not None and a.healthz()["status"] == "ok", "a is not back"
        got = [await read_until_off(c, t, n, timeout=10) for c in subs]
        for i, g in enumerate(got):
            assert offs(g) == list(range(phase + 1, n + 1)), (i, describe(offs(g), n, phase + 1))
            assert g == [msg(t, ep, k, k) for k in range(phase + 1, n + 1)]
            await subs[i].expect_silence()
        m2 = a.metrics()
        # The feed really lost messages (else this test proved nothing)...
        fed = m2["gale_redis_messages_received_total"] - m1["gale_redis_messages_received_total"]
        assert fed < copies * (n - phase), "A missed nothing on its feed: %d" % fed
        # ... and the repair shows in the gap counter (the catch-up read of the reconnection
        # or a read started by a jump in live offsets).
        assert m2["gale_history_gaps_total"] > m1["gale_history_gaps_total"], \
            "gale_history_gaps_total did not move (%d messages were filled from the stream)" \
            % (n - phase - fed / copies)
        await close_all(pub, *subs)
    run(main(), timeout=60)


# ---------------------------------------------------------------------------------------
# TTL
# ---------------------------------------------------------------------------------------

def test_ttl_in_a_cluster(redis, make_broker, topic):
    a, b = hist_cluster(make_broker, redis, 2)
    t = "ttl.%s" % topic

    async def main():
        p = await connect(a.url, JSON)
        for k in range(1, 4):
            r = await p.request({"op": "pub", "topic": t, "data": k})
            assert r["off"] == k
        ep = r["ep"]
        c = await connect(b.url, JSON)
        rid, msgs, ack = await sub_since(c, t, ep, 0)          # fresh: everything
        assert msgs == [msg(t, ep, k, k) for k in (1, 2, 3)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 3}
        await c.close()
        ttl = redis.cmd("PTTL", "gale:s:" + t)
        assert 0 < ttl <= 2000, ttl
        await asyncio.sleep(1.2)
        for k in (4, 5):                                      # keeps the keys alive
            assert (await p.request({"op": "pub", "topic": t, "data": k}))["off"] == k
        await asyncio.sleep(1.2)
        # 1..3 are 2.4 s old (expired), 4 and 5 1.2 s.
        c = await connect(b.url, MSGPACK)
        rid, msgs, ack = await sub_since(c, t, ep, 0)
        assert msgs == [] and ack == {"op": "ack", "id": rid, "recovered": False, "ep": ep,
                                      "off": 5}
        c2 = await connect(a.url, JSON)
        rid, msgs, ack = await sub_since(c2, t, ep, 3)
        assert msgs == [msg(t, ep, 4, 4), msg(t, ep, 5, 5)]
        assert ack == {"op": "ack", "id": rid, "recovered": True, "ep": ep, "off": 5}
        # hist leaves the expired ones out too.
        assert await c2.request({"op": "hist", "topic": t, "id": 3}) == \
            {"op": "hist", "id": 3, "ep": ep, "off": 5,
             "msgs": [{"off": 4, "data": 4}, {"off": 5, "data": 5}]}
        await close_all(c, c2)
        # 3 s after the last publish: everything is older than the TTL (the keys are gone
        # too: the topic starts a new epoch).
        await asyncio.sleep(3.0)
        c3 = await connect(b.url, JSON)
        rid, msgs, ack = await sub_since(c3, t, ep, 3)
        assert msgs == [] and ack.get("recovered") is False, (offs(msgs), ack)
        assert ack == {"op": "ack", "id": rid, "recovered": False, "ep": ack["ep"],
                       "off": 0} and ack["ep"] != ep, ack
        r = await p.request({"op": "pub", "topic": t, "data": 6, "id": 1})
        assert r == {"op": "ack", "id": 1, "ep": ack["ep"], "off": 1}
        assert await read_until_off(c3, t, 1) == [msg(t, ack["ep"], 1, 6)]
        await close_all(p, c3)
    run(main(), timeout=30)
