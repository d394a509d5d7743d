"""Train the toy world's learned reward (``flowrl.image.toy_reward``) to predict the toy evaluator's partial score,
as PickScore learns human preferences, and report its held-out agreement with the evaluator.

Data, labelled by the evaluator (``toy-geneval``): for each prompt, the toy base's own samples (``assets/toy-sd3``,
10-step ODE, what RL will show the reward), ground-truth renders, renders of a mislabelled scene (one colour wrong),
and renders with noise added or channels swapped. Training prompts are the world's ``toy:train`` split; the report
scores ``toy:held-out`` prompts (never seen) the same way: correlation with the evaluator, mean absolute error, and
how often the learned reward orders two of a prompt's base samples as the evaluator does (what GRPO and DPO use).

    python scripts/train_toy_reward.py --out assets/toy-reward --threads 1    # the committed model (results depend
                                                                             # on the thread count)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch

from flowrl.core.atomic import atomic_dir
from flowrl.image.data import load_prompts
from flowrl.image.toy_reward import ToyRewardModel, prompt_code, save_reward_model
from flowrl.image.toy_world import mislabel, parse_prompt, render
from flowrl.rewards import make_reward


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/toy-reward", help="output folder (replaced atomically)")
    p.add_argument("--base", default="assets/toy-sd3", help="the toy base whose samples are labelled")
    p.add_argument("--samples", type=int, default=6, help="base samples per training prompt")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def dataset(prompts: list[str], base: str, samples: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Images ``[M, 3, 32, 32]``, their prompts and the evaluator's scores ``[M]`` (see the module docstring)."""
    from flowrl.image.generate import generate
    from flowrl.image.models import SD3Policy

    rng = random.Random(seed)
    policy = SD3Policy(base)
    seeds = [seed * 100_000 + k for _ in prompts for k in range(samples)]
    images = [generate(policy, [p for p in prompts for _ in range(samples)], seeds, resolution=32, num_steps=10)]
    texts = [p for p in prompts for _ in range(samples)]
    for k, p in enumerate(prompts):
        scene = parse_prompt(p)
        truth = torch.stack([render(scene, seed=seed + 2 * k), render(scene, seed=seed + 2 * k + 1)])
        wrong = render(mislabel(scene, rng), seed=seed + k)[None]
        noisy = (truth[:1] + 0.3 * torch.randn(1, 3, 32, 32)).clamp(0, 1)
        swapped = truth[1:, torch.randperm(3)]
        images.append(torch.cat([truth, wrong, noisy, swapped]))
        texts += [p] * 5
    images_t = torch.cat(images)
    scores = make_reward("toy-geneval")(images_t, texts)["score"].float()
    return images_t, texts, scores


def agreement(model: ToyRewardModel, images: torch.Tensor, texts: list[str], truth: torch.Tensor, base: int) -> dict:
    """Pearson and Spearman correlation, mean absolute error, and the within-prompt pair order agreement over the
    first ``base`` rows (the base samples, consecutive per prompt)."""
    with torch.no_grad():
        pred = model(images, torch.stack([prompt_code(t) for t in texts]))

    def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    def ranks(x: torch.Tensor) -> torch.Tensor:
        return x.argsort().argsort().float()

    agree = total = 0
    for i in range(base):
        for j in range(i + 1, base):
            if texts[i] == texts[j] and truth[i] != truth[j]:
                total += 1
                agree += int((pred[i] - pred[j]) * (truth[i] - truth[j]) > 0)
    return {
        "pearson": round(pearson(pred, truth), 4),
        "spearman": round(pearson(ranks(pred), ranks(truth)), 4),
        "mae": round(float((pred - truth).abs().mean()), 4),
        "pair_order_agreement": round(agree / max(1, total), 4),
        "pairs": total,
        "rows": len(texts),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    train = load_prompts("toy:train")
    held_out = load_prompts("toy:held-out")
    x, texts, y = dataset(train, args.base, args.samples, args.seed)
    hx, htexts, hy = dataset(held_out, args.base, 2, args.seed + 1)
    codes = torch.stack([prompt_code(t) for t in texts])
    model = ToyRewardModel(args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        idx = torch.randint(len(y), (args.batch_size,), generator=gen)
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(step / args.steps * 3.14159)))
        for group in opt.param_groups:
            group["lr"] = float(lr)
        loss = (model(x[idx], codes[idx]) - y[idx]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)
    model.eval().requires_grad_(False)
    report = {
        "held_out": agreement(model, hx, htexts, hy, base=2 * len(held_out)),
        "train": agreement(model, x, texts, y, base=args.samples * len(train)),
        "data": {
            "train_prompts": len(train),
            "held_out_prompts": len(held_out),
            "base": args.base,
            "base_samples_per_prompt": args.samples,
        },
        **{k: getattr(args, k) for k in ("steps", "batch_size", "lr", "width", "seed", "threads")},
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
    }
    with atomic_dir(args.out) as tmp:
        save_reward_model(model, tmp)
        with open(f"{tmp}/report.json", "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
