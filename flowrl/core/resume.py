"""Continuing a run: what a checkpoint holds beyond the weights, reading it back, and the run folder's lifetime.

The state written next to the weights (``trainer_state.pt``) holds everything the next iteration depends on: the
trainable weights (whole tensors, also under FSDP), the optimizer and learning-rate schedule, the prompt
generator (the data position), the global random generators of every process, the advantage estimator's state
(per-prompt tracker), the iteration and skip counters, and per trainer its extras (EMA and window schedule for
the flow trainer, the token count for the text trainer). Sampling seeds derive from the seed and the iteration,
so a resumed run repeats the uninterrupted one exactly on the same machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowrl.core.atomic import atomic_dir, write_text
from flowrl.core.checkpoint import (
    STATE_FILE,
    copy_into,
    latest,
    load_state,
    plain,
    prune,
    python_state,
    rng_states,
    save_state,
    set_rng_states,
)
from flowrl.core.errors import ConfigError
from flowrl.core.loop import (
    base_evaluation,
    make_trackers,
    process_state,
    require_finite,
    shared_run_dir,
    time_limit_line,
    training_loop,
)
from flowrl.core.record import CONFIG_FILE, changes_evaluation, dump, record_resume, resume_changes, write_config
from flowrl.core.sharding import full
from flowrl.core.share import gather_all

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from flowrl.core.recipe import Recipe, RunConfig
    from flowrl.core.state import RunState

log = logging.getLogger("flowrl")


def loop_state(run: RunState) -> dict[str, Any]:
    """The state every trainer's run has (a collective: weights and random states come from every process)."""
    rngs = gather_all(run.accelerator, rng_states())
    return {
        "iteration": run.iteration,
        "params": [full(p) for p in run.params],
        "optimizer": run.parallel.optimizer_state(),
        "scheduler": run.scheduler.state_dict(),
        "advantage_state": plain(run.adv_state),
        "prompt_rng": plain(run.rng.getstate()),
        "control": plain(run.control.state_dict()),
        "rng": rngs,
        "skips": [run.skips_in_a_row, run.skips],
        "train_seconds": run.train_seconds,
    }


def restore_loop_state(run: RunState, state: dict[str, Any], path: str) -> None:
    """Load what ``loop_state`` saved into ``run`` (every process reads the same file); ``path`` names it in
    errors. The weights go back first: DeepSpeed copies them into its fp32 master weights with the optimizer."""
    try:
        copy_into(run.params, state["params"])
        run.parallel.load_optimizer_state(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"checkpoint {path!r} does not fit this run's model and options: {e}") from None
    apply_lr(run.scheduler, run.cfg.train.lr)
    run.adv_state = state["advantage_state"]
    run.rng = random.Random()
    run.rng.setstate(python_state(state["prompt_rng"]))
    run.control.load_state_dict(state.get("control", {}))  # checkpoints before controls: a fresh record
    rngs = state["rng"]
    set_rng_states(rngs[run.accelerator.process_index % len(rngs)])
    run.iteration = int(state["iteration"])
    run.skips_in_a_row, run.skips = (int(v) for v in state["skips"])
    run.train_seconds = float(state.get("train_seconds", 0.0))  # checkpoints before it was saved: this part only


def write_checkpoint(
    run: RunState, path: str, write_weights: Callable[[str], None], extras: dict[str, Any], finite: list[Tensor]
) -> None:
    """A checkpoint of either recipe: ``write_weights(folder)`` writes the trainable weights into
    ``<path>/<model.finetune>/``, next to the trainer state (``loop_state`` plus the recipe's ``extras``). Written
    atomically by the main process, then older periodic checkpoints are pruned. Every process takes part (weights,
    random states and sharded optimizer states are gathered) and waits until it is written; ``finite`` (the
    trainable weights and any averages of them) must be finite on every process, or nothing is written."""
    require_finite(run, finite)
    state = {**loop_state(run), **extras}
    if run.accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            write_weights(os.path.join(tmp, run.cfg.model.finetune))
            save_state(os.path.join(tmp, STATE_FILE), state)
            write_text(os.path.join(tmp, CONFIG_FILE), dump(run.cfg))  # what it was trained with (resume compares)
        prune(os.path.dirname(path), run.cfg.train.keep_checkpoints)
    run.accelerator.wait_for_everyone()


def read_checkpoint(run: RunState, path: str) -> dict[str, Any]:
    """Continue ``run`` from the checkpoint folder ``path``: what ``loop_state`` saved is restored; the whole
    state is returned for the recipe's extras."""
    state = load_state(path)
    restore_loop_state(run, state, path)
    return state


