"""Compute backends: run a job (a stage's command) somewhere and report how it ended.

One interface (``submit``, ``wait`` with log streaming, ``cancel``, the exit status) over the local
machine today; Slurm and Kubernetes implement the same interface.
"""
