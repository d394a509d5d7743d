"""SmPO-Diffusion (Lu et al., "Smoothed Preference Optimization via ReNoise Inversion for Aligning Diffusion Models
with Varied Human Preferences", ICML 2025) on flows: DPO with a smoothed preference and an inverted trajectory.
Reference code: JaydenLyh/SmPO ``train.py`` (the loss and the inversion) and ``preprocessing.py`` (the scores).

Smoothed preference. Instead of "the chosen wins" (p = 1), the probability that it wins under the reward model, the
two-way softmax of the members' rewards over a temperature τ (SmPO min-max normalises PickScore, i.e. τ = its range):

    p = exp(r_w/τ) / (exp(r_w/τ) + exp(r_l/τ)) = σ((r_w − r_l)/τ)  ∈ [½, 1),

and the DPO logit is scaled by the margin 2p − 1 (and SmPO's constant factor c = 10):

    loss = −log σ(−β/2 · (2p − 1) · c · d),   d = (e_θ(x0ʷ) − e_ref(x0ʷ)) − (e_θ(x0ˡ) − e_ref(x0ˡ)),

so a near-tie pushes barely and a clear win as DPO with β·c.

Inverted trajectory. Each member's noisy state at σ is not x0 plus fresh noise but the policy's own ODE run
backwards from x0 to σ (no gradient), each inverse step refined by ReNoise: v₁ = v(x, s), x' = x + Δ·v₁,
v₂ = v(x', s), x ← x + Δ·(v₁ + v₂)/2 (SmPO's code evaluates both at the step's start level s; ``renoise_iterations``
repeats the refinement). The flow-matching target follows from the state reached: ε̂ = (x_σ − (1 − σ)·x0)/σ,
target ε̂ − x0. Differences from SmPO's code (ε-prediction UNets on a DDIM grid of 5 or 10 steps, stopping at the
first grid level past t): flowrl inverts on the sampler's own schedule exactly to σ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from flowrl.core.options import option

from .core import LOSSES, LossConfig, LossInputs, LossOutput
from .dpo import PAIR_FACTS, DpoOptions, fm_error
from .renoise import scheme_option


@dataclass
class SmpoOptions(DpoOptions):
    """SmPO's own options (JaydenLyh/SmPO train.py, examples/*.sh), on top of online DPO's pairs and reference."""

    FLAT: ClassVar[dict[str, str]] = {}

    renoise: str = scheme_option(
        "uniform", "SmPO draws t uniformly (torch.randint over 1000 timesteps); uniform: one level of the schedule"
    )
    beta: float = option(5000.0, "β (SmPO examples/sdxl.sh --beta_dpo 5000; sd15.sh 2000)", low=1e-9)
    temperature: float = option(
        1.0,
        "τ of p = σ((r_w − r_l)/τ): the reward's range (SmPO min-max normalises PickScore by its dataset range; 1 "
        "for a reward in [0, 1])",
        low=1e-9,
    )
    margin_scale: float = option(10.0, "c in −β/2·(2p − 1)·c·d (SmPO train.py's factor 10)", low=1e-9)
    renoise_iterations: int = option(
        1, "ReNoise refinements of each inverse step (SmPO: 1, one extra velocity averaged in); 0: plain Euler", low=0
    )


def smoothed_preference(rewards: torch.Tensor, temperature: float) -> torch.Tensor:
    """p ``[P]``: the two-way softmax probability that the chosen member wins, from ``rewards`` ``[P, 2]`` (chosen,
    rejected)."""
    return torch.sigmoid((rewards[:, 0] - rewards[:, 1]).float() / temperature)


@LOSSES.register("smpo", options=SmpoOptions, inversion=lambda options: options.renoise_iterations, **PAIR_FACTS)
def smpo(inputs: LossInputs, cfg: LossConfig, options: SmpoOptions) -> LossOutput:
    """The SmPO loss of P pairs (module docstring). Needs v_pred, v_old (the reference's velocity), v_target
    ``[2P, *S]`` (chosen rows first, each pair at one σ, the states and targets from the inversion) and
    pair_rewards ``[P, 2]``."""
    inputs.need("v_pred", "v_old", "v_target", "pair_rewards", loss="smpo")
    error = fm_error(inputs.v_pred, inputs.v_target)
    ref_error = fm_error(inputs.v_old.detach(), inputs.v_target)
    p_rows = error.shape[0] // 2
    d = (error[:p_rows] - ref_error[:p_rows]) - (error[p_rows:] - ref_error[p_rows:])
    p = smoothed_preference(inputs.pair_rewards, options.temperature).to(d)
    inside = -0.5 * options.beta * (2 * p - 1) * options.margin_scale * d
    loss = -F.logsigmoid(inside).mean()
    metrics = {
        "smpo/implicit_acc": float((inside.detach() > 0).float().mean()),
        "smpo/preference": float(p.mean()),
        "smpo/chosen_error": float(error.detach()[:p_rows].mean()),
        "smpo/rejected_error": float(error.detach()[p_rows:].mean()),
    }
    return LossOutput(loss, metrics)


__all__ = ["SmpoOptions", "smoothed_preference", "smpo"]
