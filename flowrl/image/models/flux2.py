"""FLUX.2 [klein] (``black-forest-labs/FLUX.2-klein-4B`` / ``-9B`` and their ``-base`` variants) as a policy:
``Flux2KleinPipeline``'s components from a diffusers folder, and the pipeline's text encoding, packing, schedule and
guidance.

Layout (what ``Flux2KleinPipeline.save_pretrained`` writes): ``transformer/`` (``Flux2Transformer2DModel``),
``scheduler/``, ``text_encoder/`` (Qwen3, a causal language model) with ``tokenizer/``, ``vae/``
(``AutoencoderKLFlux2``); ``model_index.json`` records ``is_distilled`` (the 4-step models, which take no guidance).

- **Prompts.** Each prompt in the tokenizer's chat template (a user turn, generation prompt, thinking off), padded
  to ``max_sequence_length`` tokens (512); the hidden states after decoder layers 9, 18 and 27, concatenated per
  token (``[B, L, 3·hidden]``). No mask reaches the transformer: every position attends, padding included, as in
  the pipeline.
- **State.** The VAE latent's 2×2 patches as channels, ``[B, 4·C, H/16, W/16]``, normalised by the VAE's batch-norm
  statistics (the pipeline's own latent layout); ``velocity`` flattens it into tokens with position ids
  (0, row, column, 0) and text ids (0, 0, 0, l), and passes the timestep as σ·1000 in the weights' dtype / 1000.
- **Schedule.** The pipeline's grid ``linspace(1, 1/T, T)`` shifted with its empirical μ(tokens, T), which depends on
  the step count as well as the image size (a scheduler without ``use_dynamic_shifting``: its fixed shift, on the
  same grid).
- **Guidance.** Classifier-free with the empty prompt (two passes), only for undistilled models: ``model.cfg_scale``
  above 1 on a step-distilled folder (``is_distilled``: FLUX.2-klein-4B / -9B; the ``-base`` models are not) is
  refused when the config is read, from ``model_index.json`` alone (the pipeline would ignore the scale with a logged
  warning, so the run would not do what its record says).
- **Editing** (``Flux2KleinPipeline(image=...)``). The same class edits when each prompt comes with reference images
  (a ``.jsonl`` prompt row's ``image``: one path or a list, at most ``MAX_REFERENCES``); without them it is the
  text-to-image model above, unchanged. ``condition`` prepares each reference as the pipeline does (above 1024²
  pixels shrunk to about that area, LANCZOS; then centre-cropped to multiples of 16 = VAE factor × 2×2 patches),
  encodes it through the VAE (the posterior's mode, patchified, batch-norm normalised: the state's own layout) and
  packs it into tokens with position ids (10 + 10·i, row, column, 0) for the row's i-th image, once per prompt; the
  samplers index them with the text rows, so the whole group and every step reuse them. ``velocity`` appends them
  after the target's tokens and keeps only the target's outputs: only the target is noised, predicted and trained.
  Guidance passes the same references with the negative prompt, as the pipeline does. One batch's rows must have
  equal reference token counts (the rows of a file all have references or none; the config checks that); the
  pipeline's input checks (sides of at least 64 pixels, aspect ratio at most 8) are not applied.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.inputs import warn_truncation
from flowrl.samplers import pipeline_grid, scheduler_sigmas

from .common import PromptCond, encode_prompts, freeze, guided, latent_size
from .family import FAMILIES, FlowModel
from .sd3 import ATTENTION_TARGETS

TEXT_LAYERS = (9, 18, 27)  # the pipeline's text_encoder_out_layers
#: reference images per prompt: Black Forest Labs documents up to 4 for klein 4B / 9B (docs.bfl.ai, "Reference Images
#: per Model"); the diffusers pipeline itself sets no limit
MAX_REFERENCES = 4
REFERENCE_AREA = 1024 * 1024  # the pipeline shrinks a larger reference to about this many pixels


def empirical_mu(tokens: int, num_steps: int) -> float:
    """FLUX.2's shift exponent: linear in the token count, fitted at 10 and 200 steps and interpolated in the step
    count below 4300 tokens (its ``compute_empirical_mu``)."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    at_200 = a2 * tokens + b2
    if tokens > 4300:
        return float(at_200)
    slope = (at_200 - (a1 * tokens + b1)) / 190.0
    return float(slope * num_steps + at_200 - 200.0 * slope)


