"""Config sections and constants that the flow and text configs share (``flowrl.config``, ``flowrl.text_config``):
kept here so that neither config module imports the other's."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowrl.options import option

WEIGHT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


@dataclass
class RunControl:
    """Options of the training loop that the flow and text trainers share: schedule, checkpoints, faults."""

    max_minutes: float = option(0.0, "stop early after this many minutes of training (0 = no limit)", low=0.0)
    lr_schedule: str = option(
        "constant",
        "constant, or cosine: decay to 10% of train.lr at the last iteration",
        choices=("constant", "cosine"),
    )
    warmup_iterations: int = option(0, "linear learning-rate warm-up over this many iterations", low=0)
    save_every: int = option(0, "save a checkpoint every N iterations (0 = only at the end)", low=0)
    keep_checkpoints: int = option(
        3, "keep the newest N periodic checkpoints, delete older ones (0 = keep all)", low=0
    )
    resume: str = option(
        "",
        "continue from a checkpoint folder, or auto: the newest complete checkpoint in output.run_dir (a fresh start "
        "if there is none)",
    )
    max_consecutive_skips: int = option(
        3,
        "stop after this many iterations in a row whose update was skipped (non-finite reward, loss or gradient)",
        low=1,
    )


@dataclass
class OutputConfig:
    run_dir: str = option("", "run directory (default runs/<preset>-<timestamp>)")
    tensorboard: bool = option(True, "write tensorboard event files")
    progress: bool = option(True, "show a progress bar")


__all__ = ["HUB_ID", "WEIGHT_DTYPES", "OutputConfig", "RunControl"]
