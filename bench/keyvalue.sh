#!/usr/bin/env bash
# Key-value buckets under load, in one run on this machine, interleaved rounds, median of rounds:
#
# - SQLite (one node, data_dir): the `hello` guest and the `counter` guest with `op=get-set`
#   (a read-modify-write: one get, then one set of the same key to the number it held plus
#   one, so every set is a real, fsync'd write) at CONNS connections; the ratio get-set/hello
#   is what one read and one group-committed write per request cost. Keys vary: each
#   connection cycles through KEYS keys (k0 .. k999) with a wrk Lua script, so no single hot
#   row is measured; the hello row sends the same requests (it ignores the query) so both
#   rows carry the same Lua and request cost on the wrk side. A row with a new key on every
#   request (the get finds nothing, the set inserts) measures inserts; two more split the
#   cost: the counter guest doing no bucket call (`op=config-all`: the guest's own cost
#   beside hello) and one get only.
# - SQLite `increment` of one key (`op=incr&key=n`) by CLIENTS connections.
# - With [cluster] on a JetStream nats-server (file store): the same get-set (at CONNS, and at
#   CLIENTS connections to match the raw loop) and increment rows through wasmgate, and raw
#   KV puts on that same server (examples/kv_put_load.rs: an async-nats loop with CLIENTS puts
#   in flight, on a bucket made like src/kv/jetstream.rs makes one, keys cycling over KEYS).
#   A get-set request does exactly one put, so its requests/s is the KV writes/s it implies.
#
#   bash bench/keyvalue.sh           # 3 rounds of 6 s per row, 32 / 64 connections
#   ROUNDS=5 DURATION=8s CONNS=32 CLIENTS=64 KEYS=1000 bash bench/keyvalue.sh
#   BASELINE=/path/to/other/wasmgate bash bench/keyvalue.sh   # adds that build's SQLite
#                                                               # get-set row, for A/B runs
#
# Installs what it needs: wrk and nats-server (apt). Prints a markdown table and writes it to
# bench/results/keyvalue.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-32}
CLIENTS=${CLIENTS:-64}
KEYS=${KEYS:-1000}
BASELINE=${BASELINE:-}
out=bench/results
mkdir -p "$out"
bench_scratch

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nats-server >/dev/null || need_apt+=(nats-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet --bin wasmgate --example kv_put_load
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
COUNTER=$PWD/functions/target/wasm32-wasip2/release/counter.wasm
secs=${DURATION%s}

# The JetStream server shared by the cluster node and the raw put loop.
NATS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$work/js" >/dev/null 2>"$work/nats.log" &
pids+=($!)
wait_port "$NATS_PORT"

# node NAME BINARY CLUSTER(true|false): one wasmgate with the hello and counter guests at
# /hello and /counter and one bucket, `bench`, that counter may open. Sets PORT[NAME].
declare -A PORT
node() {
  local name=$1 bin=$2 cluster=$3 port
  port=$(free_port)
  mkdir -p "$work/$name"
  cat > "$work/$name/w.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
data_dir = "$work/$name/data"
[[bucket]]
name = "bench"
[[function]]
name = "hello"
wasm = "$HELLO"
[[function]]
name = "counter"
wasm = "$COUNTER"
keyvalue = ["bench"]
[[trigger]]
name = "hello"
function = "hello"
path = "/hello"
[[trigger]]
name = "counter"
function = "counter"
path = "/counter"
TOML
  if [ "$cluster" = true ]; then printf '[cluster]\nnats = "nats://127.0.0.1:%s"\n' "$NATS_PORT" >> "$work/$name/w.toml"; fi
  "$bin" serve --config "$work/$name/w.toml" >/dev/null 2>"$work/$name/log" &
  pids+=($!)
  PORT[$name]=$port
}
node sqlite ./target/release/wasmgate false
node nats ./target/release/wasmgate true
if [ -n "$BASELINE" ]; then node baseline "$BASELINE" false; fi
for p in "${PORT[@]}"; do wait_port "$p"; done

# The wrk script: `-- cycle N` makes each connection (one thread) cycle through N requests,
# the URL's path with 0 .. N-1 appended (.../?op=get-set&bucket=bench&key=k0 .. k999);
# `-- fresh` appends 1, 2, 3... so that every request names a key not used before (each
# request is then formatted as it is sent: a little more work for wrk than cycling).
cat > "$work/keys.lua" <<'LUA'
local reqs, n, i, fresh = {}, 0, 0, false
function init(args)
  if args[1] == "fresh" then fresh = true; return end
  n = tonumber(args[2])
  for k = 0, n - 1 do reqs[k] = wrk.format("GET", wrk.path .. k) end
end
function request()
  if fresh then
    i = i + 1
    return wrk.format("GET", wrk.path .. i)
  end
  local r = reqs[i]
  i = (i + 1) % n
  return r
end
LUA

GETSET="?op=get-set&bucket=bench&key=k"
declare -A URL=(
  [sqlite-hello]="http://127.0.0.1:${PORT[sqlite]}/hello$GETSET"
  [sqlite-get-set]="http://127.0.0.1:${PORT[sqlite]}/counter$GETSET"
  [sqlite-counter-noop]="http://127.0.0.1:${PORT[sqlite]}/counter?op=config-all&bucket=bench&key=k"
  [sqlite-get]="http://127.0.0.1:${PORT[sqlite]}/counter?op=get&bucket=bench&key=k"
  [sqlite-get-set-new]="http://127.0.0.1:${PORT[sqlite]}/counter?op=get-set&bucket=bench&key=new"
  [sqlite-incr]="http://127.0.0.1:${PORT[sqlite]}/counter?op=incr&bucket=bench&key=n"
  [nats-get-set]="http://127.0.0.1:${PORT[nats]}/counter$GETSET"
  [nats-get-set-c$CLIENTS]="http://127.0.0.1:${PORT[nats]}/counter$GETSET"
  [nats-incr]="http://127.0.0.1:${PORT[nats]}/counter?op=incr&bucket=bench&key=n"
)
# Connections per row (else CONNS) and keys: cycle over KEYS, fresh, or the URL's one key.
declare -A CONN=([sqlite-incr]=$CLIENTS [nats-get-set-c$CLIENTS]=$CLIENTS [nats-incr]=$CLIENTS)
declare -A KEYMODE=([sqlite-incr]=one [nats-incr]=one [sqlite-get-set-new]=fresh)
order=(sqlite-hello sqlite-counter-noop sqlite-get sqlite-get-set sqlite-get-set-new sqlite-incr nats-get-set "nats-get-set-c$CLIENTS" nats-incr kv-put-raw)
if [ -n "$BASELINE" ]; then
  URL[baseline-get-set]="http://127.0.0.1:${PORT[baseline]}/counter$GETSET"
  order=(sqlite-hello sqlite-counter-noop sqlite-get sqlite-get-set baseline-get-set "${order[@]:4}")
fi

# wrk_row NAME ROUND SECONDS: one wrk run of that row into $work/wrk.txt. Fresh keys carry
# the round in their name (new<round>-1, new<round>-2...), so no round reuses a key.
wrk_row() {
  local name=$1 url=${URL[$1]} lua=()
  case ${KEYMODE[$name]:-cycle} in
    cycle) lua=(-s "$work/keys.lua" "$url" -- cycle "$KEYS") ;;
    fresh) lua=(-s "$work/keys.lua" "$url$2-" -- fresh) ;;
    one) lua=("$url") ;;
  esac
  wrk -t1 -c"${CONN[$name]:-$CONNS}" -d"$3" --latency "${lua[@]}" > "$work/wrk.txt"
}

