"""DiffusionNFT (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward Process"): policy
improvement on the forward (noising) process, with no log-probs and no classifier-free guidance.

A clean sample x0 with reward-derived weight r ∈ [0, 1] is re-noised, x_t = (1 − t)·x0 + t·ε, and the trained
velocity vθ is mixed with the old policy's v_old into an implicit positive and negative policy

    v⁺ = β·vθ + (1 − β)·v_old,        v⁻ = (1 + β)·v_old − β·vθ,

whose x0-predictions x̂0^± = x_t − t·v^± regress x0, each error divided by its own (gradient-free) mean absolute
error w^± = max(mean|x̂0^± − x0|, 1e-5):

    loss = mean_rows( c/β · (r·mean(x̂0⁺ − x0)²/w⁺ + (1 − r)·mean(x̂0⁻ − x0)²/w⁻) ) + β_KL·mean‖vθ − v_ref‖²,

with r = clip(A, −c, c)/(2c) + 1/2. High-reward samples pull vθ towards the data that made them (r = 1), low-reward
ones push it away (r = 0). Reference: NVlabs/DiffusionNFT scripts/train_nft_sd3.py (the training loop) and its
``return_decay`` (the old policy's decay); config/nft.py for the published hyper-parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowrl.core.method_options import Backend
from flowrl.core.options import option

from .core import LOSSES, LossConfig, LossInputs, LossOutput, OldPolicy, TrainsOn
from .renoise import RenoiseOptions, scheme_option
from .terms import velocity_penalty

# (flat, uprate, uphold) of DiffusionNFT's decay types 0, 1, 2 (its return_decay)
DECAY_TYPES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def nft_decay(step: int, decay_type: int) -> float:
    """The old policy's decay d after ``step`` optimizer steps: 0 for the first ``flat`` steps, then
    min(uprate·(step − flat), uphold). The old weights become d·old + (1 − d)·θ after each iteration."""
    flat, uprate, uphold = DECAY_TYPES[decay_type]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


def nft_weight(advantages: Tensor, clip: float) -> Tensor:
    """r ∈ [0, 1] from advantages ``[N]``: clip to ±c, map linearly, A = c → 1, A = 0 → 1/2, A = −c → 0."""
    a = advantages.clamp(-clip, clip)
    return (a / clip / 2 + 0.5).clamp(0, 1)


def _adaptive_error(x0_pred: Tensor, x0: Tensor) -> Tensor:
    """mean((x̂0 − x0)²) / max(mean|x̂0 − x0|, 1e-5) per row ``[N]``; the divisor carries no gradient."""
    dims = tuple(range(1, x0.ndim))
    with torch.no_grad():
        scale = (x0_pred.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
    return ((x0_pred - x0) ** 2 / scale.to(x0_pred.dtype)).mean(dim=dims)


@dataclass
class NftOptions(RenoiseOptions):
    """DiffusionNFT's own options (NVlabs/DiffusionNFT config/nft.py, config/base.py)."""

    FLAT: ClassVar[dict[str, str]] = {**RenoiseOptions.FLAT, "nft_beta": "beta", "nft_adv_clip": "adv_clip",
                                      "nft_decay_type": "decay_type"}  # fmt: skip
    STORED_DEFAULTS: ClassVar[dict[str, Any]] = {"renoise_each_epoch": False}  # a run stored before the option

    renoise: str = scheme_option(
        "subset", "DiffusionNFT's subset, a random permutation's first max(1, int(T·train.timestep_fraction)) of T"
    )
    renoise_each_epoch: bool = option(
        True,
        "with train.inner_epochs > 1: new noise levels and noise in every inner epoch, as DiffusionNFT "
        "scripts/train_nft_sd3.py draws them inside its inner-epoch loop (a per-row timestep permutation and "
        "torch.randn_like per pass); False keeps each row's level and noise for the whole iteration (flowrl before "
        "2026-12)",
    )
    beta: float = option(
        1.0, "β: positive velocity β·vθ + (1 − β)·v_old, negative (1 + β)·v_old − β·vθ (its config.beta)", low=1e-6
    )
    adv_clip: float = option(5.0, "advantages clipped to ±c, then r = A/(2c) + 1/2 (its adv_clip_max)", low=1e-6)
    decay_type: int = option(
        1,
        "the old policy's decay (its return_decay): after each iteration old ← d·old + (1 − d)·θ, "
        "d = min(uprate·(step − flat), uphold) after `flat` optimizer steps; 0: d = 0 (old = current), "
        "1: (flat 0, uprate 0.001, uphold 0.5), 2: (75, 0.0075, 0.999)",
        low=0,
        high=2,
    )


def old_policy(options: NftOptions) -> OldPolicy:
    """NFT's old policy: samples the rollouts, trails θ with its ``return_decay`` of ``decay_type``."""
    return OldPolicy(decay=partial(nft_decay, decay_type=options.decay_type), samples=True)


@LOSSES.register("nft", options=NftOptions, trains_on=TrainsOn.SAMPLES, trainers=(Backend.FLOW,),
                 old_policy=old_policy, ignores=("dual_clip", "delta"))  # fmt: skip
def nft(inputs: LossInputs, cfg: LossConfig, options: NftOptions) -> LossOutput:
    """The DiffusionNFT loss (see the module docstring). Needs v_pred, v_old, x_t, x0 ``[N, *S]``, sigma and
    advantages ``[N]`` (and v_ref with ``cfg.velocity_kl_coef``)."""
    inputs.need("v_pred", "v_old", "x_t", "x0", "sigma", "advantages", loss="nft")
    beta, clip = options.beta, options.adv_clip
    v, v_old, x0 = inputs.v_pred, inputs.v_old.detach(), inputs.x0
    t = inputs.sigma.to(v).view(-1, *([1] * (v.ndim - 1)))
    r = nft_weight(inputs.advantages.to(v), clip)
    positive = _adaptive_error(inputs.x_t - t * (beta * v + (1 - beta) * v_old), x0)
    negative = _adaptive_error(inputs.x_t - t * ((1 + beta) * v_old - beta * v), x0)
    loss = (clip * (r * positive + (1 - r) * negative) / beta).mean()
    metrics = {
        "nft/positive": float(positive.detach().mean()),
        "nft/negative": float(negative.detach().mean()),
        "nft/old_deviation": float(((v.detach() - v_old) ** 2).mean()),
    }
    if cfg.velocity_kl_coef:
        inputs.need("v_ref", loss="nft")
        reg = velocity_penalty(v, inputs.v_ref)
        loss = loss + cfg.velocity_kl_coef * reg
        metrics["ref_reg"] = float(reg.detach())
    return LossOutput(loss, metrics)


__all__ = ["DECAY_TYPES", "NftOptions", "nft", "nft_decay", "nft_weight"]
