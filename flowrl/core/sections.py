"""Config sections and constants that the flow and text configs share
(``flowrl.image.config``, ``flowrl.text.config``): kept here so that neither config module imports the other's."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flowrl.core.errors import ConfigError
from flowrl.core.options import option

WEIGHT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name


@dataclass
class RunControl:
    """Options of the training loop that the flow and text trainers share: schedule, checkpoints, faults."""

    max_minutes: float = option(
        0.0,
        "stop early after this many minutes of training (0 = no limit); it bounds training only: model loading and "
        "the evaluations before and after come on top",
        low=0.0,
    )
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


def imports_option() -> Any:
    """Both configs' ``imports``: the modules ``flowrl.core.presets.import_modules`` imports before the check."""
    return option(
        [],
        "modules to import before the config is checked: your own losses, estimators, rollout filters, sampler "
        "modes, rewards or model families, registered at import (looked for on the Python path, in the working "
        "directory and in the preset's folder)",
    )


#: the trackers accelerate knows (each is the name of the module it needs)
TRACKERS = ("tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class OutputConfig:
    run_dir: str = option("", "run directory (default runs/<preset>-<timestamp>)")
    trackers: list[str] = option(
        ["tensorboard"], "experiment trackers (accelerate's names; wandb: pip install wandb)", choices=TRACKERS
    )
    tensorboard: bool = option(True, "write tensorboard event files (false removes tensorboard from trackers)")
    images_every: int = option(
        0, "every N iterations, log the first eval prompts' images (flow) or completions (text); 0 = off", low=0
    )
    images_count: int = option(8, "images or completions in that log", low=1)
    progress: bool = option(True, "show a progress bar")


def check_trackers(names: list[str]) -> None:
    """Every tracker in ``output.trackers`` is installed (checked before anything loads)."""
    import importlib.util

    for i, name in enumerate(names):
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise ConfigError(f"output.trackers[{i}]: {name!r} is not installed (pip install {name})")


__all__ = ["HUB_ID", "TRACKERS", "WEIGHT_DTYPES", "OutputConfig", "RunControl", "check_trackers"]
