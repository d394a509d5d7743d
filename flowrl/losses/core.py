"""Types and the registry of policy losses.

Every loss has ONE signature, ``fn(inputs, cfg) -> LossOutput``. Losses act on ``[N, T]`` log-probs
with a mask/weights of the same shape: for text N sequences × T tokens, for flows N samples × T
trained steps (or N transitions × 1). Flow losses also read the step means and stds that
``flowrl.samplers`` stores with every transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from flowrl.options import option
from flowrl.registry import Registry


@dataclass
class LossInputs:
    """What a loss may read. Required by every policy-gradient loss: log_prob, old_log_prob (``[N, T]``),
    advantages (``[N]`` or ``[N, T]``), mask (``[N, T]``, bool or float weights).

    Optional, by use:
    - ref_log_prob ``[N, T]``: token KL (k3) against the reference policy;
    - x_next, mean, old_mean, ref_mean ``[N, T, *S]`` and std, dt ``[N, T]``: flow transitions, for
      GRPO-Guard's normalised ratio, the Gaussian KL and the step weights;
    - v_pred, v_target, v_ref ``[N, *S]``: AWM's flow-matching terms (advantages ``[N]``);
    - v_old, x_t, x0 ``[N, *S]`` and sigma ``[N]``: DiffusionNFT's old-policy velocity at the re-noised x_t of the
      clean sample x0;
    - policy_weights ``[N, T]``: a weight of each element's policy term, the KL left as it is (TRL's entropy mask).
    """

    log_prob: Tensor | None = None
    old_log_prob: Tensor | None = None
    advantages: Tensor | None = None
    mask: Tensor | None = None
    ref_log_prob: Tensor | None = None
    x_next: Tensor | None = None
    mean: Tensor | None = None
    old_mean: Tensor | None = None
    ref_mean: Tensor | None = None
    std: Tensor | None = None
    dt: Tensor | None = None
    v_pred: Tensor | None = None
    v_target: Tensor | None = None
    v_ref: Tensor | None = None
    v_old: Tensor | None = None
    x_t: Tensor | None = None
    x0: Tensor | None = None
    sigma: Tensor | None = None  # [N] the noise level each row was re-noised at (AWM's weightings, NFT's x0)
    policy_weights: Tensor | None = None  # [N, T] multiplies the policy term only (not the KL): entropy masking
    token_count: float | None = None  # dapo: valid elements in the whole global batch (default: mask sum)

    def need(self, *names: str, loss: str) -> None:
        """Raise naming the loss and the missing inputs."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"loss {loss!r} needs inputs: {', '.join(missing)}")


