#!/usr/bin/env bash
# Installs what the test suite runs besides the toolchain, from Debian, unless it is already on
# PATH: the message brokers the broker tests start (mosquitto, mosquitto-clients,
# nats-server), headless Chromium for the browser (CORS) test and Node.js; then, from npm, the
# OpenID provider the jwt tests fetch keys from (tests/oidc, oidc-provider).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
    echo "installing oidc-provider (npm) into tests/oidc" >&2
    npm ci --silent --no-audit --no-fund --prefix tests/oidc >/dev/null
fi
