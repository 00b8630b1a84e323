"""`gale pub`, `gale sub`, `gale hist` and `gale presence`, the command-line client, driven as
a person or a script would, against the real broker: arguments, stdin lines, files, JSON and
MessagePack, output formats, --count/--timeout, errors and their exit codes, --reconnect
across a broker restart, signals, the token query parameter and wss://; history, recovery
(sub --since), positions and idempotent publish (pub --mid) against a broker started with
--history; presence (gale presence, sub --presence, sub --info) against one started with
--presence.

The binary is $GALE_CLI (ctest sets it), else gale next to $GALE_BROKER, else build/gale.
Every wait is bounded.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import re

import pytest

import galetest
from galetest import HOST

GALE = os.environ.get("GALE_CLI") or os.path.join(
    os.path.dirname(os.environ.get("GALE_BROKER") or
                    os.path.join(galetest.SOURCE_DIR, "build", "gale-broker")), "gale")

pytestmark = [pytest.mark.gale_only,
              pytest.mark.skipif(not os.access(GALE, os.X_OK), reason="gale CLI not built")]

USAGE, SERVER, CONNECT, TIMEOUT, INTERRUPTED = 2, 1, 3, 4, 130


def cli_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    env.update(extra or {})
    return env


def gale(*args, input=None, env=None, timeout=20):
    """Runs `gale ARGS`; returns CompletedProcess with bytes stdout and text stderr."""
    p = subprocess.run([GALE, *args], input=input, capture_output=True, env=cli_env(env),
                       timeout=timeout)
    p.stderr = p.stderr.decode("utf-8", "replace")
    assert not any(m in p.stderr for m in galetest.SANITIZER_MARKERS), p.stderr
    return p


def pub(broker, *args, **kw):
    return gale("pub", "--url", broker.url, *args, **kw)


class Sub:
    """A background `gale sub -v`: stdout lines and stderr collected by threads."""

    def __init__(self, broker_or_url, *args, env=None):
        url = broker_or_url if isinstance(broker_or_url, str) else broker_or_url.url
        self.proc = subprocess.Popen([GALE, "sub", "-v", "--url", url, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=cli_env(env))
        self.out, self.err = [], []
        self.cond = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out),
                                         daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.err),
                                         daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self, f, into):
        for line in iter(f.readline, b""):
            with self.cond:
                into.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def stderr(self):
        with self.cond:
            return b"".join(self.err).decode("utf-8", "replace")

    def wait_for(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("gale sub: no %s within %.0fs; stderr:\n%s" % (
                        what, timeout, b"".join(self.err).decode("utf-8", "replace")[-3000:]))
                self.cond.wait(min(left, 0.2))

    def wait_subscribed(self, times=1, timeout=10.0):
        self.wait_for(lambda: sum(b"* subscribed to" in l for l in self.err) >= times, timeout,
                      "subscription ack")

    def wait_lines(self, n, timeout=10.0):
        self.wait_for(lambda: len(self.out) >= n, timeout, "%d output lines" % n)
        return self.lines()

    def lines(self):
        with self.cond:
            return [l.rstrip(b"\n").decode() for l in self.out]

    def wait(self, timeout=10.0):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("gale sub still running after %.0fs; stderr:\n%s"
                                 % (timeout, self.stderr()[-3000:])) from None
        for t in self.threads:
            t.join(5)
        err = self.stderr()
        assert not any(m in err for m in galetest.SANITIZER_MARKERS), err
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def subs():
    started = []

    def factory(*args, **kw):
        s = Sub(*args, **kw)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.kill()


# ---------------------------------------------------------------------------------------
# help, version, usage errors
# ---------------------------------------------------------------------------------------

def test_help_and_version():
    p = gale("--help")
    assert p.returncode == 0
    out = p.stdout.decode()
    for word in ("pub", "sub", "bench", "GALE_URL", "130", "usage error"):
        assert word in out, word
    for cmd in ("pub", "sub"):
        p = gale(cmd, "--help")
        assert p.returncode == 0, p.stderr
        text = p.stdout.decode()
        assert text.startswith("usage: gale %s" % cmd)
        assert "--url" in text and "--encoding" in text and "Exit status" in text
    p = gale("--version")
    assert p.returncode == 0 and p.stdout.decode().startswith("gale ")


def test_version_is_the_brokers():
    """`gale --version` and `gale -V` print "gale X" where `gale-broker --version` prints
    "gale-broker X": one project version."""
    broker = galetest.broker_binary()
    if not broker or not os.access(broker, os.X_OK):
        pytest.skip("no gale-broker binary (set GALE_BROKER)")
    b = subprocess.run([broker, "--version"], capture_output=True, text=True, env=cli_env(),
                       timeout=20)
    assert b.returncode == 0, b.stderr
    name, _, version = b.stdout.strip().partition(" ")
    assert name == "gale-broker" and version and version != "unknown", b.stdout
    for flag in ("--version", "-V"):
        p = gale(flag)
        assert p.returncode == 0, (flag, p.returncode, p.stderr)
        assert p.stdout.decode() == "gale %s\n" % version, (flag, p.stdout)
        assert p.stderr == "", (flag, p.stderr)


@pytest.mark.parametrize("args,needle", [
    (["pub", "--bogus", "t", "x"], "unknown option '--bogus'"),
    (["sub", "-q", "t"], "unknown option '-q'"),
    (["pub", "t", "x", "--url"], "option '--url' needs a value"),
    (["pub"], "missing TOPIC"),
    (["sub"], "missing PATTERN"),
    (["pub", "t", "a", "b"], "too many arguments"),
    (["pub", "--encoding", "xml", "t", "x"], "invalid --encoding 'xml'"),
    (["pub", "--url", "http://h/ws", "t", "x"], "invalid --url"),
    (["pub", "--repeat", "0", "t", "x"], "invalid --repeat"),
    (["sub", "--format", "yaml", "t"], "invalid --format"),
    (["sub", "--count", "-1", "t"], "invalid --count"),
    (["pub", "--file", "/nonexistent/x", "t"], "cannot open --file"),
    (["pub", "--file", "/etc/hostname", "--encoding", "json", "t"], "--encoding msgpack"),
    (["pub", "--file", "/etc/hostname", "t", "data"], "either DATA or --file"),
])
def test_usage_errors_exit_2(args, needle):
    p = gale(*args)
    assert p.returncode == USAGE, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert "--help" in p.stderr
    assert p.stdout == b""


@pytest.mark.parametrize("topic,why", [("a..b", "invalid topic 'a..b'"),
                                       ("a b", "invalid topic 'a b'"),
                                       ("chat.*", "cannot publish to a pattern"),
                                       ("x" * 256, "invalid topic")])
def test_bad_topic_exit_2(topic, why):
    p = gale("pub", "--url", "ws://127.0.0.1:1/ws", topic, "data")
    assert p.returncode == USAGE, p.stderr
    assert why in p.stderr, p.stderr


def test_bad_pattern_exit_2():
    p = gale("sub", "--url", "ws://127.0.0.1:1/ws", "a.>.b")
    assert p.returncode == USAGE
    assert "invalid pattern 'a.>.b'" in p.stderr


def test_invalid_json_argument_exit_2():
    p = gale("pub", "--url", "ws://127.0.0.1:1/ws", "--json", "t", "{nope")
    assert p.returncode == USAGE
    assert "DATA is not valid JSON: {nope" in p.stderr


# ---------------------------------------------------------------------------------------
# publishing and printing
# ---------------------------------------------------------------------------------------

def test_pub_argument_default_format(broker, topic, subs):
    s = subs(broker, "--count", "3", topic + ".>")
    s.wait_subscribed()
    assert pub(broker, topic + ".a", "hello world").returncode == 0
    assert pub(broker, "--json", topic + ".b", '{"x": [1, 2.5, "y"], "n": null}').returncode == 0
    assert pub(broker, "--json", topic + ".c", " 42 ").returncode == 0
    assert s.wait() == 0, s.stderr()
    assert s.lines() == ['%s.a "hello world"' % topic,
                         '%s.b {"x":[1,2.5,"y"],"n":null}' % topic,
                         '%s.c 42' % topic]


def test_sub_formats(broker, topic, subs):
    line = subs(broker, "--count", "2", topic)
    js = subs(broker, "--count", "2", "--format", "json", topic)
    data = subs(broker, "--count", "2", "--format", "data", topic)
    for s in (line, js, data):
        s.wait_subscribed()
    assert pub(broker, topic, 'quote " and \\ and\ttab').returncode == 0
    assert pub(broker, "--json", topic, '{"a":\n {"b": true}}').returncode == 0
    for s in (line, js, data):
        assert s.wait() == 0, s.stderr()
    assert line.lines() == ['%s "quote \\" and \\\\ and\\ttab"' % topic,
                            '%s {"a":{"b":true}}' % topic]
    objs = [json.loads(l) for l in js.lines()]
    assert objs == [{"topic": topic, "data": 'quote " and \\ and\ttab'},
                    {"topic": topic, "data": {"a": {"b": True}}}]
    assert data.lines() == ['"quote \\" and \\\\ and\\ttab"', '{"a":{"b":true}}']


def test_stdin_lines_in_order(broker, topic, subs):
    """1000 lines piped into gale pub reach a subscriber started before, in order."""
    s = subs(broker, "--count", "1000", "--format", "data", topic)
    s.wait_subscribed()
    lines = "".join("line %d\n" % i for i in range(1000)).encode()
    p = pub(broker, topic, input=lines)
    assert p.returncode == 0, p.stderr
    assert s.wait(30) == 0, s.stderr()
    assert s.lines() == ['"line %d"' % i for i in range(1000)]


def test_two_publishers_each_in_order(broker, topic, subs):
    s = subs(broker, "--count", "1000", topic + ".>")
    s.wait_subscribed()
    procs = [subprocess.Popen([GALE, "pub", "--url", broker.url, "--json", "%s.p%d" % (topic, k)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=cli_env()) for k in range(2)]
    outs = []
    for p in procs:
        p.stdin.write("".join("%d\n" % i for i in range(500)).encode())
        p.stdin.close()
    for p in procs:
        outs.append(p.wait(30))
        assert outs[-1] == 0, p.stderr.read()
        p.stderr.close()
    assert s.wait(30) == 0, s.stderr()
    got = {0: [], 1: []}
    for l in s.lines():
        t, d = l.split(" ", 1)
        got[int(t.rsplit(".p", 1)[1])].append(int(d))
    assert got == {0: list(range(500)), 1: list(range(500))}


def test_stdin_json_lines_blank_lines_skipped(broker, topic, subs):
    s = subs(broker, "--count", "3", "--format", "data", topic)
    s.wait_subscribed()
    p = pub(broker, "--json", topic, input=b'{"a": 1}\n\n  \n[true, false]\r\n"s"')
    # "  " is not valid JSON: only empty lines are skipped
    assert p.returncode == USAGE, p.stderr
    assert "line 3 of stdin is not valid JSON" in p.stderr
    p = pub(broker, "--json", topic, input=b'{"a": 1}\n\n[true, false]\r\n"s"')
    assert p.returncode == 0, p.stderr
    assert s.wait() == 0, s.stderr()
    assert s.lines() == ['{"a":1}', '{"a":1}', '[true,false]']


def test_invalid_json_line_names_it_and_earlier_lines_were_published(broker, topic, subs):
    s = subs(broker, "--count", "2", "--format", "data", topic)
    s.wait_subscribed()
    p = pub(broker, "--json", topic, input=b'1\n2\n{"broken": \n4\n')
    assert p.returncode == USAGE, p.stderr
    assert 'line 3 of stdin is not valid JSON: {"broken":' in p.stderr
    assert s.wait() == 0
    assert s.lines() == ["1", "2"]


def test_repeat_and_rate(broker, topic, subs):
    s = subs(broker, "--count", "5", "--format", "data", topic)
    s.wait_subscribed()
    t0 = time.monotonic()
    p = pub(broker, "--repeat", "5", "--rate", "20", topic, "r")
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert s.wait() == 0
    assert s.lines() == ['"r"'] * 5
    assert elapsed >= 0.15, elapsed   # 5 messages at 20/s: 4 gaps of 50 ms


@pytest.mark.needs_msgpack
def test_msgpack_both_ways(broker, topic, subs):
    js = subs(broker, "--count", "2", "--format", "data", topic)
    mp = subs(broker, "--count", "2", "--format", "data", "--encoding", "msgpack", topic)
    js.wait_subscribed()
    mp.wait_subscribed()
    assert pub(broker, "--encoding", "msgpack", "--json", topic,
               '{"int": 1, "neg": -2, "f": 2.5, "s": "\\u00e9", "l": [null]}').returncode == 0
    assert pub(broker, "--encoding", "msgpack", topic, "plain").returncode == 0
    assert js.wait() == 0 and mp.wait() == 0
    want = [{"int": 1, "neg": -2, "f": 2.5, "s": "\u00e9", "l": [None]}, "plain"]
    assert [json.loads(l) for l in js.lines()] == want
    assert [json.loads(l) for l in mp.lines()] == want


@pytest.mark.needs_msgpack
def test_msgpack_frames_on_the_wire(broker, topic):
    async def go():
        c = await galetest.connect(broker.url, galetest.MSGPACK)
        await c.sub(topic)
        p = pub(broker, "--encoding", "msgpack", "--json", topic, "[1, 2.5]")
        assert p.returncode == 0, p.stderr
        m = await c.recv()
        await c.close()
        return m
    m = galetest.run(go())
    assert m == {"op": "msg", "topic": topic, "data": [1, 2.5]}


@pytest.mark.needs_msgpack
def test_pub_file_is_one_binary_message(broker, topic, subs, tmp_path):
    blob = bytes(range(256)) * 40 + b"\n\x00tail"
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    js = subs(broker, "--count", "1", "--format", "json", topic)
    mp = subs(broker, "--count", "1", "--encoding", "msgpack", topic)
    js.wait_subscribed()
    mp.wait_subscribed()

    async def raw():
        c = await galetest.connect(broker.url, galetest.MSGPACK)
        await c.sub(topic)
        p = pub(broker, "--file", str(path), topic)   # --encoding msgpack is implied
        assert p.returncode == 0, p.stderr
        m = await c.recv()
        await c.close()
        return m
    m = galetest.run(raw())
    assert m["data"] == blob and isinstance(m["data"], bytes)
    assert js.wait() == 0 and mp.wait() == 0
    obj = json.loads(js.lines()[0])
    assert obj["topic"] == topic and base64.b64decode(obj["bin"]) == blob
    t, d = mp.lines()[0].split(" ", 1)
    assert t == topic and base64.b64decode(json.loads(d)) == blob


def test_pub_file_from_stdin(broker, topic, subs):
    s = subs(broker, "--count", "1", "--format", "json", topic)
    s.wait_subscribed()
    p = pub(broker, "--file", "-", topic, input=b"a\nb\n")
    assert p.returncode == 0, p.stderr
    assert s.wait() == 0
    assert base64.b64decode(json.loads(s.lines()[0])["bin"]) == b"a\nb\n"


def test_count_exits_after_n(broker, topic, subs):
    s = subs(broker, "--count", "2", topic)
    s.wait_subscribed()
    p = pub(broker, "--repeat", "10", topic, "x")
    assert p.returncode == 0
    assert s.wait() == 0
    assert len(s.lines()) == 2


def test_sub_timeout(broker, topic):
    t0 = time.monotonic()
    p = gale("sub", "--url", broker.url, "--count", "1", "--timeout", "0.5", topic)
    assert p.returncode == TIMEOUT, p.stderr
    assert "timed out after 0.5 s with 0 of 1 messages" in p.stderr
    assert time.monotonic() - t0 < 5
    p = gale("sub", "--url", broker.url, "--timeout", "0.3", topic)
    assert p.returncode == 0, p.stderr


def test_gale_url_environment(broker, topic, subs):
    s = subs(broker, "--count", "1", topic)
    s.wait_subscribed()
    p = gale("pub", topic, "via env", env={"GALE_URL": broker.url})
    assert p.returncode == 0, p.stderr
    assert s.wait() == 0 and s.lines() == ['%s "via env"' % topic]


def test_verbose_logs_frames(broker, topic):
    p = gale("pub", "-v", "--url", broker.url, topic, "v")
    assert p.returncode == 0
    assert '> {"op":"pub","id":1,"topic":"%s","data":"v"}' % topic in p.stderr
    assert '< {"op":"ack","id":1}' in p.stderr
    assert '< {"op":"hello"' in p.stderr


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def test_connection_refused_exit_3():
    port = galetest.free_port()
    url = "ws://127.0.0.1:%d/ws" % port
    for cmd in (["pub", "--url", url, "t", "x"], ["sub", "--url", url, "t"]):
        p = gale(*cmd)
        assert p.returncode == CONNECT, p.stderr
        assert "cannot connect to %s: connection refused" % url in p.stderr


def test_unresolvable_host_exit_3():
    p = gale("pub", "--url", "ws://no-such-host.invalid/ws", "t", "x")
    assert p.returncode == CONNECT, p.stderr
    assert "cannot resolve host 'no-such-host.invalid'" in p.stderr


def test_handshake_refused_exit_3(broker):
    url = "ws://127.0.0.1:%d/nope" % broker.port
    p = gale("pub", "--url", url, "t", "x")
    assert p.returncode == CONNECT, p.stderr
    assert "handshake refused by %s: HTTP 404" % url in p.stderr


def test_server_err_exit_1(make_broker, topic):
    b = make_broker(["--max-subscriptions", "1"])
    p = gale("sub", "--url", b.url, topic + ".a", topic + ".b", timeout=10)
    assert p.returncode == SERVER, p.stderr
    assert "server error limit:" in p.stderr and "(pattern '%s.b')" % topic in p.stderr


def test_too_large_exit_1(make_broker, topic):
    b = make_broker(["--max-message", "200"])
    p = gale("pub", "--url", b.url, topic, "x" * 300)
    assert p.returncode == SERVER, p.stderr
    assert "too_large: message 1 is" in p.stderr and "at most 200" in p.stderr


def test_pub_with_empty_stdin_succeeds(broker, topic):
    p = pub(broker, topic, input=b"")
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------------------------------
# token, signals, reconnect
# ---------------------------------------------------------------------------------------

class OneShotHTTP:
    """Accepts one connection, records its request head, answers with `status`."""

    def __init__(self, status=403, tls_context=None):
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.request = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        conn.settimeout(5)
        try:
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                self.request += chunk
            conn.sendall(b"HTTP/1.1 %d Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                         % self.status)
        finally:
            conn.close()
            self.sock.close()


def test_token_is_sent_as_query_parameter():
    srv = OneShotHTTP(403)
    url = "ws://127.0.0.1:%d/ws" % srv.port
    p = gale("pub", "--url", url, "t", "x", env={"GALE_TOKEN": "s3cret/+ x"})
    srv.thread.join(5)
    first = srv.request.split(b"\r\n", 1)[0]
    assert first == b"GET /ws?token=s3cret%2F%2B%20x HTTP/1.1", srv.request
    assert b"Sec-WebSocket-Protocol: gale.v1.json" in srv.request
    assert p.returncode == CONNECT
    assert "handshake refused by %s: HTTP 403 (check --token" % url in p.stderr

    srv = OneShotHTTP(401)
    p = gale("sub", "--url", "ws://127.0.0.1:%d/ws?x=1" % srv.port, "--token", "t2",
             "--encoding", "msgpack", "t", env={"GALE_TOKEN": "ignored"})
    srv.thread.join(5)
    assert srv.request.startswith(b"GET /ws?x=1&token=t2 HTTP/1.1"), srv.request
    assert b"Sec-WebSocket-Protocol: gale.v1.msgpack" in srv.request
    assert p.returncode == CONNECT


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sub_interrupted_exit_130(broker, topic, subs, sig):
    s = subs(broker, topic)
    s.wait_subscribed()
    s.proc.send_signal(sig)
    assert s.wait() == INTERRUPTED
    assert "closing (1000)" in s.stderr()


def test_pub_interrupted_exit_130(broker, topic, subs):
    s = subs(broker, "--format", "data", topic)
    s.wait_subscribed()
    p = subprocess.Popen([GALE, "pub", "--url", broker.url, topic], stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    p.stdin.write(b"first\n")
    p.stdin.flush()
    s.wait_lines(1)
    p.send_signal(signal.SIGINT)   # stdin still open
    try:
        rc = p.wait(10)
    finally:
        p.kill()
        p.stdin.close()
        p.stderr.close()
    assert rc == INTERRUPTED
    assert s.lines() == ['"first"']


def test_reconnect_survives_broker_restart(make_broker, topic, subs):
    b = make_broker()
    port = b.port
    s = subs(b, "--reconnect", "--format", "data", topic)
    s.wait_subscribed()
    assert pub(b, topic, "before").returncode == 0
    s.wait_lines(1)
    assert b.stop() == 0
    s.wait_for(lambda: b"reconnecting in" in b"".join(s.err), 10, "reconnect notice")
    time.sleep(0.5)   # a few refused attempts while the broker is down
    b.start(port=port)
    s.wait_subscribed(times=2, timeout=15)
    assert pub(b, topic, "after").returncode == 0
    assert s.wait_lines(2) == ['"before"', '"after"']
    err = s.stderr()
    assert "lost: closed by the broker with 1001" in err, err
    assert s.proc.poll() is None
    s.proc.send_signal(signal.SIGINT)
    assert s.wait() == INTERRUPTED


def test_without_reconnect_a_lost_connection_is_exit_3(make_broker, topic, subs):
    b = make_broker()
    s = subs(b, topic)
    s.wait_subscribed()
    assert b.stop() == 0
    assert s.wait() == CONNECT
    assert "connection to %s lost" % b.url in s.stderr()


def test_sub_output_into_closed_pipe(broker, topic):
    """gale sub | head -1: stops quietly when the reader goes away."""
    sh = "%s sub --url %s %s | head -n 1" % (GALE, broker.url, topic)
    p = subprocess.Popen(["/bin/sh", "-c", sh], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=cli_env())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and p.poll() is None:
        assert pub(broker, topic, "x").returncode == 0
        time.sleep(0.1)
    out, err = p.communicate(timeout=10)
    assert out == b'%s "x"\n' % topic.encode()
    assert err == b""


# ---------------------------------------------------------------------------------------
# wss:// through a TLS terminator in front of the broker
# ---------------------------------------------------------------------------------------

class TLSProxy:
    """TLS on a local port, forwarding the plain bytes to the broker (asyncio, own thread)."""

    def __init__(self, certfile, keyfile, target_port):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certfile, keyfile)
        self.target = target_port
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # refused handshakes
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, HOST, 0, ssl=ctx))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "TLS proxy did not start"

    async def _handle(self, reader, writer):
        try:
            ur, uw = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.close()
            return

        async def pipe(a, b):
            try:
                while True:
                    data = await a.read(65536)
                    if not data:
                        break
                    b.write(data)
                    await b.drain()
            except Exception:
                pass
            finally:
                try:
                    b.close()
                except Exception:
                    pass
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    def close(self):
        async def stop():
            self.server.close()
            await self.server.wait_closed()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.thread.is_alive():
            self.loop.close()


@pytest.fixture
def tls_cert(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl command not found")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], capture_output=True, timeout=60)
    if r.returncode != 0:
        pytest.skip("openssl req failed: %s" % r.stderr.decode()[-300:])
    return str(cert), str(key)


def test_wss_cafile_insecure_and_verification_failure(broker, topic, subs, tls_cert):
    proxy = TLSProxy(*tls_cert, broker.port)
    try:
        url = "wss://127.0.0.1:%d/ws" % proxy.port
        s = subs(url, "--cafile", tls_cert[0], "--count", "2", "--format", "data", topic)
        s.wait_subscribed()
        p = gale("pub", "--url", url, "--insecure", topic, "insecure")
        assert p.returncode == 0, p.stderr
        p = gale("pub", "--url", url, "--cafile", tls_cert[0], topic, "verified")
        assert p.returncode == 0, p.stderr
        assert s.wait() == 0, s.stderr()
        assert s.lines() == ['"insecure"', '"verified"']
        p = gale("pub", "--url", url, topic, "unverified")   # self-signed, no --cafile
        assert p.returncode == CONNECT, p.stderr
        assert "TLS handshake with %s failed" % url in p.stderr
        assert "--cafile" in p.stderr
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------
# history, recovery, idempotent publish: sub --since, hist, pub --mid, positions
# (docs/PROTOCOL.md "Additions"; the broker keeps history with --history PATTERN=SIZE)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["sub", "--since", "abc", "t"], "invalid --since 'abc': no ':' between EP and OFF"),
    (["sub", "--since", ":3", "t"], "invalid --since ':3': EP (the epoch) is empty"),
    (["sub", "--since", "e:", "t"], "invalid --since 'e:': OFF is not a whole number >= 0"),
    (["sub", "--since", "e:x", "t"], "invalid --since 'e:x': OFF is not a whole number >= 0"),
    (["sub", "--since", "e:-1", "t"], "invalid --since 'e:-1': OFF is not a whole number >= 0"),
    (["sub", "--since", "e:+1", "t"], "OFF is not a whole number >= 0"),
    (["sub", "--since", "e:18446744073709551616", "t"], "OFF is too large"),
    (["sub", "--since", "e" * 65 + ":1", "t"], "EP is longer than 64 bytes"),
    (["sub", "--since", "e:1", "a", "b"], "--since takes exactly one TOPIC (got 2)"),
    (["sub", "--since", "e:1", "a.*"], "--since needs a topic, not a pattern: 'a.*'"),
    (["sub", "--since", "e:1", "a.>"], "--since needs a topic, not a pattern: 'a.>'"),
    (["sub", "--since"], "option '--since' needs a value"),
    (["pub", "--mid", "", "t", "x"], "invalid --mid '': 1 to 64 bytes"),
    (["pub", "--mid", "m" * 65, "t", "x"], "invalid --mid '%s': 1 to 64 bytes" % ("m" * 65)),
    (["pub", "--mid", "m" * 62, "--repeat", "10", "t", "x"],
     "message 10 would carry the mid '%s-10', longer than 64 bytes" % ("m" * 62)),
    (["hist"], "missing TOPIC"),
    (["hist", "a", "b"], "too many arguments"),
    (["hist", "a.>"], "history is kept per topic, not per pattern"),
    (["hist", "a..b"], "invalid topic 'a..b'"),
    (["hist", "--limit", "-1", "t"], "invalid --limit '-1'"),
    (["hist", "--limit", "x", "t"], "invalid --limit 'x'"),
    (["hist", "--format", "yaml", "t"], "invalid --format 'yaml'"),
    (["hist", "--bogus", "t"], "unknown option '--bogus'"),
])
def test_additions_usage_errors_exit_2(args, needle):
    p = gale(*args[:1], "--url", "ws://127.0.0.1:1/ws", *args[1:])
    assert p.returncode == USAGE, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert "Try 'gale %s --help'." % args[0] in p.stderr
    assert p.stdout == b""


def test_help_lists_the_additions():
    out = gale("--help").stdout.decode()
    assert "hist" in out
    p = gale("hist", "--help")
    assert p.returncode == 0 and p.stdout.decode().startswith("usage: gale hist")
    assert "--limit" in p.stdout.decode() and "Exit status" in p.stdout.decode()
    assert "--since EP:OFF" in gale("sub", "--help").stdout.decode()
    assert "--mid MID" in gale("pub", "--help").stdout.decode()


def history_broker(make_broker, topic, size=100):
    """A broker keeping SIZE messages of every topic under TOPIC.h (TOPIC.plain: none)."""
    return make_broker(["--history", "%s.h.>=%d" % (topic, size)])


def position(b, t):
    """(ep, off) of topic t, as a plain WebSocket client's sub ack reports it."""
    async def go():
        c = await galetest.connect(b.url)
        ack = await c.sub(t)
        await c.close()
        return ack
    ack = galetest.run(go())
    assert isinstance(ack.get("ep"), str) and ack["ep"], ack
    return ack["ep"], ack["off"]


