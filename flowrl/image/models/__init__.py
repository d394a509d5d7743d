"""Model adapters: one ``FlowModel`` per model family (``SD3Policy``, ``FluxPolicy``, ``QwenImagePolicy``,
``Flux2KleinPolicy``, ``ZImagePolicy``, the editing ``FluxKontextPolicy``, ``QwenImageEditPolicy`` and
``QwenImageEditPlusPolicy``; the interface and the ``FAMILIES`` registry are in
``flowrl.image.models.family``), chosen from a diffusers folder's ``model_index.json`` by ``policy_class``, and the
toy base's architecture (``flowrl.image.models.toy``)."""

from __future__ import annotations

import json
import os
from typing import Any

from flowrl.core.errors import ConfigError

from .common import PromptCache, PromptCond
from .family import FAMILIES, FamilyFacts, FlowModel
from .flux import FluxPolicy
from .flux2 import Flux2KleinPolicy
from .flux_kontext import FluxKontextPolicy
from .qwen_image import QwenImagePolicy
from .qwen_image_edit import QwenImageEditPlusPolicy, QwenImageEditPolicy
from .sd3 import SD3Policy
from .wan import WanPolicy
from .wan_i2v import WanI2VPolicy
from .z_image import ZImagePolicy


class ModelPathError(ConfigError, FileNotFoundError):
    """``model.path`` names no usable pipeline folder: a config error (exit code 2) and a ``FileNotFoundError``."""


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


def pipeline_name(path: str) -> str:
    """``_class_name`` of a local folder's ``model_index.json`` (raises when the folder has none)."""
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise ModelPathError(f"model path {path!r} has no model_index.json (expected a diffusers pipeline folder)")
    with open(index) as f:
        return str(json.load(f).get("_class_name", ""))


def policy_class(path: str) -> type[FlowModel]:
    """The adapter for a diffusers folder, from ``model_index.json``'s ``_class_name``."""
    name = pipeline_name(path)
    if name not in FAMILIES:
        supported = ", ".join(FAMILIES.names())
        raise ConfigError(f"model path {path!r} holds a {name or 'unnamed'} pipeline; supported: {supported}")
    return FAMILIES.get(name)


def local_folder(path: str) -> str | None:
    """The local pipeline folder of ``path``: the folder itself, or a hub id's snapshot already in the local Hugging
    Face cache (looked up without the network); None when neither holds a ``model_index.json``."""
    if os.path.isdir(path):
        return path if os.path.isfile(os.path.join(path, "model_index.json")) else None
    from huggingface_hub import try_to_load_from_cache

    try:
        index = try_to_load_from_cache(path, "model_index.json")
    except ValueError:  # not a valid repo id
        return None
    return os.path.dirname(index) if isinstance(index, str) else None


def check_model_options(model: Any) -> None:
    """Run the family's ``check_options`` on a config's ``model`` section (``ModelConfig``) when its folder is at hand
    (local, or a cached hub snapshot): options the checkpoint cannot run are refused before any weight loads."""
    folder = local_folder(model.path)
    if folder is None:
        return
    name = pipeline_name(folder)
    if name in FAMILIES:
        FAMILIES.get(name).check_options(folder, model)


def load_policy(path: str, **options: Any) -> FlowModel:
    """The right adapter for ``path`` (folder or hub id); ``options`` go to its constructor (dtype, device)."""
    path = resolve_model_path(path)
    return policy_class(path)(path, **options)


def policy_for(model: Any, shift: float = 0.0, device: str | Any = "cpu") -> FlowModel:
    """The adapter a config's ``model`` section describes (``ModelConfig``; ``shift``: ``sampler.shift``): loaded
    in ``model.weights_dtype`` with its sequence length, guidance and schedule settings. The trainer, the gallery
    and evaluation all load through here."""
    import torch

    from flowrl.core.sections import WEIGHT_DTYPES

    options: dict[str, Any] = {"max_sequence_length": model.max_sequence_length} if model.max_sequence_length else {}
    dtype = getattr(torch, WEIGHT_DTYPES[model.weights_dtype])
    path = resolve_model_path(model.path)
    cls = policy_class(path)
    cls.check_options(path, model)  # again: a hub id the config check could not read is local now
    if FAMILIES.facts(cls.pipeline_class).video:
        options.update(train_experts=model.train_experts, cfg_scale_2=model.cfg_scale_2)
        options.update({"num_frames": model.frames} if model.frames else {})
    policy = cls(path, device=device, dtype=dtype, **options)
    if FAMILIES.facts(cls.pipeline_class).video:
        policy.frame_size = model.resolution
    policy.cfg_scale, policy.negative_prompt = model.cfg_scale, model.negative_prompt
    policy.schedule_shift = shift
    policy.reference_area = model.reference_size**2 if getattr(model, "reference_size", 0) else None
    if FAMILIES.facts(policy.pipeline_class).guidance_embedding:
        policy.guidance_scale = model.guidance_scale
    policy.prompt_cache = PromptCache(model.prompt_cache) if getattr(model, "prompt_cache", 0) else None
    return policy


def lora_targets(model: Any, policy: FlowModel) -> list[str]:
    """``model.lora_targets``, or the family's default when the list is empty."""
    return list(model.lora_targets) or list(FAMILIES.facts(policy.pipeline_class).lora_targets)


__all__ = [
    "FAMILIES",
    "FamilyFacts",
    "FlowModel",
    "Flux2KleinPolicy",
    "FluxKontextPolicy",
    "FluxPolicy",
    "ModelPathError",
    "PromptCond",
    "QwenImageEditPlusPolicy",
    "QwenImageEditPolicy",
    "QwenImagePolicy",
    "SD3Policy",
    "WanI2VPolicy",
    "WanPolicy",
    "ZImagePolicy",
    "check_model_options",
    "load_policy",
    "local_folder",
    "lora_targets",
    "pipeline_name",
    "policy_class",
    "policy_for",
    "resolve_model_path",
]
