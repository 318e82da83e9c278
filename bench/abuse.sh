#!/usr/bin/env bash
# Protocol-abuse benchmark: two floods against wasmgate with its default limits, and against
# nginx with comparable timeouts as the anchor, while a normal client measures what it gets.
#
#   zero-window  HTTP/2 by prior knowledge (h2c), SETTINGS_INITIAL_WINDOW_SIZE = 0, STREAMS
#                GETs per connection (/nope and /hello), never a WINDOW_UPDATE: no response
#                body can be sent. SETTINGS and PING are acknowledged; reconnects when closed.
#   trickle      HTTP/1.1 POST heads with Content-Length 1000000, then one byte every INTERVAL
#                seconds; reconnects when closed.
#
# Each flood opens CONNS connections from each of 40 source addresses, 127.0.0.2-127.0.0.41
# (by default 40 x 256 = 10240, max_connections_per_ip from each, slightly more than
# max_connections). The normal client runs from 127.0.0.100: CLIENT_CONC HTTP/1.1 keep-alive
# connections, RATE requests per second in all, GET /hello, a fresh connection every
# REQS_PER_CONN requests (0: only when the server closes one); it starts RAMP seconds after the
# flood, runs DURATION seconds, and also runs once with no flood for the unloaded p99.
#
#   bash bench/abuse.sh                       # 20 s per run, about 3 minutes in all
#   DURATION=30 CONNS=128 REQS_PER_CONN=20 bash bench/abuse.sh
#   SERVERS=wasmgate FLOODS=zerowindow DURATION=60 bash bench/abuse.sh   # a part of it
#   FLOOD_NICE=19 bash bench/abuse.sh         # the flood's processes at the lowest CPU priority
#   FLOOD_NICE=19 FLOOD_CPUS=1 bash bench/abuse.sh   # ... and held to CPU 1
#   FLOOD_SCHED=idle bash bench/abuse.sh      # the flood under SCHED_IDLE (chrt --idle)
#   CLIENT=rust bash bench/abuse.sh           # the normal client compiled (examples/abuse_client.rs)
#   ROUNDS=3 SERVERS=wasmgate bash bench/abuse.sh   # unloaded, then each flood, three times over
#
# ROUNDS (default 1): each round runs the unloaded client and then every flood. A p99 of a
# few thousand requests under a millisecond moves by half between runs on a shared machine, so
# with more rounds the table gives the median of each round's p99 and of each round's ratio to
# that round's unloaded p99, with every round's ratio beside it.
#
# CLIENT (default python): the normal client. python is bench/abuse/abuse.py client; rust is
# examples/abuse_client.rs, the same schedule and the same JSON, compiled: its latencies do not
# carry an interpreter's own scheduling delays on a machine whose two cores the flood shares.
#
# FLOOD_NICE (default 0): the flood's Python clients share the machine's two cores with the
# server and the normal client; a real flood comes from other machines. With FLOOD_NICE=19
# they get only what the server and the client leave, which isolates what the server's own
# handling of the flood costs the client from what the attacker's CPU costs it; FLOOD_CPUS
# (a taskset list) also keeps them off the other cores. FLOOD_SCHED=idle runs them under
# SCHED_IDLE, below every nice level: they run only on a core nothing else wants, the nearest
# this machine comes to an attacker on machines of its own (the kernel's work for their
# packets and connections still lands on the shared cores).
#
# Installs what it needs: nginx-light (apt). The floods and the client are bench/abuse/abuse.py
# (Python 3 standard library; raw HTTP/2 frames). Writes bench/results/abuse.md, and the
# gateway's log to bench/results/abuse-wasmgate.log.
#
# wasmgate runs with no [limits] table: every limit at its default (send_timeout_ms 30000,
# request_timeout_ms 60000, idle_timeout_ms 60000, max_connections_per_ip 256,
# max_connections 10000). nginx: one worker with worker_connections 10000, send_timeout 30s,
# client_header_timeout and client_body_timeout 10s, keepalive_timeout 60s. nginx 1.22 serves
# h2c on a port of its own (`listen ... http2` takes HTTP/2 only), so the zero-window flood
# goes to that port and the normal client to its HTTP/1.1 port: one worker, one connection
# pool. The trickled POSTs go to a location that proxies, so nginx reads the body as a proxy
# in front of a function would (a `return` would answer at once and discard it).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-20}
CONNS=${CONNS:-256}
STREAMS=${STREAMS:-4}
INTERVAL=${INTERVAL:-5}
RAMP=${RAMP:-5}
CLIENT_CONC=${CLIENT_CONC:-8}
RATE=${RATE:-200}
REQS_PER_CONN=${REQS_PER_CONN:-0}
ROUNDS=${ROUNDS:-1}
SERVERS=${SERVERS:-wasmgate nginx}
FLOODS=${FLOODS:-zerowindow trickle}
export FLOOD_NICE=${FLOOD_NICE:-0}
export FLOOD_CPUS=${FLOOD_CPUS:-}
export FLOOD_SCHED=${FLOOD_SCHED:-}
export CLIENT=${CLIENT:-python}
SOURCES=127.0.0.2-127.0.0.41
CLIENT_SOURCE=127.0.0.100
out=bench/results
mkdir -p "$out"
bench_scratch

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
ulimit -n "$(ulimit -Hn)" || true
if [ "$(ulimit -n)" -lt $((40 * CONNS + 1000)) ]; then
  echo "open files limit $(ulimit -n) is below what $((40 * CONNS)) flood connections need" >&2
  exit 1
