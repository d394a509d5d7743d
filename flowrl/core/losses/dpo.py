"""Diffusion-DPO for flows (Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization"), online
from rollout groups as flow_grpo trains it (yifan123/flow_grpo scripts/train_sd3_dpo.py, config/dpo.py), or offline
from a dataset of labelled pairs (``data.pairs``, ``flowrl.image.pairs``; a soft label p makes the loss
−[p·log σ(z) + (1 − p)·log σ(−z)]).

A row is a preference pair of one prompt's samples, a chosen x0ʷ and a rejected x0ˡ, re-noised at the SAME level σ
with the SAME noise ε (x_σ = (1 − σ)·x0 + σ·ε for both). With the flow-matching error e(v, x0) = mean‖v − (ε − x0)‖²
of the trained velocity vθ and of the reference's v_ref at each member,

    d = (e(vθ, x0ʷ) − e(v_ref, x0ʷ)) − (e(vθ, x0ˡ) − e(v_ref, x0ˡ)),      loss = −log σ(−β/2 · d),

averaged over the rows: the policy is pushed to fit the chosen sample better than the reference does, and the
rejected one worse. ``implicit_acc`` is the share of rows with −β/2 · d > 0.

The reference is a trailing copy of the trained weights that starts as the base and is replaced by them every
``ref_update_step`` optimizer steps (never: the base stays the reference, flow_grpo's offline-style setting
``ref_update_step = 10000000``; "e.g. 40 for OnlineDPO", its config comment). As in flow_grpo the reference also
draws the rollouts, so between refreshes the pairs come from a fixed policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from flowrl.core.method_options import Backend
from flowrl.core.options import option

from .core import LOSSES, NO_RATIO, LossConfig, LossInputs, LossOutput, OldPolicy, TrainsOn
from .renoise import RenoiseOptions, scheme_option

PAIRINGS = ("best-worst", "top-bottom", "all")


@dataclass
class DpoOptions(RenoiseOptions):
    """Online DPO's own options (flow_grpo config/dpo.py and scripts/train_sd3_dpo.py)."""

    FLAT: ClassVar[dict[str, str]] = {}

    renoise: str = scheme_option(
        "logit-normal",
        "flow_grpo draws int(T·timestep_fraction) logit-normal levels per pair (compute_density_for_timestep_sampling,"
        " logit_mean 0, logit_std 1) on the shifted training schedule: renoise_count and renoise_shift",
    )
    renoise_each_epoch: bool = option(
        True, "with train.inner_epochs > 1: new levels and noise in every inner epoch (flow_grpo draws them per pass)"
    )
    beta: float = option(100.0, "β of −log σ(−β/2 · d) (flow_grpo config/dpo.py train.beta = 100)", low=1e-9)
    pairing: str = option(
        "best-worst",
        "which pairs of a group train: best-worst (the highest against the lowest advantage, flow_grpo's), "
        "top-bottom (each of the top `pairs` against each of the bottom `pairs`), all (every pair with different "
        "advantages, the higher one chosen); a group whose samples all tie gives none",
        choices=PAIRINGS,
    )
    pairs: int = option(1, "top-bottom: how many samples at each end of a group (k·k pairs)", low=1)
    ref_update_step: int = option(
        0,
        "replace the reference by the trained weights every this many optimizer steps (flow_grpo's ref_update_step, "
        "checked before each iteration's rollouts, which the reference draws); 0: never (the base stays the "
        "reference: flow_grpo's default 10000000)",
        low=0,
    )


def refresh_decay(every: int):
    """The trailing copy's decay after ``step`` optimizer steps: 0 (take the trained weights) when ``every`` divides
    a positive ``step``, else 1 (keep the reference)."""

    def decay(step: int) -> float:
        return 0.0 if every and step > 0 and step % every == 0 else 1.0

    return decay


def dpo_reference(options: DpoOptions) -> OldPolicy:
    """DPO's reference: a trailing copy refreshed every ``ref_update_step`` optimizer steps that draws the rollouts."""
    return OldPolicy(decay=refresh_decay(options.ref_update_step), samples=True)