@dataclass
class LossConfig:
    """Options common to the losses (each documents which it reads)."""

    clip_low: float = option(0.2, "ratio clip 1 − clip_low (Flow-GRPO uses 1e-4, text GRPO 0.2)", low=0.0)
    clip_high: float = option(0.2, "ratio clip 1 + clip_high (DAPO raises it, e.g. 0.28)", low=0.0)
    dual_clip: float | None = option(None, "c > 1: for A < 0 the loss is capped at −c·A (dual-clip PPO)", low=1.0)
    kl_coef: float = option(
        0.0, "β: Gaussian KL (flows, needs ref_mean) or k3 KL (tokens, needs ref_log_prob)", low=0.0
    )
    kl_convention: str = option(
        "step-variance",
        "flows: the Gaussian KL's scale. 'step-variance': ‖μθ − μ_ref‖²/(2s²) with s the step's std (Pref-GRPO, "
        "flowrl); 'flow_grpo': ‖μθ − μ_ref‖²/(2·std_dev_t²), std_dev_t without √|dt| (flow_grpo train_sd3.py), "
        "i.e. |dt| times smaller: the convention its train.beta values were tuned in",
        choices=("step-variance", "flow_grpo"),
    )
    kl_importance: bool = option(
        False, "tokens: weight the k3 KL by the ratio π/π_old (the tokens came from π_old; TRL use_bias_correction_kl)"
    )
    step_weighting: str = option(
        "uniform",
        "uniform | noise-aware (TempFlow) | inverse-dt (GRPO-Guard)",
        choices=("uniform", "noise-aware", "inverse-dt"),
    )
    max_length: int | None = option(None, "dr-grpo: the L in sum / (N·L); default T", low=1)
    velocity_kl_coef: float = option(
        0.0,
        "AWM, DiffusionNFT: β in + β·mean‖vθ − v_ref‖² (NFT's train.beta; v_ref: the base, adapter disabled)",
        low=0.0,
    )
    awm_weighting: str = option(
        "uniform",
        "AWM's time weighting of the per-sample matching error e (its train_sd3_awm.py): uniform e, t·e, t²·e, huber "
        "t·(√e − 1e-5), ghuber t·(e^p − 1e-10^p)/p (its presets' default, p = awm_ghuber_power)",
        choices=("uniform", "t", "t2", "huber", "ghuber"),
    )
    awm_ghuber_power: float = option(0.25, "AWM ghuber weighting: the power p (its presets: 0.25)", low=1e-6)
    awm_ratio: bool = option(
        False,
        "AWM's PPO ratio (its loss_type exp_first): exp(−w(e) + w(e_old)) per row, clipped to 1 ± clip_low/high "
        "(its train.clip_range; 1 in its presets), e_old under the policy before the iteration's update at the same "
        "noise and level; the loss is then −A·ratio (same gradient as A·w(e) while the ratio is 1)",
    )
    awm_adv_scale: float = option(
        1.0, "AWM: advantages times this (its advantage_max / adv_clip_max: 1/5 in its presets)", low=0.0
    )
    awm_kl_weight: str = option(
        "uniform",
        "AWM: the velocity_kl term's weighting (its kl_weight): 'uniform' mean‖vθ − v_ref‖², 'elbo' divided by "
        "2·std_dev_t², std_dev_t = 0.7·√(σ/(1 − min(σ, 0.99)))",
        choices=("uniform", "elbo"),
    )
    awm_ema_coef: float = option(
        0.0,
        "AWM: + c·mean‖vθ − v_ema‖² to a trailing copy of the weights (its ema_beta; 1 in its presets), which after "
        "each iteration moves to d·ema + (1 − d)·θ with d = min(awm_ema_decay, 0.001·optimizer steps)",
        low=0.0,
    )
    awm_ema_decay: float = option(
        0.3, "AWM: the trailing copy's decay cap (its kl_ema_decay, linear)", low=0.0, high=1.0
    )
    renoise: str = option(
        "auto",
        "sample losses: the noise levels each clean sample trains at (flowrl.losses.renoise): auto (the loss's: "
        "uniform for awm, subset for nft), uniform, subset (DiffusionNFT), stratified, logit-normal (AWM's "
        "discrete_wo_init and logit_normal)",
        choices=("auto", "uniform", "subset", "stratified", "logit-normal"),
    )
    renoise_count: int = option(6, "stratified / logit-normal: levels per sample (AWM's train_timesteps)", low=1)
    renoise_shift: float = option(3.0, "logit-normal: the time shift (AWM's time_shift)", low=1e-6)
    nft_beta: float = option(
        1.0, "DiffusionNFT's β: positive velocity β·vθ + (1 − β)·v_old, negative (1 + β)·v_old − β·vθ", low=1e-6
    )
    nft_adv_clip: float = option(5.0, "DiffusionNFT: advantages clipped to ±c, then r = A/(2c) + 1/2", low=1e-6)
    nft_decay_type: int = option(
        1,
        "DiffusionNFT's old-policy decay (its return_decay): after each iteration old ← d·old + (1 − d)·θ, "
        "d = min(uprate·(step − flat), uphold) after `flat` optimizer steps; 0: d = 0 (old = current), "
        "1: (flat 0, uprate 0.001, uphold 0.5), 2: (75, 0.0075, 0.999)",
        low=0,
        high=2,
    )
    importance_sampling_level: str = option(
        "token",
        "text losses: token (a ratio per token) or sequence (one ratio per completion: exp of its mean token "
        "log-ratio, GSPO; TRL importance_sampling_level)",
        choices=("token", "sequence"),
    )
    delta: float | None = option(
        None, "text clipped losses: cap the unclipped ratio at δ (> 1 + clip_high; INTELLECT-2, TRL delta)", low=1.0
    )
    sapo_temperature_pos: float = option(1.0, "sapo: the gate's temperature τ where A > 0 (TRL's default)", low=1e-6)
    sapo_temperature_neg: float = option(1.05, "sapo: τ where A ≤ 0 (TRL's default)", low=1e-6)
    top_entropy_quantile: float = option(
        1.0,
        "text: train the policy term only on each micro-batch's tokens at or above this top share of entropy (the "
        "(1 − q) quantile over valid tokens, all processes); 1 = every token (TRL top_entropy_quantile)",
        low=0.0,
        high=1.0,
    )


