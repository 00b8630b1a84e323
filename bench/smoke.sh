#!/usr/bin/env bash
# bench/smoke.sh: proves `gale bench` counts exactly. 50 subscribers x 200 messages must give
# exactly 10,000 deliveries and 0 losses: against gale-broker (JSON and MessagePack) and, when
# installed, the Node ws peer (JSON) and the Tornado peer (MessagePack). Loopback only,
# bounded by `timeout`. Exit 0 when every check passes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
PEERS=${PEERS:-$ROOT/../shared/peers}
PY=/usr/bin/python3

cmake -S "$ROOT" -B "$BUILD" >/dev/null
cmake --build "$BUILD" --target gale-broker gale -j"$(nproc)" >/dev/null

PID=
trap '[ -z "$PID" ] || { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; } || true' EXIT
fails=0

check() { # NAME ENCODING START-COMMAND...
  local name=$1 enc=$2
  shift 2
  local port
  port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${@//PORT/$port}" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  local out status=0
  out=$(timeout 60 "$BUILD/gale" bench fanout --url "ws://127.0.0.1:$port/ws" --encoding "$enc" \
    --subs 50 --messages 200 --json) || status=$?
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=
  if $PY -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["received"]==r["expected"]==10000 and r["lost"]==0 and r["out_of_order"]==0 else 1)' "$out" 2>/dev/null && [ "$status" = 0 ]; then
    echo "ok   $name ($enc): 10000 of 10000 deliveries, 0 lost"
  else
    echo "FAIL $name ($enc): exit $status: $out"
    fails=$((fails + 1))
  fi
}

check gale-broker json "$BUILD/gale-broker" --listen 127.0.0.1:PORT --log-level warn --keepalive 0
check gale-broker msgpack "$BUILD/gale-broker" --listen 127.0.0.1:PORT --log-level warn --keepalive 0
if command -v node >/dev/null && [ -d /usr/share/nodejs/ws ]; then
  check node-peer json env NODE_PATH=/usr/share/nodejs node "$PEERS/node_ws_broker.js" --port PORT
fi
if $PY -c 'import tornado, msgpack' 2>/dev/null; then
  check tornado-peer msgpack $PY "$PEERS/tornado_broker.py" --port PORT
fi
exit $((fails > 0))
