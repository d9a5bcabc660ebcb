"""The Kubernetes backend: render a job's manifests (``manifests``), check them against the policy, create them
with the ``kubernetes`` client, follow the job's conditions while streaming its pods' logs, map its end to a
state and exit code, clean up. One stage is a batch/v1 Job; a sharded stage's slices an indexed Job (one pod
per slice, ``JOB_COMPLETION_INDEX`` + ``DUALTOKEN_ARRAY_SIZE``); a multi-node stage an indexed Job plus a headless
Service, or a JobSet, with one pod per node: pod 0 runs the job's command (``dvc repro``), the others its
worker command, and every pod starts its own torchrun at the c10d rendezvous on pod 0.

A finished job's objects are deleted when it succeeded and kept (``ttl_after_finished_s``) when it did not, for
``kubectl describe``; its pods' logs are copied to ``log_dir`` either way. Logs are re-read whole at each poll
(simple and exact; for very chatty jobs raise ``poll_s``).
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dualtoken.launch.config import KubernetesSite, StageLaunch
from dualtoken.launch.job import (
    JobResult,
    JobSpec,
    JobState,
    LaunchError,
    LogSink,
    TransientLaunchError,
    patiently,
)
from dualtoken.launch.manifests import policy_problems, render_template

JOBSET = ("jobset.x-k8s.io", "v1alpha2", "jobsets")
REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read: a half-open connection must not hang the flow
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def k8s_memory(mem: str) -> str:
    """Slurm's binary units to Kubernetes' (``64G`` -> ``64Gi``); a bare number is MiB, as in Slurm."""
    number, unit = re.fullmatch(r"([0-9]+)([KMGT]?)", mem).groups()  # type: ignore[union-attr]
    return f"{number}{unit or 'M'}i"


def _conditions(status: Any) -> list[tuple[str, str, str]]:
    """(type, status, reason) of a typed Job status or a JobSet's status mapping."""
    if status is None:
        return []
    if isinstance(status, dict):
        return [(c.get("type", ""), c.get("status", ""), c.get("reason") or "") for c in status.get("conditions") or []]
    return [(c.type, c.status, c.reason or "") for c in status.conditions or []]


def end_state(conditions: list[tuple[str, str, str]]) -> JobState | None:
    """A Job's or JobSet's end from its conditions; None while it has not ended."""
    for kind, status, reason in conditions:
        if status != "True":
            continue
        if kind in ("Complete", "Completed"):
            return JobState.SUCCEEDED
        if kind == "Failed":
            return JobState.TIMED_OUT if reason == "DeadlineExceeded" else JobState.FAILED
    return None


@dataclass
class _Tracked:
    objects: list[dict[str, Any]]
    log_dir: Path
    started: float
    cancelled: bool = False
    seen: dict[str, int] = field(default_factory=dict)  # pod -> log lines already delivered
    logs: dict[str, Path] = field(default_factory=dict)  # pod -> its copy under log_dir
    waiting: dict[str, str] = field(default_factory=dict)  # pod -> why it last said it is not running yet


# The container's first process, around the stage's command. As PID 1 a process ignores SIGTERM unless it handles
# it, and DVC does not: this shell does and passes it to the command's process group. DVC dies of it at once,
# so after a SIGTERM the shell also waits (up to the grace period) for the rest of the group: a training stage
# writing its checkpoint. A command that ends by itself ends the pod at once.
FORWARD_TERM = ('stopping=; trap \'stopping=1; kill -TERM -"$child" 2>/dev/null\' TERM; setsid "$@" & child=$!; '
                'wait "$child"; status=$?; while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done; '
                'i=0; while [ -n "$stopping" ] && [ $i -lt 120 ] && kill -0 -"$child" 2>/dev/null; do '
                'sleep 1; i=$((i + 1)); done; exit "$status"')


def _add_labels(job: dict[str, Any], labels: dict[str, str]) -> None:
    """The site's labels on a Job and its pods, under ours (the backend finds its pods by them)."""
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta["labels"] = {**labels, **meta["labels"]}