# Warm-up: one checked request per row, then a short run of each row so that every cycled
# key exists before the rounds (the first get of a key finds nothing) and the cluster
# bucket's stream is made.
for name in "${order[@]}"; do
  [ "$name" = kv-put-raw ] && continue
  url=${URL[$name]}
  case ${KEYMODE[$name]:-cycle} in cycle) url=${url}0 ;; fresh) url=${url}0-0 ;; esac
  curl -s -o /dev/null -w "$name warm-up %{http_code}\n" "$url"
  wrk_row "$name" 0 2s
done

raw="$work/raw.txt"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${order[@]}"; do
    if [ "$name" = kv-put-raw ]; then
      line=$(./target/release/examples/kv_put_load "nats://127.0.0.1:$NATS_PORT" "$secs" "$CLIENTS" "$KEYS")
      rps=$(awk '{print $1}' <<< "$line")
      p99="$(awk '{print $4}' <<< "$line")ms"
      non2xx=$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<< "$line")
    else
      wrk_row "$name" "$round" "$DURATION"
      rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
      p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
      non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
    fi
    echo "$name $round $rps $p99 ${non2xx:-0}" | tee -a "$raw"
  done
done

python3 - "$raw" "$ROUNDS" "$DURATION" "$CONNS" "$CLIENTS" "$KEYS" "$(nats-server --version | awk '{print $NF}')" <<'PY' | tee "$out/keyvalue.md"
import sys, statistics, os, platform
raw, rounds, dur, conns, clients, keys, nats = sys.argv[1:]
def ms(s):
    for unit, f in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * f
    return float(s)
