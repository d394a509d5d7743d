"""Per-prompt running statistics (DDPO): compare each sample with the recent history of its prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flowrl.core.options import option

from .core import ADVANTAGES, AdvantageBatch, AdvantageConfig, AdvantageResult, Groups, finish


@dataclass
class TrackerOptions:
    """The per-prompt tracker's own options."""

    FLAT: ClassVar[dict[str, str]] = {"tracker_buffer": "buffer", "tracker_min_count": "min_count"}

    buffer: int = option(32, "rewards kept per prompt", low=1)
    min_count: int = option(16, "below this many rewards of a prompt, use batch statistics", low=1)


@ADVANTAGES.register("per-prompt", options=TrackerOptions, needs=("prompt_keys",))
def per_prompt(
    batch: AdvantageBatch, cfg: AdvantageConfig, options: TrackerOptions, state: dict[str, Any]
) -> AdvantageResult:
    """(r − mean_p) / (std_p + eps) with mean/std over the last ``options.buffer`` rewards of prompt p
    (this batch's included). Until a prompt has ``options.min_count`` rewards, the batch-wide
    mean/std are used instead. The buffers live in ``state["per_prompt"]`` (prompt → list of floats),
    plain data that saves with the trainer state.
    """
    if batch.prompt_keys is None or len(batch.prompt_keys) != batch.rewards.shape[0]:
        raise ValueError("the per-prompt estimator needs batch.prompt_keys, one prompt string per sample")
    r = batch.combined()
    buffers: dict[str, list[float]] = state.setdefault("per_prompt", {})
    values = r.tolist()
    for key, value in zip(batch.prompt_keys, values, strict=True):
        buffers.setdefault(key, []).append(value)
    for key in set(batch.prompt_keys):
        del buffers[key][: -options.buffer]
    batch_mean, batch_std = r.mean(), r.std(unbiased=cfg.std_unbiased) if r.numel() > 1 else r.new_tensor(0.0)
    mean, std = torch.empty_like(r), torch.empty_like(r)
    for i, key in enumerate(batch.prompt_keys):
        history = buffers[key]
        if len(history) < options.min_count:
            mean[i], std[i] = batch_mean, batch_std
        else:
            h = torch.tensor(history, dtype=r.dtype)
            mean[i], std[i] = h.mean(), h.std(unbiased=cfg.std_unbiased)
    groups = Groups.of(batch.group_id)
    constant = std == 0
    adv = torch.where(constant, torch.zeros_like(r), (r - mean) / (std + cfg.eps))
    return finish(adv, constant, groups, cfg, **{"tracker/prompts": float(len(buffers))})
