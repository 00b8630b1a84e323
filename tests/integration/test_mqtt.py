"""MQTT 3.1.1 over WebSocket at /mqtt: gale's MQTT adapter, checked against the same tests
on a reference server, Debian's mosquitto 2.0.11 (ref_mosquitto.py).

Every test taking the fixture `mq` runs twice: against a dedicated gale-broker
(--max-message 4096) and against a dedicated mosquitto (max_packet_size 4096). Clients:
  * paho-mqtt 1.6.1 (python3-paho-mqtt, protocol MQTTv311, transport websockets, path
    /mqtt) in its own network thread, automatic reconnection off;
  * RawMQTT: hand-built MQTT packets in binary frames of galetest.RawWS (subprotocol
    `mqtt`), for bad input, keepalive, wills and framing.
Where the two servers may legitimately differ, the test says what each may do:
  * granted QoS: gale grants min(requested, 1), mosquitto what was requested;
  * CONNECT level 5: mosquitto speaks MQTT 5, gale answers CONNACK 1 (gale-only test);
  * keepalive: mosquitto 2.0.11 checks keepalives only every few seconds (a client with
    keepalive 1 goes after 4.5-6 s), gale within 1.5 x keepalive;
  * oversize packets: mosquitto 2.0.11 does not apply max_packet_size on its websockets
    listener (it does on plain TCP): xfail (strict) there;
  * overlapping subscriptions: mosquitto 2.0.11 sends the one copy at the QoS of the
    exact-topic subscription, not the highest matching one (MQTT-3.3.5-1): xfail (strict).
Tests marked gale_only run against gale alone: topics gale cannot express, tokens
(--jwt-secret; the token is the MQTT password), subprotocol choice, the mapping between
MQTT payloads and gale's JSON/MessagePack clients on /ws.

Every wait is bounded (at most 5 s; keepalive on mosquitto 8 s); no sleep is over 1.5 s.
"""
import asyncio
import base64
import json
import os
import queue
import socket
import struct
import threading
import time

import jwt
import paho.mqtt.client as mqtt
import pytest

import galetest
from galetest import HOST, MSGPACK, OP_BINARY, OP_CLOSE, Closed, RawWS, TARGET, run
from ref_mosquitto import make_mosquitto, mosquitto_logdir  # noqa: F401 (fixtures)

MQTT_PATH = "/mqtt"
MAX = 4096          # gale --max-message, mosquitto max_packet_size
WAIT = 5.0          # bound of every wait for something that must happen
QUIET = 0.5         # how long "nothing arrives" is watched
SECRET = "mqtt-test-secret-0123456789abcdef"

# Packet types (first byte, high nibble)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


# ---------------------------------------------------------------------------------------
# MQTT packets by hand
# ---------------------------------------------------------------------------------------

def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def remaining_length(n):
    out = bytearray()
    while True:
        d, n = n % 128, n // 128
        out.append(d | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body=b""):
    return bytes([first]) + remaining_length(len(body)) + body


