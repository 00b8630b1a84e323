"""`gale bench` against the real broker: a seconds-long run whose counts must be exact.

Speed is never asserted here (docs: benchmarks live in bench/); only that the load generator
and the broker agree on every delivery.
"""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from galetest import HOST, TARGET, free_port, stop_process

GALE = os.environ.get("GALE_CLI") or os.path.join(
    os.path.dirname(os.environ.get("GALE_BROKER", "build/gale-broker")), "gale")

pytestmark = pytest.mark.skipif(not os.path.exists(GALE), reason="gale CLI not built")


def bench(broker, *args):
    cmd = [GALE, "bench", *args, "--url", broker.url, "--json"]
    if TARGET == "gale":
        cmd += ["--pid", str(broker.proc.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_fanout_counts_exactly(broker, encoding):
    r = bench(broker, "fanout", "--encoding", encoding, "--subs", "50", "--pubs", "2",
              "--messages", "200")
    text = json.dumps(r)
    assert r["ok"] is True, text
    assert r["acked"] == r["published"] == 2 * 200, text
    assert r["expected"] == r["received"] == 50 * 2 * 200, text
    for field in ("lost", "extra", "duplicates", "out_of_order", "foreign", "broker_errors"):
        assert r[field] == 0, field + ": " + text


def test_topics_counts_exactly(broker):
    r = bench(broker, "topics", "--subs", "200", "--topics", "20", "--messages", "100")
    text = json.dumps(r)
    assert r["ok"] is True and r["lost"] == 0 and r["duplicates"] == 0, text
    # Round-robin over 20 topics of 10 subscribers each: every message reaches 10.
    assert r["received"] == r["expected"] == 100 * 10, text


def test_conns_held(broker):
    r = bench(broker, "conns", "--conns", "500", "--subscribe", "--hold", "1")
    assert r["ok"] is True and r["connected"] == 500 and r["failed"] == 0, json.dumps(r)


@pytest.mark.gale_only
def test_conns_topics_per_conn_holds_every_topic(make_broker):
    """--topics-per-conn: 40 connections x 250 distinct topics are all in the broker while
    held (10,000 topics, each with one subscriber), and gone after."""
    b = make_broker()
    cmd = [GALE, "bench", "conns", "--conns", "40", "--topics-per-conn", "250", "--hold", "3",
           "--url", b.url, "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = b.metrics()
            held = {k: m.get(k) for k in ("gale_topics", "gale_subscriptions")}
            if held["gale_topics"] == 10000:
                break
            time.sleep(0.1)
        assert held == {"gale_topics": 10000, "gale_subscriptions": 10000}, held
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    r = json.loads(out)
    assert proc.returncode == 0 and r["ok"] is True, err + out
    assert r["connected"] == 40 and r["topics_per_conn"] == 250 and r["subscribe"], out
    deadline = time.monotonic() + 5
    while b.metrics().get("gale_topics") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b.metrics().get("gale_topics") == 0


@pytest.mark.gale_only
def test_conns_topics_per_conn_refused_subscription_fails_setup(make_broker):
    """A refused sub (over --max-subscriptions) fails the connection's set-up at once, with
    the broker's reason, instead of waiting for --setup-timeout."""
    b = make_broker(args=["--max-subscriptions", "100"])
    t0 = time.monotonic()
    out = subprocess.run([GALE, "bench", "conns", "--conns", "3", "--topics-per-conn", "101",
                          "--url", b.url, "--setup-timeout", "30"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "too many subscriptions" in out.stderr, out.stderr
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------------------
# recover: subscribers disconnect, messages are published, they come back with since.
# ---------------------------------------------------------------------------------------

def bench_status(b, *args, status=0, timeout=120):
    """Runs `gale bench ARGS --url B --json --pid`; checks the exit status, returns the
    report (None when stdout is not JSON) and stderr."""
    cmd = [GALE, "bench", *args, "--url", b.url, "--json", "--pid", str(b.proc.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == status, "exit %d\n%s\n%s" % (out.returncode, out.stdout, out.stderr)
    try:
        return json.loads(out.stdout), out.stderr
    except ValueError:
        return None, out.stderr


def assert_recovered(r, subs, msgs):
    text = json.dumps(r)
    assert r["ok"] is True and r["error"] == "", text
    assert r["recovered"] == subs and r["not_recovered"] == 0, text
    assert r["published"] == r["acked"] == msgs, text
    assert r["off_top"] - r["off_first"] + 1 == msgs and r["ep"], text
    assert r["expected"] == r["received"] == subs * msgs, text
    for field in ("lost", "extra", "duplicates", "gaps", "foreign", "broker_errors"):
        assert r[field] == 0, field + ": " + text
    c = r["connections"]
    assert c["subscribed"] == c["closed"] == c["reconnected"] == subs, text
    assert c["failed"] == c["lost"] == 0, text
    assert 0 < r["ack_ms"]["p50"] <= r["ack_ms"]["max"] <= r["reconnect_s"] * 1000 + 1, text


@pytest.mark.gale_only
@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_recover_counts_exactly(make_broker, encoding):
    b = make_broker(args=["--history", "bench.>=100"])
    r, _ = bench_status(b, "recover", "--subs", "50", "--msgs", "10", "--encoding", encoding)
    assert_recovered(r, 50, 10)
    assert r["broker"]["cpu_s"] >= 0 and "redis" not in r, json.dumps(r)
    # Again on the same stream: the positions move on, nothing is lost or replayed twice.
    r, _ = bench_status(b, "recover", "--subs", "20", "--msgs", "30", "--procs", "2",
                        "--encoding", encoding)
    assert_recovered(r, 20, 30)
    assert r["off_first"] == 11 and r["off_top"] == 40, json.dumps(r)


@pytest.mark.gale_only
def test_recover_fails_when_messages_are_gone(make_broker):
    """History of 5: 10 missed messages cannot be recovered; the bench says so and exits 1."""
    b = make_broker(args=["--history", "bench.>=5"])
    r, _ = bench_status(b, "recover", "--subs", "30", "--msgs", "10", status=1)
    text = json.dumps(r)
    assert r["ok"] is False and "not recovered" in r["error"], text
    assert r["recovered"] == 0 and r["not_recovered"] == 30, text
    assert r["lost"] == r["expected"] == 300 and r["received"] == 0, text


@pytest.mark.gale_only
def test_recover_needs_history_on_the_topic(make_broker):
    b = make_broker()
    r, err = bench_status(b, "recover", "--subs", "5", "--msgs", "1", "--setup-timeout", "10",
                          status=3)
    assert r is None and "no history" in err and "--history" in err, err


def test_recover_usage():
    for args in (["--pubs", "2"], ["--duration", "1"], ["--proto", "nats"]):
        out = subprocess.run([GALE, "bench", "recover", *args, "--url", "ws://127.0.0.1:9/ws"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and out.stdout == "", out.stderr
    out = subprocess.run([GALE, "bench", "fanout", "--redis-cli", "6379", "--url",
                          "ws://127.0.0.1:9/ws"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "recover scenario only" in out.stderr, out.stderr


@pytest.mark.gale_only
@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="redis-server is not installed (scripts/deps test)")
def test_recover_in_a_cluster(make_broker, logdir):
    """Two brokers on one redis-server: subscribed on A, published on B, back on B with
    since; the Redis commands of the reconnect come from INFO commandstats."""
    port = free_port()
    with open(os.path.join(logdir, "redis-bench-%d.log" % port), "wb") as log:
        redis = subprocess.Popen(["redis-server", "--save", "", "--appendonly", "no", "--port",
                                  str(port), "--bind", HOST], stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and redis.poll() is None, "no redis-server"
                time.sleep(0.05)
        args = ["--redis", "redis://%s:%d" % (HOST, port), "--history", "bench.>=100"]
        a, b = make_broker(args=args), make_broker(args=args)
        r, _ = bench_status(a, "recover", "--subs", "50", "--msgs", "10", "--pub-url", b.url,
                            "--reconnect-url", b.url, "--redis-cli", str(port))
        assert_recovered(r, 50, 10)
        rd = r["redis"]
        assert rd["server"] == str(port) and rd["evalsha"] == rd["commands"].get("evalsha", 0)
        assert 1 <= rd["evalsha"] <= 50 and rd["total"] >= rd["evalsha"], json.dumps(r)
    finally:
        stop_process(redis)


def test_topics_per_conn_usage(broker):
    out = subprocess.run([GALE, "bench", "fanout", "--topics-per-conn", "5", "--url", broker.url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "conns scenario only" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# --proto nats: the same scenarios against a real nats-server (Debian's nats-server 2.9)
# through its WebSocket listener, plain ws:// on loopback.
# ---------------------------------------------------------------------------------------

NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)

needs_nats = pytest.mark.skipif(NATS_SERVER is None,
                                reason="nats-server not installed (scripts/deps test installs it)")


class NatsServer:
    """One nats-server: a WebSocket listener (no TLS, no compression) and its client port,
    both on free loopback ports; `extra` is appended to the configuration file."""

    def __init__(self, logdir, extra=""):
        self.logdir, self.extra = logdir, extra
        self.proc = self.ws_port = self.logpath = None

    @property
    def url(self):
        return "ws://%s:%d/" % (HOST, self.ws_port)

    def log_tail(self, n=30):
        with open(self.logpath, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def start(self, timeout=10.0, attempts=4):
        for _ in range(attempts):
            self.ws_port, port = free_port(), free_port()
            conf = os.path.join(self.logdir, "nats-%d.conf" % self.ws_port)
            with open(conf, "w") as f:
                f.write('websocket {\n  listen: "%s:%d"\n  no_tls: true\n  compression: false\n}\n%s'
                        % (HOST, self.ws_port, self.extra))
            self.logpath = conf[:-5] + ".log"
            with open(self.logpath, "wb") as log:
                self.proc = subprocess.Popen([NATS_SERVER, "-c", conf, "-a", HOST, "-p", str(port)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection((HOST, self.ws_port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            self.stop()  # exited (a port taken meanwhile?) or not listening: try new ports
        raise RuntimeError("nats-server did not start:\n" + self.log_tail())

    def stop(self):
        stop_process(self.proc)


@pytest.fixture(scope="module")
def nats(logdir):
    n = NatsServer(logdir).start()
    yield n
    n.stop()


def nats_bench(n, *args, status=0):
    """Runs `gale bench ... --proto nats` against nats-server @n; returns the JSON report."""
    cmd = [GALE, "bench", *args, "--proto", "nats", "--url", n.url, "--json",
           "--pid", str(n.proc.pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == status, "exit %d\n%s\n%s\nnats-server log:\n%s" % (
        out.returncode, out.stdout, out.stderr, n.log_tail())
    assert n.proc.poll() is None, "nats-server exited:\n" + n.log_tail()
    return json.loads(out.stdout)


def assert_exact(r, published, deliveries):
    text = json.dumps(r)
    assert r["ok"] is True and r["proto"] == "nats", text
    assert r["published"] == r["acked"] == published, text
    assert r["expected"] == r["received"] == deliveries, text
    for field in ("lost", "extra", "duplicates", "out_of_order", "foreign", "broker_errors",
                  "pub_errors"):
        assert r[field] == 0, field + ": " + text
    assert r["connections"]["failed"] == r["connections"]["lost"] == 0, text
    assert r["broker"]["cpu_s"] >= 0 and r["latency_us"]["max"] > 0, text


@needs_nats
def test_nats_fanout_counts_exactly(nats):
    r = nats_bench(nats, "fanout", "--subs", "50", "--messages", "200")
    assert_exact(r, 200, 50 * 200)


@needs_nats
def test_nats_fanout_two_publishers_at_a_rate(nats):
    r = nats_bench(nats, "fanout", "--subs", "20", "--pubs", "2", "--rate", "400",
                   "--messages", "200")
    assert_exact(r, 2 * 200, 20 * 2 * 200)


@needs_nats
def test_nats_as_fast_as_acks_allow(nats):
    # Each PUB is followed by a PING; at most 16 PONGs outstanding per publisher.
    r = nats_bench(nats, "fanout", "--subs", "10", "--rate", "0", "--window", "16",
                   "--messages", "3000")
    assert r["window"] == 16
    assert_exact(r, 3000, 10 * 3000)


@needs_nats
def test_nats_large_messages_span_frames(nats):
    # nats-server puts everything pending for a non-browser client in one frame of any size
    # (over 1 MiB here): MSGs end up split across frames and reads.
    r = nats_bench(nats, "fanout", "--subs", "5", "--size", "50000", "--messages", "300",
                   "--mask", "random")
    assert_exact(r, 300, 5 * 300)


@needs_nats
def test_nats_topics_counts_exactly(nats):
    r = nats_bench(nats, "topics", "--subs", "200", "--topics", "20", "--messages", "100")
    # Round-robin over 20 subjects of 10 subscribers each: every message reaches 10.
    assert_exact(r, 100, 100 * 10)


@needs_nats
def test_nats_conns_subscribed(nats):
    r = nats_bench(nats, "conns", "--conns", "500", "--subscribe", "--hold", "1")
    text = json.dumps(r)
    assert r["ok"] is True and r["connected"] == 500, text
    # RSS is reported, but not asserted: Go's collector may return memory during the hold.
    assert r["failed"] == r["lost"] == 0 and "rss_kib_per_conn" in r, text


@needs_nats
def test_nats_conns_topics_per_conn(nats):
    r = nats_bench(nats, "conns", "--conns", "20", "--topics-per-conn", "300", "--hold", "1")
    text = json.dumps(r)
    assert r["ok"] is True and r["connected"] == 20 and r["topics_per_conn"] == 300, text
    assert r["failed"] == r["lost"] == 0, text


@needs_nats
def test_nats_connect_cycles(nats):
    r = nats_bench(nats, "connect", "--duration", "1", "--concurrency", "4")
    text = json.dumps(r)
    assert r["ok"] is True and r["cycles"] > 0 and r["failed"] == 0, text
    assert r["handshake_us"]["p50"] > 0, text


@needs_nats
def test_nats_server_pings_are_answered(logdir):
    # The server pings idle clients every second and drops them as stale with 2 unanswered.
    n = NatsServer(logdir, 'ping_interval: "1s"\nping_max: 2\n').start()
    try:
        r = nats_bench(n, "conns", "--conns", "20", "--subscribe", "--hold", "4")
        assert r["ok"] is True and r["connected"] == 20 and r["lost"] == 0, json.dumps(r)
    finally:
        n.stop()


@pytest.mark.parametrize("args", [["--encoding", "msgpack"], ["--proto", "mqtt"]])
def test_nats_usage_errors(args):
    out = subprocess.run([GALE, "bench", "fanout", "--proto", "nats", *args, "--url",
                          "ws://127.0.0.1:9/"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and ("msgpack" in out.stderr or "mqtt" in out.stderr), out.stderr


@pytest.mark.parametrize("scenario", [["fanout"], ["conns"], ["connect", "--duration", "0.5"]])
def test_nats_cannot_connect(scenario):
    port = free_port()  # nothing listens there
    out = subprocess.run([GALE, "bench", *scenario, "--proto", "nats", "--url",
                          "ws://%s:%d/" % (HOST, port), "--setup-timeout", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "could not connect" in out.stderr and "refused" in out.stderr, out.stderr


def test_nats_mode_against_a_gale_broker(broker):
    # A gale broker answers the upgrade but speaks gale v1: no INFO, a protocol error.
    out = subprocess.run([GALE, "bench", "fanout", "--proto", "nats", "--url", broker.url,
                          "--subs", "2", "--messages", "1", "--setup-timeout", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "not a NATS protocol message" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# --proto mqtt: MQTT 3.1.1 over WebSocket, against gale-broker's /mqtt adapter and, when it
# is installed, Debian's mosquitto 2.0.11 (ref_mosquitto.py).
# ---------------------------------------------------------------------------------------

from ref_mosquitto import make_mosquitto, mosquitto_logdir  # noqa: E402,F401 (fixtures)


def mqtt_url(b):
    return "ws://%s:%d/mqtt" % (HOST, b.port)


def mqtt_bench(url, pid, *args, status=0, timeout=60):
    """Runs `gale bench ... --proto mqtt --url URL --json --pid PID`; the report, stderr."""
    cmd = [GALE, "bench", *args, "--proto", "mqtt", "--url", url, "--json", "--pid", str(pid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == status, "exit %d\n%s\n%s" % (out.returncode, out.stdout, out.stderr)
    try:
        return json.loads(out.stdout), out.stderr
    except ValueError:
        return None, out.stderr


def assert_mqtt_exact(r, published, deliveries):
    text = json.dumps(r)
    assert r["ok"] is True and r["proto"] == "mqtt" and r["error"] == "", text
    assert r["published"] == r["acked"] == published, text
    assert r["expected"] == r["received"] == deliveries, text
    for field in ("lost", "extra", "duplicates", "out_of_order", "foreign", "broker_errors",
                  "pub_errors"):
        assert r[field] == 0, field + ": " + text
    assert r["connections"]["failed"] == r["connections"]["lost"] == 0, text
    # --pid: the broker's CPU from /proc/PID/stat, whatever the protocol
    assert r["broker"]["cpu_s"] >= 0 and r["broker"]["rss_kib_after"] > 0, text
    assert r["latency_us"]["max"] > 0, text


@pytest.mark.gale_only
def test_mqtt_fanout_counts_exactly(broker):
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "fanout", "--subs", "50", "--pubs", "2",
                      "--messages", "200")
    assert_mqtt_exact(r, 2 * 200, 50 * 2 * 200)
    assert broker.alive()


@pytest.mark.gale_only
def test_mqtt_fanout_at_a_rate_and_as_fast_as_acks_allow(broker):
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "fanout", "--subs", "20", "--rate",
                      "500", "--messages", "200", "--procs", "2")
    assert_mqtt_exact(r, 200, 20 * 200)
    # Each PUBLISH is followed by a PINGREQ; at most 16 PINGRESPs outstanding.
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "fanout", "--subs", "10", "--rate", "0",
                      "--window", "16", "--messages", "3000")
    assert r["window"] == 16
    assert_mqtt_exact(r, 3000, 10 * 3000)


@pytest.mark.gale_only
def test_mqtt_large_packets_span_frames(broker):
    # 50,000-byte payloads (a three-byte remaining length), frames masked with random keys
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "fanout", "--subs", "5", "--size",
                      "50000", "--messages", "100", "--mask", "random")
    assert_mqtt_exact(r, 100, 5 * 100)


@pytest.mark.gale_only
def test_mqtt_topics_counts_exactly(broker):
    # bench.topic.NNNNNN is MQTT bench/topic/NNNNNN; 20 topics of 10 subscribers each.
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "topics", "--subs", "200", "--topics",
                      "20", "--messages", "100")
    assert_mqtt_exact(r, 100, 100 * 10)


@pytest.mark.gale_only
def test_mqtt_conns_and_connect(broker):
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "conns", "--conns", "300",
                      "--subscribe", "--hold", "1")
    text = json.dumps(r)
    assert r["ok"] is True and r["proto"] == "mqtt" and r["connected"] == 300, text
    assert r["failed"] == r["lost"] == 0 and "rss_kib_per_conn" in r, text
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "conns", "--conns", "50", "--hold", "0")
    assert r["ok"] is True and r["connected"] == 50, json.dumps(r)  # CONNACK only
    r, _ = mqtt_bench(mqtt_url(broker), broker.proc.pid, "connect", "--duration", "1",
                      "--concurrency", "4")
    text = json.dumps(r)
    assert r["ok"] is True and r["cycles"] > 0 and r["failed"] == 0, text
    assert r["handshake_us"]["p50"] > 0, text


@pytest.mark.gale_only
def test_mqtt_topics_per_conn_several_subscribes(make_broker):
    """2,500 topics per connection: SUBSCRIBEs of 1,000, 1,000 and 500 filters in one frame;
    the last SUBACK ends the set-up. All 7,500 subscriptions are in the broker while held."""
    b = make_broker(args=["--max-subscriptions", "3000"])
    r, _ = mqtt_bench(mqtt_url(b), b.proc.pid, "conns", "--conns", "3", "--topics-per-conn",
                      "2500", "--hold", "1")
    text = json.dumps(r)
    assert r["ok"] is True and r["connected"] == 3 and r["topics_per_conn"] == 2500, text


@pytest.mark.gale_only
def test_mqtt_refused_subscription_fails_setup(make_broker):
    """A filter refused in the SUBACK (0x80: over --max-subscriptions) fails the connection's
    set-up at once, instead of waiting for --setup-timeout."""
    b = make_broker(args=["--max-subscriptions", "100"])
    t0 = time.monotonic()
    r, err = mqtt_bench(mqtt_url(b), b.proc.pid, "conns", "--conns", "3", "--topics-per-conn",
                        "101", "--setup-timeout", "30", status=3)
    assert r is None and "SUBACK 0x80" in err, err
    assert time.monotonic() - t0 < 10


def test_mqtt_usage_errors():
    for args in (["fanout", "--encoding", "msgpack"], ["recover"], ["fanout", "--proto", "nats"]):
        out = subprocess.run([GALE, "bench", *args, "--proto", "mqtt", "--url",
                              "ws://127.0.0.1:9/mqtt"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2 and out.stdout == "", out.stderr
        assert "mqtt" in out.stderr, out.stderr


@pytest.mark.gale_only
def test_mqtt_mode_against_gale_v1(broker):
    # /ws speaks gale v1 and does not offer the subprotocol mqtt: the upgrade is refused.
    out = subprocess.run([GALE, "bench", "fanout", "--proto", "mqtt", "--url", broker.url,
                          "--subs", "2", "--messages", "1", "--setup-timeout", "5"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "could not connect" in out.stderr, out.stderr


def test_mqtt_against_mosquitto(make_mosquitto):
    """The same client against mosquitto 2.0.11's WebSocket listener (skipped without it, and
    under GALE_SKIP_REFERENCE: the gale /mqtt cases above run the same client code)."""
    if os.environ.get("GALE_SKIP_REFERENCE"):
        pytest.skip("GALE_SKIP_REFERENCE: the reference server's half runs in the plain build")
    m = make_mosquitto()
    r, _ = mqtt_bench(m.url, m.proc.pid, "fanout", "--subs", "30", "--pubs", "2", "--messages",
                      "200")
    assert_mqtt_exact(r, 2 * 200, 30 * 2 * 200)
    r, _ = mqtt_bench(m.url, m.proc.pid, "conns", "--conns", "100", "--subscribe", "--hold", "0.5")
    assert r["ok"] is True and r["connected"] == 100 and r["failed"] == 0, json.dumps(r)
    assert m.alive(), m.log_tail()
