"""Data forwarding: byte-exact within an encoding, converted across encodings."""
import base64
import json
import struct

import msgpack
import pytest

from galetest import JSON, MSGPACK, connect, run

UNICODE = "h\u00e9llo \u2713 \u65e5\u672c\u8a9e \U0001F389 \u0000 \"q\" \\ /\n\t"


async def pair(broker, pub_enc, sub_enc, topic):
    s = await connect(broker.url, sub_enc)
    p = await connect(broker.url, pub_enc)
    await s.sub(topic)
    return p, s


async def close_all(*cs):
    for c in cs:
        await c.close()


def exact_type(v):
    """Structural value with types: ints and floats and bools are told apart."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("float", v)
    if isinstance(v, dict):
        return ("map", sorted((k, exact_type(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return ("arr", [exact_type(x) for x in v])
    return (type(v).__name__, v)


# --- byte-exact within JSON --------------------------------------------------------------

@pytest.mark.gale_only
@pytest.mark.parametrize("data_text", [
    '[1, 2 ,{"a" : "b"}]',
    '{ "x" :1.50, "y":"\\u00e9\\n" ,"z":[ ] }',
    '1.0e+00',
    '-0',
    '"\\ud83c\\udf89 \\/ slash"',
    '123456789012345678901234567890',
    '\t{"deep":{"deeper":[null,true,false]}}\n',
    '"caf\u00e9 \u65e5\u672c"',
])
def test_json_data_forwarded_byte_exact(broker, topic, data_text):
    async def main():
        p, s = await pair(broker, JSON, JSON, topic)
        await p.send_raw('{"op":"pub","topic":"%s","data":%s}' % (topic, data_text))
        raw = await s.recv_raw()
        assert isinstance(raw, str)
        assert '"data":' + data_text.strip() in raw or '"data":' + data_text in raw, raw
        m = json.loads(raw)
        assert m["op"] == "msg" and m["topic"] == topic
        await close_all(p, s)
    run(main())


@pytest.mark.gale_only
def test_json_data_forwarded_byte_exact_brief_example(broker):
    async def main():
        p, s = await pair(broker, JSON, JSON, "t")
        await p.send_raw('{"op":"pub","topic":"t","data":[1, 2 ,{"a" : "b"}]}')
        raw = await s.recv_raw()
        assert '"data":[1, 2 ,{"a" : "b"}]' in raw, raw
        assert json.loads(raw) == {"op": "msg", "topic": "t", "data": [1, 2, {"a": "b"}]}
        await close_all(p, s)
    run(main())


def test_json_data_values_forwarded(broker, topic):
    data = {"s": UNICODE, "i": 42, "neg": -7, "f": 0.1, "e": 1.5e300, "n": None, "t": True,
            "arr": [1, [2, [3, {"k": "v"}]]], "empty": {}, "big": 2**63 - 1}
    async def main():
        p, s = await pair(broker, JSON, JSON, topic)
        for d in (data, 0, "", [], None, False, "x" * 1000, -1.25):
            await p.send({"op": "pub", "topic": topic, "data": d})
            m = await s.recv()
            assert m == {"op": "msg", "topic": topic, "data": d}
            assert exact_type(m["data"]) == exact_type(d)
        await close_all(p, s)
    run(main())


# --- byte-exact within MessagePack -------------------------------------------------------

@pytest.mark.needs_msgpack
@pytest.mark.gale_only
@pytest.mark.parametrize("data_bytes", [
    struct.pack(">Bf", 0xCA, 1.5),              # float32 stays float32
    b"\xd9\x03abc",                             # str8 for a short string (not fixstr)
    b"\xcd\x00\x05",                            # uint16 holding 5
    b"\xd3\x00\x00\x00\x00\x00\x00\x00\x07",   # int64 holding 7
    b"\xc4\x03\x00\x01\xff",                    # bin8
    b"\xd6\x05abcd",                            # fixext4 type 5
    b"\x82\xa1a\x01\xa1b\x92\xc0\xc3",         # {"a":1,"b":[nil,true]}
], ids=lambda b: b.hex())
def test_msgpack_data_forwarded_byte_exact(broker, topic, data_bytes):
    async def main():
        p, s = await pair(broker, MSGPACK, MSGPACK, topic)
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic") \
            + msgpack.packb(topic) + msgpack.packb("data") + data_bytes
        await p.send_raw(frame)
        raw = await s.recv_raw()
        assert isinstance(raw, bytes)
        assert msgpack.packb("data") + data_bytes in raw, raw.hex()
        m = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        assert m["op"] == "msg" and m["topic"] == topic
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
def test_msgpack_values_forwarded(broker, topic):
    data = {"s": UNICODE, "i": 42, "neg": -7, "u64": 2**64 - 1, "i64": -2**63, "f": 0.1,
            "n": None, "t": True, "arr": [1, [2, [3, {"k": "v"}]]], "bin": b"\x00\xff",
            "ext": msgpack.ExtType(7, b"xyz"), "empty": {}}
    async def main():
        p, s = await pair(broker, MSGPACK, MSGPACK, topic)
        for d in (data, b"raw bytes\x00", 0, "", [], None):
            await p.send({"op": "pub", "topic": topic, "data": d})
            m = await s.recv()
            assert m == {"op": "msg", "topic": topic, "data": d}
            assert exact_type(m["data"]) == exact_type(d)
        await close_all(p, s)
    run(main())


# --- JSON -> MessagePack -----------------------------------------------------------------

@pytest.mark.needs_msgpack
def test_json_to_msgpack_values(broker, topic):
    async def main():
        p, s = await pair(broker, JSON, MSGPACK, topic)
        await p.send_raw('{"op":"pub","topic":"%s","data":{"i":1,"neg":-5,"zero":0,'
                         '"f":1.5,"tenth":0.1,"s":"%s","n":null,"t":true,"fa":false,'
                         '"arr":[1,2.5,"x",[],{}],"nested":{"a":{"b":[{"c":null}]}},'
                         '"big":9007199254740993,"i64min":-9223372036854775808,'
                         '"u64max":18446744073709551615,"esc":"\\u00e9\\ud83c\\udf89\\n"}}'
                         % (topic, "h\u00e9llo \u2713 \u65e5\u672c \U0001F389"))
        raw = await s.recv_raw()
        assert isinstance(raw, bytes)
        m = msgpack.unpackb(raw, raw=False)
        assert m["op"] == "msg" and m["topic"] == topic
        d = m["data"]
        want = {"i": 1, "neg": -5, "zero": 0, "f": 1.5, "tenth": 0.1,
                "s": "h\u00e9llo \u2713 \u65e5\u672c \U0001F389", "n": None, "t": True,
                "fa": False, "arr": [1, 2.5, "x", [], {}], "nested": {"a": {"b": [{"c": None}]}},
                "big": 9007199254740993, "i64min": -9223372036854775808,
                "u64max": 18446744073709551615, "esc": "\u00e9\U0001F389\n"}
        assert exact_type(d) == exact_type(want)
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
def test_json_to_msgpack_float_is_float64(broker, topic):
    async def main():
        p, s = await pair(broker, JSON, MSGPACK, topic)
        await p.send_raw('{"op":"pub","topic":"%s","data":0.1}' % topic)
        raw = await s.recv_raw()
        assert msgpack.packb("data") + b"\xcb" + struct.pack(">d", 0.1) in raw, raw.hex()
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
@pytest.mark.parametrize("text,value", [("2.0", 2), ("1e2", 100), ("-3.0", -3), ("0.0", 0),
                                        ("1.5e1", 15), ("2.5", 2.5), ("1e-1", 0.1),
                                        ("1e300", 1e300), ("-0.0", 0), ("-0", 0),
                                        ("1e19", 1e19), ("18446744073709551616", 2.0**64),
                                        ("18446744073709551615", 2**64 - 1),
                                        ("-9223372036854775808", -2**63)])
def test_json_to_msgpack_integral_numbers_become_ints(broker, topic, text, value):
    async def main():
        p, s = await pair(broker, JSON, MSGPACK, topic)
        await p.send_raw('{"op":"pub","topic":"%s","data":[%s]}' % (topic, text))
        m = msgpack.unpackb(await s.recv_raw(), raw=False)
        assert exact_type(m["data"]) == exact_type([value]), m
        await close_all(p, s)
    run(main())


# --- MessagePack -> JSON -----------------------------------------------------------------

@pytest.mark.needs_msgpack
def test_msgpack_to_json_values(broker, topic):
    data = {"i": 1, "neg": -5, "f": 1.5, "f2": 2.0, "s": UNICODE, "n": None, "t": True,
            "arr": [1, 2.5, "x", [], {}], "nested": {"x": {"y": [1, {"z": False}]}},
            "u64": 2**64 - 1, "i64": -2**63}
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        await p.send({"op": "pub", "topic": topic, "data": data})
        raw = await s.recv_raw()
        assert isinstance(raw, str)
        m = json.loads(raw)
        assert m == {"op": "msg", "topic": topic, "data": data}
        assert isinstance(m["data"]["i"], int) and isinstance(m["data"]["f"], float)
        assert m["data"]["u64"] == 2**64 - 1 and m["data"]["i64"] == -2**63
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_to_json_float32(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic") \
            + msgpack.packb(topic) + msgpack.packb("data") + struct.pack(">Bf", 0xCA, 0.25)
        await p.send_raw(frame)
        m = json.loads(await s.recv_raw())
        assert m["data"] == 0.25
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
@pytest.mark.parametrize("value", [b"\x00\x01\xff", b"", bytes(range(256)), b"x" * 40000],
                         ids=["3B", "empty", "256B", "40KB"])
def test_msgpack_top_level_bin_arrives_as_bin_field(broker, topic, value):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        mp = await connect(broker.url, MSGPACK)
        await mp.sub(topic)
        await p.send({"op": "pub", "topic": topic, "data": value})
        m = json.loads(await s.recv_raw())
        assert m["op"] == "msg" and m["topic"] == topic
        assert "data" not in m, m
        assert m["bin"] == base64.b64encode(value).decode()
        # a msgpack subscriber gets the bin itself
        assert await mp.recv() == {"op": "msg", "topic": topic, "data": value}
        await close_all(p, s, mp)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_nested_bin_becomes_base64_string(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        await p.send({"op": "pub", "topic": topic,
                      "data": {"k": b"\x01\x02", "arr": [b"hello", 1], "deep": {"b": b""}}})
        m = json.loads(await s.recv_raw())
        assert m["data"] == {"k": "AQI=", "arr": ["aGVsbG8=", 1], "deep": {"b": ""}}
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_ext_becomes_ext_object(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        # {"e": ext 5 "abc", "neg": [fixext4 type -5 00000001]}, by hand (python-msgpack
        # will not pack negative ext types).
        data = b"\x82" + msgpack.packb("e") + b"\xc7\x03\x05abc" + msgpack.packb("neg") \
            + b"\x91\xd6\xfb\x00\x00\x00\x01"
        await p.send_raw(b"\x83" + msgpack.packb("op") + msgpack.packb("pub")
                         + msgpack.packb("topic") + msgpack.packb(topic)
                         + msgpack.packb("data") + data)
        m = json.loads(await s.recv_raw())
        assert m["data"] == {"e": {"ext": 5, "base64": "YWJj"},
                             "neg": [{"ext": -5, "base64": "AAAAAQ=="}]}
        await p.send({"op": "pub", "topic": topic, "data": msgpack.ExtType(9, b"\xff")})
        m = json.loads(await s.recv_raw())
        assert m.get("data") == {"ext": 9, "base64": "/w=="}, m
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
def test_round_trip_json_msgpack_json(broker, topic):
    # JSON publisher, one subscriber of each encoding, same message.
    data = {"s": UNICODE, "n": [1, -2, 3.25, None, True, {"k": ["v"]}]}
    async def main():
        js = await connect(broker.url, JSON)
        mp = await connect(broker.url, MSGPACK)
        await js.sub(topic)
        await mp.sub(topic)
        for pub_enc in (JSON, MSGPACK):
            p = await connect(broker.url, pub_enc)
            await p.pub(topic, data)
            a = await js.recv()
            b = await mp.recv()
            assert a == b == {"op": "msg", "topic": topic, "data": data}
            assert exact_type(a) == exact_type(b)
            await p.close()
        await close_all(js, mp)
    run(main())


@pytest.mark.needs_msgpack
def test_unicode_topic_across_encodings(broker):
    t = "\u65e5\u672c.\u8a9e.\U0001F389"
    async def main():
        js = await connect(broker.url, JSON)
        mp = await connect(broker.url, MSGPACK)
        await js.sub(t)
        await mp.sub("\u65e5\u672c.*.>")
        p = await connect(broker.url, MSGPACK)
        await p.pub(t, "x")
        assert await js.recv() == {"op": "msg", "topic": t, "data": "x"}
        assert await mp.recv() == {"op": "msg", "topic": t, "data": "x"}
        await close_all(js, mp, p)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_to_json_non_finite_floats_become_null(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        await p.send({"op": "pub", "topic": topic,
                      "data": [float("nan"), float("inf"), float("-inf"), 2.0, 0.5]})
        raw = await s.recv_raw()
        assert '"data":[null,null,null,2,0.5]' in raw, raw
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_to_json_non_string_keys(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        await p.send({"op": "pub", "topic": topic,
                      "data": {1: "a", None: "b", b"k": "c", "s": {-2: True}}})
        m = json.loads(await s.recv_raw())
        assert m["data"] == {"1": "a", "null": "b", "aw==": "c", "s": {"-2": True}}, m
        await close_all(p, s)
    run(main())


@pytest.mark.needs_msgpack
@pytest.mark.gale_only
def test_msgpack_to_json_invalid_utf8_replaced(broker, topic):
    async def main():
        p, s = await pair(broker, MSGPACK, JSON, topic)
        frame = b"\x83" + msgpack.packb("op") + msgpack.packb("pub") + msgpack.packb("topic") \
            + msgpack.packb(topic) + msgpack.packb("data") + b"\xa3\xe2\x82\x41"
        await p.send_raw(frame)
        m = json.loads(await s.recv_raw())
        assert m["data"] == "\ufffdA", m
        await close_all(p, s)
    run(main())


# --- data that cannot be converted -------------------------------------------------------

@pytest.mark.gale_only
def test_unconvertible_data_reaches_same_encoding_only(broker, topic):
    # Map keys nested inside map keys: every level JSON-escapes the one below, so the JSON
    # text doubles per level. The broker refuses to build it (docs/PROTOCOL-NOTES.md):
    # MessagePack subscribers still get the exact bytes, JSON subscribers get nothing, and
    # the publisher learns it with err bad_request.
    key = msgpack.packb("leaf")
    for _ in range(24):
        key = b"\x81" + key + b"\x01"  # {key: 1}
    data = b"\x81" + key + b"\xc0"  # {key: nil}
    frame = b"\x83\xa2op\xa3pub\xa5topic" + msgpack.packb(topic) + b"\xa4data" + data
    frame_with_id = frame[:1].replace(b"\x83", b"\x84") + frame[1:] + b"\xa2id\x07"

    async def main():
        js = await connect(broker.url, JSON)
        mp = await connect(broker.url, MSGPACK)
        pub = await connect(broker.url, MSGPACK)
        await js.sub(topic)
        await mp.sub(topic)
        await pub.send_raw(frame_with_id)
        reply = await pub.recv()
        assert reply["op"] == "err" and reply["code"] == "bad_request" and reply["id"] == 7
        assert "JSON" in reply["msg"]
        raw = await mp.recv_raw()
        assert raw.endswith(b"\xa4data" + data)  # byte-exact for the same encoding
        await js.expect_silence()
        await close_all(js, mp, pub)

    run(main())
