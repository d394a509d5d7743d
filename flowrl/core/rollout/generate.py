"""Rollout generation (``rollout.generate``): how an iteration's scored rollouts are made from its prompts, one
registry for both recipes.

A generator is registered with its facts and its own options and called as::

    batch = generator(run, prompts, sample, options)

where ``sample(run, prompts, noise_seeds=None)`` is the recipe's own sampler (the training sampler with its mode,
window and rewards). ``sampler`` (the default) is that sampler alone. A strategy may call it on other prompts or
with chosen initial noise, after work of its own (``sol-rl``, ``flowrl/image/sol_rl.py``: a cheap exploration pool,
then the training sampler on a selected subset from the same noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowrl.core.method_options import NESTED, Backend, MethodSection
from flowrl.core.options import option
from flowrl.core.registry import Registry

from .filters import StageFacts


@dataclass(frozen=True)
class GeneratorFacts(StageFacts):
    """What a generator declares: ``backends``, the recipes whose rollouts it can make; ``check``, its own config
    check ``(cfg, options) -> None`` raising ``ConfigError`` with one line (None: none)."""

    check: Callable[[Any, Any], None] | None = None


#: (run, prompts, the recipe's sampler, its own options or None) -> the recipe's scored batch
Generator = Callable[[Any, list, Callable[..., Any], Any], Any]
GENERATORS: Registry[Generator, GeneratorFacts] = Registry("rollout generator", GeneratorFacts)


@GENERATORS.register("sampler")
def training_sampler(run: Any, prompts: list, sample: Callable[..., Any], options: Any) -> Any:
    """The recipe's training sampler on the iteration's prompts (every run before generators existed)."""
    return sample(run, prompts)


@dataclass
class GeneratorSpec(MethodSection):
    """``rollout.generate``: a registered generator and its own options (under its name)."""

    REGISTRY, BACKEND = GENERATORS, Backend.FLOW

    name: str = option("sampler", "how the rollouts are made (registry name)", choices=GENERATORS.names)
    options: Any = dataclasses.field(default=None, metadata=NESTED)


__all__ = ["GENERATORS", "Generator", "GeneratorFacts", "GeneratorSpec", "training_sampler"]
