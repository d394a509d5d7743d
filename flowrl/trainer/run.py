"""A whole training run: evaluate the base, train, evaluate the result, and write the run folder.

Run folder: ``config.yaml`` (resolved), ``tb/`` (tensorboard), ``checkpoints/final/`` (LoRA in
diffusers format + trainer state), ``gallery/`` (base vs trained), ``summary.json``.

With several processes all of them train and evaluate (each its share), but only the main process
writes to the run folder; the others wait for it at barriers.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import yaml

from flowrl.atomic import atomic_dir, write_json
from flowrl.config import Config, to_dict
from flowrl.trainer.checkpoint import save_state
from flowrl.trainer.flow import Run, evaluate, setup, train_step
from flowrl.trainer.sharding import full, full_optimizer_state, local
from flowrl.trainer.weights import save_weights, weight_state

EvalResult = tuple[torch.Tensor, dict[str, torch.Tensor]]  # images [B, 3, H, W] and rewards [B] by name


def make_run_dir(cfg: Config, name: str) -> str:
    """``cfg.output.run_dir`` or ``runs/<name>-<timestamp>``; refuses to reuse a finished run folder."""
    path = cfg.output.run_dir or os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if os.path.exists(os.path.join(path, "summary.json")):
        raise FileExistsError(f"run folder {path!r} already holds a finished run; choose another output.run_dir")
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def eval_pairs(cfg: Config, prompts: list[str]) -> tuple[list[str], list[int]]:
    """Fixed (prompt, seed) pairs: the first ``eval.num_prompts`` prompts × seeds 0..n−1."""
    chosen = prompts[: cfg.eval.num_prompts] if cfg.eval.num_prompts else prompts
    n = cfg.eval.seeds_per_prompt
    return [p for p in chosen for _ in range(n)], [k for _ in chosen for k in range(n)]


def save_checkpoint(run: Run, path: str) -> None:
    """Trainable weights (EMA if enabled) and trainer state, written atomically by the main process. Every
    process takes part (under FSDP the shards are gathered) and waits until the checkpoint is written."""
    _require_finite(run)
    ctx = run.ema.applied() if run.ema is not None else contextlib.nullcontext()
    with ctx:
        weights = weight_state(run.policy.transformer, run.cfg.model.finetune, run.sharded)
    state = {
        "iteration": run.iteration,
        "params": [full(p) for p in run.params],
        "optimizer": full_optimizer_state(run.policy.transformer, run.optimizer)
        if run.sharded
        else run.optimizer.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "window": run.window.state_dict(),
        "advantage_state": _plain(run.adv_state),
        "prompt_rng": list(_plain(run.rng.getstate())),
        "torch_rng": torch.get_rng_state(),
    }
    if run.accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            folder = os.path.join(tmp, run.cfg.model.finetune)
            save_weights(run.policy.transformer, run.cfg.model.finetune, folder, run.policy.pipeline_class, weights)
            save_state(os.path.join(tmp, "trainer_state.pt"), state)
    run.accelerator.wait_for_everyone()


def _require_finite(run: Run) -> None:
    """Raise on every process (so that none waits for the others in vain) if any process holds a non-finite
    trainable weight or EMA average: non-finite weights are never saved."""
    tensors = [*run.params, *(run.ema.shadow if run.ema is not None else [])]
    finite = all(bool(torch.isfinite(local(t)).all()) for t in tensors)
    if run.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        finite = all(gather_object([finite]))
    if not finite:
        raise FloatingPointError(f"non-finite trainable weights at iteration {run.iteration}: checkpoint not saved")


def _plain(value: Any) -> Any:
    """Containers as lists/dicts so that ``torch.load(weights_only=True)`` reads them back."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, torch.Tensor)):
        return [_plain(v) for v in value]
    return value


def mean_se(values: torch.Tensor) -> tuple[float, float]:
    return values.mean().item(), values.std().item() / math.sqrt(values.numel()) if values.numel() > 1 else 0.0