def is_distilled(path: str) -> bool:
    """Whether the FLUX.2 [klein] folder ``path`` holds a step-distilled model (``is_distilled`` in its
    ``model_index.json``, as ``Flux2KleinPipeline`` registers it; absent means undistilled)."""
    with open(os.path.join(path, "model_index.json"), encoding="utf-8") as f:
        return bool(json.load(f).get("is_distilled", False))


def patchify(z: Tensor) -> Tensor:
    """``[B, C, h, w]`` → ``[B, 4C, h/2, w/2]``: each 2×2 patch's values as channels (C major, then row, column)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(z: Tensor) -> Tensor:
    """Inverse of ``patchify``."""
    b, c4, h, w = z.shape
    return z.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)


class Flux2Codec:
    """Patchified, batch-norm-normalised latents ↔ images through ``AutoencoderKLFlux2``."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae

    @property
    def factor(self) -> int:
        """Pixels per (unpatchified) latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    def _stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        bn = self.vae.bn
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)
        return bn.running_mean.view(1, -1, 1, 1).to(like), std.to(like)

    def decode(self, latents: Tensor) -> Tensor:
        """State ``[B, 4C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1] (float32)."""
        z = latents.to(self.vae.dtype)
        mean, std = self._stats(z)
        image = self.vae.decode(unpatchify(z * std + mean), return_dict=False)[0]
        return (image.float() * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → states ``[B, 4C, h, w]`` (the posterior's mode, normalised)."""
        z = patchify(self.vae.encode(images.to(device, dtype) * 2 - 1).latent_dist.mode())
        mean, std = self._stats(z)
        return (z - mean) / std


def reference_pixels(path: str, multiple: int, area: int | None = None) -> Tensor:
    """``[1, 3, H, W]`` in [0, 1]: the image at ``path`` as ``Flux2KleinPipeline`` prepares a reference: above 1024²
    pixels shrunk to about that area (LANCZOS, aspect kept), then centre-cropped to multiples of ``multiple`` (its
    image processor's ``resize_mode="crop"``), then converted to RGB. ``area`` (``model.reference_size``²): resized
    to about that many pixels instead, up or down."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if width * height > REFERENCE_AREA or area:
            scale = math.sqrt((area or REFERENCE_AREA) / (width * height))
            image = image.resize((int(width * scale), int(height * scale)), Image.Resampling.LANCZOS)
            width, height = image.size
        w, h = width // multiple * multiple, height // multiple * multiple
        if w == 0 or h == 0:
            raise DataError(f"reference image {path!r} ({width}×{height}) is smaller than {multiple} pixels")
        left, top = (width - w) // 2, (height - h) // 2
        pixels = np.asarray(image.crop((left, top, left + w, top + h)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def _ids(rows: int, columns: int, tokens: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Image ids ``[B, rows·columns, 4]`` = (0, row, column, 0) and text ids ``[B, tokens, 4]`` = (0, 0, 0, l)."""
    zero = torch.arange(1)
    image = torch.cartesian_prod(zero, torch.arange(rows), torch.arange(columns), zero)
    text = torch.cartesian_prod(zero, zero, zero, torch.arange(tokens))
    return image.expand(batch, -1, -1).to(device), text.expand(batch, -1, -1).to(device)


