#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: deterministic where wall-clock
# and CPU time on a shared 2-core VM move by a third between runs (and where `perf stat`
# has no instruction counters). One node at a time, plain HTTP, hello guest, one keep-alive
# client (curl): 300 requests to warm up, counters zeroed, then N requests counted. Every
# thread of the node is counted (the exporter's and the log writer's too). Cache misses and
# waits are not in it: use it to compare code, bench/sync-cpu.sh for time. Work done per
# timer tick (the exporter every 200 ms, the log writer every 10 ms) is spread over however
# many requests valgrind's pace fits in a tick: run it on an otherwise idle machine (a busy
# one moved the traced count by 2%).
#
#   bash bench/instructions.sh                    # off, tracing at 1.0 and 0.01
#   VARIANTS="floor plain" bash bench/instructions.sh   # the gateway's own work: plain - floor
#   N=2000 VARIANTS="plain" bash bench/instructions.sh
#   BIN=/path/to/other/wasmgate bash bench/instructions.sh
#   KEEP=/tmp/cg bash bench/instructions.sh       # keep the callgrind dumps (callgrind_annotate)
#
# Variants: plain (no [tracing]), traced (sample_ratio 1.0), traced-1pct (0.01); the traced
# nodes export to an nginx collector (`return 200`) the script starts. The exporter's column
# is its periodic work (one export each 200 ms) spread over the requests valgrind's pace
# fits in that time; "the rest" is what a request costs at any rate. `floor` is the bare
# engine host (examples/floor.rs, with load.sh's settings and a pool of 4 slots): plain minus
# floor is what the gateway itself costs a request. Under valgrind the
# node runs with max_in_flight = 4 (the pooling allocator's reservation must fit).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
N=${N:-1000}
VARIANTS=${VARIANTS:-"plain traced traced-1pct"}
bench_scratch
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
bash scripts/build-functions.sh >/dev/null
[ -n "${BIN:-}" ] || { cargo build --release --quiet --bin wasmgate; BIN=./target/release/wasmgate; }
case " $VARIANTS " in *" floor "*) cargo build --release --quiet --example floor ;; esac
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm

start_collector

printf '| node | instructions per request | of which the exporter | the rest |\n|---|---|---|---|\n' > "$work/table"
for v in $VARIANTS; do
  port=$(free_port)
  hello_config "$port" "$work/$v-data" > "$work/$v.toml"
  printf '[limits]\nmax_in_flight = 4\n' >> "$work/$v.toml"
  case $v in
    traced) ratio=1.0 ;;
    traced-1pct) ratio=0.01 ;;
    *) ratio= ;;
  esac
  [ -z "$ratio" ] || printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\n' "$collector" "$ratio" >> "$work/$v.toml"
  if [ "$v" = floor ]; then
    KEEP_MEM=16777216 KEEP_TABLE=1048576 NOCOW=1 PAGEMAP=1 POOL=4 \
      valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$work/cg.$v.%p" \
      ./target/release/examples/floor "$HELLO" "127.0.0.1:$port" >/dev/null 2>"$work/$v.log" &
  else
    valgrind --tool=callgrind --smc-check=all-non-file --callgrind-out-file="$work/cg.$v.%p" \
      "$BIN" serve --config "$work/$v.toml" >/dev/null 2>"$work/$v.log" &
  fi
  vp=$!
  for _ in $(seq 1 240); do curl -s -m 5 -o /dev/null "http://127.0.0.1:$port/" && break; sleep 1; done
  curl -s -o /dev/null "http://127.0.0.1:$port/?warm=[1-300]"
  callgrind_control -z "$vp" >/dev/null
  curl -s -o /dev/null "http://127.0.0.1:$port/?n=[1-$N]"
  callgrind_control -d "$vp" >/dev/null
  kill "$vp"; wait "$vp" 2>/dev/null || true
  dump=$(ls -t "$work"/cg."$v".*.1 | head -1)
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind.$v"; }
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  # The exporter's work (its task and its HTTP client's connection, inclusive) is periodic:
  # one request each 200 ms, whatever the rate. At valgrind's pace (a few hundred requests a
  # second) that is a share of each request that a node at full rate spreads over thousands.
  export_ir=$(callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
    awk '/wasmgate::trace::Exporter::run::\{\{closure\}\} \[/ ||
         /UpgradeableConnection<I,B> as core::future::future::Future>::poll \[/ {
           gsub(",", "", $1); s += $1 } END { print s + 0 }')
  echo "$v: $ir instructions over $N requests ($export_ir in the exporter)"
  printf '| %s | %s | %s | %s |\n' "$v" "$((ir / N))" "$((export_ir / N))" "$(((ir - export_ir) / N))" >> "$work/table"
done
echo
cat "$work/table"
