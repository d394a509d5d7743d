"""``flowrl bench``: every method on the toy world with the same base, prompts, seeds and training-time budget.

A preset (``configs/bench/*.yaml``) names a base config, the budget, the evaluation interval and the methods, each
a list of ``key=value`` overrides of the base. Every run is a fresh process (its peak memory is its own) that trains
until its budget of *training* seconds is spent. The protocol (see DESIGN.md, "Measurement"):

1. **Learning-rate selection** (with ``lr_grid``): each method trains once per learning rate of the grid (and per
   ``selection_repeats``) on ``train_prompts`` and is scored at the end on ``validation_prompts``; the rate with the
   best mean validation reward is the method's. The held-out split plays no part in the choice.
2. **Reported runs**: ``repeats`` runs per method at its rate (seeds: the base seed + k), evaluated on the held-out
   (prompt, seed index) pairs at fixed training-time intervals (not counted in the budget), so every curve has points
   at the same times.

Every run writes ``result.json`` (with the settings it ran) into its own folder; a rerun with the same output folder
keeps finished runs whose settings are unchanged and runs the rest, so a long protocol can span several sittings.
Every run holds ``$FLOWRL_BENCH_LOCK`` (a file, when the variable is set) while it trains, so that other work can
wait for the gap between runs.
The report (``flowrl.image.bench_report``) is ``results.json``, ``results.md`` and ``reward_vs_time.png``; each
reported run's final LoRA is under ``<method>-r<k>/checkpoints/final``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from flowrl.core.atomic import write_json
from flowrl.core.errors import ConfigError
from flowrl.core.method_options import upgrade
from flowrl.core.options import load, option


@dataclass
class BenchMethod:
    name: str = option("", "label in the table and plot")
    overrides: list[str] = option([], "key=value overrides of the base config")


@dataclass
class BenchPreset:
    base: str = option("configs/demo.yaml", "the config every method starts from")
    overrides: list[str] = option([], "key=value overrides applied to every method first")
    train_prompts: str = option("toy:train-no-val", "prompts every run trains on (disjoint from both splits below)")
    validation_prompts: str = option("toy:validation", "prompts the learning rate is chosen on")
    eval_prompts: str = option("toy:held-out", "prompts the reported curves are measured on (only reported)")
    lr_grid: list[float] = option([], "learning rates to choose from per method on the validation prompts ([] = none)")
    selection_repeats: int = option(1, "runs per method and learning rate during selection", low=1)
    budget_minutes: float = option(4.0, "training time per run (evaluation excluded)", low=0.01)
    eval_every_minutes: float = option(1.0, "held-out evaluation interval, in training time", low=0.01)
    repeats: int = option(1, "reported runs per method (seeds base seed + k)", low=1)
    baseline: str = option("flow-grpo", "the method whose final held-out reward sets the target")
    methods: list[BenchMethod] = dataclasses.field(default_factory=list, metadata={"help": "the methods to compare"})


@dataclass(frozen=True)
class RunSpec:
    """One run of the protocol: which method, repeat and learning rate (None: the config's), selection or report."""

    method: BenchMethod
    repeat: int
    lr: float | None
    phase: str  # "select" (scored once, at the end, on the validation prompts) or "report" (held-out curve)

    @property
    def folder(self) -> str:
        if self.phase == "select":
            return os.path.join("select", f"{self.method.name}-lr{self.lr:g}-r{self.repeat}")
        return f"{self.method.name}-r{self.repeat}"


def load_preset(path: str, methods: list[str] | None = None, **changes: Any) -> BenchPreset:
    """Read and check a preset; ``methods`` keeps only those (in the given order), ``changes`` set options."""
    from flowrl.core.presets import yaml_load

    if not os.path.isfile(path):
        raise ConfigError(f"bench preset {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        preset = load(BenchPreset, yaml_load(f) or {})
    preset = dataclasses.replace(preset, **{k: v for k, v in changes.items() if v is not None})
    names = [m.name for m in preset.methods]
    if methods:
        unknown = [m for m in methods if m not in names]
        if unknown:
            raise ConfigError(f"--methods {unknown} not in {path} (it has {', '.join(names)})")
        preset.methods = [preset.methods[names.index(m)] for m in methods]
    if not preset.methods or len(set(names)) != len(names) or not all(names):
        raise ConfigError(f"{path}: methods must be a non-empty list of uniquely named entries")
    if any(not (lr > 0) for lr in preset.lr_grid):
        raise ConfigError(f"lr_grid must hold positive learning rates, got {preset.lr_grid}")
    _refuse_overlap(preset)
    for m in preset.methods:
        method_config(preset, RunSpec(m, 0, preset.lr_grid[0] if preset.lr_grid else None, "report"))
    return preset


def _refuse_overlap(preset: BenchPreset) -> None:
    """Training, validation and held-out prompts must be disjoint: a learning rate chosen on prompts it trained on,
    or a curve measured on them, would reward memorising."""
    from flowrl.image.data import load_prompts

    pairs = [("train_prompts", "eval_prompts")]
    if preset.lr_grid:
        pairs += [("validation_prompts", "eval_prompts"), ("train_prompts", "validation_prompts")]
    for a, b in pairs:
        shared = set(load_prompts(getattr(preset, a))) & set(load_prompts(getattr(preset, b)))
        if shared:
            raise ConfigError(
                f"{a} ({getattr(preset, a)}) and {b} ({getattr(preset, b)}) share {len(shared)} prompts, e.g. "
                f"{sorted(shared)[0]!r}; they must be disjoint"
            )


def method_config(preset: BenchPreset, spec: RunSpec):
    """The resolved config of one run: the base, the preset's and the method's overrides, its prompts, learning rate
    and seed (base seed + repeat)."""
    from flowrl.recipes import load_config

    eval_prompts = preset.validation_prompts if spec.phase == "select" else preset.eval_prompts
    data = [f"data.train_prompts={preset.train_prompts}", f"data.eval_prompts={eval_prompts}"]
    lr = [f"train.lr={spec.lr!r}"] if spec.lr is not None else []
    cfg = load_config(preset.base, [*preset.overrides, *spec.method.overrides, *data, *lr, "output.progress=false"])
    cfg.seed += spec.repeat
    return cfg


def run_method(preset: BenchPreset, spec: RunSpec, out_dir: str) -> dict[str, Any]:
    """Train one run for the budget, evaluating at fixed training times (a report run) or at the start and the end
    (a selection run); runs in its own process. Each curve point holds the mean reward with its SE over prompts and
    the paired gain over the run's own first evaluation (same pairs, same noise) with its SE over prompts."""
    import torch

    from flowrl.recipes import recipe_for

    torch.set_num_threads(int(os.environ.get("FLOWRL_BENCH_THREADS", torch.get_num_threads())))
    cfg = method_config(preset, spec)
    recipe = recipe_for(cfg)
    run = recipe.setup(cfg)
    strict_key = f"{cfg.rewards[0].label or cfg.rewards[0].name}/strict"
    first: dict[str, torch.Tensor] = {}
    rows: list[str] = []  # the evaluation's (prompt, seed index) rows, by prompt

    def point(clock: float) -> dict[str, float]:
        prompts, parts = recipe.scores(run)
        rows[:] = prompts
        # the machine's 1-minute load: about the run's own threads when nothing else runs (a check on the timings)
        out = {"t": clock, "iteration": run.iteration, "load": os.getloadavg()[0]}
        return {**out, **curve_point(parts, prompts, first, strict_key)}

    budget = 60 * preset.budget_minutes
    every = 60 * preset.eval_every_minutes if spec.phase == "report" else math.inf
    curve, metrics, clock, next_eval = [point(0.0)], [], 0.0, every
    while clock < budget:
        start = time.perf_counter()
        metrics.append(recipe.train_step(run))
        clock += time.perf_counter() - start
        if clock >= next_eval or clock >= budget:
            curve.append(point(clock))
            while next_eval <= clock:  # a slow iteration may pass several marks: evaluate once, at the next
                next_eval += every
    if spec.phase == "report":
        recipe.save_checkpoint(run, os.path.join(out_dir, "checkpoints", "final"))

    def mean(key: str) -> float:
        return statistics.fmean(m[key] for m in metrics)

    return {
        "method": spec.method.name,
        "repeat": spec.repeat,
        "phase": spec.phase,
        "lr": cfg.train.lr,
        "seed": cfg.seed,
        "eval_prompts": cfg.data.eval_prompts,
        "num_eval_samples": len(rows),
        "curve": curve,
        "iterations": run.iteration,
        "train_seconds": clock,
        "seconds_per_iteration": clock / run.iteration,
        "nfe_per_sample": mean("sampler/nfe_per_sample"),
        "transitions_per_iteration": mean("train/rows"),
        "peak_rss_gb": _peak_rss_gb(),
    }


def curve_point(parts: dict[str, Any], prompts: list[str], first: dict[str, Any], strict_key: str) -> dict[str, float]:
    """One evaluation's means with their SEs over prompts: the trained reward, its paired gain over the run's first
    evaluation (kept in ``first``), the strict accuracy when scored, and each watch reward (``watch/<name>``, never
    trained on: a learned reward's rise shows beside the evaluator it imitates) with its own paired gain."""
    from flowrl.core.stats import prompt_mean_se

    watched = [k for k in parts if k.startswith("watch/") and k.count("/") == 1]
    for key in ("reward", *watched):
        first.setdefault(key, parts[key])
    out: dict[str, float] = {}
    for key, name in (("reward", "reward"), *((k, k) for k in watched)):
        out[name], out[f"{name}_se"] = prompt_mean_se(parts[key], prompts)
        gain = "gain" if key == "reward" else f"{name}_gain"
        out[gain], out[f"{gain}_se"] = prompt_mean_se(parts[key] - first[key], prompts)
    if strict_key in parts:
        out["strict"], out["strict_se"] = prompt_mean_se(parts[strict_key], prompts)
    return out


def _peak_rss_gb() -> float:
    """This process's peak resident memory (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20


def _child(preset: BenchPreset, spec: RunSpec, out_dir: str, result_path: str, settings: dict[str, Any]) -> None:
    write_json(result_path, {**run_method(preset, spec, out_dir), "settings": settings})


def _settings(preset: BenchPreset, spec: RunSpec, base_only: bool = False) -> dict[str, Any]:
    """What a finished run must match to be kept on a rerun: its resolved config and the budget it trained
    (``base_only``: the config without the method's own overrides)."""
    from flowrl.image.config import to_dict

    if base_only:
        spec = dataclasses.replace(spec, method=BenchMethod(spec.method.name, []))
    cfg = to_dict(method_config(preset, spec))
    cfg.pop("output", None)
    timing = {"budget_minutes": preset.budget_minutes, "eval_every_minutes": preset.eval_every_minutes}
    return json.loads(json.dumps({"config": cfg, "phase": spec.phase, **timing}))


def _same_settings(done: Any, now: Any, base: Any) -> bool:
    """Whether a finished run's recorded settings ``done`` are this run's ``now``. An option added to flowrl after
    the run was recorded is absent from ``done``; it matches when this run leaves it at the base config's value
    (``base``), which is what the run had before the option existed. Anything else must be equal."""
    if isinstance(done, dict) and isinstance(now, dict):
        if set(done) - set(now):
            return False
        base = base if isinstance(base, dict) else {}
        missing = object()
        return all(
            _same_settings(done[k], v, base.get(k)) if k in done else v == base.get(k, missing) for k, v in now.items()
        )
    return done == now


def run_once(preset: BenchPreset, spec: RunSpec, out_dir: str, log=print) -> dict[str, Any]:
    """The result of ``spec``: read back when its folder holds a finished run with the same settings, else run now
    in a fresh process. A finished run with other settings is an error (choose another output folder)."""
    folder = os.path.join(out_dir, spec.folder)
    result_path = os.path.join(folder, "result.json")
    settings = _settings(preset, spec)
    if os.path.isfile(result_path):
        with open(result_path, encoding="utf-8") as f:
            done = json.load(f)
        recorded = done.get("settings")
        if isinstance(recorded, dict):  # a run recorded before method options were nested under their method
            recorded = {**recorded, "config": upgrade(type(method_config(preset, spec)), recorded.get("config"))}
        if not _same_settings(recorded, settings, _settings(preset, spec, base_only=True)):
            raise ConfigError(
                f"{result_path} holds a finished run with other settings than this preset's; use another --out"
            )
        log(f"{spec.folder}: finished earlier, kept")
        return done
    os.makedirs(folder, exist_ok=True)
    with _machine_lock():
        started = time.time()
        proc = multiprocessing.get_context("spawn").Process(
            target=_child, args=(preset, spec, folder, result_path, settings)
        )
        proc.start()
        proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"bench run {spec.folder!r} failed with exit code {proc.exitcode}")
    with open(result_path, encoding="utf-8") as f:
        result = json.load(f)
    last = result["curve"][-1]
    log(f"{spec.folder}: {result['eval_prompts']} reward {last['reward']:.3f} ± {last['reward_se']:.3f} after "
        f"{result['iterations']} iterations ({time.time() - started:.0f} s)")  # fmt: skip
    return result


@contextlib.contextmanager
def _machine_lock():
    """Hold an exclusive ``flock`` on ``$FLOWRL_BENCH_LOCK`` (when set) for the length of one run, so that other work
    on a small machine can wait for the gap between runs (``flock $FLOWRL_BENCH_LOCK make test``) instead of sharing
    the cores with a timed run."""
    path = os.environ.get("FLOWRL_BENCH_LOCK")
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def choose_lr(selection: list[dict[str, Any]]) -> float:
    """The learning rate whose selection runs end with the highest mean validation reward (ties: the smaller)."""
    by_lr: dict[float, list[float]] = {}
    for r in selection:
        by_lr.setdefault(r["lr"], []).append(r["curve"][-1]["reward"])
    return max(sorted(by_lr), key=lambda lr: statistics.fmean(by_lr[lr]))


def run_bench(preset: BenchPreset, out_dir: str, log=print) -> dict[str, Any]:
    """The whole protocol (selection, then the reported runs), then the report; returns the results."""
    os.makedirs(out_dir, exist_ok=True)
    runs, selection = [], []
    for method in preset.methods:
        chosen = None
        if preset.lr_grid:
            tried = [
                run_once(preset, RunSpec(method, k, lr, "select"), out_dir, log)
                for lr in preset.lr_grid
                for k in range(preset.selection_repeats)
            ]
            selection += tried
            chosen = choose_lr(tried)
            log(f"{method.name}: lr {chosen:g} chosen on {preset.validation_prompts}")
        runs += [run_once(preset, RunSpec(method, k, chosen, "report"), out_dir, log) for k in range(preset.repeats)]
    from flowrl.image.bench_report import summarise, write_report

    results = summarise(preset, runs, selection)
    write_report(results, out_dir)
    return results


__all__ = [
    "BenchMethod",
    "BenchPreset",
    "RunSpec",
    "choose_lr",
    "load_preset",
    "method_config",
    "run_bench",
    "run_method",
    "run_once",
]
