"""Prefect flows: chain the DVC stages, retry them, and record the pipeline run."""

import os

# No outbound calls from a pipeline run: telemetry stays off unless a user turns it on explicitly.
for _name, _value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                      "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(_name, _value)
# Prefect gives its ephemeral API 20 s to start; a loaded 2-core machine can need more.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
