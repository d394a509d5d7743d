"""The ``model`` section of the image recipe's configuration and its checks against the model folder's own files
(read before any weight loads): which pipeline the folder holds, the pixel multiples its VAE and patches need, the
weight types its activations stay finite in, and the family's own checks (``FlowModel.check_options``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from flowrl.core.errors import ConfigError
from flowrl.core.options import option
from flowrl.core.presets import PROJECT
from flowrl.core.sections import HUB_ID, WEIGHT_DTYPES
from flowrl.image.models import check_model_options, local_folder
from flowrl.image.models.common import pixel_size, read_json
from flowrl.image.models.family import FAMILIES


@dataclass
class ModelConfig:
    path: str = option(
        "assets/toy-sd3",
        "diffusers pipeline folder or hub id (org/name) of SD3.5, FLUX.1, Qwen-Image, FLUX.2 [klein], Z-Image, the "
        "video models Wan 2.1 / 2.2 (text- and image-to-video) or, editing rows' images, FLUX.1-Kontext, "
        "Qwen-Image-Edit(-2509) (model_index.json decides); default: toy base",
    )
    resolution: int | list[int] = option(
        32, "image side in pixels, or [height, width] (a video's frame size: e.g. [240, 416])", low=8
    )
    frames: int = option(0, "video families: frames per video (0 = the family's default: Wan's 81)", low=0)
    train_experts: str = option(
        "both",
        "Wan 2.2 (two experts): which train: both (Flow-Factory's LoRA examples, Pref-GRPO), high (the high-noise "
        "transformer: UniRL, Flow-Factory's full fine-tuning) or low; the others run frozen",
        choices=("both", "high", "low"),
    )
    cfg_scale_2: float = option(
        0.0,
        "Wan 2.2: the low-noise expert's guidance scale (the pipeline's guidance_scale_2; 0 = model.cfg_scale)",
        low=0.0,
    )
    finetune: str = option("lora", "lora (reference = adapter disabled) or full", choices=("lora", "full"))
    lora_rank: int = option(16, "LoRA rank", low=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)", low=0.0)
    lora_targets: list[str] = option(
        [], "module name suffixes that get LoRA adapters ([] = the model family's default, FamilyFacts.lora_targets)"
    )
    cfg_scale: float = option(1.0, "classifier-free guidance scale during sampling and training (1 = off)", low=1.0)
    negative_prompt: str = option(
        "", "the unconditional prompt of classifier-free guidance ('' as the SD3 pipeline; Qwen-Image's card: ' ')"
    )
    guidance_scale: float = option(3.5, "FLUX.1-dev: scale fed to its guidance embedding (SD3: unused)", low=0.0)
    mixed_precision: str = option("no", "accelerate mixed precision", choices=("no", "fp16", "bf16"))
    weights_dtype: str = option(
        "fp32",
        "dtype of the frozen weights (transformer, text encoders, VAE); LoRA weights stay fp32. FLUX needs bf16 "
        "(fp16 overflows); full fine-tuning needs fp32 master weights (use mixed_precision for speed)",
        choices=tuple(WEIGHT_DTYPES),
    )
    max_sequence_length: int = option(
        0, "T5 tokens per prompt (0 = the pipeline's default: 256 for SD3, 512 for FLUX.1-dev)", low=0
    )
    reference_size: int = option(
        0,
        "editing: resize each reference image to about this side² pixels for the VAE, aspect kept (0 = as the "
        "family's pipeline: Kontext its stored size, Qwen-Image-Edit ~1024², klein at most ~1024²; flow_grpo: 512)",
        low=0,
    )
    prompt_cache: int = option(
        0, "keep the text encoders' outputs for this many recent prompts (0 = encode every time)", low=0
    )
    gradient_checkpointing: bool = option(False, "recompute transformer activations in the backward pass")
    compile: bool = option(
        False,
        "run the transformer (and the untrained copy) through torch.compile; pays for long runs on GPUs, costs "
        "about two minutes of compilation for the toy model on this project's 2-core CPU (see README, Speed)",
    )
    untrained_copy: str = option(
        "auto",
        "passes whose log-probs are never trained (ODE steps, tails, evaluation) run a copy of the transformer with "
        "LoRA merged, refreshed when the weights change: 'bf16', 'fp32', 'none' (the live module), or 'auto' (bf16 "
        "where the device has fast bf16 matmul, else fp32 with LoRA, else none); not with FSDP",
        choices=("auto", "none", "fp32", "bf16"),
    )
    attention_backend: str = option(
        "",
        "diffusers attention backend (flash, sage, _native_cudnn, xformers, ...; empty = PyTorch SDPA); optional "
        "packages such as xformers are never required",
    )


def check_model(m: ModelConfig) -> str:
    """Refuse, naming the key, a ``model`` section its folder cannot run; returns the folder's pipeline class ("" for
    a hub id)."""
    if not os.path.isdir(m.path) and (os.path.exists(m.path) or not HUB_ID.fullmatch(m.path)):
        where = "" if os.path.isabs(m.path) else f"; looked for in {os.getcwd()}, the preset's folder and {PROJECT}"
        raise ConfigError(f"model.path {m.path!r} is neither a directory nor a hub id (org/name){where}")
    if m.finetune == "full" and m.weights_dtype != "fp32":
        raise ConfigError(
            f"model.finetune=full trains the weights themselves: model.weights_dtype must be fp32, got "
            f"{m.weights_dtype} (set model.mixed_precision={m.weights_dtype} for half-precision compute)"
        )
    if isinstance(m.resolution, list) and len(m.resolution) != 2:
        raise ConfigError(f"model.resolution={m.resolution}: give one side, or two: [height, width]")
    multiple, why = pixel_multiple(m.path)
    if multiple and any(side % multiple for side in pixel_size(m.resolution)):
        raise ConfigError(f"model.resolution={m.resolution} must be a multiple of {multiple} for {m.path!r}: {why}")
    family = pipeline_class_of(m.path)
    if m.weights_dtype != "fp32" and family in FAMILIES:
        allowed = FAMILIES.facts(family).half_precision
        if m.weights_dtype not in allowed:
            raise ConfigError(
                f"model.weights_dtype={m.weights_dtype}: {family}'s activations overflow in {m.weights_dtype}; use "
                f"{' or '.join(allowed)}"
            )
    video = family in FAMILIES and FAMILIES.facts(family).video
    if not video and family in FAMILIES:
        for key, default in (("frames", 0), ("train_experts", "both"), ("cfg_scale_2", 0.0)):
            if getattr(m, key) != default:
                raise ConfigError(f"model.{key}={getattr(m, key)}: {family} makes images (video families only)")
    check_model_options(m)  # the family's checks of its folder's files (FLUX.2 klein: guidance when distilled)
    return family


def makes_videos(path: str) -> bool | None:
    """Whether the pipeline at ``path`` (a local folder, or a hub id's snapshot in the local cache) is a video
    family's (``FamilyFacts.video``); None when its files are not at hand (known once it loads)."""
    folder = local_folder(path)
    if folder is None:
        return None
    family = pipeline_class_of(folder)
    return family in FAMILIES and FAMILIES.facts(family).video


def pixel_multiple(path: str) -> tuple[int, str]:
    """What ``model.resolution`` must be a multiple of for a local pipeline folder, and why: the VAE's downsampling
    times the transformer's patch (at least the 2×2 every latent family patches or packs by); a pixel-space model
    (no VAE, the toy world) needs its patch only. (0, "") when the folder's configs do not say (hub ids)."""
    transformer = read_json(os.path.join(path, "transformer", "config.json"))
    if transformer is None:
        return 0, ""
    patch = transformer.get("patch_size", transformer.get("all_patch_size", 1))
    patch = int(patch[-1] if isinstance(patch, list) else patch or 1)  # Wan's (t, h, w): the spatial side
    vae = read_json(os.path.join(path, "vae", "config.json"))
    if vae is None:
        return patch, f"its transformer takes {patch}×{patch} pixel patches"
    if "scale_factor_spatial" in vae:  # Wan's VAE states it (2.2's also patchifies by 2)
        scale = int(vae["scale_factor_spatial"])
    elif "block_out_channels" in vae:
        scale = 2 ** (len(vae["block_out_channels"]) - 1)
    elif "temperal_downsample" in vae:  # the video VAEs (Qwen-Image): one 2× spatial step per entry
        scale = 2 ** len(vae["temperal_downsample"])
    else:
        return 0, ""
    patch = max(patch, 2)
    return scale * patch, f"its VAE downsamples {scale}× and its transformer takes {patch}×{patch} latent patches"


def pipeline_class_of(path: str) -> str:
    """``_class_name`` of a local folder's model_index.json ("" for hub ids and unreadable folders)."""
    return str((read_json(os.path.join(path, "model_index.json")) or {}).get("_class_name", ""))
