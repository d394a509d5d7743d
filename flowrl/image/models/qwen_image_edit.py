"""Qwen-Image-Edit (``Qwen/Qwen-Image-Edit``: ``QwenImageEditPipeline``, one reference image per prompt) and
Qwen-Image-Edit-2509/2511 (``QwenImageEditPlusPipeline``, one to ``MAX_IMAGES`` references per prompt) as policies:
instruction-based editing on the Qwen-Image architecture (``flowrl.image.models.qwen_image``: the same transformer,
VAE, packing, schedule and rescaled true CFG).

Layout (what the pipelines' ``save_pretrained`` writes): Qwen-Image's ``transformer/``, ``scheduler/``,
``text_encoder/`` (``Qwen2_5_VLForConditionalGeneration``, whose vision tower now reads the references),
``tokenizer/`` and ``vae/``, plus ``processor/`` (``Qwen2VLProcessor``: the image processor that cuts a reference
into the vision tower's patches and the tokenizer with the vision tokens).

- **References.** The ``image`` of each ``.jsonl`` prompt row (a path or a list of paths). ``condition`` reads them
  once per prompt, and the samplers index the rows, so a prompt's whole group and every denoising step reuse them.
- **Text and vision.** The instruction goes into the pipelines' edit template with each reference's vision tokens
  before it (Plus: ``"Picture k: <vision tokens>"`` per reference), the processor expands them into the image's
  patch tokens, and the language model's last hidden state is kept without the template's first 64 tokens
  (``prompt_template_encode_start_idx``). The vision-language view of a reference is the image resized, with
  Lanczos, to about ``vae_area`` pixels (``model.reference_size``²; Qwen-Image-Edit: the VAE's own size, as the
  pipeline's one-image call passes it; when that pipeline gets a list of images it hands the processor the images
  at their stored size, a quirk not copied) or to about ``condition_area`` pixels (Plus: 384², as its pipeline).
  The negative prompt is encoded with the same references (the pipelines' true CFG passes them to both). Since
  the encoding depends on the images, the prompt cache (``model.prompt_cache``) is keyed by the text and the image
  paths.
- **Reference latents.** Each reference resized to about ``vae_area`` pixels (1024², the pipelines', or
  ``model.reference_size``²; sides multiples of 32, its aspect ratio kept), through the VAE as ``QwenCodec``
  encodes (the posterior's mode, normalised), packed into 2×2 patches and concatenated after the target's tokens;
  ``img_shapes`` lists the target's and each reference's patch grid, and only the target's tokens of the output are
  kept. The rows hold them packed:
  ``ref [B, N, 4C]`` (zero-padded to the longest row) with ``ref_shapes [B, K, 2]`` (each reference's patch rows
  and columns, zeros for a row with fewer references). The transformer's rotary positions follow the first row's
  ``img_shapes``, so rows whose references differ in number or size go through separate forward passes.
- **Prompt length.** The pipelines never truncate; ``max_sequence_length`` (512) caps the instruction's own tokens
  (with a warning), never the vision tokens.

Flow-GRPO's Qwen-Image-Edit(-Plus) training resizes references to 512² (``calculate_dimensions(512 * 512, ...)``
in its pipeline copy); ``model.reference_size`` trains at another size (the Plus vision-language view stays 384²).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.inputs import warn_truncation

from .common import PromptCond, guided, pad_rows, require_folder
from .family import FAMILIES
from .flux import pack, unpack
from .qwen_image import QwenImagePolicy, rescaled_cfg
from .sd3 import ATTENTION_TARGETS

EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
EDIT_TEMPLATE_TOKENS = 64  # the pipelines' prompt_template_encode_start_idx
VISION = "<|vision_start|><|image_pad|><|vision_end|>"  # one reference's place; the processor expands the pad
PICTURE = "Picture {}: " + VISION  # the Plus pipeline's prefix per reference
MAX_IMAGES = 3  # Qwen-Image-Edit-2509's model card: multi-image editing works best with 1 to 3 inputs
VAE_AREA = 1024 * 1024  # the pipelines' VAE_IMAGE_SIZE: pixels of a reference's VAE view
CONDITION_AREA = 384 * 384  # the Plus pipeline's CONDITION_IMAGE_SIZE: pixels of its vision-language view


def area_size(area: int, width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of about ``area`` pixels with the aspect ratio of ``width × height``, each side rounded to
    a multiple of 32 (the pipelines' ``calculate_dimensions``)."""
    ratio = width / height
    new_width = math.sqrt(area * ratio)
    return round(new_width / 32) * 32, round(new_width / ratio / 32) * 32


