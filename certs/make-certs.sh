#!/usr/bin/env bash
# Development and test certificates ONLY: never use these keys in production.
# Makes a local CA (ca.pem) and a certificate for localhost / 127.0.0.1 / ::1 signed by it
# (localhost.pem, localhost-key.pem), valid for 10 years. Re-run to regenerate.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=wasmgate dev CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout localhost-key.pem -out localhost.csr
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
  -out localhost.pem -extfile <(printf '%s\n' \
    "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1")
rm -f localhost.csr ca.srl
