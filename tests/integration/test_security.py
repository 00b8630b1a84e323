"""Security: JWT (HS256) authentication and topic permissions, origin allow-list, TLS,
the HTTP publish API (single, batch, cluster), and the per-connection publish rate limit.

Tokens are made here with hmac/hashlib/base64 (no JWT library); the TLS CA and server
certificate are made with the openssl command-line tool in a temporary directory.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import websockets

from galetest import HOST, MSGPACK, Broker, connect, connect_status, http_get, run

pytestmark = pytest.mark.gale_only

SECRET = "test-secret-for-gale-0123456789abcdef"
API_KEY = "backend-key-0123456789"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(claims, secret=SECRET, header=None, alg="HS256"):
    h = b64(json.dumps(header if header is not None else {"alg": alg, "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(alg, hashlib.sha256)
    sig = b64(hmac.new(secret.encode(), (h + "." + p).encode(), digest).digest())
    return h + "." + p + "." + sig


def grant(sub=(), pub=(), user="alice", ttl=300, **extra):
    claims = {"sub": user, "exp": int(time.time()) + ttl, "gale": {"sub": list(sub),
                                                                 "pub": list(pub)}}
    claims.update(extra)
    return make_token(claims)


@pytest.fixture
def auth_broker(make_broker):
    return make_broker(["--jwt-secret", SECRET])


def with_token(b, token):
    return b.url + "?token=" + token


# ---------------------------------------------------------------------------------------
# Tokens at the handshake
# ---------------------------------------------------------------------------------------

def _bad_tokens():
    now = int(time.time())
    good = {"sub": "alice", "exp": now + 300}
    g = make_token(good)
    h, p, s = g.split(".")
    return {
        "forged signature": make_token(good, secret="another-secret"),
        "expired": make_token({"sub": "alice", "exp": now - 10}),
        "nbf in the future": make_token({"sub": "alice", "exp": now + 300, "nbf": now + 120}),
        "alg none": b64(b'{"alg":"none","typ":"JWT"}') + "." + p + ".",
        "alg none signed": make_token(good, header={"alg": "none"}),
        "alg HS512": make_token(good, alg="HS512"),
        "alg HS512 header, HS256 mac": make_token(good, header={"alg": "HS512"}),
        "malformed base64": h + "." + p + "!" + "." + s,
        "padded base64": h + "." + p + "==" + "." + s,
        "two segments": h + "." + p,
        "four segments": g + ".x",
        "empty": "",
        "garbage": "not-a-token",
        "claims not json": h + "." + b64(b"hello") + "." + b64(hmac.new(
            SECRET.encode(), (h + "." + b64(b"hello")).encode(), hashlib.sha256).digest()),
        "exp a string": make_token({"sub": "alice", "exp": "tomorrow"}),
    }


BAD_TOKEN_CASES = sorted(_bad_tokens())


@pytest.mark.parametrize("case", BAD_TOKEN_CASES)
def test_bad_tokens_refused_401(auth_broker, case):
    tok = _bad_tokens()[case]
    assert run(connect_status(with_token(auth_broker, tok))) == 401
    assert run(connect_status(auth_broker.url,
                              extra_headers={"Authorization": "Bearer " + tok})) == 401


def test_missing_token_401_and_open_broker_logs(auth_broker, broker):
    assert run(connect_status(auth_broker.url)) == 401
    assert run(connect_status(auth_broker.url, extra_headers={"Authorization": "Basic eDp5"})) \
        == 401
    assert "authentication: HS256 tokens required" in auth_broker.log_text()
    assert "no authentication configured" in broker.log_text()


def test_token_via_query_and_header(auth_broker):
    tok = grant(sub=["a.>"], pub=["a.>"])

    async def go():
        c1 = await connect(with_token(auth_broker, tok))
        c2 = await connect(auth_broker.url, extra_headers={"Authorization": "Bearer " + tok})
        c3 = await connect(auth_broker.url, MSGPACK,
                           extra_headers={"authorization": "bearer " + tok})
        for c in (c1, c2, c3):
            assert c.hello["op"] == "hello"
        await c2.sub("a.b")
        await c3.sub("a.*")
        await c1.pub("a.b", {"x": 1})
        for c in (c2, c3):
            m = await c.recv()
            assert m["op"] == "msg" and m["topic"] == "a.b" and m["data"] == {"x": 1}
        for c in (c1, c2, c3):
            await c.close()
    run(go())
    assert "user 'alice'" in auth_broker.log_text()


def test_secret_from_env_and_file(make_broker, tmp_path):
    tok = grant(sub=["x"])
    b1 = make_broker(env={"GALE_JWT_SECRET": SECRET})
    f = tmp_path / "secret"
    f.write_text(SECRET + "\n")
    b2 = make_broker(["--jwt-secret-file", str(f)])
    for b in (b1, b2):
        assert run(connect_status(with_token(b, tok))) == 101
        assert run(connect_status(with_token(b, make_token({"sub": "x"}, secret="nope")))) == 401


def test_token_expiry_closes_1008(auth_broker):
    tok = grant(sub=["a"], ttl=2)

    async def go():
        c = await connect(with_token(auth_broker, tok))
        t0 = time.monotonic()
        await c.sub("a")
        try:
            await asyncio.wait_for(c.ws.wait_closed(), 6)
        except asyncio.TimeoutError:
            raise AssertionError("not closed after the token expired") from None
        assert c.ws.close_code == 1008, c.ws.close_code
        assert time.monotonic() - t0 <= 5
        # The same token is refused now.
        assert await connect_status(with_token(auth_broker, tok)) == 401
    run(go())
    assert "expired: closing with 1008" in auth_broker.log_text()


# ---------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------

SUB_MATRIX = [
    # granted sub patterns, requested pattern, allowed
    (["sec.>"], ">", False),
    (["sec.>"], "sec.a", True),
    (["sec.>"], "sec.*.b", True),
    (["sec.>"], "sec.>", True),
    (["sec.>"], "sec", False),
    (["a.>"], "a.*", True),
    (["*.*"], "a.*", True),
    (["*.*"], "a.b.c", False),
    (["a.*"], "a.>", False),
    (["a.*"], "*.b", False),
    (["a.b"], "a.b", True),
    (["a.b"], "a.c", False),
    ([">"], ">", True),
    (["user.{sub}.>"], "user.alice.inbox", True),
    (["user.{sub}.>"], "user.alice.>", True),
    (["user.{sub}.>"], "user.bob.inbox", False),
    (["user.{sub}.>"], "user.*.inbox", False),
    ([], "a", False),
]


@pytest.mark.parametrize("granted,pattern,allowed", SUB_MATRIX)
def test_sub_permission_matrix(auth_broker, granted, pattern, allowed):
    async def go():
        c = await connect(with_token(auth_broker, grant(sub=granted)))
        r = await c.request({"op": "sub", "topic": pattern})
        if allowed:
            assert r["op"] == "ack", r
        else:
            assert r["op"] == "err" and r["code"] == "forbidden", r
        # unsub is always allowed
        r = await c.request({"op": "unsub", "topic": pattern})
        assert r["op"] == "ack", r
        # the connection stays open
        await c.sync()
        await c.close()
    run(go())


def test_pub_permissions_and_placeholder(auth_broker):
    async def go():
        alice = await connect(with_token(auth_broker, grant(
            sub=["user.{sub}.>", "chat.>"], pub=["chat.*", "user.{sub}.out"])))
        bob = await connect(with_token(auth_broker, grant(
            user="bob", sub=["user.{sub}.>"], pub=["user.*.inbox"])))
        await alice.sub("user.alice.inbox")
        await alice.sub("chat.>")
        # bob may publish to any inbox, alice reads only her own
        await bob.pub("user.alice.inbox", "hi")
        m = await alice.recv()
        assert m["topic"] == "user.alice.inbox" and m["data"] == "hi"
        r = await bob.request({"op": "pub", "topic": "chat.x", "data": 1})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        r = await alice.request({"op": "pub", "topic": "chat.x.y", "data": 1})
        assert r["code"] == "forbidden", r   # chat.* is one segment
        await alice.pub("chat.x", 2)
        assert (await alice.recv())["data"] == 2
        await alice.pub("user.alice.out", 3)
        r = await alice.request({"op": "pub", "topic": "user.bob.out", "data": 1})
        assert r["code"] == "forbidden", r
        # sub rights do not give pub rights
        r = await bob.request({"op": "pub", "topic": "user.bob.x", "data": 1})
        assert r["code"] == "forbidden", r
        r = await bob.request({"op": "sub", "topic": "user.alice.inbox"})
        assert r["code"] == "forbidden", r
        # forbidden without id still answers err, without id
        await bob.send({"op": "sub", "topic": "chat.>"})
        got = await bob.sync()
        assert got and got[0]["op"] == "err" and got[0]["code"] == "forbidden" \
            and "id" not in got[0], got
        await alice.close()
        await bob.close()
    run(go())


def test_user_id_not_a_segment_drops_placeholder_grants(auth_broker):
    async def go():
        c = await connect(with_token(auth_broker, grant(user="a.b", sub=["user.{sub}.>", "ok"])))
        r = await c.request({"op": "sub", "topic": "user.a.b.c"})
        assert r["code"] == "forbidden", r
        await c.sub("ok")
        await c.close()
    run(go())


# ---------------------------------------------------------------------------------------
# Origins
# ---------------------------------------------------------------------------------------

def test_allowed_origins(make_broker):
    b = make_broker(["--allowed-origins", "https://app.example, http://localhost:3000"])
    assert run(connect_status(b.url, extra_headers={"Origin": "https://evil.example"})) == 403
    assert run(connect_status(b.url, extra_headers={"Origin": "https://app.example.evil"})) == 403
    assert run(connect_status(b.url, extra_headers={"Origin": "https://app.example"})) == 101
    assert run(connect_status(b.url, extra_headers={"Origin": "http://localhost:3000"})) == 101
    # No Origin header (not a browser): let in, as documented.
    assert run(connect_status(b.url)) == 101


def test_origins_checked_before_tokens(make_broker):
    b = make_broker(["--allowed-origins", "https://app.example", "--jwt-secret", SECRET])
    tok = grant(sub=["a"])
    assert run(connect_status(with_token(b, tok), extra_headers={"Origin": "https://x"})) == 403
    assert run(connect_status(with_token(b, tok),
                              extra_headers={"Origin": "https://app.example"})) == 101


# ---------------------------------------------------------------------------------------
# HTTP publish API
# ---------------------------------------------------------------------------------------

def api_post(port, body, key=API_KEY, scheme="http", context=None, timeout=10, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request("%s://%s:%d/api/publish" % (scheme, HOST, port), data=data,
                                 method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, (json.loads(body) if body.startswith(b"{") else body)


def test_api_disabled_404(broker):
    status, body = api_post(broker.port, {"topic": "a", "data": 1})
    assert status == 404, body


@pytest.fixture
def api_broker(make_broker):
    return make_broker(["--api-key", API_KEY, "--max-message", "4096"])


def test_api_key_required_401(api_broker):
    for key in (None, "wrong", API_KEY + "x", API_KEY[:-1], ""):
        status, body = api_post(api_broker.port, {"topic": "a", "data": 1}, key=key)
        assert status == 401, (key, status, body)
        assert body["ok"] is False and body["code"] == "unauthorized"
    # GET is not publishing
    status, _, _ = http_get(api_broker.port, "/api/publish")
    assert status in (404, 405)


def test_api_single_and_batch_reach_subscribers(api_broker):
    async def go():
        js = await connect(api_broker.url)
        mp = await connect(api_broker.url, MSGPACK)
        await js.sub("news.>")
        await mp.sub("news.*")
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(
            None, api_post, api_broker.port, {"topic": "news.a", "data": {"t": "x", "n": [1.5, 2]}})
        assert (status, body) == (200, {"ok": True})
        for c in (js, mp):
            m = await c.recv()
            assert m == {"op": "msg", "topic": "news.a", "data": {"t": "x", "n": [1.5, 2]}}, m
        status, body = await loop.run_in_executor(None, api_post, api_broker.port, {
            "messages": [{"topic": "news.b", "data": 1},
                         {"topic": "news.*", "data": 2},
                         {"topic": "news.c"},
                         "nope",
                         {"topic": "news.d.e", "data": [3]}]})
        assert status == 200, body
        assert body["ok"] is False
        res = body["results"]
        assert [r["ok"] for r in res] == [True, False, False, False, True]
        assert res[1]["code"] == "bad_topic"
        assert res[2]["code"] == "bad_request" and res[3]["code"] == "bad_request"
        got = [await js.recv(), await js.recv()]
        assert [(m["topic"], m["data"]) for m in got] == [("news.b", 1), ("news.d.e", [3])]
        m = await mp.recv()
        assert (m["topic"], m["data"]) == ("news.b", 1)
        assert await mp.sync() == []
        status, body = await loop.run_in_executor(None, api_post, api_broker.port, {
            "messages": [{"topic": "news.f", "data": None}]})
        assert (status, body) == (200, {"ok": True, "results": [{"ok": True}]})
        await js.close()
        await mp.close()
    run(go())


@pytest.mark.parametrize("raw,status,code", [
    (b'{"topic":"a b","data":1}', 400, "bad_topic"),
    (b'{"topic":"a.>","data":1}', 400, "bad_topic"),
    (b'{"topic":"a"}', 400, "bad_request"),
    (b'{"topic":1,"data":1}', 400, "bad_request"),
    (b'{"topic":"a","data":1', 400, "bad_request"),
    (b'[{"topic":"a","data":1}]', 400, "bad_request"),
    (b'{"messages":{}}', 400, "bad_request"),
    (b'{"topic":"a","topic":"b","data":1}', 400, "bad_request"),
    (b'{"topic":"a","data":"' + b"x" * 5000 + b'"}', 413, "too_large"),
])
def test_api_errors(api_broker, raw, status, code):
    got, body = api_post(api_broker.port, None, raw=raw)
    assert got == status, body
    assert body["ok"] is False and body["code"] == code, body


def test_api_keepalive_connection_serves_several(api_broker):
    import http.client
    conn = http.client.HTTPConnection(HOST, api_broker.port, timeout=5)
    for i in range(3):
        body = json.dumps({"topic": "k", "data": i})
        conn.request("POST", "/api/publish", body=body,
                     headers={"Authorization": "Bearer " + API_KEY,
                              "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read()) == {"ok": True}
    conn.close()


# Expect: 100-continue. curl sends it for POST bodies over 1 MiB (other clients and older
# curls for smaller ones) and waits up to 1 s for the interim "100 Continue", which
# libwebsockets 4.1 never sends: api.c answers it.

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expect_request(port, length, key=API_KEY, expect="100-continue", method="POST",
                   version="HTTP/1.1", sock=None):
    """Sends the headers of an API request, no body; returns the socket."""
    s = sock or socket.create_connection((HOST, port), timeout=5)
    head = "%s /api/publish %s\r\nHost: %s:%d\r\nContent-Type: application/json\r\n" % (
        method, version, HOST, port)
    if key is not None:
        head += "Authorization: Bearer %s\r\n" % key
    if expect is not None:
        head += "Expect: %s\r\n" % expect
    s.sendall((head + "Content-Length: %d\r\n\r\n" % length).encode())
    return s


def recv_head(s, within):
    """Bytes up to and including the first blank line, which must come within `within` s."""
    buf, deadline = b"", time.monotonic() + within
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        assert left > 0, "no answer within %.1f s: %r" % (within, buf)
        s.settimeout(left)
        d = s.recv(4096)
        assert d, "connection closed after %r" % buf
        buf += d
    return buf


def recv_response(s, within):
    """(status, headers with lower-case names, body) of one final answer with a
    Content-Length, read within `within` s; the head must not be an interim 1xx."""
    head = recv_head(s, within)
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    hdrs = dict((k.strip().lower(), v.strip()) for k, v in (l.split(":", 1) for l in lines[1:]))
    n = int(hdrs["content-length"])
    while len(rest) < n:
        d = s.recv(n - len(rest))
        assert d, "closed in the body"
        rest += d
    assert len(rest) == n, rest
    return int(status), hdrs, rest


def assert_closed(s, within=2.0):
    s.settimeout(within)
    assert s.recv(4096) == b"", "the connection stays open"


def api_body(size, topic="news.big"):
    pad = size - len(json.dumps({"topic": topic, "data": ""}))
    body = json.dumps({"topic": topic, "data": "x" * pad}).encode()
    assert len(body) == size, len(body)
    return body


def test_api_expect_100_continue_then_publish(api_broker):
    body = api_body(4000)   # within --max-message 4096

    def exchange(s):
        t0 = time.monotonic()
        s = expect_request(api_broker.port, len(body), sock=s)
        # the exact interim answer, alone, before any body byte was sent
        assert recv_head(s, 0.5) == CONTINUE
        assert time.monotonic() - t0 < 0.5
        s.sendall(body)
        status, hdrs, got = recv_response(s, 5)
        assert (status, json.loads(got)) == (200, {"ok": True}), got
        assert hdrs.get("connection") != "close", hdrs
        return s

    async def go():
        c = await connect(api_broker.url)
        await c.sub("news.>")
        loop = asyncio.get_running_loop()
        s = await loop.run_in_executor(None, exchange, None)
        m = await c.recv()
        assert (m["topic"], m["data"]) == ("news.big", json.loads(body)["data"])
        # keep-alive: the same connection takes a second request, 100 again
        await loop.run_in_executor(None, exchange, s)
        m = await c.recv()
        assert m["topic"] == "news.big"
        s.close()
        await c.close()
    run(go())


@pytest.mark.parametrize("key", ["wrong", None])
def test_api_expect_refused_key_401_at_once_and_closes(api_broker, key):
    s = expect_request(api_broker.port, 4000, key=key)
    status, hdrs, body = recv_response(s, 0.5)   # no 100 first: recv_response checks
    assert status == 401 and json.loads(body)["code"] == "unauthorized", body
    assert hdrs["www-authenticate"] == "Bearer" and hdrs["connection"] == "close", hdrs
    assert_closed(s)
    s.close()


def test_api_expect_too_large_413_at_once_and_closes(api_broker):
    s = expect_request(api_broker.port, 4097)   # --max-message 4096
    status, hdrs, body = recv_response(s, 0.5)
    assert status == 413 and json.loads(body)["code"] == "too_large", body
    assert hdrs["connection"] == "close", hdrs
    assert_closed(s)
    s.close()


@pytest.mark.parametrize("method,expect,status,code", [
    ("POST", "something-else", 417, "expectation_failed"),
    ("POST", "100-continue, foo", 417, "expectation_failed"),
    ("PUT", "100-continue", 405, "method_not_allowed"),
])
def test_api_expect_refused_at_once(api_broker, method, expect, status, code):
    s = expect_request(api_broker.port, 100, expect=expect, method=method)
    got, hdrs, body = recv_response(s, 0.5)
    assert (got, json.loads(body)["code"]) == (status, code), body
    assert hdrs["connection"] == "close", hdrs
    if status == 405:
        assert hdrs["allow"] == "POST", hdrs
    assert_closed(s)
    s.close()


def test_api_expect_value_case_insensitive_and_ignored_in_http_1_0(api_broker):
    body = api_body(300)
    s = expect_request(api_broker.port, len(body), expect="100-Continue ")
    assert recv_head(s, 0.5) == CONTINUE
    s.sendall(body)
    assert recv_response(s, 5)[0] == 200
    s.close()
    # RFC 9110: a 100-continue expectation in an HTTP/1.0 request is ignored
    s = expect_request(api_broker.port, len(body), version="HTTP/1.0")
    s.settimeout(0.3)
    with pytest.raises(socket.timeout):
        s.recv(100)
    s.sendall(body)
    s.settimeout(5)
    got = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
    assert got.startswith(b"HTTP/1.0 200 OK\r\n") and got.endswith(b'{"ok":true}\n'), got
    s.close()


def curl_publish(port, path, *extra):
    """(stdout, stderr, seconds) of curl POSTing the file at path, as the README shows."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    r = subprocess.run(["curl", "-sS", "-v", "-o", "-", "-w", "\n%{time_total}",
                        "-H", "Authorization: Bearer " + API_KEY, *extra,
                        "--data-binary", "@" + str(path),
                        "http://%s:%d/api/publish" % (HOST, port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out, _, secs = r.stdout.rpartition("\n")
    return out, r.stderr, float(secs)


def test_api_curl_expect_100_continue_is_fast(api_broker, make_broker, tmp_path):
    # 4 KiB: curl 7.88 sends Expect itself only above 1 MiB, so ask for it
    small = tmp_path / "small.json"
    small.write_bytes(api_body(4000))
    out, err, secs = curl_publish(api_broker.port, small, "-H", "Expect: 100-continue")
    assert json.loads(out) == {"ok": True}, out
    assert "> Expect: 100-continue" in err, err
    assert secs < 0.5, "curl took %.3f s (waited for 100 Continue?)" % secs
    assert "< HTTP/1.1 100 Continue" in err, err
    # above 1 MiB curl adds the header on its own
    b = make_broker(["--api-key", API_KEY, "--max-message", "2M", "--rx-buffer", "64K"])
    big = tmp_path / "big.json"
    big.write_bytes(api_body(1100 * 1024))
    out, err, secs = curl_publish(b.port, big)
    assert json.loads(out) == {"ok": True}, out
    assert "> Expect: 100-continue" in err, "curl did not send Expect: the test means nothing"
    assert secs < 0.5, "curl took %.3f s (waited for 100 Continue?)" % secs


# ---------------------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------------------

def test_pub_rate_limit(make_broker):
    b = make_broker(["--pub-rate", "5", "--pub-burst", "5"])

    async def go():
        c = await connect(b.url)
        results = []
        for i in range(12):
            r = await c.request({"op": "pub", "topic": "r", "data": i})
            results.append(r.get("code", r["op"]))
        assert results[:5] == ["ack"] * 5, results
        assert results.count("limit") >= 5, results
        # other operations are not limited
        await c.sub("x")
        await asyncio.sleep(1.1)   # refilled: 5 per second
        r = await c.request({"op": "pub", "topic": "r", "data": 1})
        assert r["op"] == "ack", r
        # the bucket is per connection
        c2 = await connect(b.url)
        await c2.pub("r", 1)
        await c.close()
        await c2.close()
    run(go())


# ---------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------

def make_ca_and_cert(d):
    def ossl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)
    ca_key, ca_crt = os.path.join(d, "ca.key"), os.path.join(d, "ca.crt")
    key, csr, crt = os.path.join(d, "srv.key"), os.path.join(d, "srv.csr"), \
        os.path.join(d, "srv.crt")
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_crt,
         "-days", "2", "-subj", "/CN=gale test CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj",
         "/CN=127.0.0.1")
    ossl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
         "-out", crt, "-days", "2", "-extfile", ext)
    return ca_crt, crt, key


