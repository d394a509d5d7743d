import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrl.core.losses import (
    LOSSES,
    AwmOptions,
    LossConfig,
    LossInputs,
    compute_loss,
    gaussian_kl,
    guard_log_ratio,
    k3_kl,
    step_weights,
)


def _inputs(log_prob, old, adv, mask, **extra):
    return LossInputs(log_prob=log_prob, old_log_prob=old, advantages=adv, mask=mask, **extra)


def test_ppo_clip_hand_values_with_asymmetric_and_dual_clip():
    # four elements in one row: ratios 1.5, 0.5, 1.0, 10 with advantages +1, −2, +3, −1
    ratio = torch.tensor([[1.5, 0.5, 1.0, 10.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -2.0, 3.0, -1.0]], dtype=torch.float64)
    inp = _inputs(ratio.log(), torch.zeros_like(ratio), adv, torch.ones_like(ratio, dtype=torch.bool))
    cfg = LossConfig(clip_low=0.2, clip_high=0.3)
    # per element: max(−A r, −A clip(r)):  max(−1.5, −1.3) = −1.3; max(1.0, 1.6) = 1.6; −3; max(10, 1.3) = 10
    out = compute_loss("ppo-clip", inp, cfg)
    assert out.loss.item() == pytest.approx((-1.3 + 1.6 - 3.0 + 10.0) / 4)
    assert out.metrics["clip_frac_high"] == pytest.approx(1 / 4)  # r = 1.5 > 1.3 with A > 0
    assert out.metrics["clip_frac_low"] == pytest.approx(1 / 4)  # r = 0.5 < 0.8 with A < 0
    assert out.metrics["ratio_max"] == pytest.approx(10.0) and out.metrics["ratio_min"] == pytest.approx(0.5)
    expected_kl = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.0, 10.0)) / 4
    assert out.metrics["approx_kl"] == pytest.approx(expected_kl)
    dual = compute_loss("ppo-clip", inp, LossConfig(clip_low=0.2, clip_high=0.3, dual_clip=3.0))
    assert dual.loss.item() == pytest.approx((-1.3 + 1.6 - 3.0 + 3.0) / 4)  # 10 capped at −c·A = 3
    with pytest.raises(ValueError, match=r"dual_clip"):
        compute_loss("ppo-clip", inp, LossConfig(dual_clip=0.5))


def _per_token_case():
    # two sequences, lengths 3 and 1 (padded to T = 4); at ratio 1 each element's loss is −A
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    zeros = torch.zeros(2, 4, dtype=torch.float64)
    return _inputs(zeros, zeros, adv, mask)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("grpo", ((-2.0 * 3) / 3 + 1.0) / 2),  # mean over sequences of token means
        ("bnpo", (-2.0 * 3 + 1.0) / 4),  # token mean over the batch
        ("dapo", (-2.0 * 3 + 1.0) / 10),  # token_count = 10 valid tokens in the global batch
        ("dr-grpo", (-2.0 * 3 + 1.0) / (2 * 8)),  # N · L_max with max_length = 8
        ("gspo", (-2.0 + 1.0) / 2),  # one ratio per sequence, mean over sequences
    ],
)
def test_token_aggregations_hand_values(name, expected):
    inp = _per_token_case()
    inp.token_count = 10
    assert compute_loss(name, inp, LossConfig(max_length=8)).loss.item() == pytest.approx(expected)


