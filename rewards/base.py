"""The reward interface, its registry, and the weighted combination the trainer calls.

A reward is a callable ``reward(images [B, 3, H, W] in [0, 1], prompts: list[str]) -> dict[str, Tensor]``
whose ``"score"`` entry (``[B]``, higher is better) is what RL maximises; any other ``[B]`` entries
are diagnostics that get logged (e.g. the toy evaluator's strict accuracy). Rewards are built by
name from ``REWARDS`` with keyword options: ``make_reward("toy-geneval")``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.registry import Registry

RewardFn = Callable[[Tensor, list[str]], dict[str, Tensor]]

#: name -> factory(**options) -> RewardFn
REWARDS: Registry = Registry("reward")


def make_reward(name: str, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` with its options."""
    return REWARDS.get(name)(**options)


def check_reward_output(name: str, out: Any, batch: int) -> dict[str, Tensor]:
    """Validate a reward's output: a dict with a finite-or-NaN ``"score"`` and ``[B]`` tensors; names the reward."""
    if not isinstance(out, Mapping) or "score" not in out:
        raise TypeError(f"reward {name!r} must return a dict with a 'score' tensor, got {type(out).__name__}")
    checked = {}
    for key, value in out.items():
        value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        if value.shape != (batch,):
            raise ValueError(f"reward {name!r} returned {key!r} of shape {tuple(value.shape)}; expected [{batch}]")
        checked[key] = value
    return checked


@dataclass
class RewardSet:
    """Several rewards with weights. ``__call__`` returns the weighted total ``[B]`` and every
    component, keyed ``name`` (its score) and ``name/extra`` (its diagnostics)."""

    rewards: dict[str, RewardFn]
    weights: dict[str, float]

    @classmethod
    def from_specs(cls, specs: Sequence[Mapping[str, Any]]) -> RewardSet:
        """Build from ``[{"name": ..., "weight": 1.0, "options": {...}}, ...]``."""
        rewards, weights = {}, {}
        for spec in specs:
            name = spec["name"]
            if name in rewards:
                raise ValueError(f"reward {name!r} listed twice")
            rewards[name] = make_reward(name, **dict(spec.get("options") or {}))
            weights[name] = float(spec.get("weight", 1.0))
        return cls(rewards, weights)

    def __call__(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        total = torch.zeros(len(prompts))
        parts: dict[str, Tensor] = {}
        for name, fn in self.rewards.items():
            out = check_reward_output(name, fn(images, prompts), len(prompts))
            total += self.weights[name] * out["score"]
            parts[name] = out["score"]
            parts.update({f"{name}/{k}": v for k, v in out.items() if k != "score"})
        return total, parts

    def weight_vector(self) -> Tensor:
        """``[K]`` weights in the order of ``rewards`` (the columns of the trainer's reward matrix)."""
        return torch.tensor([self.weights[name] for name in self.rewards])

    def describe(self) -> str:
        return " + ".join(f"{w:g}·{n}" if not math.isclose(w, 1.0) else n for n, w in self.weights.items())


__all__ = ["REWARDS", "RewardFn", "RewardSet", "check_reward_output", "make_reward"]
