#!/usr/bin/env bash
# Installs the message brokers the test suite starts (mosquitto, mosquitto-clients and
# nats-server, from Debian) unless they are already on PATH.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v nats-server >/dev/null || missing+=(nats-server)
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
