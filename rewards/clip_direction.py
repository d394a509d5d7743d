"""CLIP directional similarity for editing (``clip-direction``): does the change from source to edit point the way
the captions say it should?

``score = cos(E_I(edit) − E_I(source), E_T(target) − E_T(source_caption))``, each embedding L2-normalised before the
differences are taken, as StyleGAN-NADA's directional loss and InstructPix2Pix's evaluation compute it; in [-1, 1],
0 for an edit that changed nothing (a zero direction). It reads three columns of each prompt row: the source
``image``, its ``source_caption`` and the ``target`` caption of the wanted result (the instruction alone names no
direction in CLIP's space). ``path``: a ``CLIPModel`` folder with its tokenizer (e.g. openai/clip-vit-large-patch14).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import REWARDS, RewardFn
from .clip_similarity import ClipSimilarity
from .preprocess import load_sources

COLUMNS = ("image", "source_caption", "target")


@REWARDS.register("clip-direction", inputs=COLUMNS)
def clip_direction(path: str, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """Factory: the CLIP directional similarity of each edit (module docstring)."""
    clip = ClipSimilarity(path, device, batch_size)

    def reward(
        images: Tensor, prompts: list[str], image: list[list[str]], source_caption: list[str], target: list[str]
    ) -> dict[str, Tensor]:
        sources, index = load_sources(image, tuple(images.shape[-2:]))  # each source embedded once
        moved = clip.images(images) - clip.images(sources)[index]
        wanted = clip.texts(list(target)) - clip.texts(list(source_caption))
        return {"score": torch.nn.functional.cosine_similarity(moved, wanted, dim=-1)}

    reward.inputs = COLUMNS
    return reward
