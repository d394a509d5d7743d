"""Scoring overlapped with sampling: the batch rolled out in blocks of whole prompts, each scored in a thread while
the next samples, is the batch of one rollout (samples, transitions in the same order, rewards, advantages)."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from devices import bitwise_on_cpu
from tiny_runs import MODE_OPTIONS, tiny_config

from flowrl.image.trainer import _root_blocks, advantages, sample, setup
from flowrl.samplers import Transitions


def _batch(tiny_model, overlap: bool, *args: str):
    run = setup(tiny_config(tiny_model, "train.sample_batch=4", f"train.overlap_rewards={str(overlap).lower()}",
                            "model.untrained_copy=none", *args))  # fmt: skip
    blocks = []
    real = run.clock.stage

    def counting(name, rows=0):
        if name == "rollout":
            blocks.append(name)
        return real(name, rows)

    run.clock.stage = counting
    return run, sample(run, run.train_prompts[:3]), len(blocks)


@pytest.mark.parametrize("mode", ["flow-grpo-fast", "branchgrpo"])
def test_blocks_scored_in_a_thread_give_the_batch_of_one_rollout(tiny_model, mode):
    args = [f"sampler.mode={mode}", *MODE_OPTIONS[mode], "train.prompts_per_step=3"]
    run, one, calls_one = _batch(tiny_model, False, *args)
    run, blocks, calls_blocks = _batch(tiny_model, True, *args)
    assert calls_one == 1 and calls_blocks == -(-a_roots(one) // 4)  # blocks of sample_batch = 4 roots
    a, b = one.rollout, blocks.rollout
    for name in ("samples", "group_id", "cond_index", "node_id"):
        assert bitwise_on_cpu(getattr(a, name), getattr(b, name)), name
    assert a.nfe == b.nfe
    for f in fields(Transitions):
        assert bitwise_on_cpu(getattr(a.transitions, f.name), getattr(b.transitions, f.name)), f.name
    assert bitwise_on_cpu(one.rewards, blocks.rewards) and one.prompts == blocks.prompts
    assert one.components.keys() == blocks.components.keys()
    for key, value in one.components.items():
        assert bitwise_on_cpu(value, blocks.components[key]), key
    rows_a, _ = advantages(run, one)
    rows_b, _ = advantages(run, blocks)
    assert bitwise_on_cpu(rows_a.advantages, rows_b.advantages) and torch.equal(rows_a.mask, rows_b.mask)


def a_roots(batch) -> int:
    return int(batch.rollout.cond_index.max()) + 1


def test_blocks_hold_whole_prompts_for_groupwise_rewards():
    roots = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])  # a process's share may end inside a prompt
    assert _root_blocks(roots, 0) == [(0, 10)]
    assert _root_blocks(roots, 4) == [(0, 4), (4, 8), (8, 10)]  # the rows of one rollout's forward passes
    assert _root_blocks(roots, 4, whole_prompts=True) == [(0, 6), (6, 10)]
    assert _root_blocks(roots, 3, whole_prompts=True) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert _root_blocks(roots, 100, whole_prompts=True) == [(0, 10)]
