"""Error replies: bad_request, unknown_op, bad_topic (limit is in test_limits.py).

Every err must carry a string `code` and a string `msg`, carry the request's `id` when
that id was valid and no `id` otherwise, and leave the connection open.
"""

import msgpack
import pytest

from galetest import JSON, MSGPACK, connect, run

NOID = object()


async def expect_err(c, frame, code, rid=NOID, check_id=True):
    """Send frame (a dict, or raw str/bytes); the next message must be err `code`."""
    if isinstance(frame, dict):
        await c.send(frame)
    else:
        await c.send_raw(frame)
    r = await c.recv()
    assert r.get("op") == "err", "sent %r, got %r" % (frame, r)
    assert r.get("code") == code, "sent %r, got %r" % (frame, r)
    assert isinstance(r.get("msg"), str), r
    if check_id:
        if rid is NOID:
            assert "id" not in r, "sent %r: err must carry no id: %r" % (frame, r)
        else:
            assert r.get("id") == rid and type(r.get("id")) is int, \
                "sent %r: err must carry id %r: %r" % (frame, rid, r)
    # ...and the connection stays open and in sync.
    pid = c.next_id()
    await c.send({"op": "ping", "id": pid})
    assert await c.recv() == {"op": "pong", "id": pid}
    return r


# --- bad_request -------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["{", "not json", "", " ", '{"op":"ping",}', "{'op':'ping'}",
                                  '{"op":"ping"} {"op":"ping"}', '{"op":"ping"', "\u00e9"])
def test_undecodable_json_bad_request(broker, text):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.parametrize("text", ['{"op":"ping","id":01}', '{"op":"ping","x":NaN}',
                                  '{"op":"ping","x":Infinity}', '{"op":"ping","x":+1}',
                                  '{"op":"ping","x":.5}', '{"op":"ping","x":1.}',
                                  '\ufeff{"op":"ping"}', '{"op":"ping"} x',
                                  '{"op":"ping","x":"\\q"}', '{"op":"ping","x":"\\u12"}',
                                  '{"op":"ping","x":"a\tb"}', '{op:"ping"}',
                                  '{"op":"ping"/*c*/}'])
def test_strict_json_bad_request(broker, text):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, "bad_request")
        await c.close()
    run(main())


@pytest.mark.parametrize("text", ["[1]", "[]", "42", '"ping"', "null", "true", "1.5",
                                  '[{"op":"ping","id":1}]'])
def test_json_not_object_bad_request(broker, text):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, "bad_request")
        await c.close()
    run(main())


@pytest.mark.parametrize("text", ["{}", '{"topic":"a"}', '{"op":1}', '{"op":null}',
                                  '{"op":["ping"]}', '{"op":{"x":1}}', '{"op":true}',
                                  '{"OP":"ping"}'])
def test_op_missing_or_not_string_bad_request(broker, text):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
def test_op_missing_with_valid_id_carries_id(broker):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, '{"id":12}', "bad_request", rid=12)
        await expect_err(c, '{"op":5,"id":13}', "bad_request", rid=13)
        await c.close()
    run(main())


def test_pub_without_data_bad_request(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, {"op": "pub", "topic": topic, "id": 21}, "bad_request", rid=21)
        await expect_err(c, {"op": "pub", "topic": topic}, "bad_request")
        await c.close()
    run(main())


