#!/usr/bin/env bash
# bench/benchmarks.sh: the full benchmark of gale-broker next to the reference peers, written
# to docs/BENCHMARKS.md with tables and PNG plots (docs/bench/*.png).
#
# Builds gale-broker and gale (RelWithDebInfo), then, one server at a time on a fresh
# process and a free loopback port, the servers taking turns at every measurement point
# (gale-broker --keepalive 0, the Node ws peer, the Tornado peer, nats-server 2.9's WebSocket
# listener when `gale bench` has `--proto nats`), measures with `gale bench ... --pid --json`:
#   1. fanout as fast as acks allow (1 publisher, 100-byte payloads, window 64) at 1K, 5K,
#      10K, 19K subscribers: broker CPU us per delivery, deliveries/s;
#   2. conns --subscribe at 1K, 5K, 10K, 19K connections: broker RSS per idle subscribed
#      connection, connection set-up rate;
#   3. fanout at fixed rates: latency p50/p90/p99/p99.9 at 1K subscribers x 10, 100, 1000
#      msg/s and 10K subscribers x 10, 100 msg/s;
#   4. connect: handshakes (connect, upgrade, hello, close) per second;
#   5. topics, one subscriber per topic: CPU per delivery against the number of topics, and
#      with idle topics preloaded (`gale sub` connections with 1000 topics each; for
#      nats-server one NATS client) so that the broker holds 100,000 topics;
#   6. recover (gale-broker only, with --history 'bench.>=1000': the peers keep no history):
#      10K subscribers disconnect, 100 messages are published, all reconnect with since:
#      recovered, lost, duplicated, time until the last is caught up. History on/off costs
#      and the cluster case are bench/history.py's (docs/bench/history.md, included); the
#      presence costs are bench/presence.py's (docs/bench/presence.md, included); the MQTT
#      adapter against mosquitto is bench/mqtt.py's (docs/bench/mqtt.md, included), the NATS
#      adapter against nats-server bench/nats.py's (docs/bench/nats.md, included).
# Raw JSON lines (server, measurement, parameters, exact command, result) go to
# $BUILD/benchmarks.jsonl, server logs to $BUILD/benchmarks-SERVER.log; bench/plot.py then
# writes the PNGs and docs/BENCHMARKS.md (it includes docs/bench/optimisations.md,
# docs/bench/history.md, docs/bench/presence.md, docs/bench/mqtt.md, docs/bench/nats.md and
# docs/bench/loops.md verbatim).
# Every server listens on 127.0.0.1 only; every run is bounded by `timeout`; servers this
# script started are stopped on exit.
#
# Time on 2 cores: QUICK=1 about 2-3 minutes, the full run about 12 minutes (build included).
#
# Environment:
#   QUICK=1            small counts and 2 s measurements (a sanity run, not figures)
#   SERVERS            servers to measure, in turn (default "gale node tornado nats")
#   BUILD              build directory (default build-bench); PEERS (default ../shared/peers)
#   DURATION           seconds of publishing per fanout/topics run, of connect (10; QUICK 2)
#   HOLD               seconds conns holds its connections (5; QUICK 2)
#   FANOUT_SUBS, CONNS_LIST, LATENCY_POINTS ("SUBS:RATE ..."), CONNECT_CONC, TOPICS_LIST,
#   IDLE_TOPICS, RECOVER_POINTS ("SUBS:MSGS ...")
#                      the measurement points (see the defaults below; an empty list skips
#                      that measurement, e.g. LATENCY_POINTS= )
#   GALE_MAX_SUBS, NODE_MAX_SUBS, TORNADO_MAX_SUBS, NATS_MAX_SUBS: the most subscribers a
#                      server gets in fanout/latency/topics (19000, 10000, 5000, 19000)
#   *_MAX_CONNS        the same for conns (19000 each)
#   PROCS_AT           subscriber count from which gale bench uses --procs 2 (1000)
#   OVERLOAD_PCT       a latency point needing more than this % of the deliveries/s the
#                      server reached as fast as acks allow at that count is skipped (150)
#   DOCS               where BENCHMARKS.md and bench/*.png go (default docs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(realpath -m "${BUILD:-$ROOT/build-bench}")
PEERS=${PEERS:-$ROOT/../shared/peers}
DOCS=$(realpath -m "${DOCS:-$ROOT/docs}")
QUICK=${QUICK:-0}
SERVERS=${SERVERS:-gale node tornado nats}
PY=/usr/bin/python3
GALE=$BUILD/gale
JSONL=$BUILD/benchmarks.jsonl

