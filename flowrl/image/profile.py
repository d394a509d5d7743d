"""``flowrl profile``: where the time of a training iteration goes, for any flow config.

Runs ``--warmup`` iterations, then ``--iterations`` measured ones (the device synchronised at every stage boundary),
then one checkpoint and one tensorboard write. Reports seconds per stage (mean over the measured iterations), the
network evaluations (NFE) of the rollout, and the achieved FLOP rate of each network stage: FLOPs of one forward
pass of one image, counted once by ``torch.utils.flop_counter`` on the live fp32 path, times the rows the stage
passed through the network (a backward pass counted as twice its forward). The untrained copy may run in bf16:
its rate is then in bf16 FLOPs, the same operations.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from typing import Any

import torch

from flowrl.core.inputs import row_inputs
from flowrl.image.config import Config

#: stages in the order the table lists them, with what each covers
STAGES = {
    "encode": "prompt encoding (text encoders, or the prompt cache)",
    "explore": "Sol-RL's exploration pool, sampled, decoded and scored (rollout.generate: sol-rl)",
    "rollout": "the whole rollout (network passes and the sampler's arithmetic)",
    "rollout_trained_forward": "  forward passes of the trained (SDE) steps, live module",
    "rollout_untrained_forward": "  forward passes of untrained steps (ODE steps, tails): the untrained copy",
    "decode": "VAE decoding",
    "rewards": "reward scoring",
    "advantages": "gathering the batch and the advantages",
    "replay_forward": "forward passes of the update (replay under the current policy)",
    "backward": "backward passes",
    "optimizer": "clipping and optimizer steps",
    "log": "one tensorboard write of the metrics",
    "checkpoint": "one checkpoint (weights and trainer state)",
}
#: network stages, with the forward passes one row costs (a backward pass ~ two forwards)
NETWORK = {"rollout_trained_forward": 1, "rollout_untrained_forward": 1, "replay_forward": 1, "backward": 2}


def forward_flops(run: Any) -> int:
    """FLOPs of one forward pass of one image at the run's resolution (the live path, guidance included)."""
    from torch.utils.flop_counter import FlopCounterMode

    policy = run.policy
    prompt = run.train_prompts[0]
    cond = policy.condition([prompt], row_inputs(run.inputs, [prompt])).as_dict()
    x = policy.initial_noise([0], run.cfg.model.resolution)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy.velocity(x, torch.tensor([0.5], device=x.device), cond)
    return int(counter.get_total_flops())


def profile(recipe: Any, cfg: Config, iterations: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Profile ``iterations`` training iterations of the image ``recipe`` after ``warmup`` ones; returns the report
    (see ``table``)."""
    run = recipe.setup(cfg)
    run.clock.sync = True
    for _ in range(warmup):
        recipe.train_step(run)
    seconds: dict[str, list[float]] = {}
    rows: dict[str, list[int]] = {}
    steps, nfe = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        metrics = recipe.train_step(run)
        steps.append(time.perf_counter() - start)
        nfe.append(metrics["rollout/nfe"])
        for name, s in run.clock.seconds.items():
            seconds.setdefault(name, []).append(s)
            rows.setdefault(name, []).append(run.clock.rows[name])
    extra = _log_and_checkpoint(recipe, run, metrics)
    flops = forward_flops(run)
    stages = {}
    for name in STAGES:
        if name in extra:
            stages[name] = {"seconds": extra[name]}
            continue
        if name not in seconds:
            continue
        s = statistics.mean(seconds[name])
        entry: dict[str, Any] = {"seconds": s, "rows": statistics.mean(rows[name])}
        if name in NETWORK and s > 0:
            entry["gflop_per_s"] = NETWORK[name] * flops * entry["rows"] / s / 1e9
        stages[name] = entry
    return {
        "iteration_seconds": {"min": min(steps), "median": statistics.median(steps), "max": max(steps)},
        "iterations": iterations,
        "warmup": warmup,
        "nfe_per_iteration": statistics.mean(nfe),
        "forward_gflop_per_image": flops / 1e9,
        "untrained_copy": None if run.policy.untrained is None else str(run.policy.untrained.dtype),
        "device": str(run.accelerator.device),
        "stages": stages,
    }


def _log_and_checkpoint(recipe: Any, run: Any, metrics: dict[str, float]) -> dict[str, float]:
    """Seconds of one tensorboard write of ``metrics`` and one checkpoint, in a temporary folder."""
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        writer = SummaryWriter(os.path.join(tmp, "tb"))
        for key, value in metrics.items():
            writer.add_scalar(key, value, run.iteration)
        writer.flush()
        log = time.perf_counter() - start
        start = time.perf_counter()
        recipe.save_checkpoint(run, os.path.join(tmp, "checkpoints", "iter-000001"))
        return {"log": log, "checkpoint": time.perf_counter() - start}


def table(report: dict[str, Any]) -> str:
    """The report as a markdown table (seconds per iteration, share of the iteration, rows, GFLOP/s)."""
    it = report["iteration_seconds"]
    lines = [
        f"iteration: {it['median']:.2f} s median ({it['min']:.2f}–{it['max']:.2f}) over {report['iterations']} "
        f"after {report['warmup']} warm-up; NFE {report['nfe_per_iteration']:.0f} per iteration; one forward "
        f"{report['forward_gflop_per_image']:.3f} GFLOP per image; untrained copy {report['untrained_copy']}; "
        f"{report['device']}",
        "",
        "| stage | s / iteration | share | rows | GFLOP/s | what |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in report["stages"].items():
        share = f"{100 * e['seconds'] / it['median']:.0f}%" if name not in ("log", "checkpoint") else "once"
        rate = f"{e['gflop_per_s']:.0f}" if "gflop_per_s" in e else ""
        count = f"{e['rows']:.0f}" if e.get("rows") else ""
        lines.append(f"| {name.strip()} | {e['seconds']:.3f} | {share} | {count} | {rate} | {STAGES[name].strip()} |")
    return "\n".join(lines)


def write(report: dict[str, Any], out: str) -> None:
    """``<out>/profile.json`` and ``<out>/profile.md``."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "profile.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(out, "profile.md"), "w", encoding="utf-8") as f:
        f.write(table(report) + "\n")


__all__ = ["NETWORK", "STAGES", "forward_flops", "profile", "table", "write"]
