"""What a backend is: a recipe, registered under the config's ``backend`` key, that the run driver and every command
call instead of asking which backend they hold.

A recipe declares its config class at registration (``@RECIPES.register("flow", config=Config)``) and implements
the steps of a run. The run driver (``flowrl.core.resume.train``) reads like the recipe:

1. ``setup(cfg)`` → the run: model, optimizer, rewards, data
2. ``restore(run, folder)`` when ``train.resume`` names a checkpoint
3. ``evaluate(run)``: the base's evaluation (kept in ``eval_before.pt``)
4. ``train_step(run)`` → metrics, once per iteration: sample → score → advantages → update
5. ``save_checkpoint(run, folder)``: periodic and final
6. ``evaluate(run)`` again, then ``summarize(done)`` writes ``summary.json`` and the recipe's own files

The commands use the rest: ``load`` (``flowrl.recipes.load_config``), ``scores`` (``flowrl bench``),
``eval_command`` (``flowrl eval``), ``profile`` (``flowrl profile``), ``help_title`` / ``help_extra``
(``flowrl train --help``). The registered recipes are imported by ``flowrl.recipes``, the only module that maps a
config to its recipe.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Protocol

from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.core.registry import Registry


class RunConfig(Protocol):
    """What the shared run driver and training loop read of any recipe's config (``flowrl.image.config.Config``,
    ``flowrl.text.config.TextConfig``): the seed, the ``train`` section (iterations and ``RunControl``), ``eval``,
    ``model`` and ``output`` (``flowrl.core.sections.OutputConfig``)."""

    seed: int
    train: Any
    eval: Any
    model: Any
    output: Any


@dataclasses.dataclass(frozen=True)
class RecipeFacts:
    """What a recipe declares at registration."""

    config: type  # its config dataclass (``flowrl.image.config.Config``, ``flowrl.text.config.TextConfig``)
    images: bool = False  # its policies make images (``flowrl gallery`` shows them)


class Recipe(abc.ABC):
    """A backend's training recipe (see the module docstring for the order of the steps). Subclasses implement the
    run steps; ``profile`` and ``help_extra`` have defaults."""

    #: the config's ``backend`` value (set by the registration)
    name: str = ""
    #: the heading of this backend's options in ``flowrl train --help``
    help_title: str = ""

    # ------------------------------------------------------------------ config
    @abc.abstractmethod
    def load(self, data: dict[str, Any]) -> Any:
        """A validated config from a YAML mapping (without its ``backend`` key)."""

    def help_extra(self) -> list[str]:
        """Lines added after this backend's options in ``flowrl train --help``."""
        return []

    # ------------------------------------------------------------------ the run
    @abc.abstractmethod
    def setup(self, cfg: Any) -> Any:
        """The run object: model, optimizer, rewards, data, counters (collective under a launch)."""

    @abc.abstractmethod
    def restore(self, run: Any, path: str) -> None:
        """Continue ``run`` from the checkpoint folder ``path``."""

    @abc.abstractmethod
    def evaluate(self, run: Any) -> Any:
        """The run's evaluation of its current policy on the config's fixed evaluation pairs (collective)."""

    @abc.abstractmethod
    def train_step(self, run: Any) -> dict[str, float]:
        """One iteration: sample → score → advantages → update; returns its metrics."""

    @abc.abstractmethod
    def save_checkpoint(self, run: Any, path: str) -> None:
        """The trainable weights and the trainer state into the folder ``path`` (collective)."""

    @abc.abstractmethod
    def progress(self, metrics: dict[str, float]) -> dict[str, str]:
        """The progress bar's fields from an iteration's metrics."""

    def logged(self, run: Any, metrics: dict[str, float]) -> dict[str, float]:
        """An iteration's metrics as the trackers log them (the text recipe can use TRL's names)."""
        return metrics

    @abc.abstractmethod
    def log_media(self, run: Any, trackers: Any) -> None:
        """Samples for the trackers every ``output.images_every`` iterations (collective)."""

    @abc.abstractmethod
    def summarize(self, done: Any) -> None:
        """``summary.json`` and the recipe's own files from the finished run (``flowrl.core.resume.Finished``;
        main process only)."""

    # ------------------------------------------------------------------ commands
    @abc.abstractmethod
    def scores(self, run: Any) -> tuple[list[str], dict[str, Tensor]]:
        """The evaluation as scores: one prompt label per row and ``{"reward": [R], <component>: [R], ...}``
        (``flowrl bench`` curves; the prompt is the unit of the standard errors)."""

    @abc.abstractmethod
    def eval_command(self, args: Any, cfg: Any, load: Any) -> dict[str, Any]:
        """``flowrl eval`` for a config of this backend: evaluate the columns, write ``eval.json``, return it.
        ``load(what, path, overrides)`` reads a column's config (``flowrl.recipes.column_loader``)."""

    def profile(self, cfg: Any, iterations: int, warmup: int) -> dict[str, Any]:
        """``flowrl profile``: seconds per stage of training iterations."""
        raise ConfigError(f"flowrl profile has no stage timer for the {self.name} backend; its runs log "
                          "time/sample_s and time/update_s per iteration")  # fmt: skip


RECIPES: Registry[type[Recipe], RecipeFacts] = Registry("backend", RecipeFacts)


def register(name: str, **facts: Any) -> Any:
    """``@register("flow", config=Config, images=True)`` on a ``Recipe`` subclass: registers it with its facts
    (``RecipeFacts``) and sets its ``name``."""

    def add(cls: type[Recipe]) -> type[Recipe]:
        cls.name = name
        return RECIPES.register(name, **facts)(cls)

    return add


__all__ = ["RECIPES", "Recipe", "RecipeFacts", "register"]
