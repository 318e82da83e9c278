#!/usr/bin/env bash
# Functions in three languages through the gateway: the Rust hello, python-hello
# (componentize-py) and js-hello (componentize-js). For each: the start-up compile, the first
# request after start (cold: the instance's memory is touched for the first time) and the
# steady rate with wrk, a fresh instance per request throughout.
#
#   bash bench/languages.sh          DURATION=5s bash bench/languages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
out=bench/results
mkdir -p "$out"
bench_scratch
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet
W=$PWD/functions/target/wasm32-wasip2/release

now() { date +%s.%N; }
{
echo "One function per language, plain HTTP on loopback, $(nproc) cores; wrk -t1 -c16 -d$DURATION"
echo
echo "| function | component size | start-up (compile + listen) | first request (ms) | steady requests/s | p99 (ms) |"
echo "|---|---|---|---|---|---|"
for f in hello python-hello js-hello; do
  PORT=$(free_port)
  rm -rf "$work/data"
  cat > "$work/w.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
data_dir = "$work/data"
[[function]]
name = "$f"
wasm = "$W/$f.wasm"
[[trigger]]
name = "t"
function = "$f"
path = "/"
TOML
  t0=$(now)
  RUST_LOG=warn ./target/release/wasmgate serve --config "$work/w.toml" >/dev/null 2>&1 &
  pid=$!; pids+=($pid)
  wait_port "$PORT"
  t1=$(now)
  first=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/")
  wrk -t1 -c16 -d"$DURATION" --latency "http://127.0.0.1:$PORT/" > "$work/wrk.txt"
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  size=$(du -h "$W/$f.wasm" | cut -f1)
  printf '| %s | %s | %.1f s | %.1f | %s | %s |\n' "$f" "$size" \
    "$(python3 -c "print($t1 - $t0)")" "$(python3 -c "print($first * 1000)")" "$rps" "$p99"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
} > >(tee "$out/languages.md")
