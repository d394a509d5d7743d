"""The columns of ``flowrl eval`` and ``flowrl gallery``: ``LABEL=SOURCE[@CONFIG]`` items, each the base model or a
checkpoint folder (a bench folder expands into one column per method), on every backend.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flowrl.core.errors import ConfigError

#: ``load(what, config_path, overrides)`` → a column's config, checked to be of the command's backend
#: (``flowrl.recipes.column_loader``)
ColumnLoader = Callable[[str, "str | None", Sequence[str]], Any]


@dataclass
class ColumnSpec:
    label: str
    source: str  # "base" or a checkpoint folder
    config: str | None
    cfg: Any = None  # the loaded config (parse_columns with a loader)


def parse_columns(
    items: list[str], default_config: str | None, flag: str = "--column", load: ColumnLoader | None = None
) -> list[ColumnSpec]:
    """``LABEL=SOURCE[@CONFIG]`` items (given with ``flag``), bench folders expanded into one column per method;
    with ``load``, every column's config is read and checked now, before any model loads."""
    specs: list[ColumnSpec] = []
    for item in items:
        label, sep, rest = item.partition("=")
        if not sep or not label or not rest:
            raise ConfigError(f"{flag} {item!r} must look like LABEL=SOURCE (e.g. trained=runs/x/checkpoints/final)")
        source, _, config = rest.partition("@")
        config = config or default_config
        if source != "base" and not os.path.isdir(source):
            raise ConfigError(f"{flag} {label}: {source!r} is neither 'base' nor a folder")
        if source != "base" and os.path.isfile(os.path.join(source, "results.json")):  # a bench output
            methods = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d, "checkpoints")))
            specs += [
                ColumnSpec(f"{label}/{m}", os.path.join(source, m, "checkpoints", "final"), config) for m in methods
            ]
        else:
            specs.append(ColumnSpec(label, source, config))
    for spec in specs if load is not None else []:
        spec.cfg = load(f"{flag} {spec.label}", spec.config, ())
    return specs


def base_index(specs: list[ColumnSpec]) -> int:
    """The column the others are compared with: the one whose source is ``base``, else the first."""
    return next((i for i, s in enumerate(specs) if s.source == "base"), 0)


__all__ = ["ColumnLoader", "ColumnSpec", "base_index", "parse_columns"]
