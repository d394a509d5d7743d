"""The toy base model's architecture: a small SD3 transformer in pixel space, a small CLIP text
encoder and a real CLIP BPE tokenizer built offline from open_clip's shipped vocabulary.

``build_toy_model`` returns freshly initialised components; ``save_sd3_folder`` writes them in the
layout ``StableDiffusion3Pipeline.save_pretrained`` uses, so ``SD3Policy`` (and a user) loads them
with each component's ``from_pretrained``. ``scripts/pretrain_toy.py`` trains and saves the base.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

TOY_RESOLUTION = 32
TOY_MAX_TOKENS = 16  # the longest toy prompt is 11 tokens with its start and end markers


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable-character table (GPT-2 byte-level BPE)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def clip_tokenizer(model_max_length: int = 77) -> Any:
    """The CLIP BPE tokenizer (49 408 tokens) from open_clip's ``bpe_simple_vocab_16e6.txt.gz``.

    Vocabulary order as in CLIP: 256 byte symbols, the same with ``</w>``, one entry per merge
    (the first 48 894 merges of the file), then ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    import open_clip
    from transformers import CLIPTokenizer

    path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=model_max_length)


def clip_text_config(hidden: int = 32, layers: int = 2) -> Any:
    """The ``CLIPTextConfig`` of a tiny CLIP text encoder for ``clip_tokenizer``'s vocabulary (its end token id as
    ``eos_token_id``: otherwise CLIP pools position 0, the default id never occurring in a tiny vocabulary)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip


def word_tokenizer(words: list[str], model_max_length: int = 32) -> Any:
    """A T5-style fast tokenizer (Unigram over whole ``words`` and single letters, ``</s>`` appended, ``<pad>`` = 0)
    for the T5 encoder of a tiny FLUX-layout model; it saves and loads as ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *("▁" + w for w in words), *"abcdefghijklmnopqrstuvwxyz", "▁"]
    tok = Tokenizer(models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=2))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=model_max_length,
    )  # fmt: skip


@dataclass
class ToyModel:
    """Components of the toy base: ``transformer`` (SD3Transformer2DModel), ``text_encoder``
    (CLIPTextModelWithProjection), ``tokenizer`` (CLIPTokenizer), ``scheduler`` (FlowMatchEulerDiscreteScheduler)."""

    transformer: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def build_toy_model(seed: int = 0, *, width: int = 128, layers: int = 6, text_width: int = 32) -> ToyModel:
    """Freshly initialised toy components (deterministic for a seed).

    The transformer works on RGB pixels (no VAE): 32×32 images in 4×4 patches, 64 image tokens.
    Pixel space keeps the evaluator's input exact and the demo fast; a VAE would add a second
    network to pretrain and a decode per reward call while teaching nothing about the RL path,
    which treats the VAE as a frozen decoder anyway.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=text_width,
            intermediate_size=4 * text_width,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TOY_MAX_TOKENS,
            projection_dim=text_width,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    transformer = SD3Transformer2DModel(
        sample_size=TOY_RESOLUTION,
        patch_size=4,
        in_channels=3,
        out_channels=3,
        num_layers=layers,
        attention_head_dim=32,
        num_attention_heads=width // 32,
        joint_attention_dim=text_width,
        caption_projection_dim=width,
        pooled_projection_dim=text_width,
        pos_embed_max_size=TOY_RESOLUTION // 4,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return ToyModel(transformer, text_encoder, clip_tokenizer(TOY_MAX_TOKENS), scheduler)


def save_sd3_folder(model: ToyModel, path: str) -> None:
    """Write the components in ``StableDiffusion3Pipeline`` layout (safetensors weights)."""
    os.makedirs(path, exist_ok=True)
    model.transformer.save_pretrained(os.path.join(path, "transformer"), safe_serialization=True)
    model.text_encoder.save_pretrained(os.path.join(path, "text_encoder"), safe_serialization=True)
    model.tokenizer.save_pretrained(os.path.join(path, "tokenizer"))
    model.scheduler.save_pretrained(os.path.join(path, "scheduler"))
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_note": "flowrl toy base: pixel space (no vae), one CLIP text encoder; load with flowrl's SD3Policy",
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


__all__ = ["TOY_MAX_TOKENS", "TOY_RESOLUTION", "ToyModel", "build_toy_model", "clip_tokenizer", "save_sd3_folder"]
