"""Faults during training: a non-finite reward, loss or gradient skips the update (counted), the run stops after
``train.max_consecutive_skips`` skipped iterations in a row, and nothing non-finite reaches the weights."""

from __future__ import annotations

import torch
from tiny_runs import TINY_ARGS, tiny_config

import flowrl.image.trainer as flow
from flowrl.cli import main
from flowrl.image.objectives import OBJECTIVES, ReplayTransitions
from flowrl.image.trainer import setup, train_step

NAN_ON_SECOND = "rewards=[{name: 'bad_rewards:NanOnCalls', options: {calls: [2]}}]"


def _weights(run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.params]


def test_a_nan_reward_skips_that_update_only(tiny_model):
    run = setup(tiny_config(tiny_model, NAN_ON_SECOND))
    first = train_step(run)
    assert first["train/skipped"] == 0 and first["train/skipped_steps"] == 0
    before = _weights(run)
    second = train_step(run)  # the reward's 2nd call holds a NaN: nothing is trained
    assert second["train/skipped"] == 1 and second["reward/non_finite"] == 1
    assert all(torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    assert run.skips_in_a_row == 1 and run.iteration == 2
    third = train_step(run)
    assert third["train/skipped"] == 0 and run.skips_in_a_row == 0 and run.skips == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))


def test_a_nan_loss_skips_the_optimizer_step_and_keeps_the_optimizer_state(tiny_model, monkeypatch):
    run = setup(tiny_config(tiny_model, "train.minibatches=2"))
    train_step(run)
    weights = _weights(run)
    moments = [run.optimizer.state[p]["exp_avg"].clone() for p in run.params if p in run.optimizer.state]
    replay = OBJECTIVES.get("transitions")

    class Poisoned(ReplayTransitions):
        def __call__(self, *args, **kwargs):
            out = replay(*args, **kwargs)
            out.loss = out.loss * float("nan")
            return out

    monkeypatch.setattr(flow, "objective", lambda run: Poisoned())
    metrics = train_step(run)
    assert metrics["train/skipped_steps"] == 2 and metrics["train/skipped"] == 1
    assert all(torch.isfinite(v) for v in [torch.tensor(x) for x in metrics.values()])  # no NaN metric logged
    assert all(torch.equal(a, b) for a, b in zip(weights, run.params, strict=True))
    after = [run.optimizer.state[p]["exp_avg"] for p in run.params if p in run.optimizer.state]
    assert all(torch.equal(a, b) for a, b in zip(moments, after, strict=True))
    assert all(p.grad is None for p in run.params)


def test_consecutive_skips_stop_the_run_with_a_clear_message(tiny_model, tmp_path, capsys):
    args = [
        "train",
        f"model.path={tiny_model}",
        *TINY_ARGS,
        f"output.run_dir={tmp_path / 'run'}",
        "eval.enabled=false",
    ]
    args += ["rewards=[{name: 'bad_rewards:NanOnCalls'}]", "train.iterations=10", "train.max_consecutive_skips=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "flowrl: training error: 2 updates in a row skipped at iteration 1 (non-finite reward" in err
    assert "'bad_rewards:NanOnCalls'" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # failed before its first checkpoint: nothing left behind
