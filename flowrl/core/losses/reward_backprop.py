"""Direct reward backpropagation: the reward's gradient taken through the last sampling steps into the weights.

- **DRaFT-K** (Clark et al., "Directly Fine-Tuning Diffusion Models on Differentiable Rewards"): each sample's chain
  runs without gradient up to its last K steps, then with gradient through them (each step's network pass
  checkpointed); loss = −scale·mean(r(decode(x0))). **DRaFT-LV** (K = 1): the last step is also taken from
  ``lv_copies`` re-noisings of the finished sample, x' = (1 − σ)·x0 + σ·ε, each denoised with gradient, and their
  rewards averaged: more reward gradients per sampled chain.
- **ReFL** (Xu et al., ImageReward; THUDM/ImageReward ``train/ReFL.py``): the chain stops without gradient at a step
  drawn uniformly from the last ``window`` steps (30..39 of 40 there), and one pass with gradient predicts the clean
  sample from it, x̂0 = x_t − σ_t·v(x_t, σ_t); loss = scale·mean(relu(margin − r)) (its ``F.relu(-rewards + 2)``
  and ``grad_scale`` 1e-3).

The chains are re-run from each sample's initial noise with the current weights (the recipe's ``chains`` objective),
on Euler steps of the sampling schedule, guided when the run is; every configured reward must be differentiable
(``RewardFacts.differentiable``). The advantage estimator is not read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from flowrl.core.errors import ConfigError
from flowrl.core.method_options import Backend
from flowrl.core.options import option

from .core import LOSSES, NO_RATIO, LossConfig, LossInputs, LossOutput, TrainsOn


@dataclass(frozen=True)
class ChainGradient:
    """How a chain loss differentiates the sampler: ``first(T, generator)``, the index of the first step taken with
    gradient (of T); ``jump``: from there predict x0 in one pass (ReFL) instead of stepping to the end; ``copies``:
    DRaFT-LV's re-noised copies of the last step (0: none)."""

    first: Callable[[int, torch.Generator], int]
    jump: bool = False
    copies: int = 0


@dataclass
class DraftOptions:
    """DRaFT's own options."""

    FLAT: ClassVar[dict[str, str]] = {}

    steps: int = option(1, "K: the last K sampling steps are differentiated (DRaFT-K; DRaFT-1 and -LV use 1)", low=1)
    lv_copies: int = option(
        0, "DRaFT-LV: re-noised copies of the finished sample denoised with gradient (steps = 1); 0: DRaFT-K", low=0
    )
    scale: float = option(1.0, "the loss is −scale·mean(reward)", low=1e-12)

    def __post_init__(self) -> None:
        if self.lv_copies and self.steps != 1:
            raise ConfigError("loss.draft.lv_copies (DRaFT-LV) re-noises the last step only: set loss.draft.steps=1")


@dataclass
class ReflOptions:
    """ReFL's own options (THUDM/ImageReward train/ReFL.py)."""

    FLAT: ClassVar[dict[str, str]] = {}

    window: int = option(
        10, "the stop step is drawn uniformly from the last `window` steps (ReFL.py: 30..39 of 40 steps)", low=1
    )
    margin: float = option(2.0, "loss relu(margin − reward) (ReFL.py: F.relu(-rewards + 2))")
    scale: float = option(1e-3, "the loss's factor (ReFL.py --grad_scale 1e-3)", low=1e-12)


def _draft_chain(options: DraftOptions) -> ChainGradient:
    k = options.steps
    return ChainGradient(first=lambda t, gen: max(0, t - k), copies=options.lv_copies)


def _refl_chain(options: ReflOptions) -> ChainGradient:
    w = options.window

    def first(t: int, gen: torch.Generator) -> int:
        low = max(0, t - w)
        return low + int(torch.randint(t - low, (1,), generator=gen))

    return ChainGradient(first=first, jump=True)


@LOSSES.register("draft", options=DraftOptions, trains_on=TrainsOn.CHAINS, trainers=(Backend.FLOW,),
                 chain=_draft_chain, ignores=NO_RATIO)  # fmt: skip
def draft(inputs: LossInputs, cfg: LossConfig, options: DraftOptions) -> LossOutput:
    """−scale·mean(reward) over the rows' differentiable rewards ``[N]``."""
    inputs.need("reward", loss="draft")
    loss = -options.scale * inputs.reward.mean()
    return LossOutput(loss, {"reward_backprop/reward": float(inputs.reward.detach().mean())})


@LOSSES.register("refl", options=ReflOptions, trains_on=TrainsOn.CHAINS, trainers=(Backend.FLOW,),
                 chain=_refl_chain, ignores=NO_RATIO)  # fmt: skip
def refl(inputs: LossInputs, cfg: LossConfig, options: ReflOptions) -> LossOutput:
    """scale·mean(relu(margin − reward)) over the rows' differentiable rewards ``[N]``."""
    inputs.need("reward", loss="refl")
    loss = options.scale * F.relu(options.margin - inputs.reward).mean()
    return LossOutput(loss, {"reward_backprop/reward": float(inputs.reward.detach().mean())})


__all__ = ["ChainGradient", "DraftOptions", "ReflOptions", "draft", "refl"]
