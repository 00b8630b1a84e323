"""Tokens from identity providers: RS256 and ES256 verified with the keys of a JWKS file
(--jwt-keys), key selection by kid, rotation by SIGHUP, refusals (the algorithm confusion
attack, alg none, unknown kid...), and the JWKS beside an HS256 secret.

Tokens are minted by an independent library, Debian's python3-jwt (PyJWT 2.6), with keys made
by python3-cryptography; the JWKS files are written with PyJWT's own to_jwk. The confusion
attack is made with hmac directly: PyJWT refuses a PEM as an HMAC secret.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import time

import pytest

from galetest import HOST, MSGPACK, Broker, BrokerError, connect, connect_status, run

jwt = pytest.importorskip("jwt")  # python3-jwt (scripts/deps test installs it)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

pytestmark = pytest.mark.gale_only

SECRET = "test-secret-for-gale-0123456789abcdef"

# Keys for the whole module: RSA generation takes a while.
RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC1 = ec.generate_private_key(ec.SECP256R1())
EC2 = ec.generate_private_key(ec.SECP256R1())


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwk(key, kid=None, **extra):
    """The public JWK of a private key, as PyJWT writes it, with kid/use/alg."""
    if isinstance(key, rsa.RSAPrivateKey):
        d = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        d = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        # RFC 7518 6.2.1.2: x and y are the full 32 bytes. PyJWT 2.6 (Debian 12) strips
        # leading zero bytes (one key in 128 has one), which the broker rightly refuses.
        nums = key.public_key().public_numbers()
        for k, v in (("x", nums.x), ("y", nums.y)):
            d[k] = base64.urlsafe_b64encode(v.to_bytes(32, "big")).rstrip(b"=").decode()
    if kid is not None:
        d["kid"] = kid
    d.update(extra)
    return d


def write_jwks(path, *jwks):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": list(jwks)}, f)
    os.replace(tmp, path)  # what a fetching job should do: never a half-written file


def claims(sub=(), pub=(), user="alice", ttl=300):
    return {"sub": user, "exp": int(time.time()) + ttl,
            "gale": {"sub": list(sub), "pub": list(pub)}}


def mint(key, kid=None, alg=None, **kw):
    if alg is None:
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(claims(**kw), key, algorithm=alg, headers={"kid": kid} if kid else None)


def hs256(secret, header, body):
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(body).encode())
    return h + "." + p + "." + b64(hmac.new(secret, (h + "." + p).encode(),
                                            hashlib.sha256).digest())


def public_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def public_der(key):
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def with_token(b, token):
    return b.url + "?token=" + token


def status(b, token):
    return run(connect_status(with_token(b, token)))


def refusal(b, token, header=False):
    """(status, body) of an upgrade the broker refuses (it closes the connection after)."""
    s = socket.create_connection((HOST, b.port), timeout=5)
    try:
        path = "/ws" if header else "/ws?token=" + token
        auth = "Authorization: Bearer %s\r\n" % token if header else ""
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\n%s\r\n" % (path, HOST, b.port, auth)).encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode().strip()


def wait_log(b, text, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.log_text().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("%r not logged %d time(s):\n%s" % (text, count, b.log_tail()))


def sighup(b, count):
    """SIGHUP the broker and wait for its count-th answer in the log."""
    b.send_signal(signal.SIGHUP)
    wait_log(b, "received SIGHUP", count)
    assert b.alive()


@pytest.fixture
def jwks_path(tmp_path):
    return tmp_path / "jwks.json"


# ---------------------------------------------------------------------------------------
# Accepted tokens and their grants
# ---------------------------------------------------------------------------------------

def test_rs256_and_es256_accepted_with_their_grants(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(RSA1, "r1", use="sig", alg="RS256"), jwk(EC1, "e1"))
    b = make_broker(["--jwt-keys", str(jwks_path)])
    log = b.log_text()
    assert "authentication: RS256, ES256 tokens required" in log
    assert 'token keys: 2 JWKS keys: kid "r1" RSA 2048 bits, kid "e1" EC P-256 ' \
           "(read again on SIGHUP)" in log
    rs = mint(RSA1, "r1", sub=["room.>"], pub=["room.*"])
    es = mint(EC1, "e1", user="bob", sub=["user.{sub}.>"], pub=["room.*", "user.*.inbox"])

    async def go():
        alice = await connect(with_token(b, rs))
        bob = await connect(b.url, MSGPACK, extra_headers={"Authorization": "Bearer " + es})
        await alice.sub("room.>")
        await bob.sub("user.bob.inbox")
        r = await alice.request({"op": "sub", "topic": "user.bob.inbox"})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        r = await bob.request({"op": "sub", "topic": "room.>"})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        await bob.pub("room.a", {"from": "bob"})
        m = await alice.recv()
        assert m["topic"] == "room.a" and m["data"] == {"from": "bob"}
        r = await alice.request({"op": "pub", "topic": "user.bob.inbox", "data": 1})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        await alice.pub("room.b", "hi")
        assert (await alice.recv())["data"] == "hi"
        await alice.close()
        await bob.close()
    run(go())
    log = b.log_text()
    assert "user 'alice'" in log and "user 'bob'" in log


def test_kid_selection(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(RSA1, "r1"), jwk(RSA2, "r2"), jwk(EC1, "e1"), jwk(EC2, "e2"))
    b = make_broker(["--jwt-keys", str(jwks_path)])
    for key, kid in ((RSA1, "r1"), (RSA2, "r2"), (EC1, "e1"), (EC2, "e2")):
        assert status(b, mint(key, kid)) == 101, kid
    # Signed by one key, naming another.
    assert refusal(b, mint(RSA2, "r1")) == (401, "bad signature")
    assert refusal(b, mint(EC2, "e1")) == (401, "bad signature")
    # The kid's key must fit the algorithm.
    assert refusal(b, mint(RSA1, "e1")) == \
        (401, "alg RS256 does not fit the key: it is an EC key")
    assert refusal(b, mint(EC1, "r1")) == \
        (401, "alg ES256 does not fit the key: it is an RSA key")
    assert refusal(b, mint(RSA1, "nobody")) == (401, "unknown kid: no key of the JWKS has it")
    # Several keys and no kid: refused, no guessing.
    assert refusal(b, mint(RSA1)) == \
        (401, "the token has no kid and the JWKS holds several keys")
    assert refusal(b, mint(EC1), header=True) == \
        (401, "the token has no kid and the JWKS holds several keys")
    assert "upgrade refused with 401: unknown kid" in b.log_text()


def test_single_key_without_kid(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(EC1))  # no kid in the file either
    b = make_broker(["--jwt-keys", str(jwks_path)])
    assert status(b, mint(EC1)) == 101
    assert refusal(b, mint(EC1, "e1")) == (401, "unknown kid: no key of the JWKS has it")
    assert refusal(b, mint(EC2)) == (401, "bad signature")
    assert refusal(b, mint(RSA1)) == (401, "alg RS256 does not fit the key: it is an EC key")


# ---------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------

def _attacks():
    """Tokens that must get 401, with the reason the broker gives."""
    good = claims(sub=[">"], pub=[">"])
    h, p, s = mint(RSA1, "r1", sub=[">"]).split(".")
    es_h, es_p, es_s = mint(EC1, "e1").split(".")
    der = EC1.sign((es_h + "." + es_p).encode(), ec.ECDSA(hashes.SHA256()))
    other = b64(json.dumps(dict(good, sub="root")).encode())
    return {
        # HS256 "signed" with the public key's bytes, which anyone can download.
        "confusion, PEM, kid": (hs256(public_pem(RSA1), {"alg": "HS256", "kid": "r1"}, good),
                                "HS256"),
        "confusion, PEM, no kid": (hs256(public_pem(RSA1), {"alg": "HS256", "typ": "JWT"},
                                         good), "HS256"),
        "confusion, DER": (hs256(public_der(RSA1), {"alg": "HS256", "kid": "r1"}, good),
                           "HS256"),
        "confusion, EC PEM": (hs256(public_pem(EC1), {"alg": "HS256", "kid": "e1"}, good),
                              "HS256"),
        # Unsigned: an empty third segment is refused before the header is read.
        "alg none": (jwt.encode(good, None, algorithm="none"),
                     "the token is not three non-empty base64url segments"),
        "alg none with kid": (jwt.encode(good, None, algorithm="none", headers={"kid": "r1"}),
                              "the token is not three non-empty base64url segments"),
        "alg none, RS256 signature kept": (b64(b'{"alg":"none","kid":"r1"}') + "." + p + "." + s,
                                           "alg none is refused"),
        "RS384": (jwt.encode(good, RSA1, algorithm="RS384", headers={"kid": "r1"}),
                  "the algorithm must be HS256, RS256 or ES256"),
        "PS256": (jwt.encode(good, RSA1, algorithm="PS256", headers={"kid": "r1"}),
                  "the algorithm must be HS256, RS256 or ES256"),
        "unknown kid": (mint(RSA1, "r9"), "unknown kid"),
        "tampered payload": (h + "." + other + "." + s, "bad signature"),
        "tampered signature": (h + "." + p + "." + ("B" if s[0] == "A" else "A") + s[1:],
                               "bad signature"),
        "ES256 signature in DER": (es_h + "." + es_p + "." + b64(der),
                                   "not an ES256 signature (r||s, 64 bytes)"),
        "ES256 signature cut": (es_h + "." + es_p + "." + es_s[:-2], "not an ES256 signature"),
        "expired": (mint(RSA1, "r1", ttl=-10), "the token has expired"),
        "crit": (jwt.encode(good, RSA1, algorithm="RS256", headers={"kid": "r1",
                                                                    "crit": ["exp"]}),
                 "crit header not supported"),
    }


ATTACKS = sorted(_attacks())


@pytest.fixture(scope="module")
def keys_broker(tmp_path_factory, logdir):
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    write_jwks(path, jwk(RSA1, "r1"), jwk(EC1, "e1"))
    b = Broker(logdir, args=["--jwt-keys", str(path)], name="jwks").start()
    yield b
    assert b.stop() == 0, b.log_tail()
    assert not b.sanitizer_errors(), b.log_tail()


@pytest.mark.parametrize("case", ATTACKS)
def test_refused_401(keys_broker, case):
    tok, why = _attacks()[case]
    st, body = refusal(keys_broker, tok)
    assert st == 401 and why in body, (st, body)
    assert refusal(keys_broker, tok, header=True)[0] == 401


def test_confusion_refused_with_a_secret_too(make_broker, jwks_path):
    """With --jwt-secret as well, HS256 checks the secret: the public key's bytes fail."""
    write_jwks(jwks_path, jwk(RSA1, "r1"), jwk(EC1, "e1"))
    b = make_broker(["--jwt-keys", str(jwks_path), "--jwt-secret", SECRET])
    good = claims(sub=[">"])
    for key in (public_pem(RSA1), public_der(RSA1), public_pem(EC1)):
        for header in ({"alg": "HS256", "kid": "r1"}, {"alg": "HS256"}):
            assert refusal(b, hs256(key, header, good)) == (401, "bad signature")
    assert status(b, hs256(SECRET.encode(), {"alg": "HS256", "typ": "JWT"}, good)) == 101


