"""Stable Diffusion 3 family as a policy: load the pipeline's components from a diffusers folder and
expose what the trainer needs (prompt encoding, velocity, initial noise, decoding).

The folder has the layout ``StableDiffusion3Pipeline.save_pretrained`` writes: ``transformer/``,
``scheduler/``, ``text_encoder[_2, _3]/`` with ``tokenizer[_2, _3]/`` and, optionally, ``vae/``.
Each component is loaded with its own class's ``from_pretrained``, as the pipeline does. Without a
``vae/`` folder the model works in pixel space: the transformer's channels are RGB in [−1, 1]
(the toy base model). Prompt encoding follows the SD3 pipeline: CLIP penultimate hidden states
concatenated along features and zero-padded to the transformer's ``joint_attention_dim``, then
T5's last hidden state (``max_sequence_length`` tokens, 256 as in the pipeline) appended along
the sequence; pooled CLIP projections concatenated. One difference: for a folder without T5 the
pipeline appends 256 zero tokens, this adapter appends none (the toy base is trained that way).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.samplers import scheduler_sigmas

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

#: attention projections of both MMDiT streams: the LoRA targets of the published SD3.5 and FLUX.1 recipes
ATTENTION_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
_ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))


@FAMILIES.register("StableDiffusion3Pipeline", lora_targets=ATTENTION_TARGETS)
class SD3Policy(FlowModel):
    """An SD3-architecture model ready for RL: ``velocity(x, sigma, cond)`` is the network the
    samplers drive (with guidance when ``cfg_scale > 1``); everything else is frozen plumbing."""

    pipeline_class = "StableDiffusion3Pipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 256,
    ):
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

        require_folder(path, "transformer", "SD3")
        self.path, self.dtype, self.device = path, dtype, torch.device(device)
        self.transformer = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
        self.encoders: list[tuple[Any, Any]] = []
        for enc, tok in _ENCODERS:
            if os.path.isdir(os.path.join(path, enc)):
                self.encoders.append(load_text_encoder(path, enc, tok, dtype))
        if not self.encoders:
            raise FileNotFoundError(f"model path {path!r} has no text_encoder/ folder")
        self.codec = Codec(path, dtype)
        self.vae = self.codec.vae
        freeze(self.transformer, self.vae, *(e for e, _ in self.encoders), device=self.device)
        self.max_sequence_length = max_sequence_length  # T5 tokens, the pipeline's default 256

    # ----------------------------------------------------------------- shapes and schedule
    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of one latent for an image of ``resolution`` pixels (a side or [H, W])."""
        factor = self.codec.factor
        multiple = factor * self.transformer.config.patch_size
        h, w = latent_size(resolution, factor, multiple, "VAE downsampling × patch size")
        return (self.transformer.config.in_channels, h, w)

    def sigmas(self, num_steps: int, resolution: int) -> Tensor:
        """The scheduler's ``[T + 1]`` sigma schedule for ``num_steps`` steps (float64): its own spacing, as the SD3
        pipeline passes no sigma grid (with dynamic shifting, μ from the patch count, as the pipeline)."""
        *_, h, w = self.latent_shape(resolution)
        seq_len = (h // self.transformer.config.patch_size) * (w // self.transformer.config.patch_size)
        return scheduler_sigmas(self.scheduler, num_steps, image_seq_len=seq_len, shift=self.schedule_shift)

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """Encode prompts (``with_negative`` defaults to ``cfg_scale > 1``: also the empty prompt)."""
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        clip_states, pooled, t5 = [], [], None
        for encoder, tokenizer in self.encoders:
            if "T5" in type(encoder).__name__:
                t5 = encoder(token_ids(tokenizer, prompts, self.device, self.max_sequence_length)).last_hidden_state
                continue
            out = encoder(token_ids(tokenizer, prompts, self.device), output_hidden_states=True)
            clip_states.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        states = torch.cat(clip_states, dim=-1)
        width = self.transformer.config.joint_attention_dim
        if states.shape[-1] > width:
            raise ConfigError(f"CLIP hidden sizes sum to {states.shape[-1]} > joint_attention_dim {width}")
        states = torch.nn.functional.pad(states, (0, width - states.shape[-1]))
        if t5 is not None:
            states = torch.cat([states, t5], dim=1)
        return {"embeds": states.to(self.dtype), "pooled": torch.cat(pooled, dim=-1).to(self.dtype)}

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` at states ``x`` and noise levels ``sigma`` (``[B]``), guided when
        ``cfg_scale > 1`` (the conditioning must then carry the negative prompt)."""
        t = (sigma * self.scheduler.config.num_train_timesteps).to(x.dtype)
        return guided(self._forward, x, t, cond, self.cfg_scale)

    def _forward(self, x: Tensor, t: Tensor, parts: dict[str, Tensor]) -> Tensor:
        x_in = x.to(self.dtype)
        out = self.forward_module()(
            hidden_states=x_in,
            # .to: a no-op unless the untrained copy runs another dtype
            encoder_hidden_states=parts["embeds"].to(self.dtype),
            pooled_projections=parts["pooled"].to(self.dtype),
            timestep=t,
            return_dict=False,
        )[0]
        return out.to(x.dtype)


__all__ = ["ATTENTION_TARGETS", "PromptCond", "SD3Policy"]