def train_and_report(cfg: Config, name: str = "run") -> str:
    """Run training end to end; returns the run folder. See the module docstring for its contents."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    start = time.time()
    # the first state made fixes the device: CPU processes (ACCELERATE_USE_CPU) must be said here, as Accelerator does
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    run_dir = shared_run_dir(cfg, name, state)
    if state.is_main_process:
        with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    run = setup(cfg)
    main = run.accelerator.is_main_process
    writer = tb_writer(cfg, run_dir) if main else None
    prompts, seeds = eval_pairs(cfg, run.eval_prompts)
    before = evaluate(run, prompts, seeds) if cfg.eval.enabled else None

    train_seconds = training_loop(
        run, run_dir, writer, train_step, save_checkpoint,
        lambda m: {"reward": f"{m['reward/mean']:.3f}", "clip": f"{m.get('clip_frac_high', 0):.2f}"},
    )  # fmt: skip
    save_checkpoint(run, os.path.join(run_dir, "checkpoints", "final"))
    after = evaluate(run, prompts, seeds) if cfg.eval.enabled else None
    if main:
        _write_summary(run, run_dir, writer, prompts, seeds, before, after, train_seconds, start)
    run.accelerator.wait_for_everyone()  # nobody returns before the run folder is complete
    return run_dir


def training_loop(
    run: Any,
    run_dir: str,
    writer: Any,
    step: Callable[[Any], dict[str, float]],
    save: Callable[[Any, str], None],
    postfix: Callable[[dict[str, float]], dict[str, str]],
) -> float:
    """``cfg.train.iterations`` calls of ``step(run)`` (flow or text) with a progress bar (``postfix`` of the
    metrics), tensorboard scalars, a checkpoint every ``train.save_every`` iterations and the ``train.max_minutes``
    limit (decided by the main process for all). Returns the training seconds."""
    from tqdm.auto import tqdm

    cfg, main = run.cfg, run.accelerator.is_main_process
    bar = tqdm(
        range(cfg.train.iterations), desc="train", disable=not (cfg.output.progress and main), dynamic_ncols=True
    )
    start = time.time()
    for _ in bar:
        metrics = step(run)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(k, v, run.iteration)
        bar.set_postfix(postfix(metrics))
        if cfg.train.save_every and run.iteration % cfg.train.save_every == 0:
            save(run, os.path.join(run_dir, "checkpoints", f"iter-{run.iteration:06d}"))
        if cfg.train.max_minutes and time_is_up(run, time.time() - start > 60 * cfg.train.max_minutes):
            break
    bar.close()
    return time.time() - start


def _write_summary(
    run: Run,
    run_dir: str,
    writer: Any,
    prompts: list[str],
    seeds: list[int],
    before: EvalResult | None,
    after: EvalResult | None,
    train_seconds: float,
    start: float,
) -> None:
    """``summary.json``, the gallery and the final tensorboard scalar (main process only; ``start`` is the
    run's wall-clock start)."""
    cfg = run.cfg
    summary: dict[str, Any] = {
        "train_steps": run.iteration,
        "train_seconds": round(train_seconds, 1),
        "seed": cfg.seed,
        "num_eval_samples": len(prompts) if cfg.eval.enabled else 0,
        "eval_seeds": sorted(set(seeds)),
        "checkpoint": os.path.join(run_dir, "checkpoints", "final"),
    }
    if before is not None and after is not None:
        summary.update(_eval_summary(run, before[1], after[1]))
        summary.update(_head_to_head(run, prompts, before[0], after[0]))
        if cfg.eval.gallery_prompts:
            summary["gallery"] = _gallery(run_dir, cfg, prompts, seeds, before, after)
        if writer is not None:
            writer.add_scalar("eval/reward", summary["eval_reward_after"], run.iteration)
    finish_summary(run_dir, summary, cfg, writer, start)


def finish_summary(run_dir: str, summary: dict[str, Any], cfg: Any, writer: Any, start: float) -> None:
    """Add the wall time since ``start`` and the resolved config, write ``summary.json`` atomically, close the
    tensorboard writer (flow and text runs alike)."""
    summary["wall_time_s"] = round(time.time() - start, 1)
    summary["config"] = to_dict(cfg)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    if writer is not None:
        writer.close()


def _head_to_head(run: Run, prompts: list[str], base: torch.Tensor, trained: torch.Tensor) -> dict[str, Any]:
    """Groupwise rewards (pairwise judges) rank images only within a group, so their before/after means are
    uninformative (a win rate averages 0.5 in every group). For them, each trained image ``[B, 3, H, W]``
    meets the base image of the same prompt and seed as a group of two: ``eval/<name>/trained_vs_base`` is
    the trained images' mean score there (a win rate: 0.5 = no change)."""
    from flowrl.rewards import is_groupwise

    n = len(prompts)
    pairs = torch.arange(n).repeat(2)
    out: dict[str, Any] = {}
    for name, fn in run.rewards.rewards.items():
        if is_groupwise(fn):
            score = fn(torch.cat([trained, base]), prompts + prompts, groups=pairs)["score"][:n]
            mean, se = mean_se(score.float())
            out[f"eval/{name}/trained_vs_base"] = {"mean": mean, "se": se}
    return out


def shared_run_dir(cfg: Config, name: str, state: Any) -> str:
    """The run folder, made by the main process and sent to the others (a timestamped name could differ
    between processes); a refusal is raised on every process, so none waits for the others in vain."""
    if state.num_processes == 1:
        return make_run_dir(cfg, name)
    from accelerate.utils import broadcast_object_list

    result: list[Any] = [None, None]  # folder, error
    if state.is_main_process:
        try:
            result[0] = make_run_dir(cfg, name)
        except OSError as e:
            result[1] = e
    broadcast_object_list(result)
    if result[1] is not None:
        raise result[1]
    return result[0]


def time_is_up(run: Run, local: bool) -> bool:
    """The main process's verdict on the time limit, on every process: if one process stopped training
    alone, the others would wait for its gradients for ever."""
    if run.accelerator.num_processes == 1:
        return local
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([local])[0])


