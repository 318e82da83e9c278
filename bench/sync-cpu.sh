#!/usr/bin/env bash
# The sync path's cost against the bare engine host, as CPU time per request: wasmgate (plain
# HTTP, anonymous trigger, hello guest) beside examples/floor.rs on the same component, in
# interleaved rounds of one wrk run each (-t1 -c32), CPU read from /proc (user + system, all
# threads; user and system apart too) and context switches from /proc/<pid>/task/*/status. Wall-clock rates swing by a
# third between runs on a shared 2-core machine; the median CPU per request moves far less.
#
#   bash bench/sync-cpu.sh
#   BASELINE=/path/to/other/wasmgate ROUNDS=8 bash bench/sync-cpu.sh
#   VARIANTS="floor-static:STATIC=1:floor wasmgate-quiet:RUST_LOG=warn:wasmgate" bash bench/sync-cpu.sh
#   VARIANTS="wasmgate::wasmgate traced:SAMPLE=1.0:wasmgate traced-1pct:SAMPLE=0.01:wasmgate" bash bench/sync-cpu.sh
#   VARIANTS="floor:TOKIO_WORKER_THREADS=1:floor wasmgate:TOKIO_WORKER_THREADS=1:wasmgate" bash bench/sync-cpu.sh
#       # one worker each: each node bound by its own core, nothing shared between workers
#
# A variant is name:ENV=V,ENV2=V2:floor|wasmgate|/path/to/binary. The floor's knobs are in
# examples/floor.rs (GWENGINE=1: the gateway's own engine settings; STATIC=1: no guest at all).
# SAMPLE=r is the script's own: that node gets `[tracing]` with `sample_ratio = r`, exporting
# to an nginx collector (`return 200` on every path) the script starts.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-3}
bench_scratch
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet --bin wasmgate --example floor
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
tick=$(getconf CLK_TCK)

VARIANTS=${VARIANTS:-"floor::floor wasmgate::wasmgate"}
[ -n "${BASELINE:-}" ] && VARIANTS="$VARIANTS baseline::$BASELINE"

collector=""
declare -A PID URL
for v in $VARIANTS; do
  name=${v%%:*}; rest=${v#*:}; envs=${rest%%:*}; bin=${rest#*:}
  port=$(free_port)
  read -r -a env_list <<< "${envs//,/ }"
  sample=""
  for e in "${env_list[@]}"; do [ "${e%%=*}" = SAMPLE ] && sample=${e#SAMPLE=}; done
  if [ "$bin" = floor ]; then
    env KEEP_MEM=16777216 KEEP_TABLE=1048576 NOCOW=1 PAGEMAP=1 "${env_list[@]}" \
      ./target/release/examples/floor "$HELLO" "127.0.0.1:$port" 2>/dev/null &
  else
    [ "$bin" = wasmgate ] && bin=./target/release/wasmgate
    mkdir -p "$work/$name"
    hello_config "$port" "$work/$name/data" > "$work/$name/w.toml"
    if [ -n "$sample" ]; then
      [ -n "$collector" ] || start_collector
      printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\n' "$collector" "$sample" >> "$work/$name/w.toml"
    fi
    env "${env_list[@]}" "$bin" serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
  fi
  PID[$name]=$!
  pids+=($!)
  URL[$name]="http://127.0.0.1:$port/"
  wait_port "$port"
done

cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
raw="$work/raw.txt"
for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    name=${v%%:*}; pid=${PID[$name]}; url=${URL[$name]}
    wrk -t1 -c32 -d1s "$url" >/dev/null
    read -r u0 k0 < <(cpu "$pid"); s0=$(switches "$pid")
    n=$(wrk -t1 -c32 -d"${DURATION}s" "$url" | awk '/requests in/ {print $1}')
    read -r u1 k1 < <(cpu "$pid"); s1=$(switches "$pid")
    echo "$name $n $((u1 - u0)) $((k1 - k0)) $((s1 - s0))" | tee -a "$raw"
  done
done

python3 - "$raw" "$tick" "$DURATION" <<'PY'
import statistics as st, sys
raw, tick, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = {}
for line in open(raw):
    name, n, user, system, sw = line.split()
    n = int(n)
    us = lambda ticks: int(ticks) / tick / n * 1e6
    rows.setdefault(name, []).append((n / duration, us(user) + us(system), int(sw) / n, us(user), us(system)))
print()
print("| server | requests/s (median) | CPU µs per request (median) | (min) | user µs | system µs | context switches per request |")
print("|---|---|---|---|---|---|---|")
for name, r in rows.items():
    print(f"| {name} | {st.median(x[0] for x in r):,.0f} | {st.median(x[1] for x in r):.1f} | {min(x[1] for x in r):.1f} | {st.median(x[3] for x in r):.1f} | {st.median(x[4] for x in r):.1f} | {st.median(x[2] for x in r):.2f} |")
# Paired by round: each round runs every variant back to back, so a round's ratio to the first
# variant leaves out most of the machine's drift between rounds.
names = list(rows)
if len(names) > 1:
    first = names[0]
    print()
    print(f"| server | requests/s vs {first} (median of rounds) | CPU per request vs {first} |")
    print("|---|---|---|")
    for name in names[1:]:
        pairs = list(zip(rows[first], rows[name]))
        print(f"| {name} | {st.median(b[0] / a[0] for a, b in pairs):.3f}x | {st.median(b[1] / a[1] for a, b in pairs):.3f}x |")
if "floor" in rows:
    floor = st.median(x[1] for x in rows["floor"])
    print()
    for name, r in rows.items():
        if name != "floor":
            print(f"{name}: {st.median(x[1] for x in r) - floor:+.1f} µs per request over the floor")
PY