def connect_packet(client_id="raw", keepalive=60, level=4, name="MQTT", clean=True,
                   will=None, username=None, password=None):
    """will: (topic, payload, qos, retain)."""
    flags = 0x02 if clean else 0
    payload = mstr(client_id)
    if will:
        wt, wp, wq, wr = will
        flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
        payload += mstr(wt) + mstr(wp)
    if username is not None:
        flags |= 0x80
        payload += mstr(username)
    if password is not None:
        flags |= 0x40
        payload += mstr(password)
    return packet(0x10, mstr(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
                  + payload)


def publish_packet(topic, payload=b"", qos=0, pid=1, retain=False):
    body = mstr(topic) + (struct.pack("!H", pid) if qos else b"") + payload
    return packet(0x30 | (qos << 1) | (1 if retain else 0), body)


def subscribe_packet(pid, filters, first=0x82):
    """filters: [(filter, qos)]."""
    return packet(first, struct.pack("!H", pid)
                  + b"".join(mstr(f) + bytes([q]) for f, q in filters))


PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


def split_packets(buf):
    """(packets, rest): the whole packets at the start of buf, as (first byte, body)."""
    out = []
    while True:
        if len(buf) < 2:
            return out, buf
        n, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return out, buf
            d = buf[i]
            n += (d & 0x7F) * mult
            mult *= 128
            i += 1
            if not d & 0x80:
                break
            assert i < 5, "server sent a malformed remaining length: %r" % buf[:8]
        if len(buf) < i + n:
            return out, buf
        out.append((buf[0], bytes(buf[i:i + n])))
        buf = buf[i + n:]


class RawMQTT:
    """MQTT by hand over galetest.RawWS: binary frames, packets split or joined at will."""

    def __init__(self, port, protocols=("mqtt",), path=MQTT_PATH):
        self.ws = RawWS(port, path=path, protocols=protocols, timeout=WAIT)
        self.buf = b""
        self.packets = []   # parsed, not yet returned

    @property
    def status(self):
        return self.ws.status

    def send(self, *pkts):
        """All of pkts in one binary WebSocket message."""
        self.ws.send_binary(b"".join(pkts))

    def recv(self, timeout=WAIT):
        """(first byte, body) of the next packet; raises Closed, AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while not self.packets:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no MQTT packet within %.1fs" % timeout)
            try:
                op, payload = self.ws.recv_message(left)
            except socket.timeout:
                raise AssertionError("no MQTT packet within %.1fs" % timeout) from None
            if op == OP_CLOSE:
                raise Closed("close frame %r" % (self.ws.close_code,))
            assert op == OP_BINARY, "MQTT in a non-binary frame (opcode %d)" % op
            self.buf += payload
            got, self.buf = split_packets(self.buf)
            self.packets.extend(got)
        return self.packets.pop(0)

    def connect(self, client_id="raw", **kw):
        self.send(connect_packet(client_id, **kw))
        first, body = self.recv()
        assert (first, body) == (0x20, b"\x00\x00"), "CONNACK: %r %r" % (first, body)

    def expect_closed(self, timeout=WAIT):
        """Reads until the server closes (close frame, EOF or reset); returns the packets
        read before. AssertionError if the connection is still open after timeout."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs (read %r)"
                                     % (timeout, got))
            try:
                got.append(self.recv(left))
            except (Closed, ConnectionError):
                return got
            except AssertionError:
                raise AssertionError("connection still open after %.1fs (read %r)"
                                     % (timeout, got)) from None

    def close(self):
        self.ws.close()


# ---------------------------------------------------------------------------------------
# paho clients
# ---------------------------------------------------------------------------------------

class Msg:
    def __init__(self, m):
        self.topic = m.topic
        self.payload = bytes(m.payload)
        self.qos = m.qos
        self.retain = bool(m.retain)

    def __repr__(self):
        return "Msg(%r, %r, qos=%d, retain=%d)" % (self.topic, self.payload[:40], self.qos,
                                                   self.retain)


class Paho:
    """A paho 1.6.1 client over WebSocket with its network thread; every wait bounded."""

    def __init__(self, port, client_id="", clean_session=True, path=MQTT_PATH):
        self.port = port
        self.c = mqtt.Client(client_id=client_id, clean_session=clean_session,
                             protocol=mqtt.MQTTv311, transport="websockets",
                             reconnect_on_failure=False)
        self.c.ws_set_options(path=path)
        self.cv = threading.Condition()
        self.connack = None
        self.disconnect_rc = None
        self.subacks = {}
        self.unsubacks = set()
        self.published = set()
        self.msgs = queue.Queue()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.c.on_publish = self._on_publish
        self.c.on_message = lambda c, u, m: self.msgs.put(Msg(m))
        self.started = False

    # callbacks (network thread)
    def _set(self, fn):
        with self.cv:
            fn()
            self.cv.notify_all()

    def _on_connect(self, c, u, flags, rc):
        self._set(lambda: setattr(self, "connack", rc))

    def _on_disconnect(self, c, u, rc):
        self._set(lambda: setattr(self, "disconnect_rc", rc))

    def _on_subscribe(self, c, u, mid, granted):
        self._set(lambda: self.subacks.__setitem__(mid, list(granted)))

    def _on_unsubscribe(self, c, u, mid):
        self._set(lambda: self.unsubacks.add(mid))

    def _on_publish(self, c, u, mid):
        self._set(lambda: self.published.add(mid))

    def _wait(self, pred, what, timeout=WAIT):
        with self.cv:
            if not self.cv.wait_for(pred, timeout):
                raise AssertionError("no %s within %.1fs" % (what, timeout))

    # operations
    def connect(self, keepalive=60, will=None, username=None, password=None, expect=0):
        if will:
            self.c.will_set(*will)
        if username is not None or password is not None:
            self.c.username_pw_set(username, password)
        self.c.connect(HOST, self.port, keepalive)
        self.c.loop_start()
        self.started = True
        self._wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack == expect, "CONNACK %r, expected %r" % (self.connack, expect)
        return self

    def subscribe(self, topic, qos=0):
        """topic or [(filter, qos)]; returns the granted codes of the SUBACK."""
        rc, mid = self.c.subscribe(topic, qos) if isinstance(topic, str) \
            else self.c.subscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self.subacks, "SUBACK")
        return self.subacks[mid]

    def unsubscribe(self, topic):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait(lambda: mid in self.unsubacks, "UNSUBACK")

    def publish(self, topic, payload, qos=0, retain=False, wait=True):
        """wait: until on_publish (QoS 0 written, QoS 1 PUBACK, QoS 2 PUBCOMP)."""
        info = self.c.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        if wait:
            self.wait_published([info.mid])
        return info.mid

    def wait_published(self, mids, timeout=WAIT):
        mids = set(mids)
        self._wait(lambda: mids <= self.published, "acknowledgement of %d publishes"
                   % len(mids), timeout)

    def get(self, timeout=WAIT):
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message within %.1fs" % timeout) from None

    def expect_nothing(self, timeout=QUIET):
        try:
            m = self.msgs.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError("unexpected message %r" % (m,))

    def wait_disconnected(self, timeout=WAIT):
        self._wait(lambda: self.disconnect_rc is not None, "disconnection", timeout)
        return self.disconnect_rc

    def close(self):
        if not self.started:
            return
        self.started = False
        try:
            self.c.disconnect()
        except Exception:
            pass
        self.c.loop_stop()


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------

