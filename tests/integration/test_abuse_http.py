"""Hostile HTTP on the broker's port, written byte by byte on raw sockets: pipelined and
trailing bytes on /healthz, the web root and the publish API, bodies where none belong,
slow and stalled request heads. After each case the broker must still serve a normal
round trip, sit idle (no spinning loop) and, at teardown (make_broker), exit 0 on SIGTERM.

What holds (README, "HTTP connections"): the broker's own answers close the connection;
only POST /api/publish takes a body; a request with a body must be the first on its
connection or follow a publish; bytes after a publish's body get its answer, then a close;
a request head must be in within --handshake-timeout of the accept.
"""
import asyncio
import json
import os
import socket
import threading
import time

import pytest

from galetest import HOST, connect, run
from test_cluster import redis_factory  # noqa: F401 (a fixture: a real redis-server)

pytestmark = pytest.mark.gale_only

API_KEY = "abuse-key"


def api_broker(make_broker, *args):
    return make_broker(["--api-key", API_KEY] + list(args))


def post(body, path="/api/publish", extra=""):
    if isinstance(body, str):
        body = body.encode()
    return (("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n")
            % (path, API_KEY, extra, len(body))).encode() + body


def get(path, extra=""):
    return ("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, extra)).encode()


def exchange(port, data, within=3.0):
    """Sends data in one write; reads until the broker closes or `within` seconds pass.
    Returns (bytes received, closed by the broker)."""
    s = socket.create_connection((HOST, port), timeout=within)
    try:
        s.sendall(data)
        got, deadline = b"", time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got, False
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
    finally:
        s.close()


def responses(data):
    """The HTTP responses in data: a list of (status, headers, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, "truncated response head: %r" % data[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        assert len(rest) >= n, "truncated body: %r" % data[:200]
        out.append((status, hdrs, rest[:n]))
        data = rest[n:]
    return out


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(b, name):
    return b.metrics().get(name, 0.0)


def assert_serving(b):
    """The broker answers /healthz, routes a message end to end, and is not spinning."""
    assert b.alive(), b.log_tail()
    assert b.healthz()["status"] == "ok"

    async def round_trip():
        c = await connect(b.url)
        await c.sub("abuse.check")
        await c.pub("abuse.check", {"ok": 1})
        m = await c.recv()
        assert (m["topic"], m["data"]) == ("abuse.check", {"ok": 1})
        await c.close()
    run(round_trip(), timeout=10)
    # An idle broker uses next to no CPU; a loop spinning on a connection uses all of it.
    t0, c0 = time.monotonic(), cpu_seconds(b.pid)
    time.sleep(1.0)
    used = cpu_seconds(b.pid) - c0
    assert used < 0.3 * (time.monotonic() - t0), "the idle broker used %.2f s of CPU" % used


# --- pipelined and trailing bytes -----------------------------------------------------------

def test_pipelined_get_with_body_does_not_freeze(make_broker):
    """The report's bytes: two requests in one write, the second with a body."""
    b = make_broker()
    data = get("/healthz") + b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
    got, closed = exchange(b.port, data)
    rs = responses(got)
    assert closed and len(rs) == 1, got
    status, hdrs, body = rs[0]
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert hdrs["connection"] == "close", hdrs
    assert_serving(b)


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/no-such-endpoint"])
def test_own_endpoints_answer_and_close(make_broker, path):
    b = make_broker()
    got, closed = exchange(b.port, get(path) * 3)
    rs = responses(got)
    assert closed and len(rs) == 1, got
    assert rs[0][1]["connection"] == "close"
    assert_serving(b)


def test_two_pipelined_publishes_deliver_once(make_broker):
    b = api_broker(make_broker)

    async def main():
        c = await connect(b.url)
        await c.sub("pipe.>")
        before = metric(b, "gale_messages_published_total")
        got, closed = await asyncio.to_thread(
            exchange, b.port, post('{"topic":"pipe.a","data":1}') + post('{"topic":"pipe.b","data":2}'))
        rs = responses(got)
        assert closed and len(rs) == 1, got
        status, hdrs, body = rs[0]
        assert (status, json.loads(body)) == (200, {"ok": True})
        assert hdrs["connection"] == "close", hdrs
        msgs = await c.sync()
        assert [(m["topic"], m["data"]) for m in msgs] == [("pipe.a", 1)]
        assert metric(b, "gale_messages_published_total") == before + 1
        await c.close()
    run(main())
    assert_serving(b)


@pytest.mark.parametrize("trailer", [b"\r\n", b"x", b"\x00" * 100, get("/healthz"),
                                     post('{"topic":"trail.other","data":0}')])
def test_publish_with_trailing_bytes_delivers_once(make_broker, trailer):
    b = api_broker(make_broker)

    async def main():
        c = await connect(b.url)
        await c.sub("trail.>")
        before = metric(b, "gale_messages_published_total")
        got, closed = await asyncio.to_thread(
            exchange, b.port, post('{"topic":"trail.one","data":"once"}') + trailer)
        rs = responses(got)
        assert closed and len(rs) == 1, got
        assert (rs[0][0], json.loads(rs[0][2])) == (200, {"ok": True})
        assert rs[0][1]["connection"] == "close"
        await asyncio.sleep(0.3)   # a repeat would have been routed by now
        msgs = await c.sync()
        assert [(m["topic"], m["data"]) for m in msgs] == [("trail.one", "once")]
        assert metric(b, "gale_messages_published_total") == before + 1
        await c.close()
    run(main())
    assert_serving(b)


def test_publish_with_trailing_bytes_in_a_cluster(redis_factory, make_broker):
    """The answer waits for Redis while lws reports the body's completion again on every
    loop turn: still one answer, one delivery on every broker, and no loop left spinning."""
    redis = redis_factory()
    a, b = [make_broker(["--redis", redis.url, "--api-key", API_KEY, "--node-id", n])
            for n in ("a", "b")]

    async def main():
        ca, cb = await connect(a.url), await connect(b.url)
        await ca.sub("ct.>")
        await cb.sub("ct.>")
        got, closed = await asyncio.to_thread(
            exchange, a.port, post('{"topic":"ct.one","data":"once"}') + b"\r\n" + get("/"))
        rs = responses(got)
        assert closed and len(rs) == 1 and rs[0][0] == 200, got
        assert rs[0][1]["connection"] == "close"
        await asyncio.sleep(0.3)
        for c in (ca, cb):
            msgs = await c.sync()
            assert [(m["topic"], m["data"]) for m in msgs] == [("ct.one", "once")]
            await c.close()
    run(main())
    assert metric(a, "gale_messages_published_total") == 1
    assert_serving(a)
    assert_serving(b)


def test_batches_with_trailing_bytes_deliver_each_message_once(make_broker):
    """Repeats of the body's completion used to publish a batch again (and leak its
    results): every message of every batch exactly once, and the counter agrees."""
    b = api_broker(make_broker)
    batches, size = 40, 250

    async def main():
        c = await connect(b.url)
        await c.sub("batch.>")
        for i in range(batches):
            body = json.dumps({"messages": [{"topic": "batch.t", "data": [i, j]}
                                            for j in range(size)]})
            got, closed = await asyncio.to_thread(exchange, b.port, post(body) + b"\r\n")
            rs = responses(got)
            assert closed and len(rs) == 1 and rs[0][0] == 200, got[:300]
            assert json.loads(rs[0][2])["ok"] is True
        seen = []
        while True:
            msgs = await c.sync(timeout=10)
            if not msgs:
                break
            seen += [tuple(m["data"]) for m in msgs]
        assert len(seen) == batches * size and len(set(seen)) == len(seen)
        await c.close()
    run(main(), timeout=120)
    assert metric(b, "gale_messages_published_total") == batches * size
    assert_serving(b)


def test_sequential_publishes_keep_the_connection(make_broker):
    """Keep-alive stays for a client that waits for each answer."""
    b = api_broker(make_broker)
    s = socket.create_connection((HOST, b.port), timeout=5)
    try:
        for i in range(5):
            s.sendall(post('{"topic":"seq.t","data":%d}' % i))
            head = b""
            while b"\r\n\r\n" not in head or not head.endswith(b"}\n"):
                chunk = s.recv(4096)
                assert chunk, "closed after %d publishes: %r" % (i, head)
                head += chunk
            (status, hdrs, body), = responses(head)
            assert status == 200 and hdrs.get("connection") != "close", head
    finally:
        s.close()
    assert metric(b, "gale_messages_published_total") == 5
    assert_serving(b)


# --- requests with a body where lws cannot take one --------------------------------------

@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
], ids=["get-healthz", "get-static", "post-static", "put-no-length", "chunked"])
def test_body_outside_the_api_is_refused(make_broker, request_bytes):
    b = api_broker(make_broker)
    before = metric(b, "gale_http_refused_total")
    got, closed = exchange(b.port, request_bytes + get("/healthz"))
    rs = responses(got)
    assert closed and len(rs) == 1 and rs[0][0] == 400, got
    assert b"only POST /api/publish takes a request body" in rs[0][2]
    assert metric(b, "gale_http_refused_total") == before + 1
    assert_serving(b)


