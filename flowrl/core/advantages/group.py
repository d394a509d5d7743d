"""Group-relative estimators: each sample is compared with the other samples of its prompt group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from flowrl.core.options import option

from .core import ADVANTAGES, AdvantageBatch, AdvantageConfig, AdvantageResult, Groups, combine, finish, zscore


@ADVANTAGES.register("grpo")
def grpo(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """(r − mean_g) / (std_g + eps) on the weighted reward sum (DeepSeekMath; with K > 1 rewards this is
    the weighted-sum-then-normalise scheme). eps and ``std_unbiased`` from cfg."""
    groups = Groups.of(batch.group_id)
    adv, constant = zscore(batch.combined(), groups, cfg)
    return finish(adv, constant, groups, cfg)


@ADVANTAGES.register("global-std")
def global_std(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """(r − mean_g) / (std_batch + eps): group baseline, one batch-wide scale (Flow-GRPO's ``global_std``)."""
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    constant = groups.constant(r)
    adv = (r - groups.mean(r)) / (r.std(unbiased=cfg.std_unbiased) + cfg.eps) if r.numel() > 1 else r * 0
    return finish(torch.where(constant, torch.zeros_like(adv), adv), constant, groups, cfg)


@ADVANTAGES.register("dr-grpo", ignores=("eps", "std_unbiased"))
def dr_grpo(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """r − mean_g, no division by the std (Dr. GRPO): advantages scale with the rewards."""
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    constant = groups.constant(r)
    adv = torch.where(constant, torch.zeros_like(r), r - groups.mean(r))
    return finish(adv, constant, groups, cfg)


@ADVANTAGES.register("rloo", ignores=("eps", "std_unbiased"))
def rloo(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """Leave-one-out baseline: r_i − mean_{j≠i} r_j = G/(G−1)·(r − mean_g). Needs groups of >= 2."""
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    if torch.any(groups.size < 2):
        raise ValueError("rloo needs at least 2 samples per group")
    g = groups.size[groups.index].to(r)
    constant = groups.constant(r)
    adv = torch.where(constant, torch.zeros_like(r), g / (g - 1) * (r - groups.mean(r)))
    return finish(adv, constant, groups, cfg)


@ADVANTAGES.register("median", odd_groups=True)
def median(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """MC-GRPO: G + 1 samples per group, baseline = the group median, (r − median) / (std_g + eps).

    Groups must have an odd size so that the median is one sample, the pivot; it gets advantage 0
    and ``mask`` False, so G samples per group reach the backward pass.
    """
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    if torch.any(groups.size % 2 == 0):
        raise ValueError(f"median needs odd group sizes (G + 1 samples); got sizes {groups.size.unique().tolist()}")
    baseline = torch.empty_like(r)
    mask = torch.ones_like(r, dtype=torch.bool)
    for g in range(groups.count):
        members = (groups.index == g).nonzero().squeeze(1)
        order = members[torch.argsort(r[members], stable=True)]
        pivot = order[order.numel() // 2]
        baseline[members] = r[pivot]
        mask[pivot] = False
    constant = groups.constant(r)
    adv = (r - baseline) / (groups.std(r, cfg.std_unbiased) + cfg.eps)
    return finish(torch.where(constant, torch.zeros_like(adv), adv), constant, groups, cfg, mask=mask)


@ADVANTAGES.register("gdpo")
def gdpo(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """GDPO: z-score every reward component within its group, take the weighted sum, then z-score that
    over the whole batch. Keeps one reward's scale from drowning the others."""
    groups = Groups.of(batch.group_id)
    parts = [zscore(batch.rewards[:, k], groups, cfg) for k in range(batch.rewards.shape[1])]
    summed = torch.stack([p[0] for p in parts], -1)
    s = (summed * (batch.weights.to(summed) if batch.weights is not None else 1.0)).sum(-1)
    constant = torch.stack([p[1] for p in parts], -1).all(-1)
    adv = (s - s.mean()) / (s.std(unbiased=cfg.std_unbiased) + cfg.eps) if s.numel() > 1 else s * 0
    return finish(torch.where(constant, torch.zeros_like(adv), adv), constant, groups, cfg)


@ADVANTAGES.register("pairwise", needs=("pairwise",))
def pairwise(batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]) -> AdvantageResult:
    """Pref-GRPO: win rate w_i = (wins + 0.5·ties) / (G − 1) from ``batch.pairwise``, then a group z-score.

    ``pairwise[i, j]`` is i's score against j (1, 0.5, 0); within a group it must satisfy
    P[i, j] + P[j, i] = 1. Entries across groups are ignored. ``rewards`` are not used.
    """
    if batch.pairwise is None:
        raise ValueError("the pairwise estimator needs batch.pairwise, an [N, N] preference matrix")
    n = batch.group_id.shape[0]
    p = batch.pairwise.to(torch.float64)
    if p.shape != (n, n):
        raise ValueError(f"pairwise has shape {tuple(p.shape)}; expected [{n}, {n}]")
    groups = Groups.of(batch.group_id)
    same = groups.index[:, None] == groups.index[None, :]
    same.fill_diagonal_(False)
    if not torch.allclose((p + p.T)[same], torch.ones(int(same.sum()), dtype=p.dtype)):
        raise ValueError("pairwise[i, j] + pairwise[j, i] must be 1 for every pair in a group (ties are 0.5 each)")
    if torch.any(groups.size < 2):
        raise ValueError("pairwise needs at least 2 samples per group")
    wins = torch.where(same, p, torch.zeros_like(p)).sum(1)
    rate = (wins / (groups.size[groups.index] - 1)).to(batch.rewards.dtype)
    adv, constant = zscore(rate, groups, cfg)
    return finish(adv, constant, groups, cfg, **{"pairwise/win_rate_mean": float(rate.mean())})


@dataclass
class StratifiedOptions:
    """The stratified estimator's own options."""

    FLAT: ClassVar[dict[str, str]] = {"stratified_alpha": "alpha"}

    alpha: float = option(0.8, "weight of the within-stratum estimate in the blend", low=0.0, high=1.0)


@ADVANTAGES.register("stratified", options=StratifiedOptions, needs=("strata",))
def stratified(
    batch: AdvantageBatch, cfg: AdvantageConfig, options: StratifiedOptions, state: dict[str, Any]
) -> AdvantageResult:
    """Stratified advantage normalisation (Stratified GRPO): z-score within (group, stratum), blended with
    the group z-score: α·A_stratum + (1 − α)·A_group, α = ``options.alpha``."""
    if batch.strata is None:
        raise ValueError("the stratified estimator needs batch.strata, an [N] stratum id per sample")
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    cells = Groups.of(groups.index * (int(batch.strata.max()) + 1) + batch.strata.to(groups.index))
    a_cell, _ = zscore(r, cells, cfg)
    a_group, constant = zscore(r, groups, cfg)
    adv = options.alpha * a_cell + (1 - options.alpha) * a_group
    return finish(torch.where(constant, torch.zeros_like(adv), adv), constant, groups, cfg)


@dataclass
class NgrpoOptions:
    """NGRPO's own options."""

    FLAT: ClassVar[dict[str, str]] = {"ngrpo_max_reward": "max_reward"}

    max_reward: float = option(1.0, "reward of the virtual sample added to each group")


@ADVANTAGES.register("ngrpo", options=NgrpoOptions)
def ngrpo(
    batch: AdvantageBatch, cfg: AdvantageConfig, options: NgrpoOptions, state: dict[str, Any]
) -> AdvantageResult:
    """NGRPO: a virtual sample with reward ``options.max_reward`` joins each group's mean and std, so
    groups that all failed still get (negative) advantages."""
    r = batch.combined()
    groups = Groups.of(batch.group_id)
    top = options.max_reward
    size = groups.size.to(r) + 1
    mean = (groups.sum(r) + top) / size
    sq = groups.sum((r - mean[groups.index]) ** 2) + (top - mean) ** 2
    std = torch.sqrt(sq / (size - int(cfg.std_unbiased)))
    constant = groups.constant(r) & (r == top)
    adv = (r - mean[groups.index]) / (std[groups.index] + cfg.eps)
    return finish(torch.where(constant, torch.zeros_like(adv), adv), constant, groups, cfg)


@ADVANTAGES.register("multi-granularity", needs=("granular_rewards",))
def multi_granularity(
    batch: AdvantageBatch, cfg: AdvantageConfig, options: None, state: dict[str, Any]
) -> AdvantageResult:
    """G2RPO: the group z-scores of the main decoding and of every coarser decoding
    (``batch.granular_rewards [J, N, K]``), summed."""
    if batch.granular_rewards is None:
        raise ValueError("multi-granularity needs batch.granular_rewards, [J, N, K] rewards of coarser decodings")
    n, k = batch.rewards.shape
    if batch.granular_rewards.shape[1:] != (n, k):
        raise ValueError(f"granular_rewards has shape {tuple(batch.granular_rewards.shape)}; expected [J, {n}, {k}]")
    groups = Groups.of(batch.group_id)
    levels = torch.cat([batch.rewards[None], batch.granular_rewards.to(batch.rewards)])
    scores = [zscore(combine(level, batch.weights), groups, cfg) for level in levels]
    adv = torch.stack([s for s, _ in scores]).sum(0)
    constant = torch.stack([c for _, c in scores]).all(0)
    return finish(adv, constant, groups, cfg)
