"""The registered policy losses. Each is a composition of the terms in ``terms.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from flowrl.core.method_options import Backend
from flowrl.core.options import option

from .core import LOSSES, LossConfig, LossInputs, LossOutput, NormalizesBy, OldPolicy, TrainsOn
from .renoise import RenoiseOptions
from .terms import (
    aggregate,
    clipped_surrogate,
    guard_log_ratio,
    kl_term,
    ratio_metrics,
    step_weights,
    velocity_penalty,
)

FLOW, TEXT = (Backend.FLOW,), (Backend.TEXT,)


def _advantages(inputs: LossInputs) -> Tensor:
    a = inputs.advantages
    return a.unsqueeze(-1) if a.ndim == 1 else a


Surrogate = Callable[[Tensor, Tensor, LossConfig], tuple[Tensor, Tensor]]


def _clipped_policy_loss(
    inputs: LossInputs, cfg: LossConfig, log_ratio: Tensor, mode: str, surrogate: Surrogate = clipped_surrogate
) -> LossOutput:
    """Per-element ``surrogate`` (PPO-clip unless given) × ``policy_weights`` + β·KL, weighted by mask × step
    weights, reduced by ``mode``."""
    adv = _advantages(inputs).to(log_ratio.dtype)
    per_element, ratio = surrogate(log_ratio, adv, cfg)
    if inputs.policy_weights is not None:
        per_element = per_element * inputs.policy_weights.to(per_element)
    kl = kl_term(inputs, cfg, log_ratio if cfg.importance_sampling_level == "sequence" else None)
    if kl is not None:
        per_element = per_element + cfg.kl_coef * kl
    weights = step_weights(cfg.step_weighting, inputs.mask, inputs.std, inputs.dt).to(per_element)
    loss = aggregate(per_element, weights, mode, cfg.max_length, inputs.token_count)
    metrics = ratio_metrics(ratio, adv, log_ratio, inputs.mask, cfg)
    if kl is not None:
        metrics["kl"] = float((kl.detach() * weights).sum() / weights.sum().clamp(min=1e-12))
    return LossOutput(loss, metrics)


def _log_ratio(inputs: LossInputs, loss: str) -> Tensor:
    inputs.need("log_prob", "old_log_prob", "advantages", "mask", loss=loss)
    return inputs.log_prob - inputs.old_log_prob


def _token_log_ratio(inputs: LossInputs, cfg: LossConfig, loss: str) -> Tensor:
    """``[N, T]`` log-ratios of a text loss: each token's, or (``importance_sampling_level = sequence``) each
    completion's mean over its valid tokens, repeated over them (TRL's ``(B, 1)`` broadcast)."""
    log_ratio = _log_ratio(inputs, loss)
    if cfg.importance_sampling_level == "token":
        return log_ratio
    m = inputs.mask.to(log_ratio.dtype)
    per_sequence = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    return per_sequence.expand_as(log_ratio)


@LOSSES.register("ppo-clip", normalizes_by=NormalizesBy.TOKENS, trainers=FLOW)
def ppo_clip(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """Flow-GRPO: clipped surrogate on r = exp(logp − logp_old) per transition, mean over valid elements."""
    return _clipped_policy_loss(inputs, cfg, _log_ratio(inputs, "ppo-clip"), "token-mean")


@LOSSES.register("grpo-guard", normalizes_by=NormalizesBy.TOKENS, trainers=FLOW)
def grpo_guard(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """GRPO-Guard: the clipped surrogate on the normalised log-ratio (see ``guard_log_ratio``). Pair it with
    ``step_weighting = "inverse-dt"`` for the paper's per-step gradient reweighting."""
    inputs.need("advantages", "mask", "x_next", "mean", "old_mean", "std", loss="grpo-guard")
    log_ratio = guard_log_ratio(inputs.x_next, inputs.old_mean, inputs.mean, inputs.std)
    return _clipped_policy_loss(inputs, cfg, log_ratio, "token-mean")


