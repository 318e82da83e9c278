#!/usr/bin/env bash
# Event sources under load, all in one run on this machine (loopback):
#
# 1. MQTT, QoS 1: messages per second from `mosquitto_pub` to committed tasks (each message
#    acknowledged to the broker only after its task is in SQLite), with 1 and 64 publishers,
#    and until every task has run (the hello guest). The ceiling is the broker itself: the
#    same publishers into `mosquitto_sub -q 1`, in the same run.
# 2. The event API: 202/s from wrk at 1 and 64 connections (each 202 after one durable task
#    per subscriber), and deliveries per second until every event has run.
#
#   bash bench/sources.sh          MESSAGES=20000 DURATION=5s bash bench/sources.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
MESSAGES=${MESSAGES:-20000}
DURATION=${DURATION:-5s}
out=bench/results
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
bash scripts/install-test-deps.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm

MQTT=$(free_port)
# No cap on the messages queued for a slow QoS 1 subscriber (mosquitto's default, 1000, drops
# the rest): every message published must arrive, at the broker's pace or the gateway's.
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$MQTT" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
wait_port "$MQTT"

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1 / ($3 - $2):.0f}')"; }

# Lines for the publishers: MESSAGES in total, split over N files.
split_lines() { # publishers
  rm -f "$work"/lines.*
  python3 - "$work" "$MESSAGES" "$1" <<'PY'
import sys
work, total, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for p in range(n):
    with open(f"{work}/lines.{p}", "w") as f:
        for i in range(p, total, n):
            f.write(f'{{"reading":{i}}}\n')
PY
}
publish() { # publishers topic
  local p pubs=()
  for p in $(seq 0 $(($1 - 1))); do
    mosquitto_pub -p "$MQTT" -q 1 -t "$2" -l < "$work/lines.$p" &
    pubs+=($!)
  done
  wait "${pubs[@]}"
}

start_gateway() {
  PORT=$(free_port); ADMIN=$(free_port)
  rm -rf "$work/gw"; mkdir -p "$work/gw"
  cat > "$work/gw/w.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
data_dir = "$work/gw/data"
[limits]
max_async_body_bytes = 1024
[queue]
max_tasks = 10000000
[[function]]
name = "hello"
wasm = "$HELLO"
events = ["bench.*"]
[[trigger]]
name = "sensors"
kind = "mqtt"
broker = "mqtt://127.0.0.1:$MQTT"
client_id = "wasmgate-bench-$RANDOM"
qos = 1
topics = ["bench/#"]
function = "hello"
async = { max_retries = 0 }
[[trigger]]
name = "events"
kind = "event"
path = "/events"
async = { max_retries = 0 }
TOML
  RUST_LOG=warn ./target/release/wasmgate serve --config "$work/gw/w.toml" >/dev/null 2>"$work/gw/log" &
  GW=$!
  pids+=($GW)
  wait_port "$PORT"
  for _ in $(seq 1 200); do
    curl -s "http://127.0.0.1:$ADMIN/-/sources" | grep -q '"state":"running"' && return 0
    sleep 0.05
  done
  echo "the MQTT source never ran" >&2; exit 1
}
stop_gateway() { kill "$GW"; wait "$GW" 2>/dev/null || true; }
delivered() { curl -s "http://127.0.0.1:$ADMIN/-/sources" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sources"]["sensors"]["delivered"])'; }
depth() { curl -s "http://127.0.0.1:$ADMIN/readyz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue_depth"] or 0)'; }
wait_until() { # command target
  for _ in $(seq 1 12000); do [ "$($1)" -ge "$2" ] && return 0; sleep 0.01; done
  echo "gave up waiting for $1 >= $2" >&2; exit 1
}
wait_empty() { for _ in $(seq 1 12000); do [ "$(depth)" -eq 0 ] && return 0; sleep 0.01; done; exit 1; }

{
echo "MQTT QoS 1, $MESSAGES messages of ~20 bytes, mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') on loopback, $(nproc) cores"
echo
echo "| publishers | broker only (mosquitto_sub -q 1), msg/s | wasmgate: committed tasks/s | ratio | wasmgate: run to completion, tasks/s |"
echo "|---|---|---|---|---|"
for n in 1 64; do
  split_lines "$n"
  # Ceiling: the broker delivering the same messages to one QoS 1 subscriber.
  mosquitto_sub -p "$MQTT" -q 1 -t "ceiling/#" -C "$MESSAGES" > /dev/null &
  sub=$!
  sleep 0.3
  t0=$(now); publish "$n" "ceiling/x"; wait "$sub"; t1=$(now)
  ceiling=$(rate "$MESSAGES" "$t0" "$t1")
  start_gateway
  t0=$(now); publish "$n" "bench/x"; wait_until delivered "$MESSAGES"; t1=$(now)
  committed=$(rate "$MESSAGES" "$t0" "$t1")
  wait_empty; t2=$(now)
  done_rate=$(rate "$MESSAGES" "$t0" "$t2")
  ratio=$(python3 -c "print(f'{$committed / $ceiling:.2f}')")
  echo "| $n | $ceiling | $committed | $ratio | $done_rate |"
  stop_gateway
done
echo
echo "Event API: wrk -t1 -d$DURATION, POST {\"type\":\"bench.tick\"}, one subscriber (hello)"
echo
echo "| connections | 202/s | p99 (ms) | non-202 | delivered, events/s (202 to run, whole run) |"
echo "|---|---|---|---|---|"
cat > "$work/event.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{\"type\":\"bench.tick\",\"data\":{\"n\":1}}"
wrk.headers["Content-Type"] = "application/json"
LUA
for c in 1 64; do
  start_gateway
  t0=$(now)
  wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/event.lua" "http://127.0.0.1:$PORT/events" > "$work/wrk.txt"
  wait_empty; t1=$(now)
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
  total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
  bad=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
  echo "| $c | $rps | $p99 | ${bad:-0} | $(rate "$total" "$t0" "$t1") |"
  stop_gateway
done
} > >(tee "$out/sources.md")