def test_sub_since_recovers_missed_messages(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    t = topic + ".h.room"
    p = pub(b, t, input=b"one\ntwo\nthree\n")   # nobody subscribed
    assert p.returncode == 0, p.stderr
    ep, off = position(b, t)
    assert off == 3

    s = subs(b, "--since", "%s:0" % ep, "--format", "json", t)
    s.wait_subscribed()
    got = [json.loads(l) for l in s.wait_lines(3)]
    assert got == [{"topic": t, "ep": ep, "off": k + 1, "data": d}
                   for k, d in enumerate(["one", "two", "three"])]
    err = s.stderr()
    assert "gale sub: recovered 3 missed messages of %s after %s:0; position %s:3" % (
        t, ep, ep) in err, err
    # The recovery line comes with the ack, before the subscription is reported.
    assert err.index("recovered 3 missed") < err.index("* subscribed to")

    assert pub(b, t, "four").returncode == 0   # then live
    assert json.loads(s.wait_lines(4)[3]) == {"topic": t, "ep": ep, "off": 4, "data": "four"}
    s.proc.send_signal(signal.SIGINT)
    assert s.wait() == INTERRUPTED
    assert "last position %s:4 (resume with --since %s:4)" % (ep, ep) in s.stderr()

    # Resuming after offset 2: the two after it, nothing twice.
    p = gale("sub", "--url", b.url, "--since", "%s:2" % ep, "--format", "data", "--timeout",
             "1", t)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == ['"three"', '"four"']
    assert "recovered 2 missed messages of %s after %s:2; position %s:4" % (t, ep, ep) \
        in p.stderr
    # Nothing missed: recovered, none replayed.
    p = gale("sub", "--url", b.url, "--since", "%s:4" % ep, "--timeout", "1", t)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    assert "recovered 0 missed messages of %s after %s:4; position %s:4" % (t, ep, ep) \
        in p.stderr


@pytest.mark.needs_msgpack
def test_sub_since_over_msgpack(make_broker, topic):
    b = history_broker(make_broker, topic)
    t = topic + ".h.mp"
    assert pub(b, "--json", t, input=b'{"n": 1}\n[2]\n').returncode == 0
    ep, _ = position(b, t)
    p = gale("sub", "--url", b.url, "--encoding", "msgpack", "--since", "%s:1" % ep,
             "--format", "json", "--timeout", "1", t)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"topic": t, "ep": ep, "off": 2, "data": [2]}
    assert "recovered 1 missed message of" in p.stderr, p.stderr


