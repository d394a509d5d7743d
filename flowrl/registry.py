"""Name → function registries with one signature each, so trainers never branch on a method's name.

A registry may carry *facts*: a frozen dataclass of what each entry needs or declares (what a loss trains on, which
inputs an estimator needs, a sampler mode's default window), given where the entry is registered
(``@LOSSES.register("awm", trains_on="samples")``) and read with ``registry.facts(name)``. Validation and the
recipes ask the facts, never the name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from flowrl.errors import ConfigError

F = TypeVar("F", bound=Callable)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoFacts:
    """The facts of a registry that declares none."""


class Registry(Generic[F, T]):
    """A named table of functions of one signature, each with its facts (a ``facts`` dataclass instance).

    ``@registry.register("name", **facts)`` adds a function (an unknown fact is a ``TypeError`` at import);
    ``registry.get("name")`` returns it and names the valid choices when the name is unknown; ``registry.facts``
    returns its facts; registering a name twice raises.
    """

    def __init__(self, what: str, facts: type[T] = NoFacts) -> None:
        self.what = what
        self.facts_type = facts
        self._table: dict[str, F] = {}
        self._facts: dict[str, T] = {}

    def register(self, name: str, **facts: Any) -> Callable[[F], F]:
        declared = self.facts_type(**facts)

        def add(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._table[name] = fn
            self._facts[name] = declared
            return fn

        return add

    def get(self, name: str) -> F:
        if name not in self._table:
            raise ConfigError(f"unknown {self.what} {name!r}; valid: {', '.join(sorted(self._table))}")
        return self._table[name]

    def facts(self, name: str) -> T:
        """What ``name`` declared at registration (``ValueError`` naming the valid choices if unknown)."""
        self.get(name)
        return self._facts[name]

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """The registered names, sorted; with ``where``, only those whose facts satisfy it."""
        return sorted(n for n in self._table if where is None or where(self._facts[n]))

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
