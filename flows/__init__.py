"""Prefect flows: chain the DVC stages, retry them, and record the pipeline run."""
