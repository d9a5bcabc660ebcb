#!/usr/bin/env bash
# A local MLflow tracking server on 127.0.0.1 only (SQLite store, artifacts proxied by the server), in the foreground.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/mlflow"
mkdir -p "$root/artifacts"
root="$(cd "$root" && pwd)"
port="${MLFLOW_PORT:-5000}"
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
# The GenAI job runner forks eight more processes (~700 MiB) that this pipeline never uses.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
cat <<MSG
MLflow: http://127.0.0.1:$port   (data in $root; Ctrl-C stops it)
  export MLFLOW_TRACKING_URI=http://127.0.0.1:$port
MSG
exec mlflow server --backend-store-uri "sqlite:///$root/mlflow.db" --serve-artifacts \
  --artifacts-destination "$root/artifacts" --host 127.0.0.1 --port "$port" --workers 1
