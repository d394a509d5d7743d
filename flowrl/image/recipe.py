"""The image recipe (``backend: flow``, the default): text-to-image flow matching on every model family, as the steps
of ``flowrl.image.trainer`` (setup, sample, score, advantages, update) and ``flowrl.image.run`` (checkpoint,
evaluation, summary)."""

from __future__ import annotations

import math
from typing import Any

import torch

from flowrl.core.recipe import Recipe, register
from flowrl.core.resume import Finished
from flowrl.image import run as steps
from flowrl.image import trainer as flow
from flowrl.image.config import Config, load_flow_config
from flowrl.image.run import EvalResult, eval_pairs
from flowrl.image.trainer import Run


@register("flow", config=Config, images=True)
class ImageRecipe(Recipe):
    """Text-to-image flow matching (every model family): the steps of ``flowrl.image.trainer`` and this module's
    checkpoint, evaluation and summary."""

    help_title = "options (override any with key=value; values are YAML):"

    def load(self, data: dict[str, Any]) -> Config:
        return load_flow_config(data)

    def setup(self, cfg: Config) -> Run:
        return flow.setup(cfg)

    def restore(self, run: Run, path: str) -> None:
        steps.restore(run, path)

    def evaluate(self, run: Run) -> EvalResult:
        return flow.evaluate(run, *eval_pairs(run.cfg, run.eval_prompts))

    def train_step(self, run: Run) -> dict[str, float]:
        return flow.train_step(run)

    def save_checkpoint(self, run: Run, path: str) -> None:
        steps.save_checkpoint(run, path)

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        return {
            "reward": f"{metrics.get('reward/mean', math.nan):.3f}",
            "clip": f"{metrics.get('clip_frac_high', 0):.2f}",
        }

    def log_media(self, run: Run, trackers: Any) -> None:
        steps.log_samples(run, trackers)

    def summarize(self, done: Finished) -> None:
        steps.write_summary(done, *eval_pairs(done.run.cfg, done.run.eval_prompts))

    def scores(self, run: Run) -> tuple[list[str], dict[str, torch.Tensor]]:
        prompts, _ = eval_pairs(run.cfg, run.eval_prompts)
        return prompts, self.evaluate(run)[1]

    def eval_command(self, args: Any, cfg: Config, load: Any) -> dict[str, Any]:
        from flowrl.image.eval_report import evaluate_images

        return evaluate_images(args, cfg, load)

    def profile(self, cfg: Config, iterations: int, warmup: int) -> dict[str, Any]:
        from flowrl.image.profile import profile

        return profile(self, cfg, iterations, warmup)


__all__ = ["ImageRecipe"]
