"""The text demo through the command line, shortened: the shipped toy LM and the shipped preset, 60 of its
200 iterations, all 1000 held-out problems evaluated greedily before and after."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_text_demo_raises_held_out_accuracy_by_ten_points(tmp_path, monkeypatch):
    from flowrl.cli import main

    monkeypatch.chdir(REPO)  # the preset names assets/toy-lm relative to the repository
    run_dir = tmp_path / "run"
    args = ["--config", "configs/text_demo.yaml", "train.iterations=60", "output.progress=false"]
    assert main(["train", *args, f"output.run_dir={run_dir}"]) == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["num_eval_samples"] == 1000 and s["train_steps"] == 60
    assert 0.5 < s["eval_reward_before"] < 0.7  # the shipped base: right on no-carry problems, wrong on carries
    assert s["eval_reward_gain"] >= 0.10 and s["eval_reward_gain"] > 5 * s["eval_reward_gain_se"], s
    assert s["eval/correct"]["after"] == s["eval_reward_after"]
