"""deploy/: the Docker image, the Compose cluster, HAProxy, the systemd unit.

No Docker engine runs here, so the files are checked statically (docker-compose config,
a parse of the Dockerfile, haproxy -c, systemd-analyze verify) and the Compose topology is
run natively: redis-server, three gale-broker processes started with the environment the
Compose file gives its brokers, and Debian's haproxy with deploy/haproxy.cfg, the service
names and ports substituted for loopback addresses. Clients talk to HAProxy only.

Cross-node delivery needs Redis clustering in the broker (--redis / GALE_REDIS_URL): those
tests are skipped until `gale-broker --help` mentions --redis.
"""
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import websockets.exceptions

import galetest
from galetest import HOST, SOURCE_DIR, Broker, connect, free_port, http_get, run, stop_process

pytestmark = pytest.mark.gale_only

DEPLOY = os.path.join(SOURCE_DIR, "deploy")
COMPOSE_FILE = os.path.join(DEPLOY, "docker-compose.yml")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
HAPROXY_CFG = os.path.join(DEPLOY, "haproxy.cfg")
UNIT_FILE = os.path.join(DEPLOY, "gale-broker.service")

KEEPALIVE_DEFAULT_S = 25


def need_tool(name):
    path = shutil.which(name) or (os.path.exists("/usr/sbin/" + name) and "/usr/sbin/" + name)
    if not path:
        pytest.skip("%s is not installed (scripts/deps test installs it)" % name)
    return path


def read(path):
    with open(path) as f:
        return f.read()


# ---------------------------------------------------------------------------------------
# Compose file
# ---------------------------------------------------------------------------------------

def _yaml():
    try:
        import yaml
    except ImportError:
        pytest.skip("python3-yaml is not installed (docker-compose depends on it)")
    return yaml


