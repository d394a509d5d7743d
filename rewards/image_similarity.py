"""Preservation for editing: the cosine between a ``CLIPModel``'s image embeddings of the edited image and of its
prompt row's source ``image`` (the first, for a row with several), the image-image term that flow_grpo adds to its
editing rewards (``image_similarity_score``, weighted 0.5 for Kontext and 0.2 for Qwen-Image-Edit next to GenEval's
check). ``score`` is the cosine in [-1, 1]: 1 when the edit's embedding is the source's. The CLIP checkpoint is
the user's (``path``: a local folder or hub id saved by ``CLIPModel.save_pretrained``)."""

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
