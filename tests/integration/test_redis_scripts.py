"""The two Lua scripts of clustering with history (broker/cluster_wire.c: CLUSTER_SCRIPT_PUB,
CLUSTER_SCRIPT_READ), run with EVAL on a real redis-server, without a broker.

The scripts are read from the C source (the string literals of their definitions), so what
runs here is what the broker loads. One redis-server (Debian's, free loopback port, no
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
"""
import hashlib
import os
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
    """The concatenated string literals of `const char NAME[] = "..." "...";` in src."""
    decl = "const char %s[] =" % name
    i = src.index(decl) + len(decl)
    out = []
    while True:
        while src[i].isspace():
            i += 1
        if src.startswith("/*", i):
            i = src.index("*/", i) + 2
            continue
        if src[i] == ";":
            break
        assert src[i] == '"', "unexpected %r in the definition of %s" % (src[i:i + 20], name)
        i += 1
        while src[i] != '"':
            c = src[i]
            assert c != "\n", "newline inside a string literal of %s" % name
            if c == "\\":
                e = src[i + 1]
                if e == "x":
                    j = i + 2
                    while src[j] in "0123456789abcdefABCDEF":
                        j += 1
                    out.append(chr(int(src[i + 2:j], 16)))
                    i = j
                    continue
                if e in "01234567" and src[i + 2] in "01234567":
                    j = i + 1
                    while j < i + 4 and src[j] in "01234567":
                        j += 1
                    out.append(chr(int(src[i + 1:j], 8)))
                    i = j
                    continue
                out.append(_ESCAPES[e])
                i += 2
                continue
            out.append(c)
            i += 1
        i += 1
    return "".join(out).encode("latin-1")


def _scripts():
    with open(os.path.join(SOURCE_DIR, "broker", "cluster_wire.c"), encoding="utf-8") as f:
        src = f.read()
    return (_c_string_literals(src, "CLUSTER_SCRIPT_PUB"),
            _c_string_literals(src, "CLUSTER_SCRIPT_READ"))


SCRIPT_PUB, SCRIPT_READ = _scripts()


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
