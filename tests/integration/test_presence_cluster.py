"""Presence in a cluster (PROTOCOL.md "Presence"): real gale-broker processes with --redis
sharing real redis-server processes (started here, no persistence), real WebSocket clients
(JSON and MessagePack).

Checked: one presence answer holds the members of every broker (conn ids of different
instances, info, user and gale.info with tokens, --presence-list-max across brokers, GET
/api/presence on a broker of members on another); join/leave events cross brokers, once
each, never about the watcher itself, on sub, unsub and close; a broker killed with SIGKILL:
its members leave (events on the others) within expiry + expiry/3 + a sweep; a broker
stopped with SIGTERM: its members leave at once; a broker restarted with the same --node-id
removes its previous members at once (long before the expiry); a member leaving while its
broker is cut from Redis (SIGSTOP) leaves once Redis answers; Redis restarted empty: the
brokers re-sync their members after reconnecting, watchers get the leave of a member that
left meanwhile, and events work again; two shards (each topic's keys on its own shard,
events from both); --presence-events-max and --presence-list-max with members on several
brokers; an answer larger than --queue-limit; read-your-writes of a sub on the same
connection; the Redis keys once everyone left.

Broker choices assumed (the design the implementation follows, beyond PROTOCOL.md): the
Redis layout `gale:p:T` (hash conn -> member JSON), `gale:pz:T` (sorted set of instances),
`gale:pi:INST` (set of topics, per shard); a conn id is "<16 hex instance>-<n>";
--presence-expiry 3 makes a dead broker's members leave within 3 + 1 s plus a sweep round.
"""
import asyncio
import json
import signal
import time

import test_cluster
from galetest import JSON, MSGPACK, Broker, connect, run
# Reused fixtures and helpers of the cluster tests (redis-server on a free loopback port).
from test_cluster import cluster, redis, redis_factory, wait_for  # noqa: F401
from test_presence import (API_KEY, SECRET, CONN_RE, _Conn, _collect, _http, answer, event,
                           events, is_err, make_token, member, norm, presence, sub, turl)

pytestmark = test_cluster.pytestmark

EXPIRY = 3
PRES = ["--presence", "p.>", "--presence-expiry", str(EXPIRY), "--api-key", API_KEY]


def pres_cluster(make_broker, urls, n=2, extra=(), base=PRES):
    """n brokers (node1..) on the Redis URLs with presence on p.>, each up when returned."""
    bs = cluster(make_broker, urls, n, list(base) + list(extra))
    assert wait_for(lambda: all(b.healthz()["status"] == "ok" for b in bs), 10)
    return bs


def by_conn(es):
    return sorted(es, key=lambda e: (e.get("op"), e.get("topic"), e.get("conn")))


def inst(c):
    """The broker instance (16 hex) in a client's conn id."""
    return c.hello["conn"].split("-")[0]


async def until_members(c, t, want, timeout=10.0):
    """Ask c's broker for the presence of t until its answer is answer(t, want) (the
    cluster adds and removes members asynchronously); returns that answer."""
    expected = answer(t, want)
    deadline = time.monotonic() + timeout
    while True:
        r = await presence(c, t)
        r = dict(r)
        r.pop("id", None)
        if r == expected:
            return r
        if time.monotonic() > deadline:
            raise AssertionError("presence of %s within %.1fs: %r, expected %r"
                                 % (t, timeout, r, expected))
        await asyncio.sleep(0.05)


async def quiet(*cs, wait=0.5):
    """Let late copies arrive (Redis), then nothing may be waiting."""
    await asyncio.sleep(wait)
    for c in cs:
        await c.expect_silence()


async def close_all(*cs):
    for c in cs:
        await c.close()


# ---------------------------------------------------------------------------------------
# members and events across brokers
# ---------------------------------------------------------------------------------------