def compose_config():
    """The Compose file as docker-compose resolves it (anchors merged, paths absolute), or,
    without docker-compose, as PyYAML reads it (which also resolves `<<` merge keys)."""
    yaml = _yaml()
    tool = shutil.which("docker-compose")
    if tool:
        p = subprocess.run([tool, "-f", COMPOSE_FILE, "config"], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return yaml.safe_load(p.stdout)
    return yaml.safe_load(read(COMPOSE_FILE))


def service_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def broker_services(cfg):
    """{service name: service} of the services running gale-broker."""
    return {name: svc for name, svc in cfg["services"].items()
            if "GALE_NODE_ID" in service_env(svc) or "gale-broker" in str(svc.get("image", ""))}


def redis_hosts(url_list):
    """[(host, port)] of a GALE_REDIS_URL value (comma-separated redis://HOST:PORT[/DB])."""
    out = []
    for url in url_list.split(","):
        m = re.match(r"^\s*redis://([^/:,\s]+)(?::(\d+))?(/\d+)?\s*$", url)
        assert m, "bad GALE_REDIS_URL entry %r" % url
        out.append((m.group(1), int(m.group(2) or 6379)))
    return out


def test_compose_config_is_valid():
    need_tool("docker-compose")
    cfg = compose_config()   # asserts `docker-compose config` exits 0
    services = cfg["services"]
    assert "redis" in services and "haproxy" in services, sorted(services)
    brokers = broker_services(cfg)
    assert len(brokers) == 3, sorted(brokers)

    node_ids = set()
    for name, svc in brokers.items():
        env = service_env(svc)
        assert env.get("GALE_LISTEN", "").startswith("0.0.0.0:"), (name, env)
        node_ids.add(env["GALE_NODE_ID"])
        for host, port in redis_hosts(env["GALE_REDIS_URL"]):
            assert host in services, "%s: GALE_REDIS_URL names no service: %s" % (name, host)
        assert svc.get("build") or svc.get("image"), name
        build = svc.get("build") or {}
        if build:
            df = build.get("dockerfile", "Dockerfile")
            ctx = build.get("context", ".")
            assert os.path.samefile(os.path.join(DEPLOY, ctx, df) if not os.path.isabs(ctx)
                                    else os.path.join(ctx, df), DOCKERFILE), build
        assert svc.get("healthcheck", {}).get("test"), "%s has no healthcheck" % name
        assert "/healthz" in str(svc["healthcheck"]["test"]), svc["healthcheck"]
        assert "redis" in svc.get("depends_on", {}), name
        assert not svc.get("ports"), "%s publishes a port: only HAProxy should" % name
        nofile = (svc.get("ulimits") or {}).get("nofile")
        assert nofile, ("%s: set an explicit nofile ulimit (lws falls back to 2560 fds above "
                        "10,000,000)" % name)
        soft = nofile["soft"] if isinstance(nofile, dict) else nofile
        assert 100000 <= int(soft) <= 10000000, nofile
    assert len(node_ids) == 3, "GALE_NODE_ID must differ per broker: %s" % node_ids

    redis = services["redis"]
    assert redis.get("healthcheck", {}).get("test"), "redis has no healthcheck"

    hap = services["haproxy"]
    published = [p for svc in services.values() for p in (svc.get("ports") or [])]
    assert len(published) == 1, "exactly one published port, got %r" % published
    assert hap.get("ports"), "HAProxy must publish the port"
    vols = " ".join(str(v) for v in hap.get("volumes") or [])
    assert "haproxy.cfg" in vols, vols
    deps = hap.get("depends_on") or {}
    assert set(brokers) <= set(deps), deps
    for name in brokers:
        if isinstance(deps, dict):
            assert deps[name].get("condition") == "service_healthy", deps
    assert hap.get("healthcheck", {}).get("test"), "haproxy has no healthcheck"


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------

def dockerfile_instructions(text):
    """[(INSTRUCTION, argument text)] with line continuations joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "dangling line continuation"
    return out


def dockerfile_stages(text):
    stages = []
    for ins, arg in dockerfile_instructions(text):
        if ins == "FROM":
            stages.append({"from": arg, "ins": []})
        else:
            assert stages, "%s before FROM" % ins
            stages[-1]["ins"].append((ins, arg))
    return stages


def apt_packages(run_arg):
    pkgs = []
    for m in re.finditer(r"apt-get\s+install\s+([^&;|]+)", run_arg):
        pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def test_dockerfile_structure():
    stages = dockerfile_stages(read(DOCKERFILE))
    assert len(stages) >= 2, "multi-stage build expected"
    for st in stages:
        image = st["from"].split()[0]
        assert re.match(r"^debian:bookworm(-slim)?$", image), st["from"]
    build, final = stages[0], stages[-1]

    build_pkgs = [p for ins, arg in build["ins"] if ins == "RUN" for p in apt_packages(arg)]
    deps_text = read(os.path.join(SOURCE_DIR, "scripts", "deps"))
    m = re.search(r"build_pkgs=\(([^)]*)\)", deps_text)
    assert m, "scripts/deps: no build_pkgs"
    for p in m.group(1).split() + ["libhiredis-dev"]:
        assert p in build_pkgs, "build stage does not install %s" % p
    build_runs = " ".join(arg for ins, arg in build["ins"] if ins == "RUN")
    assert "cmake --install" in build_runs or "make install" in build_runs, build_runs

    runtime_pkgs = [p for ins, arg in final["ins"] if ins == "RUN" for p in apt_packages(arg)]
    for p in ("libwebsockets17", "libwebsockets-evlib-uv", "libuv1", "libmsgpackc2",
              "libhiredis0.14"):
        assert p in runtime_pkgs, "runtime stage does not install %s" % p
    assert not [p for p in runtime_pkgs if p.endswith("-dev")], runtime_pkgs
    for tool in ("gcc", "cmake", "make", "clang"):
        assert tool not in runtime_pkgs, runtime_pkgs
    copies = [arg for ins, arg in final["ins"] if ins == "COPY"]
    assert any(a.startswith("--from=") for a in copies), copies

    users = [arg for ins, arg in final["ins"] if ins == "USER"]
    assert users, "the runtime stage must set a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users

    health = [arg for ins, arg in final["ins"] if ins == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1], health
    health_cmd = health[-1].split("CMD", 1)[1]
    assert "curl" in health_cmd and "curl" in runtime_pkgs, "the check's tool must be installed"
    assert [arg for ins, arg in final["ins"] if ins == "EXPOSE"], "no EXPOSE"
    env = " ".join(arg for ins, arg in final["ins"] if ins == "ENV")
    assert re.search(r"GALE_LISTEN=0\.0\.0\.0:\d+", env), env
    port = re.search(r"GALE_LISTEN=0\.0\.0\.0:(\d+)", env).group(1)
    assert port in " ".join(arg for ins, arg in final["ins"] if ins == "EXPOSE")
    stops = [arg for ins, arg in final["ins"] if ins == "STOPSIGNAL"]
    assert not stops or stops[-1] in ("SIGTERM", "15"), stops

    # Exec form, so that the broker is PID 1 and gets SIGTERM itself.
    entry = [arg for ins, arg in final["ins"] if ins in ("ENTRYPOINT", "CMD")]
    assert entry and all(a.startswith("[") for a in entry), entry
    first = [arg for ins, arg in final["ins"] if ins == "ENTRYPOINT"] or entry
    assert "gale-broker" in first[-1], first

    ignore = os.path.join(SOURCE_DIR, ".dockerignore")
    if os.path.exists(ignore):
        lines = [l.strip() for l in read(ignore).splitlines()]
        for needed in ("broker", "protocol", "clients", "web", "CMakeLists.txt"):
            assert needed not in lines, ".dockerignore excludes %s, which the build needs" % needed


# ---------------------------------------------------------------------------------------
# systemd unit
# ---------------------------------------------------------------------------------------

def unit_settings(text):
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        k, _, v = line.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit(tmp_path, gale_binary):
    text = read(UNIT_FILE)
    s = unit_settings(text)
    nofile = s["LimitNOFILE"][-1]
    assert nofile.isdigit(), "LimitNOFILE must be a finite number, not %r" % nofile
    assert 100000 <= int(nofile) <= 10000000, nofile
    assert s.get("Restart") == ["on-failure"], s.get("Restart")
    assert s.get("KillSignal", ["SIGTERM"])[-1] == "SIGTERM"
    assert "TimeoutStopSec" in s
    assert s.get("NoNewPrivileges") == ["yes"]
    assert s.get("ProtectSystem") == ["strict"]
    assert s.get("DynamicUser") == ["yes"] or s.get("User"), "runs as root"
    assert "-/etc/default/gale-broker" in s.get("EnvironmentFile", [])
    assert s["ExecStart"][-1].split()[0].endswith("/gale-broker")

    analyze = shutil.which("systemd-analyze")
    if not analyze:
        return
    # verify checks that ExecStart exists: point it at the binary under test.
    unit = tmp_path / "gale-broker.service"
    unit.write_text(re.sub(r"(?m)^ExecStart=\S+", "ExecStart=" + os.path.abspath(gale_binary),
                           text))
    p = subprocess.run([analyze, "verify", str(unit)], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode == 0, out
    assert "gale-broker.service" not in out, out   # no warning about our unit


# ---------------------------------------------------------------------------------------
# HAProxy configuration
# ---------------------------------------------------------------------------------------

def parse_seconds(v):
    m = re.match(r"^(\d+)(us|ms|s|m|h|d)?$", v)
    assert m, v
    mult = {"us": 1e-6, "ms": 1e-3, "s": 1, None: 1e-3, "m": 60, "h": 3600, "d": 86400}
    return int(m.group(1)) * mult[m.group(2)]


def haproxy_sections(text):
    sections, cur = [], None
    for line in text.splitlines():
        s = line.split("#", 1)[0].rstrip()
        if not s.strip():
            continue
        if not line[0].isspace():
            cur = {"head": s.split(), "lines": []}
            sections.append(cur)
        else:
            cur["lines"].append(s.split())
    return sections


def test_haproxy_config():
    text = read(HAPROXY_CFG)
    secs = haproxy_sections(text)
    defaults = [l for sec in secs if sec["head"][0] == "defaults" for l in sec["lines"]]
    timeouts = {l[1]: parse_seconds(l[2]) for l in defaults if l[0] == "timeout"}
    ka = KEEPALIVE_DEFAULT_S
    assert timeouts.get("tunnel", 0) >= 2 * ka, "timeout tunnel must exceed 2x keepalive"
    assert timeouts.get("client", 0) > 2 * ka and timeouts.get("server", 0) > 2 * ka, timeouts
    backends = [sec for sec in secs if sec["head"][0] == "backend"]
    assert len(backends) == 1
    be = backends[0]["lines"]
    assert ["balance", "leastconn"] in be
    assert any(l[:2] == ["option", "httpchk"] and "/healthz" in l for l in be), be
    servers = [l for l in be if l[0] == "server"]
    assert len(servers) == 3, servers
    checks = " ".join(" ".join(l) for l in be if l[0] in ("server", "default-server"))
    assert " check" in checks, "servers are not health-checked"
    binds = [l for sec in secs if sec["head"][0] in ("frontend", "listen")
             for l in sec["lines"] if l[0] == "bind"]
    assert len(binds) == 1, binds

    haproxy = need_tool("haproxy")
    p = subprocess.run([haproxy, "-c", "-f", HAPROXY_CFG], capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (p.stdout + p.stderr).decode(errors="replace")

    # The servers are the Compose brokers, at the port they listen on in their containers.
    cfg = compose_config()
    brokers = broker_services(cfg)
    want = {(name, service_env(svc)["GALE_LISTEN"].rsplit(":", 1)[1])
            for name, svc in brokers.items()}
    got = {tuple(l[2].rsplit(":", 1)) for l in servers}
    assert got == want, (got, want)
    published = cfg["services"]["haproxy"]["ports"][0]
    target = published["target"] if isinstance(published, dict) else \
        str(published).rsplit(":", 1)[-1]
    assert binds[0][1].rsplit(":", 1)[-1] == str(target), (binds, published)


# ---------------------------------------------------------------------------------------
# The topology, natively
# ---------------------------------------------------------------------------------------

def broker_supports_redis():
    binary = galetest.broker_binary()
    if not binary:
        return False
    try:
        p = subprocess.run([binary, "--help"], capture_output=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--redis" in p.stdout + p.stderr


REDIS_REASON = ("cross-node delivery needs Redis clustering in gale-broker (issue 4): "
                "`gale-broker --help` does not mention --redis yet")


def wait_until(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError("%s: not within %.0fs (last: %r)" % (what, timeout, last))


class Redis:
    def __init__(self, logdir, name):
        self.logdir, self.name, self.proc, self.port = logdir, name, None, None

    def start(self, attempts=4):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(binary, os.X_OK):
            pytest.skip("redis-server is not installed")
        for _ in range(attempts):
            self.port = free_port()
            self.logpath = os.path.join(self.logdir, "redis-%s-%d.log" % (self.name, self.port))
            with open(self.logpath, "wb") as log:
                self.proc = subprocess.Popen(
                    [binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
                     "--bind", "127.0.0.1", "--daemonize", "no", "--dir", self.logdir],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                wait_until(self._ping, 10, "redis-server answering PING")
                return self
            except AssertionError:
                self.stop()
                if "in use" not in read(self.logpath):
                    raise
        raise AssertionError("redis-server did not start:\n" + read(self.logpath)[-2000:])

    def _ping(self):
        if self.proc.poll() is not None:
            raise AssertionError("redis-server exited:\n" + read(self.logpath)[-2000:])
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self):
        stop_process(self.proc)


class HAProxy:
    """haproxy in the foreground with a loopback copy of deploy/haproxy.cfg."""

    def __init__(self, logdir, servers):
        self.logdir = logdir
        self.servers = servers   # {server name in haproxy.cfg: loopback port}
        self.proc = None
        self.port = None

    def config(self, port, sock):
        text = read(HAPROXY_CFG)
        n_bind = n_srv = 0

        def bind(m):
            nonlocal n_bind
            n_bind += 1
            return "%sbind %s:%d" % (m.group(1), HOST, port)
        text = re.sub(r"(?m)^(\s*)bind\s+\S+", bind, text)

        def server(m):
            nonlocal n_srv
            name = m.group(2)
            assert name in self.servers, "haproxy.cfg server %s is no broker" % name
            n_srv += 1
            return "%sserver %s %s:%d" % (m.group(1), name, HOST, self.servers[name])
        text = re.sub(r"(?m)^(\s*)server\s+(\S+)\s+\S+", server, text)
        assert n_bind == 1 and n_srv == len(self.servers), (n_bind, n_srv)
        # haproxy refuses to start when it cannot raise its fd limit to about 2 x maxconn:
        # the container gets that limit from docker-compose.yml, here it is what we have.
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY:
            cap = max(1000, (hard - 200) // 2)
            text = re.sub(r"(?m)^(\s*maxconn\s+)(\d+)",
                          lambda m: m.group(1) + str(min(int(m.group(2)), cap)), text)
        # A runtime socket to read the servers' check states.
        text = re.sub(r"(?m)^global\s*$",
                      "global\n    stats socket %s mode 600 level admin" % sock, text, count=1)
        return text

    def start(self, attempts=4):
        binary = need_tool("haproxy")
        for i in range(attempts):
            self.port = free_port()
            self.sock = os.path.join(self.logdir, "haproxy-%d.sock" % self.port)
            self.cfgpath = os.path.join(self.logdir, "haproxy-%d.cfg" % self.port)
            with open(self.cfgpath, "w") as f:
                f.write(self.config(self.port, self.sock))
            self.logpath = os.path.join(self.logdir, "haproxy-%d.log" % self.port)
            with open(self.logpath, "wb") as log:
                self.proc = subprocess.Popen([binary, "-db", "-f", self.cfgpath], stdout=log,
                                             stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            try:
                wait_until(self._ready, 10, "haproxy answering /haproxy-health")
                return self
            except AssertionError:
                self.stop()
                if "cannot bind" not in read(self.logpath) or i == attempts - 1:
                    raise AssertionError("haproxy did not start:\n" + read(self.logpath)[-3000:])

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("haproxy exited:\n" + read(self.logpath)[-3000:])
        return os.path.exists(self.sock) and http_get(self.port, "/haproxy-health",
                                                      timeout=1)[0] == 200

    def command(self, cmd):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        try:
            s.connect(self.sock)
            s.sendall(cmd.encode() + b"\n")
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out.decode()
                out += chunk
        finally:
            s.close()

    def server_states(self):
        """{server name: (status, check_status)} of the brokers backend."""
        lines = self.command("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("svname") in self.servers:
                out[row["svname"]] = (row["status"], row.get("check_status", ""))
        return out

    def stop(self):
        stop_process(self.proc)

    @property
    def url(self):
        return "ws://%s:%d/ws" % (HOST, self.port)


class Cluster:
    """Redis + the Compose brokers + HAProxy, natively on loopback."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.cfg = compose_config()
        self.redis = {}
        self.brokers = {}     # service name -> Broker
        self.node_of = {}     # service name -> GALE_NODE_ID
        self.killed = set()
        self.haproxy = None

    def start(self):
        services = self.cfg["services"]
        for name, svc in sorted(broker_services(self.cfg).items()):
            env = service_env(svc)
            # Loopback for the container's 0.0.0.0:8080; Compose service names in
            # GALE_REDIS_URL become local redis-server processes.
            env["GALE_LISTEN"] = "%s:{port}" % HOST
            # The image serves its installed share/gale/www; here, the source tree's web/.
            env.setdefault("GALE_WEB_ROOT", os.path.join(SOURCE_DIR, "web"))
            if env.get("GALE_REDIS_URL") and not self.can_skip_redis():
                urls = []
                for url in env["GALE_REDIS_URL"].split(","):
                    m = re.match(r"^\s*redis://([^/:,\s]+)(?::(\d+))?(/\d+)?\s*$", url)
                    host = m.group(1)
                    assert host in services, host
                    if host not in self.redis:
                        self.redis[host] = Redis(self.logdir, host).start()
                    urls.append("redis://%s:%d%s" % (HOST, self.redis[host].port,
                                                    m.group(3) or ""))
                env["GALE_REDIS_URL"] = ",".join(urls)
            b = Broker(self.logdir, env=env, listen=False, name=name)
            self.brokers[name] = b
            self.node_of[name] = env["GALE_NODE_ID"]
            b.start()
        self.haproxy = HAProxy(self.logdir, {n: b.port for n, b in self.brokers.items()})
        self.haproxy.start()
        self.wait_states({n: "UP" for n in self.brokers}, 15)
        return self

    @staticmethod
    def can_skip_redis():
        """Without clustering in the broker GALE_REDIS_URL is ignored: no redis-server is
        needed then (used when there is none)."""
        return not shutil.which("redis-server") and not broker_supports_redis()

    def wait_states(self, want, timeout):
        """Wait until HAProxy's checks report each named server's status (UP after a passed
        check, DOWN)."""
        def ok():
            st = self.haproxy.server_states()
            for name, status in want.items():
                got, check = st.get(name, ("?", ""))
                if not got.startswith(status):
                    return False
                if status == "UP" and not check.startswith("L7OK"):
                    return False
            return st
        return wait_until(ok, timeout, "HAProxy server states %r" % want, interval=0.2)

    def service_of_node(self, node):
        return next(n for n, nid in self.node_of.items() if nid == node)

    def close(self):
        problems = []
        if self.haproxy:
            self.haproxy.stop()
        for name, b in self.brokers.items():
            if name in self.killed or b.proc is None:
                b.kill()
                continue
            if not b.alive():
                if b.proc.returncode != 0:
                    problems.append("%s exited with %s" % (name, b.proc.returncode))
                continue
            rc = b.stop(signal.SIGTERM, 5)
            if rc != 0:
                problems.append("%s: exit %s after SIGTERM\n%s" % (name, rc, b.log_tail()))
        for r in self.redis.values():
            r.stop()
        return problems


@pytest.fixture
def cluster(logdir, gale_binary):
    need_tool("haproxy")
    c = Cluster(logdir)
    try:
        c.start()
    except BaseException:
        c.close()
        raise
    yield c
    problems = c.close()
    assert not problems, "\n".join(problems)


async def connect_all(url, n):
    """n clients through HAProxy, one after another (each hello read)."""
    clients = []
    for _ in range(n):
        clients.append(await connect(url))
    return clients


async def close_all(clients):
    await asyncio.gather(*(c.close() for c in clients))


async def reconnect(url, avoid_node, timeout=15.0):
    """Connect through HAProxy, retrying (bounded) until a live broker answers."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            c = await connect(url)
            assert c.hello["node"] != avoid_node, "reconnected to the stopped node"
            return c
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
            last = e
            await asyncio.sleep(0.2)
    raise AssertionError("no reconnect through HAProxy within %.0fs: %r" % (timeout, last))


async def wait_closed(c, timeout):
    """Wait until the connection ends; the close code seen (1006 without a close frame)."""
    try:
        await asyncio.wait_for(c.ws.wait_closed(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError("connection still open %.0fs after its broker stopped"
                             % timeout) from None
    return c.ws.close_code


async def deliver(sub, pub, topic, timeout=10.0):
    """Publish on pub until sub (subscribed to topic) receives one message on topic, bounded;
    returns it (other topics' deliveries are skipped). Repeats cover a subscription still
    propagating between nodes."""
    deadline = time.monotonic() + timeout
    seq = 0
    while time.monotonic() < deadline:
        seq += 1
        await pub.pub(topic, {"seq": seq, "from": pub.hello["node"]})
        wait_end = min(deadline, time.monotonic() + 0.5)
        while time.monotonic() < wait_end:
            try:
                m = await sub.recv(timeout=max(0.05, wait_end - time.monotonic()))
            except AssertionError:
                break
            assert m["op"] == "msg", m
            if m["topic"] == topic:
                return m
    raise AssertionError("%s -> %s: nothing delivered on %s within %.0fs"
                         % (pub.hello["node"], sub.hello["node"], topic, timeout))


def test_cluster_spreads_connections(cluster):
    """leastconn over three healthy brokers: six clients land two on each, and the hello
    names the Compose GALE_NODE_ID of the broker behind HAProxy."""
    hp = cluster.haproxy
    nodes = set(cluster.node_of.values())

    async def go():
        clients = await connect_all(hp.url, 6)
        try:
            seen = [c.hello["node"] for c in clients]
            assert set(seen) == nodes, seen
            counts = {n: seen.count(n) for n in nodes}
            assert max(counts.values()) - min(counts.values()) <= 1, counts
            # Each client is really served by the node it was told about.
            for c in clients:
                health = cluster.brokers[cluster.service_of_node(c.hello["node"])].healthz()
                assert health["node"] == c.hello["node"]
                assert health["connections"] >= 1, health
            # Same-node delivery works through the proxy whatever the clustering.
            a, b = clients[0], next(c for c in clients[1:] if c.hello["node"] ==
                                    clients[0].hello["node"])
            await a.sub("deploy.same.>")
            m = await deliver(a, b, "deploy.same.x")
            assert m["data"]["from"] == a.hello["node"]
        finally:
            await close_all(clients)
    run(go(), 60)


def test_cluster_http_through_haproxy(cluster):
    hp = cluster.haproxy
    status, headers, body = http_get(hp.port, "/")
    assert status == 200 and b"<html" in body.lower(), (status, body[:200])
    status, headers, body = http_get(hp.port, "/healthz")
    assert status == 200, body
    assert json.loads(body)["node"] in cluster.node_of.values()
    assert http_get(hp.port, "/haproxy-health")[0] == 200


def test_cluster_cross_node_delivery(cluster):
    if not broker_supports_redis():
        pytest.skip(REDIS_REASON)
    hp = cluster.haproxy

    async def go():
        clients = await connect_all(hp.url, 3)
        try:
            by_node = {c.hello["node"]: c for c in clients}
            assert len(by_node) == 3, [c.hello for c in clients]
            for c in clients:
                await c.sub("deploy.x.>")
            for pub in clients:
                for sub in clients:
                    if sub is pub:
                        continue
                    topic = "deploy.x.%s.%s" % (pub.hello["node"], sub.hello["node"])
                    m = await deliver(sub, pub, topic)
                    assert m["data"]["from"] == pub.hello["node"]
                # drain copies of the repeats that reached the others
                for c in clients:
                    await c.sync()
                    c.pending.clear()
        finally:
            await close_all(clients)
    run(go(), 120)


def healthcheck_argv(test, container_port, port):
    """A Compose healthcheck `test` as a local command: the container's loopback port
    becomes the process's port."""
    if isinstance(test, str):
        argv = ["/bin/sh", "-c", test]
    elif test[0] == "CMD-SHELL":
        argv = ["/bin/sh", "-c", test[1]]
    else:
        assert test[0] == "CMD", test
        argv = list(test[1:])
    pat = re.compile(r"\b(127\.0\.0\.1|localhost)([:/])%d\b" % container_port)
    return [pat.sub(lambda m: "%s%s%d" % (m.group(1), m.group(2), port), a) for a in argv]


def run_check(argv, env=None, timeout=10):
    e = dict(os.environ)
    e.update(env or {})
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout, env=e,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def test_cluster_healthchecks(cluster):
    """The healthcheck commands of the Compose file and the Dockerfile, run natively against
    the processes they check: they pass on a healthy cluster, and HAProxy's fails once no
    broker is left."""
    need_tool("curl")
    services = cluster.cfg["services"]
    for name, b in cluster.brokers.items():
        listen = service_env(services[name])["GALE_LISTEN"]
        argv = healthcheck_argv(services[name]["healthcheck"]["test"],
                                int(listen.rsplit(":", 1)[1]), b.port)
        rc, out = run_check(argv)
        assert rc == 0, (name, argv, out)

    # The image's HEALTHCHECK takes its port from GALE_LISTEN.
    final = dockerfile_stages(read(DOCKERFILE))[-1]
    health = [arg for ins, arg in final["ins"] if ins == "HEALTHCHECK"][-1]
    cmd = health.split(" CMD ", 1)[1].strip()
    argv = json.loads(cmd) if cmd.startswith("[") else ["/bin/sh", "-c", cmd]
    b = next(iter(cluster.brokers.values()))
    rc, out = run_check(argv, env={"GALE_LISTEN": "0.0.0.0:%d" % b.port})
    assert rc == 0, (argv, out)

    for name, r in cluster.redis.items():
        test = services[name]["healthcheck"]["test"]
        argv = healthcheck_argv(test, 6379, r.port)
        if argv[0] == "redis-cli":
            argv[1:1] = ["-h", HOST, "-p", str(r.port)]
        rc, out = run_check(argv)
        assert rc == 0 and "PONG" in out, (argv, out)

    hp = cluster.haproxy
    bind_port = int(re.search(r"(?m)^\s*bind\s+\S*:(\d+)", read(HAPROXY_CFG)).group(1))
    argv = healthcheck_argv(services["haproxy"]["healthcheck"]["test"], bind_port, hp.port)
    rc, out = run_check(argv)
    assert rc == 0, (argv, out)

    for b in cluster.brokers.values():
        assert b.stop(signal.SIGTERM, 5) == 0, b.log_tail()
    cluster.wait_states({n: "DOWN" for n in cluster.brokers}, 15)
    rc, out = run_check(argv)
    assert rc not in (0, None), "HAProxy reports healthy with no broker up: %s" % out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_cluster_failover(cluster, sig):
    """A broker dies (SIGKILL) or stops (SIGTERM: its clients get 1001): HAProxy's checks
    mark it DOWN, its clients reconnect through HAProxy to the others and receive again;
    when it comes back, HAProxy marks it UP and sends it new connections."""
    hp = cluster.haproxy
    redis = broker_supports_redis()

    async def go():
        clients = await connect_all(hp.url, 6)
        fresh = []
        try:
            victim_node = clients[0].hello["node"]
            victim = cluster.service_of_node(victim_node)
            orphans = [c for c in clients if c.hello["node"] == victim_node]
            others = [c for c in clients if c.hello["node"] != victim_node]
            assert len(orphans) == 2 and len(others) == 4, [c.hello["node"] for c in clients]

            b = cluster.brokers[victim]
            if sig == signal.SIGKILL:
                cluster.killed.add(victim)
                b.kill()
            else:
                b.send_signal(signal.SIGTERM)
            codes = [await wait_closed(c, 10) for c in orphans]
            if sig == signal.SIGTERM:
                assert codes == [1001, 1001], codes
                assert b.wait(5) == 0, "broker did not exit 0 within 5 s of SIGTERM"
            cluster.wait_states({victim: "DOWN"}, 15)
            assert http_get(hp.port, "/haproxy-health")[0] == 200

            # The orphans reconnect through HAProxy and land on the live brokers.
            for _ in orphans:
                fresh.append(await reconnect(hp.url, victim_node))
            for c in fresh:
                await c.sub("deploy.fail.>")
            # ... and receive again: from a client on the same broker always, and from one
            # on another broker when the brokers share messages through Redis.
            for c in fresh:
                same = next(o for o in others if o.hello["node"] == c.hello["node"])
                await deliver(c, same, "deploy.fail.same")
                await c.sync()
                c.pending.clear()
                if redis:
                    other = next(o for o in others if o.hello["node"] != c.hello["node"])
                    await deliver(c, other, "deploy.fail.cross")
                    await c.sync()
                    c.pending.clear()
            # New connections all avoid the stopped broker.
            probe = await connect_all(hp.url, 3)
            fresh += probe
            assert victim_node not in [c.hello["node"] for c in probe]

            # The broker comes back on its address: HAProxy marks it UP again, and leastconn
            # sends it the next client (the live brokers hold several each).
            cluster.killed.discard(victim)
            b.start(port=b.port)
            cluster.wait_states({victim: "UP"}, 15)
            back = await connect(hp.url)
            fresh.append(back)
            assert back.hello["node"] == victim_node, back.hello
            if redis:
                await back.sub("deploy.back")
                await deliver(back, others[0], "deploy.back")
        finally:
            await close_all(clients + fresh)
    run(go(), 120)
