"""Delivery: wildcards, exactly once per connection, fan-out, order, at most once."""
import asyncio

import pytest

from galetest import JSON, MSGPACK, connect, run

ENCODINGS = [JSON, pytest.param(MSGPACK, marks=pytest.mark.needs_msgpack)]


async def received_topics(c):
    """Topics of every msg that reached c up to now (synchronised with a ping)."""
    got = await c.sync()
    for m in got:
        assert m.get("op") == "msg", m
    return [m["topic"] for m in got]


# pattern (relative to the test's prefix P) -> which of the topics below it matches
TOPICS = ["a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.b.c.d", "a.x.c", "ab", "a.bc", "x.a"]
WILDCARD_CASES = [
    ("a", ["a"]),
    ("a.b", ["a.b"]),
    ("a.*", ["a.b", "a.c", "a.bc"]),
    ("*.b", ["a.b", "b.b"]),
    ("a.>", ["a.b", "a.c", "a.b.c", "a.b.c.d", "a.x.c", "a.bc"]),
    ("a.*.c", ["a.b.c", "a.x.c"]),
    ("a.b.>", ["a.b.c", "a.b.c.d"]),
    ("*.*", ["a.b", "a.c", "b.b", "a.bc", "x.a"]),
    ("*", ["a", "b", "ab"]),
    ("*.>", ["a.b", "a.c", "b.b", "a.b.c", "a.b.c.d", "a.x.c", "a.bc", "x.a"]),
    ("*.*.>", ["a.b.c", "a.b.c.d", "a.x.c"]),
    ("a.*.>", ["a.b.c", "a.b.c.d", "a.x.c"]),
    ("*.b.*", ["a.b.c"]),
    ("a.b.c.d.>", []),
]


@pytest.mark.parametrize("pattern,expected", WILDCARD_CASES)
def test_wildcards(broker, topic, pattern, expected):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic + "." + pattern)
        for t in TOPICS:
            await p.send({"op": "pub", "topic": topic + "." + t, "data": t})
        await p.sync()        # every pub processed (and queued to s) before s syncs
        got = await received_topics(s)
        assert got == [topic + "." + t for t in expected]
        await s.close()
        await p.close()
    run(main())


def test_bare_wildcards_top_level(broker, topic):
    # `*` matches one-segment topics only; `>` matches everything.
    async def main():
        star = await connect(broker.url, JSON)
        gt = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await star.sub("*")
        await gt.sub(">")
        for t in (topic, topic + ".a", topic + ".a.b"):
            await p.send({"op": "pub", "topic": t, "data": 0})
        await p.sync()
        assert await received_topics(star) == [topic]
        assert await received_topics(gt) == [topic, topic + ".a", topic + ".a.b"]
        for c in (star, gt, p):
            await c.close()
    run(main())


def test_gt_does_not_match_parent(broker, topic):
    # `a.>` matches a.b and a.b.c, not a.
    async def main():
        s = await connect(broker.url, JSON)
        await s.sub(topic + ".>")
        await s.pub(topic, 1)
        await s.pub(topic + "x.y", 1)
        assert await received_topics(s) == []
        await s.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_exactly_once_with_overlapping_patterns(broker, topic, enc):
    async def main():
        s = await connect(broker.url, enc)
        p = await connect(broker.url, JSON)
        for pat in ("a.b.c", "a.*.c", "a.>", "a.b.>", "*.b.c", "a.*.*", ">"):
            await s.sub(topic + "." + pat if pat != ">" else topic + ".>")
        await s.sub(topic + ".a.b.c")   # again: idempotent
        for i in range(5):
            await p.send({"op": "pub", "topic": topic + ".a.b.c", "data": i})
        await p.send({"op": "pub", "topic": topic + ".a.z.c", "data": 99})
        await p.sync()
        got = await s.sync()
        assert [m["data"] for m in got if m["topic"] == topic + ".a.b.c"] == [0, 1, 2, 3, 4]
        assert [m["data"] for m in got if m["topic"] == topic + ".a.z.c"] == [99]
        assert len(got) == 6
        await s.close()
        await p.close()
    run(main())


def test_unsub_one_of_overlapping_keeps_others(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic + ".>")
        await s.sub(topic + ".a")
        await s.unsub(topic + ".a")
        await p.pub(topic + ".a", 1)
        assert await received_topics(s) == [topic + ".a"]
        await s.unsub(topic + ".>")
        await p.pub(topic + ".a", 2)
        assert await received_topics(s) == []
        await s.close()
        await p.close()
    run(main())


def test_unsub_must_match_pattern_text_exactly(broker, topic):
    # unsub of a different (even overlapping) pattern removes nothing.
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic + ".*")
        await s.unsub(topic + ".>")
        await s.unsub(topic + ".a")
        await p.pub(topic + ".a", 1)
        assert await received_topics(s) == [topic + ".a"]
        await s.close()
        await p.close()
    run(main())


def test_msg_shape(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic + ".*")
        await p.pub(topic + ".x", {"a": [1, "b", None, True, 1.5]})
        m = await s.recv()
        assert m == {"op": "msg", "topic": topic + ".x", "data": {"a": [1, "b", None, True, 1.5]}}
        await s.close()
        await p.close()
    run(main())


