"""Compute backends: run a job (a stage's command) somewhere and report how it ended.

One interface (``submit``, ``wait`` with log streaming, ``cancel``, the exit status; ``run_job`` ties them
together) and three implementations: ``local`` (processes on this machine), ``slurm`` (sbatch) and
``kubernetes`` (Jobs / JobSets through the API); ``select.backend_for`` picks one per stage from the
configuration.
"""
