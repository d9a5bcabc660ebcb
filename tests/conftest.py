import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services import TELEMETRY_OFF, start_mlflow, start_prefect, start_s3

# Telemetry off for the whole session. Set at import rather than in a fixture: mlflow (and others) decide on
# telemetry when first imported, which already happens while test modules are collected.
for _name, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_name, _value)
# The end-to-end tests commit in temporary clones (DVC, the flow): an identity where the machine has none.
for _name, _value in (("GIT_AUTHOR_NAME", "dualtoken tests"), ("GIT_AUTHOR_EMAIL", "tests@dualtoken.invalid"),
                      ("GIT_COMMITTER_NAME", "dualtoken tests"), ("GIT_COMMITTER_EMAIL", "tests@dualtoken.invalid")):
    os.environ.setdefault(_name, _value)
SLURM_TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "slurmdbd", "mariadbd")  # system-packages.sh installs


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The S3 server, with its endpoint and credentials in this test's environment (boto3 reads them)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """A team-style MLflow server: SQLite store, artifacts proxied into the S3 server's ``mlflow`` bucket."""
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), s3_server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = start_prefect(tmp_path_factory.mktemp("prefect"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A single-node Slurm with accounting (sacct) started by infra/local/slurm.sh. Debian's slurmctld, slurmd,
    slurm-client, munge, slurmdbd and mariadb-server must be installed: `make test` installs them when run as
    root; elsewhere the tests that need Slurm skip, saying so."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} not found): run `make test` as root, or "
                    "`sudo bash infra/local/system-packages.sh` first")
    root = tmp_path_factory.mktemp("slurm")
    script = Path(__file__).resolve().parents[1] / "infra" / "local" / "slurm.sh"
    started = subprocess.run(["bash", str(script), "start", "--accounting", str(root)], capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"could not start the local Slurm: {started.stderr[-2000:]}")
    yield root / "slurm.conf"
    subprocess.run(["bash", str(script), "stop", str(root)], capture_output=True, timeout=120)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster))
    return slurm_cluster
