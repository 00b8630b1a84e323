#!/usr/bin/python3
"""bench/history.py: what history and recovery cost gale-broker, measured side by side.

    bench/history.py                       # BUILD=build-bench, ~4 min on 2 cores
    BUILD=build/h-bench PAIRS=3 bench/history.py

Writes the section "History and recovery" to docs/bench/history.md (bench/plot.py includes
it in docs/BENCHMARKS.md) and every run as one JSON line to docs/bench/history.jsonl:

  a. broker CPU per delivery, fanout at 10,000 subscribers as fast as acks allow, on a
     broker with `--history 'bench.>=100'` (the bench topic has history) and on one without,
     PAIRS runs each, alternating, each on a fresh broker;
  b. through one real redis-server: publishes/s of one publisher (window 64, 10
     subscribers) to a topic with history (the broker runs the XADD + PUBLISH script) and
     to one without (a plain PUBLISH), alternating, a fresh broker and Redis each run;
  c. the reconnect storm, `gale bench recover --subs 10000 --msgs 100`, on a single node
     and on a 2-broker cluster through Redis, with the Redis commands it cost (INFO
     commandstats, --redis-cli);
  d. memory per retained message: 100,000 messages of ~100 bytes into a broker with
     `--history 'bench.>=100000'`: gale_history_bytes from /metrics and the RSS growth
     (next to the same publishes on a broker without history).

Every process this script starts listens on 127.0.0.1 on a free port, every run is bounded
(`timeout`), and everything it started is stopped on exit. Needs redis-server for b and c
(skipped without it). Environment: BUILD (build-bench), DOCS (docs), PAIRS (3), DURATION (5),
SUBS (10000), MSGS (100), RETAIN (100000), QUICK=1 (small counts, a sanity run).
"""
import json
import os
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
PAIRS = int(os.environ.get("PAIRS", "1" if QUICK else "3"))
DURATION = float(os.environ.get("DURATION", "2" if QUICK else "5"))
SUBS = int(os.environ.get("SUBS", "1000" if QUICK else "10000"))
MSGS = int(os.environ.get("MSGS", "100"))
RETAIN = int(os.environ.get("RETAIN", "10000" if QUICK else "100000"))
GALE = os.path.join(BUILD, "gale")
BROKER = os.path.join(BUILD, "gale-broker")
REDIS = shutil.which("redis-server")
HOST = "127.0.0.1"

started = []  # every process we started, stopped at exit
records = []
T0 = time.monotonic()


def log(msg):
    print("[%4ds] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


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
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
            self.logpath = os.path.join(BUILD, "history-%s.log" % name)
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
    """gale-broker with @flags (a list); the command line shown in the docs uses PORT."""
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


def bench(args, limit):
    """Runs `gale bench ARGS --json`; returns (shown command, exit status, report or None)."""
    argv = [GALE, "bench"] + args + ["--json"]
    shown = "gale bench " + " ".join(shlex.quote(a) for a in args + ["--json"])
    log("   " + shown)
    global last_load
    last_load = load1()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
        rc, text, err = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired:
        rc, text, err = 124, "", "timed out"
    try:
        rep = json.loads(text)
    except ValueError:
        rep = None
    if rc != 0:
        log("   exit %d: %s" % (rc, (err or text).strip()[-300:]))
    return shown, rc, rep


def load1():
    return float(open("/proc/loadavg").read().split()[0])


last_load = None  # the 1-minute load average just before the last gale bench


def record(**kw):
    kw.setdefault("load1", last_load)
    records.append(kw)
    return kw


def fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v >= 10 ** digits):
        return "{:,}".format(int(round(v)))
    return "%.*g" % (digits, v)


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- a. CPU per delivery with and without history -------------------------------------------
def cpu_per_delivery():
    rows = []
    procs = 2 if SUBS >= 1000 else 1
    for i in range(PAIRS):
        for hist in ((False, True) if i % 2 == 0 else (True, False)):
            flags = ["--history", "bench.>=100"] if hist else []
            b = broker(flags)
            try:
                shown, rc, rep = bench(["fanout", "--subs", str(SUBS), "--pubs", "1", "--size", "100",
                                        "--rate", "0", "--window", "64", "--duration", str(DURATION),
                                        "--procs", str(procs), "--setup-timeout", "60", "--drain",
                                        "10", "--url", b.url, "--pid", str(b.pid)],
                                       DURATION + 100)
                hb = metrics(b.port).get("gale_history_messages")
            finally:
                b.stop()
            rows.append(record(measure="cpu", history=hist, server=b.shown, command=shown,
                               status=rc, result=rep, history_messages=hb))
    return rows


