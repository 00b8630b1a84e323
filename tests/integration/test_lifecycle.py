"""Process lifecycle: command line, environment, logs, signals."""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from galetest import (HOST, JSON, MSGPACK, SOURCE_DIR, RawWS, broker_binary, connect,
                      connect_status, free_port, http_get, run)

pytestmark = pytest.mark.gale_only

FLAGS = ["--listen", "--max-message", "--max-subscriptions", "--max-connections",
         "--queue-limit", "--keepalive", "--handshake-timeout", "--max-handshakes",
         "--log-level", "--web-root", "--node-id", "--help", "--version"]


def run_cli(binary, args, env=None, timeout=5):
    """Run the binary to completion; (exit code, stdout, stderr). Fails if it keeps running."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("GALE_")}
    e.update(env or {})
    p = subprocess.Popen([binary] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail("%r still running after %ds (stderr: %r)" % (args, timeout, err[-500:]))
    return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def project_version():
    with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*gale\s+VERSION\s+([0-9.]+)", f.read())
    return m.group(1) if m else None


# --- command line ------------------------------------------------------------------------

def test_help(gale_binary):
    rc, out, err = run_cli(gale_binary, ["--help"])
    assert rc == 0, err
    text = out + err
    for flag in FLAGS:
        assert flag in text, "--help does not mention %s" % flag
    assert out.strip(), "--help should print to stdout"


def test_version(gale_binary):
    rc, out, err = run_cli(gale_binary, ["--version"])
    assert rc == 0, err
    v = project_version()
    assert v and v in out + err, (v, out, err)


BAD_ARGS = [
    (["--max-message", "banana"], "banana"),
    (["--max-message", "-5"], "max-message"),
    (["--max-message", "10X"], "max-message"),
    (["--max-message", ""], "max-message"),
    (["--max-message", "99999999999999999999999"], "max-message"),
    (["--max-message"], "max-message"),
    (["--max-subscriptions", "abc"], "max-subscriptions"),
    (["--max-subscriptions", "-1"], "max-subscriptions"),
    (["--max-connections", "x"], "max-connections"),
    (["--queue-limit", "lots"], "queue-limit"),
    (["--keepalive", "soon"], "keepalive"),
    (["--keepalive", "-3"], "keepalive"),
    (["--handshake-timeout", "0"], "handshake-timeout"),
    (["--handshake-timeout", "3601"], "handshake-timeout"),
    (["--max-handshakes", "15"], "max-handshakes"),
    (["--max-handshakes", "65537"], "max-handshakes"),
    (["--log-level", "loud"], "log-level"),
    (["--listen", "nope"], "nope"),
    (["--listen", "127.0.0.1:99999"], "listen"),
    (["--listen", "127.0.0.1:"], "listen"),
    (["--listen", "127.0.0.1:http"], "listen"),
    (["--bogus"], "bogus"),
    (["-x"], "-x"),
    (["stray-positional"], "stray-positional"),
]


@pytest.mark.parametrize("args,mention", BAD_ARGS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_bad_argument_exit_2(gale_binary, args, mention):
    if "--listen" not in args:
        args = ["--listen", "%s:%d" % (HOST, free_port())] + args
    rc, out, err = run_cli(gale_binary, args)
    assert rc == 2, "exit %d for %r; stderr %r" % (rc, args, err)
    assert err.strip(), "no message on stderr for %r" % args
    low = err.lower()
    assert mention.lower() in low or mention.lower().lstrip("-") in low, \
        "stderr for %r does not name the problem: %r" % (args, err)


@pytest.mark.parametrize("var,value", [("GALE_MAX_MESSAGE", "banana"), ("GALE_LISTEN", "nope"),
                                       ("GALE_KEEPALIVE", "x"), ("GALE_LOG_LEVEL", "loud"),
                                       ("GALE_MAX_SUBSCRIPTIONS", "many"),
                                       ("GALE_QUEUE_LIMIT", "1Q"), ("GALE_MAX_CONNECTIONS", "-2")])
def test_bad_env_value_exit_2(gale_binary, var, value):
    env = {var: value}
    if var != "GALE_LISTEN":
        env["GALE_LISTEN"] = "%s:%d" % (HOST, free_port())
    rc, out, err = run_cli(gale_binary, [], env=env)
    assert rc == 2, "exit %d for %s=%s; stderr %r" % (rc, var, value, err)
    assert var in err or value in err or var[5:].lower().replace("_", "-") in err.lower(), err


@pytest.mark.parametrize("level", ["error", "warn", "info", "debug"])
def test_log_levels_accepted(make_broker, level):
    b = make_broker(["--log-level", level])
    assert b.healthz()["status"] == "ok"


def test_listening_log_line(make_broker):
    b = make_broker()
    want = "listening on http://%s:%d" % (HOST, b.port)
    lines = [l for l in b.log_text().splitlines() if want in l]
    assert lines, "no %r line in stderr:\n%s" % (want, b.log_tail())
    tokens = lines[0].split()
    assert len(tokens) >= 3
    assert any(t.lower().strip("[]:") in ("info", "notice", "warn", "warning", "error", "debug")
               for t in tokens[:3]), lines[0]
    assert tokens[0][0].isdigit(), "log line should start with a time: %r" % lines[0]


def test_bind_failure_exits_nonzero(gale_binary, tmp_path):
    hold = socket.socket()
    hold.bind((HOST, 0))
    hold.listen(1)
    port = hold.getsockname()[1]
    try:
        rc, out, err = run_cli(gale_binary, ["--listen", "%s:%d" % (HOST, port)], timeout=5)
        assert rc != 0
        assert err.strip(), "a bind failure must be reported on stderr"
    finally:
        hold.close()


def test_default_listen_address(make_broker):
    s = socket.socket()
    try:
        s.bind((HOST, 8080))
    except OSError:
        pytest.skip("127.0.0.1:8080 is busy")
    finally:
        s.close()
    b = make_broker(listen=False, start=False)
    b.start(port=8080)
    assert b.healthz()["status"] == "ok"


# --- environment -------------------------------------------------------------------------

def test_env_listen(make_broker):
    b = make_broker(listen=False, env={"GALE_LISTEN": "127.0.0.1:{port}"})
    assert b.healthz()["status"] == "ok"


def test_flag_listen_wins_over_env(make_broker):
    # Hold the env's port (bound, not listening) so that no one else gets it: a broker
    # that used GALE_LISTEN instead of --listen would fail to start.
    hold = socket.socket()
    hold.bind((HOST, 0))
    other = hold.getsockname()[1]
    try:
        b = make_broker(env={"GALE_LISTEN": "127.0.0.1:%d" % other})
        assert b.port != other
        assert b.healthz()["status"] == "ok"          # on the flag's port
        assert "listening on http://127.0.0.1:%d" % b.port in b.log_text()
    finally:
        hold.close()


def test_env_values_honoured(make_broker):
    b = make_broker(env={"GALE_MAX_MESSAGE": "2K", "GALE_NODE_ID": "env-node",
                         "GALE_MAX_SUBSCRIPTIONS": "1", "GALE_MAX_CONNECTIONS": "2"})

    async def main():
        c = await connect(b.url, JSON)
        assert c.hello["max_msg"] == 2048
        assert c.hello["node"] == "env-node"
        await c.sub("a")
        r = await c.request({"op": "sub", "topic": "b", "id": 2})
        assert r.get("code") == "limit", r
        d = await connect(b.url, JSON)
        assert await connect_status(b.url, [JSON]) == 503
        await c.close()
        await d.close()
    run(main())


def test_flags_win_over_env(make_broker):
    b = make_broker(["--max-message", "4K", "--node-id", "flag-node", "--max-subscriptions", "2"],
                    env={"GALE_MAX_MESSAGE": "2K", "GALE_NODE_ID": "env-node",
                         "GALE_MAX_SUBSCRIPTIONS": "1"})

    async def main():
        c = await connect(b.url, JSON)
        assert c.hello["max_msg"] == 4096
        assert c.hello["node"] == "flag-node"
        await c.sub("a")
        await c.sub("b")
        r = await c.request({"op": "sub", "topic": "c", "id": 3})
        assert r.get("code") == "limit", r
        await c.close()
    run(main())


def test_env_web_root_and_flag_wins(make_broker, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "index.html").write_text("<p>gale A</p>")
    (tmp_path / "b" / "index.html").write_text("<p>gale B</p>")
    b = make_broker(["--web-root", str(tmp_path / "b")], env={"GALE_WEB_ROOT": str(tmp_path / "a")})
    st, _, body = http_get(b.port, "/")
    assert st == 200 and body == b"<p>gale B</p>"


# --- signals -----------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_clients_1001_and_exits_0(make_broker, sig):
    b = make_broker()
    raw = RawWS(b.port)
    raw.recv_json()

    async def main():
        a = await connect(b.url, JSON)
        m = await connect(b.url, MSGPACK)
        await a.sub("x.>")
        t0 = time.monotonic()
        b.send_signal(sig)
        ca, _ = await a.expect_close(timeout=5)
        cm, _ = await m.expect_close(timeout=5)
        return ca, cm, t0

    ca, cm, t0 = run(main())
    code, _ = raw.recv_until_closed(timeout=5)
    raw.close()
    rc = b.wait(max(0.1, 5 - (time.monotonic() - t0)))
    assert rc == 0, "exit %r within 5 s of the signal" % rc
    assert (ca, cm, code) == (1001, 1001, 1001)
    with pytest.raises(OSError):
        socket.create_connection((HOST, b.port), timeout=1).close()


def test_sigterm_with_stalled_client_exits_within_5s(make_broker):
    b = make_broker(["--queue-limit", "8M"])
    stalled = RawWS(b.port, rcvbuf=4096)
    stalled.recv_json()
    stalled.send_json({"op": "sub", "topic": "s", "id": 1})
    assert stalled.recv_json() == {"op": "ack", "id": 1}

    async def main():
        p = await connect(b.url, JSON)
        for i in range(3000):
            await p.send({"op": "pub", "topic": "s", "data": "d" * 1000})
        await p.sync(timeout=10)
        await p.close()

    run(main())
    t0 = time.monotonic()
    b.send_signal(signal.SIGTERM)
    rc = b.wait(5.5)
    took = time.monotonic() - t0
    stalled.close()
    assert rc == 0, "exit %r (%.1fs after SIGTERM)" % (rc, took)
    assert took <= 5.0 + 0.5


def test_sigterm_idle_exits_quickly(make_broker):
    b = make_broker()
    t0 = time.monotonic()
    b.send_signal(signal.SIGTERM)
    assert b.wait(5) == 0
    assert time.monotonic() - t0 < 5


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def _sanitized(pid):
    """Built with ASan or TSan: their allocators are not glibc's."""
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return ("libasan" in maps or "libtsan" in maps or "ASAN_OPTIONS" in os.environ
            or "TSAN_OPTIONS" in os.environ)