fi

bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet --bin wasmgate --example abuse_client
HELLO=$PWD/functions/target/wasm32-wasip2/release/hello.wasm
ABUSE=(python3 bench/abuse/abuse.py)
FLOOD=(nice -n "$FLOOD_NICE" python3 bench/abuse/abuse.py)
if [ "$FLOOD_SCHED" = idle ]; then
  FLOOD=(chrt --idle 0 "${FLOOD[@]}")
fi
if [ -n "$FLOOD_CPUS" ]; then
  FLOOD=(taskset -c "$FLOOD_CPUS" "${FLOOD[@]}")
fi

PORT_wasmgate=$(free_port)
cat > "$work/wasmgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT_wasmgate"
data_dir = "$work/data"
$(hello_tables /hello)
TOML
RUST_LOG=${RUST_LOG:-info} ./target/release/wasmgate serve --config "$work/wasmgate.toml" \
  >/dev/null 2>"$out/abuse-wasmgate.log" &
pids+=($!)
H2PORT_wasmgate=$PORT_wasmgate    # h2c by prior knowledge on the same port
POST_wasmgate=/hello

PORT_nginx=$(free_port)
H2PORT_nginx=$(free_port)
BACKEND_nginx=$(free_port)
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 10000; }
http {
  access_log off;
  client_header_timeout 10s;
  client_body_timeout 10s;
  send_timeout 30s;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:$PORT_nginx;
    location = /hello { return 200 "hello from nginx\n"; }
    location = /upload { proxy_pass http://127.0.0.1:$BACKEND_nginx/hello; }
    location / { return 404 "not found\n"; }
  }
  server {
    listen 127.0.0.1:$H2PORT_nginx http2;
    location = /hello { return 200 "hello from nginx\n"; }
    location / { return 404 "not found\n"; }
  }
  server { listen 127.0.0.1:$BACKEND_nginx; location / { return 200 "hello from nginx\n"; } }
}
NGINX
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon off;' 2>>"$work/nginx-error.log" &
pids+=($!)
POST_nginx=/upload
for p in "$PORT_wasmgate" "$PORT_nginx" "$H2PORT_nginx"; do wait_port "$p"; done

raw="$work/raw.txt"
for round in $(seq "$ROUNDS"); do
for server in $SERVERS; do
  port_var=PORT_$server h2_var=H2PORT_$server post_var=POST_$server
  for mode in none $FLOODS; do
    fpid=""
    case $mode in
      zerowindow)
        "${FLOOD[@]}" zerowindow --port "${!h2_var}" --sources "$SOURCES" --conns "$CONNS" \
          --streams "$STREAMS" --ramp 3 --duration "$((RAMP + DURATION + 1))" \
          >"$work/flood.json" 2>"$work/flood.err" &
        fpid=$! ;;
      trickle)
        "${FLOOD[@]}" trickle --port "${!port_var}" --path "${!post_var}" --sources "$SOURCES" \
          --conns "$CONNS" --interval "$INTERVAL" --ramp 3 --duration "$((RAMP + DURATION + 1))" \
          >"$work/flood.json" 2>"$work/flood.err" &
        fpid=$! ;;
    esac
    if [ -n "$fpid" ]; then
      pids+=("$fpid")
      sleep "$RAMP"  # let the flood's connections pile up first
    else
      echo '{}' > "$work/flood.json"
    fi
    if [ "$CLIENT" = rust ]; then
      ./target/release/examples/abuse_client "${!port_var}" "$CLIENT_SOURCE" /hello \
        "$CLIENT_CONC" "$RATE" "$DURATION" > "$work/client.json"
    else
      "${ABUSE[@]}" client --port "${!port_var}" --source "$CLIENT_SOURCE" --path /hello \
        --concurrency "$CLIENT_CONC" --rate "$RATE" --reqs-per-conn "$REQS_PER_CONN" \
        --duration "$DURATION" > "$work/client.json"
    fi
    [ -n "$fpid" ] && { wait "$fpid" || true; }
    echo "$server $mode $round $(tr -d ' ' < "$work/client.json") $(tr -d ' ' < "$work/flood.json")" | tee -a "$raw"
    sleep 3  # the flood's sockets are closed; let the server let go of them
  done
