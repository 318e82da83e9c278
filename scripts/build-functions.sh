#!/usr/bin/env bash
# Builds the guest components in functions/ (wasm32-wasip2), installing the target if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
(cd functions && cargo build --release --target wasm32-wasip2 --quiet)
ls functions/target/wasm32-wasip2/release/*.wasm