@LOSSES.register("grpo")
def grpo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """Text GRPO: per-token clipped surrogate, mean over each sequence's tokens, then over sequences."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "grpo"), "sequence-mean")


@LOSSES.register("bnpo", normalizes_by=NormalizesBy.TOKENS)
def bnpo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """BNPO: token mean over the local batch."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "bnpo"), "token-mean")


@LOSSES.register("dr-grpo")
def dr_grpo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """Dr. GRPO: token sum divided by N · L_max (no length normalisation per sequence)."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "dr-grpo"), "fixed-length")


@LOSSES.register("dapo", normalizes_by=NormalizesBy.GLOBAL_TOKENS)
def dapo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """DAPO: token sum divided by the valid tokens of the whole global batch (``inputs.token_count``)."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "dapo"), "global-token-mean")


@LOSSES.register("cispo", normalizes_by=NormalizesBy.GLOBAL_TOKENS, trainers=TEXT, ignores=("dual_clip", "delta"))
def cispo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """CISPO (MiniMax-M1; ScaleRL's ε_max): −sg(min(r, ε_max))·A·log π per token, the ratio capped and detached
    so that every token keeps a gradient; ε_max is ``clip_high`` itself, not 1 + clip_high (TRL's epsilon_high,
    recommended 5.0). Aggregated as dapo."""
    log_ratio = _token_log_ratio(inputs, cfg, "cispo")
    log_prob = inputs.log_prob

    def surrogate(lr: Tensor, adv: Tensor, c: LossConfig) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(lr)
        return -ratio.clamp(max=c.clip_high).detach() * adv * log_prob.to(lr), ratio

    out = _clipped_policy_loss(inputs, cfg, log_ratio, "global-token-mean", surrogate)
    valid = inputs.mask.bool()
    if valid.any():  # what is clipped is the weight, at the cap itself
        capped = (torch.exp(log_ratio.detach()) > cfg.clip_high)[valid].float().mean()
        out.metrics.update(clip_frac_low=0.0, clip_frac_high=float(capped))
    return out


@dataclass
class SapoOptions:
    """SAPO's gate temperatures (TRL's defaults)."""

    FLAT: ClassVar[dict[str, str]] = {"sapo_temperature_pos": "temperature_pos",
                                      "sapo_temperature_neg": "temperature_neg"}  # fmt: skip

    temperature_pos: float = option(1.0, "the gate's temperature τ where A > 0 (TRL sapo_temperature_pos)", low=1e-6)
    temperature_neg: float = option(1.05, "τ where A ≤ 0 (TRL sapo_temperature_neg)", low=1e-6)


@LOSSES.register("sapo", options=SapoOptions, trainers=TEXT, ignores=("dual_clip", "delta"))
def sapo(inputs: LossInputs, cfg: LossConfig, options: SapoOptions) -> LossOutput:
    """SAPO (Soft Adaptive Policy Optimization): a smooth gate instead of the clip, −σ(τ(r − 1))·(4/τ)·A per
    token with τ = ``temperature_pos`` where A > 0, else ``temperature_neg`` (its gradient at r = 1 is the PPO one);
    aggregated as grpo (mean per sequence, then over sequences)."""

    def surrogate(lr: Tensor, adv: Tensor, c: LossConfig) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(lr)
        tau = torch.where(adv > 0, options.temperature_pos, options.temperature_neg).to(lr)
        return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, ratio

    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "sapo"), "sequence-mean", surrogate)