class Target:
    def __init__(self, name, server):
        self.name = name
        self.server = server
        self.port = server.port
        self._pahos = []
        self.raws = []

    @property
    def gale(self):
        return self.name == "gale"

    def granted(self, requested):
        """The SUBACK codes this server may answer to a request of QoS requested."""
        return {min(requested, 1)} if self.gale else {requested}

    def paho(self, client_id="", clean_session=True):
        p = Paho(self.port, client_id, clean_session)
        self._pahos.append(p)
        return p

    def client(self, client_id="", **kw):
        """A connected paho client (CONNACK 0 checked)."""
        return self.paho(client_id).connect(**kw)

    def clients(self, *client_ids):
        """Connected paho clients, one per id ("" for a generated one), connected at once
        (mosquitto takes ~0.2 s per WebSocket handshake)."""
        ps = [self.paho(cid) for cid in client_ids]
        errs = []

        def go(p):
            try:
                p.connect()
            except BaseException as e:   # noqa: B902 (reported below)
                errs.append(e)
        threads = [threading.Thread(target=go, args=(p,), daemon=True) for p in ps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT + 1)
        assert not any(t.is_alive() for t in threads), "a paho connect did not return"
        if errs:
            raise errs[0]
        return ps

    def raw(self, protocols=("mqtt",)):
        r = RawMQTT(self.port, protocols)
        self.raws.append(r)
        return r

    def close_all(self):
        errs = []
        threads = []
        for p in self._pahos:
            t = threading.Thread(target=p.close, daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(WAIT)
            if t.is_alive():
                errs.append("a paho client did not stop")
        for r in self.raws:
            r.close()
        return errs


def gale_target(make_broker, args=()):
    b = make_broker(list(args))
    return Target("gale", b)


@pytest.fixture(params=["gale", "mosquitto"])
def mq(request):
    if request.param == "gale":
        if TARGET != "gale":
            pytest.skip("the MQTT adapter is gale's (GALE_TARGET=%s)" % TARGET)
        t = gale_target(request.getfixturevalue("make_broker"), ["--max-message", str(MAX)])
    else:
        if os.environ.get("GALE_SKIP_REFERENCE"):
            pytest.skip("GALE_SKIP_REFERENCE: the reference server's half runs in the plain "
                        "build")
        m = request.getfixturevalue("make_mosquitto")(["max_packet_size %d" % MAX])
        t = Target("mosquitto", m)
    yield t
    errs = t.close_all()
    assert not errs, errs


@pytest.fixture
def gale_mq(make_broker):
    """A gale broker of default settings (for the gale-only tests)."""
    t = gale_target(make_broker)
    yield t
    t.close_all()


# ---------------------------------------------------------------------------------------
# Both targets: the protocol
# ---------------------------------------------------------------------------------------

def test_connect_connack_accepted(mq):
    r = mq.raw()
    assert r.status == 101
    assert r.ws.protocol == "mqtt"
    r.send(connect_packet("c-accept"))
    assert r.recv() == (0x20, b"\x00\x00")   # session present 0 (clean session), rc 0
    p = mq.client("c-paho")
    assert p.connack == 0


def test_subscribe_granted_qos(mq):
    p = mq.client()
    granted = p.subscribe([("s/0", 0), ("s/1", 1), ("s/2", 2)])
    assert len(granted) == 3
    for req, g in zip((0, 1, 2), granted):
        assert g in mq.granted(req), (req, granted)
    for req in (0, 1, 2):
        g = p.subscribe("one/%d" % req, req)
        assert len(g) == 1 and g[0] in mq.granted(req), (req, g)


def test_publish_qos_0_1_2_delivered_once(mq):
    sub, pub = mq.clients("sub", "pub")
    (granted,) = sub.subscribe("q/#", 2)
    assert granted in mq.granted(2)
    for qos in (0, 1, 2):
        pub.publish("q/%d" % qos, b"m%d" % qos, qos)   # waits for on_publish
    got = [sub.get() for _ in range(3)]
    got.sort(key=lambda m: m.topic)
    assert [(m.topic, m.payload) for m in got] == [("q/0", b"m0"), ("q/1", b"m1"),
                                                   ("q/2", b"m2")]
    for m in got:
        assert not m.retain, m
    sub.expect_nothing(0.2)


def test_delivered_qos_is_min_of_published_and_granted(mq):
    """3.8.4: a message goes out at min(its PUBLISH's QoS, the subscription's granted QoS);
    a QoS 0 PUBLISH is never upgraded."""
    sub, pub = mq.clients("", "")
    granted = sub.subscribe([("d/0", 0), ("d/1", 1), ("d/2", 2)])
    for req in (0, 1, 2):
        for qos in (0, 1, 2):
            pub.publish("d/%d" % req, b"%d" % qos, qos)
    got = {}
    for _ in range(9):
        m = sub.get()
        got[(m.topic, m.payload)] = m.qos
    want = {("d/%d" % req, b"%d" % qos): min(qos, granted[req])
            for req in (0, 1, 2) for qos in (0, 1, 2)}
    assert got == want, "{(topic, published QoS): delivered QoS}; granted %r" % granted
    sub.expect_nothing(0.1)


def test_qos2_handshake_raw(mq):
    """PUBLISH QoS 2 -> PUBREC; PUBREL -> PUBCOMP; delivered once to a subscriber."""
    sub = mq.client("sub2")
    sub.subscribe("q2/t", 1)
    r = mq.raw()
    r.connect("raw-q2")
    r.send(publish_packet("q2/t", b"exactly-once", qos=2, pid=7))
    assert r.recv() == (0x50, b"\x00\x07")                  # PUBREC 7
    r.send(packet(0x62, b"\x00\x07"))                       # PUBREL 7
    assert r.recv() == (0x70, b"\x00\x07")                  # PUBCOMP 7
    m = sub.get()
    assert (m.topic, m.payload) == ("q2/t", b"exactly-once")
    sub.expect_nothing(0.2)


def test_wildcards(mq):
    topics = ["a", "a/b", "a/b/c", "c/b", "x/y/z", "b", "x/y/w"]
    filters = {"+/b": {"a/b", "c/b"}, "a/#": {"a", "a/b", "a/b/c"}, "x/+/z": {"x/y/z"},
               "#": set(topics), "a/+": {"a/b"}, "+": {"a", "b"}}
    pub, *others = mq.clients(*[""] * (len(filters) + 1))
    subs = dict(zip(filters, others))
    for f, s in subs.items():
        s.subscribe([(f, 1), ("end/mark", 1)])
    for t in topics:
        pub.publish(t, t.encode(), 1)
    pub.publish("end/mark", b"", 1)
    for f, s in subs.items():
        got = []
        while True:
            m = s.get()
            if m.topic == "end/mark":
                break
            assert m.payload == m.topic.encode(), m
            got.append(m.topic)
        assert sorted(got) == sorted(filters[f]), (f, got)   # each exactly once


def test_dollar_topics_not_matched_by_leading_wildcards(mq):
    """4.7.2: a filter starting with '#' or '+' does not match a topic starting with '$';
    one naming the '$' level does. Live and retained."""
    pub, *subs = mq.clients("", "", "", "", "")
    filters = ["#", "+/x", "$sys/#", "$sys/+"]
    for f, s in zip(filters, subs):
        s.subscribe([(f, 1), ("end/mark", 1)])
    pub.publish("$sys/x", b"d", 1, retain=True)
    pub.publish("end/mark", b"", 1)
    for f, s in zip(filters, subs):
        got = []
        while True:
            m = s.get()
            if m.topic == "end/mark":
                break
            got.append(m.topic)
        assert got == ([] if f in ("#", "+/x") else ["$sys/x"]), (f, got)
    late = mq.client("")
    (g,) = mq.granted(1)
    assert late.subscribe([("#", 1), ("+/x", 1)]) == [g, g]
    late.expect_nothing(0.3)
    assert late.subscribe("$sys/#", 1) == [g]
    m = late.get()
    assert (m.topic, m.retain) == ("$sys/x", True)
    pub.publish("$sys/x", b"", 1, retain=True)  # leave no retained message behind


def test_overlapping_subscriptions_deliver_once(mq):
    """3.3.5 allows one copy per matching subscription; both servers send one."""
    s, pub = mq.clients("", "")
    s.subscribe([("o/#", 1), ("o/+", 1), ("+/x", 1), ("o/x", 1)])
    pub.publish("o/x", b"one", 1)
    m = s.get()
    assert (m.topic, m.payload, m.qos) == ("o/x", b"one", 1), m
    s.expect_nothing(0.3)


def test_overlapping_subscriptions_highest_qos(mq, request):
    """MQTT-3.3.5-1: a message matching several subscriptions goes out respecting the
    highest QoS among them (here 1, though the exact filter has 0)."""
    if not mq.gale:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="mosquitto 2.0.11 uses the QoS of the exact-topic "
                                "subscription (0) over wildcard ones granted 1"))
    s, pub = mq.clients("", "")
    assert s.subscribe([("o/#", 1), ("o/x", 0)]) == [1, 0]
    pub.publish("o/x", b"one", 1)
    m = s.get()
    assert (m.topic, m.payload) == ("o/x", b"one"), m
    assert m.qos == 1, m
    s.expect_nothing(0.2)