def section_cpu(rows):
    def us(r):
        return ((r["result"] or {}).get("broker") or {}).get("cpu_us_per_delivery")

    on = [us(r) for r in rows if r["history"] and r["status"] == 0]
    off = [us(r) for r in rows if not r["history"] and r["status"] == 0]
    mon, moff = median(on), median(off)
    ratio = mon / moff if mon and moff else None
    md = ["### a. Broker CPU per delivery, history on and off\n",
          "`fanout` at %s subscribers of `bench.fanout`, 1 publisher, ~100-byte payloads, as "
          "fast as acks allow (window 64), %g s, on a fresh broker each run, alternating. "
          "History on: `--history 'bench.>=100'` (every message is also appended to the "
          "topic's ring of 100 and carries `ep` and `off`); off: no rule.\n" % (
              "{:,}".format(SUBS), DURATION)]
    t = []
    for r in rows:
        x = r["result"] or {}
        b = x.get("broker") or {}
        t.append(["on" if r["history"] else "off", fmt(b.get("cpu_us_per_delivery")),
                  fmt(x.get("deliveries_per_s")),
                  "%s / %s" % (fmt(x.get("received")), fmt(x.get("expected"))),
                  fmt(b.get("cpu_s")), fmt(r["load1"]),
                  "ok" if r["status"] == 0 else "exit %s" % r["status"],
                  "`%s`" % r["server"], "`%s`" % r["command"]])
    md.append(table(["history", "µs CPU / delivery", "deliveries/s", "received / expected",
                     "broker CPU s", "load (1 min)", "status", "broker", "command"], t))
    md.append("")
    md.append("Median µs per delivery: **%s with history, %s without: %s×** (goal ≤ 1.2×: %s)."
              % (fmt(mon), fmt(moff), fmt(ratio), "met" if ratio and ratio <= 1.2 else
                 "**not met**"))
    return "\n".join(md) + "\n", ratio


# --- b. publishes/s through Redis ---------------------------------------------------------------
def redis_publish_rate():
    rows = []
    if not REDIS:
        return rows
    for i in range(PAIRS):
        for hist in ((False, True) if i % 2 == 0 else (True, False)):
            r = redis()
            flags = ["--redis", "redis://%s:%d" % (HOST, r.port)]
            if hist:
                flags += ["--history", "bench.>=1000"]
            b = broker(flags)
            try:
                rc0 = proc_cpu_s(r.pid)
                shown, rc, rep = bench(["fanout", "--subs", "10", "--pubs", "1", "--size", "100",
                                        "--rate", "0", "--window", "64", "--duration",
                                        str(DURATION), "--drain", "10", "--url", b.url, "--pid",
                                        str(b.pid)], DURATION + 60)
                rcpu = proc_cpu_s(r.pid) - rc0
            finally:
                b.stop()
                r.stop()
            rows.append(record(measure="redis_publish", history=hist, server=b.shown,
                               redis=r.shown, command=shown, status=rc, result=rep,
                               redis_cpu_s=rcpu))
    return rows


def pub_rate(r):
    x = r["result"] or {}
    return x["acked"] / x["publish_s"] if x.get("publish_s") else None


