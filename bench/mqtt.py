#!/usr/bin/python3
"""bench/mqtt.py: gale-broker's MQTT adapter (/mqtt) against mosquitto's WebSocket listener,
the same fan-out measured by `gale bench --proto mqtt` for both in one run.

    BUILD=build/hbench bench/mqtt.py            # ~4 min on 2 cores
    QUICK=1 BUILD=build/hbench bench/mqtt.py    # ~40 s sanity run, small counts

Writes the section "MQTT adapter vs mosquitto" to docs/bench/mqtt.md (bench/plot.py --mqtt
includes it in docs/BENCHMARKS.md) and every run as one JSON line to docs/bench/mqtt.jsonl.

For each subscriber count N of COUNTS, every server in turn (each round another one goes
first), each measurement on a fresh process:

  a. fan-out, REPEAT rounds: `gale bench fanout --proto mqtt --subs N --pubs 1 --rate RATE
     --duration DURATION`: N subscribers of one topic (SUBSCRIBE at QoS 0), one publisher
     (QoS 0 PUBLISH + PINGREQ, ~SIZE-byte payloads), `--procs 2`. Broker CPU per delivery =
     its CPU (utime + stime of /proc/PID/stat, all threads, 10 ms ticks) from the last SUBACK
     to the last delivery, over the deliveries; latency = publish to receive (the send time is
     in the payload), p50 and p99; lost = expected - received (exact counts). The report
     gives the median of the rounds (and the CPU's min-max): on a shared 2-core machine one
     run's cost per delivery moves by a third from one run to the next;
  b. memory: `gale bench conns --proto mqtt --conns N --subscribe --hold HOLD` (connection i
     subscribed to its own topic bench/conn/i): RSS per connection = (VmRSS while holding the
     N idle subscribers - VmRSS of the fresh broker before they connect) / N;

and, with THROUGHPUT=1 (the default), the fan-out at the first count as fast as acks allow
(`--rate 0 --window 64`, 5 s): deliveries/s and CPU per delivery of a saturated broker.

Servers: gale-broker (`--log-level warn --keepalive 0`) at /mqtt; mosquitto 2.0.11 (Debian,
/usr/sbin/mosquitto) with `user root`, a plain TCP listener (its WebSocket listener only
starts next to one) and a `protocol websockets` listener, both `allow_anonymous true`; and,
with REF=1 (the default), gale-broker's gale v1 endpoint /ws with the same runs
(`--proto gale`) as a reference: what the adapter costs over gale's own protocol.

Every process listens on 127.0.0.1 on a free port (mosquitto 2.0.11 binds its websockets
port on every interface whatever the address), every wait is bounded, and everything started
is stopped on exit. Environment: BUILD (build-bench), DOCS (docs), COUNTS ("1000 5000"),
RATE (5 msg/s), DURATION (8 s), REPEAT (3), SIZE (100 bytes), HOLD (2 s), THROUGHPUT (1),
REF (1), MOSQUITTO (/usr/sbin/mosquitto), QUICK=1 (COUNTS "200 1000", DURATION 3, HOLD 1,
REPEAT 1).
"""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
import _adapters as A  # noqa: E402  (bench/_adapters.py: what mqtt.py and nats.py share)

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")


class Mosquitto(A.Server):
    key, label, path, proto = "mosquitto", "mosquitto 2.0.11", "/mqtt", "mqtt"
    binary, install = MOSQUITTO, "apt-get install mosquitto"

    def start(self):
        for _ in range(4):
            self.port, tcp = A.free_port(), A.free_port()
            conf = os.path.join(A.TMP, "mosquitto-%d.conf" % self.port)
            lines = (["user root"] if os.geteuid() == 0 else []) + [
                "listener %d %s" % (tcp, A.HOST), "allow_anonymous true",
                "listener %d %s" % (self.port, A.HOST), "protocol websockets",
                "allow_anonymous true"]
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.spawn([MOSQUITTO, "-c", conf], "mosquitto -c mosquitto.conf  # %s"
                       % " / ".join(lines), "mosquitto-%d.log" % self.port)
            try:
                self.wait_ready([self.port, tcp])
                return self
            except RuntimeError as e:
                last = e
                self.stop()
        raise RuntimeError("mosquitto did not start: %s" % last)

    def version(self):
        v = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True)
        return ((v.stdout + v.stderr).splitlines() or ["mosquitto ?"])[0].strip()


SPEC = A.Spec(
    name="mqtt", proto="mqtt", path="/mqtt", title="MQTT adapter vs mosquitto",
    peer_short="mosquitto",
    client="`gale bench --proto mqtt` (MQTT 3.1.1 over WebSocket, subprotocol `mqtt`): CONNECT "
           "(clean session, keepalive 60), SUBSCRIBE at QoS 0, one publisher sending QoS 0 "
           "PUBLISH + PINGREQ (the PINGRESP is its ack)",
    subscribed="the last SUBACK", pings="PINGREQs", goal=0.5)


def main():
    return A.run(SPEC, Mosquitto())


if __name__ == "__main__":
    sys.exit(main())
