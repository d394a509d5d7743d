"""Reward functions of the text trainer, called as TRL's GRPOTrainer calls them, and the toy text world's rewards,
registered in ``REWARDS`` with ``scores=Scores.TEXT`` (``toy-text:correct``, ``toy-text:well_formed`` and
``toy-text:answer_digits``, a per-completion stratum for ``advantage.strata``).

A reward function is ``f(prompts, completions, completion_ids, trainer_state, log_metric, **columns)`` returning
one float per completion, or None where it does not apply (left out of the weighted sum, TRL's nansum). It receives
every dataset column but the prompt as a keyword list aligned with the completions; conversational prompts as
their message lists and completions as ``[{"role": "assistant", "content": text}]`` (``flowrl.text.data``);
``completion_ids`` as lists of token ids (EOS kept, padding dropped); ``trainer_state`` with ``global_step`` and
``max_steps``, for curricula; ``log_metric(name, value)`` to log a scalar with the iteration's metrics. TRL also
passes ``log_extra`` (columns of its completions table); flowrl does not.

Async functions (``async def``, or an object whose ``__call__`` is one) run concurrently with each other on one
event loop in a background thread that lives as long as the process, so a client bound to that loop (an HTTP
session to a judge) can be kept between calls; the plain functions run first, one after another, as in TRL.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError

from .base import REWARDS, Scores, load_object

RewardFunc = Callable[..., Sequence[float | None]]


@dataclass
class TrainerState:
    """What ``trainer_state`` tells a reward function (TRL's TrainerState attributes of the same names)."""

    global_step: int = 0  # iterations done
    max_steps: int = 0  # iterations configured


@dataclass
class RewardLog:
    """Scalars reward functions logged with ``log_metric`` during one scoring, averaged per name."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def log_metric(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(float(value))

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.values.items()}


def _toy_text(function: str) -> Callable[[], RewardFunc]:
    """The factory of a toy text world reward (``flowrl.text.world``, imported when the reward is built)."""

    def build() -> RewardFunc:
        from flowrl.text import world

        return getattr(world, function)

    return build


for _function in ("correct", "well_formed", "answer_digits"):
    REWARDS.register(f"toy-text:{_function}", scores=Scores.TEXT)(_toy_text(_function))


def registered_name(name: str) -> str:
    """A toy text reward's registered name, which may also be spelt with hyphens (``toy-text:well-formed``)."""
    if name.startswith("toy-text:") and (alias := "toy-text:" + name.split(":", 1)[1].replace("-", "_")) in REWARDS:
        return alias
    return name


def resolve_reward(name: str) -> RewardFunc:
    """A registered text reward (``toy-text:correct``) or a ``package.module:function``."""
    name = registered_name(name)
    if name in REWARDS:
        return REWARDS.get(name)()
    fn = load_object(name)
    if not callable(fn):
        raise ConfigError(f"reward {name!r} is not callable")
    return fn


def reward_names(funcs: Sequence[RewardFunc]) -> list[str]:
    """Metric names, as TRL names them: each function's ``__name__`` (numbered when two share one)."""
    names = [getattr(f, "__name__", type(f).__name__) for f in funcs]
    return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]


def is_async(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine (through ``functools.partial`` and ``__call__``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """The process's background event loop for async reward functions (started on first use)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="flowrl-rewards", daemon=True).start()
    return _LOOP


def call_all(funcs: list[tuple[str, RewardFunc]], kwargs: dict[str, Any]) -> list[Any]:
    """Every function's raw output for the same keyword arguments: plain ones in order, then the async ones
    together. A function that raises is a ``RewardError`` naming it."""
    from flowrl.core.errors import RewardError

    out: list[Any] = [None] * len(funcs)
    pending = []
    for k, (name, fn) in enumerate(funcs):
        if is_async(fn):
            pending.append(k)
            continue
        try:
            out[k] = fn(**kwargs)
        except Exception as e:
            raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e
    if pending:

        async def one(k: int) -> Any:
            return await funcs[k][1](**kwargs)  # a TypeError of the call itself is the function's, too

        async def gather() -> list[Any]:
            return await asyncio.gather(*(one(k) for k in pending), return_exceptions=True)

        results = asyncio.run_coroutine_threadsafe(gather(), _event_loop()).result()
        for k, value in zip(pending, results, strict=True):
            if isinstance(value, Exception):
                raise RewardError(f"reward {funcs[k][0]!r} raised {type(value).__name__}: {value}") from value
            out[k] = value
    return out


def check_values(name: str, values: Any, n: int) -> Tensor:
    """``[n]`` float64 scores of one function's output (None → NaN); a ``RewardError`` naming it otherwise."""
    from flowrl.core.errors import RewardError

    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise RewardError(
            f"reward {name!r} must return a list of floats or None (one per completion), got {type(values).__name__}"
        )
    values = list(values)
    if len(values) != n:
        raise RewardError(f"reward {name!r} returned {len(values)} values for {n} completions")
    bad = [v for v in values if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool))]
    if bad:
        raise RewardError(f"reward {name!r} must return floats or None, got {bad[0]!r}")
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


def reward_kwargs(
    rows: list[dict[str, Any]], completions: list[Any], ids: list[list[int]], state: TrainerState, log: RewardLog
) -> dict[str, Any]:
    """The keyword arguments of one scoring call (module docstring)."""
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt", "completion", "completion_ids")}
    return {
        **columns,
        "prompts": [r["prompt"] for r in rows],
        "completions": completions,
        "completion_ids": ids,
        "trainer_state": state,
        "log_metric": log.log_metric,
    }


__all__ = [
    "RewardFunc",
    "RewardLog",
    "TrainerState",
    "call_all",
    "check_values",
    "is_async",
    "registered_name",
    "resolve_reward",
    "reward_kwargs",
    "reward_names",
]
