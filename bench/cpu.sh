#!/usr/bin/env bash
# CPU time per request: the node's (all threads) and its task-store writer thread's, over one
# wrk run of 64 connections on the hello guest, from /proc (user + system ticks). Wall-clock
# rates move by a fifth between runs on a shared machine; CPU per request moves far less, so
# this is the figure to compare builds by.
#
#   bash bench/cpu.sh                        # sync, durable 202 (1 h delay), end to end
#   MODES="delayed" BIN=/path/to/wasmgate bash bench/cpu.sh
#
# Modes: sync (plain POST), delayed (async, 1 h delay: intake only), now (async due now; the
# run lasts until the queue is empty, so it counts intake and execution).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
MODES=${MODES:-sync delayed now}
bench_scratch
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet --bin wasmgate; BIN=./target/release/wasmgate; fi
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
tick=$(getconf CLK_TCK)

cat > "$work/sync.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
LUA
cat > "$work/delayed.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{\"job\":1}"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
wrk.headers["X-Fc-Async-Delay"] = "3600"
LUA
cat > "$work/now.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
LUA

echo "| mode | requests | requests/s | node CPU per request (µs) | node cores | writer thread per request (µs) |"
echo "|---|---|---|---|---|---|"
for mode in $MODES; do
  port=$(free_port); admin=$(free_port)
  rm -rf "$work/data"
  cat > "$work/w.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
data_dir = "$work/data"
$(hello_tables)
async = { max_retries = 0 }
TOML
  RUST_LOG=warn "$BIN" serve --config "$work/w.toml" >/dev/null 2>"$work/log" &
  gw=$!
  pids+=($gw)
  wait_port "$port"
  writer=$(ps -T -p "$gw" -o spid=,comm= | awk '$2 == "wasmgate-queue" {print $1}')
  cpu() { awk '{print $14 + $15}' "$1"; }
  c0=$(cpu "/proc/$gw/stat"); q0=$(cpu "/proc/$gw/task/$writer/stat"); t0=$(date +%s.%N)
  wrk -t1 -c64 -d"$DURATION" -s "$work/$mode.lua" "http://127.0.0.1:$port/" > "$work/wrk.txt"
  if [ "$mode" = now ]; then
    until [ "$(queue_depth "$admin")" = 0 ]; do sleep 0.05; done
  fi
  t1=$(date +%s.%N); c1=$(cpu "/proc/$gw/stat"); q1=$(cpu "/proc/$gw/task/$writer/stat")
  n=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  python3 -c "
n, tick = $n, $tick
c, q, w = ($c1 - $c0) / tick, ($q1 - $q0) / tick, $t1 - $t0
print(f'| $mode | {n} | {n / w:.0f} | {c / n * 1e6:.1f} | {c / w:.2f} | {q / n * 1e6:.1f} |')"
  kill "$gw"; wait "$gw" 2>/dev/null || true
done
