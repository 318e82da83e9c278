#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (real binary, real TLS,
# real guests). Installs what it needs (the wasm32-wasip2 target).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-functions.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
