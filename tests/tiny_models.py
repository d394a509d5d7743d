"""Tiny randomly initialised models of the real architectures, saved in the published layouts, for
tests that must go through the same ``from_pretrained`` paths a user takes (no hub access here)."""

from __future__ import annotations

import os
import shutil

import torch

T5_WORDS = (
    "a an the of photo red green blue yellow circle circles square squares triangle triangles two three "
    "left right above below cat dog sign says"
).split()


def t5_tokenizer(model_max_length: int = 32):
    """A T5-style (Unigram, ``</s>`` appended, ``<pad>`` = 0) fast tokenizer over a small vocabulary."""
    from flowrl.image.models.toy import word_tokenizer

    return word_tokenizer(T5_WORDS, model_max_length)


def tiny_vae(latent_channels: int, seed: int = 0):
    """A 2-level ``AutoencoderKL`` (8× fewer pixels per side would need 4 levels; 2× is enough here)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )


def save_tiny_flux(path: str, *, vae: bool = True, guidance_embeds: bool = True, seed: int = 0) -> str:
    """A FLUX.1-layout folder (``FluxPipeline.save_pretrained``) with tiny components; returns ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from flowrl.image.models.toy import clip_text_config, clip_tokenizer

    torch.manual_seed(seed)
    channels = 4 if vae else 3
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    )
    clip = CLIPTextModel(clip_text_config())
    t5 = T5EncoderModel(
        T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=scheduler,
        text_encoder=clip,
        tokenizer=clip_tokenizer(77),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer(32),
        vae=tiny_vae(channels, seed) if vae else None,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    if not vae:  # a pipeline without a VAE still records the slot; a pixel-space folder has none
        assert not os.path.isdir(os.path.join(path, "vae"))
    return path


def save_tiny_flux_kontext(path: str, seed: int = 0) -> str:
    """A FLUX.1-Kontext-layout folder (``FluxKontextPipeline.save_pretrained``): the tiny FLUX components of
    ``save_tiny_flux`` (with a VAE and the guidance embedding), saved by the editing pipeline; returns ``path``."""
    from diffusers import FluxKontextPipeline, FluxPipeline

    flux = save_tiny_flux(os.path.join(path, "_flux"), seed=seed)
    FluxKontextPipeline(**FluxPipeline.from_pretrained(flux).components).save_pretrained(path, safe_serialization=True)
    shutil.rmtree(flux)
    return path


def save_tiny_sd3(path: str, seed: int = 0) -> str:
    """A full SD3.5-layout folder (two CLIP encoders with projection, T5, VAE) with tiny components."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from flowrl.image.models.toy import clip_text_config, clip_tokenizer

    torch.manual_seed(seed)

    def clip():
        return CLIPTextModelWithProjection(clip_text_config())

    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64,
        pos_embed_max_size=16,
    )  # fmt: skip
    t5 = T5EncoderModel(
        T5Config(vocab_size=64, d_model=64, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0)
    )
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=tiny_vae(4, seed),
        text_encoder=clip(),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=clip(),
        tokenizer_2=clip_tokenizer(77),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer(256),
    ).save_pretrained(path, safe_serialization=True)
    return path


__all__ = ["save_tiny_flux", "save_tiny_sd3", "t5_tokenizer", "tiny_vae"]


def qwen_tokenizer():
    """A byte-level BPE tokenizer with Qwen's special tokens and a Qwen3-style chat template (no merges: one token
    per byte), built offline; what the Qwen-Image, FLUX.2 and Z-Image pipelines call their tokenizer."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(sorted(ByteLevel.alphabet()))}}
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
    )
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], chat_template=template,
    )  # fmt: skip
    tok.add_tokens(["<think>", "</think>"])
    return tok


def _qwen_vl_configs(vocab: int) -> tuple[dict, dict]:
    """The text and vision configs of the tiny Qwen2.5-VL encoder of the Qwen-Image families (hidden 16)."""
    text = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default"},
            "rope_theta": 1e6, "vocab_size": vocab}  # fmt: skip
    return text, {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}


def _qwen_image_parts():
    """The tiny transformer, VAE (non-trivial latent statistics) and scheduler (Qwen/Qwen-Image's config: dynamic
    shift, terminal 0.02) of the Qwen-Image families, made in this order from the current seed."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
        base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
    )  # fmt: skip
    return transformer, vae, scheduler


def save_tiny_qwen_image(path: str, seed: int = 0) -> str:
    """A Qwen-Image-layout folder (``QwenImagePipeline.save_pretrained``) with tiny components: its scheduler
    config as Qwen/Qwen-Image's (dynamic shift, terminal 0.02), a VAE with non-trivial latent statistics."""
    from diffusers import (
        QwenImagePipeline,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    text, vision = _qwen_vl_configs(len(tokenizer))
    encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision, hidden_size=16, vocab_size=len(tokenizer))
    )
    transformer, vae, scheduler = _qwen_image_parts()
    QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer, transformer=transformer
    ).save_pretrained(path, safe_serialization=True)
    return path


