"""``flowrl eval`` with a text config: evaluate the base model and text checkpoints on evaluation prompts.

    flowrl eval --config configs/text_demo.yaml --checkpoint base=base \\
        --checkpoint trained=runs/text_demo-x/checkpoints/final [--prompts data.jsonl] [--seeds 0,1,2,3]

A column's SOURCE is ``base``, a flowrl text checkpoint (its ``lora/`` adapter or ``full/`` model), a peft adapter
folder (``adapter_config.json``, as TRL's ``output_dir`` checkpoints with a ``peft_config`` are) or a full model
folder (``config.json``). Every column samples the same (prompt, sample index) pairs, each from its own noise, as
the trainer evaluates (``flowrl.text.run.evaluate``: greedy at ``eval.temperature = 0``), and is scored
with its config's rewards. ``eval.json`` holds, per column, the weighted total and each reward's mean with its
standard error over prompts and the share of distinct completions per prompt (with several samples); and each
column's paired gains against the base (the column whose SOURCE is ``base``, else the first); ``completions.jsonl``
each (prompt, sample index) pair's completion and total reward in every column.
``--prompts`` is a data source as ``data.eval`` (a file, a folder, ``toy-text:<split>``); ``--seeds`` are the
sample indices (default ``0 .. eval.samples_per_prompt − 1``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from flowrl.core.errors import ConfigError


def run(args: Any, cfg: Any, load: Any) -> dict[str, Any]:
    """Evaluate every column of a text config and write ``<out>/eval.json``; returns the report. ``load`` reads a
    column's config (``flowrl.recipes.column_loader``)."""
    from flowrl.core.atomic import write_json, write_jsonl
    from flowrl.core.columns import base_index, parse_columns

    if args.gallery or args.metadata:
        raise ConfigError(f"--{'gallery' if args.gallery else 'metadata'} is for image models; a text evaluation "
                          "writes eval.json (completions are in the run's samples.md)")  # fmt: skip
    specs = parse_columns(args.checkpoint, args.config, "--checkpoint")
    weights = [_weights(spec.source) for spec in specs]
    columns = [
        (spec, _column_config(load, spec, w[1]), w) for spec, w in zip(specs, weights, strict=True)
    ]  # before loading
    rows, indices = _rows(args, cfg)
    units = [_key(r) for r in rows for _ in indices]
    results = [_evaluate_column(c, weights, rows, indices) for _, c, weights in columns]
    b = base_index(specs)
    report: dict[str, Any] = {
        "command": " ".join(["flowrl", "eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else "flowrl eval",
        "backend": "text",
        "prompts": args.prompts or cfg.data.eval,
        "num_prompts": len(rows),
        "seeds": list(indices),
        "noise": "independent per (prompt, sample index)",
        "se_unit": "prompt",
        "base": specs[b].label,
        "columns": {},
        "versus_base": {},
        "warnings": [],
    }
    for (spec, _, _), result in zip(columns, results, strict=True):
        report["columns"][spec.label] = {"source": spec.source, **_summary(result, units, len(indices))}
        if spec is not specs[b]:
            report["versus_base"][spec.label] = {"gains": _gains(results[b]["scores"], result["scores"], units)}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "eval.json"), report)
    write_jsonl(os.path.join(args.out, "completions.jsonl"), _completion_rows(specs, results, rows, indices))
    return report


def _completion_rows(specs, results, rows, indices) -> list[dict[str, Any]]:
    """``completions.jsonl``: per (prompt, sample index), each column's completion and total reward."""
    from flowrl.text.data import prompt_label

    out = []
    for i, (row, k) in enumerate((row, k) for row in rows for k in indices):
        columns = {s.label: {"completion": r["texts"][i], "reward": float(r["scores"]["reward"][i])}
                   for s, r in zip(specs, results, strict=True)}  # fmt: skip
        out.append({"prompt": prompt_label(row["prompt"]), "sample": k, "columns": columns})
    return out


def _column_config(load: Any, spec: Any, full: str | None) -> Any:
    """The column's config, read by ``load`` (``flowrl.recipes.column_loader``: of the evaluation's backend); a full
    model folder ``full`` becomes its ``model.path``."""
    return load(f"--checkpoint {spec.label} ({spec.config})", spec.config, [f"model.path={full}"] if full else [])


