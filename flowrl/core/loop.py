"""What the flow and text recipes share around their steps: the run folder, the training loop (progress bar,
tensorboard, periodic checkpoints, time limit), the base evaluation kept for a resumed run, the summary, the
learning-rate schedule, per-process seeds, skipped-update accounting and the finite-step check.

A recipe's run is a ``flowrl.core.state.RunState``; the text recipe imports this module and nothing of the flow
recipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from flowrl.core import zero
from flowrl.core.atomic import write_json
from flowrl.core.errors import ConfigError, Interrupted, TrainingStopped
from flowrl.core.lr_schedule import warmup_cosine
from flowrl.core.options import to_dict
from flowrl.core.sharding import local
from flowrl.core.share import gather_all

if TYPE_CHECKING:
    from accelerate import Accelerator

    from flowrl.core.recipe import Recipe, RunConfig
    from flowrl.core.state import RunState

log = logging.getLogger("flowrl")


# Seeds of process k are offset by k·stride; process 0 keeps the single-process seeds. The stride is far above
# seed·1_000_003 + iteration for any valid seed (< 10**9), and every offset seed stays below 2**63 for k < 2**10, so
# none reaches the evaluation stream (flowrl.core.seeds.TRAIN_SEED_LIMIT).
_PROCESS_SEED_STRIDE = 2**40


T = TypeVar("T")


def lr_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, warmup: int, iterations: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of each iteration as a factor of the peak: linear warm-up over ``warmup`` iterations, then
    constant or cosine decay to 10% at the last iteration (stepped once per iteration)."""

    last = max(iterations - 1, warmup)

    def factor(it: int) -> float:
        if it < warmup or kind == "cosine":
            return warmup_cosine(min(it, last), 1.0, warmup, last)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def require_finite(run: RunState, tensors: list[Tensor]) -> None:
    """Raise on every process (so that none waits for the others in vain) if any process holds a non-finite
    trainable weight (or average of one) in ``tensors``: non-finite weights are never saved. Both recipes call it
    before writing a checkpoint."""
    finite = all(gather_all(run.accelerator, all(bool(torch.isfinite(local(t)).all()) for t in tensors)))
    if not finite:
        raise FloatingPointError(f"non-finite trainable weights at iteration {run.iteration}: checkpoint not saved")


def count_skip(run: RunState, skipped: bool, reason: str) -> None:
    """Count a skipped update; stop the run after ``train.max_consecutive_skips`` of them in a row."""
    run.skips_in_a_row = run.skips_in_a_row + 1 if skipped else 0
    run.skips += int(skipped)
    if not skipped:
        return
    limit = run.cfg.train.max_consecutive_skips
    if run.accelerator.is_main_process:
        log.warning("iteration %d: update skipped (%s); %d in a row", run.iteration, reason, run.skips_in_a_row)
    if run.skips_in_a_row >= limit:
        raise TrainingStopped(
            f"{run.skips_in_a_row} updates in a row skipped at iteration {run.iteration} ({reason}); the last "
            f"complete checkpoint is unchanged. Fix the reward or lower train.lr (train.max_consecutive_skips={limit})"
        )


def draw_prompts(run: RunState, pool: Sequence[T], key: Callable[[T], str], count: int) -> list[T]:
    """One iteration's prompts: ``min(count, len(pool))`` distinct items of ``pool`` (``key``: an item's prompt key,
    for controls that keep per-prompt state), as the run's control (``rollout.control``) chooses them. Every process
    draws the same ones from its copy of the shared seeded ``run.rng`` and of the control (so the copies stay in
    step) and samples its share of them."""
    return run.control.draw(run.rng, pool, key, count)


def process_seed(run: RunState, seed: int) -> int:
    """``seed`` made distinct per process (unchanged on process 0, so one process keeps its seeds)."""
    return seed + run.accelerator.process_index * _PROCESS_SEED_STRIDE


def mean_over_processes(acc: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes that report it (one that trained no rows has no loss metrics)."""
    if acc.num_processes == 1:
        return metrics
    reports: list[dict[str, float]] = gather_all(acc, metrics)
    keys = dict.fromkeys(k for r in reports for k in r)
    return {k: statistics.fmean(r[k] for r in reports if k in r) for k in keys}


def make_run_dir(cfg: RunConfig, name: str) -> tuple[str, bool]:
    """``cfg.output.run_dir`` or ``runs/<name>-<timestamp>``, and whether it was made now; refuses to reuse a
    finished run folder."""
    path = cfg.output.run_dir or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(os.path.join(path, "summary.json")):
        raise ConfigError(f"run folder {path!r} already holds a finished run; choose another output.run_dir")
    created = not os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path), created


def process_state() -> Any:
    """accelerate's process state, made before anything else so that it fixes the device: CPU processes
    (``ACCELERATE_USE_CPU``) as accelerate's own launcher says; a DeepSpeed launch without GPUs over gloo (its
    CPU flag would switch DeepSpeed off)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if zero.deepspeed_requested() and not torch.cuda.is_available():
        return PartialState(backend="gloo")
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def time_limit_line(cfg: RunConfig) -> str | None:
    """The start-up line of a run with ``train.max_minutes``: what the limit bounds (training) and what it does not
    (the evaluations), so that a one-minute run that takes five is not a surprise. None without a limit."""
    minutes = cfg.train.max_minutes
    if not minutes:
        return None
    extra = "model loading and the evaluations before and after come" if cfg.eval.enabled else "model loading comes"
    return (f"train.max_minutes={minutes:g} bounds training only ({cfg.train.iterations} iterations or "
            f"{minutes:g} minute{'s' * (minutes != 1)}, whichever ends first); {extra} on top")  # fmt: skip


