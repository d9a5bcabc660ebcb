"""Kubernetes manifests for a job, rendered from the YAML templates in ``infra/k8s/``, and the policy every
manifest must meet before it is submitted (non-root, no privilege escalation, limits set, secrets by reference).

Templates are YAML with ``{{ name }}`` placeholders. A whole-value placeholder takes the value's own type (a
number, a list, a mapping); one inside a longer string is text; a mapping key whose value renders to None is
left out, so an unset option leaves no trace. Rendering is pure: no cluster, no client library.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dualtoken.launch.job import LaunchError

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
WHOLE = re.compile(r"^\{\{\s*(\w+)\s*\}\}$")
# What makes a variable a credential (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN, PGPASSWORD, a database URL
# with its password...): such a variable may only come from a Secret (secretKeyRef / envFrom). Some words count
# anywhere in the name, others only whole (DUALTOKEN_PARENT_RUN_ID is no token, MONKEY no key).
SECRET_PARTS = ("PASSWORD", "PASSWD", "SECRET", "PWD")
SECRET_WORDS = frozenset({"TOKEN", "CREDENTIAL", "CREDENTIALS", "PRIVATE", "KEY", "APIKEY", "AUTH", "DSN"})


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    words = re.split(r"[^A-Z0-9]+", upper)
    return (any(part in upper for part in SECRET_PARTS) or not SECRET_WORDS.isdisjoint(words)
            or upper.endswith(("CONNECTION_URL", "DATABASE_URL")))


def _fill(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        filled = {key: _fill(value, values) for key, value in node.items()}
        return {key: value for key, value in filled.items() if value is not None}
    if isinstance(node, list):
        return [item for item in (_fill(x, values) for x in node) if item is not None]
    if isinstance(node, str):
        whole = WHOLE.match(node)
        if whole:
            return values[whole.group(1)]
        return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
    return node


def render_template(path: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The template at ``path`` filled with ``values``; a placeholder without a value is an error naming it."""
    if not path.is_file():
        raise LaunchError(f"Kubernetes template {path} not found (launch.kubernetes.templates names the folder)")
    text = path.read_text()
    unknown = sorted({m.group(1) for m in PLACEHOLDER.finditer(text)} - values.keys())
    if unknown:
        raise LaunchError(f"{path}: unknown placeholder(s) {unknown}; known: {sorted(values)}")
    return _fill(yaml.safe_load(text), values)


def pod_specs(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs inside a Job or a JobSet (nothing for other kinds)."""
    if manifest.get("kind") == "Job":
        yield manifest["spec"]["template"]["spec"]
    elif manifest.get("kind") == "JobSet":
        for replicated in manifest["spec"]["replicatedJobs"]:
            yield replicated["template"]["spec"]["template"]["spec"]


def policy_problems(manifest: dict[str, Any]) -> list[str]:
    """What keeps a manifest from being submitted: root or privileged pods, missing limits, plaintext secrets."""
    problems = []
    for pod in pod_specs(manifest):
        pod_context = pod.get("securityContext", {})
        if not pod_context.get("runAsNonRoot") or pod_context.get("runAsUser") == 0:
            problems.append("pod securityContext.runAsNonRoot must be true (and runAsUser not 0)")
        shared = [k for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]
        shared += [f"hostPath volume {v.get('name')!r}" for v in pod.get("volumes", []) if "hostPath" in v]
        if shared:
            problems.append(f"pod shares the node's {', '.join(shared)}")
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            where = f"container {container.get('name')!r}"
            context = container.get("securityContext", {})
            if context.get("allowPrivilegeEscalation") is not False or context.get("privileged"):
                problems.append(f"{where}: allowPrivilegeEscalation must be false and privileged unset or false")
            if context.get("runAsUser") == 0 or context.get("capabilities", {}).get("add"):
                problems.append(f"{where}: runs as root or adds capabilities")
            limits = container.get("resources", {}).get("limits", {})
            missing = [r for r in ("cpu", "memory") if r not in limits]
            if missing:
                problems.append(f"{where}: no {' or '.join(missing)} limit (set the stage's cpus_per_task and mem)")
            for var in container.get("env", []):
                if "value" in var and is_secret_name(var["name"]):
                    problems.append(f"{where}: {var['name']} has a plaintext value; give it by reference "
                                    "(launch.kubernetes.secret_env or env_from_secrets)")
    return problems
