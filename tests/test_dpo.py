"""Online Diffusion-DPO (flowrl.core.losses.dpo, the ``pairs`` objective): the loss by hand, the pairing, the
reference refresh, the config refusals, and the trainer's pairs rebuilt by hand on the tiny SD3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flowrl.core.errors import ConfigError
from flowrl.core.losses import DpoOptions, LossConfig, LossInputs, compute_loss
from flowrl.core.losses.dpo import choose_pairs, refresh_decay
from flowrl.recipes import load_config

DPO_ARGS = ["loss.name=dpo", "sampler.mode=ode", "loss.dpo.renoise_count=2"]


def test_loss_by_hand_on_two_pairs():
    # rows 0, 1 chosen; 2, 3 rejected; one element each, target 0: error = v²
    v = torch.tensor([[1.0], [0.5], [2.0], [0.0]])
    v_ref = torch.tensor([[2.0], [0.5], [1.0], [1.0]])
    inputs = LossInputs(v_pred=v, v_old=v_ref, v_target=torch.zeros(4, 1))
    out = compute_loss("dpo", inputs, LossConfig(), DpoOptions(beta=2.0))
    # pair 0: (1 − 4) − (4 − 1) = −6, inside −½·2·(−6) = 6; pair 1: (0.25 − 0.25) − (0 − 1) = 1, inside −1
    expected = (-math.log(1 / (1 + math.exp(-6))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["dpo/implicit_acc"] == 0.5
    assert out.metrics["dpo/chosen_diff"] == pytest.approx((-3 + 0) / 2)
    assert out.metrics["dpo/rejected_diff"] == pytest.approx((3 - 1) / 2)


def test_gradient_fits_the_chosen_better_and_the_rejected_worse():
    target = torch.randn(2, 8)
    v = target.clone() + 0.3 * torch.randn(2, 8)
    v.requires_grad_(True)
    inputs = LossInputs(v_pred=v, v_old=v.detach().clone(), v_target=target)
    compute_loss("dpo", inputs, LossConfig(), DpoOptions()).loss.backward()
    step = v.detach() - 1e-4 * v.grad  # one small descent step
    before = F.mse_loss(v.detach(), target, reduction="none").mean(1)
    after = F.mse_loss(step, target, reduction="none").mean(1)
    assert after[0] < before[0] and after[1] > before[1]
    # at the reference the loss is log 2 and its gradient −β/4 · ∂d: chosen's error gradient times −β/4
    d_chosen = 2 * (v.detach()[0] - target[0]) / 8
    torch.testing.assert_close(v.grad[0], 100 / 4 * d_chosen)


def test_pairs_by_hand():
    adv = torch.tensor([0.1, 0.9, -0.5, 0.4, 2.0, 2.0, 2.0, -1.0, 3.0, 1.0])
    group = torch.tensor([7, 7, 7, 7, 3, 3, 3, 5, 5, 5])
    chosen, rejected = choose_pairs(adv, group, "best-worst")
    # group 7 (first seen): 1 over 2; group 3 ties throughout: none; group 5: 8 over 7
    assert chosen.tolist() == [1, 8] and rejected.tolist() == [2, 7]
    chosen, rejected = choose_pairs(adv, group, "top-bottom", 2)
    # group 7 ranks 1, 3, 0, 2: {1, 3} × {2, 0}; group 5 (3 samples): one at each end
    assert list(zip(chosen.tolist(), rejected.tolist(), strict=True)) == [(1, 2), (1, 0), (3, 2), (3, 0), (8, 7)]
    chosen, rejected = choose_pairs(adv, group, "all")
    assert len(chosen) == 6 + 0 + 3 and bool((adv[chosen] > adv[rejected]).all())
    assert (group[chosen] == group[rejected]).all()


def test_reference_refresh_schedule():
    never, every_two = refresh_decay(0), refresh_decay(2)
    assert [never(s) for s in range(5)] == [1.0] * 5
    assert [every_two(s) for s in range(6)] == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_config_refusals():
    base = ["model.path=assets/toy-sd3", *DPO_ARGS]
    load_config(None, base)
    with pytest.raises(ConfigError, match="velocity_kl_coef"):
        load_config(None, [*base, "loss.velocity_kl_coef=0.1"])
    with pytest.raises(ConfigError, match="timestep_fraction"):
        load_config(None, [*base, "train.timestep_fraction=0.5"])
    tree = ["sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[0,2]", "sampler.branchgrpo.branch_factor=2"]
    with pytest.raises(ConfigError, match="per-sample estimator"):
        load_config(None, [*base, "advantage.name=tree", *tree, "train.group_size=4"])


def test_trainer_pairs_share_noise_and_the_reference_refreshes(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.trainer import advantages, sample, setup, train_step
    from flowrl.samplers import index_cond

    run = setup(tiny_config(tiny_model, *DPO_ARGS, "loss.dpo.ref_update_step=2", "loss.dpo.beta=50"))
    batch = sample(run, run.train_prompts[:2])  # 2 groups of 4
    train, _ = advantages(run, batch)
    # best-worst: one pair per group, at 2 levels each
    assert train.pair.shape == (4, 2) and train.position.tolist() == [0, 1, 2, 3]
    total = batch.rewards.sum(1)
    for g, rows in enumerate((train.pair[0], train.pair[2])):
        members = torch.arange(4) + 4 * g
        assert int(rows[0]) == int(members[total[members].argmax()])
        assert int(rows[1]) == int(members[total[members].argmin()])
    # the loss of rows 1 and 2, rebuilt by hand: both members at the row's σ with the row's ε
    rows = torch.tensor([1, 2])
    out = OBJECTIVES.get("pairs")(run, batch, rows, train)
    members = torch.cat([train.pair[rows, 0], train.pair[rows, 1]])
    x0 = batch.rollout.samples[members]
    sigma = train.sigma[rows].repeat(2).to(x0)
    eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                       for s in train.noise_seed[rows].repeat(2)]).to(x0)  # fmt: skip
    s = sigma.view(-1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * eps
    with torch.no_grad():
        v = run.policy.velocity(x_t, sigma, index_cond(batch.cond, batch.rollout.cond_index[members]))
    err = ((v - (eps - x0)) ** 2).flatten(1).mean(1)
    d = (err[:2] - err[:2]) - (err[2:] - err[2:])  # the reference is the policy at the start: d = 0
    assert out.loss.item() == pytest.approx(float(-F.logsigmoid(-25 * d).mean()), rel=1e-5)
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-5)

    # the reference stays the base after 1 optimizer step and takes the trained weights after the 2nd
    base = [p.detach().clone() for p in run.params]
    first = train_step(run)
    assert first["train/rows"] == 4 and first["train/old_decay"] == 1.0 and math.isfinite(first["train/loss"])
    assert all(torch.equal(o, b) for o, b in zip(run.old.shadow, base, strict=True))
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.params, base, strict=True))
    second = train_step(run)
    assert second["train/old_decay"] == 0.0 and second["dpo/implicit_acc"] >= 0
    assert all(torch.equal(o, p.detach()) for o, p in zip(run.old.shadow, run.params, strict=True))


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_a_group_that_ties_throughout_trains_nothing(tiny_model, monkeypatch):
    from tiny_runs import tiny_config

    from flowrl.image import trainer
    from flowrl.image.trainer import setup, train_step

    run = setup(tiny_config(tiny_model, *DPO_ARGS))
    real = trainer.score

    def constant(*args, **kwargs):
        rewards, parts = real(*args, **kwargs)
        return torch.ones_like(rewards), parts

    monkeypatch.setattr(trainer, "score", constant)
    before = [p.detach().clone() for p in run.params]
    out = train_step(run)
    assert out["train/rows"] == 0
    assert all(torch.equal(p.detach(), b) for p, b in zip(run.params, before, strict=True))


def test_guided_rollouts_train_the_prompts_own_velocity(tiny_model):
    """flow_grpo samples its DPO pairs with CFG (guidance 4.5) and trains the conditional velocity: with
    model.cfg_scale > 1 the rollouts are guided and the pairs' velocities are the prompt's alone."""
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.trainer import advantages, sample, setup
    from flowrl.samplers import index_cond

    guided = setup(tiny_config(tiny_model, *DPO_ARGS, "model.cfg_scale=4.5"))
    plain = setup(tiny_config(tiny_model, *DPO_ARGS))
    batch = sample(guided, guided.train_prompts[:2])
    assert not torch.allclose(batch.rollout.samples, sample(plain, plain.train_prompts[:2]).rollout.samples)
    assert any(k.startswith("neg_") for k in batch.cond)  # the guided run's conditioning holds the negative rows
    train, _ = advantages(guided, batch)
    rows = torch.tensor([0])
    members = train.pair[0]
    x0 = batch.rollout.samples[members]
    sigma = train.sigma[rows].repeat(2).to(x0)
    eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(train.noise_seed[0])))
                       for _ in range(2)]).to(x0)  # fmt: skip
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    cond = {k: v for k, v in index_cond(batch.cond, batch.rollout.cond_index[members]).items() if "neg_" not in k}
    with torch.no_grad():
        v = plain.policy.velocity(x_t, sigma, cond)  # the same weights, unguided
        v_guided = guided.policy.velocity(x_t, sigma, index_cond(batch.cond, batch.rollout.cond_index[members]))
    assert guided.policy.cfg_scale == 4.5 and not torch.allclose(v, v_guided)
    out = OBJECTIVES.get("pairs")(guided, batch, rows, train)
    err = ((v - (eps - x0)) ** 2).flatten(1).mean(1)
    assert out.metrics["dpo/chosen_error"] == pytest.approx(float(err[0]), rel=1e-4)
    assert out.metrics["dpo/rejected_error"] == pytest.approx(float(err[1]), rel=1e-4)
    assert guided.policy.cfg_scale == 4.5  # restored after the pass


# ----------------------------------------------------------------------------------------------- SmPO


def test_smpo_loss_by_hand():
    from flowrl.core.losses import SmpoOptions

    # one pair; errors: policy chosen 1, rejected 4; reference 4 and 1: d = (1 − 4) − (4 − 1) = −6
    v = torch.tensor([[1.0], [2.0]])
    v_ref = torch.tensor([[2.0], [1.0]])
    rewards = torch.tensor([[0.9, 0.2]])
    inputs = LossInputs(v_pred=v, v_old=v_ref, v_target=torch.zeros(2, 1), pair_rewards=rewards)
    options = SmpoOptions(beta=0.5, temperature=0.5, margin_scale=10.0)
    out = compute_loss("smpo", inputs, LossConfig(), options)
    p = 1 / (1 + math.exp(-(0.9 - 0.2) / 0.5))  # the two-way softmax of 0.9/τ and 0.2/τ
    inside = -0.5 * 0.5 * (2 * p - 1) * 10 * -6
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-inside)), rel=1e-6)
    assert out.metrics["smpo/preference"] == pytest.approx(p)
    # a tie (p = ½) gives no push at all: log 2 and no gradient
    v.requires_grad_(True)
    tie = LossInputs(v_pred=v, v_old=v_ref, v_target=torch.zeros(2, 1), pair_rewards=torch.tensor([[0.5, 0.5]]))
    flat = compute_loss("smpo", tie, LossConfig(), options)
    flat.loss.backward()
    assert flat.loss.item() == pytest.approx(math.log(2)) and v.grad.abs().max() == 0


def test_inversion_by_hand_on_a_linear_velocity():
    """v(x, s) = a·x + s: one Euler step up from σ = 0 to 0.25, refined once by ReNoise as SmPO's code does (the
    second velocity at the moved state, the same level)."""
    from flowrl.image.objectives import invert

    a = 0.5
    velocity = lambda x, s, cond: a * x + s.view(-1, 1)  # noqa: E731
    x0 = torch.tensor([[1.0], [2.0]])
    grid = torch.tensor([0.0, 0.25, 0.5, 1.0])
    # row 0 to σ = 0.25 (one step), row 1 to 0.4 (a full step, then a cut one of 0.15 from 0.25)
    out = invert(velocity, x0, torch.tensor([0.25, 0.4]), grid, {}, refinements=1)
    v1 = a * 1.0
    moved = 1.0 + 0.25 * v1
    assert out[0].item() == pytest.approx(1.0 + 0.25 * (v1 + a * moved) / 2)
    x = 2.0 + 0.25 * (a * 2.0 + a * (2.0 + 0.25 * a * 2.0)) / 2
    w1 = a * x + 0.25
    w2 = a * (x + 0.15 * w1) + 0.25
    assert out[1].item() == pytest.approx(x + 0.15 * (w1 + w2) / 2)
    plain = invert(velocity, x0, torch.tensor([0.25, 0.25]), grid, {}, refinements=0)
    torch.testing.assert_close(plain, x0 * (1 + 0.25 * a))


def test_smpo_trains_on_inverted_states(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES, invert
    from flowrl.image.trainer import advantages, sample, setup, train_step
    from flowrl.samplers import index_cond

    run = setup(tiny_config(tiny_model, "loss.name=smpo", "sampler.mode=ode", "loss.smpo.beta=50"))
    batch = sample(run, run.train_prompts[:2])
    train, _ = advantages(run, batch)
    assert train.pair.shape == (2, 2)  # one pair per group at one uniform schedule level
    total = batch.rewards @ torch.tensor([1.0, 0.1])  # toy-geneval + 0.1 · jpeg (tiny_runs' rewards)
    torch.testing.assert_close(train.pair_reward, total[train.pair])
    out = OBJECTIVES.get("pairs")(run, batch, torch.tensor([1]), train)
    members = train.pair[1]
    x0, sigma = batch.rollout.samples[members], train.sigma[[1, 1]]
    cond = index_cond(batch.cond, batch.rollout.cond_index[members])
    grid = run.policy.sigmas(4, run.cfg.model.resolution).flip(0)
    with torch.no_grad():
        x_t = invert(run.policy.velocity, x0, sigma, grid, cond, 1)
        v = run.policy.velocity(x_t, sigma, cond)
    s = sigma.view(-1, 1, 1, 1)
    target = (x_t - (1 - s) * x0) / s - x0
    err = ((v - target) ** 2).flatten(1).mean(1)
    assert out.metrics["smpo/chosen_error"] == pytest.approx(float(err[0]), rel=1e-4)
    assert out.metrics["smpo/rejected_error"] == pytest.approx(float(err[1]), rel=1e-4)
    before = [p.detach().clone() for p in run.params]
    metrics = train_step(run)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/rows"] == 2
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.params, before, strict=True))
