"""``flowrl gallery``: checkpoints or methods side by side on a prompt list with fixed seed indices.

Each column is ``LABEL=SOURCE[@CONFIG]``. SOURCE is ``base`` (the config's model as it is), a checkpoint folder
written by the trainer (``.../checkpoints/<name>``, holding ``lora/`` or ``full/``; or that ``lora`` / ``full``
folder itself), or a ``flowrl bench`` output folder, which becomes one column per reported run (its final
checkpoint, labelled ``LABEL/<method>-r<k>``). CONFIG (default ``--config``) gives the model (toy, SD3.5 or FLUX),
resolution, sampling steps and rewards. Every column generates the same (prompt, seed index) pairs with the ODE
sampler, each from the pair's own noise (``flowrl.generate.eval_noise_seed``), and is scored with the config's
rewards; the page is ``flowrl.gallery.write_gallery``'s (sortable, filterable, works from disk).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from flowrl.options import ConfigError


@dataclass
class ColumnSpec:
    label: str
    source: str  # "base" or a checkpoint folder
    config: str | None


def parse_columns(items: list[str], default_config: str | None) -> list[ColumnSpec]:
    """``LABEL=SOURCE[@CONFIG]`` items, bench folders expanded into one column per method."""
    specs: list[ColumnSpec] = []
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep or not label or not rest:
            raise ConfigError(f"--column {item!r} must look like LABEL=SOURCE (e.g. trained=runs/x/checkpoints/final)")
        source, _, config = rest.partition("@")
        config = config or default_config
        if source != "base" and not os.path.isdir(source):
            raise ConfigError(f"--column {label}: {source!r} is neither 'base' nor a folder")
        if source != "base" and os.path.isfile(os.path.join(source, "results.json")):  # a bench output
            methods = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d, "checkpoints")))
            specs += [
                ColumnSpec(f"{label}/{m}", os.path.join(source, m, "checkpoints", "final"), config) for m in methods
            ]
        else:
            specs.append(ColumnSpec(label, source, config))
    return specs


def load_column_policy(cfg, source: str):
    """The config's model with ``source``'s trained weights: a LoRA adapter or a full transformer."""
    from flowrl.models import policy_for

    policy = policy_for(cfg.model, cfg.sampler.shift)
    if source == "base":
        return _with_untrained_copy(cfg, policy, lora=False)
    lora = next((p for p in (os.path.join(source, "lora"), source) if _is_lora(p)), None)
    full = next((p for p in (os.path.join(source, "full"), source) if _is_full(p)), None)
    if lora is not None:
        policy.transformer.load_lora_adapter(
            lora, prefix="transformer", adapter_name="gallery", weight_name="pytorch_lora_weights.safetensors"
        )
    elif full is not None:
        trained = type(policy.transformer).from_pretrained(full, torch_dtype=policy.transformer.dtype)
        policy.transformer = trained.to(policy.device).eval().requires_grad_(False)
    else:
        raise ConfigError(f"{source!r} holds no LoRA (pytorch_lora_weights.safetensors) or full transformer")
    return _with_untrained_copy(cfg, policy, lora=lora is not None)


def _with_untrained_copy(cfg: Any, policy: Any, lora: bool) -> Any:
    """Sample as the trainer evaluates: through the untrained copy that ``model.untrained_copy`` asks for."""
    from flowrl.models.untrained import untrained_copy

    policy.untrained = untrained_copy(policy, cfg.model.untrained_copy, lora, sharded=False)
    return policy


def _is_lora(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "pytorch_lora_weights.safetensors"))


def _is_full(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.startswith("diffusion_pytorch_model") for f in os.listdir(path)
    )


def render(
    specs: list[ColumnSpec], prompts: list[str], seeds: list[int], out_dir: str, title: str = "flowrl gallery"
) -> dict[str, str]:
    """Generate and score every column on the same (prompt, seed) rows; write the gallery; return its paths."""
    from flowrl.config import load_config
    from flowrl.gallery import GalleryColumn, write_gallery
    from flowrl.generate import generate
    from flowrl.rewards import RewardSet

    rows_p = [p for p in prompts for _ in seeds]
    rows_s = [s for _ in prompts for s in seeds]
    columns, sort_key = [], None
    for spec in specs:
        cfg = load_config(spec.config)
        policy = load_column_policy(cfg, spec.source)
        images = generate(
            policy, rows_p, rows_s, resolution=cfg.model.resolution, num_steps=cfg.eval.num_steps,
            solver=cfg.eval.solver, batch_size=cfg.train.sample_batch or 64,
        )  # fmt: skip
        rewards = RewardSet.from_specs([vars(r) for r in cfg.rewards])
        groups = torch.tensor([prompts.index(p) for p in rows_p])
        total, parts = rewards(images, rows_p, groups)
        scores = {"reward": total, **parts}
        per_image = [{k: float(v[i]) for k, v in scores.items()} for i in range(len(rows_p))]
        columns.append(GalleryColumn(spec.label, images, per_image))
        sort_key = "reward"
    return write_gallery(out_dir, rows_p, rows_s, columns, title=title, sort_key=sort_key)


__all__ = ["ColumnSpec", "load_column_policy", "parse_columns", "render"]
