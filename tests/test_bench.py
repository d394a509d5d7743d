"""``flowrl bench``: the short preset end to end through the command line, and the report's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowrl.core.errors import ConfigError
from flowrl.image.bench import BenchMethod, BenchPreset, choose_lr, load_preset
from flowrl.image.bench_report import markdown, summarise

REPO = Path(__file__).resolve().parents[1]


def test_short_preset_runs_the_protocol_and_a_rerun_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from flowrl.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "bench"
    assert main(["bench", "--preset", "configs/bench/short.yaml", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["repeats"] == 2 and results["baseline"] == "flow-grpo"
    # selection: every method × rate ran once, scored at the start and the end on the validation prompts
    assert len(results["selection_runs"]) == 4
    for run in results["selection_runs"]:
        assert run["eval_prompts"] == "toy:validation" and len(run["curve"]) == 2 and run["phase"] == "select"
    rows = {r["method"]: r for r in results["rows"]}
    for name, row in rows.items():
        scores = {s["lr"]: s["validation_reward"] for s in results["selection"] if s["method"] == name}
        assert set(scores) == {1e-4, 1e-3} and row["lr"] == max(sorted(scores), key=scores.get)
        for key in ("base_reward", "final_reward", "final_reward_se", "best_reward", "time_to_target_s", "speedup",
                    "stable"):  # fmt: skip
            assert key in row
        assert row["se_over"] == "repeats" and row["best_reward"] >= row["final_reward"] - 1e-9
    reported = results["runs"]
    assert sorted((r["method"], r["repeat"], r["seed"]) for r in reported) == [
        ("flow-grpo", 0, 0), ("flow-grpo", 1, 1), ("flow-grpo-fast", 0, 0), ("flow-grpo-fast", 1, 1),
    ]  # fmt: skip
    for run in reported:
        assert run["eval_prompts"] == "toy:held-out" and run["lr"] == rows[run["method"]]["lr"]
        times = [p["t"] for p in run["curve"]]
        assert times[0] == 0.0 and times == sorted(times) and times[-1] >= 0.05 * 60 and len(times) >= 2
        assert run["curve"][0]["gain"] == 0.0  # the first point is its own base
        assert (
            out / f"{run['method']}-r{run['repeat']}/checkpoints/final/lora/pytorch_lora_weights.safetensors"
        ).is_file()
    # Flow-GRPO trains all 6 steps of each of the 16 samples, Flow-GRPO-Fast its 3-step window
    assert rows["flow-grpo"]["transitions_per_iteration"] == 6 * 16
    assert rows["flow-grpo-fast"]["transitions_per_iteration"] == 3 * 16
    table = (out / "results.md").read_text()
    assert table.count("\n| flow-grpo") == 2 + 4 and "time to target" in table and "stable" in table
    assert Image.open(out / "reward_vs_time.png").size[0] > 500

    # a rerun on the same folder keeps every finished run and rewrites the same report
    capsys.readouterr()
    assert main(["bench", "--preset", "configs/bench/short.yaml", "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier, kept") == 8
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]
    # ... but refuses finished runs made with other settings
    assert main(["bench", "--preset", "configs/bench/short.yaml", "--out", str(out), "--budget-minutes", "0.1"]) == 2
    assert "other settings" in capsys.readouterr().err


def _run(name: str, points: list[tuple[float, float]], repeat: int = 0, lr: float = 1e-3) -> dict:
    curve = [
        {"t": t, "reward": r, "reward_se": 0.01, "gain": r - points[0][1], "gain_se": 0.01, "strict": r / 2,
         "strict_se": 0.0} for t, r in points
    ]  # fmt: skip
    return {
        "method": name, "repeat": repeat, "lr": lr, "curve": curve, "iterations": 10, "seconds_per_iteration": 2.0,
        "nfe_per_sample": 10.0, "transitions_per_iteration": 30.0, "peak_rss_gb": 1.0, "train_seconds": 20.0,
    }  # fmt: skip


def test_time_to_target_speedup_stability_and_repeat_errors_by_hand():
    preset = BenchPreset(
        repeats=2, baseline="base", methods=[BenchMethod("base"), BenchMethod("fast"), BenchMethod("never")]
    )
    runs = [
        _run("base", [(0, 0.3), (60, 0.4), (120, 0.5)], 0),
        _run("base", [(0, 0.3), (62, 0.4), (122, 0.7)], 1),  # mean final: 0.6 = the target, reached at 121 s
        _run("fast", [(0, 0.3), (60, 0.65), (120, 0.8)], 0),
        _run("fast", [(0, 0.3), (60, 0.55), (120, 0.8)], 1),  # mean 0.6 at 60 s: 121 / 60 faster
        _run("never", [(0, 0.3), (60, 0.1), (120, 0.59)], 0),
        _run("never", [(0, 0.3), (60, 0.2), (120, 0.59)], 1),  # dips by 0.15 ± 0.05 at 60 s: not stable
    ]
    s = summarise(preset, runs)
    rows = {r["method"]: r for r in s["rows"]}
    assert s["target_reward"] == pytest.approx(0.6) and s["baseline_time_to_target_s"] == pytest.approx(121)
    assert rows["fast"]["time_to_target_s"] == 60 and rows["fast"]["speedup"] == pytest.approx(121 / 60)
    assert rows["fast"]["time_to_target_s_repeats"] == [60, 120]  # 0.65 and 0.55: 0.6 is crossed at 60 and 120
    assert rows["base"]["time_to_target_s_repeats"] == [None, 122]
    assert rows["never"]["time_to_target_s"] is None and rows["never"]["speedup"] is None
    assert rows["base"]["final_reward_se"] == pytest.approx(0.1)  # SE over the two finals 0.5, 0.7
    assert rows["fast"]["best_reward"] == pytest.approx(0.8) and rows["fast"]["best_reward_se"] == 0.0
    assert [rows[n]["stable"] for n in ("base", "fast", "never")] == [True, True, False]
    table = markdown(s)
    assert "not reached" in table and "| fast | 0.001 | 0.300 → 0.800 ± 0.000 | 0.800 ± 0.000 (120) |" in table


def test_one_repeat_reports_the_se_over_prompts_and_the_lr_choice():
    preset = BenchPreset(repeats=1, baseline="a", methods=[BenchMethod("a")])
    s = summarise(preset, [_run("a", [(0, 0.3), (60, 0.28)])])
    row = s["rows"][0]
    assert row["se_over"] == "prompts" and row["final_reward_se"] == 0.01 and row["stable"]  # −0.02 > −2 × 0.01
    assert not summarise(preset, [_run("a", [(0, 0.3), (60, 0.25)])])["rows"][0]["stable"]
    finals = [(1e-4, 0.4), (1e-3, 0.5), (1e-4, 0.45), (1e-3, 0.3)]
    selection = [_run("a", [(0, 0.3), (9, r)], k, lr) for k, (lr, r) in enumerate(finals)]
    assert choose_lr(selection) == 1e-4  # means 0.425 and 0.4
    tie = [_run("a", [(0, 0.3), (9, 0.4)], 0, 3e-4), _run("a", [(0, 0.3), (9, 0.4)], 0, 1e-4)]
    assert choose_lr(tie) == 1e-4  # a tie goes to the smaller rate


def test_plot_with_repeats_draws_bands(tmp_path):
    """With repeats the SE band of method a (0.1 wide at 1 min) fills a translucent area that one run lacks."""
    from PIL import Image

    from flowrl.image.bench_report import plot

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
    # the learning rate must not be chosen on prompts that are trained on or reported
    with pytest.raises(ConfigError, match=r"validation_prompts \(toy:held-out\) and eval_prompts .* must be disjoint"):
        load_preset(str(REPO / "configs/bench/short.yaml"), validation_prompts="toy:held-out")
    with pytest.raises(ConfigError, match=r"train_prompts \(toy:train\) and validation_prompts"):
        load_preset(str(REPO / "configs/bench/short.yaml"), train_prompts="toy:train")
    with pytest.raises(ConfigError, match="lr_grid must hold positive"):
        load_preset(str(REPO / "configs/bench/short.yaml"), lr_grid=[0.0])


def test_full_preset_names_every_method_of_the_issue():
    preset = load_preset(str(REPO / "configs/bench/full.yaml"))
    assert [m.name for m in preset.methods] == [
        "flow-grpo", "flow-grpo-fast", "mixgrpo", "mixgrpo-flash", "branchgrpo", "branchgrpo-pruned",
        "branchgrpo-mix", "tempflow", "g2rpo", "grpo-guard", "nft", "awm", "dpo", "best-of-n", "smpo",
        "draft-learned", "refl-learned", "flow-grpo-fast-learned", "dpo-learned",
    ]  # fmt: skip
    # the learned-reward rows train on toy-learned and watch the evaluator
    for m in preset.methods:
        if m.name.endswith("-learned"):
            assert "rewards=[{name: toy-learned}]" in m.overrides
            assert "eval.watch_rewards=[{name: toy-geneval}]" in m.overrides


def test_finished_runs_survive_options_added_later_at_their_base_value():
    from flowrl.image.bench import _same_settings

    done = {"config": {"loss": {"name": "awm", "clip": 0.2}}, "phase": "report"}
    base = {"config": {"loss": {"name": "ppo-clip", "clip": 0.2, "new": 0}}, "phase": "report"}
    same = {"config": {"loss": {"name": "awm", "clip": 0.2, "new": 0}}, "phase": "report"}
    assert _same_settings(done, same, base)  # 'new' did not exist then; this run leaves it at the base value
    assert not _same_settings(done, {"config": {"loss": {"name": "awm", "clip": 0.2, "new": 1}}, "phase": "report"},
                              base)  # fmt: skip
    assert not _same_settings(done, {"config": {"loss": {"name": "awm", "clip": 0.3, "new": 0}}, "phase": "report"},
                              base)  # fmt: skip
    assert not _same_settings(same, done, base)  # a setting this flowrl no longer has


def test_curve_points_carry_the_watched_rewards_with_their_gains():
    """A learned reward's rise shows beside the evaluator it imitates: each ``watch/<name>`` gets its mean and its
    paired gain over the run's first evaluation, by hand (two prompts, two seeds each: SE over the prompts' means)."""
    import torch

    from flowrl.image.bench import curve_point

    prompts = ["a", "a", "b", "b"]
    first: dict = {}
    start = {"reward": torch.tensor([0.2, 0.4, 0.6, 0.8]), "watch/toy-geneval": torch.tensor([0.5, 0.5, 0.1, 0.3]),
             "watch/toy-geneval/strict": torch.zeros(4)}  # fmt: skip
    p0 = curve_point(start, prompts, first, "toy-geneval/strict")
    assert p0["gain"] == 0.0 and p0["watch/toy-geneval_gain"] == 0.0
    assert p0["watch/toy-geneval"] == pytest.approx((0.5 + 0.2) / 2) and "strict" not in p0
    assert "watch/toy-geneval/strict" not in p0  # a watch reward's diagnostics are not curve columns
    later = {**start, "reward": start["reward"] + 0.3, "watch/toy-geneval": torch.tensor([0.5, 0.7, 0.1, 0.1])}
    p1 = curve_point(later, prompts, first, "toy-geneval/strict")
    assert p1["gain"] == pytest.approx(0.3) and p1["gain_se"] == pytest.approx(0.0, abs=1e-7)
    # watch gain per prompt: a +0.1, b −0.1: mean 0, SE = std of (0.1, −0.1) / √2 = 0.1
    assert p1["watch/toy-geneval_gain"] == pytest.approx(0.0, abs=1e-7)
    assert p1["watch/toy-geneval_gain_se"] == pytest.approx(0.1, rel=1e-5)


def test_rows_on_another_reward_have_no_target_and_list_their_watched_rewards():
    """A row trained on a learned reward is not timed against the evaluator's target; its watched evaluator's final
    value and paired gain are means over repeats with their SE over repeats, by hand."""

    def run(name: str, rewards: list[str], points: list[tuple[float, float]], watch: list[float] | None, k: int):
        r = _run(name, points, k)
        r["settings"] = {"config": {"rewards": [{"name": n} for n in rewards]}}
        if watch is not None:
            for p, w in zip(r["curve"], watch, strict=True):
                p.update({"watch/toy-geneval": w, "watch/toy-geneval_se": 0.02, "watch/toy-geneval_gain": w - watch[0],
                          "watch/toy-geneval_gain_se": 0.02})  # fmt: skip
        return r

    preset = BenchPreset(repeats=2, baseline="base", methods=[BenchMethod("base"), BenchMethod("hack")])
    runs = [
        run("base", ["toy-geneval"], [(0, 0.3), (60, 0.5)], None, 0),
        run("base", ["toy-geneval"], [(0, 0.3), (60, 0.5)], None, 1),
        run("hack", ["toy-learned"], [(0, 0.3), (60, 0.9)], [0.3, 0.32], 0),  # the learned reward soars ...
        run("hack", ["toy-learned"], [(0, 0.3), (60, 0.7)], [0.3, 0.28], 1),  # ... the evaluator does not move
    ]
    rows = {r["method"]: r for r in summarise(preset, runs)["rows"]}
    assert rows["base"]["time_to_target_s"] == 60 and rows["base"]["watched"] == {}
    hack = rows["hack"]
    assert hack["time_to_target_s"] is None and hack["speedup"] is None and hack["rewards"] == ["toy-learned"]
    assert hack["final_gain"] == pytest.approx(0.5) and hack["final_gain_se"] == pytest.approx(0.1)
    w = hack["watched"]["toy-geneval"]
    assert (w["base"], w["final"], w["final_se"]) == pytest.approx((0.3, 0.3, 0.02))
    assert w["gain"] == pytest.approx(0.0, abs=1e-12) and w["gain_se"] == pytest.approx(0.02)
    table = markdown(summarise(preset, runs))
    assert "| hack (on toy-learned) |" in table and "– (own reward)" in table
    assert "| hack | toy-learned | 0.500 ± 0.100 | toy-geneval | 0.300 → 0.300 ± 0.020 | 0.000 ± 0.020 |" in table
