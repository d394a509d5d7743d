"""A method is one file: a module outside the package registers a loss, an advantage estimator and a rollout filter,
each with its own options, and both recipes train with them through the config alone (issue 29, item 6)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest
import torch
from tiny_runs import text_config, tiny_config

from flowrl.core import update as update_loop
from flowrl.core.advantages import ADVANTAGES
from flowrl.core.errors import ConfigError
from flowrl.core.losses import LOSSES
from flowrl.core.rollout import FILTERS
from flowrl.recipes import recipe_for

USER_METHODS = '''
"""My methods: nothing in flowrl is edited to use them."""
from dataclasses import dataclass

import torch

from flowrl.core.advantages import ADVANTAGES, AdvantageResult
from flowrl.core.losses import LOSSES, Together
from flowrl.core.options import option
from flowrl.core.rollout import FILTERS

SEEN = {}


@dataclass
class ScaledOptions:
    scale: float = option(0.5, "multiplies the GRPO loss", low=0.0)


@LOSSES.register("scaled-grpo", options=ScaledOptions, keeps=Together.GROUPS)
def scaled_grpo(inputs, cfg, options):
    """GRPO's loss times ``scale``; its rows are a prompt group's, kept in one optimizer step."""
    SEEN["scale"] = options.scale
    out = LOSSES.get("grpo")(inputs, cfg, None)
    out.loss = out.loss * options.scale
    return out


@dataclass
class CentredOptions:
    gain: float = option(1.0, "multiplies the centred reward", low=0.0)


@ADVANTAGES.register("centred", options=CentredOptions)
def centred(batch, cfg, options, state):
    """The total reward minus its group's mean, times ``gain``."""
    SEEN["gain"] = options.gain
    total = batch.combined()
    ids, group = batch.group_id.unique(return_inverse=True)
    means = torch.zeros(len(ids)).index_add(0, group, total) / torch.bincount(group, minlength=len(ids))
    adv = (total - means[group]) * options.gain
    return AdvantageResult(adv, torch.ones_like(adv, dtype=torch.bool), {"centred/abs": adv.abs().mean().item()})


@dataclass
class FirstOptions:
    k: int = option(1, "samples kept per group", low=1)


@FILTERS.register("first-k", options=FirstOptions)
def first_k(batch, options):
    """Keep the first ``k`` samples of each group."""
    SEEN["k"] = options.k
    keep = torch.zeros(batch.group_id.numel(), dtype=torch.bool)
    for g in batch.group_id.unique():
        keep[(batch.group_id == g).nonzero().squeeze(1)[: options.k]] = True
    return keep
