"""Pretrain the toy base model from scratch on CPU (deterministic for a seed, torch version and thread count).

Flow matching on rendered ground truth of the *train* prompts only: x_σ = (1 − σ)·x0 + σ·ε with
σ = sigmoid(N(0, 1)) (SD3's logit-normal sampling) moved by the sampling schedule's shift s,
σ ← s·σ / (1 + (s − 1)·σ), so that the high-noise steps where the layout is decided are trained as
often as they are sampled; loss ‖v − (ε − x0)‖². The text encoder is
trained jointly; 10% of prompts are dropped to "" so that classifier-free guidance is available.
Captions are noisy on purpose: a fraction ``--mislabel`` of the images show one object in another
colour than the caption says (``toy_world.mislabel``), as web captions misname what an image shows.
The base then draws the named colour only part of the time, the failure RL on a prompt-fidelity
reward is known to fix (GenEval for SD3.5 in Flow-GRPO), rather than failing only at drawing
crisp shapes, which a few minutes of CPU RL cannot teach.
The EMA weights are saved in SD3 pipeline layout, loaded back through ``SD3Policy`` and evaluated
on the held-out prompts; the report lands in ``<out>/pretrain_report.json``.

    python scripts/pretrain_toy.py --out assets/toy-sd3   # the committed base: defaults below
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import sys
import time

import torch
from pretrain_common import add_common_options, shifted_sigmas, update_ema

from flowrl.core.lr_schedule import warmup_cosine
from flowrl.core.stats import prompt_mean_se
from flowrl.image.generate import generate
from flowrl.image.models import SD3Policy
from flowrl.image.models.toy import TOY_RESOLUTION, build_toy_model, save_sd3_folder
from flowrl.image.toy_world import mislabel, render, split_scenes
from flowrl.rewards import make_reward


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(p, out="assets/toy-sd3", steps=4000, batch_size=64, per="prompt")
    p.add_argument("--mislabel", type=float, default=0.5, help="fraction of images recoloured against their caption")
    p.add_argument("--drop-prompt", type=float, default=0.1, help="fraction of empty prompts (for CFG)")
    return p.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    return warmup_cosine(step, args.lr, args.warmup, args.steps)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train, held_out = split_scenes()
    model = build_toy_model(args.seed)
    net, text = model.transformer, model.text_encoder
    ema = [copy.deepcopy(net).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)]
    params = [*net.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net.train()
    text.train()
    start = time.time()
    for step in range(args.steps):
        scenes = [rng.choice(train) for _ in range(args.batch_size)]
        drawn = [mislabel(s, rng) if rng.random() < args.mislabel else s for s in scenes]
        x0 = torch.stack([render(s, TOY_RESOLUTION, seed=rng.randrange(2**31)) for s in drawn]) * 2 - 1
        prompts = ["" if rng.random() < args.drop_prompt else s.text for s in scenes]
        ids = model.tokenizer(
            prompts, padding="max_length", max_length=model.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        out = text(ids, output_hidden_states=True)
        sigma = shifted_sigmas(args.batch_size, args.sigma_shift, gen)
        noise = torch.randn(x0.shape, generator=gen)
        s = sigma[:, None, None, None]
        xt = (1 - s) * x0 + s * noise
        v = net(
            hidden_states=xt,
            encoder_hidden_states=out.hidden_states[-2],
            pooled_projections=out.text_embeds,
            timestep=sigma * 1000,
            return_dict=False,
        )[0]
        loss = (v - (noise - x0)).square().mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_ema(ema, [net, text], step, args.ema)
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step, args):.2e}  {time.time() - start:.0f}s",
                flush=True,
            )
    train_seconds = time.time() - start

    model.transformer, model.text_encoder = ema
    tmp = args.out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_sd3_folder(model, tmp)
    report = evaluate_folder(tmp, held_out, args)
    report.update(
        steps=args.steps,
        batch_size=args.batch_size,
        mislabel=args.mislabel,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        train_seconds=round(train_seconds, 1),
        torch=torch.__version__,
    )
    with open(os.path.join(tmp, "pretrain_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    print(json.dumps(report, indent=2))


def evaluate_folder(path: str, scenes: list, args: argparse.Namespace) -> dict:
    """Held-out partial / strict scores of the saved model, loaded as a user would."""
    policy = SD3Policy(path)
    prompts = [s.text for s in scenes for _ in range(args.eval_seeds)]
    seeds = [k for _ in scenes for k in range(args.eval_seeds)]
    images = generate(policy, prompts, seeds, resolution=TOY_RESOLUTION, num_steps=args.eval_steps)
    scores = make_reward("toy-geneval")(images, prompts)
    partial, partial_se = prompt_mean_se(scores["score"], prompts)  # own noise per (prompt, seed); SE over prompts
    return {
        "held_out_partial": round(partial, 4),
        "held_out_partial_se": round(partial_se, 4),
        "held_out_strict": round(scores["strict"].mean().item(), 4),
        "num_eval_samples": len(prompts),
        "eval_steps": args.eval_steps,
    }


if __name__ == "__main__":
    sys.exit(main())
