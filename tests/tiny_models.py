"""Tiny randomly initialised models of the real architectures, saved in the published layouts, for
tests that must go through the same ``from_pretrained`` paths a user takes (no hub access here)."""

from __future__ import annotations

import os

import torch

T5_WORDS = (
    "a an the of photo red green blue yellow circle circles square squares triangle triangles two three "
    "left right above below cat dog sign says"
).split()


def t5_tokenizer(model_max_length: int = 32):
    """A T5-style (Unigram, ``</s>`` appended, ``<pad>`` = 0) fast tokenizer over a small vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *("▁" + w for w in T5_WORDS), *"abcdefghijklmnopqrstuvwxyz", "▁"]
    tok = Tokenizer(models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=model_max_length,
    )  # fmt: skip


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
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from flowrl.models.toy import clip_tokenizer

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
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )  # fmt: skip
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


def save_tiny_sd3(path: str, seed: int = 0) -> str:
    """A full SD3.5-layout folder (two CLIP encoders with projection, T5, VAE) with tiny components."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from flowrl.models.toy import clip_tokenizer

    torch.manual_seed(seed)

    def clip():
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407,
                pad_token_id=49407,
            )
        )  # fmt: skip

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
