"""A learned reward model for the toy world: a small CNN that predicts the toy evaluator's partial score from an image
and its prompt, trained by ``scripts/train_toy_reward.py`` as PickScore is trained on human labels. Unlike the
rule-based evaluator it is differentiable, so direct reward backpropagation (ReFL, DRaFT) can train through it, and,
like any learned reward, it can be hacked: the benchmark trains on it with the evaluator watched.

The prompt enters as an exact, order-aware code (``prompt_code``): for each of up to two clauses, one-hot shape,
colour and count, and the relation; it scales and shifts the image features (FiLM) before pooling.
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

from flowrl.image.toy_world import COLOURS, NUMBERS, RELATIONS, SHAPES, parse_prompt

CLAUSE = len(SHAPES) + len(COLOURS) + len(NUMBERS)
PROMPT_DIM = 2 * CLAUSE + len(RELATIONS)


def prompt_code(text: str) -> Tensor:
    """``[PROMPT_DIM]``: one-hot shape, colour and count of each clause (zeros for a missing second one), then the
    relation (zeros for none). Raises ``ValueError`` for a prompt that is not of the toy world."""
    scene = parse_prompt(text)
    code = torch.zeros(PROMPT_DIM)
    for i, c in enumerate(scene.clauses):
        base = i * CLAUSE
        code[base + SHAPES.index(c.shape)] = 1
        code[base + len(SHAPES) + list(COLOURS).index(c.colour)] = 1
        code[base + len(SHAPES) + len(COLOURS) + list(NUMBERS).index(c.count)] = 1
    if scene.relation is not None:
        code[2 * CLAUSE + RELATIONS.index(scene.relation)] = 1
    return code


class ToyRewardModel(nn.Module):
    """Images ``[B, 3, 32, 32]`` in [0, 1] and prompt codes ``[B, PROMPT_DIM]`` → predicted scores ``[B]``, (0, 1)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.width = width
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU()
        )
        self.film = nn.Linear(PROMPT_DIM, 4 * w)  # a scale and a shift per channel of the 16 × 16 features
        self.body = nn.Sequential(
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(4 * w, 4 * w, 3, padding=1)
        )
        self.head = nn.Sequential(nn.Linear(8 * w + PROMPT_DIM, 4 * w), nn.GELU(), nn.Linear(4 * w, 1))

    def forward(self, images: Tensor, codes: Tensor) -> Tensor:
        h = self.stem(images * 2 - 1)
        scale, shift = self.film(codes).chunk(2, dim=-1)
        h = self.body(h * (1 + scale[..., None, None]) + shift[..., None, None])
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3)), codes], dim=-1)
        return torch.sigmoid(self.head(pooled)).squeeze(-1)


def save_reward_model(model: ToyRewardModel, folder: str) -> None:
    """``model.safetensors`` and ``config.json`` into ``folder``."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"width": model.width, "prompt_dim": PROMPT_DIM, "colours": list(COLOURS)}, f, indent=2)


def load_reward_model(folder: str) -> ToyRewardModel:
    """The model saved in ``folder`` (frozen, eval mode); refuses a folder saved for another toy vocabulary."""
    from safetensors.torch import load_file

    for name in ("config.json", "model.safetensors"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise FileNotFoundError(f"toy reward model folder {folder!r} has no {name} (scripts/train_toy_reward.py)")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if config.get("prompt_dim") != PROMPT_DIM or config.get("colours") != list(COLOURS):
        raise ValueError(f"toy reward model {folder!r} was trained for another toy vocabulary")
    model = ToyRewardModel(int(config["width"]))
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return model.eval().requires_grad_(False)


__all__ = ["PROMPT_DIM", "ToyRewardModel", "load_reward_model", "prompt_code", "save_reward_model"]
