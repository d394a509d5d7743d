"""Policy losses: one registry, one signature ``fn(inputs, cfg) -> LossOutput``.

Registered names: ppo-clip, grpo-guard, awm, nft (flows); grpo, bnpo, dr-grpo, dapo, gspo (tokens).
Step weightings (uniform, noise-aware, inverse-dt) and KL (Gaussian or k3) are options of every
clipped loss. See the README's table.
"""

from . import nft, policy  # noqa: F401  (importing registers the losses)
from .core import (
    LOSSES,
    Loss,
    LossConfig,
    LossFacts,
    LossInputs,
    LossOutput,
    OldPolicy,
    compute_loss,
    normalizes_by,
    trains_on,
)
from .terms import (
    STEP_WEIGHTINGS,
    aggregate,
    clipped_surrogate,
    gaussian_kl,
    guard_log_ratio,
    k3_kl,
    step_weights,
    velocity_penalty,
)

__all__ = [
    "LOSSES",
    "STEP_WEIGHTINGS",
    "Loss",
    "LossConfig",
    "LossFacts",
    "LossInputs",
    "LossOutput",
    "OldPolicy",
    "aggregate",
    "clipped_surrogate",
    "compute_loss",
    "gaussian_kl",
    "guard_log_ratio",
    "k3_kl",
    "normalizes_by",
    "step_weights",
    "trains_on",
    "velocity_penalty",
]