def test_unsubscribe_stops_delivery(mq):
    s, pub = mq.clients("", "")
    s.subscribe([("u/a", 1), ("u/mark", 1)])
    pub.publish("u/a", b"before", 1)
    assert s.get().payload == b"before"
    s.unsubscribe("u/a")
    pub.publish("u/a", b"after", 1)
    pub.publish("u/mark", b"mark", 1)
    m = s.get()
    assert (m.topic, m.payload) == ("u/mark", b"mark"), m
    s.expect_nothing(0.2)


def test_retained(mq):
    old, pub, *news = mq.clients("old", "pub", "", "", "", "")
    old.subscribe("r/t", 1)
    pub.publish("r/t", b"kept", 1, retain=True)
    m = old.get()
    assert (m.topic, m.payload, m.retain) == ("r/t", b"kept", False), m
    for f, new in zip(("r/t", "r/+", "r/#"), news):
        new.subscribe(f, 1)
        m = new.get()
        assert (m.topic, m.payload, m.retain) == ("r/t", b"kept", True), (f, m)
        assert m.qos == 1
        new.expect_nothing(0.1)
    # a retained message replaces the previous one
    pub.publish("r/t", b"newer", 1, retain=True)
    assert old.get().payload == b"newer"
    new = news[3]
    new.subscribe("r/t", 1)
    m = new.get()
    assert (m.payload, m.retain) == (b"newer", True), m
    new.expect_nothing(0.1)


