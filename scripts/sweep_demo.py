"""Choose the main job's settings on the validation split: every variant trains on ``toy:train-no-val`` and is
scored on ``toy:validation`` (never on the held-out split), for a fixed number of iterations, over several seeds.

    python scripts/sweep_demo.py --variants VARIANTS.yaml --out sweep.jsonl [--base CONFIG] [--seeds 0,1] [--jobs 4]
    python scripts/sweep_demo.py --base configs/edit_demo.yaml --world toy-edit ...   # the edit demo's sweep

VARIANTS.yaml is a list of ``{name, iterations, overrides: [key=value, ...]}`` applied on top of ``--base``
(default configs/demo.yaml; the committed sweep in bench/demo_sweep/ ran on ``demo_lora_3b112b7.yaml`` there).
Each (variant, seed) runs in its own process and appends one JSON line to ``--out``: the validation reward before
and after, the paired gain with its standard error over prompts, and strict accuracy. Lines already in ``--out``
are skipped, so a stopped sweep continues where it was. The iteration count stands in for the demo's time limit:
give each variant the count it reaches on the target machine in that time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

# the data each world's sweep trains and scores on (the edit world's rows: `make edit-demo` writes data/toy-edit)
SPLITS = {
    "toy": ["data.train_prompts=toy:train-no-val", "data.eval_prompts=toy:validation"],
    "toy-edit": [
        "data.train_prompts=data/toy-edit/train-no-val.jsonl",
        "data.eval_prompts=data/toy-edit/validation.jsonl",
    ],
    "toy-video": ["data.train_prompts=toy-video:train-no-val", "data.eval_prompts=toy-video:validation"],
}


def run_one(
    base: str, world: str, name: str, iterations: int, overrides: list[str], seed: int, seeds_per_prompt: int
) -> dict:
    import torch

    from flowrl.core.stats import prompt_mean_se
    from flowrl.image.run import eval_pairs
    from flowrl.image.trainer import evaluate, setup, train_step
    from flowrl.recipes import load_config

    torch.set_num_threads(int(os.environ.get("SWEEP_THREADS", "2")))
    args = [
        *SPLITS[world],
        "train.max_minutes=0",
        *overrides,
        f"train.iterations={iterations}",
        f"seed={seed}",
        "output.progress=false",
    ]
    cfg = load_config(base, [*args, f"eval.seeds_per_prompt={seeds_per_prompt}"])
    run = setup(cfg)
    prompts, indices = eval_pairs(cfg, run.eval_prompts)
    start = time.time()
    _, before = evaluate(run, prompts, indices)
    rewards = []
    while run.iteration < iterations:
        rewards.append(train_step(run).get("reward/mean", float("nan")))  # none from a pair dataset
    _, after = evaluate(run, prompts, indices)
    out = {"name": name, "seed": seed, "iterations": iterations, "overrides": overrides}
    out["seconds"] = time.time() - start
    for part in before:  # the reward and each reported part (the toy world's strict accuracy, an edit's done ...)
        key, b, a = part.split("/")[-1], before[part], after[part]
        out[f"{key}_before"], _ = prompt_mean_se(b, prompts)
        out[f"{key}_after"], _ = prompt_mean_se(a, prompts)
        out[f"{key}_gain"], out[f"{key}_gain_se"] = prompt_mean_se(a - b, prompts)
    out["train_reward_first"], out["train_reward_last"] = rewards[0], sum(rewards[-3:]) / len(rewards[-3:])
    return out


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base", default="configs/demo.yaml")
    p.add_argument("--world", choices=sorted(SPLITS), default="toy", help="whose validation split to score on")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--seeds-per-prompt", type=int, default=8)
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args()
    with open(a.variants, encoding="utf-8") as f:
        variants = yaml.safe_load(f)
    done = set()
    if os.path.exists(a.out):
        with open(a.out, encoding="utf-8") as f:
            done = {(r["name"], r["seed"]) for r in map(json.loads, f)}
    todo = [(v, s) for v in variants for s in map(int, a.seeds.split(",")) if (v["name"], s) not in done]
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = [
            pool.submit(
                run_one, a.base, a.world, v["name"], v["iterations"], v.get("overrides", []), s, a.seeds_per_prompt
            )
            for v, s in todo
        ]
        for fut in futures:
            row = fut.result()
            with open(a.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            gain = f"gain {row['reward_gain']:+.3f} ± {row['reward_gain_se']:.3f}"
            parts = " ".join(
                f"{k[: -len('_gain')]} {row[k]:+.3f}" for k in row if k.endswith("_gain") and k != "reward_gain"
            )
            print(f"{row['name']} seed {row['seed']}: {gain} {parts} ({row['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
