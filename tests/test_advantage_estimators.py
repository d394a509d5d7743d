import copy
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrl.core.advantages import (
    ADVANTAGES,
    AdvantageBatch,
    AdvantageConfig,
    StratifiedOptions,
    TrackerOptions,
    TreeOptions,
    TreeStructure,
    compute_advantages,
)
from flowrl.core.registry import Registry

CFG = AdvantageConfig(eps=0.0, clip_max=None)


def batch(rewards, groups, **extra):
    r = torch.tensor(rewards, dtype=torch.float64)
    return AdvantageBatch(r[:, None] if r.ndim == 1 else r, torch.tensor(groups), **extra)


def adv(name, b, cfg=CFG, state=None, options=None):
    return compute_advantages(name, b, cfg, state, options).advantages.tolist()


def z(values):
    m, s = statistics.fmean(values), statistics.pstdev(values)
    return [(v - m) / s for v in values]


def test_group_estimators_hand_values():
    b = batch([1.0, 2.0, 6.0, 4.0, 4.0, 4.0], [0, 0, 0, 1, 1, 1])
    assert adv("grpo", b) == pytest.approx([*z([1, 2, 6]), 0, 0, 0])
    unbiased = AdvantageConfig(eps=0.0, clip_max=None, std_unbiased=True)
    s = statistics.stdev([1, 2, 6])
    assert adv("grpo", b, unbiased)[:3] == pytest.approx([(1 - 3) / s, (2 - 3) / s, (6 - 3) / s])
    batch_std = statistics.pstdev([1, 2, 6, 4, 4, 4])
    assert adv("global-std", b) == pytest.approx([-2 / batch_std, -1 / batch_std, 3 / batch_std, 0, 0, 0])
    assert adv("dr-grpo", b) == pytest.approx([-2, -1, 3, 0, 0, 0])
    assert adv("rloo", b) == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0, 0, 0])  # r − mean of the others
    eps = compute_advantages("grpo", b, AdvantageConfig(eps=1e-4, clip_max=None)).advantages
    assert eps[0].item() == pytest.approx(-2 / (statistics.pstdev([1, 2, 6]) + 1e-4))


def test_median_masks_the_pivot():
    out = compute_advantages("median", batch([5.0, 1.0, 2.0, 0.0, 0.0, 3.0], [0, 0, 0, 1, 1, 1]), CFG)
    s0, s1 = statistics.pstdev([5, 1, 2]), statistics.pstdev([0, 0, 3])
    assert out.advantages.tolist() == pytest.approx([3 / s0, -1 / s0, 0, 0, 0, 3 / s1])
    assert out.mask.tolist() == [True, True, False, True, False, True]  # middle of a stable sort: 2nd zero
    with pytest.raises(ValueError, match="odd group sizes"):
        compute_advantages("median", batch([1.0, 2.0], [0, 0]))


def test_gdpo_normalises_each_reward_then_the_batch():
    rewards = [[1.0, 100.0], [2.0, 300.0], [3.0, 200.0], [0.0, 10.0]]
    b = batch(rewards, [0, 0, 0, 1], weights=torch.tensor([1.0, 0.5]))
    za, zb = z([1, 2, 3]), z([100, 300, 200])
    s = [za[i] + 0.5 * zb[i] for i in range(3)] + [0.0]
    m, sd = statistics.fmean(s), statistics.pstdev(s)
    expected = [(v - m) / sd for v in s[:3]] + [0.0]  # the singleton group is constant: zero
    assert adv("gdpo", b) == pytest.approx(expected)


