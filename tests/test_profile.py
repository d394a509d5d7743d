"""``flowrl profile``: the stages of an iteration, their rows and FLOP rates, on the tiny model."""

from __future__ import annotations

import json

import pytest
from tiny_runs import TINY_ARGS

from flowrl.cli import main


def test_profile_times_every_stage_and_counts_the_rows(tiny_model, tmp_path, capsys):
    args = ["profile", "--iterations", "1", "--warmup", "0", "--out", str(tmp_path), f"model.path={tiny_model}",
            *TINY_ARGS, "sampler.window_size=2", "model.untrained_copy=fp32"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "profile.json").read_text())
    stages = report["stages"]
    images = 2 * 4  # prompts × group size; 4 steps, an SDE window of 2
    assert stages["rollout_trained_forward"]["rows"] == 2 * images
    assert stages["rollout_untrained_forward"]["rows"] == 2 * images
    assert stages["replay_forward"]["rows"] == stages["backward"]["rows"] == 2 * images  # every transition trained
    assert report["nfe_per_iteration"] == 4 * images
    for name in ("rollout", "rewards", "replay_forward", "backward", "optimizer", "log", "checkpoint"):
        assert stages[name]["seconds"] > 0, name
    # the rate is the FLOPs of the rows over the stage's time (a backward pass as two forwards)
    flops = report["forward_gflop_per_image"]
    b = stages["backward"]
    assert b["gflop_per_s"] == pytest.approx(2 * flops * b["rows"] / b["seconds"])
    assert stages["rollout"]["seconds"] >= stages["rollout_trained_forward"]["seconds"]
    printed = capsys.readouterr().out
    assert "| rollout_untrained_forward |" in printed and (tmp_path / "profile.md").read_text().strip() in printed


def test_profile_refuses_text_configs_and_bad_counts(lm_dir, capsys):
    assert main(["profile", "backend=text", f"model.path={lm_dir}", "generation.max_new_tokens=4"]) == 2
    assert "flowrl profile has no stage timer for the text backend; its runs log time/sample_s" in (
        capsys.readouterr().err
    )
    assert main(["profile", "--iterations", "0"]) == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err
