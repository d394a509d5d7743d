"""BranchGRPO: depth-wise advantages on denoising trees, with reward fusion and pruning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowrl.core.options import option

from .core import ADVANTAGES, AdvantageBatch, AdvantageConfig, AdvantageResult, Groups, finish, zscore


def node_rewards(
    node_id: Tensor, parent_id: Tensor, log_prob: Tensor, leaf_node_id: Tensor, leaf_reward: Tensor, fusion: str
) -> Tensor:
    """Reward of the child node of every transition, fused from the leaves below it. ``[M]``.

    ``mean``: plain mean over the descendant leaves. ``logprob``: BranchGRPO's rule (``tree_prob_weighted`` in
    its train_branchgrpo_flux.py), bottom-up: a node's reward is the softmax over the log-probs of the edges to its
    *immediate* children of those children's rewards; a node with one child passes that child's reward up unchanged
    (so chain steps between branch points add no weight).
    """
    if fusion not in ("mean", "logprob"):
        raise ValueError(f"unknown tree fusion {fusion!r}; valid: mean, logprob")
    rows = {n: i for i, n in enumerate(node_id.tolist())}  # the transition that produced each node
    children: dict[int, list[int]] = {}
    for t, p in enumerate(parent_id.tolist()):
        children.setdefault(p, []).append(t)
    leaves = {n: k for k, n in enumerate(leaf_node_id.tolist())}
    missing = [n for n in leaves if n not in rows]
    if missing:
        raise ValueError(f"leaf node {missing[0]} is produced by no transition of the tree")
    below: dict[int, list[int]] = {}  # node -> the leaves (reward rows) below it

    def leaves_below(n: int) -> list[int]:
        if n not in below:
            below[n] = [leaves[n]] if n in leaves else [k for t in children.get(n, []) for k in leaves_below(
                int(node_id[t]))]  # fmt: skip
        return below[n]

    fused: dict[int, Tensor] = {}

    def logprob_reward(n: int) -> Tensor:
        if n not in fused:
            kids = children.get(n, [])
            if n in leaves or not kids:
                fused[n] = leaf_reward[leaves[n]]
            elif len(kids) == 1:
                fused[n] = logprob_reward(int(node_id[kids[0]]))
            else:
                weights = torch.softmax(log_prob[kids].to(torch.float64), 0).to(leaf_reward)
                fused[n] = (weights * torch.stack([logprob_reward(int(node_id[t])) for t in kids])).sum()
        return fused[n]

    out = torch.empty(node_id.numel(), dtype=leaf_reward.dtype)
    for n in sorted(rows, key=lambda m: -int(rows[m])):  # deepest first: the recursion stays shallow
        out[rows[n]] = logprob_reward(n) if fusion == "logprob" else leaf_reward[torch.tensor(leaves_below(n))].mean()
    return out


@dataclass
class TreeOptions:
    """BranchGRPO's tree estimator's own options: reward fusion and pruning."""

    FLAT: ClassVar[dict[str, str]] = {"tree_fusion": "fusion", "tree_keep_fraction": "keep_fraction",
                                      "tree_skip_depths": "skip_depths"}  # fmt: skip

    fusion: str = option(
        "mean", "internal node reward = 'mean' of leaves or 'logprob'-weighted", choices=("mean", "logprob")
    )
    keep_fraction: float = option(1.0, "width pruning: keep this fraction (best and worst halves)", low=0.0, high=1.0)
    skip_depths: tuple[int, ...] = option((), "depth pruning: depths left out of the backward pass")


@ADVANTAGES.register("tree", options=TreeOptions, needs=("tree",), per_transition=True)
def tree(batch: AdvantageBatch, cfg: AdvantageConfig, options: TreeOptions, state: dict[str, Any]) -> AdvantageResult:
    """Per-transition advantage = z-score of its child node's fused reward among the transitions of the
    same group at the same step (nodes of one depth in the tree).

    Pruning only masks the backward pass: ``options.skip_depths`` drops whole depths;
    ``options.keep_fraction`` < 1 keeps, per (group, step), the best and the worst ``fraction / 2``
    of the transitions by child reward. Returns ``[M]`` advantages and mask.
    """
    t = batch.tree
    if t is None:
        raise ValueError("the tree estimator needs batch.tree (transitions of a tree rollout)")
    if t.leaf_node_id.shape != (batch.rewards.shape[0],):
        raise ValueError(f"tree.leaf_node_id has shape {tuple(t.leaf_node_id.shape)}; expected one per reward row")
    if not 0 < options.keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {options.keep_fraction}")
    child = node_rewards(t.node_id, t.parent_id, t.log_prob, t.leaf_node_id, batch.combined(), options.fusion)
    levels = Groups.of(t.group_id.cpu() * (int(t.step.max()) + 1) + t.step.cpu())
    adv, constant = zscore(child, levels, cfg)
    mask = ~torch.isin(t.depth.cpu(), torch.tensor(options.skip_depths, dtype=torch.long))
    if options.keep_fraction < 1:
        keep = torch.zeros_like(mask)
        for g in range(levels.count):
            members = (levels.index == g).nonzero().squeeze(1)
            order = members[torch.argsort(child[members], stable=True)]
            k = max(1, round(options.keep_fraction * members.numel() / 2))
            keep[order[:k]] = True
            keep[order[-k:]] = True
        mask &= keep
    result = finish(adv, constant, levels, cfg, mask=mask)
    result.per_transition = True
    return result
