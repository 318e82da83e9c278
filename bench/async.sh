#!/usr/bin/env bash
# Durable async submissions: 202s per second and p99 at 1, 16 and 64 concurrent clients, with
# and without group commit (the same binary, `[queue] group_commit` true/false), every 202
# committed to SQLite with synchronous=FULL first. Tasks are submitted with a one-hour delay so
# the workers do not compete with the measurement; then an end-to-end run measures how fast
# the workers drain tasks through the hello guest.
#
#   bash bench/async.sh          DURATION=5s TASKS=3000 bash bench/async.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
TASKS=${TASKS:-3000}
out=bench/results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet
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
  RUST_LOG=warn ./target/release/wasmgate serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
  pids+=($!)
  wait_port "$PORT"
}

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
done
echo
start e2e true
cat > "$work/now.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
LUA
t0=$(date +%s.%N)
python3 - "$PORT" "$TASKS" <<'PY'
import sys, http.client, concurrent.futures
port, n = int(sys.argv[1]), int(sys.argv[2])
def submit(chunk):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(chunk):
        c.request("POST", "/", body=b"x", headers={"X-Fc-Invocation-Type": "Async"})
        r = c.getresponse(); r.read()
        assert r.status == 202, r.status
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(submit, [n // 16] * 16))
PY
t1=$(date +%s.%N)
while :; do
  depth=$(curl -s "http://127.0.0.1:$ADMIN/readyz" | python3 -c 'import sys,json; print(json.load(sys.stdin)["queue_depth"])')
  [ "$depth" = "0" ] && break
  sleep 0.05
done
t2=$(date +%s.%N)
n=$(( TASKS / 16 * 16 ))
python3 -c "print(f'End to end: {$n} tasks submitted in {$t1-$t0:.2f} s; all run (hello guest) and recorded {$t2-$t0:.2f} s after the first submission: {$n/($t2-$t0):.0f} tasks/s')"
} | tee "$out/async.md"
