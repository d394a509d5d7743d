"""Plumbing every model family shares: the prompt conditioning record, component loading, per-seed
noise, and the latent ↔ image codec (a VAE, or pixel space when the folder has no ``vae/``).

Prompts longer than a text encoder reads (CLIP: 77 tokens; T5: ``model.max_sequence_length``; the toy model: 16)
are truncated, as the diffusers pipelines do; the first one logs a warning per tokenizer and limit (logger
``flowrl.image.models``) naming the prompt, its length and the limit.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.core.inputs import warn_truncation


@dataclass
class PromptCond:
    """Conditioning rows for the transformer: ``embeds [B, L, D]``; per family also ``pooled [B, P]`` (SD3,
    FLUX.1) or ``mask [B, L]`` (bool, the real tokens of prompts of different lengths); with classifier-free
    guidance the negative prompt's rows under ``neg_*`` (the same keys; their length may differ)."""

    embeds: Tensor
    pooled: Tensor | None = None
    mask: Tensor | None = None
    neg_embeds: Tensor | None = None
    neg_pooled: Tensor | None = None
    neg_mask: Tensor | None = None
    ref: Tensor | None = None  # editing families: each prompt's reference latents [B, C, h', w'] (or packed tokens)
    neg_ref: Tensor | None = None
    ref_shapes: Tensor | None = None  # packed references: each one's patch grid [B, K, 2] (Qwen-Image-Edit)
    neg_ref_shapes: Tensor | None = None
    # FLUX.2 [klein]: ``ref`` holds the references' packed tokens [B, N, C], ``ref_ids`` their position ids [B, N, 4]
    ref_ids: Tensor | None = None
    neg_ref_ids: Tensor | None = None
    # Wan 2.1 image-to-video: CLIP's hidden states of the first frame [B, S, D] (extra cross-attention tokens)
    image_embeds: Tensor | None = None
    neg_image_embeds: Tensor | None = None

    def as_dict(self) -> dict[str, Tensor]:
        """The tensors as a mapping (what the rollout drivers index row by row)."""
        return {k: v for k, v in vars(self).items() if v is not None}


Parts = dict[str, Tensor]  # one prompt set's rows: embeds, and pooled or mask
Encoder = Callable[[list[str]], Parts]
Forward = Callable[[Tensor, Tensor, Parts], Tensor]  # (x, t, parts) -> model output


def encode_prompts(
    encode: Encoder, prompts: list[str], with_negative: bool, cache: PromptCache | None = None, negative: str = ""
) -> PromptCond:
    """``encode(prompts) -> parts``, plus the ``negative`` prompt's rows (repeated per prompt) when asked; through
    ``cache`` when given."""
    if cache is not None:
        encode = cache.wrap(encode)
    cond = PromptCond(**encode(prompts))
    if with_negative:
        for key, row in encode([negative]).items():
            setattr(cond, f"neg_{key}", row.expand(len(prompts), *row.shape[1:]).contiguous())
    return cond


def pad_rows(rows: list[Parts]) -> Parts:
    """Stack single-prompt rows; with a ``mask``, each row's sequences (``embeds`` and ``mask``) are first
    zero-padded on the right to the longest, as the pipelines pad a batch."""
    if "mask" not in rows[0]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    length = max(r["mask"].shape[0] for r in rows)

    def pad(t: Tensor) -> Tensor:
        return torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, length - t.shape[0]))

    return {k: torch.stack([pad(r[k]) if k in ("embeds", "mask") else r[k] for r in rows]) for k in rows[0]}


def trim_row(parts: Parts, i: int) -> Parts:
    """Row ``i`` of a batch's parts, its sequences cut to its own tokens when there is a ``mask``."""
    row = {k: v[i] for k, v in parts.items()}
    if "mask" in row:
        n = int(row["mask"].sum())
        row["embeds"], row["mask"] = row["embeds"][:n], row["mask"][:n]
    return row


