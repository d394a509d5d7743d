"""FLUX.1-Kontext as a policy: instruction-based editing on the FLUX.1 architecture (``FluxKontextPipeline``'s
folder layout, the same components as ``FluxPipeline``'s).

Each prompt comes with one reference image (the ``image`` of a ``.jsonl`` prompt row). ``condition`` encodes it
once per prompt through the VAE, as the pipeline does (the posterior's mode, shifted and scaled); the samplers then
index it with the text rows, so the whole group and every denoising step reuse it. In ``velocity`` its 2×2 patches
are concatenated after the noisy target's tokens, with position ids whose first coordinate is 1 (the target's is
0), and only the target's tokens of the output are kept: only the target is noised, predicted and trained.

The reference is resized as the pipeline does with ``_auto_resize=False``: to its own size rounded down to a
multiple of 16 (VAE factor × 2×2 packing); with ``model.reference_size``, first to about that side² pixels. The
pipeline's default instead picks the closest of its preferred resolutions (about 1 megapixel), which a reference of
that size already is; prepare the references at the size to train on, or set ``model.reference_size`` (the
references of one batch must share a size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowrl.core.errors import ConfigError, DataError

from .common import PromptCond, guided
from .family import FAMILIES
from .flux import FluxPolicy, image_ids, pack, unpack
from .sd3 import ATTENTION_TARGETS


@FAMILIES.register(
    "FluxKontextPipeline",
    lora_targets=ATTENTION_TARGETS,
    half_precision=("bf16",),
    guidance_embedding=True,
    inputs=("image",),
    images=(1, 1),
)
class FluxKontextPolicy(FluxPolicy):
    """A FLUX.1-Kontext model ready for RL: ``condition`` adds each prompt's reference latents; ``velocity`` reads
    them as extra tokens."""

    pipeline_class = "FluxKontextPipeline"

    @torch.no_grad()
    def condition(
        self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None, with_negative: bool | None = None
    ) -> PromptCond:
        """The prompts' text rows plus ``ref [B, C, h', w']``: each prompt's reference image through the VAE (the
        negative's rows get the same reference, as the pipeline's true CFG passes the image to both)."""
        if inputs is None or len(inputs) != len(prompts) or any("image" not in row for row in inputs):
            raise DataError("FLUX.1-Kontext edits an image: give each prompt one with a .jsonl prompt file of rows "
                            '{"prompt": ..., "image": path}')  # fmt: skip
        cond = self.encode(prompts, with_negative)
        refs = [self.cached_reference(("kontext", *row["image"], self.reference_area),
                                      lambda r=row: self.reference_latents(r["image"])) for row in inputs]  # fmt: skip
        if len({tuple(r.shape) for r in refs}) > 1:
            sizes = sorted({tuple(r.shape[-2:]) for r in refs})
            raise DataError(f"the reference images of one batch must have one size after resizing; got latents of "
                            f"{sizes}: resize the images to one size")  # fmt: skip
        cond.ref = torch.cat(refs)
        if cond.neg_embeds is not None:
            cond.neg_ref = cond.ref
        return cond

    def reference_latents(self, paths: Sequence[str]) -> Tensor:
        """``[1, C, h', w']`` latents of a row's one reference image, resized as the pipeline resizes it."""
        from PIL import Image

        if len(paths) != 1:
            raise DataError(f"FLUX.1-Kontext takes one reference image per prompt, got {len(paths)}")
        with Image.open(paths[0]) as image:
            image = image.convert("RGB")
            multiple, (width, height) = self.codec.factor * 2, image.size
            if self.reference_area:  # model.reference_size: about that many pixels, aspect kept
                width, height = (
                    round(math.sqrt(self.reference_area * width / height)),
                    round(math.sqrt(self.reference_area * height / width)),
                )
            width, height = width // multiple * multiple, height // multiple * multiple
            if width < multiple or height < multiple:
                raise DataError(f"reference image {paths[0]!r} is smaller than {multiple} pixels")
            pixels = image.resize((width, height), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.codec.encode(x[None], self.device, self.dtype)

    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` of the target at states ``x``, reading the reference tokens of ``cond["ref"]``."""
        if "ref" not in cond:
            raise ConfigError("FLUX.1-Kontext's velocity needs the reference latents: condition(), not encode()")
        return guided(self._forward, x, sigma, cond, self.cfg_scale)

    def _forward(self, x: Tensor, sigma: Tensor, parts: dict[str, Tensor]) -> Tensor:
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((x.shape[0],), self.guidance_scale, device=x.device, dtype=torch.float32)
        out = forward_with_reference(
            self.forward_module(),
            x.to(self.dtype),
            parts["ref"].to(self.dtype),
            sigma.to(self.dtype),  # the model multiplies by 1000 itself
            parts["embeds"].to(self.dtype),  # a no-op unless the untrained copy runs another dtype
            parts["pooled"].to(self.dtype),
            guidance,
        )
        return out.to(x.dtype)


def forward_with_reference(
    net: Any, x: Tensor, ref: Tensor, sigma: Tensor, embeds: Tensor, pooled: Tensor, guidance: Tensor | None = None
) -> Tensor:
    """A Kontext transformer's output ``[B, C, h, w]`` for target states ``x`` with reference latents ``ref``
    ``[B, C, h', w']`` read as extra tokens: the reference's 2×2 patches after the target's, position ids
    (1, row, column) against the target's (0, row, column), only the target's tokens kept. The policy and the toy
    base's pretraining (``scripts/pretrain_toy_edit.py``) both run it."""
    h, w = x.shape[-2:]
    ref_ids = image_ids(*ref.shape[-2:])
    ref_ids[:, 0] = 1
    tokens = pack(x)
    out = net(
        hidden_states=torch.cat([tokens, pack(ref)], dim=1),
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=sigma,
        img_ids=torch.cat([image_ids(h, w), ref_ids]).to(x.device, x.dtype),
        txt_ids=torch.zeros(embeds.shape[1], 3, device=x.device, dtype=x.dtype),
        guidance=guidance,
        return_dict=False,
    )[0]
    return unpack(out[:, : tokens.shape[1]], h, w)


__all__ = ["FluxKontextPolicy", "forward_with_reference"]
