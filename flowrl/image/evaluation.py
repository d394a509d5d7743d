"""Evaluation on fixed (prompt, seed index) pairs, one piece of code for the trainer's before/after evaluation,
``flowrl bench``, ``flowrl eval`` and ``flowrl gallery``: scores from the trained and the watch rewards, means with
the prompt as the unit (``flowrl.core.stats``), per-category breakdowns, and the reward-hacking monitors.

Monitors (what a reward that can be gamed shows first):
- **watch rewards** (``eval.watch_rewards``): scored on every evaluated image, never trained on (``watch/<name>``);
- **diversity**: per prompt, the mean pairwise distance between its images (its seeds), measured on images
  area-downsampled to at most 32×32 so that it sees layout and colour rather than pixel noise: the RMS difference,
  in [0, 1] for images in [0, 1];
- **drift**: the same distance between the base's and the trained policy's image of one (prompt, seed) pair, which
  share their noise, so drift is what training changed;
- **warning**: when the trained reward rose (by more than two standard errors) while a watch reward fell by more
  than ``eval.watch_drop`` (and two standard errors) or the diversity fell by more than the fraction
  ``eval.diversity_drop`` of its base value; and a diversity that falls that far without the reward rising, as a
  possible collapse.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from flowrl.core.inputs import row_key
from flowrl.core.monitor import WATCH
from flowrl.core.stats import mean_se, prompt_mean_se

THUMB = 32  # side of the images the distances are measured on


def prompt_groups(prompts: Sequence[str]) -> Tensor:
    """Group ids ``[N]``: the pairs of one prompt row share an id (numbered in order of first appearance; equal
    texts are one row unless a file repeats the text with other inputs, ``flowrl.core.inputs.PromptRow``)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(row_key(p), len(ids)) for p in prompts], dtype=torch.long)


def score_images(
    rewards: Any, images: Tensor, prompts: list[str], watch: Any = None, inputs: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """``{"reward": total, <reward>: score, <reward>/<diagnostic>: ..., "watch/<reward>": ...}``, each ``[N]``, of
    ``images`` ``[N, 3, H, W]``; the seeds of one prompt text form a group for groupwise rewards; ``inputs``: the
    prompt rows' columns by ``row_key``, for rewards that read them."""
    groups = prompt_groups(prompts)
    total, parts = rewards(images, prompts, groups, inputs=inputs)
    out = {"reward": total, **parts}
    if watch is not None and watch.rewards:
        _, extra = watch(images, prompts, groups, inputs=inputs)
        out.update({WATCH + k: v for k, v in extra.items()})
    return out


def thumbnails(images: Tensor, side: int = THUMB) -> Tensor:
    """``[N, 3, h, w]`` float32 on the CPU, area-downsampled so that neither side exceeds ``side``."""
    x = images.detach().float().cpu()
    if max(x.shape[-2:]) > side:
        scale = side / max(x.shape[-2:])
        size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=size, mode="area")
    return x


def distance(a: Tensor, b: Tensor) -> Tensor:
    """RMS difference ``[N]`` between paired images ``[N, 3, H, W]`` (after ``thumbnails``)."""
    return (thumbnails(a) - thumbnails(b)).square().flatten(1).mean(1).sqrt()


def group_diversity(thumbs: Tensor, groups: Tensor) -> dict[int, float]:
    """Per group id with at least two images: the mean pairwise RMS distance between its ``thumbs``
    ``[N, 3, h, w]`` (``groups`` ``[N]``)."""
    flat, groups, out = thumbs.flatten(1).double(), groups.cpu(), {}
    for g in groups.unique().tolist():
        rows = flat[groups == g]
        n = rows.shape[0]
        if n > 1:
            out[g] = float(torch.cdist(rows, rows).sum() / (n * (n - 1) * math.sqrt(rows.shape[1])))
    return out