def apply_lr(scheduler: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make a resumed run's peak learning rate ``lr`` (``train.lr`` may change on resume): the schedule's base rates
    and the optimizer's current rates (the schedule's factor at this iteration). Nothing changes when it is the
    checkpoint's own rate, so an unchanged resume stays bit-exact."""
    if all(base == lr for base in scheduler.base_lrs):
        return
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


@dataclass
class Finished:
    """What ``train_end_to_end`` leaves for the recipe's summary."""

    run: Any
    run_dir: str
    writer: Any  # the run's Trackers on the main process (None elsewhere, or with no trackers)
    before: Any  # the base's evaluation (None when evaluation is off)
    after: Any  # the trained policy's evaluation (None when evaluation is off)
    train_seconds: float
    start: float  # time.time() at the start, for the wall time


def train(recipe: Recipe, cfg: RunConfig, name: str) -> str:
    """Train ``cfg`` with ``recipe`` end to end (or continue it, ``train.resume``) and write the summary; returns the
    run folder. Every process takes part; none returns before the run folder is complete."""
    done = train_end_to_end(recipe, cfg, name)
    if done.run.accelerator.is_main_process:
        recipe.summarize(done)
    done.run.accelerator.wait_for_everyone()
    return done.run_dir


def train_end_to_end(recipe: Recipe, cfg: RunConfig, name: str) -> Finished:
    """A recipe's run from start to final checkpoint, the same for every backend: the run folder (removed if the run
    fails before its first checkpoint and this invocation made it), ``train.resume``, the resolved config, setup and
    restore, the base evaluation (kept for a resumed run), the training loop with its periodic checkpoints, the final
    checkpoint and the trained policy's evaluation. The recipe writes its summary from the result."""
    start = time.time()
    # the first state made fixes the device: CPU processes (ACCELERATE_USE_CPU) must be said here, as Accelerator does
    state = process_state()
    run_dir, created = shared_run_dir(cfg, name, state)
    with run_folder(run_dir, created, state.is_main_process):
        resume_from = resume_point(cfg, run_dir)
        changes = resume_changes(cfg, resume_from) if resume_from else {}  # refused before anything is written
        write_config(cfg, run_dir, state.is_main_process)
        if state.is_main_process and (line := time_limit_line(cfg)):
            print(line, file=sys.stderr, flush=True)
        run = recipe.setup(cfg)
        if resume_from:
            recipe.restore(run, resume_from)
            record_resume(run_dir, resume_from, changes, state.is_main_process)
        writer = make_trackers(cfg, run_dir, run.iteration) if run.accelerator.is_main_process else None
        kept = None if changes_evaluation(changes) else resume_from  # other evaluation pairs: the kept one won't fit
        before = base_evaluation(run, run_dir, lambda: recipe.evaluate(run), resume_from, kept)
        train_seconds = training_loop(run, run_dir, writer, recipe)
        recipe.save_checkpoint(run, os.path.join(run_dir, "checkpoints", "final"))
    after = recipe.evaluate(run) if cfg.eval.enabled else None
    return Finished(run, run_dir, writer, before, after, train_seconds, start)


def resume_point(cfg: RunConfig, run_dir: str) -> str | None:
    """The checkpoint folder ``train.resume`` asks for: ``auto`` = the newest complete one in the run folder (None
    for a fresh start), else the given folder, which must hold a trainer state."""
    wanted = cfg.train.resume
    if not wanted:
        return None
    if wanted == "auto":
        return latest(os.path.join(run_dir, "checkpoints"))
    if not os.path.isfile(os.path.join(wanted, STATE_FILE)):
        raise ConfigError(f"train.resume={wanted!r} is not a checkpoint folder (no {STATE_FILE} in it)")
    return os.path.abspath(wanted)


@contextlib.contextmanager
def run_folder(path: str, created: bool, main: bool) -> Iterator[None]:
    """Remove the run folder if the run fails before it holds a checkpoint and this invocation ``created`` it:
    a failed start leaves no half-written output behind (the main process removes it)."""
    try:
        yield
    except BaseException:
        if created and main and latest(os.path.join(path, "checkpoints")) is None:
            shutil.rmtree(path, ignore_errors=True)
        raise


__all__ = [
    "Finished",
    "loop_state",
    "read_checkpoint",
    "restore_loop_state",
    "resume_point",
    "run_folder",
    "train",
    "train_end_to_end",
    "write_checkpoint",
]
