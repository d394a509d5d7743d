"""Best-of-N fine-tuning (flowrl.core.losses.best_of_n): the selection and the loss by hand, and the trainer training
on each group's best samples only."""

from __future__ import annotations

import math

import pytest
import torch

from flowrl.core.losses import BestOfNOptions, LossConfig, LossInputs, compute_loss
from flowrl.core.losses.best_of_n import top_of_groups

BON_ARGS = ["loss.name=best-of-n", "sampler.mode=ode", "loss.best-of-n.renoise_count=2"]


def test_selection_by_hand():
    adv = torch.tensor([0.1, 0.9, -0.5, 0.9, 2.0, 2.0, 2.0, -1.0, 3.0])
    group = torch.tensor([7, 7, 7, 7, 3, 3, 3, 5, 5])
    # group 7: the first of the two 0.9s; group 3 ties throughout: none; group 5: sample 8
    assert top_of_groups(1)(adv, group).nonzero().squeeze(1).tolist() == [1, 8]
    # k = 2: both 0.9s; group 5 has 2 samples, so at most 1 of them
    assert top_of_groups(2)(adv, group).nonzero().squeeze(1).tolist() == [1, 3, 8]
    assert top_of_groups(9)(adv, group).nonzero().squeeze(1).tolist() == [0, 1, 3, 8]


def test_loss_by_hand():
    v = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    out = compute_loss("best-of-n", LossInputs(v_pred=v, v_target=target), LossConfig(), BestOfNOptions())
    assert out.loss.item() == pytest.approx(((1 + 4) / 2 + (4 + 0) / 2) / 2)
    kl = compute_loss("best-of-n", LossInputs(v_pred=v, v_target=target, v_ref=torch.zeros(2, 2)),
                      LossConfig(velocity_kl_coef=0.5), BestOfNOptions())  # fmt: skip
    assert kl.loss.item() == pytest.approx(2.25 + 0.5 * ((1 + 9) / 2 + 0) / 2)


def test_trainer_trains_each_groups_best_sample(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import advantages, sample, setup, train_step

    run = setup(tiny_config(tiny_model, *BON_ARGS))
    assert run.old is None  # ref_update_step = 1: the current policy samples (RAFT)
    batch = sample(run, run.train_prompts[:2])
    train, _ = advantages(run, batch)
    total = batch.rewards.sum(1)
    best = [int(total[:4].argmax()), 4 + int(total[4:].argmax())]
    # 8 samples × 2 levels; the mask keeps the two rows of each group's best
    assert train.mask.shape == (16,) and (train.mask.nonzero().squeeze(1) // 2).unique().tolist() == best
    before = [p.detach().clone() for p in run.params]
    out = train_step(run)
    assert out["train/rows"] == 4 and math.isfinite(out["fm_loss"])
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.params, before, strict=True))


def test_a_fixed_sampler_is_the_base_until_refreshed(tiny_model):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import setup, train_step

    run = setup(tiny_config(tiny_model, *BON_ARGS, "loss.best-of-n.ref_update_step=0"))
    assert run.old is not None and run.old_policy.samples
    base = [p.detach().clone() for p in run.params]
    train_step(run)
    train_step(run)
    assert all(torch.equal(o, b) for o, b in zip(run.old.shadow, base, strict=True))
