"""bench/_adapters.py: what bench/mqtt.py and bench/nats.py share. Both compare one of
gale-broker's protocol adapters (/mqtt, /nats) with another server speaking that protocol
over WebSocket (mosquitto, nats-server), both driven by `gale bench --proto PROTO`, with
gale's own /ws alongside as a reference, and write the same report. Each script gives a Spec
(its names and the sentences that differ) and its peer's Server class, then calls run().

The environment is read here, the same for both scripts (see their docstrings): BUILD, DOCS,
COUNTS, RATE, DURATION, REPEAT, SIZE, HOLD, THROUGHPUT, REF, QUICK.
"""
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from _report import fmt, ms, table  # noqa: E402 (bench/, the scripts' directory)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.realpath(os.environ.get("BUILD", os.path.join(ROOT, "build-bench")))
DOCS = os.path.realpath(os.environ.get("DOCS", os.path.join(ROOT, "docs")))
QUICK = os.environ.get("QUICK") == "1"
COUNTS = [int(x) for x in os.environ.get("COUNTS", "200 1000" if QUICK else "1000 5000").split()]
RATE = float(os.environ.get("RATE", "5"))
DURATION = float(os.environ.get("DURATION", "3" if QUICK else "8"))
SIZE = int(os.environ.get("SIZE", "100"))
HOLD = float(os.environ.get("HOLD", "1" if QUICK else "2"))
REPEAT = int(os.environ.get("REPEAT", "1" if QUICK else "3"))
THROUGHPUT = os.environ.get("THROUGHPUT", "1") == "1"
REF = os.environ.get("REF", "1") == "1"
GALE = os.path.join(BUILD, "gale")
BROKER = os.path.join(BUILD, "gale-broker")
HOST = "127.0.0.1"
PROCS = 2
SETUP_TIMEOUT = 120
DRAIN = 10
TP_DURATION = 3 if QUICK else 5

TMP = None  # made by run(): server logs and configuration files (kept after the run)
started = []  # every server we started, stopped at exit
records = []
T0 = time.monotonic()


class Spec:
    """What differs between the comparisons. name: the script (bench/NAME.py), its outputs
    (docs/bench/NAME.md, NAME.jsonl) and plot.py's option (--NAME); proto: `gale bench
    --proto` and path: gale-broker's endpoint for it; title: the section's; peer_short: the
    peer in ratios ("gale / PEER"); client: what `gale bench --proto PROTO` does (a sentence
    fragment); subscribed: the answer that ends a subscriber's set-up ("the last SUBACK");
    pings: what the publisher keeps outstanding as fast as acks allow ("PINGREQs"); goal:
    gale / peer CPU per delivery to meet at every count, or None; notes(find): more bullets."""

    def __init__(self, name, proto, path, title, peer_short, client, subscribed, pings,
                 goal=None, notes=None):
        self.name, self.proto, self.path, self.title = name, proto, path, title
        self.peer_short, self.client, self.subscribed, self.pings = (peer_short, client,
                                                                     subscribed, pings)
        self.goal, self.notes = goal, notes