def _tiny_qwen3(tokenizer, layers: int, causal: bool):
    """A tiny Qwen3 (hidden 16) for the FLUX.2 and Z-Image text encoders."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=0,
    )  # fmt: skip
    return (Qwen3ForCausalLM if causal else Qwen3Model)(config)


def save_tiny_flux2_klein(path: str, seed: int = 0, distilled: bool = False) -> str:
    """A FLUX.2 [klein]-layout folder (``Flux2KleinPipeline.save_pretrained``) with tiny components: a 27-layer
    text encoder (the pipeline reads layers 9, 18, 27), a 2-level VAE with 4 latent channels."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * 16, timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False,
    )  # fmt: skip
    with torch.no_grad():  # batch-norm statistics that are not the identity, so the normalisation is exercised
        vae.bn.running_mean.copy_(torch.linspace(-0.2, 0.3, vae.bn.running_mean.numel()))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.running_var.numel()))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
    Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, text_encoder=_tiny_qwen3(tokenizer, 27, causal=True), tokenizer=tokenizer,
        transformer=transformer, is_distilled=distilled,
    ).save_pretrained(path, safe_serialization=True)  # fmt: skip
    return path


def save_tiny_z_image(path: str, seed: int = 0) -> str:
    """A Z-Image-layout folder (``ZImagePipeline.save_pretrained``) with tiny components and Turbo's scheduler
    (a fixed shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[600, 32, 32],
    )  # fmt: skip
    with torch.no_grad():  # the pad tokens start at zero; give them values so that padding is exercised
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), vae=tiny_vae(4, seed),
        text_encoder=_tiny_qwen3(tokenizer, 2, causal=False), tokenizer=tokenizer, transformer=transformer,
    ).save_pretrained(path, safe_serialization=True)  # fmt: skip
    return path


#: the unshifted grid linspace(1, 1/4, 4) = 1, .75, .5, .25 under a fixed shift 2 (σ' = 2σ / (1 + σ)), then 0: the
#: schedule of every pipeline that passes that grid (FLUX.1, Qwen-Image, FLUX.2, Z-Image) for 4 steps
GRID_SHIFT_2 = [1.0, 1.5 / 1.75, 1.0 / 1.5, 0.5 / 1.25, 0.0]
#: a dynamically shifting scheduler with FLUX.1-dev's settings (for families whose tiny folder shifts by a constant)
DYNAMIC = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
               max_image_seq_len=4096)  # fmt: skip


def pipeline_sigmas(pipe, scheduler, **call) -> torch.Tensor:
    """The ``[T + 1]`` sigmas a diffusers pipeline call sets on ``scheduler`` (its own ``set_timesteps`` call, with
    the grid and μ the pipeline computes), read back after the call; ``call``: the pipeline's arguments."""
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    pipe(**call, output_type="latent")
    return pipe.scheduler.sigmas.clone()


def save_tiny_qwen_image_edit(path: str, plus: bool = False, seed: int = 0) -> str:
    """A Qwen-Image-Edit-layout folder (``QwenImageEditPipeline.save_pretrained``; ``plus``: the
    ``QwenImageEditPlusPipeline`` of Qwen-Image-Edit-2509/2511) with the tiny components of ``save_tiny_qwen_image``
    plus what reads the reference image: a ``Qwen2VLProcessor`` (image and video processors, the tokenizer with the
    vision special tokens) and a text encoder whose vision tower and token ids agree with it."""
    from diffusers import (
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_tokens(vision_tokens, special_tokens=True)
    ids = dict(zip(vision_tokens, tokenizer.convert_tokens_to_ids(vision_tokens), strict=True))
    # the processor's patch (14), merge (2) and temporal (2) sizes are the vision tower's defaults; at most 112²
    # pixels reach the tower (16 patches of 14², 4 vision tokens after the 2×2 merge)
    pixels = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=pixels),
    )  # fmt: skip
    text, vision = _qwen_vl_configs(len(tokenizer))
    encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
        )
    )  # fmt: skip
    transformer, vae, scheduler = _qwen_image_parts()
    pipeline = QwenImageEditPlusPipeline if plus else QwenImageEditPipeline
    pipeline(
        scheduler=scheduler, vae=vae, text_encoder=encoder, tokenizer=tokenizer, processor=processor,
        transformer=transformer,
    ).save_pretrained(path, safe_serialization=True)  # fmt: skip
    return path
