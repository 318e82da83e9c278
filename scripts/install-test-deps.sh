#!/usr/bin/env bash
# Installs what the test suite runs besides the toolchain, from Debian, unless it is already on
# PATH: the message brokers the broker tests start (mosquitto, mosquitto-clients,
# nats-server) and headless Chromium for the browser (CORS) test.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "installing ${missing[*]} (Debian packages)" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