def block_monitors(
    watch: Any, images: Tensor, prompts: list[str], inputs: Mapping[str, Any] | None = None
) -> dict[str, Tensor]:
    """What the monitors keep of a scored block: ``thumbs`` ``[n, 3, h, w]`` and each watch reward's scores
    ``[n]`` (``watch/<name>``; never part of the trained rewards)."""
    out = {"thumbs": thumbnails(images)}
    if watch is not None:
        _, parts = watch(images, prompts, prompt_groups(prompts), inputs=inputs)
        out.update({WATCH + k: v.float().cpu() for k, v in parts.items()})
    return out


def monitor_metrics(monitors: dict[str, Tensor], groups: Tensor) -> dict[str, float]:
    """``watch/<name>`` means and ``monitor/diversity``: the mean over groups (``groups`` ``[N]``) with two or more
    images of their mean pairwise RMS thumbnail distance (NaN when no group has two)."""
    out = {k: float(v.float().nanmean()) for k, v in monitors.items() if k.startswith(WATCH)}
    if "thumbs" in monitors:
        values = list(group_diversity(monitors["thumbs"], groups).values())
        out["monitor/diversity"] = statistics.fmean(values) if values else math.nan
    return out


def diversity(images: Tensor, prompts: Sequence[str]) -> dict[str, float]:
    """Per prompt row (its ``row_key``, in order of first appearance) with at least two images: the mean pairwise
    ``distance`` between its images ``[N, 3, H, W]``."""
    per_group = group_diversity(thumbnails(images), prompt_groups(prompts))
    return {k: per_group[g] for g, k in enumerate(dict.fromkeys(map(row_key, prompts))) if g in per_group}


def categories(prompt: str, metadata: dict[str, Any] | None = None) -> list[str]:
    """Category labels of ``prompt``: its GenEval ``tag`` when ``metadata`` (prompt → GenEval metadata) has it;
    for a toy-world prompt its kind (``kind=counting`` or ``kind=position``), ``count=<n>``, ``colour=<c>`` and
    ``relation=<r>``; none for other prompts."""
    if metadata is not None and prompt in metadata:
        tag = getattr(metadata[prompt], "tag", "")
        return [f"tag={tag}"] if tag else []
    from flowrl.image.toy_world import parse_prompt

    try:
        scene = parse_prompt(prompt)
    except ValueError:
        return []
    labels = ["kind=position" if scene.relation else "kind=counting"]
    labels += sorted({f"count={c.count}" for c in scene.clauses} | {f"colour={c.colour}" for c in scene.clauses})
    return labels + ([f"relation={scene.relation}"] if scene.relation else [])


def summarize(
    scores: dict[str, Tensor], prompts: list[str], images: Tensor | None = None, metadata: dict | None = None
) -> dict[str, Any]:
    """Mean and prompt-clustered SE of every score ``[N]``; with ``images``, the within-prompt diversity (mean and
    SE over prompts, and per prompt); per category (``categories``), the mean and SE of every score over the
    category's prompts."""
    out: dict[str, Any] = {
        "num_images": len(prompts),
        "num_prompts": len(set(map(row_key, prompts))),
        "se_unit": "prompt",
    }
    out["scores"] = {k: dict(zip(("mean", "se"), prompt_mean_se(v, prompts), strict=True)) for k, v in scores.items()}
    if images is not None:
        per_prompt = diversity(images, prompts)
        mean, se = mean_se(list(per_prompt.values()))
        out["diversity"] = {"mean": mean, "se": se, "per_prompt": per_prompt}
    labels = {p: categories(p, metadata) for p in dict.fromkeys(prompts)}
    by_category: dict[str, Any] = {}
    for label in sorted({c for cs in labels.values() for c in cs}):
        rows = torch.tensor([label in labels[p] for p in prompts])
        chosen = [p for p, keep in zip(prompts, rows.tolist(), strict=True) if keep]
        by_category[label] = {"num_prompts": len(set(map(row_key, chosen)))}
        for k, v in scores.items():
            mean, se = prompt_mean_se(v[rows], chosen)
            by_category[label][k] = {"mean": mean, "se": se}
    if by_category:
        out["categories"] = by_category
    return out


