"""One base for the library's expected failures, so every entry point (DVC stage, CLI, flow) can print
them as one clear line with exit status 2, while anything else (a bug) keeps its traceback."""

from __future__ import annotations


class DualtokenError(Exception):
    """A failure whose message says what is wrong and how to fix it."""


class AccountingError(DualtokenError, RuntimeError):
    """Samples in and samples out differ somewhere: one went missing, which must never pass silently."""