def test_pub_with_null_data_is_valid(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        await c.sub(topic)
        await c.send_raw('{"op":"pub","topic":"%s","data":null,"id":4}' % topic)
        got = [await c.recv(), await c.recv()]
        assert {"op": "ack", "id": 4} in got, got
        assert {"op": "msg", "topic": topic, "data": None} in got, got
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.parametrize("op", ["sub", "unsub", "pub"])
@pytest.mark.parametrize("topic_json", [None, "5", "null", "[\"a\"]", "{\"a\":1}", "true"])
def test_topic_missing_or_not_string_bad_request(broker, op, topic_json):
    async def main():
        c = await connect(broker.url, JSON)
        body = '"op":"%s","id":8' % op
        if topic_json is not None:
            body += ',"topic":' + topic_json
        if op == "pub":
            body += ',"data":1'
        await expect_err(c, "{" + body + "}", "bad_request", rid=8)
        await expect_err(c, "{" + body.replace(',"id":8', "") + "}", "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
def test_binary_frame_on_json_connection_bad_request(broker):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, b'{"op":"ping","id":1}', "bad_request")
        await expect_err(c, msgpack.packb({"op": "ping", "id": 2}), "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_text_frame_on_msgpack_connection_bad_request(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, '{"op":"ping","id":1}', "bad_request")
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.parametrize("payload", [
    b"\xc1",                                   # never-used byte
    b"",                                       # nothing
    b"\x82\xa2op",                             # truncated map
    b"\xdf\xff\xff\xff\xff",                   # map header claiming 4G entries
    b"\xdd\xff\xff\xff\xff",                   # array header claiming 4G entries
    b"\xdb\xff\xff\xff\xf0abc",                # str32 longer than the frame
    msgpack.packb([1, 2]),                     # not a map
    msgpack.packb("ping"),
    msgpack.packb(7),
    msgpack.packb(None),
    msgpack.packb({"id": 1}),                  # no op
    msgpack.packb({"op": 1}),                  # op not a string
    msgpack.packb({"op": b"ping"}, use_bin_type=True),   # op is bin, not str
    msgpack.packb({"op": None}),
    b"\x80\x80",                               # two maps: trailing bytes
    msgpack.packb({"op": "ping", 1: 2}),       # non-str top-level key
], ids=lambda p: p[:8].hex() or "empty")
def test_msgpack_bad_request(broker, payload):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, payload, "bad_request", check_id=False)
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_msgpack_deep_nesting_does_not_crash(broker, topic):
    async def main():
        c = await connect(broker.url, MSGPACK)
        deep = b"\x91" * 50000 + b"\xc0"             # 50k nested arrays, under max_msg
        # {"op":"pub","topic":T,"data":<deep>} built by hand: map of 3.
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic") \
            + msgpack.packb(topic) + msgpack.packb("data") + deep
        await c.send_raw(frame)
        # Either refused as bad_request or forwarded; the broker must survive and answer.
        await c.sync()
        await c.close()
    run(main())


def test_json_deep_nesting_does_not_crash(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        deep = "[" * 30000 + "]" * 30000
        await c.send_raw('{"op":"pub","topic":"%s","data":%s}' % (topic, deep))
        await c.sync()
        await c.close()
    run(main())


# --- id validity (docs/PROTOCOL-NOTES.md) ------------------------------------------------

BAD_IDS = ["-1", "-0", "9007199254740992", "18446744073709551616", "1.5", "1.0", "1e3", "1E0",
           "-0.0", '"1"', "true", "null", "[1]", '{"a":1}', "0.5e1"]


@pytest.mark.gale_only
@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("op", ["ping", "sub", "pub", "frob"])
def test_invalid_id_bad_request_without_id(broker, op, bad, topic):
    async def main():
        c = await connect(broker.url, JSON)
        body = '{"op":"%s","id":%s' % (op, bad)
        if op in ("sub", "pub"):
            body += ',"topic":"%s"' % topic
        if op == "pub":
            body += ',"data":1'
        await expect_err(c, body + "}", "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
@pytest.mark.parametrize("bad", [-1, 2**53, 2**64 - 1, 1.0, 1.5, "1", True, None, b"\x01", [1]],
                         ids=repr)
def test_invalid_id_msgpack_bad_request_without_id(broker, bad):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, msgpack.packb({"op": "ping", "id": bad}, use_bin_type=True),
                         "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_id_boundaries_msgpack(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        for i in (0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**53 - 1):
            assert await c.request({"op": "ping", "id": i}) == {"op": "pong", "id": i}
        await c.close()
    run(main())


@pytest.mark.gale_only
def test_id_zero_and_max_json(broker):
    async def main():
        c = await connect(broker.url, JSON)
        await c.send_raw('{"op":"ping","id":0}')
        assert await c.recv() == {"op": "pong", "id": 0}
        await c.send_raw('{"op":"ping","id":9007199254740991}')
        assert await c.recv() == {"op": "pong", "id": 9007199254740991}
        await c.close()
    run(main())


# --- duplicate keys (docs/PROTOCOL-NOTES.md) ---------------------------------------------

@pytest.mark.gale_only
@pytest.mark.parametrize("text", [
    '{"op":"ping","op":"ping","id":1}',
    '{"op":"sub","topic":"a.b","topic":"a.c","id":1}',
    '{"op":"pub","topic":"a.b","data":1,"data":2,"id":1}',
    '{"op":"ping","\\u006fp":"ping","id":1}',     # same key once unescaped
])
def test_duplicate_keys_bad_request(broker, text):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, "bad_request", check_id=False)
        await c.close()
    run(main())


@pytest.mark.gale_only
def test_duplicate_id_bad_request_without_id(broker):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, '{"op":"ping","id":1,"id":2}', "bad_request")
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_duplicate_keys_msgpack_bad_request(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("ping") \
            + msgpack.packb("op") + msgpack.packb("ping") + msgpack.packb("id") + msgpack.packb(1)
        await expect_err(c, frame, "bad_request", check_id=False)
        await c.close()
    run(main())


# --- unknown_op --------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["publish", "PING", "", "hello", "msg", "ack", "subscribe", "sub "])
def test_unknown_op(broker, op):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, {"op": op, "id": 55, "topic": "a.b"}, "unknown_op", rid=55)
        await expect_err(c, {"op": op, "topic": "a.b"}, "unknown_op")
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
def test_unknown_op_msgpack(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, {"op": "frob", "id": 56}, "unknown_op", rid=56)
        await expect_err(c, {"op": "frob"}, "unknown_op")
        await c.close()
    run(main())


# --- bad_topic ---------------------------------------------------------------------------

INVALID = ["", ".", "..", "a.", ".a", "a..b", "a b", " a", "a ", "a\tb", "a\nb", "a\rb",
           "a\x00b", "a\x01b", "a\x1fb", "a\u00a0b", "a\u2028b", "a*", "*a", "a.b*c", "a.**",
           "a>", ">a", "a.>b", "a.>.b", ">.a", "a.>.>", "x" * 256, "\u00e9" * 128,
           "a." + "b" * 254]
INVALID_GALE = ["a\x7fb", "a\u0085b", "a\u009bb"]
VALID_PATTERNS = ["*", ">", "a.*", "*.a", "a.*.c", "a.>", "*.>", "*.*", "a.*.>"]
VALID_TOPICS = ["a", "a.b", "chat.room-42.typing", "\u65e5\u672c.\u8a9e", "a-b_c:d/e+f#g",
                "x" * 255, "\u00e9" * 127 + "x", "a.b.c.d.e.f.g.h.i.j"]


def _ids(v):
    return repr(v)[:40]


@pytest.mark.parametrize("bad", INVALID + [pytest.param(t, marks=pytest.mark.gale_only)
                                           for t in INVALID_GALE], ids=_ids)
def test_invalid_topic_bad_topic(broker, bad):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, {"op": "sub", "topic": bad, "id": 61}, "bad_topic", rid=61)
        await expect_err(c, {"op": "unsub", "topic": bad, "id": 62}, "bad_topic", rid=62)
        await expect_err(c, {"op": "pub", "topic": bad, "data": 1, "id": 63}, "bad_topic", rid=63)
        await expect_err(c, {"op": "sub", "topic": bad}, "bad_topic")
        await expect_err(c, {"op": "pub", "topic": bad, "data": 1}, "bad_topic")
        await c.close()
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.parametrize("bad", ["a..b", "a b", "a.>.b", "x" * 256], ids=_ids)
def test_invalid_topic_bad_topic_msgpack(broker, bad):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, {"op": "sub", "topic": bad, "id": 64}, "bad_topic", rid=64)
        await expect_err(c, {"op": "pub", "topic": bad, "data": 1}, "bad_topic")
        await c.close()
    run(main())


