"""BranchGRPO: depth-wise advantages on denoising trees, with reward fusion and pruning."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .core import ADVANTAGES, AdvantageBatch, AdvantageConfig, AdvantageResult, Groups, finish, zscore


def node_rewards(
    node_id: Tensor, parent_id: Tensor, log_prob: Tensor, leaf_node_id: Tensor, leaf_reward: Tensor, fusion: str
) -> Tensor:
    """Reward of the child node of every transition, fused from the leaves below it. ``[M]``.

    ``mean``: plain mean over the descendant leaves. ``logprob``: leaves weighted by the probability
    of the path from the node down to them, softmax(Σ log-probs on that path); the part of the
    path above the node is shared by all its leaves and cancels, so the weights are a softmax of
    each leaf's cumulative log-prob from the root.
    """
    if fusion not in ("mean", "logprob"):
        raise ValueError(f"unknown tree fusion {fusion!r}; valid: mean, logprob")
    parent = dict(zip(node_id.tolist(), parent_id.tolist(), strict=True))
    row = {n: i for i, n in enumerate(node_id.tolist())}
    cum = torch.zeros(leaf_node_id.numel(), dtype=torch.float64)
    ancestors: list[list[int]] = []
    for leaf, n in enumerate(leaf_node_id.tolist()):
        if n not in row:
            raise ValueError(f"leaf node {n} is produced by no transition of the tree")
        path = []
        while n in row:
            path.append(row[n])
            cum[leaf] += float(log_prob[row[n]])
            n = parent[n]
        ancestors.append(path)
    # for every transition, the leaves below its child node
    below: list[list[int]] = [[] for _ in range(node_id.numel())]
    for leaf, path in enumerate(ancestors):
        for t in path:
            below[t].append(leaf)
    out = torch.empty(node_id.numel(), dtype=leaf_reward.dtype)
    for t, leaves in enumerate(below):
        idx = torch.tensor(leaves)
        if fusion == "mean":
            out[t] = leaf_reward[idx].mean()
        else:
            out[t] = (torch.softmax(cum[idx], 0).to(leaf_reward) * leaf_reward[idx]).sum()
    return out


@ADVANTAGES.register("tree", needs=("tree",), per_transition=True)
def tree(batch: AdvantageBatch, cfg: AdvantageConfig, state: dict[str, Any]) -> AdvantageResult:
    """Per-transition advantage = z-score of its child node's fused reward among the transitions of the
    same group at the same step (nodes of one depth in the tree).

    Pruning only masks the backward pass: ``cfg.tree_skip_depths`` drops whole depths;
    ``cfg.tree_keep_fraction`` < 1 keeps, per (group, step), the best and the worst ``fraction / 2``
    of the transitions by child reward. Returns ``[M]`` advantages and mask.
    """
    t = batch.tree
    if t is None:
        raise ValueError("the tree estimator needs batch.tree (transitions of a tree rollout)")
    if t.leaf_node_id.shape != (batch.rewards.shape[0],):
        raise ValueError(f"tree.leaf_node_id has shape {tuple(t.leaf_node_id.shape)}; expected one per reward row")
    if not 0 < cfg.tree_keep_fraction <= 1:
        raise ValueError(f"tree_keep_fraction must be in (0, 1], got {cfg.tree_keep_fraction}")
    child = node_rewards(t.node_id, t.parent_id, t.log_prob, t.leaf_node_id, batch.combined(), cfg.tree_fusion)
    levels = Groups.of(t.group_id.cpu() * (int(t.step.max()) + 1) + t.step.cpu())
    adv, constant = zscore(child, levels, cfg)
    mask = ~torch.isin(t.depth.cpu(), torch.tensor(cfg.tree_skip_depths, dtype=torch.long))
    if cfg.tree_keep_fraction < 1:
        keep = torch.zeros_like(mask)
        for g in range(levels.count):
            members = (levels.index == g).nonzero().squeeze(1)
            order = members[torch.argsort(child[members], stable=True)]
            k = max(1, round(cfg.tree_keep_fraction * members.numel() / 2))
            keep[order[:k]] = True
            keep[order[-k:]] = True
        mask &= keep
    result = finish(adv, constant, levels, cfg, mask=mask)
    result.per_transition = True
    return result
