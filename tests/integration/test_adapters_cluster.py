"""MQTT and NATS clients across a cluster: real gale-broker processes with --redis sharing a
real redis-server (started here, no persistence), paho-mqtt over WebSocket, a raw NATS
client, and gale's own clients.

Checked: an MQTT publish on one broker reaches an MQTT, a NATS and a gale subscriber on the
other (and the reverse from each protocol); the QoS 0 / QoS 1 rule of MQTT deliveries holds
across brokers (the envelope carries it); a NATS reply subject crosses brokers (request on
one, responder on the other, the answer back); NATS echo:false holds for a topic with
history, whose messages every broker delivers from Redis; retained messages live in Redis:
kept on one broker, read by a new subscriber on the other (exact topic and wildcard), cleared
by an empty retained publish; --mqtt-retained-max bounds a shard's hash.
"""
import asyncio
import json
import time

import pytest

import test_cluster
from galetest import connect, run
from test_cluster import cluster, redis, redis_factory, wait_for  # noqa: F401
from test_mqtt import Paho
from test_nats import NatsWS

pytestmark = test_cluster.pytestmark


def two(make_broker, redis, extra=()):
    bs = cluster(make_broker, [redis.url], 2, list(extra))
    assert wait_for(lambda: all(b.healthz()["status"] == "ok" for b in bs), 10)
    return bs


def nats(b):
    c = NatsWS(b.port)
    c.handshake(verbose=False, pedantic=False)
    return c


def test_mqtt_nats_gale_across_brokers(make_broker, redis):
    a, b = two(make_broker, redis)
    sub_m = Paho(b.port).connect()
    assert sub_m.subscribe("x/+", 1) == [1]
    sub_n = nats(b)
    sub_n.sub("x.*", "9")
    sub_n.sync()

    async def go():
        g = await connect(b.url)
        await g.sub("x.>")
        pub_m = Paho(a.port).connect()
        pub_m.publish("x/1", b'{"n":1}', qos=1)
        pub_n = nats(a)
        pub_n.pub("x.2", b"raw\x00bytes")
        pub_n.sync()
        ga = await connect(a.url)
        await ga.pub("x.3", [3])
        want_g = [("x.1", {"data": {"n": 1}}), ("x.2", {"bin": "cmF3AGJ5dGVz"}),
                  ("x.3", {"data": [3]})]
        got_g = []
        for _ in range(3):
            m = await g.recv(5)
            got_g.append((m["topic"], {k: m[k] for k in ("data", "bin") if k in m}))
        assert sorted(got_g) == sorted(want_g)
        got_m = sorted((m.topic, m.payload, m.qos) for m in (sub_m.get() for _ in range(3)))
        # a QoS 1 publish comes at QoS 1; NATS and gale publishes count as QoS 1
        assert got_m == [("x/1", b'{"n":1}', 1), ("x/2", b"raw\x00bytes", 1), ("x/3", b"[3]", 1)]
        got_n = sorted((m[1], m[4]) for m in sub_n.msgs(3))
        assert got_n == [("x.1", b'{"n":1}'), ("x.2", b"raw\x00bytes"), ("x.3", b"[3]")]
        pub_m.publish("x/0", b"zero", qos=0)
        m = sub_m.get()
        assert (m.topic, m.payload, m.qos) == ("x/0", b"zero", 0)  # QoS 0 stays 0 across
        for c in (g, ga):
            await c.close()
        pub_m.close()
        pub_n.close()

    run(go())
    sub_m.close()
    sub_n.close()


def test_nats_reply_subject_across_brokers(make_broker, redis):
    a, b = two(make_broker, redis)
    responder = nats(b)
    responder.sub("svc.echo", "1")
    responder.sync()
    requester = nats(a)
    requester.sub("_INBOX.r1", "2")
    requester.sync()
    requester.pub("svc.echo", b"ping?", reply="_INBOX.r1")
    (m,) = responder.msgs(1)
    assert (m[1], m[3], m[4]) == ("svc.echo", "_INBOX.r1", b"ping?")
    responder.pub(m[3], b"pong!")
    (r,) = requester.msgs(1)
    assert (r[1], r[4]) == ("_INBOX.r1", b"pong!")

    async def gale_sees_reply():
        g = await connect(b.url)
        await g.sub("svc.>")
        requester.pub("svc.echo", b"{}", reply="_INBOX.r1")
        m = await g.recv(5)
        assert m["reply"] == "_INBOX.r1" and m["data"] == {}
        await g.close()

    run(gale_sees_reply())
    requester.close()
    responder.close()