def test_jwks_with_secret_both_work(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(RSA1, "r1"), jwk(EC1, "e1"))
    b = make_broker(["--jwt-secret", SECRET, "--jwt-keys", str(jwks_path)])
    assert "authentication: HS256, RS256, ES256 tokens required" in b.log_text()
    hs = jwt.encode(claims(sub=["a.>"], pub=["a.>"], user="hs"), SECRET, algorithm="HS256")
    rs = mint(RSA1, "r1", sub=["a.>"], pub=["a.>"], user="rs")
    es = mint(EC1, "e1", sub=["a.>"], pub=["a.>"], user="es")

    async def go():
        cs = [await connect(with_token(b, t)) for t in (hs, rs, es)]
        for c in cs:
            await c.sub("a.>")
        await cs[0].pub("a.x", 1)
        for c in cs:
            assert (await c.recv())["data"] == 1
        for c in cs:
            await c.close()
    run(go())
    assert refusal(b, jwt.encode(claims(), "wrong-secret", algorithm="HS256")) == \
        (401, "bad signature")
    assert refusal(b, mint(RSA2, "r1")) == (401, "bad signature")


def test_hs256_refused_without_a_secret(keys_broker):
    tok = jwt.encode(claims(), SECRET, algorithm="HS256")
    assert refusal(keys_broker, tok) == \
        (401, "HS256 tokens are not accepted: no HS256 secret is configured")


