"""Rollout control: which prompts an iteration draws, one registry for both recipes.

A control is registered with its facts and its own options (``@CONTROLS.register("uniform")``) and built once per
run (``make_control``); every process holds an identical copy and feeds it the same whole-batch results, so the
copies stay equal without communication::

    prompts = control.draw(rng, pool, key, count)      # the iteration's prompts (rng: the run's shared generator)
    control.observe(keys, totals, group_id)            # after scoring: each prompt's rewards of this iteration

Every control keeps each prompt's difficulty (``PromptStats``: how often it was drawn, the mean of its groups'
mean rewards, how many of its groups were all equal) and logs it: ``difficulty/p10``, ``p50``, ``p90`` (quantiles
of the per-prompt mean reward over the prompts seen), ``difficulty/seen`` (prompts seen so far) and
``difficulty/zero_variance`` (share of seen prompts whose last group was all equal). The state goes into
checkpoints (``state_dict``), so a resumed run draws what an uninterrupted one would.

``uniform`` (the default) draws ``count`` distinct prompts uniformly from the run's generator, as every run did
before controls existed (the same calls, so the same prompts).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from flowrl.core.method_options import NESTED, Backend, MethodSection
from flowrl.core.options import option
from flowrl.core.registry import Registry

from .filters import StageFacts, group_spans

T = TypeVar("T")


@dataclass(frozen=True)
class ControlFacts(StageFacts):
    """What a control declares: ``backends``, the recipes whose prompts it can draw."""


@dataclass
class PromptStats:
    """One prompt's record: groups seen, the running mean of their mean rewards, whether the last was all equal."""

    groups: int = 0
    mean: float = 0.0
    last_equal: bool = False

    def add(self, group_mean: float, equal: bool) -> None:
        self.groups += 1
        self.mean += (group_mean - self.mean) / self.groups
        self.last_equal = equal


class PromptControl:
    """The base control (``uniform``): uniform draws, and the per-prompt record every control keeps."""

    EQUAL_TOLERANCE = 1e-6  # a group whose rewards span at most this is all equal (as the zero-variance filter)

    def __init__(self, options: Any = None) -> None:
        self.options = options
        self.stats: dict[str, PromptStats] = {}

    def draw(self, rng: random.Random, pool: Sequence[T], key: Callable[[T], str], count: int) -> list[T]:
        """``min(count, len(pool))`` distinct items of ``pool`` (``key``: an item's prompt key, unread here)."""
        return rng.sample(list(pool), min(count, len(pool)))

    def observe(self, keys: Sequence[str], totals: Tensor, group_id: Tensor) -> None:
        """Record the iteration's whole batch: ``keys`` ``[N]`` each sample's prompt key, ``totals`` ``[N]`` its
        total reward (NaN: not scored, left out), ``group_id`` ``[N]`` its group."""
        for g in group_id.unique().tolist():
            members = (group_id == g).nonzero().squeeze(1)
            values = totals[members].float()
            values = values[~torch.isnan(values)]
            if values.numel() == 0:
                continue
            equal = float(values.max() - values.min()) <= self.EQUAL_TOLERANCE
            self.stats.setdefault(keys[int(members[0])], PromptStats()).add(float(values.mean()), equal)

    def metrics(self) -> dict[str, float]:
        if not self.stats:
            return {}
        means = torch.tensor([s.mean for s in self.stats.values()], dtype=torch.float64)
        q = torch.quantile(means, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        equal = sum(s.last_equal for s in self.stats.values()) / len(self.stats)
        return {"difficulty/p10": q[0], "difficulty/p50": q[1], "difficulty/p90": q[2],
                "difficulty/seen": float(len(self.stats)), "difficulty/zero_variance": equal}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"stats": {k: dataclasses.astuple(s) for k, s in self.stats.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats = {k: PromptStats(int(g), float(m), bool(e)) for k, (g, m, e) in state.get("stats", {}).items()}


#: options -> a control (each run builds its own: controls keep state)
CONTROLS: Registry[Any, ControlFacts] = Registry("rollout control", ControlFacts)
CONTROLS.register("uniform")(PromptControl)


@dataclass
class ControlSpec(MethodSection):
    """``rollout.control``: a registered control and its own options (under its name)."""

    REGISTRY, BACKEND = CONTROLS, Backend.FLOW

    name: str = option("uniform", "which prompts each iteration draws (registry name)", choices=CONTROLS.names)
    options: Any = dataclasses.field(default=None, metadata=NESTED)


def make_control(spec: ControlSpec) -> PromptControl:
    """The control ``spec`` names, built with its options."""
    return CONTROLS.get(spec.name)(spec.options)


def zero_variance_share(totals: Tensor, group_id: Tensor, tolerance: float = PromptControl.EQUAL_TOLERANCE) -> float:
    """The share of groups whose total rewards ``[N]`` span at most ``tolerance`` (their advantages are all 0)."""
    return float((group_spans(totals, group_id)[0] <= tolerance).float().mean())


__all__ = [
    "CONTROLS",
    "ControlFacts",
    "ControlSpec",
    "PromptControl",
    "PromptStats",
    "make_control",
    "zero_variance_share",
]