def test_publisher_gets_own_message_only_if_subscribed(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        await c.pub(topic, "not subscribed")
        assert await received_topics(c) == []
        await c.sub(topic)
        await c.send({"op": "pub", "topic": topic, "data": "mine"})
        assert await c.recv() == {"op": "msg", "topic": topic, "data": "mine"}
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_fan_out_to_many_subscribers(broker, topic, enc):
    async def main():
        subs = [await connect(broker.url, enc if i % 2 else JSON) for i in range(20)]
        for i, s in enumerate(subs):
            await s.sub(topic + (".>" if i % 3 == 0 else ".x"))
        p = await connect(broker.url, enc)
        for i in range(10):
            await p.send({"op": "pub", "topic": topic + ".x", "data": i})
        await p.sync()
        for s in subs:
            got = await s.sync()
            assert [m["data"] for m in got] == list(range(10))
        for c in subs + [p]:
            await c.close()
    run(main())


def test_no_delivery_to_unrelated_subscribers(broker, topic):
    async def main():
        a = await connect(broker.url, JSON)
        b = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await a.sub(topic + ".a")
        await b.sub(topic + ".b")
        await p.pub(topic + ".a", 1)
        assert await received_topics(a) == [topic + ".a"]
        assert await received_topics(b) == []
        for c in (a, b, p):
            await c.close()
    run(main())


def test_at_most_once_closed_connection_misses_messages(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic)
        await s.close()
        await p.pub(topic, "missed")
        s2 = await connect(broker.url, JSON)
        assert s2.hello["conn"] != s.hello["conn"]
        await s2.sub(topic)
        assert await received_topics(s2) == []       # nothing replayed
        await p.pub(topic, "seen")
        assert await s2.recv() == {"op": "msg", "topic": topic, "data": "seen"}
        await s2.close()
        await p.close()
    run(main())


def test_subscriptions_die_with_connection(broker, topic):
    async def main():
        p = await connect(broker.url, JSON)
        for _ in range(5):
            s = await connect(broker.url, JSON)
            await s.sub(topic)
            await s.sub(topic + ".>")
            await s.close()
        s = await connect(broker.url, JSON)
        await s.sub(topic)
        await p.pub(topic, 1)
        assert await received_topics(s) == [topic]
        await s.close()
        await p.close()
    run(main())


def test_abrupt_disconnect_does_not_disturb_others(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        await s.sub(topic)
        doomed = await connect(broker.url, JSON)
        await doomed.sub(topic)
        doomed.ws.transport.abort()            # TCP reset, no close handshake
        p = await connect(broker.url, JSON)
        for i in range(50):
            await p.send({"op": "pub", "topic": topic, "data": i})
        await p.sync()
        got = await s.sync()
        assert [m["data"] for m in got] == list(range(50))
        await s.close()
        await p.close()
    run(main())


ORDER_COUNT = 10000


@pytest.mark.parametrize("pub_enc,sub_enc", [
    (JSON, JSON),
    pytest.param(MSGPACK, MSGPACK, marks=pytest.mark.needs_msgpack),
    pytest.param(JSON, MSGPACK, marks=pytest.mark.needs_msgpack),
])
def test_order_of_10000_messages(broker, topic, pub_enc, sub_enc):
    async def main():
        s = await connect(broker.url, sub_enc)
        p = await connect(broker.url, pub_enc)
        await s.sub(topic)
        got = []

        async def reader():
            while len(got) < ORDER_COUNT:
                m = await s.recv(timeout=15)
                assert m.get("op") == "msg", m
                got.append(m["data"]["seq"])

        task = asyncio.ensure_future(reader())
        for i in range(ORDER_COUNT):
            await p.send({"op": "pub", "topic": topic, "data": {"seq": i, "pad": "x" * 20}})
        await p.sync(timeout=20)
        await asyncio.wait_for(task, 20)
        assert len(got) == ORDER_COUNT
        assert got == list(range(ORDER_COUNT)), "out of order or lost: first bad index %d" % next(
            i for i, v in enumerate(got) if v != i)
        await s.expect_silence()
        await s.close()
        await p.close()
    run(main(), timeout=60)


def test_order_interleaved_publishers(broker, topic):
    # Order holds per publisher even when two publish concurrently.
    async def main():
        s = await connect(broker.url, JSON)
        p1 = await connect(broker.url, JSON)
        p2 = await connect(broker.url, JSON)
        await s.sub(topic + ".>")

        async def flood(p, name):
            for i in range(1000):
                await p.send({"op": "pub", "topic": topic + "." + name, "data": i})
            await p.sync()

        await asyncio.gather(flood(p1, "one"), flood(p2, "two"))
        got = await s.sync(timeout=15)
        assert [m["data"] for m in got if m["topic"] == topic + ".one"] == list(range(1000))
        assert [m["data"] for m in got if m["topic"] == topic + ".two"] == list(range(1000))
        assert len(got) == 2000
        for c in (s, p1, p2):
            await c.close()
    run(main(), timeout=60)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_large_message_near_limit_delivered(broker, topic, enc):
    async def main():
        s = await connect(broker.url, enc)
        p = await connect(broker.url, enc)
        await s.sub(topic)
        data = "z" * 60000
        await p.pub(topic, data)
        m = await s.recv()
        assert m == {"op": "msg", "topic": topic, "data": data}
        await s.close()
        await p.close()
    run(main())
