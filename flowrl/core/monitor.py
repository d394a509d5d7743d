"""Reward-hacking monitors during training (``flowrl.image.evaluation`` has the evaluation side).

Every iteration logs, besides the trained rewards, ``watch/<name>`` (the means of ``eval.watch_rewards`` on the
iteration's images or completions) and ``monitor/diversity`` (images: the mean within-group distance, group =
prompt, on 32×32 thumbnails; text: the mean share of distinct completions per prompt). The training loop feeds
every recipe's metrics to the monitor. ``TrainingMonitor`` compares the latest ``window`` iterations with the first
``window``: when ``reward/mean`` rose by more than two standard errors (iterations as the unit) while a watch
reward fell by more than ``eval.watch_drop`` (and two SE) or the diversity fell by more than the fraction
``eval.diversity_drop``, it logs one warning per signal; a diversity that falls that far while the reward does not
rise is a possible collapse. The warnings go to ``summary.json`` (``training_warnings``). Its state starts over
when a run is resumed.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from typing import Any

log = logging.getLogger("flowrl")
WATCH = "watch/"  # prefix of a watch reward's scores


def distinct_share(groups: list[int], texts: list[str]) -> float:
    """The text recipe's within-prompt diversity: over groups (``groups[i]``: completion ``i``'s prompt) with two or
    more completions, the mean share of distinct completions (1: all differ; 1/G: one completion G times); NaN when
    no group has two."""
    by_group: dict[int, list[str]] = {}
    for g, text in zip(groups, texts, strict=True):
        by_group.setdefault(g, []).append(text)
    shares = [len(set(t)) / len(t) for t in by_group.values() if len(t) > 1]
    return statistics.fmean(shares) if shares else math.nan


class TrainingMonitor:
    """Watches ``reward/mean`` against the watch rewards and the diversity over a training run (module docstring)."""

    def __init__(self, watch_drop: float, diversity_drop: float, window: int = 5) -> None:
        self.watch_drop, self.diversity_drop, self.window = watch_drop, diversity_drop, window
        self.first: dict[str, list[float]] = {}
        self.latest: dict[str, deque[float]] = {}
        self.warned: set[str] = set()
        self.history: list[dict[str, Any]] = []  # every warning with its iteration, for summary.json

    def update(self, metrics: dict[str, float], iteration: int = 0) -> list[str]:
        """Add iteration ``iteration``'s metrics; the new warnings (each signal warns once)."""
        keys = [k for k in metrics if k == "reward/mean" or k.startswith(WATCH) or k == "monitor/diversity"]
        for k in keys:
            v = metrics[k]
            if not math.isfinite(v):
                continue
            first = self.first.setdefault(k, [])
            if len(first) < self.window:
                first.append(v)
            else:
                self.latest.setdefault(k, deque(maxlen=self.window)).append(v)
        new = [(key, line) for key, line in self._signals() if key not in self.warned]
        self.warned.update(key for key, _ in new)
        self.history += [{"iteration": iteration, "warning": line} for _, line in new]
        return [line for _, line in new]

    def _change(self, key: str) -> tuple[float, float] | None:
        """(latest − first) mean and its SE, once both windows are full."""
        first, latest = self.first.get(key, []), list(self.latest.get(key, []))
        if len(first) < self.window or len(latest) < self.window:
            return None
        se = math.sqrt(statistics.variance(first) / len(first) + statistics.variance(latest) / len(latest))
        return statistics.fmean(latest) - statistics.fmean(first), se

    def _signals(self) -> list[tuple[str, str]]:
        """(signal key, warning line) of every signal present now."""
        reward = self._change("reward/mean")
        if reward is None:
            return []
        change = f"{reward[0]:+.3f} ± {reward[1]:.3f} since the first {self.window} iterations"
        div, fell = self._change("monitor/diversity"), None
        if div is not None:
            base = statistics.fmean(self.first["monitor/diversity"])
            if base > 0 and -div[0] > self.diversity_drop * base:
                fell = (f"the within-prompt diversity fell from {base:.3f} by {-div[0]:.3f} "
                        f"(eval.diversity_drop={self.diversity_drop})")  # fmt: skip
        if not (reward[0] > 0 and reward[0] > 2 * reward[1]):
            # a policy can collapse onto one image without gaming the reward (bench/toy_collapse)
            return [("collapse", f"possible collapse: {fell} while reward/mean did not rise ({change})")] * bool(fell)
        rose = f"reward/mean rose {change}"
        lines = []
        for key in sorted(k for k in self.first if k.startswith(WATCH)):
            watch = self._change(key)
            if watch is not None and -watch[0] > max(self.watch_drop, 2 * watch[1]):
                lines.append((key, f"possible reward hacking: {rose} while {key} fell {watch[0]:+.3f} ± "
                                   f"{watch[1]:.3f} (eval.watch_drop={self.watch_drop})"))  # fmt: skip
        if fell:
            lines.append(("monitor/diversity", f"possible reward hacking: {rose} while {fell}"))
        return lines


__all__ = ["WATCH", "TrainingMonitor", "distinct_share"]
