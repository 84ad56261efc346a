"""Atomic, resumable training checkpoints.

A checkpoint is a plain dict of tensors, numbers, strings and lists (model,
optimizer and scheduler state dicts, step, RNG state, the run's settings), so it
loads with ``torch.load(..., weights_only=True)``. It is written to a temporary
file beside the target and renamed over it: an interrupted save never leaves a
truncated checkpoint, and the previous one stays valid until the rename.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LAST = "last.pt"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temp file + ``os.replace``)."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (no unpickling of objects)."""
    return torch.load(str(path), map_location=map_location, weights_only=True)


def training_state(model: torch.nn.Module, optimizer, scheduler, step: int, extra: dict | None = None) -> dict:
    """Everything needed to continue a run at ``step``."""
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "step": int(step),
            "torch_rng": torch.get_rng_state(),
            "extra": extra or {}}


def restore_state(state: dict, model: torch.nn.Module, optimizer, scheduler) -> int:
    """Load a :func:`training_state` into live objects; returns its step."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def last_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The run's latest checkpoint, or None."""
    p = Path(run_dir) / LAST
    return p if p.exists() else None
