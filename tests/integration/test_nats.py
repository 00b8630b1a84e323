"""The NATS client protocol over WebSocket (docs.nats.io "Client Protocol"), against gale's
NATS adapter (ws://127.0.0.1:PORT/nats) and against the reference, Debian's nats-server
2.9.10 (ref_nats.py), with the same expectations: each test runs once per target, ids
[gale] and [nats].

The client here is written on galetest.RawWS: it sends protocol bytes in WebSocket frames
(binary unless a test says text) and reads the server's frames as one byte stream (a line
may span frames, a frame may hold several messages).

What nats-server 2.9.10 does, and gale is expected to do the same (checked here):
  * INFO first: proto 1, max_payload (4096 here: both are started with it), a "headers"
    key; auth_required true when authentication is configured.
  * Before CONNECT, without authentication, operations are accepted, with +OK: the
    options default to verbose (and pedantic) until CONNECT says otherwise.
    With authentication, any first operation but CONNECT: -ERR 'Authorization Violation',
    then close 1008.
  * -ERR 'Unknown Protocol Operation', then close 1002 (nats-server's reason text
    "Protocol Violation").
  * PUB announcing more than max_payload: -ERR 'Maximum Payload Violation', then close
    1009 ("Maximum Message Payload Exceeded").
  * A control line over 4096 bytes: -ERR 'maximum control line exceeded' (lower case, as
    nats-server writes it), then close 1008 ("Maximum Control Line Exceeded").
  * CONNECT without or with a wrong auth_token: -ERR 'Authorization Violation', then close
    1008 ("Authentication Failure").
  * Permissions: -ERR 'Permissions Violation for Subscription to "x.y"' and
    -ERR 'Permissions Violation for Publish to "x.y"'; the connection stays open (no +OK
    for the refused operation even when verbose).
  * SUB of an invalid subject (a..b): -ERR 'Invalid Subject', open. PUB to an invalid
    subject (a..b, a.*): with pedantic, -ERR 'Invalid Publish Subject', open, not
    delivered (without pedantic nats-server drops it silently: not tested).
  * A message matching two subscriptions of one connection arrives once per sid.

Authentication and permissions run on both: gale with --jwt-secret and HS256 tokens minted
with python3-jwt (the token in CONNECT auth_token, the grants in its "gale" claim),
nats-server with `authorization { token }` or users with permissions in its config.
gale-only (marked gale_only, [gale] only): queue groups refused, subjects gale cannot
express, and the bridge to gale's JSON clients.

Without GALE_BROKER (or a build/gale-broker), conftest.py skips every test of the suite,
the [nats] ones too: `GALE_BROKER=build/dev/gale-broker ... -k "[nats"` runs the reference
half alone.

Every wait is bounded; no sleep is over 1 s.
"""
import base64
import json
import os
import socket
import time

import jwt
import pytest

import galetest
import ref_nats
from galetest import OP_CLOSE, Closed, RawWS, connect, run

SECRET = "nats-adapter-test-secret-0123456789"
NATS_TOKEN = "nats-reference-token-0123456789"
MAX_PAYLOAD = 4096
PATH = "/nats"
CONNECT_OPTS = {"verbose": False, "pedantic": False, "protocol": 1}


# ---------------------------------------------------------------------------------------
# A raw NATS-over-WebSocket client
# ---------------------------------------------------------------------------------------

