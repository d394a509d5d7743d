"""PickScore (yuvalkirstain/PickScore_v1): a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences.

Score = logit_scale.exp() · cos(image, prompt), typically 18-24 (Flow-GRPO divides by 26: ``scale``).
``path``: a local folder with the ``CLIPModel`` weights and the tokenizer of
laion/CLIP-ViT-H-14-laion2B-s32B-b79K (the processor PickScore was trained with).
"""

from __future__ import annotations

from torch import Tensor

from .base import REWARDS, RewardFn
from .clip_similarity import ClipSimilarity


@REWARDS.register("pickscore", differentiable=True)
def pickscore(path: str, scale: float = 1.0, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """PickScore divided by ``scale``; the raw score is logged as ``raw``."""
    sim = ClipSimilarity(path, device, batch_size)

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        cos, logit_scale = sim(images, prompts)
        raw = logit_scale * cos
        return {"score": raw / scale, "raw": raw}

    return reward