def open_resized(path: str, area: int) -> Any:
    """The RGB image at ``path`` resized with Lanczos to about ``area`` pixels (``area_size``), as a PIL image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except OSError as e:
        raise DataError(f"reference image {path!r} cannot be read: {e}") from None
    width, height = area_size(area, *image.size)
    if width < 32 or height < 32:
        raise DataError(f"reference image {path!r} ({image.size[0]}×{image.size[1]}) is too elongated to resize")
    return image.resize((width, height), Image.Resampling.LANCZOS)


@FAMILIES.register("QwenImageEditPipeline", lora_targets=ATTENTION_TARGETS, inputs=("image",), images=(1, 1))
class QwenImageEditPolicy(QwenImagePolicy):
    """A Qwen-Image-Edit model ready for RL: ``condition`` encodes each instruction with its reference and adds the
    reference's latents; ``velocity`` reads them as extra tokens."""

    pipeline_class = "QwenImageEditPipeline"
    name = "Qwen-Image-Edit"
    max_images = 1
    vae_area = VAE_AREA  # pixels of a reference's VAE view (about; sides multiples of 32)
    condition_area: int | None = None  # pixels of its vision-language view; None: the VAE view

    def __init__(self, path: str, **options: Any) -> None:
        from transformers import Qwen2VLProcessor

        require_folder(path, "processor", self.name)
        super().__init__(path, **options)
        self.processor = Qwen2VLProcessor.from_pretrained(path, subfolder="processor")

    # ----------------------------------------------------------------- conditioning
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """Not available: the instruction is encoded with its reference images (``condition``)."""
        raise DataError(f"{self.name} encodes each instruction with its reference image: use condition(prompts, "
                        "inputs) with rows {'image': [path, ...]}")  # fmt: skip

    @torch.no_grad()
    def condition(
        self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None, with_negative: bool | None = None
    ) -> PromptCond:
        """The rows of ``prompts`` with their references: ``embeds [B, L, D]`` and ``mask [B, L]`` of the instruction
        with the references' vision tokens, ``ref [B, N, 4C]`` and ``ref_shapes [B, K, 2]`` (module docstring); the
        negative prompt's rows (``neg_*``, the same references) when ``cfg_scale > 1`` (or ``with_negative``)."""
        paths = self._reference_paths(prompts, inputs)
        negative = self.cfg_scale > 1 if with_negative is None else with_negative
        encode = self.prompt_cache.wrap(self._encode_keys) if self.prompt_cache is not None else self._encode_keys
        cond = PromptCond(**encode([json.dumps([p, list(ps)]) for p, ps in zip(prompts, paths, strict=True)]))
        cond.ref, cond.ref_shapes = self.reference_tokens(paths)
        if negative:
            rows = encode([json.dumps([self.negative_prompt, list(ps)]) for ps in paths])
            cond.neg_embeds, cond.neg_mask = rows["embeds"], rows["mask"]
            cond.neg_ref, cond.neg_ref_shapes = cond.ref, cond.ref_shapes
        return cond

    def _reference_paths(self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None) -> list[list[str]]:
        """Each prompt's reference paths, their count checked (``DataError``)."""
        if inputs is None or len(inputs) != len(prompts) or any("image" not in row for row in inputs):
            raise DataError(f"{self.name} edits images: give each prompt its reference with a .jsonl prompt file of "
                            'rows {"prompt": ..., "image": path}')  # fmt: skip
        paths = [[row["image"]] if isinstance(row["image"], str) else list(row["image"]) for row in inputs]
        for prompt, ps in zip(prompts, paths, strict=True):
            if not 1 <= len(ps) <= self.max_images:
                count = "one reference image" if self.max_images == 1 else f"1 to {self.max_images} reference images"
                raise DataError(f"{self.name} takes {count} per prompt; {prompt!r} has {len(ps)}")
        return paths

    def _template(self, text: str, images: int) -> str:
        """The templated instruction with ``images`` references' vision tokens before it."""
        return EDIT_TEMPLATE.format(VISION + text)

    def _encode_keys(self, keys: list[str]) -> dict[str, Tensor]:
        """``embeds [B, L, D]`` and ``mask [B, L]`` of rows keyed ``json.dumps([text, paths])``: the templated text
        with its references' vision tokens through Qwen2.5-VL, the template's first 64 tokens dropped, right-padded."""
        rows = [json.loads(key) for key in keys]
        texts = [self._capped(text) for text, _ in rows]
        area = self.condition_area or self.reference_area or self.vae_area
        images = [open_resized(p, area) for _, ps in rows for p in ps]
        model_inputs = self.processor(
            text=[self._template(t, len(ps)) for t, (_, ps) in zip(texts, rows, strict=True)],
            images=images,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        out = self.text_encoder(
            input_ids=model_inputs["input_ids"],
            attention_mask=model_inputs["attention_mask"],
            pixel_values=model_inputs["pixel_values"],
            image_grid_thw=model_inputs["image_grid_thw"],
            output_hidden_states=True,
        )
        hidden, real = out.hidden_states[-1], model_inputs["attention_mask"].bool()
        embeds = [h[m][EDIT_TEMPLATE_TOKENS:].to(self.dtype) for h, m in zip(hidden, real, strict=True)]
        return pad_rows([{"embeds": e, "mask": torch.ones(e.shape[0], dtype=torch.bool, device=e.device)}
                         for e in embeds])  # fmt: skip

    def _capped(self, text: str) -> str:
        """``text`` cut to ``max_sequence_length`` tokens (the first cut logs a warning)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_sequence_length:
            return text
        warn_truncation(self.tokenizer, [text], self.max_sequence_length, f"{self.name} (model.max_sequence_length)")
        return self.tokenizer.decode(ids[: self.max_sequence_length])

    def reference_tokens(self, paths: list[list[str]]) -> tuple[Tensor, Tensor]:
        """``ref [B, N, 4C]``: each row's references through the VAE, packed and concatenated (zero-padded to the
        longest row); ``ref_shapes [B, K, 2]`` (long, kept on the CPU: every forward reads the layout from it, which on
        an accelerator would wait for the device each step): each reference's packed rows and columns (zeros: none)."""
        rows, shapes = [], torch.zeros(len(paths), max(len(ps) for ps in paths), 2, dtype=torch.long)
        for i, ps in enumerate(paths):
            tokens = []
            for k, path in enumerate(ps):
                area = self.reference_area or self.vae_area
                z = self.cached_reference(("qwen-edit", path, area), lambda p=path, a=area: self._latents(p, a))
                shapes[i, k] = torch.tensor([z.shape[-2] // 2, z.shape[-1] // 2])
                tokens.append(pack(z)[0])
            rows.append(torch.cat(tokens))
        length = max(r.shape[0] for r in rows)
        ref = torch.stack([torch.nn.functional.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])
        return ref, shapes

    def _latents(self, path: str, area: int) -> Tensor:
        """``[1, C, h', w']``: the reference at ``path`` resized to about ``area`` pixels, through the VAE."""
        image = open_resized(path, area)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.codec.encode(x[None], self.device, self.dtype)

    # ----------------------------------------------------------------- network
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` of the target at unpacked states ``x`` and noise levels ``sigma`` ``[B]``, reading
        the reference tokens of ``cond["ref"]``; true CFG rescaled as Qwen-Image's when ``cfg_scale > 1``."""
        if "ref" not in cond or "ref_shapes" not in cond:
            raise ConfigError(f"{self.name}'s velocity needs the reference latents: condition(), not encode()")
        _b, _c, h, w = x.shape
        t = (sigma.float() * 1000).to(self.dtype) / 1000  # the pipeline's timestep: σ·1000 in the weights' dtype

        def forward(tokens: Tensor, t: Tensor, parts: dict[str, Tensor]) -> Tensor:
            return self._forward(tokens, t, parts, (h // 2, w // 2))

        out = guided(forward, pack(x), t, cond, self.cfg_scale, combine=rescaled_cfg)
        return unpack(out, h, w).to(x.dtype)

    def _forward(self, tokens: Tensor, t: Tensor, parts: dict[str, Tensor], grid: tuple[int, int]) -> Tensor:
        """Target output ``[B, N, 4C]`` for packed target tokens ``[B, N, 4C]``: the rows sharing one layout of
        references (``ref_shapes``) share a forward pass, its ``img_shapes`` listing the target and each reference."""
        layouts: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(parts["ref_shapes"].tolist()):
            layouts.setdefault(tuple(v for pair in row for v in pair), []).append(i)
        outs, order = [], []
        for layout, rows in layouts.items():
            shapes = [(1, a, b) for a, b in zip(layout[::2], layout[1::2], strict=True) if a > 0]
            index = torch.tensor(rows, device=tokens.device)
            pick = slice(None) if len(layouts) == 1 else index
            count = sum(a * b for _, a, b in shapes)
            mask = parts["mask"][pick]
            out = self.forward_module()(
                hidden_states=torch.cat([tokens[pick], parts["ref"][pick, :count]], dim=1).to(self.dtype),
                timestep=t[pick],
                encoder_hidden_states=parts["embeds"][pick].to(self.dtype),
                encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                img_shapes=[[(1, *grid), *shapes]] * len(rows),
                return_dict=False,
            )[0]
            outs.append(out[:, : tokens.shape[1]])
            order.append(index)
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs)[torch.argsort(torch.cat(order))]


@FAMILIES.register(
    "QwenImageEditPlusPipeline", lora_targets=ATTENTION_TARGETS, inputs=("image",), images=(1, MAX_IMAGES)
)
class QwenImageEditPlusPolicy(QwenImageEditPolicy):
    """A Qwen-Image-Edit-2509/2511 model ready for RL: one to ``MAX_IMAGES`` references per prompt, each introduced
    to the language model as ``"Picture k: "``, seen by it at about 384² pixels and by the VAE at about 1024²."""

    pipeline_class = "QwenImageEditPlusPipeline"
    name = "Qwen-Image-Edit-Plus"
    max_images = MAX_IMAGES
    condition_area: int | None = CONDITION_AREA

    def _template(self, text: str, images: int) -> str:
        return EDIT_TEMPLATE.format("".join(PICTURE.format(k + 1) for k in range(images)) + text)


__all__ = ["EDIT_TEMPLATE", "MAX_IMAGES", "QwenImageEditPlusPolicy", "QwenImageEditPolicy", "area_size"]
