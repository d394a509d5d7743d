"""ImageReward (THUDM): BLIP's ViT image encoder, a BERT text encoder that cross-attends to the image, and an MLP.

Checkpoints: ``ImageReward.pt`` (a plain state dict, loaded with ``weights_only=True``) and ``med_config.json``
(the text encoder's BERT config). The published key layout is mapped onto transformers' own BLIP modules:

- ``blip.visual_encoder.*``: BLIP's timm-style ViT (ViT-L/16 at 224) → ``BlipVisionModel`` (LayerNorm eps 1e-6).
- ``blip.text_encoder.*``: BLIP's "med" BERT, every layer with cross-attention → ``BlipTextModel`` (same names).
- ``mlp.layers.{0,2,4,6,7}``: 768 → 1024 → 128 → 64 → 16 → 1, no activations (the aesthetic head's layout).

Score: the prompt (bert-base-uncased + ``[DEC]``/``[ENC]``, padded/truncated to 35 tokens, ``[CLS]`` kept first)
attends to all image tokens; its position-0 output goes through the MLP, then ``(r − 0.16717) / 1.03334`` so that
scores are roughly standard normal. Preprocessing: CLIP's (shortest side 224 bicubic, centre crop, OpenAI mean/std).
The ``image-reward`` package itself cannot be used (it does not import with transformers 5).
"""

from __future__ import annotations

import json
import math

import torch
from torch import Tensor

from .aesthetic import HEAD_LAYERS, AestheticHead
from .base import REWARDS, RewardFn
from .preprocess import clip_preprocess

# ImageReward's published reward statistics (class attributes in THUDM's code, not part of the state dict).
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
PROMPT_TOKENS = 35
VISION_HEAD_DIM = 64  # BLIP's ViT-B (768/12) and ViT-L (1024/16) both use 64-wide heads; shapes don't store it

VISION, TEXT, HEAD = "blip.visual_encoder.", "blip.text_encoder.", "mlp."
# Saved with the model but unused by the score: BLIP's contrastive projections and the text position-id buffer.
IGNORED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def vision_key_map(depth: int) -> dict[str, str]:
    """Published ViT names (without ``blip.visual_encoder.``) → ``BlipVisionModel`` names, for ``depth`` blocks."""
    names = {
        "cls_token": "embeddings.class_embedding",
        "pos_embed": "embeddings.position_embedding",
        "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
        "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
        "norm.weight": "post_layernorm.weight",
        "norm.bias": "post_layernorm.bias",
    }
    block = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
             "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # fmt: skip
    for i in range(depth):
        for old, new in block.items():
            for p in ("weight", "bias"):
                names[f"blocks.{i}.{old}.{p}"] = f"encoder.layers.{i}.{new}.{p}"
    return names