def test_members_of_every_broker_in_one_answer(redis, make_broker, topic):
    # One loop each: a broker is one instance in Redis, as the checks of its keys below read
    # (with several loops each loop is an instance of its own).
    a, b = pres_cluster(make_broker, [redis.url], extra=["--loops", "1"])
    t = "p.%s" % topic

    async def main():
        a1 = await connect(a.url, JSON)
        b1 = await connect(b.url, MSGPACK)
        b2 = await connect(b.url, JSON)
        assert CONN_RE.match(a1.hello["conn"]) and CONN_RE.match(b1.hello["conn"])
        assert inst(a1) != inst(b1) and inst(b1) == inst(b2)
        assert await sub(a1, t, id=1) == {"op": "ack", "id": 1}
        assert await sub(b1, t, id=2, info={"who": "b1", "n": [1, 2]}) == {"op": "ack", "id": 2}
        assert await sub(b2, t, id=3) == {"op": "ack", "id": 3}
        pat = await connect(a.url)
        await pat.sub("p.>")                                  # not present
        want = [member(a1), member(b1, info={"who": "b1", "n": [1, 2]}), member(b2)]
        for enc in (JSON, MSGPACK):
            for x in (a, b):
                q = await connect(x.url, enc)
                await until_members(q, t, want)
                r = await presence(q, t, rid=9)
                assert r == answer(t, want, rid=9)
                await q.close()
        # What Redis holds (--redis-prefix gale:).
        h = redis.cmd("HGETALL", "gale:p:" + t)
        held = {h[i].decode(): json.loads(h[i + 1]) for i in range(0, len(h), 2)}
        assert held == {m["conn"]: m for m in want}
        zs = redis.cmd("ZRANGE", "gale:pz:" + t, 0, -1)
        assert sorted(z.decode() for z in zs) == sorted({inst(a1), inst(b1)})
        assert redis.cmd("SISMEMBER", "gale:pi:" + inst(a1), t) == 1
        # Everyone leaves: the keys go.
        await b1.unsub(t)
        await close_all(a1, b2)
        await until_members(pat, t, [])
        assert wait_for(lambda: redis.cmd("EXISTS", "gale:p:" + t, "gale:pz:" + t) == 0, 5), \
            (redis.cmd("HGETALL", "gale:p:" + t), redis.cmd("ZRANGE", "gale:pz:" + t, 0, -1))
        assert wait_for(lambda: redis.cmd("SISMEMBER", "gale:pi:" + inst(a1), t) == 0, 5)
        await pat.expect_silence()
        await close_all(b1, pat)
    run(main())


def test_own_sub_is_seen_by_the_next_presence(redis, make_broker, topic):
    """A presence request right after a sub's (or unsub's) ack on the same connection
    reflects it (the broker's JOIN/LEAVE and READ go to the topic's shard in order), whether
    the broker already held the topic or not; another broker sees it soon after."""
    a, b = pres_cluster(make_broker, [redis.url])

    async def main():
        c = await connect(a.url)
        holder = await connect(a.url)          # for odd i, A already holds the topic
        other = await connect(b.url, MSGPACK)
        for i in range(20):
            t = "p.%s.n%d" % (topic, i)
            before = []
            if i % 2:
                await holder.sub(t)
                before = [member(holder)]
            assert await sub(c, t, id=1) == {"op": "ack", "id": 1}
            assert await presence(c, t, rid=2) == answer(t, before + [member(c)], rid=2), i
            await until_members(other, t, before + [member(c)])
            assert await c.ask({"op": "unsub", "topic": t, "id": 4}) == {"op": "ack", "id": 4}
            assert await presence(c, t, rid=5) == answer(t, before, rid=5), i
            await until_members(other, t, before)
        await close_all(c, holder, other)
    run(main())


def test_join_and_leave_cross_brokers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        wa = await connect(a.url, JSON)
        assert await sub(wa, t, id=1, presence=True) == {"op": "ack", "id": 1}
        wb = await connect(b.url, MSGPACK)
        assert await sub(wb, t, id=2, presence=True) == {"op": "ack", "id": 2}
        assert await events(wa, 1) == [event("join", t, wb)]
        # A member on B: a join on both brokers.
        x = await connect(b.url, JSON)
        await x.sub(t)
        for w in (wa, wb):
            assert await events(w, 1) == [event("join", t, x)], w.encoding
        # A member on A with info.
        y = await connect(a.url, MSGPACK)
        await sub(y, t, info={"name": "y"})
        for w in (wa, wb):
            assert await events(w, 1) == [event("join", t, y, info={"name": "y"})]
        # Unsub on B, close on A: leaves everywhere.
        await x.unsub(t)
        for w in (wa, wb):
            assert await events(w, 1) == [event("leave", t, x)]
        await y.close()
        for w in (wa, wb):
            assert await events(w, 1) == [event("leave", t, y, info={"name": "y"})]
        # The watcher on B closes: its leave reaches A, never B itself.
        await until_members(wa, t, [member(wa), member(wb)])
        await wb.close()
        assert await events(wa, 1) == [event("leave", t, wb)]
        await quiet(wa, x)                        # each event once; x got none
        await until_members(wa, t, [member(wa)])
        await close_all(wa, x)
    run(main())


