"""Preservation for editing, from each prompt row's source ``image`` (the first, for a row with several).

``image-similarity``: the cosine between a ``CLIPModel``'s image embeddings of the edited image and of the source,
the image-image term that flow_grpo adds to its editing rewards (``image_similarity_score``, weighted 0.5 for
Kontext and 0.2 for Qwen-Image-Edit next to GenEval's check); ``score`` in [-1, 1], 1 when the embeddings agree.
The CLIP checkpoint is the user's (``path``: a local folder or hub id saved by ``CLIPModel.save_pretrained``).

``pixel-similarity``: model-free, 1 − the RMS pixel difference of the two at a small size; a watch reward that shows
an edit policy ignoring its source (the typical hack of editing RL).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import REWARDS, RewardFn
from .preprocess import clip_preprocess, load_image


@REWARDS.register("image-similarity", inputs=("image",))
def image_similarity(path: str, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """Factory: the CLIP image-image cosine of each edit with its source image."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(path).to(device).eval()
    size = model.config.vision_config.image_size

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        parts = [model.get_image_features(pixel_values=clip_preprocess(images[i : i + batch_size].to(device), size))
                 for i in range(0, len(images), batch_size)]  # fmt: skip
        feats = torch.cat([p if isinstance(p, Tensor) else p.pooler_output for p in parts]).float()
        return feats / feats.norm(dim=-1, keepdim=True)

    def reward(images: Tensor, prompts: list[str], image: list[list[str]]) -> dict[str, Tensor]:
        sources = torch.stack([load_image(paths[0], tuple(images.shape[-2:])) for paths in image])
        return {"score": (embed(images) * embed(sources)).sum(-1).cpu()}

    reward.inputs = ("image",)
    return reward


@REWARDS.register("pixel-similarity", inputs=("image",))
def pixel_similarity(size: int = 32) -> RewardFn:
    """Factory: a model-free preservation score, 1 − the RMS difference in [0, 1] between the edit and its source
    image, both area-downsampled to at most ``size`` pixels a side (1: unchanged; the hack of an edit policy that
    ignores its source shows as a fall, so it serves as a watch reward: ``eval.watch_rewards``)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")

    from flowrl.image.evaluation import thumbnails

    def reward(images: Tensor, prompts: list[str], image: list[list[str]]) -> dict[str, Tensor]:
        sources = torch.stack([load_image(paths[0], tuple(images.shape[-2:])) for paths in image])
        rms = (thumbnails(images, size) - thumbnails(sources, size)).square().flatten(1).mean(1).sqrt()
        return {"score": 1 - rms}

    reward.inputs = ("image",)
    return reward
