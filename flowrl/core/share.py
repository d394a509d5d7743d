"""One iteration's batch split over processes, and gathered back where the whole batch is needed.

Every process draws the same prompts; the batch's roots (initial noises, or trees) are dealt out in
contiguous blocks, so a prompt's group may span processes. Each process samples and scores its block with
exactly the noise it would get in a single process's batch (``tree_rollout(share=...)``). What couples the
samples, the advantages, is computed on the gathered whole batch by every process alike, and each keeps its
rows. The update then walks the whole batch's rows in the single-process order, each process training the
ones it holds (``step_rows``), so N processes make the same update as one process on the same batch (up
to float summation order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from flowrl.core.advantages import AdvantageBatch, TreeStructure
from flowrl.core.errors import ConfigError


def gather_all(acc: Any, value: Any) -> list[Any]:
    """Every process's ``value`` (picklable; tensors on the CPU), in process order: a collective."""
    if acc.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def deal(total: int, num_processes: int, index: int) -> tuple[int, int]:
    """``(first, count)``: the block of ``total`` roots that process ``index`` samples."""
    if total % num_processes:
        raise ConfigError(f"{total} roots per iteration cannot be dealt out evenly to {num_processes} processes")
    count = total // num_processes
    return index * count, count


@dataclass
class Whole:
    """The gathered batch and where this process's rows sit in it.

    ``sample_pos`` ``[N_local]`` and ``transition_pos`` ``[M_local]`` are positions in the whole batch's
    samples ``[N]`` and transitions ``[M]``, both in the order one process sampling everything would have."""

    batch: AdvantageBatch
    sample_pos: Tensor
    transition_pos: Tensor


def gather_batch(acc: Any, local: AdvantageBatch) -> Whole:
    """Every process's ``AdvantageBatch`` put together in single-process order (a collective)."""
    n_local = local.rewards.shape[0]
    m_local = 0 if local.tree is None else local.tree.node_id.numel()
    if acc.num_processes == 1:
        return Whole(local, torch.arange(n_local), torch.arange(m_local))
    parts: list[AdvantageBatch] = gather_all(acc, _to_cpu(local))
    sample_offset = sum(p.rewards.shape[0] for p in parts[: acc.process_index])
    rewards = torch.cat([p.rewards for p in parts])
    granular = None if local.granular_rewards is None else torch.cat([p.granular_rewards for p in parts], dim=1)
    keys = None if local.prompt_keys is None else [k for p in parts for k in p.prompt_keys]
    whole = replace(
        local,
        rewards=rewards,
        group_id=torch.cat([p.group_id for p in parts]),
        prompt_keys=keys,
        granular_rewards=granular,
        strata=None if local.strata is None else torch.cat([p.strata for p in parts]),
        tree=None,
        # preferences are only within a group, and a group never spans processes (its rewards are groupwise)
        pairwise=None if local.pairwise is None else torch.block_diag(*[p.pairwise for p in parts]),
    )
    transition_pos = torch.arange(m_local)
    if local.tree is not None:
        # each process lists its transitions step by step; one process lists each step's whole frontier in turn
        step = torch.cat([p.tree.step for p in parts])
        order = torch.sort(step, stable=True).indices
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())
        offset = sum(p.tree.node_id.numel() for p in parts[: acc.process_index])
        transition_pos = position[offset : offset + m_local]
        whole.tree = TreeStructure(
            **{
                f.name: torch.cat([getattr(p.tree, f.name) for p in parts])[order]
                for f in fields(TreeStructure)
                if f.name != "leaf_node_id"
            },
            leaf_node_id=torch.cat([p.tree.leaf_node_id for p in parts]),
        )
    return Whole(whole, sample_offset + torch.arange(n_local), transition_pos)


def _to_cpu(batch: AdvantageBatch) -> AdvantageBatch:
    """Tensors on the CPU: a pickled GPU tensor would arrive on the sender's device."""
    out = {f.name: getattr(batch, f.name) for f in fields(AdvantageBatch)}
    out = {k: v.cpu() if isinstance(v, Tensor) else v for k, v in out.items()}
    if batch.tree is not None:
        out["tree"] = TreeStructure(**{f.name: getattr(batch.tree, f.name).cpu() for f in fields(TreeStructure)})
    return AdvantageBatch(**out)


@dataclass
class UpdateStep:
    """One optimizer step: this process's rows (indices into its kept rows, in order), the step's row count over all
    processes, and the most backward calls any process needs for it (all must make that many, see
    ``flowrl.core.update``)."""

    rows: Tensor
    total: int
    calls: int


def step_rows(
    kept: list[Tensor],
    index: int,
    minibatches: int,
    micro_batch: int,
    generator: torch.Generator,
    units: list[Tensor] | None = None,
) -> list[UpdateStep]:
    """One inner epoch's optimizer steps. ``kept[p]`` are the whole-batch positions of process ``p``'s kept rows
    (in its local order); the rows are shuffled with ``generator`` (the same on every process) and cut into
    ``minibatches`` steps as one process holding every row would. With ``units`` (``units[p]``: a whole-batch unit
    id per row of ``kept[p]``), the units are shuffled instead and each unit's rows stay together in position
    order (a prompt's completions share their prompt's pass)."""
    owner = torch.cat([torch.full((k.numel(),), p) for p, k in enumerate(kept)])
    local = torch.cat([torch.arange(k.numel()) for k in kept])
    position = torch.cat(kept)
    by_position = position.argsort()
    if units is None:
        order = by_position[torch.randperm(position.numel(), generator=generator)]
    else:
        unit = torch.cat(units)[by_position]
        ids = unit.unique()
        order = torch.cat([by_position[unit == u] for u in ids[torch.randperm(len(ids), generator=generator)]])
    steps = []
    for chunk in order.chunk(minibatches) if order.numel() else []:
        counts = torch.bincount(owner[chunk], minlength=len(kept))
        calls = max(math.ceil(int(c) / micro_batch) for c in counts)
        steps.append(UpdateStep(local[chunk[owner[chunk] == index]], chunk.numel(), calls))
    return steps


__all__ = ["UpdateStep", "Whole", "deal", "gather_all", "gather_batch", "step_rows"]
