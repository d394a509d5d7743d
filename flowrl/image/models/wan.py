"""Wan 2.1 and Wan 2.2 text-to-video (``WanPipeline``) as a policy: the state is a video latent ``[B, C, F', h, w]``
and every sampler, loss and estimator runs on it unchanged (they never assume a rank).

Layout (what ``WanPipeline.save_pretrained`` writes): ``transformer/`` (``WanTransformer3DModel``), for Wan 2.2 also
``transformer_2/`` with ``boundary_ratio`` in ``model_index.json``, ``scheduler/`` (``UniPCMultistepScheduler`` with
flow sigmas in the published checkpoints, ``FlowMatchEulerDiscreteScheduler`` accepted), ``text_encoder/`` +
``tokenizer/`` (UMT5) and ``vae/`` (``AutoencoderKLWan``; without one the latent is the RGB video in [−1, 1], the
toy video world's pixel-space base).

What the pipeline does and this adapter does the same way:

- the prompt is cleaned (``prompt_clean``), tokenised to ``max_sequence_length`` (512), encoded with its attention
  mask, cut to its real length and padded again with zeros: the transformer's cross-attention has no mask, so the
  zero rows are part of the input;
- the transformer reads the timestep ``σ·1000`` (floored to an integer for UniPC, whose ``timesteps`` are int64);
- classifier-free guidance ``u + g·(c − u)`` with the negative prompt when ``g > 1``;
- Wan 2.2: ``transformer`` (the high-noise expert) serves steps with ``t ≥ boundary_ratio·1000``, ``transformer_2``
  (low noise) the rest, with its own guidance scale ``guidance_scale_2``. One difference, deliberate: the pipeline
  runs guidance only when the first scale is above 1 (``guidance_scale=1, guidance_scale_2=3`` guides neither
  expert); here each expert guides by its own scale.

Which experts train is ``model.train_experts`` (``both`` by default, as Flow-Factory's LoRA example
``examples/grpo/lora/wan22/t2v.yaml`` and Pref-GRPO's Wan 2.2 trainer do; UniRL and Flow-Factory's full fine-tuning
train ``high``). Trained experts are one module (``WanExperts``) when both train, so that optimiser, distributed
wrapper, LoRA and checkpoints see one network; an expert that does not train is frozen plumbing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.samplers import scheduler_sigmas

from .common import PromptCond, encode_prompts, freeze, guided, latent_size, read_json, require_folder
from .family import FAMILIES, FlowModel

WAN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # self- and cross-attention: Flow-Factory's and Pref-GRPO's
LORA_FILE = "pytorch_lora_weights.safetensors"  # the high-noise expert's (Wan 2.1: the one transformer's)
LOW_LORA_FILE = "pytorch_lora_weights_transformer_2.safetensors"  # load with load_into_transformer_2=True


class WanCodec:
    """Video latents ↔ frames: ``z = (mode − mean) / std`` per channel as the Wan pipelines normalise; without a
    VAE the latent is the RGB video in [−1, 1] (one latent frame per frame, one cell per pixel)."""

    def __init__(self, path: str, dtype: torch.dtype) -> None:
        from diffusers import AutoencoderKLWan

        has_vae = os.path.isdir(os.path.join(path, "vae"))
        self.vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=dtype) if has_vae else None

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side (the VAE config's ``scale_factor_spatial``, as the pipeline reads
        it)."""
        return int(getattr(self.vae.config, "scale_factor_spatial", 8)) if self.vae is not None else 1

    @property
    def temporal(self) -> int:
        """Frames per latent frame after the first (``scale_factor_temporal``)."""
        return int(getattr(self.vae.config, "scale_factor_temporal", 4)) if self.vae is not None else 1

    @property
    def channels(self) -> int:
        return int(self.vae.config.z_dim) if self.vae is not None else 3

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        cfg = self.vae.config
        shape = (1, cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(cfg.latents_mean).view(shape).to(z.device, z.dtype)
        return mean, torch.tensor(cfg.latents_std).view(shape).to(z.device, z.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[B, C, F', h, w]`` → frames ``[B, F, 3, H, W]`` in [0, 1] (float32)."""
        if self.vae is None:
            video = latents.float()
        else:
            z = latents.to(self.vae.dtype)
            mean, std = self._stats(z)
            video = self.vae.decode(z * std + mean, return_dict=False)[0].float()
        return (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode(self, frames: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Frames ``[B, F, 3, H, W]`` in [0, 1] → latents ``[B, C, F', h, w]`` (the posterior's mode, normalised)."""
        x = frames.permute(0, 2, 1, 3, 4).to(device, dtype) * 2 - 1
        if self.vae is None:
            return x
        z = self.vae.encode(x).latent_dist.mode()
        mean, std = self._stats(z)
        return (z - mean) / std


def _experts_class() -> type:
    """``WanExperts``, defined on first use (diffusers' model classes import slowly)."""
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.loaders import PeftAdapterMixin

    class WanExperts(ModelMixin, ConfigMixin, PeftAdapterMixin):
        """Wan 2.2's two experts as one module: rows with timestep ``≥ boundary`` go to ``transformer`` (high noise),
        the others to ``transformer_2``, each expert's output in its rows' places."""

        config_name = "config.json"
        _supports_gradient_checkpointing = True
        _no_split_modules: ClassVar[list[str]] = ["WanTransformerBlock"]  # FSDP units: each expert's blocks

        @register_to_config
        def __init__(self, boundary_timestep: float = 875.0) -> None:
            super().__init__()

        def attach(self, high: torch.nn.Module, low: torch.nn.Module) -> Any:
            self.transformer, self.transformer_2 = high, low
            return self

        def forward(self, hidden_states: Tensor, timestep: Tensor, return_dict: bool = False, **kwargs: Any) -> Any:
            from torch.distributed.fsdp import FSDPModule

            high = timestep >= self.config.boundary_timestep
            # sharded, every process must gather (and reduce) both experts' weights in every pass, whichever rows
            # it has: an expert without rows here runs on one row whose output counts with weight zero
            sharded = isinstance(self, FSDPModule)
            if not sharded and (bool(high.all()) or not bool(high.any())):
                expert = self.transformer if bool(high.all()) else self.transformer_2
                return (expert(hidden_states=hidden_states, timestep=timestep, return_dict=False, **kwargs)[0],)
            out = torch.zeros_like(hidden_states[:, : self.transformer.config.out_channels])
            for rows, expert in ((high, self.transformer), (~high, self.transformer_2)):
                empty = not bool(rows.any())
                pick = torch.arange(len(rows), device=rows.device) == 0 if empty else rows
                part = {k: v[pick] if isinstance(v, Tensor) else v for k, v in kwargs.items()}
                y = expert(hidden_states=hidden_states[pick], timestep=timestep[pick], return_dict=False, **part)[0]
                if empty:
                    out = out + 0.0 * y.sum()
                else:
                    out[rows] = y.to(out.dtype)
            return (out,)

    return WanExperts


def read_index(path: str) -> dict[str, Any]:
    """``model_index.json`` of a pipeline folder (empty when unreadable)."""
    return read_json(os.path.join(path, "model_index.json")) or {}


def two_experts(path: str) -> bool:
    """Whether the folder is a Wan 2.2 two-expert pipeline (a ``transformer_2`` listed with a ``boundary_ratio``)."""
    index = read_index(path)
    return bool(index.get("boundary_ratio")) and (index.get("transformer_2") or [None])[0] is not None


@FAMILIES.register("WanPipeline", lora_targets=WAN_TARGETS, half_precision=("bf16",), video=True)
class WanPolicy(FlowModel):
    """A Wan 2.1 / 2.2 text-to-video model ready for RL (module docstring)."""

    pipeline_class = "WanPipeline"  # whose save_lora_weights / load_lora_weights format the LoRA uses
    name = "Wan"
    frame_size: int | Sequence[int] | None = None  # model.resolution (image-to-video resizes the first frame to it)

    def __init__(
        self,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        max_sequence_length: int = 512,
        num_frames: int = 81,
        train_experts: str = "both",
        cfg_scale_2: float = 0.0,
    ) -> None:
        from diffusers import WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        for sub in ("transformer", "scheduler", "text_encoder", "tokenizer"):
            require_folder(path, sub, self.name)
        self.path, self.dtype, self.device = path, dtype, torch.device(device)
        self.scheduler = _load_scheduler(path)
        self.text_encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.codec = WanCodec(path, dtype)
        self.vae = self.codec.vae
        self.max_sequence_length, self.num_frames, self.cfg_scale_2 = max_sequence_length, num_frames, cfg_scale_2
        high = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        self.boundary: float | None = None
        self.frozen_expert: torch.nn.Module | None = None
        self.trains, trained = "high", high  # Wan 2.1: its one transformer
        if two_experts(path):
            low = WanTransformer3DModel.from_pretrained(path, subfolder="transformer_2", torch_dtype=dtype)
            self.boundary = float(read_index(path)["boundary_ratio"]) * self.scheduler.config.num_train_timesteps
            self.trains = train_experts
            if train_experts == "both":
                trained = _experts_class()(boundary_timestep=self.boundary).attach(high, low)
            else:
                trained, self.frozen_expert = (high, low) if train_experts == "high" else (low, high)
        elif train_experts == "low":
            raise ConfigError(f"model.train_experts=low: {path!r} has one transformer (Wan 2.1)")
        self.transformer = trained
        freeze(self.transformer, self.frozen_expert, self.vae, self.text_encoder, device=self.device)
        self.integer_timesteps = type(self.scheduler).__name__ == "UniPCMultistepScheduler"

    @classmethod
    def check_options(cls, path: str, model: Any) -> None:
        """``model.frames`` fits the VAE (``1 + k·temporal``), and ``model.train_experts`` the folder."""
        vae = read_json(os.path.join(path, "vae", "config.json"))
        temporal = int(vae.get("scale_factor_temporal", 4)) if vae is not None else 1  # no VAE: pixel space
        frames = getattr(model, "frames", 0)
        if frames and (frames - 1) % temporal:
            low = (frames - 1) // temporal * temporal + 1
            raise ConfigError(f"model.frames={frames}: {cls.name}'s VAE needs 1 + {temporal}·k frames ({low} or "
                              f"{low + temporal})")  # fmt: skip
        experts = getattr(model, "train_experts", "both")
        if experts == "low" and os.path.isdir(path) and not two_experts(path):
            raise ConfigError(f"model.train_experts=low: {path!r} has one transformer (Wan 2.1); only Wan 2.2 "
                              "folders (transformer_2 and boundary_ratio) have a low-noise expert")  # fmt: skip

    def check_parallel(self, sharded: bool) -> None:
        """FSDP gathers a sharded module's weights in every pass on every process; with one Wan 2.2 expert trained,
        a process whose rows are all at the other expert's steps would skip the trained module's pass."""
        if sharded and self.frozen_expert is not None:
            raise ConfigError(
                f"model.train_experts={self.trains} with FSDP is not supported: train both experts "
                "(model.train_experts=both) or use DDP"
            )

    # ----------------------------------------------------------------- trained weights
    def save_trained(self, folder: str, finetune: str, state: dict[str, Tensor] | None = None) -> None:
        """Wan 2.1 as every family. Wan 2.2: each trained expert's weights apart, as the pipeline loads them: LoRA
        in ``pytorch_lora_weights.safetensors`` (high noise, ``pipe.load_lora_weights(folder)``) and
        ``pytorch_lora_weights_transformer_2.safetensors`` (low noise, ``pipe.load_lora_weights(folder,
        weight_name=..., load_into_transformer_2=True)``); full weights in ``transformer/`` and ``transformer_2/``."""
        from diffusers import WanPipeline
        from peft.utils import get_peft_model_state_dict

        from flowrl.core.weights import ADAPTER, save_weights, weight_state

        if self.boundary is None:
            return super().save_trained(folder, finetune, state)
        state = weight_state(self.transformer, finetune) if state is None else state
        if finetune == "full":
            for name, part in self._per_expert(state):
                module = getattr(self.transformer, name) if self.trains == "both" else self.transformer
                save_weights(module, "full", os.path.join(folder, name), self.pipeline_class, part)
            return
        layers = get_peft_model_state_dict(self.transformer, state_dict=state, adapter_name=ADAPTER)
        metadata = self.transformer.peft_config[ADAPTER].to_dict()
        for name, part in self._per_expert(layers):
            file = LORA_FILE if name == "transformer" else LOW_LORA_FILE
            WanPipeline.save_lora_weights(
                folder, transformer_lora_layers=part, transformer_lora_adapter_metadata=metadata, weight_name=file
            )

    def _per_expert(self, state: dict[str, Tensor]) -> list[tuple[str, dict[str, Tensor]]]:
        """``state`` of the trained module cut into each trained expert's (named as its pipeline component)."""
        if self.trains != "both":
            return [("transformer" if self.trains == "high" else "transformer_2", state)]
        return [(name, {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")})
                for name in ("transformer", "transformer_2")]  # fmt: skip

    def load_trained(self, folder: str, lora: bool) -> None:
        """What ``save_trained`` wrote: each expert's LoRA file or full weights into that expert (frozen or not)."""
        if self.boundary is None:
            return super().load_trained(folder, lora)
        for high, name, file in ((True, "transformer", LORA_FILE), (False, "transformer_2", LOW_LORA_FILE)):
            expert = self._expert(high)
            if lora and os.path.isfile(os.path.join(folder, file)):
                expert.load_lora_adapter(folder, prefix="transformer", adapter_name="gallery", weight_name=file)
            elif not lora and os.path.isdir(os.path.join(folder, name)):
                trained = type(expert).from_pretrained(os.path.join(folder, name), torch_dtype=expert.dtype)
                expert.load_state_dict(trained.state_dict())

    # ----------------------------------------------------------------- shapes and schedule
    def latent_shape(self, resolution: int | Sequence[int]) -> tuple[int, int, int, int]:
        """``(C, F', h, w)`` of one video latent: ``F' = (frames − 1) / temporal + 1`` latent frames of the frame
        size ``resolution`` (a side or [H, W]) divided by the VAE's factor."""
        patch = self._expert(True).config.patch_size
        factor = self.codec.factor
        h, w = latent_size(resolution, factor, factor * max(patch[1], patch[2]), "VAE downsampling × patch size")
        if (self.num_frames - 1) % self.codec.temporal:
            raise ConfigError(f"{self.num_frames} frames: the VAE needs 1 + {self.codec.temporal}·k")
        return (self.codec.channels, (self.num_frames - 1) // self.codec.temporal + 1, h, w)

    def sigmas(self, num_steps: int, resolution: int | Sequence[int]) -> Tensor:
        """The scheduler's ``[T + 1]`` sigmas as the pipeline sets them (``set_timesteps(T)``: UniPC's flow sigmas
        shifted by its ``flow_shift``), or the fixed-shift grid when ``sampler.shift`` is set."""
        return scheduler_sigmas(self.scheduler, num_steps, shift=self.schedule_shift)

    # ----------------------------------------------------------------- prompts
    @torch.no_grad()
    def encode(self, prompts: list[str], with_negative: bool | None = None) -> PromptCond:
        """UMT5 ``embeds [B, L, D]`` (``L = max_sequence_length``, zeros after each prompt's end) of the cleaned
        prompts; the negative prompt's rows when guidance is on (or ``with_negative``)."""
        negative = self._guides() if with_negative is None else with_negative
        return encode_prompts(self._encode, prompts, negative, self.prompt_cache, self.negative_prompt)

    def _guides(self) -> bool:
        return self.cfg_scale > 1 or (self.boundary is not None and self._scale(False) > 1)

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        length = self.max_sequence_length
        tokens = self.tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=length,
                                truncation=True, add_special_tokens=True, return_attention_mask=True,
                                return_tensors="pt")  # fmt: skip
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        embeds = self.text_encoder(ids, mask).last_hidden_state.to(self.dtype)
        return {"embeds": embeds * mask[..., None].to(embeds.dtype)}  # zeros past the end, as the pipeline pads

    # ----------------------------------------------------------------- network
    def timestep(self, sigma: Tensor) -> Tensor:
        """The transformer's timestep ``σ·1000`` (``[B]``), floored for UniPC as its int64 ``timesteps`` are."""
        t = sigma.double() * self.scheduler.config.num_train_timesteps
        return (t.floor() if self.integer_timesteps else t).float()

    def _scale(self, high: bool) -> float:
        return self.cfg_scale if high or not self.cfg_scale_2 else self.cfg_scale_2

    def _expert(self, high: bool) -> Any:
        """The plain module of the high- or low-noise expert (Wan 2.1: its one transformer)."""
        if self.boundary is None:
            return self.transformer
        if self.trains == "both":
            return self.transformer.transformer if high else self.transformer.transformer_2
        return self.transformer if (self.trains == "high") == high else self.frozen_expert

    def velocity(self, x: Tensor, sigma: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Velocity ``[B, C, F', h, w]`` at states ``x`` and noise levels ``sigma`` ``[B]``; rows of the two Wan 2.2
        experts are run apart, each guided by its own scale."""
        t = self.timestep(sigma.to(x.device))
        if self.boundary is None:
            return guided(self._forward, x, t, cond, self.cfg_scale)
        high = t >= self.boundary
        if self.trains == "both":
            # one pass of the trained module over every row (it sends each row to its expert), so that a distributed
            # wrapper sees the same calls on every process whichever steps its rows are at
            return guided(self._forward, x, t, cond, torch.where(high, self.cfg_scale, self._scale(False)))
        out = torch.empty_like(x)
        for rows, is_high in ((high, True), (~high, False)):
            if bool(rows.any()):
                part = {k: v[rows] for k, v in cond.items()}
                out[rows] = guided(self._forward, x[rows], t[rows], part, self._scale(is_high))
        return out

    def _module(self, t: Tensor) -> tuple[Any, torch.dtype]:
        """The module a pass at timesteps ``t`` (all of one expert's) goes through, and the dtype its inputs take:
        the trained module (or its distributed wrapper) for a trained expert, the frozen one otherwise."""
        if self.boundary is None or self.trains == "both" or (self.trains == "high") == bool(t[0] >= self.boundary):
            return self.forward_module(), self.dtype
        return self.frozen_expert, next(self.frozen_expert.parameters()).dtype

    def _forward(self, x: Tensor, t: Tensor, parts: dict[str, Tensor]) -> Tensor:
        module, dtype = self._module(t)
        extra = {"encoder_hidden_states_image": parts["image_embeds"].to(dtype)} if "image_embeds" in parts else {}
        hidden = self.model_input(x, parts).to(dtype)
        out = module(hidden_states=hidden, timestep=t, encoder_hidden_states=parts["embeds"].to(dtype),
                     return_dict=False, **extra)[0]  # fmt: skip
        return out.to(x.dtype)

    def model_input(self, x: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """The transformer's input for states ``x``: the states themselves (image-to-video adds its condition)."""
        return x


def _load_scheduler(path: str) -> Any:
    """The folder's scheduler, by the class its config names (UniPC with flow sigmas, or flow-matching Euler)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    config = read_json(os.path.join(path, "scheduler", "scheduler_config.json")) or {}
    name = config.get("_class_name", "FlowMatchEulerDiscreteScheduler")
    classes = {"UniPCMultistepScheduler": UniPCMultistepScheduler,
               "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler}  # fmt: skip
    if name not in classes:
        raise ConfigError(f"{path!r}: scheduler {name} is not a flow-matching scheduler flowrl reads (UniPC with "
                          "use_flow_sigmas, or FlowMatchEulerDiscreteScheduler)")  # fmt: skip
    scheduler = classes[name].from_pretrained(path, subfolder="scheduler")
    if name == "UniPCMultistepScheduler" and not scheduler.config.use_flow_sigmas:
        raise ConfigError(f"{path!r}: its UniPC scheduler does not use flow sigmas (use_flow_sigmas: false)")
    return scheduler


__all__ = ["WAN_TARGETS", "WanCodec", "WanPolicy", "two_experts"]
