#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real binary, real TLS,
# real guests, real brokers, a real browser). Installs what it needs (the wasm32-wasip2 target;
# mosquitto, nats-server and chromium from Debian). Ends with one summary
# line, "N passed, N failed", over every test binary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-functions.sh >/dev/null
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: every test binary runs, so one failure does not hide the others.
cargo test --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# Every suite that uses the queue or the registry again on the other backend: every server gets
# a [cluster] on its own JetStream nats-server (tests/common: WASMGATE_TEST_BACKEND).
WASMGATE_TEST_BACKEND=nats cargo test --no-fail-fast --test async_invocation --test queue_crash --test queue_isolation --test deploy \
  --test events --test sources --test reload --test dispatch --test artifacts --test tracing --test keyvalue 2>&1 \
  | tee -a "$log" || status=$?
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$log"
exit "$status"