'''

METHODS = [
    "loss.name=scaled-grpo",
    "loss.scaled-grpo.scale=0.25",
    "advantage.name=centred",
    "advantage.centred.gain=2",
    "rollout.filter=[{name: first-k, first-k: {k: 3}}]",
    "train.minibatches=2",
]


@pytest.fixture
def user_methods(tmp_path, monkeypatch):
    """The module above, imported from a folder outside the package; the registries are restored afterwards."""
    (tmp_path / "my_methods.py").write_text(textwrap.dedent(USER_METHODS))
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = [(r, dict(r._table), dict(r._facts), dict(r._options)) for r in (LOSSES, ADVANTAGES, FILTERS)]
    yield importlib.import_module("my_methods")
    sys.modules.pop("my_methods", None)
    for registry, table, facts, options in saved:
        registry._table, registry._facts, registry._options = table, facts, options


def _train_one_iteration(cfg, monkeypatch) -> tuple[dict[str, float], list]:
    """One iteration through the config's recipe; the units the update loop dealt by, per call."""
    dealt = []
    real = update_loop.step_rows

    def spy(kept, index, minibatches, micro_batch, generator, units=None):
        dealt.append(units)
        return real(kept, index, minibatches, micro_batch, generator, units)

    monkeypatch.setattr(update_loop, "step_rows", spy)
    recipe = recipe_for(cfg)
    run = recipe.setup(cfg)
    before = [p.detach().clone() for p in run.params]
    metrics = recipe.train_step(run)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True)), "nothing trained"
    return metrics, dealt


def test_a_user_module_adds_a_loss_an_estimator_and_a_filter_to_the_image_recipe(
    user_methods, tiny_model, monkeypatch
):
    cfg = tiny_config(tiny_model, *METHODS, "train.iterations=1", "train.group_size=4")
    metrics, dealt = _train_one_iteration(cfg, monkeypatch)
    assert user_methods.SEEN == {"scale": 0.25, "gain": 2.0, "k": 3}  # each got its own options from the config
    assert metrics["rollout/kept_share"] == pytest.approx(3 / 4)  # the filter kept 3 of each group of 4
    assert metrics["centred/abs"] > 0  # the estimator's own metric is logged
    # the image objective deals rows one by one; the loss declared Together.GROUPS, so groups were dealt whole
    assert dealt and all(units is not None for units in dealt)


def test_a_user_module_adds_a_loss_an_estimator_and_a_filter_to_the_text_recipe(user_methods, lm_dir, monkeypatch):
    cfg = text_config(lm_dir, *METHODS, "train.group_size=4")
    metrics, dealt = _train_one_iteration(cfg, monkeypatch)
    assert user_methods.SEEN == {"scale": 0.25, "gain": 2.0, "k": 3}
    assert metrics["rollout/kept_share"] == pytest.approx(3 / 4)
    assert metrics["centred/abs"] > 0
    assert dealt and all(units is not None for units in dealt)


def test_the_user_methods_options_are_checked_like_the_built_in_ones(user_methods, tiny_model):
    with pytest.raises(ConfigError, match=r"unknown config key loss\.scaled-grpo\.scal; did you mean"):
        tiny_config(tiny_model, "loss.name=scaled-grpo", "loss.scaled-grpo.scal=1")
    with pytest.raises(ConfigError, match=r"advantage\.centred\.gain is an option of advantage\.name=centred"):
        tiny_config(tiny_model, "advantage.centred.gain=3")  # set for an estimator the config does not pick
    with pytest.raises(ConfigError, match=r"rollout\.filter\[0\]\.first-k\.k: must be >= 1"):
        tiny_config(tiny_model, "rollout.filter=[{name: first-k, first-k: {k: 0}}]")


def test_a_filter_that_returns_no_mask_is_one_line(user_methods):
    from flowrl.core.advantages import AdvantageBatch
    from flowrl.core.rollout import FilterSpec, filter_rollouts

    FILTERS.register("scores")(lambda batch, options: batch.combined())  # a float tensor, not a bool mask
    batch = AdvantageBatch(rewards=torch.tensor([[0.0], [1.0]]), group_id=torch.tensor([0, 0]))
    with pytest.raises(ConfigError, match=r"rollout\.filter\[1\]: 'scores' must return a \[2\] bool tensor, got a "):
        filter_rollouts([FilterSpec(name="zero-variance"), FilterSpec(name="scores")], batch)
    assert filter_rollouts([FilterSpec(name="zero-variance")], batch)[0].tolist() == [True, True]


def test_without_the_module_the_names_are_unknown(tiny_model):
    with pytest.raises(ConfigError, match=r"loss\.name: 'scaled-grpo' is not one of"):
        tiny_config(tiny_model, "loss.name=scaled-grpo")


def test_the_command_line_imports_the_users_module_named_in_the_config(
    user_methods, tiny_model, tmp_path, monkeypatch, capsys
):
    from flowrl.cli import main

    sys.modules.pop("my_methods", None)  # the config's imports bring it back
    for registry in (LOSSES, ADVANTAGES, FILTERS):  # as a fresh process: only the built-in methods registered
        for name in ("scaled-grpo", "centred", "first-k"):
            for table in (registry._table, registry._facts, registry._options):
                table.pop(name, None)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.chdir(tmp_path)  # where my_methods.py is
    preset = tmp_path / "mine.yaml"
    preset.write_text(f"imports: [my_methods]\nmodel: {{path: {tiny_model}}}\n")
    args = ["train", "--config", str(preset), *METHODS, "train.iterations=1", "eval.enabled=false",
            "output.progress=false", "output.tensorboard=false", f"output.run_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 0
    assert sys.modules["my_methods"].SEEN == {"scale": 0.25, "gain": 2.0, "k": 3}
    assert (tmp_path / "run" / "checkpoints" / "final").is_dir()
    preset.write_text(f"imports: [not_my_methods]\nmodel: {{path: {tiny_model}}}\n")
    capsys.readouterr()
    assert main(["train", "--check", "--config", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowrl: config error: imports[0]: cannot import 'not_my_methods'")
