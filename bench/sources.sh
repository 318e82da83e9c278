#!/usr/bin/env bash
# Event sources under load, all in one run on this machine (loopback):
#
# 1. MQTT, QoS 1: messages per second from `mosquitto_pub` to committed tasks (each message
#    acknowledged to the broker only after its task is in SQLite), with 1 and 64 publishers,
#    and until every task has run (the hello guest). The ceiling is the broker itself: the
#    same publishers into `mosquitto_sub -q 1`, in the same run.
# 2. NATS (core): messages per second from one publisher to committed tasks, and until
#    every task has run; the ceiling is the server delivering them to one subscriber
#    (examples/natspub.rs). Reported, not a goal.
# 3. The event API: 202/s from wrk at 1 and 64 connections (each 202 after one durable task
#    per subscriber), and deliveries per second until every event has run.
# 4. The references on the same gateway config, each on a freshly started gateway: plain HTTP
#    requests/s on the hello function (trigger /hello, wrk -t1 -c64, POST "x"), and async
#    submissions due now on it (trigger /async, `X-Fc-Invocation-Type: Async`, 202/s at 64
#    connections; the queue is then drained before the gateway stops).
#
# Ends with the goals table, every figure from this run: MQTT committed tasks/s / the broker
# alone (1 and 64 publishers, goal >= 0.80), MQTT run to completion / sync rps (1 and 64
# publishers, goal >= 0.50), event API 202/s / async 202/s at 64 connections (goal >= 1.0)
# and the event API's p99 at 64 connections (goal <= 40 ms).
#
#   bash bench/sources.sh          MESSAGES=20000 DURATION=5s bash bench/sources.sh
#   BIN=/path/to/other/wasmgate bash bench/sources.sh     # another build instead of this tree's
#   BASELINE=/path/to/other/wasmgate bash bench/sources.sh
#                           # also measures that build, interleaved with this one in the same
#                           # run (against the same broker ceiling): a build column in the
#                           # tables and a baseline column in the goals table
#   MQTT_INFLIGHT=1000 bash bench/sources.sh   # the broker's QoS 1 window per client (default 20)
#   PERF=/tmp/prof bash bench/sources.sh   # also records each measured phase with perf (bench/lib.sh
#                           # perf_start); that run's rates are slowed by the recording
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
MESSAGES=${MESSAGES:-20000}
DURATION=${DURATION:-5s}
out=bench/results
mkdir -p "$out"
bench_scratch
bash scripts/install-test-deps.sh
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet; BIN=./target/release/wasmgate; fi
cargo build --release --quiet --example natspub
NATSPUB=./target/release/examples/natspub
BASELINE=${BASELINE:-}
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
# The builds measured: this one, and the baseline when BASELINE is set.
declare -A BUILD=([wasmgate]="$BIN")
builds=(wasmgate)
if [ -n "$BASELINE" ]; then BUILD[baseline]=$BASELINE; builds+=(baseline); fi
# With a baseline, each table row starts with the build it measured.
col() { if [ -n "$BASELINE" ]; then printf '| %s ' "$1"; fi; }
hdr() { # the header of a table (its columns after the build's), with its separator line
  local h="| $1 |"
  if [ -n "$BASELINE" ]; then h="| build $h"; fi
  echo "$h"
  echo "|$(printf -- '---|%.0s' $(seq 1 $(($(tr -cd '|' <<< "$h" | wc -c) - 1))))"
}
FIGURES=$work/figures.tsv
: > "$FIGURES"
div() { python3 -c "print(f'{$1 / $2:.2f}' if $2 else 'nan')"; }

MQTT=$(free_port)
# No cap on the messages queued for a slow QoS 1 subscriber (mosquitto's default, 1000, drops
# the rest): every message published must arrive, at the broker's pace or the gateway's.
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n' "$MQTT" > "$work/mosquitto.conf"
# The broker's window of QoS 1 messages sent to a client and not yet acknowledged
# (mosquitto's max_inflight_messages, 20 unless MQTT_INFLIGHT is set): a subscriber that
# acknowledges only after a commit gets at most this many a commit.
if [ -n "${MQTT_INFLIGHT:-}" ]; then echo "max_inflight_messages $MQTT_INFLIGHT" >> "$work/mosquitto.conf"; fi
mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
pids+=($!)
wait_port "$MQTT"
NATS=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS" >/dev/null 2>&1 &
pids+=($!)
wait_port "$NATS"

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

