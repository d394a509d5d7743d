"""Chain rollouts: one trajectory per initial state, a per-step SDE/ODE mask.

This covers Flow-GRPO (every step stochastic), Flow-GRPO-Fast and MixGRPO (a window of
stochastic steps from a ``WindowSchedule``, ODE elsewhere) and MixGRPO-Flash (a second-order
ODE solver on a coarser grid after the window). It is the tree rollout with no split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .transitions import Rollout, Velocity
from .tree import tree_rollout


def chain_rollout(
    velocity: Velocity,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    group_id: Tensor,
    *,
    kind: str = "flow_sde",
    noise_level: float = 0.7,
    sde_mask: Tensor | None = None,
    tail_solver: str = "euler",
    tail_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample ``B`` trajectories from ``x`` (``[B, *S]`` noise at ``sigmas[0]``).

    ``cond`` has B rows; ``group_id`` is ``[B]``; ``sde_mask`` ``[T]`` marks the stochastic, trained
    steps (default: all). After the last masked step the rest of the schedule is solved with
    ``tail_solver`` on ``tail_steps`` steps (MixGRPO-Flash: ``"dpm2m"`` and a small count).
    Returns ``B`` samples in input order; transitions carry ``sample_id`` = their row.
    """
    return tree_rollout(
        velocity,
        x,
        sigmas,
        cond,
        group_id,
        kind=kind,
        noise_level=noise_level,
        sde_mask=sde_mask,
        tail_solver=tail_solver,
        tail_steps=tail_steps,
        generator=generator,
    )


__all__ = ["chain_rollout"]
