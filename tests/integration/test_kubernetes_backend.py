"""The Kubernetes backend: every manifest it renders is valid for the supported Kubernetes versions (offline
schemas, strict) and for the client's own models, and meets the pod policy; submit / watch / logs / cancel /
clean-up run against kmock's in-process API emulator, with the test playing the Job controller."""

import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from dualtoken.launch.config import KubernetesSite, StageLaunch
from dualtoken.launch.job import JobSpec, JobState, LaunchError, run_job
from dualtoken.launch.kubernetes import FORWARD_TERM, INDEX_ANNOTATION, KubernetesBackend, k8s_memory
from dualtoken.launch.manifests import policy_problems, render_template
from kube import KubeEmulator

pytestmark = pytest.mark.integration
TEMPLATES = Path(__file__).resolve().parents[2] / "infra" / "k8s"
VERSIONS = ("1.28.0", "1.31.0", "1.34.0", "1.37.0")  # the Kubernetes releases the templates are checked against
NS = "dualtoken"
WORKSPACE = Path("/workspace/dualtoken")


def _settings(**extra):
    """(site, job resources, workspace) as the backend takes them: ``launch.kubernetes`` and the stage's
    ``launch.stages`` entry (built unvalidated, so a test can leave out what the config would require)."""
    job = {k: extra.pop(k) for k in list(extra) if k in StageLaunch.model_fields}
    site = KubernetesSite(**{"templates": str(TEMPLATES), "namespace": NS, "poll_s": 0.05,
                             "workspace_claim": "dualtoken-workspace", **extra})
    resources = StageLaunch.model_construct(**{**StageLaunch().model_dump(), "backend": "kubernetes",
                                               "cpus_per_task": 4, "mem": "16G", **job})
    return site, resources, TEMPLATES


def _spec(name="tokenizer", **extra):
    return JobSpec(name, ("dvc", "repro", name), WORKSPACE, {"DUALTOKEN_PARENT_RUN_ID": "abc"}, **extra)


def _valid(manifest):
    """Strict schema validation for every supported version, then the client's model (typos, types)."""
    for version in VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    model = {"Job": client.V1Job, "Service": client.V1Service}[manifest["kind"]]
    model.model_validate(manifest)
    assert policy_problems(manifest) == []


