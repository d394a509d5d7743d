"""Name → function registries with one signature each, so trainers never branch on a method's name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    """A named table of functions of one signature.

    ``@registry.register("name")`` adds a function; ``registry.get("name")`` returns it and names the
    valid choices when the name is unknown; registering a name twice raises.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._table: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        def add(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._table[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        if name not in self._table:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(sorted(self._table))}")
        return self._table[name]

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
