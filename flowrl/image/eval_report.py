"""``flowrl eval``: evaluate the base model and checkpoints on a prompt set with fixed seeds, write ``eval.json``.

    flowrl eval --config configs/demo.yaml --checkpoint base=base \\
        --checkpoint trained=runs/demo-x/checkpoints/final [--prompts toy:held-out] [--seeds 0,1,2,3] [--out DIR]

Each ``--checkpoint LABEL=SOURCE[@CONFIG]`` is a column as in ``flowrl gallery`` (SOURCE: ``base``, a checkpoint
folder with ``lora/`` or ``full/``, or a bench folder). Every column generates the same (prompt, seed index) pairs,
each pair from its own noise (the measurement protocol of ``flowrl.image.generate``), and is scored with its config's
rewards and ``eval.watch_rewards``. ``eval.json`` holds, per column, every score's mean with its prompt-clustered
SE, the within-prompt diversity and the per-category breakdown (toy-world kinds, counts, colours and relations; GenEval
tags with ``--metadata``); and for each column against the base (the column whose SOURCE is ``base``, else the
first): paired gains, drift and the reward-hacking warnings. Without ``--prompts`` the config's evaluation prompts
and seeds are used, as the trainer's evaluation does. ``--gallery N`` also writes a gallery of the first N prompts.
A text config (``backend: text``) is evaluated by ``flowrl.text.eval_report``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from flowrl.core.atomic import write_json
from flowrl.core.errors import ConfigError
from flowrl.core.inputs import row_key
from flowrl.core.options import seed_indices

if TYPE_CHECKING:
    from flowrl.core.columns import ColumnLoader


def add_arguments(parser: Any) -> None:
    parser.add_argument("--config", help="YAML config of the model, sampling, rewards and watch rewards")
    parser.add_argument(
        "--checkpoint", action="append", required=True, metavar="LABEL=SOURCE[@CONFIG]",
        help="a column: SOURCE is base, a checkpoint folder or a bench folder (repeat for several)",
    )  # fmt: skip
    parser.add_argument("--prompts", help="toy:<split> or a text file (default: the config's data.eval_prompts); "
                        "text configs: a data source like data.eval (default: data.eval)")  # fmt: skip
    parser.add_argument("--num-prompts", type=int, help="first N prompts, 0 = all (default: eval.num_prompts)")
    parser.add_argument("--seeds", help="comma-separated seed indices (default: 0..eval.seeds_per_prompt-1; text: "
                        "sample indices, 0..eval.samples_per_prompt-1)")  # fmt: skip
    parser.add_argument("--metadata", help="GenEval metadata JSONL for per-tag results (default: eval.metadata)")
    parser.add_argument("--gallery", type=int, default=0, metavar="N", help="also write a gallery of N prompts")
    parser.add_argument("--out", default="eval-out", help="output folder for eval.json (and gallery/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


def pairs(args: Any, cfg: Any) -> tuple[list[str], list[int], list[str], dict[str, dict[str, Any]]]:
    """The (prompt, seed index) rows, each prompt with every seed, the distinct prompts and their conditioning
    inputs by row (``flowrl.core.inputs.row_key``); refuses bad input before any model loads."""
    from flowrl.image.data import inputs_by_prompt, load_prompt_set

    source = args.prompts or cfg.data.eval_prompts
    prompt_set = load_prompt_set(source)
    prompts = prompt_set.prompts
    n = cfg.eval.num_prompts if args.num_prompts is None else args.num_prompts
    if n < 0:
        raise ConfigError(f"--num-prompts must be >= 0, got {n}")
    prompts = prompts[:n] if n else prompts
    seeds = seed_indices(args.seeds, cfg.eval.seeds_per_prompt)
    inputs = inputs_by_prompt((source, prompt_set))
    return [p for p in prompts for _ in seeds], [s for _ in prompts for s in seeds], prompts, inputs


def evaluate_images(args: Any, cfg: Any, load: ColumnLoader) -> dict[str, Any]:
    """``flowrl eval`` for the image recipe: every column's images and scores, ``eval.json`` and the gallery.
    ``load`` reads a column's config (``flowrl.recipes.column_loader``)."""
    from flowrl.core.columns import base_index, parse_columns
    from flowrl.image.compare import evaluate_column
    from flowrl.image.evaluation import compare, hacking_warnings, load_categories_metadata, summarize

    specs = parse_columns(args.checkpoint, args.config, "--checkpoint", load)  # every config checked: none loaded yet
    rows_p, rows_s, prompts, inputs = pairs(args, cfg)
    metadata_path = cfg.eval.metadata if args.metadata is None else args.metadata
    if metadata_path and not os.path.isfile(metadata_path):
        raise ConfigError(f"--metadata {metadata_path!r} does not exist")
    metadata = load_categories_metadata(metadata_path)
    results = [evaluate_column(spec, rows_p, rows_s, inputs) for spec in specs]
    b = base_index(specs)
    report: dict[str, Any] = {
        "command": " ".join(["flowrl", "eval", *sys.argv[2:]]) if sys.argv[1:2] == ["eval"] else "flowrl eval",
        "prompts": args.prompts or cfg.data.eval_prompts,
        "num_prompts": len(prompts),
        "seeds": sorted(set(rows_s)),
        "noise": "independent per (prompt, seed index)",
        "se_unit": "prompt",
        "base": specs[b].label,
        "columns": {},
        "versus_base": {},
        "warnings": [],
    }
    for spec, (images, scores) in zip(specs, results, strict=True):
        report["columns"][spec.label] = {"source": spec.source, **summarize(scores, rows_p, images, metadata)}
        if spec is not specs[b]:
            change = compare(results[b][1], scores, rows_p, results[b][0], images)
            warnings = hacking_warnings(change, cfg.eval.watch_drop, cfg.eval.diversity_drop)
            report["versus_base"][spec.label] = {**change, "warnings": warnings}
            report["warnings"] += [f"{spec.label}: {w}" for w in warnings]
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "eval.json"), report)
    if args.gallery:
        from flowrl.image.compare import write_columns

        keep = {row_key(p) for p in prompts[: args.gallery]}
        rows = [i for i, p in enumerate(rows_p) if row_key(p) in keep]
        chosen = [(images[rows], {k: v[rows] for k, v in scores.items()}) for images, scores in results]
        write_columns(specs, chosen, [rows_p[i] for i in rows], [rows_s[i] for i in rows], args.out, "flowrl eval",
                      inputs)  # fmt: skip
    return report


def console_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the console: each column's reward ± SE, gains against the base, then the warnings."""
    lines = []
    for label, col in report["columns"].items():
        r = col["scores"]["reward"]
        lines.append(f"{label}: reward {r['mean']:.4f} ± {r['se']:.4f} ({col['num_prompts']} prompts × "
                     f"{len(report['seeds'])} seeds)")  # fmt: skip
    for label, change in report["versus_base"].items():
        g = change["gains"]["reward"]
        drift = f", drift {change['drift']['mean']:.3f}" if "drift" in change else ""  # images only
        lines.append(f"{label} − {report['base']}: reward {g['gain']:+.4f} ± {g['se']:.4f}{drift}")
    return lines + [f"warning: {w}" for w in report["warnings"]]


__all__ = ["add_arguments", "console_lines", "evaluate_images", "pairs"]