# ---------------------------------------------------------------------------------------
# Reload on SIGHUP
# ---------------------------------------------------------------------------------------

def test_rotation_by_sighup(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(RSA1, "k1"))
    b = make_broker(["--jwt-keys", str(jwks_path)])
    old = mint(RSA1, "k1", sub=["room.>"], pub=["room.*"])
    new = mint(RSA2, "k2", user="bob", sub=["room.>"], pub=["room.*"])
    assert refusal(b, new) == (401, "unknown kid: no key of the JWKS has it")

    async def go():
        kept = await connect(with_token(b, old))
        await kept.sub("room.>")
        # The provider rotates: k2 replaces k1.
        write_jwks(jwks_path, jwk(RSA2, "k2"), jwk(EC1, "e1"))
        sighup(b, 1)
        assert 'token keys reloaded: 2 JWKS keys: kid "k2" RSA 2048 bits, kid "e1" EC P-256' \
            in b.log_text()
        # New handshakes verify with the new keys at once: the old token (cached before) too.
        assert await connect_status(with_token(b, old)) == 401
        assert await connect_status(with_token(b, mint(EC1, "e1"))) == 101
        fresh = await connect(with_token(b, new))
        await fresh.sub("room.>")
        # The connection made with the old key stays, with its grant.
        await fresh.pub("room.a", "from bob")
        assert (await kept.recv())["data"] == "from bob"
        assert (await fresh.recv())["data"] == "from bob"
        await kept.pub("room.b", "from alice")
        assert (await fresh.recv())["data"] == "from alice"
        assert (await kept.recv())["data"] == "from alice"
        r = await kept.request({"op": "pub", "topic": "other", "data": 1})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        await kept.close()
        await fresh.close()
    run(go())
    assert refusal(b, old) == (401, "unknown kid: no key of the JWKS has it")