done
done
grep -c 'worker_connections are not enough' "$work/nginx-error.log" > "$work/nginx-full.txt" || true

python3 - "$raw" "$CONNS" "$DURATION" "$STREAMS" "$INTERVAL" "$CLIENT_CONC" "$RATE" "$REQS_PER_CONN" \
  "$(cat "$work/nginx-full.txt")" <<'PY' | tee "$out/abuse.md"
import json, os, statistics, sys
raw, conns, dur, streams, interval, conc, rate, rpc, nginx_full = sys.argv[1:]
rows = []
for line in open(raw):
    server, mode, rnd, client, flood = line.split(" ", 4)
    rows.append((server, mode, int(rnd), json.loads(client), json.loads(flood)))
rounds = max(r[2] for r in rows)
env = os.environ
print(f"Floods from 127.0.0.2-127.0.0.41, {conns} connections from each ({40 * int(conns)}): "
      f"zero-window = h2c, INITIAL_WINDOW_SIZE 0, {streams} GETs per connection; trickle = POST "
      f"with Content-Length 1000000, one byte every {interval} s. Normal client from 127.0.0.100: "
      f"GET /hello over {conc} HTTP/1.1 keep-alive connections, {rate} requests/s, {dur} s per run"
      + (f", a new connection every {rpc} requests" if rpc != "0" else "")
      + ". p99 over the 2xx answers; a request that fails or takes over 5 s is not a success."
      + f" The normal client is the {env.get('CLIENT', 'python')} one."
      + f" The flood's processes run at nice {env.get('FLOOD_NICE', '0')}"
      + (f", on CPUs {env['FLOOD_CPUS']}" if env.get('FLOOD_CPUS') else "")
      + (", under SCHED_IDLE" if env.get('FLOOD_SCHED') == "idle" else "")
      + "."
      + (f" {rounds} rounds: p99 and ratio are the medians over the rounds, each round's ratio "
         "taken against that round's unloaded p99." if rounds > 1 else "")
      + "\n")
print("| server | flood | flood connections held (peak) | normal requests | success | p99 | p99 / unloaded |"
      + (" each round |" if rounds > 1 else ""))
print("|---|---|---|---|---|---|---|" + ("---|" if rounds > 1 else ""))
base = {(s, r): c.get("p99_ms") for s, m, r, c, f in rows if m == "none"}
groups = {}
for server, mode, rnd, c, f in rows:
    groups.setdefault((server, mode), []).append((rnd, c, f))
for (server, mode), runs in groups.items():
    p99s = [c["p99_ms"] for _, c, _ in runs if c.get("p99_ms") is not None]
    ratios = [c["p99_ms"] / base[(server, rnd)] for rnd, c, _ in runs
              if c.get("p99_ms") and base.get((server, rnd))]
    requests = sum(c["requests"] for _, c, _ in runs)
    ok = sum(c["ok"] for _, c, _ in runs)
    fail = {}
    for _, c, _ in runs:
        for k, v in list(c.get("other_statuses", {}).items()) + list(c.get("errors", {}).items()):
            fail[k] = fail.get(k, 0) + v
    failed = "" if not fail else " (" + ", ".join(f"{k}: {v}" for k, v in sorted(fail.items())) + ")"
    held = max((f["peak_held"] for _, _, f in runs if f), default=None)
    held = f"{held:,}" if held is not None else "-"
    p99 = f"{statistics.median(p99s):.1f} ms" if p99s else "n/a"
    ratio = f"{statistics.median(ratios):.2f}x" if ratios else "n/a"
    each = (" " + ", ".join(f"{x:.2f}x" for x in ratios) + " |") if rounds > 1 else ""
    print(f"| {server} | {'unloaded' if mode == 'none' else mode} | {held} | {requests:,} | "
          f"{100.0 * ok / max(requests, 1):.2f}%{failed} | {p99} | {ratio} |{each}")
print("\nFlood detail (connections opened, closed by the server, median lifetime of a closed one, "
      "what the server said):\n")
for server, mode, rnd, c, f in rows:
    if f:
        said = ", ".join(f"{k}: {v}" for k, v in sorted(f["statuses"].items())) or "-"
        print(f"- {server} {mode}" + (f" (round {rnd})" if rounds > 1 else "") + f": {f['connects']:,} connects ({f['connect_errors']} failed), "
              f"{f['closed_by_server']:,} closed by the server, median lifetime "
              f"{f['median_lifetime_s']} s, {f['responses']:,} response heads, "
              f"{f['resets']:,} stream resets; {said}")
if any(r[0] == "nginx" and r[4] for r in rows):
    print(f"- nginx error log: {nginx_full or 0} 'worker_connections are not enough' alerts")
PY
