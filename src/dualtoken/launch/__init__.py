"""Compute backends: run a job (a stage's command) somewhere and report how it ended.

One interface (``submit``, ``wait`` with log streaming, ``cancel``, the exit status): ``local`` (processes on
this machine) and ``slurm`` (sbatch); Kubernetes is to implement the same interface.
"""
