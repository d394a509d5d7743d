"""Model adapters: a policy object per model family (``SD3Policy``, ``FluxPolicy``), chosen from a
diffusers folder by ``load_policy``, and the toy base's architecture (``flowrl.models.toy``)."""

from __future__ import annotations

import json
import os
from typing import Any

from flowrl.options import ConfigError

from .common import PromptCond
from .flux import FluxPolicy
from .sd3 import SD3Policy


class ModelPathError(ConfigError, FileNotFoundError):
    """``model.path`` names no usable pipeline folder: a config error (exit code 2) and a ``FileNotFoundError``."""


#: pipeline class recorded in model_index.json → adapter
FAMILIES: dict[str, type] = {"StableDiffusion3Pipeline": SD3Policy, "FluxPipeline": FluxPolicy}


def resolve_model_path(path: str) -> str:
    """A local folder as is; a hub id (``org/name``) → its local snapshot, downloaded (or found in the
    Hugging Face cache) with the subfolders a diffusers pipeline needs, as ``from_pretrained`` would."""
    if os.path.isdir(path):
        return path
    from diffusers import DiffusionPipeline

    try:
        return str(DiffusionPipeline.download(path))
    except Exception as e:  # hub errors come in many classes; all mean "could not get the files"
        raise ModelPathError(
            f"model.path {path!r} is not a local folder and could not be fetched from the hub "
            f"({type(e).__name__}: {e}); download it first or point model.path at a local copy"
        ) from e


def policy_class(path: str) -> type:
    """The adapter for a diffusers folder, from ``model_index.json``'s ``_class_name``."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ModelPathError(f"model path {path!r} has no model_index.json (expected a diffusers pipeline folder)")
    with open(index) as f:
        name = json.load(f).get("_class_name", "")
    if name not in FAMILIES:
        supported = ", ".join(FAMILIES)
        raise ConfigError(f"model path {path!r} holds a {name or 'unnamed'} pipeline; supported: {supported}")
    return FAMILIES[name]


def load_policy(path: str, **options: Any) -> SD3Policy | FluxPolicy:
    """The right adapter for ``path`` (folder or hub id); ``options`` go to its constructor (dtype, device)."""
    path = resolve_model_path(path)
    return policy_class(path)(path, **options)


__all__ = [
    "FAMILIES",
    "FluxPolicy",
    "ModelPathError",
    "PromptCond",
    "SD3Policy",
    "load_policy",
    "policy_class",
    "resolve_model_path",
]
