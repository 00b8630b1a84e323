"""Per-address connection limits (--max-connections-per-ip, HTTP 429) and X-Forwarded-For
from --trusted-proxies.

Clients connect from several loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes
all of 127/8 to lo) to a broker on 127.0.0.1, by binding their socket before connecting.
"""
import asyncio
import json
import os
import socket
import subprocess
import time

import pytest

from galetest import HOST, JSON, RawWS, broker_binary, connect, run

pytestmark = pytest.mark.gale_only

REFUSED_BODY = b"too many connections from this address\n"


def upgrade(port, source, headers=(), key=True):
    """A WebSocket upgrade from `source`: (RawWS-like status, the open RawWS or None)."""
    if key:
        ws = RawWS(port, source=source, headers=list(headers))
        if ws.status != 101:
            ws.close()
        return ws.status, ws
    return raw_request(port, source, "GET /ws HTTP/1.1", ["Upgrade: websocket",
                                                         "Connection: Upgrade",
                                                         "Sec-WebSocket-Version: 13"]
                       + list(headers))[0], None


def raw_request(port, source, request_line, headers=(), body=b""):
    """One HTTP request from `source`; (status or 0 if closed without an answer, bytes)."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((source, 0))
    s.connect((HOST, port))
    lines = [request_line, "Host: %s:%d" % (HOST, port), "Connection: close"] + list(headers)
    if body:
        lines.append("Content-Length: %d" % len(body))
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    data = b""
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    first = data.split(b"\r\n", 1)[0].split()
    return (int(first[1]) if len(first) > 1 else 0), data


def refused(port, source, headers=()):
    """Asserts an upgrade from source is refused with 429 and its short reason."""
    ws = RawWS(port, source=source, headers=list(headers))
    try:
        assert ws.status == 429, ws.status
        assert ws.headers.get("connection") == "close"
        body = ws.buf
        ws.sock.settimeout(2)
        while len(body) < len(REFUSED_BODY):
            chunk = ws.sock.recv(4096)
            if not chunk:
                break
            body += chunk
        assert body == REFUSED_BODY, body
    finally:
        ws.close()


def wait_admitted(port, source, headers=(), timeout=5.0):
    """Retries an upgrade from source until it is let in (a slot freed), within timeout:
    returns the open RawWS and the number of 429s seen first."""
    deadline = time.monotonic() + timeout
    refusals = 0
    while True:
        status, ws = upgrade(port, source, headers)
        if status == 101:
            return ws, refusals
        assert status == 429, status
        refusals += 1
        assert time.monotonic() < deadline, "no slot freed for %s within %.0fs" % (source,
                                                                                  timeout)
        time.sleep(0.05)


def per_ip_log_lines(b, addr):
    return [line for line in b.log_text().splitlines()
            if "client %s holds" % addr in line and "429" in line]


def test_limit_per_address(make_broker):
    b = make_broker(["--max-connections-per-ip", "2"])

    async def main():
        a1 = await connect(b.url, JSON, local_addr=("127.0.0.2", 0))
        a2 = await connect(b.url, JSON, local_addr=("127.0.0.2", 0))
        await asyncio.to_thread(refused, b.port, "127.0.0.2")
        # Another address still connects, up to its own limit.
        c1 = await connect(b.url, JSON, local_addr=("127.0.0.3", 0))
        c2 = await connect(b.url, JSON, local_addr=("127.0.0.3", 0))
        await asyncio.to_thread(refused, b.port, "127.0.0.3")
        await asyncio.to_thread(refused, b.port, "127.0.0.2")
        # The connections let in work.
        await a1.sub("ip.t")
        await c2.pub("ip.t", 1)
        assert await a1.recv() == {"op": "msg", "topic": "ip.t", "data": 1}
        m = await asyncio.to_thread(b.metrics)
        assert m["gale_connections"] == 4
        assert m["gale_client_addresses"] == 2
        assert m["gale_connections_refused_per_ip_total"] == 3
        assert m["gale_connections_refused_total"] == 3
        assert m["gale_connections_accepted_total"] == 4
        for c in (a1, a2, c1, c2):
            await c.close()
    run(main())


def test_only_websocket_upgrades_count(make_broker):
    b = make_broker(["--max-connections-per-ip", "1", "--api-key", "k-0123456789"])
    held = RawWS(b.port, source="127.0.0.2")
    assert held.status == 101
    try:
        refused(b.port, "127.0.0.2")
        # At its limit, the address still gets every HTTP endpoint, several at once too.
        for path in ("/healthz", "/metrics", "/", "/gale.js"):
            status, data = raw_request(b.port, "127.0.0.2", "GET %s HTTP/1.1" % path)
            assert status == 200, (path, data[:200])
        status, data = raw_request(
            b.port, "127.0.0.2", "POST /api/publish HTTP/1.1",
            ["Authorization: Bearer k-0123456789", "Content-Type: application/json"],
            json.dumps({"topic": "a.b", "data": 1}).encode())
        assert status == 200, data
        refused(b.port, "127.0.0.2")
        m = b.metrics()
        assert m["gale_connections_refused_per_ip_total"] == 2
        assert m["gale_client_addresses"] == 1
    finally:
        held.close()


def test_close_frees_the_slot(make_broker):
    b = make_broker(["--max-connections-per-ip", "1"])

    # A clean close (close frame, answered).
    async def clean():
        c = await connect(b.url, JSON, local_addr=("127.0.0.2", 0))
        await asyncio.to_thread(refused, b.port, "127.0.0.2")
        await c.close()
    run(clean())
    ws, _ = wait_admitted(b.port, "127.0.0.2")

    # The client vanishes without a close frame.
    refused(b.port, "127.0.0.2")
    ws.close()
    ws, _ = wait_admitted(b.port, "127.0.0.2")

    # The client sends a close frame and goes.
    ws.send_close(1000)
    ws.close()
    ws, _ = wait_admitted(b.port, "127.0.0.2")
    ws.close()

    # Upgrades let in by the broker that lws then fails (no Sec-WebSocket-Key): the slot
    # is given back at once, none is left behind.
    for _ in range(3):
        status, _ = upgrade(b.port, "127.0.0.3", key=False)
        assert status in (0, 400), status
    ws, refusals = wait_admitted(b.port, "127.0.0.3", timeout=3)
    ws.close()
    wait_admitted(b.port, "127.0.0.2")[0].close()

    deadline = time.monotonic() + 5
    while b.metrics().get("gale_client_addresses") != 0:
        assert time.monotonic() < deadline, "addresses still counted: %r" % b.metrics()
        time.sleep(0.05)


def test_broker_closes_free_the_slot(make_broker):
    # Closes the broker decides: a frame over --max-message (1009) and a keepalive drop.
    b = make_broker(["--max-connections-per-ip", "1", "--max-message", "1K",
                     "--keepalive", "1"])
    ws = RawWS(b.port, source="127.0.0.2")
    assert ws.status == 101
    ws.recv_json()
    ws.send_text("x" * 2000)
    code, _ = ws.recv_until_closed(timeout=5)
    assert code == 1009
    ws.close()
    wait_admitted(b.port, "127.0.0.2")[0].close()

    # Silent (never answers a ping): dropped after about 2 s.
    silent = RawWS(b.port, source="127.0.0.4")
    assert silent.status == 101
    refused(b.port, "127.0.0.4")
    t0 = time.monotonic()
    ws, refusals = wait_admitted(b.port, "127.0.0.4", timeout=8)
    assert refusals > 0 and time.monotonic() - t0 > 1
    silent.close()
    assert b.metrics()["gale_keepalive_closes_total"] >= 1
    ws.close()


def test_refusals_logged_once_per_address(make_broker):
    b = make_broker(["--max-connections-per-ip", "1"])
    held = [RawWS(b.port, source=src) for src in ("127.0.0.2", "127.0.0.3")]
    try:
        assert [w.status for w in held] == [101, 101]
        for _ in range(25):
            refused(b.port, "127.0.0.2")
        for _ in range(5):
            refused(b.port, "127.0.0.3")
        assert b.metrics()["gale_connections_refused_per_ip_total"] == 30
        assert len(per_ip_log_lines(b, "127.0.0.2")) == 1, b.log_tail()
        assert len(per_ip_log_lines(b, "127.0.0.3")) == 1, b.log_tail()
    finally:
        for w in held:
            w.close()


PROXY = "127.0.0.9"


def test_x_forwarded_for_from_a_trusted_proxy(make_broker):
    b = make_broker(["--max-connections-per-ip", "1",
                     "--trusted-proxies", "10.0.0.0/8, %s, fd00::/8" % PROXY])
    open_ = []

    def let_in(source, *headers):
        status, ws = upgrade(b.port, source, headers)
        assert status == 101, (source, headers, status)
        open_.append(ws)

    try:
        # Behind the proxy, each client address counts on its own.
        let_in(PROXY, "X-Forwarded-For: 198.51.100.7")
        refused(b.port, PROXY, ["X-Forwarded-For: 198.51.100.7"])
        let_in(PROXY, "X-Forwarded-For: 198.51.100.8")
        # The right-most address that is not a trusted proxy: what the client put in front
        # of its own address (left of what the proxy appended) changes nothing...
        refused(b.port, PROXY, ["X-Forwarded-For: 203.0.113.1, 198.51.100.7"])
        # ... and trusted hops on the right are skipped.
        refused(b.port, PROXY, ["X-Forwarded-For: 198.51.100.7, 10.1.2.3"])
        refused(b.port, PROXY, ["X-Forwarded-For: 198.51.100.7", "X-Forwarded-For: 10.1.2.3"])
        let_in(PROXY, "X-Forwarded-For: 198.51.100.9:50123, 10.1.2.3")
        let_in(PROXY, "X-Forwarded-For: [2001:db8::7]")
        refused(b.port, PROXY, ["X-Forwarded-For: 2001:db8::7"])
        # No header, or a malformed one: the proxy's own address counts.
        let_in(PROXY)
        refused(b.port, PROXY)
        refused(b.port, PROXY, ["X-Forwarded-For: not-an-address"])
        refused(b.port, PROXY, ["X-Forwarded-For: 198.51.100.10, unknown"])
        m = b.metrics()
        assert m["gale_client_addresses"] == 5     # .7, .8, .9, 2001:db8::7, the proxy
        assert m["gale_connections"] == 5
        assert m["gale_connections_refused_per_ip_total"] == 8
        assert len(per_ip_log_lines(b, "198.51.100.7")) == 1

        # A slot of a proxied client frees when its connection closes.
        first = open_.pop(0)
        first.close()
        open_.append(wait_admitted(b.port, PROXY, ["X-Forwarded-For: 198.51.100.7"])[0])
    finally:
        for ws in open_:
            ws.close()


def test_x_forwarded_for_ignored_from_other_peers(make_broker):
    b = make_broker(["--max-connections-per-ip", "1", "--trusted-proxies", PROXY])
    open_ = []
    try:
        # A peer that is not a trusted proxy counts as itself, whatever it claims.
        status, ws = upgrade(b.port, "127.0.0.4", ["X-Forwarded-For: 198.51.100.50"])
        assert status == 101
        open_.append(ws)
        refused(b.port, "127.0.0.4", ["X-Forwarded-For: 198.51.100.51"])
        refused(b.port, "127.0.0.4", ["X-Forwarded-For: %s" % PROXY])
        # Nor can it use up another client's slot by naming it.
        status, ws = upgrade(b.port, PROXY, ["X-Forwarded-For: 198.51.100.50"])
        assert status == 101
        open_.append(ws)
        status, ws = upgrade(b.port, "127.0.0.5", ["X-Forwarded-For: 198.51.100.60"])
        assert status == 101
        open_.append(ws)
        status, ws = upgrade(b.port, PROXY, ["X-Forwarded-For: 198.51.100.60"])
        assert status == 101
        open_.append(ws)
        m = b.metrics()
        assert m["gale_client_addresses"] == 4
        assert m["gale_connections_refused_per_ip_total"] == 2
    finally:
        for ws in open_:
            ws.close()


def test_without_trusted_proxies_the_peer_counts(make_broker):
    b = make_broker(["--max-connections-per-ip", "1"])
    ws = RawWS(b.port, source="127.0.0.2", headers=["X-Forwarded-For: 198.51.100.1"])
    try:
        assert ws.status == 101
        refused(b.port, "127.0.0.2", ["X-Forwarded-For: 198.51.100.2"])
    finally:
        ws.close()


def test_ipv4_mapped_peer_compares_as_ipv4(make_broker):
    # An IPv6 socket bound to ::ffff:127.0.0.1 sees IPv4 clients as ::ffff:127.0.0.x: they
    # still match IPv4 --trusted-proxies and count as their IPv4 address.
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    b = make_broker(["--listen", "[::ffff:127.0.0.1]:{port}", "--max-connections-per-ip", "1",
                     "--trusted-proxies", PROXY], listen=False)
    open_ = []
    try:
        status, ws = upgrade(b.port, PROXY, ["X-Forwarded-For: 198.51.100.7"])
        assert status == 101
        open_.append(ws)
        refused(b.port, PROXY, ["X-Forwarded-For: ::ffff:198.51.100.7"])
        status, ws = upgrade(b.port, "127.0.0.2")
        assert status == 101
        open_.append(ws)
        refused(b.port, "127.0.0.2")
        assert "client 127.0.0.2 holds" in b.log_text()
    finally:
        for ws in open_:
            ws.close()


def test_open_connections_at_stop(make_broker):
    # The broker stops with counted connections open (and one mid-handshake): clean exit 0,
    # no sanitizer report (the fixture checks both).
    b = make_broker(["--max-connections-per-ip", "3"])
    held = [RawWS(b.port, source="127.0.0.2") for _ in range(3)]
    assert [w.status for w in held] == [101, 101, 101]
    half = socket.create_connection((HOST, b.port))
    half.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
    assert b.stop() == 0
    for w in held:
        w.close()
    half.close()


def test_no_limit_by_default(broker):
    m = broker.metrics()
    assert "gale_client_addresses" not in m
    assert m["gale_connections_refused_per_ip_total"] == 0
    held = [RawWS(broker.port, source="127.0.0.2") for _ in range(5)]
    try:
        assert [w.status for w in held] == [101] * 5
    finally:
        for w in held:
            w.close()


@pytest.mark.parametrize("args, env, message", [
    (["--trusted-proxies", "10.0.0.0/33"], {},
     "--trusted-proxies: '10.0.0.0/33': the prefix length is not a number from 0 to 32"),
    (["--trusted-proxies", "10.0.0.1, proxy.internal"], {},
     "--trusted-proxies: 'proxy.internal': not an IPv4 or IPv6 address"),
    (["--trusted-proxies", "fd00::/129"], {},
     "--trusted-proxies: 'fd00::/129': the prefix length is not a number from 0 to 128"),
    (["--trusted-proxies", ","], {}, "--trusted-proxies: ',': no address"),
    ([], {"GALE_TRUSTED_PROXIES": "10.0.0.0/8;10.1.0.0/16"},
     "GALE_TRUSTED_PROXIES: '10.0.0.0/8;10.1.0.0/16': the prefix length is not a number"),
    (["--max-connections-per-ip", "-1"], {}, "--max-connections-per-ip: '-1' is not a number"),
    ([], {"GALE_MAX_CONNECTIONS_PER_IP": "lots"}, "GALE_MAX_CONNECTIONS_PER_IP: 'lots'"),
])
def test_bad_values_exit_2(args, env, message):
    e = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    e.update(env)
    r = subprocess.run([broker_binary(), "--listen", "127.0.0.1:0"] + args, env=e,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr.decode(), r.stderr
    if "PROXIES" in message.upper():
        assert b"(expected ADDR[/BITS][,...]" in r.stderr, r.stderr


def test_help_lists_the_flags():
    r = subprocess.run([broker_binary(), "--help"], capture_output=True, timeout=10)
    out = r.stdout.decode()
    assert r.returncode == 0
    assert "--max-connections-per-ip N" in out and "GALE_MAX_CONNECTIONS_PER_IP" in out
    assert "--trusted-proxies ADDR[/BITS][,...]" in out and "GALE_TRUSTED_PROXIES" in out
