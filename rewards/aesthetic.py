"""LAION aesthetic predictor v2: a linear MLP head on the L2-normalised CLIP ViT-L/14 image embedding.

Checkpoints: a CLIP vision tower with projection in transformers layout (``clip_path``, e.g. a local
copy of openai/clip-vit-large-patch14) and the head's state dict (``head_path``, e.g.
``sac+logos+ava1-l14-linearMSE.pth``: keys ``layers.{0,2,4,6,7}``; 768 → 1024 → 128 → 64 → 16 → 1,
dropout between the first four, no activations). Scores are roughly 1-10 (typically 4-7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import REWARDS, RewardFn
from .preprocess import clip_preprocess

HEAD_LAYERS = (0, 2, 4, 6, 7)


class AestheticHead(nn.Module):
    """The MLP with the published module indices (``layers.{0,2,4,6,7}`` are the linear layers)."""

    def __init__(self, sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for k, (out_dim, in_dim) in enumerate(sizes):
            mods.append(nn.Linear(in_dim, out_dim))
            if k < 3:
                mods.append(nn.Dropout(0.2 if k < 2 else 0.1))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def aesthetic_head(state: dict[str, Tensor]) -> AestheticHead:
    """The head loaded from ``state`` (layer sizes read from the weights)."""
    missing = [f"layers.{i}.{p}" for i in HEAD_LAYERS for p in ("weight", "bias") if f"layers.{i}.{p}" not in state]
    if missing:
        raise ValueError(f"aesthetic head state dict lacks {', '.join(missing)}")
    head = AestheticHead([tuple(state[f"layers.{i}.weight"].shape) for i in HEAD_LAYERS])
    head.load_state_dict(state)
    return head.eval()


class Aesthetic:
    """``reward(images, prompts)`` → ``{"score": [B]}``; prompts are ignored."""

    def __init__(self, clip_path: str, head_path: str, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import CLIPVisionModelWithProjection

        self.device, self.batch_size = torch.device(device), batch_size
        self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_path).to(self.device).eval()
        self.clip.requires_grad_(False)
        state = torch.load(head_path, map_location="cpu", weights_only=True)
        self.head = aesthetic_head(state).to(self.device).requires_grad_(False)
        dim = self.clip.config.projection_dim
        if self.head.layers[0].in_features != dim:
            raise ValueError(
                f"aesthetic head expects {self.head.layers[0].in_features}-d embeddings, CLIP projects to {dim}"
            )

    def score_pixels(self, pixel_values: Tensor) -> Tensor:
        """Scores ``[B]`` of already preprocessed ``pixel_values`` ``[B, 3, 224, 224]``."""
        emb = self.clip(pixel_values=pixel_values.to(self.device)).image_embeds
        return self.head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1).float().cpu()

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        size = self.clip.config.image_size
        chunks = [
            self.score_pixels(clip_preprocess(images[i : i + self.batch_size].to(self.device), size))
            for i in range(0, len(images), self.batch_size)
        ]
        return {"score": torch.cat(chunks)}


@REWARDS.register("aesthetic", differentiable=True)
def aesthetic(clip_path: str, head_path: str, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """LAION aesthetic v2 score (see the module docstring for the checkpoints)."""
    return Aesthetic(clip_path, head_path, device, batch_size)
