"""What holds for MQTT and NATS connections as for gale's own (README "MQTT and NATS
clients"): the outbound queue limit (slow consumers closed with 4001), --max-connections,
--pub-rate, a token's expiry (1008), the broker's graceful stop (1001), and /metrics labelled
by protocol. Real gale-broker processes; raw MQTT and NATS clients over WebSocket.
"""
import signal
import time

import jwt
import pytest

from galetest import RawWS, connect, run
from test_mqtt import RawMQTT, publish_packet, subscribe_packet
from test_nats import NatsWS

pytestmark = pytest.mark.gale_only

SECRET = "adapters-test-secret-0123456789abcdef"


def token(ttl=300, sub=(">",), pub=(">",)):
    c = {"sub": "dev", "exp": int(time.time()) + ttl, "gale": {"sub": list(sub),
                                                            "pub": list(pub)}}
    return jwt.encode(c, SECRET, algorithm="HS256")


def close_code(ws, timeout=5.0):
    """Read until the broker's close frame; its code (None: the connection just ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            op, payload = ws.recv_message(deadline - time.monotonic(), answer_pings=True)
        except Exception:
            return ws.close_code
        if op == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    raise AssertionError("still open after %.1fs" % timeout)


def mqtt_sub(port, filt, client_id):
    r = RawMQTT(port)
    r.connect(client_id)
    r.send(subscribe_packet(1, [(filt, 0)]))
    assert r.recv() == (0x90, b"\x00\x01\x00")
    return r


def nats_sub(port, subject):
    n = NatsWS(port)
    n.handshake(verbose=False, pedantic=False)
    n.sub(subject, "1")
    n.sync()
    return n


def test_slow_mqtt_and_nats_consumers_closed_4001(make_broker):
    b = make_broker(["--queue-limit", "64K"])
    m = RawWS(b.port, path="/mqtt", protocols=("mqtt",), rcvbuf=4096, timeout=5)
    m.send_binary(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0]))
    assert m.recv_message(5)[1] == b"\x20\x02\x00\x00"
    m.send_binary(subscribe_packet(1, [("slow/t", 0)]))
    assert m.recv_message(5)[1] == b"\x90\x03\x00\x01\x00"
    n = RawWS(b.port, path="/nats", protocols=(), rcvbuf=4096, timeout=5)
    n.recv_message(5)  # INFO
    n.send_binary(b'CONNECT {"verbose":false}\r\nSUB slow.t 1\r\nPING\r\n')
    assert n.recv_message(5)[1] == b"PONG\r\n"
    pad = b"x" * 1000

    async def flood():
        p = await connect(b.url)
        for i in range(3000):
            await p.send({"op": "pub", "topic": "slow.t", "data": {"i": i, "p": pad.decode()}})
            if i % 100 == 99:
                await p.sync()
                if b.metrics().get("gale_slow_consumer_closes_total", 0) >= 2:
                    break
        await p.close()

    run(flood())
    assert b.metrics()["gale_slow_consumer_closes_total"] >= 2
    assert "slow consumer" in b.log_text()


def test_metrics_by_protocol(make_broker):
    b = make_broker()
    ms = [mqtt_sub(b.port, "mx/#", "m%d" % i) for i in range(2)]
    n = nats_sub(b.port, "mx.>")

    async def go():
        g = await connect(b.url)
        await g.sub("mx.>")
        await g.pub("mx.a", {"from": "gale"})
        await g.sync()
        await g.close()

    run(go())
    pub = RawMQTT(b.port)
    pub.connect("mpub")
    pub.send(publish_packet("mx/b", b"1", qos=1, pid=5))
    assert pub.recv() == (0x40, b"\x00\x05")
    n.pub("mx.c", b"2")
    n.sync()
    for m in ms:  # 3 each
        assert [m.recv()[0] & 0xf0 for _ in range(3)] == [0x30] * 3
    mt = b.metrics()
    assert mt['gale_protocol_connections{proto="mqtt"}'] == 3
    assert mt['gale_protocol_connections{proto="nats"}'] == 1
    assert mt['gale_protocol_connections{proto="gale"}'] == 0
    assert mt['gale_protocol_messages_published_total{proto="gale"}'] == 1
    assert mt['gale_protocol_messages_published_total{proto="mqtt"}'] == 1
    assert mt['gale_protocol_messages_published_total{proto="nats"}'] == 1
    assert mt['gale_protocol_messages_delivered_total{proto="mqtt"}'] == 6
    assert mt['gale_protocol_messages_delivered_total{proto="nats"}'] == 3
    assert mt['gale_protocol_messages_delivered_total{proto="gale"}'] == 1
    bad = RawMQTT(b.port)
    bad.send(publish_packet("x/y", b"", qos=0))  # before CONNECT
    bad.expect_closed()
    assert b.metrics()['gale_protocol_errors_total{proto="mqtt"}'] == 1


def test_max_connections_counts_adapters(make_broker):
    b = make_broker(["--max-connections", "2"])
    a = RawMQTT(b.port)
    c = NatsWS(b.port)
    third = RawWS(b.port, path="/mqtt", protocols=("mqtt",))
    assert third.status == 503
    a.close()
    c.close()


def test_pub_rate_mqtt_qos1_closes_nats_errs(make_broker):
    b = make_broker(["--pub-rate", "1", "--pub-burst", "2"])
    r = RawMQTT(b.port)
    r.connect("rated")
    for pid in (1, 2, 3):
        r.send(publish_packet("r/t", b"x", qos=1, pid=pid))
    assert r.recv() == (0x40, b"\x00\x01")
    assert r.recv() == (0x40, b"\x00\x02")
    r.expect_closed()  # the third is refused: no PUBACK for what was not delivered
    n = NatsWS(b.port)
    n.handshake(verbose=False, pedantic=False)
    for _ in range(3):
        n.pub("r.t", b"x")
    got = n.sync()
    assert len(got) == 1 and got[0][0] == "-ERR" and got[0][1].startswith("limit"), got


def test_token_expiry_closes_adapters_1008(make_broker):
    b = make_broker(["--jwt-secret", SECRET])
    tok = token(ttl=2)
    m = RawWS(b.port, path="/mqtt", protocols=("mqtt",))
    user, pw = b"u", tok.encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + b"\x00\x02id" + len(user).to_bytes(2, "big") + user
            + len(pw).to_bytes(2, "big") + pw)
    m.send_binary(bytes([0x10]) + _varint(len(body)) + body)
    assert m.recv_message(5)[1] == b"\x20\x02\x00\x00"
    n = NatsWS(b.port)
    n.read_info()
    n.send(('CONNECT {"verbose":false,"auth_token":"%s"}\r\n' % tok).encode())
    assert n.sync() == []
    assert close_code(m, 6) == 1008
    assert close_code(n.ws, 6) == 1008


def _varint(n):
    out = b""
    while True:
        d = n % 128
        n //= 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def test_graceful_stop_closes_adapters_1001(make_broker):
    b = make_broker()
    m = RawWS(b.port, path="/mqtt", protocols=("mqtt",))
    m.send_binary(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0]))
    assert m.recv_message(5)[1] == b"\x20\x02\x00\x00"
    n = NatsWS(b.port)
    n.handshake(verbose=False, pedantic=False)
    b.send_signal(signal.SIGTERM)
    assert close_code(m) == 1001
    assert close_code(n.ws) == 1001
    assert b.wait(10) == 0


def test_retained_kept_only_when_the_publish_is_accepted(make_broker):
    """A retained PUBLISH refused by --pub-rate is neither delivered nor kept."""
    b = make_broker(["--pub-rate", "1", "--pub-burst", "1"])
    r = RawMQTT(b.port)
    r.connect("ret")
    r.send(publish_packet("k/a", b"kept", qos=0, retain=True),
           publish_packet("k/b", b"refused", qos=0, retain=True))
    r.send(bytes([0xC0, 0]))  # PINGREQ: both publishes were handled before its answer
    assert r.recv() == (0xD0, b"")
    s = RawMQTT(b.port)
    s.connect("ret-sub")
    s.send(subscribe_packet(1, [("k/#", 0)]))
    assert s.recv() == (0x90, b"\x00\x01\x00")
    first, body = s.recv()
    assert first == 0x31 and body.endswith(b"kept"), (first, body)  # retain flag set
    with pytest.raises(AssertionError):
        s.recv(0.3)


def test_recovered_message_keeps_its_reply_subject(make_broker):
    """Single broker, topic with history: a NATS PUB with a reply subject, replayed to a gale
    client whose encoding nobody used at publish time (its frame is built at the replay)."""
    b = make_broker(["--history", "h.>=10"])

    async def go():
        probe = await connect(b.url)
        ack = await probe.sub("h.t")  # the stream's epoch
        await probe.unsub("h.t")
        n = NatsWS(b.port)
        n.handshake(verbose=False, pedantic=False)
        n.pub("h.t", b'{"q":1}', reply="_INBOX.req.7")
        n.sync()
        c = await connect(b.url)
        r = await c.ask({"op": "sub", "topic": "h.t", "since": {"ep": ack["ep"], "off": 0}})
        assert r["recovered"] is True, r
        (m,) = [x for x in c.pending if x.get("op") == "msg"]
        assert m["reply"] == "_INBOX.req.7" and m["data"] == {"q": 1} and m["off"] == 1, m
        for x in (probe, c):
            await x.close()
        n.close()

    run(go())


def test_nats_sids_bounded_by_max_subscriptions(make_broker):
    """Many sids on one subject cost the core one subscription but the adapter one entry
    each: --max-subscriptions bounds them too; an UNSUB frees a place."""
    b = make_broker(["--max-subscriptions", "8"])
    n = NatsWS(b.port)
    n.handshake(verbose=False, pedantic=False)
    for i in range(10):
        n.sub("same.subject", str(i))
    got = n.sync()
    assert [m[0] for m in got] == ["-ERR", "-ERR"] and "limit" in got[0][1], got
    n.unsub("0")
    n.sub("same.subject", "new")
    assert n.sync() == []
    n.pub("same.subject", b"x")
    sids = sorted(m[2] for m in n.msgs(8))
    assert sids == sorted([str(i) for i in range(1, 8)] + ["new"])
    n.close()


def test_retained_bounded_by_count_and_memory(make_broker):
    """A single broker keeps at most --mqtt-retained-max retained messages and
    --mqtt-retained-memory bytes of them; past either a new one is delivered, not kept, and
    the refusals are logged once (a flood does not flood the log); replacing one is fine."""
    b = make_broker(["--mqtt-retained-max", "3", "--mqtt-retained-memory", "1M",
                     "--max-message", "1M"])
    r = RawMQTT(b.port)
    r.connect("keeper")
    for i in range(6):
        r.send(publish_packet("rt/%d" % i, b"v%d" % i, qos=1, pid=i + 1, retain=True))
        assert r.recv() == (0x40, bytes([0, i + 1]))
    mt = b.metrics()
    assert mt["gale_mqtt_retained_messages"] == 3
    big = b"x" * 600000  # two of these pass 1 MiB
    for i, t in enumerate(("rt/0", "rt/1")):  # replacements: the count does not grow
        r.send(publish_packet(t, big, qos=1, pid=10 + i, retain=True))
        assert r.recv() == (0x40, bytes([0, 10 + i]))
    mt = b.metrics()
    assert mt["gale_mqtt_retained_messages"] == 2  # rt/0 replaced, rt/1 dropped past 1 MiB
    assert 600000 < mt["gale_mqtt_retained_bytes"] < 1 << 20
    log = b.log_text()
    assert log.count("were delivered but not kept") == 1, log
    s = RawMQTT(b.port)
    s.connect("reader")
    s.send(subscribe_packet(1, [("rt/#", 0)]))
    assert s.recv() == (0x90, b"\x00\x01\x00")
    got = sorted(s.recv()[1][2:6] for _ in range(2))
    assert got == [b"rt/0", b"rt/2"], got
