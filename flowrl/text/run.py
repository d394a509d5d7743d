"""A whole text GRPO run: evaluate the base, train, evaluate the result, and write the run folder.

Run folder (as the flow trainer's, resumable the same way): ``config.yaml``, ``tb/``, ``checkpoints/<name>/`` (the
LoRA adapter in peft's format, or the full model and tokenizer, plus ``trainer_state.pt``), ``samples.md`` (evaluation
prompts with the base's and the trained policy's completions) and ``summary.json``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch

from flowrl.core.atomic import write_text
from flowrl.core.loop import finish_summary
from flowrl.core.resume import Finished, read_checkpoint, write_checkpoint
from flowrl.core.seeds import eval_noise_seeds
from flowrl.core.stats import prompt_mean_se
from flowrl.core.weights import weight_state
from flowrl.rewards.text import RewardLog
from flowrl.text.data import prompt_key, prompt_label
from flowrl.text.model import sample_completions
from flowrl.text.trainer import TextRun, completion_id_lists, score, weighted_total

EvalResult = tuple[list[str], torch.Tensor]  # completions (rows × samples) and rewards [rows × samples, K]


@torch.no_grad()
def evaluate(run: TextRun, rows: list[dict[str, Any]], indices: Sequence[int] | None = None) -> EvalResult:
    """``eval.samples_per_prompt`` completions per row (greedy at ``eval.temperature = 0``) and their rewards, or one
    per sample index in ``indices``. Sampled completions draw from the evaluation noise of their (prompt, sample
    index) pair, so they do not depend on the batch or the process, and the base and the trained model see the same
    noise. With several processes each scores its share (rows dealt out in turn) and all receive everything."""
    logged, run.reward_log = run.reward_log, RewardLog()  # what rewards log here is not a training metric
    try:
        return _evaluate(run, rows, range(run.cfg.eval.samples_per_prompt) if indices is None else indices)
    finally:
        run.reward_log = logged


def _evaluate(run: TextRun, rows: list[dict[str, Any]], indices: Sequence[int]) -> EvalResult:
    cfg, acc = run.cfg, run.accelerator
    mine = list(range(acc.process_index, len(rows), acc.num_processes))
    n = len(indices)
    texts: list[str] = []
    rewards = torch.empty(0, len(run.rewards))
    g = cfg.generation
    options = {"max_new_tokens": g.max_new_tokens, "temperature": cfg.eval.temperature, "top_p": g.top_p,
               "top_k": g.top_k, "synced": run.parallel.sharded, "add_special_tokens": run.format.add_special_tokens,
               "cache_implementation": g.cache_implementation or None}  # fmt: skip
    render = functools.partial(run.format.render, run.tokenizer)
    chunk = g.batch_size or max(len(mine), 1)
    calls = range(0, len(mine), chunk)
    for i in calls:
        part = [rows[j] for j in mine[i : i + chunk]]
        pairs = [(prompt_key(r["prompt"]), k) for r in part for k in indices]
        seeds = eval_noise_seeds([p for p, _ in pairs], [k for _, k in pairs])
        prompts = [render(r["prompt"]) for r in part]
        c = sample_completions(run.model, run.tokenizer, prompts, n, row_seeds=seeds, **options)
        rows_n = [part[int(k)] for k in c.index]
        texts += c.texts
        rewards = torch.cat([rewards, score(run, rows_n, c.texts, completion_id_lists(c))])
    filler = [render(r["prompt"]) for r in rows[:1]]  # a sharded model: as many generate calls on every process
    run.parallel.even_out(len(calls), lambda: sample_completions(run.model, run.tokenizer, filler, 1, **options))
    if acc.num_processes == 1:
        return texts, rewards
    from accelerate.utils import gather_object

    shares = gather_object([(mine, texts, rewards)])
    order = sorted((j, s, k) for s, (idx, _, _) in enumerate(shares) for k, j in enumerate(idx))
    out_texts = [shares[s][1][k * n + i] for j, s, k in order for i in range(n)]
    out_rewards = torch.cat([shares[s][2][k * n : (k + 1) * n] for j, s, k in order])
    return out_texts, out_rewards


def save_checkpoint(run: TextRun, path: str) -> None:
    """The trainable weights (peft adapter, or the full model with its tokenizer) and the trainer state (see
    ``flowrl.core.resume.write_checkpoint``). Under FSDP the weights are gathered from every process first."""
    full_model = run.cfg.model.finetune == "full"
    weights = weight_state(run.model, run.cfg.model.finetune, sharded=True) if run.parallel.sharded else None

    def write(folder: str) -> None:
        run.model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        if full_model:
            run.tokenizer.save_pretrained(folder)

    write_checkpoint(run, path, write, {"num_tokens": run.num_tokens}, run.params)


def restore(run: TextRun, path: str) -> None:
    """Continue ``run`` from the checkpoint folder ``path`` (see ``flowrl.core.resume``)."""
    state = read_checkpoint(run, path)
    run.num_tokens = int(state["num_tokens"])


def eval_rows(run: TextRun) -> list[dict[str, Any]]:
    """The evaluation rows: the first ``eval.num_prompts`` (all with 0)."""
    n = run.cfg.eval.num_prompts
    return run.eval_rows[:n] if n else run.eval_rows


def write_summary(done: Finished) -> None:
    """``summary.json``, ``samples.md`` and the final tracker entries (main process only)."""
    run, cfg = done.run, done.run.cfg
    rows, n = eval_rows(run), cfg.eval.samples_per_prompt
    summary: dict[str, Any] = {
        "backend": "text",
        "train_steps": run.iteration,
        "train_seconds": round(done.train_seconds, 1),
        "seed": cfg.seed,
        "num_eval_samples": len(rows) * n if cfg.eval.enabled else 0,
        "checkpoint": os.path.join(done.run_dir, "checkpoints", "final"),
        "training_warnings": run.monitor.history if run.monitor is not None else [],
    }
    if done.before is not None and done.after is not None:
        units = [prompt_key(r["prompt"]) for r in rows for _ in range(n)]
        summary.update(_eval_summary(run, units, done.before[1], done.after[1]))
        summary["samples"] = _write_samples(done.run_dir, rows, n, done.before, done.after)
        if done.writer is not None:
            done.writer.add_scalar("eval/reward", summary["eval_reward_after"], run.iteration)
            done.writer.log_table("eval/completions", ["prompt", "base", "trained"],
                                  [[prompt_label(rows[i // n]["prompt"]), b, a] for i, (b, a) in
                                   enumerate(zip(done.before[0], done.after[0], strict=True))][:24],
                                  run.iteration)  # fmt: skip
    finish_summary(done.run_dir, summary, cfg, done.writer, done.start)


def log_completions(run: TextRun, trackers: Any) -> None:
    """The first ``output.images_count`` evaluation rows' completions with their total reward, as a table in the
    trackers (every process generates: the evaluation is collective)."""
    rows = run.eval_rows[: run.cfg.output.images_count]
    texts, rewards = evaluate(run, rows)
    if trackers is None:
        return
    n, total = run.cfg.eval.samples_per_prompt, weighted_total(run, rewards)
    table = [[prompt_label(rows[i // n]["prompt"]), text, round(float(total[i]), 4)] for i, text in enumerate(texts)]
    trackers.log_table("samples", ["prompt", "completion", "reward"], table, run.iteration)


def _eval_summary(run: TextRun, prompts: list[str], before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    """Total reward before/after and the paired gain, with standard errors over prompts (``prompts[i]`` is row
    ``i``'s); each reward function's means."""
    out: dict[str, Any] = {}
    b, a = weighted_total(run, before), weighted_total(run, after)
    out["eval_reward_before"], out["eval_reward_before_se"] = prompt_mean_se(b, prompts)
    out["eval_reward_after"], out["eval_reward_after_se"] = prompt_mean_se(a, prompts)
    out["eval_reward_gain"], out["eval_reward_gain_se"] = prompt_mean_se(a - b, prompts)
    out["se_unit"] = "prompt"
    for k, (name, _, _) in enumerate(run.rewards):  # unscored (NaN) completions are left out of their prompt's mean
        (b, b_se), (a, a_se) = prompt_mean_se(before[:, k], prompts), prompt_mean_se(after[:, k], prompts)
        out[f"eval/{name}"] = {"before": b, "before_se": b_se, "after": a, "after_se": a_se}
    return out


def _write_samples(run_dir: str, rows, n: int, before: EvalResult, after: EvalResult, limit: int = 24) -> str:
    """``samples.md``: the first evaluation prompts with the base's and the trained policy's completions."""
    path = os.path.join(run_dir, "samples.md")
    lines = ["| prompt | base | trained |", "|---|---|---|"]
    for i, row in enumerate(rows[:limit]):
        cells = [" / ".join(repr(t) for t in texts[i * n : (i + 1) * n]) for texts in (before[0], after[0])]
        lines.append(f"| {prompt_label(row['prompt'])!r} | {cells[0]} | {cells[1]} |")
    write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["EvalResult", "eval_rows", "evaluate", "log_completions", "restore", "save_checkpoint", "write_summary"]
