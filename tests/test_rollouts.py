import math
from itertools import pairwise

import pytest
import torch

from flowrl.samplers import (
    ProgressiveWindow,
    chain_rollout,
    linear_sigmas,
    replay_log_prob,
    singular_branch_rollout,
    tree_rollout,
)

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
SCALE = torch.tensor([0.5, 1.2], dtype=torch.float64)


def propagate(kind: str, a: float, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and variance of the discrete chain for Gaussian data (every step is affine + Gaussian).

    Written independently of the sampler code: the velocity is the closed-form regression
    v(x) = −μ + k·(x − (1−σ)μ), and each kind's mean is an affine map A·x + b of the state.
    """
    m, p = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    s_list = [float(s) for s in sigmas]
    for sig, nxt in pairwise(s_list):
        dt = nxt - sig
        var = (1 - sig) ** 2 * SCALE**2 + sig**2
        k = (sig - (1 - sig) * SCALE**2) / var
        if kind == "flow_sde":
            den = 1 - (s_list[1] if sig == 1 else sig)
            std = a * math.sqrt(sig / den) * math.sqrt(-dt)
        elif kind == "dance_sde":
            std = a * math.sqrt(-dt)
        elif kind == "cps":
            std = nxt * math.sin(a * math.pi / 2)
        else:
            std = 0.0

        def mean_next(x, sig=sig, nxt=nxt, dt=dt, k=k, std=std):
            v = -MU + k * (x - (1 - sig) * MU)
            x0, eps = x - sig * v, x + (1 - sig) * v
            if kind == "cps":
                return (1 - nxt) * x0 + math.sqrt(nxt**2 - std**2) * eps
            return x + dt * v - std**2 / (2 * sig) * eps

        b = mean_next(torch.zeros(2, dtype=torch.float64))
        big_a = mean_next(torch.ones(2, dtype=torch.float64)) - b
        m, p = big_a * m + b, big_a**2 * p + std**2
    return m, p


def _sample(gaussian, kind, a, steps, n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return chain_rollout(
        gaussian,
        x,
        linear_sigmas(steps),
        None,
        torch.zeros(n, dtype=torch.long),
        kind=kind,
        noise_level=a,
        generator=g,
    ).samples


@pytest.mark.parametrize("kind,a", [("ode", 0.0), ("flow_sde", 0.7), ("dance_sde", 0.5), ("cps", 0.7)])
def test_samples_match_the_exact_discrete_chain(gaussian, kind, a):
    n, steps = 20000, 40
    s = _sample(gaussian, kind, a, steps, n)
    m, p = propagate(kind, a, linear_sigmas(steps))
    assert torch.all((s.mean(0) - m).abs() < 4 * torch.sqrt(p / n)), (s.mean(0), m)
    assert torch.all((s.var(0) / p - 1).abs() < 4 * math.sqrt(2 / n)), (s.var(0), p)


@pytest.mark.parametrize("kind,a", [("ode", 0.0), ("flow_sde", 0.7), ("dance_sde", 0.5)])
def test_sde_samplers_preserve_the_data_marginal(gaussian, kind, a):
    # Tolerance: 3% on the variance (discretisation bias at 100 steps, exact value below) + sampling noise.
    n, steps = 20000, 100
    m, p = propagate(kind, a, linear_sigmas(steps))
    assert torch.allclose(m, MU, atol=1e-9) and torch.all((p / SCALE**2 - 1).abs() < 0.03), p
    s = _sample(gaussian, kind, a, steps, n, seed=1)
    assert torch.all((s.mean(0) - MU).abs() < 4 * SCALE / math.sqrt(n))
    assert torch.all((s.var(0) / SCALE**2 - 1).abs() < 0.03 + 4 * math.sqrt(2 / n)), s.var(0)


def test_cps_keeps_the_mean_and_its_variance_bias_vanishes_with_the_noise_level(gaussian):
    # CPS re-noises a fixed fraction sin(aπ/2) of σ_next every step. With the posterior-mean
    # velocity that loses variance at every step, independent of the step count (std 0.42 instead
    # of 0.50 at a = 0.7), and the loss shrinks to zero as a → 0.
    # Measured against the ODE's own discretisation error at the same 100 steps.
    sig = linear_sigmas(100)
    ode_var = propagate("ode", 0.0, sig)[1]
    deficits = []
    for a in (0.7, 0.3, 0.1, 0.02):
        m, p = propagate("cps", a, sig)
        assert torch.allclose(m, MU, atol=1e-9)
        deficits.append(float((1 - p / ode_var).max()))
    assert deficits == sorted(deficits, reverse=True) and deficits[0] > 0.2 and deficits[-1] < 0.002, deficits


def test_ode_maps_noise_to_data_up_to_discretisation_error(gaussian):
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = gaussian.flow_map(x, 1.0, 0.0)
    errs = []
    for steps in (50, 100, 200):
        out = chain_rollout(gaussian, x, linear_sigmas(steps), None, torch.zeros(512, dtype=torch.long), kind="ode")
        assert len(out.transitions) == 0 and out.nfe == 512 * steps
        errs.append(float((out.samples - exact).abs().max()))
    assert errs[-1] < 0.1 and all(1.8 < a / b < 2.2 for a, b in pairwise(errs)), errs


class CondField:
    """Gaussian data whose mean is the conditioning row: tests that replays use the right cond rows."""

    def __call__(self, x, sigma, cond):
        s = sigma.to(x).reshape(-1, 1)
        var = (1 - s) ** 2 * SCALE**2 + s**2
        return -cond + (s - (1 - s) * SCALE**2) / var * (x - (1 - s) * cond)


def _roots(r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, 2, generator=g, dtype=torch.float64), torch.randn(r, 2, generator=g, dtype=torch.float64)


def test_tree_structure_nfe_and_shared_prefixes():
    x, cond = _roots(2)
    sig = linear_sigmas(6)
    out = tree_rollout(
        CondField(),
        x,
        sig,
        cond,
        torch.tensor([5, 9]),
        split_steps=(1, 3),
        branch_factor=3,
        generator=torch.Generator().manual_seed(1),
    )
    tr = out.transitions
    assert out.samples.shape == (2 * 3**2, 2)
    assert out.group_id.tolist() == [5] * 9 + [9] * 9 and out.cond_index.tolist() == [0] * 9 + [1] * 9
    # frontier sizes per step: 2, 2 (split after the forward), 6, 6, 18, 18
    assert out.nfe == 2 + 2 + 6 + 6 + 18 + 18
    evaluated = set(tr.parent_id.tolist())
    assert len(evaluated) == out.nfe  # every step is stochastic here, so each evaluated state is some parent
    assert len(tr) == 2 + 6 + 6 + 18 + 18 + 18
    assert tr.depth[tr.step == 0].eq(0).all() and tr.depth[(tr.step >= 1) & (tr.step < 3)].eq(1).all()
    assert tr.depth[tr.step >= 3].eq(2).all()
    assert tr.sample_id[tr.step < 3].eq(-1).all() and sorted(tr.sample_id[tr.step == 5].tolist()) == list(range(18))
    # links: each transition starts where its parent transition ended
    by_node = {int(n): i for i, n in enumerate(tr.node_id)}
    for i in range(len(tr)):
        parent = int(tr.parent_id[i])
        if parent in by_node:
            assert torch.equal(tr.x[i], tr.x_next[by_node[parent]])
        else:
            assert parent in (0, 1) and torch.equal(tr.x[i], x[parent])

    def path(leaf_node):
        nodes = [leaf_node]
        while nodes[-1] in by_node:
            nodes.append(int(tr.parent_id[by_node[nodes[-1]]]))
        return nodes[::-1]  # root first: index = number of steps taken

    paths = [path(int(n)) for n in out.node_id]
    for a in range(18):
        for b in range(a + 1, 18):
            shared = next(i for i, (u, v) in enumerate(zip(paths[a], paths[b], strict=True)) if u != v)
            same_root, same_first = a // 9 == b // 9, a // 3 == b // 3
            assert shared == (0 if not same_root else 2 if not same_first else 4)
    assert not torch.equal(out.samples[0], out.samples[1])


def test_tree_mix_variant_trains_only_split_steps_and_uses_ode_elsewhere():
    x, cond = _roots(2)
    mask = torch.zeros(6, dtype=torch.bool)
    out = tree_rollout(
        CondField(),
        x,
        linear_sigmas(6),
        cond,
        torch.tensor([0, 1]),
        sde_mask=mask,
        split_steps=(1, 3),
        branch_factor=2,
        generator=torch.Generator().manual_seed(2),
    )
    tr = out.transitions
    assert sorted(set(tr.step.tolist())) == [1, 3] and len(tr) == 4 + 8
    # siblings created at the last split step continue deterministically
    assert out.samples.shape == (8, 2) and out.nfe == 2 + 2 + 4 + 4 + 8 + 8


def test_singular_branch_structure_and_coarse_tails():
    x, cond = _roots(3)
    sig = linear_sigmas(6)
    out = singular_branch_rollout(
        CondField(),
        x,
        sig,
        cond,
        torch.arange(3),
        branch_step=2,
        num_children=4,
        extra_tail_steps=(1, 3),
        generator=torch.Generator().manual_seed(3),
    )
    tr = out.transitions
    assert out.samples.shape == (12, 2) and len(tr) == 12
    assert tr.step.eq(2).all() and tr.depth.eq(1).all() and tr.sample_id.tolist() == list(range(12))
    assert out.group_id.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    for r in range(3):  # the ODE prefix is shared: siblings start from one state
        assert all(torch.equal(tr.x[4 * r], tr.x[4 * r + g]) for g in range(4))
    assert out.nfe == 3 * 3 + 12 * 3 + 12 * (1 + 3)
    assert torch.equal(out.extra_samples[3], out.samples)  # the full tail is the main decoding
    assert not torch.allclose(out.extra_samples[1], out.samples)


def test_chain_window_with_second_order_tail_counts_nfe():
    x, cond = _roots(4)
    w = ProgressiveWindow(num_steps=10, size=3, stride=2, shift_interval=1)
    w.advance()  # window now [2, 5)
    out = chain_rollout(
        CondField(),
        x,
        linear_sigmas(10),
        cond,
        torch.zeros(4, dtype=torch.long),
        sde_mask=w.sde_mask(),
        tail_solver="dpm2m",
        tail_steps=2,
        generator=torch.Generator(),
    )
    assert sorted(set(out.transitions.step.tolist())) == [2, 3, 4]
    assert out.nfe == 4 * (5 + 2)


def _replay_cases():
    x, cond = _roots(3)
    sig = linear_sigmas(8, shift=3.0)
    gid = torch.arange(3)
    gen = torch.Generator().manual_seed(11)
    f = CondField()
    mask = torch.zeros(8, dtype=torch.bool)
    mask[2:5] = True
    return {
        "flow_grpo": chain_rollout(f, x, sig, cond, gid, generator=gen),
        "dance": chain_rollout(f, x, sig, cond, gid, kind="dance_sde", noise_level=0.3, generator=gen),
        "cps": chain_rollout(f, x, sig, cond, gid, kind="cps", generator=gen),
        "mix_flash": chain_rollout(
            f, x, sig, cond, gid, sde_mask=mask, tail_solver="dpm2m", tail_steps=2, generator=gen
        ),
        "tree": tree_rollout(
            f, x, sig, cond, gid, split_steps=(0, 4), branch_factor=2, split_noise_level=1.0, generator=gen
        ),
        "tree_mix": tree_rollout(f, x, sig, cond, gid, sde_mask=mask, split_steps=(3,), generator=gen),
        "branch": singular_branch_rollout(f, x, sig, cond, gid, branch_step=5, num_children=4, generator=gen),
    }, cond


def test_every_driver_replays_to_its_stored_log_probs():
    cases, cond = _replay_cases()
    kinds = {"dance": "dance_sde", "cps": "cps"}
    for name, out in cases.items():
        tr = out.transitions
        assert len(tr) > 0, name
        lp, mean = replay_log_prob(CondField(), tr, cond, kinds.get(name, "flow_sde"))
        assert torch.allclose(lp, tr.log_prob, rtol=0, atol=1e-12), name
        assert torch.allclose(mean, tr.mean, rtol=0, atol=1e-12), name
        # and the wrong conditioning rows give different log-probs: cond_index matters
        shuffled = replay_log_prob(CondField(), tr, cond.roll(1, 0), kinds.get(name, "flow_sde"))[0]
        assert not torch.allclose(shuffled, tr.log_prob), name


def test_rollout_input_errors():
    x, cond = _roots(2)
    with pytest.raises(ValueError, match="group_id has shape"):
        chain_rollout(CondField(), x, linear_sigmas(4), cond, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="sde_mask has shape"):
        chain_rollout(
            CondField(),
            x,
            linear_sigmas(4),
            cond,
            torch.zeros(2, dtype=torch.long),
            sde_mask=torch.ones(5, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="split_steps"):
        tree_rollout(CondField(), x, linear_sigmas(4), cond, torch.zeros(2, dtype=torch.long), split_steps=(4,))
    with pytest.raises(ValueError, match="branch_step"):
        singular_branch_rollout(
            CondField(), x, linear_sigmas(4), cond, torch.zeros(2, dtype=torch.long), branch_step=7, num_children=2
        )
    with pytest.raises(TypeError, match="cannot index conditioning"):
        chain_rollout(CondField(), x, linear_sigmas(4), "a prompt", torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("splits", [(), (1, 3)])
def test_shares_of_a_rollout_reassemble_the_whole_rollout(splits):
    """Roots split over three "processes" (``share``) get the noise and node ids of the single call: sorted by step
    (stable), their transitions are the whole rollout's, leaf for leaf and bit for bit."""
    x, cond = _roots(6)
    sig, group = linear_sigmas(6), torch.arange(6) // 2

    def roll(rows: slice, share):
        return tree_rollout(
            CondField(), x[rows], sig, cond[rows], group[rows], split_steps=splits, branch_factor=2,
            generator=torch.Generator().manual_seed(3), share=share,
        )  # fmt: skip

    whole = roll(slice(None), None)
    parts = [roll(slice(a, b), (a, 6)) for a, b in [(0, 1), (1, 4), (4, 6)]]
    assert torch.equal(torch.cat([p.samples for p in parts]), whole.samples)
    assert torch.equal(torch.cat([p.node_id for p in parts]), whole.node_id)
    assert torch.equal(torch.cat([p.group_id for p in parts]), whole.group_id)
    step = torch.cat([p.transitions.step for p in parts])
    order = torch.sort(step, stable=True).indices
    for name in ("x", "x_next", "log_prob", "node_id", "parent_id", "step", "depth", "group_id"):
        joined = torch.cat([getattr(p.transitions, name) for p in parts])[order]
        assert torch.equal(joined, getattr(whole.transitions, name)), name
    with pytest.raises(ValueError, match="share"):
        roll(slice(0, 3), (4, 6))


def test_mixgrpo_tail_grid_respaces_in_unshifted_time():
    """MixGRPO's post grid by hand: 8 steps shifted by 3, the last stochastic step 1, so the tail starts at the
    shifted u = 0.75; 4 tail steps re-spaced in un-shifted time give u = 0.75, 0.5625, 0.375, 0.1875, 0, where
    subsampling the 6 scheduled tail steps keeps u = 0.75, 0.5, 0.375, 0.25, 0."""
    from flowrl.samplers import linear_sigmas, shift_sigmas, tree_rollout
    from flowrl.samplers.schedules import respaced_tail, subsample_sigmas

    sig = linear_sigmas(8, shift=3.0)
    tail = sig[2:]
    expected = shift_sigmas(torch.tensor([0.75, 0.5625, 0.375, 0.1875, 0.0], dtype=torch.float64), 3.0)
    torch.testing.assert_close(respaced_tail(3.0)(tail, 4), expected)
    subsampled = shift_sigmas(torch.tensor([0.75, 0.5, 0.375, 0.25, 0.0], dtype=torch.float64), 3.0)
    torch.testing.assert_close(subsample_sigmas(tail, 4), subsampled)
    torch.testing.assert_close(respaced_tail(3.0)(tail, 3), subsample_sigmas(tail, 3))  # 6 divides by 3: the same
    seen = []

    def field(x, sigma, cond):
        seen.append(float(sigma[0]))
        return x - cond

    x, cond = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mask = torch.tensor([True, True] + [False] * 6)
    tree_rollout(field, x, sig, cond, torch.tensor([0, 1]), sde_mask=mask, tail_steps=4, tail_grid=respaced_tail(3.0))
    assert seen[2:] == pytest.approx(expected[:-1].tolist())  # the tail's Euler steps start at the re-spaced sigmas
