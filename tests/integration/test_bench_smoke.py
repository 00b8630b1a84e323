"""`gale bench` against the real broker: a seconds-long run whose counts must be exact.

Speed is never asserted here (docs: benchmarks live in bench/); only that the load generator
and the broker agree on every delivery.
"""
import json
import os
import subprocess

import pytest

from galetest import TARGET

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
