"""Trainer state files: saved with ``torch.save``, read back without unpickling arbitrary objects.
Checkpoint folders are written with ``flowrl.atomic.atomic_dir``."""

from __future__ import annotations

from typing import Any

import torch


def save_state(path: str, state: dict[str, Any]) -> None:
    """``torch.save`` a trainer state made of tensors and plain Python values."""
    torch.save(state, path)


def load_state(path: str) -> dict[str, Any]:
    """Load a trainer state without unpickling arbitrary objects (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


__all__ = ["load_state", "save_state"]
