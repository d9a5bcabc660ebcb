"""The ``launch`` section: where the flow runs each stage (local, Slurm, Kubernetes) and with what resources;
the backends (``launch.slurm``, ``launch.kubernetes``) read these models directly.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dualtoken.schema import Strict

StageName = Literal["curate", "teacher", "tokenizer", "tokenize", "mllm", "ablation", "evaluate"]

SLICED_STAGES = ("curate", "tokenize")  # their input shards can be split over an array job's tasks
# The process count a stage's GPUs must match: one process per GPU.
STAGE_PROCESSES = {"teacher": "teacher", "tokenizer": "tokenizer", "tokenize": "tokenize", "mllm": "mllm",
                    "ablation": "tokenizer"}


class StageLaunch(Strict):
    """Where one stage's job runs and what it asks the scheduler for (the local backend runs it here as is)."""

    backend: Literal["local", "slurm", "kubernetes"] = "local"
    nodes: int = Field(1, ge=1, le=1024, description="> 1: the stage's torchrun spans the nodes (srun + c10d)")
    gpus_per_node: int = Field(0, ge=0, le=64, description="GPUs per node; the job runs one process per GPU "
                               "(runtime.nproc counts processes only where a stage runs here)")
    cpus_per_task: int = Field(1, ge=1, le=1024, description="CPUs per node for the stage's processes")
    mem: str | None = Field(None, pattern=r"^[0-9]+[KMGT]?$", description="memory per node, e.g. 64G")
    time_limit_min: int | None = Field(None, ge=1, description="the job is stopped (timed out) after this long")
    array: int = Field(0, ge=0, le=1000, description="curate/tokenize: split the input shards over this many "
                                                      "array tasks that run before the stage itself")

    @model_validator(mode="after")
    def _fits_the_backend(self) -> StageLaunch:
        if self.backend == "local" and self.nodes > 1:
            raise ValueError(f"nodes: the local backend runs on this machine; nodes={self.nodes} needs a scheduler "
                             "(backend: slurm or kubernetes)")
        if self.array and self.nodes > 1:
            raise ValueError("array: each array task runs on one node; set nodes: 1")
        if self.backend == "kubernetes" and self.mem is None:
            raise ValueError("mem: a Kubernetes job needs a memory limit (e.g. mem: 64G)")
        return self


class SlurmSite(Strict):
    """What every Slurm job of the pipeline gets (the job's own resources are per stage)."""

    template: str = Field("infra/slurm/stage.sbatch", description="sbatch template, relative to the workspace")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    setup: list[str] = Field(default_factory=list, description="shell lines before the command: module loads, "
                                                               "venv activation, a container's environment")
    sbatch: list[str] = Field(default_factory=list, description="more sbatch options for every job, as given, e.g. "
                              "--constraint=a100 or --exclusive")
    poll_s: float = Field(5.0, gt=0.0, description="how often the job's state and log are read")
    signal_before_limit_s: int = Field(300, ge=10, description="a job with a time limit is warned this long "
                                       "before it (SIGUSR1): a training stage checkpoints and the job requeues")
    max_requeues: int = Field(3, ge=0, le=100, description="a preempted job, or one whose node failed, is "
                              "requeued up to this many times before the stage fails")

    @field_validator("sbatch")
    @classmethod
    def _options(cls, options: list[str]) -> list[str]:
        bad = [o for o in options if not o.startswith("-") or "\n" in o]
        if bad:
            raise ValueError(f"each entry is one sbatch option such as --constraint=a100, not {bad}")
        return options


class SecretKey(Strict):
    """One key of a Kubernetes Secret: the job sees its value, the configuration only its name."""

    secret: str
    key: str


class KubernetesSite(Strict):
    """What every Kubernetes job of the pipeline gets (the job's own resources are per stage). Secrets are named,
    never given: ``env_from_secrets`` (every key of each Secret) and ``secret_env`` (one key per variable)."""

    namespace: str = "default"
    context: str | None = Field(None, description="kubeconfig context; null: in-cluster config in a pod, else "
                                                  "the current context")
    image: str = Field("dualtoken:latest", description="the image built from infra/docker/")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str | None = Field(None, description="the pods' service account (none needs API access)")
    workspace_claim: str | None = Field(None, description="PersistentVolumeClaim holding the workspace (checkout, "
                                                          "DVC cache), mounted at workspace_path")
    workspace_path: str = Field("/workspace", description="where the claim is mounted; the flow's workspace must "
                                                         "be this path or below it, as the pods see it")
    shm_size: str = Field("16Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$", description="/dev/shm (DataLoader, NCCL)")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env_from_secrets: list[str] = Field(default_factory=list, description="Secrets whose keys become variables")
    secret_env: dict[str, SecretKey] = Field(default_factory=dict, description="variable -> {secret, key}")
    multi_node: Literal["indexed-job", "jobset"] = Field("indexed-job", description="several nodes: an indexed "
                                                         "Job + headless Service, or a JobSet (its CRDs installed)")
    rdzv_port: int = Field(29500, ge=1024, le=65535)
    ttl_after_finished_s: int = Field(86_400, ge=0, description="finished jobs (and their logs) are kept this long")
    templates: str = Field("infra/k8s", description="manifest templates, relative to the workspace")
    poll_s: float = Field(10.0, gt=0.0)
    max_disruptions: int = Field(3, ge=0, le=100, description="pods lost to an eviction, preemption or node drain "
                                 "replaced per job (its backoffLimit); a pod that fails by itself fails the job")
    labels: dict[str, str] = Field(default_factory=dict, description="added to every job and pod, e.g. "
                                   "kueue.x-k8s.io/queue-name")
    annotations: dict[str, str] = Field(default_factory=dict, description="added to every job and pod")
    priority_class: str | None = Field(None, description="the pods' priorityClassName (preemption, Kueue)")


class LaunchConfig(Strict):
    """Where the flow runs each stage: ``stages`` maps a stage to its backend and resources; others run here.
    Every backend runs ``dvc repro <stage>`` in the workspace, so it must be on a filesystem the jobs share."""

    log_dir: str = Field("logs/jobs", description="job scripts and logs, relative to the workspace")
    slurm: SlurmSite = SlurmSite()
    kubernetes: KubernetesSite = KubernetesSite()
    stages: dict[StageName, StageLaunch] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _stage_limits(self) -> LaunchConfig:
        for stage, launch in self.stages.items():
            if launch.array and stage not in SLICED_STAGES:
                raise ValueError(f"stages.{stage}.array: only {', '.join(SLICED_STAGES)} split their inputs over "
                                 "array tasks")
            if launch.nodes > 1 and stage not in STAGE_PROCESSES:
                raise ValueError(f"stages.{stage}.nodes: {stage} runs in one process; only "
                                 f"{', '.join(STAGE_PROCESSES)} span nodes")
            if launch.backend == "kubernetes" and not self.kubernetes.workspace_claim:
                raise ValueError(f"stages.{stage}: a Kubernetes job needs the workspace: set "
                                 "kubernetes.workspace_claim (a PersistentVolumeClaim the flow's pod mounts too)")
            if launch.nodes > 1 and launch.backend == "kubernetes" and stage == "ablation":
                raise ValueError("stages.ablation.nodes: on Kubernetes every pod runs its own command, and the "
                                 "ablation's variants run one after another in pod 0: use one node (or Slurm)")
        return self

    def for_stage(self, stage: str) -> StageLaunch:
        return self.stages.get(stage, StageLaunch())  # type: ignore[call-overload]
