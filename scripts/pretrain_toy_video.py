"""Pretrain the toy video base from scratch on CPU: a tiny Wan 2.1 (the real ``WanTransformer3DModel`` and UMT5
text encoder; pixel space: no VAE) that makes the toy video world's clips (``flowrl.image.toy_video``), saved in
``WanPipeline``'s layout and loaded back as a user's checkpoint would be (deterministic for a seed, torch version and
thread count).

Flow matching on ground-truth clips of the *train* prompts only, conditioned on the prompt (UMT5, trained jointly;
zeros past each prompt's end, as the pipeline pads): x_σ = (1 − σ)·x0 + σ·ε with σ logit-normal moved by the shift,
loss ‖v − (ε − x0)‖² over the video, the transformer reading the timestep σ·1000 as the pipeline passes it. The
labels are noisy on purpose: a fraction ``--unfollowed`` of the examples show the mover going another way than the
prompt says (as captions of real clips often misdescribe motion), so the base follows the named motion only part
of the time: the headroom a video reward can train. The EMA weights are saved, loaded back through ``WanPolicy`` and
evaluated on the held-out prompts with the ``toy-video`` reward; the report lands in ``<out>/pretrain_report.json``.

    python scripts/pretrain_toy_video.py --out assets/toy-wan   # the committed base: defaults below
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
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

from flowrl.core.stats import prompt_mean_se
from flowrl.image.models.toy import word_tokenizer
from flowrl.image.toy_video import DIRECTIONS, FRAMES, SIZE, plan, split_clips
from flowrl.image.toy_video import draw as draw_clip
from flowrl.image.toy_world import COLOURS, SHAPES

WORDS = ["a", "moving", "then", "appears", *DIRECTIONS, *COLOURS, *SHAPES]
TOKENS = 16  # the longest prompt is 12 words and its end token


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, out="assets/toy-wan", steps=2000, batch_size=16, per="prompt")
    add_base_options(p, unfollowed=0.35, unfollowed_help="fraction of examples moving another way", width=128,
                     layers=4, layers_help="transformer blocks")  # fmt: skip
    p.add_argument("--init", default="", help="a saved toy video base to continue from (its transformer and UMT5)")
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """The tiny Wan's components: transformer (4×4 pixel patches, one frame per token row), scheduler, UMT5 and its
    tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(args.seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 4, 4), num_attention_heads=4, attention_head_dim=args.width // 4, in_channels=3,
        out_channels=3, text_dim=32, freq_dim=64, ffn_dim=2 * args.width, num_layers=args.layers,
        cross_attn_norm=True, rope_max_seq_len=32,
    )  # fmt: skip
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 32, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                     num_heads=4, relative_attention_num_buckets=8))  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=args.sigma_shift)
    if args.init:  # continue training a saved base (its architecture must be this one)
        saved = WanTransformer3DModel.from_pretrained(args.init, subfolder="transformer")
        transformer.load_state_dict(saved.state_dict())
        t5.load_state_dict(UMT5EncoderModel.from_pretrained(args.init, subfolder="text_encoder").state_dict())
    return transformer, scheduler, t5, word_tokenizer(WORDS, TOKENS)


def example(clip, rng: random.Random, unfollowed: float) -> torch.Tensor:
    """A training clip ``[3, F, H, W]`` in [−1, 1] of ``clip``: its mover going the named way, or (a share
    ``unfollowed`` of noisy labels) another."""
    track = plan(clip, FRAMES, SIZE, rng)
    direction = None
    if rng.random() < unfollowed:
        direction = rng.choice([d for d in DIRECTIONS if d != clip.direction])
    return draw_clip(clip, track, FRAMES, SIZE, direction).permute(1, 0, 2, 3) * 2 - 1


def embed(t5, tok, texts: list[str]) -> torch.Tensor:
    """UMT5 states of ``texts``, zeros past each one's end (what ``WanPolicy`` feeds the transformer)."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    batch = tok([prompt_clean(t) for t in texts], padding="max_length", max_length=TOKENS, truncation=True,
                return_attention_mask=True, return_tensors="pt")  # fmt: skip
    states = t5(batch.input_ids, batch.attention_mask).last_hidden_state
    return states * batch.attention_mask[..., None].to(states.dtype)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train = split_clips("train")
    net, scheduler, t5, tok = build(args)
    live = (net, t5)
    ema, params, opt, rng, gen = training_setup(args, live)
    start = time.time()
    for step in range(args.steps):
        asked = [rng.choice(train) for _ in range(args.batch_size)]
        x0 = torch.stack([example(c, rng, args.unfollowed) for c in asked])
        sigma = shifted_sigmas(args.batch_size, args.sigma_shift, gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None, None, None]
        v = net(hidden_states=(1 - s) * x0 + s * noise, timestep=sigma * 1000,
                encoder_hidden_states=embed(t5, tok, [c.text for c in asked]), return_dict=False)[0]  # fmt: skip
        loss = (v - (noise - x0)).square().mean()
        optimizer_step(opt, params, loss, step, args, ema, live, start)
    train_seconds = time.time() - start
    write_base(
        args,
        lambda tmp: save(tmp, ema, scheduler, tok),
        lambda tmp: evaluate_folder(tmp, args),
        train_seconds,
        unfollowed=args.unfollowed,
        width=args.width,
        layers=args.layers,
        **({"init": args.init} if args.init else {}),
    )
    return 0


def save(path: str, ema: list, scheduler, tok) -> None:
    from diffusers import WanPipeline

    net, t5 = ema
    pipe = WanPipeline(tokenizer=tok, text_encoder=t5, vae=None, scheduler=scheduler, transformer=net)
    pipe.save_pretrained(path, safe_serialization=True)
    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    index["_note"] = f"flowrl toy video base: pixel space (no vae), {FRAMES} frames; load with flowrl's WanPolicy"
    with open(os.path.join(path, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def evaluate_folder(path: str, args: argparse.Namespace) -> dict:
    """Held-out ``toy-video`` parts of the saved model, loaded as a user would (own noise per (prompt, seed))."""
    from flowrl.image.generate import generate
    from flowrl.image.models import WanPolicy
    from flowrl.rewards import RewardSet

    policy = WanPolicy(path, max_sequence_length=TOKENS, num_frames=FRAMES)
    texts = [c.text for c in split_clips("held-out")]
    prompts = [p for p in texts for _ in range(args.eval_seeds)]
    seeds = [k for _ in texts for k in range(args.eval_seeds)]
    videos = generate(policy, prompts, seeds, resolution=SIZE, num_steps=args.eval_steps)
    _, parts = RewardSet.from_specs([{"name": "toy-video"}])(videos, prompts)
    out = {"num_eval_samples": len(prompts), "eval_steps": args.eval_steps}
    for part in ("toy-video", "toy-video/objects", "toy-video/motion", "toy-video/consistency"):
        mean, se = prompt_mean_se(parts[part], prompts)
        key = "held_out_" + part.rpartition("/")[2].replace("toy-video", "reward")
        out[key], out[key + "_se"] = round(mean, 4), round(se, 4)
    return out


if __name__ == "__main__":
    sys.exit(main())
