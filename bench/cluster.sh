#!/usr/bin/env bash
# Durable async submissions on the cluster backend: 202/s at 64 clients with 1, 2 and 3
# wasmgate nodes on one JetStream nats-server (the clients split evenly over the nodes), beside
# the SQLite backend (one node) and, as the ceiling, the server's own rate of acknowledged
# publishes (examples/jspublish.rs: a Rust async-nats loop with 64 publishes in flight, on a
# work-queue stream with file storage). Every 202 is a task JetStream acknowledged (or, on
# SQLite, committed with synchronous=FULL). Tasks carry a one-hour delay, as in bench/async.sh;
# on JetStream each is delivered once to a node and NAKed with that delay, a cost the cluster
# numbers include. Each configuration gets a fresh nats-server with an empty store.
#
# Ends with the goals table, every figure from this run: the JetStream queue on one node /
# the raw acknowledged publishes (the ceiling), goal >= 0.50.
#
#   bash bench/cluster.sh          DURATION=10s bash bench/cluster.sh
#   BIN=/path/to/other/wasmgate bash bench/cluster.sh     # another build instead of this tree's
#   BASELINE=/path/to/other/wasmgate bash bench/cluster.sh
#                           # also measures that build, each configuration right after this
#                           # one's, against the same ceiling: a build column in the table and
#                           # a baseline column in the goals table
#   PERF=/tmp/prof bash bench/cluster.sh   # also records each measured phase with perf (bench/lib.sh
#                           # perf_start); that run's rates are slowed by the recording
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
CLIENTS=${CLIENTS:-64}
out=bench/results
mkdir -p "$out"
bench_scratch
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
bash scripts/build-functions.sh >/dev/null
BIN=${BIN:-}
if [ -z "$BIN" ]; then
  cargo build --release --quiet --bin wasmgate --example jspublish
  BIN=./target/release/wasmgate
else
  cargo build --release --quiet --example jspublish
fi
BASELINE=${BASELINE:-}
# The builds measured: this one, and the baseline when BASELINE is set.
declare -A BUILD=([wasmgate]="$BIN")
builds=(wasmgate)
if [ -n "$BASELINE" ]; then BUILD[baseline]=$BASELINE; builds+=(baseline); fi
FIGURES=$work/figures.tsv
: > "$FIGURES"
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
secs=${DURATION%s}

NATS_PORT=
start_nats() {
  NATS_PORT=$(free_port)
  rm -rf "$work/js"
  nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$work/js" >/dev/null 2>&1 &
  NATS=$!
  pids+=($NATS)
  wait_port "$NATS_PORT"
}
stop_nats() { kill "$NATS" 2>/dev/null || true; wait "$NATS" 2>/dev/null || true; }

NODES=()
start_node() { # name cluster(true|false) build -> appends the port to NODES
  local name=$1 cluster=$2 bin=${BUILD[$3]} port admin
  port=$(free_port); admin=$(free_port)
  mkdir -p "$work/$name"
  cat > "$work/$name/w.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
data_dir = "$work/$name/data"
$(hello_tables)
async = { max_retries = 0 }
TOML
  if [ "$cluster" = true ]; then printf '[cluster]\nnats = "nats://127.0.0.1:%s"\n' "$NATS_PORT" >> "$work/$name/w.toml"; fi
  RUST_LOG=warn "$bin" serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
  pids+=($!)
  NODE_PIDS+=($!)
  wait_port "$port"
  NODES+=("$port")
}
stop_nodes() { for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; NODES=(); NODE_PIDS=(); }
NODE_PIDS=()

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{\"job\":1}"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
wrk.headers["X-Fc-Async-Delay"] = "3600"
LUA

# CLIENTS connections split over the nodes, one wrk per node at once; prints "202/s p99max non202".
load() {
  local n=${#NODES[@]} i=0 c wrks=()
  for port in "${NODES[@]}"; do
    c=$(( CLIENTS / n + (i < CLIENTS % n ? 1 : 0) ))
    wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$port/" > "$work/wrk-$i.txt" &
    wrks+=($!)
    i=$((i + 1))
  done
  wait "${wrks[@]}"
  python3 - "$secs" "$work"/wrk-*.txt <<'PY'
import re, sys
secs = float(sys.argv[1]); ok = bad = 0; p99 = 0.0
for f in sys.argv[2:]:
    t = open(f).read()
    n = int(re.search(r"(\d+) requests in", t).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    b = int(m.group(1)) if m else 0
    ok += n - b; bad += b
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", t, re.M)
    if m:
        v = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
        p99 = max(p99, v)
print(f"{ok / secs:.0f} {p99:.1f} {bad}")
PY
  rm -f "$work"/wrk-*.txt
}

{
echo "Durable 202/s, $CLIENTS clients, wrk -d$DURATION per node at once, POST with a 1 h delay"
echo
if [ -n "$BASELINE" ]; then
  echo "| build | backend | nodes | 202/s | p99 (ms, worst node) | non-202 | of the ceiling |"
  echo "|---|---|---|---|---|---|---|"
else
  echo "| backend | nodes | 202/s | p99 (ms, worst node) | non-202 | of the ceiling |"
  echo "|---|---|---|---|---|---|"
fi
start_nats
perf_start ceiling
ceiling=$(./target/release/examples/jspublish "nats://127.0.0.1:$NATS_PORT" "$secs" "$CLIENTS" 600 | awk '{print $1}')
perf_stop
stop_nats
row() { # build backend nodes "rate p99 bad"; prints the table row, records the 1-node JetStream ratio
  local build=$1 of
  shift
  set -- "$1" "$2" $3
  of=$(python3 -c "print(f'{$3 / $ceiling:.2f}')")
  if [ "$1 $2" = "JetStream 1" ]; then figure "$build" js1 "$of"; fi
  if [ -n "$BASELINE" ]; then printf '| %s ' "$build"; fi
  echo "| $1 | $2 | $3 | $4 | $5 | $of |"
}
for b in "${builds[@]}"; do
  start_node "$b-sqlite" false "$b"
  row "$b" "SQLite (one node)" 1 "$(load)"
  stop_nodes
done
for n in 1 2 3; do
  for b in "${builds[@]}"; do
    start_nats
    for i in $(seq 1 "$n"); do start_node "$b-js$n-$i" true "$b"; done
    perf_start "jetstream-$n-$b"
    js=$(load)
    perf_stop
    row "$b" "JetStream" "$n" "$js"
    stop_nodes
    stop_nats
  done
done
if [ -n "$BASELINE" ]; then printf '| - '; fi
echo "| JetStream publish loop (ceiling) | - | $ceiling | - | - | 1.00 |"
echo
echo "Machine: $(nproc) cores, $(uname -sr); nats-server $(nats-server --version | awk '{print $2}'); every process on the same cores."
echo
echo "Goals (every figure from this run)"
echo
goals_table "js1|JetStream queue, 1 node / raw acked publishes (ceiling)|>=|0.50|x"
} > >(tee "$out/cluster.md")
