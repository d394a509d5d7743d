"""Typed containers shared by the rollout drivers and the trainers.

A *state* of a rollout is a node with an integer id; a *transition* is one trainable stochastic
step, an edge from a parent state to a child state. Chains have one node per sample and step;
trees share nodes between the leaves that descend from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

#: ``velocity(x [B, *S], sigma [B], cond) -> v [B, *S]``: any flow model, analytic or a diffusers transformer.
Velocity = Callable[[Tensor, Tensor, Any], Tensor]


def index_cond(cond: Any, index: Tensor) -> Any:
    """Select rows ``index`` (``[M]``) of a conditioning batch: a tensor, a mapping or sequence of them, or None."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return cond[index.to(cond.device)]
    if isinstance(cond, Mapping):
        return {k: index_cond(v, index) for k, v in cond.items()}
    if isinstance(cond, Sequence) and not isinstance(cond, str):
        return type(cond)(index_cond(v, index) for v in cond)
    raise TypeError(f"cannot index conditioning of type {type(cond).__name__}; use a tensor, dict, tuple or list")


@dataclass
class Transitions:
    """A batch of ``N`` stochastic steps. State tensors ``[N, *S]``, everything else ``[N]``.

    - x, x_next: the state before and after the step; mean: its mean under the sampling policy
      (μ_old); std: its step std s (independent of the network); log_prob: log p_old(x_next | x).
    - sigma, sigma_next: the step's noise levels; step: its index in the sampling schedule.
    - depth: number of branch points passed including this step (0 in chains).
    - node_id / parent_id: ids of the child and parent states; sample_id: the row of the rollout's
      final samples this step leads to, or −1 when it leads to several (a shared tree prefix).
    - group_id: the prompt group; cond_index: the row of the conditioning batch to replay it with.
    """

    x: Tensor
    x_next: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor
    sigma: Tensor
    sigma_next: Tensor
    step: Tensor
    depth: Tensor
    node_id: Tensor
    parent_id: Tensor
    sample_id: Tensor
    group_id: Tensor
    cond_index: Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, index: Tensor) -> Transitions:
        """Rows ``index`` (a ``[M]`` long or ``[N]`` bool tensor) of every field."""
        return Transitions(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def empty(like: Tensor) -> Transitions:
        """No transitions, with states shaped, typed and placed as ``like`` ``[B, *S]`` (an ODE rollout's)."""
        state = like.new_zeros((0, *like.shape[1:]))
        flt = torch.zeros(0, dtype=torch.promote_types(like.dtype, torch.float32), device=like.device)
        lng = torch.zeros(0, dtype=torch.long)
        return Transitions(state, state, state.to(flt.dtype), flt, flt, flt, flt, lng, lng, lng, lng, lng, lng, lng)

    @staticmethod
    def cat(parts: Sequence[Transitions]) -> Transitions:
        """Concatenate along the transition axis."""
        if not parts:
            raise ValueError("cannot concatenate an empty list of transitions")
        return Transitions(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Transitions)})


@dataclass
class Rollout:
    """What a rollout driver returns.

    samples: final clean samples ``[L, *S]``; group_id, cond_index, node_id: ``[L]`` per sample;
    transitions: the trainable steps; nfe: model evaluations spent; extra_samples: the same
    samples decoded with coarser ODE tails (G2RPO), keyed by tail step count, each ``[L, *S]``.
    """

    samples: Tensor
    group_id: Tensor
    cond_index: Tensor
    node_id: Tensor
    transitions: Transitions
    nfe: int
    extra_samples: dict[int, Tensor] = field(default_factory=dict)


def cat_rollouts(parts: Sequence[Rollout], first_roots: Sequence[int]) -> Rollout:
    """The rollouts of consecutive blocks of roots (part ``k`` starts at root ``first_roots[k]``; each drawn with
    ``share`` so its noise and node ids are the whole batch's) as the one rollout of all the roots: samples in
    root order, transitions step-major with each step's states in root order, as one call lists them."""
    if not parts:
        raise ValueError("cannot concatenate an empty list of rollouts")
    trs, cond_index, before = [], [], 0
    for part, root in zip(parts, first_roots, strict=True):
        t = part.transitions
        leads = t.sample_id >= 0  # -1: a shared tree prefix, leading to several samples
        trs.append(replace(t, cond_index=t.cond_index + root, sample_id=torch.where(leads, t.sample_id + before, -1)))
        cond_index.append(part.cond_index + root)
        before += part.samples.shape[0]
    transitions = Transitions.cat(trs)
    transitions = transitions.select(torch.sort(transitions.step.cpu(), stable=True).indices)
    return Rollout(
        samples=torch.cat([p.samples for p in parts]),
        group_id=torch.cat([p.group_id for p in parts]),
        cond_index=torch.cat(cond_index),
        node_id=torch.cat([p.node_id for p in parts]),
        transitions=transitions,
        nfe=sum(p.nfe for p in parts),
        extra_samples={k: torch.cat([p.extra_samples[k] for p in parts]) for k in parts[0].extra_samples},
    )


__all__ = ["Rollout", "Transitions", "Velocity", "cat_rollouts", "index_cond"]