def test_empty_retained_clears(mq):
    pub, first, late = mq.clients("pub", "", "")
    pub.publish("r/e", b"kept", 1, retain=True)
    first.subscribe("r/e", 1)
    assert first.get().retain
    pub.publish("r/e", b"", 1, retain=True)
    # MQTT-3.3.1-10: delivered as normal to existing subscribers
    m = first.get()
    assert (m.payload, m.retain) == (b"", False), m
    late.subscribe([("r/e", 1), ("r/#", 1)])
    late.expect_nothing(QUIET)


def test_will_on_abnormal_drop_tcp(mq):
    sub = mq.client()
    sub.subscribe("w/t", 1)
    r = mq.raw()
    r.connect("will-tcp", will=("w/t", b"gone", 1, False))
    r.ws.sock.close()                         # no DISCONNECT, no close frame
    m = sub.get()
    assert (m.topic, m.payload, m.retain) == ("w/t", b"gone", False), m
    sub.expect_nothing(0.2)


def test_will_on_websocket_close_without_disconnect(mq):
    sub = mq.client()
    sub.subscribe("w/t", 1)
    r = mq.raw()
    r.connect("will-ws", will=("w/t", b"closed", 1, False))
    r.ws.send_close(1000)                     # a clean WebSocket close, no MQTT DISCONNECT
    m = sub.get()
    assert (m.topic, m.payload) == ("w/t", b"closed"), m


