"""Helpers for the gale integration tests: broker processes, WebSocket clients.

Two kinds of client:
  * Client: an asyncio client on python3-websockets 10.4 (the well-behaved client).
  * RawWS:  a tiny blocking RFC 6455 client over a plain socket, with masked frames,
            for what a library will not do: malformed or fragmented frames, stalled
            reads, ignored pings, raw bytes.

Every wait here is bounded in time.
"""
import asyncio
import base64
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

import msgpack
import websockets
import websockets.exceptions

HOST = "127.0.0.1"
JSON = "gale.v1.json"
MSGPACK = "gale.v1.msgpack"
DEFAULT_MAX_MSG = 65536

# ---------------------------------------------------------------------------------------
# Target selection
# ---------------------------------------------------------------------------------------

TARGET = os.environ.get("GALE_TARGET", "gale").strip().lower() or "gale"
SOURCE_DIR = os.environ.get("GALE_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))


def broker_binary():
    """Path of the gale-broker binary: $GALE_BROKER, else the usual build dirs."""
    path = os.environ.get("GALE_BROKER")
    if path:
        return path
    for d in ("build", "build-it"):
        cand = os.path.join(SOURCE_DIR, d, "gale-broker")
        if os.access(cand, os.X_OK):
            return cand
    return None


def peers_dir():
    for cand in (os.path.join(SOURCE_DIR, "..", "shared", "peers"), "/work/shared/peers"):
        if os.path.isdir(cand):
            return os.path.abspath(cand)
    return None


def run(coro, timeout=60):
    """Run one coroutine to completion in a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------
# Broker process
# ---------------------------------------------------------------------------------------

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "AddressSanitizer:DEADLYSIGNAL")


class BrokerError(Exception):
    pass


class Broker:
    """One broker process (gale-broker, or a reference peer when GALE_TARGET says so).

    args are extra command-line flags (gale only); env adds environment variables.
    stderr (and stdout) go to a log file under logdir, for debugging.
    """

    def __init__(self, logdir, args=(), env=None, target=TARGET, listen=True, name="broker"):
        self.logdir = logdir
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.target = target
        self.listen = listen   # False: caller passes --listen/GALE_LISTEN itself
        self.name = name
        self.proc = None
        self.port = None
        self.logpath = None
        self.returncode = None
        self._n = 0

    # -- start/stop ---------------------------------------------------------------------
    def command(self, port):
        if self.target == "gale":
            binary = broker_binary()
            if not binary:
                raise BrokerError("no gale-broker binary (set GALE_BROKER)")
            cmd = [binary]
            if self.listen:
                cmd += ["--listen", "%s:%d" % (HOST, port)]
            return cmd + self.args, None
        pdir = peers_dir()
        if not pdir:
            raise BrokerError("reference peers not found")
        if self.target == "tornado":
            return ["/usr/bin/python3", os.path.join(pdir, "tornado_broker.py"),
                    "--port", str(port)], pdir
        if self.target == "node":
            return ["node", os.path.join(pdir, "node_ws_broker.js"), "--port", str(port)], pdir
        raise BrokerError("unknown GALE_TARGET %r" % self.target)

    def start(self, timeout=10.0, port=None, attempts=4):
        last = None
        for _ in range(attempts):
            p = port or free_port()
            try:
                self._start_once(p, timeout)
                return self
            except BrokerError as e:
                last = e
                log = self.log_text()
                if port is None and ("bind" in log.lower() or "address" in log.lower()
                                     or "in use" in log.lower()):
                    continue   # lost the race for the port: try another one
                raise
        raise last

    def _start_once(self, port, timeout):
        cmd, cwd = self.command(port)
        env = dict(os.environ)
        if self.target == "node":
            env["NODE_PATH"] = "/usr/share/nodejs"
        # A stray GALE_* variable from the caller's shell must not change the tests.
        for k in list(env):
            if k.startswith("GALE_") and k not in ("GALE_BROKER", "GALE_SOURCE_DIR", "GALE_TARGET"):
                del env[k]
        env.update({k: v.replace("{port}", str(port)) for k, v in self.extra_env.items()})
        cmd = [a.replace("{port}", str(port)) for a in cmd]
        self._n += 1
        self.logpath = os.path.join(self.logdir, "%s-%d-%d.log" % (self.name, port, self._n))
        self.port = port
        self.returncode = None
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=cwd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                raise BrokerError("broker exited early with %d:\n%s" % (rc, self.log_tail()))
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise BrokerError("broker not ready within %.0fs:\n%s" % (timeout, self.log_tail()))

    def _ready(self):
        if self.target == "gale":
            try:
                status, _, _ = http_get(self.port, "/healthz", timeout=1)
                return status == 200
            except OSError:
                return False
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def wait(self, timeout):
        """Wait for exit; returns the exit code, or None if still running after timeout."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Signal the broker and wait; returns its exit code (kills it after timeout: None)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            rc = self.wait(timeout)
            if rc is None:
                self.kill()
                return None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # -- inspection ---------------------------------------------------------------------
    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "ws://%s:%d/ws" % (HOST, self.port)

    def log_text(self):
        if not self.logpath or not os.path.exists(self.logpath):
            return ""
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:]) + "\n[log: %s]" % self.logpath

    def sanitizer_errors(self):
        text = self.log_text()
        return [m for m in SANITIZER_MARKERS if m in text]

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def healthz(self):
        status, headers, body = http_get(self.port, "/healthz")
        assert status == 200, (status, body)
        return json.loads(body)

    def metrics(self):
        status, headers, body = http_get(self.port, "/metrics")
        assert status == 200, (status, body)
        return parse_metrics(body.decode())


