"""pytest fixtures for the gale integration suite.

Environment:
  GALE_BROKER      path of the gale-broker binary (ctest sets it)
  GALE_SOURCE_DIR  repository root (ctest sets it)
  GALE_TARGET      gale (default) | tornado | node: run the protocol subset against a
                   reference peer from shared/peers; tests marked gale_only are skipped,
                   and needs_msgpack ones too against node (JSON only).
  GALE_SKIP_REFERENCE  set: the MQTT and NATS suites skip their reference servers' halves
                   (mosquitto, nats-server), which test no gale code (scripts/test sets it
                   for the ASan pass)

Markers:
  gale_only      the test checks gale's own interface (flags, limits, /healthz, /metrics,
                 keepalive, signals) or a choice of docs/PROTOCOL-NOTES.md beyond PROTOCOL.md.
  needs_msgpack  the test uses the gale.v1.msgpack subprotocol.
"""
import itertools
import os
import signal
import uuid

import pytest

import galetest
from galetest import Broker, TARGET


def pytest_configure(config):
    config.addinivalue_line("markers", "gale_only: needs gale-broker itself (not a peer)")
    config.addinivalue_line("markers", "needs_msgpack: uses the gale.v1.msgpack subprotocol")


def pytest_collection_modifyitems(config, items):
    if TARGET == "gale":
        explicit = os.environ.get("GALE_BROKER")
        if explicit and not os.access(explicit, os.X_OK):
            return  # the fixtures fail loudly: GALE_BROKER names no executable
        if galetest.broker_binary() is None:
            skip = pytest.mark.skip(reason="no gale-broker binary: set GALE_BROKER "
                                           "(or GALE_TARGET=tornado|node)")
            for item in items:
                item.add_marker(skip)
        return
    skip_gale = pytest.mark.skip(reason="gale-specific; GALE_TARGET=%s" % TARGET)
    skip_mp = pytest.mark.skip(reason="no msgpack on GALE_TARGET=%s" % TARGET)
    for item in items:
        if "gale_only" in item.keywords:
            item.add_marker(skip_gale)
        elif TARGET == "node" and "needs_msgpack" in item.keywords:
            item.add_marker(skip_mp)


@pytest.fixture(scope="session")
def logdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("gale-logs"))


@pytest.fixture(scope="session")
def gale_binary():
    path = galetest.broker_binary()
    assert path and os.access(path, os.X_OK), "GALE_BROKER is not an executable: %r" % path
    return path


def _finish(b, timeout=5.0):
    """Stop a broker with SIGTERM; return a list of problems (empty when clean)."""
    problems = []
    if b.proc is None:
        return problems
    if not b.alive():
        if b.proc.returncode != 0:
            problems.append("broker had already exited with %s" % b.proc.returncode)
    else:
        rc = b.stop(signal.SIGTERM, timeout)
        if rc is None:
            problems.append("broker did not exit within %.0fs of SIGTERM (killed)" % timeout)
        elif rc != 0:
            problems.append("broker exited with %d after SIGTERM" % rc)
    san = b.sanitizer_errors()
    if san:
        problems.append("sanitizer report in the log: %s" % ", ".join(san))
    return problems


class _Shared:
    broker = None


@pytest.fixture(scope="session")
def _shared_broker(logdir):
    b = Broker(logdir, name="shared").start()
    _Shared.broker = b
    yield _Shared
    b = _Shared.broker
    problems = _finish(b)
    assert not problems, "; ".join(problems) + "\n" + b.log_tail()


@pytest.fixture
def broker(_shared_broker, logdir):
    """The shared broker with default settings (one process for the session).

    If a test kills it, that test fails here and the next test gets a new one."""
    b = _shared_broker.broker
    if not b.alive():
        b = _shared_broker.broker = Broker(logdir, name="shared").start()
    yield b
    if not b.alive():
        rc = b.proc.returncode
        log = b.log_tail()
        _shared_broker.broker = Broker(logdir, name="shared").start()
        pytest.fail("the broker died during this test (exit %s):\n%s" % (rc, log))
    san = b.sanitizer_errors()
    assert not san, "sanitizer report during this test: %s\n%s" % (san, b.log_tail())


@pytest.fixture
def make_broker(logdir):
    """Factory: make_broker(args=[...], env={...}) starts a dedicated broker; all are
    stopped with SIGTERM at teardown, and must exit 0 within 5 s."""
    started = []

    def factory(args=(), env=None, listen=True, start=True):
        b = Broker(logdir, args=args, env=env, listen=listen)
        started.append(b)
        if start:
            b.start()
        return b

    yield factory
    problems = []
    for b in started:
        for p in _finish(b):
            problems.append("%s\n%s" % (p, b.log_tail()))
    assert not problems, "\n".join(problems)


_topic_seq = itertools.count(1)


@pytest.fixture
def topic():
    """A unique topic prefix for this test (tests share one broker)."""
    return "t%s%d" % (uuid.uuid4().hex[:8], next(_topic_seq))
