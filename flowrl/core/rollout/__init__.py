"""The rollout pipeline's stages shared by both recipes (DESIGN.md, "What the toolkit does"): ``control`` (which
prompts an iteration draws, ``flowrl.core.rollout.control``), ``generate`` (how its rollouts are made from them,
``flowrl.core.rollout.generate``) and ``filter`` (which scored rollouts it trains on, ``flowrl.core.rollout.filters``);
each strategy is a registered function or class with its facts and options, and the config's ``rollout`` section
names them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from flowrl.core.errors import ConfigError
from flowrl.core.method_options import Backend

from .control import CONTROLS, ControlFacts, ControlSpec, PromptControl, PromptStats, make_control, zero_variance_share
from .filters import (
    FILTERS,
    FilterFacts,
    FilterSpec,
    RolloutFilter,
    ZeroVarianceOptions,
    check_filters,
    filter_rollouts,
    group_spans,
    zero_variance,
)
from .generate import GENERATORS, Generator, GeneratorFacts, GeneratorSpec, training_sampler


@dataclass
class RolloutConfig:
    generate: GeneratorSpec = dataclasses.field(
        default_factory=GeneratorSpec,
        metadata={"help": "how the rollouts are made: {name, <name>: {options}} (default sampler: the training "
                          "sampler)"},
    )  # fmt: skip
    control: ControlSpec = dataclasses.field(
        default_factory=ControlSpec,
        metadata={"help": "which prompts each iteration draws: {name, <name>: {options}} (default uniform)"},
    )
    filter: list[FilterSpec] = dataclasses.field(
        default_factory=list,
        metadata={"help": "filters of the scored rollouts, applied in order: a list of {name, <name>: {options}} "
                          "(e.g. [{name: zero-variance}]); a filtered sample gets no policy gradient"},
    )  # fmt: skip


def check_rollout(cfg_root: Any, backend: Backend, per_transition: bool) -> None:
    """The configured generator, control and filters of ``cfg_root.rollout`` apply to ``backend`` (filters: not to
    per-transition advantages), and the generator's own check passes on the whole config ``cfg_root``."""
    cfg = cfg_root.rollout
    for key, registry, name in (("generate", GENERATORS, cfg.generate.name), ("control", CONTROLS, cfg.control.name)):
        backends = registry.facts(name).backends
        if backend not in backends:
            raise ConfigError(f"rollout.{key}.name: {name!r} applies to {', '.join(str(b) for b in backends)}, "
                              f"not {backend}")  # fmt: skip
    check = GENERATORS.facts(cfg.generate.name).check
    if check is not None:
        check(cfg_root, cfg.generate.options)
    check_filters(cfg.filter, backend, per_transition)


__all__ = [
    "CONTROLS",
    "FILTERS",
    "GENERATORS",
    "ControlFacts",
    "ControlSpec",
    "FilterFacts",
    "FilterSpec",
    "Generator",
    "GeneratorFacts",
    "GeneratorSpec",
    "PromptControl",
    "PromptStats",
    "RolloutConfig",
    "RolloutFilter",
    "ZeroVarianceOptions",
    "check_filters",
    "check_rollout",
    "filter_rollouts",
    "group_spans",
    "make_control",
    "training_sampler",
    "zero_variance",
    "zero_variance_share",
]
