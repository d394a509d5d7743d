"""HPSv2 / HPSv2.1: an open_clip ViT-H-14 fine-tuned on human preference pairs.

Checkpoint: ``HPS_v2.1_compressed.pt`` (or v2), a full open_clip state dict under ``"state_dict"``,
loaded with ``weights_only=True`` into ``open_clip.create_model(arch)`` built without pretrained
weights. Preprocessing: longest side to 224, black padding, OpenAI normalisation. Score = cosine of
the image and prompt embeddings (no logit scale), typically 0.20-0.35.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import REWARDS, RewardFn
from .preprocess import longest_side_preprocess


class HPS:
    """``reward(images, prompts)`` → ``{"score": [B]}``."""

    def __init__(self, checkpoint: str, arch: str = "ViT-H-14", device: str = "cpu", batch_size: int = 32) -> None:
        import open_clip

        self.device, self.batch_size = torch.device(device), batch_size
        self.model = open_clip.create_model(arch, pretrained=None)
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if "state_dict" not in state:
            raise ValueError(f"HPS checkpoint {checkpoint!r} has no 'state_dict' entry (keys: {', '.join(state)})")
        self.model.load_state_dict(state["state_dict"])
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = self.model.visual.image_size
        self.size = size[0] if isinstance(size, tuple | list) else int(size)

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores = []
        for i in range(0, len(images), self.batch_size):
            pixels = longest_side_preprocess(images[i : i + self.batch_size].to(self.device), self.size)
            img = self.model.encode_image(pixels, normalize=True)
            tokens = self.tokenizer(prompts[i : i + self.batch_size]).to(self.device)
            txt = self.model.encode_text(tokens, normalize=True)
            scores.append((img * txt).sum(-1).float().cpu())
        return {"score": torch.cat(scores)}


@REWARDS.register("hpsv2", differentiable=True)
def hpsv2(checkpoint: str, arch: str = "ViT-H-14", device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """HPSv2 / HPSv2.1 preference score (the checkpoint decides which)."""
    return HPS(checkpoint, arch, device, batch_size)
