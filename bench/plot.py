#!/usr/bin/python3
"""bench/plot.py: plots and the markdown report from bench/benchmarks.sh's raw JSON lines.

    bench/plot.py build-bench/benchmarks.jsonl --png-dir docs/bench \\
        --markdown docs/BENCHMARKS.md --optimisations docs/bench/optimisations.md \\
        --history docs/bench/history.md --presence docs/bench/presence.md \\
        --mqtt docs/bench/mqtt.md --nats docs/bench/nats.md --loops docs/bench/loops.md

Reads the records benchmarks.sh appends (type meta, run, skip, end; a run holds the server,
the measurement, its parameters, the exact `gale bench` command and gale bench's --json
report), draws PNGs with matplotlib (Agg backend, no display, no network) and writes the
markdown: machine and versions, one table per measurement with the command of every row,
the plots, the targets with met / not met computed from the data, the history and recovery
section written by bench/history.py, the presence section written by bench/presence.py, the
MQTT section written by bench/mqtt.py, the NATS section written by bench/nats.py, the event
loops section written by bench/loops.py and the optimisation log, all six included verbatim.
Without --png-dir it writes the tables alone; without matplotlib it keeps the PNGs already
in --png-dir.
"""
import argparse
import json
import math
import os
import sys

SERVERS = ["gale", "node", "tornado", "nats"]
LABEL = {"gale": "gale-broker", "node": "Node ws peer", "tornado": "Tornado peer",
         "nats": "nats-server (NATS over WebSocket)"}
SHORT = {"gale": "gale-broker", "node": "Node ws", "tornado": "Tornado", "nats": "nats-server"}
COLOR = {"gale": "#1f77b4", "node": "#2ca02c", "tornado": "#ff7f0e", "nats": "#9467bd"}
MARKER = {"gale": "o", "node": "s", "tornado": "^", "nats": "D"}

# Targets for gale-broker. FLAT_MAX has no number in the brief: max/min of the cost per
# delivery over the subscriber counts measured.
T_RSS_KIB, T_RSS_CONNS = 2.0, 19000
T_US, T_US_SUBS = 0.5, 10000
T_NODE_X, T_TORNADO_X = 25.0, 100.0
T_FLAT_MAX = 1.5
T_P99_MS, T_P99_SUBS, T_P99_RATE = 2.0, 10000, 100
T_HANDSHAKES = 20000


# ---- data ----------------------------------------------------------------------------------
def load(path):
    meta, end, runs, skips = {}, {}, [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            t = r.get("type")
            if t == "meta":
                meta = r
            elif t == "end":
                end = r
            elif t == "run":
                runs.append(r)
            elif t == "skip":
                skips.append(r)
    return meta, end, runs, skips


def res(r):
    x = r.get("result")
    return x if isinstance(x, dict) else None


def good(r):
    x = res(r)
    return bool(x and x.get("ok"))


def broker(r):
    return (res(r) or {}).get("broker") or {}


def of(runs, measure, **params):
    out = []
    for r in runs:
        if r.get("measure") != measure:
            continue
        p = r.get("params") or {}
        if all(p.get(k) == v for k, v in params.items()):
            out.append(r)
    return out


def ordered(servers):
    return [s for s in SERVERS if s in servers] + sorted(s for s in servers if s not in SERVERS)


# ---- formatting ----------------------------------------------------------------------------
def n(v):
    return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"


def sig(v, digits=3):
    if not isinstance(v, (int, float)):
        return "-"
    if v == 0:
        return "0"
    d = max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{d}f}"


def ms(us):
    return sig(us / 1000.0) if isinstance(us, (int, float)) else "-"


def short(v):
    return f"{v // 1000}K" if v >= 1000 and v % 1000 == 0 else f"{v:,}"


def status(r):
    if r.get("status") == -1:
        return r.get("error", "not run")
    x = res(r)
    if x is None:
        st = r.get("status")
        why = "timed out" if st == 124 else f"exit {st}, no report"
        err = (r.get("stderr") or "").strip().splitlines()
        return why + (f": {err[-1][:100]}" if err else "")
    if x.get("ok"):
        return "ok"
    bits = []
    for k in ("lost", "duplicates", "out_of_order", "pub_errors", "broker_errors", "failed"):
        if x.get(k):
            bits.append(f"{k.replace('_', ' ')} {x[k]:,}")
    conns = x.get("connections") or {}
    if conns.get("failed"):
        bits.append(f"{conns['failed']:,} conns failed")
    if conns.get("lost"):
        bits.append(f"{conns['lost']:,} conns lost")
    err = (x.get("error") or "").strip()
    return "FAILED" + (": " + ", ".join(bits) if bits else "") + (f" ({err[:80]})" if err else "")


def cmd(r):
    c = r.get("command")
    if not c:
        return ""
    s = f"`{c}`"
    if r.get("preload"):
        s += f" after {r['preload']}"
    return s


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") if i < len(row) - 1 else str(c)
                              for i, c in enumerate(row)) + " |" for row in rows]
    return "\n".join(out)


def skip_rows(skips, measure, key_fn, ncols):
    """Rows for skipped points: key cells, the reason, blanks."""
    rows = []
    for s in skips:
        if s.get("measure") != measure:
            continue
        keys = key_fn(s.get("params") or {}, s["server"])
        rows.append((keys, list(keys) + [f"skipped: {s['reason']}"] + [""] * (ncols - len(keys) - 1)))
    return rows


