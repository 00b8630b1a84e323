#!/usr/bin/python3
"""bench/presence.py: what presence (--presence) costs gale-broker and Redis, measured.

    BUILD=build/b-bench bench/presence.py     # ~2-3 min on 2 cores
    QUICK=1 BUILD=build/b-bench bench/presence.py

Writes the section "Presence" to docs/bench/presence.md (bench/plot.py includes it in
docs/BENCHMARKS.md) and every run as one JSON line to docs/bench/presence.jsonl:

  a. broker CPU per join and per leave on a topic with 10,000 members, single broker: with
     no watcher (members only) and with all 10,000 members watching (sub presence:true),
     at --presence-events-max 20000 (every join and leave is an event to each watcher) and
     1000, the default (above it, one count-only message per watcher per second), next to
     the same sub/unsub of a topic without presence on the same broker;
  b. memory per member: RSS and gale_presence_members with 10,000 connections on one
     presence topic, against the same without --presence, with and without a 200-byte
     info; and `gale bench conns --subscribe` (10,000 topics of one member each);
  c. cluster through one real redis-server: Redis commands per join and per leave (INFO
     commandstats: EVALSHA and the commands the scripts ran), the refresh per topic per
     --presence-expiry/3, and the `presence` answer at 10,000 members (also single node);
  d. a broker killed with -9 holding 1,000 members (--presence-expiry 3): when their leave
     events reach a watcher on another broker.

The load is this script's own client (raw sockets and epoll, RFC 6455 frames with a zero
mask, JSON; worker processes forked to hold the connections), except `gale bench conns`.
Broker CPU is its /proc/PID/task/*/schedstat run time (the clock of /proc/PID/stat's
utime + stime, in ns instead of 10 ms ticks: a phase here is a few ms), checked against
/proc/PID/stat over each run. Every process listens on 127.0.0.1 on a free port, every wait
is bounded, and everything started is stopped on exit. Needs redis-server for c and d.
Environment: BUILD (build-bench), DOCS (docs), MEMBERS (10000), JOINERS (1000), ROUNDS (10),
EVENT_JOINERS (100), ONE_BY_ONE (10), KILLED (1000), KILL_RUNS (3), QUICK=1 (small counts, a
sanity run).
"""
import json
import multiprocessing
import os
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.realpath(os.environ.get("BUILD", os.path.join(ROOT, "build-bench")))
DOCS = os.path.realpath(os.environ.get("DOCS", os.path.join(ROOT, "docs")))
QUICK = os.environ.get("QUICK") == "1"
MEMBERS = int(os.environ.get("MEMBERS", "1000" if QUICK else "10000"))
JOINERS = int(os.environ.get("JOINERS", "200" if QUICK else "1000"))
ROUNDS = int(os.environ.get("ROUNDS", "3" if QUICK else "10"))
EVENT_JOINERS = int(os.environ.get("EVENT_JOINERS", "20" if QUICK else "100"))
ONE_BY_ONE = int(os.environ.get("ONE_BY_ONE", "5" if QUICK else "10"))
KILLED = int(os.environ.get("KILLED", "200" if QUICK else "1000"))
KILL_RUNS = int(os.environ.get("KILL_RUNS", "1" if QUICK else "3"))
TOPICS = 100 if QUICK else 1000       # extra topics for the refresh cost
QUERIES = 50 if QUICK else 200         # presence requests per latency measurement
WINDOW = 3.0 if QUICK else 5.0         # seconds of an idle Redis window (refresh)
EXPIRY = 3                             # --presence-expiry of the cluster runs
INFO = {"pad": "x" * 190}              # 200 bytes of JSON
GALE = os.path.join(BUILD, "gale")
BROKER = os.path.join(BUILD, "gale-broker")
REDIS = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
HOST = "127.0.0.1"
TOPIC = "bench.presence"
PLAIN = "plain.topic"  # no --presence pattern matches it

started = []  # every server process we started, stopped at exit
pools = []    # every worker pool, stopped at exit
records = []
T0 = time.monotonic()