def test_static_then_pipelined_publish_is_refused(make_broker):
    b = api_broker(make_broker)
    got, closed = exchange(b.port, get("/index.html") + post('{"topic":"st.t","data":1}'))
    rs = responses(got)
    # Refused by http_filter (400), or earlier by lws itself: its parser reads a POST
    # pipelined behind a file as a request without an absolute path (403).
    assert closed and [r[0] for r in rs][:1] == [200] and rs[1][0] in (400, 403), got[:400]
    assert len(rs) == 2 and b"<html" in rs[0][2].lower()
    assert metric(b, "gale_messages_published_total") == 0
    assert_serving(b)


def test_conditional_get_then_pipelined_publish_is_refused(make_broker):
    """lws answers a matching If-None-Match (304) itself and keeps the connection."""
    b = api_broker(make_broker)
    got, _ = exchange(b.port, get("/index.html", "Connection: close\r\n"))
    etag = responses(got)[0][1]["etag"]
    data = get("/index.html", "If-None-Match: %s\r\n" % etag) + post('{"topic":"c.t","data":1}')
    got, closed = exchange(b.port, data)
    rs = responses(got)
    assert closed and len(rs) == 2 and rs[0][0] == 304 and rs[1][0] in (400, 403), got[:400]
    assert metric(b, "gale_messages_published_total") == 0
    assert_serving(b)