# ---- plots ---------------------------------------------------------------------------------
def plots(runs, png_dir, meta):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    from matplotlib.transforms import blended_transform_factory

    os.makedirs(png_dir, exist_ok=True)
    made = {}
    servers = ordered({r["server"] for r in runs})
    quick = " (QUICK run: not representative)" if meta.get("quick") else ""
    kfmt = FuncFormatter(lambda v, _: short(int(v)) if v >= 1 else f"{v:g}")
    gfmt = FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else
                         f"{v / 1e3:g}K" if v >= 1e4 else f"{v:g}")

    def logy(ax):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(gfmt)
        ax.yaxis.set_minor_formatter(NullFormatter())

    def target(ax, y, text):
        ax.axhline(y, color="grey", ls=":", lw=1)
        ax.text(0.99, y, text, transform=blended_transform_factory(ax.transAxes, ax.transData),
                ha="right", va="bottom", fontsize=8, color="grey",
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=1))

    def xticks(ax, values):
        ax.set_xscale("log")
        ax.set_xticks(sorted(values))
        ax.xaxis.set_major_formatter(kfmt)
        ax.xaxis.set_minor_formatter(NullFormatter())

    def line(ax, s, pts, **kw):
        """pts: (x, y, ok) sorted by x; failed points hollow."""
        if not pts:
            return
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color=COLOR.get(s), marker=MARKER.get(s, "o"), label=LABEL.get(s, s), **kw)
        bad = [p for p in pts if not p[2]]
        if bad:
            ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=90, facecolors="white",
                       edgecolors="red", zorder=5, linewidths=1.5)

    def finish(fig, name, note_failed):
        if note_failed:
            fig.text(0.01, 0.01, "red hollow point: the run reported losses or errors",
                     fontsize=8, color="red")
        path = os.path.join(png_dir, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made[name] = path

    # 1. fanout: CPU per delivery and deliveries/s against subscribers.
    fan = [r for r in runs if r["measure"] == "fanout" and res(r)]
    if fan:
        for name, key, ylabel, title in (
                ("us-per-delivery.png", "us", "broker CPU per delivery (µs, log scale)",
                 "Broker CPU per delivery, fanout as fast as acks allow"),
                ("deliveries-per-s.png", "rate", "deliveries per second (log scale)",
                 "Fanout throughput, as fast as acks allow")):
            fig, ax = plt.subplots(figsize=(8, 5))
            failed = False
            for s in servers:
                pts = []
                for r in fan:
                    if r["server"] != s:
                        continue
                    y = (broker(r).get("cpu_us_per_delivery") if key == "us"
                         else res(r).get("deliveries_per_s"))
                    if y:
                        pts.append((r["params"]["subs"], y, good(r)))
                        failed |= not good(r)
                line(ax, s, sorted(pts))
            xticks(ax, {r["params"]["subs"] for r in fan})
            logy(ax)
            if key == "us":
                target(ax, T_US, f"target {T_US:g} µs at {T_US_SUBS:,} subscribers")
            ax.set_xlabel("subscribers on one topic (1 publisher, 100-byte payload, window 64)")
            ax.set_ylabel(ylabel)
            ax.set_title(title + quick, fontsize=11)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout(rect=(0, 0.03, 1, 1))
            finish(fig, name, failed)

    # 2. RSS per idle subscribed connection.
    cn = [r for r in runs if r["measure"] == "conns" and res(r) and res(r).get("rss_kib_per_conn")]
    if cn:
        fig, ax = plt.subplots(figsize=(8, 5))
        failed = False
        for s in servers:
            pts = sorted((r["params"]["conns"], res(r)["rss_kib_per_conn"], good(r))
                         for r in cn if r["server"] == s)
            failed |= any(not p[2] for p in pts)
            line(ax, s, pts)
        xticks(ax, {r["params"]["conns"] for r in cn})
        logy(ax)
        target(ax, T_RSS_KIB, f"target {T_RSS_KIB:g} KiB")
        ax.set_xlabel("idle connections, each subscribed to its own topic")
        ax.set_ylabel("broker RSS per connection (KiB, log scale)")
        ax.set_title("Memory per idle subscribed connection" + quick, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        finish(fig, "rss-per-conn.png", failed)

    # 3. latency against rate, one panel per subscriber count.
    lat = [r for r in runs if r["measure"] == "latency" and res(r) and res(r).get("received")]
    if lat:
        subs = sorted({r["params"]["subs"] for r in lat})
        fig, axes = plt.subplots(1, len(subs), figsize=(6 * len(subs), 5), squeeze=False)
        styles = (("p50", "-", "p50"), ("p99", "--", "p99"), ("p99_9", ":", "p99.9"))
        failed = False
        for ax, sc in zip(axes[0], subs):
            here = [r for r in lat if r["params"]["subs"] == sc]
            for s in servers:
                rs = sorted((r for r in here if r["server"] == s), key=lambda r: r["params"]["rate"])
                if not rs:
                    continue
                for key, ls, _ in styles:
                    xs = [r["params"]["rate"] for r in rs]
                    ys = [max(res(r)["latency_us"][key], 1) / 1000.0 for r in rs]
                    ax.plot(xs, ys, color=COLOR.get(s), ls=ls, marker=MARKER.get(s, "o"),
                            ms=5 if key == "p50" else 3)
                bad = [r for r in rs if not good(r)]
                failed |= bool(bad)
                if bad:
                    ax.scatter([r["params"]["rate"] for r in bad],
                               [max(res(r)["latency_us"]["p99"], 1) / 1000.0 for r in bad],
                               s=90, facecolors="white", edgecolors="red", zorder=5, linewidths=1.5)
            xticks(ax, {r["params"]["rate"] for r in here})
            ax.xaxis.set_major_formatter(gfmt)
            logy(ax)
            if sc == T_P99_SUBS:
                target(ax, T_P99_MS, f"target p99 {T_P99_MS:g} ms at {T_P99_RATE} msg/s")
            ax.set_xlabel("messages per second (1 publisher, 100-byte payload)")
            ax.set_ylabel("publish-to-receive latency (ms, log scale)")
            ax.set_title(f"{sc:,} subscribers" + quick, fontsize=11)
            ax.grid(True, which="both", alpha=0.3)
        handles = [Line2D([], [], color=COLOR.get(s), marker=MARKER.get(s, "o"), label=LABEL.get(s, s))
                   for s in servers if any(r["server"] == s for r in lat)]
        handles += [Line2D([], [], color="black", ls=ls, label=lab) for _, ls, lab in styles]
        axes[0][0].legend(handles=handles, fontsize=8, loc="upper left")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        finish(fig, "latency-vs-rate.png", failed)

    # 4. handshakes: connect cycles/s per server and concurrency; conns set-up rate.
    hs = [r for r in runs if r["measure"] == "connect" and res(r)]
    if hs or cn:
        fig, axes = plt.subplots(1, 2, figsize=(12, 5))
        ax = axes[0]
        concs = sorted({r["params"]["concurrency"] for r in hs})
        hsrv = [s for s in servers if any(r["server"] == s for r in hs)]
        width = 0.8 / max(1, len(concs))
        for j, c in enumerate(concs):
            for i, s in enumerate(hsrv):
                rs = [r for r in hs if r["server"] == s and r["params"]["concurrency"] == c]
                if not rs:
                    continue
                v = res(rs[0]).get("cycles_per_s", 0)
                ax.bar(i + (j - (len(concs) - 1) / 2) * width, v, width * 0.9, color=COLOR.get(s),
                       alpha=0.55 + 0.45 * (j + 1) / len(concs),
                       edgecolor="red" if not good(rs[0]) else "black", lw=0.6)
                ax.annotate(f"{v:,.0f}\nc={c}", (i + (j - (len(concs) - 1) / 2) * width, v),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(hsrv)))
        ax.set_xticklabels([SHORT.get(s, s) for s in hsrv], fontsize=9)
        target(ax, T_HANDSHAKES, f"target {T_HANDSHAKES:,}/s")
        ax.set_ylabel("connect + upgrade + hello + close, per second")
        ax.set_title("Handshakes (c = concurrent loops)" + quick, fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
        ax = axes[1]
        for s in servers:
            pts = sorted((r["params"]["conns"], res(r)["setups_per_s"], good(r))
                         for r in cn if r["server"] == s and res(r).get("setups_per_s"))
            line(ax, s, pts)
        if cn:
            xticks(ax, {r["params"]["conns"] for r in cn})
        logy(ax)
        ax.set_xlabel("connections opened (conns scenario)")
        ax.set_ylabel("connections set up and subscribed per second (log scale)")
        ax.set_title("Connection set-up rate" + quick, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        finish(fig, "handshakes.png", False)

    # 5. routing cost against topics in the broker.
    tp = [r for r in runs if r["measure"] == "topics" and res(r)
          and broker(r).get("cpu_us_per_delivery")]
    if tp:
        fig, ax = plt.subplots(figsize=(8, 5))
        failed = False
        xs_all = set()
        for s in servers:
            rs = [r for r in tp if r["server"] == s]
            pts = sorted((total_topics(r), broker(r)["cpu_us_per_delivery"], good(r)) for r in rs)
            xs_all |= {p[0] for p in pts}
            failed |= any(not p[2] for p in pts)
            line(ax, s, pts)
            pre = [r for r in rs if r["params"].get("idle_topics")]
            if pre:
                ax.scatter([total_topics(r) for r in pre],
                           [broker(r)["cpu_us_per_delivery"] for r in pre], marker="*", s=160,
                           color=COLOR.get(s), zorder=6)
        xticks(ax, xs_all)
        logy(ax)
        ax.set_xlabel("topics in the broker (★: most of them idle, held by other connections)")
        ax.set_ylabel("broker CPU per delivery (µs, log scale)")
        ax.set_title("Routing cost: one subscriber per topic, one delivery per publish" + quick,
                     fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        finish(fig, "topics.png", failed)
    return made


def total_topics(r):
    p = r["params"]
    return p.get("topics", 0) + p.get("idle_topics", 0)


# ---- targets -------------------------------------------------------------------------------
def closest(rs, **want):
    """The run (with a report) nearest to the wanted parameters on a log scale."""
    rs = [r for r in rs if res(r)]
    if not rs:
        return None, False

    def dist(r):
        return sum(abs(math.log(max(r["params"].get(k, 1), 1)) - math.log(v)) for k, v in want.items())
    best = min(rs, key=lambda r: (dist(r), not good(r)))
    return best, dist(best) == 0


def targets(runs):
    rows = []

    def verdict(ok, r, exact):
        if r is None:
            return "not measured"
        v = "**met**" if ok else "**not met**"
        if not good(r):
            v += " (the run reported losses or errors)"
        if not exact:
            v += " (nearest point measured)"
        return v

    g = [r for r in runs if r["server"] == "gale"]
    gfan = [r for r in g if r["measure"] == "fanout" and broker(r).get("cpu_us_per_delivery")]

    r, ex = closest([r for r in g if r["measure"] == "conns" and res(r)
                     and res(r).get("rss_kib_per_conn") is not None], conns=T_RSS_CONNS)
    rows.append([f"RSS per idle subscribed connection ≤ {T_RSS_KIB:g} KiB",
                 f"{r['params']['conns']:,} conns" if r else "-",
                 f"{res(r)['rss_kib_per_conn']:.2f} KiB" if r else "-",
                 verdict(r and res(r)["rss_kib_per_conn"] <= T_RSS_KIB, r, ex)])

    r, ex = closest(gfan, subs=T_US_SUBS)
    us = broker(r).get("cpu_us_per_delivery") if r else None
    rows.append([f"CPU per delivery ≤ {T_US:g} µs at {T_US_SUBS:,} subscribers (as fast as acks allow)",
                 f"{r['params']['subs']:,} subs" if r else "-", f"{sig(us)} µs" if r else "-",
                 verdict(r and us <= T_US, r, ex)])

    for peer, want in (("node", T_NODE_X), ("tornado", T_TORNADO_X)):
        pf = {r["params"]["subs"]: r for r in runs if r["server"] == peer and r["measure"] == "fanout"
              and broker(r).get("cpu_us_per_delivery")}
        gf = {r["params"]["subs"]: r for r in gfan}
        common = sorted(set(pf) & set(gf))
        if not common:
            rows.append([f"CPU per delivery: {LABEL[peer]} / gale ≥ {want:g}×", "-", "-", "not measured"])
            continue
        sc = common[-1]
        ratio = broker(pf[sc])["cpu_us_per_delivery"] / broker(gf[sc])["cpu_us_per_delivery"]
        v = "**met**" if ratio >= want else "**not met**"
        if not (good(pf[sc]) and good(gf[sc])):
            v += " (a run reported losses or errors)"
        rows.append([f"CPU per delivery: {LABEL[peer]} / gale ≥ {want:g}× (largest count both ran)",
                     f"{sc:,} subs", f"{ratio:,.1f}× ({sig(broker(pf[sc])['cpu_us_per_delivery'])} "
                     f"vs {sig(broker(gf[sc])['cpu_us_per_delivery'])} µs)", v])

    if len(gfan) >= 2:
        vals = {r["params"]["subs"]: broker(r)["cpu_us_per_delivery"] for r in gfan}
        lo, hi = min(vals.values()), max(vals.values())
        ratio = hi / lo
        span = f"{short(min(vals))} → {short(max(vals))} subs"
        rows.append([f"flat cost per delivery across subscriber counts: max / min ≤ {T_FLAT_MAX:g} "
                     "(threshold assumed)", span,
                     f"{ratio:.2f} ({sig(lo)} to {sig(hi)} µs)",
                     ("**met**" if ratio <= T_FLAT_MAX else "**not met**")
                     + ("" if all(good(r) for r in gfan) else " (a run reported losses or errors)")])
    else:
        rows.append(["flat cost per delivery across subscriber counts", "-", "-", "not measured"])

    r, ex = closest([r for r in g if r["measure"] == "latency" and res(r) and res(r).get("received")],
                    subs=T_P99_SUBS, rate=T_P99_RATE)
    p99 = res(r)["latency_us"]["p99"] / 1000.0 if r else None
    rows.append([f"latency p99 ≤ {T_P99_MS:g} ms at {T_P99_SUBS:,} subscribers × {T_P99_RATE} msg/s",
                 f"{r['params']['subs']:,} subs × {r['params']['rate']:g} msg/s" if r else "-",
                 f"{sig(p99)} ms" if r else "-", verdict(r and p99 <= T_P99_MS, r, ex)])

    hs = [r for r in g if r["measure"] == "connect" and res(r)]
    if hs:
        r = max(hs, key=lambda r: res(r).get("cycles_per_s", 0))
        v = res(r)["cycles_per_s"]
        rows.append([f"handshakes ≥ {T_HANDSHAKES:,}/s", f"concurrency {r['params']['concurrency']}",
                     f"{v:,.0f}/s", verdict(v >= T_HANDSHAKES, r, True)])
    else:
        rows.append([f"handshakes ≥ {T_HANDSHAKES:,}/s", "-", "-", "not measured"])
    su = [r for r in g if r["measure"] == "conns" and res(r) and res(r).get("setups_per_s")]
    if su:
        r = max(su, key=lambda r: res(r)["setups_per_s"])
        v = res(r)["setups_per_s"]
        rows.append([f"connection set-ups (handshake, hello, sub, ack; held) ≥ {T_HANDSHAKES:,}/s",
                     f"{r['params']['conns']:,} conns", f"{v:,.0f}/s",
                     verdict(v >= T_HANDSHAKES, r, True)])
    return table(["target (gale-broker)", "measured at", "figure", "result"], rows)


# ---- markdown ------------------------------------------------------------------------------
def markdown(meta, end, runs, skips, made, png_rel, optimisations, history="", presence="",
             mqtt="", nats="", loops=""):
    md = []
    add = md.append
    quick = bool(meta.get("quick"))
    servers = ordered({r["server"] for r in runs})
    elapsed = end.get("elapsed_s")
    add("# Benchmarks\n")
    add(f"Generated by `bench/benchmarks.sh` on {meta.get('date', '?')}"
        + (f" in {elapsed / 60:.0f} min" if elapsed else "") + ". Do not edit by hand: run "
        "`bench/benchmarks.sh` again (about as long again), or "
        "`bench/plot.py docs/bench/benchmarks.jsonl --png-dir docs/bench --markdown docs/BENCHMARKS.md "
        "--optimisations docs/bench/optimisations.md --history docs/bench/history.md "
        "--presence docs/bench/presence.md --mqtt docs/bench/mqtt.md --nats docs/bench/nats.md "
        "--loops docs/bench/loops.md` to redraw from the raw JSON. The optimisation log is "
        "hand-written in `docs/bench/optimisations.md`; the history section is written by "
        "`bench/history.py` (`docs/bench/history.md`), the presence section by "
        "`bench/presence.py` (`docs/bench/presence.md`), the MQTT section by `bench/mqtt.py` "
        "(`docs/bench/mqtt.md`), the NATS section by `bench/nats.py` (`docs/bench/nats.md`), "
        "the event loops section by `bench/loops.py` (`docs/bench/loops.md`).\n")
    if quick:
        add("> **QUICK run** (`QUICK=1`): small counts and 2-second measurements to check the "
            "script and the format. None of these figures is representative.\n")
    if not end:
        add("> **Incomplete run**: the script did not reach its end; some points are missing.\n")

    add("## Machine and versions\n")
    mem = meta.get("mem_kib")
    add(table(["", ""], [
        ["machine", f"{meta.get('nproc', '?')} cores, {meta.get('cpu', '?')}, "
                    f"{(mem or 0) / 1048576:.1f} GiB RAM, {meta.get('kernel', '?')}"],
        ["load average (1, 5, 15 min)", f"{meta.get('load_start', '?')} at the start, "
                                        f"{end.get('load_end', '?')} at the end"],
        ["open-file limit", f"{meta.get('fd_limit', '?'):,}" if isinstance(meta.get('fd_limit'), int)
         else "?"],
        ["gale", f"{meta.get('gale_rev', '?')}, built RelWithDebInfo"],
        ["libwebsockets / libuv (Debian)", f"{meta.get('libwebsockets', '-')} / {meta.get('libuv', '-')}"],
        ["Node.js / ws", f"{meta.get('node', '-')} / {meta.get('ws', '-')}"],
        ["Python / Tornado", f"{meta.get('python3', '-')} / {meta.get('tornado', '-')}"],
        ["nats-server", meta.get("nats_server", "-")],
    ]))
    add("")

    add("## Servers and how to read the figures\n")
    first = {}
    for r in runs:
        if r.get("server_cmd") and r["server"] not in first:
            first[r["server"]] = r["server_cmd"]
    caps = {c.split(":")[0].strip(): c.split(":", 1)[1].strip()
            for c in (meta.get("caps") or "").split(";") if ":" in c}
    add(table(["server", "started as (a fresh process per run, on a free port; peers from shared/peers)", "caps"],
              [[LABEL.get(s, s), f"`{first.get(s, '-')}`", caps.get(s, "-")] for s in servers]))
    add("")
    sk = [x.strip() for x in (meta.get("skipped") or "").split(";") if x.strip()]
    if sk:
        add("Not measured: " + "; ".join(sk) + ".\n")
    add("- One server at a time, each on a fresh process; the servers take turns at every point. "
        "The load generator is `gale bench` (`bench/README.md`), on the same 2 cores: its own "
        "work competes with the broker's, and the kernel charges loopback delivery to the "
        "sender. The figures compare servers on the same footing; they are not capacity claims.")
    add("- **CPU per delivery** = the broker's CPU (user + system, all threads, from "
        "`/proc/PID/stat`, 10 ms ticks) from the first publish to the last delivery, divided "
        "by the deliveries received. **RSS per connection** = (VmRSS while holding − VmRSS "
        "before connecting) / connections, on a fresh process.")
    add("- A cap keeps a peer out of the points it cannot hold or serves too slowly to finish "
        "in bounded time; a fixed rate needing well over the deliveries/s a server reached "
        "as fast as acks allow (`OVERLOAD_PCT`) is skipped: it would only measure its queue "
        "growing. Skipped points are listed in the tables with the reason.")
    if "nats" in servers:
        add("- nats-server speaks the NATS text protocol over WebSocket (`gale bench --proto "
            "nats`), uses every core and coalesces several messages per frame: the strongest "
            "peer, and not the same protocol.")
    add("- Each row's command is exact (the port and pid were those of that run); every "
        "gale bench output is in the raw JSON lines.\n")

    add("## Against the targets\n")
    add(targets(runs))
    add("")

    def img(name, alt):
        if name in made:
            add(f"![{alt}]({png_rel}/{name})\n")

    # 1.
    add("## 1. CPU per delivery and throughput against subscribers\n")
    add("Fanout: all subscribers on one topic, 1 publisher, ~100-byte payloads, as fast as acks "
        f"allow (`--rate 0 --window 64`), `--procs 2` from {meta.get('procs_at', 1000):,} "
        "subscribers. “vs gale” is the server's CPU per delivery over gale-broker's at the same "
        "count. The latency columns here measure the load generator's backlog, not the "
        "broker: an ack says a publish was routed, not that it was read, so the faster a "
        "server routes, the further the publisher runs ahead of what the two subscriber "
        "processes can read (section 3 has latency at fixed rates).\n")
    img("us-per-delivery.png", "broker CPU per delivery against subscribers")
    img("deliveries-per-s.png", "deliveries per second against subscribers")
    gref = {r["params"]["subs"]: broker(r).get("cpu_us_per_delivery")
            for r in of(runs, "fanout") if r["server"] == "gale" and res(r)}
    rows = []
    for r in of(runs, "fanout"):
        x, b, sc = res(r) or {}, broker(r), r["params"]["subs"]
        us = b.get("cpu_us_per_delivery")
        vs = f"{us / gref[sc]:,.1f}×" if us and gref.get(sc) and r["server"] != "gale" else ""
        lat = x.get("latency_us") or {}
        rows.append(((sc, r["server"]), [
            f"{sc:,}", LABEL.get(r["server"], r["server"]), sig(us), vs, n(x.get("deliveries_per_s")),
            f"{n(x.get('received'))} / {n(x.get('expected'))}",
            f"{sig(b.get('cpu_s'))} ({sig(b.get('sys_s'))} sys)" if b else "-",
            f"{ms(lat.get('p50'))} / {ms(lat.get('p99'))}", status(r), cmd(r)]))
    rows += skip_rows(skips, "fanout", lambda p, s: (f"{p.get('subs', 0):,}", LABEL.get(s, s)), 10)
    rows.sort(key=lambda kr: (sortkey(kr[0][0]), SERVERS.index(sk_server(kr))))
    add(table(["subscribers", "server", "µs CPU / delivery", "vs gale", "deliveries/s",
               "received / expected", "broker CPU s", "latency p50 / p99 ms", "status", "command"],
              [kr[1] for kr in rows]))
    add("")

    # 2.
    add("## 2. Memory per idle subscribed connection\n")
    add("`conns --subscribe`: each connection subscribed to its own topic and acked, then held "
        f"idle; `--procs 2` from {meta.get('procs_at', 1000):,}.\n")
    img("rss-per-conn.png", "RSS per idle subscribed connection")
    rows = []
    for r in of(runs, "conns"):
        x, b, c = res(r) or {}, broker(r), r["params"]["conns"]
        rows.append(((c, r["server"]), [
            f"{c:,}", LABEL.get(r["server"], r["server"]),
            f"{x['rss_kib_per_conn']:.2f}" if x.get("rss_kib_per_conn") is not None else "-",
            f"{b.get('rss_kib_before', 0) / 1024:.1f} → {b.get('rss_kib_after', 0) / 1024:.1f}" if b else "-",
            n(x.get("connected")), n(x.get("setups_per_s")), sig(b.get("cpu_us_per_conn")),
            status(r), cmd(r)]))
    rows += skip_rows(skips, "conns", lambda p, s: (f"{p.get('conns', 0):,}", LABEL.get(s, s)), 9)
    rows.sort(key=lambda kr: (sortkey(kr[0][0]), SERVERS.index(sk_server(kr))))
    add(table(["connections", "server", "KiB / conn", "RSS MiB before → holding", "connected",
               "set-ups/s", "CPU µs / conn", "status", "command"], [kr[1] for kr in rows]))
    add("")

    # 3.
    add("## 3. Latency against publish rate\n")
    add("Fanout at a fixed rate (1 publisher, ~100-byte payloads): publish-to-receive time of "
        "every delivery, taken when the frame is handed to the kernel (queueing included).\n")
    img("latency-vs-rate.png", "latency percentiles against publish rate")
    rows = []
    for r in of(runs, "latency"):
        x, b, p = res(r) or {}, broker(r), r["params"]
        lat = x.get("latency_us") or {}
        rows.append(((p["subs"], p["rate"], r["server"]), [
            f"{p['subs']:,}", f"{p['rate']:g}", LABEL.get(r["server"], r["server"]),
            ms(lat.get("p50")), ms(lat.get("p90")), ms(lat.get("p99")), ms(lat.get("p99_9")),
            ms(lat.get("max")), f"{n(x.get('received'))} / {n(x.get('expected'))}",
            sig(b.get("cpu_us_per_delivery")), status(r), cmd(r)]))
    rows += skip_rows(skips, "latency", lambda p, s: (f"{p.get('subs', 0):,}", f"{p.get('rate', 0):g}",
                                                       LABEL.get(s, s)), 12)
    rows.sort(key=lambda kr: (sortkey(kr[0][0]), sortkey(kr[0][1]), SERVERS.index(sk_server(kr))))
    add(table(["subscribers", "msg/s", "server", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
               "received / expected", "µs CPU / delivery", "status", "command"],
              [kr[1] for kr in rows]))
    add("")

    # 4.
    add("## 4. Handshakes\n")
    add("`connect`: concurrent loops of connect, WebSocket upgrade, wait for the server's "
        "first message (`hello`; NATS: `INFO`), close. The set-up rate of section 2 (connect, "
        "upgrade, subscribe, ack; connections kept) is plotted next to it.\n")
    img("handshakes.png", "handshakes per second and connection set-up rate")
    rows = []
    for r in of(runs, "connect"):
        x, b = res(r) or {}, broker(r)
        h = x.get("handshake_us") or {}
        rows.append(((r["params"]["concurrency"], r["server"]), [
            LABEL.get(r["server"], r["server"]), str(r["params"]["concurrency"]),
            n(x.get("cycles_per_s")), n(x.get("cycles")),
            f"{sig(h.get('p50'))} / {sig(h.get('p99'))}" if h else "-",
            sig(b.get("cpu_us_per_cycle")), status(r), cmd(r)]))
    rows.sort(key=lambda kr: (SERVERS.index(kr[0][1]) if kr[0][1] in SERVERS else 99, kr[0][0]))
    add(table(["server", "concurrency", "handshakes/s", "cycles", "connect → hello µs p50 / p99",
               "CPU µs / cycle", "status", "command"], [kr[1] for kr in rows]))
    add("")
    cs = {}
    for r in of(runs, "conns"):
        if res(r) and res(r).get("setups_per_s"):
            cs.setdefault(r["server"], {})[r["params"]["conns"]] = res(r)["setups_per_s"]
    counts = sorted({c for v in cs.values() for c in v})
    if cs:
        add("Set-up rate from section 2 (connections set up and subscribed per second):\n")
        add(table(["server"] + [f"{c:,} conns" for c in counts],
                  [[LABEL.get(s, s)] + [n(cs[s].get(c)) for c in counts] for s in ordered(cs)]))
        add("")

    # 5.
    add("## 5. Routing cost against the number of topics\n")
    add("`topics`: one subscriber per topic (subscriber i on `bench.topic.<i>`), 1 publisher as "
        "fast as acks allow, message s on topic s mod T: one delivery per publish, so the cost "
        "per delivery includes the whole route of a publish (decode, topic lookup, ack). "
        "With one subscriber per connection, ≤ 19,000 connections cannot give the broker "
        "100,000 topics: the last point adds idle topics "
        "(`bench.topic.i<k>`, same level, never published to) before the same run, held by "
        "`gale sub` connections with 1,000 topics each (nats-server: one NATS client on its "
        "TCP port, whose `PING` is answered after every `SUB`); for gale-broker they are "
        "checked against its `gale_topics` gauge (`/metrics`) just before the run.\n")
    img("topics.png", "CPU per delivery against topics in the broker")
    rows = []
    for r in of(runs, "topics"):
        x, b, p = res(r) or {}, broker(r), r["params"]
        gauge = r.get("preloaded_gauge")
        idle = f"{p.get('idle_topics', 0):,}"
        if isinstance(gauge, int):
            idle += f" (gauge: {gauge:,})"
        rows.append(((p["topics"], p.get("idle_topics", 0), r["server"]), [
            f"{p['topics']:,}", idle, f"{total_topics(r):,}", LABEL.get(r["server"], r["server"]),
            sig(b.get("cpu_us_per_delivery")), n(x.get("deliveries_per_s")),
            f"{n(x.get('received'))} / {n(x.get('expected'))}", status(r), cmd(r)]))
    rows += skip_rows(skips, "topics", lambda p, s: (f"{p.get('topics', 0):,}",
                                                      f"{p.get('idle_topics', 0):,}",
                                                      f"{p.get('topics', 0) + p.get('idle_topics', 0):,}",
                                                      LABEL.get(s, s)), 9)
    rows.sort(key=lambda kr: (sortkey(kr[0][0]), sortkey(kr[0][1]), SERVERS.index(sk_server(kr))))
    add(table(["topics with a subscriber", "idle topics", "topics in broker", "server",
               "µs CPU / delivery", "deliveries/s", "received / expected", "status", "command"],
              [kr[1] for kr in rows]))
    add("")

    recover = of(runs, "recover")
    if recover:
        add("## 6. Reconnect storm with recovery\n")
        add("`recover` (gale-broker only: the peers keep no history): S subscribers of "
            "`bench.recover` (the broker started with `--history 'bench.>=1000'`) subscribe and "
            "keep the position of their ack, all disconnect, M messages are published, all "
            "reconnect with `since` {ep, off}: how many were recovered, messages lost and "
            "duplicated, and the time from the start of the reconnect to the last ack (every "
            "subscriber caught up). Section \"History and recovery\" has the cluster case.\n")
        rows = []
        for r in recover:
            x, b, p = res(r) or {}, broker(r), r["params"]
            a = x.get("ack_ms") or {}
            rows.append(((p["subs"], p["msgs"]), [
                f"{p['subs']:,}", f"{p['msgs']:,}", f"{n(x.get('recovered'))} / {p['subs']:,}",
                n(x.get("lost")), n(x.get("duplicates")),
                sig(x["reconnect_s"]) if "reconnect_s" in x else "-",
                f"{sig(a.get('p50'))} / {sig(a.get('p99'))}" if a else "-",
                sig(b.get("cpu_us_per_client")), status(r), cmd(r)]))
        rows.sort(key=lambda kr: kr[0])
        add(table(["subscribers", "messages missed", "recovered", "lost", "duplicated",
                   "reconnect → last ack s", "ack ms p50 / p99", "broker CPU µs / client",
                   "status", "command"], [kr[1] for kr in rows]))
        add("")

    if history:
        add(history.rstrip() + "\n")
    if presence:
        add(presence.rstrip() + "\n")
    if mqtt:
        add(mqtt.rstrip() + "\n")
    if nats:
        add(nats.rstrip() + "\n")
    if loops:
        add(loops.rstrip() + "\n")
    if optimisations:
        add(optimisations.rstrip() + "\n")
    add("## Raw data\n")
    add("Every run is one JSON line in [`bench/benchmarks.jsonl`](bench/benchmarks.jsonl) "
        "(copied from `BUILD/benchmarks.jsonl`): server, measurement, parameters, the exact "
        "commands of the server and of gale bench, exit status, load average before the run, "
        "and gale bench's `--json` report. `bench/plot.py docs/bench/benchmarks.jsonl "
        "--png-dir docs/bench --markdown docs/BENCHMARKS.md --optimisations "
        "docs/bench/optimisations.md --history docs/bench/history.md --presence "
        "docs/bench/presence.md --mqtt docs/bench/mqtt.md --nats docs/bench/nats.md --loops "
        "docs/bench/loops.md` redraws everything from it; the history section's runs are in "
        "[`bench/history.jsonl`](bench/history.jsonl), the presence section's in "
        "[`bench/presence.jsonl`](bench/presence.jsonl), the MQTT section's in "
        "[`bench/mqtt.jsonl`](bench/mqtt.jsonl), the NATS section's in "
        "[`bench/nats.jsonl`](bench/nats.jsonl), the event loops section's in "
        "[`bench/loops.jsonl`](bench/loops.jsonl).")
    return "\n".join(md) + "\n"


def sortkey(v):
    if isinstance(v, (int, float)):
        return v
    try:
        return float(str(v).replace(",", ""))
    except ValueError:
        return 0


def sk_server(kr):
    s = kr[0][-1]
    inv = {v: k for k, v in LABEL.items()}
    s = inv.get(s, s)
    return s if s in SERVERS else SERVERS[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jsonl")
    ap.add_argument("--png-dir", help="write the PNGs here")
    ap.add_argument("--markdown", help="write the report here")
    ap.add_argument("--optimisations", help="markdown file included verbatim")
    ap.add_argument("--history", help="markdown file included verbatim (bench/history.py)")
    ap.add_argument("--presence", help="markdown file included verbatim after the history "
                    "section (bench/presence.py)")
    ap.add_argument("--mqtt", help="markdown file included verbatim after the presence "
                    "section (bench/mqtt.py)")
    ap.add_argument("--nats", help="markdown file included verbatim after the MQTT "
                    "section (bench/nats.py)")
    ap.add_argument("--loops", help="markdown file included verbatim after the NATS "
                    "section (bench/loops.py)")
    a = ap.parse_args()
    meta, end, runs, skips = load(a.jsonl)
    made = drawn = {}
    if a.png_dir:
        try:
            made = drawn = plots(runs, a.png_dir, meta)
        except ImportError as e:
            print(f"plot.py: no plots ({e}); install python3-matplotlib; the PNGs already in "
                  f"{a.png_dir} are kept", file=sys.stderr)
            if os.path.isdir(a.png_dir):
                made = {f: os.path.join(a.png_dir, f) for f in os.listdir(a.png_dir)
                        if f.endswith(".png")}
    if a.markdown:
        opt = hist = pres = mq = na = lo = ""
        if a.optimisations and os.path.exists(a.optimisations):
            with open(a.optimisations) as f:
                opt = f.read()
        if a.history and os.path.exists(a.history):
            with open(a.history) as f:
                hist = f.read()
        if a.presence and os.path.exists(a.presence):
            with open(a.presence) as f:
                pres = f.read()
        if a.mqtt and os.path.exists(a.mqtt):
            with open(a.mqtt) as f:
                mq = f.read()
        if a.nats and os.path.exists(a.nats):
            with open(a.nats) as f:
                na = f.read()
        if a.loops and os.path.exists(a.loops):
            with open(a.loops) as f:
                lo = f.read()
        rel = os.path.relpath(a.png_dir, os.path.dirname(os.path.abspath(a.markdown))) \
            if a.png_dir else "bench"
        with open(a.markdown, "w") as f:
            f.write(markdown(meta, end, runs, skips, made, rel, opt, hist, pres, mq, na, lo))
    for name in sorted(drawn):
        print(drawn[name])


if __name__ == "__main__":
    main()
