"""``flowrl bench``: the short preset end to end through the command line, and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowrl.bench import BenchMethod, BenchPreset, load_preset
from flowrl.bench_report import markdown, summarise
from flowrl.options import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_short_preset_runs_every_method_and_writes_table_json_plot_and_checkpoints(tmp_path, monkeypatch):
    from PIL import Image

    from flowrl.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "configs/bench/short.yaml", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in results["rows"]] == ["flow-grpo", "flow-grpo-fast"]
    for run in results["runs"]:
        times = [p["t"] for p in run["curve"]]
        assert times[0] == 0.0 and times == sorted(times) and times[-1] >= 0.15 * 60  # the whole budget trained
        assert run["iterations"] >= 1 and run["peak_rss_gb"] > 0.1
        # evaluations at the fixed marks: one per 3 s interval passed (at most one per iteration)
        assert len(times) >= 2
    rows = {r["method"]: r for r in results["rows"]}
    # Flow-GRPO trains all 6 steps of each of the 16 samples, Flow-GRPO-Fast its 3-step window
    assert rows["flow-grpo"]["transitions_per_iteration"] == 6 * 16
    assert rows["flow-grpo-fast"]["transitions_per_iteration"] == 3 * 16
    assert rows["flow-grpo"]["nfe_per_sample"] == rows["flow-grpo-fast"]["nfe_per_sample"] == 6
    assert rows["flow-grpo"]["speedup"] == 1.0 or rows["flow-grpo"]["time_to_target_s"] is not None
    table = (out / "results.md").read_text()
    assert table.count("\n| flow-grpo") == 2 and "time to target" in table
    assert Image.open(out / "reward_vs_time.png").size[0] > 500
    for name in rows:
        assert (out / name / "checkpoints" / "final" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def _run(name: str, points: list[tuple[float, float]], repeat: int = 0) -> dict:
    curve = [{"t": t, "reward": r, "reward_se": 0.01, "strict": r / 2, "strict_se": 0.0} for t, r in points]
    return {
        "method": name, "repeat": repeat, "curve": curve, "iterations": 10, "seconds_per_iteration": 2.0,
        "nfe_per_sample": 10.0, "transitions_per_iteration": 30.0, "peak_rss_gb": 1.0, "train_seconds": 20.0,
    }  # fmt: skip


def test_time_to_target_and_speedup_by_hand():
    preset = BenchPreset(
        repeats=2, baseline="base", methods=[BenchMethod("base"), BenchMethod("fast"), BenchMethod("never")]
    )
    runs = [
        _run("base", [(0, 0.3), (60, 0.4), (120, 0.5)], 0),
        _run("base", [(0, 0.3), (62, 0.4), (122, 0.7)], 1),  # mean final: 0.6 = the target, reached at 121 s
        _run("fast", [(0, 0.3), (60, 0.65), (120, 0.8)], 0),
        _run("fast", [(0, 0.3), (60, 0.55), (120, 0.8)], 1),  # mean 0.6 at 60 s: 121 / 60 faster
        _run("never", [(0, 0.3), (60, 0.35), (120, 0.59)], 0),
        _run("never", [(0, 0.3), (60, 0.35), (120, 0.59)], 1),
    ]
    s = summarise(preset, runs)
    rows = {r["method"]: r for r in s["rows"]}
    assert s["target_reward"] == pytest.approx(0.6) and s["baseline_time_to_target_s"] == pytest.approx(121)
    assert rows["fast"]["time_to_target_s"] == 60 and rows["fast"]["speedup"] == pytest.approx(121 / 60)
    assert rows["never"]["time_to_target_s"] is None and rows["never"]["speedup"] is None
    assert rows["base"]["final_reward_se"] == pytest.approx(0.1)  # repeats: SE over the two finals 0.5, 0.7
    assert "not reached" in markdown(s) and "| fast | 0.300 → 0.800 ± 0.000 | 0.800 (120) |" in markdown(s)


def test_plot_with_repeats_draws_bands(tmp_path):
    """With repeats the SE band of method a (0.1 wide at 1 min) fills a translucent area that one run lacks."""
    from PIL import Image

    from flowrl.bench_report import plot

    def light_blue_pixels(repeats: int) -> int:
        preset = BenchPreset(repeats=repeats, baseline="a", methods=[BenchMethod("a"), BenchMethod("b")])
        runs = [_run("a", [(0, 0.3), (60, 0.5)], 0), _run("a", [(0, 0.3), (60, 0.7)], 1)][:repeats]
        runs += [_run("b", [(0, 0.3), (60, 0.4)], 0), _run("b", [(0, 0.3), (60, 0.4)], 1)][:repeats]
        results = summarise(preset, runs)
        results["repeats"] = repeats
        plot(results, str(tmp_path / f"p{repeats}.png"))
        pixels = Image.open(tmp_path / f"p{repeats}.png").convert("RGB").getdata()
        return sum(1 for r, g, b in pixels if 190 < r < 235 and 205 < g < 240 and b > 230 and b > r + 8)

    assert light_blue_pixels(2) > 5 * light_blue_pixels(1) + 1000


def test_bad_presets_are_refused_with_the_problem_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"--methods \['nope'\] not in"):
        load_preset(str(REPO / "configs/bench/short.yaml"), methods=["nope"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {REPO}/configs/demo.yaml\nmethods: [{{name: x, overrides: ['sampler.window_size=99']}}]\n")
    with pytest.raises(ConfigError, match=r"window_size=99 is longer than sampler\.num_steps"):
        load_preset(str(bad))


def test_full_preset_names_every_method_of_the_issue():
    preset = load_preset(str(REPO / "configs/bench/full.yaml"))
    assert [m.name for m in preset.methods] == [
        "flow-grpo", "flow-grpo-fast", "mixgrpo", "mixgrpo-flash", "branchgrpo", "branchgrpo-pruned",
        "branchgrpo-mix", "tempflow", "g2rpo", "grpo-guard", "awm",
    ]  # fmt: skip