class PromptCache:
    """The text encoders' outputs for the last ``size`` distinct prompts (the encoders are frozen, so a
    cached row is exactly what encoding again would give). Wraps an ``Encoder``."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"prompt cache size must be >= 1, got {size}")
        self.size = size
        self.rows: OrderedDict[str, Parts] = OrderedDict()
        self.hits = self.misses = 0

    def wrap(self, encode: Encoder) -> Encoder:
        def cached(prompts: list[str]) -> Parts:
            missing = list(dict.fromkeys(p for p in prompts if p not in self.rows))
            self.misses += len(missing)
            self.hits += len(prompts) - len(missing)
            fresh = {}
            if missing:
                parts = encode(missing)
                fresh = {p: trim_row(parts, i) for i, p in enumerate(missing)}
            rows = [fresh.get(p) or self.rows[p] for p in prompts]
            for p in prompts:  # most recently used last; the oldest go first
                self.rows[p] = fresh.get(p) or self.rows[p]
                self.rows.move_to_end(p)
            while len(self.rows) > self.size:
                self.rows.popitem(last=False)
            return pad_rows(rows)

        return cached


def in_chunks(velocity: Callable[..., Tensor], size: int) -> Callable[..., Tensor]:
    """``velocity(x [B, ...], sigma [B], cond {k: [B, ...]})`` evaluated ``size`` rows at a time (0 = all at
    once): rollouts of G images × P prompts are one batch, more than one forward of a large model can hold."""
    if size <= 0:
        return velocity

    def chunked(x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if x.shape[0] <= size:
            return velocity(x, sigma, cond)
        parts = [
            velocity(x[i : i + size], sigma[i : i + size], {k: c[i : i + size] for k, c in cond.items()})
            for i in range(0, x.shape[0], size)
        ]
        return torch.cat(parts)

    return chunked


def cfg_combine(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance ``u + scale·(c − u)``."""
    return uncond + scale * (cond - uncond)


def guided(
    forward: Forward,
    x: Tensor,
    t: Tensor,
    cond: dict[str, Tensor],
    scale: float | Tensor,
    combine: Callable[[Tensor, Tensor, Any], Tensor] = cfg_combine,
) -> Tensor:
    """``forward(x, t, parts)`` on the prompt's parts, with classifier-free guidance ``combine(u, c, scale)`` when
    ``scale > 1``: one batched pass over the negative and the prompt rows when their shapes agree, else two.
    ``scale`` may be ``[B]``, a scale per row (Wan 2.2's experts guide by their own); rows at 1 or below keep the
    prompt's output, unguided."""
    parts = {k: v for k, v in cond.items() if not k.startswith("neg_")}
    per_row = isinstance(scale, Tensor)
    if bool((scale <= 1).all()) if per_row else scale <= 1:
        return forward(x, t, parts)
    negative = {k[4:]: v for k, v in cond.items() if k.startswith("neg_")}
    if not negative:
        raise ValueError("cfg_scale > 1 needs the negative prompt: encode(..., with_negative=True)")
    if all(negative[k].shape == parts[k].shape for k in parts):
        both = forward(torch.cat([x, x]), torch.cat([t, t]), {k: torch.cat([negative[k], parts[k]]) for k in parts})
        uncond, text = both.chunk(2)
    else:
        uncond, text = forward(x, t, negative), forward(x, t, parts)
    if not per_row:
        return combine(uncond, text, scale)
    s = scale.to(text).view(-1, *([1] * (text.dim() - 1)))
    return torch.where(s > 1, combine(uncond, text, s), text)


def require_folder(path: str, sub: str, layout: str) -> None:
    """Raise ``FileNotFoundError`` naming the model path when ``sub/`` is missing."""
    if not os.path.isdir(os.path.join(path, sub)):
        raise FileNotFoundError(f"model path {path!r} has no {sub}/ folder (expected a diffusers {layout} layout)")


def load_text_encoder(path: str, enc: str, tok: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A text encoder and its tokenizer from ``path/enc`` and ``path/tok``; the class follows the
    config's ``architectures`` (T5 encoder, CLIP text model with or without projection)."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    with open(os.path.join(path, enc, "config.json")) as f:
        arch = json.load(f).get("architectures", [""])[0]
    classes = {"T5EncoderModel": T5EncoderModel, "CLIPTextModel": CLIPTextModel}
    cls = classes.get(arch, T5EncoderModel if arch.startswith("T5") else CLIPTextModelWithProjection)
    model = cls.from_pretrained(path, subfolder=enc, torch_dtype=dtype)
    return model, AutoTokenizer.from_pretrained(path, subfolder=tok)


def token_ids(tokenizer: Any, prompts: list[str], device: torch.device, max_length: int | None = None) -> Tensor:
    """``[B, L]`` ids padded (and truncated) to ``max_length`` (default: the tokenizer's maximum); the first
    truncated prompt of each tokenizer and limit logs a warning."""
    limit = max_length or tokenizer.model_max_length
    warn_truncation(tokenizer, prompts, limit)
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=limit,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)


