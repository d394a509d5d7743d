"""Image preprocessing for CLIP-family reward models, on tensors (no PIL round trip in training).

Images arrive as ``[B, 3, H, W]`` floats in [0, 1]. ``clip_preprocess`` follows CLIP's published
transform: resize the shortest side to ``size`` (bicubic, antialiased), centre-crop ``size × size``,
normalise with OpenAI's mean and std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(
    images: Tensor, size: int = 224, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> Tensor:
    """``[B, 3, H, W]`` in [0, 1] → normalised ``[B, 3, size, size]`` (shortest side, centre crop)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def longest_side_preprocess(
    images: Tensor, size: int = 224, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> Tensor:
    """HPS's transform (open_clip ``image_resize_mode="longest"``): resize the longest side to ``size``
    (bicubic, antialiased), pad to ``size × size`` with black (left/top get the smaller half), normalise."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    new_h, new_w = min(size, round(h * scale)), min(size, round(w * scale))
    x = F.interpolate(images.float(), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    x = F.pad(x.clamp(0, 1), (left, size - new_w - left, top, size - new_h - top), value=0.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


__all__ = ["OPENAI_MEAN", "OPENAI_STD", "clip_preprocess", "longest_side_preprocess"]
