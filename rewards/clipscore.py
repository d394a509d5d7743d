"""CLIPScore (torchmetrics convention): max(100 · cos(image, prompt), 0).

Say which backbone a config uses: the usual one is openai/clip-vit-large-patch14 (``path``: a local
folder with its ``CLIPModel`` weights and tokenizer).
"""

from __future__ import annotations

from torch import Tensor

from .base import REWARDS, RewardFn
from .clip_similarity import ClipSimilarity


@REWARDS.register("clipscore", differentiable=True)
def clipscore(path: str, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """CLIPScore of each (image, prompt) pair."""
    sim = ClipSimilarity(path, device, batch_size)

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        cos, _ = sim(images, prompts)
        return {"score": (100 * cos).clamp(min=0)}

    return reward
