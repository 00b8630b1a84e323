#!/usr/bin/python3
"""Prints the RS256/ES256 vectors of tests/unit/test_auth_jwks.c (run once; keys are random).

Debian 12's python3-jwt 2.6 signs, python3-cryptography 38 makes the keys.
"""
import base64, hashlib, hmac, json, sys
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

rsa_a = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_b = rsa.generate_private_key(public_exponent=65537, key_size=2048)
rsa_small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
ec_c = ec.generate_private_key(ec.SECP256R1())
ec_d = ec.generate_private_key(ec.SECP256R1())

def jwk(k): return json.loads((RSAAlgorithm if isinstance(k, rsa.RSAPrivateKey) else ECAlgorithm).to_jwk(k.public_key()))

CLAIMS = {"sub": "alice", "exp": 2000000000, "gale": {"sub": ["user.{sub}.>"], "pub": ["chat.>"]}}

def tok(key, alg, kid=None, claims=CLAIMS):
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)

def hs_raw(secret, header, claims=CLAIMS):
    h = b64(json.dumps(header, separators=(",", ":")).encode())
    p = b64(json.dumps(claims, separators=(",", ":")).encode())
    return h + "." + p + "." + b64(hmac.new(secret, (h + "." + p).encode(), hashlib.sha256).digest())

def c_str(name, s, comment):
    out = "/* %s */\nstatic const char %s[] =\n" % (comment, name)
    parts = [s[i:i + 90] for i in range(0, len(s), 90)]
    out += "\n".join('    "%s"' % p for p in parts) + ";\n"
    return out

out = []
for name, k in (("RSA_A", rsa_a), ("RSA_B", rsa_b), ("RSA_1024", rsa_small)):
    j = jwk(k)
    out.append(c_str(name + "_N", j["n"], "%s: n (%d bits)" % (name, k.key_size)))
for name, k in (("EC_C", ec_c), ("EC_D", ec_d)):
    j = jwk(k)
    out.append(c_str(name + "_X", j["x"], name + ": x"))
    out.append(c_str(name + "_Y", j["y"], name + ": y"))

pem = rsa_a.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
der = rsa_a.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
ecpem = ec_c.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

# ES256 signed by C, signature as DER instead of r||s.
h = b64(json.dumps({"alg": "ES256", "kid": "ec-c"}, separators=(",", ":")).encode())
p = b64(json.dumps(CLAIMS, separators=(",", ":")).encode())
es_der = h + "." + p + "." + b64(ec_c.sign((h + "." + p).encode(), ec.ECDSA(hashes.SHA256())))

def raw_rs(key, header):
    """RS256 over a header written as given (escapes and all)."""
    h = b64(header.encode())
    p = b64(json.dumps(CLAIMS, separators=(",", ":")).encode())
    sig = key.sign((h + "." + p).encode(), padding.PKCS1v15(), hashes.SHA256())
    return h + "." + p + "." + b64(sig)

toks = [
    ("T_RS_A", tok(rsa_a, "RS256", "rsa-a"), 'RS256 {"kid":"rsa-a"} by RSA_A'),
    ("T_RS_B", tok(rsa_b, "RS256", "rsa-b"), 'RS256 {"kid":"rsa-b"} by RSA_B'),
    ("T_RS_NOKID", tok(rsa_a, "RS256"), "RS256, no kid, by RSA_A"),
    ("T_RS_B_AS_A", tok(rsa_b, "RS256", "rsa-a"), 'RS256 {"kid":"rsa-a"} but by RSA_B'),
    ("T_RS_UNKNOWN", tok(rsa_a, "RS256", "nope"), 'RS256 {"kid":"nope"} by RSA_A'),
    ("T_RS_KID_EC", tok(rsa_a, "RS256", "ec-c"), 'RS256 {"kid":"ec-c"} by RSA_A'),
    ("T_RS_KID_ESC", raw_rs(rsa_a, '{"alg":"RS256","kid":"rsa-\\u0061"}'),
     'RS256 {"alg":"RS256","kid":"rsa-\\u0061"} (the kid escaped) by RSA_A'),
    ("T_RS_JKU", raw_rs(rsa_a, '{"alg":"RS256","kid":"rsa-a","jku":"http://evil/","jwk":{"kty":"oct","k":"AA"},"x5u":"x"}'),
     'RS256 {"alg":"RS256","kid":"rsa-a","jku":"http://evil/","jwk":{"kty":"oct","k":"AA"},"x5u":"x"} by RSA_A'),
    ("T_ES_C", tok(ec_c, "ES256", "ec-c"), 'ES256 {"kid":"ec-c"} by EC_C'),
    ("T_ES_D", tok(ec_d, "ES256", "ec-d"), 'ES256 {"kid":"ec-d"} by EC_D'),
    ("T_ES_NOKID", tok(ec_c, "ES256"), "ES256, no kid, by EC_C"),
    ("T_ES_D_AS_C", tok(ec_d, "ES256", "ec-c"), 'ES256 {"kid":"ec-c"} but by EC_D'),
    ("T_ES_KID_RSA", tok(ec_c, "ES256", "rsa-a"), 'ES256 {"kid":"rsa-a"} by EC_C'),
    ("T_ES_DER", es_der, 'ES256 {"kid":"ec-c"} by EC_C, the signature DER-encoded (not r||s)'),
    ("T_HS_PEM", hs_raw(pem, {"alg": "HS256", "kid": "rsa-a"}), 'HS256 {"kid":"rsa-a"}, the MAC keyed with RSA_A\'s public key PEM'),
    ("T_HS_PEM_NOKID", hs_raw(pem, {"alg": "HS256"}), "HS256, the MAC keyed with RSA_A's public key PEM"),
    ("T_HS_DER", hs_raw(der, {"alg": "HS256", "kid": "rsa-a"}), 'HS256 {"kid":"rsa-a"}, the MAC keyed with RSA_A\'s public key DER'),
    ("T_HS_ECPEM", hs_raw(ecpem, {"alg": "HS256", "kid": "ec-c"}), 'HS256 {"kid":"ec-c"}, the MAC keyed with EC_C\'s public key PEM'),
    ("T_HS_SECRET", hs_raw(b"unit-test-secret-0123456789abcdef", {"alg": "HS256", "typ": "JWT"}), "HS256 with the unit tests' secret KEY"),
]
for name, t, c in toks:
    out.append(c_str(name, t, c))
print("\n".join(out))
