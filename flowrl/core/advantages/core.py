"""Types, group statistics and the registry shared by every advantage estimator.

Every estimator has ONE signature, ``fn(batch, cfg, options, state) -> AdvantageResult``:
``batch`` carries rewards ``[N, K]`` (K weighted components), group ids ``[N]`` and the extras
some estimators need; ``cfg`` is the option set several estimators read (``AdvantageConfig``);
``options`` the estimator's own, the dataclass it declared at registration (or None: ``advantage.<name>.<option>``
in a config); ``state`` is a dict the estimator may read and update across calls (the per-prompt tracker's
buffers), saved with the trainer state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from flowrl.core.method_options import options_for, section_option
from flowrl.core.options import option
from flowrl.core.registry import Registry


@dataclass
class TreeStructure:
    """Transitions of denoising trees (``flowrl.samplers.tree_rollout``), ``[M]`` each.

    ``leaf_node_id`` ``[N]`` is the node id of each final sample, in the order of the batch's rewards.
    """

    node_id: Tensor
    parent_id: Tensor
    step: Tensor
    depth: Tensor
    log_prob: Tensor
    group_id: Tensor
    leaf_node_id: Tensor


@dataclass
class AdvantageBatch:
    """Inputs of an advantage estimator.

    rewards: ``[N, K]`` reward components; weights: ``[K]`` (default all 1); group_id: ``[N]``.
    Optional extras: prompt_keys (N strings, per-prompt tracker), strata ``[N]`` (stratified),
    pairwise ``[N, N]`` with pairwise[i, j] = 1 if i beats j, 0.5 for a tie, 0 if it loses, for pairs
    in one group (Pref-GRPO), granular_rewards ``[J, N, K]`` from coarser decodings (G2RPO), tree
    (BranchGRPO: advantages are then per transition).
    """

    rewards: Tensor
    group_id: Tensor
    weights: Tensor | None = None
    prompt_keys: Sequence[str] | None = None
    strata: Tensor | None = None
    pairwise: Tensor | None = None
    granular_rewards: Tensor | None = None
    tree: TreeStructure | None = None

    def __post_init__(self) -> None:
        if self.rewards.ndim != 2:
            raise ValueError(f"rewards must be [N, K], got shape {tuple(self.rewards.shape)}")
        n, k = self.rewards.shape
        if self.group_id.shape != (n,):
            raise ValueError(f"group_id has shape {tuple(self.group_id.shape)}; expected [{n}]")
        if self.weights is not None and self.weights.shape != (k,):
            raise ValueError(f"weights has shape {tuple(self.weights.shape)}; expected [{k}] (one per reward)")
        if not torch.isfinite(self.rewards).all():
            raise ValueError("rewards contain NaN or inf; check the reward models' outputs")

    def combined(self) -> Tensor:
        """Weighted sum of the reward components, ``[N]``."""
        return combine(self.rewards, self.weights)


def combine(rewards: Tensor, weights: Tensor | None) -> Tensor:
    """``[..., K]`` rewards → ``[...]`` weighted sum (weights ``[K]``, default ones)."""
    if weights is None:
        return rewards.sum(-1)
    return (rewards * weights.to(rewards)).sum(-1)


def _needs_strata(facts: EstimatorFacts) -> bool:
    return "strata" in facts.needs


@dataclass
class AdvantageConfig:
    """Options read by several estimators (each documents which it reads); an estimator's own options are its
    registered options dataclass. Who reads each option is declared: the estimator's ``ignores`` and the field's
    ``read_by`` (``flowrl.core.method_options``)."""

    eps: float = option(1e-4, "added to a std before dividing (Flow-GRPO and TRL use 1e-4)", low=0.0)
    clip_max: float | None = option(5.0, "clamp advantages to ±clip_max; None disables", low=0.0)
    std_unbiased: bool = option(False, "group std with Bessel's correction (TRL) instead of the population std")
    strata: str = section_option(option(
        "",
        "estimators that need strata (stratified): where each sample's stratum comes from; flows: a scored component "
        "'<reward>/<key>' (rounded to integers, e.g. toy-geneval/objects); text: a function 'module:function' or "
        "'toy-text:<name>' with a reward's signature that returns one integer per completion",
    ), read_by=_needs_strata)  # fmt: skip


@dataclass
class AdvantageResult:
    """Advantages ``[N]`` per sample, or ``[M]`` per tree transition when ``per_transition`` (the tree
    estimator), the backprop mask of the same shape, and metrics."""

    advantages: Tensor
    mask: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    per_transition: bool = False


#: the optional ``AdvantageBatch`` inputs an estimator may need, each with what supplies it
EXTRA_INPUTS = {
    "prompt_keys": "the prompt text of every sample",
    "strata": "a stratum id per sample",
    "pairwise": "preferences between the samples of each group, as a pairwise judge gives them",
    "granular_rewards": "rewards of coarser decodings of every sample",
    "tree": "the denoising tree of a branching rollout",
}


@dataclass(frozen=True)
class EstimatorFacts:
    """What an estimator declares at registration.

    needs: the optional ``AdvantageBatch`` inputs it cannot run without (keys of ``EXTRA_INPUTS``); a trainer
    refuses it at config time unless it feeds all of them. odd_groups: groups must have an odd size (the median
    is one sample). per_transition: the advantages are per tree transition ``[M]``, not per sample ``[N]``.
    ignores: options of ``AdvantageConfig`` it does not read (a config that sets one is refused).
    """

    needs: tuple[str, ...] = ()
    odd_groups: bool = False
    per_transition: bool = False
    ignores: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in EXTRA_INPUTS]
        if unknown:
            raise TypeError(f"unknown estimator inputs {unknown}; valid: {', '.join(EXTRA_INPUTS)}")
        unread = set(self.ignores) - {f.name for f in fields(AdvantageConfig)}
        if unread:
            raise TypeError(f"ignores names no AdvantageConfig option: {', '.join(sorted(unread))}")


#: (batch, common options, its own options or None, state) -> result
Estimator = Callable[[AdvantageBatch, AdvantageConfig, Any, dict[str, Any]], AdvantageResult]
ADVANTAGES: Registry[Estimator, EstimatorFacts] = Registry("advantage estimator", EstimatorFacts)


def refusal(name: str, group_size: int, feeds: set[str], hints: dict[str, str] | None = None) -> str | None:
    """Why estimator ``name`` cannot run in a trainer that feeds the inputs ``feeds`` with groups of
    ``group_size``, or None. The message names what is missing and, from ``hints`` (input → how a user of this
    trainer gets it), how to get it."""
    facts = ADVANTAGES.facts(name)
    missing = [n for n in facts.needs if n not in feeds]
    if missing:
        what = "; ".join(f"{n} ({EXTRA_INPUTS[n]})" for n in missing)
        how = "; ".join(hints[n] for n in missing if hints and n in hints)
        return f"advantage.name={name} needs {what}, which this run does not provide" + (f": {how}" if how else "")
    if facts.odd_groups and group_size % 2 == 0:
        return (
            f"advantage.name={name} needs odd groups (G + 1 samples: the median is one of them), but the group size "
            f"is {group_size}; use {group_size + 1}"
        )
    return None


def broadcast_to_transitions(adv: Tensor, mask: Tensor, sample_id: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample advantages and mask ``[N]`` → per transition ``[M]``: each step gets the advantage of the one
    final sample it leads to (``sample_id`` ``[M]``); steps shared by several samples (a tree's prefix, ``-1``) get
    none and are masked out."""
    own = sample_id >= 0
    idx = sample_id.clamp(min=0)
    return adv[idx] * own, mask[idx] & own


