"""Checkpoints that a killed run resumes from with the same subsequent losses.

A checkpoint is a folder ``step-00000120/`` holding every model (safetensors), optimizer and scheduler
state (tensors and plain values only, loaded with ``weights_only=True``: nothing arbitrary is unpickled),
every rank's RNG state, and a JSON of trainer state (data position, ...). It is written under a
temporary name and renamed into place, so a folder that exists is complete; the newest ``keep`` are kept.
The folder holding them is tied to a fingerprint of what makes them valid to resume
(``claim_checkpoint_folder``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from dualtoken.storage import atomic_write
from dualtoken.training.distributed import DistContext

PREFIX = "step-"
FINGERPRINT_FILE = "fingerprint.json"


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    plain = {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in sorted(tensors) if k.startswith("cuda")])
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _noop() -> None:
    return None


class Checkpointer:
    """Saves and restores named models/optimizers/schedulers; in a process group, rank 0 writes the shared
    parts and every rank its own RNG state (``barrier`` must then be the group's barrier)."""

    def __init__(self, folder: str | Path, keep: int = 2, rank: int = 0,
                 barrier: Callable[[], None] = _noop) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.folder, self.keep, self.rank, self.barrier = Path(folder), keep, rank, barrier

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written ones still carry their temporary name)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, models: Mapping[str, torch.nn.Module], optimizers: Mapping[str, Any] | None = None,
             schedulers: Mapping[str, Any] | None = None, state: dict[str, Any] | None = None) -> Path:
        final = self.folder / f"{PREFIX}{step:08d}"
        tmp = self.folder / f".{final.name}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        rng_tensors, rng_plain = _rng_state()
        save_file(rng_tensors, str(tmp / f"rng-rank{self.rank}.safetensors"))
        with atomic_write(tmp / f"rng-rank{self.rank}.json", "w") as handle:
            json.dump(rng_plain, handle)
        self.barrier()
        if self.rank == 0:
            for name, model in models.items():
                save_model(model, str(tmp / f"{name}.safetensors"))
            for name, obj in {**(optimizers or {}), **(schedulers or {})}.items():
                torch.save(obj.state_dict(), tmp / f"{name}.pt")
            with atomic_write(tmp / "state.json", "w") as handle:
                json.dump({"step": step, "state": state or {}}, handle)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in self.checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return final

    def load(self, path: str | Path, models: Mapping[str, torch.nn.Module], optimizers: Mapping[str, Any] | None = None,
             schedulers: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """Restore everything saved; returns (step, trainer state)."""
        path = Path(path)
        for name, model in models.items():
            load_model(model, str(path / f"{name}.safetensors"), strict=True)  # raises on any mismatch
        for name, obj in {**(optimizers or {}), **(schedulers or {})}.items():
            obj.load_state_dict(torch.load(path / f"{name}.pt", weights_only=True))
        rng_file = path / f"rng-rank{self.rank}.safetensors"
        if not rng_file.is_file():
            raise FileNotFoundError(f"{path} holds no RNG state for rank {self.rank}: it was written by fewer "
                                    "processes; resume with the same number of processes")
        _set_rng_state(load_file(str(rng_file)), json.loads((path / f"rng-rank{self.rank}.json").read_text()))
        meta = json.loads((path / "state.json").read_text())
        return int(meta["step"]), meta["state"]


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def library_digest() -> str:
    """Digest of the library's Python sources: checkpoints written by other code are not resumed, so an
    output DVC records for new code never continues a run of the old code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def claim_checkpoint_folder(work_dir: str | Path, print_fn: Callable[[str], None], ctx: DistContext,
                            identity: dict[str, Any]) -> Path:
    """``work_dir/checkpoints``, with checkpoints written for another configuration set aside.

    ``identity`` is everything that makes a checkpoint valid to resume (config, data digest, process
    count); the library's code digest is added here.
    """
    folder = Path(work_dir) / "checkpoints"
    marker = Path(work_dir) / FINGERPRINT_FILE
    identity = {**identity, "code": library_digest()}
    wanted = fingerprint(identity)
    if ctx.is_main:
        found = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        if found != wanted and folder.exists():
            stale = folder.with_name(f"checkpoints.stale-{found or 'unknown'}")
            shutil.rmtree(stale, ignore_errors=True)
            folder.rename(stale)
            print_fn(f"checkpoints in {folder} were written for another configuration, corpus or code version: "
                     f"moved to {stale}, starting fresh")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"fingerprint": wanted, "identity": identity}, indent=1, default=str))
    ctx.barrier()
    return folder


def open_checkpoints(work_dir: str | Path, print_fn: Callable[[str], None], ctx: DistContext, keep: int,
                     identity: dict[str, Any]) -> Checkpointer:
    folder = claim_checkpoint_folder(work_dir, print_fn, ctx, identity)
    return Checkpointer(folder, keep=keep, rank=ctx.rank, barrier=ctx.barrier)