class NatsWS:
    """One NATS connection over galetest.RawWS. Messages read are tuples:
    ("INFO", dict), ("MSG", subject, sid, reply or None, payload bytes), ("PING",),
    ("PONG",), ("+OK",), ("-ERR", text)."""

    def __init__(self, port, path=PATH, text=False, timeout=5.0):
        self.ws = RawWS(port, path=path, protocols=(), timeout=timeout)
        assert self.ws.status == 101, "upgrade at %s refused: HTTP %d" % (path, self.ws.status)
        self.text = text      # send text frames instead of binary ones
        self.stream = b""     # bytes of the server's frames not parsed yet
        self.closed = False
        self.close_code = None
        self.info = None

    # -- sending --------------------------------------------------------------------------
    def send(self, data, text=None):
        """One WebSocket frame holding data (str or bytes)."""
        if isinstance(data, str):
            data = data.encode()
        if self.text if text is None else text:
            self.ws.send_text(data)
        else:
            self.ws.send_binary(data)

    def connect_op(self, **opts):
        o = dict(CONNECT_OPTS)
        o.update(opts)
        return "CONNECT %s\r\n" % json.dumps(o, separators=(",", ":"))

    def sub(self, subject, sid, queue=None):
        self.send("SUB %s %s%s\r\n" % (subject, queue + " " if queue else "", sid))

    def unsub(self, sid, max_msgs=None):
        self.send("UNSUB %s%s\r\n" % (sid, "" if max_msgs is None else " %d" % max_msgs))

    @staticmethod
    def pub_op(subject, payload, reply=None):
        if isinstance(payload, str):
            payload = payload.encode()
        head = "PUB %s %s%d\r\n" % (subject, reply + " " if reply else "", len(payload))
        return head.encode() + payload + b"\r\n"

    def pub(self, subject, payload, reply=None):
        self.send(self.pub_op(subject, payload, reply))

    # -- receiving ------------------------------------------------------------------------
    def _more(self, deadline):
        """Appends the next data frame's bytes to the stream; raises Closed at a close
        frame or EOF (recording close_code), socket.timeout at the deadline."""
        if self.closed:
            raise Closed("closed")
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        try:
            op, payload = self.ws.recv_message(left)
        except Closed:
            self.closed = True
            raise
        if op == OP_CLOSE:
            self.closed = True
            self.close_code = self.ws.close_code
            raise Closed("close frame %r" % payload)
        self.stream += payload

    def _line(self, deadline):
        while True:
            i = self.stream.find(b"\r\n")
            if i >= 0:
                line, self.stream = self.stream[:i], self.stream[i + 2:]
                return line
            assert len(self.stream) < 1 << 20, "no line end in %d bytes" % len(self.stream)
            self._more(deadline)

    def _bytes(self, n, deadline):
        while len(self.stream) < n:
            self._more(deadline)
        out, self.stream = self.stream[:n], self.stream[n:]
        return out

    def next(self, timeout=5.0):
        """The next server message (see the class doc)."""
        deadline = time.monotonic() + timeout
        line = self._line(deadline)
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"INFO":
            return ("INFO", json.loads(rest))
        if op == b"MSG":
            args = rest.split()
            assert len(args) in (3, 4), "bad MSG line %r" % line
            n = int(args[-1])
            payload = self._bytes(n + 2, deadline)
            assert payload[-2:] == b"\r\n", "MSG payload not followed by CRLF: %r" % payload[-10:]
            reply = args[2].decode() if len(args) == 4 else None
            return ("MSG", args[0].decode(), args[1].decode(), reply, payload[:-2])
        if op in (b"PING", b"PONG", b"+OK"):
            assert rest == b"", "unexpected text after %r: %r" % (op, line)
            return (op.decode(),)
        if op == b"-ERR":
            text = rest.decode()
            assert text.startswith("'") and text.endswith("'"), "-ERR text unquoted: %r" % line
            return ("-ERR", text[1:-1])
        raise AssertionError("unknown server line %r" % line)

    def read_info(self, timeout=5.0):
        m = self.next(timeout)
        assert m[0] == "INFO", "the first message is not INFO: %r" % (m,)
        self.info = m[1]
        return self.info

    def handshake(self, **opts):
        """INFO, then CONNECT (verbose and pedantic false, protocol 1, opts added)."""
        info = self.read_info()
        self.send(self.connect_op(**opts))
        return info

    def sync(self, timeout=5.0):
        """PING; every message before the PONG (server PINGs are answered)."""
        self.send("PING\r\n")
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no PONG within %.1fs (read: %r)" % (timeout, got[:5]))
            try:
                m = self.next(left)
            except socket.timeout:
                raise AssertionError("no PONG within %.1fs (read: %r)" % (timeout, got[:5])) \
                    from None
            except Closed:
                raise AssertionError("connection closed (code %s) waiting for PONG; read %r"
                                     % (self.close_code, got[:5])) from None
            if m == ("PONG",):
                return got
            if m == ("PING",):
                self.send("PONG\r\n")
                continue
            got.append(m)

    def expect_silence(self):
        extra = self.sync()
        assert extra == [], "expected nothing before PONG, got %r" % extra[:5]

    def msgs(self, n, timeout=5.0):
        """The next n MSGs (nothing else allowed in between but server PINGs)."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("%d of %d MSGs within %.1fs" % (len(out), n, timeout))
            try:
                m = self.next(left)
            except socket.timeout:
                raise AssertionError("%d of %d MSGs within %.1fs" % (len(out), n, timeout)) \
                    from None
            if m == ("PING",):
                self.send("PONG\r\n")
                continue
            assert m[0] == "MSG", "expected MSG, got %r" % (m,)
            out.append(m)
        return out

    def until_closed(self, timeout=5.0):
        """Every message until the server closes; returns (messages, close code or None
        for an EOF without a close frame)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("still open after %.1fs (read: %r)" % (timeout, got[:5]))
            try:
                got.append(self.next(left))
            except Closed:
                return got, self.close_code
            except socket.timeout:
                raise AssertionError("still open after %.1fs (read: %r)" % (timeout, got[:5])) \
                    from None

    def close(self):
        self.ws.close()