def compare(
    before: dict[str, Tensor], after: dict[str, Tensor], prompts: list[str], base_images: Tensor, images: Tensor
) -> dict[str, Any]:
    """Paired changes from the base (``before``) to a trained policy (``after``) on the same (prompt, seed) pairs:
    each score's gain with its prompt-clustered SE, the drift (``distance`` of paired images: mean, SE, max) and
    the diversity before and after."""
    gains = {k: dict(zip(("gain", "se"), prompt_mean_se(after[k] - before[k], prompts), strict=True))
             for k in before if k in after}  # fmt: skip
    d = distance(base_images, images)
    mean, se = prompt_mean_se(d, prompts)
    div_b, div_a = diversity(base_images, prompts), diversity(images, prompts)
    return {
        "gains": gains,
        "drift": {"mean": mean, "se": se, "max": float(d.max()) if d.numel() else math.nan},
        "diversity": {"before": mean_se(list(div_b.values()))[0], "after": mean_se(list(div_a.values()))[0]},
    }


def hacking_warnings(change: dict[str, Any], watch_drop: float, diversity_drop: float) -> list[str]:
    """One line per sign of reward hacking in ``compare``'s result: the trained reward rose by more than 2 SE while
    a watch reward fell by more than ``watch_drop`` (and 2 SE), or the diversity fell by more than the fraction
    ``diversity_drop`` of its base value. A diversity that falls that far while the reward does not rise is
    reported too, as a collapse."""
    reward, div, lines = change["gains"].get("reward"), change["diversity"], []
    rose = reward is not None and _beyond(reward["gain"], reward["se"], 0.0)
    collapsed = div["before"] > 0 and div["after"] < (1 - diversity_drop) * div["before"]
    fell = f"the within-prompt diversity fell from {div['before']:.3f} to {div['after']:.3f}"
    if not rose:
        return [f"possible collapse: {fell} while the trained reward did not rise "
                f"(eval.diversity_drop={diversity_drop})"] if collapsed else []  # fmt: skip
    up = f"the trained reward rose {reward['gain']:+.3f} ± {reward['se']:.3f}"
    for key, g in change["gains"].items():
        if key.startswith(WATCH) and "/" not in key[len(WATCH) :] and _beyond(-g["gain"], g["se"], watch_drop):
            lines.append(f"possible reward hacking: {up} while watch reward {key[len(WATCH) :]!r} fell "
                         f"{g['gain']:+.3f} ± {g['se']:.3f} (eval.watch_drop={watch_drop})")  # fmt: skip
    if collapsed:
        lines.append(f"possible reward hacking: {up} while {fell} (eval.diversity_drop={diversity_drop})")
    return lines


def monitor_lines(
    change: dict[str, Any], warnings: Sequence[str], base: str = "base", trained: str = "trained"
) -> list[str]:
    """Gallery and console lines of ``compare``'s drift and diversity, then the ``warnings``."""
    d, div = change["drift"], change["diversity"]
    return [
        f"drift {trained} vs {base} (same prompt and seed, RMS on 32×32): {d['mean']:.3f} ± {d['se']:.3f} "
        f"(max {d['max']:.3f}) · within-prompt diversity {base} {div['before']:.3f} → {trained} {div['after']:.3f}",
        *warnings,
    ]


def load_categories_metadata(path: str) -> dict[str, Any] | None:
    """Prompt → GenEval metadata from ``eval.metadata`` (None when no file is given)."""
    if not path:
        return None
    from flowrl.rewards.geneval import load_metadata

    return load_metadata(path)


def _beyond(value: float, se: float, threshold: float) -> bool:
    """``value`` exceeds ``threshold`` and two standard errors (a NaN SE, one prompt, counts as 0)."""
    return value > threshold and value > 2 * (0.0 if math.isnan(se) else se)


__all__ = [
    "WATCH",
    "block_monitors",
    "categories",
    "compare",
    "distance",
    "diversity",
    "group_diversity",
    "hacking_warnings",
    "load_categories_metadata",
    "monitor_lines",
    "monitor_metrics",
    "prompt_groups",
    "score_images",
    "summarize",
    "thumbnails",
]
