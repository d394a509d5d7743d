"""Trackers (``output.trackers``): tensorboard gets the scalars, the config, sample grids with captions and the
evaluation's images; wandb (offline) gets the images with captions; text runs log completions as a table; a tracker
that is unknown or not installed is refused before anything loads."""

from __future__ import annotations

import glob
import json

import pytest
from tiny_runs import TINY_ARGS, text_config

from flowrl.core.errors import ConfigError
from flowrl.recipes import load_config


def _tags(run_dir) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events.Tags(), events


def test_tensorboard_and_offline_wandb_get_scalars_config_and_captioned_images(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from flowrl.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    args = ["train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}", "output.images_every=1",
            "output.images_count=2", "output.trackers=[tensorboard, wandb]"]  # fmt: skip
    assert main(args) == 0
    tags, events = _tags(run_dir)
    assert {"samples", "eval/before", "eval/after"} <= set(tags["images"])
    assert {"reward/mean", "monitor/diversity", "eval/reward"} <= set(tags["scalars"])
    assert [e.step for e in events.Images("samples")] == [1, 2]  # after each of the 2 iterations
    texts = set(tags["tensors"])
    assert {"config/text_summary", "samples/captions/text_summary"} <= texts
    caption = events.Tensors("samples/captions/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| reward " in caption and "| toy-geneval " in caption  # each image's prompt and scores
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "train.lr: 0.01" in config
    media = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "images" / "samples_*.png"))
    assert len(media) == 2 * 2  # 2 images (each with its caption in the run's records) at each of 2 iterations
    assert json.loads((run_dir / "summary.json").read_text())["train_steps"] == 2


def test_text_runs_log_completions_as_a_table(lm_dir, tmp_path):
    from flowrl.text.recipe import train_and_report

    cfg = text_config(lm_dir, f"output.run_dir={tmp_path / 'run'}", "train.iterations=2", "output.images_every=2",
                      "output.images_count=2", "eval.samples_per_prompt=2")  # fmt: skip
    run_dir = train_and_report(cfg)
    tags, events = _tags(tmp_path / "run")
    assert {"samples/text_summary", "eval/completions/text_summary"} <= set(tags["tensors"])
    table = events.Tensors("samples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert table.startswith("| prompt | completion | reward |") and len(table.splitlines()) == 2 + 2 * 2
    assert run_dir == str(tmp_path / "run")


def test_unknown_or_missing_trackers_are_refused_before_anything_loads():
    with pytest.raises(ConfigError, match=r"output\.trackers: 'tensorbord' is not one of"):
        load_config(None, ["output.trackers=[tensorbord]"])
    with pytest.raises(ConfigError, match=r"output\.trackers\[0\]: 'aim' is not installed \(pip install aim\)"):
        load_config(None, ["output.trackers=[aim]"])
    assert load_config(None, ["output.trackers=[]"]).output.trackers == []
