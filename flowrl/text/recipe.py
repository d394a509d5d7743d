"""The text recipe (``backend: text``): GRPO for causal language models, as the steps of ``flowrl.text.trainer``
(setup, generate, score, advantages, update) and ``flowrl.text.run`` (checkpoint, evaluation, summary).
``train_and_report`` is its Python entry for TRL users (own dataset and reward functions)."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import torch

from flowrl.core.recipe import Recipe, register
from flowrl.core.resume import Finished, train
from flowrl.text import run as steps
from flowrl.text import trainer as text
from flowrl.text.config import TextConfig, load_text_config
from flowrl.text.data import prompt_key
from flowrl.text.run import EvalResult, eval_rows
from flowrl.text.trainer import TextRun
from flowrl.text.trl import trl_metric_names


@register("text", config=TextConfig)
class TextRecipe(Recipe):
    """GRPO for causal language models: the steps of ``flowrl.text.trainer`` and this module's checkpoint,
    evaluation and summary. ``dataset`` (rows with a "prompt") and ``reward_funcs`` (TRL-signature callables)
    replace the configured training data and rewards (the Python API: ``train_and_report``)."""

    help_title = "options of the text backend (a config with `backend: text`; override any with key=value):"

    def __init__(self, dataset: list[dict[str, Any]] | None = None, reward_funcs: list[Any] | None = None) -> None:
        self.dataset, self.reward_funcs = dataset, reward_funcs

    def load(self, data: dict[str, Any]) -> TextConfig:
        return load_text_config(data)

    def help_extra(self) -> list[str]:
        from flowrl.text.trl import read_fields

        fields = textwrap.wrap(", ".join(read_fields()), 90, break_on_hyphens=False)
        return ["  trl (mapping, text backend): these options under TRL's GRPOConfig names, translated: ",
                *("      " + line for line in fields)]  # fmt: skip

    def setup(self, cfg: TextConfig) -> TextRun:
        return text.setup(cfg, self.dataset, self.reward_funcs)

    def restore(self, run: TextRun, path: str) -> None:
        steps.restore(run, path)

    def evaluate(self, run: TextRun) -> EvalResult:
        return steps.evaluate(run, eval_rows(run))

    def train_step(self, run: TextRun) -> dict[str, float]:
        return text.train_step(run)

    def logged(self, run: TextRun, metrics: dict[str, float]) -> dict[str, float]:
        if run.cfg.output.metric_names == "trl":  # what a TRL user reads
            return trl_metric_names(metrics, [name for name, _, _ in run.rewards])
        return metrics

    def save_checkpoint(self, run: TextRun, path: str) -> None:
        steps.save_checkpoint(run, path)

    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"reward": f"{metrics.get('reward/mean', math.nan):.3f}", "kl": f"{metrics.get('kl', 0):.4f}"}

    def log_media(self, run: TextRun, trackers: Any) -> None:
        steps.log_completions(run, trackers)

    def summarize(self, done: Finished) -> None:
        steps.write_summary(done)

    def scores(self, run: TextRun) -> tuple[list[str], dict[str, torch.Tensor]]:
        rows, n = eval_rows(run), run.cfg.eval.samples_per_prompt
        _, rewards = self.evaluate(run)
        parts = {"reward": text.weighted_total(run, rewards)}
        parts.update({name: rewards[:, k] for k, (name, _, _) in enumerate(run.rewards)})
        return [prompt_key(r["prompt"]) for r in rows for _ in range(n)], parts

    def eval_command(self, args: Any, cfg: TextConfig, load: Any) -> dict[str, Any]:
        from flowrl.text import eval_report as eval_text

        return eval_text.run(args, cfg, load)


def train_and_report(
    cfg: TextConfig,
    name: str = "run",
    dataset: list[dict[str, Any]] | None = None,
    reward_funcs: list[Any] | None = None,
) -> str:
    """Run text training end to end from Python; returns the run folder (see the module docstring). ``dataset``
    (rows with a "prompt") and ``reward_funcs`` (TRL-signature callables) replace the configured training data and
    rewards."""
    return train(TextRecipe(dataset, reward_funcs), cfg, name)


__all__ = ["TextRecipe", "train_and_report"]
