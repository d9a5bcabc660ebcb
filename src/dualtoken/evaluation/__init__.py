"""Metrics computed by the stages: zero-shot and retrieval through a text tower, reconstruction quality."""