def base_evaluation(
    run: RunState, run_dir: str, evaluate_now: Callable[[], Any], resumed: str | None, kept: str | None
) -> Any:
    """The evaluation before training: computed and kept in ``eval_before.pt`` at the start, read back when the
    run resumes (the policy has moved by then; ``kept`` is None when the resumed run evaluates other pairs, so the
    kept one does not compare). None when evaluation is off, or when resuming from another folder's checkpoint."""
    if not run.cfg.eval.enabled:
        return None
    path = os.path.join(run_dir, "eval_before.pt")
    if resumed:
        if kept and os.path.isfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        log.warning("resuming without %s: the summary has no before/after comparison", path)
        return None
    result = evaluate_now()
    if run.accelerator.is_main_process:
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save(result, tmp)
        os.replace(tmp, path)
    return result


def training_loop(run: RunState, run_dir: str, writer: Any, recipe: Recipe) -> float:
    """``cfg.train.iterations`` calls of ``recipe.train_step(run)`` with a progress bar (``recipe.progress`` of the
    metrics, and the time left under ``train.max_minutes``), tensorboard scalars, a checkpoint every
    ``train.save_every`` iterations, ``recipe.log_media`` every ``output.images_every`` iterations and the
    ``train.max_minutes`` limit (decided by the main process for all).
    SIGTERM (a scheduler's pre-emption) saves a checkpoint after the current iteration and raises ``Interrupted``;
    so does Ctrl-C, without the checkpoint. Returns the whole run's training seconds (``run.train_seconds``)."""
    from tqdm.auto import tqdm

    cfg, main = run.cfg, run.accelerator.is_main_process
    # counted by hand after each iteration: a bar that wraps the range counts an iteration only when the next one
    # starts, so a run stopped by its time limit (or a SIGTERM) ended on a stale count
    bar = tqdm(desc="train", disable=not (cfg.output.progress and main), dynamic_ncols=True, initial=run.iteration,
               total=cfg.train.iterations)  # fmt: skip
    start, limit, first = time.time(), 60 * cfg.train.max_minutes, run.iteration
    with _sigterm_flag() as terminated:
        try:
            while run.iteration < cfg.train.iterations:  # a resumed run starts further on
                began = time.time()
                metrics = recipe.train_step(run)
                run.train_seconds += time.time() - began
                if run.monitor is not None and main:  # the reward-hacking signals, under the recipe-common names
                    for line in run.monitor.update(metrics, run.iteration - 1):
                        log.warning("iteration %d: %s", run.iteration - 1, line)
                bar.update(run.iteration - bar.n)
                if writer is not None:
                    writer.log(recipe.logged(run, metrics), run.iteration)
                if cfg.output.images_every and run.iteration % cfg.output.images_every == 0:
                    recipe.log_media(run, writer)  # every process: generation may be collective
                done, remaining = run.iteration - first, cfg.train.iterations - run.iteration
                left = _time_left(limit, time.time() - start, done, remaining)
                bar.set_postfix({**recipe.progress(metrics), **left})
                if cfg.train.save_every and run.iteration % cfg.train.save_every == 0:
                    recipe.save_checkpoint(run, os.path.join(run_dir, "checkpoints", f"iter-{run.iteration:06d}"))
                stop, term = main_verdict(run, (bool(limit) and time.time() - start > limit, terminated()))
                if term:
                    path = os.path.join(run_dir, "checkpoints", f"iter-{run.iteration:06d}")
                    recipe.save_checkpoint(run, path)
                    raise Interrupted(f"terminated (SIGTERM) at iteration {run.iteration}: checkpoint {path}; "
                                      f"{resume_hint(run_dir)}", 143)  # fmt: skip
                if stop:
                    break
        except (KeyboardInterrupt, Interrupted) as e:
            if isinstance(e, Interrupted) and e.code != 130:  # SIGTERM's own stop, raised above
                raise
            saved = os.path.isdir(os.path.join(run_dir, "checkpoints"))
            hint = resume_hint(run_dir) if saved else "no checkpoint yet, so the run folder is removed"
            raise Interrupted(f"interrupted at iteration {run.iteration}; {hint}", 130) from None
        finally:
            bar.close()
    return run.train_seconds


