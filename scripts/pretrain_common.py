"""What the toy bases' pretraining scripts share (``pretrain_toy.py``, ``pretrain_toy_edit.py``,
``pretrain_toy_video.py``): their common options, the shifted logit-normal noise levels they train at, the optimizer
step with the EMA of the weights they save, and the saved folder with its report."""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import time
from collections.abc import Callable

import torch
from torch import Tensor

from flowrl.core.atomic import atomic_dir
from flowrl.core.lr_schedule import warmup_cosine


def add_common_options(p: argparse.ArgumentParser, *, out: str, steps: int, batch_size: int, per: str) -> None:
    """The options every pretraining script takes (``per``: what the report's samples are per, e.g. "prompt")."""
    p.add_argument("--out", default=out, help="output folder (replaced atomically)")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    p.add_argument("--sigma-shift", type=float, default=3.0, help="shift applied to the logit-normal sigmas")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    p.add_argument("--eval-seeds", type=int, default=2, help=f"held-out samples per {per} in the report")
    p.add_argument("--eval-steps", type=int, default=10, help="Euler steps for the report")


def add_base_options(
    p: argparse.ArgumentParser, *, unfollowed: float, unfollowed_help: str, width: int, layers: int, layers_help: str
) -> None:
    """The size of a conditioned toy base and the share of its noisy labels (the edit and video bases)."""
    p.add_argument("--unfollowed", type=float, default=unfollowed, help=unfollowed_help)
    p.add_argument("--width", type=int, default=width, help="transformer width (4 heads of width/4)")
    p.add_argument("--layers", type=int, default=layers, help=layers_help)


def training_setup(
    args: argparse.Namespace, live: tuple[torch.nn.Module, ...]
) -> tuple[list, list, torch.optim.Optimizer, random.Random, torch.Generator]:
    """For the modules trained together: their EMA copies, their parameters, AdamW at ``args.lr`` (weight decay
    0.01), the data and noise generators of ``args.seed``; the modules put in training mode."""
    ema = [copy.deepcopy(m).requires_grad_(False) for m in live]
    params = [p for m in live for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    for m in live:
        m.train()
    return ema, params, opt, rng, gen


def shifted_sigmas(n: int, shift: float, generator: torch.Generator) -> Tensor:
    """``[n]`` noise levels σ = sigmoid(N(0, 1)) (SD3's logit-normal) moved by the schedule's shift s,
    σ ← s·σ / (1 + (s − 1)·σ), so that the high-noise steps are trained as often as they are sampled."""
    sigma = torch.sigmoid(torch.randn(n, generator=generator))
    return shift * sigma / (1 + (shift - 1) * sigma)


@torch.no_grad()
def update_ema(ema: list[torch.nn.Module], live: list[torch.nn.Module], step: int, decay: float) -> None:
    """Move each EMA copy towards its live module, with the decay warmed up over the first steps."""
    d = min(decay, (1 + step) / (10 + step))
    for avg, module in zip(ema, live, strict=True):
        for a, p in zip(avg.parameters(), module.parameters(), strict=True):
            a.lerp_(p, 1 - d)


def optimizer_step(
    opt: torch.optim.Optimizer, params: list, loss: Tensor, step: int, args: argparse.Namespace, ema: list,
    live: list, start: float,
) -> None:  # fmt: skip
    """One step on ``loss``: the warm-up cosine learning rate, gradients clipped at norm 1, then the EMA; the loss
    printed every 100 steps (seconds since ``start``)."""
    for group in opt.param_groups:
        group["lr"] = warmup_cosine(step, args.lr, args.warmup, args.steps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    update_ema(ema, live, step, args.ema)
    if step % 100 == 0 or step == args.steps - 1:
        print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - start:.0f}s", flush=True)


def write_base(
    args: argparse.Namespace, save: Callable[[str], None], evaluate: Callable[[str], dict], train_seconds: float,
    **facts: object,
) -> dict:  # fmt: skip
    """Save the base into ``args.out`` (replaced atomically) with ``pretrain_report.json``: the held-out evaluation of
    the saved folder, loaded back as a user would, and the run's facts; returns the report."""
    with atomic_dir(args.out) as tmp:
        save(tmp)
        report = evaluate(tmp)
        facts.update(lr=args.lr, seed=args.seed, threads=args.threads, train_seconds=round(train_seconds, 1))
        report.update(steps=args.steps, batch_size=args.batch_size, **facts, torch=torch.__version__)
        with open(os.path.join(tmp, "pretrain_report.json"), "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return report
