"""The bench's table, JSON and reward-versus-time plot, from the per-run results of ``flowrl.bench``.

Time to target: the baseline's final held-out reward (mean over its repeats) is the target; a method's time is
the first evaluation time at which its (repeat-averaged) held-out reward reaches it, and its speed-up is the
baseline's own time to the target divided by it. Evaluations happen at fixed training-time intervals, so a time
is resolved to the evaluation interval.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from typing import Any

from flowrl.atomic import write_json


def _mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def _mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Curves of a method's repeats averaged point by point (the shortest one sets the length)."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(n):
        pts = [r["curve"][i] for r in runs]
        reward, se = _mean_se([p["reward"] for p in pts])
        point = {"t": statistics.fmean(p["t"] for p in pts), "reward": reward}
        point["reward_se"] = se if len(pts) > 1 else pts[0]["reward_se"]  # one run: the SE over eval images
        if "strict" in pts[0]:
            strict, strict_se = _mean_se([p["strict"] for p in pts])
            point["strict"], point["strict_se"] = strict, strict_se if len(pts) > 1 else pts[0]["strict_se"]
        out.append(point)
    return out


def _time_to(curve: list[dict[str, float]], target: float) -> float | None:
    return next((p["t"] for p in curve if p["reward"] >= target), None)


def summarise(preset, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per method (means over repeats) plus the target and the preset."""
    names = [m.name for m in preset.methods]
    by_method = {n: [r for r in runs if r["method"] == n] for n in names}
    curves = {n: _mean_curve(rs) for n, rs in by_method.items()}
    baseline = preset.baseline if preset.baseline in curves else names[0]
    target = curves[baseline][-1]["reward"]
    base_time = _time_to(curves[baseline], target)
    rows = []
    for n in names:
        rs, final = by_method[n], curves[n][-1]
        t = _time_to(curves[n], target)
        rows.append(
            {
                "method": n,
                "final_reward": final["reward"],
                "final_reward_se": final["reward_se"],
                "final_strict": final.get("strict"),
                "final_strict_se": final.get("strict_se"),
                "base_reward": curves[n][0]["reward"],
                "best_reward": max(p["reward"] for p in curves[n]),
                "best_at_s": max(curves[n], key=lambda p: p["reward"])["t"],
                "time_to_target_s": t,
                "speedup": base_time / t if t and base_time else None,
                "nfe_per_sample": statistics.fmean(r["nfe_per_sample"] for r in rs),
                "transitions_per_iteration": statistics.fmean(r["transitions_per_iteration"] for r in rs),
                "seconds_per_iteration": statistics.fmean(r["seconds_per_iteration"] for r in rs),
                "iterations": statistics.fmean(r["iterations"] for r in rs),
                "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
            }
        )
    return {
        "baseline": baseline,
        "target_reward": target,
        "baseline_time_to_target_s": base_time,
        "budget_minutes": preset.budget_minutes,
        "eval_every_minutes": preset.eval_every_minutes,
        "repeats": preset.repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "rows": rows,
        "curves": curves,
        "runs": runs,
    }


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(results: dict[str, Any]) -> str:
    """The results table (markdown)."""
    lines = [
        f"Target: {results['baseline']}'s final held-out reward {results['target_reward']:.3f} "
        f"(budget {results['budget_minutes']:g} min of training per method, evaluation every "
        f"{results['eval_every_minutes']:g} min, {results['repeats']} repeat(s); {results['machine']}).",
        "",
        "| method | held-out reward: base → final ± SE | best (at s) | strict accuracy | time to target (s) "
        "| speed-up | NFE / sample | transitions / iter | s / iter | iterations | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        strict = "–" if r["final_strict"] is None else f"{r['final_strict']:.3f} ± {r['final_strict_se']:.3f}"
        reached = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
        cells = [
            r["method"],
            f"{r['base_reward']:.3f} → {r['final_reward']:.3f} ± {r['final_reward_se']:.3f}",
            f"{r['best_reward']:.3f} ({r['best_at_s']:.0f})",
            strict,
            reached,
            _fmt(r["speedup"], ".2f"),
            f"{r['nfe_per_sample']:.1f}",
            f"{r['transitions_per_iteration']:.0f}",
            f"{r['seconds_per_iteration']:.1f}",
            f"{r['iterations']:.0f}",
            f"{r['peak_rss_gb']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: str) -> None:
    """Held-out reward against training minutes, one line per method, ±SE band when there are repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colors = plt.get_cmap("tab20").colors  # 20 distinct colours; line styles tell the cycles apart beyond that
    for k, (name, curve) in enumerate(results["curves"].items()):
        t = [p["t"] / 60 for p in curve]
        y = [p["reward"] for p in curve]
        style = {"color": colors[(2 * k) % 20 + (k // 10) % 2], "linestyle": ("-", "--", ":")[k // 20 % 3]}
        (line,) = ax.plot(t, y, marker="o", markersize=3, label=name, **style)
        if results["repeats"] > 1:
            se = [p["reward_se"] for p in curve]
            low = [a - b for a, b in zip(y, se, strict=True)]
            high = [a + b for a, b in zip(y, se, strict=True)]
            ax.fill_between(t, low, high, color=line.get_color(), alpha=0.2)
    ax.axhline(results["target_reward"], color="grey", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel("training time (minutes; evaluation excluded)")
    ax.set_ylabel("held-out reward")
    ax.set_title("flowrl bench: toy world")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(results: dict[str, Any], out_dir: str) -> None:
    write_json(os.path.join(out_dir, "results.json"), results)
    tmp = os.path.join(out_dir, "results.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(markdown(results))
    os.replace(tmp, os.path.join(out_dir, "results.md"))
    plot(results, os.path.join(out_dir, "reward_vs_time.png"))


__all__ = ["markdown", "plot", "summarise", "write_report"]
