"""Client operations sub/unsub/pub/ping, with and without id, in both encodings."""
import json

import pytest

from galetest import JSON, MSGPACK, connect, run

ENCODINGS = [JSON, pytest.param(MSGPACK, marks=pytest.mark.needs_msgpack)]


@pytest.mark.parametrize("enc", ENCODINGS)
def test_ping_with_id_pongs_same_id(broker, enc):
    async def main():
        c = await connect(broker.url, enc)
        for i in (0, 1, 42, 2**31, 2**32 + 5, 2**53 - 1):
            await c.send({"op": "ping", "id": i})
            r = await c.recv()
            assert r == {"op": "pong", "id": i}
            assert type(r["id"]) is int
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_ping_without_id_pongs_without_id(broker, enc):
    async def main():
        c = await connect(broker.url, enc)
        await c.send({"op": "ping"})
        r = await c.recv()
        assert r.get("op") == "pong"
        assert "id" not in r, r
        await c.expect_silence()
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("op", ["sub", "unsub"])
def test_sub_unsub_with_id_acks(broker, enc, op, topic):
    async def main():
        c = await connect(broker.url, enc)
        await c.send({"op": op, "topic": topic + ".a", "id": 77})
        r = await c.recv()
        assert r.get("op") == "ack" and r.get("id") == 77, r
        await c.send({"op": op, "topic": topic + ".*", "id": 0})
        r = await c.recv()
        assert r.get("op") == "ack" and r.get("id") == 0, r
        await c.expect_silence()
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_pub_with_id_acks(broker, enc, topic):
    async def main():
        c = await connect(broker.url, enc)
        await c.send({"op": "pub", "topic": topic, "data": {"k": 1}, "id": 5})
        r = await c.recv()
        assert r.get("op") == "ack" and r.get("id") == 5, r
        await c.expect_silence()  # not subscribed: no msg to itself
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_success_without_id_is_silent(broker, enc, topic):
    async def main():
        c = await connect(broker.url, enc)
        await c.send({"op": "sub", "topic": topic + ".x"})
        await c.send({"op": "unsub", "topic": topic + ".x"})
        await c.send({"op": "unsub", "topic": topic + ".never"})
        await c.send({"op": "pub", "topic": topic + ".y", "data": 1})
        # The next message is the pong of this ping: nothing was sent for the above.
        await c.send({"op": "ping", "id": 9})
        assert await c.recv() == {"op": "pong", "id": 9}
        await c.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_sub_without_id_takes_effect(broker, enc, topic):
    async def main():
        s = await connect(broker.url, enc)
        p = await connect(broker.url, enc)
        await s.send({"op": "sub", "topic": topic})
        await s.expect_silence()   # the sub has been processed once its pong is back
        await p.pub(topic, "hi")
        assert await s.recv() == {"op": "msg", "topic": topic, "data": "hi"}
        await s.send({"op": "unsub", "topic": topic})
        await s.expect_silence()
        await p.pub(topic, "again")
        await s.expect_silence()
        await s.close()
        await p.close()
    run(main())


@pytest.mark.parametrize("enc", ENCODINGS)
def test_pub_without_id_delivers(broker, enc, topic):
    async def main():
        s = await connect(broker.url, enc)
        p = await connect(broker.url, enc)
        await s.sub(topic)
        await p.send({"op": "pub", "topic": topic, "data": [1, 2]})
        assert await s.recv() == {"op": "msg", "topic": topic, "data": [1, 2]}
        await p.expect_silence()
        await s.close()
        await p.close()
    run(main())


def test_unsub_of_pattern_not_held_acks(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        r = await c.request({"op": "unsub", "topic": topic + ".never.held", "id": 31})
        assert r.get("op") == "ack" and r.get("id") == 31, r
        r = await c.request({"op": "unsub", "topic": topic + ".>", "id": 32})
        assert r.get("op") == "ack" and r.get("id") == 32, r
        await c.close()
    run(main())


def test_sub_is_idempotent(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        await s.sub(topic)
        await s.sub(topic)
        await p.pub(topic, 1)
        assert await s.recv() == {"op": "msg", "topic": topic, "data": 1}
        await s.expect_silence()           # one subscription: one delivery
        await s.unsub(topic)               # one unsub removes it
        await p.pub(topic, 2)
        await s.expect_silence()
        await s.close()
        await p.close()
    run(main())


def test_sub_twice_pattern_idempotent(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        p = await connect(broker.url, JSON)
        for _ in range(3):
            await s.sub(topic + ".>")
        await s.unsub(topic + ".>")
        await p.pub(topic + ".a.b", 1)
        await s.expect_silence()
        await s.close()
        await p.close()
    run(main())


def test_unknown_fields_ignored(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        await s.send_raw(json.dumps({"op": "sub", "topic": topic, "id": 1, "extra": {"a": [1]},
                                     "qos": 2, "reply_to": "x"}))
        assert await s.recv() == {"op": "ack", "id": 1}
        await s.send_raw(json.dumps({"op": "pub", "topic": topic, "data": 3, "id": 2,
                                     "ttl": 5, "headers": {"h": "v"}}))
        got = [await s.recv(), await s.recv()]
        # The msg (own subscription) and the ack, in the order the broker chose.
        assert {"op": "ack", "id": 2} in got
        msg = [m for m in got if m.get("op") == "msg"]
        assert msg == [{"op": "msg", "topic": topic, "data": 3}], got
        await s.send_raw(json.dumps({"op": "ping", "id": 3, "whatever": None}))
        assert await s.recv() == {"op": "pong", "id": 3}
        await s.close()
    run(main())


@pytest.mark.needs_msgpack
def test_unknown_fields_ignored_msgpack(broker, topic):
    async def main():
        s = await connect(broker.url, MSGPACK)
        await s.send({"op": "sub", "topic": topic, "id": 1, "extra": b"\x00\x01", "n": 1.5})
        assert await s.recv() == {"op": "ack", "id": 1}
        await s.send({"op": "ping", "id": 2, "z": [None, True]})
        assert await s.recv() == {"op": "pong", "id": 2}
        await s.close()
    run(main())


def test_many_pipelined_requests_answered_in_order(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        ids = list(range(100, 400))
        for i in ids:
            op = ("sub", "unsub", "ping")[i % 3]
            m = {"op": op, "id": i}
            if op != "ping":
                m["topic"] = "%s.%d" % (topic, i % 7)
            await c.send(m)
        for i in ids:
            r = await c.recv()
            want = "pong" if i % 3 == 2 else "ack"
            assert r == {"op": want, "id": i}, (i, r)
        await c.close()
    run(main())


def test_reply_id_echo_large_values(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        for i in (2**53 - 1, 2**53 - 2, 2**40 + 3):
            await c.send_raw('{"op":"sub","topic":"%s","id":%d}' % (topic, i))
            raw = await c.recv_raw()
            assert json.loads(raw) == {"op": "ack", "id": i}
            assert '"id":%d' % i in raw.replace(" ", ""), raw
        await c.close()
    run(main())
