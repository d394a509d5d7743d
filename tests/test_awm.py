"""AWM as its code computes it (scxue/advantage_weighted_matching scripts/train_sd3_awm.py, config/dgx_awm.py): the
re-noising schemes, the clipped ratio on its weighted error, its KL variants and EMA term, by hand values; and the
trainer running them."""

from __future__ import annotations

import math

import pytest
import torch

from flowrl.core.losses import LOSSES, AwmOptions, LossConfig, LossInputs, NftOptions, compute_loss
from flowrl.core.losses.renoise import RENOISE, levels_of

SIGMAS = torch.linspace(1.0, 0.0, 15)  # a 14-step schedule: σ_0 = 1 ... σ_14 = 0


def _cfg(options: type = AwmOptions):
    """The levels of an AWM-like config: 14 steps, timestep fraction 0.9, 6 levels, shift 3 (the defaults)."""
    return levels_of(options(), 14, 0.9)


def test_stratified_levels_are_discrete_wo_init():
    # int(14 * 0.9) = 12: boundaries linspace(1, 12, 7).long() = 1 2 4 6 8 10 12 -> strata [1,2) [2,4) ... [10,12)
    gen = torch.Generator().manual_seed(0)
    sigma = RENOISE.get("stratified")(_cfg(), SIGMAS, 50, gen)
    index = torch.round((1 - sigma) * 14).long()  # σ_i = 1 − i/14
    low, high = torch.tensor([1, 2, 4, 6, 8, 10]), torch.tensor([2, 4, 6, 8, 10, 12])
    assert sigma.shape == (50, 6) and ((index >= low) & (index < high)).all()
    assert torch.allclose(sigma, SIGMAS[index])
    assert all(len(set(index[:, j].tolist())) == int(high[j] - low[j]) for j in range(6))  # each index of a stratum


def test_logit_normal_levels_fill_one_normal_quantile_stratum_each():
    gen = torch.Generator().manual_seed(1)
    t = RENOISE.get("logit-normal")(_cfg(), SIGMAS, 40, gen)
    assert t.shape == (40, 6) and (t >= 0.01).all() and (t < 1).all()
    plain = t / (3 - 2 * t)  # undo the shift t' = 3t / (1 + 2t)
    q = torch.distributions.Normal(0.0, 1.0).cdf(torch.logit(plain.double()))
    strata = torch.floor(q * 6).long().sort(dim=1).values
    assert (strata == torch.arange(6)).all()  # one level in each sixth of the normal's quantiles
    assert not (t.argsort(dim=1) == torch.arange(6)).all()  # shuffled within a sample


def test_subset_and_uniform_levels():
    gen = torch.Generator().manual_seed(2)
    sub = RENOISE.get("subset")(_cfg(NftOptions), SIGMAS, 20, gen)
    assert sub.shape == (20, 12) and all(len(set(r.tolist())) == 12 for r in sub)  # distinct levels, none σ = 0
    one = RENOISE.get("uniform")(_cfg(), SIGMAS, 20, gen)
    assert one.shape == (20, 1) and (one > 0).all() and torch.isin(one, SIGMAS[:-1]).all()


def _awm_inputs(v: torch.Tensor, adv: list[float], sigma: list[float]) -> LossInputs:
    return LossInputs(advantages=torch.tensor(adv), v_pred=v, v_target=torch.zeros_like(v), sigma=torch.tensor(sigma))


def test_ratio_is_clipped_on_the_weighted_error():
    # e = mean(v²) = 1 for both rows, uniform weighting: log_prob = −1. Old values give ratios 3 and 3.
    cfg = LossConfig(clip_low=1.0, clip_high=1.0)
    v = torch.ones(2, 4, requires_grad=True)
    inputs = _awm_inputs(v, [1.0, -1.0], [0.5, 0.5])
    inputs.old_log_prob = torch.full((2,), -1.0 - math.log(3.0))
    out = compute_loss("awm", inputs, cfg, AwmOptions(ratio=True))
    # row 0 (A = 1): max(−3, −clip(3, 0, 2)) = −2, clipped: no gradient; row 1 (A = −1): max(3, 2) = 3
    assert out.loss.item() == pytest.approx((-2 + 3) / 2)
    out.loss.backward()
    assert v.grad[0].abs().max() == 0
    # row 1: d/dv of A·(−ratio)/2 = −A·ratio·∇log_prob/2, ∇log_prob = −2v/4 -> 1·3·(−0.5)/2 = −0.75
    assert v.grad[1].tolist() == pytest.approx([-0.75] * 4)
    assert out.metrics["ratio_max"] == pytest.approx(3.0)


