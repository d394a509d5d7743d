"""Window schedules: which denoising steps are stochastic and trained in a given iteration.

A window is the step range ``[start, start + size)`` of a schedule with ``num_steps`` steps. Steps
inside are SDE steps whose transitions are trained; outside, the sampler runs the ODE (MixGRPO).
Each schedule is a small object: ``window`` is the current range, ``advance()`` is called once
per training iteration, and ``state_dict`` / ``load_state_dict`` save and restore it exactly.

- ``fixed``: the same window every iteration (``size = num_steps`` is plain Flow-GRPO).
- ``progressive`` (MixGRPO): the start moves by ``stride`` every ``shift_interval`` iterations
  and rolls back to 0 once the window would run past the last allowed start.
- ``decaying`` (MixGRPO's decaying interval): as progressive, but after every shift the interval
  becomes ``max(min_interval, floor(interval * decay))``, so the window moves faster over time;
  a roll-back restores the initial interval.
- ``random`` (Flow-GRPO-Fast): each iteration draws the start uniformly from
  ``[min_start, max_start]`` with the schedule's own seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.registry import Registry


class WindowSchedule:
    """Base: a window of ``size`` steps inside ``num_steps``; subclasses move ``start``."""

    kind = "fixed"

    def __init__(self, num_steps: int, size: int, start: int = 0) -> None:
        if num_steps < 1:
            raise ValueError(f"window schedule: num_steps must be >= 1, got {num_steps}")
        if not 1 <= size <= num_steps:
            raise ValueError(f"window size must be in [1, num_steps={num_steps}], got {size}")
        if not 0 <= start <= num_steps - size:
            raise ValueError(f"window start must be in [0, {num_steps - size}] for size {size}, got {start}")
        self.num_steps, self.size, self.start = num_steps, size, start
        self.iteration = 0

    @property
    def window(self) -> range:
        """The current trained steps."""
        return range(self.start, self.start + self.size)

    def sde_mask(self) -> Tensor:
        """``[num_steps]`` bool: True on the current window's steps."""
        mask = torch.zeros(self.num_steps, dtype=torch.bool)
        mask[self.start : self.start + self.size] = True
        return mask

    def advance(self) -> None:
        """Move to the next training iteration."""
        self.iteration += 1

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "iteration": self.iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"window state is for {state.get('kind')!r}, this schedule is {self.kind!r}")
        self.start, self.iteration = int(state["start"]), int(state["iteration"])


class ProgressiveWindow(WindowSchedule):
    """MixGRPO's sliding window: shift by ``stride`` every ``shift_interval`` iterations, then roll back."""

    kind = "progressive"

    def __init__(
        self, num_steps: int, size: int, stride: int = 1, shift_interval: int = 1, max_start: int | None = None
    ) -> None:
        super().__init__(num_steps, size)
        self.max_start = num_steps - size if max_start is None else max_start
        if not 0 <= self.max_start <= num_steps - size:
            raise ValueError(f"max_start must be in [0, {num_steps - size}], got {self.max_start}")
        if stride < 1 or shift_interval < 1:
            raise ValueError(f"stride and shift_interval must be >= 1, got {stride} and {shift_interval}")
        self.stride, self.shift_interval = stride, shift_interval
        self.since_shift = 0

    def _interval(self) -> int:
        return self.shift_interval

    def _shift(self) -> None:
        nxt = self.start + self.stride
        self.start = nxt if nxt <= self.max_start else 0

    def advance(self) -> None:
        super().advance()
        self.since_shift += 1
        if self.since_shift >= self._interval():
            self.since_shift = 0
            self._shift()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "since_shift": self.since_shift}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.since_shift = int(state["since_shift"])


class DecayingWindow(ProgressiveWindow):
    """Progressive window whose shift interval decays by ``decay`` after each shift, down to ``min_interval``."""

    kind = "decaying"

    def __init__(
        self,
        num_steps: int,
        size: int,
        stride: int = 1,
        shift_interval: int = 4,
        decay: float = 0.5,
        min_interval: int = 1,
        max_start: int | None = None,
    ) -> None:
        super().__init__(num_steps, size, stride, shift_interval, max_start)
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if not 1 <= min_interval <= shift_interval:
            raise ValueError(f"min_interval must be in [1, shift_interval={shift_interval}], got {min_interval}")
        self.decay, self.min_interval = decay, min_interval
        self.interval = shift_interval

    def _interval(self) -> int:
        return self.interval

    def _shift(self) -> None:
        super()._shift()
        if self.start == 0:  # rolled back: start the decay over
            self.interval = self.shift_interval
        else:
            self.interval = max(self.min_interval, math.floor(self.interval * self.decay))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "interval": self.interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.interval = int(state["interval"])


class RandomWindow(WindowSchedule):
    """Flow-GRPO-Fast: a fresh window start drawn uniformly from ``[min_start, max_start]`` each iteration."""

    kind = "random"

    def __init__(self, num_steps: int, size: int, min_start: int = 0, max_start: int | None = None, seed: int = 0):
        max_start = num_steps - size if max_start is None else max_start
        if not 0 <= min_start <= max_start <= num_steps - size:
            raise ValueError(
                f"random window needs 0 <= min_start <= max_start <= {num_steps - size}, got {min_start}, {max_start}"
            )
        super().__init__(num_steps, size, min_start)
        self.min_start, self.max_start = min_start, max_start
        self.generator = torch.Generator().manual_seed(seed)
        self._draw()

    def _draw(self) -> None:
        span = self.max_start - self.min_start + 1
        self.start = self.min_start + int(torch.randint(span, (1,), generator=self.generator))

    def advance(self) -> None:
        super().advance()
        self._draw()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class WindowFacts:
    """moves: the window's start changes between iterations; seeded: it draws its start from a seeded generator
    (the trainer passes the run's seed)."""

    moves: bool = True
    seeded: bool = False


WINDOW_SCHEDULES: Registry[type[WindowSchedule], WindowFacts] = Registry("window schedule", WindowFacts)
WINDOW_SCHEDULES.register("fixed", moves=False)(WindowSchedule)
WINDOW_SCHEDULES.register("progressive")(ProgressiveWindow)
WINDOW_SCHEDULES.register("decaying")(DecayingWindow)
WINDOW_SCHEDULES.register("random", seeded=True)(RandomWindow)


def make_window(kind: str, num_steps: int, size: int, **options: Any) -> WindowSchedule:
    """Build a window schedule by name (``fixed``, ``progressive``, ``decaying``, ``random``)."""
    return WINDOW_SCHEDULES.get(kind)(num_steps, size, **options)


__all__ = [
    "WINDOW_SCHEDULES",
    "DecayingWindow",
    "ProgressiveWindow",
    "RandomWindow",
    "WindowFacts",
    "WindowSchedule",
    "make_window",
]
