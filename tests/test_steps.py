import math

import pytest
import torch

from flowrl.samplers import gaussian_log_prob, sample_step, step_log_prob, step_std

SIGMA, SIGMA_NEXT = 0.6, 0.5


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    v = torch.randn(4, 3, 5, 5, generator=g, dtype=dtype)
    return x, v


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde"])
def test_sde_with_zero_noise_is_the_euler_step_exactly(kind):
    x, v = _inputs()
    sde = sample_step(kind, x, v, SIGMA, SIGMA_NEXT, 0.0)
    ode = sample_step("ode", x, v, SIGMA, SIGMA_NEXT)
    assert torch.equal(sde.x_next, ode.x_next)
    assert torch.allclose(ode.x_next, x + (SIGMA_NEXT - SIGMA) * v, atol=1e-6)  # dt rounded in fp32 vs fp64
    assert sde.log_prob is None and ode.log_prob is None


def test_cps_with_zero_noise_is_the_euler_step():
    x, v = _inputs(torch.float64)
    cps = sample_step("cps", x, v, SIGMA, SIGMA_NEXT, 0.0)
    # (1−σn)(x−σv) + σn(x+(1−σ)v) = x + (σn−σ)v: equal up to rounding only
    assert torch.allclose(cps.x_next, x + (SIGMA_NEXT - SIGMA) * v, atol=1e-12)


def test_flow_sde_matches_published_form_and_normal_log_prob():
    x, v = _inputs(torch.float64)
    a = 0.7
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sample_step("flow_sde", x, v, SIGMA, SIGMA_NEXT, a, noise=z)
    dt = SIGMA_NEXT - SIGMA
    std_t = a * math.sqrt(SIGMA / (1 - SIGMA))
    eps_hat = x + (1 - SIGMA) * v
    mean = x + dt * (v + std_t**2 / (2 * SIGMA) * eps_hat)  # the published expression
    s = std_t * math.sqrt(-dt)
    assert torch.allclose(out.mean, mean, atol=1e-12)
    assert torch.allclose(out.std, torch.full((4,), s, dtype=torch.float64))
    assert torch.allclose(out.x_next, mean + s * z, atol=1e-12)
    ref = torch.distributions.Normal(mean, s).log_prob(out.x_next).mean(dim=(1, 2, 3))
    assert torch.allclose(out.log_prob, ref, atol=1e-12)


def test_dance_sde_and_cps_hand_values():
    x, v = _inputs(torch.float64)
    eta, a = 0.3, 0.5
    z = torch.zeros_like(x)
    dance = sample_step("dance_sde", x, v, SIGMA, SIGMA_NEXT, eta, noise=z)
    eps_hat = x + (1 - SIGMA) * v
    dt = SIGMA_NEXT - SIGMA
    assert torch.allclose(dance.mean, x + dt * (v + eta**2 / (2 * SIGMA) * eps_hat), atol=1e-12)
    assert torch.allclose(dance.std, torch.full((4,), eta * math.sqrt(-dt), dtype=torch.float64))
    cps = sample_step("cps", x, v, SIGMA, SIGMA_NEXT, a, noise=z)
    sc = SIGMA_NEXT * math.sin(a * math.pi / 2)
    expected = (1 - SIGMA_NEXT) * (x - SIGMA * v) + math.sqrt(SIGMA_NEXT**2 - sc**2) * eps_hat
    assert torch.allclose(cps.mean, expected, atol=1e-12)
    assert torch.allclose(cps.std, torch.full((4,), sc, dtype=torch.float64))


def test_flow_sde_at_sigma_one_uses_the_cap():
    s = step_std("flow_sde", torch.tensor([1.0]), torch.tensor([0.9]), 1.0, sigma_cap=0.9)
    assert torch.allclose(s, torch.tensor([math.sqrt(1 / 0.1) * math.sqrt(0.1)]))
    with pytest.raises(ValueError, match="sigma_cap"):
        step_std("flow_sde", torch.tensor([1.0]), torch.tensor([0.9]), 1.0)


@pytest.mark.parametrize("kind", ["flow_sde", "dance_sde", "cps"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replayed_log_prob_gives_ratio_exactly_one(kind, dtype):
    x, v = _inputs(dtype)
    out = sample_step(kind, x, v, SIGMA, SIGMA_NEXT, 0.7, generator=torch.Generator().manual_seed(3))
    assert out.x_next.dtype == dtype
    sig = torch.full((4,), SIGMA)
    sig_next = torch.full((4,), SIGMA_NEXT)
    lp, mean = step_log_prob(kind, x, v, sig, sig_next, out.x_next, out.std)
    assert torch.equal(torch.exp(lp - out.log_prob), torch.ones(4))
    assert torch.equal(mean, out.mean)


def test_log_prob_gradient_flows_through_velocity():
    x, v = _inputs(torch.float64)
    out = sample_step("flow_sde", x, v, SIGMA, SIGMA_NEXT, 0.7, generator=torch.Generator().manual_seed(0))
    v_param = v.clone().requires_grad_(True)
    lp, _ = step_log_prob(
        "flow_sde", x, v_param, torch.full((4,), SIGMA), torch.full((4,), SIGMA_NEXT), out.x_next, out.std
    )
    lp.sum().backward()
    assert v_param.grad is not None and v_param.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    x, v = _inputs()
    with pytest.raises(ValueError, match=r"unknown step kind 'sdee'.*flow_sde"):
        sample_step("sdee", x, v, SIGMA, SIGMA_NEXT, 0.7)
    with pytest.raises(ValueError, match="smaller than sigma"):
        sample_step("flow_sde", x, v, 0.5, 0.6, 0.7)
    with pytest.raises(ValueError, match="per-sample value has shape"):
        sample_step("flow_sde", x, v, torch.ones(3) * 0.6, SIGMA_NEXT, 0.7)
    with pytest.raises(ValueError, match="deterministic"):
        gaussian_log_prob(x, x, torch.zeros(4))


def test_flowcps_is_cps_with_flowcps_log_prob_convention():
    """``flowcps`` samples the CPS step and scores it as FlowCPS's code does: −mean((x_next − mean)²), so a
    log-ratio is 2s² times the Gaussian's (by hand on fixed noise)."""
    x, v = _inputs(torch.float64)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = 0.8
    cps = sample_step("cps", x, v, SIGMA, SIGMA_NEXT, a, noise=z)
    flowcps = sample_step("flowcps", x, v, SIGMA, SIGMA_NEXT, a, noise=z)
    assert torch.equal(cps.x_next, flowcps.x_next) and torch.equal(cps.mean, flowcps.mean)
    s = SIGMA_NEXT * math.sin(a * math.pi / 2)
    torch.testing.assert_close(flowcps.log_prob, -(s**2) * (z**2).flatten(1).mean(1))
    v2 = v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    lp_g, _ = step_log_prob("cps", x, v2, torch.full((4,), SIGMA), torch.full((4,), SIGMA_NEXT), cps.x_next, cps.std)
    lp_f, _ = step_log_prob("flowcps", x, v2, torch.full((4,), SIGMA), torch.full((4,), SIGMA_NEXT), cps.x_next,
                            cps.std)  # fmt: skip
    torch.testing.assert_close(lp_f - flowcps.log_prob, 2 * s**2 * (lp_g - cps.log_prob))
