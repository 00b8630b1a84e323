"""Limits: frame size (1009), subscriptions (limit), connections (503), slow consumers (4001)."""
import asyncio
import json
import socket
import struct
import time

import msgpack
import pytest

from galetest import (DEFAULT_MAX_MSG, JSON, MSGPACK, OP_CONT, OP_TEXT,
                      RawWS, connect, connect_status, http_get, run)


def pub_frame(topic, size, rid=1):
    """A JSON pub text of exactly `size` bytes."""
    head = '{"op":"pub","topic":"%s","id":%d,"data":"' % (topic, rid)
    tail = '"}'
    n = size - len(head) - len(tail)
    assert n >= 0
    return head + "x" * n + tail


def mp_pub_frame(topic, size, rid=1):
    """A msgpack pub of exactly `size` bytes (bin32 data)."""
    head = b"\x84" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic") \
        + msgpack.packb(topic) + msgpack.packb("id") + msgpack.packb(rid) + msgpack.packb("data")
    n = size - len(head) - 5
    frame = head + b"\xc6" + struct.pack(">I", n) + b"\x00" * n
    assert len(frame) == size
    return frame


# --- 1009: frame over max_msg ------------------------------------------------------------

def test_default_max_message_boundary(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        assert c.hello["max_msg"] == DEFAULT_MAX_MSG
        await c.send_raw(pub_frame(topic, DEFAULT_MAX_MSG, rid=3))
        assert await c.recv() == {"op": "ack", "id": 3}
        await c.send_raw(pub_frame(topic, DEFAULT_MAX_MSG + 1, rid=4))
        code, got = await c.expect_close()
        assert code == 1009, (code, got)
        assert got == []
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
def test_default_max_message_msgpack(broker, topic):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await c.send_raw(mp_pub_frame(topic, DEFAULT_MAX_MSG, rid=5))
        assert await c.recv() == {"op": "ack", "id": 5}
        await c.send_raw(mp_pub_frame(topic, DEFAULT_MAX_MSG + 1, rid=6))
        code, got = await c.expect_close()
        assert code == 1009, (code, got)
        await c.close()
    run(main())


def test_oversize_frame_with_64bit_length(broker):
    # A frame whose header claims 1 TiB: closed with 1009 once past max_msg at the latest.
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        b0 = 0x80 | OP_TEXT
        ws.sock.sendall(struct.pack("!BBQ", b0, 0x80 | 127, 1 << 40) + b"\x01\x02\x03\x04")
        try:
            ws.sock.sendall(b"x" * (DEFAULT_MAX_MSG + 4096))
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, got = ws.recv_until_closed(timeout=5)
        assert code == 1009, (code, got)
    finally:
        ws.close()


@pytest.mark.gale_only
def test_oversize_declared_length_closes_without_waiting_for_payload(broker):
    # The header declares 1 TiB and a first 100 bytes follow: the length is known, so the
    # broker must close with 1009 at once, not wait for max_msg bytes that never come.
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        key = b"\x01\x02\x03\x04"
        ws.sock.sendall(struct.pack("!BBQ", 0x80 | OP_TEXT, 0x80 | 127, 1 << 40) + key
                        + bytes(c ^ key[i % 4] for i, c in enumerate(b"x" * 100)))
        code, got = ws.recv_until_closed(timeout=5)
        assert code == 1009, (code, got)
    finally:
        ws.close()


def test_oversize_does_not_disturb_others(broker, topic):
    async def main():
        s = await connect(broker.url, JSON)
        await s.sub(topic)
        bad = await connect(broker.url, JSON)
        await bad.send_raw("y" * (DEFAULT_MAX_MSG + 100))
        code, _ = await bad.expect_close()
        assert code == 1009
        p = await connect(broker.url, JSON)
        await p.pub(topic, 1)
        assert await s.recv() == {"op": "msg", "topic": topic, "data": 1}
        await s.close()
        await p.close()
    run(main())


@pytest.mark.gale_only
def test_max_message_flag_boundary_and_metric(make_broker):
    b = make_broker(["--max-message", "1K"])

    async def main():
        c = await connect(b.url, JSON)
        assert c.hello["max_msg"] == 1024
        await c.send_raw(pub_frame("a.b", 1024, rid=1))
        assert await c.recv() == {"op": "ack", "id": 1}
        await c.send_raw(pub_frame("a.b", 1025, rid=2))
        code, got = await c.expect_close()
        assert code == 1009, (code, got)
    run(main())
    assert b.metrics()["gale_oversize_closes_total"] == 1


@pytest.mark.gale_only
def test_fragmented_message_over_limit_raw(make_broker):
    b = make_broker(["--max-message", "1024"])
    ws = RawWS(b.port)
    try:
        ws.recv_json()
        # 512 + 512 = 1024: allowed.
        text = pub_frame("a.b", 1024, rid=7).encode()
        ws.send_frame(OP_TEXT, text[:512], fin=False)
        ws.send_frame(OP_CONT, text[512:], fin=True)
        assert ws.recv_json() == {"op": "ack", "id": 7}
        # Three 400-byte fragments, each under the limit, 1200 in all: 1009.
        text = pub_frame("a.b", 1200, rid=8).encode()
        ws.send_frame(OP_TEXT, text[:400], fin=False)
        ws.send_frame(OP_CONT, text[400:800], fin=False)
        ws.send_frame(OP_CONT, text[800:], fin=True)
        code, got = ws.recv_until_closed(timeout=5)
        assert code == 1009, (code, got)
    finally:
        ws.close()
    assert b.metrics()["gale_oversize_closes_total"] == 1


@pytest.mark.gale_only
def test_fragmented_message_over_limit_websockets(make_broker):
    b = make_broker(["--max-message", "1024"])

    async def main():
        c = await connect(b.url, JSON)
        text = pub_frame("a.b", 1023, rid=9)
        await c.ws.send([text[:300], text[300:600], text[600:]])      # fragmented, fits
        assert await c.recv() == {"op": "ack", "id": 9}
        text = pub_frame("a.b", 2000, rid=10)
        await c.ws.send([text[i:i + 250] for i in range(0, 2000, 250)])
        code, got = await c.expect_close()
        assert code == 1009, (code, got)
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_max_message_msgpack_flag(make_broker):
    b = make_broker(["--max-message", "2K"])

    async def main():
        c = await connect(b.url, MSGPACK)
        assert c.hello["max_msg"] == 2048
        await c.send_raw(mp_pub_frame("a.b", 2048, rid=1))
        assert await c.recv() == {"op": "ack", "id": 1}
        await c.send_raw(mp_pub_frame("a.b", 2049, rid=2))
        code, _ = await c.expect_close()
        assert code == 1009
    run(main())


# --- limit: subscriptions per connection -------------------------------------------------

@pytest.mark.gale_only
def test_max_subscriptions(make_broker):
    b = make_broker(["--max-subscriptions", "3"])

    async def main():
        c = await connect(b.url, JSON)
        await c.sub("a.1")
        await c.sub("a.*")
        await c.sub("a.>")
        r = await c.request({"op": "sub", "topic": "a.4", "id": 44})
        assert r.get("op") == "err" and r.get("code") == "limit" and r.get("id") == 44, r
        assert isinstance(r.get("msg"), str)
        await c.send({"op": "sub", "topic": "a.5"})
        r = await c.recv()
        assert r.get("op") == "err" and r.get("code") == "limit" and "id" not in r, r
        # Re-subscribing to a held pattern is not a new subscription.
        r = await c.request({"op": "sub", "topic": "a.*", "id": 45})
        assert r == {"op": "ack", "id": 45}
        # The refused subscriptions do not exist.
        p = await connect(b.url, JSON)
        await p.pub("b.4", 0)
        await p.pub("a.4", 1)       # matches a.* and a.> (once)
        got = await c.sync()
        assert got == [{"op": "msg", "topic": "a.4", "data": 1}]
        # Freeing one makes room for one.
        await c.unsub("a.1")
        await c.sub("b.4")
        r = await c.request({"op": "sub", "topic": "b.5", "id": 46})
        assert r.get("code") == "limit" and r.get("id") == 46, r
        # The limit is per connection.
        d = await connect(b.url, JSON)
        for t in ("a.1", "a.*", "a.>"):
            await d.sub(t)
        r = await d.request({"op": "sub", "topic": "zz", "id": 47})
        assert r.get("code") == "limit", r
        for x in (c, p, d):
            await x.close()
    run(main())
    m = b.metrics()
    assert m['gale_protocol_errors_total{code="limit"}'] == 4


@pytest.mark.gale_only
def test_max_subscriptions_freed_on_close(make_broker):
    b = make_broker(["--max-subscriptions", "1"])

    async def main():
        for _ in range(3):
            c = await connect(b.url, JSON)
            await c.sub("only.one")
            r = await c.request({"op": "sub", "topic": "two", "id": 2})
            assert r.get("code") == "limit"
            await c.close()
    run(main())


# --- 503: connections --------------------------------------------------------------------

@pytest.mark.gale_only
def test_max_connections_503(make_broker):
    b = make_broker(["--max-connections", "2"])

    async def main():
        a = await connect(b.url, JSON)
        c = await connect(b.url, JSON)
        raw = RawWS(b.port)
        assert raw.status == 503
        raw.close()
        assert await connect_status(b.url, [JSON]) == 503
        # HTTP endpoints still answer at the limit.
        st, _, body = await asyncio.to_thread(http_get, b.port, "/healthz")
        assert st == 200 and json.loads(body)["connections"] == 2
        # Existing connections keep working.
        await a.sub("x")
        await c.pub("x", 1)
        assert await a.recv() == {"op": "msg", "topic": "x", "data": 1}
        await c.close()
        # A slot frees up once a connection is gone.
        deadline = time.monotonic() + 3
        retries = 0
        while True:
            st = await connect_status(b.url, [JSON])
            if st == 101 or time.monotonic() > deadline:
                break
            assert st == 503
            retries += 1
            await asyncio.sleep(0.1)
        assert st == 101
        await a.close()
        return retries
    retries = run(main())
    m = b.metrics()
    assert m["gale_connections_refused_total"] == 2 + retries
    assert m["gale_connections_accepted_total"] == 3


# --- 4001: slow consumer -----------------------------------------------------------------

QUEUE_LIMIT = 64 * 1024
PAYLOAD = "p" * 1000
RSS_LIMIT_KB = 100 * 1024


async def flood(b, topic, fast, stop_when, max_msgs=40000, max_seconds=20.0, batch=50):
    """Publish numbered ~1 KB messages in acked batches, keeping `fast` (a reading
    subscriber) close behind; stop once stop_when(metrics) holds, or at the bounds.
    Returns (published count, peak RSS in KiB, metrics at stop time or None)."""
    p = await connect(b.url, JSON)
    seq, peak, hit = 0, 0, None
    deadline = time.monotonic() + max_seconds
    while seq < max_msgs and time.monotonic() < deadline:
        for _ in range(batch):
            await p.send({"op": "pub", "topic": topic, "data": {"seq": seq, "pad": PAYLOAD}})
            seq += 1
        await p.sync()
        peak = max(peak, b.rss_kb())
        # Keep the well-behaved subscriber within a batch or two of the publisher.
        t0 = time.monotonic()
        while fast.count < seq - 2 * batch and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.001)
        if seq % (batch * 10) == 0:
            m = await asyncio.to_thread(b.metrics)
            if stop_when(m):
                hit = m
                break
    await p.close()
    return seq, peak, hit


