"""The toy video world's evaluator as a reward (``flowrl.image.toy_video``): each clip ``[F, 3, H, W]`` is scored on
``objects`` (in every frame), ``motion`` (the named direction, steadily) and ``consistency`` (no flicker), and
``score`` is their mean (or, with ``part``, that one part: list the reward once per part under a ``label`` to give
GDPO the parts as columns); every part is logged (``toy-video/motion`` ...) so that a frozen clip, which keeps its
objects and consistency but does not move, shows as what it is."""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.image.toy_video import score_clip

from .base import REWARDS, RewardFn, Scores

PARTS = ("objects", "motion", "consistency")


@REWARDS.register("toy-video", scores=Scores.VIDEOS)
def toy_video(part: str | None = None) -> RewardFn:
    """Factory of the toy video reward; ``part`` (one of ``PARTS``) makes ``score`` that part alone."""
    if part is not None and part not in PARTS:
        raise ValueError(f"toy-video part must be one of {', '.join(PARTS)}, got {part!r}")

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        if images.ndim != 5:
            raise ValueError(f"toy-video scores videos [B, F, 3, H, W], got shape {tuple(images.shape)}")
        scores = [score_clip(clip, p) for clip, p in zip(images, prompts, strict=True)]
        parts = {k: torch.tensor([s[k] for s in scores]) for k in PARTS}
        score = parts[part] if part is not None else sum(parts.values()) / len(PARTS)
        return {"score": score, **parts}

    return reward