def _weights(source: str) -> tuple[str | None, str | None]:
    """``(adapter folder, full model folder)`` of a column's SOURCE (both None for ``base``)."""
    if source == "base":
        return None, None
    for folder in (os.path.join(source, "lora"), os.path.join(source, "full"), source):
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            return folder, None
        if os.path.isfile(os.path.join(folder, "config.json")):
            return None, folder
    raise ConfigError(f"{source!r} holds no peft adapter (adapter_config.json) or model (config.json), nor a "
                      "flowrl checkpoint's lora/ or full/")  # fmt: skip


def _rows(args: Any, cfg: Any) -> tuple[list[dict[str, Any]], list[int]]:
    """The evaluation rows (first ``--num-prompts``) and the sample indices; bad input refused before loading."""
    from flowrl.core.options import seed_indices
    from flowrl.text.config import check_data_source
    from flowrl.text.data import load_rows

    source, split = args.prompts or cfg.data.eval, cfg.data.eval_split
    if check_data_source("--prompts", source, split) != check_data_source("data.eval", cfg.data.eval, split):
        raise ConfigError(f"--prompts {source!r}: its prompts are not of the format of the config's data.eval "
                          "(strings or lists of messages)")  # fmt: skip
    n = cfg.eval.num_prompts if args.num_prompts is None else args.num_prompts
    if n < 0:
        raise ConfigError(f"--num-prompts must be >= 0, got {n}")
    rows = load_rows(source, split)
    return (rows[:n] if n else rows), seed_indices(args.seeds, cfg.eval.samples_per_prompt)


def _evaluate_column(cfg: Any, weights: tuple[str | None, str | None], rows, indices) -> dict[str, Any]:
    """One column's completions and rewards (``flowrl.text.run.evaluate``)."""
    from flowrl.text.run import evaluate
    from flowrl.text.trainer import setup, weighted_total

    run = setup(cfg)
    if weights[0] is not None:
        _load_adapter(run, weights[0])
    texts, rewards = evaluate(run, rows, indices)
    scores = {"reward": weighted_total(run, rewards)}
    scores.update({name: rewards[:, k] for k, (name, _, _) in enumerate(run.rewards)})
    return {"texts": texts, "scores": scores}


def _load_adapter(run: Any, folder: str) -> None:
    """Generate with the peft adapter in ``folder`` (its own rank and targets) instead of the run's fresh one."""
    from peft import PeftModel

    from flowrl.text.model import quiet_peft

    try:
        with quiet_peft():
            if isinstance(run.model, PeftModel):
                run.model.load_adapter(folder, adapter_name="evaluated")
                run.model.set_adapter("evaluated")
            else:
                run.model = PeftModel.from_pretrained(run.model, folder)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # another model's shapes or module names
        raise ConfigError(f"adapter {folder!r} does not fit the model {run.cfg.model.path!r}: "
                          f"{' '.join(str(e).split())[:300]}") from None  # fmt: skip
    run.model.eval()


def _summary(result: dict[str, Any], units: list[str], n: int) -> dict[str, Any]:
    """Means with prompt SEs of every score and (n > 1) the share of distinct completions per prompt."""
    from flowrl.core.stats import mean_se, prompt_mean_se

    out: dict[str, Any] = {"num_prompts": len(set(units)), "scores": {}}
    for name, values in result["scores"].items():
        mean, se = prompt_mean_se(values, units)
        out["scores"][name] = {"mean": mean, "se": se}
    texts = result["texts"]
    if n > 1:
        mean, se = mean_se([len(set(texts[i : i + n])) / n for i in range(0, len(texts), n)])
        out["distinct"] = {"mean": mean, "se": se}
    return out


def _gains(base: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], units: list[str]) -> dict[str, Any]:
    """Paired gains (same prompt and sample index) of every score, with prompt SEs."""
    from flowrl.core.stats import prompt_mean_se

    out = {}
    for name, values in scores.items():
        gain, se = prompt_mean_se(values - base[name], units)
        out[name] = {"gain": gain, "se": se}
    return out


def _key(row: dict[str, Any]) -> str:
    from flowrl.text.data import prompt_key

    return prompt_key(row["prompt"])


__all__ = ["run"]
