"""Z-Image (``Tongyi-MAI/Z-Image-Turbo`` and the undistilled Z-Image) as a policy: ``ZImagePipeline``'s components
from a diffusers folder, and the pipeline's text encoding, time convention and guidance.

Layout (what ``ZImagePipeline.save_pretrained`` writes): ``transformer/`` (``ZImageTransformer2DModel``),
``scheduler/``, ``text_encoder/`` (Qwen3) with ``tokenizer/``, ``vae/`` (FLUX.1's ``AutoencoderKL``).

- **Prompts.** Each prompt in the tokenizer's chat template (a user turn, generation prompt), padded to
  ``max_sequence_length`` tokens (512); the second-to-last hidden state of the real tokens. The transformer takes a
  list of per-prompt sequences; the adapter keeps them right-padded with a mask and cuts each row to its tokens at
  the transformer.
- **State.** Latents ``[B, 16, H/8, W/8]`` (float32, as the pipeline keeps them), one frame per image for the
  transformer, which patchifies them itself.
- **Time.** The transformer's time runs the other way, 0 = noise and 1 = clean: it gets (1000 − σ·1000)/1000, and
  its output is x0 − ε, so the velocity is its negative.
- **Schedule.** The pipeline's float32 ``linspace(1, 1/T, T)``, shifted by the scheduler (Turbo: a fixed shift 3).
- **Guidance.** ``model.cfg_scale`` = the pipeline's ``guidance_scale`` + 1: the pipeline's pos + s·(pos − neg)
  (guidance when s > 0) is u + (s + 1)·(c − u); the negative prompt's rows run in the same forward call.
  Not reproduced: the pipeline's ``cfg_truncation`` and ``cfg_normalization`` (both off by default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.core.inputs import warn_truncation
from flowrl.samplers import scheduler_sigmas
from flowrl.samplers.schedules import dynamic_shift_mu

from .common import Codec, PromptCond, encode_prompts, freeze, latent_size
from .family import FAMILIES, FlowModel

ATTENTION = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0")


def _text_encoder(path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The Qwen3 text encoder in the class its config names (a causal LM or the bare model)."""
    import transformers

    with open(os.path.join(path, "text_encoder", "config.json")) as f:
        arch = (json.load(f).get("architectures") or ["Qwen3Model"])[0]
    if arch not in ("Qwen3ForCausalLM", "Qwen3Model"):
        raise ConfigError(f"Z-Image text_encoder is a {arch}; expected a Qwen3 model")
    return getattr(transformers, arch).from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)


@FAMILIES.register("ZImagePipeline", lora_targets=ATTENTION)
class ZImagePolicy(FlowModel):
    """A Z-Image model ready for RL; ``velocity(x, sigma, cond)`` is what the samplers drive."""

    pipeline_class = "ZImagePipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 512,
    ):
        from diffusers import ZImageTransformer2DModel
        from transformers import AutoTokenizer

        self._load_base(path, "Z-Image", ZImageTransformer2DModel, dtype, device)
        self.text_encoder = _text_encoder(path, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.codec = Codec(path, dtype)
        self.vae = self.codec.vae
        freeze(self.transformer, self.vae, self.text_encoder, device=self.device)
        self.max_sequence_length = max_sequence_length

    # ----------------------------------------------------------------- shapes and schedule
    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of one latent for an image of ``resolution`` pixels (a side or [H, W])."""
        factor = self.codec.factor
        h, w = latent_size(resolution, factor, 2 * factor, "VAE downsampling × 2×2 patches")
        return (self.transformer.config.in_channels, h, w)

    def sigmas(self, num_steps: int, resolution: int) -> Tensor:
        """The scheduler's ``[T + 1]`` sigmas on the pipeline's float32 grid."""
        *_, h, w = self.latent_shape(resolution)
        grid = torch.linspace(1.0, 1.0 / num_steps, num_steps).tolist()
        mu = dynamic_shift_mu((h // 2) * (w // 2), self.scheduler.config)
        return scheduler_sigmas(self.scheduler, num_steps, shift=self.schedule_shift, grid=grid, mu=mu)

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """``embeds [B, L, D]`` and ``mask [B, L]`` of the prompts' real tokens; the negative's as ``neg_*``."""
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        text = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True, enable_thinking=True)
                for p in prompts]  # fmt: skip
        limit = self.max_sequence_length
        warn_truncation(self.tokenizer, text, limit)
        tokens = self.tokenizer(text, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device).bool()
        hidden = self.text_encoder(
            input_ids=tokens.input_ids.to(self.device), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        length = int(mask.sum(1).max())  # right padding: each row's tokens come first
        return {"embeds": (hidden * mask[..., None])[:, :length].to(self.dtype), "mask": mask[:, :length]}

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` at states ``x`` and noise levels ``sigma`` (``[B]``)."""
        t = (1000 - sigma.float() * 1000) / 1000  # the transformer's time: 0 = noise, 1 = clean

        def rows(prefix: str) -> list[Tensor]:
            embeds, mask = cond[f"{prefix}embeds"], cond[f"{prefix}mask"]
            return [e[: int(m.sum())].to(self.dtype) for e, m in zip(embeds, mask, strict=True)]

        images, captions, times = [x], rows(""), [t]
        if self.cfg_scale > 1:  # one call over the prompts and then the negatives, as the pipeline batches them
            if "neg_embeds" not in cond:
                raise ValueError("cfg_scale > 1 needs the negative prompt: encode(..., with_negative=True)")
            images, captions, times = [x, x], captions + rows("neg_"), [t, t]
        states = list(torch.cat(images).to(self.dtype).unsqueeze(2).unbind(0))
        out = self.forward_module()(states, torch.cat(times), captions, return_dict=False)[0]
        out = torch.stack([o.float() for o in out]).squeeze(2)
        if self.cfg_scale > 1:
            pos, neg = out.chunk(2)
            out = pos + (self.cfg_scale - 1) * (pos - neg)
        return (-out).to(x.dtype)


__all__ = ["ZImagePolicy"]