@FAMILIES.register(
    "Flux2KleinPipeline",
    lora_targets=(*ATTENTION_TARGETS, "attn.to_qkv_mlp_proj"),
    inputs=("image",),
    images=(0, MAX_REFERENCES),  # optional: without references it generates from text
)
class Flux2KleinPolicy(FlowModel):
    """A FLUX.2 [klein] model ready for RL; ``velocity(x, sigma, cond)`` is what the samplers drive. With reference
    images (``condition``) it edits, as ``Flux2KleinPipeline(image=...)``."""

    pipeline_class = "Flux2KleinPipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 512,
    ):
        from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        self._load_base(path, "FLUX.2 [klein]", Flux2Transformer2DModel, dtype, device)
        self.text_encoder = Qwen3ForCausalLM.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.codec = Flux2Codec(AutoencoderKLFlux2.from_pretrained(path, subfolder="vae", torch_dtype=dtype))
        self.vae = self.codec.vae
        freeze(self.transformer, self.vae, self.text_encoder, device=self.device)
        self.max_sequence_length = max_sequence_length
        self.distilled = is_distilled(path)
        if self.transformer.config.in_channels != 4 * self.codec.channels:
            raise ValueError(
                f"FLUX.2 transformer in_channels={self.transformer.config.in_channels} must be 4 × the latent "
                f"channels ({self.codec.channels}): tokens are 2×2 patches of the latent"
            )
        if self.text_encoder.config.num_hidden_layers < max(TEXT_LAYERS):
            raise ValueError(f"FLUX.2 reads text encoder layers {TEXT_LAYERS}; this one has "
                             f"{self.text_encoder.config.num_hidden_layers}")  # fmt: skip

    @classmethod
    def check_options(cls, path: str, model: Any) -> None:
        """Refuse guidance (``model.cfg_scale > 1``) on a step-distilled folder (``is_distilled`` in its
        ``model_index.json``): it was distilled to sample without it, and its pipeline ignores the scale."""
        if model.cfg_scale > 1 and is_distilled(path):
            raise ConfigError(
                f"model.cfg_scale={model.cfg_scale:g}: {path!r} is a step-distilled FLUX.2 [klein] (is_distilled in "
                "its model_index.json), which samples without guidance; set model.cfg_scale=1 (it is made for 4 "
                "steps: sampler.num_steps=4 eval.num_steps=4), or use an undistilled -base checkpoint"
            )

    # ----------------------------------------------------------------- shapes and schedule
    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, int, int]:
        """Shape ``(4C, h/2, w/2)`` of one patchified latent for an image of ``resolution`` pixels (a side or
        [H, W])."""
        step = 2 * self.codec.factor
        h, w = latent_size(resolution, step, step, "VAE downsampling × 2×2 patches")
        return (self.transformer.config.in_channels, h, w)

    def sigmas(self, num_steps: int, resolution: int) -> Tensor:
        """The scheduler's ``[T + 1]`` sigmas on the pipeline's grid ``linspace(1, 1/T, T)``, shifted by the
        scheduler: with the pipeline's empirical μ under dynamic shifting, else by its fixed shift."""
        *_, h, w = self.latent_shape(resolution)
        mu = empirical_mu(h * w, num_steps)
        grid = pipeline_grid(num_steps)
        return scheduler_sigmas(self.scheduler, num_steps, shift=self.schedule_shift, grid=grid, mu=mu)

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """``embeds [B, L, 3·hidden]``; the negative prompt's rows as ``neg_embeds`` when guiding."""
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        chat = [[{"role": "user", "content": p}] for p in prompts]
        text = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False) for m in chat]  # fmt: skip
        limit = self.max_sequence_length
        warn_truncation(self.tokenizer, text, limit)
        tokens = self.tokenizer(text, return_tensors="pt", padding="max_length", truncation=True, max_length=limit)
        out = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device),
            attention_mask=tokens.attention_mask.to(self.device),
            output_hidden_states=True,
            use_cache=False,
        )
        layers = torch.stack([out.hidden_states[k] for k in TEXT_LAYERS], dim=2)  # [B, L, 3, hidden]
        return {"embeds": layers.flatten(2).to(self.dtype)}

    # ----------------------------------------------------------------- reference images
    @torch.no_grad()
    def condition(
        self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None, with_negative: bool | None = None
    ) -> PromptCond:
        """The prompts' text rows; when the rows have reference images (``inputs[i]["image"]``, a list of paths),
        also ``ref [B, N, 4C]``, their packed tokens, and ``ref_ids [B, N, 4]``, their position ids (the negative's
        rows get the same references, as the pipeline's guidance passes them to both). Without images: ``encode``."""
        cond = self.encode(prompts, with_negative)
        images = [list(row.get("image", ())) for row in inputs or ()]
        if not any(images):
            return cond
        if len(images) != len(prompts) or not all(images):
            raise DataError("FLUX.2 [klein] edits when every prompt of a batch has reference images, and "
                            'generates from text when none has: give every row an "image", or none')  # fmt: skip
        refs = [self.cached_reference(("klein", *paths, self.reference_area), lambda p=paths: self.reference_tokens(p))
                for paths in images]  # fmt: skip
        if len({r[0].shape[1] for r in refs}) > 1:
            sizes = sorted({r[0].shape[1] for r in refs})
            raise DataError(f"the reference images of one batch must give one token count; got {sizes} tokens: give "
                            "the rows the same number of images, of the same sizes")  # fmt: skip
        cond.ref, cond.ref_ids = torch.cat([r[0] for r in refs]), torch.cat([r[1] for r in refs])
        if cond.neg_embeds is not None:
            cond.neg_ref, cond.neg_ref_ids = cond.ref, cond.ref_ids
        return cond

    def reference_tokens(self, paths: Sequence[str]) -> tuple[Tensor, Tensor]:
        """One row's reference images as the pipeline's ``prepare_image_latents`` makes them: tokens ``[1, N, 4C]``
        (each image's normalised, patchified latent, flattened, the images one after another) and their position
        ids ``[1, N, 4]`` = (10 + 10·i, row, column, 0) for image i."""
        if len(paths) > MAX_REFERENCES:
            raise DataError(f"FLUX.2 [klein] takes at most {MAX_REFERENCES} reference images per prompt, got "
                            f"{len(paths)}")  # fmt: skip
        tokens, ids = [], []
        for i, path in enumerate(paths):
            pixels = reference_pixels(path, 2 * self.codec.factor, self.reference_area)
            z = self.codec.encode(pixels, self.device, self.dtype)
            _, c, h, w = z.shape
            tokens.append(z.reshape(1, c, h * w).transpose(1, 2))
            time = torch.tensor([10 + 10 * i])
            ids.append(torch.cartesian_prod(time, torch.arange(h), torch.arange(w), torch.arange(1)))
        return torch.cat(tokens, dim=1), torch.cat(ids)[None].to(self.device)

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, 4C, h, w]`` at patchified states ``x`` and noise levels ``sigma`` (``[B]``), reading the
        reference tokens of ``cond["ref"]`` when there are any (the target's outputs only)."""
        if self.distilled and self.cfg_scale > 1:
            raise ValueError("this FLUX.2 [klein] model is step-distilled (is_distilled): it takes no guidance; "
                             "set model.cfg_scale=1")  # fmt: skip
        b, c, h, w = x.shape
        t = (sigma.float() * 1000).to(self.dtype) / 1000

        def forward(tokens: Tensor, t: Tensor, parts: dict[str, Tensor]) -> Tensor:
            embeds, n = parts["embeds"], tokens.shape[1]
            image_ids, text_ids = _ids(h, w, embeds.shape[1], tokens.shape[0], tokens.device)
            if "ref" in parts:  # the references' tokens after the target's
                tokens = torch.cat([tokens, parts["ref"].to(tokens.dtype)], dim=1)
                image_ids = torch.cat([image_ids, parts["ref_ids"].to(image_ids)], dim=1)
            return self.forward_module()(
                hidden_states=tokens.to(self.dtype),
                timestep=t,
                guidance=None,
                encoder_hidden_states=embeds.to(self.dtype),
                txt_ids=text_ids,
                img_ids=image_ids,
                return_dict=False,
            )[0][:, :n]

        out = guided(forward, x.reshape(b, c, h * w).transpose(1, 2), t, cond, self.cfg_scale)
        return out.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)


__all__ = [
    "MAX_REFERENCES",
    "Flux2Codec",
    "Flux2KleinPolicy",
    "empirical_mu",
    "is_distilled",
    "patchify",
    "reference_pixels",
    "unpatchify",
]