def log(msg):
    print("[%4ds] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


# --- the WebSocket client: many connections per process, epoll ------------------------------
HANDSHAKE = ("GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: gale.v1.json\r\n\r\n")
CONNECTING, UPGRADING, HELLO, SUBSCRIBING, READY, DEAD = range(6)
CONCURRENCY = 256  # connections in set-up at once per worker
MEM_CONCURRENCY = 16  # the same for the memory runs: fewer set-up buffers held at once


def ws_frame(obj, opcode=1):
    """A client frame (masked with a zero key, legal) of obj as JSON, or raw bytes."""
    p = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    n = len(p)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + p


class Conn:
    __slots__ = ("sock", "fd", "state", "rbuf", "topic", "sub")

    def __init__(self):
        self.rbuf = b""


class Worker:
    """Runs in a forked process: holds connections, counts what they receive, runs commands."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.ep = select.epoll()
        self.ep.register(ctl.fileno(), select.EPOLLIN)
        self.conns, self.byfd, self.opening = [], {}, set()
        self.port = None
        self.ctl_ready = False
        self.join = self.leave = self.count = self.answers = self.acks = self.errs = 0
        self.closed = self.other = self.failed = 0
        self.first_leave = self.last_leave = None  # time.time() of leave events
        self.answer_sizes, self.last_answer, self.err_texts = [], None, []

    def loop(self):
        while True:
            self.pump(lambda: self.ctl_ready, 3600)
            self.ctl_ready = False
            while self.ctl.poll():
                try:
                    cmd, args = self.ctl.recv()
                except EOFError:
                    return
                if cmd == "quit":
                    return
                try:
                    res = getattr(self, "cmd_" + cmd)(*args)
                except Exception as e:  # reported to the main process, which fails the run
                    res = {"error": "%s: %r" % (cmd, e)}
                self.ctl.send(res)

    def pump(self, done, timeout):
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for fd, ev in self.ep.poll(min(left, 0.05)):
                if fd == self.ctl.fileno():
                    self.ctl_ready = True
                    continue
                c = self.byfd.get(fd)
                if c is not None:
                    self.handle(c, ev)
        return True

    def kill(self, c, why=None):
        if c.state == DEAD:
            return
        if why and len(self.err_texts) < 5:
            self.err_texts.append(why)
        if c in self.opening:
            self.opening.discard(c)
            self.failed += 1
        else:
            self.closed += 1
        c.state = DEAD
        try:
            self.ep.unregister(c.fd)
        except OSError:
            pass
        self.byfd.pop(c.fd, None)
        c.sock.close()

    def ready(self, c):
        c.state = READY
        self.opening.discard(c)
        self.conns.append(c)

    def handle(self, c, ev):
        if c.state == CONNECTING:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return self.kill(c, "connect: %s" % os.strerror(err))
            c.sock.send((HANDSHAKE % (HOST, self.port)).encode())
            c.state = UPGRADING
            self.ep.modify(c.fd, select.EPOLLIN)
            return
        try:
            data = c.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as e:
            return self.kill(c, "recv: %s" % e)
        if not data:
            return self.kill(c, "closed by the broker" if c.state != READY else None)
        if c.state == UPGRADING:
            c.rbuf += data
            end = c.rbuf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not c.rbuf.startswith(b"HTTP/1.1 101"):
                return self.kill(c, "upgrade: %r" % c.rbuf[:40])
            data, c.rbuf = c.rbuf[end + 4:], b""
            c.state = HELLO
            if not data:
                return
        self.frames(c, data)

    def frames(self, c, data):
        buf = c.rbuf + data if c.rbuf else data
        n, i = len(buf), 0
        join = leave = count = 0
        while n - i >= 2:
            ln = buf[i + 1] & 127
            h = i + 2
            if ln == 126:
                if n - i < 4:
                    break
                ln, h = (buf[i + 2] << 8) | buf[i + 3], i + 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln, h = int.from_bytes(buf[i + 2:i + 10], "big"), i + 10
            e = h + ln
            if e > n:
                break
            op = buf[i] & 15
            i = e
            if op == 1:
                if buf.startswith(b'{"op":"join"', h):
                    join += 1
                elif buf.startswith(b'{"op":"leave"', h):
                    leave += 1
                elif buf.startswith(b'{"op":"presence","id"', h):
                    self.answers += 1
                    self.last_answer = buf[h:e]
                    self.answer_sizes.append(ln)
                elif buf.startswith(b'{"op":"presence"', h):
                    count += 1
                elif buf.startswith(b'{"op":"ack"', h):
                    self.acks += 1
                    if c.state == SUBSCRIBING:
                        self.ready(c)
                elif buf.startswith(b'{"op":"err"', h):
                    self.errs += 1
                    if len(self.err_texts) < 5:
                        self.err_texts.append(buf[h:e].decode("utf-8", "replace"))
                    if c.state == SUBSCRIBING:
                        self.kill(c)
                        return
                elif buf.startswith(b'{"op":"hello"', h) and c.state == HELLO:
                    if c.sub:
                        c.sock.send(c.sub)
                        c.state = SUBSCRIBING
                    else:
                        self.ready(c)
                else:
                    self.other += 1
            elif op == 8:
                self.kill(c, "close frame %r" % buf[h:e][:40] if c.state != READY else None)
                return
            elif op == 9:
                c.sock.send(ws_frame(buf[h:e], 10))
        c.rbuf = buf[i:] if i < n else b""
        if join:
            self.join += join
        if leave:
            self.leave += leave
            now = time.time()
            if self.first_leave is None:
                self.first_leave = now
            self.last_leave = now
        if count:
            self.count += count

    # -- commands (each answers one dict) ----------------------------------------------------
    def cmd_open(self, port, n, topic, presence, info, base, timeout, concurrency):
        """n connections, each subscribed to topic (topic may hold {i}: base + its index)."""
        self.port = port
        self.failed = 0
        t0 = time.monotonic()
        deadline = t0 + timeout
        ok0 = len(self.conns)
        k = 0
        while (k < n or self.opening) and time.monotonic() < deadline:
            while k < n and len(self.opening) < concurrency:
                c = Conn()
                c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.sock.setblocking(False)
                c.fd = c.sock.fileno()
                c.state = CONNECTING
                c.topic = topic.format(i=base + k) if topic else None
                sub = {"op": "sub", "topic": c.topic, "id": 1}
                if presence:
                    sub["presence"] = True
                if info is not None:
                    sub["info"] = info
                c.sub = ws_frame(sub) if topic else None
                try:
                    c.sock.connect((HOST, port))
                except BlockingIOError:
                    pass
                except OSError as e:
                    c.sock.close()
                    self.failed += 1
                    self.err_texts.append("connect: %s" % e)
                    k += 1
                    continue
                self.byfd[c.fd] = c
                self.opening.add(c)
                self.ep.register(c.fd, select.EPOLLOUT)
                k += 1
            self.pump(lambda: True if not self.opening else len(self.opening) < concurrency
                      and k < n, 0.05)
        for c in list(self.opening):
            self.kill(c, "set-up timed out")
        return {"ok": len(self.conns) - ok0, "failed": self.failed,
                "s": time.monotonic() - t0, "errors": self.err_texts[:3]}

    def send_all(self, make, start, k, timeout):
        """Sends make(conn) on connections start..start+k; waits for as many acks or errs."""
        base = self.acks + self.errs
        conns = self.conns[start:start + k]
        want = base + len(conns)
        t0 = time.monotonic()
        for c in conns:
            if c.state == READY:
                c.sock.send(make(c))
        ok = self.pump(lambda: self.acks + self.errs >= want, timeout)
        return {"ok": ok, "s": time.monotonic() - t0, "answered": self.acks + self.errs - base,
                "errs": self.errs, "errors": self.err_texts[:3]}

    def cmd_sub(self, topic, presence, info, start, k, timeout):
        def make(c):
            sub = {"op": "sub", "topic": topic or c.topic, "id": 2}
            if presence:
                sub["presence"] = True
            if info is not None:
                sub["info"] = info
            return ws_frame(sub)
        return self.send_all(make, start, k, timeout)

    def cmd_unsub(self, topic, start, k, timeout):
        frame = ws_frame({"op": "unsub", "topic": topic, "id": 3})
        return self.send_all(lambda c: frame, start, k, timeout)

    def cmd_counts(self):
        return {"join": self.join, "leave": self.leave, "count": self.count,
                "answers": self.answers, "acks": self.acks, "errs": self.errs,
                "closed": self.closed, "other": self.other, "conns": len(self.conns),
                "first_leave": self.first_leave, "last_leave": self.last_leave,
                "errors": self.err_texts[:3]}

    def cmd_wait(self, key, target, timeout):
        ok = self.pump(lambda: getattr(self, key) >= target, timeout)
        return {"ok": ok, key: getattr(self, key)}

    def cmd_presence(self, topic, n, timeout):
        """n presence requests one after another on the first connection: round trips."""
        c = self.conns[0]
        rtts = []
        self.answer_sizes = []
        deadline = time.monotonic() + timeout
        for j in range(n):
            want = self.answers + 1
            t = time.monotonic()
            c.sock.send(ws_frame({"op": "presence", "topic": topic, "id": 100 + j}))
            if not self.pump(lambda: self.answers >= want, deadline - time.monotonic()):
                break
            rtts.append(time.monotonic() - t)
        ans = json.loads(self.last_answer) if self.last_answer else {}
        return {"rtts": rtts, "bytes": statistics.median(self.answer_sizes)
                if self.answer_sizes else None, "count": ans.get("count"),
                "listed": len(ans.get("members") or ()), "errors": self.err_texts[:3]}

    def cmd_close(self):
        for c in list(self.byfd.values()):
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
            c.sock.close()
        self.conns, self.byfd, self.opening = [], {}, set()
        self.join = self.leave = self.count = self.answers = self.acks = self.errs = 0
        self.closed = self.other = 0
        self.first_leave = self.last_leave = None
        self.err_texts = []
        return {}


def worker_main(ctl):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Worker(ctl).loop()


class Pool:
    """Worker processes holding connections; a command goes to every worker, in parallel."""

    def __init__(self, n):
        ctx = multiprocessing.get_context("fork")
        self.ctls, self.procs = [], []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(b,), daemon=True)
            p.start()
            b.close()
            self.ctls.append(a)
            self.procs.append(p)
        self.shares = [0] * n  # connections each worker holds
        pools.append(self)

    def call(self, cmd, args_of, timeout=120):
        for i, ctl in enumerate(self.ctls):
            ctl.send((cmd, args_of(i)))
        out = []
        for ctl in self.ctls:
            if not ctl.poll(timeout + 10):
                raise RuntimeError("a worker did not answer %s" % cmd)
            r = ctl.recv()
            if "error" in r:
                raise RuntimeError(r["error"])
            out.append(r)
        return out

    def open(self, port, n, topic, presence=False, info=None, timeout=60,
             concurrency=CONCURRENCY):
        per = [n // len(self.ctls) + (1 if i < n % len(self.ctls) else 0)
               for i in range(len(self.ctls))]
        bases = [sum(per[:i]) for i in range(len(per))]
        res = self.call("open", lambda i: (port, per[i], topic, presence, info, bases[i],
                                           timeout, concurrency), timeout)
        for i, r in enumerate(res):
            self.shares[i] += r["ok"]
        ok = sum(r["ok"] for r in res)
        if ok < n:
            raise RuntimeError("%d of %d connections set up (%s)" % (
                ok, n, "; ".join(e for r in res for e in r["errors"])))
        return {"ok": ok, "s": max(r["s"] for r in res)}

    def sub(self, topic, k, presence=False, start=0, info=None, timeout=60):
        """Connections start..start+k (over the workers) subscribe: topic None = their own."""
        sp = self.split(start, k)
        res = self.call("sub", lambda i: (topic, presence, info) + sp[i] + (timeout,), timeout)
        return self.check(res, "sub")

    def unsub(self, topic, k, start=0, timeout=60):
        sp = self.split(start, k)
        return self.check(self.call("unsub", lambda i: (topic,) + sp[i] + (timeout,), timeout),
                          "unsub")

    def split(self, start, k):
        """(start, count) within each worker of the connections start..start+k overall."""
        out, off = [], 0
        for s in self.shares:
            lo, hi = max(start, off), min(start + k, off + s)
            out.append((lo - off, hi - lo) if hi > lo else (0, 0))
            off += s
        return out

    def check(self, res, what):
        if not all(r["ok"] for r in res) or any(r["errs"] for r in res):
            raise RuntimeError("%s: %s" % (what, res))
        return max(r["s"] for r in res)

    def counts(self):
        res = self.call("counts", lambda i: ())
        tot = {k: sum(r[k] for r in res) for k in ("join", "leave", "count", "answers", "acks",
                                                   "errs", "closed", "other", "conns")}
        firsts = [r["first_leave"] for r in res if r["first_leave"]]
        lasts = [r["last_leave"] for r in res if r["last_leave"]]
        tot["first_leave"] = min(firsts) if firsts else None
        tot["last_leave"] = max(lasts) if lasts else None
        return tot

    def wait_each(self, key, targets, timeout):
        res = self.call("wait", lambda i: (key, targets[i], timeout), timeout)
        return all(r["ok"] for r in res), [r[key] for r in res]

    def per_worker(self, key):
        return [r[key] for r in self.call("counts", lambda i: ())]

    def presence(self, topic, n, timeout=60):
        return self.call("presence", lambda i: (topic, n, timeout), timeout)[0]

    def close(self):
        self.call("close", lambda i: ())
        self.shares = [0] * len(self.ctls)

    def stop(self):
        for ctl in self.ctls:
            try:
                ctl.send(("quit", ()))
            except OSError:
                pass
        for p in self.procs:
            p.join(3)
            if p.is_alive():
                p.kill()
                p.join()
        self.procs = []


# --- servers and measurements -------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_get(port, path):
    with urllib.request.urlopen("http://%s:%d%s" % (HOST, port, path), timeout=5) as r:
        return r.read().decode()


def metrics(port):
    out = {}
    for line in http_get(port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def proc_cpu_s(pid):
    """utime + stime of every thread, /proc/PID/stat (10 ms ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ns(pid):
    """Time on CPU of every thread in ns (/proc/PID/task/*/schedstat: sum_exec_runtime)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Proc:
    """A server process on a free loopback port, stopped by stop() or at exit."""

    def __init__(self, name, argv_of_port, ready):
        self.name, self.port, self.proc = name, None, None
        for _ in range(4):
            self.port = free_port()
            self.argv = argv_of_port(self.port)
            self.logpath = os.path.join(BUILD, "presence-%s.log" % name)
            with open(self.logpath, "ab") as logf:
                logf.write(("--- %s\n" % " ".join(self.argv)).encode())
                logf.flush()
                self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            started.append(self)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if ready(self.port):
                    time.sleep(0.2)
                    self.cpu0 = proc_cpu_s(self.proc.pid)
                    return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("%s did not start (log: %s)" % (name, self.logpath))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def healthz(port):
    try:
        return http_get(port, "/healthz") is not None
    except OSError:
        return False


def listening(port):
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def broker(flags, name="broker"):
    """gale-broker with @flags (a list); .shown is its command line for the docs."""
    base = ["--log-level", "warn", "--keepalive", "0", "--loops", "1"]
    b = Proc(name, lambda p: [BROKER, "--listen", "%s:%d" % (HOST, p)] + base + flags, healthz)
    b.shown = "gale-broker --listen 127.0.0.1:%d %s" % (b.port, " ".join(
        shlex.quote(a) for a in base + flags))
    b.url = "ws://%s:%d/ws" % (HOST, b.port)
    return b


def redis():
    r = Proc("redis", lambda p: [REDIS, "--port", str(p), "--bind", HOST, "--save", "",
                                 "--appendonly", "no"], listening)
    r.shown = "redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no" % r.port
    return r


def commandstats(port):
    """{command: (calls, usec)} from INFO commandstats (INFO itself left out)."""
    out = subprocess.run([REDIS_CLI, "-h", HOST, "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, timeout=10).stdout
    stats = {}
    for line in out.splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[8:].partition(":")
            kv = dict(x.split("=", 1) for x in rest.strip().split(","))
            if name != "info":
                stats[name] = (int(kv["calls"]), int(kv["usec"]))
    return stats


def stats_delta(a, b):
    out = {}
    for k, (calls, usec) in b.items():
        c0, u0 = a.get(k, (0, 0))
        if calls - c0:
            out[k] = (calls - c0, usec - u0)
    return out


def load1():
    return float(open("/proc/loadavg").read().split()[0])


def record(**kw):
    kw.setdefault("load1", load1())
    records.append(kw)
    return kw


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and abs(v) >= 10 ** digits):
        return "{:,}".format(int(round(v)))
    return "%.*g" % (digits, v)


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else None


# --- a. join and leave at 10,000 members, single broker ----------------------------------------
def phases(b, joiners, watchers, k, rounds, mode, one_by_one=False):
    """rounds x (k joins, k leaves of TOPIC, k subs, k unsubs of PLAIN) by the joiners.

    mode: "none" (no watcher), "events" (every watcher gets each join/leave: wait for them)
    or "counts" (count-only: wait for the one message per watcher, then a second more, the
    most a tick can be late). All k at once, or with one_by_one each after the previous
    one's ack and (events) its events. Returns {kind: {ops, cpu_s, msgs, s}}.
    """
    acc = {kind: {"ops": 0, "cpu_s": 0.0, "msgs": 0, "s": 0.0}
           for kind in ("join", "leave", "plain sub", "plain unsub")}
    for _ in range(rounds):
        for kind, topic in (("join", TOPIC), ("leave", TOPIC), ("plain sub", PLAIN),
                            ("plain unsub", PLAIN)):
            m0 = metrics(b.port)
            key = None  # the watchers' counter that tells the step is delivered
            if kind in ("join", "leave") and mode != "none":
                key = kind if mode == "events" else "count"
            before = watchers.per_worker(key) if key and watchers else None
            c0, t0 = cpu_ns(b.pid), time.monotonic()
            for j in range(k if one_by_one else 1):
                n, start = (1, j) if one_by_one else (k, 0)
                if kind in ("join", "plain sub"):
                    joiners.sub(topic, n, start=start)
                else:
                    joiners.unsub(topic, n, start=start)
                if one_by_one and key:
                    ok, _ = watchers.wait_each(key, [x + (j + 1) * s for x, s in
                                                     zip(before, watchers.shares)], 60)
                    if not ok:
                        raise RuntimeError("watchers did not get the %s messages" % kind)
            if key == "count":
                ok, _ = watchers.wait_each(key, [x + s for x, s in zip(before, watchers.shares)],
                                           10)
                time.sleep(1.1)  # a second tick when the phase straddled one
            elif key:
                ok, _ = watchers.wait_each(key, [x + k * s for x, s in
                                                 zip(before, watchers.shares)], 120)
            else:
                ok = True
                time.sleep(0.02)
            if not ok:
                raise RuntimeError("watchers did not get the %s messages" % kind)
            c1, t1 = cpu_ns(b.pid), time.monotonic()
            m1 = metrics(b.port)
            a = acc[kind]
            a["ops"] += k
            a["cpu_s"] += (c1 - c0) / 1e9
            a["s"] += t1 - t0
            a["msgs"] += int(m1.get("gale_presence_events_total", 0) -
                             m0.get("gale_presence_events_total", 0) +
                             m1.get("gale_presence_counts_total", 0) -
                             m0.get("gale_presence_counts_total", 0))
    return acc


def single(events_max, latency):
    """One broker; MEMBERS members of TOPIC: (a) without watchers, then (b) all watching."""
    flags = ["--presence", "bench.>", "--presence-events-max", str(events_max)]
    b = broker(flags)
    members, joiners = Pool(2), Pool(1)
    out = []
    try:
        s = members.open(b.port, MEMBERS, TOPIC)["s"]
        log("   %s members of %s in %.1f s" % (fmt(MEMBERS), TOPIC, s))
        joiners.open(b.port, JOINERS, None)
        m = metrics(b.port)
        if m.get("gale_presence_members") != MEMBERS:
            raise RuntimeError("gale_presence_members %s, not %d" % (
                m.get("gale_presence_members"), MEMBERS))
        cpu_start = proc_cpu_s(b.pid)
        ns_start = cpu_ns(b.pid)
        log("   (a) no watcher: %d rounds of %d joins, leaves, plain subs, unsubs" % (
            ROUNDS, JOINERS))
        acc = phases(b, joiners, None, JOINERS, ROUNDS, "none")
        out.append(record(measure="join_leave", events_max=events_max, watchers=0,
                          members=MEMBERS, joiners=JOINERS, rounds=ROUNDS, result=acc,
                          server=b.shown))
        lat = None
        if latency:
            log("   presence answer latency, %d requests" % QUERIES)
            c0 = cpu_ns(b.pid)
            lat = joiners.presence(TOPIC, QUERIES)
            lat["cpu_s"] = (cpu_ns(b.pid) - c0) / 1e9
            out.append(record(measure="latency", where="single", server=b.shown,
                              members=MEMBERS, result=lat))
        joiners.unsub(TOPIC, JOINERS)
        members.sub(None, MEMBERS, presence=True)  # the members become watchers
        if events_max >= MEMBERS + JOINERS:
            runs = [("events", EVENT_JOINERS, 1, False), ("events", ONE_BY_ONE, 1, True)]
        else:
            runs = [("counts", JOINERS, 2, False)]
        for mode, k, rounds, one in runs:
            log("   (b) %s watchers (%s): %d round(s) of %d joins, leaves, plain subs, unsubs"
                "%s" % (fmt(MEMBERS), mode, rounds, k, ", one by one" if one else ""))
            acc = phases(b, joiners, members, k, rounds, mode, one)
            out.append(record(measure="join_leave", events_max=events_max, watchers=MEMBERS,
                              members=MEMBERS, joiners=k, rounds=rounds, mode=mode,
                              one_by_one=one, result=acc, server=b.shown))
        cpu_end, ns_end = proc_cpu_s(b.pid), cpu_ns(b.pid)
        out[-1]["check"] = {"stat_s": cpu_end - cpu_start,
                            "schedstat_s": (ns_end - ns_start) / 1e9}
    finally:
        b.stop()
        members.stop()
        joiners.stop()
    return out


def row_ops(r):
    """Rows of section a from one phases() record."""
    acc = r["result"]
    rows = []
    plain = {"join": acc["plain sub"], "leave": acc["plain unsub"]}
    for kind in ("join", "leave"):
        a, p = acc[kind], plain[kind]
        us = a["cpu_s"] * 1e6 / a["ops"]
        pus = p["cpu_s"] * 1e6 / p["ops"]
        per = a["msgs"] / a["ops"]
        rows.append({"kind": kind, "us": us, "plain_us": pus, "extra_us": us - pus,
                     "msgs_per_op": per, "us_per_msg": us / per if per else None,
                     "extra_per_msg": (us - pus) / per if per else None, "ops": a["ops"],
                     "msgs": a["msgs"], "cpu_s": a["cpu_s"]})
    return rows


def section_single(rows):
    md = ["### a. One join and one leave at %s members, single broker\n" % fmt(MEMBERS),
          "One broker with `--presence 'bench.>'`; %s connections hold a `sub` of `%s` (its "
          "members). Another %s connections (the joiners) then, in rounds, all `sub` the topic "
          "(a join each), all `unsub` it (a leave each), and for comparison all `sub` and "
          "`unsub` `%s`, a topic without presence, each step waiting for every `ack` (and for "
          "the watchers' messages). Broker CPU is its run time over each step (schedstat, "
          "ns). **No watcher**: the members hold plain subs. **All watching**: the %s members "
          "re-`sub` with `presence: true`; with `--presence-events-max 20000` each join and "
          "leave is one event to each of them: %s joiners at once (%s events per step, the "
          "events of one loop turn leave in one write per watcher), then %s one by one (each "
          "`sub` or `unsub` sent when every watcher has the previous one's event: one write "
          "per event, as for joins spread in time); with the "
          "default 1000 the topic is above it, and each watcher gets one count-only "
          "`presence` message per second while the count changes (a step of %s joins or "
          "leaves, then 1.1 s for the tick: about one message per watcher per step, however "
          "many joins it held). Messages are `gale_presence_events_total` + "
          "`gale_presence_counts_total` from /metrics.\n" % (
              fmt(MEMBERS), TOPIC, fmt(JOINERS), PLAIN, fmt(MEMBERS), fmt(EVENT_JOINERS),
              fmt(EVENT_JOINERS * MEMBERS), fmt(ONE_BY_ONE), fmt(JOINERS))]
    t = []
    summary = {}
    for r in rows:
        if r["measure"] != "join_leave":
            continue
        watch = ("no watcher" if not r["watchers"] else "%s watchers, %s" % (
            fmt(r["watchers"]), "events" if r.get("mode") == "events" else "count-only"))
        one = r.get("one_by_one", False)
        for x in row_ops(r):
            summary[(r["events_max"], r["watchers"], one, x["kind"])] = x
            t.append([fmt(r["events_max"]), watch, "one by one" if one else
                      "%s at once" % fmt(r["joiners"]), x["kind"], fmt(x["ops"]), fmt(x["us"]),
                      fmt(x["plain_us"]), fmt(x["extra_us"]), fmt(x["msgs_per_op"]),
                      fmt(x["us_per_msg"]), fmt(x["extra_per_msg"]), fmt(r["load1"]),
                      "`%s`" % r["server"]])
    md.append(table(["--presence-events-max", "watchers", "sent", "step", "ops", "µs CPU / op",
                     "µs / plain sub or unsub", "µs over plain", "messages / op",
                     "µs / message (whole op)", "µs over plain / message", "load (1 min)",
                     "broker"], t))
    md.append("")
    checks = ["%s s by /proc/PID/stat, %s s by schedstat" % (fmt(r["check"]["stat_s"]),
                                                             fmt(r["check"]["schedstat_s"]))
              for r in rows if r.get("check")]
    if checks:
        md.append("Each broker's whole run, from the first step to the last, as a check of "
                  "the two clocks: %s." % "; ".join(checks))
    return "\n".join(md) + "\n", summary


# --- b. memory per member ----------------------------------------------------------------------
def memory():
    rows = []
    for presence, info in ((False, False), (True, False), (True, True)):
        flags = ["--presence", "bench.>"] if presence else []
        b = broker(flags)
        members = Pool(2)
        try:
            r0 = rss_kib(b.pid)
            members.open(b.port, MEMBERS, PLAIN, concurrency=MEM_CONCURRENCY)
            time.sleep(0.5)
            r1 = rss_kib(b.pid)
            members.sub(TOPIC, MEMBERS, info=INFO if info else None)
            time.sleep(0.5)
            r2, m = rss_kib(b.pid), metrics(b.port)
        finally:
            b.stop()
            members.stop()
        rows.append(record(measure="memory", tool="presence.py", presence=presence,
                           info=info, conns=MEMBERS, rss_kib_before=r0, rss_kib_conns=r1,
                           rss_kib_held=r2, members_gauge=m.get("gale_presence_members"),
                           topics_gauge=m.get("gale_presence_topics"), server=b.shown,
                           command="bench/presence.py: %s connections `sub` %s, then each "
                           "`sub` %s%s" % (fmt(MEMBERS), PLAIN, TOPIC,
                                           " with a 200-byte `info`" if info else "")))
    for presence in (False, True):
        flags = ["--presence", "bench.conn.*"] if presence else []
        b = broker(flags)
        try:
            args = ["conns", "--conns", str(MEMBERS), "--subscribe", "--hold", "2", "--procs",
                    "2", "--concurrency", str(MEM_CONCURRENCY), "--url", b.url, "--pid",
                    str(b.pid)]
            shown = "gale bench " + " ".join(shlex.quote(a) for a in args + ["--json"])
            log("   " + shown)
            p = subprocess.Popen([GALE, "bench"] + args + ["--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            gauge = topics = 0
            deadline = time.monotonic() + 90
            while p.poll() is None and time.monotonic() < deadline:
                m = metrics(b.port)
                if m.get("gale_presence_members", 0) >= gauge:
                    gauge = m.get("gale_presence_members", 0)
                    topics = m.get("gale_presence_topics", 0)
                time.sleep(0.2)
            if p.poll() is None:
                p.kill()
            out, err = p.communicate()
            try:
                rep = json.loads(out)
            except ValueError:
                rep = None
        finally:
            b.stop()
        rows.append(record(measure="memory", tool="gale bench conns", presence=presence,
                           info=False, conns=MEMBERS, status=p.returncode, result=rep,
                           rss_kib_before=((rep or {}).get("broker") or {}).get("rss_kib_before"),
                           rss_kib_held=((rep or {}).get("broker") or {}).get("rss_kib_after"),
                           members_gauge=gauge if presence else None,
                           topics_gauge=topics if presence else None, server=b.shown,
                           command=shown))
    return rows


def section_memory(rows):
    md = ["### b. Memory per member\n",
          "A fresh broker each row, RSS its VmRSS. One topic (this script's client): %s "
          "connections each `sub` `%s` (no presence), RSS is read 0.5 s after the last `ack` "
          "(\"connected\"), then each also `sub`s `%s` (a join each with `--presence "
          "'bench.>'`, a plain sub without), RSS again 0.5 s after the last `ack`; the "
          "second step's growth, minus that of the same step without presence, over the "
          "members is the cost of one member (set-up buffers are out of it). With `info`: "
          "that `sub` carries a 200-byte `info` object (`{\"pad\":\"xxx…\"}`), kept in the "
          "member JSON. %s topics: `gale bench conns --subscribe` (connection i on "
          "`bench.conn.<i>`), with `--presence 'bench.conn.*'` or without, RSS before and "
          "while it holds, the gauges read from /metrics while it holds; per member: the "
          "whole growth minus that without presence (set-up buffers in both, a noisier "
          "figure).\n" % (fmt(MEMBERS), PLAIN, TOPIC, fmt(MEMBERS))]
    t = []
    per = {}
    base = {r["tool"]: r for r in rows if not r["presence"]}

    def step(r):  # (KiB before the measured step, KiB after it)
        return (r.get("rss_kib_conns") or r["rss_kib_before"], r["rss_kib_held"])

    for r in rows:
        if r["rss_kib_held"] is None or r["rss_kib_before"] is None:
            continue
        s0, s1 = step(r)
        growth = (s1 - s0) * 1024
        b0 = base.get(r["tool"])
        extra = None
        if r["presence"] and b0 and r["members_gauge"]:
            extra = (growth - (step(b0)[1] - step(b0)[0]) * 1024) / r["members_gauge"]
            per[(r["tool"], r["info"])] = extra
        where = "1 topic" if r["tool"] == "presence.py" else "%s topics" % fmt(MEMBERS)
        t.append([where, "on" if r["presence"] else "off", "200 B" if r["info"] else "-",
                  fmt(r["conns"]), " → ".join(fmt(v / 1024) for v in (
                      r["rss_kib_before"], r.get("rss_kib_conns"), r["rss_kib_held"])
                      if v is not None),
                  fmt(growth / r["conns"]), fmt(r["members_gauge"]), fmt(r["topics_gauge"]),
                  fmt(extra), fmt(r["load1"]), "`%s`" % r["server"], r["command"] if
                  r["tool"] == "presence.py" else "`%s`" % r["command"]])
    md.append(table(["topics", "presence", "info", "connections",
                     "RSS MiB before → connected → subscribed (1 topic) / before → held",
                     "RSS growth of the step, bytes / connection", "gale_presence_members",
                     "gale_presence_topics", "bytes / member over no presence",
                     "load (1 min)", "broker", "connections made by"], t))
    md.append("")
    return "\n".join(md) + "\n", per


# --- c. cluster: Redis commands, refresh, presence answers ---------------------------------------
def wait_calls(port, base, cmd, want, timeout=20):
    """Waits until INFO commandstats shows `want` more calls of cmd than base, then 0.2 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = commandstats(port)
        if s.get(cmd, (0, 0))[0] - base.get(cmd, (0, 0))[0] >= want:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    return commandstats(port)


def cluster():
    rows = []
    r = redis()
    flags = ["--redis", "redis://%s:%d" % (HOST, r.port), "--presence", "bench.>",
             "--presence-expiry", str(EXPIRY)]
    a, b = broker(flags, "broker-a"), broker(flags, "broker-b")
    members, joiners, watcher, topics = Pool(2), Pool(1), Pool(1), Pool(1)
    servers = "A: `%s`, B: `%s`, `%s`" % (a.shown, b.shown, r.shown)
    try:
        members.open(a.port, MEMBERS, TOPIC)
        watcher.open(b.port, 1, TOPIC, presence=True)
        joiners.open(a.port, JOINERS, None)
        time.sleep(1.5)
        # the refresh, 1 topic with members on A and on B
        s0, t0 = commandstats(r.port), time.monotonic()
        time.sleep(WINDOW)
        s1, t1 = commandstats(r.port), time.monotonic()
        rows.append(record(measure="refresh", topics_a=1, topics_b=1, seconds=t1 - t0,
                           delta=stats_delta(s0, s1), server=servers))
        log("   %d joins, then %d leaves on A" % (JOINERS, JOINERS))
        for kind in ("join", "leave"):
            s0, t0 = commandstats(r.port), time.monotonic()
            c0 = cpu_ns(a.pid)
            if kind == "join":
                joiners.sub(TOPIC, JOINERS)
            else:
                joiners.unsub(TOPIC, JOINERS)
            s1 = wait_calls(r.port, s0, "evalsha", JOINERS)
            t1 = time.monotonic()
            rows.append(record(measure="redis_ops", kind=kind, ops=JOINERS, seconds=t1 - t0,
                               delta=stats_delta(s0, s1), broker_cpu_s=(cpu_ns(a.pid) - c0)
                               / 1e9, members=MEMBERS, server=servers))
        # the refresh again, with TOPICS more topics of one member each on A
        topics.open(a.port, TOPICS, "bench.t.{i}")
        time.sleep(1.5)
        s0, t0 = commandstats(r.port), time.monotonic()
        time.sleep(WINDOW)
        s1, t1 = commandstats(r.port), time.monotonic()
        rows.append(record(measure="refresh", topics_a=1 + TOPICS, topics_b=1,
                           seconds=t1 - t0, delta=stats_delta(s0, s1), server=servers))
        topics.close()
        time.sleep(0.5)
        for name, pool, brk in (("A (the members' broker)", joiners, a),
                                ("B", watcher, b)):
            log("   presence answer latency on %s, %d requests" % (name[0], QUERIES))
            s0, c0 = commandstats(r.port), cpu_ns(brk.pid)
            lat = pool.presence(TOPIC, QUERIES)
            lat["cpu_s"] = (cpu_ns(brk.pid) - c0) / 1e9
            lat["redis"] = stats_delta(s0, commandstats(r.port))
            rows.append(record(measure="latency", where="cluster, on %s" % name,
                               members=MEMBERS + 1, server=servers, result=lat))
    finally:
        for p in (members, joiners, watcher, topics):
            p.stop()
        a.stop()
        b.stop()
        r.stop()
    return rows


def inner(delta):
    """Commands run by the scripts: everything but evalsha (and INFO, already left out)."""
    return {k: v for k, v in delta.items() if k != "evalsha"}


def cmds_text(delta, per):
    return ", ".join("%s %s" % (k, fmt(v[0] / per)) for k, v in sorted(delta.items()))


def section_cluster(rows):
    md = ["### c. Cluster: Redis commands per join and leave, the refresh\n",
          "Two brokers A and B with `--redis` on one redis-server and `--presence 'bench.>' "
          "--presence-expiry %d`: %s members of `%s` on A, one watcher (`presence: true`) "
          "on B. Redis counts the commands a script runs in INFO commandstats too, so "
          "`evalsha` is the scripts the brokers sent and the others what they ran inside "
          "(the JOIN and LEAVE scripts of `broker/cluster_wire.c`); Redis µs is evalsha's "
          "`usec` (the scripts' whole time in Redis). Joins and leaves: %s connections on A "
          "`sub` then `unsub` the topic at once; the delta from before to when Redis has "
          "seen as many `evalsha` (and 0.2 s more), over the count. It includes the refresh "
          "commands of those seconds (next table: about 4 per second here).\n" % (
              EXPIRY, fmt(MEMBERS), TOPIC, fmt(JOINERS))]
    t = []
    summary = {}
    for r in rows:
        if r["measure"] != "redis_ops":
            continue
        d, n = r["delta"], r["ops"]
        ev = d.get("evalsha", (0, 0))
        inn = inner(d)
        ninner = sum(v[0] for v in inn.values())
        summary[r["kind"]] = {"evalsha": ev[0] / n, "inner": ninner / n,
                              "redis_us": ev[1] / n, "all": (ev[0] + ninner) / n}
        t.append([r["kind"], fmt(n), fmt(ev[0] / n), fmt(ninner / n),
                  fmt((ev[0] + ninner) / n), cmds_text(inn, n), fmt(ev[1] / n),
                  fmt(r["broker_cpu_s"] * 1e6 / n), fmt(r["seconds"]), fmt(r["load1"])])
    md.append(table(["step", "ops", "evalsha / op", "commands in scripts / op",
                     "all commands / op", "of which, per op", "Redis µs / op",
                     "broker A CPU µs / op", "s (until Redis had all)", "load (1 min)"], t))
    md.append("")
    md.append("The refresh: every %d s (`--presence-expiry`/3) each broker runs REFRESH once "
              "per topic where it has members (a sweep of expired brokers inside it) and one "
              "`SET` of its node key per shard. Idle windows of %g s, before and after %s "
              "more topics with one member each on A:\n" % (EXPIRY // 3, WINDOW,
                                                             fmt(TOPICS)))
    t = []
    ref = [r for r in rows if r["measure"] == "refresh"]
    period = EXPIRY / 3.0
    for r in ref:
        d, n = r["delta"], r["seconds"] / period
        ev = d.get("evalsha", (0, 0))
        inn = inner(d)
        t.append(["%s on A, %s on B" % (fmt(r["topics_a"]), fmt(r["topics_b"])),
                  fmt(r["seconds"]), fmt(ev[0] / n), fmt(sum(v[0] for v in inn.values()) / n),
                  cmds_text(inn, n), fmt(ev[1] / n), fmt(r["load1"])])
    md.append(table(["topics with members", "window s", "evalsha / period",
                     "other commands / period", "of which, per period", "Redis µs / period",
                     "load (1 min)"], t))
    md.append("")
    if len(ref) == 2:
        def per_period(r):
            n = r["seconds"] / period
            return {k: v[0] / n for k, v in r["delta"].items()}, \
                r["delta"].get("evalsha", (0, 0))[1] / n
        p0, u0 = per_period(ref[0])
        p1, u1 = per_period(ref[1])
        dt = ref[1]["topics_a"] - ref[0]["topics_a"]
        ev = (p1.get("evalsha", 0) - p0.get("evalsha", 0)) / dt
        allc = (sum(p1.values()) - sum(p0.values())) / dt
        summary["refresh"] = {"evalsha": ev, "all": allc, "redis_us": (u1 - u0) / dt}
        md.append("Per topic per period, from the difference: **%s `evalsha`, %s commands in "
                  "all, %s µs of Redis**." % (fmt(ev), fmt(allc), fmt((u1 - u0) / dt)))
    md.append("\nServers: %s.\n" % (rows[0]["server"] if rows else "-"))
    return "\n".join(md) + "\n", summary


def section_latency(rows):
    md = ["### e. The `presence` answer at %s members\n" % fmt(MEMBERS),
          "%d `presence` requests one after another from one connection (each sent when the "
          "previous answer has arrived), `--presence-list-max` 1000 (default): `count` is "
          "exact and 1,000 members are listed. Single node: the broker of a, with no "
          "watcher. Cluster: the brokers of c, each answer a READ script (a sweep, HLEN and "
          "HRANDFIELD 1000 WITHVALUES) on Redis.\n" % QUERIES]
    t = []
    summary = {}
    for r in rows:
        if r["measure"] != "latency":
            continue
        x = r["result"]
        ms = [v * 1000 for v in x["rtts"]]
        red = x.get("redis") or {}
        n = len(ms) or 1
        summary[r["where"]] = {"p50": pct(ms, 50), "p99": pct(ms, 99)}
        t.append([r["where"], fmt(r["members"]), "%s / %s" % (fmt(x["count"]),
                                                             fmt(x["listed"])),
                  fmt(x["bytes"]), fmt(len(ms)), fmt(pct(ms, 50)), fmt(pct(ms, 90)),
                  fmt(pct(ms, 99)), fmt(max(ms) if ms else None),
                  fmt(x["cpu_s"] * 1e6 / n),
                  fmt(red.get("evalsha", (0, 0))[0] / n) if red else "-",
                  fmt(red.get("evalsha", (0, 0))[1] / n) if red else "-", fmt(r["load1"])])
    md.append(table(["where", "members", "count / listed", "answer bytes", "requests",
                     "ms p50", "ms p90", "ms p99", "ms max", "broker CPU µs / answer",
                     "evalsha / answer", "Redis µs / answer", "load (1 min)"], t))
    md.append("")
    return "\n".join(md) + "\n", summary


# --- d. a broker killed with -9 ------------------------------------------------------------------
def killed():
    rows = []
    for run in range(KILL_RUNS):
        r = redis()
        flags = ["--redis", "redis://%s:%d" % (HOST, r.port), "--presence", "bench.>",
                 "--presence-expiry", str(EXPIRY), "--presence-events-max", "20000"]
        a, b = broker(flags, "broker-a"), broker(flags, "broker-b")
        members, watcher = Pool(1), Pool(1)
        try:
            watcher.open(b.port, 1, TOPIC, presence=True)
            members.open(a.port, KILLED, TOPIC)
            ok, _ = watcher.wait_each("join", [KILLED], 20)
            if not ok:
                raise RuntimeError("the watcher did not see the %d joins" % KILLED)
            time.sleep(1.0 + 0.5 * run)  # a different point of A's refresh period each run
            t_kill = time.time()
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            ok, _ = watcher.wait_each("leave", [KILLED], 4 * EXPIRY + 10)
            c = watcher.counts()
        finally:
            members.stop()
            watcher.stop()
            a.stop()
            b.stop()
            r.stop()
        rows.append(record(measure="killed", run=run, members=KILLED, all_left=ok,
                           leaves=c["leave"], first_s=c["first_leave"] - t_kill
                           if c["first_leave"] else None,
                           last_s=c["last_leave"] - t_kill if c["last_leave"] else None,
                           server="A: `%s`, B: `%s`, `%s`" % (a.shown, b.shown, r.shown)))
    return rows


def section_killed(rows):
    bound = EXPIRY + EXPIRY / 3.0
    md = ["### d. The members of a broker killed with -9\n",
          "Brokers A and B on one redis-server with `--presence 'bench.>' --presence-expiry "
          "%d --presence-events-max 20000` (so that each leave is an event); one watcher on B, "
          "%s members on A; once the watcher has all their joins (and %s s more, a different "
          "point of A's refresh period each run), A gets SIGKILL. The times are from the "
          "kill to the watcher's first and last `leave` (they come from B's own REFRESH, "
          "whose sweep finds A's entry expired). The documented bound is expiry + expiry/3 "
          "= %g s, plus one round trip.\n" % (EXPIRY, fmt(KILLED), ", ".join(
              fmt(1.0 + 0.5 * i) for i in range(KILL_RUNS)), bound)]
    t = []
    for r in rows:
        t.append([fmt(r["run"] + 1), "%s / %s" % (fmt(r["leaves"]), fmt(r["members"])),
                  fmt(r["first_s"]), fmt(r["last_s"]),
                  "yes" if r["all_left"] and (r["last_s"] or 99) <= bound + 0.5 else "**no**",
                  fmt(r["load1"]), r["server"]])
    md.append(table(["run", "leaves seen", "first leave s", "last leave s",
                     "within %g s" % bound, "load (1 min)", "servers"], t))
    md.append("")
    return "\n".join(md) + "\n"


# --- the section --------------------------------------------------------------------------------
def machine():
    model, mem = "-", 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024.0 / 1024.0
    return "%d cores, %s, %.1f GiB RAM, Linux %s" % (os.cpu_count(), model, mem,
                                                     os.uname().release)


def main():
    for path in (GALE, BROKER):
        if not os.access(path, os.X_OK):
            sys.exit("presence.py: %s is missing: cmake --build %s --target gale-broker gale"
                     % (path, BUILD))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < MEMBERS + JOINERS + 100:
        sys.exit("presence.py: the open-file limit %d is below %d" % (hard, MEMBERS + JOINERS))
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = open("/proc/loadavg").read().split()[:3]
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "-"
    if subprocess.run(["git", "-C", ROOT, "diff-index", "--quiet", "HEAD", "--"]).returncode:
        rev += " (with uncommitted changes)"
    log("== a. join and leave at %s members, --presence-events-max 20000" % fmt(MEMBERS))
    one = single(20000, True)
    log("== a. the same at --presence-events-max 1000 (the default)")
    one += single(1000, False)
    log("== b. memory per member")
    mem = memory()
    clu = kil = []
    if REDIS and REDIS_CLI:
        log("== c. cluster: Redis commands per join and leave, refresh, presence answers")
        clu = cluster()
        log("== d. a broker killed with -9 holding %s members" % fmt(KILLED))
        kil = killed()
    load1_ = open("/proc/loadavg").read().split()[:3]
    s_one, a_sum = section_single(one)
    s_mem, m_sum = section_memory(mem)
    s_clu, c_sum = section_cluster(clu) if clu else (
        "### c. Cluster\n\nNot measured: no redis-server.\n", {})
    s_kil = section_killed(kil) if kil else ""
    s_lat, l_sum = section_latency(one + clu)
    redis_v = subprocess.run([REDIS, "--version"], capture_output=True, text=True).stdout.split(
        " sha")[0] if REDIS else "-"
    cmd = "BUILD=%s bench/presence.py" % os.path.relpath(BUILD, ROOT)
    if QUICK:
        cmd = "QUICK=1 " + cmd

    def a(ev, w, one, kind, key):
        x = a_sum.get((ev, w, one, kind))
        return fmt(x[key]) if x else "-"

    summ = []
    for kind in ("join", "leave"):
        plain = "sub" if kind == "join" else "unsub"
        summ.append(["%s, no watcher (a plain %s: %s µs)" % (
            kind, plain, a(20000, 0, False, kind, "plain_us")),
            a(20000, 0, False, kind, "us"), a(20000, 0, False, kind, "extra_us"), "-"])
    for one in (False, True):
        for kind in ("join", "leave"):
            summ.append(["%s, %s watchers, events, %s (%s events each)" % (
                kind, fmt(MEMBERS), "one by one" if one else "%s at once" % fmt(
                    EVENT_JOINERS), a(20000, MEMBERS, one, kind, "msgs_per_op")),
                a(20000, MEMBERS, one, kind, "us"), a(20000, MEMBERS, one, kind, "extra_us"),
                a(20000, MEMBERS, one, kind, "extra_per_msg")])
    for kind in ("join", "leave"):
        summ.append(["%s, %s watchers, count-only at the default 1000, %s at once (%s "
                     "messages each)" % (kind, fmt(MEMBERS), fmt(JOINERS),
                                         a(1000, MEMBERS, False, kind, "msgs_per_op")),
                     a(1000, MEMBERS, False, kind, "us"),
                     a(1000, MEMBERS, False, kind, "extra_us"),
                     a(1000, MEMBERS, False, kind, "extra_per_msg")])
    head = [
        "## Presence\n",
        "Generated by `bench/presence.py` on %s in %d s (gale %s, built in `%s`; %s; load "
        "average %s at the start, %s at the end), with `%s`. Do not edit by hand: run it "
        "again, then `bench/plot.py` (the command in the header above) to include it here. "
        "Raw data: [`bench/presence.jsonl`](bench/presence.jsonl).%s\n" % (
            when, time.monotonic() - T0, rev, os.path.relpath(BUILD, ROOT), redis_v,
            " ".join(load0), " ".join(load1_), cmd,
            " **QUICK run: small counts, not representative.**" if QUICK else ""),
        "One run on this machine (%s, loopback only); the broker, this "
        "script's client processes and Redis share its cores (and the machine with other "
        "work): compare the figures and ratios within this run, not absolute figures across "
        "runs. The load is `bench/presence.py`'s own client (Python, raw sockets; `gale "
        "bench` has no presence mode) except where a `gale bench` command is shown. Each "
        "row's broker command is exact (ports were those of that run).\n" % machine(),
        table(["single broker, %s members" % fmt(MEMBERS), "µs broker CPU / op",
               "µs over a plain sub / unsub", "µs over plain / message delivered"], summ),
        "",
    ]
    bullets = []
    burst = a_sum.get((20000, MEMBERS, False, "join"))
    lone = a_sum.get((20000, MEMBERS, True, "join"))
    cnt = a_sum.get((1000, MEMBERS, False, "join"))
    if burst and lone:
        bullets.append("Events: a join to %s watchers costs %s ms of broker CPU when it is "
                       "alone in its loop turn (%s µs per event: a write per watcher), %s ms "
                       "each when %s joins arrive together (%s µs per event: the events of a "
                       "turn leave in one write per watcher)." % (
                           fmt(MEMBERS), fmt(lone["us"] / 1000), fmt(lone["extra_per_msg"]),
                           fmt(burst["us"] / 1000), fmt(EVENT_JOINERS),
                           fmt(burst["extra_per_msg"])))
    if cnt:
        bullets.append("Above `--presence-events-max` a watcher gets at most one count-only "
                       "message per second (%s µs over plain each here): about %s ms of "
                       "broker CPU per second for %s watchers of a topic whose count keeps "
                       "changing, however many joins and leaves." % (
                           fmt(cnt["extra_per_msg"]),
                           fmt(cnt["extra_per_msg"] * MEMBERS / 1000), fmt(MEMBERS)))
    if m_sum:
        bullets.append("Memory: %s bytes of RSS per member on one topic, %s with a 200-byte "
                       "`info`, %s per member of its own topic (%s topics)." % (
                           fmt(m_sum.get(("presence.py", False))),
                           fmt(m_sum.get(("presence.py", True))),
                           fmt(m_sum.get(("gale bench conns", False))), fmt(MEMBERS)))
    if c_sum:
        j, lv, rf = c_sum.get("join", {}), c_sum.get("leave", {}), c_sum.get("refresh", {})
        bullets.append("Cluster: a join is %s `evalsha` + %s commands inside it (%s in all, "
                       "%s µs of Redis), a leave %s + %s (%s, %s µs); the refresh is %s "
                       "`evalsha` (%s commands in all) per topic per %d s." % (
                           fmt(j.get("evalsha")), fmt(j.get("inner")), fmt(j.get("all")),
                           fmt(j.get("redis_us")), fmt(lv.get("evalsha")),
                           fmt(lv.get("inner")), fmt(lv.get("all")), fmt(lv.get("redis_us")),
                           fmt(rf.get("evalsha")), fmt(rf.get("all")), EXPIRY // 3))
    if kil:
        bullets.append("A broker killed with -9: its %s members had left at a watcher on "
                       "another broker %s s after the kill (runs: %s; bound %g s)." % (
                           fmt(KILLED), fmt(max(r["last_s"] or 99 for r in kil)),
                           ", ".join(fmt(r["last_s"]) for r in kil), EXPIRY + EXPIRY / 3.0))
    if l_sum:
        bullets.append("`presence` at %s members (1,000 listed): %s." % (
            fmt(MEMBERS), "; ".join("%s p50 %s ms, p99 %s ms" % (k, fmt(v["p50"]),
                                                                fmt(v["p99"]))
                                    for k, v in l_sum.items())))
    text = "\n".join(head) + "\n" + "".join("- %s\n" % b for b in bullets) + "\n" + \
        "\n".join(x.strip("\n") + "\n" for x in (s_one, s_mem, s_clu, s_kil, s_lat) if x)
    os.makedirs(os.path.join(DOCS, "bench"), exist_ok=True)
    with open(os.path.join(DOCS, "bench", "presence.md"), "w") as f:
        f.write(text.rstrip("\n") + "\n")
    with open(os.path.join(DOCS, "bench", "presence.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    log("== wrote %s/bench/presence.md and presence.jsonl (bench/plot.py includes it in "
        "BENCHMARKS.md)" % DOCS)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in pools:
            p.stop()
        for p in started:
            p.stop()
