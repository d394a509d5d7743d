"""The warm-up + cosine learning-rate schedule of the trainers (`train.lr_schedule`) and the pretraining scripts."""

from __future__ import annotations

import math


def warmup_cosine(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of ``peak`` at step ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


__all__ = ["warmup_cosine"]
