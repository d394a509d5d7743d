"""The toy bases' pretraining scripts run end to end at a tiny size: a few steps, the folder saved in the pipeline's
layout and loaded back for its held-out report (the shipped bases are these scripts' output at their defaults)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(autouse=True)
def scripts_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))


@pytest.mark.parametrize(
    "script, sizes, parts",
    [
        ("pretrain_toy_edit", ["--width", "48", "--layers", "1"], ("held_out_done", "held_out_preserved")),
        ("pretrain_toy_video", ["--width", "48", "--layers", "1"],
         ("held_out_reward", "held_out_objects", "held_out_motion", "held_out_consistency")),
    ],
)  # fmt: skip
def test_a_pretraining_script_saves_a_loadable_base_with_its_report(script, sizes, parts, tmp_path, capsys):
    module = __import__(script)
    out = tmp_path / "base"
    args = ["--out", str(out), "--steps", "3", "--warmup", "1", "--batch-size", "2", "--eval-seeds", "1",
            "--eval-steps", "2", "--threads", "1", *sizes]  # fmt: skip
    assert module.main(args) == 0
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["steps"] == 3 and report["batch_size"] == 2 and report["threads"] == 1
    assert all(0.0 <= report[p] <= 1.0 and f"{p}_se" in report for p in parts)
    assert (out / "model_index.json").is_file() and "step     2  loss" in capsys.readouterr().out
    sys.modules.pop(script, None)
