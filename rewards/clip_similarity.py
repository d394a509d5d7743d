"""Image-text similarity with a transformers ``CLIPModel`` checkpoint: the engine behind PickScore and
CLIPScore (their files register the rewards; this one does the scoring).

For each (image, prompt) pair it returns ``cos`` (cosine of the projected embeddings) and
``logit_scale`` (the checkpoint's learned temperature, exponentiated). Images go through
``clip_preprocess`` at the checkpoint's resolution; prompts are tokenised to 77 tokens, truncated.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .preprocess import clip_preprocess


class ClipSimilarity:
    """Load ``path`` (``CLIPModel`` + its tokenizer) and score pairs in batches of ``batch_size``."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.device, self.batch_size = torch.device(device), batch_size
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """``cos [B]`` between image i and prompt i, and the scalar ``logit_scale.exp()``."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        size = self.model.config.vision_config.image_size
        cos = []
        for i in range(0, len(images), self.batch_size):
            ids = self.tokenizer(
                prompts[i : i + self.batch_size], padding="max_length", max_length=77, truncation=True,
                return_tensors="pt",
            ).input_ids.to(self.device)  # fmt: skip
            pixels = clip_preprocess(images[i : i + self.batch_size].to(self.device), size)
            out = self.model(input_ids=ids, pixel_values=pixels)  # embeds come back L2-normalised
            cos.append((out.image_embeds * out.text_embeds).sum(-1).float().cpu())
        return torch.cat(cos), self.model.logit_scale.exp().float().cpu()


__all__ = ["ClipSimilarity"]
