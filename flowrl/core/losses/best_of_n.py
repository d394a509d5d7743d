"""Best-of-N fine-tuning (RAFT: Dong et al., "RAFT: Reward rAnked FineTuning for Generative Foundation Model
Alignment"; flow_grpo's SFT script): plain flow matching on the top samples of each prompt group.

Each group is ranked by the estimator's advantage (the reward's order within a group for ``grpo``); its top ``k``
samples (``loss.best-of-n.top_k``) are the data, re-noised at drawn levels like every sample loss's rows, and the
policy regresses their flow-matching target:

    loss = mean_rows ‖vθ(x_σ, σ) − (ε − x0)‖².

flow_grpo's ``scripts/train_sd3_sft.py`` is k = 1: advantage 1 for the group's maximum and 0 for the rest
(``flow_grpo/stat_tracking.py``, ``type='sft'``), loss mean(A·w·(v − target)²) with w = 1 (its logit-normal
weighting), i.e. this loss times the share of selected samples (1/G), a constant that Adam all but removes. A group
whose samples all tie gives no sample (nothing ranks above the rest; flow_grpo would train on every tied maximum).
The rollouts come from the current policy (RAFT), or, as flow_grpo samples with its ``ref`` adapter, from a copy
refreshed every ``ref_update_step`` optimizer steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from flowrl.core.method_options import Backend
from flowrl.core.options import option

from .core import LOSSES, NO_RATIO, LossConfig, LossInputs, LossOutput, OldPolicy, TrainsOn
from .dpo import fm_error, refresh_decay
from .renoise import RenoiseOptions, scheme_option
from .terms import velocity_penalty


@dataclass
class BestOfNOptions(RenoiseOptions):
    """Best-of-N's own options."""

    FLAT: ClassVar[dict[str, str]] = {}

    renoise: str = scheme_option(
        "logit-normal",
        "flow_grpo's SFT script draws int(T·timestep_fraction) logit-normal levels (renoise_count) on the shifted "
        "schedule (renoise_shift)",
    )
    renoise_each_epoch: bool = option(True, "with train.inner_epochs > 1: new levels and noise in every inner epoch")
    top_k: int = option(1, "the samples of each group trained on: its k highest advantages (flow_grpo: 1)", low=1)
    ref_update_step: int = option(
        1,
        "the rollouts come from a copy of the weights refreshed every this many optimizer steps: 1, the current "
        "policy (RAFT); 0, never (the base draws every rollout: rejection sampling of the base); flow_grpo's SFT "
        "script samples with a reference refreshed every train.ref_update_step",
        low=0,
    )


def top_of_groups(k: int) -> Callable[[Tensor, Tensor], Tensor]:
    """A selection ``(advantages [N], group [N]) -> bool [N]``: each group's ``k`` highest advantages (the first of
    equal ones first), none of a group whose advantages all tie, and never more than all but one of a group."""

    def select(advantages: Tensor, group: Tensor) -> Tensor:
        keep = torch.zeros(advantages.shape[0], dtype=torch.bool)
        for g in group.unique():
            idx = (group == g).nonzero().squeeze(1)
            a = advantages[idx]
            if bool((a == a[0]).all()):
                continue
            order = torch.sort(-a, stable=True).indices
            keep[idx[order[: min(k, len(idx) - 1)]]] = True
        return keep

    return select


def _sampler(options: BestOfNOptions) -> OldPolicy | None:
    if options.ref_update_step == 1:
        return None  # refreshed after every step: the current policy itself
    return OldPolicy(decay=refresh_decay(options.ref_update_step), samples=True)


@LOSSES.register(
    "best-of-n",
    options=BestOfNOptions,
    trains_on=TrainsOn.SAMPLES,
    trainers=(Backend.FLOW,),
    old_policy=_sampler,
    selects=lambda options: top_of_groups(options.top_k),
    ignores=NO_RATIO,
    guided_rollouts=True,
)
def best_of_n(inputs: LossInputs, cfg: LossConfig, options: BestOfNOptions) -> LossOutput:
    """The flow-matching loss of the selected samples' rows: mean‖vθ − (ε − x0)‖² (module docstring); needs v_pred
    and v_target ``[N, *S]`` (and v_ref with ``cfg.velocity_kl_coef``: + β·mean‖vθ − v_ref‖²)."""
    inputs.need("v_pred", "v_target", loss="best-of-n")
    error = fm_error(inputs.v_pred, inputs.v_target)
    loss = error.mean()
    metrics = {"fm_loss": float(error.detach().mean())}
    if cfg.velocity_kl_coef:
        inputs.need("v_ref", loss="best-of-n")
        reg = velocity_penalty(inputs.v_pred, inputs.v_ref)
        loss = loss + cfg.velocity_kl_coef * reg
        metrics["ref_reg"] = float(reg.detach())
    return LossOutput(loss, metrics)


__all__ = ["BestOfNOptions", "best_of_n", "top_of_groups"]