def read_json(path: str) -> dict | None:
    """A JSON file's mapping, or None when it is missing, unreadable or not a mapping (a folder's optional configs)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def pixel_size(resolution: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` in pixels of ``model.resolution``: one side (a square) or ``[height, width]``."""
    if isinstance(resolution, int):
        return resolution, resolution
    height, width = resolution
    return int(height), int(width)


def latent_size(resolution: int | Sequence[int], factor: int, multiple: int, why: str) -> tuple[int, int]:
    """``(h, w)``: the pixel size of ``resolution`` divided by the VAE's ``factor``, each side checked to be a multiple
    of ``multiple`` pixels (``ConfigError`` naming ``why``: its downsampling times the patch or packing)."""
    height, width = pixel_size(resolution)
    if height % multiple or width % multiple:
        raise ConfigError(f"resolution {resolution} must be a multiple of {multiple} ({why})")
    return height // factor, width // factor


def seeded_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[B, *shape]`` standard normal noise, one generator per seed (reproducible per sample)."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device, dtype)


class Codec:
    """Latents ↔ images. With a VAE: ``z = (mode − shift) · scale`` as the SD3 / FLUX pipelines do;
    without one the latents are the RGB image in [−1, 1] (toy models)."""

    def __init__(self, path: str, dtype: torch.dtype) -> None:
        from diffusers import AutoencoderKL

        has_vae = os.path.isdir(os.path.join(path, "vae"))
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype) if has_vae else None

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def channels(self) -> int:
        """Channels of an unpacked latent."""
        return self.vae.config.latent_channels if self.vae is not None else 3

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1] (float32); differentiable (the VAE is
        frozen: a graph is built only for latents that require a gradient, as direct reward backpropagation's)."""
        if self.vae is None:
            return (latents.float() * 0.5 + 0.5).clamp(0, 1)
        cfg = self.vae.config
        z = latents.to(self.vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        return (self.vae.decode(z, return_dict=False)[0].float() * 0.5 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → latents ``[B, C, h, w]`` (the posterior's mode, scaled)."""
        x = images.to(device, dtype) * 2 - 1
        if self.vae is None:
            return x
        cfg = self.vae.config
        z = self.vae.encode(x).latent_dist.mode()
        return (z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor


def set_attention_backend(transformer: Any, name: str) -> None:
    """Route the transformer's attention through one of diffusers' attention backends (``"flash"``,
    ``"sage"``, ``"_native_cudnn"``, ``"xformers"``, ...). Raises ``ValueError`` naming ``model.attention_backend``
    when the backend is unknown or not installed, or when the model's attention processors ignore the choice
    (SD3's joint processors call PyTorch's SDPA directly; for them only ``"xformers"`` is wired, via diffusers'
    xformers processors)."""
    if not name:
        return
    try:
        transformer.set_attention_backend(name)
        honoured = any(getattr(m, "_attention_backend", None) is not None for m in _processors(transformer))
        if not honoured and name == "xformers":
            transformer.enable_xformers_memory_efficient_attention()
            honoured = True
    except (ValueError, RuntimeError, ImportError, ModuleNotFoundError) as e:
        raise ConfigError(f"model.attention_backend={name!r}: {' '.join(str(e).split())}") from None
    if not honoured:
        raise ConfigError(
            f"model.attention_backend={name!r}: the attention processors of {type(transformer).__name__} do not "
            "use diffusers' attention dispatcher; leave the option empty (PyTorch SDPA) or use 'xformers'"
        )


def _processors(transformer: Any) -> list[Any]:
    return [m.processor for m in transformer.modules() if getattr(m, "processor", None) is not None]


def freeze(*modules: Any, device: torch.device) -> None:
    """Move modules to ``device``, in eval mode, with gradients off (the trainer unfreezes what it trains)."""
    for module in modules:
        if module is not None:
            module.to(device).requires_grad_(False).eval()


__all__ = [
    "Codec",
    "PromptCache",
    "PromptCond",
    "cfg_combine",
    "encode_prompts",
    "freeze",
    "guided",
    "in_chunks",
    "load_text_encoder",
    "pad_rows",
    "require_folder",
    "seeded_noise",
    "set_attention_backend",
    "token_ids",
    "trim_row",
]