if [ "$QUICK" = 1 ]; then
  DURATION=${DURATION:-2}
  HOLD=${HOLD:-2}
  FANOUT_SUBS=${FANOUT_SUBS-200 1000 2000}
  CONNS_LIST=${CONNS_LIST-1000 2000}
  LATENCY_POINTS=${LATENCY_POINTS-200:10 200:1000 1000:100}
  CONNECT_CONC=${CONNECT_CONC-16}
  TOPICS_LIST=${TOPICS_LIST-100 1000}
  IDLE_TOPICS=${IDLE_TOPICS:-9000}
  RECOVER_POINTS=${RECOVER_POINTS-1000:100}
  SETUP_TIMEOUT=${SETUP_TIMEOUT:-60}
  DRAIN=${DRAIN:-10}
else
  DURATION=${DURATION:-10}
  HOLD=${HOLD:-5}
  FANOUT_SUBS=${FANOUT_SUBS-1000 5000 10000 19000}
  CONNS_LIST=${CONNS_LIST-1000 5000 10000 19000}
  LATENCY_POINTS=${LATENCY_POINTS-1000:10 1000:100 1000:1000 10000:10 10000:100}
  CONNECT_CONC=${CONNECT_CONC-16 64}
  TOPICS_LIST=${TOPICS_LIST-1000 10000}
  IDLE_TOPICS=${IDLE_TOPICS:-90000} # next to the largest TOPICS_LIST point: 100,000 topics
  RECOVER_POINTS=${RECOVER_POINTS-10000:100}
  SETUP_TIMEOUT=${SETUP_TIMEOUT:-120}
  DRAIN=${DRAIN:-20}
fi
# Two worker processes from 1,000 subscribers: one alone cannot always read what gale-broker
# sends as fast as acks allow (its queues then pass --queue-limit: 4001, counted as losses).
PROCS_AT=${PROCS_AT:-1000}
OVERLOAD_PCT=${OVERLOAD_PCT:-150}
declare -A MAX_SUBS=([gale]=${GALE_MAX_SUBS:-19000} [node]=${NODE_MAX_SUBS:-10000}
                     [tornado]=${TORNADO_MAX_SUBS:-5000} [nats]=${NATS_MAX_SUBS:-19000})
declare -A MAX_CONNS=([gale]=${GALE_MAX_CONNS:-19000} [node]=${NODE_MAX_CONNS:-19000}
                      [tornado]=${TORNADO_MAX_CONNS:-19000} [nats]=${NATS_MAX_CONNS:-19000})
declare -A CAP_VAR=([gale]=GALE [node]=NODE [tornado]=TORNADO [nats]=NATS)
IDLE_PER_CONN=1000 # topics per preloading `gale sub` (gale-broker's --max-subscriptions: 1024)

T_START=$(date +%s)
log() { printf '[%4ds] %s\n' $(($(date +%s) - T_START)) "$*" >&2; }

# The broker and the load generator need a file descriptor per connection: raise the soft
# limit to the hard limit (never above it). Points that do not fit are skipped.
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ]; then hard=1048576; fi
ulimit -n "$hard" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" = unlimited ]; then FD_LIMIT=1048576; fi
MAX_FIT=$((FD_LIMIT - 200))

log "== building gale-broker and gale in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" --target gale-broker gale -j"$(nproc)" >/dev/null

HAVE_PLOT=1
if ! $PY -c 'import matplotlib' 2>/dev/null; then
  HAVE_PLOT=0
  log "(no plots: python3-matplotlib is missing; scripts/deps bench installs it)"
fi

