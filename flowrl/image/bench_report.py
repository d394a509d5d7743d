"""The bench's table, JSON and reward-versus-time plot, from the per-run results of ``flowrl.image.bench``.

Uncertainty. With several repeats, a method's final and best rewards are means over repeats ± their SE over
repeats (each repeat evaluated on the same held-out pairs, so this is the spread of training, the unit that differs
between repeats). With one repeat there is nothing to spread over and the SE shown is the run's own SE over prompts;
``se_over`` says which. A method's best reward is the mean of each repeat's best point, which favours methods with
noisy curves (a maximum of noisy points); read it with its SE.

Time to target: the baseline's final held-out reward (mean over its repeats) is the target; a method's time is the
first evaluation time at which its repeat-averaged curve reaches it, and its speed-up is the baseline's own time
divided by it. Each repeat's own time is listed too (its spread). Evaluations happen at fixed training-time
intervals, so a time is resolved to the evaluation interval.

A method trained on other rewards than the baseline's (a learned reward, say) has no time to target: its held-out
reward is its own reward's. Its watch rewards (``eval.watch_rewards``, e.g. the evaluator the learned reward
imitates) are listed beside its own gain.

Stable: no point of the method's curve lies more than 2 SE below its base evaluation (the paired gain over the
base, SE over repeats, or over prompts with one repeat).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from typing import Any

from flowrl.core.atomic import write_json, write_text
from flowrl.core.stats import mean_se


def _mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Curves of a method's repeats averaged point by point (the shortest one sets the length). SEs are over repeats,
    or the single run's SEs over prompts."""
    n = min(len(r["curve"]) for r in runs)
    out = []
    for i in range(n):
        pts = [r["curve"][i] for r in runs]
        point = {"t": statistics.fmean(p["t"] for p in pts)}
        watched = [k for k in pts[0] if k.startswith("watch/") and not k.endswith("_se")]
        for key in ("reward", "gain", "strict", *watched):
            if key in pts[0]:
                point[key], se = mean_se([p[key] for p in pts])
                point[f"{key}_se"] = se if len(pts) > 1 else pts[0][f"{key}_se"]
        out.append(point)
    return out


def _time_to(curve: list[dict[str, float]], target: float) -> float | None:
    return next((p["t"] for p in curve if p["reward"] >= target), None)


def _stable(curve: list[dict[str, float]]) -> bool:
    return all(not (p["gain"] < -2 * p["gain_se"]) for p in curve)  # a NaN SE (one prompt) counts as stable


def _selection_rows(selection: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, lr): the final validation reward, mean ± SE over the selection repeats."""
    keys = list(dict.fromkeys((r["method"], r["lr"]) for r in selection))
    rows = []
    for method, lr in keys:
        finals = [r["curve"][-1] for r in selection if r["method"] == method and r["lr"] == lr]
        mean, se = mean_se([p["reward"] for p in finals])
        rows.append({"method": method, "lr": lr, "validation_reward": mean,
                     "validation_reward_se": se if len(finals) > 1 else finals[0]["reward_se"]})  # fmt: skip
    return rows


def trained_rewards(run: dict[str, Any]) -> list[str]:
    """The names of the rewards a bench run trained on (from its recorded config)."""
    return [r["name"] for r in run.get("settings", {}).get("config", {}).get("rewards", [])]


def _final(finals: list[dict[str, float]], key: str) -> tuple[float, float]:
    """The mean of ``key`` over the repeats' final points ± its SE over repeats (one repeat: its SE over prompts)."""
    mean, se = mean_se([p[key] for p in finals])
    return mean, finals[0][f"{key}_se"] if len(finals) == 1 else se


def _watched(finals: list[dict[str, float]], base: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each watch reward's base value, final value and paired gain over the run's base (means ± SEs)."""
    out = {}
    for key in (k for k in finals[0] if k.startswith("watch/") and not k.endswith(("_se", "_gain"))):
        (final, final_se), (gain, gain_se) = _final(finals, key), _final(finals, f"{key}_gain")
        out[key.removeprefix("watch/")] = {"base": base[key], "final": final, "final_se": final_se, "gain": gain,
                                           "gain_se": gain_se}  # fmt: skip
    return out


def _row(name: str, rs: list[dict[str, Any]], curve: list[dict[str, float]], target: float | None, base_time) -> dict:
    """A method's row; ``target`` None: it trained on another reward than the baseline, so no time to target."""
    finals, bests = [r["curve"][-1] for r in rs], [max(r["curve"], key=lambda p: p["reward"]) for r in rs]
    final, final_se = _final(finals, "reward")
    gain, gain_se = _final(finals, "gain")
    best, best_se = mean_se([p["reward"] for p in bests])
    one = len(rs) == 1
    strict = [p["strict"] for p in finals if "strict" in p]
    t = None if target is None else _time_to(curve, target)
    return {
        "method": name,
        "lr": rs[0]["lr"],
        "rewards": trained_rewards(rs[0]),
        "base_reward": curve[0]["reward"],
        "final_reward": final,
        "final_reward_se": final_se,
        "final_gain": gain,
        "final_gain_se": gain_se,
        "watched": _watched(finals, curve[0]),
        "best_reward": best,
        "best_reward_se": bests[0]["reward_se"] if one else best_se,
        "best_at_s": statistics.fmean(p["t"] for p in bests),
        "se_over": "prompts" if one else "repeats",
        "final_strict": statistics.fmean(strict) if strict else None,
        "final_strict_se": (finals[0]["strict_se"] if one else mean_se(strict)[1]) if strict else None,
        "time_to_target_s": t,
        "time_to_target_s_repeats": [None if target is None else _time_to(r["curve"], target) for r in rs],
        "speedup": base_time / t if t and base_time else None,
        "stable": _stable(curve),
        "nfe_per_sample": statistics.fmean(r["nfe_per_sample"] for r in rs),
        "transitions_per_iteration": statistics.fmean(r["transitions_per_iteration"] for r in rs),
        "seconds_per_iteration": statistics.fmean(r["seconds_per_iteration"] for r in rs),
        "iterations": statistics.fmean(r["iterations"] for r in rs),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in rs),
    }


