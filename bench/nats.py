#!/usr/bin/python3
"""bench/nats.py: gale-broker's NATS adapter (/nats) against nats-server's WebSocket listener,
the same fan-out measured by `gale bench --proto nats` for both in one run.

    BUILD=build/hbench bench/nats.py            # ~3-4 min on 2 cores
    QUICK=1 BUILD=build/hbench bench/nats.py    # ~40 s sanity run, small counts

Writes the section "NATS adapter vs nats-server" to docs/bench/nats.md (bench/plot.py --nats
includes it in docs/BENCHMARKS.md) and every run as one JSON line to docs/bench/nats.jsonl.
The same measurements and report as bench/mqtt.py (both in bench/_adapters.py), over NATS:

For each subscriber count N of COUNTS, every server in turn (each round another one goes
first), each measurement on a fresh process:

  a. fan-out, REPEAT rounds: `gale bench fanout --proto nats --subs N --pubs 1 --rate RATE
     --duration DURATION`: N subscribers of one subject (CONNECT with verbose and pedantic
     off, then SUB + PING: the PONG is the subscription's ack), one publisher (PUB + PING per
     message: the n-th PONG acknowledges publish n; ~SIZE-byte payloads), `--procs 2`. Broker
     CPU per delivery = its CPU (utime + stime of /proc/PID/stat, all threads, 10 ms ticks)
     from the last subscription's PONG to the last delivery, over the deliveries; latency =
     publish to receive (the send time is in the payload), p50 and p99; lost = expected -
     received (exact counts). The report gives the median of the rounds (and the CPU's
     min-max): on a shared 2-core machine one run's cost per delivery moves by a third from
     one run to the next;
  b. memory: `gale bench conns --proto nats --conns N --subscribe --hold HOLD` (connection i
     subscribed to its own subject bench.conn.i): RSS per connection = (VmRSS while holding the
     N idle subscribers - VmRSS of the fresh broker before they connect) / N;

and, with THROUGHPUT=1 (the default), the fan-out at the first count as fast as acks allow
(`--rate 0 --window 64`, 5 s): deliveries/s and CPU per delivery of a saturated broker.

Servers: gale-broker (`--log-level warn --keepalive 0`) at /nats; nats-server 2.9.10 (Debian,
/usr/sbin/nats-server) with a configuration file holding `listen: 127.0.0.1:TCPPORT` (its
client port, unused) and `websocket { listen: "127.0.0.1:WSPORT"; no_tls: true }` (compression
is off by default), driven at ws://127.0.0.1:WSPORT/; and, with REF=1 (the default),
gale-broker's gale v1 endpoint /ws with the same runs (`--proto gale`) as a reference: what
the adapter costs over gale's own protocol. nats-server exits with status 1 on SIGTERM: that
is how it stops, not a failure (a run's status is `gale bench`'s and whether the server was
still alive at its end).

Every process listens on 127.0.0.1 on a free port, every wait is bounded, and everything
started is stopped on exit; server logs and configuration files stay in /tmp/gale-nats-bench-*.
Environment: BUILD (build-bench), DOCS (docs), COUNTS ("1000 5000"), RATE (5 msg/s), DURATION
(8 s), REPEAT (3), SIZE (100 bytes), HOLD (2 s), THROUGHPUT (1), REF (1), NATS_SERVER
(/usr/sbin/nats-server), QUICK=1 (COUNTS "200 1000", DURATION 3, HOLD 1, REPEAT 1).
"""
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True
import _adapters as A  # noqa: E402  (bench/_adapters.py: what mqtt.py and nats.py share)

NATS_SERVER = os.environ.get("NATS_SERVER", "/usr/sbin/nats-server")


def nats_version():
    try:
        v = subprocess.run([NATS_SERVER, "--version"], capture_output=True, text=True,
                           timeout=10)
        return ((v.stdout + v.stderr).splitlines() or ["nats-server ?"])[0].strip()
    except (OSError, subprocess.TimeoutExpired):
        return "nats-server ?"


class NatsServer(A.Server):
    key, path, proto = "nats-server", "/", "nats"
    binary, install = NATS_SERVER, "apt-get install nats-server"

    def __init__(self):
        super().__init__()
        m = re.search(r"v?(\d+\.\d+\.\d+)", nats_version())
        self.label = "nats-server " + (m.group(1) if m else "?")

    def start(self):
        for _ in range(4):
            self.port, tcp = A.free_port(), A.free_port()
            conf = os.path.join(A.TMP, "nats-%d.conf" % self.port)
            text = ('listen: %s:%d\nwebsocket {\n  listen: "%s:%d"\n  no_tls: true\n}\n'
                    % (A.HOST, tcp, A.HOST, self.port))
            with open(conf, "w") as f:
                f.write(text)
            self.spawn([NATS_SERVER, "-c", conf], 'nats-server -c nats.conf  # listen: %s:%d / '
                       'websocket { listen: "%s:%d"; no_tls: true }'
                       % (A.HOST, tcp, A.HOST, self.port), "nats-%d.log" % self.port)
            try:
                self.wait_ready([self.port, tcp])
                return self
            except RuntimeError as e:
                last = e
                self.stop()
        raise RuntimeError("nats-server did not start: %s" % last)

    def version(self):
        return nats_version()


def notes(find):
    """The bullets that only the NATS comparison has."""
    out = []
    if find.get(("nats-server", "fanout", A.COUNTS[-1])):
        out.append(
            "nats-server is a Go program: it runs on both cores (GOMAXPROCS = 2), with a "
            "reading and a writing goroutine per client, and sends all the bytes pending for a "
            "client in one WebSocket frame; gale-broker is one thread and one event loop. CPU "
            "per delivery counts every thread of either.")
    n = A.COUNTS[0]
    r_ws = A.ratio(A.get(find.get(("gale", "throughput", n)), "broker", "cpu_us_per_delivery"),
                   A.get(find.get(("gale-ws", "throughput", n)), "broker",
                         "cpu_us_per_delivery"))
    if r_ws is not None and r_ws > 1.5:
        out.append(
            "gale's /nats builds a frame per delivery: each MSG carries the subscriber's own "
            "subscription id (`send_msg` in `broker/nats.c`), where /ws and /mqtt queue one "
            "shared frame to every subscriber. At a fixed rate the write per delivery hides "
            "that; as fast as acks allow it is the %s× above." % A.fmt(r_ws))
    return out


SPEC = A.Spec(
    name="nats", proto="nats", path="/nats", title="NATS adapter vs nats-server",
    peer_short="nats-server",
    client="`gale bench --proto nats` (the NATS client protocol over WebSocket, binary "
           "frames): CONNECT after the first INFO (verbose and pedantic off, no headers), "
           "SUB + PING (the PONG is the subscription's ack), one publisher sending PUB + PING "
           "(the n-th PONG is the ack of publish n)",
    subscribed="the last subscription's PONG", pings="PINGs", notes=notes)


def main():
    return A.run(SPEC, NatsServer())


if __name__ == "__main__":
    sys.exit(main())