def _eval_summary(run: Run, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Means and standard errors of the total reward and of every component, before and after."""
    out: dict[str, Any] = {}
    first = next(iter(run.rewards.rewards))
    for key in before:
        b, b_se = mean_se(before[key])
        a, a_se = mean_se(after[key])
        out[f"eval/{key}"] = {"before": b, "before_se": b_se, "after": a, "after_se": a_se}
    diff = after["reward"] - before["reward"]  # same prompts and seeds: a paired difference
    out["eval_reward_before"], out["eval_reward_after"] = out["eval/reward"]["before"], out["eval/reward"]["after"]
    out["eval_reward_gain"], out["eval_reward_gain_se"] = mean_se(diff)
    strict = f"{first}/strict"
    if strict in before:
        out["eval_strict_before"], out["eval_strict_after"] = before[strict].mean().item(), after[strict].mean().item()
    return out


def _gallery(run_dir: str, cfg: Config, prompts, seeds, before, after) -> str:
    from flowrl.gallery import GalleryColumn, write_gallery

    rows = [i for i, s in enumerate(seeds) if s == seeds[0]][: cfg.eval.gallery_prompts]

    def column(label: str, result) -> GalleryColumn:
        images, parts = result
        scores = [{k: round(v[i].item(), 4) for k, v in parts.items()} for i in rows]
        return GalleryColumn(label, images[rows], scores)

    paths = write_gallery(
        run_dir,
        [prompts[i] for i in rows],
        [seeds[i] for i in rows],
        [column("base", before), column("trained", after)],
        title=f"flowrl: base vs trained ({cfg.sampler.mode}, {cfg.train.iterations} iterations)",
        sort_key="reward",
    )
    return paths["html"]


def tb_writer(cfg: Config, run_dir: str):
    if not cfg.output.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(run_dir, "tb"))


__all__ = [
    "eval_pairs",
    "finish_summary",
    "make_run_dir",
    "mean_se",
    "save_checkpoint",
    "shared_run_dir",
    "tb_writer",
    "time_is_up",
    "train_and_report",
    "training_loop",
]
