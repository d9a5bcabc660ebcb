"""The backend a stage's job goes to, from the ``launch`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

from dualtoken.config import LaunchConfig
from dualtoken.launch.job import Backend
from dualtoken.launch.kubernetes import KubernetesBackend, KubernetesSettings
from dualtoken.launch.local import LocalBackend
from dualtoken.launch.slurm import SlurmBackend, SlurmSettings


def backend_for(launch: LaunchConfig, stage: str, workspace: Path) -> Backend:
    """A fresh backend for ``stage`` (relative paths in ``launch`` are taken from the workspace)."""
    want = launch.for_stage(stage)
    log_dir = workspace / launch.log_dir
    if want.backend == "local":
        return LocalBackend(log_dir)
    if want.backend == "kubernetes":
        k8s = launch.kubernetes
        return KubernetesBackend(KubernetesSettings(
            templates=workspace / k8s.templates, namespace=k8s.namespace, context=k8s.context, image=k8s.image,
            image_pull_policy=k8s.image_pull_policy, service_account=k8s.service_account,
            workspace_claim=k8s.workspace_claim, workspace_path=k8s.workspace_path, shm_size=k8s.shm_size,
            node_selector=k8s.node_selector, tolerations=tuple(k8s.tolerations),
            env_from_secrets=tuple(k8s.env_from_secrets),
            secret_env={var: (ref.secret, ref.key) for var, ref in k8s.secret_env.items()},
            multi_node=k8s.multi_node, rdzv_port=k8s.rdzv_port, ttl_after_finished_s=k8s.ttl_after_finished_s,
            poll_s=k8s.poll_s, nodes=want.nodes, gpus_per_node=want.gpus_per_node,
            cpus_per_task=want.cpus_per_task, mem=want.mem), log_dir)
    site = launch.slurm
    return SlurmBackend(SlurmSettings(template=workspace / site.template, nodes=want.nodes,
                                      cpus_per_task=want.cpus_per_task, gpus_per_node=want.gpus_per_node,
                                      mem=want.mem, partition=site.partition, account=site.account, qos=site.qos,
                                      setup=tuple(site.setup), poll_s=site.poll_s), log_dir)