def section_redis(rows):
    if not rows:
        return "### b. Publishes per second through Redis\n\nNot measured: no redis-server.\n", None
    on = [pub_rate(r) for r in rows if r["history"] and r["status"] == 0]
    off = [pub_rate(r) for r in rows if not r["history"] and r["status"] == 0]
    mon, moff = median(on), median(off)
    ratio = mon / moff if mon and moff else None
    md = ["### b. Publishes per second through Redis\n",
          "One broker with `--redis` on a fresh redis-server 7 each run; one publisher as fast "
          "as acks allow (window 64), %g s, 10 subscribers on the same broker. History on: "
          "`--history 'bench.>=1000'`, each publish runs the script (XADD to the topic's "
          "stream, trimmed, + PUBLISH) and is acked with its offset; off: a plain PUBLISH. "
          "Redis CPU is its /proc time over the run.\n" % DURATION]
    t = []
    for r in rows:
        x = r["result"] or {}
        b = x.get("broker") or {}
        acked = x.get("acked") or 0
        t.append(["on" if r["history"] else "off", fmt(pub_rate(r)),
                  fmt(acked), "%s / %s" % (fmt(x.get("received")), fmt(x.get("expected"))),
                  fmt(b.get("cpu_s") * 1e6 / acked if acked and b.get("cpu_s") is not None
                      else None),
                  fmt(r["redis_cpu_s"] * 1e6 / acked if acked else None), fmt(r["load1"]),
                  "ok" if r["status"] == 0 else "exit %s" % r["status"],
                  "`%s`" % r["server"], "`%s`" % r["command"]])
    md.append(table(["history", "publishes/s (acked)", "acked", "received / expected",
                     "broker CPU µs / publish", "Redis CPU µs / publish", "load (1 min)",
                     "status", "broker", "command"], t))
    md.append("")
    md.append("Median publishes/s: **%s with the history script, %s with PUBLISH: %s** (goal ≥ "
              "1/3 = 0.333: %s)." % (fmt(mon), fmt(moff), fmt(ratio),
                                     "met" if ratio and ratio >= 1 / 3 else "**not met**"))

    def rcpu(r):
        acked = (r["result"] or {}).get("acked")
        return r["redis_cpu_s"] * 1e6 / acked if acked else None

    con = median([rcpu(r) for r in rows if r["history"] and r["status"] == 0])
    coff = median([rcpu(r) for r in rows if not r["history"] and r["status"] == 0])
    if con and coff:
        md.append("One publisher with a window of 64 is bound by the round trips (and by the "
                  "load on the machine), not by Redis: Redis's CPU per publish, median **%s µs "
                  "with the script, %s µs with PUBLISH**, gives the ratio where a "
                  "single-threaded Redis is the limit: **%s** (%s / %s publishes/s per Redis "
                  "core)." % (fmt(con), fmt(coff), fmt(coff / con), fmt(1e6 / con),
                              fmt(1e6 / coff)))
    return "\n".join(md) + "\n", ratio


