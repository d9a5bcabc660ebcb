"""Real local services for integration tests: SeaweedFS S3, an MLflow tracking server and a Prefect server.

Everything binds to 127.0.0.1 on free ports, so several test sessions can run side by side. Each service runs
in its own process group so that stopping it leaves nothing behind, and each start waits until the service
answers (or fails with the tail of its log).
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
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from botocore.client import BaseClient

LOOPBACK = "127.0.0.1"
TELEMETRY_OFF = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                 "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
WEED_GRPC_OFFSET = 10_000  # weed puts each component's gRPC port at its HTTP port + 10000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _weed_ports(count: int) -> list[int]:
    """Distinct free HTTP ports whose gRPC twin (port + 10000) is free too.

    We leave weed's gRPC ports at their derived defaults rather than setting them: weed mini's admin worker dials
    admin HTTP port + 10000 even when -admin.port.grpc says otherwise. All sockets stay bound until the end so
    that no port is handed out twice.
    """
    ports: list[int] = []
    with ExitStack() as held:
        for _ in range(50 * count):
            if len(ports) == count:
                break
            sock = held.enter_context(socket.socket())
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            twin = held.enter_context(socket.socket())
            with suppress(OSError, OverflowError):
                twin.bind((LOOPBACK, port + WEED_GRPC_OFFSET))
                ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free port pairs for weed")
    return ports


def _tool(name: str) -> str:
    """The console script beside this interpreter (the venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install the dev dependencies (make venv)")
    return found


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start cmd in a new session (its own process group, pgid == pid), output to log_path."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **TELEMETRY_OFF, **(env or {})})


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in the group.

    Zombies of children reparented to PID 1 are not ours to reap, and in a container PID 1 may never reap them.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(pgrp) == pgid and state != "Z":
                return True
    return not Path("/proc/self").exists()  # no procfs: trust killpg


def _gone(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to timeout for the leader to exit (and be reaped) and the rest of its group with it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the whole group (servers fork workers), then SIGKILL whatever is still there after timeout."""
    for sig, grace in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if _gone(proc, grace):
            return
    raise RuntimeError(f"process group {proc.pid} survived SIGKILL")


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, log_path: Path, what: str, timeout: float) -> None:
    """Poll ready() until it is true; on timeout or early exit stop the service and raise with its log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, 503 while the filer starts, ...
            pass
        time.sleep(0.3)
    _stop(proc)
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s (exit {proc.returncode}); log tail:\n{tail}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


@dataclass
class S3Server:
    """A running SeaweedFS S3 gateway with one admin identity (real SigV4 auth)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    def env(self) -> dict[str, str]:
        """What a subprocess (boto3, dvc, the CLI) needs to talk to this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, **config: object) -> BaseClient:
        """A boto3 S3 client; path-style since bucket.127.0.0.1 does not resolve. config goes to botocore."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, **config))

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        _stop(self.process)

    def crash(self) -> None:
        """SIGKILL the whole server, as a crash or a lost node would: no shutdown, connections just drop."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        _gone(self.process, 10.0)

    def restart(self, timeout: float = 60.0) -> None:
        """Start the same server again (same data, ports and credentials)."""
        self.process = _spawn(self.command, self.log_path.with_suffix(".restarted.log"))
        probe = self.client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
        _wait(lambda: bool(probe.list_buckets()), self.process, self.log_path, "SeaweedFS S3", timeout)


def _weed_mini_args(workdir: Path, identities: Path, s3_port: int, other_ports: list[int]) -> list[str]:
    """`weed mini` arguments for a loopback-only, telemetry-free instance that can run beside others.

    Every HTTP port is set (gRPC ports follow at +10000), the extra gateways with fixed default ports (WebDAV 7333,
    Iceberg 8181, Lance 9101) are off, and glog files and unix sockets go to workdir instead of piling up in /tmp.
    """
    master, volume, filer, admin = other_ports
    return [f"-logdir={workdir}", "mini", f"-dir={workdir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-s3.config={identities}", f"-s3.port={s3_port}", f"-master.port={master}", f"-volume.port={volume}",
            f"-filer.port={filer}", f"-admin.port={admin}", "-master.telemetry=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={workdir / 's3.sock'}",
            f"-filer.localSocket={workdir / 'filer.sock'}"]


def start_s3(workdir: Path, timeout: float = 60.0) -> S3Server:
    """Start SeaweedFS (`weed mini`) with generated admin credentials and wait until S3 answers."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    access, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_hex(20)
    identities = workdir / "identities.json"
    identities.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}], "actions": ["Admin"]}]}))
    identities.chmod(0o600)
    s3_port, *others = _weed_ports(5)
    log_path = workdir / "weed.log"
    command = [_tool("weed"), *_weed_mini_args(workdir, identities, s3_port, others)]
    proc = _spawn(command, log_path)
    server = S3Server(f"http://{LOOPBACK}:{s3_port}", access, secret, proc, log_path, command)
    probe = server.client(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1})
    _wait(lambda: bool(probe.list_buckets()), proc, log_path, "SeaweedFS S3", timeout)
    return server


@dataclass
class MlflowServer:
    """A running MLflow tracking server (SQLite store, artifacts proxied through the server)."""

    uri: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        _stop(self.process)


MLFLOW_BUCKET = "mlflow"


def start_mlflow(workdir: Path, s3: S3Server | None = None, timeout: float = 120.0) -> MlflowServer:
    """Start `mlflow server` with one worker and wait for /health. Artifacts are proxied through the server
    (clients need no storage credentials) into ``s3://mlflow/`` on ``s3`` when given, else a local folder.

    Job execution is off: by default the server also forks a job runner and seven huey consumers (~700 MiB more,
    twice the start-up time) for GenAI jobs the pipeline never submits.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    destination, env = str(workdir / "artifacts"), {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if s3 is not None:
        destination = f"s3://{s3.make_bucket(MLFLOW_BUCKET)}/artifacts"
        env.update(s3.env(), MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url)
    cmd = [_tool("mlflow"), "server", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", destination,
           "--host", LOOPBACK, "--port", str(port), "--workers", "1"]
    log_path = workdir / "mlflow.log"
    proc = _spawn(cmd, log_path, env)
    uri = f"http://{LOOPBACK}:{port}"
    _wait(lambda: _http_ok(f"{uri}/health"), proc, log_path, "MLflow server", timeout)
    return MlflowServer(uri, proc, log_path)


@dataclass
class PrefectServer:
    """A running Prefect server with its own PREFECT_HOME (SQLite)."""

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
    """Start `prefect server start` on a free loopback port and wait for /api/health."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://{LOOPBACK}:{port}/api"
    log_path = workdir / "prefect.log"
    proc = _spawn([_tool("prefect"), "server", "start", "--host", LOOPBACK, "--port", str(port)], log_path,
                  {"PREFECT_HOME": str(workdir)})
    _wait(lambda: _http_ok(f"{api}/health"), proc, log_path, "Prefect server", timeout)
    return PrefectServer(api, workdir, proc, log_path)
