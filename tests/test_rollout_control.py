"""Rollout controls (``rollout.control``, flowrl.core.rollout.control): the default draws what every run drew before
controls existed, the per-prompt record and its metrics by hand, the state's round trip through a checkpoint, and
the trainers feeding the control their whole batch."""

from __future__ import annotations

import random

import pytest
import torch

from flowrl.core.checkpoint import plain
from flowrl.core.errors import ConfigError
from flowrl.core.rollout import PromptControl, make_control, zero_variance_share
from flowrl.recipes import load_config


def test_uniform_draws_what_the_runs_drew_before():
    pool = [f"p{i}" for i in range(20)]
    a, b = random.Random(3), random.Random(3)
    control = make_control(load_config("configs/demo.yaml", []).rollout.control)
    for _ in range(5):
        assert control.draw(a, pool, str, 6) == b.sample(pool, 6)
    assert sorted(control.draw(a, pool[:4], str, 6)) == pool[:4]  # a small pool: every prompt once


def test_the_record_and_its_metrics_by_hand():
    control = PromptControl()
    keys = ["a", "a", "b", "b", "c", "c"]
    totals = torch.tensor([0.2, 0.4, 1.0, 1.0, float("nan"), 0.5])
    control.observe(keys, totals, torch.tensor([0, 0, 1, 1, 2, 2]))
    control.observe(["a", "a"], torch.tensor([0.6, 0.6]), torch.tensor([7, 7]))
    a, b, c = (control.stats[k] for k in "abc")
    assert (a.groups, a.mean, a.last_equal) == (2, pytest.approx((0.3 + 0.6) / 2), True)
    assert (b.groups, b.mean, b.last_equal) == (1, 1.0, True)
    assert (c.groups, c.mean, c.last_equal) == (1, 0.5, True)  # the unscored member is left out
    m = control.metrics()
    # per-prompt means 0.45, 1.0, 0.5: quantiles by linear interpolation
    assert m["difficulty/p50"] == pytest.approx(0.5) and m["difficulty/p10"] == pytest.approx(0.45 + 0.2 * 0.05)
    assert m["difficulty/p90"] == pytest.approx(0.5 + 0.8 * 0.5) and m["difficulty/seen"] == 3
    assert m["difficulty/zero_variance"] == 1.0
    assert PromptControl().metrics() == {}


def test_state_round_trips_through_a_checkpoint(tmp_path):
    control = PromptControl()
    control.observe(["x", "x", "y", "y"], torch.tensor([0.0, 1.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1]))
    torch.save(plain(control.state_dict()), tmp_path / "s.pt")
    again = PromptControl()
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert again.stats == control.stats and again.metrics() == control.metrics()


def test_zero_variance_share_by_hand():
    totals = torch.tensor([0.1, 0.1, 0.3, 0.5, 0.2, 0.2 + 1e-7])
    assert zero_variance_share(totals, torch.tensor([4, 4, 1, 1, 9, 9])) == pytest.approx(2 / 3)


def test_an_unknown_control_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="uniform"):
        load_config("configs/demo.yaml", ["rollout.control.name=nope"])


def test_the_image_trainer_feeds_the_control_its_whole_batch(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import setup, train_step

    run = setup(tiny_config(tiny_model))
    metrics = train_step(run)
    assert metrics["difficulty/seen"] == 2 and set(run.control.stats) <= {p for p in run.train_prompts}
    assert all(s.groups == 1 for s in run.control.stats.values())
    assert 0.0 <= metrics["reward/zero_std_frac"] <= 1.0