@dataclass
class Groups:
    """Dense group indices: ``index [N]`` in ``[0, count)``, ``size [count]``."""

    index: Tensor
    size: Tensor

    @property
    def count(self) -> int:
        return self.size.numel()

    @staticmethod
    def of(ids: Tensor) -> Groups:
        _, index = torch.unique(ids.cpu(), return_inverse=True)
        index = index.to(ids.device)
        return Groups(index, torch.bincount(index))

    def sum(self, values: Tensor) -> Tensor:
        """Per-group sums ``[count]`` of ``values [N]``."""
        return torch.zeros(self.count, dtype=values.dtype, device=values.device).index_add_(0, self.index, values)

    def mean(self, values: Tensor) -> Tensor:
        """Each sample's group mean, ``[N]``."""
        return (self.sum(values) / self.size.to(values))[self.index]

    def std(self, values: Tensor, unbiased: bool = False) -> Tensor:
        """Each sample's group std, ``[N]`` (population std unless ``unbiased``; 0 for singletons)."""
        dev = values - self.mean(values)
        denom = (self.size - int(unbiased)).clamp(min=1).to(values)
        return torch.sqrt(self.sum(dev**2) / denom)[self.index]

    def constant(self, values: Tensor) -> Tensor:
        """``[N]`` bool: the sample's group has identical values (or one member)."""
        hi = torch.full((self.count,), -torch.inf, dtype=values.dtype, device=values.device)
        lo = torch.full((self.count,), torch.inf, dtype=values.dtype, device=values.device)
        hi = hi.scatter_reduce(0, self.index, values, "amax")
        lo = lo.scatter_reduce(0, self.index, values, "amin")
        return (hi == lo)[self.index]


