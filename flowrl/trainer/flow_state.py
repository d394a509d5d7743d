"""What the image recipe's run holds between iterations (``Run``) and one iteration's experience (``Batch``): the
state that ``flowrl.trainer.flow`` (the steps) and ``flowrl.trainer.objectives`` (what the loss trains on) share."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowrl.config import Config
from flowrl.losses import OldPolicy
from flowrl.models import FlowModel
from flowrl.rewards import RewardSet
from flowrl.samplers import Rollout, WindowSchedule
from flowrl.trainer.backend import Backend
from flowrl.trainer.monitor import TrainingMonitor
from flowrl.trainer.timing import Stopwatch
from flowrl.trainer.weights import EMA

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class Run:
    """Everything a training run holds between iterations."""

    cfg: Config
    accelerator: Accelerator
    backend: Backend  # DDP, FSDP or DeepSpeed: backward, optimizer step and optimizer state
    policy: FlowModel
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    old: EMA | None  # the trailing copy a loss reads as v_old (DiffusionNFT's old policy, AWM's EMA)
    old_policy: OldPolicy | None  # its decay schedule and whether it samples the rollouts
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rewards: RewardSet
    window: WindowSchedule
    train_prompts: list[str]
    eval_prompts: list[str]
    rng: random.Random
    watch: RewardSet | None = None  # eval.watch_rewards: scored, never trained on
    monitor: TrainingMonitor | None = None  # reward-hacking signals over the iterations
    adv_state: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    skips_in_a_row: int = 0  # iterations whose update was skipped (non-finite reward, loss or gradient)
    skips: int = 0
    train_seconds: float = 0.0  # over the whole run, resumed invocations included
    clock: Stopwatch = field(default_factory=Stopwatch)  # wall time per stage of the current iteration


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


__all__ = ["Batch", "Run"]
