#!/usr/bin/env bash
# A local Prefect server on 127.0.0.1 only, its SQLite database under the services folder, in the foreground.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/prefect"
mkdir -p "$root"
root="$(cd "$root" && pwd)"
port="${PREFECT_PORT:-4200}"
export PREFECT_HOME="$root" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
cat <<MSG
Prefect: http://127.0.0.1:$port   (data in $root; Ctrl-C stops it)
  export PREFECT_API_URL=http://127.0.0.1:$port/api
MSG
exec prefect server start --host 127.0.0.1 --port "$port"
