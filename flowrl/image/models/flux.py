"""FLUX.1 as a policy: load ``FluxPipeline``'s components from a diffusers folder and expose the same
interface as ``SD3Policy`` (prompt encoding, velocity, initial noise, decoding).

Layout (what ``FluxPipeline.save_pretrained`` writes): ``transformer/``, ``scheduler/``,
``text_encoder/`` + ``tokenizer/`` (CLIP: its pooled output), ``text_encoder_2/`` + ``tokenizer_2/``
(T5: its last hidden state is the token sequence) and, optionally, ``vae/`` (without one, the latents
are RGB pixels in [−1, 1], for toy models).

The samplers see unpacked latents ``[B, C, h, w]``; packing into 2×2 patches (``[B, h·w/4, 4C]``)
and the position ids happen inside ``velocity``, as in the pipeline. FLUX.1-dev is guidance-distilled:
the guidance scale enters as an embedding (``guidance_scale``, 3.5 by default), not as a second
forward pass. True classifier-free guidance (``cfg_scale > 1``) is available for undistilled models.
The schedule is the pipeline's grid ``linspace(1, 1/T, T)``, shifted by the scheduler (dynamically by the packed
token count, or by its fixed shift).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.samplers import pipeline_grid, scheduler_sigmas

from .common import (
    Codec,
    PromptCond,
    encode_prompts,
    freeze,
    guided,
    latent_size,
    load_text_encoder,
    require_folder,
    token_ids,
)
from .family import FAMILIES, FlowModel
from .sd3 import ATTENTION_TARGETS


def pack(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` → ``[B, (h/2)·(w/2), 4C]``: 2×2 patches, row-major, channels then patch offsets."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of ``pack``: ``[B, (h/2)·(w/2), 4C]`` → ``[B, C, h, w]``."""
    b, _n, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int) -> Tensor:
    """``[(h/2)·(w/2), 3]`` position ids of the packed tokens: (0, row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3)


class PackedLatents:
    """The shape and schedule rules of families whose transformer reads 2×2 patches of the latent as tokens (FLUX.1,
    Qwen-Image): written once here, as their pipelines share them."""

    codec: Any
    transformer: Any
    scheduler: Any
    schedule_shift: float

    def _check_packing(self, family: str) -> None:
        if self.transformer.config.in_channels != 4 * self.codec.channels:
            raise ConfigError(
                f"{family} transformer in_channels={self.transformer.config.in_channels} must be 4 × the latent "
                f"channels ({self.codec.channels}): tokens are 2×2 patches of the latent"
            )

    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of one unpacked latent for an image of ``resolution`` pixels (a side or [H, W])."""
        factor = self.codec.factor
        h, w = latent_size(resolution, factor, 2 * factor, "VAE downsampling × 2×2 packing")
        return (self.codec.channels, h, w)

    def sigmas(self, num_steps: int, resolution: int) -> Tensor:
        """The scheduler's ``[T + 1]`` sigmas on the pipelines' grid ``linspace(1, 1/T, T)``, shifted by the
        scheduler: dynamically by the packed token count, or by its fixed shift (FLUX.1 and Qwen-Image pass the grid
        either way)."""
        *_, h, w = self.latent_shape(resolution)
        seq_len = (h // 2) * (w // 2)
        grid = pipeline_grid(num_steps)
        return scheduler_sigmas(self.scheduler, num_steps, image_seq_len=seq_len, shift=self.schedule_shift, grid=grid)


@FAMILIES.register("FluxPipeline", lora_targets=ATTENTION_TARGETS, half_precision=("bf16",), guidance_embedding=True)
class FluxPolicy(PackedLatents, FlowModel):
    """A FLUX-architecture model ready for RL; ``velocity(x, sigma, cond)`` is what the samplers drive."""

    pipeline_class = "FluxPipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        guidance_scale: float = 3.5,
        max_sequence_length: int = 512,
    ):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        for sub in ("transformer", "scheduler", "text_encoder", "text_encoder_2"):
            require_folder(path, sub, "FLUX")
        self.path, self.dtype, self.device = path, dtype, torch.device(device)
        self.transformer = FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        self.clip, self.clip_tokenizer = load_text_encoder(path, "text_encoder", "tokenizer", dtype)
        self.t5, self.t5_tokenizer = load_text_encoder(path, "text_encoder_2", "tokenizer_2", dtype)
        self.codec = Codec(path, dtype)
        self.vae = self.codec.vae
        freeze(self.transformer, self.vae, self.clip, self.t5, device=self.device)
        self.guidance_scale = guidance_scale
        self.max_sequence_length = max_sequence_length
        self._check_packing("FLUX")

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """T5 sequence ``embeds [B, L, 4096]`` and CLIP ``pooled [B, 768]`` (sizes of FLUX.1); the empty
        prompt as negative when ``cfg_scale > 1`` (or ``with_negative``)."""
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        pooled = self.clip(token_ids(self.clip_tokenizer, prompts, self.device)).pooler_output
        t5_ids = token_ids(self.t5_tokenizer, prompts, self.device, self.max_sequence_length)
        embeds = self.t5(t5_ids).last_hidden_state
        return {"embeds": embeds.to(self.dtype), "pooled": pooled.to(self.dtype)}

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` at unpacked states ``x`` and noise levels ``sigma`` (``[B]``)."""
        return guided(self._forward, x, sigma, cond, self.cfg_scale)

    def _forward(self, x: Tensor, sigma: Tensor, parts: dict[str, Tensor]) -> Tensor:
        embeds, pooled = parts["embeds"], parts["pooled"]
        b, _c, h, w = x.shape
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = self.forward_module()(
            hidden_states=pack(x.to(self.dtype)),
            encoder_hidden_states=embeds.to(self.dtype),  # a no-op unless the untrained copy runs another dtype
            pooled_projections=pooled.to(self.dtype),
            timestep=sigma.to(self.dtype),  # the model multiplies by 1000 itself
            img_ids=image_ids(h, w).to(x.device, self.dtype),
            txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=self.dtype),
            guidance=guidance,
            return_dict=False,
        )[0]
        return unpack(out, h, w).to(x.dtype)


__all__ = ["FluxPolicy", "PackedLatents", "image_ids", "pack", "unpack"]