# --- which servers ------------------------------------------------------------------------
servers=()
skipped=() # "server: reason"
for s in $SERVERS; do
  case "$s" in
    gale) servers+=(gale) ;;
    node)
      if ! command -v node >/dev/null; then
        skipped+=("node: node is not installed")
      elif [ ! -d /usr/share/nodejs/ws ]; then
        skipped+=("node: node-ws (/usr/share/nodejs/ws) is not installed")
      elif [ ! -f "$PEERS/node_ws_broker.js" ]; then
        skipped+=("node: $PEERS/node_ws_broker.js is missing")
      else servers+=(node); fi ;;
    tornado)
      if ! $PY -c 'import tornado' 2>/dev/null; then
        skipped+=("tornado: python3-tornado is not installed for $PY")
      elif [ ! -f "$PEERS/tornado_broker.py" ]; then
        skipped+=("tornado: $PEERS/tornado_broker.py is missing")
      else servers+=(tornado); fi ;;
    nats)
      if ! command -v nats-server >/dev/null; then
        skipped+=("nats: nats-server is not installed (apt-get install nats-server)")
      elif ! "$GALE" bench --help 2>&1 | grep -q -- '--proto'; then
        skipped+=("nats: this gale bench has no --proto option (NATS mode)")
      else servers+=(nats); fi ;;
    *) log "unknown server '$s' in SERVERS (gale node tornado nats)"; exit 2 ;;
  esac
done
for s in "${skipped[@]}"; do log "(skipping $s)"; done
[ ${#servers[@]} -gt 0 ] || { log "no server to measure"; exit 1; }

# --- records ------------------------------------------------------------------------------
# record KEY=STRING KEY:=JSON ...: appends one JSON object to $JSONL. A KEY:=value that is
# not valid JSON (a bench that printed something else) is kept as a string under KEY_raw.
record() {
  $PY - "$@" >>"$JSONL" <<'EOF'
import json, sys
rec = {}
for arg in sys.argv[1:]:
    k, v = arg.split("=", 1)
    if k.endswith(":"):
        k = k[:-1]
        try:
            rec[k] = json.loads(v) if v.strip() else None
        except ValueError:
            rec[k] = None
            rec[k + "_raw"] = v[-2000:]
    else:
        rec[k] = v
print(json.dumps(rec, ensure_ascii=False))
EOF
}

version_of() { # a command's first line of output, or "-"
  local v
  v=$("$@" 2>&1 | head -n1) || true
  printf '%s' "${v:--}"
}

# --- servers ------------------------------------------------------------------------------
GALE_FLAGS=() # extra gale-broker flags of the current measurement (recover: --history)
SERVER_PID=
SERVER_CMD=
PORT=
NATS_CPORT=
PRELOAD_PIDS=()
cleanup() {
  local p
  for p in "${PRELOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

server_url() {
  case "$1" in
    nats) echo "ws://127.0.0.1:$PORT/" ;;
    *) echo "ws://127.0.0.1:$PORT/ws" ;;
  esac
}

start_server() { # NAME
  PORT=$(free_port)
  local log=$BUILD/benchmarks-$1.log # appended: one section per run
  echo "--- $(date -Is) port $PORT" >>"$log"
  case "$1" in
    gale)
      SERVER_CMD="gale-broker --listen 127.0.0.1:$PORT --log-level warn --keepalive 0 --loops 1"
      local f
      for f in ${GALE_FLAGS[@]+"${GALE_FLAGS[@]}"}; do # quoted as a shell would need
        if [[ $f =~ ^[A-Za-z0-9_.,:/=@+-]+$ ]]; then SERVER_CMD+=" $f"; else SERVER_CMD+=" '$f'"; fi
      done
      "$BUILD/gale-broker" --listen "127.0.0.1:$PORT" --log-level warn --keepalive 0 --loops 1 \
        ${GALE_FLAGS[@]+"${GALE_FLAGS[@]}"} >>"$log" 2>&1 &
      ;;
    node)
      SERVER_CMD="NODE_PATH=/usr/share/nodejs node node_ws_broker.js --port $PORT"
      NODE_PATH=/usr/share/nodejs node "$PEERS/node_ws_broker.js" --port "$PORT" >>"$log" 2>&1 &
      ;;
    tornado)
      SERVER_CMD="/usr/bin/python3 tornado_broker.py --port $PORT"
      $PY "$PEERS/tornado_broker.py" --port "$PORT" >>"$log" 2>&1 &
      ;;
    nats)
      local cport conf=$BUILD/benchmarks-nats.conf
      cport=$(free_port)
      while [ "$cport" = "$PORT" ]; do cport=$(free_port); done
      printf 'websocket {\n  listen: "127.0.0.1:%s"\n  no_tls: true\n  compression: false\n}\n' \
        "$PORT" >"$conf"
      SERVER_CMD="nats-server -c nats.conf -a 127.0.0.1 -p $cport  # nats.conf: websocket { listen: \"127.0.0.1:$PORT\"; no_tls: true; compression: false }"
      NATS_CPORT=$cport
      nats-server -c "$conf" -a 127.0.0.1 -p "$cport" >>"$log" 2>&1 &
      ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do # up to 10 s
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      sleep 0.3 # let a fresh interpreter settle before measuring its RSS
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "$1 did not listen on 127.0.0.1:$PORT within 10 s (log: $log)"
  stop_server
  return 1
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# preload SERVER N URL: N idle topics bench.topic.iNNNNNN (same level as the bench's
# bench.topic.NNNNNN, never published to), held by ceil(N / IDLE_PER_CONN) `gale sub`
# connections, or for nats-server by one NATS client on its client port (all SUBs, then a
# PING: the server answers PONG after handling every SUB). Sets PRELOAD_DESC; returns 1 if
# they are not all subscribed within 120 s.
PRELOAD_DESC=
preload() {
  local server=$1 n=$2 url=$3 i k t dir=$BUILD/benchmarks-preload
  local conns=$(((n + IDLE_PER_CONN - 1) / IDLE_PER_CONN))
  rm -rf "$dir"
  mkdir -p "$dir"
  if [ "$server" = nats ]; then
    conns=1
    timeout 900 $PY - "$NATS_CPORT" "$n" >/dev/null 2>"$dir/0.log" <<'PYEOF' &
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n'
          + b"".join(b"SUB bench.topic.i%06d %d\r\n" % (i, i + 1) for i in range(n)) + b"PING\r\n")
