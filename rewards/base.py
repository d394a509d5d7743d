"""The reward interface, its registry, and the weighted combination the trainer calls.

A reward is a callable ``reward(images [B, 3, H, W] in [0, 1], prompts: list[str]) -> dict[str, Tensor]``
whose ``"score"`` entry (``[B]``, higher is better) is what RL maximises; any other ``[B]`` entries
are diagnostics that get logged (e.g. the toy evaluator's strict accuracy). Rewards are built by
name from ``REWARDS`` with keyword options: ``make_reward("toy-geneval")``.

Groupwise rewards score the images of one prompt jointly (e.g. a pairwise judge's win rate). They say
so with an attribute ``groupwise = True`` and are called ``reward(images, prompts, groups=groups)``,
``groups`` a ``[B]`` long tensor of group ids (equal id = same prompt group); ``RewardSet`` passes it
to them and to no other reward.
"""

from __future__ import annotations

import importlib
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


def load_object(path: str) -> Any:
    """The object named by a ``"package.module:attribute"`` path (the attribute may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected a 'module:callable' path, got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def is_groupwise(fn: RewardFn) -> bool:
    """Whether ``fn`` scores groups jointly and so takes ``groups=`` (its ``groupwise`` attribute)."""
    return bool(getattr(fn, "groupwise", False))


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

    def __call__(
        self, images: Tensor, prompts: list[str], groups: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Score ``images`` ``[B, 3, H, W]`` for ``prompts`` (``B``); ``groups`` ``[B]`` (group ids) is
        required when a groupwise reward is in the set. Returns the weighted total ``[B]`` and the parts."""
        batch = len(prompts)
        if images.shape[0] != batch:
            raise ValueError(f"{images.shape[0]} images but {batch} prompts")
        if groups is not None:
            groups = torch.as_tensor(groups).cpu()
            if groups.shape != (batch,) or groups.is_floating_point() or groups.is_complex():
                raise ValueError(
                    f"groups must be a [{batch}] integer tensor, got {groups.dtype} {tuple(groups.shape)}"
                )
            groups = groups.long()
        total = torch.zeros(batch)
        parts: dict[str, Tensor] = {}
        for name, fn in self.rewards.items():
            if is_groupwise(fn):
                if groups is None:
                    raise ValueError(
                        f"reward {name!r} scores groups of images jointly and needs groups= ([B] group ids)"
                    )
                raw = fn(images, prompts, groups=groups)
            else:
                raw = fn(images, prompts)
            out = check_reward_output(name, raw, batch)
            total += self.weights[name] * out["score"]
            parts[name] = out["score"]
            parts.update({f"{name}/{k}": v for k, v in out.items() if k != "score"})
        return total, parts

    def weight_vector(self) -> Tensor:
        """``[K]`` weights in the order of ``rewards`` (the columns of the trainer's reward matrix)."""
        return torch.tensor([self.weights[name] for name in self.rewards])

    def describe(self) -> str:
        return " + ".join(f"{w:g}·{n}" if not math.isclose(w, 1.0) else n for n, w in self.weights.items())


__all__ = ["REWARDS", "RewardFn", "RewardSet", "check_reward_output", "is_groupwise", "load_object", "make_reward"]
