"""Policy losses: one registry, one signature ``fn(inputs, cfg, options) -> LossOutput``.

Registered names: ppo-clip, grpo-guard, awm, nft, dpo, smpo, best-of-n, draft, refl (flows); grpo, bnpo, dr-grpo,
dapo, gspo (both); cispo, sapo (tokens). Step weightings (uniform, noise-aware, inverse-dt) and KL (Gaussian or k3) are
options of every clipped loss (``LossConfig``); the others declare their own options (``AwmOptions``, ``NftOptions``,
``DpoOptions``, ``SmpoOptions``, ``BestOfNOptions``, ``DraftOptions``, ``ReflOptions``, ``SapoOptions``:
``loss.awm.weighting`` in a config). See docs/methods.md.
"""

from . import best_of_n, dpo, nft, policy, reward_backprop, smpo  # noqa: F401  (importing registers the losses)
from .best_of_n import BestOfNOptions
from .core import (
    LOSSES,
    Loss,
    LossConfig,
    LossFacts,
    LossInputs,
    LossOutput,
    NormalizesBy,
    OldPolicy,
    Together,
    TrainsOn,
    compute_loss,
    normalizes_by,
    together,
    trains_on,
)
from .dpo import DpoOptions
from .nft import NftOptions
from .policy import AwmOptions, SapoOptions
from .renoise import RenoiseOptions
from .reward_backprop import DraftOptions, ReflOptions
from .smpo import SmpoOptions
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
    "AwmOptions",
    "BestOfNOptions",
    "DpoOptions",
    "DraftOptions",
    "Loss",
    "LossConfig",
    "LossFacts",
    "LossInputs",
    "LossOutput",
    "NftOptions",
    "NormalizesBy",
    "OldPolicy",
    "ReflOptions",
    "RenoiseOptions",
    "SapoOptions",
    "SmpoOptions",
    "Together",
    "TrainsOn",
    "aggregate",
    "clipped_surrogate",
    "compute_loss",
    "gaussian_kl",
    "guard_log_ratio",
    "k3_kl",
    "normalizes_by",
    "step_weights",
    "together",
    "trains_on",
    "velocity_penalty",
]
