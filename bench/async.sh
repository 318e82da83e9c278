#!/usr/bin/env bash
# Durable async submissions: 202s per second and p99 at 1, 16 and 64 concurrent clients, with
# and without group commit (the same binary, `[queue] group_commit` true/false), every 202
# committed to SQLite with synchronous=FULL first. Tasks are submitted with a one-hour delay so
# the workers do not compete with the measurement; then an end-to-end run measures how fast
# the workers drain tasks through the hello guest.
#
# Ends with the goals table, every figure from this run: async end to end / synchronous rps on
# the same node (goal >= 0.50), and durable 202/s at 64 clients with group commit / without it
# (one fsync per commit; goal >= 4x).
#
#   bash bench/async.sh          DURATION=10s bash bench/async.sh
#   BIN=/path/to/other/wasmgate bash bench/async.sh     # another build (for an A/B)
#   WORKERS=64 bash bench/async.sh      # [queue] workers for every node (default: unset, 16)
#   E2E_ONLY=1 ROUNDS=3 bash bench/async.sh   # only end to end, in interleaved rounds (the goal
#                           # is their median; one run of it moves with the machine by a third)
#   BASELINE=/path/to/other/wasmgate bash bench/async.sh
#                           # also measures that build, interleaved with this one in the same
#                           # run: a build column in the tables and a baseline column in the
#                           # goals table
#   PERF=/tmp/prof bash bench/async.sh   # also records each measured phase with perf (bench/lib.sh
#                           # perf_start); that run's rates are slowed by the recording
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5s}
out=bench/results
mkdir -p "$out"
bench_scratch
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --release --quiet; BIN=./target/release/wasmgate; fi
BASELINE=${BASELINE:-}
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
# The builds measured: this one, and the baseline when BASELINE is set.
declare -A BUILD=([wasmgate]="$BIN")
builds=(wasmgate)
if [ -n "$BASELINE" ]; then BUILD[baseline]=$BASELINE; builds+=(baseline); fi
# With a baseline, each table row starts with the build it measured.
col() { if [ -n "$BASELINE" ]; then printf '| %s ' "$1"; fi; }
FIGURES=$work/figures.tsv
: > "$FIGURES"
declare -A AT64  # build-group_commit -> 202/s at 64 clients

start() { # name group_commit build -> sets PORT and ADMIN
  local name=$1 gc=$2 bin=${BUILD[$3]}
  PORT=$(free_port); ADMIN=$(free_port)
  mkdir -p "$work/$name"
  cat > "$work/$name/w.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
data_dir = "$work/$name/data"
[queue]
group_commit = $gc
${WORKERS:+workers = $WORKERS}
$(hello_tables)
async = { max_retries = 0 }
TOML
  RUST_LOG=warn "$bin" serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
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
if [ -z "${E2E_ONLY:-}" ]; then
echo "Durable submissions (202 after commit), wrk -t1 -d$DURATION, POST with a 1 h delay"
echo
if [ -n "$BASELINE" ]; then
  echo "| build | group commit | clients | 202/s | p99 (ms) | non-202 |"
  echo "|---|---|---|---|---|---|"
else
  echo "| group commit | clients | 202/s | p99 (ms) | non-202 |"
  echo "|---|---|---|---|---|"
fi
for gc in true false; do
  for b in "${builds[@]}"; do
    start "$b-gc-$gc" "$gc" "$b"
    for c in 1 16 64; do
      wrk -t1 -c"$c" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$PORT/" > "$work/wrk.txt"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
      p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
      bad=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
      echo "$(col "$b")| $gc | $c | $rps | $p99 | ${bad:-0} |"
      # For the goals: the 202s alone (wrk's rate counts any response).
      if [ "$c" = 64 ]; then AT64[$b-$gc]=$(wrk_ok_rate "$work/wrk.txt"); fi
    done
    stop_gateway
  done
done
for b in "${builds[@]}"; do
  figure "$b" group-commit "$(python3 -c "print(${AT64[$b-true]} / ${AT64[$b-false]} if ${AT64[$b-false]} else 'nan')")"
done
echo
fi
# End to end: 64 clients submit tasks due now for $DURATION while the workers run them; the
# rate is the tasks accepted over the time until the last one is recorded. The same node's
# synchronous rate on the same guest is the reference (goal: at least half of it).
for round in $(seq 1 "${ROUNDS:-1}"); do
for b in "${builds[@]}"; do
  start "$b-e2e-$round" true "$b"
  wrk -t1 -c64 -d"$DURATION" -s "$work/sync.lua" "http://127.0.0.1:$PORT/" > "$work/sync.txt"
  sync=$(awk '/^Requests\/sec:/ {print $2}' "$work/sync.txt")
  perf_start "async-e2e-$b-$round"
  t0=$(date +%s.%N)
  wrk -t1 -c64 -d"$DURATION" -s "$work/now.lua" "http://127.0.0.1:$PORT/" > "$work/now.txt"
  t1=$(date +%s.%N)
  n=$(awk '/requests in/ {print $1}' "$work/now.txt")
  bad=$(awk '/Non-2xx/ {print $5}' "$work/now.txt")
  while :; do
    depth=$(queue_depth "$ADMIN")
    [ "$depth" = "0" ] && break
    sleep 0.05
  done
  t2=$(date +%s.%N)
  perf_stop
  done_n=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^wasmgate_async_attempts_total\{.*outcome="succeeded"/ {s+=$2} END {print s+0}')
  label=""
  if [ -n "$BASELINE" ]; then label=" ($b)"; fi
  if [ "${ROUNDS:-1}" != 1 ]; then label="$label, round $round"; fi
  python3 - "$n" "${bad:-0}" "$t0" "$t1" "$t2" "$sync" "$done_n" "$label" "$FIGURES" "$b" <<'PY'
import sys
n, bad, t0, t1, t2, sync, done = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:7]), sys.argv[7]
label, figures, build = sys.argv[8:11]
ok = n - bad
e2e = ok / (t2 - t0)
print(f"End to end, 64 clients{label}: {ok} tasks accepted in {t1 - t0:.2f} s ({bad} refused), all run "
      f"(hello guest) and recorded {t2 - t0:.2f} s after the first: {e2e:.0f} tasks/s; "
      f"synchronous on the same node: {sync} rps; ratio {e2e / sync:.2f} (goal >= 0.50); "
      f"attempts succeeded by the metrics: {done}")
with open(figures, "a") as f:
    f.write(f"{build}\te2e\t{e2e / sync}\n")
PY
  stop_gateway
done
done
echo
echo "Goals (every figure from this run)"
echo
goals_table \
  "e2e|async end to end / sync rps on the same node|>=|0.50|x" \
  "group-commit|durable 202/s at 64 clients, group commit / without (one fsync per commit)|>=|4|x"
} > >(tee "$out/async.md")
