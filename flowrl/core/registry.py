"""Name → function registries with one signature each, so trainers never branch on a method's name.

A registry may carry *facts*: a frozen dataclass of what each entry needs or declares (what a loss trains on, which
inputs an estimator needs, a sampler mode's default window), given where the entry is registered
(``@LOSSES.register("awm", trains_on=TrainsOn.SAMPLES)``) and read with ``registry.facts(name)``. Validation and the
recipes ask the facts, never the name.

An entry may also declare its own *options*, a dataclass of typed ``option`` fields
(``@LOSSES.register("awm", options=AwmOptions)``): the config nests them under the entry's name
(``loss.awm.weighting``, ``flowrl.core.method_options``) and hands the loaded instance to the entry;
``registry.options(name)`` returns the class.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from flowrl.core.errors import ConfigError

F = TypeVar("F", bound=Callable)
T = TypeVar("T")


class Fact(str, enum.Enum):
    """A fact's value from a closed set (``TrainsOn.SAMPLES``, ``Branching.TREE``): compared by identity, never as a
    string by hand; it still reads and prints as its value (``"samples"``), as config messages and keys need."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclasses.dataclass(frozen=True)
class NoFacts:
    """The facts of a registry that declares none."""


class Registry(Generic[F, T]):
    """A named table of functions of one signature, each with its facts (a ``facts`` dataclass instance).

    ``@registry.register("name", options=None, **facts)`` adds a function (an unknown fact, or options that are not
    a dataclass, is a ``TypeError`` at import); ``registry.get("name")`` returns it and names the valid choices when
    the name is unknown; ``registry.facts`` returns its facts, ``registry.options`` its options class (None: it
    declares none); registering a name twice raises.
    """

    def __init__(self, what: str, facts: type[T] = NoFacts) -> None:
        self.what = what
        self.facts_type = facts
        self._table: dict[str, F] = {}
        self._facts: dict[str, T] = {}
        self._options: dict[str, type | None] = {}

    def register(self, name: str, options: type | None = None, **facts: Any) -> Callable[[F], F]:
        declared = self.facts_type(**facts)
        if options is not None and not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise TypeError(f"{self.what} {name!r}: options must be a dataclass, got {options!r}")

        def add(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._table[name] = fn
            self._facts[name] = declared
            self._options[name] = options
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

    def options(self, name: str) -> type | None:
        """The options dataclass ``name`` declared at registration, or None (``ConfigError`` if unknown)."""
        self.get(name)
        return self._options[name]

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """The registered names, sorted; with ``where``, only those whose facts satisfy it."""
        return sorted(n for n in self._table if where is None or where(self._facts[n]))

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
