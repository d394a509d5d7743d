"""Seconds per training iteration of the main job with the speed paths off and on, and how far they move samples.

    python scripts/bench_speed.py [--repeats 3] [--iterations 3] [--out bench/speed]

"off" is the main job's config with ``model.untrained_copy=none``, ``train.overlap_rewards=false`` and
``model.prompt_cache=0`` (every pass on the live fp32 module, rewards after sampling, prompts encoded every time);
"on" is the config as shipped. The two are interleaved (off, on, off, on, ...), each repeat a fresh process, one
warm-up iteration and ``--iterations`` timed ones; the report gives min / median / max seconds per iteration over
all timed iterations and the ratio of the medians. Then the base model's held-out evaluation (the main job's 94
prompts × 8 seed indices, each pair's own noise) is generated both ways: the largest difference between the two
sets of images, and the mean reward ± SE (prompt as the unit) of each. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from flowrl.core.stats import prompt_mean_se
from flowrl.image.run import eval_pairs
from flowrl.image.trainer import evaluate, setup, train_step
from flowrl.recipes import load_config

CONFIG = "configs/demo.yaml"
OFF = ["model.untrained_copy=none", "train.overlap_rewards=false", "model.prompt_cache=0"]
QUIET = ["eval.enabled=false", "output.progress=false"]


def time_in_child(overrides: list[str], iterations: int) -> list[float]:
    """``time_iterations`` in a fresh process (a command of its own, as the comparison must be)."""
    cmd = [sys.executable, __file__, "--child", json.dumps(overrides), "--iterations", str(iterations)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_iterations(overrides: list[str], iterations: int) -> list[float]:
    """Seconds of ``iterations`` training iterations after one warm-up, from a fresh setup."""
    run = setup(load_config(CONFIG, [*QUIET, *overrides]))
    train_step(run)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        train_step(run)
        seconds.append(time.perf_counter() - start)
    return seconds


def base_evaluation(overrides: list[str]) -> tuple[torch.Tensor, dict[str, float]]:
    """The base model's held-out images and its mean reward ± SE."""
    cfg = load_config(CONFIG, ["output.progress=false", *overrides])
    run = setup(cfg)
    prompts, seeds = eval_pairs(cfg, run.eval_prompts)
    start = time.perf_counter()
    images, parts = evaluate(run, prompts, seeds)
    seconds = time.perf_counter() - start
    mean, se = prompt_mean_se(parts["toy-geneval"], prompts)
    strict, strict_se = prompt_mean_se(parts["toy-geneval/strict"], prompts)
    return images, {"reward": mean, "reward_se": se, "strict": strict, "strict_se": strict_se, "eval_s": seconds}


def summary(seconds: list[float]) -> dict[str, float]:
    return {"min": min(seconds), "median": statistics.median(seconds), "max": max(seconds), "n": len(seconds)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", default="bench/speed")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON overrides: time them here and print the seconds
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(time_iterations(json.loads(args.child), args.iterations)))
        return 0
    times: dict[str, list[float]] = {"off": [], "on": []}
    for k in range(args.repeats):
        for name, overrides in (("off", OFF), ("on", [])):
            times[name] += time_in_child(overrides, args.iterations)
            print(f"repeat {k}: {name} {times[name][-args.iterations :]}", file=sys.stderr, flush=True)
    off_images, off_eval = base_evaluation(OFF)
    on_images, on_eval = base_evaluation([])
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    result = {
        "command": f"python scripts/bench_speed.py --repeats {args.repeats} --iterations {args.iterations}",
        "config": CONFIG,
        "off_overrides": OFF,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads{gpu}",
        "seconds_per_iteration": {name: summary(s) for name, s in times.items()},
        "all_seconds": times,
        "ratio_median": statistics.median(times["off"]) / statistics.median(times["on"]),
        "base_eval": {"off": off_eval, "on": on_eval},
        "max_image_difference": float((off_images - on_images).abs().max()),
        "mean_image_difference": float((off_images - on_images).abs().mean()),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "result.md"), "w", encoding="utf-8") as f:
        f.write(report(result))
    print(report(result))
    return 0


def report(r: dict) -> str:
    s, e = r["seconds_per_iteration"], r["base_eval"]
    lines = [
        "# Speed of the main job's training iteration",
        "",
        f"`{r['command']}` on {r['machine']}; config `{r['config']}`; off = `{' '.join(r['off_overrides'])}`.",
        "",
        "| paths | s / iteration min | median | max | timed iterations |",
        "|---|---|---|---|---|",
    ]
    for name in ("off", "on"):
        lines.append(f"| {name} | {s[name]['min']:.2f} | {s[name]['median']:.2f} | {s[name]['max']:.2f} | "
                     f"{s[name]['n']} |")  # fmt: skip
    lines += [
        "",
        f"Ratio of the medians (off / on): **{r['ratio_median']:.2f}×**.",
        "",
        "Base model, held-out evaluation (94 prompts × 8 seed indices, SE over prompts):",
        "",
        "| paths | reward | strict | evaluation seconds |",
        "|---|---|---|---|",
    ]
    for name in ("off", "on"):
        lines.append(f"| {name} | {e[name]['reward']:.4f} ± {e[name]['reward_se']:.4f} | "
                     f"{e[name]['strict']:.4f} ± {e[name]['strict_se']:.4f} | {e[name]['eval_s']:.1f} |")  # fmt: skip
    lines += [
        "",
        f"Largest pixel difference between the two evaluations' images: {r['max_image_difference']:.4f} "
        f"(mean {r['mean_image_difference']:.5f}; images in [0, 1]).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
