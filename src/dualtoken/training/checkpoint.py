"""Checkpoints that a killed run resumes from with the same subsequent losses.

A checkpoint is a folder ``step-00000120/`` holding the model (safetensors), optimizer and scheduler
state (tensors and plain values only, loaded with ``weights_only=True``: nothing arbitrary is unpickled),
every RNG state, and a JSON of trainer state (data position, ...). It is written under a temporary name
and renamed into place, so a folder that exists is complete; the newest ``keep`` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
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


class Checkpointer:
    def __init__(self, folder: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.folder, self.keep = Path(folder), keep

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written ones still carry their temporary name)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             scheduler: Any | None = None, state: dict[str, Any] | None = None) -> Path:
        final = self.folder / f"{PREFIX}{step:08d}"
        tmp = self.folder / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        rng_tensors, rng_plain = _rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        with atomic_write(tmp / "state.json", "w") as handle:
            json.dump({"step": step, "rng": rng_plain, "state": state or {}}, handle)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             scheduler: Any | None = None) -> tuple[int, dict[str, Any]]:
        """Restore everything saved; returns (step, trainer state)."""
        path = Path(path)
        load_model(model, str(path / "model.safetensors"), strict=True)  # raises on any mismatch
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        meta = json.loads((path / "state.json").read_text())
        _set_rng_state(load_file(str(path / "rng.safetensors")), meta["rng"])
        return int(meta["step"]), meta["state"]