def test_no_events_about_oneself_and_to_non_watchers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        plain = await connect(b.url)              # present, no events
        await plain.sub(t)
        pat = await connect(b.url)
        await pat.sub("p.>")
        assert await events(w, 1) == [event("join", t, plain)]
        # A watcher's own join and leave never reach it; they reach the others.
        v = await connect(b.url, MSGPACK)
        await sub(v, t, presence=True)
        assert await events(w, 1) == [event("join", t, v)]
        await v.unsub(t)
        assert await events(w, 1) == [event("leave", t, v)]
        await sub(v, t, presence=True)
        assert await events(w, 1) == [event("join", t, v)]
        await quiet(v, plain, pat, w)
        await close_all(w, plain, pat, v)
    run(main())


def test_repeated_sub_gives_no_event_across_brokers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        c = await connect(b.url)
        await sub(c, t, info={"v": 1})
        assert await events(w, 1) == [event("join", t, c, info={"v": 1})]
        for extra in ({}, {"info": {"v": 2}}, {"presence": True}, {"presence": False}):
            assert await sub(c, t, id=3, **extra) == {"op": "ack", "id": 3}
        await quiet(w, c)
        await until_members(w, t, [member(w), member(c, info={"v": 1})])
        await close_all(w, c)
    run(main())


def test_tokens_user_and_info_across_brokers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url], extra=["--jwt-secret", SECRET])
    t = "p.%s" % topic
    info = {"name": "Ann", "n": 1}

    async def main():
        w = await connect(turl(b, make_token(sub=["p.>"], user="w")), MSGPACK)
        await sub(w, t, presence=True)
        ann = await connect(turl(a, make_token(sub=[t], user="ann", info=info)))
        await ann.sub(t)
        assert await events(w, 1) == [event("join", t, ann, user="ann", info=info)]
        want = [member(w, user="w"), member(ann, user="ann", info=info)]
        await until_members(w, t, want)
        await until_members(ann, t, want)
        r = await sub(ann, t, id=4, info={"x": 1})
        assert is_err(r, "forbidden", 4), r
        no = await connect(turl(b, make_token(pub=["p.>"])))
        r = await no.ask({"op": "presence", "topic": t, "id": 5})
        assert is_err(r, "forbidden", 5), r
        await ann.close()
        assert await events(w, 1) == [event("leave", t, ann, user="ann", info=info)]
        await close_all(w, no)
    run(main())


def test_list_max_across_brokers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url], extra=["--presence-list-max", "2"])
    t = "p.%s" % topic

    async def main():
        cs = [await connect((a, b)[i % 2].url) for i in range(5)]
        for c in cs:
            await c.sub(t)
        conns = {c.hello["conn"] for c in cs}
        for x in (a, b):
            q = await connect(x.url)
            deadline = time.monotonic() + 10
            while True:
                r = await presence(q, t, rid=1)
                if r["count"] == 5 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert r["count"] == 5 and len(r["members"]) == 2, r
            assert {m["conn"] for m in r["members"]} <= conns and \
                len({m["conn"] for m in r["members"]}) == 2, r
            await q.close()
            st, body = _http(x, "/api/presence?topic=" + t)
            assert st == 200 and body["count"] == 5 and len(body["members"]) == 2, body
        await close_all(*cs)
    run(main())


def test_presence_answer_fits_the_queue_limit(redis, make_broker, topic):
    """As on one broker: an answer whose members would pass --queue-limit leaves some out
    (count exact) instead of closing the client that asked with 4001."""
    a, b = pres_cluster(make_broker, [redis.url], extra=["--queue-limit", "32K"])
    t = "p.%s" % topic
    n = 50

    async def main():
        cs = [await connect((a, b)[i % 2].url) for i in range(n)]
        for i, c in enumerate(cs):
            await sub(c, t, info={"i": i, "pad": "x" * 1000})
        q = await connect(a.url)
        deadline = time.monotonic() + 10
        while True:
            rid = q.next_id()
            await q.send({"op": "presence", "topic": t, "id": rid})
            frame = await q.recv_raw()
            r = json.loads(frame)
            assert r.get("op") == "presence" and r.get("id") == rid, \
                {k: v for k, v in r.items() if k != "members"}
            if r["count"] == n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert r["count"] == n and 0 < len(r["members"]) < n and len(frame) <= 32 * 1024
        assert await q.ask({"op": "ping", "id": 1}) == {"op": "pong", "id": 1}
        await close_all(q, *cs)
    run(main())


