"""Tiny random Wan pipelines saved in the published layout (``WanPipeline`` / ``WanImageToVideoPipeline``
``save_pretrained``), for the video family's tests: 9 frames of 32² pixels are 3 latent frames of 4² cells (the Wan
2.1 VAE: 4× in time, 8× in space), 2×2 patches, 12 tokens."""

from __future__ import annotations

import torch
from tiny_models import t5_tokenizer

TEXT_DIM = 32


def tiny_umt5():
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    config = UMT5Config(vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                        relative_attention_num_buckets=8)  # fmt: skip
    return UMT5EncoderModel(config).eval()


def tiny_wan_vae(seed: int = 0):
    """Wan 2.1's VAE architecture, tiny: z 16, 4× in time, 8× in space, with non-trivial latent statistics."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    mean = torch.linspace(-0.3, 0.3, 16).tolist()
    std = torch.linspace(0.5, 2.0, 16).tolist()
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True], latents_mean=mean,
                            latents_std=std).eval()  # fmt: skip


def tiny_wan_transformer(seed: int = 0, in_channels: int = 16, **kw):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                 in_channels=in_channels, out_channels=16, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=32,
                                 num_layers=2, cross_attn_norm=True, rope_max_seq_len=32, **kw).eval()  # fmt: skip


def wan_scheduler(kind: str = "unipc", shift: float = 3.0):
    """The published checkpoints' UniPC with flow sigmas (``flow_shift``), or flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if kind == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       num_train_timesteps=1000, flow_shift=shift)  # fmt: skip
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def save_tiny_wan(path: str, *, experts: bool = False, scheduler: str = "unipc", seed: int = 0) -> str:
    """A Wan 2.1 text-to-video folder, or (``experts``) a Wan 2.2 one with ``transformer_2`` and boundary 0.875."""
    from diffusers import WanPipeline

    two = {"transformer_2": tiny_wan_transformer(seed + 1), "boundary_ratio": 0.875} if experts else {}
    pipe = WanPipeline(tokenizer=t5_tokenizer(512), text_encoder=tiny_umt5(), vae=tiny_wan_vae(seed),
                       scheduler=wan_scheduler(scheduler), transformer=tiny_wan_transformer(seed), **two)  # fmt: skip
    pipe.save_pretrained(path)
    return path


def save_tiny_wan_i2v(path: str, *, experts: bool = False, seed: int = 0) -> str:
    """A Wan 2.1 image-to-video folder (CLIP image tokens through added K/V: a tiny CLIP vision tower of 5 tokens),
    or (``experts``) a Wan 2.2 A14B-style one: two experts, boundary 0.9, no CLIP. The transformer reads
    ``[noisy z | 4 mask channels | condition z]`` = 36 channels."""
    from diffusers import WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    parts: dict = {"scheduler": wan_scheduler("euler")}
    if experts:
        parts |= {"transformer": tiny_wan_transformer(seed, in_channels=36),
                  "transformer_2": tiny_wan_transformer(seed + 1, in_channels=36), "boundary_ratio": 0.9}  # fmt: skip
    else:
        torch.manual_seed(seed)
        clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                                num_attention_heads=2, image_size=8, patch_size=4)).eval()  # fmt: skip
        processor = CLIPImageProcessor(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        parts |= {"transformer": tiny_wan_transformer(seed, in_channels=36, image_dim=8, added_kv_proj_dim=24),
                  "image_encoder": clip, "image_processor": processor}  # fmt: skip
    pipe = WanImageToVideoPipeline(tokenizer=t5_tokenizer(512), text_encoder=tiny_umt5(), vae=tiny_wan_vae(seed),
                                   **parts)  # fmt: skip
    pipe.save_pretrained(path)
    return path
