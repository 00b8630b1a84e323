"""Transport and handshake: subprotocols, paths, the hello message."""
import json
import struct

import msgpack
import pytest

from galetest import (DEFAULT_MAX_MSG, JSON, MSGPACK, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG,
                      OP_TEXT, Closed, RawWS,
                      connect, connect_status, run)


def check_hello(h, max_msg=DEFAULT_MAX_MSG):
    assert h["op"] == "hello"
    assert h["v"] == 1 and type(h["v"]) is int
    assert isinstance(h["node"], str) and h["node"]
    assert isinstance(h["conn"], str) and h["conn"]
    assert type(h["max_msg"]) is int and h["max_msg"] == max_msg


def test_json_subprotocol(broker):
    async def main():
        c = await connect(broker.url, JSON)
        assert c.ws.subprotocol == JSON
        assert isinstance(c.raw_hello, str), "hello must be a text frame on gale.v1.json"
        check_hello(c.hello)
        assert await c.request({"op": "ping", "id": 1}) == {"op": "pong", "id": 1}
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
def test_msgpack_subprotocol(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        assert c.ws.subprotocol == MSGPACK
        assert isinstance(c.raw_hello, bytes), "hello must be a binary frame on msgpack"
        check_hello(c.hello)
        r = await c.request({"op": "ping", "id": 1})
        assert r == {"op": "pong", "id": 1}
        await c.close()
    run(main())


def test_no_subprotocol_means_json(broker):
    async def main():
        # websockets itself fails the handshake if the broker answers with a
        # Sec-WebSocket-Protocol the client did not offer.
        c = await connect(broker.url, None)
        assert c.ws.subprotocol is None
        assert isinstance(c.raw_hello, str)
        check_hello(c.hello)
        assert await c.request({"op": "ping", "id": 7}) == {"op": "pong", "id": 7}
        await c.close()
    run(main())


def test_no_subprotocol_raw_has_no_protocol_header(broker):
    ws = RawWS(broker.port, protocols=())
    try:
        assert ws.status == 101
        assert ws.protocol is None, ws.headers
        op, payload = ws.recv_message()
        assert op == OP_TEXT
        check_hello(json.loads(payload))
    finally:
        ws.close()


@pytest.mark.parametrize("offered", [["gale.v2.json"], ["x-unknown", "chat"], ["GALE.V1.JSON"]])
def test_only_unknown_subprotocols_refused_400(broker, offered):
    assert run(connect_status(broker.url, offered)) == 400


def test_only_unknown_subprotocols_raw_gets_http_answer(broker):
    # A real HTTP status line, not a dropped connection.
    ws = RawWS(broker.port, protocols=("nope.v1",))
    try:
        assert ws.status == 400, ws.headers
    finally:
        ws.close()


def test_unknown_then_known_subprotocol_accepted(broker):
    async def main():
        c = await connect(broker.url, ["x-unknown", JSON])
        assert c.ws.subprotocol == JSON
        check_hello(c.hello)
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.parametrize("offered", [[JSON, MSGPACK], [MSGPACK, JSON], ["x", MSGPACK]])
def test_encoding_follows_selected_subprotocol(broker, offered):
    async def main():
        c = await connect(broker.url, offered)
        assert c.ws.subprotocol in (JSON, MSGPACK)
        want = bytes if c.ws.subprotocol == MSGPACK else str
        assert isinstance(c.raw_hello, want)
        check_hello(c.hello)
        assert await c.request({"op": "ping", "id": 3}) == {"op": "pong", "id": 3}
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.parametrize("path", ["/", "/wss", "/ws/x", "/metrics", "/nope"])
def test_upgrade_on_other_path_404(broker, path):
    assert run(connect_status("ws://127.0.0.1:%d%s" % (broker.port, path), [JSON])) == 404


@pytest.mark.gale_only
@pytest.mark.parametrize("path", ["/", "/nope"])
def test_upgrade_on_other_path_404_raw(broker, path):
    ws = RawWS(broker.port, path=path)
    try:
        assert ws.status == 404, ws.headers
    finally:
        ws.close()


def test_query_string_on_ws_path_accepted(broker):
    # A token may come as a query parameter; without auth configured it is ignored.
    async def main():
        c = await connect(broker.url + "?token=abc&x=1", JSON)
        check_hello(c.hello)
        await c.close()
    run(main())


def test_authorization_header_ignored_without_auth(broker):
    async def main():
        c = await connect(broker.url, JSON, extra_headers={"Authorization": "Bearer xyz"})
        check_hello(c.hello)
        await c.close()
    run(main())


def test_client_offering_permessage_deflate_still_works(broker, topic):
    # websockets offers permessage-deflate by default; whatever the broker decides,
    # the protocol must work.
    async def main():
        c = await connect(broker.url, JSON, compression="deflate")
        check_hello(c.hello)
        await c.sub(topic)
        await c.pub(topic, {"x": "y" * 500})
        m = await c.recv()
        assert m == {"op": "msg", "topic": topic, "data": {"x": "y" * 500}}
        await c.close()
    run(main())


def test_hello_is_first_and_ids_unique(broker):
    async def main():
        cs = [await connect(broker.url, JSON) for _ in range(4)]
        for c in cs:
            check_hello(c.hello)
        assert len({c.hello["conn"] for c in cs}) == 4, [c.hello for c in cs]
        assert len({c.hello["node"] for c in cs}) == 1, "one broker, one node id"
        for c in cs:
            await c.close()
    run(main())


@pytest.mark.needs_msgpack
def test_hello_same_node_across_encodings(broker):
    async def main():
        a = await connect(broker.url, JSON)
        b = await connect(broker.url, MSGPACK)
        assert a.hello["node"] == b.hello["node"]
        assert a.hello["conn"] != b.hello["conn"]
        await a.close()
        await b.close()
    run(main())


def test_hello_sent_without_any_client_message(broker):
    ws = RawWS(broker.port, protocols=(JSON,))
    try:
        assert ws.status == 101 and ws.protocol == JSON
        check_hello(ws.recv_json(timeout=3))
    finally:
        ws.close()


@pytest.mark.needs_msgpack
def test_hello_raw_msgpack_is_binary_map(broker):
    ws = RawWS(broker.port, protocols=(MSGPACK,))
    try:
        assert ws.status == 101 and ws.protocol == MSGPACK
        op, payload = ws.recv_message()
        assert op == OP_BINARY
        h = msgpack.unpackb(payload, raw=False)
        assert isinstance(h, dict)
        check_hello(h)
    finally:
        ws.close()


@pytest.mark.gale_only
def test_node_id_flag_in_hello(make_broker):
    b = make_broker(["--node-id", "edge-7"])

    async def main():
        c = await connect(b.url, JSON)
        assert c.hello["node"] == "edge-7"
        await c.close()
    run(main())
    assert b.healthz()["node"] == "edge-7"


@pytest.mark.gale_only
@pytest.mark.parametrize("flag,expected", [("1024", 1024), ("2K", 2048), ("3M", 3 << 20),
                                           ("64M", 64 << 20)])
def test_max_message_flag_in_hello(make_broker, flag, expected):
    b = make_broker(["--max-message", flag])

    async def main():
        c = await connect(b.url, JSON)
        check_hello(c.hello, max_msg=expected)
        await c.close()
    run(main())


def test_client_close_1000_is_answered(broker):
    # RFC 6455: the broker answers a client's close frame with its own, then closes TCP.
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        ws.send_close(1000)
        code, got = ws.recv_until_closed(timeout=5)
        assert code == 1000, (code, got)
        with pytest.raises(Closed):
            ws.recv_frame(timeout=5)
    finally:
        ws.close()


@pytest.mark.parametrize("sent, answer", [
    (struct.pack("!H", 4000) + b"bye", struct.pack("!H", 4000) + b"bye"),  # echoed
    (b"", b""),                                      # no code: an empty close back
    (struct.pack("!H", 1005), struct.pack("!H", 1002)),  # a code no peer may send
    (struct.pack("!H", 999), struct.pack("!H", 1002)),
])
def test_client_close_payload_is_echoed(broker, sent, answer):
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        ws.send_frame(OP_CLOSE, sent)
        fin, op, payload = ws.recv_frame(timeout=5)
        assert (op, payload) == (OP_CLOSE, answer)
        with pytest.raises(Closed):
            ws.recv_frame(timeout=5)
    finally:
        ws.close()


@pytest.mark.gale_only
def test_client_close_after_queued_messages(make_broker, topic):
    """A client that closes while messages for it are still queued (more than the socket
    buffers hold: it was not reading) gets whole messages and then the end: a close frame,
    or, with a frame half-written into the socket, only the end of the stream (lws cannot
    put a close frame after a partial frame). Never a close frame inside a message."""
    broker = make_broker(args=["--queue-limit", "64M"])
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        ws.send_text(json.dumps({"op": "sub", "topic": topic, "id": 1}))
        assert ws.recv_json()["op"] == "ack"

        async def publish():
            p = await connect(broker.url, JSON)
            try:
                for _ in range(12000):
                    await p.send({"op": "pub", "topic": topic, "data": "x" * 1000})
                assert (await p.request({"op": "ping"}))["op"] == "pong"
            finally:
                await p.close()
        run(publish())
        assert broker.metrics()["gale_queued_bytes"] > 0  # still queued when the close comes
        ws.send_close(1000)
        code, got = ws.recv_until_closed(timeout=10)
        assert code in (1000, None), (code, len(got))
        assert got and all(op == OP_TEXT for op, _ in got)
        assert all(json.loads(m)["op"] == "msg" for _, m in got)
        with pytest.raises(Closed):
            ws.recv_frame(timeout=5)
    finally:
        ws.close()
    check_alive(broker)


def test_websocket_ping_answered_with_pong(broker):
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        ws.send_frame(OP_PING, b"probe-123")
        fin, op, payload = ws.recv_frame(timeout=5)
        assert (op, payload) == (OP_PONG, b"probe-123")
        assert ws.ping_sync(11) == []
    finally:
        ws.close()


@pytest.mark.gale_only
def test_invalid_utf8_text_frame(broker):
    # Not UTF-8, so not JSON: either err bad_request (connection open) or close 1007.
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        ws.send_frame(OP_TEXT, b'{"op":"ping","id":1,"x":"\xff\xfe"}')
        op, payload = ws.recv_message(timeout=5)
        if op == OP_CLOSE:
            assert ws.close_code == 1007, ws.close_code
        else:
            m = json.loads(payload)
            assert m.get("op") == "err" and m.get("code") == "bad_request", m
            assert ws.ping_sync(12) == []
    finally:
        ws.close()
    check_alive(broker)


def test_reserved_bits_and_opcodes_close_connection(broker):
    for kwargs in ({"opcode": 3, "payload": b"x"}, {"opcode": OP_TEXT, "payload": b"{}", "rsv": 4}):
        ws = RawWS(broker.port)
        try:
            ws.recv_json()
            ws.send_frame(kwargs["opcode"], kwargs["payload"], rsv=kwargs.get("rsv", 0))
            code, got = ws.recv_until_closed(timeout=5)
            assert code in (None, 1002), code
        finally:
            ws.close()
    check_alive(broker)


def check_alive(broker):
    ws = RawWS(broker.port)
    try:
        ws.recv_json()
        assert ws.ping_sync(99) == []
    finally:
        ws.close()
