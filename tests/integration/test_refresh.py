"""Token refresh on live connections (`{"op":"refresh","token":T,"id":N}`, gale's addition:
docs/PROTOCOL.md "Token refresh"): a refresh extends a connection's life past its first
token's exp, another user's token is forbidden, an invalid or expired one is refused with
bad_request and the old token still governs (close 1008 at its exp), permissions follow the
new grant (subscriptions it does not allow are dropped), a broker without authentication
answers bad_request; the counters; `gale sub --token-file` sending a changed file as a
refresh.

Tokens are minted with Debian's python3-jwt (HS256 with the broker's --jwt-secret), an
implementation independent of the broker's. Every wait is bounded.
"""
import asyncio
import os
import subprocess
import time

import jwt
import pytest

import galetest
from galetest import MSGPACK, connect, run

pytestmark = pytest.mark.gale_only

SECRET = "refresh-test-secret-0123456789abcdef"


def token(user="alice", ttl=300, sub=("a.>",), pub=("a.>",), secret=SECRET, **claims):
    """An HS256 token of user (None: no sub claim) expiring ttl seconds from now."""
    c = {"exp": int(time.time()) + ttl, "gale": {"sub": list(sub), "pub": list(pub)}}
    if user is not None:
        c["sub"] = user
    c.update(claims)
    return jwt.encode(c, secret, algorithm="HS256")


def exp_of(tok):
    return jwt.decode(tok, options={"verify_signature": False})["exp"]


@pytest.fixture
def auth_broker(make_broker):
    return make_broker(["--jwt-secret", SECRET, "--log-level", "info"])


def url(b, tok):
    return b.url + "?token=" + tok


async def refresh(c, tok, **extra):
    return await c.ask(dict({"op": "refresh", "token": tok}, **extra))


async def wait_until(t):
    """Sleeps until the wall clock reaches t (seconds since the epoch)."""
    left = t - time.time()
    if left > 0:
        await asyncio.sleep(left)


# ---------------------------------------------------------------------------------------
# The connection's life
# ---------------------------------------------------------------------------------------

def test_refresh_extends_the_life_of_the_connection(auth_broker):
    first = token(ttl=3)

    async def go():
        c = await connect(url(auth_broker, first))
        other = await connect(url(auth_broker, token(user="bob")))
        await c.sub("a.x")
        r = await refresh(c, token(ttl=60))
        assert r == {"op": "ack", "id": r["id"]}, r
        await wait_until(exp_of(first) + 2.5)   # past the first exp and the next sweep
        assert await c.sync() == []              # still open
        await other.pub("a.x", "after the first exp")
        m = await c.recv()
        assert m["op"] == "msg" and m["data"] == "after the first exp", m
        await c.close()
        await other.close()
    run(go())
    log = auth_broker.log_text()
    assert "token of user 'alice' refreshed" in log, log
    assert "expired: closing with 1008" not in log


def test_refresh_without_id_is_silent_and_msgpack_works(auth_broker):
    first = token(ttl=3)

    async def go():
        c = await connect(url(auth_broker, first), MSGPACK)
        await c.send({"op": "refresh", "token": token(ttl=60)})
        assert await c.sync() == []              # success without id: no answer
        await wait_until(exp_of(first) + 2.5)
        assert await c.sync() == []
        r = await refresh(c, token(user="mallory"))
        assert r["op"] == "err" and r["code"] == "forbidden", r
        await c.close()
    run(go())


REFUSED = {
    # case: (the token, the code, the start of the message)
    "other user": (lambda: token(user="bob", ttl=60), "forbidden", "the token is another user's"),
    "no sub claim": (lambda: token(user=None, ttl=60), "forbidden", "the token is another user's"),
    "expired": (lambda: token(ttl=-5), "bad_request", "token refused: "),
    "bad signature": (lambda: token(ttl=60, secret="another-secret-0123456789abcdefgh"),
                      "bad_request", "token refused: "),
    "not yet valid": (lambda: token(ttl=60, nbf=int(time.time()) + 30), "bad_request",
                      "token refused: "),
    "garbage": (lambda: "not-a-token", "bad_request", "token refused: "),
    "alg none": (lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None,
                                    algorithm="none"), "bad_request", "token refused: "),
}