def test_every_rendered_manifest_is_valid_and_keeps_secrets_by_reference(tmp_path):
    gpu = KubernetesBackend(*_settings(gpus_per_node=8, node_selector={"nvidia.com/gpu.product": "H100"},
                                      tolerations=({"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"},),
                                      env_from_secrets=("mlflow-credentials",),
                                      secret_env={"AWS_SECRET_ACCESS_KEY": {"secret": "s3", "key": "secret-key"}},
                                      service_account="dualtoken-stage"), tmp_path)
    (job,) = gpu.manifests(_spec(time_limit_s=3600.5), "dt-tokenizer-1")
    _valid(job)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "8"}
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["command"] == ["/bin/sh", "-c", FORWARD_TERM, "stage", "dvc", "repro", "tokenizer"]
    assert container["workingDir"] == str(WORKSPACE)
    assert {"name": "DUALTOKEN_NPROC", "value": "8"} in container["env"]  # one process per GPU the pod gets
    assert {"secretRef": {"name": "mlflow-credentials"}} in container["envFrom"]
    assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret-key"}}} \
        in container["env"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
    assert job["spec"]["activeDeadlineSeconds"] == 3601 and job["spec"]["backoffLimit"] == 3
    # an evicted or preempted pod is replaced (counted against backoffLimit); one that fails by itself fails the job
    assert job["spec"]["podFailurePolicy"]["rules"] == [
        {"action": "Count", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onPodConditions": [],
         "onExitCodes": {"containerName": "stage", "operator": "NotIn", "values": [0]}}]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "dualtoken-workspace"}} in pod["volumes"]

    plain = KubernetesBackend(*_settings(), tmp_path)
    (job,) = plain.manifests(_spec(), "dt-curate-1")
    _valid(job)
    pod = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod and "activeDeadlineSeconds" not in job["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]  # unset options leave no trace
    assert "priorityClassName" not in pod and "annotations" not in job["metadata"]

    queued = KubernetesBackend(*_settings(labels={"kueue.x-k8s.io/queue-name": "team-a", "dualtoken.job": "x"},
                                          annotations={"owner": "ml-platform"}, priority_class="batch-low",
                                          max_disruptions=5), tmp_path)
    (job,) = queued.manifests(_spec(), "dt-curate-2")
    _valid(job)  # Kueue's queue label, the site's annotations and priority class, on the job and its pods
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert meta["annotations"] == {"owner": "ml-platform"}
        assert meta["labels"]["dualtoken.job"] == "dt-curate-2"  # ours win: the backend finds its pods by it
    assert job["spec"]["template"]["spec"]["priorityClassName"] == "batch-low" and job["spec"]["backoffLimit"] == 5

    (array,) = plain.manifests(_spec("tokenize-slices", array=4), "dt-tokenize-slices-1")
    _valid(array)
    assert array["spec"]["completionMode"] == "Indexed" and array["spec"]["completions"] == 4
    assert {"name": "DUALTOKEN_ARRAY_SIZE", "value": "4"} in array["spec"]["template"]["spec"]["containers"][0]["env"]


def test_a_multi_node_stage_is_an_indexed_job_with_a_headless_service_or_a_jobset(tmp_path):
    workers = ("python", "-m", "stages", "mllm", "--params", "params.yaml")
    backend = KubernetesBackend(*_settings(nodes=4, gpus_per_node=8), tmp_path)
    service, job = backend.manifests(_spec("mllm", worker_command=workers), "dt-mllm-1")
    _valid(service)
    _valid(job)
    assert service["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == "dt-mllm-1"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DUALTOKEN_RDZV_ENDPOINT"] == "dt-mllm-1-0.dt-mllm-1:29500" and env["DUALTOKEN_NNODES"] == "4"
    script = container["command"][-1]  # the indexed pods' choice, run by the TERM-forwarding shell
    assert "exec dvc repro mllm" in script and "exec python -m stages mllm --params params.yaml" in script

    jobsets = KubernetesBackend(*_settings(nodes=2, gpus_per_node=8, multi_node="jobset"), tmp_path)
    (jobset,) = jobsets.manifests(_spec("mllm", worker_command=workers), "dt-mllm-2")
    assert jobset["kind"] == "JobSet" and jobset["spec"]["network"]["enableDNSHostnames"]
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # no CRD schemas offline: check what it wraps
        kubernetes_validate.validate(jobset, VERSIONS[-1], strict=True)
    inner = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dt-mllm-2"},
             "spec": jobset["spec"]["replicatedJobs"][0]["template"]["spec"]}
    _valid(inner)
    assert policy_problems(jobset) == []
    assert {"name": "DUALTOKEN_RDZV_ENDPOINT", "value": "dt-mllm-2-node-0-0.dt-mllm-2:29500"} in \
        inner["spec"]["template"]["spec"]["containers"][0]["env"]
    with pytest.raises(LaunchError, match="no worker command"):
        backend.manifests(_spec("ablation"), "dt-ablation-1")


def test_the_policy_refuses_plaintext_secrets_missing_limits_and_root(tmp_path):
    leaky = KubernetesBackend(*_settings(mem=None), tmp_path)
    (job,) = leaky.manifests(JobSpec("t", ("true",), WORKSPACE, {"AWS_SECRET_ACCESS_KEY": "hunter2"}), "dt-t-1")
    problems = "\n".join(policy_problems(job))
    assert "AWS_SECRET_ACCESS_KEY has a plaintext value" in problems and "no memory limit" in problems
    with pytest.raises(LaunchError, match="breaks the pod policy"):
        leaky.submit(JobSpec("t", ("true",), WORKSPACE, {"MLFLOW_TRACKING_TOKEN": "t0ken"}))
    root = tmp_path / "templates"
    root.mkdir()
    for name in ("job.yaml", "service.yaml", "jobset.yaml"):
        (root / name).write_text((TEMPLATES / name).read_text().replace("runAsNonRoot: true", "runAsNonRoot: false")
                                 .replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true"))
    (job,) = KubernetesBackend(*_settings(templates=str(root)), tmp_path).manifests(_spec(), "dt-x-1")
    assert len(policy_problems(job)) == 2
    (root / "job.yaml").write_text("metadata: {name: '{{ nmae }}'}\n")
    with pytest.raises(LaunchError, match=r"unknown placeholder\(s\) \['nmae'\]"):
        render_template(root / "job.yaml", {"name": "x"})
    with pytest.raises(LaunchError, match=r"not under launch\.kubernetes\.workspace_path"):
        KubernetesBackend(*_settings(), tmp_path).manifests(JobSpec("t", ("true",), Path("/home/me/ws")), "dt-t-2")
    assert [k8s_memory(m) for m in ("64G", "512M", "2T", "100")] == ["64Gi", "512Mi", "2Ti", "100Mi"]


class Controller:
    """Plays the Job controller against the emulator: pods for a job, their logs, their end, the job's end."""

    def __init__(self, api):
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self.logs: dict[str, str] = {}

    def start(self, job, pods=1):
        names = [f"{job}-{i}-abcde" for i in range(pods)]
        for i, name in enumerate(names):
            self.core.create_namespaced_pod(NS, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": NS, "labels": {"dualtoken.job": job},
                             "annotations": {INDEX_ANNOTATION: str(i)}},
                "spec": {"containers": [{"name": "stage", "image": "dualtoken:latest"}]}})
            self.core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running"}})
            self.logs[name] = f"pod {i} up\n"
        return names

    def finish(self, job, codes, condition="Complete", reason=None):
        for i, code in enumerate(codes):
            self.core.patch_namespaced_pod_status(f"{job}-{i}-abcde", NS, {"status": {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [{"name": "stage", "image": "dualtoken:latest", "imageID": "", "ready": False,
                                       "restartCount": 0, "state": {"terminated": {"exitCode": code}}}]}})
        self.batch.patch_namespaced_job_status(job, NS, {"status": {"conditions": [
            {"type": condition, "status": "True", **({"reason": reason} if reason else {})}]}})


