"""JPEG compressibility (DDPO): the negative size, in kilobytes, of the image saved as a JPEG.

Higher is simpler (more compressible) images. Images are quantised to 8 bits and encoded with
Pillow at the given quality; ``incompressibility`` is the same with the sign flipped.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torch import Tensor

from .base import REWARDS, RewardFn


def jpeg_kilobytes(image: Tensor, quality: int = 95) -> float:
    """Size in kB of ``image`` (``[3, H, W]`` in [0, 1]) encoded as JPEG at ``quality``."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000


def _sized(sign: float, quality: int) -> RewardFn:
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg reward: quality must be in [1, 100], got {quality}")

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        sizes = torch.tensor([jpeg_kilobytes(img, quality) for img in images])
        return {"score": sign * sizes, "kilobytes": sizes}

    return reward


@REWARDS.register("jpeg-compressibility")
def jpeg_compressibility(quality: int = 95) -> RewardFn:
    """Reward = −(JPEG size in kB)."""
    return _sized(-1.0, quality)


@REWARDS.register("jpeg-incompressibility")
def jpeg_incompressibility(quality: int = 95) -> RewardFn:
    """Reward = +(JPEG size in kB)."""
    return _sized(1.0, quality)