class TLSBroker(Broker):
    ca = None

    def _ready(self):
        try:
            ctx = ssl.create_default_context(cafile=self.ca)
            with urllib.request.urlopen("https://%s:%d/healthz" % (HOST, self.port), timeout=1,
                                        context=ctx) as r:
                return r.status == 200
        except (OSError, ssl.SSLError):
            return False

    @property
    def url(self):
        return "wss://%s:%d/ws" % (HOST, self.port)


@pytest.fixture
def tls_broker(logdir, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    ca, crt, key = make_ca_and_cert(str(tmp_path))
    b = TLSBroker(logdir, args=["--tls-cert", crt, "--tls-key", key, "--jwt-secret", SECRET,
                                "--api-key", API_KEY], name="tls")
    b.ca = ca
    b.start()
    yield b
    rc = b.stop()
    assert rc == 0, b.log_tail()
    assert not b.sanitizer_errors(), b.log_tail()


def test_tls_wss_https_and_many_messages(tls_broker):
    b = tls_broker
    ctx = ssl.create_default_context(cafile=b.ca)
    # https /healthz, verified against the test CA
    with urllib.request.urlopen("https://%s:%d/healthz" % (HOST, b.port), timeout=5,
                                context=ctx) as r:
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    # plain http on the TLS port does not work; an unverified client is refused by the client
    with pytest.raises(Exception):
        urllib.request.urlopen("https://%s:%d/healthz" % (HOST, b.port), timeout=5)
    tok = grant(sub=["t.>"], pub=["t.>"])
    n, size = 3000, 700

    async def go():
        sub = await connect(with_token(b, tok), ssl=ctx)
        mp = await connect(with_token(b, tok), MSGPACK, ssl=ctx)
        pub = await connect(b.url, ssl=ctx, extra_headers={"Authorization": "Bearer " + tok})
        await sub.sub("t.>")
        await mp.sub("t.*")
        payload = "x" * size
        for i in range(n):
            await pub.send({"op": "pub", "topic": "t.a", "data": [i, payload]})
        await pub.sync(timeout=30)
        for c in (sub, mp):
            got = []
            while len(got) < n:
                m = await c.recv(timeout=20)
                assert m["op"] == "msg", m
                got.append(m["data"][0])
            assert got == list(range(n))
        # the API over https
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(
            None, lambda: api_post(b.port, {"topic": "t.api", "data": "via https"},
                                   scheme="https", context=ctx))
        assert (status, body) == (200, {"ok": True})
        m = await sub.recv()
        assert (m["topic"], m["data"]) == ("t.api", "via https")
        for c in (sub, mp, pub):
            await c.close()
    run(go(), timeout=120)
    # a bad token is refused with 401 over TLS too
    assert run(connect_status_tls(b.url + "?token=bad", ctx)) == 401


async def connect_status_tls(url, ctx):
    try:
        ws = await websockets.connect(url, ssl=ctx, open_timeout=5, close_timeout=1)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return 101


def test_tls_cli_with_cafile(tls_broker):
    import test_cli
    if not os.access(test_cli.GALE, os.X_OK):
        pytest.skip("gale CLI not built")
    help_text = test_cli.gale("pub", "--help").stdout.decode() + \
        test_cli.gale("pub", "--help").stderr
    if "--cafile" not in help_text:
        pytest.skip("gale pub has no --cafile")
    b = tls_broker
    tok = grant(sub=["cli.>"], pub=["cli.>"])
    s = test_cli.Sub(b.url, "--cafile", b.ca, "--token", tok, "--count", "2", "cli.>")
    try:
        s.wait_subscribed()
        p = test_cli.gale("pub", "--url", b.url, "--cafile", b.ca, "--token", tok, "cli.x",
                          "one")
        assert p.returncode == 0, p.stderr
        p = test_cli.gale("pub", "--url", b.url, "--cafile", b.ca, "--token", tok, "cli.y",
                          "two")
        assert p.returncode == 0, p.stderr
        assert s.wait() == 0
        assert len(s.lines()) == 2
        # forbidden topic: the broker's err reaches the CLI (exit 1)
        p = test_cli.gale("pub", "--url", b.url, "--cafile", b.ca, "--token", tok, "other",
                          "x")
        assert p.returncode == 1 and "forbidden" in p.stderr, p.stderr
        # without the CA the certificate is not trusted (exit 3)
        p = test_cli.gale("pub", "--url", b.url, "--token", tok, "cli.x", "x", timeout=20)
        assert p.returncode == 3, p.stderr
    finally:
        s.kill()


# ---------------------------------------------------------------------------------------
# The API in a cluster
# ---------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_api_publish_through_cluster(make_broker, logdir):
    from test_cluster import Redis
    r = Redis(logdir).start()
    try:
        a = make_broker(["--redis", r.url, "--api-key", API_KEY, "--node-id", "a"])
        b = make_broker(["--redis", r.url, "--node-id", "b"])

        async def go():
            ca = await connect(a.url)
            cb = await connect(b.url, MSGPACK)
            await ca.sub("c.>")
            await cb.sub("c.>")   # acked: live cluster-wide
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, api_post, a.port,
                                                      {"topic": "c.one", "data": {"k": 1}})
            assert (status, body) == (200, {"ok": True})
            status, body = await loop.run_in_executor(None, api_post, a.port, {
                "messages": [{"topic": "c.two", "data": 2}, {"topic": "c.three", "data": 3}]})
            assert (status, body) == (200, {"ok": True, "results": [{"ok": True}] * 2})
            for c in (ca, cb):
                got = [await c.recv(timeout=5) for _ in range(3)]
                assert [(m["topic"], m["data"]) for m in got] == \
                    [("c.one", {"k": 1}), ("c.two", 2), ("c.three", 3)], got
            assert await cb.sync() == []
            # Redis gone: the API answers 503 unavailable
            r.kill()
            await asyncio.sleep(0.5)
            status, body = await loop.run_in_executor(None, api_post, a.port,
                                                      {"topic": "c.x", "data": 1})
            assert status == 503 and body["code"] == "unavailable", (status, body)
            await ca.close()
            await cb.close()
        run(go(), timeout=60)
    finally:
        r.stop()