def test_presence_api_on_another_broker(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        m1 = await connect(a.url)
        await sub(m1, t, info={"k": "v"})
        m2 = await connect(a.url, MSGPACK)
        await m2.sub(t)
        want = answer(t, [member(m1, info={"k": "v"}), member(m2)])
        deadline = time.monotonic() + 10
        while True:
            st, body = _http(b, "/api/presence?topic=" + t)
            if (st == 200 and norm(body) == want) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (st, norm(body)) == (200, want)
        assert _http(b, "/api/presence?topic=" + t, key=None)[0] == 401
        assert _http(b, "/api/presence?topic=p.%3E")[0] == 400
        await close_all(m1, m2)
        deadline = time.monotonic() + 10
        while True:
            st, body = _http(b, "/api/presence?topic=" + t)
            if body == answer(t, []) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert (st, body) == (200, answer(t, []))
    run(main())


def test_events_max_across_brokers(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url], extra=["--presence-events-max", "2"])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)                     # count 1
        m1 = await connect(b.url)
        await m1.sub(t)                                    # count 2: an event
        assert await events(w, 1) == [event("join", t, m1)]
        m2 = await connect(b.url)
        await m2.sub(t)                                    # count 3: a count message
        got = await _collect(w, 4.0, until=lambda ms: ms and ms[-1].get("count") == 3)
        assert got and got[-1][1] == {"op": "presence", "topic": t, "count": 3}, got
        assert all(m.get("op") == "presence" for _, m in got), got
        await m2.close()                                   # back to 2
        got = await _collect(w, 4.0, until=lambda ms: ms and ms[-1].get("count") == 2)
        assert got and got[-1][1] == {"op": "presence", "topic": t, "count": 2}, got
        assert len([m for _, m in got if m.get("op") != "presence"]) <= 1, got
        await m1.unsub(t)                                  # 1: an event again
        assert await events(w, 1) == [event("leave", t, m1)]
        await close_all(w, m1)
    run(main(), timeout=30)


# ---------------------------------------------------------------------------------------
# brokers dying and restarting
# ---------------------------------------------------------------------------------------

def test_killed_broker_members_leave(redis, make_broker, logdir, topic):
    (a,) = pres_cluster(make_broker, [redis.url], 1)
    victim = Broker(logdir, args=["--redis", redis.url, "--node-id", "victim"] + PRES,
                    name="victim").start()
    t = "p.%s" % topic
    t2 = "p.%s.two" % topic

    async def main():
        w = await connect(a.url, MSGPACK)
        await sub(w, t, presence=True)
        w2 = await connect(a.url)
        await sub(w2, t2, presence=True)
        vs = [await connect(victim.url, (JSON, MSGPACK)[i % 2]) for i in range(3)]
        await sub(vs[0], t, info={"i": 0})
        await vs[1].sub(t)
        await vs[2].sub(t)
        await vs[2].sub(t2)
        assert await events(w, 3) == [event("join", t, vs[0], info={"i": 0}),
                                      event("join", t, vs[1]), event("join", t, vs[2])]
        assert await events(w2, 1) == [event("join", t2, vs[2])]
        # A member staying on A, to show only the victim's members leave.
        stay = await connect(a.url)
        await stay.sub(t)
        assert await events(w, 1) == [event("join", t, stay)]
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        bound = EXPIRY + EXPIRY / 3 + 2
        got = await events(w, 3, timeout=bound + 1)
        took = time.monotonic() - killed
        assert sorted(got, key=lambda e: e["conn"]) == sorted(
            [event("leave", t, vs[0], info={"i": 0}), event("leave", t, vs[1]),
             event("leave", t, vs[2])], key=lambda e: e["conn"])
        assert took <= bound, "the leaves came %.1fs after the kill (bound %.1fs)" % (
            took, bound)
        assert await events(w2, 1, timeout=bound + 1 - took + 1) == \
            [event("leave", t2, vs[2])]
        await quiet(w, w2)
        await until_members(w, t, [member(w), member(stay)], timeout=2)
        await until_members(w, t2, [member(w2)], timeout=2)
        zs = [z.decode() for z in redis.cmd("ZRANGE", "gale:pz:" + t, 0, -1)]
        # A's instances with members of t (one per loop that holds one), none of the victim's.
        assert not {inst(v) for v in vs} & set(zs) and set(zs) == {inst(w), inst(stay)}, zs
        await close_all(w, w2, stay)
        for v in vs:
            await v.close()
    try:
        run(main(), timeout=60)
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        victim.kill()