def test_nats_echo_false_on_a_topic_with_history(make_broker, redis):
    """Every broker delivers a history topic's messages from Redis, its publisher's too: the
    envelope names the connection that asked for no echo."""
    a, b = two(make_broker, redis, ["--history", "h.>=10"])
    me = NatsWS(a.port)
    me.handshake(verbose=False, pedantic=False, echo=False)
    me.sub("h.t", "1")
    other = nats(a)
    other.sub("h.t", "1")
    far = nats(b)
    far.sub("h.t", "1")
    for c in (me, other, far):
        c.sync()
    me.pub("h.t", b"mine")
    assert [m[4] for m in other.msgs(1)] == [b"mine"]
    assert [m[4] for m in far.msgs(1)] == [b"mine"]
    time.sleep(0.3)
    me.expect_silence()
    for c in (me, other, far):
        c.close()


def test_retained_in_redis_across_brokers(make_broker, redis):
    a, b = two(make_broker, redis)
    p = Paho(a.port).connect()
    p.publish("r/one", b"first", qos=1, retain=True)
    p.publish("r/two", b'{"v":2}', qos=0, retain=True)
    assert wait_for(lambda: redis.cmd("HLEN", "gale:retained") == 2, 5)
    s = Paho(b.port).connect()
    assert s.subscribe("r/one", 1) == [1]
    m = s.get()
    assert (m.topic, m.payload, m.retain, m.qos) == ("r/one", b"first", True, 1)
    assert s.subscribe("r/#", 1) == [1]
    got = sorted((m.topic, m.payload, m.retain, m.qos) for m in (s.get(), s.get()))
    assert got == [("r/one", b"first", True, 1), ("r/two", b'{"v":2}', True, 0)]
    s.expect_nothing(0.3)
    p.publish("r/one", b"", qos=1, retain=True)  # an empty retained payload clears it
    m = s.get()  # delivered live, empty, retain flag 0
    assert (m.topic, m.payload, m.retain) == ("r/one", b"", False)
    assert wait_for(lambda: redis.cmd("HLEN", "gale:retained") == 1, 5)
    s2 = Paho(b.port).connect()
    assert s2.subscribe("r/+", 0) == [0]
    m = s2.get()
    assert (m.topic, m.payload, m.retain) == ("r/two", b'{"v":2}', True)
    s2.expect_nothing(0.3)
    # MQTT 4.7.2 on the Redis read too: '#' does not match a '$' topic, '$x/#' does
    p.publish("$x/r", b"dollar", qos=1, retain=True)
    assert wait_for(lambda: redis.cmd("HLEN", "gale:retained") == 2, 5)
    s3 = Paho(b.port).connect()
    assert s3.subscribe("#", 0) == [0]
    m = s3.get()
    assert (m.topic, m.payload, m.retain) == ("r/two", b'{"v":2}', True)
    s3.expect_nothing(0.3)
    assert s3.subscribe("$x/#", 0) == [0]
    m = s3.get()
    assert (m.topic, m.payload, m.retain) == ("$x/r", b"dollar", True)
    for c in (p, s, s2, s3):
        c.close()


def test_retained_max_per_shard(make_broker, redis):
    a, b = two(make_broker, redis, ["--mqtt-retained-max", "2"])
    p = Paho(a.port).connect()
    for i in range(3):
        p.publish("m/%d" % i, b"v%d" % i, qos=1, retain=True)
    assert wait_for(lambda: redis.cmd("HLEN", "gale:retained") == 2, 5)
    time.sleep(0.2)
    assert redis.cmd("HLEN", "gale:retained") == 2
    p.publish("m/0", b"new", qos=1, retain=True)  # an existing topic is replaced
    assert wait_for(lambda: redis.cmd("HGET", "gale:retained", "m.0") == b"\x01new", 5)
    assert "retained-max" in a.log_text()
    p.close()
