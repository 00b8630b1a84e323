#!/usr/bin/env bash
# bench/core-figures.sh: the core figures of gale-broker next to the reference peers.
#
# Builds gale-broker and gale, then, one server at a time on a fresh process and a free
# loopback port (gale-broker --keepalive 0, the Node ws peer, the Tornado peer, in turn for
# each measurement), measures:
#   (a) broker RSS per idle subscribed connection at 10,000 connections;
#   (b) broker CPU microseconds per delivery, 1,000 subscribers on one topic, ~100-byte
#       payloads, 1 publisher: at a fixed rate, and as fast as acks allow (window 64);
#       plus gale-broker alone at 200 msg/s (more than the peers sustain on 2 cores).
# Prints a markdown table with the exact commands; raw JSON goes to $BUILD/core-figures.jsonl,
# each server's log to $BUILD/core-figures-SERVER.log.
# Every server listens on 127.0.0.1 only; every run is bounded (gale bench's own bounds and
# `timeout`). About 3-4 minutes on 2 cores, build included.
#
# Environment: BUILD (build dir, default build-bench), RATE (fixed rate, default 20 msg/s:
# the slowest peer's ceiling on 2 shared cores is ~25), CONNS (default 10000), PEERS
# (directory of the peers, default ../shared/peers).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
PEERS=${PEERS:-$ROOT/../shared/peers}
RATE=${RATE:-20}
CONNS=${CONNS:-10000}
PY=/usr/bin/python3
GALE=$BUILD/gale
JSONL=$BUILD/core-figures.jsonl

log() { printf '%s\n' "$*" >&2; }

log "== building gale-broker and gale in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target gale-broker gale -j"$(nproc)" >/dev/null

servers=(gale)
if command -v node >/dev/null && [ -d /usr/share/nodejs/ws ] && [ -f "$PEERS/node_ws_broker.js" ]; then
  servers+=(node)
else
  log "(skipping the Node ws peer: node, node-ws or $PEERS/node_ws_broker.js missing)"
fi
if $PY -c 'import tornado' 2>/dev/null && [ -f "$PEERS/tornado_broker.py" ]; then
  servers+=(tornado)
else
  log "(skipping the Tornado peer: python3-tornado or $PEERS/tornado_broker.py missing)"
fi

SERVER_PID=
PORT=
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_server() { # NAME
  PORT=$(free_port)
  local log=$BUILD/core-figures-$1.log # appended: one section per run
  echo "--- $(date -Is) port $PORT" >>"$log"
  case "$1" in
    gale) "$BUILD/gale-broker" --listen "127.0.0.1:$PORT" --log-level info --keepalive 0 >>"$log" 2>&1 & ;;
    node) NODE_PATH=/usr/share/nodejs node "$PEERS/node_ws_broker.js" --port "$PORT" >>"$log" 2>&1 & ;;
    tornado) $PY "$PEERS/tornado_broker.py" --port "$PORT" >>"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do # up to 10 s
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.2 # let a fresh interpreter settle before measuring its RSS
      return 0
    fi
    sleep 0.1
  done
  log "$1 did not listen on 127.0.0.1:$PORT within 10 s"
  return 1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

: >"$JSONL"
rm -f "$BUILD"/core-figures-*.log
rows=()

# run SERVER LABEL ARGS...: one measurement on a fresh server; appends a table row.
run() {
  local server=$1 label=$2
  shift 2
  start_server "$server" || { rows+=("| $server | $label | - | - | server did not start | |"); return; }
  local url="ws://127.0.0.1:$PORT/ws"
  local cmd=(gale bench "$@" --url "$url" --pid "$SERVER_PID" --json)
  log "== $server: $label"
  log "   ${cmd[*]}"
  local out status=0
  out=$(timeout 300 "$GALE" "${cmd[@]:1}") || status=$?
  stop_server
  printf '{"server":"%s","label":"%s","status":%d,"result":%s}\n' "$server" "$label" "$status" \
    "${out:-null}" >>"$JSONL"
  rows+=("$($PY - "$server" "$label" "$status" "${cmd[*]}" "$out" <<'EOF'
import json, sys
server, label, status, cmd, out = sys.argv[1:6]
try:
    r = json.loads(out)
except ValueError:
    print(f"| {server} | {label} | - | - | exit {status}, no report | `{cmd}` |")
    sys.exit(0)
b = r.get("broker", {})
ok = "ok" if r.get("ok") else "FAILED: " + r.get("error", "")[:80]
if r["scenario"] == "conns":
    fig = f"{r.get('rss_kib_per_conn', 0):.2f} KiB/conn"
    det = (f"{r['connected']:,} connected, {r['setups_per_s']:,.0f}/s; "
           f"RSS {b.get('rss_kib_before', 0)/1024:.1f} → {b.get('rss_kib_after', 0)/1024:.1f} MiB")
else:
    lat = r["latency_us"]
    fig = f"{b.get('cpu_us_per_delivery', 0):.2f} µs/delivery"
    det = (f"{r['received']:,}/{r['expected']:,} delivered, {r['deliveries_per_s']:,.0f}/s, "
           f"CPU {b.get('cpu_s', 0):.2f} s ({b.get('sys_s', 0):.2f} sys); "
           f"latency p50 {lat['p50']/1000:.1f} ms, p99 {lat['p99']/1000:.1f} ms")
print(f"| {server} | {label} | {fig} | {det} | {ok} | `{cmd}` |")
EOF
)")
}

for s in "${servers[@]}"; do
  run "$s" "(a) RSS per idle subscribed conn, $CONNS conns" \
    conns --conns "$CONNS" --subscribe --hold 5 --setup-timeout 120
done
for s in "${servers[@]}"; do
  run "$s" "(b) CPU per delivery, 1000 subs, $RATE msg/s x 10 s" \
    fanout --subs 1000 --pubs 1 --size 100 --rate "$RATE" --duration 10
done
for s in "${servers[@]}"; do
  run "$s" "(b) CPU per delivery, 1000 subs, as fast as acks allow, 5 s" \
    fanout --subs 1000 --pubs 1 --size 100 --rate 0 --window 64 --duration 5
done
run gale "(b) CPU per delivery, 1000 subs, 200 msg/s x 10 s" \
  fanout --subs 1000 --pubs 1 --size 100 --rate 200 --duration 10

echo
echo "Machine: $(nproc) cores, $(uname -sr), loopback; broker and load generator share it."
echo "gale-broker --keepalive 0 (defaults otherwise: --rx-buffer 256, --queue-limit 1M)."
echo
echo "| server | measurement | figure | details | status | command |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Raw JSON: $JSONL; server logs: $BUILD/core-figures-*.log"
