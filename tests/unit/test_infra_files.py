"""The team's container files, checked without a Docker daemon: the compose file parses under the Compose
specification (unknown keys are errors), every service has a healthcheck and waits for healthy dependencies,
secrets come from files; the Dockerfiles parse with Docker's own parser, run as a non-root user and install the
lock file's environment."""

import re
from pathlib import Path

import dockerfile
import pytest
import yaml
from compose_spec import PyCompose

from dualtoken.launch.manifests import is_secret_name

INFRA = Path(__file__).resolve().parents[2] / "infra"


def _interpolate(text: str) -> str:
    """Compose's own first step: ``${VAR:-default}`` with the default (none of them set here), ``$$`` -> ``$``."""
    return re.sub(r"(?<!\$)\$\{(\w+):-([^}]*)\}", lambda m: m[2], text).replace("$$", "$")


def test_compose_file_is_valid_with_healthchecks_and_secrets_from_files():
    text = (INFRA / "compose.yaml").read_text()
    spec = PyCompose.from_yaml(_interpolate(text)).to_spec()  # raises on anything outside the Compose specification
    assert set(spec.services) == {"postgres", "s3", "mlflow", "prefect"}
    raw = yaml.safe_load(text)
    for name, service in raw["services"].items():
        check = service.get("healthcheck", {})
        assert check.get("test") and check.get("interval"), f"{name} has no healthcheck"
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name
        for variable, value in service.get("environment", {}).items():
            assert not is_secret_name(variable) or variable.endswith("_FILE"), f"{name}: {variable}={value}"
        for port in service.get("ports", []):
            assert port.startswith("${DUALTOKEN_BIND:-127.0.0.1}:"), f"{name} publishes {port} beyond loopback"
    for secret in raw["secrets"].values():
        assert secret["file"].startswith("./compose/secrets/")
    assert "infra/compose/secrets/" in (INFRA.parent / ".gitignore").read_text()
    assert (INFRA / "compose" / "init-databases.sql").is_file()


@pytest.mark.parametrize("name", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_images_install_the_lock_file_and_run_as_a_user(name):
    text = (INFRA / "docker" / name).read_text()
    commands = dockerfile.parse_string(text)
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0")  # the last USER is what the container runs as
    assert users[-1] == "1000"  # the uid the Kubernetes templates run as
    runs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")
    assert "requirements/lock.txt" in runs and "torchvision" not in text
    bases = [c.value[0] for c in commands if c.cmd == "FROM"]
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
    ignored = (INFRA.parent / ".dockerignore").read_text().split()
    assert {".venv", "data", "models", ".git"} <= set(ignored)