def test_at_ratio_one_the_gradient_is_the_weighted_regression():
    v1 = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    v2 = v1.detach().clone().requires_grad_(True)
    own = AwmOptions(ratio=True, weighting="ghuber")
    ratio = _awm_inputs(v1, [1.0, -0.5, 2.0], [0.9, 0.5, 0.2])
    ratio.old_log_prob = LOSSES.facts("awm").old_value(own)(ratio, own).detach()
    compute_loss("awm", ratio, LossConfig(), own).loss.backward()
    compute_loss(
        "awm", _awm_inputs(v2, [1.0, -0.5, 2.0], [0.9, 0.5, 0.2]), LossConfig(), AwmOptions(weighting="ghuber")
    ).loss.backward()
    torch.testing.assert_close(v1.grad, v2.grad)
    assert LOSSES.facts("awm").old_value(AwmOptions()) is None  # no ratio unless asked


def test_kl_variants_ema_term_and_advantage_scale():
    v = torch.tensor([[1.0, 3.0]], requires_grad=True)
    inputs = _awm_inputs(v, [0.0], [0.5])
    inputs.v_ref, inputs.v_old = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    uniform = compute_loss("awm", inputs, LossConfig(velocity_kl_coef=0.1))
    assert uniform.metrics["ref_reg"] == pytest.approx(2.5)  # mean((1, 2)²)
    # ELBO: divided by 2·std², std = 0.7·√(0.5 / 0.5) = 0.7
    elbo = compute_loss("awm", inputs, LossConfig(velocity_kl_coef=0.1), AwmOptions(kl_weight="elbo"))
    assert elbo.metrics["ref_reg"] == pytest.approx(2.5 / (2 * 0.49))
    ema = compute_loss("awm", inputs, LossConfig(), AwmOptions(ema_coef=1.0))
    assert ema.metrics["ema_reg"] == pytest.approx(2.0) and ema.loss.item() == pytest.approx(2.0)  # mean((0, 2)²)
    scaled = _awm_inputs(torch.ones(1, 2), [5.0], [0.5])
    assert compute_loss("awm", scaled, None, AwmOptions(adv_scale=0.2)).loss.item() == pytest.approx(1.0)  # 5·0.2·e
    spec = LOSSES.facts("awm").old_policy(AwmOptions(ema_coef=1.0, ema_decay=0.3))
    assert not spec.samples and [spec.decay(s) for s in (0, 100, 299, 300, 5000)] == pytest.approx(
        [0.0, 0.1, 0.299, 0.3, 0.3]
    )
    assert LOSSES.facts("awm").old_policy(AwmOptions()) is None


def test_trainer_clips_across_optimizer_steps_and_keeps_an_ema(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import advantages, sample, setup, train_step

    args = ["loss.name=awm", "sampler.mode=ode", "loss.awm.ratio=true", "loss.clip_low=1", "loss.clip_high=1",
            "loss.awm.renoise=stratified", "loss.awm.renoise_count=2", "train.timestep_fraction=0.9",
            "loss.awm.ema_coef=1", "loss.velocity_kl_coef=1e-3", "loss.awm.kl_weight=elbo",
            "loss.awm.weighting=ghuber"]  # fmt: skip
    run = setup(tiny_config(tiny_model, *args))
    assert run.old is not None and not run.old_policy.samples
    batch = sample(run, run.train_prompts[:2])
    train, _ = advantages(run, batch)
    # 8 samples x 2 strata of indices 1..int(4 x 0.9) = 1..3: [1, 2) and [2, 3) -> σ_1 then σ_2 for every sample
    levels = run.policy.sigmas(4, 32).float()
    assert torch.equal(train.sigma, levels[torch.tensor([1, 2]).repeat(8)])
    assert train.old_value.shape == (16,) and (train.old_value < 0).all()
    one = train_step(run)  # one optimizer step: every row's ratio is 1
    assert one["ratio_min"] == pytest.approx(1.0, abs=1e-5) and one["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert one["train/old_decay"] == pytest.approx(0.001) and one["ema_reg"] == pytest.approx(0.0, abs=1e-12)
    run.cfg.train.minibatches = 2
    two = train_step(run)  # the second step's rows were scored before the first step moved the weights
    assert two["ratio_max"] - two["ratio_min"] > 1e-6 and math.isfinite(two["train/loss"]) and two["ema_reg"] > 0
