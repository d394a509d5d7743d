"""The toy world's learned reward (``flowrl.image.toy_reward``): a small CNN trained to predict the toy evaluator's
partial score (``scripts/train_toy_reward.py``; its held-out agreement is in the folder's ``report.json``).
Differentiable: ReFL and DRaFT train through it, and, being learned, it can be hacked, which the toy evaluator
(``eval.watch_rewards: [{name: toy-geneval}]``) shows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import REWARDS, RewardFn


@REWARDS.register("toy-learned", differentiable=True)
def toy_learned(path: str = "assets/toy-reward", device: str = "cpu") -> RewardFn:
    """The learned toy reward saved in ``path``; images other than 32 × 32 are resized (bilinear) first."""
    from flowrl.image.toy_reward import load_reward_model, prompt_code

    model = load_reward_model(path).to(device)
    codes: dict[str, Tensor] = {}

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        x = images.to(device).float()
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        rows = [codes.setdefault(p, prompt_code(p)) for p in prompts]
        return {"score": model(x, torch.stack(rows).to(device)).float().cpu()}

    return reward
