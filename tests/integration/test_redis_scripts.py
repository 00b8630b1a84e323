"""The Lua scripts of clustering with history (broker/cluster_wire.c: CLUSTER_SCRIPT_PUB,
CLUSTER_SCRIPT_READ) and with presence (CLUSTER_SCRIPT_PRESENCE_JOIN, _LEAVE, _SYNC, _REFRESH,
_READ, _TAKEOVER), run with EVAL on a real redis-server, without a broker.

The scripts are read from the C source (the string literals of their definitions, with the
macros they are composed of expanded), so what runs here is what the broker loads. One redis-server (Debian's, free loopback port, no
persistence, --stream-node-max-entries 10 so that MAXLEN ~ trims at a small scale) serves
the module; every test starts from FLUSHALL. A tiny RESP client (python3-redis is not
needed) talks to it; a second connection SUBSCRIBEs to see what the scripts PUBLISH.

Checked: the first publish creates the epoch (the candidate ep) at off 1 with a stream entry
"1-0" holding fields e and t; the published payload is the envelope with ep (str8) and off
(uint64, big-endian) appended, the same bytes as the entry's e; consecutive offsets; MAXLEN ~
keeps at least SIZE (and the newest) entries; a duplicate mid answers {1,'',orig_off} and
publishes nothing; without history (SIZE 0) the envelope goes out unchanged, {0,'',0} and a
duplicate {1,'',0}; TTL puts a PEXPIRE on both keys; a lost hash starts a new epoch over a
stale stream; the read script (range: entries after max(N, off - MAX); last: the newest N,
newest first; a missing hash: a new epoch at off 0, {ep,0,{}}); FLUSHALL starts a new epoch.

Presence (the events decoded by a small strict MessagePack reader and compared byte for byte
with the canonical encoding cluster_presence_decode reads): JOIN publishes one join per new
member with HLEN after it and sets pz, pi and 2 x expiry on the three keys, a repeated JOIN
publishes nothing; LEAVE with and without last; SYNC removes only the instance's unlisted
members (and, without pairs, all of them); REFRESH keeps an instance alive and sweeps one
whose pz score has passed, as READ does, one leave per member; READ's cap and exact count;
TAKEOVER removes the old instance's members across topics with leaves, under the prefix
given, and replaces the node key; instances whose conns look alike ("ab" vs "abc-1", pattern
characters) are never touched by another's sweep, SYNC or TAKEOVER; keys really expire.
"""
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from galetest import HOST, SOURCE_DIR, free_port, stop_process