def test_pairwise_win_rates_with_ties():
    # group of 3: 0 beats 1, ties 2; 1 beats 2. Win rates: 0 → 1.5/2, 1 → 1/2, 2 → 0.5/2
    p = torch.tensor([[0.0, 1.0, 0.5], [0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    out = compute_advantages("pairwise", batch([0.0, 0.0, 0.0], [0, 0, 0], pairwise=p), CFG)
    assert out.advantages.tolist() == pytest.approx(z([0.75, 0.5, 0.25]))
    assert out.metrics["pairwise/win_rate_mean"] == pytest.approx(0.5)
    bad = torch.tensor([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match="must be 1 for every pair"):
        compute_advantages("pairwise", batch([0.0, 0.0, 0.0], [0, 0, 0], pairwise=bad))


def test_stratified_blend_and_ngrpo():
    b = batch([1.0, 3.0, 10.0, 14.0], [0, 0, 0, 0], strata=torch.tensor([0, 0, 1, 1]))
    g = z([1, 3, 10, 14])
    assert adv("stratified", b, CFG, options=StratifiedOptions(alpha=0.75)) == pytest.approx(
        [0.75 * c + 0.25 * d for c, d in zip([-1, 1, -1, 1], g, strict=True)]
    )
    # ngrpo: an all-zero group with a virtual reward of 1 gets negative advantages
    vals = [0.0, 0.0, 0.0, 1.0]
    m, s = statistics.fmean(vals), statistics.pstdev(vals)
    assert adv("ngrpo", batch([0.0, 0.0, 0.0], [0, 0, 0])) == pytest.approx([(0 - m) / s] * 3)


def test_multi_granularity_sums_group_zscores():
    main = [1.0, 2.0, 4.0]
    coarse = torch.tensor([[[3.0], [1.0], [2.0]]], dtype=torch.float64)
    b = batch(main, [0, 0, 0], granular_rewards=coarse)
    expected = [a + c for a, c in zip(z(main), z([3, 1, 2]), strict=True)]
    assert adv("multi-granularity", b) == pytest.approx(expected)


def test_per_prompt_tracker_uses_history_and_round_trips():
    cfg, own = CFG, TrackerOptions(buffer=4, min_count=3)
    state: dict = {}
    first = batch([1.0, 3.0], [0, 1], prompt_keys=["a", "b"])
    # fewer than 3 rewards per prompt: batch mean 2, batch std 1
    assert adv("per-prompt", first, cfg, state, own) == pytest.approx([-1.0, 1.0])
    adv("per-prompt", batch([2.0, 5.0], [0, 1], prompt_keys=["a", "b"]), cfg, state, own)
    saved = copy.deepcopy(state)
    third = batch([6.0, 7.0], [0, 1], prompt_keys=["a", "a"])  # "a" history: 1, 2, 6, 7 (buffer of 4)
    hist = [1.0, 2.0, 6.0, 7.0]
    expected = [(v - statistics.fmean(hist)) / statistics.pstdev(hist) for v in (6.0, 7.0)]
    assert adv("per-prompt", third, cfg, state, own) == pytest.approx(expected)
    assert adv("per-prompt", third, cfg, saved, own) == pytest.approx(expected)  # restored state continues alike
    assert state["per_prompt"]["a"] == hist and state["per_prompt"]["b"] == [3.0, 5.0]


def _tiny_tree():
    # root 0 → a (1) → split into b (2), c (3); b → leaves 4, 5; c → leaf 6 (via one step), all one group
    node = torch.tensor([1, 2, 3, 4, 5, 6])
    parent = torch.tensor([0, 1, 1, 2, 2, 3])
    step = torch.tensor([0, 1, 1, 2, 2, 2])
    depth = torch.tensor([0, 1, 1, 2, 2, 1])
    logp = torch.tensor([0.0, 0.0, 0.0, math.log(3.0), 0.0, 0.0], dtype=torch.float64)
    return TreeStructure(node, parent, step, depth, logp, torch.zeros(6, dtype=torch.long), torch.tensor([4, 5, 6]))


def test_tree_fusion_zscores_and_pruning():
    tree = _tiny_tree()
    b = batch([1.0, 3.0, 8.0], [0, 0, 0], tree=tree)
    out = compute_advantages("tree", b, CFG)
    # child rewards: a = mean(1, 3, 8) = 4, b = 2, c = 8, leaves 1, 3, 8
    # step 0: one node → 0; step 1: z(2, 8) = (−1, 1); step 2: z(1, 3, 8)
    assert out.advantages.tolist() == pytest.approx([0.0, -1.0, 1.0, *z([1, 3, 8])])
    assert out.metrics["adv/zero_std_frac"] == pytest.approx(1 / 3)
    # log-prob fusion: under b, leaf 4 has path prob 3 vs 1 → weights 3/4, 1/4
    lp = compute_advantages("tree", b, CFG, options=TreeOptions(fusion="logprob"))
    bw = 0.75 * 1 + 0.25 * 3
    assert lp.advantages[1:3].tolist() == pytest.approx(z([bw, 8.0]))
    skip = compute_advantages("tree", b, options=TreeOptions(skip_depths=(1,)))
    assert skip.mask.tolist() == [True, False, False, True, True, False]
    width = compute_advantages("tree", b, options=TreeOptions(keep_fraction=0.5))
    assert width.mask.tolist() == [True, True, True, True, False, True]  # keeps best and worst leaf only


def test_logprob_fusion_is_branchgrpos_softmax_over_immediate_children():
    """BranchGRPO's tree_prob_weighted rule, by hand: root chain step to r (9), r splits into a (1, edge log-prob 0)
    and b (2, ln 2); each continues by one chain step (a' = 3 with ln 5, b' = 4 with 0) and splits into two leaves
    (5: ln 3, 6: 0 under a'; 7, 8: 0 under b') with rewards 1, 5, 2, 4."""
    from flowrl.core.advantages.tree import node_rewards

    node = torch.tensor([9, 1, 2, 3, 4, 5, 6, 7, 8])
    parent = torch.tensor([0, 9, 9, 1, 2, 3, 3, 4, 4])
    ln = math.log
    logp = torch.tensor([0.0, 0.0, ln(2), ln(5), 0.0, ln(3), 0.0, 0.0, 0.0], dtype=torch.float64)
    leaves, rewards = torch.tensor([5, 6, 7, 8]), torch.tensor([1.0, 5.0, 2.0, 4.0], dtype=torch.float64)
    fused = node_rewards(node, parent, logp, leaves, rewards, "logprob")
    # a' = 3/4·1 + 1/4·5 = 2; b' = (2 + 4)/2 = 3; a, b pass their one child's reward up; r = softmax(0, ln 2) =
    # (1/3, 2/3) over (2, 3) = 8/3. (Weighting leaves by their whole path's log-prob, chain edges included, gives r
    # (15·1 + 5·5 + 2·2 + 2·4) / 24 = 13/6 instead.)
    assert fused.tolist() == pytest.approx([8 / 3, 2.0, 3.0, 2.0, 3.0, 1.0, 5.0, 2.0, 4.0])
    assert node_rewards(node, parent, logp, leaves, rewards, "mean").tolist() == pytest.approx(
        [3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 5.0, 2.0, 4.0]
    )


def test_tree_estimator_on_a_real_tree_rollout():
    from flowrl.samplers import linear_sigmas, tree_rollout

    def field(x, sigma, cond):
        return x - cond

    x, cond = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    out = tree_rollout(field, x, linear_sigmas(6), cond, torch.tensor([0, 1]), split_steps=(2, 4), branch_factor=2)
    tr = out.transitions
    rewards = -out.samples.pow(2).sum(1, keepdim=True)
    tree = TreeStructure(tr.node_id, tr.parent_id, tr.step, tr.depth, tr.log_prob, tr.group_id, out.node_id)
    res = compute_advantages("tree", AdvantageBatch(rewards, out.group_id, tree=tree))
    assert res.advantages.shape == (len(tr),) and torch.isfinite(res.advantages).all()
    assert res.advantages[tr.step < 2].eq(0).all() and res.advantages[tr.step >= 2].ne(0).any()


def test_invariants_and_metrics():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(12, 1, generator=g, dtype=torch.float64)
    gid = torch.arange(3).repeat_interleave(4)
    base = compute_advantages("grpo", AdvantageBatch(r, gid), CFG).advantages
    moved = compute_advantages("grpo", AdvantageBatch(3.0 * r + 7.0, gid), CFG).advantages
    assert torch.allclose(base, moved, atol=1e-10)
    dr = compute_advantages("dr-grpo", AdvantageBatch(r, gid), CFG).advantages
    assert torch.allclose(compute_advantages("dr-grpo", AdvantageBatch(2.5 * r, gid), CFG).advantages, 2.5 * dr)
    perm = torch.tensor([3, 1, 0, 2, 4, 5, 6, 7, 11, 10, 9, 8])
    assert torch.allclose(compute_advantages("grpo", AdvantageBatch(r[perm], gid), CFG).advantages, base[perm])
    const = compute_advantages("grpo", batch([1.0, 2.0, 5.0, 5.0], [0, 0, 1, 1]), AdvantageConfig(clip_max=0.5))
    assert const.advantages[2:].eq(0).all() and const.metrics["adv/zero_std_frac"] == 0.5
    assert const.metrics["adv/clip_frac"] == 0.5 and const.advantages.abs().max() == 0.5


def test_registry_and_bad_inputs():
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'grpo2'; valid: dr-grpo, gdpo"):
        compute_advantages("grpo2", batch([1.0], [0]))
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGES.register("grpo")(lambda b, c, o, s: None)
    reg: Registry = Registry("thing")
    reg.register("x")(len)
    with pytest.raises(ValueError, match="thing 'x' is already registered"):
        reg.register("x")(len)
    with pytest.raises(ValueError, match="NaN"):
        batch([1.0, float("nan")], [0, 0])
    with pytest.raises(ValueError, match=r"group_id has shape \(3,\); expected \[2\]"):
        batch([1.0, 2.0], [0, 0, 1])
    for name, needs in [
        ("pairwise", "pairwise"),
        ("per-prompt", "prompt_keys"),
        ("stratified", "strata"),
        ("multi-granularity", "granular_rewards"),
        ("tree", "batch.tree"),
    ]:
        with pytest.raises(ValueError, match=needs):
            compute_advantages(name, batch([1.0, 2.0], [0, 0]))


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 6), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(["grpo", "global-std", "dr-grpo", "rloo", "gdpo", "ngrpo", "stratified"]),
)
def test_random_groups_give_finite_advantages_of_the_right_shape(sizes, seed, name):
    g = torch.Generator().manual_seed(seed)
    gid = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    rewards = torch.round(torch.rand(len(gid), 2, generator=g, dtype=torch.float64) * 4) / 4  # ties happen
    b = AdvantageBatch(rewards, gid, strata=torch.randint(0, 2, (len(gid),), generator=g))
    out = compute_advantages(name, b, AdvantageConfig(clip_max=None))
    assert out.advantages.shape == (len(gid),) and torch.isfinite(out.advantages).all()
    if name == "grpo":
        for i in range(len(sizes)):
            assert abs(out.advantages[gid == i].mean().item()) < 1e-9
        shifted = compute_advantages(name, AdvantageBatch(rewards + 3.0, gid), AdvantageConfig(clip_max=None))
        assert torch.allclose(shifted.advantages, out.advantages, atol=1e-9)


def test_broadcast_to_transitions_by_hand():
    from flowrl.core.advantages import broadcast_to_transitions

    adv, mask = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([True, False, True])
    sample_id = torch.tensor([-1, 0, 0, 1, 2, -1, 2])  # -1: a step shared by several samples (a tree prefix)
    a, m = broadcast_to_transitions(adv, mask, sample_id)
    assert a.tolist() == [0.0, 0.5, 0.5, -1.0, 2.0, 0.0, 2.0]
    assert m.tolist() == [False, True, True, False, True, False, True]


def test_the_zero_variance_filter_drops_exactly_the_groups_of_equal_totals():
    from flowrl.core.rollout import FilterSpec, ZeroVarianceOptions, filter_rollouts, zero_variance

    # totals with weights (1, 0.5): group 0: 1.5, 1.5 (equal) | group 1: 0, 0.5 | group 2: 2, 2.25 (span 0.25)
    rewards = torch.tensor([[1.0, 1.0], [1.5, 0.0], [0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.5]])
    batch = AdvantageBatch(
        rewards=rewards, group_id=torch.tensor([7, 7, 3, 3, 5, 5]), weights=torch.tensor([1.0, 0.5])
    )
    assert zero_variance(batch, ZeroVarianceOptions()).tolist() == [False, False, True, True, True, True]
    # a group whose span is within the tolerance counts as equal
    assert zero_variance(batch, ZeroVarianceOptions(tolerance=0.3)).tolist() == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    keep, metrics = filter_rollouts([FilterSpec(name="zero-variance")], batch)
    assert keep.tolist() == [False, False, True, True, True, True]
    assert metrics == {"rollout/kept_share": pytest.approx(4 / 6)}
    keep, metrics = filter_rollouts([], batch)  # none configured: everything kept, nothing logged
    assert keep.all() and metrics == {}