@pytest.fixture
def cluster():
    controller = None
    with KubeEmulator(lambda pod: controller.logs.get(pod, "")) as emulator:
        api = emulator.api_client()
        controller = Controller(api)
        yield api, controller


def test_a_job_is_submitted_watched_with_its_logs_and_cleaned_up(cluster, tmp_path):
    api, controller = cluster
    backend = KubernetesBackend(*_settings(), tmp_path / "logs", api_client=api)
    job = backend.submit(_spec())
    stored = client.BatchV1Api(api).read_namespaced_job(job, NS)
    assert stored.spec.template.spec.containers[0].command[-3:] == ["dvc", "repro", "tokenizer"]
    (pod,) = controller.start(job)
    lines = []

    def on_log(line):
        lines.append(line)
        if line == "pod 0 up":  # the job is running and its log streams: now let it finish
            controller.logs[pod] += "training done\n"
            threading.Thread(target=controller.finish, args=(job, [0])).start()

    result = backend.wait(job, on_log)
    assert result.ok and result.exit_code == 0 and lines == ["pod 0 up", "training done"]
    assert result.log_path.read_text() == "pod 0 up\ntraining done\n"
    with pytest.raises(ApiException) as gone:  # a succeeded job is deleted (its log was copied)
        client.BatchV1Api(api).read_namespaced_job(job, NS)
    assert gone.value.status == 404


def test_failed_and_timed_out_jobs_say_so_and_stay_for_inspection(cluster, tmp_path):
    api, controller = cluster
    backend = KubernetesBackend(*_settings(), tmp_path / "logs", api_client=api)
    failing = backend.submit(_spec("slices", array=2))
    controller.start(failing, pods=2)
    controller.finish(failing, [0, 3], condition="Failed", reason="BackoffLimitExceeded")
    lines = []
    result = backend.wait(failing, lines.append)
    assert result.state is JobState.FAILED and result.exit_code == 3
    assert sorted(lines) == ["[pod 0] pod 0 up", "[pod 1] pod 1 up"] and len(result.log_paths) == 2
    assert client.BatchV1Api(api).read_namespaced_job(failing, NS).metadata.name == failing  # kept (TTL)

    slow = backend.submit(_spec(time_limit_s=60))
    controller.start(slow)
    controller.finish(slow, [], condition="Failed", reason="DeadlineExceeded")
    timed_out = backend.wait(slow)
    assert timed_out.state is JobState.TIMED_OUT and timed_out.exit_code is None


def test_an_interrupted_caller_deletes_its_kubernetes_job(cluster, tmp_path):
    api, controller = cluster
    backend = KubernetesBackend(*_settings(), tmp_path / "logs", api_client=api)
    started = []

    def on_log(line):
        raise KeyboardInterrupt  # a cancelled Prefect run (SIGTERM) or a task timeout, as the flow sees it

    original = backend.submit

    def submit_and_start(spec):
        job = original(spec)
        started.extend(controller.start(job))
        return job

    backend.submit = submit_and_start
    with pytest.raises(KeyboardInterrupt):
        run_job(backend, _spec(), on_log)
    (job,) = backend._jobs
    with pytest.raises(ApiException) as gone:
        client.BatchV1Api(api).read_namespaced_job(job, NS)
    assert gone.value.status == 404 and backend.wait(job).state is JobState.CANCELLED