def test_sub_since_not_recovered(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    t = topic + ".h.x"
    assert pub(b, "--repeat", "2", t, "old").returncode == 0
    ep, _ = position(b, t)
    # An epoch the broker never had: nothing replayed, live from the current position.
    s = subs(b, "--since", "not-%s:1" % ep, "--format", "json", t)
    s.wait_subscribed()
    err = s.stderr()
    assert ("gale sub: not recovered: the broker cannot replay %s after not-%s:1" % (t, ep)) \
        in err, err
    assert "live from position %s:2" % ep in err
    assert pub(b, t, "new").returncode == 0
    assert [json.loads(l) for l in s.wait_lines(1)] == [
        {"topic": t, "ep": ep, "off": 3, "data": "new"}]
    # An offset above the current one is not recovered either.
    p = gale("sub", "--url", b.url, "--since", "%s:9" % ep, "--timeout", "1", t)
    assert p.returncode == 0, p.stderr
    assert "not recovered: the broker cannot replay %s after %s:9" % (t, ep) in p.stderr
    # A topic without history: said so; live all the same.
    plain = topic + ".plain"
    s2 = subs(b, "--since", "%s:0" % ep, "--format", "json", plain)
    s2.wait_subscribed()
    assert "gale sub: not recovered: %s keeps no history on this broker" % plain in s2.stderr()
    assert pub(b, plain, "p").returncode == 0
    assert [json.loads(l) for l in s2.wait_lines(1)] == [{"topic": plain, "data": "p"}]
    s2.proc.send_signal(signal.SIGINT)
    assert s2.wait() == INTERRUPTED
    assert "last position" not in s2.stderr()


def test_sub_positions_in_json_format_only(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    hist_t, plain = topic + ".h.pos", topic + ".plain"
    js = subs(b, "--count", "3", "--format", "json", topic + ".>")
    line = subs(b, "--count", "3", topic + ".>")
    data = subs(b, "--count", "3", "--format", "data", topic + ".>")
    for s in (js, line, data):
        s.wait_subscribed()
    ep, _ = position(b, hist_t)
    assert pub(b, "--json", hist_t, '{"a": 1}').returncode == 0
    assert pub(b, plain, "no position").returncode == 0
    assert pub(b, "--json", hist_t, "2").returncode == 0
    for s in (js, line, data):
        assert s.wait() == 0, s.stderr()
    # Positions: a wildcard subscription gets them too; key order topic, ep, off, data.
    assert js.lines() == [
        '{"topic":"%s","ep":%s,"off":1,"data":{"a":1}}' % (hist_t, json.dumps(ep)),
        '{"topic":"%s","data":"no position"}' % plain,
        '{"topic":"%s","ep":%s,"off":2,"data":2}' % (hist_t, json.dumps(ep))]
    assert line.lines() == ['%s {"a":1}' % hist_t, '%s "no position"' % plain, '%s 2' % hist_t]
    assert data.lines() == ['{"a":1}', '"no position"', "2"]


def test_hist_limit_and_formats(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    t = topic + ".h.log"
    lines = b"".join(b'{"n": %d}\n' % i for i in range(1, 6))
    assert pub(b, "--json", t, input=lines).returncode == 0
    ep, off = position(b, t)
    assert off == 5

    p = gale("hist", "--url", b.url, t)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == ['%s {"n":%d}' % (t, i) for i in range(1, 6)]
    assert p.stderr == ""

    p = gale("hist", "--url", b.url, "--limit", "2", "--format", "json", t)
    assert p.returncode == 0, p.stderr
    assert [json.loads(l) for l in p.stdout.decode().splitlines()] == [
        {"topic": t, "ep": ep, "off": 4, "data": {"n": 4}},
        {"topic": t, "ep": ep, "off": 5, "data": {"n": 5}}]

    p = gale("hist", "--url", b.url, "--limit", "3", "--format", "data", "-v", t)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == ['{"n":3}', '{"n":4}', '{"n":5}']
    assert "* 3 messages of %s; position %s:5" % (t, ep) in p.stderr

    p = gale("hist", "--url", b.url, "--limit", "0", "-v", t)
    assert p.returncode == 0 and p.stdout == b"", p.stderr
    assert "* 0 messages of %s; position %s:5" % (t, ep) in p.stderr

    # hist, then sub --since its position: history and live without a gap.
    s = subs(b, "--since", "%s:5" % ep, "--count", "1", "--format", "data", t)
    s.wait_subscribed()
    assert pub(b, "--json", t, "6").returncode == 0
    assert s.wait() == 0
    assert s.lines() == ["6"]


@pytest.mark.needs_msgpack
def test_hist_msgpack_and_binary(make_broker, topic, tmp_path):
    b = history_broker(make_broker, topic)
    t = topic + ".h.bin"
    blob = bytes(range(256))
    path = tmp_path / "blob"
    path.write_bytes(blob)
    assert pub(b, "--json", t, '{"s": "\\u00e9"}').returncode == 0
    assert pub(b, "--file", str(path), t).returncode == 0
    ep, _ = position(b, t)
    outs = []
    for enc in ("json", "msgpack"):
        p = gale("hist", "--url", b.url, "--encoding", enc, "--format", "json", t)
        assert p.returncode == 0, p.stderr
        outs.append([json.loads(l) for l in p.stdout.decode().splitlines()])
    for objs in outs:
        assert objs[0] == {"topic": t, "ep": ep, "off": 1, "data": {"s": "\u00e9"}}
        assert set(objs[1]) == {"topic", "ep", "off", "bin"} and objs[1]["off"] == 2
        assert base64.b64decode(objs[1]["bin"]) == blob


def test_hist_topic_without_history(make_broker, topic):
    b = history_broker(make_broker, topic)
    t = topic + ".plain"
    assert pub(b, t, "gone").returncode == 0
    p = gale("hist", "--url", b.url, "--format", "json", t)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    assert "gale hist: %s keeps no history on this broker" % t in p.stderr


def test_hist_errors(make_broker, topic):
    # A server err: the token does not allow subscribing to the topic.
    secret = "test-secret-for-gale-0123456789abcdef"
    b = make_broker(["--history", "%s.h.>=10" % topic, "--jwt-secret", secret])
    token = hs256_token({"sub": "cli", "exp": int(time.time()) + 300,
                         "gale": {"sub": ["other.>"], "pub": [">"]}}, secret)
    p = gale("hist", "--url", b.url, "--token", token, topic + ".h.x")
    assert p.returncode == SERVER, p.stderr
    assert "gale hist: server error forbidden:" in p.stderr
    assert p.stdout == b""
    # Nobody listening.
    url = "ws://127.0.0.1:%d/ws" % galetest.free_port()
    p = gale("hist", "--url", url, topic + ".h.x")
    assert p.returncode == CONNECT, p.stderr
    assert "cannot connect to %s: connection refused" % url in p.stderr


def hs256_token(claims, secret):
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (head, body, b64(sig))


@pytest.mark.parametrize("kind", ["h", "plain"])
def test_pub_mid_twice_is_delivered_once(make_broker, topic, subs, kind):
    b = history_broker(make_broker, topic)
    t = "%s.%s.orders" % (topic, kind) if kind == "h" else topic + ".plain"
    s = subs(b, "--format", "json", t)
    s.wait_subscribed()
    p = pub(b, "--mid", "order-1", t, "once")
    assert p.returncode == 0, p.stderr
    assert "duplicate" not in p.stderr
    p = pub(b, "--mid", "order-1", t, "once")
    assert p.returncode == 0, p.stderr   # a duplicate is not an error
    at = " at offset 1" if kind == "h" else ""
    assert ("gale pub: message 1 is a duplicate (mid 'order-1'): the broker already had "
            "it%s and did not deliver it again" % at) in p.stderr, p.stderr
    p = pub(b, "-v", "--mid", "order-2", t, "next")
    assert p.returncode == 0, p.stderr
    assert '"mid":"order-2"' in p.stderr   # -v shows the frame
    got = [json.loads(l) for l in s.wait_lines(2)]
    assert [g["data"] for g in got] == ["once", "next"]
    if kind == "h":
        assert [g["off"] for g in got] == [1, 2]
    else:
        assert all("off" not in g for g in got)
    assert len(s.lines()) == 2


def test_pub_mid_numbers_stdin_lines(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    t = topic + ".h.batch"
    s = subs(b, "--format", "data", t)
    s.wait_subscribed()
    assert pub(b, "--mid", "batch", t, input=b"a\n\nb\n").returncode == 0
    # The same input again: every message a duplicate, by its number (blank lines skipped).
    p = pub(b, "--mid", "batch", t, input=b"a\n\nb\n")
    assert p.returncode == 0, p.stderr
    assert "message 1 is a duplicate (mid 'batch-1')" in p.stderr, p.stderr
    assert "message 2 is a duplicate (mid 'batch-2')" in p.stderr, p.stderr
    # A longer run of the same input: only the new third message goes out.
    p = pub(b, "-v", "--mid", "batch", t, input=b"a\nb\nc\n")
    assert p.returncode == 0, p.stderr
    assert "message 3 is a duplicate" not in p.stderr
    assert "* 3 messages acknowledged, 2 of them as duplicates" in p.stderr
    # --repeat numbers the repeats too.
    assert pub(b, "--mid", "rep", "--repeat", "2", t, "r").returncode == 0
    p = pub(b, "--mid", "rep", "--repeat", "3", t, "r")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("is a duplicate") == 2
    assert s.wait_lines(6) == ['"a"', '"b"', '"c"', '"r"', '"r"', '"r"']
    assert len(s.lines()) == 6


def test_pub_mid_too_long_for_a_numbered_line(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    t = topic + ".h.long"
    mid = "m" * 62
    lines = "".join("%d\n" % i for i in range(1, 12)).encode()
    p = pub(b, "--mid", mid, t, input=lines)
    # Messages 1-9 fit (m...m-9 is 64 bytes); message 10 does not: stop there, exit 2.
    assert p.returncode == USAGE, p.stderr
    assert "cannot publish message 10: its mid '%s-10' is longer than 64 bytes" % mid in p.stderr
    p = gale("hist", "--url", b.url, "--format", "data", t)
    assert p.stdout.decode().splitlines() == ['"%d"' % i for i in range(1, 10)]


def test_sub_since_reconnect_resumes_after_the_last_message(make_broker, topic, subs):
    b = history_broker(make_broker, topic)
    port = b.port
    t = topic + ".h.re"
    assert pub(b, t, "first").returncode == 0
    ep, _ = position(b, t)
    s = subs(b, "--since", "%s:0" % ep, "--reconnect", "--format", "data", t)
    s.wait_subscribed()
    assert pub(b, t, "second").returncode == 0
    assert s.wait_lines(2) == ['"first"', '"second"']
    # A restarted broker begins a new epoch: the resubscription asks for what came after the
    # last message received (ep:2), and is told it cannot be replayed.
    assert b.stop() == 0
    b.start(port=port)
    s.wait_subscribed(times=2, timeout=15)
    new_ep, new_off = position(b, t)
    assert new_ep != ep
    err = s.stderr()
    assert ("gale sub: reconnected: not recovered: the broker cannot replay %s after %s:2"
            % (t, ep)) in err, err
    assert "live from position %s:%d" % (new_ep, new_off) in err
    assert pub(b, t, "third").returncode == 0
    assert s.wait_lines(3)[2] == '"third"'
    s.proc.send_signal(signal.SIGINT)
    assert s.wait() == INTERRUPTED
    assert "last position %s:1 (resume with --since %s:1)" % (new_ep, new_ep) in s.stderr()


# ---------------------------------------------------------------------------------------
# presence: gale presence, gale sub --presence, gale sub --info
# ---------------------------------------------------------------------------------------

CONN_RE = re.compile(r"^[0-9a-f]{16}-[0-9]+$")


@pytest.mark.parametrize("args,needle", [
    (["presence"], "missing TOPIC"),
    (["presence", "a", "b"], "too many arguments: one TOPIC"),
    (["presence", "a.*"], "invalid topic 'a.*': presence is kept per topic, not per pattern"),
    (["presence", "a.>"], "presence is kept per topic, not per pattern"),
    (["presence", "a..b"], "invalid topic 'a..b'"),
    (["presence", "--format", "data", "t"], "invalid --format 'data': use line or json"),
    (["presence", "--limit", "1", "t"], "unknown option '--limit'"),
    (["sub", "--presence", "a", "b.*"], "--presence needs topics, not patterns: 'b.*'"),
    (["sub", "--info", "{}", "a.>"], "--info needs topics, not patterns: 'a.>'"),
    (["sub", "--info", "[1]", "t"], "invalid --info '[1]': not a JSON object"),
    (["sub", "--info", "{\"a\":", "t"], "invalid --info '{\"a\":': not a JSON object"),
    (["sub", "--info", "", "t"], "invalid --info '': not a JSON object"),
    (["sub", "--presence", "--format", "data", "t"], "--presence needs --format line or json"),
    (["sub", "--info"], "option '--info' needs a value"),
])
def test_presence_usage_errors_exit_2(args, needle):
    p = gale(*args[:1], "--url", "ws://127.0.0.1:1/ws", *args[1:])
    assert p.returncode == USAGE, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert "Try 'gale %s --help'." % args[0] in p.stderr
    assert p.stdout == b""


def test_help_lists_presence():
    out = gale("--help").stdout.decode()
    assert re.search(r"^  presence +print who is present on a topic", out, re.M), out
    assert "hist, presence" in out   # the exit codes cover it
    p = gale("presence", "--help")
    assert p.returncode == 0 and p.stdout.decode().startswith("usage: gale presence")
    assert "--format FMT" in p.stdout.decode() and "Exit status" in p.stdout.decode()
    sub_help = gale("sub", "--help").stdout.decode()
    assert "--presence" in sub_help and "--info JSON" in sub_help
    assert "TOPIC join CONN USER INFO" in sub_help


def presence_broker(make_broker, topic, args=()):
    """A broker tracking presence on every topic under TOPIC.p (TOPIC.plain: none)."""
    return make_broker(["--presence", "%s.p.>" % topic, *args])


def presence_lines(b, t, *args):
    """`gale presence` of t: (count, {conn: "USER INFO"}) from its line format."""
    p = gale("presence", "--url", b.url, *args, t)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    members = {}
    for l in lines[1:]:
        conn, rest = l.split(" ", 1)
        assert CONN_RE.match(conn), l
        members[conn] = rest
    return int(lines[0]), members


def wait_count(b, t, n, timeout=10.0):
    """Waits until `gale presence` of t counts n members; returns its members."""
    deadline = time.monotonic() + timeout
    while True:
        count, members = presence_lines(b, t)
        if count == n:
            return members
        assert time.monotonic() < deadline, "presence of %s: %d members, not %d" % (t, count, n)
        time.sleep(0.1)


def test_presence_and_sub_presence_lines(make_broker, topic, subs):
    b = presence_broker(make_broker, topic)
    t = topic + ".p.room"
    # Nobody yet: a count of 0 and no member lines.
    p = gale("presence", "--url", b.url, t)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"0\n" and p.stderr == ""

    watcher = subs(b, "--presence", t)
    watcher.wait_subscribed()
    (w_conn, w_rest), = wait_count(b, t, 1).items()
    assert w_rest == "- -"   # no token: no user; no info
    assert watcher.lines() == []   # never about itself

    ann = subs(b, "--info", '{"nick": "Ann", "tags": ["a b", 1.5]}', t)
    ann.wait_subscribed()
    line = watcher.wait_lines(1)[0]
    m = re.match(r"^%s join (\S+) - (.*)$" % re.escape(t), line)
    assert m, line
    a_conn, info = m.group(1), m.group(2)
    assert CONN_RE.match(a_conn) and a_conn != w_conn
    assert json.loads(info) == {"nick": "Ann", "tags": ["a b", 1.5]}
    assert info == '{"nick":"Ann","tags":["a b",1.5]}'   # compact

    count, members = presence_lines(b, t)
    assert count == 2
    assert members == {w_conn: "- -", a_conn: "- " + info}
    p = gale("presence", "--url", b.url, "-v", t)
    assert "* 2 members on %s" % t in p.stderr

    # A pattern subscription does not make a member, nor does a sub of another topic.
    other = subs(b, topic + ".p.>", topic + ".p.other")
    other.wait_subscribed()
    assert presence_lines(b, t)[0] == 2

    ann.proc.send_signal(signal.SIGINT)
    assert ann.wait() == INTERRUPTED
    assert watcher.wait_lines(2)[1] == "%s leave %s - %s" % (t, a_conn, info)
    assert wait_count(b, t, 1) == {w_conn: "- -"}
    assert len(watcher.lines()) == 2
    # Messages still print as before, among the presence lines.
    assert pub(b, t, "hi").returncode == 0
    assert watcher.wait_lines(3)[2] == '%s "hi"' % t


def test_sub_presence_counts_lines_and_json_format(make_broker, topic, subs):
    b = presence_broker(make_broker, topic)
    t = topic + ".p.json"
    watcher = subs(b, "--presence", "--format", "json", "--count", "3", t)
    watcher.wait_subscribed()
    p = gale("sub", "--url", b.url, "--info", '{"k": [true, null]}', "--timeout", "0.5", t)
    assert p.returncode == 0, p.stderr
    assert pub(b, t, "x").returncode == 0
    assert watcher.wait() == 0   # join, leave, msg: three lines
    got = [json.loads(l) for l in watcher.lines()]
    assert [g.get("op") for g in got] == ["join", "leave", None]
    conn = got[0]["conn"]
    assert CONN_RE.match(conn)
    assert got[0] == {"op": "join", "topic": t, "conn": conn, "info": {"k": [True, None]}}
    assert got[1] == dict(got[0], op="leave")
    assert got[2] == {"topic": t, "data": "x"}
    # Key order as the broker sends it: op, topic, conn, info.
    assert watcher.lines()[0] == \
        '{"op":"join","topic":"%s","conn":"%s","info":{"k":[true,null]}}' % (t, conn)


@pytest.mark.needs_msgpack
def test_presence_over_msgpack(make_broker, topic, subs):
    b = presence_broker(make_broker, topic)
    t = topic + ".p.mp"
    watcher = subs(b, "--encoding", "msgpack", "--presence", "--format", "json", t)
    watcher.wait_subscribed()
    member = subs(b, "--encoding", "msgpack", "--info", '{"n": 1, "s": "\u00e9"}', t)
    member.wait_subscribed()
    join = json.loads(watcher.wait_lines(1)[0])
    assert join == {"op": "join", "topic": t, "conn": join["conn"], "info": {"n": 1, "s": "\u00e9"}}
    outs = []
    for enc in ("json", "msgpack"):
        p = gale("presence", "--url", b.url, "--encoding", enc, "--format", "json", t)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    for ans in outs:
        assert set(ans) == {"op", "topic", "count", "members"}
        assert ans["op"] == "presence" and ans["topic"] == t and ans["count"] == 2
        by_conn = {m["conn"]: m for m in ans["members"]}
        assert by_conn[join["conn"]] == {"conn": join["conn"], "info": {"n": 1, "s": "\u00e9"}}
        assert len(by_conn) == 2
    assert outs[0] == outs[1]
    count, members = presence_lines(b, t, "--encoding", "msgpack")
    assert count == 2 and members[join["conn"]] == '- {"n":1,"s":"\u00e9"}'


def test_presence_with_tokens_users_and_errors(make_broker, topic, subs):
    secret = "test-secret-for-gale-0123456789abcdef"
    b = presence_broker(make_broker, topic, ["--jwt-secret", secret])
    t = topic + ".p.team"
    exp = int(time.time()) + 300

    def token(sub, info=None, rights=(">",)):
        claims = {"exp": exp, "gale": {"sub": list(rights), "pub": [">"]}}
        if sub is not None:
            claims["sub"] = sub
        if info is not None:
            claims["gale"]["info"] = info
        return hs256_token(claims, secret)

    watcher = subs(b, "--presence", "--token", token("watch"), t)
    watcher.wait_subscribed()
    bo = subs(b, "--token", token("bo smith", {"role": "dev"}), t)
    bo.wait_subscribed()
    anon = subs(b, "--token", token(None), t)
    anon.wait_subscribed()
    lines = watcher.wait_lines(2)
    joins = {l.split(" ")[2]: l for l in lines}
    assert len(joins) == 2, lines
    assert sorted(l.split(" ", 3)[3] for l in lines) == sorted(
        ['"bo smith" {"role":"dev"}', "- -"])   # a user with a space is a JSON string
    count, members = presence_lines(b, t, "--token", token("reader"))
    assert count == 3
    assert sorted(members.values()) == sorted(['"bo smith" {"role":"dev"}', "- -", "watch -"])

    # With tokens, info comes from the token: --info is refused.
    p = gale("sub", "--url", b.url, "--token", token("eve"), "--info", '{"x":1}', t)
    assert p.returncode == SERVER, p.stderr
    assert "gale sub: server error forbidden:" in p.stderr
    # Reading presence needs the right to subscribe to the topic.
    p = gale("presence", "--url", b.url, "--token", token("eve", rights=("other.>",)), t)
    assert p.returncode == SERVER, p.stderr
    assert "gale presence: server error forbidden:" in p.stderr
    assert p.stdout == b""


def test_presence_errors(make_broker, topic, subs):
    b = presence_broker(make_broker, topic)
    plain = topic + ".plain"
    # A topic without presence: the broker's err, exit 1, for both commands.
    p = gale("presence", "--url", b.url, plain)
    assert p.returncode == SERVER, p.stderr
    assert "gale presence: server error bad_request:" in p.stderr
    assert p.stdout == b""
    p = gale("sub", "--url", b.url, "--presence", "--timeout", "5", plain)
    assert p.returncode == SERVER, p.stderr
    assert "gale sub: server error bad_request:" in p.stderr
    assert "(pattern '%s')" % plain in p.stderr
    p = gale("sub", "--url", b.url, "--info", "{}", "--timeout", "5", plain)
    assert p.returncode == SERVER, p.stderr
    # Without --presence, a sub of a presence topic prints no presence lines.
    quiet = subs(b, "--count", "1", topic + ".p.q")
    quiet.wait_subscribed()
    other = subs(b, topic + ".p.q")
    other.wait_subscribed()
    assert pub(b, topic + ".p.q", "m").returncode == 0
    assert quiet.wait() == 0
    assert quiet.lines() == ['%s.p.q "m"' % topic]
    # Nobody listening.
    url = "ws://127.0.0.1:%d/ws" % galetest.free_port()
    p = gale("presence", "--url", url, topic + ".p.x")
    assert p.returncode == CONNECT, p.stderr
    assert "cannot connect to %s: connection refused" % url in p.stderr


def test_presence_count_lines_above_events_max(make_broker, topic, subs):
    b = presence_broker(make_broker, topic, ["--presence-events-max", "1"])
    t = topic + ".p.busy"
    line = subs(b, "--presence", t)
    js = subs(b, "--presence", "--format", "json", t)
    for s in (line, js):
        s.wait_subscribed()
    # Two members already (the watchers): above the max, a count instead of joins.
    extra = subs(b, t)
    extra.wait_subscribed()
    line.wait_for(lambda: any(l.endswith(b" count 3\n") for l in line.out), what="count 3")
    js.wait_for(lambda: any(b'"count":3' in l for l in js.out), what="count 3")
    assert "%s count 3" % t in line.lines()
    assert {"op": "presence", "topic": t, "count": 3} in [json.loads(l) for l in js.lines()]
    assert not any(" join " in l for l in line.lines())
    p = gale("presence", "--url", b.url, t)
    assert p.returncode == 0 and p.stdout.decode().splitlines()[0] == "3", p.stderr


def test_presence_list_capped(make_broker, topic, subs):
    b = presence_broker(make_broker, topic, ["--presence-list-max", "2"])
    t = topic + ".p.big"
    members = [subs(b, t) for _ in range(3)]
    for m in members:
        m.wait_subscribed()
    p = gale("presence", "--url", b.url, t)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.decode().splitlines()
    assert lines[0] == "3" and len(lines) == 3
    assert "gale presence: 2 of 3 members listed (the broker lists at most its " \
        "--presence-list-max)" in p.stderr
    p = gale("presence", "--url", b.url, "--format", "json", t)
    ans = json.loads(p.stdout)
    assert ans["count"] == 3 and len(ans["members"]) == 2