def stop_process(proc, grace=5):
    """SIGTERM a helper server we started (redis, haproxy, nats...), SIGKILL it after
    `grace` seconds; a process that already exited is left alone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def http_get(port, path, timeout=5, method="GET", headers=None):
    """(status, headers dict with lower-case names, body bytes) of one HTTP request."""
    req = urllib.request.Request("http://%s:%d%s" % (HOST, port, path), method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


_METRIC_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)(\s+\d+)?$')


def parse_metrics(text):
    """Prometheus text -> {'name' or 'name{labels}': float}, plus '#TYPE name': kind."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                out["#TYPE " + parts[2]] = parts[3]
            continue
        m = _METRIC_RE.match(line)
        assert m, "unparsable metrics line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        out[name + labels] = float(value)
    return out


# ---------------------------------------------------------------------------------------
# asyncio client (python3-websockets)
# ---------------------------------------------------------------------------------------

def decode_frame(frame):
    if isinstance(frame, str):
        return json.loads(frame)
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


class Client:
    """A gale client: hello read on connect, encoding from the negotiated subprotocol."""

    _ids = itertools.count(1000)

    def __init__(self, ws, offered):
        self.ws = ws
        self.offered = offered
        self.hello = None
        self.raw_hello = None
        self.pending = []   # msg deliveries read while waiting for a reply

    @property
    def encoding(self):
        return self.ws.subprotocol or JSON

    @classmethod
    async def connect(cls, url, enc=JSON, read_hello=True, **kw):
        """enc: JSON, MSGPACK, None (offer nothing) or a list of names to offer."""
        if enc is None:
            offered = None
        elif isinstance(enc, (list, tuple)):
            offered = list(enc)
        else:
            offered = [enc]
        kw.setdefault("ping_interval", None)
        kw.setdefault("compression", None)
        kw.setdefault("close_timeout", 2)
        kw.setdefault("max_size", 1 << 24)
        kw.setdefault("open_timeout", 5)
        ws = await websockets.connect(url, subprotocols=offered, **kw)
        c = cls(ws, offered)
        if read_hello:
            c.raw_hello = await c.recv_raw()
            c.hello = decode_frame(c.raw_hello)
        return c

    def encode(self, obj):
        if self.encoding == MSGPACK:
            return msgpack.packb(obj, use_bin_type=True)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    async def send(self, obj):
        await self.ws.send(self.encode(obj))

    async def send_raw(self, frame):
        await self.ws.send(frame)

    async def recv_raw(self, timeout=5.0):
        try:
            return await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("no message within %.1fs" % timeout) from None

    async def recv(self, timeout=5.0):
        if self.pending:
            return self.pending.pop(0)
        frame = await self.recv_raw(timeout)
        if self.encoding == MSGPACK:
            assert isinstance(frame, bytes), "text frame on a msgpack connection: %r" % frame
        else:
            assert isinstance(frame, str), "binary frame on a JSON connection: %r" % frame
        return decode_frame(frame)

    def next_id(self):
        return next(Client._ids)

    async def request(self, obj, timeout=5.0):
        """Send obj with a fresh id (unless it has one) and return the next message that
        is not a `msg` delivery (those are kept for the following recv calls)."""
        obj = dict(obj)
        obj.setdefault("id", self.next_id())
        await self.send(obj)
        held = []
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000):
                frame = await self.recv_raw(max(0.001, deadline - time.monotonic()))
                m = decode_frame(frame)
                if isinstance(m, dict) and m.get("op") == "msg":
                    held.append(m)
                    continue
                return m
            raise AssertionError("no reply")
        finally:
            self.pending.extend(held)

    async def reply(self, rid, timeout=5.0):
        """The next message whose "id" is rid; every other message read meanwhile (events,
        deliveries) is kept, in order, for the following recv calls."""
        for i, m in enumerate(self.pending):
            if isinstance(m, dict) and m.get("id") == rid:
                return self.pending.pop(i)
        held = []
        deadline = time.monotonic() + timeout
        try:
            for _ in range(100000):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    m = decode_frame(await self.recv_raw(left))
                except AssertionError:   # recv_raw's timeout
                    break
                if isinstance(m, dict) and m.get("id") == rid:
                    return m
                held.append(m)
            raise AssertionError("no answer with id %r within %.1fs (read first: %r)"
                                 % (rid, timeout, held[:5]))
        finally:
            self.pending.extend(held)

    async def ask(self, obj, timeout=5.0):
        """Send obj with a fresh id (unless it has one); return the answer carrying that
        id, whatever else arrives first (kept for the following recv calls)."""
        obj = dict(obj)
        obj.setdefault("id", self.next_id())
        await self.send(obj)
        return await self.reply(obj["id"], timeout)

    async def sub(self, topic):
        r = await self.request({"op": "sub", "topic": topic})
        assert r.get("op") == "ack", r
        return r

    async def unsub(self, topic):
        r = await self.request({"op": "unsub", "topic": topic})
        assert r.get("op") == "ack", r
        return r

    async def pub(self, topic, data):
        r = await self.request({"op": "pub", "topic": topic, "data": data})
        assert r.get("op") == "ack", r
        return r

    async def sync(self, timeout=5.0, limit=100000):
        """Ping with an id; return every message received before its pong."""
        pid = self.next_id()
        await self.send({"op": "ping", "id": pid})
        got = []
        deadline = time.monotonic() + timeout
        for _ in range(limit):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            m = await self.recv(left) if self.pending else decode_frame(await self.recv_raw(left))
            if m.get("op") == "pong" and m.get("id") == pid:
                return got
            got.append(m)
        raise AssertionError("no pong %d within %.1fs (got %d messages first: %r)"
                             % (pid, timeout, len(got), got[:5]))

    async def expect_silence(self):
        extra = await self.sync()
        assert extra == [], "expected no message, got %r" % extra

    async def expect_close(self, timeout=5.0):
        """Read until the connection closes; return (code, messages read before)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "connection still open after %.1fs" % timeout
            try:
                got.append(await asyncio.wait_for(self.ws.recv(), left))
            except websockets.exceptions.ConnectionClosed as e:
                return (e.rcvd.code if e.rcvd else None), got
            except asyncio.TimeoutError:
                raise AssertionError("connection still open after %.1fs" % timeout) from None

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except Exception:
            pass


async def connect(url, enc=JSON, **kw):
    return await Client.connect(url, enc, **kw)


async def connect_status(url, subprotocols=None, extra_headers=None):
    """Try an upgrade; return the HTTP status of a refusal, or 101 (then closes)."""
    try:
        ws = await websockets.connect(url, subprotocols=subprotocols, ping_interval=None,
                                      compression=None, open_timeout=5, close_timeout=1,
                                      extra_headers=extra_headers)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    except websockets.exceptions.InvalidMessage as e:
        raise AssertionError("python-websockets could not read the broker's handshake "
                             "answer: %s: %s" % (e, e.__cause__)) from None
    await ws.close()
    return 101


# ---------------------------------------------------------------------------------------
# Raw RFC 6455 client
# ---------------------------------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class Closed(Exception):
    """The peer closed the TCP connection (EOF or reset)."""


class RawWS:
    """A blocking WebSocket client over a plain socket: masked frames, nothing hidden."""

    def __init__(self, port, path="/ws", protocols=(JSON,), rcvbuf=None, timeout=5.0,
                 headers=(), source=None):
        """source: a local address to connect from (e.g. 127.0.0.2: Linux routes all of
        127/8 to lo), for per-address limits."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((HOST, port))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (HOST, port), "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key,
                 "Sec-WebSocket-Version: 13"]
        if protocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(protocols))
        lines += list(headers)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
            assert len(self.buf) < 65536, "oversized HTTP response"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        self.headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.protocol = self.headers.get("sec-websocket-protocol")
        self.close_code = None

    # -- sending --------------------------------------------------------------------------
    @staticmethod
    def frame(opcode, payload, fin=True, mask=True, rsv=0):
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            head = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            head = struct.pack("!BBQ", b0, mbit | 127, n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + _mask(payload, key)

    def send_frame(self, opcode, payload, fin=True, mask=True, rsv=0):
        self.sock.sendall(self.frame(opcode, payload, fin, mask, rsv))

    def send_text(self, text):
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_binary(self, data):
        self.send_frame(OP_BINARY, data)

    def send_json(self, obj):
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def send_close(self, code=1000):
        self.send_frame(OP_CLOSE, struct.pack("!H", code))

    # -- receiving ------------------------------------------------------------------------
    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("timed out")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except ConnectionResetError:
                raise Closed("reset") from None
            if not chunk:
                raise Closed("eof")
            self.buf += chunk

    def recv_frame(self, timeout=5.0):
        """(fin, opcode, payload) of the next frame; raises Closed, socket.timeout."""
        deadline = time.monotonic() + timeout
        self._fill(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frame is masked"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._fill(4, deadline)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._fill(10, deadline)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._fill(pos + n, deadline)
        payload, self.buf = self.buf[pos:pos + n], self.buf[pos + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv_message(self, timeout=5.0, answer_pings=True):
        """(opcode, payload) of the next data message (fragments joined); a close frame
        returns (OP_CLOSE, payload) and sets close_code; pings are answered (or not)."""
        deadline = time.monotonic() + timeout
        parts, first = [], None
        while True:
            fin, op, payload = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if op == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, payload)
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                return OP_CLOSE, payload
            if op != OP_CONT:
                first = op
            parts.append(payload)
            if fin:
                return first, b"".join(parts)

    def recv_json(self, timeout=5.0):
        op, payload = self.recv_message(timeout)
        assert op == OP_TEXT, "expected a text frame, got opcode %d %r" % (op, payload[:80])
        return json.loads(payload)

    def recv_msgpack(self, timeout=5.0):
        op, payload = self.recv_message(timeout)
        assert op == OP_BINARY, "expected a binary frame, got opcode %d %r" % (op, payload[:80])
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)

    def recv_until_closed(self, timeout=5.0):
        """Read data messages until a close frame or EOF; returns (close_code or None,
        list of (opcode, payload))."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs (%d messages read)"
                                     % (timeout, len(got)))
            try:
                op, payload = self.recv_message(left)
            except Closed:
                return None, got
            except socket.timeout:
                raise AssertionError("connection still open after %.1fs (%d messages read)"
                                     % (timeout, len(got))) from None
            if op == OP_CLOSE:
                return self.close_code, got
            got.append((op, payload))

    def ping_sync(self, pid, timeout=5.0):
        """Send a gale ping with id (JSON) and return the messages before its pong."""
        self.send_json({"op": "ping", "id": pid})
        got = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv_json(max(0.0, deadline - time.monotonic()))
            if m.get("op") == "pong" and m.get("id") == pid:
                return got
            got.append(m)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _mask(payload, key):
    if not payload:
        return b""
    k = int.from_bytes((key * (len(payload) // 4 + 1))[:len(payload)], "big")
    return (int.from_bytes(payload, "big") ^ k).to_bytes(len(payload), "big")
