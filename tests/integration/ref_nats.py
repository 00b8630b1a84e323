"""The reference NATS server (Debian's nats-server 2.9.10) for test_nats.py: one process
with a WebSocket listener (no TLS) on a free loopback port, from a config file written
here; readiness, SIGTERM stop and the log, all bounded in time.

    srv = NatsServer(tmpdir, token="s3cret", max_payload=4096).start()
    srv.ws_url        # ws://127.0.0.1:WSPORT/nats (any path works on nats-server)
    srv.stop()

Tests skip (available() is False) when nats-server is not on PATH.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import time

HOST = "127.0.0.1"


def binary():
    return shutil.which("nats-server")


def available():
    return binary() is not None


def _free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _q(s):
    """A quoted string for nats-server's config format (JSON's quoting is accepted)."""
    return json.dumps(s)


class NatsServerError(Exception):
    pass


class NatsServer:
    """One nats-server process.

    token:        `authorization { token: ... }` (clients send CONNECT auth_token)
    users:        list of {"user", "password", "permissions": {...}} (nats-server's own
                  `authorization { users = [...] }`, for checking its error texts)
    max_payload:  `max_payload`
    extra:        more config text, appended as is
    """

    def __init__(self, workdir, token=None, users=None, max_payload=None, extra="",
                 name="nats"):
        self.workdir = str(workdir)
        self.token = token
        self.users = users
        self.max_payload = max_payload
        self.extra = extra
        self.name = name
        self.proc = None
        self.port = None      # the WebSocket port
        self.tcp_port = None  # the plain NATS port (unused by the tests but required)
        self.logpath = None
        self.confpath = None
        self._n = 0

    @property
    def ws_url(self):
        return "ws://%s:%d/nats" % (HOST, self.port)

    def config(self):
        lines = ["listen: %s:%d" % (HOST, self.tcp_port),
                 "websocket {", '  listen: "%s:%d"' % (HOST, self.port), "  no_tls: true", "}"]
        if self.max_payload is not None:
            lines.append("max_payload: %d" % self.max_payload)
        if self.token is not None:
            lines += ["authorization {", "  token: %s" % _q(self.token), "}"]
        elif self.users:
            lines += ["authorization {", "  users = ["]
            for u in self.users:
                entry = "    {user: %s, password: %s" % (_q(u["user"]), _q(u["password"]))
                perms = u.get("permissions")
                if perms:
                    parts = []
                    for kind in ("publish", "subscribe"):
                        if kind in perms:
                            parts.append("%s: %s" % (kind, json.dumps(perms[kind])))
                    entry += ", permissions: {%s}" % ", ".join(parts)
                lines.append(entry + "}")
            lines += ["  ]", "}"]
        if self.extra:
            lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, timeout=10.0, attempts=4):
        if not available():
            raise NatsServerError("nats-server is not on PATH")
        last = None
        for _ in range(attempts):
            try:
                self._start_once(timeout)
                return self
            except NatsServerError as e:
                last = e
                text = self.log_text().lower()
                if "address already in use" in text or "bind" in text:
                    continue   # lost a race for a port: pick others
                raise
        raise last

    def _start_once(self, timeout):
        self._n += 1
        self.tcp_port, self.port = _free_port(), _free_port()
        while self.port == self.tcp_port:
            self.port = _free_port()
        tag = "%s-%d-%d" % (self.name, self.port, self._n)
        self.confpath = os.path.join(self.workdir, tag + ".conf")
        self.logpath = os.path.join(self.workdir, tag + ".log")
        with open(self.confpath, "w") as f:
            f.write(self.config())
        with open(self.logpath, "wb") as log:
            self.proc = subprocess.Popen([binary(), "-c", self.confpath], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise NatsServerError("nats-server exited early with %d:\n%s"
                                      % (rc, self.log_tail()))
            if self._ready():
                return
            time.sleep(0.05)
        self.kill()
        raise NatsServerError("nats-server not ready within %.0fs:\n%s"
                              % (timeout, self.log_tail()))

    def _ready(self):
        # The client port answers INFO once the server is up; the WebSocket listener is
        # opened before the client one, but check it accepts too.
        try:
            with socket.create_connection((HOST, self.tcp_port), timeout=0.5) as s:
                s.settimeout(0.5)
                if not s.recv(5).startswith(b"INFO"):
                    return False
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM, wait up to timeout, then SIGKILL; returns the exit code (None: killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def log_text(self):
        if not self.logpath or not os.path.exists(self.logpath):
            return ""
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "\n".join(lines[-n:]) + "\n[log: %s]" % self.logpath
