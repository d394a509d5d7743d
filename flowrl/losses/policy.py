"""The registered policy losses. Each is a composition of the terms in ``terms.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from .core import LOSSES, LossConfig, LossInputs, LossOutput, OldPolicy
from .terms import (
    aggregate,
    clipped_surrogate,
    guard_log_ratio,
    kl_term,
    ratio_metrics,
    step_weights,
    velocity_penalty,
)


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


@LOSSES.register("ppo-clip", normalizes_by="tokens", trainers=("flow",))
def ppo_clip(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """Flow-GRPO: clipped surrogate on r = exp(logp − logp_old) per transition, mean over valid elements."""
    return _clipped_policy_loss(inputs, cfg, _log_ratio(inputs, "ppo-clip"), "token-mean")


@LOSSES.register("grpo-guard", normalizes_by="tokens", trainers=("flow",))
def grpo_guard(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """GRPO-Guard: the clipped surrogate on the normalised log-ratio (see ``guard_log_ratio``). Pair it with
    ``step_weighting = "inverse-dt"`` for the paper's per-step gradient reweighting."""
    inputs.need("advantages", "mask", "x_next", "mean", "old_mean", "std", loss="grpo-guard")
    log_ratio = guard_log_ratio(inputs.x_next, inputs.old_mean, inputs.mean, inputs.std)
    return _clipped_policy_loss(inputs, cfg, log_ratio, "token-mean")


@LOSSES.register("grpo")
def grpo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """Text GRPO: per-token clipped surrogate, mean over each sequence's tokens, then over sequences."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "grpo"), "sequence-mean")


@LOSSES.register("bnpo", normalizes_by="tokens")
def bnpo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """BNPO: token mean over the local batch."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "bnpo"), "token-mean")


@LOSSES.register("dr-grpo")
def dr_grpo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """Dr. GRPO: token sum divided by N · L_max (no length normalisation per sequence)."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "dr-grpo"), "fixed-length")


@LOSSES.register("dapo", normalizes_by="global-tokens")
def dapo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """DAPO: token sum divided by the valid tokens of the whole global batch (``inputs.token_count``)."""
    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "dapo"), "global-token-mean")


@LOSSES.register("cispo", normalizes_by="global-tokens", trainers=("text",), ignores=("dual_clip", "delta"))
def cispo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
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


@LOSSES.register("sapo", trainers=("text",), ignores=("dual_clip", "delta"))
def sapo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """SAPO (Soft Adaptive Policy Optimization): a smooth gate instead of the clip, −σ(τ(r − 1))·(4/τ)·A per
    token with τ = ``sapo_temperature_pos`` where A > 0, else ``sapo_temperature_neg`` (its gradient at r = 1 is
    the PPO one); aggregated as grpo (mean per sequence, then over sequences)."""

    def surrogate(lr: Tensor, adv: Tensor, c: LossConfig) -> tuple[Tensor, Tensor]:
        ratio = torch.exp(lr)
        tau = torch.where(adv > 0, c.sapo_temperature_pos, c.sapo_temperature_neg).to(lr)
        return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, ratio

    return _clipped_policy_loss(inputs, cfg, _token_log_ratio(inputs, cfg, "sapo"), "sequence-mean", surrogate)


@LOSSES.register("gspo", ignores=("top_entropy_quantile", "importance_sampling_level"))
def gspo(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
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


def awm_weighted(error: Tensor, inputs: LossInputs, cfg: LossConfig) -> Tensor:
    """AWM's time-weighted matching error ``[N]`` from the per-sample error e ``[N]`` (the negative of what its code
    calls the log-prob, so the on-policy gradient A·∇(weighted e) is its −A·∇log_prob at ratio 1)."""
    kind = cfg.awm_weighting
    if kind == "uniform":
        return error
    inputs.need("sigma", loss=f"awm with awm_weighting={kind}")
    t = inputs.sigma.to(error)
    if kind == "t":
        return error * t
    if kind == "t2":
        return error * t**2
    if kind == "huber":
        return (torch.sqrt(error + 1e-10) - 1e-5) * t
    p = cfg.awm_ghuber_power
    return ((error + 1e-10) ** p - 1e-10**p) * t / p


def awm_log_prob(inputs: LossInputs, cfg: LossConfig) -> Tensor:
    """AWM's "log-prob" of each row, −w(‖vθ − (ε − x0)‖²) ``[N]`` (its compute_log_prob_awm)."""
    inputs.need("v_pred", "v_target", loss="awm")
    return -awm_weighted(((inputs.v_pred - inputs.v_target) ** 2).flatten(1).mean(1), inputs, cfg)