def zscore(values: Tensor, groups: Groups, cfg: AdvantageConfig) -> tuple[Tensor, Tensor]:
    """(v − mean_g) / (std_g + eps), exactly 0 in constant groups. Returns (scores ``[N]``, constant ``[N]``)."""
    constant = groups.constant(values)
    scores = (values - groups.mean(values)) / (groups.std(values, cfg.std_unbiased) + cfg.eps)
    return torch.where(constant, torch.zeros_like(scores), scores), constant


def finish(
    advantages: Tensor,
    constant: Tensor,
    groups: Groups,
    cfg: AdvantageConfig,
    mask: Tensor | None = None,
    **extra: float,
) -> AdvantageResult:
    """Clip, build the mask and the metrics every estimator reports."""
    clipped = torch.zeros_like(advantages, dtype=torch.bool)
    if cfg.clip_max is not None:
        clipped = advantages.abs() > cfg.clip_max
        advantages = advantages.clamp(-cfg.clip_max, cfg.clip_max)
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask
    zero_groups = torch.zeros(groups.count, device=constant.device).scatter_reduce(
        0, groups.index, constant.float(), "amax"
    )
    metrics = {
        "adv/mean": float(advantages.mean()) if advantages.numel() else 0.0,
        "adv/std": float(advantages.std()) if advantages.numel() > 1 else 0.0,
        "adv/abs_max": float(advantages.abs().max()) if advantages.numel() else 0.0,
        "adv/clip_frac": float(clipped.float().mean()) if advantages.numel() else 0.0,
        "adv/zero_std_frac": float(zero_groups.mean()) if groups.count else 0.0,
        "adv/mask_frac": float(mask.float().mean()) if mask.numel() else 0.0,
        **extra,
    }
    return AdvantageResult(advantages, mask, metrics)


def compute_advantages(
    name: str,
    batch: AdvantageBatch,
    cfg: AdvantageConfig | None = None,
    state: dict[str, Any] | None = None,
    options: Any = None,
) -> AdvantageResult:
    """Run the estimator registered as ``name`` with the common options ``cfg`` and its own ``options`` (default:
    those of ``cfg`` when it is a config section holding them, e.g. ``run.cfg.advantage``; else the declared
    defaults). ``state`` persists across calls (default: a fresh dict)."""
    fn, options = ADVANTAGES.get(name), options_for(ADVANTAGES, name, cfg, options)
    return fn(batch, cfg or AdvantageConfig(), options, {} if state is None else state)
