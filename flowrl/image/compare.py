"""``flowrl gallery``: checkpoints or methods side by side on a prompt list with fixed seed indices.

Each column is ``LABEL=SOURCE[@CONFIG]``. SOURCE is ``base`` (the config's model as it is), a checkpoint folder
written by the trainer (``.../checkpoints/<name>``, holding ``lora/`` or ``full/``; or that ``lora`` / ``full``
folder itself), or a ``flowrl bench`` output folder, which becomes one column per reported run (its final
checkpoint, labelled ``LABEL/<method>-r<k>``). CONFIG (default ``--config``) gives the model (toy, SD3.5, FLUX.1,
Qwen-Image, FLUX.2 [klein], Z-Image or FLUX.1-Kontext), resolution, sampling steps and rewards; ``--prompts``
defaults to
``--config``'s ``data.eval_prompts``, as in ``flowrl eval``. Every column generates the same (prompt, seed index)
pairs with the ODE sampler, each from the pair's own noise (``flowrl.core.seeds.eval_noise_seed``), and is scored with
the config's rewards; the page is ``flowrl.image.gallery.write_gallery``'s (sortable, filterable, works from disk).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from flowrl.core.columns import ColumnSpec, base_index
from flowrl.core.errors import ConfigError
from flowrl.core.inputs import row_inputs


def load_column_policy(cfg, source: str):
    """The config's model with ``source``'s trained weights: a LoRA adapter or a full transformer."""
    from flowrl.image.models import policy_for

    policy = policy_for(cfg.model, cfg.sampler.shift)
    if source == "base":
        return _with_untrained_copy(cfg, policy, lora=False)
    lora = next((p for p in (os.path.join(source, "lora"), source) if _is_lora(p)), None)
    full = next((p for p in (os.path.join(source, "full"), source) if _is_full(p)), None)
    if lora is None and full is None:
        raise ConfigError(f"{source!r} holds no LoRA (pytorch_lora_weights*.safetensors) or full transformer")
    try:
        policy.load_trained(lora or full, lora=lora is not None)
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # shapes, names or files of another model
        raise ConfigError(f"checkpoint {source!r} does not fit the model {cfg.model.path!r}: "
                          f"{' '.join(str(e).split())[:300]}") from None  # fmt: skip
    return _with_untrained_copy(cfg, policy, lora=lora is not None)


def _with_untrained_copy(cfg: Any, policy: Any, lora: bool) -> Any:
    """Sample as the trainer evaluates: through the untrained copy that ``model.untrained_copy`` asks for."""
    from flowrl.image.models.untrained import untrained_copy

    policy.untrained = untrained_copy(policy, cfg.model.untrained_copy, lora, sharded=False)
    return policy


def _is_lora(path: str) -> bool:
    """A folder of LoRA weights (``pytorch_lora_weights.safetensors``; a Wan 2.2 expert's file has a suffix)."""
    return os.path.isdir(path) and any(f.startswith("pytorch_lora_weights") for f in os.listdir(path))


def _is_full(path: str) -> bool:
    """A full transformer (``config.json`` and its weights), or one per expert in ``transformer*/`` subfolders."""
    if not os.path.isdir(path):
        return False
    if os.path.isfile(os.path.join(path, "config.json")):
        return any(f.startswith("diffusion_pytorch_model") for f in os.listdir(path))
    return any(_is_full(os.path.join(path, sub)) for sub in ("transformer", "transformer_2"))


def evaluate_column(
    spec: ColumnSpec, prompts: list[str], seeds: list[int], inputs: dict[str, dict[str, Any]] | None = None
) -> tuple[torch.Tensor, dict]:
    """One column's images ``[N, 3, H, W]`` for the (prompt, seed index) rows and their scores (trained and watch
    rewards, ``flowrl.image.evaluation.score_images``), generated as the trainer evaluates; ``inputs``: each
    prompt row's conditioning inputs by ``row_key`` (``flowrl.image.data.inputs_by_prompt``)."""
    from flowrl.image.evaluation import score_images
    from flowrl.image.generate import generate
    from flowrl.rewards import RewardSet

    cfg = spec.cfg
    policy = load_column_policy(cfg, spec.source)
    images = generate(
        policy, prompts, seeds, inputs=row_inputs(inputs, prompts), resolution=cfg.model.resolution,
        num_steps=cfg.eval.num_steps, solver=cfg.eval.solver, batch_size=cfg.train.sample_batch or 64,
    )  # fmt: skip
    rewards = RewardSet.from_specs([vars(r) for r in cfg.rewards])
    watch = RewardSet.from_specs([vars(r) for r in cfg.eval.watch_rewards])
    return images, score_images(rewards, images, prompts, watch, inputs)


def describe_source(spec: ColumnSpec) -> str:
    """What a column shows: the base model of its config, or a checkpoint folder with its iteration (from an
    ``iter-NNNNNN`` folder name, or for ``final`` from its run's ``summary.json``)."""
    config = spec.config or "the built-in defaults"
    if spec.source == "base":
        return f"the base model of {config}"
    folder = os.path.normpath(spec.source)
    if os.path.basename(folder) in ("lora", "full"):
        folder = os.path.dirname(folder)
    name, iteration = os.path.basename(folder), None
    if name.startswith("iter-") and name[5:].isdigit():
        iteration = int(name[5:])
    elif name == "final":
        try:
            with open(os.path.join(folder, "..", "..", "summary.json"), encoding="utf-8") as f:
                iteration = int(json.load(f)["train_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return spec.source + (f" (after {iteration} iteration{'s' * (iteration != 1)})" if iteration is not None else "")


def render(
    specs: list[ColumnSpec],
    prompts: list[str],
    seeds: list[int],
    out_dir: str,
    title: str = "flowrl gallery",
    inputs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """Generate and score every column (``parse_columns`` with a loader: configs read and checked) on the same
    (prompt, seed) rows; write the gallery; return its paths."""
    rows_p = [p for p in prompts for _ in seeds]
    rows_s = [s for _ in prompts for s in seeds]
    results = [evaluate_column(spec, rows_p, rows_s, inputs) for spec in specs]
    return write_columns(specs, results, rows_p, rows_s, out_dir, title, inputs)


def source_columns(prompts: list[str], inputs: dict[str, dict[str, Any]] | None, like: torch.Tensor) -> list:
    """The rows' reference images as gallery columns (resized to the images ``like``) when every prompt has one (an
    editing config), else ``[]``: ``source``, or ``source 1`` .. ``source k`` for rows of up to k references (a row
    with fewer shows white in the others)."""
    from flowrl.image.gallery import GalleryColumn
    from flowrl.rewards.preprocess import load_image

    rows = row_inputs(inputs, prompts)
    if not prompts or any(not row.get("image") for row in rows):
        return []
    size, count = tuple(like.shape[-2:]), max(len(row["image"]) for row in rows)
    blank = torch.ones(3, *size)
    columns = []
    for k in range(count):
        images = torch.stack([load_image(row["image"][k], size) if k < len(row["image"]) else blank for row in rows])
        label = "source" if count == 1 else f"source {k + 1}"
        columns.append(GalleryColumn(label, images, [{} for _ in prompts]))
    return columns


def write_columns(
    specs: list[ColumnSpec], results: list[tuple[torch.Tensor, dict]], prompts: list[str], seeds: list[int],
    out_dir: str, title: str, inputs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The gallery of evaluated columns (``evaluate_column``'s results on the rows ``prompts``, ``seeds``), with
    the monitors of each column against the base (``base_index``) in its header; an editing config's source images
    come first (``source_columns``)."""
    from flowrl.image.evaluation import compare, hacking_warnings, monitor_lines
    from flowrl.image.gallery import GalleryColumn, write_gallery

    columns = source_columns(prompts, inputs, results[0][0]) + [
        GalleryColumn(spec.label, images, [{k: float(v[i]) for k, v in scores.items()} for i in range(len(prompts))])
        for spec, (images, scores) in zip(specs, results, strict=True)
    ]
    b, notes = base_index(specs), ["columns: " + "; ".join(f"{s.label} = {describe_source(s)}" for s in specs)]
    for spec, (images, scores) in zip(specs, results, strict=True):
        if spec is not specs[b]:
            eval_cfg = spec.cfg.eval
            change = compare(results[b][1], scores, prompts, results[b][0], images)
            warnings = hacking_warnings(change, eval_cfg.watch_drop, eval_cfg.diversity_drop)
            notes += monitor_lines(change, warnings, specs[b].label, spec.label)
    return write_gallery(out_dir, prompts, seeds, columns, title=title, sort_key="reward", notes=notes,
                         fps=specs[0].cfg.eval.fps)  # fmt: skip


__all__ = [
    "evaluate_column",
    "load_column_policy",
    "render",
    "write_columns",
]
