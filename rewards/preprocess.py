"""Image preprocessing for CLIP-family reward models, on tensors (no PIL round trip in training).

Images arrive as ``[B, 3, H, W]`` floats in [0, 1]. ``clip_preprocess`` follows CLIP's published
transform: resize the shortest side to ``size`` (bicubic, antialiased), centre-crop ``size × size``,
normalise with OpenAI's mean and std.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def clip_preprocess(
    images: Tensor,
    size: int = 224,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
    crop: int | None = None,
) -> Tensor:
    """``[B, 3, H, W]`` in [0, 1] → normalised ``[B, 3, crop, crop]``: the shortest side resized to ``size``, a
    centre crop of ``crop`` (default ``size``; DINOv2 resizes to 256 and crops 224).

    The crop's offset is floored like transformers' image processors; torchvision's ``CenterCrop``
    rounds, which differs by one pixel when the margin is odd."""
    crop = size if crop is None else crop
    x = _resize(images, size, min)
    top, left = (x.shape[-2] - crop) // 2, (x.shape[-1] - crop) // 2
    return _normalise(x[..., top : top + crop, left : left + crop], mean, std)


def longest_side_preprocess(
    images: Tensor, size: int = 224, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> Tensor:
    """HPS's transform (open_clip ``image_resize_mode="longest"``): resize the longest side to ``size``
    (bicubic, antialiased), pad to ``size × size`` with black (left/top get the smaller half), normalise."""
    x = _resize(images, size, max)
    h, w = x.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return _normalise(F.pad(x, (left, size - w - left, top, size - h - top), value=0.0), mean, std)


def _resize(images: Tensor, size: int, side: Callable[[int, int], int]) -> Tensor:
    """Bicubic (antialiased) resize so that ``side(h, w)`` (min: shortest, max: longest) becomes ``size``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")
    h, w = images.shape[-2:]
    scale = size / side(h, w)
    # the other side: torchvision and transformers truncate for shortest-side resizes, open_clip's
    # longest-side resize rounds; the fitted side is exactly ``size`` either way
    other = int if side is min else round
    new = tuple(size if n == side(h, w) else other(n * scale) for n in (h, w))
    x = F.interpolate(images.float(), size=new, mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 1)


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def load_image(path: str, size: tuple[int, int] | None = None) -> Tensor:
    """``[3, H, W]`` in [0, 1] of an RGB image file at ``size`` = (H, W): as stored when it has that size (or no size
    is given), else centre-cropped to that aspect ratio and resized (bilinear, antialiased), so an edit and its
    source line up."""
    with Image.open(path) as image:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    h, w = x.shape[-2:]
    crop_h, crop_w = min(h, round(w * size[0] / size[1])), min(w, round(h * size[1] / size[0]))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    x = x[:, top : top + crop_h, left : left + crop_w]
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)


def load_sources(image: list[list[str]], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The rows' first source images (``image[i][0]``) at ``size``, each distinct file loaded once (a group's rows
    share one): ``[U, 3, H, W]``, and ``[B]`` indices of each row's image in it."""
    first = {path: k for k, path in enumerate(dict.fromkeys(row[0] for row in image))}
    index = torch.tensor([first[row[0]] for row in image], dtype=torch.long)
    return torch.stack([load_image(path, size) for path in first]), index


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "clip_preprocess",
    "load_image",
    "load_sources",
    "longest_side_preprocess",
]