@LOSSES.register("gspo", ignores=("top_entropy_quantile", "importance_sampling_level", "step_weighting"))
def gspo(inputs: LossInputs, cfg: LossConfig, options: None) -> LossOutput:
    """GSPO: one ratio per sequence, exp(mean of its token log-ratios), clipped per sequence; mean over
    sequences. KL (k3) is averaged per sequence the same way."""
    token_log_ratio = _log_ratio(inputs, "gspo")
    m = inputs.mask.to(token_log_ratio.dtype)
    seq_log_ratio = (token_log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    seq_mask = m.sum(-1, keepdim=True) > 0
    seq_inputs = LossInputs(advantages=inputs.advantages, mask=seq_mask)
    seq_cfg = replace(cfg, kl_coef=0.0, step_weighting="uniform")  # KL is added per sequence below
    out = _clipped_policy_loss(seq_inputs, seq_cfg, seq_log_ratio, "token-mean")
    kl = kl_term(inputs, cfg)
    if kl is not None:
        seq_kl = (kl * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        out.loss = out.loss + cfg.kl_coef * seq_kl[seq_mask.squeeze(-1)].mean()
        out.metrics["kl"] = float(seq_kl.detach().mean())
    return out


@dataclass
class AwmOptions(RenoiseOptions):
    """Advantage Weighted Matching's own options (scxue/advantage_weighted_matching train_sd3_awm.py)."""

    FLAT: ClassVar[dict[str, str]] = {
        **RenoiseOptions.FLAT,
        **{f"awm_{name}": name for name in ("weighting", "ghuber_power", "ratio", "adv_scale", "kl_weight",
                                            "ema_coef", "ema_decay")},
    }  # fmt: skip

    weighting: str = option(
        "uniform",
        "the time weighting of the per-sample matching error e (its train_sd3_awm.py): uniform e, t·e, t²·e, huber "
        "t·(√e − 1e-5), ghuber t·(e^p − 1e-10^p)/p (its presets' default, p = ghuber_power)",
        choices=("uniform", "t", "t2", "huber", "ghuber"),
    )
    ghuber_power: float = option(0.25, "ghuber weighting: the power p (its presets: 0.25)", low=1e-6)
    ratio: bool = option(
        False,
        "its PPO ratio (its loss_type exp_first): exp(−w(e) + w(e_old)) per row, clipped to 1 ± loss.clip_low/high "
        "(its train.clip_range; 1 in its presets), e_old under the policy before the iteration's update at the same "
        "noise and level; the loss is then −A·ratio (same gradient as A·w(e) while the ratio is 1)",
    )
    adv_scale: float = option(
        1.0, "advantages times this (its advantage_max / adv_clip_max: 1/5 in its presets)", low=0.0
    )
    kl_weight: str = option(
        "uniform",
        "the loss.velocity_kl_coef term's weighting (its kl_weight): 'uniform' mean‖vθ − v_ref‖², 'elbo' divided by "
        "2·std_dev_t², std_dev_t = 0.7·√(σ/(1 − min(σ, 0.99)))",
        choices=("uniform", "elbo"),
    )
    ema_coef: float = option(
        0.0,
        "+ c·mean‖vθ − v_ema‖² to a trailing copy of the weights (its ema_beta; 1 in its presets), which after each "
        "iteration moves to d·ema + (1 − d)·θ with d = min(ema_decay, 0.001·optimizer steps)",
        low=0.0,
    )
    ema_decay: float = option(0.3, "the trailing copy's decay cap (its kl_ema_decay, linear)", low=0.0, high=1.0)


def awm_weighted(error: Tensor, inputs: LossInputs, options: AwmOptions) -> Tensor:
    """AWM's time-weighted matching error ``[N]`` from the per-sample error e ``[N]`` (the negative of what its code
    calls the log-prob, so the on-policy gradient A·∇(weighted e) is its −A·∇log_prob at ratio 1)."""
    kind = options.weighting
    if kind == "uniform":
        return error
    inputs.need("sigma", loss=f"awm with weighting={kind}")
    t = inputs.sigma.to(error)
    if kind == "t":
        return error * t
    if kind == "t2":
        return error * t**2
    if kind == "huber":
        return (torch.sqrt(error + 1e-10) - 1e-5) * t
    p = options.ghuber_power
    return ((error + 1e-10) ** p - 1e-10**p) * t / p


def awm_log_prob(inputs: LossInputs, options: AwmOptions) -> Tensor:
    """AWM's "log-prob" of each row, −w(‖vθ − (ε − x0)‖²) ``[N]`` (its compute_log_prob_awm)."""
    inputs.need("v_pred", "v_target", loss="awm")
    return -awm_weighted(((inputs.v_pred - inputs.v_target) ** 2).flatten(1).mean(1), inputs, options)


def _awm_kl(inputs: LossInputs, options: AwmOptions) -> Tensor:
    """AWM's KL to the reference: mean‖vθ − v_ref‖², per row divided by 2·std_dev_t² under ``kl_weight=elbo``
    (std_dev_t = 0.7·√(σ/(1 − min(σ, 0.99))), its compute_log_prob_awm)."""
    inputs.need("v_ref", loss="awm")
    if options.kl_weight == "uniform":
        return velocity_penalty(inputs.v_pred, inputs.v_ref)
    inputs.need("sigma", loss="awm with kl_weight=elbo")
    sigma = inputs.sigma.to(inputs.v_pred)
    std = 0.7 * torch.sqrt(sigma / (1 - sigma.clamp(0, 0.99)))
    return (((inputs.v_pred - inputs.v_ref) ** 2).flatten(1).mean(1) / (2 * std**2)).mean()


def _awm_old_policy(options: AwmOptions) -> OldPolicy | None:
    """AWM's trailing copy for its EMA KL: d = min(ema_decay, 0.001·step) (kl_ema_decay_type linear)."""
    if options.ema_coef <= 0:
        return None
    cap = options.ema_decay
    return OldPolicy(decay=lambda step: min(cap, 0.001 * step))


@LOSSES.register(
    "awm",
    options=AwmOptions,
    trains_on=TrainsOn.SAMPLES,
    trainers=FLOW,
    old_policy=_awm_old_policy,
    old_value=lambda options: awm_log_prob if options.ratio else None,
)
def awm(inputs: LossInputs, cfg: LossConfig, options: AwmOptions) -> LossOutput:
    """Advantage-weighted matching: mean_i(A_i · w(‖vθ(x_t, t) − (ε − x0)‖²)) with A scaled by ``adv_scale``;
    with ``ratio`` the clipped surrogate −A·ratio on ratio = exp(log_prob − old_log_prob), log_prob = −w(e) (clipped
    by ``cfg.clip_low``/``clip_high``); plus β·KL to the reference (``cfg.velocity_kl_coef``, ``kl_weight``) and
    c·mean‖vθ − v_old‖² to the trailing copy (``ema_coef``).

    Needs no log-probs of the sampler: v_pred, v_target (= ε − x0 for the row's σ, ε) and advantages ``[N]``.
    """
    inputs.need("v_pred", "v_target", "advantages", loss="awm")
    per_sample = ((inputs.v_pred - inputs.v_target) ** 2).flatten(1).mean(1)
    log_prob = awm_log_prob(inputs, options)
    adv = inputs.advantages.to(per_sample) * options.adv_scale
    metrics = {"fm_loss": float(per_sample.detach().mean())}
    if inputs.old_log_prob is None:
        loss = (-adv * log_prob).mean()
    else:
        log_ratio = log_prob - inputs.old_log_prob.to(log_prob)
        surrogate, ratio = clipped_surrogate(log_ratio, adv, cfg)
        loss = surrogate.mean()
        metrics.update(ratio_metrics(ratio, adv, log_ratio, torch.ones_like(ratio, dtype=torch.bool), cfg))
    if cfg.velocity_kl_coef:
        reg = _awm_kl(inputs, options)
        loss = loss + cfg.velocity_kl_coef * reg
        metrics["ref_reg"] = float(reg.detach())
    if options.ema_coef:
        inputs.need("v_old", loss="awm with ema_coef > 0")
        ema = velocity_penalty(inputs.v_pred, inputs.v_old.detach())
        loss = loss + options.ema_coef * ema
        metrics["ema_reg"] = float(ema.detach())
    return LossOutput(loss, metrics)


__all__ = [
    "AwmOptions",
    "SapoOptions",
    "awm",
    "awm_log_prob",
    "awm_weighted",
    "bnpo",
    "cispo",
    "dapo",
    "dr_grpo",
    "grpo",
    "grpo_guard",
    "gspo",
    "ppo_clip",
    "sapo",
]
