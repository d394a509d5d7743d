"""What a video does over time, for videos ``[B, F, 3, H, W]`` in [0, 1]:

``temporal-consistency``: the mean cosine between the embeddings of consecutive frames (``path``: a ``CLIPModel``
or ``Dinov2Model`` folder, as ``image-similarity`` reads it; DINO keeps identity and layout, the usual subject
consistency measure of video benchmarks), or, with no ``path``, model-free: 1 − the RMS difference of consecutive
frames at ``size`` px. Also logged, model-free: ``flicker``, the mean absolute change of a frame's mean brightness
from one frame to the next (a video that pulses bright and dark, the over-exposure some video rewards drift into,
scores high).

``motion``: how much moves, the mean absolute difference of consecutive frames at ``size`` px (``amount``), as a
score ``min(1, amount / target)``: a frozen video scores 0, so it cannot win on consistency alone (train the two
together, or watch this one).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import REWARDS, RewardFn, Scores


def _videos(images: Tensor, name: str) -> Tensor:
    if images.ndim != 5 or images.shape[2] != 3 or images.shape[1] < 2:
        raise ValueError(f"{name} scores videos of 2 or more frames [B, F, 3, H, W], got {tuple(images.shape)}")
    return images.float()


def _small(videos: Tensor, size: int) -> Tensor:
    """``[B, F, 3, size, size]``: every frame resized (bilinear, antialiased)."""
    b, f = videos.shape[:2]
    flat = F.interpolate(videos.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return flat.view(b, f, 3, size, size)


def flicker(videos: Tensor) -> Tensor:
    """``[B]``: the mean absolute change of the frames' mean brightness between consecutive frames."""
    brightness = videos.mean(dim=(2, 3, 4))
    return (brightness[:, 1:] - brightness[:, :-1]).abs().mean(1)


@REWARDS.register("temporal-consistency", scores=Scores.VIDEOS)
def temporal_consistency(path: str = "", device: str = "cpu", batch_size: int = 32, size: int = 32) -> RewardFn:
    """Factory: consecutive frames' embedding cosine (``path``) or model-free similarity (module docstring)."""
    embed = None
    if path:
        from transformers import AutoConfig

        from .image_similarity import EMBEDDINGS

        kind = AutoConfig.from_pretrained(path).model_type
        if kind not in EMBEDDINGS:
            raise ValueError(f"temporal-consistency: {path!r} holds a {kind!r} model; valid: {', '.join(EMBEDDINGS)}")
        embed = EMBEDDINGS[kind](path, device, batch_size)

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        videos = _videos(images, "temporal-consistency")
        b, f = videos.shape[:2]
        if embed is not None:
            e = embed(videos.flatten(0, 1)).view(b, f, -1)
            score = (e[:, 1:] * e[:, :-1]).sum(-1).mean(1)
        else:
            small = _small(videos, size)
            rms = (small[:, 1:] - small[:, :-1]).square().mean(dim=(2, 3, 4)).sqrt()
            score = 1 - rms.mean(1)
        return {"score": score, "flicker": flicker(videos)}

    return reward


@REWARDS.register("motion", scores=Scores.VIDEOS)
def motion(target: float = 0.05, size: int = 32) -> RewardFn:
    """Factory: ``min(1, amount / target)``, ``amount`` the mean absolute difference of consecutive frames."""
    if target <= 0:
        raise ValueError(f"motion: target must be > 0, got {target}")

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        small = _small(_videos(images, "motion"), size)
        amount = (small[:, 1:] - small[:, :-1]).abs().mean(dim=(2, 3, 4)).mean(1)
        return {"score": (amount / target).clamp(max=1.0), "amount": amount}

    return reward


__all__ = ["flicker"]
