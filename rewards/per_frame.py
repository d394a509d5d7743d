"""Any image reward on a video's frames (``per-frame``): the frames ``0, every, 2·every, …`` (and the last) of each
video ``[B, F, 3, H, W]`` are scored as images with the video's prompt, and the scores aggregated per video: their
``mean`` (Flow-Factory's video PickScore), ``min`` (the worst frame: a video is as good as its weakest frame), or
``first-last`` (the mean of the first and the last frame: DanceGRPO and UniRL score the first frame only, which
``every`` larger than the clip gives). The inner reward's other outputs are averaged over the chosen frames and logged
under their own names; the columns it reads (``inputs``) are passed for every frame.

    rewards:
      - name: per-frame
        options: {reward: pickscore, options: {path: ...}, every: 4, aggregate: mean}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import REWARDS, RewardFn, Scores, check_reward_name, check_reward_output, is_groupwise, make_reward

AGGREGATES = ("mean", "min", "first-last")


def chosen_frames(frames: int, every: int) -> list[int]:
    """Indices ``0, every, 2·every, …`` below ``frames``, and the last frame."""
    picked = list(range(0, frames, every))
    return picked if picked[-1] == frames - 1 else [*picked, frames - 1]


@REWARDS.register("per-frame", scores=Scores.VIDEOS, wraps=True)
def per_frame(reward: str, options: dict[str, Any] | None = None, every: int = 1, aggregate: str = "mean") -> RewardFn:
    """Factory: the image reward ``reward`` (built with ``options``) on every ``every``-th frame, aggregated."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    check_reward_name(reward, Scores.IMAGES)
    inner = make_reward(reward, **(options or {}))
    if is_groupwise(inner):
        raise ValueError(f"{reward!r} compares the images of a group; per-frame scores frames one video at a time")

    def score(images: Tensor, prompts: list[str], **columns: list[Any]) -> dict[str, Tensor]:
        if images.ndim != 5:
            raise ValueError(f"per-frame scores videos [B, F, 3, H, W], got shape {tuple(images.shape)}")
        b, f = images.shape[:2]
        picked = chosen_frames(f, every)
        k = len(picked)
        flat = images[:, picked].flatten(0, 1)  # video-major: the k frames of video 0, then of video 1, ...
        repeat = {key: [v for v in values for _ in range(k)] for key, values in columns.items()}
        out = check_reward_output(reward, inner(flat, [p for p in prompts for _ in range(k)], **repeat), b * k)
        per = out["score"].view(b, k)
        if aggregate == "mean":
            total = per.mean(1)
        elif aggregate == "min":
            total = per.min(1).values
        else:
            total = (per[:, 0] + per[:, -1]) / 2
        extras = {key: v.view(b, k).mean(1) for key, v in out.items() if key != "score"}
        return {"score": total, **extras, "frames_scored": torch.full((b,), float(k))}

    score.inputs = tuple(getattr(inner, "inputs", ()))
    return score