pytestmark = [pytest.mark.gale_only,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is not installed (scripts/deps test)")]

PREFIX = b"gale:"
NODE_MAX_ENTRIES = 10  # redis-server --stream-node-max-entries
WINDOW_MS = 120000     # the dedup window the broker passes (--dedup-window 120)
EP1 = b"0123456789abcdef"  # epoch candidates, as the broker makes them (%016x)
EP2 = b"fedcba9876543210"
EP3 = b"00000000deadbeef"


# ---------------------------------------------------------------------------------------
# The scripts, from the C source
# ---------------------------------------------------------------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0",
            "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def _c_string_literals(src, name):
    """The concatenated string literals of `const char NAME[] = "..." MACRO "...";` in src,
    with each MACRO (an identifier) replaced by the literals of its `#define MACRO ...`."""
    decl = "const char %s[] =" % name
    return _literals(src, src, src.index(decl) + len(decl), name)


def _macro(src, name):
    """The literals of `#define NAME "..." \\ ...` in src (up to its first unescaped newline)."""
    m = re.search(r"^#define %s[ \t\\]" % re.escape(name), src, re.M)
    assert m, "no #define %s" % name
    end = m.end() - 1
    while True:
        end = src.index("\n", end + 1)
        if src[end - 1] != "\\":
            break
    body = src[m.end() - 1:end].replace("\\\n", " ") + ";"
    return _literals(src, body, 0, name)


def _literals(src, text, i, name):
    """The literals of text from i up to the ';' ending them; identifiers are macros of src."""
    out = []
    while True:
        while text[i].isspace() or text[i] == "\\":
            i += 1
        if text.startswith("/*", i):
            i = text.index("*/", i) + 2
            continue
        if text[i] == ";":
            break
        if text[i] == "_" or text[i].isalpha():
            j = i
            while text[j] == "_" or text[j].isalnum():
                j += 1
            out.append(_macro(src, text[i:j]).decode("latin-1"))
            i = j
            continue
        assert text[i] == '"', "unexpected %r in the definition of %s" % (text[i:i + 20], name)
        i += 1
        while text[i] != '"':
            c = text[i]
            assert c != "\n", "newline inside a string literal of %s" % name
            if c == "\\":
                e = text[i + 1]
                if e == "x":
                    j = i + 2
                    while text[j] in "0123456789abcdefABCDEF":
                        j += 1
                    out.append(chr(int(text[i + 2:j], 16)))
                    i = j
                    continue
                if e in "01234567" and text[i + 2] in "01234567":
                    j = i + 1
                    while j < i + 4 and text[j] in "01234567":
                        j += 1
                    out.append(chr(int(text[i + 1:j], 8)))
                    i = j
                    continue
                out.append(_ESCAPES[e])
                i += 2
                continue
            out.append(c)
            i += 1
        i += 1
    return "".join(out).encode("latin-1")


def _source():
    with open(os.path.join(SOURCE_DIR, "broker", "cluster_wire.c"), encoding="utf-8") as f:
        return f.read()


def _scripts():
    src = _source()
    return (_c_string_literals(src, "CLUSTER_SCRIPT_PUB"),
            _c_string_literals(src, "CLUSTER_SCRIPT_READ"))


SCRIPT_PUB, SCRIPT_READ = _scripts()
PRESENCE_SCRIPTS = ("JOIN", "LEAVE", "SYNC", "REFRESH", "READ", "TAKEOVER")
P_SCRIPT = {k: _c_string_literals(_source(), "CLUSTER_SCRIPT_PRESENCE_" + k)
            for k in PRESENCE_SCRIPTS}


# ---------------------------------------------------------------------------------------
# A raw RESP client and redis-server
# ---------------------------------------------------------------------------------------

class RedisError(Exception):
    pass


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One RESP connection: blocking, every read bounded by `timeout`."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.f = self.sock.makefile("rb")

    def close(self):
        self.f.close()
        self.sock.close()

    def read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RedisError("bad RESP reply %r" % line)

    def cmd(self, *args):
        self.sock.sendall(_encode(args))
        return self.read()


class Subscriber:
    """A connection SUBSCRIBEd to channels; next() returns the payload of the next message."""

    def __init__(self, port, *channels):
        self.c = Conn(port)
        self.c.sock.sendall(_encode(("SUBSCRIBE",) + channels))
        for ch in channels:
            kind, name, _n = self.c.read()
            assert kind == b"subscribe" and name == ch

    def next(self):
        kind, _channel, payload = self.c.read()
        assert kind == b"message"
        return payload

    def fence(self, r, channel):
        """Publishes a marker on channel and reads up to it: the payloads published before
        it (PUBLISH order is kept per channel and connection)."""
        marker = b"fence-%d" % time.monotonic_ns()
        assert r.cmd("PUBLISH", channel, marker) == 1
        got = []
        while True:
            p = self.next()
            if p == marker:
                return got
            got.append(p)

    def close(self):
        self.c.close()


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    port = free_port()
    logpath = str(tmp_path_factory.mktemp("redis-scripts") / "redis.log")
    with open(logpath, "ab") as log:
        proc = subprocess.Popen(
            ["redis-server", "--save", "", "--appendonly", "no", "--port", str(port), "--bind",
             HOST, "--stream-node-max-entries", str(NODE_MAX_ENTRIES)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, "redis-server exited: see %s" % logpath
            try:
                c = Conn(port)
                try:
                    if c.cmd("PING") == b"PONG":
                        break
                finally:
                    c.close()
            except (OSError, ConnectionError, RedisError):
                pass
            assert time.monotonic() < deadline, "redis-server not ready: see %s" % logpath
            time.sleep(0.02)
        yield port
    finally:
        stop_process(proc)


@pytest.fixture
def r(redis_port):
    c = Conn(redis_port)
    assert c.cmd("FLUSHALL") == b"OK"
    yield c
    c.close()


# ---------------------------------------------------------------------------------------
# Envelopes, keys, script calls
# ---------------------------------------------------------------------------------------

def _str(b):
    return (bytes([0xa0 | len(b)]) if len(b) < 32 else bytes([0xd9, len(b)])) + b


def _uint(v):
    return bytes([v]) if v < 128 else b"\xcf" + v.to_bytes(8, "big")


def envelope(seq, topic, data=b'{"a":1}', tail=9, node=b"node-1", instance=0x1122334455667788,
             enc=0):
    """What the broker writes (cluster_envelope_encode): tail 9 is the header of 9 and the
    first 7 elements only; tail 8 ends in true."""
    head = {0: 0x97, 8: 0x98, 9: 0x99}[tail]
    out = (bytes([head, 1]) + _str(node) + _uint(instance) + _uint(seq) + _str(topic) +
           bytes([enc]) + b"\xc6" + len(data).to_bytes(4, "big") + data)
    return out + (b"\xc3" if tail == 8 else b"")


def with_position(env, ep, off):
    """The envelope as the publish script completes it: ep as str8, off as uint64."""
    return env + bytes([0xd9, len(ep)]) + ep + b"\xcf" + off.to_bytes(8, "big")


def hkey(topic):
    return PREFIX + b"h:" + topic


def skey(topic):
    return PREFIX + b"s:" + topic


def mkey(topic, mid):
    return PREFIX + b"m:" + topic + b" " + mid


def channel(topic):
    return PREFIX + topic


def pub(r, topic, env, size, ttl=0, mid=None, ep=EP1, window=WINDOW_MS):
    """The publish script as the broker calls it; returns [dup, ep, off]."""
    return r.cmd("EVAL", SCRIPT_PUB, 3, hkey(topic), skey(topic), mkey(topic, mid) if mid else b"",
                 channel(topic), env, size, ttl, window, ep)


def read(r, topic, mode, n, mx=1000, ep=EP1, ttl=0):
    """The read script as the broker calls it; returns [ep, off, entries]."""
    return r.cmd("EVAL", SCRIPT_READ, 2, hkey(topic), skey(topic), mode, n, mx, ep, ttl)


def entry_ids(entries):
    return [e[0] for e in entries]


def fields(entry):
    f = entry[1]
    return dict(zip(f[0::2], f[1::2]))


def redis_ms(r):
    sec, usec = r.cmd("TIME")
    return int(sec) * 1000 + int(usec) // 1000


# ---------------------------------------------------------------------------------------
# Tests: the publish script
# ---------------------------------------------------------------------------------------

def test_scripts_read_from_the_source():
    """What the broker loads (SCRIPT LOAD of these bytes) is what these tests run."""
    assert SCRIPT_PUB.startswith(b"local midk = KEYS[3]\n")
    assert SCRIPT_PUB.endswith(b"return {0, ep, off}\n")
    assert b"string.char(n % 256); n = math.floor(n / 256)" in SCRIPT_PUB  # a ';' inside
    assert SCRIPT_READ.startswith(b"local ep = redis.call('HGET', KEYS[1], 'ep')\n")
    assert SCRIPT_READ.endswith(b"return {ep, off, {}}\n")


def test_script_load_sha_is_sha1(r):
    """The broker calls EVALSHA with the SHA-1 it computes itself (sha1_hex)."""
    for script in (SCRIPT_PUB, SCRIPT_READ):
        assert r.cmd("SCRIPT", "LOAD", script) == hashlib.sha1(script).hexdigest().encode()
    sha = hashlib.sha1(SCRIPT_PUB).hexdigest()
    t = b"sha.t"
    assert r.cmd("EVALSHA", sha, 3, hkey(t), skey(t), b"", channel(t), envelope(1, t), 5, 0,
                 WINDOW_MS, EP1) == [0, EP1, 1]


def test_first_publish_creates_the_epoch(r):
    t = b"chat.room-1"
    env = envelope(1, t)
    before = redis_ms(r)
    assert pub(r, t, env, 10, ep=EP1) == [0, EP1, 1]
    after = redis_ms(r)
    assert r.cmd("HGETALL", hkey(t)) == [b"ep", EP1, b"off", b"1"]
    entries = r.cmd("XRANGE", skey(t), "-", "+")
    assert entry_ids(entries) == [b"1-0"]
    f = entries[0][1]
    assert f[0::2] == [b"e", b"t"]  # exactly the fields e and t, in that order
    assert fields(entries[0])[b"e"] == with_position(env, EP1, 1)
    assert before <= int(fields(entries[0])[b"t"]) <= after
    # The epoch stays: another candidate is ignored, the offset goes on.
    assert pub(r, t, envelope(2, t), 10, ep=EP2) == [0, EP1, 2]
    assert r.cmd("HGET", hkey(t), "ep") == EP1
    # No mid given: no mid key.
    assert r.cmd("KEYS", PREFIX + b"m:*") == []
    # No TTL given: none on the keys.
    assert r.cmd("PTTL", hkey(t)) == -1 and r.cmd("PTTL", skey(t)) == -1


def test_published_payload_is_the_envelope_with_its_position(r, redis_port):
    t = b"chat.room-2"
    sub = Subscriber(redis_port, channel(t))
    try:
        env = envelope(7, t, data=b'{"text":"hi"}')
        assert pub(r, t, env, 10, ep=EP2) == [0, EP2, 1]
        payload = sub.next()
        # ... 0xd9 LEN EP 0xcf OFF(8 bytes, big-endian)
        assert payload[:len(env)] == env
        assert payload[len(env):len(env) + 2] == bytes([0xd9, 16])
        assert payload[len(env) + 2:len(env) + 18] == EP2
        assert payload[len(env) + 18:] == b"\xcf\x00\x00\x00\x00\x00\x00\x00\x01"
        assert len(payload) == len(env) + 2 + 16 + 9
        # The stored entry holds the same bytes.
        (entry,) = r.cmd("XRANGE", skey(t), "-", "+")
        assert fields(entry)[b"e"] == payload
        # A large offset: all 8 bytes big-endian, and the stream ID follows it.
        assert r.cmd("HSET", hkey(t), "off", 0x0102030405) == 0
        env2 = envelope(8, t)
        assert pub(r, t, env2, 10) == [0, EP2, 0x0102030406]
        payload = sub.next()
        assert payload == env2 + b"\xd9\x10" + EP2 + b"\xcf\x00\x00\x00\x01\x02\x03\x04\x06"
        assert entry_ids(r.cmd("XRANGE", skey(t), "-", "+")) == [b"1-0", b"4328719366-0"]
        assert sub.fence(r, channel(t)) == []
    finally:
        sub.close()


def test_consecutive_offsets(r, redis_port):
    t = b"seq.a"
    sub = Subscriber(redis_port, channel(t))
    try:
        envs = [envelope(i, t, data=b"%d" % i) for i in range(1, 31)]
        for i, env in enumerate(envs, 1):
            assert pub(r, t, env, 100) == [0, EP1, i]
        got = sub.fence(r, channel(t))
        assert got == [with_position(env, EP1, i) for i, env in enumerate(envs, 1)]
        entries = r.cmd("XRANGE", skey(t), "-", "+")
        assert entry_ids(entries) == [b"%d-0" % i for i in range(1, 31)]
        assert [fields(e)[b"e"] for e in entries] == got
        assert r.cmd("HGET", hkey(t), "off") == b"30"
        # Another topic has its own counter.
        assert pub(r, b"seq.b", envelope(31, b"seq.b"), 100, ep=EP2) == [0, EP2, 1]
    finally:
        sub.close()


@pytest.mark.parametrize("size", [1, 5, 23])
def test_maxlen_trims_but_keeps_size_entries(r, size):
    t = b"trim.t"
    total = 8 * NODE_MAX_ENTRIES + 3
    for i in range(1, total + 1):
        assert pub(r, t, envelope(i, t), size) == [0, EP1, i]
        xlen = r.cmd("XLEN", skey(t))
        # Never fewer than SIZE (or all of them), and never a whole node more than needed.
        assert min(i, size) <= xlen <= size + NODE_MAX_ENTRIES
    ids = entry_ids(r.cmd("XRANGE", skey(t), "-", "+"))
    assert len(ids) < total  # trimmed
    # What is kept is the newest, without a gap.
    assert ids == [b"%d-0" % k for k in range(total - len(ids) + 1, total + 1)]


def test_duplicate_mid_publishes_nothing(r, redis_port):
    t = b"mid.h"
    sub = Subscriber(redis_port, channel(t))
    try:
        assert pub(r, t, envelope(1, t), 10) == [0, EP1, 1]
        env = envelope(2, t)
        assert pub(r, t, env, 10, mid=b"order-17") == [0, EP1, 2]
        assert r.cmd("GET", mkey(t, b"order-17")) == b"2"
        assert 0 < r.cmd("PTTL", mkey(t, b"order-17")) <= WINDOW_MS
        assert sub.fence(r, channel(t)) == [with_position(envelope(1, t), EP1, 1),
                                            with_position(env, EP1, 2)]
        # The same mid again (another seq, other data): the original's offset, nothing done.
        assert pub(r, t, envelope(3, t, data=b"[2]"), 10, mid=b"order-17") == [1, b"", 2]
        assert sub.fence(r, channel(t)) == []
        assert r.cmd("HGET", hkey(t), "off") == b"2"
        assert entry_ids(r.cmd("XRANGE", skey(t), "-", "+")) == [b"1-0", b"2-0"]
        # Another mid, and the same mid on another topic, are new.
        assert pub(r, t, envelope(4, t), 10, mid=b"order-18") == [0, EP1, 3]
        assert pub(r, b"mid.other", envelope(5, b"mid.other"), 10, mid=b"order-17",
                   ep=EP2) == [0, EP2, 1]
        assert len(sub.fence(r, channel(t))) == 1
        # The window is the mid key's PX: once it passes, the mid is new again.
        assert pub(r, t, envelope(6, t), 10, mid=b"short", window=150) == [0, EP1, 4]
        assert pub(r, t, envelope(7, t), 10, mid=b"short", window=150) == [1, b"", 4]
        time.sleep(0.4)
        assert pub(r, t, envelope(8, t), 10, mid=b"short", window=150) == [0, EP1, 5]
    finally:
        sub.close()


def test_mid_without_history(r, redis_port):
    t = b"mid.plain"
    sub = Subscriber(redis_port, channel(t))
    try:
        env = envelope(1, t, tail=8)
        assert pub(r, t, env, 0, mid=b"m-1") == [0, b"", 0]
        assert sub.next() == env  # unchanged: no position appended
        assert r.cmd("GET", mkey(t, b"m-1")) == b"0"
        assert 0 < r.cmd("PTTL", mkey(t, b"m-1")) <= WINDOW_MS
        assert r.cmd("EXISTS", hkey(t), skey(t)) == 0
        # Its duplicate: nothing published, {1,'',0}.
        assert pub(r, t, envelope(2, t, tail=8), 0, mid=b"m-1") == [1, b"", 0]
        assert sub.fence(r, channel(t)) == []
        # Without a mid either: published unchanged, no key at all.
        env0 = envelope(3, t, tail=0)
        assert pub(r, t, env0, 0) == [0, b"", 0]
        assert sub.fence(r, channel(t)) == [env0]
        assert r.cmd("EXISTS", hkey(t), skey(t)) == 0
        assert r.cmd("DBSIZE") == 1  # the mid key m-1 alone
    finally:
        sub.close()


def test_ttl_expires_both_keys(r):
    t = b"ttl.t"
    assert pub(r, t, envelope(1, t), 10, ttl=60000) == [0, EP1, 1]
    for k in (hkey(t), skey(t)):
        assert 59000 < r.cmd("PTTL", k) <= 60000
    # Each publish sets it again.
    r.cmd("PEXPIRE", hkey(t), 1000)
    r.cmd("PEXPIRE", skey(t), 1000)
    assert pub(r, t, envelope(2, t), 10, ttl=60000) == [0, EP1, 2]
    for k in (hkey(t), skey(t)):
        assert 59000 < r.cmd("PTTL", k) <= 60000
    # They do expire: the topic then starts a new epoch.
    t2 = b"ttl.short"
    assert pub(r, t2, envelope(3, t2), 10, ttl=150) == [0, EP1, 1]
    time.sleep(0.4)
    assert r.cmd("EXISTS", hkey(t2), skey(t2)) == 0
    assert pub(r, t2, envelope(4, t2), 10, ttl=150, ep=EP2) == [0, EP2, 1]


def test_lost_hash_starts_a_new_epoch_over_a_stale_stream(r):
    """The hash gone but not the stream (one key evicted): the new epoch's "1-0" must not
    collide with the old entries (XADD refuses an ID below the last)."""
    t = b"stale.t"
    for i in range(1, 6):
        assert pub(r, t, envelope(i, t), 10, ep=EP1) == [0, EP1, i]
    assert r.cmd("DEL", hkey(t)) == 1
    env = envelope(6, t)
    assert pub(r, t, env, 10, ep=EP2) == [0, EP2, 1]
    entries = r.cmd("XRANGE", skey(t), "-", "+")
    assert entry_ids(entries) == [b"1-0"]
    assert fields(entries[0])[b"e"] == with_position(env, EP2, 1)


def test_flushall_starts_a_new_epoch(r, redis_port):
    t = b"flush.t"
    for i in range(1, 4):
        assert pub(r, t, envelope(i, t), 10, ep=EP1, mid=b"m%d" % i) == [0, EP1, i]
    assert r.cmd("FLUSHALL") == b"OK"
    sub = Subscriber(redis_port, channel(t))
    try:
        env = envelope(4, t)
        # The mids are forgotten too: m1 is new.
        assert pub(r, t, env, 10, ep=EP3, mid=b"m1") == [0, EP3, 1]
        assert sub.next() == with_position(env, EP3, 1)
        assert r.cmd("HGETALL", hkey(t)) == [b"ep", EP3, b"off", b"1"]
        assert entry_ids(r.cmd("XRANGE", skey(t), "-", "+")) == [b"1-0"]
    finally:
        sub.close()


# ---------------------------------------------------------------------------------------
# Tests: the read script
# ---------------------------------------------------------------------------------------

def _publish_n(r, t, n, size=1000, ep=EP1):
    envs = []
    for i in range(1, n + 1):
        env = envelope(i, t, data=b"%d" % i)
        assert pub(r, t, env, size, ep=ep) == [0, ep, i]
        envs.append(with_position(env, ep, i))
    return envs


def test_read_range(r):
    t = b"read.range"
    envs = _publish_n(r, t, 10)

    def rng(n, mx):
        ep, off, entries = read(r, t, "range", n, mx, ep=EP2)
        assert (ep, off) == (EP1, 10)  # the existing epoch, never the candidate
        for e in entries:
            k = int(e[0].split(b"-")[0])
            assert e[0] == b"%d-0" % k and fields(e)[b"e"] == envs[k - 1] and b"t" in fields(e)
        return [int(e[0].split(b"-")[0]) for e in entries]

    assert rng(0, 1000) == list(range(1, 11))
    assert rng(3, 1000) == list(range(4, 11))        # after N
    assert rng(3, 4) == list(range(7, 11))           # after off - MAX
    assert rng(6, 4) == list(range(7, 11))           # N = off - MAX
    assert rng(7, 4) == list(range(8, 11))           # N above off - MAX
    assert rng(9, 1000) == [10]
    assert rng(10, 1000) == []                       # up to date
    assert rng(25, 1000) == []                       # beyond off
    assert rng(0, 0) == []                           # MAX 0
    assert rng(0, 1) == [10]
    assert r.cmd("HGETALL", hkey(t)) == [b"ep", EP1, b"off", b"10"]


def test_read_range_after_trimming(r):
    """Entries the stream no longer has are simply absent: what is left after N."""
    t = b"read.trimmed"
    _publish_n(r, t, 5 * NODE_MAX_ENTRIES, size=3)
    first = int(r.cmd("XRANGE", skey(t), "-", "+", "COUNT", 1)[0][0].split(b"-")[0])
    assert first > 1
    _ep, off, entries = read(r, t, "range", 0, 1000)
    assert off == 5 * NODE_MAX_ENTRIES
    assert entry_ids(entries) == [b"%d-0" % k for k in range(first, off + 1)]


def test_read_last(r):
    t = b"read.last"
    envs = _publish_n(r, t, 10)
    ep, off, entries = read(r, t, "last", 3)
    assert (ep, off) == (EP1, 10)
    assert entry_ids(entries) == [b"10-0", b"9-0", b"8-0"]  # newest first
    assert [fields(e)[b"e"] for e in entries] == [envs[9], envs[8], envs[7]]
    assert entry_ids(read(r, t, "last", 1)[2]) == [b"10-0"]
    assert entry_ids(read(r, t, "last", 100)[2]) == [b"%d-0" % k for k in range(10, 0, -1)]
    assert read(r, t, "last", 0) == [EP1, 10, []]
    # An unknown mode reads nothing (and changes nothing).
    assert read(r, t, "first", 3) == [EP1, 10, []]


def test_read_missing_hash_creates_the_epoch(r):
    t = b"read.new"
    for mode, n in (("range", 0), ("last", 5)):
        assert r.cmd("FLUSHALL") == b"OK"
        assert read(r, t, mode, n, ep=EP3) == [EP3, 0, []]
        assert r.cmd("HGETALL", hkey(t)) == [b"ep", EP3, b"off", b"0"]
        assert r.cmd("PTTL", hkey(t)) == -1
        assert r.cmd("EXISTS", skey(t)) == 0
        # A second read keeps it; the next publish continues it at off 1.
        assert read(r, t, mode, n, ep=EP1) == [EP3, 0, []]
        assert pub(r, t, envelope(1, t), 10, ep=EP1) == [0, EP3, 1]
        ep, off, entries = read(r, t, "last", 5)
        assert (ep, off, entry_ids(entries)) == (EP3, 1, [b"1-0"])
        ep, off, entries = read(r, t, "range", 0)
        assert (ep, off, entry_ids(entries)) == (EP3, 1, [b"1-0"])
    # With a TTL, the new hash gets it; a stale stream (hash lost) is deleted.
    t2 = b"read.stale"
    _publish_n(r, t2, 4)
    assert r.cmd("DEL", hkey(t2)) == 1
    assert read(r, t2, "range", 0, ep=EP2, ttl=30000) == [EP2, 0, []]
    assert 29000 < r.cmd("PTTL", hkey(t2)) <= 30000
    assert r.cmd("EXISTS", skey(t2)) == 0
    assert read(r, t2, "last", 10) == [EP2, 0, []]


# ---------------------------------------------------------------------------------------
# Presence: the six scripts (CLUSTER_SCRIPT_PRESENCE_*), their keys and their events
# ---------------------------------------------------------------------------------------

EXPIRY = 30000  # expiry_ms as the broker passes it (--presence-expiry 30)
INST_A = b"00000000000000aa"  # instances, as the broker writes them (%016x)
INST_B = b"00000000000000bb"
INST_C = b"00000000000000cc"


def _mp_value(b, i):
    """One MessagePack value of the kinds a presence envelope holds (fixarray, uint, str),
    strictly: returns (value, next offset); anything else fails the test."""
    t = b[i]
    if t < 0x80:
        return t, i + 1
    widths = {0xcc: 1, 0xcd: 2, 0xce: 4, 0xcf: 8}
    if t in widths:
        w = widths[t]
        assert i + 1 + w <= len(b), "uint past the end"
        return int.from_bytes(b[i + 1:i + 1 + w], "big"), i + 1 + w
    if 0x90 <= t <= 0x9f:
        out, i = [], i + 1
        for _ in range(t & 0x0f):
            v, i = _mp_value(b, i)
            out.append(v)
        return out, i
    if 0xa0 <= t <= 0xbf:
        n, i = t & 0x1f, i + 1
    elif t in (0xd9, 0xda, 0xdb):
        w = {0xd9: 1, 0xda: 2, 0xdb: 4}[t]
        n, i = int.from_bytes(b[i + 1:i + 1 + w], "big"), i + 1 + w
    else:
        raise AssertionError("unexpected MessagePack byte 0x%02x at %d" % (t, i))
    assert i + n <= len(b), "str past the end"
    return b[i:i + n], i + n


def mp_decode(b):
    v, i = _mp_value(b, 0)
    assert i == len(b), "bytes after the value"
    return v


def _mp_uint(v):
    """The smallest uint, as cmsgpack writes a non-negative integer."""
    if v < 0x80:
        return bytes([v])
    for tag, w in ((0xcc, 1), (0xcd, 2), (0xce, 4), (0xcf, 8)):
        if v < 1 << (8 * w):
            return bytes([tag]) + v.to_bytes(w, "big")
    raise AssertionError(v)


def _mp_str(s):
    n = len(s)
    if n < 32:
        return bytes([0xa0 | n]) + s
    for tag, w in ((0xd9, 1), (0xda, 2), (0xdb, 4)):
        if n < 1 << (8 * w):
            return bytes([tag]) + n.to_bytes(w, "big") + s
    raise AssertionError(n)


def presence_envelope(topic, kind, count, conn, member):
    """[2, topic, kind, count, conn, member] as cmsgpack.pack writes it (the smallest forms):
    what cluster_presence_decode reads (tests/unit/test_cluster_envelope.c)."""
    return (b"\x96\x02" + _mp_str(topic) + _mp_uint(kind) + _mp_uint(count) + _mp_str(conn) +
            _mp_str(member))


JOIN, LEAVE = 0, 1


def ev(topic, kind, count, conn, member):
    """An expected event, as the decoded tuple."""
    return (topic, kind, count, conn, member)


def events(payloads):
    """The decoded presence envelopes, each checked to be exactly the canonical bytes."""
    out = []
    for p in payloads:
        v = mp_decode(p)
        assert isinstance(v, list) and len(v) == 6 and v[0] == 2, v
        assert p == presence_envelope(v[1], v[2], v[3], v[4], v[5])
        out.append(tuple(v[1:]))
    return out


def member(conn, user=None, info=None):
    """A member's JSON, as gale_encode_member writes it."""
    out = b'{"conn":"' + conn + b'"'
    if user is not None:
        out += b',"user":"' + user + b'"'
    if info is not None:
        out += b',"info":' + info
    return out + b"}"


def conn(inst, n):
    return inst + b"-%d" % n


def pkey(topic):
    return PREFIX + b"p:" + topic


def zkey(topic):
    return PREFIX + b"pz:" + topic


def ikey(inst, prefix=PREFIX):
    return prefix + b"pi:" + inst


def nkey(node, prefix=PREFIX):
    return prefix + b"pn:" + node


def _pairs(conns):
    out = []
    for c in conns:
        out += [c, member(c)]
    return out


def p_join(r, inst, topic, conns, expiry=EXPIRY, pairs=None):
    """JOIN of conns (members made by member()); returns HLEN."""
    return r.cmd("EVAL", P_SCRIPT["JOIN"], 3, pkey(topic), zkey(topic), ikey(inst), inst, expiry,
                 topic, channel(topic), *(pairs if pairs is not None else _pairs(conns)))


def p_leave(r, inst, topic, conns, last):
    return r.cmd("EVAL", P_SCRIPT["LEAVE"], 3, pkey(topic), zkey(topic), ikey(inst), inst,
                 1 if last else 0, topic, channel(topic), *conns)


def p_sync(r, inst, topic, conns, expiry=EXPIRY, gone=()):
    """SYNC with inst's current members conns and its members gone meanwhile."""
    return r.cmd("EVAL", P_SCRIPT["SYNC"], 3, pkey(topic), zkey(topic), ikey(inst), inst, expiry,
                 topic, channel(topic), len(gone), *_pairs(gone), *_pairs(conns))


def p_refresh_lost(r, inst, topic, expiry=EXPIRY):
    """REFRESH's whole answer: [HLEN, lost]."""
    return r.cmd("EVAL", P_SCRIPT["REFRESH"], 3, pkey(topic), zkey(topic), ikey(inst), inst,
                 expiry, topic, channel(topic))


def p_refresh(r, inst, topic, expiry=EXPIRY):
    return p_refresh_lost(r, inst, topic, expiry)[0]


def p_read(r, topic, cap):
    return r.cmd("EVAL", P_SCRIPT["READ"], 2, pkey(topic), zkey(topic), cap, topic,
                 channel(topic))


def p_takeover(r, node, inst, expiry=EXPIRY, prefix=PREFIX):
    return r.cmd("EVAL", P_SCRIPT["TAKEOVER"], 1, nkey(node, prefix), inst, prefix, expiry)


def hash_of(r, topic):
    f = r.cmd("HGETALL", pkey(topic))
    return dict(zip(f[0::2], f[1::2]))


def kill(r, inst, topic):
    """Makes inst's expiry on topic lie in the past (a broker that stopped refreshing)."""
    r.cmd("ZADD", zkey(topic), redis_ms(r) - 1, inst)


def test_presence_scripts_read_from_the_source(r):
    for k in PRESENCE_SCRIPTS:
        s = P_SCRIPT[k]
        assert s.startswith(b"-- gale presence %s (KEYS " % k.encode())
        # The shared functions, once each, the script's own code after them.
        for fn in (b"now_ms()", b"event(", b"touch(", b"drop(", b"sweep("):
            assert s.count(b"local function " + fn) == 1
        assert s.count(b"cmsgpack.pack({2, topic, kind, n, conn, member})") == 1
        # No Lua pattern anywhere: prefixes are compared with string.sub.
        for f in (b"string.find", b"string.match", b"string.gsub", b"string.gmatch", b":find(",
                  b":match("):
            assert f not in s
        assert r.cmd("SCRIPT", "LOAD", s) == hashlib.sha1(s).hexdigest().encode()
    assert P_SCRIPT["JOIN"].endswith(b"touch(KEYS, exp)\nreturn n\n")
    assert P_SCRIPT["SYNC"].endswith(P_SCRIPT["JOIN"][P_SCRIPT["JOIN"].index(b"redis.call('ZADD'"):])
    # The history scripts are unchanged by the macro-aware extraction.
    assert SCRIPT_PUB.startswith(b"local midk = KEYS[3]\n")


def test_presence_join_publishes_one_event_per_new_member(r, redis_port):
    t = b"room.join"
    sub = Subscriber(redis_port, channel(t))
    try:
        a1, a2, a3 = conn(INST_A, 1), conn(INST_A, 2), conn(INST_A, 3)
        m1 = member(a1, user=b"ann", info=b'{"name":"Ann","tags":[1,2]}')
        before = redis_ms(r)
        assert p_join(r, INST_A, t, None, pairs=[a1, m1, a2, member(a2)]) == 2
        after = redis_ms(r)
        assert events(sub.fence(r, channel(t))) == [ev(t, JOIN, 1, a1, m1),
                                                      ev(t, JOIN, 2, a2, member(a2))]
        assert hash_of(r, t) == {a1: m1, a2: member(a2)}
        score = int(r.cmd("ZSCORE", zkey(t), INST_A))
        assert before + EXPIRY <= score <= after + EXPIRY
        assert r.cmd("SMEMBERS", ikey(INST_A)) == [t]
        # Every key expires after 2 x expiry.
        for k in (pkey(t), zkey(t), ikey(INST_A)):
            assert 2 * EXPIRY - 2000 < r.cmd("PTTL", k) <= 2 * EXPIRY
        # A repeated join (a re-sync): nothing published, nothing changed.
        assert p_join(r, INST_A, t, None, pairs=[a1, m1, a2, member(a2)]) == 2
        assert sub.fence(r, channel(t)) == []
        assert hash_of(r, t) == {a1: m1, a2: member(a2)}
        # One new among old ones: one event, its count the new HLEN.
        assert p_join(r, INST_A, t, [a1, a3, a2]) == 3
        assert events(sub.fence(r, channel(t))) == [ev(t, JOIN, 3, a3, member(a3))]
        # Another instance's member; a join with no pair only refreshes.
        b1 = conn(INST_B, 1)
        assert p_join(r, INST_B, t, [b1]) == 4
        assert p_join(r, INST_B, t, []) == 4
        assert events(sub.fence(r, channel(t))) == [ev(t, JOIN, 4, b1, member(b1))]
        assert sorted(r.cmd("ZRANGE", zkey(t), 0, -1)) == [INST_A, INST_B]
        assert r.cmd("SMEMBERS", ikey(INST_B)) == [t]
        # A long member (str16 in the envelope) and a long conn (str8).
        big = b'{"conn":"x","info":{"s":"' + b"y" * 300 + b'"}}'
        long_conn = conn(INST_A, 10 ** 19)
        assert p_join(r, INST_A, t, None, pairs=[long_conn, big]) == 5
        (p,) = sub.fence(r, channel(t))
        assert events([p]) == [ev(t, JOIN, 5, long_conn, big)]
        assert p[-len(big) - 3:-len(big)] == b"\xda" + len(big).to_bytes(2, "big")
    finally:
        sub.close()


def test_presence_join_counts_past_a_fixint(r, redis_port):
    """Counts of 128 and more are uint8/uint16 in the envelope (cmsgpack's smallest form)."""
    t = b"room.many"
    conns = [conn(INST_A, i) for i in range(1, 301)]
    sub = Subscriber(redis_port, channel(t))
    try:
        assert p_join(r, INST_A, t, conns) == 300
        got = events(sub.fence(r, channel(t)))
        assert got == [ev(t, JOIN, i, c, member(c)) for i, c in enumerate(conns, 1)]
    finally:
        sub.close()


def test_presence_leave(r, redis_port):
    t = b"room.leave"
    a1, a2, b1 = conn(INST_A, 1), conn(INST_A, 2), conn(INST_B, 1)
    assert p_join(r, INST_A, t, [a1, a2]) == 2
    assert p_join(r, INST_B, t, [b1]) == 3
    sub = Subscriber(redis_port, channel(t))
    try:
        # Not the last: inst stays in pz and pi.
        assert p_leave(r, INST_A, t, [a1], last=False) == 2
        assert events(sub.fence(r, channel(t))) == [ev(t, LEAVE, 2, a1, member(a1))]
        assert r.cmd("ZSCORE", zkey(t), INST_A) is not None
        assert r.cmd("SISMEMBER", ikey(INST_A), t) == 1
        # Absent conns: nothing.
        assert p_leave(r, INST_A, t, [a1, conn(INST_A, 9)], last=False) == 2
        assert sub.fence(r, channel(t)) == []
        # The last one: inst leaves pz and pi; B is untouched.
        assert p_leave(r, INST_A, t, [a2], last=True) == 1
        assert events(sub.fence(r, channel(t))) == [ev(t, LEAVE, 1, a2, member(a2))]
        assert r.cmd("ZSCORE", zkey(t), INST_A) is None
        assert r.cmd("SISMEMBER", ikey(INST_A), t) == 0
        assert r.cmd("ZSCORE", zkey(t), INST_B) is not None
        assert hash_of(r, t) == {b1: member(b1)}
        # Several at once, counts going down; the hash then no longer exists.
        assert p_join(r, INST_A, t, [a1, a2]) == 3
        sub.fence(r, channel(t))
        assert p_leave(r, INST_A, t, [a2, b1, a1], last=True) == 0
        assert events(sub.fence(r, channel(t))) == [ev(t, LEAVE, 2, a2, member(a2)),
                                                      ev(t, LEAVE, 1, b1, member(b1)),
                                                      ev(t, LEAVE, 0, a1, member(a1))]
        assert r.cmd("EXISTS", pkey(t)) == 0
        # last on a topic without anything.
        assert p_leave(r, INST_A, b"room.none", [], last=True) == 0
    finally:
        sub.close()


def test_presence_sync_gone(r, redis_port):
    """Members that left while Redis could not be told: one leave each, whether Redis still
    had them (then they are removed) or had lost them; nothing for them afterwards."""
    t = b"room.gone"
    a = [conn(INST_A, i) for i in range(1, 4)]
    b1 = conn(INST_B, 1)
    assert p_join(r, INST_A, t, a[:2]) == 2
    assert p_join(r, INST_B, t, [b1]) == 3
    sub = Subscriber(redis_port, channel(t))
    try:
        # a2 is still there: removed with its leave. a3's LEAVE ran (Redis got it before the
        # connection failed): A's state is intact (in pz:T), no second leave.
        assert p_sync(r, INST_A, t, [a[0]], gone=[a[1], a[2]]) == 2
        got = events(sub.fence(r, channel(t)))
        assert got == [ev(t, LEAVE, 2, a[1], member(a[1]))]
        assert hash_of(r, t) == {a[0]: member(a[0]), b1: member(b1)}
        assert p_sync(r, INST_A, t, [a[0]]) == 2
        assert sub.fence(r, channel(t)) == []
        # Redis lost A's state (restarted empty, say): every gone member gets its leave.
        r.cmd("DEL", pkey(t), zkey(t))
        assert p_sync(r, INST_A, t, [a[0]], gone=[a[1], a[2]]) == 1
        got = events(sub.fence(r, channel(t)))
        assert got == [ev(t, LEAVE, 0, a[1], member(a[1])), ev(t, LEAVE, 0, a[2], member(a[2])),
                       ev(t, JOIN, 1, a[0], member(a[0]))]
    finally:
        sub.close()


def test_presence_sync_gone_after_a_lost_answer(r, redis_port):
    """A gone member given with an empty member JSON: its LEAVE was sent and its answer lost,
    so it may have run, as the last of A's members (A out of pz:T): no second leave for it;
    one (with the member Redis held) when Redis still has it."""
    t = b"room.lost"
    a1, a2 = conn(INST_A, 1), conn(INST_A, 2)
    b1 = conn(INST_B, 1)
    assert p_join(r, INST_A, t, [a1, a2]) == 2
    assert p_join(r, INST_B, t, [b1]) == 3
    assert p_leave(r, INST_A, t, [a1, a2], True) == 1   # it ran: A is out of pz:T
    sub = Subscriber(redis_port, channel(t))
    try:
        sync = r.cmd("EVAL", P_SCRIPT["SYNC"], 3, pkey(t), zkey(t), ikey(INST_A), INST_A, EXPIRY,
                     t, channel(t), 2, a1, b"", a2, member(a2))
        assert sync == 1
        got = events(sub.fence(r, channel(t)))
        assert got == [ev(t, LEAVE, 1, a2, member(a2))]   # a2's member was given: announced
        assert p_join(r, INST_A, t, [a1]) == 2
        sub.fence(r, channel(t))
        sync = r.cmd("EVAL", P_SCRIPT["SYNC"], 3, pkey(t), zkey(t), ikey(INST_A), INST_A, EXPIRY,
                     t, channel(t), 1, a1, b"")
        assert sync == 1
        got = events(sub.fence(r, channel(t)))
        assert got == [ev(t, LEAVE, 1, a1, member(a1))]   # Redis had it: its own member JSON
    finally:
        sub.close()


def test_presence_sync(r, redis_port):
    t = b"room.sync"
    a = [conn(INST_A, i) for i in range(1, 5)]
    b1 = conn(INST_B, 1)
    assert p_join(r, INST_A, t, a[:3]) == 3
    assert p_join(r, INST_B, t, [b1]) == 4
    sub = Subscriber(redis_port, channel(t))
    try:
        # A holds a1 and a4 now: a2 and a3 leave, a4 joins; B's member stays.
        assert p_sync(r, INST_A, t, [a[0], a[3]]) == 3
        got = events(sub.fence(r, channel(t)))
        assert sorted((g[0], g[1], g[3], g[4]) for g in got[:2]) == [
            (t, LEAVE, a[1], member(a[1])), (t, LEAVE, a[2], member(a[2]))]
        assert [g[2] for g in got[:2]] == [3, 2]  # HLEN after each
        assert got[2:] == [ev(t, JOIN, 3, a[3], member(a[3]))]
        assert hash_of(r, t) == {a[0]: member(a[0]), a[3]: member(a[3]), b1: member(b1)}
        assert r.cmd("SISMEMBER", ikey(INST_A), t) == 1
        assert 2 * EXPIRY - 2000 < r.cmd("PTTL", pkey(t)) <= 2 * EXPIRY
        # The same again: nothing.
        assert p_sync(r, INST_A, t, [a[0], a[3]]) == 3
        assert sub.fence(r, channel(t)) == []
        # No pair: LEAVE with last=1 for all of A's members.
        assert p_sync(r, INST_A, t, []) == 1
        got = events(sub.fence(r, channel(t)))
        assert sorted(g[3] for g in got) == [a[0], a[3]]
        assert [g[1:3] for g in got] == [(LEAVE, 2), (LEAVE, 1)]
        assert hash_of(r, t) == {b1: member(b1)}
        assert r.cmd("ZSCORE", zkey(t), INST_A) is None
        assert r.cmd("SISMEMBER", ikey(INST_A), t) == 0
        assert r.cmd("ZSCORE", zkey(t), INST_B) is not None
        # A sync onto an empty topic is a join.
        t2 = b"room.sync2"
        assert p_sync(r, INST_A, t2, [a[0]]) == 1
        assert r.cmd("SMEMBERS", ikey(INST_A)) == [t2]
    finally:
        sub.close()


def test_presence_refresh_keeps_alive(r, redis_port):
    t = b"room.refresh"
    a1, b1 = conn(INST_A, 1), conn(INST_B, 1)
    assert p_join(r, INST_A, t, [a1], expiry=300) == 1
    assert p_join(r, INST_B, t, [b1], expiry=300) == 2
    sub = Subscriber(redis_port, channel(t))
    try:
        last = 0
        for _ in range(8):  # 0.8 s: over twice the expiry, refreshed every 100 ms
            time.sleep(0.1)
            assert p_refresh(r, INST_A, t, expiry=300) == 2
            assert p_refresh(r, INST_B, t, expiry=300) == 2
            score = int(r.cmd("ZSCORE", zkey(t), INST_A))
            assert score > last
            last = score
            for k in (pkey(t), zkey(t), ikey(INST_A)):
                assert 0 < r.cmd("PTTL", k) <= 600
        assert sub.fence(r, channel(t)) == []
        assert hash_of(r, t) == {a1: member(a1), b1: member(b1)}
        # B stops refreshing: after its expiry A's refresh sweeps it.
        time.sleep(0.4)
        assert p_refresh(r, INST_A, t, expiry=300) == 1
        assert events(sub.fence(r, channel(t))) == [ev(t, LEAVE, 1, b1, member(b1))]
        assert r.cmd("ZRANGE", zkey(t), 0, -1) == [INST_A]
        # A refresh sets the expiry of all three keys again.
        r.cmd("PEXPIRE", pkey(t), 50)
        assert p_refresh(r, INST_A, t, expiry=EXPIRY) == 1
        for k in (pkey(t), zkey(t), ikey(INST_A)):
            assert 2 * EXPIRY - 2000 < r.cmd("PTTL", k) <= 2 * EXPIRY
    finally:
        sub.close()


def test_presence_refresh_reports_lost_entry(r, redis_port):
    """A broker swept while it could not refresh (a stall) learns it from its next REFRESH."""
    t = b"room.lost"
    a1, b1 = conn(INST_A, 1), conn(INST_B, 1)
    assert p_join(r, INST_A, t, [a1]) == 1
    assert p_join(r, INST_B, t, [b1]) == 2
    assert p_refresh_lost(r, INST_A, t) == [2, 0]
    kill(r, INST_A, t)
    assert p_refresh_lost(r, INST_B, t) == [1, 0]  # B sweeps A's member
    assert p_refresh_lost(r, INST_A, t) == [1, 1]  # A is back in pz:T, its member is not
    assert hash_of(r, t) == {b1: member(b1)}
    assert p_refresh_lost(r, INST_A, t) == [1, 0]


@pytest.mark.parametrize("by", ["refresh", "read"])
def test_presence_dead_instance_swept(r, redis_port, by):
    t = b"room.dead"
    a = [conn(INST_A, i) for i in (1, 2, 3)]
    c = [conn(INST_C, i) for i in (1, 2)]
    b1 = conn(INST_B, 1)
    assert p_join(r, INST_A, t, a) == 3
    assert p_join(r, INST_B, t, [b1]) == 4
    assert p_join(r, INST_C, t, c) == 6
    kill(r, INST_A, t)
    kill(r, INST_C, t)
    sub = Subscriber(redis_port, channel(t))
    try:
        if by == "refresh":
            assert p_refresh(r, INST_B, t) == 1
        else:
            assert p_read(r, t, 10) == [1, member(b1)]
        got = events(sub.fence(r, channel(t)))
        # One leave for each of the dead instances' members, counts going down.
        assert sorted(g[3] for g in got) == sorted(a + c)
        assert [g[2] for g in got] == [5, 4, 3, 2, 1]
        assert all(g[:2] == (t, LEAVE) and g[4] == member(g[3]) for g in got)
        assert r.cmd("ZRANGE", zkey(t), 0, -1) == [INST_B]
        assert hash_of(r, t) == {b1: member(b1)}
        # Nothing more the next time.
        assert p_refresh(r, INST_B, t) == 1
        assert p_read(r, t, 10) == [1, member(b1)]
        assert sub.fence(r, channel(t)) == []
    finally:
        sub.close()


def test_presence_read_caps(r, redis_port):
    t = b"room.read"
    conns = [conn(INST_A, i) for i in range(1, 26)]
    assert p_join(r, INST_A, t, conns) == 25
    every = sorted(member(c) for c in conns)
    sub = Subscriber(redis_port, channel(t))
    try:
        for cap in (25, 26, 1000):
            got = p_read(r, t, cap)
            assert got[0] == 25 and sorted(got[1:]) == every
        for cap in (1, 10, 24):
            got = p_read(r, t, cap)
            assert got[0] == 25  # the exact count
            assert len(got) == 1 + cap and len(set(got[1:])) == cap  # cap distinct members
            assert set(got[1:]) <= set(every)
        assert p_read(r, t, 0) == [25]
        assert p_read(r, b"room.empty", 10) == [0]
        assert sub.fence(r, channel(t)) == []  # a read of live members announces nothing
        assert hash_of(r, t) == {c: member(c) for c in conns}
    finally:
        sub.close()


def test_presence_takeover(r, redis_port):
    t1, t2, t3 = b"room.t1", b"room.t2", b"room.t3"
    node = b"node-1"
    # The first start: nothing to take over.
    assert p_takeover(r, node, INST_A) == 0
    assert r.cmd("GET", nkey(node)) == INST_A
    assert 2 * EXPIRY - 2000 < r.cmd("PTTL", nkey(node)) <= 2 * EXPIRY
    a1, a2, a3, b1 = conn(INST_A, 1), conn(INST_A, 2), conn(INST_A, 3), conn(INST_B, 1)
    assert p_join(r, INST_A, t1, [a1, a2]) == 2
    assert p_join(r, INST_B, t1, [b1]) == 3
    assert p_join(r, INST_A, t2, [a3]) == 1
    assert p_join(r, INST_A, t3, [conn(INST_A, 4)]) == 1
    assert p_leave(r, INST_A, t3, [conn(INST_A, 4)], last=False) == 0  # pi still names t3
    assert sorted(r.cmd("SMEMBERS", ikey(INST_A))) == [t1, t2, t3]
    # The same instance again (a reconnect): nothing.
    assert p_takeover(r, node, INST_A) == 0
    assert len(hash_of(r, t1)) == 3
    sub = Subscriber(redis_port, channel(t1), channel(t2), channel(t3))
    try:
        # A restart with the same node id: C takes A's place at once.
        assert p_takeover(r, node, INST_C) == 3
        got = []
        while len(got) < 3:
            got.append(sub.next())
        got = events(got)
        # Each of A's members leaves once, on its topic's channel, with its member JSON.
        assert sorted((g[0], g[1], g[3], g[4]) for g in got) == [
            (t1, LEAVE, a1, member(a1)), (t1, LEAVE, a2, member(a2)),
            (t2, LEAVE, a3, member(a3))]
        assert [g[2] for g in got if g[0] == t2] == [0]
        assert [g[2] for g in got if g[0] == t1] == [2, 1]  # HLEN after each
        for ch in (channel(t1), channel(t2), channel(t3)):
            assert sub.fence(r, ch) == []
        assert hash_of(r, t1) == {b1: member(b1)}
        assert r.cmd("EXISTS", pkey(t2)) == 0
        for t in (t1, t2, t3):
            assert r.cmd("ZSCORE", zkey(t), INST_A) is None
        assert r.cmd("ZSCORE", zkey(t1), INST_B) is not None
        assert r.cmd("EXISTS", ikey(INST_A)) == 0
        assert r.cmd("SMEMBERS", ikey(INST_B)) == [t1]
        assert r.cmd("GET", nkey(node)) == INST_C
        assert 2 * EXPIRY - 2000 < r.cmd("PTTL", nkey(node)) <= 2 * EXPIRY
        # Another node id is another key.
        assert p_takeover(r, b"node-2", INST_B) == 0
        assert r.cmd("GET", nkey(node)) == INST_C
    finally:
        sub.close()


def test_presence_takeover_uses_the_prefix_given(r, redis_port):
    other = b"other:"
    t = b"room.px"
    a1 = conn(INST_A, 1)
    # A's member under another prefix, and a lookalike under the default one.
    assert r.cmd("EVAL", P_SCRIPT["JOIN"], 3, other + b"p:" + t, other + b"pz:" + t,
                 other + b"pi:" + INST_A, INST_A, EXPIRY, t, other + t, a1, member(a1)) == 1
    assert p_join(r, INST_A, t, [a1]) == 1
    assert p_takeover(r, b"n", INST_A, prefix=other) == 0
    sub = Subscriber(redis_port, other + t, channel(t))
    try:
        assert p_takeover(r, b"n", INST_B, prefix=other) == 1
        assert events([sub.next()]) == [ev(t, LEAVE, 0, a1, member(a1))]
        assert sub.fence(r, other + t) == [] and sub.fence(r, channel(t)) == []
        assert r.cmd("EXISTS", other + b"p:" + t, other + b"pi:" + INST_A) == 0
        assert r.cmd("GET", other + b"pn:n") == INST_B
        assert hash_of(r, t) == {a1: member(a1)}  # the default prefix's keys untouched
    finally:
        sub.close()


# Instances whose conns look like another's: "ab" must take "ab-1" and "ab-22" only, never
# "abc-1", "ab" itself, "xab-1" or "ab_1"; and pattern characters are plain bytes (a Lua
# pattern "a.b-" would match "axb-1", "a%" would be malformed).
LOOKALIKE_DEAD = [b"ab", b"a.b", b"a%", b"[a]"]
LOOKALIKE_OWN = {b"ab": [b"ab-1", b"ab-22"], b"a.b": [b"a.b-1"], b"a%": [b"a%-1"],
                 b"[a]": [b"[a]-1"]}
LOOKALIKE_OTHERS = [b"abc-1", b"ab", b"xab-1", b"ab_1", b"a-1", b"axb-1", b"a%%-1", b"a-b-1",
                    b"abc", b"[a]x-1", b"a"]


def _lookalikes(r, t):
    for inst in LOOKALIKE_DEAD:
        assert p_join(r, inst, t, LOOKALIKE_OWN[inst]) > 0
    assert p_join(r, b"abc", t, LOOKALIKE_OTHERS) == 5 + len(LOOKALIKE_OTHERS)
    return {c: member(c) for c in LOOKALIKE_OTHERS}


@pytest.mark.parametrize("by", ["refresh", "read", "sync", "takeover"])
def test_presence_prefix_lookalikes_untouched(r, redis_port, by):
    t = b"room.look"
    others = _lookalikes(r, t)
    sub = Subscriber(redis_port, channel(t))
    try:
        for inst in LOOKALIKE_DEAD:
            if by == "sync":
                assert p_sync(r, inst, t, []) >= len(others)
            elif by == "takeover":
                assert p_takeover(r, b"node-" + inst, inst) == 0
                assert p_takeover(r, b"node-" + inst, b"new") == len(LOOKALIKE_OWN[inst])
            else:
                kill(r, inst, t)
                if by == "refresh":
                    p_refresh(r, b"abc", t)
                else:
                    p_read(r, t, 1000)
            got = events(sub.fence(r, channel(t)))
            assert sorted(g[3] for g in got) == sorted(LOOKALIKE_OWN[inst])
            assert all(g[1] == LEAVE for g in got)
        assert hash_of(r, t) == others
        assert r.cmd("ZRANGE", zkey(t), 0, -1) == [b"abc"]
    finally:
        sub.close()


def test_presence_really_expires(r, redis_port):
    """No ZADD by hand: a short expiry simply passes (REFRESH and READ both sweep)."""
    t = b"room.expire"
    a1, b1 = conn(INST_A, 1), conn(INST_B, 1)
    assert p_join(r, INST_A, t, [a1], expiry=100) == 1
    assert p_join(r, INST_B, t, [b1]) == 2
    sub = Subscriber(redis_port, channel(t))
    try:
        assert p_read(r, t, 10)[0] == 2
        time.sleep(0.25)
        assert p_read(r, t, 10) == [1, member(b1)]
        assert events(sub.fence(r, channel(t))) == [ev(t, LEAVE, 1, a1, member(a1))]
        # And the keys of a topic nobody refreshes go away after 2 x expiry.
        t2 = b"room.gone"
        assert p_join(r, INST_A, t2, [a1], expiry=100) == 1
        time.sleep(0.35)
        assert r.cmd("EXISTS", pkey(t2), zkey(t2), ikey(INST_A)) == 0
    finally:
        sub.close()
