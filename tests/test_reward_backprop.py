"""Direct reward backpropagation (flowrl.core.losses.reward_backprop, the ``chains`` objective): the losses by hand,
the refusals, and the gradient through the last K steps against the finite difference on the tiny SD3."""

from __future__ import annotations

import math

import pytest
import torch

from flowrl.core.errors import ConfigError
from flowrl.core.losses import DraftOptions, LossConfig, LossInputs, ReflOptions, compute_loss
from flowrl.recipes import load_config

GOOD = "rewards=[{name: 'bad_rewards:good'}]"  # the mean brightness: differentiable
CHAIN_ARGS = ["sampler.mode=ode", GOOD]


def test_losses_by_hand():
    r = torch.tensor([0.5, 2.5, 1.0])
    draft = compute_loss("draft", LossInputs(reward=r), LossConfig(), DraftOptions(scale=2.0))
    assert draft.loss.item() == pytest.approx(-2.0 * 4.0 / 3)
    refl = compute_loss("refl", LossInputs(reward=r), LossConfig(), ReflOptions(margin=2.0, scale=1e-3))
    assert refl.loss.item() == pytest.approx(1e-3 * (1.5 + 0.0 + 1.0) / 3)  # relu(2 − r)


def test_refl_stops_in_its_window_and_draft_at_its_last_k():
    from flowrl.core.losses.reward_backprop import _draft_chain, _refl_chain

    gen = torch.Generator().manual_seed(0)
    stops = {_refl_chain(ReflOptions(window=10)).first(40, gen) for _ in range(400)}
    assert stops == set(range(30, 40))  # ImageReward's ReFL: 30..39 of 40
    assert _draft_chain(DraftOptions(steps=3)).first(10, gen) == 7
    assert _draft_chain(DraftOptions(steps=30)).first(10, gen) == 0


def test_config_refusals(tiny_model):
    base = [f"model.path={tiny_model}", "loss.name=draft", *CHAIN_ARGS]
    load_config(None, base)
    with pytest.raises(ConfigError, match=r"use sampler.mode=ode with sampler.tail_solver=euler"):
        load_config(None, [*base, "sampler.tail_solver=dpm2m"])
    with pytest.raises(ConfigError, match=r"rewards\[0\].name='toy-geneval' is not differentiable"):
        load_config(None, [f"model.path={tiny_model}", "loss.name=refl", "sampler.mode=ode"])
    with pytest.raises(ConfigError, match=r"set loss.draft.steps=1"):
        load_config(None, [*base, "loss.draft.lv_copies=2", "loss.draft.steps=2"])


def test_a_user_reward_must_say_it_is_differentiable(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import setup

    with pytest.raises(ConfigError, match="reward 'bad_rewards:wrong_shape' does not say it is differentiable"):
        setup(tiny_config(tiny_model, "loss.name=draft", "sampler.mode=ode",
                          "rewards=[{name: 'bad_rewards:wrong_shape'}]"))  # fmt: skip


@pytest.mark.parametrize("steps", [1, 2])
def test_gradient_through_the_last_k_steps_is_the_finite_difference(tiny_model, steps):
    """d loss / d θ along a random direction u of the LoRA weights, by autograd through the objective, equals
    (L(θ + h·u) − L(θ − h·u)) / 2h with the state before the last K steps held fixed (computed at θ)."""
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.trainer import advantages, sample, setup
    from flowrl.samplers import index_cond

    run = setup(tiny_config(tiny_model, "loss.name=draft", f"loss.draft.steps={steps}", *CHAIN_ARGS))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in run.params:
            p.normal_(0, 0.05)  # LoRA B starts at zero: give every weight a value
    batch = sample(run, run.train_prompts[:1])
    # float64 from here, so that the finite difference resolves the small gradient of a random tiny model
    run.policy.transformer.double()
    run.policy.dtype = torch.float64
    batch.noise = batch.noise.double()
    train, _ = advantages(run, batch)
    rows = torch.tensor([0, 2])
    for p in run.params:
        p.grad = None
    OBJECTIVES.get("chains")(run, batch, rows, train).loss.backward()
    u = [torch.randn_like(p) for p in run.params]
    analytic = sum(float((p.grad * d).sum()) for p, d in zip(run.params, u, strict=True))

    policy, sigmas = run.policy, run.policy.sigmas(4, run.cfg.model.resolution)
    cond = index_cond(batch.cond, batch.rollout.cond_index[rows])
    with torch.no_grad():
        x = batch.noise[rows]
        for i in range(4 - steps):
            x = x + (sigmas[i + 1] - sigmas[i]) * policy.velocity(x, sigmas[i].expand(2), cond)

        def loss_at(sign: float) -> float:
            for p, d in zip(run.params, u, strict=True):
                p.add_(sign * h * d)
            y = x
            for i in range(4 - steps, 4):
                y = y + (sigmas[i + 1] - sigmas[i]) * policy.velocity(y, sigmas[i].expand(2), cond)
            # the toy family decodes pixels as (y/2 + 1/2) clamped (in float32: by hand here, kept in float64)
            value = -float((y * 0.5 + 0.5).clamp(0, 1).mean())  # draft: −mean(brightness)
            for p, d in zip(run.params, u, strict=True):
                p.sub_(sign * h * d)
            return value

        h = 1e-4
        difference = (loss_at(1.0) - loss_at(-1.0)) / (2 * h)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(difference, rel=1e-4)


@pytest.mark.parametrize("loss", ["draft", "refl", "draft-lv"])
def test_each_variant_trains(tiny_model, loss):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import setup, train_step

    extra = {"draft": ["loss.name=draft", "loss.draft.steps=2"], "refl": ["loss.name=refl", "loss.refl.window=3"],
             "draft-lv": ["loss.name=draft", "loss.draft.lv_copies=2"]}[loss]  # fmt: skip
    run = setup(tiny_config(tiny_model, *extra, *CHAIN_ARGS))
    before = [p.detach().clone() for p in run.params]
    for _ in range(2):
        metrics = train_step(run)
        assert math.isfinite(metrics["train/loss"]) and metrics["train/rows"] == 8
    assert math.isfinite(metrics["reward_backprop/reward"])
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.params, before, strict=True))
