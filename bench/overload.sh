#!/usr/bin/env bash
# Overload run: a sleeping guest (100 ms) behind max_in_flight = 16, so the node serves about
# 160 requests/s; the open-loop generator offers about 3x that for 30 s. Reports the share of
# 200/429/503, latency of admitted requests and of refusals, and the server's RSS before and
# after, next to an unloaded run of the same guest.
#
#   bash bench/overload.sh            RATE=480 DURATION=30 bash bench/overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
RATE=${RATE:-480}
DURATION=${DURATION:-30}
out=bench/results
mkdir -p "$out"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet --example loadgen
cargo build --release --quiet
PROBE=$PWD/functions/target/wasm32-wasip2/release/probe.wasm
port=$(free_port)
cat > "$work/overload.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[limits]
max_in_flight = 16
[[function]]
name = "sleepy"
wasm = "$PROBE"
memory_mb = 16
max_concurrency = 64
[[trigger]]
name = "s"
function = "sleepy"
path = "/"
TOML
RUST_LOG=warn ./target/release/wasmgate serve --config "$work/overload.toml" >/dev/null 2>"$work/log" &
pid=$!
wait_port "$port"
rss() { awk '/^VmRSS/ {print $2 " kB"}' /proc/$pid/status; }
url="http://127.0.0.1:$port/sleep?ms=100"
{
  echo "## Unloaded: 50 requests/s for 10 s"
  echo
  ./target/release/examples/loadgen "$url" 50 10
  echo
  echo "RSS before overload: $(rss)"
  echo
  echo "## Overload: $RATE requests/s for $DURATION s (capacity about 160/s)"
  echo
  ./target/release/examples/loadgen "$url" "$RATE" "$DURATION"
  echo
  echo "RSS after overload: $(rss); peak (VmHWM): $(awk '/^VmHWM/ {print $2 " kB"}' /proc/$pid/status)"
} > >(tee "$out/overload.md")