start_gateway() { # build
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
name = "bench-nats"
kind = "nats"
broker = "nats://127.0.0.1:$NATS"
topics = ["natsbench.>"]
function = "hello"
async = { max_retries = 0 }
[[trigger]]
name = "events"
kind = "event"
path = "/events"
async = { max_retries = 0 }
[[trigger]]
name = "hello"
function = "hello"
path = "/hello"
[[trigger]]
name = "async"
function = "hello"
path = "/async"
async = { max_retries = 0 }
TOML
  RUST_LOG=warn "${BUILD[$1]}" serve --config "$work/gw/w.toml" >/dev/null 2>"$work/gw/log" &
  GW=$!
  pids+=($GW)
  wait_port "$PORT"
  for _ in $(seq 1 200); do
    # Both broker triggers (MQTT and NATS) subscribed.
    [ "$(curl -s "http://127.0.0.1:$ADMIN/-/sources" | grep -o '"state":"running"' | wc -l)" -ge 2 ] && return 0
    sleep 0.05
  done
  echo "the MQTT and NATS sources never both ran" >&2; exit 1
}
stop_gateway() { kill "$GW"; wait "$GW" 2>/dev/null || true; }
# Polled every 10 ms during a measurement: curl and grep only (see queue_depth in bench/lib.sh).
delivered() { # trigger (default: the MQTT one)
  curl -s "http://127.0.0.1:$ADMIN/-/sources" | grep -o "\"${1:-sensors}\":{[^}]*" | grep -o '"delivered":[0-9]*' | cut -d: -f2
}
nats_delivered() { delivered bench-nats; }
depth() { queue_depth "$ADMIN"; }
wait_until() { # command target
  for _ in $(seq 1 12000); do [ "$($1)" -ge "$2" ] && return 0; sleep 0.01; done
  echo "gave up waiting for $1 >= $2" >&2; exit 1
}
wait_empty() { for _ in $(seq 1 12000); do [ "$(depth)" -eq 0 ] && return 0; sleep 0.01; done; exit 1; }

{
echo "MQTT QoS 1, $MESSAGES messages of ~20 bytes, mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') on loopback, $(nproc) cores"
echo
hdr "publishers | broker only (mosquitto_sub -q 1), msg/s | wasmgate: committed tasks/s | ratio | wasmgate: run to completion, tasks/s"
declare -A DONE  # build-publishers -> run to completion, tasks/s (for the goals, against sync rps)
for n in 1 64; do
  split_lines "$n"
  # Ceiling: the broker delivering the same messages to one QoS 1 subscriber (once, for every
  # build measured).
  mosquitto_sub -p "$MQTT" -q 1 -t "ceiling/#" -C "$MESSAGES" > /dev/null &
  sub=$!
  sleep 0.3
  t0=$(now); publish "$n" "ceiling/x"; wait "$sub"; t1=$(now)
  ceiling=$(rate "$MESSAGES" "$t0" "$t1")
  for b in "${builds[@]}"; do
    start_gateway "$b"
    perf_start "mqtt-$n-$b"
    t0=$(now); publish "$n" "bench/x"; wait_until delivered "$MESSAGES"; t1=$(now)
    committed=$(rate "$MESSAGES" "$t0" "$t1")
    wait_empty; t2=$(now)
    perf_stop
    done_rate=$(rate "$MESSAGES" "$t0" "$t2")
    ratio=$(div "$committed" "$ceiling")
    echo "$(col "$b")| $n | $ceiling | $committed | $ratio | $done_rate |"
    figure "$b" "mqtt-$n" "$ratio"
    DONE[$b-$n]=$done_rate
    stop_gateway
  done
done
echo
echo "NATS (core), $MESSAGES messages of ~20 bytes from one publisher, nats-server $(nats-server --version | awk '{print $2}') on loopback"
echo
hdr "server only (one subscriber), msg/s | wasmgate: committed tasks/s | ratio | wasmgate: run to completion, tasks/s"
"$NATSPUB" sub "nats://127.0.0.1:$NATS" ceiling.x "$MESSAGES" > "$work/natssub.txt" &
sub=$!
for _ in $(seq 1 200); do grep -q ready "$work/natssub.txt" && break; sleep 0.05; done
t0=$(now); "$NATSPUB" pub "nats://127.0.0.1:$NATS" ceiling.x "$MESSAGES"; wait "$sub"; t1=$(now)
ceiling=$(rate "$MESSAGES" "$t0" "$t1")
for b in "${builds[@]}"; do
  start_gateway "$b"
  perf_start "nats-$b"
  t0=$(now); "$NATSPUB" pub "nats://127.0.0.1:$NATS" natsbench.x "$MESSAGES"; wait_until nats_delivered "$MESSAGES"; t1=$(now)
  committed=$(rate "$MESSAGES" "$t0" "$t1")
  wait_empty; t2=$(now)
  perf_stop
  echo "$(col "$b")| $ceiling | $committed | $(div "$committed" "$ceiling") | $(rate "$MESSAGES" "$t0" "$t2") |"
  stop_gateway
done
echo
echo "Event API: wrk -t1 -d$DURATION, POST {\"type\":\"bench.tick\"}, one subscriber (hello)"
echo
hdr "connections | 202/s | p99 (ms) | non-202 | delivered, events/s (202 to run, whole run)"
cat > "$work/event.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "{\"type\":\"bench.tick\",\"data\":{\"n\":1}}"
wrk.headers["Content-Type"] = "application/json"
LUA
declare -A EVENT64  # build -> the event API's 202/s at 64 connections
for c in 1 64; do
  for b in "${builds[@]}"; do
    start_gateway "$b"
    perf_start "event-$c-$b"
    t0=$(now)
    wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/event.lua" "http://127.0.0.1:$PORT/events" > "$work/wrk.txt"
    perf_stop
    wait_empty; t1=$(now)
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
    total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
    bad=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
    echo "$(col "$b")| $c | $rps | $p99 | ${bad:-0} | $(rate "$total" "$t0" "$t1") |"
    if [ "$c" = 64 ]; then
      EVENT64[$b]=$(wrk_ok_rate "$work/wrk.txt")
      figure "$b" event-p99 "$(wrk_ms "$p99")"
    fi
    stop_gateway
  done
done
echo
# The references of the goals, on the same config: the hello function called synchronously,
# and submitted as async tasks due now (the 202s the event API is compared with).
echo "HTTP triggers on hello, same config, a fresh gateway each: wrk -t1 -c64 -d$DURATION --latency, POST \"x\""
echo
hdr "trigger | requests/s (2xx) | p99 (ms) | non-2xx"
cat > "$work/sync.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
LUA
cat > "$work/now.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "x"
wrk.headers["X-Fc-Invocation-Type"] = "Async"
LUA
for t in sync async; do
  for b in "${builds[@]}"; do
    start_gateway "$b"
    if [ "$t" = sync ]; then path=/hello script=sync.lua; else path=/async script=now.lua; fi
    perf_start "reference-$t-$b"
    wrk -t1 -c64 -d"$DURATION" --latency -s "$work/$script" "http://127.0.0.1:$PORT$path" > "$work/wrk.txt"
    perf_stop
    if [ "$t" = async ]; then wait_empty; fi
    ok=$(wrk_ok_rate "$work/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
    bad=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
    if [ "$t" = sync ]; then label="$path (sync)"; else label="$path (async, due now; 202/s)"; fi
    echo "$(col "$b")| $label | $ok | $p99 | ${bad:-0} |"
    if [ "$t" = sync ]; then
      for n in 1 64; do figure "$b" "done-$n" "$(div "${DONE[$b-$n]}" "$ok")"; done
    else
      figure "$b" event-vs-async "$(div "${EVENT64[$b]}" "$ok")"
    fi
    stop_gateway
  done
done
echo
echo "Goals (every figure from this run)"
echo
goals_table \
  "mqtt-1|MQTT QoS 1 committed tasks/s / broker alone, 1 publisher|>=|0.80|x" \
  "mqtt-64|MQTT QoS 1 committed tasks/s / broker alone, 64 publishers|>=|0.80|x" \
  "done-1|MQTT run to completion / sync rps, 1 publisher|>=|0.50|x" \
  "done-64|MQTT run to completion / sync rps, 64 publishers|>=|0.50|x" \
  "event-vs-async|event API 202/s / async 202/s, 64 connections|>=|1.0|x" \
  "event-p99|event API p99, 64 connections|<=|40|ms"
} > >(tee "$out/sources.md")