def resume_hint(run_dir: str) -> str:
    """How to continue the run in ``run_dir``: both keys, since a run without ``output.run_dir`` would otherwise
    start afresh in a new folder."""
    return f"resume with output.run_dir={run_dir} train.resume=auto"


def _time_left(limit: float, elapsed: float, done: int, remaining: int) -> dict[str, str]:
    """The progress bar's ``left``: when the run ends, at its time limit or at its last iteration (at this session's
    pace), whichever comes first; nothing without a time limit (tqdm's own estimate is the iterations')."""
    if not limit:
        return {}
    by_iterations = elapsed / done * remaining if done else float("inf")
    return {"left": _clock(min(limit - elapsed, by_iterations))}


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[Callable[[], bool]]:
    """While inside, SIGTERM sets a flag (read by calling the yielded function) instead of killing the process;
    the previous handler comes back after. Outside the main thread signals cannot be caught: the flag stays off."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def finish_summary(run_dir: str, summary: dict[str, Any], cfg: RunConfig, writer: Any, start: float) -> None:
    """Add the wall time since ``start`` and the resolved config, write ``summary.json`` atomically, close the
    tensorboard writer (flow and text runs alike)."""
    summary["wall_time_s"] = round(time.time() - start, 1)
    summary["config"] = to_dict(cfg)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    if writer is not None:
        writer.close()


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What the console shows at the end of a run (flow or text): the training, the evaluation before and after
    with the paired gain (SE over prompts) and the reward-hacking warnings."""
    n = summary["train_steps"]
    lines = [f"trained {n} iteration{'s' * (n != 1)} in {summary['train_seconds']:.0f} s"]
    if "eval_reward_gain" in summary:
        lines.append(
            f"evaluation ({summary['num_eval_samples']} samples): reward {summary['eval_reward_before']:.4f} → "
            f"{summary['eval_reward_after']:.4f}, gain {summary['eval_reward_gain']:+.4f} ± "
            f"{summary['eval_reward_gain_se']:.4f} (SE over prompts)"
        )
    if "eval_strict_gain" in summary:
        lines.append(f"strict: {summary['eval_strict_before']:.4f} → {summary['eval_strict_after']:.4f}, gain "
                     f"{summary['eval_strict_gain']:+.4f} ± {summary['eval_strict_gain_se']:.4f}")  # fmt: skip
    if "untrained_passes" in summary:  # flow runs: under model.untrained_copy=auto it depends on the hardware
        lines.append(f"evaluation and ODE-only steps ran on {summary['untrained_passes']}")
    during = summary.get("training_warnings", [])
    lines += [f"warning (training, iteration {w['iteration']}): {w['warning']}" for w in during]
    return lines + [f"warning: {w}" for w in summary.get("monitor_warnings", [])]


def shared_run_dir(cfg: RunConfig, name: str, state: Any) -> tuple[str, bool]:
    """The run folder (and whether it was made now), made by the main process and sent to the others (a
    timestamped name could differ between processes); a refusal is raised on every process, so none waits
    for the others in vain."""
    if state.num_processes == 1:
        return make_run_dir(cfg, name)
    from accelerate.utils import broadcast_object_list

    result: list[Any] = [None, None]  # (folder, created), error
    if state.is_main_process:
        try:
            result[0] = make_run_dir(cfg, name)
        except (OSError, ConfigError) as e:  # raised on every process, so that none waits in vain
            result[1] = e
    broadcast_object_list(result)
    if result[1] is not None:
        raise result[1]
    return tuple(result[0])


def main_verdict(run: RunState, local: tuple[bool, ...]) -> tuple[bool, ...]:
    """The main process's verdicts (time is up, a SIGTERM came), on every process: if one process stopped
    training alone, the others would wait for its gradients for ever."""
    if run.accelerator.num_processes == 1:
        return local
    from accelerate.utils import broadcast_object_list

    return tuple(bool(v) for v in broadcast_object_list([local])[0])


def make_trackers(cfg: RunConfig, run_dir: str, iteration: int = 0) -> Any:
    """The run's ``Trackers`` (``output.trackers``), or None when it has none; a resumed run's tensorboard first drops
    events logged after its checkpoint's ``iteration``."""
    from flowrl.core.trackers import Trackers

    trackers = Trackers(cfg, run_dir, iteration)
    return trackers if trackers.trackers else None


__all__ = [
    "base_evaluation",
    "count_skip",
    "draw_prompts",
    "finish_summary",
    "lr_scheduler",
    "main_verdict",
    "make_run_dir",
    "make_trackers",
    "mean_over_processes",
    "process_seed",
    "process_state",
    "require_finite",
    "shared_run_dir",
    "summary_lines",
    "time_limit_line",
    "training_loop",
]
