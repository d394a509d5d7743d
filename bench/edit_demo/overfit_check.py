"""Does the edit RL's gradient point uphill? Train on 4 training edits only and score those 4 (ODE, 4 seeds each)
every 4 iterations: a working update overfits them. The numbers in bench/edit_demo/README.md came from

    .venv/bin/python bench/edit_demo/overfit_check.py configs/edit_demo.yaml      # the toy edit world
    .venv/bin/python bench/edit_demo/overfit_check.py configs/demo.yaml           # the text-to-image toy, to compare

(one thread, beside a running sweep: the numbers do not depend on time).
"""

import random
import sys

import torch

from flowrl.image.trainer import evaluate, setup, train_step
from flowrl.recipes import load_config


def main(base: str, *extra: str) -> None:
    torch.set_num_threads(1)
    args = ["train.prompts_per_step=4", "output.progress=false", "eval.enabled=false", "train.max_minutes=0", *extra]
    run = setup(load_config(base, args))
    prompts = random.Random(3).sample(run.train_prompts, 4)
    run.train_prompts = prompts
    pairs = [p for p in prompts for _ in range(4)], [k for _ in prompts for k in range(4)]

    def score() -> str:
        _, parts = evaluate(run, *pairs)
        keys = ["reward", *(k for k in parts if "/" in k and not k.startswith("watch"))]
        return " ".join(f"{k.split('/')[-1]} {parts[k].mean():.3f}" for k in keys)

    print("it 0", score(), flush=True)
    for it in range(1, 13):
        metrics = train_step(run)
        if it % 4 == 0:
            print(f"it {it} train {metrics['reward/mean']:.3f}", score(), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
