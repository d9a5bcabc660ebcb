#!/usr/bin/env bash
# A local MLflow tracking server on 127.0.0.1 (SQLite store, proxied artifacts), in the foreground.
set -euo pipefail
root="${DUALTOKEN_SERVICES_DIR:-.services}/mlflow"
port="${MLFLOW_PORT:-5000}"
mkdir -p "$root/artifacts"
export MLFLOW_DISABLE_TELEMETRY=true
echo "MLflow: http://127.0.0.1:$port   (export MLFLOW_TRACKING_URI=http://127.0.0.1:$port; Ctrl-C stops it)"
exec mlflow server --backend-store-uri "sqlite:///$(cd "$root" && pwd)/mlflow.db" \
  --artifacts-destination "$(cd "$root" && pwd)/artifacts" --host 127.0.0.1 --port "$port" --workers 1