def test_failed_reload_keeps_the_keys(make_broker, jwks_path):
    write_jwks(jwks_path, jwk(RSA1, "k1"))
    b = make_broker(["--jwt-keys", str(jwks_path)])
    tok = mint(RSA1, "k1")
    assert status(b, tok) == 101
    failures = [
        # A private key (a mistake worth refusing loudly).
        (lambda: write_jwks(jwks_path, dict(jwk(RSA2, "k2"), d="AQAB")),
         'keys[0] (kid "k2"): d: private key material: a JWKS file must hold public keys only'),
        (lambda: jwks_path.write_text('{"keys": ['), "not well-formed JSON"),
        (lambda: write_jwks(jwks_path), "no keys"),
        (lambda: write_jwks(jwks_path, jwk(RSA1, "k1"), jwk(RSA2, "k1")), "duplicate kid"),
        (lambda: write_jwks(jwks_path, {"kty": "OKP", "crv": "Ed25519", "x": "AA"}),
         "no usable key (1 skipped)"),
        (lambda: jwks_path.unlink(), "No such file or directory"),
    ]
    for n, (damage, why) in enumerate(failures, 1):
        damage()
        sighup(b, n)
        wait_log(b, "token keys not reloaded, the previous ones stay", n)
        last = [line for line in b.log_text().splitlines() if "received SIGHUP" in line][-1]
        assert "ERROR" in last and why in last, (why, last)
        # The previous keys still verify, the broker still runs.
        assert status(b, tok) == 101, why
    # A good file again: reloaded.
    write_jwks(jwks_path, jwk(RSA2, "k2"))
    sighup(b, len(failures) + 1)
    assert 'token keys reloaded: 1 JWKS key: kid "k2" RSA 2048 bits' in b.log_text()
    assert status(b, tok) == 401
    assert status(b, mint(RSA2, "k2")) == 101


def test_secret_file_reloaded_on_sighup(make_broker, tmp_path, jwks_path):
    secret = tmp_path / "secret"
    secret.write_text("first-secret-0123456789abcdef0123\n")
    write_jwks(jwks_path, jwk(EC1, "e1"))
    b = make_broker(["--jwt-secret-file", str(secret), "--jwt-keys", str(jwks_path)])
    first = jwt.encode(claims(), "first-secret-0123456789abcdef0123", algorithm="HS256")
    second = jwt.encode(claims(), "second-secret-0123456789abcdef012", algorithm="HS256")
    assert status(b, first) == 101
    assert status(b, second) == 401
    secret.write_text("second-secret-0123456789abcdef012\n")
    sighup(b, 1)
    wait_log(b, "token keys reloaded: HS256 secret; 1 JWKS key")
    assert status(b, second) == 101
    assert status(b, first) == 401
    assert status(b, mint(EC1, "e1")) == 101
    # An unreadable secret file: both the secret and the keys stay.
    secret.unlink()
    sighup(b, 2)
    wait_log(b, "token keys not reloaded, the previous ones stay: secret file '")
    assert status(b, second) == 101
    assert status(b, mint(EC1, "e1")) == 101


