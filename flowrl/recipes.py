"""Every backend's recipe, registered, and the one place that maps a config (or a YAML mapping) to its recipe.

``backend: flow`` (the default) is the image recipe (``flowrl.image.recipe.ImageRecipe``: text-to-image on
every model family); ``backend: text`` is the text GRPO recipe (``flowrl.text.recipe.TextRecipe``). The
commands (``train``, ``eval``, ``profile``, ``bench``, ``--help``) and the Python API call these functions and never
ask which backend they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# importing the recipe modules registers them
import flowrl.image.recipe
import flowrl.text.recipe  # noqa: F401
from flowrl.core import resume
from flowrl.core.errors import ConfigError
from flowrl.core.presets import import_modules
from flowrl.core.recipe import RECIPES, Recipe
from flowrl.image.config import read_config_data

DEFAULT = "flow"  # a config without a ``backend`` key


def backend_of(data: dict[str, Any]) -> str:
    """The backend a YAML mapping names (``backend``, default ``flow``); an unknown one is a config error."""
    name = data.get("backend", DEFAULT)
    if name not in RECIPES:
        raise ConfigError(f"backend: {name!r} is not one of {', '.join(RECIPES.names())}")
    return name


def load_config(path: str | None = None, overrides: list[str] = ()) -> Any:
    """Read a YAML preset (or the defaults), apply the dotted ``overrides`` and validate everything with the recipe
    its ``backend`` names (``flowrl.image.config.Config``, ``flowrl.text.config.TextConfig``), before any model
    loads."""
    data = read_config_data(path, overrides)
    import_modules(data.get("imports"), path)  # a user's own methods register before the config is checked
    recipe = RECIPES.get(backend_of(data))()
    data.pop("backend", None)
    return recipe.load(data)


def recipe_for(cfg: Any, **options: Any) -> Recipe:
    """The recipe of a loaded config (``options`` go to the recipe's constructor, e.g. a text ``dataset``)."""
    for name in RECIPES.names():
        if type(cfg) is RECIPES.facts(name).config:
            return RECIPES.get(name)(**options)
    raise TypeError(f"{type(cfg).__name__} is the config of no registered recipe")


def renders_images(cfg: Any) -> bool:
    """Whether ``cfg``'s recipe makes images (its registered fact)."""
    return RECIPES.facts(recipe_for(cfg).name).images


def same_backend(cfg: Any, other: Any, what: str) -> None:
    """Refuse ``other`` (a column's or checkpoint's config, named by ``what``) unless it is of ``cfg``'s backend."""
    mine, theirs = recipe_for(cfg).name, recipe_for(other).name
    if mine != theirs:
        raise ConfigError(f"{what} is for the {theirs} backend and the command's --config for {mine}; columns of "
                          f"different backends cannot be compared (evaluate {theirs} checkpoints with a {theirs} "
                          "--config)")  # fmt: skip


def column_loader(cfg: Any) -> Callable[[str, str | None, Sequence[str]], Any]:
    """``load(what, path, overrides)``: a column's config for a command evaluating ``cfg``'s backend, refused in one
    line (naming ``what``) when it is another backend's."""

    def load(what: str, path: str | None, overrides: Sequence[str] = ()) -> Any:
        column = load_config(path, list(overrides))
        same_backend(cfg, column, f"{what}: its config {path!r}")
        return column

    return load


def train(cfg: Any, name: str = "run", **options: Any) -> str:
    """Train ``cfg`` with its recipe end to end (``flowrl.core.resume.train``); returns the run folder."""
    return resume.train(recipe_for(cfg, **options), cfg, name)


def options_help(backend: str | None = None) -> str:
    """``flowrl train --help``'s options: one backend's, or every backend's (``backend`` None)."""
    import textwrap

    from flowrl.core.options import describe

    lines: list[str] = []
    for name in [backend] if backend else RECIPES.names():
        recipe = RECIPES.get(name)()
        lines += [*([""] if lines else []), recipe.help_title]
        for key, tp, default, text in describe(RECIPES.facts(name).config):
            lines.append(f"  {key} ({tp}, default {default!r})")
            lines.extend("      " + line for line in textwrap.wrap(text, 90, break_on_hyphens=False))
        lines += recipe.help_extra()
    if backend:
        others = [n for n in RECIPES.names() if n != backend]
        lines += ["", f"(a config with `backend: {' | '.join(others)}` lists that backend's options)"]
    return "\n".join(lines)


__all__ = [
    "backend_of",
    "column_loader",
    "load_config",
    "options_help",
    "recipe_for",
    "renders_images",
    "same_backend",
    "train",
]