def test_restart_with_the_same_node_id_clears_members_at_once(redis, make_broker, topic):
    base = ["--presence", "p.>", "--presence-expiry", "30"]
    (a,) = pres_cluster(make_broker, [redis.url], 1, base=base)
    victim = make_broker(["--redis", redis.url, "--node-id", "victim"] + base)
    assert wait_for(lambda: victim.healthz()["status"] == "ok", 10)
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        vs = [await connect(victim.url, (JSON, MSGPACK)[i]) for i in range(2)]
        await vs[0].sub(t)
        await sub(vs[1], t, info={"v": 1})
        assert await events(w, 2) == [event("join", t, vs[0]),
                                      event("join", t, vs[1], info={"v": 1})]
        old = [member(vs[0]), member(vs[1], info={"v": 1})]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(5) == -signal.SIGKILL
        # With an expiry of 30 s its members are still listed a while later...
        await asyncio.sleep(1.5)
        r = await presence(w, t, rid=1)
        assert r == answer(t, [member(w)] + old, rid=1), r
        await w.expect_silence()
        # ...until it starts again with the same node id: gone at once.
        started = time.monotonic()
        victim.start()
        got = await events(w, 2, timeout=5)
        took = time.monotonic() - started
        assert sorted(got, key=lambda e: e["conn"]) == sorted(
            [event("leave", t, vs[0]), event("leave", t, vs[1], info={"v": 1})],
            key=lambda e: e["conn"])
        assert took < 5, took
        await until_members(w, t, [member(w)], timeout=1)
        # The new instance's members are fine.
        n = await connect(victim.url)
        assert inst(n) != inst(vs[0])
        await n.sub(t)
        assert await events(w, 1) == [event("join", t, n)]
        await quiet(w)
        await close_all(w, n)
    run(main(), timeout=60)


def test_stopped_broker_members_leave_at_once(redis, make_broker, topic):
    """A broker stopped with SIGTERM closes its connections (1001): their leaves reach the
    other brokers at once, long before --presence-expiry (30 s here)."""
    base = ["--presence", "p.>", "--presence-expiry", "30"]
    (a,) = pres_cluster(make_broker, [redis.url], 1, base=base)
    leaving = make_broker(["--redis", redis.url, "--node-id", "leaving"] + base)
    assert wait_for(lambda: leaving.healthz()["status"] == "ok", 10)
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        vs = [await connect(leaving.url) for _ in range(3)]
        for v in vs:
            await v.sub(t)
        assert len(await events(w, 3)) == 3
        stopped = time.monotonic()
        assert leaving.stop(signal.SIGTERM, 5) == 0
        got = await events(w, 3, timeout=5)
        assert sorted(got, key=lambda e: e["conn"]) == sorted(
            [event("leave", t, v) for v in vs], key=lambda e: e["conn"])
        assert time.monotonic() - stopped < 5
        await until_members(w, t, [member(w)], timeout=1)
        await close_all(w, *vs)
    run(main())