class Counter:
    """Reads a subscriber continuously, checking the sequence."""

    def __init__(self, client):
        self.c = client
        self.count = 0
        self.bad = None

    async def run(self):
        while True:
            m = await self.c.recv(timeout=30)
            if m.get("op") != "msg":
                continue
            if m["data"]["seq"] != self.count and self.bad is None:
                self.bad = (self.count, m["data"]["seq"])
            self.count += 1


@pytest.mark.gale_only
def test_slow_consumer_closed_4001(make_broker, topic):
    b = make_broker(["--queue-limit", "64K"])
    stalled = RawWS(b.port, rcvbuf=4096, timeout=5)
    assert stalled.status == 101
    stalled.recv_json()
    stalled.send_json({"op": "sub", "topic": topic, "id": 1})
    assert stalled.recv_json() == {"op": "ack", "id": 1}
    rss0 = b.rss_kb()

    async def main():
        fast = Counter(await connect(b.url, JSON))
        await fast.c.sub(topic)
        reader = asyncio.ensure_future(fast.run())
        published, peak, hit = await flood(
            b, topic, fast, lambda m: m["gale_slow_consumer_closes_total"] >= 1)
        assert hit is not None, "no slow-consumer close after %d messages (~%d KB)" % (
            published, published)
        # Publish a little more after the close: the others still get everything.
        p = await connect(b.url, JSON)
        for i in range(200):
            await p.send({"op": "pub", "topic": topic,
                          "data": {"seq": published + i, "pad": PAYLOAD}})
        await p.sync()
        await p.close()
        total = published + 200
        t0 = time.monotonic()
        while fast.count < total and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        reader.cancel()
        assert fast.bad is None, "fast subscriber saw seq %r" % (fast.bad,)
        assert fast.count == total
        await fast.c.close()
        return total, peak, hit

    total, peak, hit = run(main(), timeout=90)
    # Resume reading promptly: whatever reached the kernel, then a 4001 close frame.
    code, got = stalled.recv_until_closed(timeout=8)
    stalled.close()
    seqs = [json.loads(p)["data"]["seq"] for op, p in got]
    assert code == 4001, "close code %r after %d messages" % (code, len(seqs))
    assert seqs == list(range(len(seqs))), "not an in-order prefix"
    assert len(seqs) < total
    assert peak < RSS_LIMIT_KB, "broker RSS peaked at %d KiB (started at %d)" % (peak, rss0)
    m = b.metrics()
    assert m["gale_slow_consumer_closes_total"] == 1
    assert m["gale_connections"] == 0