subscribed = False
for line in f:
    if line.startswith(b"PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith(b"-ERR"):
        sys.exit(f"nats preload: {line.decode().strip()}")
    elif line.startswith(b"PONG") and not subscribed:
        subscribed = True
        print(f"* subscribed to {n} subjects", file=sys.stderr, flush=True)
PYEOF
    PRELOAD_PIDS+=($!)
    PRELOAD_DESC="one NATS client on 127.0.0.1:$NATS_CPORT (plain TCP) holding \`SUB bench.topic.i<k>\` for k < $n"
  else
    for ((k = 0; k < conns; k++)); do
      local -a topics=()
      for ((i = k * IDLE_PER_CONN; i < (k + 1) * IDLE_PER_CONN && i < n; i++)); do
        printf -v t 'bench.topic.i%06d' "$i"
        topics+=("$t")
      done
      timeout 900 "$GALE" sub -v --url "$url" "${topics[@]}" >/dev/null 2>"$dir/$k.log" &
      PRELOAD_PIDS+=($!)
    done
    PRELOAD_DESC="$conns x \`gale sub -v --url $url bench.topic.i<k*$IDLE_PER_CONN> ... (${IDLE_PER_CONN} topics)\`"
  fi
  local done_n=0
  for _ in $(seq 240); do
    done_n=$(grep -l '^\* subscribed to' "$dir"/*.log 2>/dev/null | wc -l)
    [ "$done_n" -ge "$conns" ] && return 0
    sleep 0.5
  done
  log "   preload: only $done_n of $conns preloading connections subscribed within 120 s"
  return 1
}

unload() {
  local p
  for p in "${PRELOAD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PRELOAD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PRELOAD_PIDS=()
}

topics_in_broker() { # gale-broker's gale_topics gauge, or "" (other servers have none)
  [ "$1" = gale ] || return 0
  $PY - "$PORT" <<'EOF' || true
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5) as r:
    for line in r.read().decode().splitlines():
        if line.startswith("gale_topics "):
            print(int(float(line.split()[1])))
EOF
}

# skip SERVER MEASURE PARAMS_JSON REASON
skip() {
  log "== $1: $2 $3: skipped: $4"
  record type=skip server="$1" measure="$2" params:="$3" reason="$4"
}

# measure SERVER MEASURE PARAMS_JSON LIMIT_S [PRELOAD_N] -- BENCH_ARGS...: one run of gale
# bench against a fresh server, appended to $JSONL.
measure() {
  local server=$1 what=$2 params=$3 limit=$4 npre=0
  shift 4
  if [ "$1" != -- ]; then npre=$1; shift; fi
  shift
  if ! start_server "$server"; then
    record type=run server="$server" measure="$what" params:="$params" status:=-1 \
      error="server did not start"
    return 0
  fi
  local url pre_desc="" ntopics=""
  url=$(server_url "$server")
  if [ "$npre" -gt 0 ]; then
    log "== $server: preloading $npre idle topics"
    if ! preload "$server" "$npre" "$url"; then
      unload
      stop_server
      record type=run server="$server" measure="$what" params:="$params" status:=-1 \
        error="preloading $npre topics failed"
      return 0
    fi
    pre_desc=$PRELOAD_DESC
  fi
  local -a cmd=(gale bench "$@")
  if [ "$server" = nats ]; then cmd+=(--proto nats); fi
  cmd+=(--url "$url" --pid "$SERVER_PID" --json)
  log "== $server: $what $params"
  log "   ${cmd[*]}"
  local out status=0 t0 t1 load1 err=$BUILD/benchmarks-bench.err
  if [ "$npre" -gt 0 ]; then ntopics=$(topics_in_broker "$server"); fi
  load1=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  out=$(timeout "$limit" "$GALE" "${cmd[@]:1}" 2>"$err") || status=$?
  t1=$(date +%s.%N)
  unload
  stop_server
  local wall
  wall=$($PY -c "print(round($t1 - $t0, 2))")
  [ "$status" -eq 124 ] && log "   timed out after $limit s"
  record type=run server="$server" measure="$what" params:="$params" command="${cmd[*]}" \
    server_cmd="$SERVER_CMD" status:="$status" wall_s:="$wall" load1:="$load1" \
    preload="$pre_desc" preloaded_gauge:="${ntopics:-null}" \
    stderr="$(tail -c 600 "$err" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 3)" \
    result:="$out"
}

procs_for() { if [ "$1" -ge "$PROCS_AT" ]; then echo 2; else echo 1; fi; }

# cap SERVER N KIND(subs|conns) MEASURE PARAMS: 0 if N fits, else records a skip.
fits() {
  local server=$1 n=$2 kind=$3 what=$4 params=$5 max var
  if [ "$kind" = subs ]; then max=${MAX_SUBS[$server]}; var=${CAP_VAR[$server]}_MAX_SUBS
  else max=${MAX_CONNS[$server]}; var=${CAP_VAR[$server]}_MAX_CONNS; fi
  if [ "$n" -gt "$max" ]; then
    skip "$server" "$what" "$params" "above the cap $var=$max"
    return 1
  fi
  if [ "$n" -gt "$MAX_FIT" ]; then
    skip "$server" "$what" "$params" "beyond the open-file limit ($FD_LIMIT)"
    return 1
  fi
}

# max_rate SERVER SUBS: deliveries/s of that server's as-fast-as-acks fanout at SUBS, or 0.
max_rate() {
  $PY - "$JSONL" "$1" "$2" <<'EOF'
import json, sys
path, server, subs = sys.argv[1], sys.argv[2], int(sys.argv[3])
best = 0
for line in open(path):
    r = json.loads(line)
    if (r.get("type") == "run" and r.get("server") == server and r.get("measure") == "fanout"
            and r["params"].get("subs") == subs and isinstance(r.get("result"), dict)):
        best = max(best, r["result"].get("deliveries_per_s", 0))
print(int(best))
EOF
}

# --- run ----------------------------------------------------------------------------------
: >"$JSONL"
rm -f "$BUILD"/benchmarks-*.log

caps_desc=""
for s in "${servers[@]}"; do
  caps_desc+="$s: ${CAP_VAR[$s]}_MAX_SUBS=${MAX_SUBS[$s]} ${CAP_VAR[$s]}_MAX_CONNS=${MAX_CONNS[$s]}; "
done
mem_kib=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo -)
if ! git -C "$ROOT" diff-index --quiet HEAD -- 2>/dev/null; then rev+=" (with uncommitted changes)"; fi
nats_v=-
if command -v nats-server >/dev/null; then nats_v=$(version_of nats-server --version); fi
record type=meta date="$(date -Is)" quick:="$([ "$QUICK" = 1 ] && echo true || echo false)" \
  nproc:="$(nproc)" cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  kernel="$(uname -sr)" mem_kib:="$mem_kib" load_start="$(cut -d' ' -f1-3 /proc/loadavg)" \
  fd_limit:="$FD_LIMIT" gale_rev="$rev" \
  libwebsockets="$(dpkg-query -W -f='${Version}' libwebsockets-dev 2>/dev/null || echo -)" \
  libuv="$(dpkg-query -W -f='${Version}' libuv1-dev 2>/dev/null || echo -)" \
  node="$(version_of node --version)" \
  ws="$($PY -c 'import json; print(json.load(open("/usr/share/nodejs/ws/package.json"))["version"])' 2>/dev/null || echo -)" \
  python3="$(version_of $PY --version)" \
  tornado="$($PY -c 'import tornado; print(tornado.version)' 2>/dev/null || echo -)" \
  nats_server="$nats_v" servers="${servers[*]}" skipped="$(printf '%s; ' "${skipped[@]}")" \
  caps="$caps_desc" duration:="$DURATION" hold:="$HOLD" drain:="$DRAIN" procs_at:="$PROCS_AT" \
  fanout_subs="$FANOUT_SUBS" conns_list="$CONNS_LIST" latency_points="$LATENCY_POINTS" \
  connect_conc="$CONNECT_CONC" topics_list="$TOPICS_LIST" idle_topics:="$IDLE_TOPICS" \
  recover_points="$RECOVER_POINTS"

common=(--setup-timeout "$SETUP_TIMEOUT" --drain "$DRAIN")
run_limit=$((SETUP_TIMEOUT + DURATION + 2 * DRAIN + 60))

# 1. CPU per delivery and deliveries/s against subscribers, as fast as acks allow.
for n in $FANOUT_SUBS; do
  p=$(procs_for "$n")
  params="{\"subs\":$n,\"rate\":0,\"window\":64,\"size\":100,\"duration\":$DURATION,\"procs\":$p}"
  for s in "${servers[@]}"; do
    fits "$s" "$n" subs fanout "$params" || continue
    measure "$s" fanout "$params" "$run_limit" -- fanout --subs "$n" --pubs 1 --size 100 \
      --rate 0 --window 64 --duration "$DURATION" --procs "$p" "${common[@]}"
  done
done

# 2. RSS per idle subscribed connection, and set-up rate.
for n in $CONNS_LIST; do
  p=$(procs_for "$n")
  params="{\"conns\":$n,\"subscribe\":true,\"hold\":$HOLD,\"procs\":$p}"
  for s in "${servers[@]}"; do
    fits "$s" "$n" conns conns "$params" || continue
    measure "$s" conns "$params" $((SETUP_TIMEOUT + HOLD + 60)) -- conns --conns "$n" \
      --subscribe --hold "$HOLD" --procs "$p" --setup-timeout "$SETUP_TIMEOUT"
  done
done

# 3. Latency against publish rate at fixed subscriber counts. A rate well above what the
# server delivered as fast as acks allow (1.) would only measure its queue growing: skipped
# beyond OVERLOAD times that.
for pt in $LATENCY_POINTS; do
  n=${pt%%:*} r=${pt##*:}
  p=$(procs_for "$n")
  params="{\"subs\":$n,\"rate\":$r,\"size\":100,\"duration\":$DURATION,\"procs\":$p}"
  for s in "${servers[@]}"; do
    fits "$s" "$n" subs latency "$params" || continue
    mr=$(max_rate "$s" "$n")
    if [ "$mr" -gt 0 ] && [ $((n * r * 100)) -gt $((mr * OVERLOAD_PCT)) ]; then
      skip "$s" latency "$params" "needs $((n * r)) deliveries/s, over $OVERLOAD_PCT % of the $mr/s it delivered as fast as acks allow"
      continue
    fi
    measure "$s" latency "$params" "$run_limit" -- fanout --subs "$n" --pubs 1 --size 100 \
      --rate "$r" --duration "$DURATION" --procs "$p" "${common[@]}"
  done
done

# 4. Handshakes per second.
for c in $CONNECT_CONC; do
  params="{\"concurrency\":$c,\"duration\":$DURATION,\"procs\":1}"
  for s in "${servers[@]}"; do
    measure "$s" connect "$params" $((DURATION + 90)) -- connect --concurrency "$c" \
      --duration "$DURATION"
  done
done

# 5. Routing cost against the number of topics: one subscriber per topic, each publish to
# the next topic (one delivery per publish). Then the largest point again with IDLE_TOPICS
# more topics held by other connections (see preload).
largest=0
for t in $TOPICS_LIST; do
  [ "$t" -gt "$largest" ] && largest=$t
  p=$(procs_for "$t")
  params="{\"topics\":$t,\"subs\":$t,\"idle_topics\":0,\"rate\":0,\"window\":64,\"size\":100,\"duration\":$DURATION,\"procs\":$p}"
  for s in "${servers[@]}"; do
    fits "$s" "$t" subs topics "$params" || continue
    measure "$s" topics "$params" "$run_limit" -- topics --topics "$t" --subs "$t" --pubs 1 \
      --size 100 --rate 0 --window 64 --duration "$DURATION" --procs "$p" "${common[@]}"
  done
done
if [ "$IDLE_TOPICS" -gt 0 ] && [ "$largest" -gt 0 ]; then
  t=$largest
  p=$(procs_for "$t")
  params="{\"topics\":$t,\"subs\":$t,\"idle_topics\":$IDLE_TOPICS,\"rate\":0,\"window\":64,\"size\":100,\"duration\":$DURATION,\"procs\":$p}"
  for s in "${servers[@]}"; do
    fits "$s" "$t" subs topics "$params" || continue
    if [ $((t + IDLE_TOPICS / IDLE_PER_CONN + 1)) -gt "$MAX_FIT" ]; then
      skip "$s" topics "$params" "beyond the open-file limit ($FD_LIMIT)"
      continue
    fi
    measure "$s" topics "$params" $((run_limit + 150)) "$IDLE_TOPICS" -- topics --topics "$t" \
      --subs "$t" --pubs 1 --size 100 --rate 0 --window 64 --duration "$DURATION" --procs "$p" \
      "${common[@]}"
  done
fi

# 6. Reconnect storm with recovery, gale-broker only (the peers keep no history): each
# subscriber resumes from its position with since after MSGS messages it missed.
for pt in $RECOVER_POINTS; do
  n=${pt%%:*} m=${pt##*:}
  [[ " ${servers[*]} " == *" gale "* ]] || break
  params="{\"subs\":$n,\"msgs\":$m,\"procs\":1}"
  fits gale "$n" subs recover "$params" || continue
  GALE_FLAGS=(--history 'bench.>=1000')
  measure gale recover "$params" $((2 * SETUP_TIMEOUT + 60)) -- recover --subs "$n" --msgs "$m" \
    --procs 1 --setup-timeout "$SETUP_TIMEOUT"
  GALE_FLAGS=()
done

record type=end date="$(date -Is)" load_end="$(cut -d' ' -f1-3 /proc/loadavg)" \
  elapsed_s:=$(($(date +%s) - T_START))

# --- report -------------------------------------------------------------------------------
mkdir -p "$DOCS/bench"
if [ ! -f "$DOCS/bench/optimisations.md" ]; then
  printf '## Optimisation log\n\n_To be written: what was changed, and what it did to the figures._\n' \
    >"$DOCS/bench/optimisations.md"
fi
cp "$JSONL" "$DOCS/bench/benchmarks.jsonl" # the raw data, kept beside the report
plot_args=("$JSONL" --markdown "$DOCS/BENCHMARKS.md" --optimisations "$DOCS/bench/optimisations.md"
  --history "$DOCS/bench/history.md" --presence "$DOCS/bench/presence.md"
  --mqtt "$DOCS/bench/mqtt.md" --nats "$DOCS/bench/nats.md" --loops "$DOCS/bench/loops.md")
if [ "$HAVE_PLOT" = 1 ]; then plot_args+=(--png-dir "$DOCS/bench"); fi
$PY "$ROOT/bench/plot.py" "${plot_args[@]}"
log "== wrote $DOCS/BENCHMARKS.md$([ "$HAVE_PLOT" = 1 ] && echo " and $DOCS/bench/*.png") in $(($(date +%s) - T_START)) s; raw JSON: $JSONL"