def test_will_of_paho_client_dropped(mq):
    sub = mq.client()
    sub.subscribe("w/p", 1)
    p = mq.client("will-paho", will=("w/p", b"paho-gone", 1, False))
    # paho's TCP socket under its WebSocket ends (FIN) with neither DISCONNECT nor a close
    # frame; paho's thread then sees the EOF as a lost connection
    p.c._sock._socket.shutdown(socket.SHUT_RDWR)
    m = sub.get()
    assert (m.topic, m.payload) == ("w/p", b"paho-gone"), m


def test_no_will_after_disconnect(mq):
    sub = mq.client()
    sub.subscribe("w/+", 1)
    clean = mq.raw()
    clean.connect("will-clean", will=("w/clean", b"must-not", 1, False))
    clean.send(DISCONNECT_PACKET)
    assert clean.expect_closed() == []        # the server closes after DISCONNECT
    # a second client dropped abnormally: its will comes, the first one's never
    drop = mq.raw()
    drop.connect("will-drop", will=("w/drop", b"marker", 1, False))
    drop.ws.sock.close()
    m = sub.get()
    assert (m.topic, m.payload) == ("w/drop", b"marker"), m
    sub.expect_nothing(QUIET)


def test_client_id_takeover(mq):
    first = mq.client("same-id")
    second = mq.client("same-id")
    rc = first.wait_disconnected()
    assert rc != 0, rc
    assert second.disconnect_rc is None
    second.subscribe("tk/t", 1)
    second.publish("tk/t", b"still here", 1)
    assert second.get().payload == b"still here"
    assert second.disconnect_rc is None


def test_keepalive_enforced(mq):
    r = mq.raw()
    r.connect("ka", keepalive=1)
    t0 = time.monotonic()
    bound = 4.0 if mq.gale else 8.0   # mosquitto 2.0.11 checks keepalives every ~5 s
    assert r.expect_closed(bound) == []
    took = time.monotonic() - t0
    if mq.gale:
        assert took >= 1.0, "closed after %.2fs, before the keepalive" % took


def test_pingreq_pingresp(mq):
    r = mq.raw()
    r.connect("pinger")
    for _ in range(3):
        r.send(PINGREQ_PACKET)
        assert r.recv() == (0xD0, b"")


def test_binary_payload_byte_exact(mq):
    s, pub = mq.clients("", "")
    s.subscribe("bin/t", 1)
    data = bytes(range(256))
    pub.publish("bin/t", data, 1)
    pub.publish("bin/t", data[::-1] * 4, 0)
    pub.publish("bin/t", b"\x00", 1)
    assert s.get().payload == data
    assert s.get().payload == data[::-1] * 4
    assert s.get().payload == b"\x00"


def test_json_payload_byte_exact(mq):
    s, pub = mq.clients("", "")
    s.subscribe("json/t", 1)
    docs = [b'{"x":1}', b'{ "a" : [1, 2.50, {"b":"\\u00e9"}],\n "c":null }',
            '{"s":"caf\u00e9 \u2603"}'.encode(), b'[1,2,3]', b'"text"', b'42', b'{bad json']
    for d in docs:
        pub.publish("json/t", d, 1)
    for d in docs:
        assert s.get().payload == d


def test_many_messages_in_order(mq):
    s, pub = mq.clients("", "")
    s.subscribe("ord/t", 1)
    mids = [pub.publish("ord/t", b"%d" % i, 1, wait=False) for i in range(200)]
    pub.wait_published(mids)
    got = [int(s.get().payload) for _ in range(200)]
    assert got == list(range(200))
    s.expect_nothing(0.1)


# ---------------------------------------------------------------------------------------
# Both targets: bad input and framing (raw client)
# ---------------------------------------------------------------------------------------

def test_publish_before_connect_closes(mq):
    r = mq.raw()
    r.send(publish_packet("a/b", b"x"))
    assert r.expect_closed() == []


def test_malformed_remaining_length_closes(mq):
    r = mq.raw()
    r.connect()
    r.send(b"\x30\xff\xff\xff\xff\x7f")
    assert r.expect_closed() == []


def test_second_connect_closes(mq):
    r = mq.raw()
    r.connect("twice")
    r.send(connect_packet("twice-again"))
    assert r.expect_closed() == []


@pytest.mark.parametrize("bad", ["a/b#", "a/#/b", "a+/b", "#/a"])
def test_subscribe_invalid_filter_closes(mq, bad):
    r = mq.raw()
    r.connect()
    r.send(subscribe_packet(1, [(bad, 0)]))
    assert r.expect_closed() == []


