#!/usr/bin/env bash
# Durable async submissions: 202s per second and p99 at 1, 16 and 64 concurrent clients, with
# and without group commit (the same binary, `[queue] group_commit` true/false), every 202
# committed to SQLite with synchronous=FULL first. Tasks are submitted with a one-hour delay so
# the workers do not compete with the measurement; then an end-to-end run measures how fast
# the workers drain tasks through the hello guest.
#
#   bash bench/async.sh          DURATION=10s bash bench/async.sh
#   BIN=/path/to/other/wasmgate bash bench/async.sh     # another build (for an A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
out=bench/results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet; BIN=./target/release/wasmgate; fi
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm

start() { # name group_commit -> sets PORT and ADMIN
  local name=$1 gc=$2
  PORT=$(free_port); ADMIN=$(free_port)
  mkdir -p "$work/$name"
  cat > "$work/$name/w.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
data_dir = "$work/$name/data"
[queue]
group_commit = $gc
[[function]]
name = "hello"
wasm = "$HELLO"
[[trigger]]
name = "hello"
function = "hello"
path = "/"
async = { max_retries = 0 }
TOML
  RUST_LOG=warn "$BIN" serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
  GW=$!
  pids+=($GW)
  wait_port "$PORT"
}
stop_gateway() { kill "$GW" 2>/dev/null || true; wait "$GW" 2>/dev/null || true; }

cat > "$work/now.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
LUA
cat > "$work/sync.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
LUA
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{\"job\":1}"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
wrk.headers["X-Fc-Async-Delay"] = "3600"
LUA

{
echo "Durable submissions (202 after commit), wrk -t1 -d$DURATION, POST with a 1 h delay"
echo
echo "| group commit | clients | 202/s | p99 (ms) | non-202 |"
echo "|---|---|---|---|---|"
for gc in true false; do
  start "gc-$gc" "$gc"
  for c in 1 16 64; do
    wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$PORT/" > "$work/wrk.txt"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
    bad=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
    echo "| $gc | $c | $rps | $p99 | ${bad:-0} |"
  done
  stop_gateway
done
echo
# End to end: 64 clients submit tasks due now for $DURATION while the workers run them; the
# rate is the tasks accepted over the time until the last one is recorded. The same node's
# synchronous rate on the same guest is the reference (goal: at least half of it).
start e2e true
wrk -t1 -c64 -d"$DURATION" -s "$work/sync.lua" "http://127.0.0.1:$PORT/" > "$work/sync.txt"
sync=$(awk '/^Requests\/sec:/ {print $2}' "$work/sync.txt")
t0=$(date +%s.%N)
wrk -t1 -c64 -d"$DURATION" -s "$work/now.lua" "http://127.0.0.1:$PORT/" > "$work/now.txt"
t1=$(date +%s.%N)
n=$(awk '/requests in/ {print $1}' "$work/now.txt")
bad=$(awk '/Non-2xx/ {print $5}' "$work/now.txt")
while :; do
  depth=$(curl -s "http://127.0.0.1:$ADMIN/readyz" | python3 -c 'import sys,json; print(json.load(sys.stdin)["queue_depth"])')
  [ "$depth" = "0" ] && break
  sleep 0.05
done
t2=$(date +%s.%N)
done_n=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^wasmgate_async_attempts_total\{.*outcome="succeeded"/ {s+=$2} END {print s+0}')
python3 - "$n" "${bad:-0}" "$t0" "$t1" "$t2" "$sync" "$done_n" <<'PY'
import sys
n, bad, t0, t1, t2, sync, done = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:7]), sys.argv[7]
ok = n - bad
e2e = ok / (t2 - t0)
print(f"End to end, 64 clients: {ok} tasks accepted in {t1 - t0:.2f} s ({bad} refused), all run "
      f"(hello guest) and recorded {t2 - t0:.2f} s after the first: {e2e:.0f} tasks/s; "
      f"synchronous on the same node: {sync} rps; ratio {e2e / sync:.2f} (goal >= 0.50); "
      f"attempts succeeded by the metrics: {done}")
PY
stop_gateway
} > >(tee "$out/async.md")