def test_redis_restarted_empty_members_come_back(redis, make_broker, topic):
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        xa = await connect(a.url, MSGPACK)
        await sub(xa, t, info={"on": "a"})
        xb = await connect(b.url)
        await xb.sub(t)
        gone = await connect(b.url)
        await gone.sub(t)
        assert by_conn(await events(w, 3)) == by_conn([event("join", t, xa, info={"on": "a"}),
                                                       event("join", t, xb),
                                                       event("join", t, gone)])
        before = [member(w), member(xa, info={"on": "a"}), member(xb), member(gone)]
        await until_members(w, t, before)
        redis.kill()
        assert wait_for(lambda: all(x.healthz()["status"] != "ok" for x in (a, b)), 5)
        await gone.close()                           # leaves while Redis is away
        # Meanwhile the presence op and a sub with presence answer unavailable.
        r = await w.ask({"op": "presence", "topic": t, "id": 5})
        assert is_err(r, "unavailable", 5), r
        d = await connect(b.url)
        r = await sub(d, t, id=6, presence=True)
        assert is_err(r, "unavailable", 6), r
        await asyncio.sleep(0.3)
        redis.start()
        assert redis.cmd("EXISTS", "gale:p:" + t) == 0
        assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)), 10), \
            (a.healthz(), b.healthz())
        after = [member(w), member(xa, info={"on": "a"}), member(xb)]
        for x in (w, xb):
            await until_members(x, t, after, timeout=10)
        h = redis.cmd("HGETALL", "gale:p:" + t)
        assert sorted(h[i].decode() for i in range(0, len(h), 2)) == \
            sorted(m["conn"] for m in after)
        # Events work again. Whatever the re-sync sent w before: never about itself, never
        # a leave of a member still there, only joins of members that are there.
        await asyncio.sleep(0.5)
        n = await connect(b.url)
        await n.sub(t)
        resync = []
        for _ in range(20):
            e = await w.recv(5)
            if e.get("op") == "presence" and "id" not in e:
                continue  # after its re-sync a broker tells its watchers to re-read the list
            if e == event("join", t, n):
                break
            resync.append(e)
        else:
            raise AssertionError("no join of the new member; got %r" % resync)
        for e in resync:
            assert e["conn"] != w.hello["conn"], resync
            if e["op"] == "join":
                assert e in [event("join", t, _Conn(m["conn"]), info=m.get("info"))
                             for m in after], resync
            else:
                assert e == event("leave", t, gone), resync
        await xa.unsub(t)
        assert await events(w, 1) == [event("leave", t, xa, info={"on": "a"})]
        await quiet(w)
        await d.expect_silence()                     # its failed sub registered nothing
        await close_all(w, xa, xb, n, d)
    run(main(), timeout=60)


def test_leave_while_cut_from_redis_is_synced_after(redis, make_broker, topic):
    """A member closing while its broker cannot reach Redis (SIGSTOP, --redis-timeout):
    once Redis answers again, the re-sync removes it, with one leave to the watchers."""
    a, b = pres_cluster(make_broker, [redis.url], extra=["--redis-timeout", "300"])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        stay = await connect(b.url)
        await stay.sub(t)
        gone = await connect(b.url, MSGPACK)
        await sub(gone, t, info={"g": 1})
        assert by_conn(await events(w, 2)) == by_conn([event("join", t, stay),
                                                       event("join", t, gone, info={"g": 1})])
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            await gone.close()
            assert wait_for(lambda: b.healthz()["status"] != "ok", 5), b.healthz()
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert await events(w, 1, timeout=10) == [event("leave", t, gone, info={"g": 1})]
        await until_members(w, t, [member(w), member(stay)])
        await quiet(w)
        await close_all(w, stay)
    run(main(), timeout=60)


def test_leave_while_redis_was_lost_reaches_watchers(redis, make_broker, topic):
    """PROTOCOL.md: a watcher receives leave when a connection stops being present. A
    member that closes while Redis is down, Redis coming back empty: its watchers on
    other brokers learn it once the brokers have re-synced: its leave, or (when the event
    was published before the watcher's broker had subscribed again) the count-only
    presence message every watcher gets after its broker re-synced, which tells it to read
    the list again (PROTOCOL-NOTES.md "Presence")."""
    a, b = pres_cluster(make_broker, [redis.url])
    t = "p.%s" % topic

    async def main():
        w = await connect(a.url)
        await sub(w, t, presence=True)
        gone = await connect(b.url)
        await gone.sub(t)
        assert await events(w, 1) == [event("join", t, gone)]
        redis.kill()
        assert wait_for(lambda: all(x.healthz()["status"] != "ok" for x in (a, b)), 5)
        await gone.close()
        await asyncio.sleep(0.3)
        redis.start()
        assert wait_for(lambda: all(x.healthz()["status"] == "ok" for x in (a, b)), 10)
        await until_members(w, t, [member(w)])
        got = []
        told = lambda: event("leave", t, gone) in got or any(
            e.get("op") == "presence" and "id" not in e for e in got)
        deadline = time.monotonic() + 5
        while not told() and time.monotonic() < deadline:
            got += await w.sync()
            await asyncio.sleep(0.1)
        assert told(), "the watcher never learnt that %s left (got %r)" % (
            gone.hello["conn"], got)
        for e in got:
            if e.get("op") == "presence":
                assert e == {"op": "presence", "topic": t, "count": 1}, got
        await close_all(w)
    run(main(), timeout=60)


