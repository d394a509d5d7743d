"""Every method the registries offer either runs or is refused at config time, before any model loads.

For each trainer, every (estimator, loss, sampler mode) combination is validated; each accepted one trains one tiny
iteration with a finite loss, and each refused one is a ``ConfigError`` whose message names the key at fault.
"""

from __future__ import annotations

import math

import pytest
from test_text_trainer import text_config

from flowrl.advantages import ADVANTAGES
from flowrl.config import load_config
from flowrl.losses import LOSSES
from flowrl.options import ConfigError
from flowrl.samplers.modes import ROLLOUT_MODES

#: what each mode needs beyond the defaults to be a valid rollout (branching modes: 4 leaves = the group size)
MODE_OPTIONS = {
    "flow-grpo": ["train.group_size=5"],
    "flow-grpo-fast": [
        "train.group_size=5",
        "sampler.window_size=2",
        "sampler.extra_tail_steps=[1]",
        "sampler.window_options={max_start: 1}",
    ],
    "mixgrpo": ["train.group_size=5", "sampler.window_size=2"],
    "mixgrpo-flash": ["train.group_size=5", "sampler.window_size=2", "sampler.tail_steps=2"],
    "branchgrpo": ["train.group_size=4", "sampler.split_steps=[0,2]", "sampler.branch_factor=2"],
    "branchgrpo-mix": ["train.group_size=4", "sampler.split_steps=[0,2]", "sampler.branch_factor=2"],
    "singular": ["train.group_size=5", "sampler.extra_tail_steps=[1]", "sampler.window_options={max_start: 2}"],
}
TINY = [
    "model.lora_rank=2", "model.lora_alpha=2", "sampler.num_steps=4", "train.iterations=1",
    "train.prompts_per_step=2", "train.micro_batch=64", "eval.enabled=false", "output.progress=false",
    "rewards=[{name: toy-geneval}, {name: jpeg-compressibility, weight: 0.1}]",
]  # fmt: skip


def test_every_mode_is_covered():
    assert sorted(MODE_OPTIONS) == ROLLOUT_MODES.names()


@pytest.mark.parametrize("mode", sorted(MODE_OPTIONS))
def test_flow_combinations_run_or_are_refused_at_config_time(tiny_model, mode):
    from flowrl.trainer.flow import setup, train_step

    ran, refused, run = [], [], None
    for estimator in ADVANTAGES.names():
        for loss in LOSSES.names():
            args = [f"model.path={tiny_model}", *TINY, f"sampler.mode={mode}", *MODE_OPTIONS[mode]]
            args += [f"advantage.name={estimator}", f"loss.name={loss}"]
            try:
                cfg = load_config(None, args)
            except ConfigError as e:
                assert any(k in str(e) for k in ("advantage.name", "loss.name")), str(e)
                refused.append((estimator, loss))
                continue
            # setup reads neither the estimator nor the loss: one run per mode serves every combination
            run = run if run is not None else setup(cfg)
            run.cfg, run.adv_state = cfg, {}
            metrics = train_step(run)
            assert math.isfinite(metrics["train/loss"]) and not metrics["train/skipped"], (estimator, loss, metrics)
            ran.append((estimator, loss))
    # the paper methods of each mode are among those that run
    assert ("grpo", "ppo-clip") in ran and ("grpo", "awm") in ran
    assert (("tree", "ppo-clip") in ran) == (ROLLOUT_MODES.facts(mode).branching != "none")
    assert ("multi-granularity", "ppo-clip") in ran or "extra_tail_steps" not in str(MODE_OPTIONS[mode])
    odd = "train.group_size=5" in MODE_OPTIONS[mode]
    assert (("median", "ppo-clip") in ran) == odd and ("rloo", "ppo-clip") in ran
    assert {e for e, _ in refused} >= {"stratified", "pairwise"}


def test_text_combinations_run_or_are_refused_at_config_time(lm_dir):
    from flowrl.trainer.text import setup, train_step

    ran, refused, run = [], [], None
    for estimator in ADVANTAGES.names():
        for loss in LOSSES.names():
            group = "train.group_size=5" if ADVANTAGES.facts(estimator).odd_groups else "train.group_size=4"
            try:
                cfg = text_config(lm_dir, f"advantage.name={estimator}", f"loss.name={loss}", group)
            except ConfigError as e:
                assert any(k in str(e) for k in ("advantage.name", "loss.name")), str(e)
                refused.append((estimator, loss))
                continue
            if run is None or cfg.train.group_size != run.cfg.train.group_size:
                run = setup(cfg)  # setup reads the group size, but neither the estimator nor the loss
            run.cfg, run.adv_state = cfg, {}
            metrics = train_step(run)
            assert math.isfinite(metrics["loss"]) and not metrics["skipped_steps"], (estimator, loss, metrics)
            ran.append((estimator, loss))
    text_losses = {"grpo", "bnpo", "dr-grpo", "dapo", "gspo"}
    assert {loss for _, loss in ran} == text_losses  # the flow losses are refused
    assert {e for e, _ in ran} == set(ADVANTAGES.names()) - {"stratified", "pairwise", "multi-granularity", "tree"}
    assert len(ran) + len(refused) == len(ADVANTAGES.names()) * len(LOSSES.names())


def test_every_loss_names_a_registered_objective_of_its_trainers():
    from flowrl.trainer.objectives import OBJECTIVES

    for loss in LOSSES.names():
        facts = LOSSES.facts(loss)
        assert facts.trains_on in OBJECTIVES, loss
        assert set(facts.trainers) <= {"flow", "text"} and facts.trainers, loss
        if facts.trains_on != "transitions":  # the text trainer's rows are tokens: it trains transitions only
            assert facts.trainers == ("flow",), loss