def _awm_kl(inputs: LossInputs, cfg: LossConfig) -> Tensor:
    """AWM's KL to the reference: mean‖vθ − v_ref‖², per row divided by 2·std_dev_t² under ``awm_kl_weight=elbo``
    (std_dev_t = 0.7·√(σ/(1 − min(σ, 0.99))), its compute_log_prob_awm)."""
    inputs.need("v_ref", loss="awm")
    if cfg.awm_kl_weight == "uniform":
        return velocity_penalty(inputs.v_pred, inputs.v_ref)
    inputs.need("sigma", loss="awm with awm_kl_weight=elbo")
    sigma = inputs.sigma.to(inputs.v_pred)
    std = 0.7 * torch.sqrt(sigma / (1 - sigma.clamp(0, 0.99)))
    return (((inputs.v_pred - inputs.v_ref) ** 2).flatten(1).mean(1) / (2 * std**2)).mean()


def _awm_old_policy(cfg: LossConfig) -> OldPolicy | None:
    """AWM's trailing copy for its EMA KL: d = min(awm_ema_decay, 0.001·step) (kl_ema_decay_type linear)."""
    if cfg.awm_ema_coef <= 0:
        return None
    cap = cfg.awm_ema_decay
    return OldPolicy(decay=lambda step: min(cap, 0.001 * step))


@LOSSES.register(
    "awm",
    trains_on="samples",
    trainers=("flow",),
    old_policy=_awm_old_policy,
    old_value=lambda cfg: awm_log_prob if cfg.awm_ratio else None,
)
def awm(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """Advantage-weighted matching: mean_i(A_i · w(‖vθ(x_t, t) − (ε − x0)‖²)) with A scaled by ``awm_adv_scale``;
    with ``awm_ratio`` the clipped surrogate −A·ratio on ratio = exp(log_prob − old_log_prob), log_prob = −w(e);
    plus β·KL to the reference (``velocity_kl_coef``, ``awm_kl_weight``) and c·mean‖vθ − v_old‖² to the trailing copy
    (``awm_ema_coef``).

    Needs no log-probs of the sampler: v_pred, v_target (= ε − x0 for the row's σ, ε) and advantages ``[N]``.
    """
    inputs.need("v_pred", "v_target", "advantages", loss="awm")
    per_sample = ((inputs.v_pred - inputs.v_target) ** 2).flatten(1).mean(1)
    log_prob = awm_log_prob(inputs, cfg)
    adv = inputs.advantages.to(per_sample) * cfg.awm_adv_scale
    metrics = {"fm_loss": float(per_sample.detach().mean())}
    if inputs.old_log_prob is None:
        loss = (-adv * log_prob).mean()
    else:
        log_ratio = log_prob - inputs.old_log_prob.to(log_prob)
        surrogate, ratio = clipped_surrogate(log_ratio, adv, cfg)
        loss = surrogate.mean()
        metrics.update(ratio_metrics(ratio, adv, log_ratio, torch.ones_like(ratio, dtype=torch.bool), cfg))
    if cfg.velocity_kl_coef:
        reg = _awm_kl(inputs, cfg)
        loss = loss + cfg.velocity_kl_coef * reg
        metrics["ref_reg"] = float(reg.detach())
    if cfg.awm_ema_coef:
        inputs.need("v_old", loss="awm with awm_ema_coef > 0")
        ema = velocity_penalty(inputs.v_pred, inputs.v_old.detach())
        loss = loss + cfg.awm_ema_coef * ema
        metrics["ema_reg"] = float(ema.detach())
    return LossOutput(loss, metrics)


__all__ = [
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
