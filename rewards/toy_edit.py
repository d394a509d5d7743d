"""The toy edit world's evaluator as a reward (``flowrl.image.toy_edit``): it reads each prompt row's source
``image``, its ``target`` caption and its ``edit`` kind, and scores the edited image on both parts, ``done`` (the
instruction carried out: the toy evaluator's partial score against the target scene) and ``preserved`` (what the
edit keeps of the source is still there). ``score = (1 − preserve_weight) · done + preserve_weight · preserved``;
both parts are logged (``toy-edit/done``, ``toy-edit/preserved``) so that neither hides behind the other."""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.image.toy_edit import edit_scores
from flowrl.image.toy_world import parse_prompt

from .base import REWARDS, RewardFn
from .preprocess import load_sources

COLUMNS = ("image", "target", "edit")


@REWARDS.register("toy-edit", inputs=COLUMNS)
def toy_edit(preserve_weight: float = 0.5) -> RewardFn:
    """Factory of the toy edit reward; ``preserve_weight`` in [0, 1] is the share of ``preserved`` in the score."""
    if not 0.0 <= preserve_weight <= 1.0:
        raise ValueError(f"preserve_weight must be in [0, 1], got {preserve_weight}")

    def reward(
        images: Tensor, prompts: list[str], image: list[list[str]], target: list[str], edit: list[str]
    ) -> dict[str, Tensor]:
        sources, index = load_sources(image, tuple(images.shape[-2:]))
        parts = [
            edit_scores(result, sources[k], parse_prompt(caption), kind)
            for result, k, caption, kind in zip(images, index.tolist(), target, edit, strict=True)
        ]
        done, preserved = torch.tensor([p[0] for p in parts]), torch.tensor([p[1] for p in parts])
        return {
            "score": (1 - preserve_weight) * done + preserve_weight * preserved,
            "done": done,
            "preserved": preserved,
        }

    reward.inputs = COLUMNS
    return reward