class KubernetesBackend:
    """Runs one stage's jobs: ``site`` is ``launch.kubernetes`` (the templates are taken from ``workspace``), ``job``
    the stage's resources (``launch.stages.<stage>``)."""

    def __init__(self, site: KubernetesSite, job: StageLaunch, workspace: Path, log_dir: str | Path,
                 api_client: Any = None) -> None:
        self.site, self.job = site, job
        self.templates = workspace / site.templates
        self.log_dir = Path(log_dir)
        self._api = api_client  # tests pass one pointed at an emulator; else from kubeconfig / in-cluster
        self._jobs: dict[str, _Tracked] = {}
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------------- manifests
    def job_name(self, stage: str) -> str:
        """A DNS-1123 name, unique per submission (flows on other checkouts share the namespace) and short
        enough for pod host names."""
        base = re.sub(r"[^a-z0-9]+", "-", stage.lower()).strip("-")[:24] or "job"
        return f"dt-{base}-{time.strftime('%m%d%H%M%S')}-{next(self._ids)}{secrets.token_hex(2)}"

    def manifests(self, spec: JobSpec, name: str) -> list[dict[str, Any]]:
        """The objects to create, in order (headless Service first for a multi-node indexed Job)."""
        s, r = self.site, self.job
        multi = r.nodes > 1
        if multi and spec.worker_command is None:
            raise LaunchError(f"job {spec.name!r} cannot span {r.nodes} nodes on Kubernetes: it has no worker "
                              "command for the other pods (the ablation stage, for one, runs on one node)")
        if multi and spec.array:
            raise LaunchError(f"job {spec.name!r}: an array's tasks run one pod each; nodes must be 1")
        workdir = str(spec.workdir)
        if s.workspace_claim and not PurePosixPath(workdir).is_relative_to(s.workspace_path):
            raise LaunchError(f"the workspace {workdir} is not under launch.kubernetes.workspace_path "
                              f"({s.workspace_path}), where the pods mount {s.workspace_claim}: run the flow where the "
                              "claim is mounted at the same path")
        env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in spec.env.items()]
        if spec.array:
            env.append({"name": "DUALTOKEN_ARRAY_SIZE", "value": str(spec.array)})
        if r.gpus_per_node:  # one process per GPU the pod gets, whatever runtime.nproc says
            env.append({"name": "DUALTOKEN_NPROC", "value": str(r.gpus_per_node)})
        command = list(spec.command)
        if multi:
            first = f"{name}-0" if s.multi_node == "indexed-job" else f"{name}-node-0-0"
            env += [{"name": "DUALTOKEN_NNODES", "value": str(r.nodes)},
                    {"name": "DUALTOKEN_RDZV_ENDPOINT", "value": f"{first}.{name}:{s.rdzv_port}"},
                    {"name": "DUALTOKEN_RDZV_ID", "value": name}]
            first_pod, other_pods = shlex.join(spec.command), shlex.join(spec.worker_command or ())
            command = ["/bin/sh", "-c", f'if [ "${{JOB_COMPLETION_INDEX:-0}}" = 0 ]; then exec {first_pod}; '
                                        f"else exec {other_pods}; fi"]
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
                for var, ref in s.secret_env.items()]
        command = ["/bin/sh", "-c", FORWARD_TERM, "stage", *command]
        resources = {"cpu": str(r.cpus_per_task)}
        if r.mem:
            resources["memory"] = k8s_memory(r.mem)
        if r.gpus_per_node:
            resources["nvidia.com/gpu"] = str(r.gpus_per_node)
        volumes = [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}}]
        mounts = [{"name": "shm", "mountPath": "/dev/shm"}]
        if s.workspace_claim:
            volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": s.workspace_claim}})
            mounts.append({"name": "workspace", "mountPath": s.workspace_path})
        values = {
            "name": name, "namespace": s.namespace, "component": re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name)[:63],
            "completions": r.nodes if multi else spec.tasks,
            "completion_mode": "Indexed" if multi or spec.array else "NonIndexed",
            "time_limit_s": math.ceil(spec.time_limit_s) if spec.time_limit_s else None,
            "ttl_after_finished_s": s.ttl_after_finished_s,
            "subdomain": name if multi and s.multi_node == "indexed-job" else None,
            "service_account": s.service_account, "node_selector": dict(s.node_selector) or None,
            "tolerations": [dict(t) for t in s.tolerations] or None, "image": s.image,
            "image_pull_policy": s.image_pull_policy, "workdir": workdir, "command": command, "env": env,
            "env_from": [{"secretRef": {"name": n}} for n in s.env_from_secrets] or None,
            "resources": resources, "volume_mounts": mounts, "volumes": volumes, "rdzv_port": s.rdzv_port,
            "backoff_limit": s.max_disruptions, "annotations": dict(s.annotations) or None,
            "priority_class": s.priority_class}
        job = render_template(self.templates / "job.yaml", values)
        _add_labels(job, s.labels)
        if not multi:
            return [job]
        if s.multi_node == "indexed-job":
            return [render_template(self.templates / "service.yaml", values), job]
        jobset = render_template(self.templates / "jobset.yaml", {**values, "job_spec": job["spec"]})
        jobset["metadata"]["labels"] = {**s.labels, **jobset["metadata"]["labels"]}  # Kueue reads the JobSet's
        return [jobset]

    # ------------------------------------------------------------------------------------- the cluster
    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            try:
                if self.site.context is not None:
                    raise config.ConfigException("a context is named")
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    config.load_kube_config(context=self.site.context)
                except (config.ConfigException, OSError) as err:
                    raise LaunchError(f"no Kubernetes configuration ({err}): run inside the cluster with a service "
                                      "account, or point KUBECONFIG / launch.kubernetes.context at one") from None
            self._api = client.ApiClient()
        return self._api

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """An API call with a timeout; a 5xx, 429 or lost connection is transient, anything else an answer."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as err:
            error = TransientLaunchError if (err.status or 0) >= 500 or err.status == 429 else LaunchError
            raise error(f"Kubernetes API: {what}: {err.status} {err.reason} {err.body or ''}".rstrip()) from err
        except HTTPError as err:
            raise TransientLaunchError(f"Kubernetes API: {what}: {err}") from err

    def submit(self, spec: JobSpec) -> str:
        from kubernetes import client
        from pydantic import ValidationError

        name = self.job_name(spec.name)
        objects = self.manifests(spec, name)
        problems = [problem for obj in objects for problem in policy_problems(obj)]
        if problems:
            raise LaunchError(f"job {spec.name!r}: its manifest breaks the pod policy:\n  " + "\n  ".join(problems))
        api, ns = self._client(), self.site.namespace
        created: list[dict[str, Any]] = []
        try:
            for obj in objects:
                if obj["kind"] == "Service":
                    self._call(f"create Service {name}", client.CoreV1Api(api).create_namespaced_service, ns, obj)
                elif obj["kind"] == "Job":
                    self._call(f"create Job {name}", client.BatchV1Api(api).create_namespaced_job, ns, obj)
                else:
                    self._call(f"create JobSet {name} (are the JobSet CRDs installed?)",
                               client.CustomObjectsApi(api).create_namespaced_custom_object, *JOBSET[:2], ns,
                               JOBSET[2], obj)
                created.append(obj)
        except ValidationError as err:  # the client checks every field before sending
            self._delete(name, created)
            raise LaunchError(f"job {spec.name!r}: the manifest is not a valid {objects[len(created)]['kind']}: "
                              f"{err}") from None
        except LaunchError:
            self._delete(name, created)
            raise
        self._jobs[name] = _Tracked(objects, self.log_dir, time.monotonic())
        return name

    def _tracked(self, job_id: str) -> _Tracked:
        if job_id not in self._jobs:
            raise LaunchError(f"no job {job_id!r} was submitted through this backend")
        return self._jobs[job_id]

    def _pods(self, name: str) -> list[Any]:
        from kubernetes import client

        pods = self._call(f"list pods of {name}", client.CoreV1Api(self._client()).list_namespaced_pod,
                          self.site.namespace, label_selector=f"dualtoken.job={name}").items
        mine = [p for p in pods if (p.metadata.labels or {}).get("dualtoken.job") == name]
        return sorted(mine, key=lambda p: (int((p.metadata.annotations or {}).get(INDEX_ANNOTATION, 0)),
                                           p.metadata.name))

    def state(self, job_id: str) -> tuple[JobState, int | None, list[Any]]:
        """(state, exit code, pods) of a submitted job."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        tracked, api, ns = self._tracked(job_id), self._client(), self.site.namespace
        try:
            if tracked.objects[-1]["kind"] == "Job":
                status = self._call(f"read Job {job_id}", client.BatchV1Api(api).read_namespaced_job_status,
                                    job_id, ns).status
            else:
                status = self._call(f"read JobSet {job_id}",
                                    client.CustomObjectsApi(api).get_namespaced_custom_object_status,
                                    *JOBSET[:2], ns, JOBSET[2], job_id).get("status")
        except LaunchError as err:
            gone = isinstance(err.__cause__, ApiException) and err.__cause__.status == 404
            if gone and tracked.cancelled:
                return JobState.CANCELLED, None, []
            if gone:
                raise LaunchError(f"Kubernetes job {job_id} is gone (deleted from outside?)") from None
            raise
        pods = self._pods(job_id)
        if tracked.cancelled:
            return JobState.CANCELLED, None, pods
        ended = end_state(_conditions(status))
        if ended is None:
            running = any(p.status and p.status.phase in ("Running", "Succeeded", "Failed") for p in pods)
            return (JobState.RUNNING if running else JobState.PENDING), None, pods
        codes = [c.state.terminated.exit_code for p in pods for c in (p.status.container_statuses or [])
                 if p.status and c.state and c.state.terminated]
        code = next((c for c in codes if c != 0), 0 if ended is JobState.SUCCEEDED else None)
        return ended, code if ended in (JobState.SUCCEEDED, JobState.FAILED) else None, pods

    def _follow_logs(self, tracked: _Tracked, pods: list[Any], on_log: LogSink | None) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self._client())
        several = len(pods) > 1  # an array's or a multi-node job's pods: say which pod a line is from
        for i, pod in enumerate(pods):
            pod_name = pod.metadata.name
            try:
                text = core.read_namespaced_pod_log(pod_name, self.site.namespace, container="stage",
                                                    _request_timeout=REQUEST_TIMEOUT)
            except ApiException:  # not started yet (ContainerCreating) or already gone
                continue
            lines = text.splitlines()
            path = tracked.logs.setdefault(pod_name, tracked.log_dir / f"{pod_name}.log")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION, str(i))
            for line in lines[tracked.seen.get(pod_name, 0):]:
                if on_log is not None:
                    on_log(f"[pod {index}] {line}" if several else line)
            tracked.seen[pod_name] = len(lines)

    def wait(self, job_id: str, on_log: LogSink | None = None) -> JobResult:
        tracked = self._tracked(job_id)
        while True:
            state, code, pods = patiently(lambda: self.state(job_id), f"Kubernetes state of job {job_id}", on_log)
            self._report_waiting(tracked, pods, on_log)
            self._follow_logs(tracked, pods, on_log)
            if state.finished:
                self._clean_up(job_id, tracked, state, on_log)
                logs = tuple(tracked.logs.values()) or (tracked.log_dir / f"{job_id}.log",)
                return JobResult(job_id, state, code, logs, time.monotonic() - tracked.started)
            time.sleep(self.site.poll_s)

    def _clean_up(self, job_id: str, tracked: _Tracked, state: JobState, on_log: LogSink | None) -> None:
        """A succeeded job goes; a failed one stays for ``kubectl describe`` (its TTL removes it) but its
        Service goes now, having no TTL of its own. Best effort: the job's end is the answer either way."""
        keep = [] if state is JobState.SUCCEEDED else [o for o in tracked.objects if o["kind"] != "Service"]
        try:
            self._delete(job_id, [o for o in tracked.objects if o not in keep])
        except LaunchError as err:
            if on_log is not None:
                on_log(f"clean-up of {job_id} failed ({err}); delete it with kubectl")

    @staticmethod
    def _report_waiting(tracked: _Tracked, pods: list[Any], on_log: LogSink | None) -> None:
        """Why a pod is not running yet (Unschedulable, ImagePullBackOff, a missing Secret), once per change:
        otherwise a stuck job looks merely pending."""
        for pod in pods:
            status = pod.status
            reasons = [f"{c.reason}: {c.message}" for c in (status.conditions or [])
                       if c.status == "False" and c.reason] if status else []
            reasons += [f"{c.state.waiting.reason}: {c.state.waiting.message or ''}".rstrip(": ")
                        for c in (status.container_statuses or []) if c.state and c.state.waiting] if status else []
            why = "; ".join(reasons)
            if why and why != tracked.waiting.get(pod.metadata.name) and on_log is not None:
                on_log(f"pod {pod.metadata.name} waiting: {why}")
            tracked.waiting[pod.metadata.name] = why

    def cancel(self, job_id: str) -> None:
        tracked = self._tracked(job_id)
        tracked.cancelled = True
        self._delete(job_id, tracked.objects)

    def _delete(self, name: str, objects: list[dict[str, Any]]) -> None:
        """Delete what was created (pods go with their Job: background propagation); already gone is fine."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api, ns = self._client(), self.site.namespace
        for obj in reversed(objects):
            try:
                if obj["kind"] == "Service":
                    client.CoreV1Api(api).delete_namespaced_service(name, ns)
                elif obj["kind"] == "Job":
                    client.BatchV1Api(api).delete_namespaced_job(name, ns, propagation_policy="Background")
                else:
                    client.CustomObjectsApi(api).delete_namespaced_custom_object(
                        *JOBSET[:2], ns, JOBSET[2], name, propagation_policy="Background")
            except ApiException as err:
                if err.status != 404:
                    raise LaunchError(f"Kubernetes API: delete {obj['kind']} {name}: {err.status} "
                                      f"{err.reason}") from err
