"""Qwen-Image (``Qwen/Qwen-Image``, ``Qwen/Qwen-Image-2512``) as a policy: ``QwenImagePipeline``'s components from
a diffusers folder, and the pipeline's text encoding, packing, schedule and guidance.

Layout (what ``QwenImagePipeline.save_pretrained`` writes): ``transformer/`` (``QwenImageTransformer2DModel``),
``scheduler/``, ``text_encoder/`` (``Qwen2_5_VLForConditionalGeneration``) with ``tokenizer/``, and ``vae/``
(``AutoencoderKLQwenImage``, a video VAE: images are one-frame videos).

- **Prompts.** Each prompt is put into the pipeline's system template, encoded by the language model (its last
  hidden state), its template tokens (the first 34) dropped, and the batch right-padded with zeros to its longest
  prompt, with a mask of the real tokens; at most ``max_sequence_length`` tokens (512, as the pipeline). The mask
  reaches the transformer unless every token is real (then None, as the pipeline passes it).
- **State.** The samplers see unpacked latents ``[B, 16, h, w]`` (h = H/8); ``velocity`` packs them into 2×2
  patches ``[B, h·w/4, 64]`` (FLUX.1's packing) with ``img_shapes`` (1, h/2, w/2), and passes the timestep as the
  pipeline does, σ·1000 in the weights' dtype divided by 1000.
- **Schedule.** The pipeline's grid ``linspace(1, 1/T, T)`` shifted by the scheduler with μ from the packed token
  count (or its fixed shift without ``use_dynamic_shifting``) and its terminal stretch (``shift_terminal``).
- **Guidance.** True classifier-free guidance with a negative prompt (``model.negative_prompt``; the model card
  uses " "), two forward passes, and the pipeline's rescaling: ĉ = u + s·(c − u), then ĉ·‖c‖/‖ĉ‖ per packed token.
- **Decoding.** z·std + mean with the VAE's per-channel ``latents_mean`` / ``latents_std``, one frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.core.inputs import warn_truncation

from .common import PromptCond, encode_prompts, freeze, guided
from .family import FAMILIES, FlowModel
from .flux import PackedLatents, pack, unpack
from .sd3 import ATTENTION_TARGETS

TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_TOKENS = 34  # the pipeline's prompt_template_encode_start_idx: template tokens before the prompt
MAX_TOKENS = 1024  # the pipeline's tokenizer_max_length (prompt tokens after the template)


def rescaled_cfg(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Qwen-Image's guidance on packed tokens ``[B, N, D]``: ĉ = u + s·(c − u), rescaled to ‖c‖ per token."""
    combined = uncond + scale * (cond - uncond)
    return combined * (cond.norm(dim=-1, keepdim=True) / combined.norm(dim=-1, keepdim=True))


class QwenCodec:
    """Latents ↔ images through ``AutoencoderKLQwenImage``: z = (mode − mean)/std per channel, one frame."""

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae
        self.mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def channels(self) -> int:
        return self.vae.config.z_dim

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1] (float32)."""
        z = latents.to(self.vae.dtype)[:, :, None]
        z = z * self.std.to(z) + self.mean.to(z)
        return (self.vae.decode(z, return_dict=False)[0][:, :, 0].float() * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → latents ``[B, C, h, w]`` (the posterior's mode, normalised)."""
        x = (images.to(device, dtype) * 2 - 1)[:, :, None]
        z = self.vae.encode(x).latent_dist.mode()
        return ((z - self.mean.to(z)) / self.std.to(z))[:, :, 0]


@FAMILIES.register("QwenImagePipeline", lora_targets=ATTENTION_TARGETS)
class QwenImagePolicy(PackedLatents, FlowModel):
    """A Qwen-Image model ready for RL; ``velocity(x, sigma, cond)`` is what the samplers drive."""

    pipeline_class = "QwenImagePipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 512,
    ):
        from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        if not 1 <= max_sequence_length <= MAX_TOKENS:
            raise ConfigError(f"Qwen-Image reads at most {MAX_TOKENS} prompt tokens; got max_sequence_length "
                             f"{max_sequence_length}")  # fmt: skip
        self._load_base(path, "Qwen-Image", QwenImageTransformer2DModel, dtype, device)
        if self.transformer.config.guidance_embeds:
            raise ConfigError(
                "Qwen-Image transformers with a guidance embedding are not supported (nor run by diffusers)"
            )
        self.text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path, subfolder="text_encoder", torch_dtype=dtype
        )
        self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.codec = QwenCodec(AutoencoderKLQwenImage.from_pretrained(path, subfolder="vae", torch_dtype=dtype))
        self.vae = self.codec.vae
        freeze(self.transformer, self.vae, self.text_encoder, device=self.device)
        self.max_sequence_length = max_sequence_length
        self._check_packing("Qwen-Image")

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """``embeds [B, L, D]`` and ``mask [B, L]`` (bool) of the templated prompts; the negative prompt's rows as
        ``neg_*`` when ``cfg_scale > 1`` (or ``with_negative``)."""
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        text = [TEMPLATE.format(p) for p in prompts]
        warn_truncation(self.tokenizer, text, MAX_TOKENS + TEMPLATE_TOKENS)
        tokens = self.tokenizer(
            text, max_length=MAX_TOKENS + TEMPLATE_TOKENS, padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        out = self.text_encoder(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True
        )
        rows = [
            h[m.bool()][TEMPLATE_TOKENS:] for h, m in zip(out.hidden_states[-1], tokens.attention_mask, strict=True)
        ]
        length = max(r.shape[0] for r in rows)
        embeds = torch.stack([torch.cat([r, r.new_zeros(length - r.shape[0], r.shape[1])]) for r in rows])
        mask = torch.stack([torch.arange(length, device=self.device) < r.shape[0] for r in rows])
        keep = self.max_sequence_length
        return {"embeds": embeds[:, :keep].to(self.dtype), "mask": mask[:, :keep]}

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` at unpacked states ``x`` and noise levels ``sigma`` (``[B]``)."""
        _b, _c, h, w = x.shape
        # the pipeline's timestep: σ·1000 in the weights' dtype, divided by 1000
        t = (sigma.float() * 1000).to(self.dtype) / 1000

        def forward(tokens: Tensor, t: Tensor, parts: dict[str, Tensor]) -> Tensor:
            mask = parts["mask"]
            out = self.forward_module()(
                hidden_states=tokens.to(self.dtype),
                timestep=t,
                encoder_hidden_states=parts["embeds"].to(self.dtype),
                encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                img_shapes=[[(1, h // 2, w // 2)]] * tokens.shape[0],
                return_dict=False,
            )[0]
            return out

        out = guided(forward, pack(x), t, cond, self.cfg_scale, combine=rescaled_cfg)
        return unpack(out, h, w).to(x.dtype)


__all__ = ["TEMPLATE", "QwenCodec", "QwenImagePolicy", "rescaled_cfg"]