@pytest.mark.parametrize("bad", ["a/+", "a/#", "+"])
def test_publish_wildcard_topic_closes(mq, bad):
    r = mq.raw()
    r.connect()
    r.send(publish_packet(bad, b"x"))
    assert r.expect_closed() == []


def test_subscribe_reserved_flags_wrong_closes(mq):
    r = mq.raw()
    r.connect()
    r.send(subscribe_packet(1, [("a/b", 0)], first=0x80))
    assert r.expect_closed() == []


@pytest.mark.parametrize("level", [2, 6])
def test_connect_bad_protocol_level(mq, level):
    r = mq.raw()
    r.send(connect_packet("lvl", level=level))
    got = r.expect_closed()
    assert got == [(0x20, b"\x00\x01")], got   # CONNACK rc 1, then closed


def test_split_and_joined_packets(mq):
    r = mq.raw()
    for b in connect_packet("bytewise"):          # one WebSocket message per byte
        r.send(bytes([b]))
    assert r.recv() == (0x20, b"\x00\x00")
    r.send(subscribe_packet(3, [("sp/t", 1)]), publish_packet("sp/t", b"hi", qos=1, pid=4))
    got = sorted([r.recv(), r.recv(), r.recv()])   # SUBACK, PUBACK, the delivery (own)
    kinds = [g[0] >> 4 for g in got]
    assert sorted(kinds) == [PUBLISH, PUBACK, SUBACK], got
    suback = next(g for g in got if g[0] >> 4 == SUBACK)
    assert suback[1][:2] == b"\x00\x03" and suback[1][2] in mq.granted(1)
    delivery = next(g for g in got if g[0] >> 4 == PUBLISH)
    assert delivery[1][:6] == mstr("sp/t") and delivery[1].endswith(b"hi")
    # a packet split across messages, following a whole one in the same message
    pub = publish_packet("sp/t", b"second", qos=0)
    r.send(PINGREQ_PACKET + pub[:3])
    r.send(pub[3:5])
    r.send(pub[5:])
    got = [r.recv(), r.recv()]
    assert got[0] == (0xD0, b"")
    assert got[1][0] >> 4 == PUBLISH and got[1][1].endswith(b"second")
    # a delivered QoS 1 publish: acknowledge it so the server has nothing in flight
    for first, body in [delivery] + got[1:]:
        if (first >> 1) & 3:
            r.send(packet(0x40, body[6:8]))


def test_connect_in_websocket_fragments(mq):
    """One WebSocket message in continuation frames of one byte each."""
    r = mq.raw()
    c = connect_packet("fragments")
    r.ws.send_frame(2, c[:1], fin=False)
    for i in range(1, len(c) - 1):
        r.ws.send_frame(0, c[i:i + 1], fin=False)
    r.ws.send_frame(0, c[-1:], fin=True)
    assert r.recv() == (0x20, b"\x00\x00")
    r.send(PINGREQ_PACKET)
    assert r.recv() == (0xD0, b"")


def test_oversize_publish_closes(mq, request):
    if not mq.gale:
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="mosquitto 2.0.11 does not apply max_packet_size on its "
                                "websockets listener (it does on plain TCP)"))
    r = mq.raw()
    r.connect("big")
    r.send(publish_packet("big/t", b"x" * (MAX + 100), qos=0))
    assert r.expect_closed(1.0) == []


# ---------------------------------------------------------------------------------------
# gale only: what gale cannot express, tokens, subprotocols, the mapping to gale's clients
# ---------------------------------------------------------------------------------------

@pytest.mark.gale_only
def test_gale_unexpressible_filters_refused(gale_mq):
    p, pub = gale_mq.clients("", "")
    granted = p.subscribe([("a.b/c", 1), ("ok/+", 1), ("a/*", 0), ("a//b", 1), ("a/ b", 1),
                           ("ok/#", 0)])
    assert granted == [0x80, 1, 0x80, 0x80, 0x80, 0], granted
    # the valid ones are live
    pub.publish("ok/x", b"1", 1)
    m = p.get()
    assert (m.topic, m.payload) == ("ok/x", b"1")
    p.expect_nothing(0.2)


@pytest.mark.gale_only
@pytest.mark.parametrize("bad", ["a.b/c", "a/*", "a//b", "a/ b", "a/>"])
def test_gale_publish_unexpressible_topic_closes(gale_mq, bad):
    r = gale_mq.raw()
    r.connect()
    r.send(publish_packet(bad, b"x"))
    assert r.expect_closed() == []


