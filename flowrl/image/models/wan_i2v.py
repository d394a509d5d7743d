"""Wan 2.1 / 2.2 image-to-video (``WanImageToVideoPipeline``): the Wan text-to-video policy conditioned on each
prompt row's first frame (``image``: one path), built once per row as the pipeline builds it and reused by the whole
group and every step:

- the image, resized to the video's frame size (the pipeline's ``VideoProcessor``), followed by ``F − 1`` black
  frames, through the VAE (the posterior's mode, normalised) gives the condition latent; a mask of ``temporal``
  channels marks the first frame (its latent frame counts ``temporal`` frames); the transformer reads
  ``[noisy latent | mask | condition]`` along the channels;
- Wan 2.1 (a transformer with ``image_dim``): CLIP's penultimate hidden states of the image (the pipeline's
  ``image_encoder`` and ``image_processor``) as extra cross-attention tokens. Its added K/V split assumes a text
  length of 512 tokens (diffusers' ``WanAttnProcessor``), so ``model.max_sequence_length`` must stay 512;
- Wan 2.2 A14B: two experts (boundary 0.9 in the published pipeline), no CLIP.

The frame size is the run's ``model.resolution`` (``frame_size``, set when the policy is built from a config).
Not supported: a last frame (``last_image``, first-and-last-frame models) and Wan 2.2 TI2V-5B (``expand_timesteps``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowrl.core.errors import ConfigError, DataError

from .common import PromptCond, freeze, pixel_size, read_json
from .family import FAMILIES
from .wan import WAN_TARGETS, WanPolicy

I2V_TARGETS = (*WAN_TARGETS, "add_k_proj", "add_v_proj")  # Pref-GRPO's and flow_grpo's Wan lists add the image K/V


@FAMILIES.register(
    "WanImageToVideoPipeline", lora_targets=WAN_TARGETS, half_precision=("bf16",), video=True, inputs=("image",),
    images=(1, 1),
)  # fmt: skip
class WanI2VPolicy(WanPolicy):
    """A Wan image-to-video model ready for RL (module docstring)."""

    pipeline_class = "WanImageToVideoPipeline"
    name = "Wan image-to-video"

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.image_encoder = self.image_processor = None
        if self._expert(True).config.image_dim is not None:  # Wan 2.1: CLIP image tokens
            from transformers import CLIPImageProcessor, CLIPVisionModel

            encoder = CLIPVisionModel.from_pretrained(path, subfolder="image_encoder", torch_dtype=self.dtype)
            self.image_encoder = encoder
            self.image_processor = CLIPImageProcessor.from_pretrained(path, subfolder="image_processor")
            freeze(self.image_encoder, device=self.device)

    @classmethod
    def check_options(cls, path: str, model: Any) -> None:
        """Besides the text-to-video checks: Wan 2.1's image K/V need the 512-token text length."""
        super().check_options(path, model)
        config = read_json(os.path.join(path, "transformer", "config.json")) or {}
        length = getattr(model, "max_sequence_length", 0) or 512
        if config.get("added_kv_proj_dim") and length != 512:
            raise ConfigError(
                f"model.max_sequence_length={length}: {cls.name} (Wan 2.1, CLIP image tokens) splits text from "
                "image tokens at 512 (diffusers' WanAttnProcessor); keep 512"
            )

    # ----------------------------------------------------------------- conditioning
    def condition(
        self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None, with_negative: bool | None = None
    ) -> PromptCond:
        """The prompts' text rows with each row's first-frame condition ``ref [B, temporal + C, F', h, w]`` (and
        ``image_embeds [B, S, D]`` for Wan 2.1); the negative rows share them."""
        if inputs is None or len(inputs) != len(prompts) or any("image" not in row for row in inputs):
            raise DataError(f"{self.name} animates an image: give each prompt its first frame with a .jsonl prompt "
                            'file of rows {"prompt": ..., "image": path}')  # fmt: skip
        paths = [row["image"] if isinstance(row["image"], str) else row["image"][0] for row in inputs]
        cond = self.encode(prompts, with_negative)
        size = self._frame_size()
        made = [self.cached_reference(("wan-i2v", p, size, self.num_frames), lambda p=p: self._first_frame(p, size))
                for p in paths]  # fmt: skip
        cond.ref = torch.cat([m[0] for m in made])
        if self.image_encoder is not None:
            cond.image_embeds = torch.cat([m[1] for m in made])
        if cond.neg_embeds is not None:
            cond.neg_ref, cond.neg_image_embeds = cond.ref, cond.image_embeds
        return cond

    def _frame_size(self) -> tuple[int, int]:
        if self.frame_size is None:
            raise ConfigError(f"{self.name} needs the video's frame size (frame_size = model.resolution)")
        return pixel_size(self.frame_size)

    @torch.no_grad()
    def _first_frame(self, path: str, size: tuple[int, int]) -> tuple[Tensor, Tensor | None]:
        """``([1, temporal + C, F', h, w], [1, S, D] or None)``: the condition latent behind its first-frame mask,
        and CLIP's view of the image (module docstring)."""
        from diffusers.video_processor import VideoProcessor
        from PIL import Image

        with Image.open(path) as opened:
            image = opened.convert("RGB")
        height, width = size
        first = VideoProcessor(vae_scale_factor=self.codec.factor).preprocess(image, height=height, width=width)
        video = torch.zeros(1, self.num_frames, 3, height, width)  # black frames after the first, as the pipeline
        video[:, 0] = first[0].float()
        latent = self.codec.encode(video * 0.5 + 0.5, self.device, self.dtype)  # encode takes [0, 1]
        t, (_, _, frames, h, w) = self.codec.temporal, latent.shape
        mask = torch.zeros(1, t, frames, h, w, dtype=latent.dtype, device=latent.device)
        mask[:, :, 0] = 1  # the first latent frame holds the given frame (counted `temporal` times)
        embeds = None
        if self.image_encoder is not None:
            pixels = self.image_processor(images=np.array(image), return_tensors="pt").pixel_values
            out = self.image_encoder(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
            embeds = out.hidden_states[-2].to(self.dtype)
        return torch.cat([mask, latent], dim=1), embeds

    def model_input(self, x: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """``[noisy latent | mask | condition]`` along the channels, as the pipeline concatenates them."""
        return torch.cat([x, parts["ref"].to(x.dtype)], dim=1)


__all__ = ["I2V_TARGETS", "WanI2VPolicy"]
