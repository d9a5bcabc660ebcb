#!/usr/bin/env bash
# A local Prefect server on 127.0.0.1 with its database under the services folder, in the foreground.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/prefect"
port="${PREFECT_PORT:-4200}"
mkdir -p "$root"
export PREFECT_HOME="$(cd "$root" && pwd)" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
echo "Prefect: http://127.0.0.1:$port   (export PREFECT_API_URL=http://127.0.0.1:$port/api; Ctrl-C stops it)"
exec prefect server start --host 127.0.0.1 --port "$port"
