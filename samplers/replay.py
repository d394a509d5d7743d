"""Recompute the log-probs of stored transitions under the current network (the training pass)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .steps import step_log_prob
from .transitions import Transitions, Velocity, index_cond


def replay_log_prob(velocity: Velocity, transitions: Transitions, cond: Any, kind: str) -> tuple[Tensor, Tensor]:
    """Log-probs ``[N]`` and means ``[N, *S]`` of the stored ``x_next`` under ``velocity``.

    ``cond`` is the same conditioning batch the rollout was sampled with; each transition picks
    its row through ``cond_index``. With unchanged parameters this reproduces the stored log-probs.
    """
    tr = transitions
    v = velocity(tr.x, tr.sigma, index_cond(cond, tr.cond_index))
    return step_log_prob(kind, tr.x, v, tr.sigma, tr.sigma_next, tr.x_next, tr.std)


__all__ = ["replay_log_prob"]