@pytest.mark.parametrize("pattern", VALID_PATTERNS + ["x.*"])
def test_pub_to_pattern_bad_topic(broker, pattern):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, {"op": "pub", "topic": pattern, "data": 1, "id": 71}, "bad_topic",
                         rid=71)
        await expect_err(c, {"op": "pub", "topic": pattern, "data": 1}, "bad_topic")
        await c.close()
    run(main())


@pytest.mark.parametrize("pattern", VALID_PATTERNS, ids=_ids)
def test_valid_patterns_ack(broker, pattern):
    async def main():
        c = await connect(broker.url, JSON)
        r = await c.request({"op": "sub", "topic": pattern, "id": 81})
        assert r == {"op": "ack", "id": 81}
        r = await c.request({"op": "unsub", "topic": pattern, "id": 82})
        assert r == {"op": "ack", "id": 82}
        await c.close()
    run(main())


@pytest.mark.parametrize("t", VALID_TOPICS + [pytest.param("a\u200bb", marks=pytest.mark.gale_only),
                               pytest.param("a#+$/\"\\", marks=pytest.mark.gale_only)],
                         ids=_ids)
def test_valid_topics_sub_and_pub(broker, t):
    async def main():
        c = await connect(broker.url, JSON)
        await c.sub(t)
        await c.send({"op": "pub", "topic": t, "data": "v"})
        assert await c.recv() == {"op": "msg", "topic": t, "data": "v"}
        await c.unsub(t)
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_topic_as_bin_is_bad_request(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        await expect_err(c, msgpack.packb({"op": "sub", "topic": b"a.b", "id": 3},
                                          use_bin_type=True), "bad_request", rid=3)
        await c.close()
    run(main())


@pytest.mark.gale_only
@pytest.mark.needs_msgpack
def test_topic_invalid_utf8_msgpack(broker):
    async def main():
        c = await connect(broker.url, MSGPACK)
        bad = b"\xa3a\xffb"     # fixstr of 3 bytes, not UTF-8
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("sub") + msgpack.packb("topic") \
            + bad + msgpack.packb("id") + msgpack.packb(4)
        await c.send_raw(frame)
        r = await c.recv()
        # A string that is not UTF-8: bad_topic (invalid topic) or bad_request (the
        # decoder refused the string); never an ack.
        assert r.get("op") == "err" and r.get("code") in ("bad_topic", "bad_request"), r
        await c.expect_silence()
        await c.close()
    run(main())


# --- precedence (docs/PROTOCOL-NOTES.md) -------------------------------------------------

@pytest.mark.gale_only
@pytest.mark.parametrize("text,code,rid", [
    ('{"id":-1}', "bad_request", NOID),                               # op missing, bad id
    ('{"op":"frob","id":-1}', "bad_request", NOID),                   # bad id before unknown op
    ('{"op":"frob","id":1,"topic":"a..b"}', "unknown_op", 1),         # unknown op before topic
    ('{"op":"sub","id":2,"topic":"a..b","extra":1}', "bad_topic", 2),
    ('{"op":"pub","id":3,"topic":"a.*"}', "bad_topic", 3),            # topic before data
    ('{"op":"pub","id":4,"topic":"a..b"}', "bad_topic", 4),
    ('{"op":"pub","id":5,"data":1}', "bad_request", 5),               # topic missing
    ('{"op":"pub","id":6,"topic":7}', "bad_request", 6),              # topic mistyped
    ('{"op":"pub","id":7,"topic":"a.b"}', "bad_request", 7),          # data missing
    ('{"op":"sub","id":1.5,"topic":"a..b"}', "bad_request", NOID),    # bad id before topic
])
def test_error_precedence(broker, text, code, rid):
    async def main():
        c = await connect(broker.url, JSON)
        await expect_err(c, text, code, rid=rid)
        await c.close()
    run(main())


def test_connection_survives_many_errors(broker, topic):
    async def main():
        c = await connect(broker.url, JSON)
        s = await connect(broker.url, JSON)
        await s.sub(topic)
        for i in range(200):
            await c.send_raw(["{", "[]", '{"op":"nope"}', '{"op":"sub","topic":"a..b"}'][i % 4])
        codes = [(await c.recv())["code"] for _ in range(200)]
        assert codes == ["bad_request", "bad_request", "unknown_op", "bad_topic"] * 50
        await c.pub(topic, "still here")
        assert await s.recv() == {"op": "msg", "topic": topic, "data": "still here"}
        await c.close()
        await s.close()
    run(main())
