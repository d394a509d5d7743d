"""Wall time per stage of an iteration: what ``flowrl profile`` prints and the ``time/*`` metrics log.

Stages nest freely (``rollout`` holds ``rollout_trained_forward``); each name sums its own wall time over the
iteration. On a GPU, work is asynchronous: with ``sync`` on (the profile turns it on) every stage boundary waits for
the device, so a stage is charged with the kernels it launched; off, the numbers are launch times and cost nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch


class Stopwatch:
    """Seconds, calls and rows (images or transitions passed through the network) per stage since the last
    ``reset``."""

    def __init__(self, sync: bool = False) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.rows: dict[str, int] = defaultdict(int)

    def _wait(self) -> None:
        if self.sync and torch.cuda.is_available():
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def stage(self, name: str, rows: int = 0) -> Iterator[None]:
        self._wait()
        self.rows[name] += rows
        start = time.perf_counter()
        try:
            yield
        finally:
            self._wait()
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def timed(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with each call charged to stage ``name`` (its rows: the first argument's leading size)."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            rows = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else 0
            with self.stage(name, rows):
                return fn(*args, **kwargs)

        return wrapped

    def metrics(self) -> dict[str, float]:
        """``{"time/<stage>_s": seconds}`` since the last reset."""
        return {f"time/{name}_s": s for name, s in self.seconds.items()}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.rows.clear()


__all__ = ["Stopwatch"]