def test_publish_after_a_static_file_on_one_connection_is_refused(make_broker):
    """The documented limit: not even sequentially (lws 4.1.6 cannot tell the two apart)."""
    b = api_broker(make_broker)
    s = socket.create_connection((HOST, b.port), timeout=5)
    try:
        s.sendall(get("/favicon.svg"))
        got = b""
        while not got.endswith(b"</svg>\n") and b"</svg>" not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        s.sendall(post('{"topic":"seq.t","data":1}'))
        rest = b""
        s.settimeout(3)
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
        (status, hdrs, body), = responses(rest)
        assert status == 400 and hdrs["connection"] == "close", rest
        assert "new connection" in json.loads(body)["msg"]
    finally:
        s.close()
    assert_serving(b)


def test_pipelined_static_files_are_served_or_refused(make_broker):
    """lws serves files pipelined behind one, or refuses one with 403 and closes (its
    parser sometimes reads a pipelined request head from the wrong place): never more."""
    b = make_broker()
    got, closed = exchange(b.port, get("/index.html") + get("/gale.js") + get("/style.css"),
                           within=2)
    statuses = [r[0] for r in responses(got)]
    assert statuses[0] == 200 and set(statuses) <= {200, 403}, got[:300]
    assert statuses == [200, 200, 200] or (statuses[-1] == 403 and closed), statuses
    assert_serving(b)