rows = {}
for line in open(raw):
    name, _, rps, p99, bad = line.split()
    rows.setdefault(name, []).append((float(rps), ms(p99), int(bad)))
med = {n: (statistics.median(r for r, _, _ in v), statistics.median(p for _, p, _ in v), sum(b for _, _, b in v)) for n, v in rows.items()}
nan = float("nan")
get = lambda n: med.get(n, (nan, nan, 0))[0]
c64 = f"nats-get-set-c{clients}"
what = {
    "sqlite-hello": ("SQLite node", f"hello guest (same requests as get-set)", conns),
    "sqlite-counter-noop": ("SQLite node", "counter op=config-all (no bucket call)", conns),
    "sqlite-get": ("SQLite node", f"counter op=get, {keys} keys (a read only)", conns),
    "sqlite-get-set": ("SQLite node", f"counter op=get-set, {keys} keys (read, then write n+1)", conns),
    "sqlite-get-set-new": ("SQLite node", "counter op=get-set, a new key each request (every set an fsync'd insert)", conns),
    "baseline-get-set": ("SQLite node, BASELINE binary", f"counter op=get-set, {keys} keys (read, then write n+1)", conns),
    "sqlite-incr": ("SQLite node", "counter op=incr, one key", clients),
    "nats-get-set": ("[cluster] node", f"counter op=get-set, {keys} keys", conns),
    c64: ("[cluster] node", f"counter op=get-set, {keys} keys", clients),
    "nats-incr": ("[cluster] node", "counter op=incr, one key", clients),
    "kv-put-raw": ("raw async-nats KV put loop", f"put of `x`, {keys} keys", f"{clients} in flight"),
}
print(f"wrk -t1 -d{dur} --latency, {rounds} interleaved rounds, median of rounds; "
      f"JetStream: nats-server {nats} -js (file store), the same server for the cluster node and the raw loop\n")
print("| row | what | connections | requests/s (= ops/s) | p99 (ms) | non-2xx / failed |")
print("|---|---|---|---|---|---|")
for n, (who, op, c) in what.items():
    if n not in med:
        continue
    r, p, b = med[n]
    print(f"| {n} | {who}: {op} | {c} | {r:,.0f} | {p:.2f} | {b} |")
raw_puts = get("kv-put-raw")
ratios = [
    (f"SQLite get-set, {keys} keys / hello (same node, same connections)", get("sqlite-get-set") / get("sqlite-hello"), 0.7),
    ("SQLite get-set, a new key each request / hello", get("sqlite-get-set-new") / get("sqlite-hello"), 0.7),
    ("counter guest, no bucket call / hello: the guest's own cost", get("sqlite-counter-noop") / get("sqlite-hello"), None),
    ("counter guest, one get / hello", get("sqlite-get") / get("sqlite-hello"), None),
    ("SQLite get-set, this build / BASELINE build", get("sqlite-get-set") / get("baseline-get-set"), None),
    (f"[cluster] get-set writes/s at {clients} connections / raw KV puts/s at {clients} in flight", get(c64) / raw_puts, 0.5),
    (f"[cluster] get-set writes/s at {conns} connections / raw KV puts/s at {clients} in flight", get("nats-get-set") / raw_puts, 0.5),
    (f"hello (no bucket) requests/s / raw KV puts/s: the most HTTP + wasm alone lets the two ratios above reach", get("sqlite-hello") / raw_puts, None),
    (f"[cluster] get-set / SQLite get-set ({conns} connections)", get("nats-get-set") / get("sqlite-get-set"), None),
]
print("\n| ratio | measured | goal | |")
print("|---|---|---|---|")
for name, got, goal in ratios:
    if got != got:
        continue
    if goal is None:
        print(f"| {name} | {got:.2f}x | - | |")
    else:
        print(f"| {name} | {got:.2f}x | >= {goal:.2f}x | {'met' if got >= goal else 'not met'} |")
print(f"\nOne get-set request is one get and one put, so its requests/s is the KV writes/s it implies. "
      f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}; wrk, wasmgate, "
      f"nats-server and the put loop share them.")
PY