def test_a_multi_node_job_creates_its_service_and_streams_every_pods_log(cluster, tmp_path):
    api, controller = cluster
    backend = KubernetesBackend(*_settings(nodes=2), tmp_path / "logs", api_client=api)
    job = backend.submit(_spec("mllm", worker_command=("python", "-m", "stages", "mllm")))
    assert client.CoreV1Api(api).read_namespaced_service(job, NS).spec.cluster_ip == "None"
    pods = controller.start(job, pods=2)
    controller.core.patch_namespaced_pod_status(pods[1], NS, {"status": {"phase": "Pending", "containerStatuses": [
        {"name": "stage", "image": "dualtoken:latest", "imageID": "", "ready": False, "restartCount": 0,
         "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]}})
    lines = []
    threading.Timer(0.3, controller.finish, (job, [0, 0])).start()  # first polls: running, one pod stuck; then it ends
    assert backend.wait(job, lines.append).ok
    assert lines[:3] == [f"pod {pods[1]} waiting: ImagePullBackOff: no such image", "[pod 0] pod 0 up",
                         "[pod 1] pod 1 up"]
    with pytest.raises(ApiException):  # both objects cleaned up
        client.CoreV1Api(api).read_namespaced_service(job, NS)


def test_the_prefect_work_pool_template_and_the_flow_rbac_are_valid(tmp_path):
    """The Kubernetes work pool's base job template, rendered as Prefect renders it (its own templating, with the
    variables' defaults; env mapping and command string turned into lists as its Kubernetes worker does), is a valid Job
    meeting the policy; its variables expose GPUs, node selector, tolerations and the service account."""
    import json
    import shlex

    import jsonschema
    import yaml
    from prefect.utilities.templating import apply_values

    template = json.loads((TEMPLATES / "prefect-base-job-template.json").read_text())
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    assert {"gpu_count", "node_selector", "tolerations", "service_account_name", "credentials_secret"} <= set(
        variables["properties"])
    values = {k: v["default"] for k, v in variables["properties"].items() if "default" in v}
    values.update(name="dualtoken-flow-abc", command="prefect flow-run execute", labels={"prefect.io/flow-run": "x"},
                  gpu_count="1", tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    manifest = apply_values(template["job_configuration"]["job_manifest"], values)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]  # the worker's own steps
    container["args"] = shlex.split(container["args"])
    manifest["metadata"]["name"] = manifest["metadata"].pop("generateName") + "x1"  # the API server's step
    for version in VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)
    assert policy_problems(manifest) == [] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"DUALTOKEN_WORKSPACE"} == {e["name"] for e in container["env"]}  # no credential among the variables

    documents = list(yaml.safe_load_all((TEMPLATES / "rbac.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding"]
    for document in documents:
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
    rules = {(group, resource) for rule in documents[1]["rules"] for group in rule["apiGroups"]
             for resource in rule["resources"]}
    assert {("batch", "jobs"), ("", "pods/log"), ("", "services"), ("jobset.x-k8s.io", "jobsets")} <= rules


def test_credential_names_are_recognised_without_false_alarms():
    from dualtoken.launch.manifests import is_secret_name

    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD", "MYSQL_PWD",
                 "PREFECT_API_AUTH_STRING", "SENTRY_DSN", "PREFECT_API_DATABASE_CONNECTION_URL", "HF_TOKEN"):
        assert is_secret_name(name), name
    for name in ("DUALTOKEN_PARENT_RUN_ID", "DUALTOKEN_ARRAY_SIZE", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL",
                 "DUALTOKEN_WORKSPACE", "MONKEY_PATCH"):
        assert not is_secret_name(name), name


def test_the_pods_first_process_passes_sigterm_to_the_stage_and_waits_for_it(tmp_path):
    """What an eviction does to a pod (SIGTERM to PID 1, which DVC would ignore): the shell passes it to the
    stage, which checkpoints and exits; the pod ends with the stage's status, after it."""
    import subprocess
    import sys

    marker = tmp_path / "checkpointed"
    stage = ("import pathlib, signal, sys, time\n"
             "def leave(*_):\n"
             f"    time.sleep(1); pathlib.Path({str(marker)!r}).write_text('ok'); sys.exit(85)\n"
             "signal.signal(signal.SIGTERM, leave)\n"
             "print('ready', flush=True)\n"
             "time.sleep(60)\n")
    pod = subprocess.Popen(["/bin/sh", "-c", FORWARD_TERM, "stage", sys.executable, "-c", stage],
                           stdout=subprocess.PIPE, text=True)
    assert pod.stdout.readline().strip() == "ready"
    pod.terminate()
    assert pod.wait(timeout=30) == 85 and marker.read_text() == "ok"
    # a command that ends by itself ends the pod at once, even if it left a process behind (a daemon)
    leaves_a_daemon = "import subprocess, sys; subprocess.Popen(['sleep', '60']); sys.exit(3)"
    started = time.monotonic()
    done = subprocess.run(["/bin/sh", "-c", FORWARD_TERM, "stage", sys.executable, "-c", leaves_a_daemon], timeout=30)
    assert done.returncode == 3 and time.monotonic() - started < 10