def test_refused_refresh_keeps_the_old_token_which_still_expires(auth_broker):
    """Every kind of refused token (one connection each, at once, so that the old tokens'
    expiry is waited for once): the err, and the old grant still governs."""
    first = token(ttl=3, pub=["a.only-old"])

    async def one(case):
        make, code, msg = REFUSED[case]
        c = await connect(url(auth_broker, first))
        r = await refresh(c, make(), id=41)
        assert r["op"] == "err" and r["id"] == 41 and r["code"] == code, (case, r)
        assert r["msg"].startswith(msg), (case, r)
        # The old grant still governs: its permissions ...
        assert (await c.request({"op": "pub", "topic": "a.only-old", "data": 1}))["op"] == "ack"
        r = await c.request({"op": "pub", "topic": "a.other", "data": 1})
        assert r["code"] == "forbidden", (case, r)
        # ... and its expiry: closed with 1008 once it passes, not before.
        code_, _ = await c.expect_close(timeout=exp_of(first) - time.time() + 3)
        assert code_ == 1008, (case, code_)
        assert time.time() >= exp_of(first) - 0.05, case

    async def go():
        await asyncio.gather(*(one(case) for case in sorted(REFUSED)))
    run(go())
    assert "refresh refused" in auth_broker.log_text()


def test_malformed_refresh_is_bad_request(auth_broker):
    async def go():
        c = await connect(url(auth_broker, token()))
        for req, why in [({"op": "refresh"}, "token is missing"),
                         ({"op": "refresh", "token": ""}, "token is not a string"),
                         ({"op": "refresh", "token": 42}, "token is not a string"),
                         ({"op": "refresh", "token": "x" * 8193}, "token is not a string")]:
            r = await c.ask(req)
            assert r["op"] == "err" and r["code"] == "bad_request", r
            assert r["msg"].startswith(why), r
        # Escapes are refused, even of characters a token may hold.
        tok = token(ttl=60)
        raw = '{"op":"refresh","id":7,"token":"%s"}' % tok.replace(".", "\\u002e", 1)
        await c.send_raw(raw)
        r = await c.reply(7)
        assert r["code"] == "bad_request" and "without escapes" in r["msg"], r
        # Without id the err comes without id.
        await c.send({"op": "refresh", "token": "nope"})
        got = await c.sync()
        assert len(got) == 1 and got[0]["op"] == "err" and "id" not in got[0], got
        await c.close()
    run(go())


def test_refresh_without_authentication_is_bad_request(broker):
    async def go():
        c = await connect(broker.url)
        r = await refresh(c, token())
        assert r["op"] == "err" and r["code"] == "bad_request", r
        assert r["msg"] == "this broker has no authentication", r
        await c.sync()
        await c.close()
    run(go())


# ---------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------

def test_permissions_follow_the_new_token(auth_broker):
    async def go():
        c = await connect(url(auth_broker, token(sub=["x.>", "y.>", "user.{sub}.>"],
                                                 pub=["x.a"])))
        feeder = await connect(url(auth_broker, token(user="feeder", sub=[], pub=[">"])))
        await c.sub("y.>")
        await c.sub("x.in")
        await c.sub("user.alice.inbox")
        r = await c.request({"op": "pub", "topic": "x.b", "data": 1})
        assert r["code"] == "forbidden", r
        # The new token: publish to x.b too; subscribe to x.> and the inbox only.
        r = await refresh(c, token(sub=["x.>", "user.{sub}.>"], pub=["x.a", "x.b"]))
        assert r["op"] == "ack", r
        # y.> is dropped: one err naming it, without id, after the ack.
        m = await c.recv()
        assert m == {"op": "err", "code": "forbidden", "topic": "y.>",
                     "msg": "subscription dropped: the refreshed token does not allow it"}, m
        assert await c.sync() == []
        assert (await c.request({"op": "pub", "topic": "x.b", "data": 2}))["op"] == "ack"
        r = await c.request({"op": "sub", "topic": "y.>"})
        assert r["code"] == "forbidden", r
        # Deliveries follow the subscriptions kept.
        await feeder.pub("y.z", "gone")
        await feeder.pub("x.in", "kept")
        await feeder.pub("user.alice.inbox", "inbox")
        got = [await c.recv(), await c.recv()]
        assert [m["data"] for m in got] == ["kept", "inbox"], got
        assert await c.sync() == []
        await c.close()
        await feeder.close()
    run(go())
    assert "subscription 'y.>' dropped" in auth_broker.log_text()


