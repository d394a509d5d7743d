"""Checkpoints: trainer state files, random-number states, and the checkpoint folders of a run.

A run's periodic checkpoints are ``<run>/checkpoints/iter-NNNNNN`` (and ``final``), each written under a temporary
name and renamed into place (``flowrl.core.atomic.atomic_dir``), so a folder with that name is always complete: a
process killed while writing leaves only a hidden temporary folder, which the next save removes. Older periodic
checkpoints are deleted the same way round (renamed away, then removed). State files are read back with
``torch.load(weights_only=True)``: tensors and plain Python values only, never arbitrary objects.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowrl.core.errors import ConfigError

STATE_FILE = "trainer_state.pt"
_PERIODIC = re.compile(r"iter-(\d+)$")


def save_state(path: str, state: dict[str, Any]) -> None:
    """``torch.save`` a trainer state made of tensors and plain Python values."""
    torch.save(state, path)


def load_state(path: str) -> dict[str, Any]:
    """Load a trainer state without unpickling arbitrary objects (``weights_only=True``); ``path`` is the state
    file or its checkpoint folder."""
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    if not os.path.isfile(path):
        from flowrl.core.errors import DataError

        raise DataError(f"checkpoint {os.path.dirname(path)!r} has no {STATE_FILE} (not a flowrl checkpoint)")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states() -> dict[str, Any]:
    """The global generators' states: Python's ``random``, NumPy's, torch's CPU (and CUDA) generator."""
    kind, keys, pos, gauss_next, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": plain(random.getstate()),
        "numpy": [kind, keys.tolist(), pos, gauss_next, cached],  # ints: a uint32 tensor does not pickle over gloo
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what ``rng_states`` returned."""
    random.setstate(python_state(state["python"]))
    kind, keys, pos, gauss_next, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, gauss_next, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(value: Any) -> Any:
    """Tuples (and other iterables) as lists and string subclasses as strings, recursively, so that ``weights_only``
    loading reads them back."""
    if isinstance(value, dict):
        return {(str(k) if isinstance(k, str) else k): plain(v) for k, v in value.items()}
    if isinstance(value, str):
        return str(value)  # a str subclass (a prompt row) would not load under weights_only
    if isinstance(value, (bytes, Tensor)) or not hasattr(value, "__iter__"):
        return value
    return [plain(v) for v in value]


def python_state(value: list) -> tuple:
    """A ``random.Random`` state saved by ``plain`` as nested lists, back as the tuple ``setstate`` wants."""
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)


@torch.no_grad()
def copy_into(targets: list[Tensor], values: list[Tensor]) -> None:
    """Copy whole CPU tensors into parameters (or EMA averages); a sharded ``DTensor`` takes its own shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if len(targets) != len(values):
        raise ConfigError(f"checkpoint holds {len(values)} trainable tensors, the model has {len(targets)}")
    for t, v in zip(targets, values, strict=True):
        if tuple(t.shape) != tuple(v.shape):
            raise ConfigError(f"checkpoint tensor of shape {tuple(v.shape)} for a weight of shape {tuple(t.shape)}")
        if isinstance(t, DTensor):
            v = distribute_tensor(v.to(t.device_mesh.device_type), t.device_mesh, t.placements)
        t.copy_(v)


def periodic(checkpoints: str) -> list[tuple[int, str]]:
    """``(iteration, path)`` of the run's periodic checkpoints, oldest first."""
    if not os.path.isdir(checkpoints):
        return []
    found = [(_PERIODIC.match(name), name) for name in os.listdir(checkpoints)]
    return sorted((int(m.group(1)), os.path.join(checkpoints, name)) for m, name in found if m)


def latest(checkpoints: str) -> str | None:
    """The newest complete checkpoint of a run (``final`` counts with its own iteration), or None."""
    found = periodic(checkpoints)
    final = os.path.join(checkpoints, "final")
    if os.path.isfile(os.path.join(final, STATE_FILE)):
        found.append((int(load_state(final)["iteration"]), final))
    return max(found)[1] if found else None


def prune(checkpoints: str, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (``keep = 0``: delete none), and what killed
    writers left behind (hidden temporary folders). Each is renamed to a hidden name first, so no half-deleted
    folder is ever taken for a checkpoint. Called by the one process that writes checkpoints, after a save."""
    for name in os.listdir(checkpoints) if os.path.isdir(checkpoints) else []:
        if name.startswith(".") and (".tmp-" in name or name.startswith(".deleting-")):
            shutil.rmtree(os.path.join(checkpoints, name), ignore_errors=True)
    if keep <= 0:
        return
    for _, path in periodic(checkpoints)[:-keep]:
        trash = os.path.join(checkpoints, f".deleting-{os.path.basename(path)}")
        os.replace(path, trash)
        shutil.rmtree(trash)


__all__ = [
    "STATE_FILE",
    "copy_into",
    "latest",
    "load_state",
    "periodic",
    "plain",
    "prune",
    "python_state",
    "rng_states",
    "save_state",
    "set_rng_states",
]
