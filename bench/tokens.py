#!/usr/bin/env python3
"""Broker CPU per WebSocket handshake with a fresh token (verified, not cached): HS256 vs
RS256 (2048 bits) vs ES256 (P-256) from a JWKS file, N (500) distinct tokens each, then
HS256 again (the spread between the two HS256 rounds is the noise), one broker,
sequential handshakes from this process. Broker CPU from /proc/PID/stat (10 ms ticks:
use N >= 2000 for a figure). Needs python3-jwt and python3-cryptography.

    BUILD=build/h-bench N=3000 bench/tokens.py
"""
import base64
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("GALE_BROKER", os.path.join(ROOT, os.environ.get("BUILD", "build"),
                                                  "gale-broker"))
import galetest as g
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
def b64(i, n): return base64.urlsafe_b64encode(i.to_bytes(n, 'big')).rstrip(b'=').decode()
rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ek = ec.generate_private_key(ec.SECP256R1())
rn = rk.public_key().public_numbers(); en = ek.public_key().public_numbers()
jwks = {"keys": [{"kty": "RSA", "kid": "r", "n": b64(rn.n, 256), "e": b64(rn.e, 3)},
                 {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(en.x, 32), "y": b64(en.y, 32)}]}
TMP = tempfile.mkdtemp(prefix="gale-tokens-")
JWKS = os.path.join(TMP, "jwks.json")
with open(JWKS, "w") as f:
    json.dump(jwks, f)
SECRET = "bench-secret-0123456789abcdef0123"
N = int(os.environ.get("N", "500"))
def tokens(kind):
    out = []
    for i in range(N):
        c = {"sub": "u%d" % i, "exp": int(time.time()) + 600, "gale": {"sub": ["a.>"]}}
        if kind == "HS256": out.append(jwt.encode(c, SECRET, algorithm="HS256"))
        if kind == "RS256": out.append(jwt.encode(c, rk, algorithm="RS256", headers={"kid": "r"}))
        if kind == "ES256": out.append(jwt.encode(c, ek, algorithm="ES256", headers={"kid": "e"}))
    return out
def cpu(pid):
    f = open('/proc/%d/stat' % pid).read().split(')')[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
b = g.Broker(TMP, args=['--log-level', 'warn', '--jwt-secret', SECRET, '--jwt-keys', JWKS])
b.start()
try:
    res = {}
    for kind in ("HS256", "RS256", "ES256", "HS256"):
        toks = tokens(kind)
        c0 = cpu(b.pid); t0 = time.time()
        for t in toks:
            w = g.RawWS(b.port, path="/ws?token=" + t); w.recv_json(); w.close()
        res.setdefault(kind, []).append(((cpu(b.pid) - c0) / N * 1e6, N / (time.time() - t0)))
    for k, v in res.items():
        print(k, " ".join("%.0f us broker CPU/handshake (%.0f handshakes/s sequential)" % x for x in v))
finally:
    b.stop()