def test_refresh_metrics(auth_broker):
    async def go():
        c = await connect(url(auth_broker, token()))
        assert (await refresh(c, token(ttl=100)))["op"] == "ack"
        assert (await refresh(c, token(ttl=200)))["op"] == "ack"
        assert (await refresh(c, token(user="bob")))["code"] == "forbidden"
        assert (await refresh(c, token(ttl=-1)))["code"] == "bad_request"
        assert (await refresh(c, token(sub=[])))["op"] == "ack"
        await c.close()
    run(go())
    m = auth_broker.metrics()
    assert m['gale_token_refreshes_total{outcome="ok"}'] == 3, m
    assert m['gale_token_refreshes_total{outcome="refused"}'] == 2, m
    assert m["gale_refresh_dropped_subscriptions_total"] == 0, m


# ---------------------------------------------------------------------------------------
# gale sub --token-file
# ---------------------------------------------------------------------------------------

def write_token(path, tok):
    """Replaces the file at once, as a secret manager does (write, then rename)."""
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(tok + "\n")
    os.replace(tmp, path)


def test_cli_sub_rereads_its_token_file(auth_broker, tmp_path):
    from test_cli import GALE, Sub
    if not os.access(GALE, os.X_OK):
        pytest.skip("gale CLI not built")
    f = tmp_path / "token"
    first = token(ttl=4)
    write_token(f, first)
    s = Sub(auth_broker, "--token-file", str(f), "--format", "data", "a.cli")
    try:
        s.wait_subscribed()
        # Another user's token: refused, reported, the connection keeps its own.
        write_token(f, token(user="bob", ttl=60))
        s.wait_for(lambda: "token refresh refused: forbidden" in s.stderr(), 5, "the refusal")
        # A fresh token of the same user: sent as a refresh, taken.
        write_token(f, token(ttl=60))
        s.wait_for(lambda: "token refreshed" in s.stderr(), 5, "the refresh")

        async def publish():
            await wait_until(exp_of(first) + 2)     # past the first token's exp
            p = await connect(url(auth_broker, token(user="pub")))
            await p.pub("a.cli", "alive")
            await p.close()
        run(publish())
        assert s.wait_lines(1) == ['"alive"']
        assert s.proc.poll() is None, s.stderr()
        assert "closed by the broker with 1008" not in s.stderr()
        # An unreadable version is reported once and changes nothing.
        write_token(f, "")
        s.wait_for(lambda: "cannot read a token from --token-file" in s.stderr(), 5, "the report")
    finally:
        s.proc.send_signal(2)
        s.wait()
    err = s.stderr()
    assert err.count("> {\"op\":\"refresh\"") == 2, err
    assert err.count("cannot read a token from --token-file") == 1, err


def test_cli_token_file_usage(auth_broker, tmp_path):
    from test_cli import GALE, gale
    if not os.access(GALE, os.X_OK):
        pytest.skip("gale CLI not built")
    f = tmp_path / "token"
    write_token(f, token(sub=["h.>"], pub=["h.>"]))
    p = gale("pub", "--url", auth_broker.url, "--token-file", str(f), "h.x", "1")
    assert p.returncode == 0, p.stderr
    for args, needle in [(["--token-file", str(tmp_path / "missing")], "cannot use --token-file"),
                         (["--token", "t", "--token-file", str(f)], "exclude each other"),
                         (["--token-file", str(f), "--token", "t"], "exclude each other")]:
        p = gale("pub", "--url", auth_broker.url, *args, "h.x", "1")
        assert p.returncode == 2 and needle in p.stderr, (args, p.stderr)
    (tmp_path / "spaced").write_text("two words\n")
    p = gale("pub", "--url", auth_broker.url, "--token-file", str(tmp_path / "spaced"), "h.x", "1")
    assert p.returncode == 2 and "whitespace" in p.stderr, p.stderr
