"""Means and standard errors with the prompt as the unit.

Evaluation draws a few images (seeds) for each of many prompts. The images of one prompt are not independent draws:
they share the prompt's difficulty, so a standard error that treats every image as a unit is too small. Here the
unit is the prompt: each prompt's mean over its images, then the mean and the standard error of those prompt means
(a cluster standard error). With independent noise per (prompt, seed) pair this interval has its nominal coverage;
``tests/test_stats.py`` checks it against the per-image one.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from flowrl.core.inputs import row_key


def unit_means(values: Tensor, units: Sequence[Hashable]) -> Tensor:
    """``[U]`` mean of ``values`` ``[N]`` within each unit (in order of first appearance); NaN values (unscored
    samples) are left out, and a unit with no finite value is dropped."""
    if values.numel() != len(units):
        raise ValueError(f"{values.numel()} values but {len(units)} unit labels")
    index: dict[Hashable, int] = {}
    ids = torch.tensor([index.setdefault(u, len(index)) for u in units], dtype=torch.long)
    v = values.detach().double().flatten().cpu()
    seen = ~torch.isnan(v)
    sums = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids[seen], v[seen])
    counts = torch.zeros(len(index), dtype=torch.float64).index_add_(0, ids[seen], torch.ones_like(v[seen]))
    keep = counts > 0
    return sums[keep] / counts[keep]


def mean_se(values: Tensor | Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of ``values`` ``[N]`` taken as independent units (NaN SE for fewer than two): images
    of distinct prompts, or the repeats of a benchmark run."""
    v = torch.as_tensor(values).detach().double().flatten().cpu()
    if v.numel() == 0:
        return math.nan, math.nan
    se = (v.std() / math.sqrt(v.numel())).item() if v.numel() > 1 else math.nan
    return v.mean().item(), se


def prompt_mean_se(values: Tensor, prompts: Sequence[Hashable]) -> tuple[float, float]:
    """Mean of ``values`` ``[N]`` (one per image; ``prompts[i]`` is image ``i``'s prompt) and its standard error
    with the prompt as the unit: the mean and SE of the per-prompt means. For a paired gain pass
    ``after − before`` of the same (prompt, seed) pairs. A ``PromptRow`` (a text its file repeats with other
    inputs) is its own unit."""
    return mean_se(unit_means(values, [row_key(p) for p in prompts]))


__all__ = ["mean_se", "prompt_mean_se", "unit_means"]
