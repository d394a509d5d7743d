"""What the image recipe's run holds between iterations (``Run``) and one iteration's experience (``Batch``): the
state that ``flowrl.image.trainer`` (the steps) and ``flowrl.image.objectives`` (what the loss trains on) share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from flowrl.core.losses import OldPolicy
from flowrl.core.state import RunState
from flowrl.core.weights import EMA
from flowrl.image.config import Config
from flowrl.image.models import FlowModel
from flowrl.rewards import RewardSet
from flowrl.samplers import Rollout, WindowSchedule

if TYPE_CHECKING:
    pass


@dataclass(kw_only=True)
class Run(RunState):
    """Everything an image run holds between iterations, beyond ``RunState``."""

    cfg: Config
    policy: FlowModel
    ema: EMA | None
    old: EMA | None  # the trailing copy a loss reads as v_old (DiffusionNFT's old policy, AWM's EMA)
    old_policy: OldPolicy | None  # its decay schedule and whether it samples the rollouts
    rewards: RewardSet
    window: WindowSchedule
    train_prompts: list[str]
    eval_prompts: list[str]
    #: each prompt's conditioning inputs (a ``.jsonl`` prompt file's other keys), by row_key; none: text only
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    watch: RewardSet | None = None  # eval.watch_rewards: scored, never trained on
    pairs: Any = None  # data.pairs: a pair dataset's encoded pairs (flowrl.image.pairs.PairLatents) replace rollouts


@dataclass
class Batch:
    """One iteration's experience: the rollout, its conditioning rows (one per root), and rewards."""

    rollout: Rollout
    cond: dict[str, Tensor]
    prompts: list[str]  # per final sample [N]
    rewards: Tensor  # [N, K] reward components (weights in run.rewards)
    components: dict[str, Tensor]  # every reward score and diagnostic, [N] each
    granular: Tensor | None = None  # [J, N, K] rewards of coarser decodings (G2RPO)
    preferences: Tensor | None = None  # [N, N] a pairwise judge's verdicts within groups (Pref-GRPO)
    monitors: dict[str, Tensor] = field(default_factory=dict)  # thumbnails and watch scores (trainer.monitor)
    noise: Tensor | None = None  # [R, *S] the roots' initial noise (chain losses re-run the chains from it)
    labels: Tensor | None = None  # [N] a pair dataset's: the probability that each sample is its pair's preferred one
    metrics: dict[str, float] = field(default_factory=dict)  # what the generator reports (rollout.generate)


__all__ = ["Batch", "Run"]
