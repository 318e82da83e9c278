#!/usr/bin/env bash
# Slow-client benchmark: slowhttptest in slowloris (-H, headers sent slowly) and slow-body
# (-B, a POST body sent slowly) modes with 600 connections against wasmgate, while wrk sends
# normal requests; nginx with the same timeouts is run the same way as the anchor. Reports,
# for each server and attack, the normal requests served (non-error share) and their p99.
#
#   bash bench/slow.sh                 # 20 s per run
#   DURATION=30 CONNS=600 bash bench/slow.sh
#
# Installs what it needs: wrk, nginx-light, slowhttptest (apt). Writes bench/results/slow.md.
# On loopback the attacker and the normal client share 127.0.0.1, so the per-address cap
# (max_connections_per_ip) is lifted here: this measures the deadlines and the slots, not
# the cap (tests/connections.rs covers that).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-20}
CONNS=${CONNS:-600}
out=bench/results
mkdir -p "$out"
bench_scratch

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v slowhttptest >/dev/null || need_apt+=(slowhttptest)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n "$(ulimit -Hn)" || true

bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm

# Both servers: 10 s to send the request head, 10 s between body chunks, 60 s idle.
PORT_wasmgate=$(free_port)
cat > "$work/wasmgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT_wasmgate"
[limits]
header_read_timeout_ms = 10000
body_read_timeout_ms = 10000
idle_timeout_ms = 60000
max_connections_per_ip = 100000
$(hello_tables)
TOML
./target/release/wasmgate serve --config "$work/wasmgate.toml" >/dev/null 2>"$work/wasmgate.log" &
pids+=($!)

PORT_nginx=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 10000; }
http {
  access_log off;
  client_header_timeout 10s;
  client_body_timeout 10s;
  keepalive_timeout 60s;
  server { listen 127.0.0.1:$PORT_nginx; location / { return 200 "hello\n"; } }
}
NGINX
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
pids+=($!)
for p in "$PORT_wasmgate" "$PORT_nginx"; do wait_port "$p"; done

raw="$work/raw.txt"
for server in wasmgate nginx; do
  port_var=PORT_$server
  url="http://127.0.0.1:${!port_var}/"
  for mode in none slowloris slowbody; do
    case $mode in
      none) attack=() ;;
      slowloris) attack=(-H -c "$CONNS" -i 5 -r 300 -t GET -x 24 -p 3 -l "$((DURATION + 5))") ;;
      slowbody) attack=(-B -c "$CONNS" -i 5 -r 300 -s 65536 -t POST -x 16 -p 3 -l "$((DURATION + 5))") ;;
    esac
    apid=""
    if [ ${#attack[@]} -gt 0 ]; then
      slowhttptest "${attack[@]}" -u "$url" >"$work/slow-$server-$mode.txt" 2>&1 &
      apid=$!
      sleep 3  # let the slow connections pile up first
    fi
    wrk -t1 -c16 -d"${DURATION}s" --timeout 5s --latency "$url" > "$work/wrk.txt" || true
    [ -n "$apid" ] && { kill "$apid" 2>/dev/null || true; wait "$apid" 2>/dev/null || true; }
    total=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
    errors=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$work/wrk.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$work/wrk.txt")
    p99=$(awk '$1=="99%" {print $2}' "$work/wrk.txt")
    # The most slow connections slowhttptest held open at once.
    held=$(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$work/slow-$server-$mode.txt" 2>/dev/null \
      | grep -ao 'connected: *[0-9]*' | awk '{print $2}' | sort -n | tail -1 || true)
    echo "$server $mode ${total:-0} ${errors:-0} ${non2xx:-0} ${p99:-n/a} ${held:-0}" | tee -a "$raw"
    sleep 2
  done
done

python3 - "$raw" "$CONNS" "$DURATION" <<'PY' | tee "$out/slow.md"
import sys
raw, conns, dur = sys.argv[1:]
print(f"slowhttptest -c {conns} (slowloris -H, slow body -B) while wrk -t1 -c16 -d{dur}s sends normal requests\n")
print("| server | attack | slow connections held | normal requests | served | errors + non-2xx | p99 |")
print("|---|---|---|---|---|---|---|")
for line in open(raw):
    server, mode, total, errors, non2xx, p99, held = line.split()
    total, bad = int(total), int(errors) + int(non2xx)
    served = 100.0 * (total - int(non2xx)) / max(total + int(errors), 1)
    print(f"| {server} | {mode} | {held} | {total:,} | {served:.1f}% | {bad} | {p99} |")
PY
