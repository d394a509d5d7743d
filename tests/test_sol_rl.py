"""Sol-RL's generation (``rollout.generate.name: sol-rl``, flowrl/image/sol_rl.py): the selection rules by hand and
against brute force, the candidates' seeds, the config refusals, and on the tiny SD3: the kept candidates are the
rule's choice over the explored pool, regeneration from the same noise with the exploration's steps and precision
gives the explored image exactly, and the first replay of every stored step has ratio 1."""

from __future__ import annotations

import itertools

import pytest
import torch

from flowrl.core.errors import ConfigError
from flowrl.image.sol_rl import CANDIDATE_STREAM, candidate_seed, select_candidates
from flowrl.recipes import load_config


def test_best_worst_is_sol_rls_top_and_bottom_halves():
    r = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    assert select_candidates(r, 4, "best-worst").tolist() == [1, 4, 5, 0]
    assert select_candidates(r, 3, "best-worst").tolist() == [1, 5, 0]  # one best, two worst (Sol-RL: m // 2 best)
    # all tied: distinct candidates all the same (Sol-RL's two topk calls could return one twice)
    assert select_candidates(torch.zeros(4), 3, "best-worst").tolist() == [0, 2, 3]


def test_max_variance_by_hand_and_against_brute_force():
    assert select_candidates(torch.tensor([1.0, 0.9, 0.0, 0.5]), 2, "max-variance").tolist() == [0, 2]
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        r = torch.rand(7, generator=gen).double()
        for keep in (2, 3, 5):
            got = select_candidates(r, keep, "max-variance")
            best = max(float(r[list(s)].var(unbiased=False)) for s in itertools.combinations(range(7), keep))
            assert len(set(got.tolist())) == keep and float(r[got].var(unbiased=False)) == pytest.approx(best)


def test_max_min_spreads_the_kept_rewards():
    # the best (1.0) and the worst (0.0), then 0.5: farthest from both (0.52 is 0.48 from the best)
    assert select_candidates(torch.tensor([0.0, 0.1, 0.5, 0.52, 1.0]), 3, "max-min").tolist() == [4, 2, 0]
    with pytest.raises(ValueError, match="cannot keep 6 of 5"):
        select_candidates(torch.zeros(5), 6, "max-min")


def test_candidate_seeds_are_distinct_and_apart_from_the_roots():
    seeds = [candidate_seed(12345, c) for c in range(5000)]
    assert len(set(seeds)) == 5000 and all(CANDIDATE_STREAM <= s < 2**63 for s in seeds)
    assert candidate_seed(12345, 7) == seeds[7] and candidate_seed(12346, 7) != seeds[7]


def test_config_refusals():
    base = ["model.path=assets/toy-sd3", "rollout.generate.name=sol-rl", "train.group_size=4",
            "rollout.generate.sol-rl.pool=8"]  # fmt: skip
    assert load_config(None, base).rollout.generate.options.pool == 8
    with pytest.raises(ConfigError, match=r"pool=2 must be at least train.group_size=4"):
        load_config(None, [*base, "rollout.generate.sol-rl.pool=2"])
    with pytest.raises(ConfigError, match="same_noise=false"):
        load_config(None, [*base, "sampler.same_noise=true"])
    tree = [
        "sampler.mode=branchgrpo",
        "sampler.window_size=0",
        "sampler.window_options={}",
        "sampler.branchgrpo.split_steps=[0,1]",
        "sampler.branchgrpo.branch_factor=2",
        "advantage.name=tree",
    ]
    with pytest.raises(ConfigError, match="branches"):
        load_config(None, [*base, *tree])


def test_kept_candidates_are_the_rules_choice_and_regenerate_exactly(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.core.rollout import GENERATORS
    from flowrl.image.generate import generate_from_noise
    from flowrl.image.trainer import sample, setup

    # exploration with the training sampler's ODE (4 Euler steps, the live fp32 module): the same arithmetic
    args = ["rollout.generate.name=sol-rl", "rollout.generate.sol-rl.pool=6",
            "rollout.generate.sol-rl.explore_steps=4", "model.untrained_copy=none", "sampler.mode=ode",
            "sampler.tail_solver=euler", "loss.name=nft", "loss.clip_low=1e-4", "loss.clip_high=1e-4"]  # fmt: skip
    run = setup(tiny_config(tiny_model, *args))
    prompts = run.train_prompts[:2]
    batch = GENERATORS.get("sol-rl")(run, prompts, sample, run.cfg.rollout.generate.options)
    assert batch.metrics["rollout/pool"] == 12 and batch.metrics["rollout/kept"] == 8
    # the pool, explored again by hand: each prompt keeps the rule's choice of its six
    seed = run.cfg.seed * 1_000_003 + run.iteration
    seeds = [candidate_seed(seed, c) for c in range(12)]
    texts = [p for p in prompts for _ in range(6)]
    with torch.no_grad():
        images = generate_from_noise(run.policy, texts, seeds, resolution=run.cfg.model.resolution, num_steps=4)
        totals, _ = run.rewards(images, texts, torch.arange(12) // 6, None, run.inputs)
    chosen = torch.cat([p * 6 + select_candidates(totals[6 * p : 6 * p + 6], 4, "best-worst") for p in range(2)])
    torch.testing.assert_close(batch.components["explored"], totals[chosen].float(), rtol=0, atol=0)
    assert [batch.prompts[4 * k] for k in range(2)] == prompts  # each prompt's kept four, in order
    # regenerated from the same noise by the same ODE: the training rollout's images score as the explored ones
    regenerated = batch.rewards.float() @ run.rewards.weight_vector().float()
    torch.testing.assert_close(regenerated, batch.components["explored"], rtol=0, atol=1e-6)


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_regenerated_steps_train_at_ratio_one(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.core.rollout import GENERATORS
    from flowrl.image.trainer import sample, setup, train_step
    from flowrl.samplers import replay_log_prob

    args = ["rollout.generate.name=sol-rl", "rollout.generate.sol-rl.pool=5",
            "rollout.generate.sol-rl.explore_steps=2"]  # fmt: skip
    run = setup(tiny_config(tiny_model, *args))
    batch = GENERATORS.get("sol-rl")(run, run.train_prompts[:2], sample, run.cfg.rollout.generate.options)
    tr = batch.rollout.transitions
    assert len(tr) > 0
    with torch.no_grad():
        log_prob, _ = replay_log_prob(run.policy.velocity, tr, batch.cond, run.cfg.sampler.kind)
    assert torch.equal(log_prob, tr.log_prob)  # every stored step is the live policy's: ratio exactly 1
    metrics = train_step(run)
    assert metrics["rollout/pool"] == 10 and "reward/explored" in metrics and metrics["train/rows"] > 0
