"""Pure building blocks of the policy losses: ratios, the clipped surrogate, KL terms, step weights
and aggregations. Shapes: ``[N, T]`` per element, states ``[N, T, *S]``."""

from __future__ import annotations

import torch
from torch import Tensor

from .core import LossConfig, LossInputs


def _state_mean(x: Tensor) -> Tensor:
    """Mean over the state dims of ``[N, T, *S]`` → ``[N, T]``."""
    return x.mean(dim=tuple(range(2, x.ndim))) if x.ndim > 2 else x


def guard_log_ratio(x_next: Tensor, old_mean: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """GRPO-Guard's normalised log-ratio: mean(((x_next − μ_old)/s) ⊙ (μθ − μ_old)). ``[N, T]``.

    The exact Gaussian log-ratio is mean((x_next − μ_old)·Δμ)/s² − mean(‖Δμ‖²)/(2s²), Δμ = μθ − μ_old;
    this drops the always-negative second term (which biases ratios below 1) and one factor 1/s
    (which makes low-noise steps dominate).
    """
    s = std.reshape(*std.shape, *([1] * (x_next.ndim - std.ndim)))
    return _state_mean((x_next - old_mean) / s * (mean - old_mean))


def gaussian_kl(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """KL between two Gaussian steps with equal std s: mean(‖μθ − μ_ref‖²)/(2s²). ``[N, T]``."""
    return _state_mean((mean - ref_mean) ** 2) / (2 * std**2)


def velocity_penalty(v_pred: Tensor, v_ref: Tensor) -> Tensor:
    """Mean squared distance to the reference velocity, mean over rows of mean‖vθ − v_ref‖² (AWM and DiffusionNFT
    regularise with it). ``v_pred``, ``v_ref``: ``[N, *S]``; returns a scalar."""
    return ((v_pred - v_ref) ** 2).flatten(1).mean(1).mean()


def k3_kl(log_prob: Tensor, ref_log_prob: Tensor) -> Tensor:
    """k3 estimator of KL(π‖π_ref) per token: exp(ref − logp) − (ref − logp) − 1. ``[N, T]``."""
    d = ref_log_prob - log_prob
    return torch.exp(d) - d - 1


def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """PPO-clip per element: max(−A·r, −A·clip(r, 1 − ε_low, 1 + ε_high)), optionally dual-clipped.

    Returns (loss ``[N, T]``, ratio ``[N, T]``). With ``dual_clip = c``, elements with A < 0 are capped
    at −c·A so that a huge ratio cannot blow up the loss; with ``delta = δ`` the unclipped term's ratio is capped
    at δ (TRL's two-sided clipping).
    """
    ratio = torch.exp(log_ratio)
    unclipped = ratio if cfg.delta is None else ratio.clamp(max=cfg.delta)  # INTELLECT-2's two-sided clip
    loss = torch.maximum(-advantages * unclipped, -advantages * ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high))
    if cfg.dual_clip is not None:
        if cfg.dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {cfg.dual_clip}")
        loss = torch.where(advantages < 0, torch.minimum(loss, -cfg.dual_clip * advantages), loss)
    return loss, ratio


STEP_WEIGHTINGS = ("uniform", "noise-aware", "inverse-dt")


def step_weights(kind: str, mask: Tensor, std: Tensor | None = None, dt: Tensor | None = None) -> Tensor:
    """Per-element weights ``[N, T]`` (mask × step weight), step weights normalised to mean 1 over the mask.

    uniform: 1; noise-aware (TempFlow): w ∝ s_t, the step std; inverse-dt (GRPO-Guard): w ∝ 1/|dt|.
    """
    m = mask.to(torch.float32) if mask.dtype == torch.bool else mask
    if kind == "uniform":
        return m
    if kind not in STEP_WEIGHTINGS:
        raise ValueError(f"unknown step_weighting {kind!r}; valid: {', '.join(STEP_WEIGHTINGS)}")
    raw = std if kind == "noise-aware" else (None if dt is None else 1 / dt.abs())
    if raw is None:
        raise ValueError(f"step_weighting {kind!r} needs inputs.{'std' if kind == 'noise-aware' else 'dt'}")
    raw = raw.to(m)
    norm = (raw * m).sum() / m.sum().clamp(min=1e-12)
    return m * raw / norm


def aggregate(
    per_element: Tensor, weights: Tensor, mode: str, max_length: int | None = None, token_count: float | None = None
) -> Tensor:
    """Reduce ``[N, T]`` losses with ``[N, T]`` weights to a scalar.

    - ``sequence-mean`` (grpo): mean over sequences of each sequence's weighted token mean;
    - ``token-mean`` (bnpo): Σ w·ℓ / Σ w over the local batch;
    - ``global-token-mean`` (dapo): Σ w·ℓ / token_count, the valid elements in the whole global batch;
    - ``fixed-length`` (dr-grpo): Σ w·ℓ / (N · max_length).
    """
    total = (per_element * weights).sum()
    if mode == "sequence-mean":
        return ((per_element * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)).mean()
    if mode == "token-mean":
        return total / weights.sum().clamp(min=1.0)
    if mode == "global-token-mean":
        return total / max(token_count if token_count is not None else float(weights.sum()), 1.0)
    if mode == "fixed-length":
        return total / (per_element.shape[0] * (max_length or per_element.shape[1]))
    raise ValueError(f"unknown aggregation {mode!r}")


def kl_term(inputs: LossInputs, cfg: LossConfig, log_ratio: Tensor | None = None) -> Tensor | None:
    """β-free KL per element ``[N, T]``, or None when kl_coef = 0: Gaussian for flows (``ref_mean``),
    k3 for tokens (``ref_log_prob``), times the ratio π/π_old with ``kl_importance`` (exp of ``log_ratio`` when
    given, e.g. a sequence's ratio; else the token's)."""
    if cfg.kl_coef == 0:
        return None
    if inputs.ref_mean is not None and inputs.mean is not None and inputs.std is not None:
        kl = gaussian_kl(inputs.mean, inputs.ref_mean, inputs.std)
        if cfg.kl_convention == "flow_grpo":  # flow_grpo divides by std_dev_t², where s = std_dev_t·√|dt|
            inputs.need("dt", loss="the flow_grpo KL convention")
            kl = kl * inputs.dt.abs()
        return kl
    if inputs.ref_log_prob is not None and inputs.log_prob is not None:
        kl = k3_kl(inputs.log_prob, inputs.ref_log_prob)
        if cfg.kl_importance:
            if log_ratio is None:
                inputs.need("old_log_prob", loss="k3 KL with kl_importance")
                log_ratio = inputs.log_prob - inputs.old_log_prob
            kl = kl * torch.exp(log_ratio)
        return kl
    raise ValueError("kl_coef > 0 needs ref_mean, mean and std (flows) or ref_log_prob (tokens)")


def ratio_metrics(
    ratio: Tensor, advantages: Tensor, log_ratio: Tensor, mask: Tensor, cfg: LossConfig
) -> dict[str, float]:
    """Clip fractions (low: r < 1 − ε_low with A < 0; high: r > 1 + ε_high with A > 0), ratio stats and
    approx KL(old‖new) ≈ mean((r − 1) − log r), over valid elements."""
    valid = mask.bool() if mask.dtype != torch.bool else mask
    if not valid.any():
        return {}
    r, a, lr = ratio.detach()[valid], advantages.expand_as(ratio).detach()[valid], log_ratio.detach()[valid]
    return {
        "clip_frac_low": float(((r < 1 - cfg.clip_low) & (a < 0)).float().mean()),
        "clip_frac_high": float(((r > 1 + cfg.clip_high) & (a > 0)).float().mean()),
        "ratio_mean": float(r.mean()),
        "ratio_min": float(r.min()),
        "ratio_max": float(r.max()),
        "approx_kl": float(((r - 1) - lr).mean()),
    }
