import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from flowrl.samplers import linear_sigmas, pipeline_grid, scheduler_sigmas, shift_sigmas, subsample_sigmas
from flowrl.samplers.schedules import dynamic_shift_mu


def test_shift_hand_values():
    # s=3: 0.5 -> 1.5 / 2 = 0.75; 0.25 -> 0.75 / 1.5 = 0.5; endpoints fixed.
    out = shift_sigmas(torch.tensor([1.0, 0.5, 0.25, 0.0]), 3.0)
    assert torch.allclose(out, torch.tensor([1.0, 0.75, 0.5, 0.0]))


def test_linear_sigmas_shape_and_order():
    s = linear_sigmas(10, shift=3.0)
    assert s.shape == (11,) and s[0] == 1 and s[-1] == 0
    assert torch.all(s[1:] < s[:-1])
    with pytest.raises(ValueError, match="num_steps"):
        linear_sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(s, 0.0)


def test_sd3_scheduler_sigmas_follow_fixed_shift():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s = scheduler_sigmas(sched, 12)
    assert s.shape == (13,) and s[-1] == 0
    # diffusers spaces timesteps linearly between sigma_max and sigma_min of the shifted training grid
    # and re-applies the shift: the un-shifted values must be linear.
    unshifted = s[:-1] / (3.0 - 2.0 * s[:-1])
    diffs = unshifted[1:] - unshifted[:-1]
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), atol=1e-6)


def test_flux_scheduler_sigmas_use_dynamic_shift():
    cfg = dict(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    sched = FlowMatchEulerDiscreteScheduler(**cfg)
    with pytest.raises(ValueError, match="image_seq_len"):
        scheduler_sigmas(sched, 8)
    s = scheduler_sigmas(sched, 8, image_seq_len=4096, grid=pipeline_grid(8))
    mu = dynamic_shift_mu(4096, sched.config)
    assert mu == pytest.approx(1.15)
    # FLUX: exponential time shift exp(mu) / (exp(mu) + (1/t - 1)) on the pipeline's linspace(1, 1/T, T)
    grid = torch.linspace(1.0, 1 / 8, 8, dtype=torch.float64)
    expected = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / grid - 1))
    assert torch.allclose(s[:-1], expected, atol=1e-6) and s[-1] == 0
    # without a grid (SD3's pipeline): the scheduler's own spacing, linspace(1, 1/1000, T) before the shift
    own = scheduler_sigmas(sched, 8, image_seq_len=4096)
    unshifted = torch.linspace(1.0, 1 / 1000, 8, dtype=torch.float64)
    expected = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / unshifted - 1))
    assert torch.allclose(own[:-1], expected, atol=1e-6) and own[-1] == 0


def test_a_pipeline_grid_is_shifted_by_a_fixed_shift_too():
    # shift 2, 4 steps: linspace(1, 1/4, 4) = 1, .75, .5, .25 -> 2σ / (1 + σ); the scheduler's own spacing differs
    sched = FlowMatchEulerDiscreteScheduler(shift=2.0)
    got = scheduler_sigmas(sched, 4, grid=pipeline_grid(4))
    torch.testing.assert_close(got, torch.tensor([1.0, 6 / 7, 2 / 3, 0.4, 0.0], dtype=torch.float64))
    assert scheduler_sigmas(sched, 4)[3].item() == pytest.approx(0.004, abs=1e-4)


def test_subsample_keeps_ends_and_shift():
    s = linear_sigmas(20, shift=3.0)
    sub = subsample_sigmas(s, 5)
    assert sub.shape == (6,) and sub[0] == s[0] and sub[-1] == s[-1]
    assert torch.equal(sub, s[[0, 4, 8, 12, 16, 20]])
    with pytest.raises(ValueError, match="num_steps"):
        subsample_sigmas(s, 21)


def test_fixed_shift_replaces_the_scheduler_schedule():
    # DanceGRPO / Pref-GRPO FLUX: linspace(1, 0, T + 1) shifted with s = 3: 3t / (1 + 2t)
    flux = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    got = scheduler_sigmas(flux, 4, image_seq_len=4096, shift=3.0)
    torch.testing.assert_close(got, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0], dtype=torch.float64))
    assert not torch.equal(got, scheduler_sigmas(flux, 4, image_seq_len=4096))
