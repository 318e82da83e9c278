#!/usr/bin/env bash
# Builds the example and test functions in functions/ into
# functions/target/wasm32-wasip2/release/:
# - the Rust crates (wasm32-wasip2; the target is installed if needed); a crate's cdylib is
#   named with `_` (unknown_import.wasm), so it is also copied to its package name with `-`;
# - python-hello, python-counter with componentize-py (PyPI) and js-hello with componentize-js
#   (npm), whose toolchains are installed on demand into functions/.tools. They are rebuilt only
#   when their source changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
(cd functions && cargo build --release --target wasm32-wasip2 --quiet)
out=$PWD/functions/target/wasm32-wasip2/release
cp -p "$out/unknown_import.wasm" "$out/unknown-import.wasm"
tools=$PWD/functions/.tools
world=wasmgate:functions/proxy        # functions/wit: the wasi:http proxy world
stateful=wasmgate:functions/stateful  # proxy plus wasi:keyvalue and wasi:config imports

stale() { [ ! -f "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null | head -1)" ]; }

# componentize-py NAME WORLD: builds functions/NAME/app.py into NAME.wasm.
componentize_py() {
  [ -x "$tools/py/bin/componentize-py" ] ||
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$tools/py" componentize-py==0.25.1
  (cd "functions/$1" && PYTHONPATH="$tools/py" "$tools/py/bin/componentize-py" -d ../wit -w "$2" componentize app -o "$out/$1.wasm" >/dev/null)
}
if stale "$out/python-hello.wasm" functions/python-hello functions/wit; then
  componentize_py python-hello "$world"
fi
if stale "$out/python-counter.wasm" functions/python-counter functions/wit; then
  componentize_py python-counter "$stateful"
fi
if stale "$out/js-hello.wasm" functions/js-hello functions/wit; then
  [ -d "$tools/js/node_modules/@bytecodealliance/componentize-js" ] ||
    npm install --silent --no-audit --no-fund --prefix "$tools/js" @bytecodealliance/componentize-js@0.23.0 >/dev/null
  node functions/js-hello/build.mjs "$tools/js" functions/js-hello/app.js functions/wit "$world" "$out/js-hello.wasm"
fi
ls "$out"/*.wasm
