"""Real local services for integration tests: SeaweedFS S3 and an MLflow tracking server, on 127.0.0.1.

Each runs in its own process group so that stopping it leaves nothing behind, and each start waits until
the service answers (or fails with the tail of its log).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the dev dependencies (make venv)")
    return found


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with _suppress():
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with _suppress():
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is ProcessLookupError


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    _stop(proc)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s (exit {proc.poll()}); log tail:\n{tail}")


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        _stop(self.process)


def start_s3(workdir: Path, timeout: float = 60.0) -> S3Server:
    """SeaweedFS ``weed mini`` with real SigV4 auth; every port chosen free, bound to loopback only."""
    workdir.mkdir(parents=True, exist_ok=True)
    access, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_hex(20)
    identities = workdir / "identities.json"
    identities.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}], "actions": ["Admin"]}]}))
    ports = {flag: free_port() for flag in (
        "s3.port", "master.port", "volume.port", "filer.port", "webdav.port", "admin.port")}
    cmd = [_tool("weed"), "mini", f"-dir={workdir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
           f"-s3.config={identities}", *(f"-{flag}={port}" for flag, port in ports.items())]
    (workdir / "data").mkdir(exist_ok=True)
    log_path = workdir / "weed.log"
    proc = _spawn(cmd, log_path)
    server = S3Server(f"http://{LOOPBACK}:{ports['s3.port']}", access, secret, proc, log_path)

    def ready() -> bool:
        server.client().list_buckets()
        return True

    _wait(lambda: _quiet(ready), proc, log_path, "SeaweedFS S3", timeout)
    return server


def _quiet(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except Exception:  # not up yet: connection refused, 503 while the filer starts, ...
        return False


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        _stop(self.process)


def start_mlflow(workdir: Path, timeout: float = 120.0) -> MlflowServer:
    """``mlflow server`` on SQLite with proxied artifacts, one worker (2-core machines)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [_tool("mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", str(workdir / "artifacts"), "--host", LOOPBACK, "--port", str(port),
           "--workers", "1"]
    log_path = workdir / "mlflow.log"
    proc = _spawn(cmd, log_path, env={"MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://{LOOPBACK}:{port}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return resp.status == 200

    _wait(lambda: _quiet(ready), proc, log_path, "MLflow server", timeout)
    return MlflowServer(uri, proc, log_path)


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen
    log_path: Path

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}

    def stop(self) -> None:
        _stop(self.process)


def start_prefect(workdir: Path, timeout: float = 120.0) -> PrefectServer:
    """``prefect server start`` on a free loopback port with its own PREFECT_HOME (SQLite)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://{LOOPBACK}:{port}/api"
    log_path = workdir / "prefect.log"
    env = {"PREFECT_HOME": str(workdir), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    proc = _spawn([_tool("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)], log_path, env)

    def ready() -> bool:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
            return resp.status == 200

    _wait(lambda: _quiet(ready), proc, log_path, "Prefect server", timeout)
    return PrefectServer(api, workdir, proc, log_path)
