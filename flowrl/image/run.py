"""A whole training run: evaluate the base, train, evaluate the result, and write the run folder.

Run folder: ``config.yaml`` (resolved), ``tb/`` (tensorboard), ``checkpoints/final/`` and, with
``train.save_every``, the newest ``train.keep_checkpoints`` of ``checkpoints/iter-NNNNNN/`` (LoRA in diffusers format +
trainer state, see ``flowrl.core.resume``), ``eval_before.pt`` (the base's evaluation, for a resumed run),
``gallery/`` (base vs trained), ``summary.json``. ``train.resume=auto`` continues from the newest checkpoint.

With several processes all of them train and evaluate (each its share), but only the main process
writes to the run folder; the others wait for it at barriers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import torch

from flowrl.core.errors import ConfigError
from flowrl.core.inputs import row_key
from flowrl.core.loop import finish_summary
from flowrl.core.resume import Finished, read_checkpoint, write_checkpoint
from flowrl.core.stats import prompt_mean_se
from flowrl.core.weights import weight_state
from flowrl.image.config import Config
from flowrl.image.trainer import Run, evaluate

log = logging.getLogger("flowrl")
EvalResult = tuple[torch.Tensor, dict[str, torch.Tensor]]  # images [B, 3, H, W] and rewards [B] by name


def eval_pairs(cfg: Config, prompts: list[str]) -> tuple[list[str], list[int]]:
    """Fixed (prompt, seed index) pairs: the first ``eval.num_prompts`` prompts × seed indices 0..n−1. Each pair's
    noise is its own (``flowrl.core.seeds.eval_noise_seed``), not shared by the prompts of one index."""
    chosen = prompts[: cfg.eval.num_prompts] if cfg.eval.num_prompts else prompts
    n = cfg.eval.seeds_per_prompt
    return [p for p in chosen for _ in range(n)], [k for _ in chosen for k in range(n)]


def save_checkpoint(run: Run, path: str) -> None:
    """Trainable weights (EMA if enabled: LoRA in diffusers' format, or the full transformer) and the trainer state
    with the EMA, the old policy (DiffusionNFT) and the window schedule (see ``resume.write_checkpoint``)."""
    t, m = run.policy.transformer, run.cfg.model
    ctx = run.ema.applied() if run.ema is not None else contextlib.nullcontext()
    with ctx:
        weights = weight_state(t, m.finetune, run.parallel.sharded)
    extras = {"ema": run.ema.state_dict() if run.ema is not None else None, "window": run.window.state_dict(),
              "old": run.old.state_dict() if run.old is not None else None}  # fmt: skip
    finite = [*run.params, *(run.ema.shadow if run.ema is not None else []), *(run.old.shadow if run.old else [])]
    write_checkpoint(run, path, lambda f: run.policy.save_trained(f, m.finetune, weights), extras, finite)


def restore(run: Run, path: str) -> None:
    """Continue ``run`` from the checkpoint folder ``path`` (see ``flowrl.core.resume``)."""
    state = read_checkpoint(run, path)
    if (run.ema is None) != (state["ema"] is None):
        raise ConfigError(f"checkpoint {path!r} and this run differ in train.ema_decay (one has no EMA)")
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    if run.old is not None:
        if state.get("old") is None:
            raise ConfigError(f"checkpoint {path!r} has no old policy: it was not written by a loss.name=nft run")
        run.old.load_state_dict(state["old"])
    run.window.load_state_dict(state["window"])


def log_samples(run: Run, trackers: Any) -> None:
    """The first ``output.images_count`` evaluation prompts' images (seed index 0, so the same noise every time: the
    grid shows training's progress) with their scores in the captions, to the trackers. Every process takes part."""
    from flowrl.core.trackers import image_captions

    prompts = run.eval_prompts[: run.cfg.output.images_count]
    images, parts = evaluate(run, prompts, [0] * len(prompts))
    if trackers is not None:
        trackers.log_images("samples", images, image_captions(prompts, parts), run.iteration, run.cfg.eval.fps)


def _first_seed_rows(seeds: list[int], count: int) -> list[int]:
    """The first ``count`` evaluation rows of the first seed index: one image per prompt, for galleries and logs."""
    return [i for i, s in enumerate(seeds) if s == seeds[0]][:count]


def _log_evaluations(run: Run, trackers: Any, prompts: list[str], seeds: list[int], before, after) -> None:
    """The before/after evaluation's first images (one seed per prompt) with their scores, to the trackers."""
    from flowrl.core.trackers import image_captions

    rows = _first_seed_rows(seeds, run.cfg.output.images_count)
    for tag, (images, parts) in (("eval/before", before), ("eval/after", after)):
        captions = image_captions([prompts[i] for i in rows], {k: v[rows] for k, v in parts.items()})
        trackers.log_images(tag, images[rows], captions, run.iteration, run.cfg.eval.fps)


def write_summary(done: Finished, prompts: list[str], seeds: list[int]) -> None:
    """``summary.json``, the gallery and the final tensorboard scalar (main process only)."""
    run, run_dir, writer, before, after = done.run, done.run_dir, done.writer, done.before, done.after
    cfg = run.cfg
    summary: dict[str, Any] = {
        "train_steps": run.iteration,
        "train_seconds": round(done.train_seconds, 1),
        "seed": cfg.seed,
        "num_eval_samples": len(prompts) if cfg.eval.enabled else 0,
        "num_eval_prompts": len(set(map(row_key, prompts))) if cfg.eval.enabled else 0,
        "eval_seeds": sorted(set(seeds)),
        "eval_noise": "independent per (prompt, seed index)",
        "se_unit": "prompt",
        "checkpoint": os.path.join(run_dir, "checkpoints", "final"),
        "untrained_passes": _untrained_passes(run),
    }
    if run.monitor is not None:
        summary["training_warnings"] = run.monitor.history  # since the run (or its last resume) started
    if before is not None and after is not None:
        summary.update(_eval_summary(run, prompts, before[1], after[1]))
        summary.update(_head_to_head(run, prompts, before[0], after[0]))
        notes = _monitors(summary, cfg, prompts, before, after)
        if cfg.eval.gallery_prompts:
            summary["gallery"] = _gallery(run_dir, run, prompts, seeds, before, after, notes)
        if writer is not None:
            writer.add_scalar("eval/reward", summary["eval_reward_after"], run.iteration)
            _log_evaluations(run, writer, prompts, seeds, before, after)
    finish_summary(run_dir, summary, cfg, writer, done.start)


def _untrained_passes(run: Run) -> str:
    """What the evaluation and the ODE-only steps ran on (``flowrl.image.models.untrained.describe_path``)."""
    from flowrl.image.models.untrained import describe_path

    policy = run.policy
    live = next(policy.transformer.parameters()).dtype
    return describe_path(run.cfg.model.untrained_copy, policy.untrained, live, policy.device)


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
            images = torch.cat([trained, base])
            score = run.rewards.raw(name, images, prompts + prompts, pairs, run.inputs)["score"][:n]
            mean, se = prompt_mean_se(score.float(), prompts)
            out[f"eval/{name}/trained_vs_base"] = {"mean": mean, "se": se}
    return out


def _eval_summary(
    run: Run, prompts: list[str], before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Means of the total reward and of every component before and after, and the paired gains (same prompts and
    seed indices, so the same noise), each with its standard error over prompts (``flowrl.core.stats``)."""
    out: dict[str, Any] = {}
    first = next(iter(run.rewards.rewards))
    for key in before:
        b, b_se = prompt_mean_se(before[key], prompts)
        a, a_se = prompt_mean_se(after[key], prompts)
        gain, gain_se = prompt_mean_se(after[key] - before[key], prompts)
        out[f"eval/{key}"] = {"before": b, "before_se": b_se, "after": a, "after_se": a_se, "gain": gain,
                              "gain_se": gain_se}  # fmt: skip
    out["eval_reward_before"], out["eval_reward_after"] = out["eval/reward"]["before"], out["eval/reward"]["after"]
    out["eval_reward_gain"], out["eval_reward_gain_se"] = out["eval/reward"]["gain"], out["eval/reward"]["gain_se"]
    strict = f"{first}/strict"
    if strict in before:
        out["eval_strict_before"], out["eval_strict_after"] = before[strict].mean().item(), after[strict].mean().item()
        out["eval_strict_gain"], out["eval_strict_gain_se"] = prompt_mean_se(after[strict] - before[strict], prompts)
    return out


def _monitors(
    summary: dict[str, Any], cfg: Config, prompts: list[str], before: EvalResult, after: EvalResult
) -> list[str]:
    """The reward-hacking monitors of the before/after evaluation (``flowrl.image.evaluation``) into ``summary``; their
    lines, each warning also logged."""
    from flowrl.image.evaluation import compare, hacking_warnings, load_categories_metadata, monitor_lines, summarize

    change = compare(before[1], after[1], prompts, before[0], after[0])
    warnings = hacking_warnings(change, cfg.eval.watch_drop, cfg.eval.diversity_drop)
    for line in warnings:
        log.warning(line)
    metadata = load_categories_metadata(cfg.eval.metadata)
    summary["eval/drift"], summary["eval/diversity"] = change["drift"], change["diversity"]
    summary["eval/categories"] = {
        name: summarize(result[1], prompts, metadata=metadata).get("categories", {})
        for name, result in (("before", before), ("after", after))
    }
    summary["monitor_warnings"] = warnings
    return monitor_lines(change, warnings)


def _gallery(run_dir: str, run: Run, prompts, seeds, before, after, notes: list[str]) -> str:
    from flowrl.image.compare import source_columns
    from flowrl.image.gallery import GalleryColumn, write_gallery

    cfg, iterations = run.cfg, run.iteration
    rows = _first_seed_rows(seeds, cfg.eval.gallery_prompts)

    def column(label: str, result) -> GalleryColumn:
        images, parts = result
        scores = [{k: round(v[i].item(), 4) for k, v in parts.items()} for i in rows]
        return GalleryColumn(label, images[rows], scores)

    paths = write_gallery(
        run_dir,
        [prompts[i] for i in rows],
        [seeds[i] for i in rows],
        [
            *source_columns([prompts[i] for i in rows], run.inputs, before[0]),
            column("base", before),
            column("trained", after),
        ],
        title=f"flowrl: base vs trained ({cfg.sampler.mode}, {iterations} iteration{'s' * (iterations != 1)}"
        + (f" of the {cfg.train.iterations} configured)" if iterations < cfg.train.iterations else ")"),
        sort_key="reward",
        notes=notes,
        fps=cfg.eval.fps,
    )
    return paths["html"]


__all__ = ["EvalResult", "eval_pairs", "log_samples", "restore", "save_checkpoint", "write_summary"]