def fm_error(v: Tensor, target: Tensor) -> Tensor:
    """mean‖v − target‖² per row ``[N]`` in float32 (flow_grpo's theta_mse / ref_mse)."""
    return ((v.float() - target.float()) ** 2).flatten(1).mean(1)


#: what a loss on DPO's pairs declares (SmPO shares it): pairs, flows, the refreshed reference, guided rollouts allowed
PAIR_FACTS = dict(trains_on=TrainsOn.PAIRS, trainers=(Backend.FLOW,), old_policy=dpo_reference, ignores=NO_RATIO,
                  guided_rollouts=True)  # fmt: skip


@LOSSES.register("dpo", options=DpoOptions, offline=True, **PAIR_FACTS)
def dpo(inputs: LossInputs, cfg: LossConfig, options: DpoOptions) -> LossOutput:
    """The DPO loss of P pairs (module docstring). Needs v_pred, v_old (the reference's velocity) and v_target
    ``[2P, *S]``: rows 0..P−1 the chosen members, P..2P−1 the rejected ones, row i and P + i at the same σ and ε.
    With ``pair_labels`` ``[P]`` (a pair dataset's soft labels p) the loss is −[p·log σ(z) + (1 − p)·log σ(−z)]."""
    inputs.need("v_pred", "v_old", "v_target", loss="dpo")
    error = fm_error(inputs.v_pred, inputs.v_target)
    ref_error = fm_error(inputs.v_old.detach(), inputs.v_target)
    p = error.shape[0] // 2
    w_diff, l_diff = error[:p] - ref_error[:p], error[p:] - ref_error[p:]
    inside = -0.5 * options.beta * (w_diff - l_diff)
    if inputs.pair_labels is None:
        loss = -F.logsigmoid(inside).mean()
    else:  # a soft label p: the cross-entropy of σ(inside) against p (label-smoothed DPO)
        p_w = inputs.pair_labels.to(inside)
        loss = -(p_w * F.logsigmoid(inside) + (1 - p_w) * F.logsigmoid(-inside)).mean()
    metrics = {
        "dpo/implicit_acc": float((inside.detach() > 0).float().mean()),
        "dpo/chosen_diff": float(w_diff.detach().mean()),
        "dpo/rejected_diff": float(l_diff.detach().mean()),
        "dpo/chosen_error": float(error.detach()[:p].mean()),
        "dpo/rejected_error": float(error.detach()[p:].mean()),
    }
    return LossOutput(loss, metrics)


def choose_pairs(advantages: Tensor, group: Tensor, pairing: str, k: int = 1) -> tuple[Tensor, Tensor]:
    """The preference pairs of a batch: indices ``(chosen [P], rejected [P])`` into ``advantages`` ``[N]``, pairs
    only within a ``group`` ``[N]``, groups in order of first appearance, pairs within a group by the chosen's then
    the rejected's rank. Ties break by position (the first of equal samples ranks higher); a pair of equal
    advantages is never made, so a group that ties throughout gives none (flow_grpo instead trains its samples 1
    over 0)."""
    chosen, rejected = [], []
    seen: list[int] = []
    for g in group.tolist():
        if g not in seen:
            seen.append(g)
    for g in seen:
        idx = (group == g).nonzero().squeeze(1)
        a = advantages[idx]
        order = idx[torch.sort(-a, stable=True).indices]  # best first
        ranked = advantages[order]
        if pairing == "best-worst":
            cand = [(0, len(order) - 1)]
        elif pairing == "top-bottom":
            top = min(k, len(order) // 2)
            cand = [(i, len(order) - 1 - j) for i in range(top) for j in range(top)]
        else:
            cand = [(i, j) for i in range(len(order)) for j in range(i + 1, len(order))]
        for i, j in cand:
            if ranked[i] > ranked[j]:
                chosen.append(int(order[i]))
                rejected.append(int(order[j]))
    return torch.tensor(chosen, dtype=torch.long), torch.tensor(rejected, dtype=torch.long)


__all__ = ["PAIRINGS", "PAIR_FACTS", "DpoOptions", "choose_pairs", "dpo", "dpo_reference", "fm_error", "refresh_decay"]