def log(msg):
    print("[%4ds] %s" % (time.monotonic() - T0, msg), file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def accepts(port):
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class Server:
    """One broker process, fresh for each measurement; stop() is bounded. A peer's subclass
    sets key, label, path, proto, binary and install (how to get it), and defines start()
    (which returns self, listening) and version()."""
    key = label = path = proto = binary = install = None

    def __init__(self):
        self.proc = self.port = None
        self.cmd = ""

    def spawn(self, argv, display, logname):
        self.logpath = os.path.join(TMP, logname)
        with open(self.logpath, "ab") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=TMP)
        started.append(self)
        self.cmd = display

    def wait_ready(self, ports, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %d:\n%s" % (self.label, self.proc.returncode,
                                                                self.log_tail()))
            if all(accepts(p) for p in ports):
                return
            time.sleep(0.05)
        raise RuntimeError("%s not listening within %d s:\n%s" % (self.label, timeout,
                                                                  self.log_tail()))

    def log_tail(self, n=15):
        try:
            with open(self.logpath, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    @property
    def url(self):
        return "ws://%s:%d%s" % (HOST, self.port, self.path)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Gale(Server):
    """gale-broker at @path, driven with `gale bench --proto @proto`; /ws (gale v1) is the
    reference."""

    def __init__(self, path, proto):
        super().__init__()
        self.path, self.proto = path, proto
        self.key = "gale-ws" if path == "/ws" else "gale"
        self.label = ("gale-broker /ws (gale v1, reference)" if path == "/ws"
                      else "gale-broker " + path)

    def start(self):
        for _ in range(4):
            self.port = free_port()
            # One loop: the single-threaded peer's match (bench/loops.py measures more).
            argv = [BROKER, "--listen", "%s:%d" % (HOST, self.port), "--log-level", "warn",
                    "--keepalive", "0", "--loops", "1"]
            self.spawn(argv, "gale-broker " + " ".join(argv[1:]), "gale-%d.log" % self.port)
            try:
                self.wait_ready([self.port])
                urllib.request.urlopen("http://%s:%d/healthz" % (HOST, self.port), timeout=5)
                return self
            except (RuntimeError, OSError) as e:
                last = e
                self.stop()
        raise RuntimeError("gale-broker did not start: %s" % last)


def bench(server, kind, args, timeout):
    """Runs `gale bench ARGS --json --pid PID` against a fresh @server; one record."""
    s = server.start()
    cmd = [GALE, "bench", *args, "--proto", s.proto, "--url", s.url, "--pid",
           str(s.proc.pid), "--json"]
    load = open("/proc/loadavg").read().split()[0]
    rss0 = rss_kib(s.proc.pid)
    t = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = None, e.stdout or "", "timed out after %d s" % timeout
    alive = s.proc.poll() is None
    s.stop()
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    rec = {"server": s.key, "label": s.label, "kind": kind, "args": args, "rc": rc,
           "broker_cmd": s.cmd, "bench_cmd": "gale bench " + " ".join(cmd[2:]),
           "load_1min": float(load), "fresh_rss_kib": rss0, "elapsed_s": time.monotonic() - t,
           "broker_alive": alive, "report": report,
           "stderr": stderr.strip().splitlines()[-3:] if stderr else []}
    if not alive:
        rec["broker_log"] = s.log_tail()
    records.append(rec)
    r = report or {}
    b = r.get("broker", {})
    log("   %-38s %-10s rc %s ok %s: %s µs CPU/delivery, p50 %s ms, p99 %s ms, lost %s, "
        "RSS %s KiB/conn %s" % (s.label, kind, rc, r.get("ok"),
                                fmt(b.get("cpu_us_per_delivery")), ms(r, "p50"), ms(r, "p99"),
                                fmt(r.get("lost")), fmt(r.get("rss_kib_per_conn")),
                                "" if r.get("ok") else (r.get("error") or rec["stderr"])))
    return rec


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


def rotate(xs, k):
    """xs rotated by k: the servers take turns at going first."""
    k %= len(xs)
    return xs[k:] + xs[:k]


def fanout_args(n, rate, duration, window=None):
    a = ["fanout", "--subs", str(n), "--pubs", "1", "--rate", "%g" % rate, "--duration",
         "%g" % duration, "--size", str(SIZE), "--procs", str(PROCS), "--setup-timeout",
         str(SETUP_TIMEOUT), "--drain", str(DRAIN)]
    return a + (["--window", str(window)] if window else [])


def conns_args(n):
    return ["conns", "--conns", str(n), "--subscribe", "--hold", "%g" % HOLD, "--procs",
            str(PROCS), "--setup-timeout", str(SETUP_TIMEOUT)]


# --- the report -------------------------------------------------------------------------------
def get(rec, *path):
    v = rec and rec.get("report")
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def ratio(a, b):
    return a / b if a is not None and b else None


def status(rec):
    if rec is None:
        return "not run"
    r = rec.get("report")
    if not rec["broker_alive"]:
        return "**broker died**"
    if r is None:
        return "no report (exit %s: %s)" % (rec["rc"], " ".join(rec["stderr"])[:120])
    return "ok" if r.get("ok") else "**FAILED**: %s" % (r.get("error") or "")[:120]


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2.0


def merged(recs):
    """The REPEAT runs of one point as one record: medians of the CPU per delivery and of the
    latency percentiles, sums of the counts and CPU seconds, the first failure's status."""
    if len(recs) == 1:
        return recs[0]
    bad = [r for r in recs if status(r) != "ok"]
    reps = [r["report"] for r in recs if r.get("report")]
    if bad or not reps:
        return bad[0] if bad else recs[0]
    out = dict(recs[0])
    rep = dict(reps[0])
    for k in ("lost", "expected", "received"):
        rep[k] = sum(r.get(k) or 0 for r in reps)
    for k in ("deliveries_per_s", "rss_kib_per_conn"):
        rep[k] = median(r.get(k) for r in reps)
    rep["latency_us"] = {p: median((r.get("latency_us") or {}).get(p) for r in reps)
                         for p in ("p50", "p99")}
    cpus = [(r.get("broker") or {}).get("cpu_us_per_delivery") for r in reps]
    rep["broker"] = {"cpu_us_per_delivery": median(cpus),
                     "cpu_spread": (min(cpus), max(cpus)),
                     "cpu_s": sum(r["broker"]["cpu_s"] for r in reps),
                     "sys_s": sum(r["broker"]["sys_s"] for r in reps)}
    out["report"] = rep
    return out


def cpu_cell(rec):
    b = get(rec, "broker") or {}
    v, spread = b.get("cpu_us_per_delivery"), b.get("cpu_spread")
    return fmt(v) + (" (%s–%s)" % (fmt(spread[0]), fmt(spread[1])) if spread else "")


def merge_runs(runs):
    """(server key, kind, N) -> the merged record of its rounds."""
    groups = {}
    for r in runs:
        groups.setdefault((r["server"], r["kind"], r["n"]), []).append(r)
    return {k: merged(v) for k, v in groups.items()}


def section(spec, runs, servers, when, rev, peer_v, load0, load1, cmdline):
    peer = [s.key for s in servers if not isinstance(s, Gale)][0]
    main = [s for s in servers if s.key in ("gale", peer)]
    ref = [s for s in servers if s.key == "gale-ws"]
    vs = "gale / %s" % spec.peer_short
    find = merge_runs(runs)
    rows, verdicts = [], []
    for n in COUNTS:
        per = {}
        for s in main + ref:
            f, m = find.get((s.key, "fanout", n)), find.get((s.key, "memory", n))
            per[s.key] = (f, m)
            lost, exp = get(f, "lost"), get(f, "expected")
            rows.append(["{:,}".format(n), s.label, cpu_cell(f),
                         ms(f and f["report"], "p50"), ms(f and f["report"], "p99"),
                         "%s / %s" % (fmt(lost), fmt(exp)), fmt(get(m, "rss_kib_per_conn")),
                         status(f) if status(f) != "ok" else status(m)])
        g, q = per.get("gale", (None, None)), per.get(peer, (None, None))
        cpu = ratio(get(g[0], "broker", "cpu_us_per_delivery"),
                    get(q[0], "broker", "cpu_us_per_delivery"))
        rows.append(["{:,}".format(n), "**%s**" % vs, "**%s**" % fmt(cpu),
                     fmt(ratio(get(g[0], "latency_us", "p50"), get(q[0], "latency_us", "p50"))),
                     fmt(ratio(get(g[0], "latency_us", "p99"), get(q[0], "latency_us", "p99"))),
                     "", fmt(ratio(get(g[1], "rss_kib_per_conn"), get(q[1], "rss_kib_per_conn"))),
                     ""])
        if cpu is not None:
            verdicts.append("%s at %s subscribers" % (fmt(cpu), "{:,}".format(n)))
    worst = max((ratio(get(find.get(("gale", "fanout", n)), "broker", "cpu_us_per_delivery"),
                       get(find.get((peer, "fanout", n)), "broker", "cpu_us_per_delivery"))
                 or 99) for n in COUNTS) if verdicts else None
    tp_rows = []
    if THROUGHPUT:
        n = COUNTS[0]
        for s in main + ref:
            t = find.get((s.key, "throughput", n))
            tp_rows.append(["{:,}".format(n), s.label, fmt(get(t, "deliveries_per_s")),
                            cpu_cell(t),
                            "%s / %s" % (fmt(get(t, "received")), fmt(get(t, "expected"))),
                            status(t)])
    head = [
        "## %s\n" % spec.title,
        "Generated by `bench/%s.py` on %s in %d s (gale %s, built in `%s`; %s; load average "
        "%s at the start, %s at the end), with `%s`. Do not edit by hand: run it again, then "
        "`bench/plot.py` (the command at the top) to include it here. Raw data, with every "
        "exact command: [`bench/%s.jsonl`](bench/%s.jsonl).%s\n" % (
            spec.name, when, time.monotonic() - T0, rev, os.path.relpath(BUILD, ROOT), peer_v,
            " ".join(load0), " ".join(load1), cmdline, spec.name, spec.name,
            " **QUICK run: small counts, not representative.**" if QUICK else ""),
        "One run on a shared machine (%s, loopback only): the broker and `gale bench` (its "
        "publisher and 2 subscriber processes) share the 2 cores, and the kernel charges "
        "loopback delivery to the sender. Compare the ratios, not absolute figures across "
        "runs. Both servers get the same client, %s, "
        "~%d-byte JSON payloads carrying the send time; each measurement on a fresh "
        "process.\n" % (machine(), spec.client, SIZE),
        "**Fan-out**: N subscribers of one topic, 1 publisher at %g msg/s for %g s (`gale "
        "bench fanout --proto %s --subs N --pubs 1 --rate %g --duration %g --procs %d`), "
        "%d rounds, the servers taking turns; the median of the rounds (CPU: median (min–max)), "
        "lost and expected summed. CPU per delivery = broker CPU (user + system, all threads, "
        "`/proc/PID/stat`) from %s to the last delivery / deliveries; latency = "
        "publish to receive; lost = expected − received. **RSS / connection** = (VmRSS holding N idle subscribed "
        "connections − VmRSS of the fresh broker before) / N (`gale bench conns --proto %s "
        "--conns N --subscribe --hold %g`, connection i on its own topic).\n" % (
            RATE, DURATION, spec.proto, RATE, DURATION, PROCS, REPEAT, spec.subscribed,
            spec.proto, HOLD),
        table(["subscribers", "server", "µs broker CPU / delivery", "latency p50 ms",
               "p99 ms", "lost / expected", "KiB RSS / connection", "status"], rows),
        "",
    ]
    bullets = []
    if worst is not None and spec.goal is not None:
        bullets.append("Goal: gale's CPU per delivery at most %s of %s's: %s = %s: **%s**." % (
            "half" if spec.goal == 0.5 else fmt(spec.goal) + "×", spec.peer_short, vs,
            ", ".join(verdicts), "met" if worst <= spec.goal else "not met"))
    elif worst is not None:
        bullets.append("%s in CPU per delivery: %s." % (vs, ", ".join(verdicts)))
    if ref:
        ws = [(n, ratio(get(find.get(("gale", "fanout", n)), "broker", "cpu_us_per_delivery"),
                        get(find.get(("gale-ws", "fanout", n)), "broker",
                            "cpu_us_per_delivery"))) for n in COUNTS]
        bullets.append("The adapter over gale's own protocol (%s over /ws, CPU per delivery, "
                       "same runs): %s." % (spec.path,
                                            ", ".join("%s at %s" % (fmt(r), "{:,}".format(n))
                                                      for n, r in ws)))
    big = COUNTS[-1]
    shares = []
    for s in main:
        b = get(find.get((s.key, "fanout", big)), "broker") or {}
        if b.get("cpu_s"):
            shares.append("%s %s%% (%s µs of system time per delivery)" % (
                s.label, fmt(100.0 * b["sys_s"] / b["cpu_s"], 2),
                fmt(b["sys_s"] * 1e6 / max(1, get(find.get((s.key, "fanout", big)),
                                                   "received") or 1))))
    if shares:
        bullets.append("System time in the broker's CPU at %s subscribers: %s. At a fixed rate "
                       "each delivery is one write of one message to one subscriber, and the "
                       "kernel charges the loopback delivery (waking the reader) to the "
                       "writer: a floor any broker pays (`bench/sendcost.c` measures it)." % (
                           "{:,}".format(big), "; ".join(shares)))
    if THROUGHPUT and ref:
        n = COUNTS[0]
        t = {s.key: find.get((s.key, "throughput", n)) for s in main + ref}
        r_ws = ratio(get(t.get("gale"), "broker", "cpu_us_per_delivery"),
                     get(t.get("gale-ws"), "broker", "cpu_us_per_delivery"))
        r_peer = ratio(get(t.get("gale"), "broker", "cpu_us_per_delivery"),
                       get(t.get(peer), "broker", "cpu_us_per_delivery"))
        if r_ws is not None:
            bullets.append("As fast as acks allow (%s subscribers, below): %s = "
                           "%s in CPU per delivery; gale's %s costs %s× its /ws per delivery "
                           "(gale v1 there: a subscriber's write carries every message of the "
                           "loop turn)." % ("{:,}".format(n), vs, fmt(r_peer), spec.path,
                                            fmt(r_ws)))
    if spec.notes:
        bullets += spec.notes(find)
    if tp_rows:
        head_tp = ["subscribers", "server", "deliveries/s", "µs broker CPU / delivery",
                   "received / expected", "status"]
        tp = ["", "**As fast as acks allow** (`--rate 0 --window 64 --duration %g`, %s "
              "subscribers): the publisher keeps 64 %s outstanding; throughput and the "
              "CPU per delivery of a saturated broker (latency here measures the backlog, "
              "not the broker).\n" % (TP_DURATION, "{:,}".format(COUNTS[0]), spec.pings),
              table(head_tp, tp_rows), ""]
    else:
        tp = []
    cmds = []
    for r in runs:
        cmds.append([r["label"], r["kind"], "{:,}".format(r["n"]), "`%s`" % r["broker_cmd"],
                     "`%s`" % r["bench_cmd"]])
    text = "\n".join(head) + "\n" + "".join("- %s\n" % b for b in bullets) + "\n".join(tp) + \
        "\n<details><summary>Every run's commands (ports and pids were those of the run)"\
        "</summary>\n\n" + table(["server", "run", "N", "broker", "gale bench"], cmds) + \
        "\n\n</details>\n"
    return text


def run(spec, peer):
    """The whole comparison of gale-broker's spec.path with @peer (a Server); writes
    DOCS/bench/NAME.md and NAME.jsonl, prints the section; the exit status."""
    global TMP
    me = "%s.py" % spec.name
    for path in (GALE, BROKER):
        if not os.access(path, os.X_OK):
            sys.exit("%s: %s is missing: cmake --build %s --target gale-broker gale"
                     % (me, path, BUILD))
    if not os.access(peer.binary, os.X_OK):
        sys.exit("%s: no %s (%s)" % (me, peer.binary, peer.install))
    TMP = tempfile.mkdtemp(prefix="gale-%s-bench-" % spec.name)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by both servers
    if hard < max(COUNTS) + 200:
        sys.exit("%s: the open-file limit %d is below %d" % (me, hard, max(COUNTS) + 200))
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = open("/proc/loadavg").read().split()[:3]
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "-"
    if subprocess.run(["git", "-C", ROOT, "diff-index", "--quiet", "HEAD", "--"]).returncode:
        rev += " (with uncommitted changes)"
    peer_v = peer.version()
    servers = [Gale(spec.path, spec.proto), peer] + ([Gale("/ws", "gale")] if REF else [])
    runs = []
    timeout = SETUP_TIMEOUT + DURATION + DRAIN + 60
    try:
        k = 0
        for n in COUNTS:
            log("== %s subscribers: memory" % "{:,}".format(n))
            for s in rotate(servers, k):
                rec = bench(s, "memory", conns_args(n), SETUP_TIMEOUT + HOLD + 60)
                rec["n"] = n
                runs.append(rec)
            for r in range(REPEAT):
                k += 1
                log("== %s subscribers, %g msg/s, round %d of %d" % ("{:,}".format(n), RATE,
                                                                    r + 1, REPEAT))
                for s in rotate(servers, k):
                    rec = bench(s, "fanout", fanout_args(n, RATE, DURATION), timeout)
                    rec["n"], rec["round"] = n, r + 1
                    runs.append(rec)
        if THROUGHPUT:
            n = COUNTS[0]
            log("== %s subscribers as fast as acks allow" % "{:,}".format(n))
            for s in servers:
                rec = bench(s, "throughput", fanout_args(n, 0, TP_DURATION, 64), timeout)
                rec["n"] = n
                runs.append(rec)
    finally:
        for s in started:
            s.stop()
    load1 = open("/proc/loadavg").read().split()[:3]
    cmdline = " ".join("%s=%s" % (k, os.environ[k]) for k in
                       ("BUILD", "COUNTS", "RATE", "DURATION", "REPEAT", "SIZE", "HOLD",
                        "THROUGHPUT", "REF", "QUICK") if k in os.environ) + " bench/" + me
    text = section(spec, runs, servers, when, rev, peer_v, load0, load1, cmdline.strip())
    os.makedirs(os.path.join(DOCS, "bench"), exist_ok=True)
    with open(os.path.join(DOCS, "bench", spec.name + ".md"), "w") as f:
        f.write(text.rstrip("\n") + "\n")
    with open(os.path.join(DOCS, "bench", spec.name + ".jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    log("== wrote %s/bench/%s.md and %s.jsonl (bench/plot.py --%s includes it in "
        "BENCHMARKS.md)" % (DOCS, spec.name, spec.name, spec.name))
    print(text)
    failed = [r for r in runs if status(r) != "ok"]
    return 1 if failed else 0