def test_memory_returned_after_a_crowd_leaves(make_broker):
    """3,000 subscribed connections come and go: within the next sweeps the broker logs that
    it returned free memory and its RSS falls back near where it started (glibc would keep
    the freed heap otherwise)."""
    gale = os.environ.get("GALE_CLI") or os.path.join(os.path.dirname(broker_binary()), "gale")
    b = make_broker(["--keepalive", "0", "--loops", "1"])  # one loop's sweep gives the line
    pid = b.proc.pid
    before = _rss_kib(pid)
    bench = subprocess.Popen([gale, "bench", "conns", "--conns", "3000", "--subscribe",
                              "--hold", "2", "--url", b.url, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        holding = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if b.metrics().get("gale_connections") == 3000:
                holding = _rss_kib(pid)
                break
            time.sleep(0.05)
        out, err = bench.communicate(timeout=60)
    finally:
        bench.kill()
        bench.wait()
    assert bench.returncode == 0, err + out
    assert holding - before > 3000 * 1.5, (before, holding)  # ~1.9 KiB per connection
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "returned free memory" not in b.log_text():
        time.sleep(0.1)
    assert re.search(r"3000 connections left since the peak of 3000: returned free memory",
                     b.log_text()), b.log_text()[-2000:]
    if _sanitized(pid):
        return  # a sanitizer's allocator is not glibc's: malloc_trim has nothing to return
    after = _rss_kib(pid)
    assert after - before < (holding - before) / 4, (before, holding, after)
