#!/usr/bin/env bash
# Mints a demo RS256 JWT for the example config's `jwt` trigger, signed with the test fixture
# key (tests/fixtures/jwt-rsa.pem, kid rsa-1; never a production key). Valid for one hour.
#   curl --cacert certs/ca.pem -H "Authorization: Bearer $(bash scripts/mint-jwt.sh alice)" \
#        https://localhost:8443/jwt/hello
set -euo pipefail
cd "$(dirname "$0")/.."
sub=${1:-demo-user}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"rsa-1"}' | b64url)
payload=$(printf '{"sub":"%s","iss":"https://issuer.example","aud":"wasmgate","iat":%d,"exp":%d}' \
  "$sub" "$now" $((now + 3600)) | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign tests/fixtures/jwt-rsa.pem -binary | b64url)
echo "$header.$payload.$sig"
