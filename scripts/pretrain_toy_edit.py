"""Pretrain the toy editing base from scratch on CPU: a tiny FLUX.1-Kontext (the real architecture, pixel space: no
VAE) that edits the toy edit world's source images (``flowrl.image.toy_edit``), saved in ``FluxKontextPipeline``'s
layout and loaded back as a user's checkpoint would be (deterministic for a seed, torch version and thread count).

Flow matching on the ground-truth edit of the *train* edits only, conditioned on the instruction (CLIP pooled +
T5 sequence, both trained jointly) and the source image's tokens (first position id 1, as the pipeline sets them):
x_σ = (1 − σ)·x0 + σ·ε, σ logit-normal moved by the shift s, loss ‖v − (ε − x0)‖² on the target's tokens. The
labels are noisy on purpose: a fraction ``--unfollowed`` of the examples show the source unchanged or another edit
than the instruction says (a recolour to another colour), as instruction-edit data often does. The base then
carries instructions out only part of the time while keeping the source's objects, the headroom an edit reward
can train (``toy-edit``: instruction done, source preserved).
The EMA weights are saved, loaded back through ``FluxKontextPolicy`` and evaluated on the held-out edits with the
``toy-edit`` reward; the report lands in ``<out>/pretrain_report.json``.

    python scripts/pretrain_toy_edit.py --out assets/toy-kontext   # the committed base: defaults below
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import torch
from pretrain_common import (
    add_base_options,
    add_common_options,
    optimizer_step,
    shifted_sigmas,
    training_setup,
    write_base,
)

from flowrl.core.inputs import row_inputs
from flowrl.core.stats import prompt_mean_se
from flowrl.image.models.flux import pack
from flowrl.image.models.flux_kontext import forward_with_reference
from flowrl.image.models.toy import clip_text_config, clip_tokenizer, word_tokenizer
from flowrl.image.toy_edit import Edit, edits_of, render_edit, split_edits
from flowrl.image.toy_world import COLOURS, NUMBERS, SHAPES

SIZE = 32
WORDS = ["make", "the", "a", "add", "remove", "one", "of", "second", "third", *NUMBERS.values(), *COLOURS,
         *SHAPES, *(s + "s" for s in SHAPES)]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, out="assets/toy-kontext", steps=2000, batch_size=32, per="edit")
    add_base_options(p, unfollowed=0.4, unfollowed_help="fraction of examples whose edit is not the asked", width=64,
                     layers=2, layers_help="double-stream blocks (as many single-stream)")  # fmt: skip
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """The tiny Kontext's components: transformer, scheduler, CLIP and T5 text encoders with their tokenizers."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(args.seed)
    head = args.width // 4
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=12, num_layers=args.layers, num_single_layers=args.layers,
        attention_head_dim=head, num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=False, axes_dims_rope=(head - 2 * (head * 3 // 8), head * 3 // 8, head * 3 // 8),
    )  # fmt: skip
    clip = CLIPTextModel(clip_text_config())
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(WORDS) + 30, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 decoder_start_token_id=0)
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.sigma_shift)
    return transformer, scheduler, clip, clip_tokenizer(16), t5, word_tokenizer(WORDS, 16)


def shown(edit: Edit, rng: random.Random, unfollowed: float) -> Edit:
    """The edit an example shows: the asked one, or (a share ``unfollowed`` of noisy labels) the source unchanged or
    another recolour of it."""
    if rng.random() >= unfollowed:
        return edit
    others = [e for e in edits_of(edit.source) if e != edit and e.kind == "recolour"]
    if others and rng.random() < 0.5:
        return rng.choice(others)
    return Edit(edit.source, "recolour", edit.source)  # unchanged: a recolour to its own colour draws the source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train = split_edits("train")
    net, scheduler, clip, clip_tok, t5, t5_tok = build(args)
    live = (net, clip, t5)
    ema, params, opt, rng, gen = training_setup(args, live)
    start = time.time()
    for step in range(args.steps):
        asked = [rng.choice(train) for _ in range(args.batch_size)]
        pairs = [render_edit(shown(e, rng, args.unfollowed), SIZE, rng.randrange(2**31)) for e in asked]
        ref = torch.stack([s for s, _ in pairs]) * 2 - 1
        x0 = torch.stack([t for _, t in pairs]) * 2 - 1
        texts = [e.instruction for e in asked]
        ids_clip = clip_tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        ids_t5 = t5_tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        sigma = shifted_sigmas(args.batch_size, args.sigma_shift, gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None, None]
        embeds, pooled = t5(ids_t5).last_hidden_state, clip(ids_clip).pooler_output
        v = forward_with_reference(net, (1 - s) * x0 + s * noise, ref, sigma, embeds, pooled)
        loss = (pack(v) - pack(noise - x0)).square().mean()  # over the tokens, as the base was trained
        optimizer_step(opt, params, loss, step, args, ema, live, start)
    train_seconds = time.time() - start
    write_base(
        args,
        lambda tmp: save(tmp, ema, scheduler, clip_tok, t5_tok),
        lambda tmp: evaluate_folder(tmp, args),
        train_seconds,
        unfollowed=args.unfollowed,
        width=args.width,
        layers=args.layers,
    )
    return 0


def save(path: str, ema: list, scheduler, clip_tok, t5_tok) -> None:
    from diffusers import FluxKontextPipeline

    net, clip, t5 = ema
    pipe = FluxKontextPipeline(transformer=net, scheduler=scheduler, text_encoder=clip, tokenizer=clip_tok,
                               text_encoder_2=t5, tokenizer_2=t5_tok, vae=None)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    index["_note"] = "flowrl toy editing base: pixel space (no vae); load with flowrl's FluxKontextPolicy"
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def evaluate_folder(path: str, args: argparse.Namespace) -> dict:
    """Held-out ``toy-edit`` parts of the saved model, loaded as a user would (own noise per (edit, seed))."""
    from flowrl.image.data import inputs_by_prompt, load_prompt_set
    from flowrl.image.generate import generate
    from flowrl.image.models import FluxKontextPolicy
    from flowrl.image.toy_edit_data import write_splits
    from flowrl.rewards import RewardSet

    policy = FluxKontextPolicy(path, guidance_scale=0.0, max_sequence_length=16)
    with tempfile.TemporaryDirectory() as tmp:
        write_splits(os.path.join(tmp, "edits"), SIZE)
        rows = load_prompt_set(os.path.join(tmp, "edits", "held-out.jsonl"))
        inputs = inputs_by_prompt(("held-out", rows))
        prompts = [p for p in rows.prompts for _ in range(args.eval_seeds)]
        seeds = [k for _ in rows.prompts for k in range(args.eval_seeds)]
        images = generate(policy, prompts, seeds, inputs=row_inputs(inputs, prompts), resolution=SIZE,
                          num_steps=args.eval_steps)  # fmt: skip
        _, parts = RewardSet.from_specs([{"name": "toy-edit"}])(images, prompts, inputs=inputs)
    out = {"num_eval_samples": len(prompts), "eval_steps": args.eval_steps}
    for part in ("done", "preserved"):
        mean, se = prompt_mean_se(parts[f"toy-edit/{part}"], prompts)
        out[f"held_out_{part}"], out[f"held_out_{part}_se"] = round(mean, 4), round(se, 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