@dataclass
class LossOutput:
    """A scalar loss to minimise and metrics (clip fractions, ratio stats, approx KL, …)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OldPolicy:
    """A trailing copy of the trainable weights that a loss reads as ``v_old``: after each iteration
    old ← d·old + (1 − d)·θ, d = ``decay(optimizer steps so far)``; with ``samples`` it also draws the rollouts
    (DiffusionNFT)."""

    decay: Callable[[int], float]
    samples: bool = False


def _never(cfg: LossConfig) -> None:
    return None


@dataclass(frozen=True)
class LossFacts:
    """What a loss declares at registration.

    trains_on: what one row of the loss is: ``"transitions"`` (log-prob losses: one denoising step or token each)
    or ``"samples"`` (AWM: a clean sample, re-noised at a drawn σ).
    normalizes_by: what it divides its sum by, so that micro-batches of one optimizer step can be weighted to give
    the step's loss: ``"sequences"`` (a mean over rows: weight each micro-batch by its share of rows),
    ``"tokens"`` (a token mean over this process's batch: weight by the share of valid tokens) or
    ``"global-tokens"`` (divided by ``inputs.token_count``, the whole global batch's valid tokens: weight 1).
    trainers: the trainers whose rows it is written for (``"flow"``: denoising transitions with their Gaussian
    steps; ``"text"``: token sequences).
    levels (sample losses): the re-noising scheme of ``loss.renoise: auto`` (``flowrl.losses.renoise``).
    old_policy: given the loss options, the trailing copy of the weights the loss reads as ``v_old`` (None: none).
    old_value: given the loss options, the per-row value ``[N]`` whose ratio the loss clips (computed on no-grad
    inputs before the iteration's update and passed back as ``old_log_prob``), or None.
    ignores: options of ``LossConfig`` the loss does not read (a config that sets one is refused).
    """

    trains_on: str = "transitions"
    normalizes_by: str = "sequences"
    trainers: tuple[str, ...] = ("flow", "text")
    levels: str = "uniform"
    old_policy: Callable[[LossConfig], OldPolicy | None] = _never
    old_value: Callable[[LossConfig], Callable[[LossInputs, LossConfig], Tensor] | None] = _never
    ignores: tuple[str, ...] = ()


Loss = Callable[[LossInputs, LossConfig], LossOutput]
LOSSES: Registry[Loss, LossFacts] = Registry("policy loss", LossFacts)


def trains_on(name: str) -> str:
    """``LossFacts.trains_on`` of the loss ``name``."""
    return LOSSES.facts(name).trains_on


def normalizes_by(name: str) -> str:
    """``LossFacts.normalizes_by`` of the loss ``name``."""
    return LOSSES.facts(name).normalizes_by


def compute_loss(name: str, inputs: LossInputs, cfg: LossConfig | None = None) -> LossOutput:
    """Run the loss registered as ``name``."""
    return LOSSES.get(name)(inputs, cfg or LossConfig())
