"""The toy world's rule-based evaluator as a reward: ``score`` is the partial score in [0, 1]
(counts, colours, shapes, positions), ``strict`` the 0/1 GenEval-style correctness, ``objects`` the number of objects
found (a diagnostic; ``advantage.strata: toy-geneval/objects`` stratifies a prompt's images by it)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.image.toy_world import evaluate, parse_prompt

from .base import REWARDS, RewardFn


@REWARDS.register("toy-geneval")
def toy_geneval() -> RewardFn:
    """Factory of the toy evaluator reward (no options)."""

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        scores = [evaluate(img, parse_prompt(p)) for img, p in zip(images, prompts, strict=True)]
        return {
            "score": torch.tensor([s.partial for s in scores]),
            "strict": torch.tensor([s.strict for s in scores]),
            "objects": torch.tensor([float(s.objects) for s in scores]),
        }

    return reward