@pytest.mark.gale_only
def test_gale_connect_level_5_refused(gale_mq):
    """An MQTT 5 CONNECT (with its property length) gets the 3.1.1 CONNACK rc 1."""
    r = gale_mq.raw()
    body = mstr("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + b"\x00" + mstr("v5")
    r.send(packet(0x10, body))
    assert r.expect_closed() == [(0x20, b"\x00\x01")]


@pytest.mark.gale_only
def test_gale_subprotocols(gale_mq):
    w = RawWS(gale_mq.port, path=MQTT_PATH, protocols=("gale.v1.json",))
    assert w.status == 400, w.status
    w.close()
    # no subprotocol offered: MQTT
    r = gale_mq.raw(protocols=())
    assert r.status == 101
    r.connect("noproto")
    r.send(PINGREQ_PACKET)
    assert r.recv() == (0xD0, b"")
    # mqtt first among others: chosen
    r = gale_mq.raw(protocols=("mqtt", "gale.v1.json"))
    assert r.status == 101 and r.ws.protocol == "mqtt"
    r.connect("both")


def token(user="alice", sub=("a.>",), pub=("a.>",), secret=SECRET, ttl=300):
    c = {"sub": user, "exp": int(time.time()) + ttl, "gale": {"sub": list(sub), "pub": list(pub)}}
    return jwt.encode(c, secret, algorithm="HS256")


@pytest.fixture
def auth_mq(make_broker):
    t = gale_target(make_broker, ["--jwt-secret", SECRET])
    yield t
    t.close_all()


@pytest.mark.gale_only
@pytest.mark.parametrize("case", ["forged", "garbage", "expired", "username_only",
                                  "no_credentials"])
def test_gale_token_refused(auth_mq, case):
    p = auth_mq.paho()
    kw = {"forged": dict(username="u", password=token(secret="another-secret-0123456789")),
          "garbage": dict(username="u", password="not-a-token"),
          "expired": dict(username="u", password=token(ttl=-60)),
          "username_only": dict(username="u"),
          "no_credentials": {}}[case]
    p.connect(expect=5, **kw)
    assert p.wait_disconnected() is not None


@pytest.mark.gale_only
def test_gale_token_grants(auth_mq):
    subber = auth_mq.client("subber", username="x",
                            password=token("bob", sub=("a.b", "c.d"), pub=()))
    assert subber.subscribe([("a/b", 1), ("c/d", 1), ("e/f", 1), ("a/#", 1)]) \
        == [1, 1, 0x80, 0x80]
    pubber = auth_mq.client("pubber", username="y",
                            password=token("carol", sub=(), pub=("a.b",)))
    assert pubber.subscribe("a/b", 1) == [0x80]
    pubber.publish("c/d", b"forbidden", 1)     # PUBACK all the same
    pubber.publish("a/b", b"allowed", 1)
    m = subber.get()
    assert (m.topic, m.payload) == ("a/b", b"allowed"), m
    subber.expect_nothing(0.3)
    # the subscriber may not publish anywhere: acknowledged, not delivered
    subber.publish("a/b", b"from-subber", 1)
    subber.expect_nothing(0.3)


@pytest.mark.gale_only
def test_gale_mqtt_to_gale_json(gale_mq):
    b = gale_mq.server

    async def main():
        c = await galetest.connect(b.url)
        await c.sub("a.b")
        pub = gale_mq.client()
        await asyncio.to_thread(pub.publish, "a/b", b'{"x":1}', 1)
        assert await c.recv() == {"op": "msg", "topic": "a.b", "data": {"x": 1}}
        await asyncio.to_thread(pub.publish, "a/b", b"hello", 1)
        m = await c.recv()
        assert m == {"op": "msg", "topic": "a.b",
                     "bin": base64.b64encode(b"hello").decode()}, m
        assert "data" not in m
        await c.expect_silence()
        await c.close()
    run(main(), 20)


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_gale_json_and_msgpack_to_mqtt(gale_mq):
    b = gale_mq.server
    s = gale_mq.client()
    s.subscribe("a/b", 1)

    async def main():
        js = await galetest.connect(b.url)
        await js.pub("a.b", {"k": [1, 2]})
        mp = await galetest.connect(b.url, enc=MSGPACK)
        await mp.pub("a.b", b"\x00\x01")
        await js.close()
        await mp.close()
    run(main(), 20)
    m = s.get()
    assert m.topic == "a/b" and json.loads(m.payload) == {"k": [1, 2]}, m
    m = s.get()
    assert (m.topic, m.payload) == ("a/b", b"\x00\x01"), m
    s.expect_nothing(0.2)
