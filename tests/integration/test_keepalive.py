"""Keepalive: idle connections are pinged after N s and closed after N more s of silence."""
import asyncio
import socket
import time

import pytest

from galetest import JSON, OP_CLOSE, OP_PING, OP_PONG, Closed, RawWS, connect, run

pytestmark = pytest.mark.gale_only


def wait_metric(b, name, value, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        v = b.metrics()[name]
        if v == value or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def test_library_client_answering_pings_stays_connected(make_broker):
    b = make_broker(["--keepalive", "1"])

    async def main():
        # ping_interval=None: the client never pings by itself, it only answers.
        c = await connect(b.url, JSON)
        await asyncio.sleep(3.5)
        assert await c.request({"op": "ping", "id": 1}) == {"op": "pong", "id": 1}
        await c.close()
    run(main())
    assert b.metrics()["gale_keepalive_closes_total"] == 0


@pytest.mark.parametrize("how", ["flag", "env"])
def test_silent_raw_client_pinged_then_closed(make_broker, how):
    if how == "flag":
        b = make_broker(["--keepalive", "1"])
    else:
        b = make_broker(env={"GALE_KEEPALIVE": "1"})
    ws = RawWS(b.port)
    try:
        ws.recv_json()
        t0 = time.monotonic()
        pinged_at, ended_at, how_ended = None, None, None
        while time.monotonic() - t0 < 5:
            try:
                fin, op, payload = ws.recv_frame(timeout=max(0.01, 5 - (time.monotonic() - t0)))
            except Closed as e:
                ended_at, how_ended = time.monotonic() - t0, str(e)
                break
            except socket.timeout:
                break
            if op == OP_PING and pinged_at is None:
                pinged_at = time.monotonic() - t0     # never answered
            elif op == OP_CLOSE:
                ended_at, how_ended = time.monotonic() - t0, "close frame"
                break
        assert pinged_at is not None, "no ping within 5 s with --keepalive 1"
        assert 0.5 <= pinged_at <= 2.5, "pinged after %.2fs" % pinged_at
        assert ended_at is not None, "silent client not closed within 5 s"
        assert ended_at <= 3.5, "closed only after %.2fs (%s)" % (ended_at, how_ended)
        assert ended_at - pinged_at >= 0.5, (pinged_at, ended_at)
    finally:
        ws.close()
    assert wait_metric(b, "gale_keepalive_closes_total", 1) == 1
    assert wait_metric(b, "gale_connections", 0) == 0


def test_raw_client_answering_pings_stays(make_broker):
    b = make_broker(["--keepalive", "1"])
    ws = RawWS(b.port)
    try:
        ws.recv_json()
        pings = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.5:
            try:
                fin, op, payload = ws.recv_frame(timeout=max(0.01, 3.5 - (time.monotonic() - t0)))
            except socket.timeout:
                break
            if op == OP_PING:
                pings += 1
                ws.send_frame(OP_PONG, payload)
            else:
                pytest.fail("unexpected frame opcode %d %r" % (op, payload[:50]))
        assert pings >= 1
        assert ws.ping_sync(5) == []
    finally:
        ws.close()
    assert b.metrics()["gale_keepalive_closes_total"] == 0


def test_inbound_traffic_counts_as_activity(make_broker):
    # A client that keeps sending (app-level pings) is never idle, even if it ignores
    # WebSocket pings.
    b = make_broker(["--keepalive", "1"])
    ws = RawWS(b.port)
    try:
        ws.recv_json()
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 3.5:
            n += 1
            ws.send_json({"op": "ping", "id": n})
            while True:
                fin, op, payload = ws.recv_frame(timeout=3)
                if op == OP_PING:
                    continue                      # ignored on purpose
                assert op == 1, (op, payload)
                assert payload == b'{"op":"pong","id":%d}' % n or b'"id":%d' % n in payload
                break
            time.sleep(0.4)
        assert n >= 8
    finally:
        ws.close()
    assert b.metrics()["gale_keepalive_closes_total"] == 0


def test_keepalive_zero_disables(make_broker):
    b = make_broker(["--keepalive", "0"])
    ws = RawWS(b.port)
    try:
        ws.recv_json()
        with pytest.raises(socket.timeout):
            fin, op, payload = ws.recv_frame(timeout=2.5)
            pytest.fail("unexpected frame with keepalive off: opcode %d" % op)
        assert ws.ping_sync(3) == []
    finally:
        ws.close()
    assert b.metrics()["gale_keepalive_closes_total"] == 0