def test_sighup_without_files_is_harmless(make_broker):
    open_b = make_broker()
    sighup(open_b, 1)
    wait_log(open_b, "received SIGHUP: no authentication configured, nothing to reload")
    hs_b = make_broker(["--jwt-secret", SECRET])
    tok = jwt.encode(claims(), SECRET, algorithm="HS256")
    sighup(hs_b, 1)
    wait_log(hs_b, "received SIGHUP: no --jwt-secret-file nor --jwt-keys to read again")
    assert status(hs_b, tok) == 101


# ---------------------------------------------------------------------------------------
# Startup
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,why", [
    (None, "No such file or directory"),
    ('{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}]}', "private key material"),
    ('{"keys":[]}', "no keys"),
    ('{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}', "x and y must be 32 bytes"),
    ("not json", "not well-formed JSON"),
])
def test_bad_jwks_at_start_fails(logdir, jwks_path, content, why):
    if content is not None:
        jwks_path.write_text(content)
    b = Broker(logdir, args=["--jwt-keys", str(jwks_path)], name="badjwks")
    with pytest.raises(BrokerError):
        b.start(attempts=1)
    assert b.returncode not in (None, 0)
    line = [x for x in b.log_text().splitlines() if "--jwt-keys: JWKS '" in x]
    assert line and "ERROR" in line[0] and why in line[0], b.log_tail()
    assert not b.sanitizer_errors(), b.log_tail()


def test_skipped_keys_are_logged(make_broker, jwks_path):
    write_jwks(jwks_path,
               {"kty": "OKP", "kid": "ed", "crv": "Ed25519",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
               jwk(RSA2, "enc", use="enc", alg="RSA-OAEP"),
               jwk(RSA1, "r1"))
    b = make_broker(["--jwt-keys", str(jwks_path)])
    log = b.log_text()
    assert 'keys[0] (kid "ed") skipped: kty "OKP" (only RSA and EC keys are used)' in log
    assert 'keys[1] (kid "enc") skipped: use is not "sig"' in log
    assert 'token keys: 1 JWKS key: kid "r1" RSA 2048 bits' in log
    assert status(b, mint(RSA1, "r1")) == 101
    assert refusal(b, mint(RSA2, "enc")) == (401, "unknown kid: no key of the JWKS has it")


def test_refresh_with_provider_tokens_across_a_rotation(make_broker, jwks_path):
    """A connection made with an RS256 token refreshes with an ES256 one of the same user
    signed by a key added by SIGHUP; another user's is forbidden, one of a key the reload
    removed is refused, and each time the connection keeps its grant."""
    write_jwks(jwks_path, jwk(RSA1, "k1"))
    b = make_broker(["--jwt-keys", str(jwks_path)])

    async def go():
        c = await connect(with_token(b, mint(RSA1, "k1", sub=["room.>"], pub=["room.a"])))
        write_jwks(jwks_path, jwk(EC1, "e1"))
        sighup(b, 1)
        # The old key is gone: a new token signed by it is refused, the connection stays.
        r = await c.ask({"op": "refresh", "id": 1,
                         "token": mint(RSA1, "k1", sub=["room.>"], pub=["room.b"])})
        assert r["op"] == "err" and r["code"] == "bad_request" and r["id"] == 1, r
        assert "token refused" in r["msg"], r
        r = await c.ask({"op": "refresh", "id": 2,
                         "token": mint(EC1, "e1", user="mallory", sub=["room.>"])})
        assert r["op"] == "err" and r["code"] == "forbidden" and r["id"] == 2, r
        r = await c.ask({"op": "pub", "topic": "room.b", "data": 1, "id": 3})
        assert r["op"] == "err" and r["code"] == "forbidden", r   # still the first grant
        assert await c.ask({"op": "refresh", "id": 4, "token": mint(
            EC1, "e1", sub=["room.>"], pub=["room.b"])}) == {"op": "ack", "id": 4}
        # The new grant governs: room.b may be published now, room.a no more.
        assert await c.ask({"op": "pub", "topic": "room.b", "data": 1, "id": 5}) == \
            {"op": "ack", "id": 5}
        r = await c.ask({"op": "pub", "topic": "room.a", "data": 1, "id": 6})
        assert r["op"] == "err" and r["code"] == "forbidden", r
        await c.close()
    run(go())
