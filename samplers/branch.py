"""Singular branching (TempFlow-GRPO, G2RPO): ODE to step k, one SDE step into G children, ODE to
the end. The group's reward differences are then credited to step k alone.

G2RPO also decodes every child with coarser ODE tails (``extra_tail_steps``) so that each child
is scored at several granularities. This is the tree rollout with a single split and no other
stochastic step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .transitions import Rollout, Velocity
from .tree import tree_rollout


def singular_branch_rollout(
    velocity: Velocity,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    group_id: Tensor,
    *,
    branch_step: int,
    num_children: int,
    kind: str = "flow_sde",
    noise_level: float = 0.7,
    tail_solver: str = "euler",
    extra_tail_steps: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> Rollout:
    """Branch each of the ``R`` initial states (``[R, *S]``) into ``num_children`` at ``branch_step``.

    Returns ``R * num_children`` samples, root-major (children of root r are rows
    ``r*G .. r*G + G − 1``) with exactly one transition each, at ``branch_step``. The ODE prefix is
    evaluated once per root; ``extra_tail_steps`` adds coarser decodings in ``Rollout.extra_samples``.
    """
    num_steps = sigmas.numel() - 1
    if not 0 <= branch_step < num_steps:
        raise ValueError(f"branch_step must be in [0, {num_steps - 1}], got {branch_step}")
    return tree_rollout(
        velocity,
        x,
        sigmas,
        cond,
        group_id,
        kind=kind,
        noise_level=noise_level,
        sde_mask=torch.zeros(num_steps, dtype=torch.bool),
        split_steps=(branch_step,),
        branch_factor=num_children,
        tail_solver=tail_solver,
        extra_tail_steps=extra_tail_steps,
        generator=generator,
    )


__all__ = ["singular_branch_rollout"]
