"""Checkpoints that a killed run resumes from with the same subsequent losses.

A checkpoint is a folder ``step-00000120/`` holding every model (safetensors), optimizer and scheduler
state (tensors and plain values only, loaded with ``weights_only=True``: nothing arbitrary is unpickled),
every rank's RNG state, and a JSON of trainer state (data position, ...). It is written under a
temporary name and renamed into place, so a folder that exists is complete; the newest ``keep`` are kept.
"""

from __future__ import annotations

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

PREFIX = "step-"


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
