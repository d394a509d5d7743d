"""Rollout filters: which scored rollouts an iteration trains on, one registry for both recipes.

A filter is registered with its facts and its own options (``@FILTERS.register("zero-variance",
options=ZeroVarianceOptions)``) and called on the whole gathered batch, the same on every process::

    keep = filter(batch: AdvantageBatch, options) -> [N] bool      # True: the sample is trained on

The config lists them under ``rollout.filter`` (each ``{name, <name>: {its options}}``); the recipes run them after
scoring, on the batch the advantage estimator sees, and AND their masks into the estimator's mask: the estimator's
statistics (group means and stds) still see every sample, and a filtered sample gets no policy gradient (the
image recipe leaves its rows out of the update; the text recipe zeroes its advantage, as it does for the
estimator's mask). ``rollout/kept_share`` logs the share kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.advantages import AdvantageBatch
from flowrl.core.errors import ConfigError
from flowrl.core.method_options import NESTED, Backend, MethodSection
from flowrl.core.options import option
from flowrl.core.registry import Registry


@dataclass(frozen=True)
class StageFacts:
    """What every rollout-stage strategy declares: ``backends``, the recipes it applies to."""

    backends: tuple[Backend, ...] = (Backend.FLOW, Backend.TEXT)

    def __post_init__(self) -> None:
        if not all(isinstance(b, Backend) for b in self.backends):
            raise TypeError(f"backends must be Backend members, got {self.backends!r}")


@dataclass(frozen=True)
class FilterFacts(StageFacts):
    """What a filter declares: ``backends``, the recipes whose rollouts it can filter."""


#: (the whole batch, its own options or None) -> keep mask [N] bool
RolloutFilter = Callable[[AdvantageBatch, Any], Tensor]
FILTERS: Registry[RolloutFilter, FilterFacts] = Registry("rollout filter", FilterFacts)


@dataclass
class ZeroVarianceOptions:
    tolerance: float = option(1e-6, "a group whose total rewards span at most this is dropped", low=0.0)


@FILTERS.register("zero-variance", options=ZeroVarianceOptions)
def zero_variance(batch: AdvantageBatch, options: ZeroVarianceOptions) -> Tensor:
    """DAPO's dynamic-sampling filter without the refill: drop every group whose samples all got the same total
    reward (their group-relative advantages are zero, so they would only dilute the step)."""
    span, group = group_spans(batch.combined(), batch.group_id)
    return (span > options.tolerance)[group]


def group_spans(totals: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor]:
    """Each group's max − min of ``totals`` ``[N]`` (``[G]``, groups in order of id) and each sample's group index
    ``[N]`` into it."""
    ids, group = group_id.unique(return_inverse=True)
    high = torch.full((len(ids),), -torch.inf, dtype=totals.dtype).scatter_reduce(0, group, totals, "amax")
    low = torch.full((len(ids),), torch.inf, dtype=totals.dtype).scatter_reduce(0, group, totals, "amin")
    return high - low, group


@dataclass
class FilterSpec(MethodSection):
    """One entry of ``rollout.filter``: a registered filter and its own options (under its name)."""

    REGISTRY, BACKEND = FILTERS, Backend.FLOW

    name: str = option("zero-variance", "rollout filter (registry name)", choices=FILTERS.names)
    options: Any = dataclasses.field(default=None, metadata=NESTED)


def check_filters(specs: list[FilterSpec], backend: Backend, per_transition: bool) -> None:
    """Each filter applies to ``backend``; none with an estimator whose advantages are per tree transition (a
    filter keeps or drops samples, and a tree's transitions are shared by several samples)."""
    for i, spec in enumerate(specs):
        backends = FILTERS.facts(spec.name).backends
        if backend not in backends:
            raise ConfigError(f"rollout.filter[{i}].name: {spec.name!r} filters the rollouts of "
                              f"{', '.join(str(b) for b in backends)}, not {backend}")  # fmt: skip
        if per_transition:
            raise ConfigError(f"rollout.filter[{i}]: the advantage estimator's advantages are per tree transition; "
                              "a rollout filter keeps or drops whole samples (remove the filter)")  # fmt: skip


def filter_rollouts(specs: list[FilterSpec], batch: AdvantageBatch) -> tuple[Tensor, dict[str, float]]:
    """The keep mask ``[N]`` of the configured filters over the whole batch (all kept when none is configured)
    and ``rollout/kept_share``."""
    n = batch.rewards.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    if not specs:
        return keep, {}
    for i, spec in enumerate(specs):
        mask = FILTERS.get(spec.name)(batch, spec.options)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != (n,):
            got = f"a {mask.dtype} tensor of shape {list(mask.shape)}" if isinstance(mask, Tensor) else repr(mask)
            raise ConfigError(f"rollout.filter[{i}]: {spec.name!r} must return a [{n}] bool tensor, got {got}")
        keep &= mask.cpu()
    return keep, {"rollout/kept_share": keep.float().mean().item()}


__all__ = [
    "FILTERS",
    "FilterFacts",
    "FilterSpec",
    "RolloutFilter",
    "StageFacts",
    "ZeroVarianceOptions",
    "check_filters",
    "filter_rollouts",
    "group_spans",
]
