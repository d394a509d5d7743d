"""``flowrl bench``: every method on the toy world with the same base, prompts, seeds and training-time budget.

A preset (``configs/bench/*.yaml``) names a base config, the budget, the evaluation interval and the methods, each
a list of ``key=value`` overrides of the base. Methods run one after another, each in a fresh process (so that its
peak memory is its own), and train until their budget of *training* seconds is spent; evaluation on the fixed
held-out (prompt, seed) pairs runs at fixed training-time intervals and is not counted in the budget, so every
method's reward-versus-time curve has points at the same times. Results: ``results.json``, ``results.md`` and
``reward_vs_time.png`` in the output folder, and each method's final LoRA under ``<method>[-r<k>]/checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from flowrl.atomic import write_json
from flowrl.options import ConfigError, load, option


@dataclass
class BenchMethod:
    name: str = option("", "label in the table and plot")
    overrides: list[str] = option([], "key=value overrides of the base config")


@dataclass
class BenchPreset:
    base: str = option("configs/demo.yaml", "the config every method starts from")
    overrides: list[str] = option([], "key=value overrides applied to every method first")
    budget_minutes: float = option(4.0, "training time per method and repeat (evaluation excluded)", low=0.01)
    eval_every_minutes: float = option(1.0, "held-out evaluation interval, in training time", low=0.01)
    repeats: int = option(1, "runs per method (seeds base seed + k)", low=1)
    baseline: str = option("flow-grpo", "the method whose final held-out reward sets the target")
    methods: list[BenchMethod] = dataclasses.field(default_factory=list, metadata={"help": "the methods to compare"})


def load_preset(path: str, methods: list[str] | None = None, **changes: Any) -> BenchPreset:
    """Read and check a preset; ``methods`` keeps only those (in the given order), ``changes`` set options."""
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f"bench preset {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        preset = load(BenchPreset, yaml.safe_load(f) or {})
    preset = dataclasses.replace(preset, **{k: v for k, v in changes.items() if v is not None})
    names = [m.name for m in preset.methods]
    if methods:
        unknown = [m for m in methods if m not in names]
        if unknown:
            raise ConfigError(f"--methods {unknown} not in {path} (it has {', '.join(names)})")
        preset.methods = [preset.methods[names.index(m)] for m in methods]
    if not preset.methods or len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{path}: methods must be a non-empty list of uniquely named entries")
    for m in preset.methods:
        method_config(preset, m, 0)  # every method's config validates before anything runs
    return preset


def method_config(preset: BenchPreset, method: BenchMethod, repeat: int):
    from flowrl.config import load_config

    cfg = load_config(preset.base, [*preset.overrides, *method.overrides, "output.progress=false"])
    cfg.seed += repeat
    return cfg


def run_method(preset: BenchPreset, method: BenchMethod, repeat: int, out_dir: str) -> dict[str, Any]:
    """Train one method for the budget with evaluations at fixed training times (runs in its own process)."""
    import torch

    from flowrl.trainer.flow import evaluate, setup, train_step
    from flowrl.trainer.run import eval_pairs, mean_se, save_checkpoint

    torch.set_num_threads(int(os.environ.get("FLOWRL_BENCH_THREADS", torch.get_num_threads())))
    cfg = method_config(preset, method, repeat)
    run = setup(cfg)
    prompts, seeds = eval_pairs(cfg, run.eval_prompts)
    strict_key = f"{next(iter(run.rewards.rewards))}/strict"

    def point(clock: float) -> dict[str, float]:
        _, parts = evaluate(run, prompts, seeds)
        reward, reward_se = mean_se(parts["reward"])
        out = {"t": clock, "reward": reward, "reward_se": reward_se, "iteration": run.iteration}
        if strict_key in parts:
            out["strict"], out["strict_se"] = mean_se(parts[strict_key])
        return out

    budget, every = 60 * preset.budget_minutes, 60 * preset.eval_every_minutes
    curve, metrics, clock, next_eval = [point(0.0)], [], 0.0, every
    while clock < budget:
        start = time.perf_counter()
        metrics.append(train_step(run))
        clock += time.perf_counter() - start
        if clock >= next_eval or clock >= budget:
            curve.append(point(clock))
            while next_eval <= clock:  # a slow iteration may pass several marks: evaluate once, at the next
                next_eval += every
    save_checkpoint(run, os.path.join(out_dir, "checkpoints", "final"))

    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in metrics)

    return {
        "method": method.name,
        "repeat": repeat,
        "curve": curve,
        "iterations": run.iteration,
        "train_seconds": clock,
        "seconds_per_iteration": clock / run.iteration,
        "nfe_per_sample": mean("sampler/nfe_per_sample"),
        "transitions_per_iteration": mean("train/transitions"),
        "peak_rss_gb": _peak_rss_gb(),
    }


def _peak_rss_gb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20


def _child(preset: BenchPreset, method: BenchMethod, repeat: int, out_dir: str, result_path: str) -> None:
    write_json(result_path, run_method(preset, method, repeat, out_dir))


def run_bench(preset: BenchPreset, out_dir: str, log=print) -> dict[str, Any]:
    """Run every method and repeat in a fresh process, then write the report; returns the results."""
    os.makedirs(out_dir, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    runs = []
    for method in preset.methods:
        for k in range(preset.repeats):
            folder = os.path.join(out_dir, method.name if preset.repeats == 1 else f"{method.name}-r{k}")
            result_path = os.path.join(folder, "result.json")
            os.makedirs(folder, exist_ok=True)
            started = time.time()
            proc = ctx.Process(target=_child, args=(preset, method, k, folder, result_path))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise RuntimeError(f"bench method {method.name!r} (repeat {k}) failed with exit code {proc.exitcode}")
            with open(result_path, encoding="utf-8") as f:
                runs.append(json.load(f))
            last = runs[-1]["curve"][-1]
            log(f"{method.name} r{k}: reward {last['reward']:.3f} after {runs[-1]['iterations']} iterations "
                f"({time.time() - started:.0f} s)")  # fmt: skip
    from flowrl.bench_report import summarise, write_report

    results = summarise(preset, runs)
    write_report(results, out_dir)
    return results


__all__ = ["BenchMethod", "BenchPreset", "load_preset", "method_config", "run_bench", "run_method"]
