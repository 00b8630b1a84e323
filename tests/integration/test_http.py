"""HTTP on the broker's port: /healthz, /metrics, the web root."""
import asyncio
import json
import os
import socket
import time

import pytest

from galetest import HOST, JSON, MSGPACK, SOURCE_DIR, connect, http_get, parse_metrics, run

pytestmark = pytest.mark.gale_only

ERROR_CODES = ["bad_request", "unknown_op", "bad_topic", "too_large", "forbidden", "limit",
               "unavailable", "internal"]
GAUGES = ["gale_connections", "gale_subscriptions", "gale_topics"]
COUNTERS = ["gale_connections_accepted_total", "gale_connections_refused_total",
            "gale_messages_published_total", "gale_messages_delivered_total",
            "gale_bytes_out_total", "gale_slow_consumer_closes_total",
            "gale_protocol_errors_total", "gale_keepalive_closes_total",
            "gale_oversize_closes_total"]


def wait_for(fn, timeout=3.0, step=0.05):
    """Poll fn() until it returns something true; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(step)


# --- /healthz ----------------------------------------------------------------------------

def test_healthz(make_broker):
    b = make_broker(["--node-id", "hz-node"])
    st, headers, body = http_get(b.port, "/healthz")
    assert st == 200
    assert headers.get("content-type", "").split(";")[0].strip() == "application/json"
    h = json.loads(body)
    assert h["status"] == "ok"
    assert h["node"] == "hz-node"
    assert h["connections"] == 0 and type(h["connections"]) is int
    assert isinstance(h["uptime_s"], (int, float)) and not isinstance(h["uptime_s"], bool)
    assert 0 <= h["uptime_s"] < 30

    async def main():
        cs = [await connect(b.url, JSON) for _ in range(3)]
        assert cs[0].hello["node"] == "hz-node"
        h = await asyncio.to_thread(b.healthz)
        assert h["connections"] == 3
        for c in cs:
            await c.close()
    run(main())
    assert wait_for(lambda: b.healthz()["connections"] == 0)
    time.sleep(1.1)
    h2 = b.healthz()
    assert h2["uptime_s"] >= h["uptime_s"] + 1


def test_healthz_node_defaults_to_something(broker):
    async def main():
        c = await connect(broker.url, JSON)
        h = await asyncio.to_thread(broker.healthz)
        assert isinstance(h["node"], str) and h["node"]
        assert h["node"] == c.hello["node"]
        await c.close()
    run(main())


# --- /metrics ----------------------------------------------------------------------------

def test_metrics_format(make_broker):
    b = make_broker()
    st, headers, body = http_get(b.port, "/metrics")
    assert st == 200
    assert headers.get("content-type", "").startswith("text/plain")
    m = parse_metrics(body.decode())
    for g in GAUGES:
        assert m.get("#TYPE " + g) == "gauge", g
        assert m[g] == 0, g
    for c in COUNTERS:
        assert m.get("#TYPE " + c) == "counter", c
        if c != "gale_protocol_errors_total":
            assert m[c] == 0, c


def test_metrics_one_series_per_error_code(make_broker):
    b = make_broker()
    m = b.metrics()
    for code in ERROR_CODES:
        assert m.get('gale_protocol_errors_total{code="%s"}' % code) == 0, code


def test_metrics_counters_after_known_workload(make_broker):
    b = make_broker()
    delivered_bytes = []

    async def main():
        s1 = await connect(b.url, JSON)
        s2 = await connect(b.url, MSGPACK)
        p = await connect(b.url, JSON)
        await s1.sub("m.>")
        await s1.sub("m.a")
        await s2.sub("m.a")
        await s2.sub("m.a")                  # idempotent: still one subscription
        m = await asyncio.to_thread(b.metrics)
        assert m["gale_connections"] == 3
        assert m["gale_subscriptions"] == 3
        assert m["gale_topics"] == 2
        for i in range(5):
            await p.pub("m.a", i)
        for i in range(3):
            await p.pub("m.b", i)
        for i in range(2):
            await p.pub("x.y", i)            # no subscriber: published, not delivered
        # errors
        await p.send_raw("{")
        await p.send_raw('{"op":"sub"}')
        await p.send_raw('{"op":"nope"}')
        await p.send_raw('{"op":"pub","topic":"m.*","data":1}')
        await p.send_raw('{"op":"pub","topic":"m.a"}')   # bad_request, not published
        for _ in range(5):
            r = await p.recv()
            assert r["op"] == "err", r
        for c in (s1, s2):
            got = await c.sync()
            assert all(x["op"] == "msg" for x in got)
            delivered_bytes.append(len(got))
        m = await asyncio.to_thread(b.metrics)
        assert m["gale_messages_published_total"] == 10
        assert m["gale_messages_delivered_total"] == 13
        assert m['gale_protocol_errors_total{code="bad_request"}'] == 3
        assert m['gale_protocol_errors_total{code="unknown_op"}'] == 1
        assert m['gale_protocol_errors_total{code="bad_topic"}'] == 1
        assert m["gale_connections_accepted_total"] == 3
        # The frames s1 received for msgs alone are at least ~40 bytes each.
        assert m["gale_bytes_out_total"] >= 13 * 30
        before = m["gale_bytes_out_total"]
        await p.pub("m.b", "z" * 5000)
        await s1.sync()
        m2 = await asyncio.to_thread(b.metrics)
        assert m2["gale_bytes_out_total"] >= before + 5000
        assert m2["gale_messages_published_total"] == 11
        assert m2["gale_messages_delivered_total"] == 14
        for c in (s1, s2, p):
            await c.close()
    run(main())
    assert delivered_bytes == [8, 5]
    m = wait_for(lambda: (lambda m: m if m["gale_connections"] == 0 else None)(b.metrics()))
    assert m, b.metrics()
    assert m["gale_subscriptions"] == 0
    assert m["gale_topics"] == 0
    assert m["gale_messages_published_total"] == 11
    assert m["gale_connections_accepted_total"] == 3
    assert m["gale_connections_refused_total"] == 0


def test_metrics_gauges_track_unsub(make_broker):
    b = make_broker()

    async def main():
        a = await connect(b.url, JSON)
        c = await connect(b.url, JSON)
        for t in ("q.1", "q.2", "q.*"):
            await a.sub(t)
        await c.sub("q.1")
        m = await asyncio.to_thread(b.metrics)
        assert (m["gale_subscriptions"], m["gale_topics"]) == (4, 3)
        await a.unsub("q.1")
        m = await asyncio.to_thread(b.metrics)
        assert (m["gale_subscriptions"], m["gale_topics"]) == (3, 3)
        await c.unsub("q.1")
        await a.unsub("never")
        m = await asyncio.to_thread(b.metrics)
        assert (m["gale_subscriptions"], m["gale_topics"]) == (2, 2)
        await a.close()
        await c.close()
    run(main())


# --- web root ----------------------------------------------------------------------------

def test_get_root_serves_index_html(broker):
    st, headers, body = http_get(broker.port, "/")
    assert st == 200
    assert headers.get("content-type", "").startswith("text/html")
    assert b"gale" in body.lower()
    src = os.path.join(SOURCE_DIR, "web", "index.html")
    if os.path.exists(src):
        with open(src, "rb") as f:
            assert body == f.read()


@pytest.fixture
def webroot(tmp_path):
    (tmp_path / "index.html").write_bytes(b"<!doctype html><title>gale</title><p>gale test root 7731</p>\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.txt").write_bytes(b"plain text 42\n")
    (tmp_path / "app.js").write_bytes(b"console.log('gale');\n")
    return tmp_path


@pytest.mark.parametrize("how", ["flag", "env"])
def test_web_root_option(make_broker, webroot, how):
    if how == "flag":
        b = make_broker(["--web-root", str(webroot)])
    else:
        b = make_broker(env={"GALE_WEB_ROOT": str(webroot)})
    st, headers, body = http_get(b.port, "/")
    assert st == 200 and body == (webroot / "index.html").read_bytes()
    assert headers.get("content-type", "").startswith("text/html")
    st, _, body = http_get(b.port, "/index.html")
    assert st == 200 and body == (webroot / "index.html").read_bytes()
    st, _, body = http_get(b.port, "/sub/page.txt")
    assert st == 200 and body == b"plain text 42\n"
    st, headers, body = http_get(b.port, "/app.js")
    assert st == 200 and body == b"console.log('gale');\n"
    st, _, _ = http_get(b.port, "/missing.html")
    assert st == 404


def test_unknown_path_404(broker):
    for path in ("/nope", "/nope/deeper.html", "/index.htm"):
        st, _, _ = http_get(broker.port, path)
        assert st == 404, path


def raw_http(port, request):
    s = socket.create_connection((HOST, port), timeout=5)
    try:
        s.sendall(request)
        data = b""
        while len(data) < 1 << 20:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and b"content-length: 0" in data.lower():
                break
        return data
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/../../../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                                  "/sub/../../../../../../etc/passwd", "//etc/passwd"])
def test_no_path_traversal(make_broker, webroot, path):
    b = make_broker(["--web-root", str(webroot / "sub")])
    data = raw_http(b.port, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             % path).encode())
    assert b"root:" not in data, data[:300]
    assert b.alive()


def test_http_garbage_does_not_crash(broker):
    for req in (b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\xff" * 100 + b"\r\n\r\n",
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        raw_http(broker.port, req)
    st, _, _ = http_get(broker.port, "/healthz")
    assert st == 200
