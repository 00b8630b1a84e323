"""A reference MQTT 3.1.1-over-WebSocket server for the integration tests: Debian's
mosquitto 2.0.11 (/usr/sbin/mosquitto), started on free loopback ports.

What its WebSocket listener needs (mosquitto 2.0.11 with its libwebsockets):
  * a plain TCP listener beside it: a configuration with only a websockets listener
    fails with "Unable to start any listening sockets";
  * run as root, `user root` (otherwise it drops to the `mosquitto` user);
  * allow_anonymous for each listener (per_listener_settings true), 2.0 refusing
    anonymous clients by default.
The WebSocket listener accepts any request path (/mqtt, /, /ws...). NB: 2.0.11 ignores
the listener's address for websockets and binds the port on every interface (upstream
issues #2085 and #3045, fixed in 2.0.12); the plain TCP listener does honour 127.0.0.1.

    m = Mosquitto(workdir, extra_conf=["max_packet_size 4096"]).start()
    m.url     -> ws://127.0.0.1:PORT/mqtt
    m.port    -> the WebSocket port; m.tcp_port the plain MQTT one
    m.stop()  -> SIGTERM, bounded, then SIGKILL; returns the exit code (None: killed)

The pytest fixture `make_mosquitto` (import it into a test module) starts any number of
them and stops them all at teardown; the test is skipped when mosquitto is absent.
"""
import os
import signal
import socket
import subprocess
import time

import pytest

MOSQUITTO = os.environ.get("GALE_MOSQUITTO", "/usr/sbin/mosquitto")
HOST = "127.0.0.1"


def available():
    return os.access(MOSQUITTO, os.X_OK)


def require():
    """pytest.skip when there is no mosquitto to compare with."""
    if not available():
        pytest.skip("no %s (apt-get install mosquitto)" % MOSQUITTO)


def _free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class MosquittoError(Exception):
    pass


class Mosquitto:
    """One mosquitto process with a plain TCP listener and a WebSocket listener."""

    _seq = 0

    def __init__(self, workdir, extra_conf=(), name="mosquitto", path="/mqtt"):
        self.workdir = str(workdir)
        self.extra_conf = list(extra_conf)   # global options (before the listeners)
        self.name = name
        self.path = path
        self.proc = None
        self.port = None
        self.tcp_port = None
        self.conf_path = None
        self.logpath = None
        self.returncode = None

    @property
    def url(self):
        return "ws://%s:%d%s" % (HOST, self.port, self.path)

    def config(self, tcp_port, ws_port):
        lines = []
        if os.geteuid() == 0:
            lines.append("user root")
        lines += ["per_listener_settings true",
                  "log_dest stderr",
                  "log_type error", "log_type warning", "log_type notice",
                  "log_type information",
                  "connection_messages true",
                  "persistence false"]
        lines += self.extra_conf
        lines += ["",
                  "listener %d %s" % (tcp_port, HOST),
                  "allow_anonymous true",
                  "",
                  "listener %d %s" % (ws_port, HOST),
                  "protocol websockets",
                  "allow_anonymous true"]
        return "\n".join(lines) + "\n"

    # -- start/stop -------------------------------------------------------------------------
    def start(self, timeout=10.0, attempts=4):
        if not available():
            raise MosquittoError("no %s" % MOSQUITTO)
        last = None
        for _ in range(attempts):
            try:
                self._start_once(_free_port(), _free_port(), timeout)
                return self
            except MosquittoError as e:
                last = e
                log = self.log_text().lower()
                if "in use" in log or "address" in log or "bind" in log:
                    continue   # lost a port race: try other ports
                raise
        raise last

    def _start_once(self, tcp_port, ws_port, timeout):
        if tcp_port == ws_port:
            ws_port = _free_port()
        Mosquitto._seq += 1
        base = os.path.join(self.workdir, "%s-%d-%d" % (self.name, ws_port, Mosquitto._seq))
        self.conf_path = base + ".conf"
        self.logpath = base + ".log"
        with open(self.conf_path, "w") as f:
            f.write(self.config(tcp_port, ws_port))
        self.port, self.tcp_port, self.returncode = ws_port, tcp_port, None
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf_path], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.returncode = rc
                raise MosquittoError("mosquitto exited early with %d:\n%s"
                                     % (rc, self.log_tail()))
            if self._accepts(ws_port) and self._accepts(tcp_port):
                return
            time.sleep(0.02)
        self.kill()
        raise MosquittoError("mosquitto not accepting on %d within %.0fs:\n%s"
                             % (ws_port, timeout, self.log_tail()))

    @staticmethod
    def _accepts(port):
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM, wait up to timeout, then SIGKILL. The exit code, or None if killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self.returncode = self.proc.returncode
        return self.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    # -- inspection -------------------------------------------------------------------------
    def log_text(self):
        if not self.logpath or not os.path.exists(self.logpath):
            return ""
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:]) + "\n[log: %s]" % self.logpath


@pytest.fixture(scope="session")
def mosquitto_logdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("mosquitto"))


@pytest.fixture
def make_mosquitto(mosquitto_logdir):
    """Factory: make_mosquitto(extra_conf=[...]) starts a mosquitto (skips the test when
    there is none); all are stopped with SIGTERM at teardown and must exit 0."""
    require()
    started = []

    def factory(extra_conf=(), name="mosquitto"):
        m = Mosquitto(mosquitto_logdir, extra_conf=extra_conf, name=name)
        started.append(m)
        return m.start()

    yield factory
    problems = []
    for m in started:
        if m.proc is None:
            continue
        if not m.alive() and m.proc.returncode != 0:
            problems.append("mosquitto had exited with %s\n%s" % (m.proc.returncode,
                                                                   m.log_tail()))
            continue
        rc = m.stop()
        if rc != 0:
            problems.append("mosquitto: exit %s after SIGTERM\n%s" % (rc, m.log_tail()))
    assert not problems, "\n".join(problems)
