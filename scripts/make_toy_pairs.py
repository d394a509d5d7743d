"""A pair dataset for offline DPO on the toy world (``data.pairs``), as a preference dataset is made from a base model:
``--samples`` ODE samples of the toy base per prompt, each scored by the toy evaluator (``toy-geneval``), the best
against the worst of each prompt (a prompt whose samples all score the same gives none); written as PNGs and a
JSONL file (``{"prompt", "chosen", "rejected", "label"}``). ``--soft`` labels each pair with
σ((r_chosen − r_rejected)/τ) instead of 1 (a Bradley-Terry preference from the scores).

    python scripts/make_toy_pairs.py --out /tmp/toy-pairs                    # toy:train-no-val, 8 samples each
    flowrl train --config configs/demo.yaml loss.name=dpo sampler.mode=ode data.pairs=/tmp/toy-pairs/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (pairs.jsonl and img/)")
    p.add_argument("--base", default="assets/toy-sd3", help="the toy base that draws the samples")
    p.add_argument("--prompts", default="toy:train-no-val", help="prompt source (disjoint from the evaluation splits)")
    p.add_argument("--samples", type=int, default=8, help="samples per prompt (the best and worst make its pair)")
    p.add_argument("--seed", type=int, default=0, help="seed indices seed·samples .. (seed + 1)·samples − 1")
    p.add_argument("--soft", type=float, default=0.0, help="τ > 0: soft labels σ(Δr/τ) (0: hard labels, 1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from PIL import Image

    from flowrl.image.data import load_prompts
    from flowrl.image.generate import generate
    from flowrl.image.models import SD3Policy
    from flowrl.rewards import make_reward

    if args.samples < 2:
        print("--samples must be at least 2 (a pair is two samples of a prompt)", file=sys.stderr)
        return 2
    prompts = load_prompts(args.prompts)
    policy, evaluator = SD3Policy(args.base), make_reward("toy-geneval")
    texts = [p for p in prompts for _ in range(args.samples)]
    seeds = [args.seed * args.samples + k for _ in prompts for k in range(args.samples)]
    images = generate(policy, texts, seeds, resolution=32, num_steps=10)
    scores = evaluator(images, texts)["score"].float().view(len(prompts), args.samples)
    os.makedirs(os.path.join(args.out, "img"), exist_ok=True)
    rows = []
    for i, prompt in enumerate(prompts):
        best, worst = int(scores[i].argmax()), int(scores[i].argmin())
        gap = float(scores[i, best] - scores[i, worst])
        if gap <= 0:
            continue
        names = []
        for kind, k in (("chosen", best), ("rejected", worst)):
            name = f"img/{i:04d}-{kind}.png"
            pixels = images[i * args.samples + k].mul(255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(os.path.join(args.out, name))
            names.append(name)
        label = 1 / (1 + math.exp(-gap / args.soft)) if args.soft > 0 else 1.0
        rows.append({"prompt": prompt, "chosen": names[0], "rejected": names[1], "label": round(label, 6)})
    with open(os.path.join(args.out, "pairs.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    gap = float((scores.max(1).values - scores.min(1).values).mean())
    print(f"{len(rows)} pairs of {len(prompts)} prompts (mean best-worst gap {gap:.3f}): {args.out}/pairs.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