def test_upgrade_with_frames_in_the_same_write(make_broker):
    """A client that sends its first frames right behind the upgrade request."""
    from galetest import RawWS
    b = make_broker()
    ws = RawWS.__new__(RawWS)
    ws.sock = socket.create_connection((HOST, b.port), timeout=5)
    ws.buf = b""
    ws.close_code = None
    sub = RawWS.frame(1, b'{"op":"sub","topic":"up.t","id":1}')
    pub = RawWS.frame(1, b'{"op":"pub","topic":"up.t","data":7,"id":2}')
    ws.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    b"\r\n" + sub + pub)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = ws.sock.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    ws.buf = head.partition(b"\r\n\r\n")[2]
    got = [ws.recv_json() for _ in range(4)]
    ops = [(m["op"], m.get("id")) for m in got]
    assert ops[0] == ("hello", None) and ("ack", 1) in ops and ("ack", 2) in ops, got
    assert any(m["op"] == "msg" and m["data"] == 7 for m in got), got
    ws.close()
    assert_serving(b)


# --- slow and stalled request heads -------------------------------------------------------

class Dribbler(threading.Thread):
    """Sends an upgrade request one byte per `every` seconds, reconnecting when dropped,
    until stop is set (bounded by `until`)."""

    def __init__(self, port, stop, until, every=0.1):
        super().__init__(daemon=True)
        self.port, self.stop, self.until, self.every = port, stop, until, every
        self.dropped = 0

    def run(self):
        req = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"X-Padding: " + b"p" * 200 + b"\r\n\r\n")
        while not self.stop.is_set() and time.monotonic() < self.until:
            try:
                s = socket.create_connection((HOST, self.port), timeout=2)
            except OSError:
                time.sleep(self.every)
                continue
            try:
                for byte in req:
                    if self.stop.is_set() or time.monotonic() > self.until:
                        break
                    s.sendall(bytes([byte]))
                    time.sleep(self.every)
            except OSError:
                self.dropped += 1
            finally:
                s.close()


def test_slow_handshakes_do_not_lock_out_clients(make_broker):
    """70 connections dribbling their handshake at one byte per 100 ms (reopened when
    dropped) while 7 ordinary clients connect: every ordinary client gets in."""
    b = make_broker()
    stop = threading.Event()
    until = time.monotonic() + 40
    dribblers = [Dribbler(b.port, stop, until) for _ in range(70)]
    for d in dribblers:
        d.start()
    try:
        time.sleep(1.5)   # every dribbler holds a header buffer by now

        async def ordinary(i):
            c = await connect(b.url, open_timeout=5)
            await c.sub("lock.%d" % i)
            await c.close()
            return True
        async def main():
            return await asyncio.gather(*(ordinary(i) for i in range(7)),
                                        return_exceptions=True)
        results = run(main(), timeout=30)
        assert results == [True] * 7, results
        assert metric(b, "gale_handshakes") >= 60
    finally:
        stop.set()
        for d in dribblers:
            d.join(5)
    assert_serving(b)


def test_stalled_heads_are_dropped_and_counted(make_broker):
    b = make_broker(["--handshake-timeout", "1"])
    socks = []
    for i in range(10):
        s = socket.create_connection((HOST, b.port), timeout=5)
        if i % 2:
            s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")   # half a head, then nothing
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        s.settimeout(5)
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert time.monotonic() - t0 < 3.5
    assert metric(b, "gale_handshake_timeouts_total") == 10
    assert metric(b, "gale_handshakes") == 0
    assert_serving(b)


def test_full_header_pool_frees_up_within_the_timeout(make_broker):
    """More stalled heads than header buffers: an ordinary client waits for a buffer and
    gets one once --handshake-timeout drops the stalled ones."""
    b = make_broker(["--max-handshakes", "16", "--handshake-timeout", "2"])
    socks = []
    for _ in range(40):
        s = socket.create_connection((HOST, b.port), timeout=5)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    time.sleep(0.3)

    async def main():
        t0 = time.monotonic()
        c = await connect(b.url, open_timeout=8)
        await c.close()
        return time.monotonic() - t0
    took = run(main(), timeout=15)
    assert took < 6, took
    for s in socks:
        s.close()
    assert metric(b, "gale_handshake_timeouts_total") >= 16
    assert_serving(b)