class ImageReward:
    """``reward(images [B, 3, H, W] in [0, 1], prompts)`` → ``{"score": [B]}``."""

    def __init__(
        self,
        checkpoint: str,
        med_config: str,
        tokenizer: str = "bert-base-uncased",
        device: str = "cpu",
        batch_size: int = 32,
    ) -> None:
        from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        self.device, self.batch_size = torch.device(device), batch_size
        state = dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        # A re-saved model may carry the statistics as buffers; they then take precedence over the published ones.
        self.mean = float(state.pop("mean", REWARD_MEAN))
        self.std = float(state.pop("std", REWARD_STD))
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED)}
        shape_keys = [VISION + "patch_embed.proj.weight", VISION + "pos_embed", VISION + "blocks.0.mlp.fc1.weight"]
        shape_keys += [f"{HEAD}layers.{i}.weight" for i in HEAD_LAYERS]
        _check_keys(checkpoint, set(shape_keys) - set(state), set())

        # Sizes come from the weights (the published model is ViT-L/16 at 224); the text side from med_config.
        patch = state[VISION + "patch_embed.proj.weight"]
        width, patch_size = patch.shape[0], patch.shape[-1]
        depth = len({k.split(".")[3] for k in state if k.startswith(VISION + "blocks.")})
        self.image_size = math.isqrt(state[VISION + "pos_embed"].shape[1] - 1) * patch_size
        self.vision = BlipVisionModel(BlipVisionConfig(
            hidden_size=width, intermediate_size=state[VISION + "blocks.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=depth, num_attention_heads=max(1, width // VISION_HEAD_DIM), image_size=self.image_size,
            patch_size=patch_size, layer_norm_eps=1e-6, hidden_act="gelu",
        ))  # fmt: skip
        with open(med_config) as f:
            med = json.load(f)
        # BLIP overrides the file's ``encoder_width`` with the ViT width (the repo's copy says 768; ViT-L is 1024).
        self.text = BlipTextModel(BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=width,
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
            pad_token_id=med.get("pad_token_id", 0), bos_token_id=None, sep_token_id=None,
            is_decoder=True,  # builds the cross-attention; the forward still runs bidirectionally (is_decoder=False)
        ), add_pooling_layer=False)  # fmt: skip
        self.head = AestheticHead([tuple(state[f"{HEAD}layers.{i}.weight"].shape) for i in HEAD_LAYERS])

        to_vision = {VISION + k: v for k, v in vision_key_map(depth).items()}
        expected = (
            set(to_vision) | {TEXT + k for k in self.text.state_dict()} | {HEAD + k for k in self.head.state_dict()}
        )
        _check_keys(checkpoint, expected - set(state), set(state) - expected)
        self.vision.load_state_dict({new: state[old] for old, new in to_vision.items()})
        self.text.load_state_dict({k[len(TEXT) :]: v for k, v in state.items() if k.startswith(TEXT)})
        self.head.load_state_dict({k[len(HEAD) :]: v for k, v in state.items() if k.startswith(HEAD)})
        for module in (self.vision, self.text, self.head):
            module.to(self.device).eval().requires_grad_(False)

        self.tokenizer = BertTokenizer.from_pretrained(tokenizer)
        # BLIP's two extra tokens (ids 30522, 30523 with the real vocabulary); the score itself keeps [CLS] first.
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > med["vocab_size"]:
            raise ValueError(
                f"tokenizer {tokenizer!r} has {len(self.tokenizer)} tokens; {med_config!r} allows {med['vocab_size']}"
            )

    def preprocess(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] → normalised ``[B, 3, S, S]`` (S = 224 for the published model)."""
        return clip_preprocess(images.to(self.device), self.image_size)

    def score_pixels(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Scores ``[B]`` of preprocessed ``pixel_values`` ``[B, 3, S, S]`` and token ids / mask ``[B, T]``."""
        image = self.vision(pixel_values=pixel_values.to(self.device)).last_hidden_state  # [B, 1 + patches, width]
        text = self.text(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            encoder_hidden_states=image,
            encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=self.device),
        ).last_hidden_state
        raw = self.head(text[:, 0]).squeeze(-1)
        return ((raw - self.mean) / self.std).float().cpu()

    def __call__(self, images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores = []
        for i in range(0, len(images), self.batch_size):
            chunk = list(prompts[i : i + self.batch_size])
            tokens = self.tokenizer(
                chunk, padding="max_length", truncation=True, max_length=PROMPT_TOKENS, return_tensors="pt"
            )
            pixels = self.preprocess(images[i : i + self.batch_size])
            scores.append(self.score_pixels(pixels, tokens.input_ids, tokens.attention_mask))
        return {"score": torch.cat(scores)}


def _check_keys(path: str, missing: set[str], unexpected: set[str]) -> None:
    """Raise one ``ValueError`` naming the checkpoint and every missing / unexpected key."""
    found = {"missing": missing, "unexpected": unexpected}
    problems = [f"{what} keys: {', '.join(sorted(keys))}" for what, keys in found.items() if keys]
    if problems:
        raise ValueError(
            f"ImageReward checkpoint {path!r} does not match the published layout; " + "; ".join(problems)
        )


@REWARDS.register("imagereward", differentiable=True)
def imagereward(
    checkpoint: str,
    med_config: str,
    tokenizer: str = "bert-base-uncased",
    device: str = "cpu",
    batch_size: int = 32,
) -> RewardFn:
    """ImageReward v1.0 preference score (≈ N(0, 1); see the module docstring for the checkpoints)."""
    return ImageReward(checkpoint, med_config, tokenizer, device, batch_size)