# --- c. reconnect storm -------------------------------------------------------------------------
def storm():
    rows = []
    procs = 1
    args = ["recover", "--subs", str(SUBS), "--msgs", str(MSGS), "--procs", str(procs),
            "--setup-timeout", "60"]
    for i in range(PAIRS):
        b = broker(["--history", "bench.>=1000"])
        try:
            shown, rc, rep = bench(args + ["--url", b.url, "--pid", str(b.pid)], 150)
        finally:
            b.stop()
        rows.append(record(measure="recover", where="single", server="`%s`" % b.shown,
                           command=shown, status=rc, result=rep))
    if not REDIS:
        return rows
    for i in range(PAIRS):
        for subs, back in ((SUBS, "A"), (SUBS, "B"), (max(SUBS // 10, 10), "A")):
            r = redis()
            flags = ["--redis", "redis://%s:%d" % (HOST, r.port), "--history", "bench.>=1000"]
            a, b = broker(flags, "broker-a"), broker(flags, "broker-b")
            try:
                cargs = ["recover", "--subs", str(subs), "--msgs", str(MSGS), "--procs",
                         str(procs), "--setup-timeout", "60", "--url", a.url, "--pub-url", b.url]
                if back == "B":
                    cargs += ["--reconnect-url", b.url]
                cargs += ["--redis-cli", str(r.port), "--pid", str((a if back == "A" else b).pid)]
                shown, rc, rep = bench(cargs, 150)
            finally:
                a.stop()
                b.stop()
                r.stop()
            rows.append(record(measure="recover", where="cluster", back=back, subs=subs,
                               server="A: `%s`, B: `%s`, `%s`" % (a.shown, b.shown, r.shown),
                               redis=r.shown, command=shown, status=rc, result=rep))
    return rows


def section_storm(rows):
    md = ["### c. Reconnect storm\n",
          "`recover`: S subscribers of `bench.recover` subscribe (each keeps the `ep`/`off` of "
          "its ack), all disconnect (close handshake), %d messages of ~100 bytes are published, "
          "then all reconnect at once (256 set-ups in flight) and subscribe with `since`. "
          "\"Caught up\" is the time from the start of the reconnect to the last subscriber's "
          "`ack` (its replay is before it). Single node: `--history 'bench.>=1000'`. Cluster: "
          "two brokers A and B with `--redis` on one redis-server; subscribers on A, the "
          "publisher on B (A is not subscribed to the topic in Redis while they are away, so "
          "it must read the stream), reconnecting to A or to B; the Redis commands are INFO "
          "commandstats before and after the reconnect (`--redis-cli`): `evalsha` is the "
          "broker's read script (a position and the stream after an offset). Broker CPU is "
          "that of the broker they reconnect to.\n" % MSGS]
    t = []
    ok = True
    single = []
    for r in rows:
        x = r["result"] or {}
        b = x.get("broker") or {}
        rd = x.get("redis") or {}
        cmds = ", ".join("%s %s" % (k, fmt(v)) for k, v in sorted((rd.get("commands") or {})
                                                                  .items()))
        subs = x.get("subs", r.get("subs", SUBS))
        where = "single node" if r["where"] == "single" else "cluster, back to %s" % r["back"]
        a = x.get("ack_ms") or {}
        good = (r["status"] == 0 and x.get("recovered") == subs and x.get("lost") == 0 and
                x.get("duplicates") == 0)
        ok &= good
        if r["where"] == "single":
            single.append(x.get("reconnect_s") or 99)
        t.append([where, fmt(subs), "%s / %s" % (fmt(x.get("recovered")), fmt(subs)),
                  fmt(x.get("lost")), fmt(x.get("duplicates")), fmt(x.get("reconnect_s")),
                  "%s / %s" % (fmt(a.get("p50")), fmt(a.get("p99"))) if a else "-",
                  fmt(b.get("cpu_us_per_client")),
                  fmt(rd.get("evalsha")) if rd else "-", cmds or "-", fmt(r["load1"]),
                  "ok" if r["status"] == 0 else "exit %s" % r["status"],
                  "`%s`" % r["command"], r["server"]])
    md.append(table(["where", "subscribers", "recovered", "lost", "duplicated", "caught up s",
                     "ack ms p50 / p99", "broker CPU µs / client", "Redis evalsha",
                     "Redis commands during the reconnect", "load (1 min)", "status", "command",
                     "servers"], t))
    md.append("")
    reads = {}
    for r in rows:
        x = r["result"] or {}
        if r["where"] == "cluster" and r["status"] == 0 and (x.get("redis") or {}).get("evalsha"):
            reads.setdefault(x["subs"], []).append(x["redis"]["evalsha"])
    growth = None
    if len(reads) >= 2:
        lo, hi = min(reads), max(reads)
        growth = median(reads[hi]) / median(reads[lo])
        md.append("Redis reads (`evalsha`) during a cluster reconnect, median: **%s for %s "
                  "subscribers, %s for %s** (%s× for %s× the subscribers): %s" % (
                      fmt(median(reads[hi])), fmt(hi), fmt(median(reads[lo])), fmt(lo),
                      fmt(growth), fmt(hi / lo),
                      "about O(1) per topic." if growth < 2 else
                      "they grow with the number of clients, **not O(1) per topic** (goal). "
                      "Not one read per client either: a broker runs one read of a topic at a "
                      "time and every `sub` that arrives meanwhile shares the next one "
                      "(`broker/cluster_history.c`), so a storm costs about one read per "
                      "Redis round trip for as long as subscriptions keep arriving."))
    return "\n".join(md) + "\n", (ok, single), growth


# --- d. memory per retained message ---------------------------------------------------------------
def memory():
    rows = []
    for hist in (True, False):
        flags = (["--history", "bench.>=%d" % RETAIN, "--history-memory", "1G"] if hist else [])
        b = broker(flags)
        try:
            m0, r0 = metrics(b.port), rss_kib(b.pid)
            shown, rc, rep = bench(["fanout", "--subs", "0", "--pubs", "1", "--size", "100",
                                    "--rate", "0", "--window", "64", "--messages", str(RETAIN),
                                    "--url", b.url, "--pid", str(b.pid)], 120)
            time.sleep(0.5)
            m1, r1 = metrics(b.port), rss_kib(b.pid)
        finally:
            b.stop()
        rows.append(record(measure="memory", history=hist, server=b.shown, command=shown,
                           status=rc, result=rep, rss_kib_start=r0, rss_kib_end=r1,
                           history_bytes=m1.get("gale_history_bytes", 0) -
                           m0.get("gale_history_bytes", 0),
                           history_messages=m1.get("gale_history_messages", 0),
                           evicted=m1.get("gale_history_evicted_total", 0)))
    return rows


def section_memory(rows):
    md = ["### d. Memory per retained message\n",
          "%s messages with ~100-byte data (the bench object, padded) published by one "
          "connection into a fresh broker with `--history 'bench.>=%d' "
          "--history-memory 1G` (all of them held), and into one without history. "
          "`gale_history_bytes` is the broker's own count (messages, their frames, topic "
          "states; /metrics); RSS is VmRSS of the broker from its start to 0.5 s after the "
          "publishes (the bench has exited).\n" % ("{:,}".format(RETAIN),
                                                                    RETAIN)]
    t = []
    per = None
    for r in rows:
        held = r["history_messages"]
        growth = (r["rss_kib_end"] - r["rss_kib_start"]) * 1024
        hb = r["history_bytes"]
        t.append(["on" if r["history"] else "off", fmt(int(held)), fmt(int(hb)),
                  fmt(hb / held) if held else "-",
                  "%s → %s" % (fmt(r["rss_kib_start"] / 1024), fmt(r["rss_kib_end"] / 1024)),
                  fmt(growth / RETAIN), "ok" if r["status"] == 0 else "exit %s" % r["status"],
                  "`%s`" % r["server"], "`%s`" % r["command"]])
    on = [r for r in rows if r["history"]]
    off = [r for r in rows if not r["history"]]
    if on and off and on[0]["history_messages"]:
        g_on = (on[0]["rss_kib_end"] - on[0]["rss_kib_start"]) * 1024
        g_off = (off[0]["rss_kib_end"] - off[0]["rss_kib_start"]) * 1024
        per = (g_on - g_off) / on[0]["history_messages"]
    md.append(table(["history", "messages held", "gale_history_bytes", "bytes / message "
                     "(metric)", "RSS MiB start → end", "RSS growth bytes / message published",
                     "status", "broker", "command"], t))
    md.append("")
    if per is not None:
        md.append("RSS growth with history minus without, per message held: **%s bytes**; the "
                  "broker's own count: **%s bytes** per message." % (
                      fmt(per), fmt(on[0]["history_bytes"] / on[0]["history_messages"])))
    return "\n".join(md) + "\n"


def main():
    for path in (GALE, BROKER):
        if not os.access(path, os.X_OK):
            sys.exit("history.py: %s is missing: cmake --build %s --target gale-broker gale"
                     % (path, BUILD))
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = open("/proc/loadavg").read().split()[:3]
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "-"
    if subprocess.run(["git", "-C", ROOT, "diff-index", "--quiet", "HEAD", "--"]).returncode:
        rev += " (with uncommitted changes)"
    log("== a. CPU per delivery, history on / off")
    cpu = cpu_per_delivery()
    log("== b. publishes/s through Redis, history script / PUBLISH")
    red = redis_publish_rate()
    log("== c. reconnect storm")
    st = storm()
    log("== d. memory per retained message")
    mem = memory()
    load1 = open("/proc/loadavg").read().split()[:3]
    s_cpu, r_cpu = section_cpu(cpu)
    s_red, r_red = section_redis(red)
    s_st, (all_good, single), growth = section_storm(st)
    ok_st = all_good and bool(single) and max(single) <= 2
    s_mem = section_memory(mem)
    redis_v = subprocess.run([REDIS, "--version"], capture_output=True, text=True).stdout.split(
        " sha")[0] if REDIS else "-"
    head = [
        "## History and recovery\n",
        "Generated by `bench/history.py` on %s in %d s (gale %s, built in `%s`; %s; load "
        "average %s at the start, %s at the end). Do not edit by hand: run it again, then "
        "`bench/plot.py` (the command in the header above) to include it here. Raw data: "
        "[`bench/history.jsonl`](bench/history.jsonl).%s\n" % (
            when, time.monotonic() - T0, rev, os.path.relpath(BUILD, ROOT), redis_v,
            " ".join(load0), " ".join(load1),
            " **QUICK run: small counts, not representative.**" if QUICK else ""),
        "Broker and load generator share the 2 cores (and, here, the machine with other "
        "work): compare the ratios within this run, not absolute figures across runs. Each "
        "row's command is exact (ports and pids were those of that run).\n",
        table(["goal", "figure", "result"], [
            ["CPU per delivery, history / none ≤ 1.2× (%s subs)" % "{:,}".format(SUBS),
             fmt(r_cpu) + "×", "met" if r_cpu and r_cpu <= 1.2 else "**not met**"],
            ["publishes/s through Redis, history script / PUBLISH ≥ 1/3", fmt(r_red),
             "met" if r_red and r_red >= 1 / 3 else "**not met**" if r_red else "not measured"],
            ["reconnect storm (%s subs, %d msgs): all recovered, 0 lost, 0 duplicated, ≤ 2 s"
             % ("{:,}".format(SUBS), MSGS),
             "single node caught up in %s s (runs: %s); %s" % (
                 fmt(median(single)), ", ".join(fmt(v) for v in single),
                 "every run (cluster too): all recovered, 0 lost, 0 duplicated" if all_good
                 else "**a run lost, duplicated or failed**: see c."),
             "met" if ok_st else "**not met**"],
            ["cluster reconnect: Redis reads O(1) per topic, not O(clients)",
             "%s× the reads for 10× the clients" % fmt(growth) if growth else "-",
             "not measured" if growth is None else "met" if growth < 2 else "**not met**"],
        ]),
        "",
    ]
    text = "\n".join(head) + "\n" + "\n".join([s_cpu, s_red, s_st, s_mem])
    os.makedirs(os.path.join(DOCS, "bench"), exist_ok=True)
    with open(os.path.join(DOCS, "bench", "history.md"), "w") as f:
        f.write(text)
    with open(os.path.join(DOCS, "bench", "history.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    log("== wrote %s/bench/history.md and history.jsonl" % DOCS)


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in started:
            p.stop()
