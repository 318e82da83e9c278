#!/usr/bin/env bash
# Starts wasmgate on the example config (wasmgate.toml) with the example functions.
# Everything is embedded: no external services. Stop it with Ctrl-C (graceful drain).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-functions.sh >/dev/null
cargo build --release --quiet
exec ./target/release/wasmgate serve --config wasmgate.toml