class ToyPolicy(torch.nn.Module):
    """log π(token | position) from a linear softmax policy: logp [N, T] depends on shared weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(5, 7, generator=g, dtype=torch.float64))
        self.feats = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
        self.tokens = torch.randint(0, 7, (3, 4), generator=g)

    def forward(self):
        logits = self.feats @ self.w
        return torch.log_softmax(logits, -1).gather(-1, self.tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("name", ["ppo-clip", "grpo", "bnpo", "dr-grpo", "dapo", "gspo"])
def test_gradient_at_ratio_one_is_the_policy_gradient(name):
    policy = ToyPolicy()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
    lengths = mask.sum(1).to(torch.float64)
    coef = {  # weight of each token's A·∇logp in the policy-gradient estimate of each aggregation
        "ppo-clip": mask / mask.sum(),
        "bnpo": mask / mask.sum(),
        "dapo": mask / 20.0,
        "grpo": mask / lengths[:, None] / 3,
        "gspo": mask / lengths[:, None] / 3,
        "dr-grpo": mask / (3 * 6.0),
    }[name]
    logp = policy()
    out = compute_loss(name, _inputs(logp, logp.detach(), adv, mask, token_count=20.0), LossConfig(max_length=6))
    (grad,) = torch.autograd.grad(out.loss, policy.w)
    pg = -(coef * adv[:, None] * policy()).sum()  # −Σ c·A·logp: its gradient is the PG estimate
    (expected,) = torch.autograd.grad(pg, policy.w)
    assert torch.allclose(grad, expected, atol=1e-12)
    assert out.metrics["ratio_mean"] == pytest.approx(1.0)


def test_guard_log_ratio_matches_independent_formula_and_exact_ratio():
    g = torch.Generator().manual_seed(1)
    x_next, old_mean, mean = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    std = torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.1
    got = guard_log_ratio(x_next, old_mean, mean, std)
    expected = torch.empty(3, 2, dtype=torch.float64)
    for i in range(3):
        for t in range(2):
            expected[i, t] = (
                sum(
                    ((x_next[i, t].flatten()[k] - old_mean[i, t].flatten()[k]) / std[i, t])
                    * (mean[i, t].flatten()[k] - old_mean[i, t].flatten()[k])
                    for k in range(16)
                )
                / 16
            )
    assert torch.allclose(got, expected, atol=1e-12)
    # the exact Gaussian log-ratio = guard / s − mean(Δμ²)/(2s²)
    s = std[..., None, None]
    exact = (
        torch.distributions.Normal(mean, s).log_prob(x_next) - torch.distributions.Normal(old_mean, s).log_prob(x_next)
    ).mean(dim=(2, 3))
    assert torch.allclose(exact, got / std - ((mean - old_mean) ** 2).mean(dim=(2, 3)) / (2 * std**2), atol=1e-12)


def test_grpo_guard_loss_uses_the_normalised_ratio():
    g = torch.Generator().manual_seed(2)
    x_next, old_mean = torch.randn(4, 1, 8, generator=g), torch.randn(4, 1, 8, generator=g)
    mean = old_mean + 0.01 * torch.randn(4, 1, 8, generator=g)
    std = torch.full((4, 1), 0.5)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    inp = LossInputs(advantages=adv, mask=torch.ones(4, 1), x_next=x_next, mean=mean, old_mean=old_mean, std=std)
    out = compute_loss("grpo-guard", inp, LossConfig(clip_low=1.0, clip_high=1.0))  # wide clip: unclipped
    ratio = torch.exp(((x_next - old_mean) / 0.5 * (mean - old_mean)).mean(-1)).squeeze(1)
    assert out.loss.item() == pytest.approx((-adv * ratio).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"grpo-guard.*needs inputs: x_next"):
        compute_loss("grpo-guard", LossInputs(advantages=adv, mask=torch.ones(4, 1)))


def test_kl_terms():
    g = torch.Generator().manual_seed(3)
    mean, ref = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g)
    std = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.2
    ref = ref.double()
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std[..., None]), torch.distributions.Normal(ref, std[..., None])
    ).mean(-1)
    assert torch.allclose(gaussian_kl(mean, ref, std), expected, atol=1e-12)
    lp, ref_lp = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    assert torch.allclose(k3_kl(lp, ref_lp), torch.tensor([[math.exp(-0.5) + 0.5 - 1, 0.0]]))
    # β·KL enters the loss per element: at ratio 1 with zero advantages the loss is β·mean KL
    zeros = torch.zeros(1, 2)
    inp = _inputs(lp, lp, torch.zeros(1), torch.ones(1, 2), ref_log_prob=ref_lp)
    out = compute_loss("bnpo", inp, LossConfig(kl_coef=0.1))
    assert out.loss.item() == pytest.approx(0.1 * (math.exp(-0.5) + 0.5 - 1) / 2)
    with pytest.raises(ValueError, match=r"kl_coef > 0 needs"):
        compute_loss("bnpo", _inputs(zeros, zeros, torch.zeros(1), torch.ones(1, 2)), LossConfig(kl_coef=0.1))


def test_step_weights():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    std = torch.tensor([[0.2, 0.4, 9.0], [0.2, 0.4, 0.8]])
    w = step_weights("noise-aware", mask, std=std)
    # mean of std over the 5 valid elements is 2.0 / 5 = 0.4
    assert torch.allclose(w, torch.tensor([[0.5, 1.0, 0.0], [0.5, 1.0, 2.0]]))
    dt = torch.tensor([[-0.1, -0.2, -0.3], [-0.1, -0.2, -0.4]])
    w = step_weights("inverse-dt", mask, dt=dt)
    inv = torch.tensor([[10.0, 5.0, 0.0], [10.0, 5.0, 2.5]])
    assert torch.allclose(w, inv / (inv.sum() / 5))
    assert torch.equal(step_weights("uniform", mask), mask)
    with pytest.raises(ValueError, match=r"unknown step_weighting 'linear'"):
        step_weights("linear", mask)
    with pytest.raises(ValueError, match=r"needs inputs.std"):
        step_weights("noise-aware", mask)


def test_awm_hand_value_and_direction():
    v_target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    v_pred = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    out = compute_loss("awm", LossInputs(v_pred=v_pred, v_target=v_target, advantages=adv))
    # per-sample FM losses 0.5 and 1.0 → mean(2·0.5, −1·1.0) = 0
    assert out.loss.item() == pytest.approx(0.0)
    out.loss.backward()
    stepped = v_pred.detach() - 0.1 * v_pred.grad
    fm = ((stepped - v_target) ** 2).mean(1)
    assert fm[0] < 0.5 and fm[1] > 1.0  # good sample pulled to its target, bad one pushed away
    reg = compute_loss(
        "awm",
        LossInputs(v_pred=v_pred.detach(), v_target=v_target, advantages=adv, v_ref=torch.zeros(2, 2)),
        LossConfig(velocity_kl_coef=0.5),
    )
    assert reg.loss.item() == pytest.approx(0.5 * (0.5 + 1.0) / 2)


@pytest.mark.parametrize("weighting", ["uniform", "t", "t2", "huber", "ghuber"])
def test_awm_time_weightings_match_its_code_at_ratio_one(weighting):
    """AWM's train_sd3_awm.py turns the matching error e into log_prob = −(weighted e) and trains −A·ratio; at
    ratio 1 (the first update) its gradient is our A·∇(weighted e). Hand values of the weighted errors: e = 0.5 and
    1.0 at t = 0.8 and 0.3, ghuber power 0.25."""
    v_target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    v_pred = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    adv, t = torch.tensor([2.0, -1.0]), torch.tensor([0.8, 0.3])
    e = torch.tensor([0.5, 1.0])
    by_hand = {
        "uniform": e,
        "t": e * t,
        "t2": e * t**2,
        "huber": (torch.sqrt(e + 1e-10) - 1e-5) * t,
        "ghuber": ((e + 1e-10) ** 0.25 - 1e-10**0.25) * t / 0.25,
    }[weighting]
    cfg, own = LossConfig(), AwmOptions(weighting=weighting, ghuber_power=0.25)
    out = compute_loss("awm", LossInputs(v_pred=v_pred, v_target=v_target, advantages=adv, sigma=t), cfg, own)
    assert out.loss.item() == pytest.approx((adv * by_hand).mean().item(), rel=1e-6)
    (grad,) = torch.autograd.grad(out.loss, v_pred)
    official = v_pred.detach().clone().requires_grad_(True)
    err = ((official - v_target) ** 2).mean(1)
    log_prob = -{
        "uniform": err, "t": err * t, "t2": err * t**2, "huber": (torch.sqrt(err + 1e-10) - 1e-5) * t,
        "ghuber": ((err + 1e-10) ** 0.25 - torch.tensor(1e-10) ** 0.25) * t / 0.25,
    }[weighting]  # fmt: skip
    surrogate = (-adv * torch.exp(log_prob - log_prob.detach())).mean()
    (expected,) = torch.autograd.grad(surrogate, official)
    torch.testing.assert_close(grad, expected)
    if weighting != "uniform":
        with pytest.raises(ValueError, match="needs inputs: sigma"):
            compute_loss("awm", LossInputs(v_pred=v_pred, v_target=v_target, advantages=adv), cfg, own)


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown policy loss 'ppo'; valid: awm, best-of-n, bnpo"):
        compute_loss("ppo", LossInputs())
    with pytest.raises(ValueError, match=r"already registered"):
        LOSSES.register("grpo")(lambda inputs, cfg, options: None)
    with pytest.raises(ValueError, match=r"'bnpo' needs inputs: log_prob, old_log_prob"):
        compute_loss("bnpo", LossInputs(advantages=torch.zeros(1), mask=torch.ones(1, 1)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    t=st.integers(1, 6),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["ppo-clip", "grpo", "bnpo", "dr-grpo", "dapo", "gspo"]),
)
def test_losses_are_finite_and_equal_minus_weighted_advantage_on_policy(n, t, seed, name):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, t, generator=g, dtype=torch.float64) * 5
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    mask = torch.rand(n, t, generator=g) < 0.7
    mask[:, 0] = True
    out = compute_loss(name, _inputs(logp, logp, adv, mask))
    assert torch.isfinite(out.loss)
    per_seq = -adv  # on-policy every valid token contributes −A
    lengths = mask.sum(1).double()
    expected = {
        "grpo": per_seq.mean(),
        "gspo": per_seq.mean(),
        "ppo-clip": (per_seq * lengths).sum() / lengths.sum(),
        "bnpo": (per_seq * lengths).sum() / lengths.sum(),
        "dapo": (per_seq * lengths).sum() / lengths.sum(),
        "dr-grpo": (per_seq * lengths).sum() / (n * t),
    }[name]
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-12)