# ---------------------------------------------------------------------------------------
# two shards
# ---------------------------------------------------------------------------------------

def test_two_shards(redis_factory, make_broker, topic):
    r1, r2 = redis_factory(), redis_factory()
    a, b = pres_cluster(make_broker, [r1.url, r2.url])
    topics = ["p.%s.t%d" % (topic, i) for i in range(24)]    # all on one shard: 2^-23

    async def main():
        ca = await connect(a.url, JSON)
        cb = await connect(b.url, MSGPACK)
        for t in topics:
            await sub(cb, t, presence=True)
        for t in topics:
            await sub(ca, t, info={"t": t})
        got = await events(cb, len(topics), timeout=10)
        assert sorted(got, key=lambda e: e["topic"]) == sorted(
            [event("join", t, ca, info={"t": t}) for t in topics], key=lambda e: e["topic"])
        q = await connect(b.url)
        for t in topics:
            await until_members(q, t, [member(ca, info={"t": t}), member(cb)])
        on = {t: [r.cmd("EXISTS", "gale:p:" + t, "gale:pz:" + t) for r in (r1, r2)]
              for t in topics}
        for t, where in on.items():
            assert sorted(where) == [0, 2], (t, where)
        assert {tuple(w) for w in on.values()} == {(0, 2), (2, 0)}, "one shard held all"
        # pi:INST per shard: that shard's topics.
        for r in (r1, r2):
            mine = sorted(t for t in topics if r.cmd("EXISTS", "gale:p:" + t))
            held = sorted(x.decode() for x in r.cmd("SMEMBERS", "gale:pi:" + inst(ca)))
            assert [x for x in held if x in topics] == mine
        await ca.close()
        got = await events(cb, len(topics), timeout=10)
        assert sorted(got, key=lambda e: e["topic"]) == sorted(
            [event("leave", t, ca, info={"t": t}) for t in topics], key=lambda e: e["topic"])
        await quiet(cb)
        for t in topics[:4]:
            await until_members(q, t, [member(cb)])
        await close_all(cb, q)
    run(main(), timeout=60)


def test_members_on_many_brokers_and_encodings(redis, make_broker, topic):
    bs = pres_cluster(make_broker, [redis.url], 3)
    t = "p.%s" % topic

    async def main():
        ws = []
        for i, x in enumerate(bs):
            w = await connect(x.url, (JSON, MSGPACK)[i % 2])
            await sub(w, t, presence=True)
            ws.append(w)
        # Each earlier watcher hears of each later one.
        for i, w in enumerate(ws):
            got = await events(w, len(ws) - 1 - i)
            assert by_conn(got) == by_conn([event("join", t, v) for v in ws[i + 1:]]), (i, got)
        ms = []
        for i in range(6):
            m = await connect(bs[i % 3].url, (MSGPACK, JSON)[i % 2])
            await sub(m, t, info={"i": i, "f": 0.5, "s": "\u00e9"})
            ms.append(m)
        for w in ws:
            got = await events(w, 6)
            assert by_conn(got) == by_conn([event("join", t, m,
                                                  info={"i": i, "f": 0.5, "s": "\u00e9"})
                                            for i, m in enumerate(ms)]), got
        want = [member(w) for w in ws] + [member(m, info={"i": i, "f": 0.5, "s": "\u00e9"})
                                          for i, m in enumerate(ms)]
        for w in ws:
            await until_members(w, t, want)
        for m in ms[:3]:
            await m.close()
        for m in ms[3:]:
            await m.unsub(t)
        for w in ws:
            got = await events(w, 6)
            assert sorted(e["conn"] for e in got) == sorted(m.hello["conn"] for m in ms)
            assert all(e["op"] == "leave" for e in got), got
        await quiet(*ws)
        await close_all(*ws, *ms)
    run(main(), timeout=60)
