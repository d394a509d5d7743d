"""Types and the registry of policy losses.

Every loss has ONE signature, ``fn(inputs, cfg, options) -> LossOutput``: ``cfg`` holds the options several losses
read (``LossConfig``), ``options`` the loss's own, the dataclass it declared at registration (or None). Losses act on
``[N, T]`` log-probs with a mask/weights of the same shape: for text N sequences × T tokens, for flows N samples × T
trained steps (or N transitions × 1). Flow losses also read the step means and stds that ``flowrl.samplers`` stores
with every transition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from flowrl.core.method_options import Backend, options_for, section_option
from flowrl.core.options import option
from flowrl.core.registry import Fact, Registry


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
    pair_rewards: Tensor | None = None  # [P, 2] pair losses: the chosen's and the rejected's reward (SmPO)
    pair_labels: Tensor | None = None  # [P] a pair dataset's probability that the chosen is preferred (None: 1)
    reward: Tensor | None = None  # [N] chain losses: each row's differentiable reward, with its gradient
    token_count: float | None = None  # dapo: valid elements in the whole global batch (default: mask sum)

    def need(self, *names: str, loss: str) -> None:
        """Raise naming the loss and the missing inputs."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"loss {loss!r} needs inputs: {', '.join(missing)}")


def _on_transitions(facts: LossFacts) -> bool:
    return facts.trains_on is TrainsOn.TRANSITIONS


def _on_samples(facts: LossFacts) -> bool:
    return facts.trains_on is TrainsOn.SAMPLES


FLOW, TEXT = (Backend.FLOW,), (Backend.TEXT,)
#: the ratio-clipping options a loss without a probability ratio does not read (its ``ignores``)
NO_RATIO = ("clip_low", "clip_high", "dual_clip", "delta", "max_length")


@dataclass
class LossConfig:
    """Options read by several losses (each documents which it reads); a loss's own options are its registered
    options dataclass (``loss.<name>.<option>`` in a config). Who reads each option is declared: the field's
    backends and ``read_by`` here, the loss's ``ignores`` at its registration (``flowrl.core.method_options``)."""

    clip_low: float = option(0.2, "ratio clip 1 − clip_low (Flow-GRPO uses 1e-4, text GRPO 0.2)", low=0.0)
    clip_high: float = option(0.2, "ratio clip 1 + clip_high (DAPO raises it, e.g. 0.28)", low=0.0)
    dual_clip: float | None = option(None, "c > 1: for A < 0 the loss is capped at −c·A (dual-clip PPO)", low=1.0)
    kl_coef: float = section_option(option(
        0.0, "β: Gaussian KL (flows, needs ref_mean) or k3 KL (tokens, needs ref_log_prob)", low=0.0
    ), read_by=_on_transitions)  # fmt: skip
    kl_convention: str = section_option(option(
        "step-variance",
        "flows: the Gaussian KL's scale. 'step-variance': ‖μθ − μ_ref‖²/(2s²) with s the step's std (Pref-GRPO, "
        "flowrl); 'flow_grpo': ‖μθ − μ_ref‖²/(2·std_dev_t²), std_dev_t without √|dt| (flow_grpo train_sd3.py), "
        "i.e. |dt| times smaller: the convention its train.beta values were tuned in",
        choices=("step-variance", "flow_grpo"),
    ), backends=FLOW, read_by=_on_transitions)  # fmt: skip
    kl_importance: bool = section_option(option(
        False, "tokens: weight the k3 KL by the ratio π/π_old (the tokens came from π_old; TRL use_bias_correction_kl)"
    ), backends=TEXT)  # fmt: skip
    step_weighting: str = section_option(option(
        "uniform",
        "uniform | noise-aware (TempFlow) | inverse-dt (GRPO-Guard)",
        choices=("uniform", "noise-aware", "inverse-dt"),
    ), backends=FLOW, read_by=_on_transitions)  # fmt: skip
    max_length: int | None = option(None, "dr-grpo: the L in sum / (N·L); default T", low=1)
    velocity_kl_coef: float = section_option(option(
        0.0,
        "AWM, DiffusionNFT: β in + β·mean‖vθ − v_ref‖² (NFT's train.beta; v_ref: the base, adapter disabled)",
        low=0.0,
    ), backends=FLOW, read_by=_on_samples)  # fmt: skip
    importance_sampling_level: str = section_option(option(
        "token",
        "text losses: token (a ratio per token) or sequence (one ratio per completion: exp of its mean token "
        "log-ratio, GSPO; TRL importance_sampling_level)",
        choices=("token", "sequence"),
    ), backends=TEXT)  # fmt: skip
    delta: float | None = option(
        None, "clipped losses: cap the unclipped ratio at δ (> 1 + clip_high; INTELLECT-2, TRL delta)", low=1.0
    )
    top_entropy_quantile: float = section_option(option(
        1.0,
        "text: train the policy term only on each micro-batch's tokens at or above this top share of entropy (the "
        "(1 − q) quantile over valid tokens, all processes); 1 = every token (TRL top_entropy_quantile)",
        low=0.0,
        high=1.0,
    ), backends=TEXT)  # fmt: skip


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


def _never(options: Any) -> None:
    return None


