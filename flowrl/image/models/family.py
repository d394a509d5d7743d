"""The model-adapter interface every family implements, and the registry that picks a family from a diffusers
folder's ``model_index.json``.

A family is one file under ``flowrl/image/models/`` with one class derived from ``FlowModel``, registered under the
pipeline class name its folders record (``@FAMILIES.register("StableDiffusion3Pipeline", ...)``) with its facts.
The class implements the family's part of the interface:

- ``__init__(path, *, dtype, device, **options)``: load the components from the folder, as the pipeline does;
- ``latent_shape(resolution) -> (C, h, w)``: the state the samplers integrate, and its constraints (any rank: the
  samplers, objectives and update never assume one; a video family's is ``(C, F, h, w)``);
- ``sigmas(num_steps, resolution) -> [T + 1]``: the scheduler's schedule for that size;
- ``encode(prompts, with_negative) -> PromptCond``: the text conditioning (and the negative's for guidance);
- ``condition(prompts, inputs, with_negative) -> PromptCond``: what the recipe calls, with each prompt's
  conditioning inputs (a ``.jsonl`` prompt file's other keys, ``flowrl.image.data``). The default is ``encode``,
  for a family that reads the prompt only; a family that reads more (an editing family's reference images)
  declares the inputs' names in its facts (``inputs=("images",)``: the config refuses prompt data without them) and
  overrides ``condition``, adding their encoding to the conditioning rows (the samplers index every row tensor by
  prompt, so a reference's latents are made once per prompt and reused by its whole group and every step);
- ``velocity(x, sigma, cond) -> v``: the flow-matching velocity v = ε − x0 at states ``x [B, C, h, w]``, with
  the family's packing, timestep convention and guidance inside;
- ``pipeline_class``: the diffusers pipeline whose ``save_lora_weights`` / ``load_lora_weights`` format the trained
  LoRA is written in;
- optionally ``check_options(path, model)``: a classmethod that checks the config's ``model`` section against the
  folder's own files (``model_index.json``, component configs) before any weight loads, raising ``ConfigError``
  naming the keys (FLUX.2 [klein]: guidance on a step-distilled checkpoint).

``FlowModel`` supplies the rest (noise, decoding through the family's ``codec``, the untrained copy, train mode).
The facts say what the trainer and the config checks need without loading the model: the family's default LoRA
targets, the half-precision weight types it runs in, whether it reads ``model.guidance_scale``.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.registry import Registry

from .common import Codec, PromptCache, PromptCond, require_folder, seeded_noise


@dataclass(frozen=True)
class FamilyFacts:
    """What a model family declares at registration.

    lora_targets: module-name suffixes of the family's default LoRA (``model.lora_targets: []``).
    half_precision: weight dtypes its activations stay finite in (FLUX.1 overflows in fp16).
    guidance_embedding: ``model.guidance_scale`` feeds a guidance embedding (guidance-distilled models).
    inputs: the per-prompt conditioning inputs it reads besides the prompt (names of a ``.jsonl`` prompt file's
    keys); the recipe hands them to ``condition``. Every row must have them, except ``image`` when ``images`` allows
    none.
    images: ``(min, max)`` reference images per prompt when ``inputs`` has ``image`` (a row with another count is
    refused with its line before any model loads). ``min`` 0 makes them optional: prompt data without an ``image``
    column is accepted (rows without one have no reference, e.g. FLUX.2 [klein]'s text-to-image), but one prompt
    file's rows either all have images or none, since one batch's rows take one token layout.
    video: it makes videos: its state has a time axis ``(C, F', h, w)``, it reads ``model.frames`` (and the Wan 2.2
    expert options) and ``decode`` gives frames ``[B, F, 3, H, W]``, which rewards and galleries take as videos.
    """

    lora_targets: tuple[str, ...]
    half_precision: tuple[str, ...] = ("bf16", "fp16")
    guidance_embedding: bool = False
    inputs: tuple[str, ...] = ()
    images: tuple[int, int] = (0, 0)
    video: bool = False


class FlowModel(ABC):
    """A flow-matching image model ready for RL: ``velocity(x, sigma, cond)`` is the network the samplers drive;
    everything else is frozen plumbing. Subclasses (one per family) set ``transformer``, ``codec``, ``device``,
    ``dtype`` and implement the methods listed in the module docstring.

    ``transformer`` is always the plain module: its attributes (``config``, the LoRA adapters, gradient
    checkpointing) are read there. The trainer may set ``prepared``, the same network as accelerate prepared
    it (a ``DistributedDataParallel`` wrapper when several processes train); ``forward_module`` decides which
    of the two a forward pass goes through.
    """

    path: str
    scheduler: Any
    # editing families: the pixels a reference image is resized to (model.reference_size²); None: as the pipeline does
    reference_area: int | None = None
    pipeline_class: str  # whose save_lora_weights / load_lora_weights format the LoRA uses
    transformer: torch.nn.Module
    codec: Codec
    device: torch.device
    dtype: torch.dtype
    cfg_scale: float = 1.0  # classifier-free guidance (model.cfg_scale)
    negative_prompt: str = ""  # the unconditional prompt of that guidance (model.negative_prompt)
    guidance_scale: float = 0.0  # the guidance embedding of distilled models (model.guidance_scale)
    schedule_shift: float = 0.0  # > 0: a fixed-shift linear schedule (sampler.shift)
    prompt_cache: PromptCache | None = None  # set by the trainer (model.prompt_cache)
    prepared: torch.nn.Module | None = None  # set by the trainer: ``transformer`` after accelerator.prepare
    reference: torch.nn.Module | None = None  # set by the trainer: a frozen copy of the base (full fine-tuning)
    untrained: Any = None  # set by the trainer: the cheaper copy for untrained passes (models/untrained.py)

    # ----------------------------------------------------------------- the family's part
    @abstractmethod
    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, ...]:
        """Shape of one state for an output of ``resolution`` pixels (one side, or ``[H, W]``): ``(C, h, w)`` for an
        image family (any rank is allowed, e.g. ``(C, F, h, w)``); raises when it does not fit the family's VAE factor
        and packing."""

    @abstractmethod
    def sigmas(self, num_steps: int, resolution: int) -> Tensor:
        """The scheduler's ``[T + 1]`` sigma schedule for ``num_steps`` steps at this resolution."""

    @abstractmethod
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """The prompts' conditioning rows (and the negative's when guidance needs it)."""

    def condition(
        self, prompts: list[str], inputs: Sequence[Mapping[str, Any]] | None = None, with_negative: bool | None = None
    ) -> PromptCond:
        """The conditioning rows of ``prompts`` with their inputs (``inputs[i]``: prompt ``i``'s); the default reads
        the prompts only (a family declaring ``FamilyFacts.inputs`` overrides it)."""
        return self.encode(prompts, with_negative)

    @abstractmethod
    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, h, w]`` at states ``x`` and noise levels ``sigma`` ``[B]``."""

    @classmethod
    def check_options(cls, path: str, model: Any) -> None:
        """Refuse, with a ``ConfigError`` naming the keys, options of ``model`` (a ``ModelConfig``) that the local
        folder ``path`` cannot run; reads files only, never weights (run at config time and again before loading).
        The default accepts everything."""
        return None

    # ----------------------------------------------------------------- shared
    def _load_base(
        self, path: str, layout: str, transformer_cls: Any, dtype: torch.dtype, device: str | torch.device
    ) -> None:
        """What every Qwen-encoder family loads alike: check the folder has the pipeline's five components, then
        the transformer (in ``dtype``) and the flow-matching scheduler."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        for sub in ("transformer", "scheduler", "text_encoder", "tokenizer", "vae"):
            require_folder(path, sub, layout)
        self.path, self.dtype, self.device = path, dtype, torch.device(device)
        self.transformer = transformer_cls.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")

    def cached_reference(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``: an editing family's encoding of one row's reference images (``key`` names the files and the
        size), kept among the last ``model.prompt_cache`` ones when a prompt cache is on. The VAE is frozen and
        encodes the posterior's mode, so a kept encoding is what encoding again would give; training draws the same
        rows again and again, and each would otherwise be read, resized and encoded on every iteration."""
        if self.prompt_cache is None:
            return make()
        kept = self.__dict__.setdefault("_references", OrderedDict())
        if key not in kept:
            kept[key] = make()
        kept.move_to_end(key)
        while len(kept) > self.prompt_cache.size:
            kept.popitem(last=False)
        return kept[key]

    def check_parallel(self, sharded: bool) -> None:
        """Refuse (``ConfigError``) a way of training this model across processes that it cannot take; ``sharded``:
        FSDP shards the trained module. The default takes every way."""
        return None

    def save_trained(self, folder: str, finetune: str, state: dict[str, Tensor] | None = None) -> None:
        """Write the trained weights (``state``: ``flowrl.core.weights.weight_state``'s, taken now by default) into
        ``folder`` in the family's pipeline format: ``pytorch_lora_weights.safetensors`` for
        ``pipeline.load_lora_weights``, or the full transformer for ``from_pretrained``."""
        from flowrl.core.weights import save_weights

        save_weights(self.transformer, finetune, folder, self.pipeline_class, state)

    def load_trained(self, folder: str, lora: bool) -> None:
        """Load what ``save_trained`` wrote into ``folder`` (the gallery's and evaluation's trained columns): the
        LoRA as an adapter named ``gallery``, or the full transformer in place of the base's."""
        if lora:
            self.transformer.load_lora_adapter(
                folder, prefix="transformer", adapter_name="gallery", weight_name="pytorch_lora_weights.safetensors"
            )
            return
        trained = type(self.transformer).from_pretrained(folder, torch_dtype=self.transformer.dtype)
        self.transformer = trained.to(self.device).eval().requires_grad_(False)

    def forward_module(self) -> torch.nn.Module:
        """The module a forward pass runs through.

        While autograd records (the trainer's update) it is ``prepared``, so that backward all-reduces the
        gradients between processes. Otherwise it is the plain ``transformer``: passes without gradients
        (sampling, evaluation, the reference policy) need no communication, and so processes may make
        different numbers of them. This assumes every process holds the whole network (DDP); a wrapper
        that shards the weights (FSDP) would need every pass to go through it.
        """
        if self.prepared is not None and torch.is_grad_enabled():
            return self.prepared
        return self.transformer

    def ode_velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """``velocity`` for passes whose log-probs are never trained (ODE steps, tails, evaluation): through the
        cheaper untrained copy when the trainer made one and no gradient is recorded."""
        if self.untrained is None or torch.is_grad_enabled():
            return self.velocity(x, sigma, cond)
        with self.untrained.serving(self):
            return self.velocity(x, sigma, cond)

    @contextlib.contextmanager
    def unguided(self) -> Iterator[None]:
        """Inside, ``velocity`` is the prompt's own prediction, without classifier-free guidance (the ``neg_*`` rows
        of a guided run's conditioning are left unread): what a flow-matching loss regresses when the rollouts were
        guided (flow_grpo's DPO trains the conditional velocity of images sampled at guidance 4.5)."""
        saved = self.cfg_scale, getattr(self, "cfg_scale_2", None)
        self.cfg_scale = 1.0
        if saved[1] is not None:
            self.cfg_scale_2 = 1.0 if saved[1] else 0.0  # Wan 2.2's low-noise expert (0: as the high-noise one)
        try:
            yield
        finally:
            self.cfg_scale = saved[0]
            if saved[1] is not None:
                self.cfg_scale_2 = saved[1]

    def train_mode(self, mode: bool) -> None:
        """Training (``True``) or evaluation mode for the transformer and its prepared wrapper."""
        self.transformer.train(mode)
        if self.prepared is not None:
            self.prepared.train(mode)

    def initial_noise(self, seeds: list[int], resolution: int) -> Tensor:
        """``[B, C, h, w]`` float32 standard normal noise, one generator per seed (reproducible per sample).
        States stay float32 whatever the weights' dtype: the sampler's steps and log-probs need the precision."""
        return seeded_noise(self.latent_shape(resolution), seeds, self.device, torch.float32)

    def decode(self, latents: Tensor, batch_size: int = 0) -> Tensor:
        """Latents ``[B, C, h, w]`` → images ``[B, 3, H, W]`` in [0, 1] (float32); ``batch_size`` rows per
        VAE call (0 = all at once)."""
        if batch_size <= 0 or latents.shape[0] <= batch_size:
            return self.codec.decode(latents)
        return torch.cat([self.codec.decode(z) for z in latents.split(batch_size)])

    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] → latents ``[B, C, h, w]`` (the VAE posterior's mode, scaled)."""
        return self.codec.encode(images, self.device, self.dtype).float()


FAMILIES: Registry[Callable[..., FlowModel], FamilyFacts] = Registry("model family", FamilyFacts)

__all__ = ["FAMILIES", "FamilyFacts", "FlowModel"]
