"""What every recipe's run holds: the state the shared run driver, the training loop and the checkpoint read and
write. A recipe's run (``flowrl.image.state.Run``, ``flowrl.text.trainer.TextRun``) extends it with its
own model, data and rewards."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from flowrl.core.rollout.control import PromptControl
from flowrl.core.timing import Stopwatch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from flowrl.core.monitor import TrainingMonitor
    from flowrl.core.parallel import Parallel


@dataclass(kw_only=True)
class RunState:
    """The run state both recipes share (keyword-only, so a recipe's run adds fields in any order)."""

    cfg: Any  # the recipe's config
    accelerator: Accelerator
    parallel: Parallel  # DDP, FSDP or DeepSpeed: backward, optimizer step and optimizer state
    params: list[torch.nn.Parameter]  # the trainable weights (this process's own under sharding)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: random.Random  # draws each iteration's prompts, the same on every process
    adv_state: dict[str, Any] = field(default_factory=dict)  # the advantage estimator's state (per-prompt tracker)
    iteration: int = 0
    skips_in_a_row: int = 0  # iterations whose update was skipped (non-finite reward, loss or gradient)
    skips: int = 0
    train_seconds: float = 0.0  # over the whole run, resumed invocations included
    clock: Stopwatch = field(default_factory=Stopwatch)  # wall time per stage of the current iteration
    monitor: TrainingMonitor | None = None  # reward-hacking signals over the iterations (the training loop feeds it)
    control: PromptControl = field(default_factory=PromptControl)  # draws each iteration's prompts (rollout.control)


__all__ = ["RunState"]