@pytest.mark.gale_only
def test_slow_consumer_never_reading_is_dropped(make_broker, topic):
    # A stalled client that does not read at all after the broker decided to close it
    # is dropped within 10 s (plus slack).
    b = make_broker(["--queue-limit", "64K"])
    stalled = RawWS(b.port, rcvbuf=4096, timeout=5)
    stalled.recv_json()
    stalled.send_json({"op": "sub", "topic": topic, "id": 1})
    assert stalled.recv_json() == {"op": "ack", "id": 1}

    async def main():
        fast = Counter(await connect(b.url, JSON))
        await fast.c.sub(topic)
        reader = asyncio.ensure_future(fast.run())
        published, peak, hit = await flood(
            b, topic, fast, lambda m: m["gale_slow_consumer_closes_total"] >= 1)
        reader.cancel()
        await fast.c.close()
        assert hit is not None, "no slow-consumer close after %d messages" % published
        return time.monotonic()

    decided = run(main(), timeout=90)
    # Don't read for 12 s after the decision (at most ~1 s after the broker's).
    time.sleep(max(0.0, 12.0 - (time.monotonic() - decided)))
    st, _, body = http_get(b.port, "/healthz")
    assert json.loads(body)["connections"] == 0
    # Now read: the socket must end (EOF or reset), not hang open.
    deadline = time.monotonic() + 8
    ended = False
    stalled.sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = stalled.sock.recv(1 << 20)
        except socket.timeout:
            break
        except ConnectionResetError:
            ended = True
            break
        if not chunk:
            ended = True
            break
    stalled.close()
    assert ended, "the stalled connection was not dropped by the broker"
