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
    """Load ``path`` (``CLIPModel``, and its tokenizer unless ``text`` is False: only images are embedded) and embed
    in batches of ``batch_size``."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32, text: bool = True) -> None:
        from transformers import AutoTokenizer, CLIPModel

        self.device, self.batch_size = torch.device(device), batch_size
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path) if text else None  # a missing one fails when built

    def __call__(self, images: Tensor, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """``cos [B]`` between image i and prompt i, and the scalar ``logit_scale.exp()`` (differentiable in the
        images: a graph is built only when they require a gradient)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        cos = (self.images(images) * self.texts(prompts)).sum(-1)
        return cos, self.model.logit_scale.exp().float().cpu()

    def images(self, images: Tensor) -> Tensor:
        """L2-normalised projected embeddings ``[B, D]`` (float32, CPU) of images ``[B, 3, H, W]`` in [0, 1]."""
        size = self.model.config.vision_config.image_size
        parts = [self._image_features(clip_preprocess(images[i : i + self.batch_size].to(self.device), size))
                 for i in range(0, len(images), self.batch_size)]  # fmt: skip
        return _unit(torch.cat(parts))

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        """L2-normalised projected embeddings ``[B, D]`` (float32, CPU) of texts, each cut to 77 tokens; each distinct
        text is embedded once (a rollout group repeats its prompt and captions)."""
        if self.tokenizer is None:
            raise ValueError("this ClipSimilarity was built for images only (text=False)")
        distinct = list(dict.fromkeys(texts))
        parts = []
        for i in range(0, len(distinct), self.batch_size):
            ids = self.tokenizer(distinct[i : i + self.batch_size], padding="max_length", max_length=77,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)  # fmt: skip
            out = self.model.get_text_features(input_ids=ids)
            parts.append(out if isinstance(out, Tensor) else out.pooler_output)
        where = {t: i for i, t in enumerate(distinct)}
        return _unit(torch.cat(parts))[torch.tensor([where[t] for t in texts])]

    def _image_features(self, pixels: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, Tensor) else out.pooler_output


def _unit(x: Tensor) -> Tensor:
    x = x.float().cpu()
    return x / x.norm(dim=-1, keepdim=True)


__all__ = ["ClipSimilarity"]