def expect_err_and_close(c, text, code):
    """c gets -ERR 'text' (after nothing but +OK), then the server closes with code."""
    got, got_code = c.until_closed()
    errs = [m for m in got if m[0] == "-ERR"]
    assert errs == [("-ERR", text)], "expected -ERR %r then close, read %r" % (text, got)
    assert all(m[0] in ("+OK", "-ERR") for m in got), got
    assert got_code == code, "close code %r, expected %r (read %r)" % (got_code, code, got)


# ---------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------

def gale_token(user="alice", sub=(">",), pub=(">",), ttl=300):
    claims = {"sub": user, "exp": int(time.time()) + ttl,
              "gale": {"sub": list(sub), "pub": list(pub)}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Server:
    def __init__(self, target, port, users=None, broker=None, ref=None):
        self.target = target
        self.port = port
        self.users = users or {}
        self.broker = broker   # galetest.Broker (gale)
        self.ref = ref         # ref_nats.NatsServer (nats)

    @property
    def url(self):
        return "ws://127.0.0.1:%d%s" % (self.port, PATH)

    def client(self, text=False):
        return NatsWS(self.port, text=text)

    def creds(self, user=None, wrong=False):
        """CONNECT fields authenticating user (None: the token of a token-only server)."""
        if self.target == "gale":
            if user is None:
                tok = gale_token(sub=("ok.>",), pub=("ok.>",))
            else:
                sub, pub = self.users[user]
                tok = gale_token(user, sub, pub)
            if wrong:
                tok = jwt.encode(jwt.decode(tok, options={"verify_signature": False}),
                                 SECRET + "-wrong", algorithm="HS256")
            return {"auth_token": tok}
        if user is None:
            return {"auth_token": NATS_TOKEN + ("-wrong" if wrong else "")}
        return {"user": user, "pass": "pw-" + user + ("-wrong" if wrong else "")}

    def connected(self, user=None, **opts):
        """A client past INFO and CONNECT (with creds when the server has auth)."""
        c = self.client()
        if self.users or self.auth:
            opts = dict(self.creds(user), **opts)
        c.handshake(**opts)
        return c

    auth = False


class Target:
    """What the nt fixture gives a test: start(...) a server of this kind."""

    def __init__(self, kind, make_broker, workdir):
        self.kind = kind
        self.make_broker = make_broker
        self.workdir = workdir
        self.refs = []

    def start(self, auth=False, users=None):
        """auth: token authentication; users: {name: (sub patterns, pub patterns)} (gale:
        JWT grants; nats-server: users with permissions). max_payload 4096 always."""
        if self.kind == "gale":
            args = ["--max-message", str(MAX_PAYLOAD)]
            if auth or users:
                args += ["--jwt-secret", SECRET]
            b = self.make_broker(args)
            s = Server("gale", b.port, users=users, broker=b)
        else:
            ulist = None
            if users:
                ulist = [{"user": u, "password": "pw-" + u,
                          "permissions": {"subscribe": list(sp), "publish": list(pp)}}
                         for u, (sp, pp) in users.items()]
            r = ref_nats.NatsServer(self.workdir, token=NATS_TOKEN if auth else None,
                                    users=ulist, max_payload=MAX_PAYLOAD)
            self.refs.append(r)
            r.start()
            s = Server("nats", r.port, users=users, ref=r)
        s.auth = bool(auth)
        return s

    def stop(self):
        problems = []
        for r in self.refs:
            if not r.alive():
                problems.append("nats-server died (exit %s):\n%s"
                                % (r.proc.returncode, r.log_tail()))
            r.stop()
        return problems


def _target(request, make_broker, tmp_path):
    kind = request.param
    if kind == "gale" and galetest.TARGET != "gale":
        pytest.skip("GALE_TARGET=%s" % galetest.TARGET)
    if kind == "nats" and not ref_nats.available():
        pytest.skip("nats-server is not installed")
    if kind == "nats" and os.environ.get("GALE_SKIP_REFERENCE"):
        pytest.skip("GALE_SKIP_REFERENCE: the reference server's half runs in the plain build")
    t = Target(kind, make_broker, str(tmp_path))
    yield t
    problems = t.stop()
    assert not problems, "\n".join(problems)


@pytest.fixture(params=["gale", "nats"])
def nt(request, make_broker, tmp_path):
    yield from _target(request, make_broker, tmp_path)


gale_param = pytest.mark.parametrize("nt", ["gale"], indirect=True)


@pytest.fixture
def srv(nt):
    """A server without authentication (max_payload 4096)."""
    return nt.start()


# ---------------------------------------------------------------------------------------
# Handshake
# ---------------------------------------------------------------------------------------

def test_info_first(srv):
    c = srv.client()
    info = c.read_info()
    assert info["proto"] == 1, info
    assert info["max_payload"] == MAX_PAYLOAD, info
    assert "headers" in info and isinstance(info["headers"], bool), info
    assert isinstance(info.get("server_id"), str) and info["server_id"], info
    assert not info.get("auth_required", False), info
    c.close()


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_connect_then_ping_pong(srv, text):
    c = srv.client(text=text)
    c.read_info()
    c.send('CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\n')
    c.send("PING\r\n")
    assert c.next() == ("PONG",)
    c.close()


def test_lower_case_operations(srv):
    c = srv.client()
    c.handshake()
    c.send("sub lc.x 1\r\npub lc.x 2\r\nhi\r\nping\r\n")
    assert c.next() == ("MSG", "lc.x", "1", None, b"hi")
    assert c.next() == ("PONG",)
    c.close()


def test_operations_before_connect_are_accepted_verbosely(srv):
    """nats-server (no authentication): a PUB before CONNECT is accepted and answered +OK,
    the options being verbose until CONNECT; the connection stays open."""
    watcher = srv.connected()
    watcher.sub("early.x", "1")
    watcher.expect_silence()
    c = srv.client()
    c.read_info()
    c.pub("early.x", "before connect")
    assert c.next() == ("+OK",)
    assert watcher.msgs(1) == [("MSG", "early.x", "1", None, b"before connect")]
    c.send(c.connect_op())
    c.expect_silence()
    c.close()
    watcher.close()


# ---------------------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------------------

def test_sub_pub_msg(srv):
    c = srv.connected()
    c.sub("a.b", "1")
    c.pub("a.b", "hello")
    assert c.msgs(1) == [("MSG", "a.b", "1", None, b"hello")]
    c.expect_silence()
    c.close()


def test_payload_bytes_exact(srv):
    sub, pub = srv.connected(), srv.connected()
    sub.sub("bin.x", "7")
    sub.expect_silence()
    payloads = [bytes(range(256)), b"", b"\r\n", b"MSG x 1 1\r\nz\r\n", b"\x00" * 100,
                "ünïcødé ✓".encode(), bytes(range(255, -1, -1)) * 4]
    for p in payloads:
        pub.pub("bin.x", p)
    got = sub.msgs(len(payloads))
    assert [m[4] for m in got] == payloads
    assert all(m[1:4] == ("bin.x", "7", None) for m in got), got
    sub.close()
    pub.close()


def test_payload_of_max_payload_accepted(srv):
    """Exactly max_payload bytes: the PUB line, the payload and its CRLF in three frames."""
    sub, pub = srv.connected(), srv.connected()
    sub.sub("big.x", "1")
    sub.expect_silence()
    payload = bytes(i % 251 for i in range(MAX_PAYLOAD))
    pub.send("PUB big.x %d\r\n" % MAX_PAYLOAD)
    pub.send(payload)
    pub.send("\r\n")
    pub.expect_silence()
    assert sub.msgs(1) == [("MSG", "big.x", "1", None, payload)]
    sub.close()
    pub.close()


def test_two_matching_subscriptions_one_msg_per_sid(srv):
    c = srv.connected()
    c.sub("a.*", "1")
    c.sub("a.b", "2")
    c.pub("a.b", "x")
    got = c.msgs(2)
    assert sorted(got) == [("MSG", "a.b", "1", None, b"x"), ("MSG", "a.b", "2", None, b"x")]
    c.expect_silence()
    c.pub("a.c", "y")
    assert c.msgs(1) == [("MSG", "a.c", "1", None, b"y")]
    c.expect_silence()
    c.close()


def test_each_subscriber_gets_its_own_sid(srv):
    """Subscribers of one message under the same and under other sids (gale shares the MSG
    frame of subscribers with the same sid): each MSG names its subscriber's sid."""
    cs = [srv.connected() for _ in range(5)]
    sids = ["1", "1", "sub-7", "1", "99"]
    for c, sid in zip(cs, sids):
        c.sub("s.t", sid)
        c.sync()
    p = srv.connected()
    for i in range(3):
        p.pub("s.t", "m%d" % i)
    for c, sid in zip(cs, sids):
        assert c.msgs(3) == [("MSG", "s.t", sid, None, b"m%d" % i) for i in range(3)]
        c.expect_silence()
        c.close()
    p.close()


def test_wildcards(srv):
    c = srv.connected()
    c.sub("w.*", "star")
    c.sub("w.>", "gt")
    c.sub("w.*.z", "mid")
    c.pub("w.a", "1")
    assert sorted(m[2] for m in c.msgs(2)) == ["gt", "star"]
    c.pub("w.a.b", "2")
    assert c.msgs(1) == [("MSG", "w.a.b", "gt", None, b"2")]
    c.pub("w.q.z", "3")
    assert sorted(m[2] for m in c.msgs(2)) == ["gt", "mid"]
    c.pub("w", "4")           # '>' needs at least one token
    c.pub("x.a", "5")
    c.expect_silence()
    c.close()


def test_unsub_stops(srv):
    c = srv.connected()
    c.sub("u.x", "1")
    c.pub("u.x", "a")
    assert c.msgs(1) == [("MSG", "u.x", "1", None, b"a")]
    c.unsub("1")
    c.pub("u.x", "b")
    c.expect_silence()
    c.unsub("99")               # an unknown sid: silently accepted
    c.expect_silence()
    c.close()


def test_unsub_with_max(srv):
    c = srv.connected()
    c.sub("m.x", "2")
    c.unsub("2", 2)
    for i in range(5):
        c.pub("m.x", str(i))
    assert [m[4] for m in c.msgs(2)] == [b"0", b"1"]
    c.expect_silence()
    c.close()


def test_unsub_with_max_after_some_delivered(srv):
    c = srv.connected()
    c.sub("m.y", "3")
    c.pub("m.y", "0")
    assert len(c.msgs(1)) == 1
    c.unsub("3", 2)             # one delivered already: one more
    for i in range(1, 4):
        c.pub("m.y", str(i))
    assert [m[4] for m in c.msgs(1)] == [b"1"]
    c.expect_silence()
    c.close()


def test_echo_false(srv):
    me = srv.connected(echo=False)
    other = srv.connected()
    me.sub("e.x", "1")
    other.sub("e.x", "9")
    me.expect_silence()
    other.expect_silence()
    me.pub("e.x", "mine")
    me.expect_silence()
    assert other.msgs(1) == [("MSG", "e.x", "9", None, b"mine")]
    other.pub("e.x", "theirs")
    assert me.msgs(1) == [("MSG", "e.x", "1", None, b"theirs")]
    me.close()
    other.close()


def test_reply_subject(srv):
    c = srv.connected()
    c.sub("a.b", "1")
    c.send("PUB a.b reply.x 5\r\nhello\r\n")
    assert c.msgs(1) == [("MSG", "a.b", "1", "reply.x", b"hello")]
    c.close()


def test_request_reply_across_connections(srv):
    requester, responder = srv.connected(), srv.connected()
    responder.sub("svc.echo", "1")
    requester.sub("_INBOX.r1", "1")
    responder.expect_silence()
    requester.expect_silence()
    requester.pub("svc.echo", "ping?", reply="_INBOX.r1")
    (_, subj, sid, reply, payload), = responder.msgs(1)
    assert (subj, reply, payload) == ("svc.echo", "_INBOX.r1", b"ping?")
    responder.pub(reply, b"pong!")
    assert requester.msgs(1) == [("MSG", "_INBOX.r1", "1", None, b"pong!")]
    requester.close()
    responder.close()


def test_verbose_ok_after_each_accepted_op(srv):
    c = srv.client()
    c.read_info()
    c.send(c.connect_op(verbose=True))
    assert c.next() == ("+OK",)
    c.sub("v.x", "1")
    assert c.next() == ("+OK",)
    c.pub("v.x", "p")
    got = [c.next(), c.next()]          # the PUB's +OK and its MSG to this connection
    assert sorted(got) == sorted([("+OK",), ("MSG", "v.x", "1", None, b"p")]), got
    c.unsub("1")
    assert c.next() == ("+OK",)
    c.send("PING\r\n")
    assert c.next() == ("PONG",)        # no +OK for PING
    c.close()


def test_line_split_across_frames(srv):
    c = srv.connected()
    c.send("SU")
    c.send("B sp")
    c.send("lit.x 4")
    c.send("2\r")
    c.send("\nPUB split.x 1")
    c.send("1\r\nhello")
    c.send(" worl")
    c.send("d\r")
    c.send("\n")
    assert c.msgs(1) == [("MSG", "split.x", "42", None, b"hello world")]
    c.send("PI")
    c.send("NG\r\n")
    assert c.next() == ("PONG",)
    c.close()


def test_several_ops_in_one_frame(srv):
    c = srv.connected()
    c.send("SUB f.a 1\r\nSUB f.b 2\r\nPUB f.a 2\r\nA1\r\nPUB f.b 2\r\nB2\r\n"
           "PUB f.a 2\r\nA3\r\nUNSUB 1\r\nPUB f.a 2\r\nA4\r\nPING\r\n")
    got = []
    while True:
        m = c.next()
        if m == ("PONG",):
            break
        got.append(m)
    assert got == [("MSG", "f.a", "1", None, b"A1"), ("MSG", "f.b", "2", None, b"B2"),
                   ("MSG", "f.a", "1", None, b"A3")]
    c.close()


def test_order_of_200_messages(srv):
    sub, pub = srv.connected(), srv.connected()
    sub.sub("ord.x", "1")
    sub.expect_silence()
    n = 200
    batch = b""
    for i in range(n):
        batch += NatsWS.pub_op("ord.x", "m%03d" % i)
        if i % 50 == 49:        # a few frames of 50 messages, and single ones
            pub.send(batch)
            batch = b""
    for i in range(n):
        pub.pub("ord.x", "s%03d" % i)
    got = sub.msgs(2 * n)
    assert [m[4] for m in got] == ([b"m%03d" % i for i in range(n)]
                                   + [b"s%03d" % i for i in range(n)])
    sub.expect_silence()
    sub.close()
    pub.close()


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------

def test_unknown_op_closes(srv):
    c = srv.connected()
    c.send("FOO\r\n")
    expect_err_and_close(c, "Unknown Protocol Operation", 1002)


def test_unknown_op_before_connect_closes(srv):
    c = srv.client()
    c.read_info()
    c.send("FOO bar\r\n")
    expect_err_and_close(c, "Unknown Protocol Operation", 1002)


def test_pub_over_max_payload_closes(srv):
    c = srv.connected()
    c.send("PUB p.x %d\r\n" % (MAX_PAYLOAD + 1))
    expect_err_and_close(c, "Maximum Payload Violation", 1009)


def test_pub_far_over_max_payload_closes(srv):
    watcher = srv.connected()
    watcher.sub("p.>", "1")
    watcher.expect_silence()
    c = srv.connected()
    c.send("PUB p.y 1000000\r\n" + "x" * 100)
    expect_err_and_close(c, "Maximum Payload Violation", 1009)
    watcher.expect_silence()
    watcher.close()


def test_control_line_over_4096_closes(srv):
    """A SUB line of 5,207 bytes in two frames (each under gale's --max-message)."""
    c = srv.connected()
    c.send("SUB " + "a" * 2600)
    c.send("a" * 2600 + " 1\r\n")
    expect_err_and_close(c, "maximum control line exceeded", 1008)


def test_control_line_without_end_closes(srv):
    c = srv.connected()
    c.send("SUB " + "b" * 2600)
    c.send("b" * 2600)
    expect_err_and_close(c, "maximum control line exceeded", 1008)


def test_sub_invalid_subject_keeps_open(srv):
    c = srv.connected()
    c.sub("a..b", "1")
    assert c.sync() == [("-ERR", "Invalid Subject")]
    c.sub("a.>.b", "2")
    assert c.sync() == [("-ERR", "Invalid Subject")]
    c.sub("ok.x", "3")          # still usable
    c.pub("ok.x", "fine")
    assert c.msgs(1) == [("MSG", "ok.x", "3", None, b"fine")]
    c.close()


@pytest.mark.parametrize("subject", ["a..b", "a.*", "a.>"])
def test_pub_invalid_subject_pedantic_keeps_open(srv, subject):
    """With pedantic, nats-server answers -ERR 'Invalid Publish Subject' and keeps the
    connection. (It still routes the message: "a.*" reaches a ">" subscriber there, so
    delivery is not checked but for a..b, which no subscription can match.)"""
    watcher = srv.connected()
    watcher.sub("ok.>", "1")
    watcher.sub("a.b", "2")
    watcher.expect_silence()
    c = srv.connected(pedantic=True)
    c.pub(subject, "x")
    assert c.sync() == [("-ERR", "Invalid Publish Subject")]
    c.pub("ok.x", "y")
    assert watcher.msgs(1) == [("MSG", "ok.x", "1", None, b"y")]
    watcher.expect_silence()
    c.close()
    watcher.close()


# ---------------------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------------------

@pytest.fixture
def auth_srv(nt):
    return nt.start(auth=True)


def test_auth_required_in_info(auth_srv):
    c = auth_srv.client()
    info = c.read_info()
    assert info.get("auth_required") is True, info
    assert info["proto"] == 1 and info["max_payload"] == MAX_PAYLOAD, info
    c.close()


@pytest.mark.parametrize("how", ["none", "wrong", "empty"])
def test_auth_refused_closes(auth_srv, how):
    c = auth_srv.client()
    c.read_info()
    if how == "none":
        opts = {}
    elif how == "wrong":
        opts = auth_srv.creds(wrong=True)
    else:
        opts = {"auth_token": ""}
    c.send(c.connect_op(**opts) + "PING\r\n")
    expect_err_and_close(c, "Authorization Violation", 1008)


@pytest.mark.parametrize("first", ["PUB ok.x 1\r\nx\r\n", "SUB ok.x 1\r\n", "PING\r\n"],
                         ids=["PUB", "SUB", "PING"])
def test_auth_op_before_connect_closes(auth_srv, first):
    c = auth_srv.client()
    c.read_info()
    c.send(first)
    expect_err_and_close(c, "Authorization Violation", 1008)


def test_auth_accepted(auth_srv):
    a = auth_srv.client()
    a.read_info()
    a.send(a.connect_op(**auth_srv.creds()) + "PING\r\n")
    assert a.next() == ("PONG",)
    b = auth_srv.connected()
    b.sub("ok.x", "1")
    b.expect_silence()
    a.pub("ok.x", "authorised")
    assert b.msgs(1) == [("MSG", "ok.x", "1", None, b"authorised")]
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------
# Permissions (gale: the token's grants; nats-server: users with permissions)
# ---------------------------------------------------------------------------------------

PERM_USERS = {"alice": (["a.>"], ["a.>"]), "watch": (["x.>", "a.>"], [])}


@pytest.fixture
def perm_srv(nt):
    return nt.start(users=PERM_USERS)


def test_permission_sub_violation_keeps_open(perm_srv):
    c = perm_srv.connected("alice")
    c.sub("a.b", "1")
    c.sub("x.y", "2")
    assert c.sync() == [("-ERR", 'Permissions Violation for Subscription to "x.y"')]
    c.pub("a.b", "still here")
    assert c.msgs(1) == [("MSG", "a.b", "1", None, b"still here")]
    c.close()


def test_permission_pub_violation_keeps_open(perm_srv):
    watcher = perm_srv.connected("watch")
    watcher.sub("x.>", "1")
    watcher.sub("a.>", "2")
    watcher.expect_silence()
    c = perm_srv.connected("alice")
    c.pub("x.y", "forbidden")
    assert c.sync() == [("-ERR", 'Permissions Violation for Publish to "x.y"')]
    c.pub("a.b", "allowed")
    assert watcher.msgs(1) == [("MSG", "a.b", "2", None, b"allowed")]
    watcher.expect_silence()
    c.close()
    watcher.close()


def test_permission_violation_no_ok_when_verbose(perm_srv):
    c = perm_srv.client()
    c.read_info()
    c.send(c.connect_op(verbose=True, **perm_srv.creds("alice")))
    assert c.next() == ("+OK",)
    c.sub("x.y", "1")
    c.pub("x.y", "no")
    assert c.sync() == [("-ERR", 'Permissions Violation for Subscription to "x.y"'),
                        ("-ERR", 'Permissions Violation for Publish to "x.y"')]
    c.close()


def test_permission_user_wrong_password_closes(perm_srv):
    c = perm_srv.client()
    c.read_info()
    c.send(c.connect_op(**perm_srv.creds("alice", wrong=True)))
    expect_err_and_close(c, "Authorization Violation", 1008)


# ---------------------------------------------------------------------------------------
# gale only: what gale refuses that nats-server accepts, and the bridge to gale clients
# ---------------------------------------------------------------------------------------

@pytest.mark.gale_only
@gale_param
def test_queue_group_refused_keeps_open(srv):
    c = srv.connected()
    c.sub("q.x", "1", queue="workers")
    errs = c.sync()
    assert len(errs) == 1 and errs[0][0] == "-ERR" and "queue group" in errs[0][1], errs
    c.pub("q.x", "not subscribed")
    c.expect_silence()
    c.sub("q.x", "2")
    c.pub("q.x", "now")
    assert c.msgs(1) == [("MSG", "q.x", "2", None, b"now")]
    c.close()


@pytest.mark.gale_only
@pytest.mark.parametrize("subject", ["a.b*", "a.*b", "a.>b", "x" * 300,
                                     ".".join(["t"] * 130)],
                         ids=["b-star", "star-b", "gt-b", "300-bytes", "259-bytes"])
@gale_param
def test_subject_gale_cannot_express(srv, subject):
    """Valid NATS subjects that are not gale patterns (a partial wildcard, over 255
    bytes): -ERR 'Invalid Subject', the connection stays open."""
    c = srv.connected()
    c.sub(subject, "1")
    assert c.sync() == [("-ERR", "Invalid Subject")]
    c.sub("ok.x", "2")
    c.pub("ok.x", "y")
    assert c.msgs(1) == [("MSG", "ok.x", "2", None, b"y")]
    c.close()


def _gale_sub(srv, topic):
    async def go():
        g = await connect(srv.broker.url)
        await g.sub(topic)
        return g
    return go()


@pytest.mark.gale_only
@gale_param
def test_nats_json_payload_reaches_gale_client_as_data(srv):
    async def go():
        g = await _gale_sub(srv, "br.json")
        n = srv.connected()
        n.pub("br.json", '{"x":1}')
        n.expect_silence()
        m = await g.recv()
        assert m["op"] == "msg" and m["topic"] == "br.json" and m["data"] == {"x": 1}, m
        assert "reply" not in m, m
        n.close()
        await g.close()
    run(go(), 20)


@pytest.mark.gale_only
@gale_param
def test_nats_binary_payload_reaches_gale_client_as_bin(srv):
    async def go():
        g = await _gale_sub(srv, "br.bin")
        n = srv.connected()
        n.pub("br.bin", "hello")
        n.pub("br.bin", bytes(range(256)))
        n.expect_silence()
        m = await g.recv()
        assert m["op"] == "msg" and m["topic"] == "br.bin", m
        assert "data" not in m and base64.b64decode(m["bin"]) == b"hello", m
        m = await g.recv()
        assert base64.b64decode(m["bin"]) == bytes(range(256)), m
        n.close()
        await g.close()
    run(go(), 20)


@pytest.mark.gale_only
@gale_param
def test_gale_pub_reaches_nats_subscriber_as_json_text(srv):
    async def go():
        n = srv.connected()
        n.sub("br.g", "5")
        n.expect_silence()
        g = await connect(srv.broker.url)
        await g.pub("br.g", {"k": 2})
        (_, subj, sid, reply, payload), = n.msgs(1)
        assert (subj, sid, reply) == ("br.g", "5", None)
        assert json.loads(payload) == {"k": 2}, payload
        n.close()
        await g.close()
    run(go(), 20)


@pytest.mark.gale_only
@gale_param
def test_nats_reply_subject_reaches_gale_client(srv):
    async def go():
        g = await _gale_sub(srv, "br.req")
        n = srv.connected()
        n.pub("br.req", '"question"', reply="the.reply")
        n.expect_silence()
        m = await g.recv()
        assert m["op"] == "msg" and m["data"] == "question", m
        assert m.get("reply") == "the.reply", m
        n.close()
        await g.close()
    run(go(), 20)
