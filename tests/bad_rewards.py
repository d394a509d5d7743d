"""User reward functions that misbehave, loaded by path (``bad_rewards:<name>``) in tests/test_bad_input.py.

Flow rewards take ``(images [B, 3, H, W], prompts)`` and return ``{"score": [B]}``; text rewards have TRL's
signature ``(prompts, completions, **columns) -> list[float | None]``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def good(images: Tensor, prompts: list[str], offset: float = 0.0) -> dict[str, Tensor]:
    """A well-behaved reward: the mean brightness (plus ``offset``); differentiable in the images."""
    return {"score": images.mean((1, 2, 3)) + offset}


good.differentiable = True  # direct reward backpropagation may train through it


def clip_brightness(videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    """``good`` for videos ``[B, F, 3, H, W]``: the mean brightness of each clip; differentiable."""
    return {"score": videos.mean((1, 2, 3, 4))}


clip_brightness.differentiable = True


def raises(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    raise ValueError("detector weights missing")


def not_a_dict(images: Tensor, prompts: list[str]) -> Tensor:
    return images.mean((1, 2, 3))


def no_score(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    return {"value": images.mean((1, 2, 3))}


def wrong_shape(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    return {"score": images.mean((2, 3))}  # [B, 3]: one per channel


def too_few(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    return {"score": torch.zeros(len(prompts) - 1)}


def strings(images: Tensor, prompts: list[str]) -> dict[str, Any]:
    return {"score": ["good"] * len(prompts)}


def scalar(images: Tensor, prompts: list[str]) -> dict[str, Any]:
    return {"score": 0.5}


def complex_scores(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    return {"score": torch.zeros(len(prompts), dtype=torch.complex64)}


def bad_diagnostic(images: Tensor, prompts: list[str]) -> dict[str, Any]:
    return {"score": torch.zeros(len(prompts)), "debug": "n/a"}


def nan_scores(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
    score = torch.zeros(len(prompts))
    score[0] = float("nan")
    score[-1] = float("inf")
    return {"score": score}


class Brightness:
    """A reward class: the path names the class, the options go to its constructor."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        return {"score": self.scale * images.mean((1, 2, 3))}


class BrokenInit:
    def __init__(self) -> None:
        raise RuntimeError("cannot open the reward model")


NOT_CALLABLE = 3


# ----------------------------------------------------------------- text rewards (TRL signature)


def text_raises(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    raise KeyError("answer")


def text_short(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    return [1.0] * (len(prompts) - 1)


def text_strings(prompts: list[str], completions: list[str], **_: Any) -> list[str]:
    return ["1"] * len(prompts)


def text_scalar(prompts: list[str], completions: list[str], **_: Any) -> float:
    return 1.0


class NanOnCalls:
    """Mean brightness, except that on the listed calls (1-based) one score is NaN (``calls: all`` = always)."""

    def __init__(self, calls: list[int] | str = "all") -> None:
        self.calls, self.count = calls, 0

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        self.count += 1
        score = images.mean((1, 2, 3))
        if self.calls == "all" or self.count in self.calls:
            score[0] = float("nan")
        return {"score": score}


class GroupBrightness:
    """A groupwise reward: each image's brightness minus its group's mean (needs the whole group at once)."""

    groupwise = True

    def __call__(self, images: Tensor, prompts: list[str], groups: Tensor) -> dict[str, Tensor]:
        score = images.mean((1, 2, 3))
        means = torch.zeros(int(groups.max()) + 1).index_add_(0, groups, score) / torch.bincount(groups)
        return {"score": score - means[groups]}