class TrainsOn(Fact):
    """What one row of a loss is (the objective the flow recipe trains it with)."""

    TRANSITIONS = "transitions"  # a stored denoising step or a token, with its log-prob
    SAMPLES = "samples"  # a clean final sample, re-noised at drawn levels (AWM, DiffusionNFT)
    PAIRS = "pairs"  # a chosen and a rejected sample of one group, re-noised alike (DPO)
    CHAINS = "chains"  # a sample's sampling chain, its last steps differentiated to the reward (ReFL, DRaFT)


class NormalizesBy(Fact):
    """What a loss divides its sum by, so that the micro-batches of one optimizer step can be weighted to give the
    step's loss."""

    SEQUENCES = "sequences"  # a mean over rows: weight each micro-batch by its share of rows
    TOKENS = "tokens"  # a token mean over this process's batch: weight by the share of valid tokens
    GLOBAL_TOKENS = "global-tokens"  # divided by inputs.token_count, the global batch's valid tokens: weight 1


class Together(Fact):
    """Which rows an objective or a loss needs in one optimizer step; the update loop deals them so
    (``flowrl.core.share.step_rows``)."""

    ROWS = "rows"  # any row on its own: the rows are shuffled one by one
    GROUPS = "groups"  # a prompt group's rows in one step (pairwise or groupwise objectives)


def together(*declared: Together) -> Together:
    """What several declarations (the objective's, the loss's) need together: ``GROUPS`` if any needs it."""
    return Together.GROUPS if Together.GROUPS in declared else Together.ROWS


@dataclass(frozen=True)
class LossFacts:
    """What a loss declares at registration (its own options are the registration's ``options``).

    trains_on: what one row of the loss is (``TrainsOn``). normalizes_by: ``NormalizesBy``.
    trainers: the backends whose rows it is written for (``Backend.FLOW``: denoising transitions with their Gaussian
    steps; ``Backend.TEXT``: token sequences).
    old_policy: given the loss's options, the trailing copy of the weights the loss reads as ``v_old`` (None: none).
    old_value: given the loss's options, the per-row value ``[N]`` whose ratio the loss clips, a function
    ``(inputs, options) -> [N]`` computed on no-grad inputs before the iteration's update and passed back as
    ``old_log_prob``; or None.
    ignores: options of ``LossConfig`` the loss does not read (a config that sets one is refused).
    keeps: which rows the loss needs in one optimizer step (``Together.GROUPS``: a prompt group's, e.g. a loss that
    pairs a group's winners with its losers); the update loop deals the rows so.
    selects: given the loss's options, which samples it trains on, a function ``(advantages [N], group [N]) -> bool
    [N]`` over the whole batch (best-of-N: each group's top k); or None (every sample the estimator keeps).
    guided_rollouts: a loss on clean samples whose rollouts may use classifier-free guidance: it regresses the
    prompt's own velocity at them (flow_grpo's DPO and SFT); the others (AWM, DiffusionNFT) are CFG-free methods.
    inversion: given the loss's options, how its rows reach their noise level: None, x0 plus fresh noise (the
    forward process); an int, the policy's ODE run backwards from x0 with that many ReNoise refinements per step
    (SmPO).
    chain: given the loss's options, how a chain loss differentiates the sampler (``reward_backprop.ChainGradient``).
    offline: a pair loss that also trains on a dataset's labelled pairs (``data.pairs``, offline Diffusion-DPO).
    """

    trains_on: TrainsOn = TrainsOn.TRANSITIONS
    normalizes_by: NormalizesBy = NormalizesBy.SEQUENCES
    trainers: tuple[Backend, ...] = (Backend.FLOW, Backend.TEXT)
    old_policy: Callable[[Any], OldPolicy | None] = _never
    old_value: Callable[[Any], Callable[[LossInputs, Any], Tensor] | None] = _never
    ignores: tuple[str, ...] = ()
    keeps: Together = Together.ROWS
    selects: Callable[[Any], Callable[[Tensor, Tensor], Tensor] | None] = _never
    guided_rollouts: bool = False
    inversion: Callable[[Any], int | None] = _never
    chain: Callable[[Any], Any] = _never
    offline: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("trains_on", TrainsOn), ("normalizes_by", NormalizesBy), ("keeps", Together)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not all(isinstance(t, Backend) for t in self.trainers):
            raise TypeError(f"trainers must be Backend members, got {self.trainers!r}")
        unknown = set(self.ignores) - {f.name for f in fields(LossConfig)}
        if unknown:
            raise TypeError(f"ignores names no LossConfig option: {', '.join(sorted(unknown))}")


Loss = Callable[[LossInputs, LossConfig, Any], LossOutput]  # (inputs, common options, its own options or None)
LOSSES: Registry[Loss, LossFacts] = Registry("policy loss", LossFacts)


def trains_on(name: str) -> TrainsOn:
    """``LossFacts.trains_on`` of the loss ``name``."""
    return LOSSES.facts(name).trains_on


def normalizes_by(name: str) -> NormalizesBy:
    """``LossFacts.normalizes_by`` of the loss ``name``."""
    return LOSSES.facts(name).normalizes_by


def compute_loss(name: str, inputs: LossInputs, cfg: LossConfig | None = None, options: Any = None) -> LossOutput:
    """Run the loss registered as ``name`` with the common options ``cfg`` and its own ``options`` (default: those
    of ``cfg`` when it is a config section holding them, e.g. ``run.cfg.loss``; else the declared defaults)."""
    fn, options = LOSSES.get(name), options_for(LOSSES, name, cfg, options)
    return fn(inputs, cfg or LossConfig(), options)