def summarise(preset, runs: list[dict[str, Any]], selection: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One row per method (over its reported repeats), the learning-rate selection table, the target and the
    preset's settings."""
    names = [m.name for m in preset.methods]
    by_method = {n: [r for r in runs if r["method"] == n] for n in names}
    curves = {n: _mean_curve(rs) for n, rs in by_method.items()}
    baseline = preset.baseline if preset.baseline in curves else names[0]
    target = mean_se([r["curve"][-1]["reward"] for r in by_method[baseline]])[0]  # as the mean curve averages
    base_time = _time_to(curves[baseline], target)

    def same(name: str) -> bool:  # trained on the baseline's rewards: its time to the target means something
        return trained_rewards(by_method[name][0]) == trained_rewards(by_method[baseline][0])

    return {
        "baseline": baseline,
        "target_reward": target,
        "baseline_time_to_target_s": base_time,
        "budget_minutes": preset.budget_minutes,
        "eval_every_minutes": preset.eval_every_minutes,
        "repeats": preset.repeats,
        "lr_grid": list(preset.lr_grid),
        "selection_repeats": preset.selection_repeats,
        "prompts": {
            "train": preset.train_prompts,
            "validation": preset.validation_prompts,
            "eval": preset.eval_prompts,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "rows": [_row(n, by_method[n], curves[n], target if same(n) else None, base_time) for n in names],
        "selection": _selection_rows(selection or []),
        "curves": curves,
        "runs": runs,
        "selection_runs": selection or [],
    }


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _pm(mean: float | None, se: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f}" if se is None or math.isnan(se) else f"{mean:.3f} ± {se:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """The results table and, with a learning-rate grid, the selection table (markdown)."""
    rows = results["rows"]
    se_over = rows[0]["se_over"] if rows else "repeats"
    lines = [
        f"Target: {results['baseline']}'s final held-out reward {results['target_reward']:.3f} "
        f"(budget {results['budget_minutes']:g} min of training per run, evaluation every "
        f"{results['eval_every_minutes']:g} min, {results['repeats']} repeat(s), ± = SE over {se_over}; "
        f"{results['machine']}).",
        "",
        "| method | lr | held-out reward: base → final | best (at s) | strict accuracy | time to target (s) "
        "[per repeat] | speed-up | stable | NFE / sample | transitions / iter | s / iter | iterations "
        "| peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    own = next((r.get("rewards") for r in rows if r["method"] == results["baseline"]), None)
    for r in rows:
        reached = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.0f}"
        if r.get("rewards", own) != own:  # another reward: its own scale, no target
            reached = "– (own reward)"
        if results["repeats"] > 1:
            each = ", ".join("–" if t is None else f"{t:.0f}" for t in r["time_to_target_s_repeats"])
            reached += f" [{each}]"
        cells = [
            r["method"] + (f" (on {', '.join(r['rewards'])})" if r.get("rewards", own) != own else ""),
            f"{r['lr']:g}",
            f"{r['base_reward']:.3f} → {_pm(r['final_reward'], r['final_reward_se'])}",
            f"{_pm(r['best_reward'], r['best_reward_se'])} ({r['best_at_s']:.0f})",
            _pm(r["final_strict"], r["final_strict_se"]),
            reached,
            _fmt(r["speedup"], ".2f"),
            "yes" if r["stable"] else "no",
            f"{r['nfe_per_sample']:.1f}",
            f"{r['transitions_per_iteration']:.0f}",
            f"{r['seconds_per_iteration']:.1f}",
            f"{r['iterations']:.0f}",
            f"{r['peak_rss_gb']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _watched_table(rows)
    if results.get("selection"):
        chosen = {r["method"]: r["lr"] for r in rows}
        lines += ["", f"Learning rate chosen on {results['prompts']['validation']} (final reward, "
                  f"{results['selection_repeats']} run(s) per rate; * = chosen):", "",
                  "| method | lr | validation reward |", "|---|---|---|"]  # fmt: skip
        for s in results["selection"]:
            mark = " *" if chosen.get(s["method"]) == s["lr"] else ""
            lines.append(
                f"| {s['method']} | {s['lr']:g}{mark} | {_pm(s['validation_reward'], s['validation_reward_se'])} |"
            )
    return "\n".join(lines) + "\n"


def _watched_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows that watched rewards they did not train on: the trained reward's gain beside each watched one's (a
    learned reward that rises while the evaluator it imitates does not is being hacked)."""
    watching = [r for r in rows if r.get("watched")]
    if not watching:
        return []
    lines = ["", "Watched rewards (scored on the same held-out images, never trained on; gains paired over each "
             "run's base evaluation):", "", "| method | trained on | its gain | watched | base → final | gain |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in watching:
        for name, w in r["watched"].items():
            cells = [r["method"], ", ".join(r.get("rewards", [])), _pm(r["final_gain"], r["final_gain_se"]), name,
                     f"{w['base']:.3f} → {_pm(w['final'], w['final_se'])}", _pm(w["gain"], w["gain_se"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return lines


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
        if results["repeats"] > 1:  # the band: SE over repeats
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
    write_text(os.path.join(out_dir, "results.md"), markdown(results))
    plot(results, os.path.join(out_dir, "reward_vs_time.png"))


__all__ = ["markdown", "plot", "summarise", "write_report"]
