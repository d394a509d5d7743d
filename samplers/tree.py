"""The rollout core: a denoising tree with shared prefixes (BranchGRPO), of which a chain and a
singular branch are special cases.

At every step the *frontier* (the current states) is evaluated once, whatever the number of
leaves that will descend from it: a shared prefix costs one forward pass, not one per leaf.
At a split step each frontier state spawns ``branch_factor`` children with independent noise.
Steps marked stochastic (``sde_mask``) and split steps record transitions; all other steps are
Euler ODE steps. After the last stochastic step the remaining schedule can be handed to another
ODE solver on a coarser grid (MixGRPO-Flash) and, for G2RPO, decoded again with coarser tails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .ode import ode_solve, sigma_batch
from .schedules import subsample_sigmas
from .steps import check_kind, sample_step
from .transitions import Rollout, Transitions, Velocity, index_cond


def _check_inputs(x: Tensor, sigmas: Tensor, group_id: Tensor, sde_mask: Tensor) -> int:
    num_steps = sigmas.numel() - 1
    if sigmas.ndim != 1 or num_steps < 1:
        raise ValueError(f"sigmas must be a 1-D schedule of T + 1 >= 2 values, got shape {tuple(sigmas.shape)}")
    if group_id.shape != (x.shape[0],):
        raise ValueError(
            f"group_id has shape {tuple(group_id.shape)}; expected [{x.shape[0]}] (one per initial state)"
        )
    if sde_mask.shape != (num_steps,):
        raise ValueError(f"sde_mask has shape {tuple(sde_mask.shape)}; expected [{num_steps}] (one per step)")
    return num_steps


def tree_rollout(
    velocity: Velocity,
    x: Tensor,
    sigmas: Tensor,
    cond: Any,
    group_id: Tensor,
    *,
    kind: str = "flow_sde",
    noise_level: float = 0.7,
    sde_mask: Tensor | None = None,
    split_steps: Sequence[int] = (),
    branch_factor: int = 2,
    split_noise_level: float | None = None,
    tail_solver: str = "euler",
    tail_steps: int | None = None,
    extra_tail_steps: Sequence[int] = (),
    generator: torch.Generator | None = None,
    share: tuple[int, int] | None = None,
    ode_velocity: Velocity | None = None,
    tail_grid: Callable[[Tensor, int], Tensor] = subsample_sigmas,
) -> Rollout:
    """Sample a denoising tree from the initial states ``x`` (``[R, *S]`` at ``sigmas[0]``).

    Args:
        velocity: ``velocity(x [M, *S], sigma [M], cond) -> v [M, *S]``.
        sigmas: ``[T + 1]`` decreasing schedule ending at 0.
        cond: conditioning batch of R rows (tensor, dict or tuple of tensors, or None).
        group_id: ``[R]`` prompt group of each initial state.
        kind: step kind for stochastic steps (see ``flowrl.samplers.steps``).
        noise_level: a or η of stochastic steps; ``split_noise_level`` overrides it at split steps.
        sde_mask: ``[T]`` bool, stochastic (and trained) steps; default all. Split steps are always
            stochastic. BranchGRPO-Mix passes a mask that is False off the split/window steps.
        split_steps: step indices at which each state spawns ``branch_factor`` children.
        tail_solver, tail_steps: after the last stochastic step, solve the rest of the schedule with
            this ODE solver (``euler`` or ``dpm2m``) on ``tail_steps`` steps (default: as scheduled).
        extra_tail_steps: also decode the leaves with these coarser step counts (G2RPO);
            results land in ``Rollout.extra_samples``.
        ode_velocity: the velocity of the deterministic steps (ODE steps and tails), whose log-probs are never
            trained: a cheaper path (merged, low-precision weights) may serve them. Default: ``velocity``.
        tail_grid: how ``tail_steps`` re-discretise the tail: ``subsample_sigmas`` (default) or MixGRPO's
            ``respaced_tail(shift)``.
        share: ``(first, total)``: ``x`` holds roots ``first..first+R-1`` of a batch of ``total`` roots split over
            processes. Noise is drawn for the whole batch (each process keeps its rows) and node ids are the whole
            batch's, so the shares together equal the rollout of all ``total`` roots in one call.

    Returns a ``Rollout`` with ``R * branch_factor ** len(split_steps)`` samples in root-major order.
    Transitions from deterministic steps (std = 0, e.g. CPS into σ = 0) are not recorded.
    """
    check_kind(kind)
    splits, stochastic = _stochastic_steps(x, sigmas, group_id, sde_mask, split_steps, branch_factor)
    last_stochastic = int(stochastic.nonzero().max()) if stochastic.any() else -1
    sigma_cap = float(sigmas[1])
    values = [float(s) for s in sigmas]

    first, total = share or (0, x.shape[0])
    if not 0 <= first <= total - x.shape[0]:
        raise ValueError(f"share {share} does not hold the {x.shape[0]} given roots")
    node = first + torch.arange(x.shape[0])  # frontier state ids (the whole batch's numbering)
    root = torch.arange(x.shape[0])  # initial state each frontier state descends from
    next_id, depth, nfe, width = total, 0, 0, 1
    parts: list[Transitions] = []
    ode_velocity = ode_velocity or velocity
    for i in range(last_stochastic + 1):
        v = (velocity if stochastic[i] else ode_velocity)(x, sigma_batch(values[i], x), index_cond(cond, root))
        nfe += x.shape[0]
        if not stochastic[i]:
            x = sample_step("ode", x, v, values[i], values[i + 1]).x_next
            continue
        fan = branch_factor if i in splits else 1
        depth += int(fan > 1)
        if fan > 1:  # children share the parent's forward pass: repeat its inputs, not the network call
            x, v = x.repeat_interleave(fan, 0), v.repeat_interleave(fan, 0)
        parent, root = node.repeat_interleave(fan), root.repeat_interleave(fan)
        level = split_noise_level if (fan > 1 and split_noise_level is not None) else noise_level
        width *= fan  # frontier states per root
        rows = (first * width, total * width)
        out = sample_step(
            kind, x, v, values[i], values[i + 1], level, sigma_cap=sigma_cap, generator=generator, noise_rows=rows
        )
        node = next_id + rows[0] + torch.arange(x.shape[0])
        next_id += rows[1]
        if out.log_prob is not None:
            last_split_done = not any(s > i for s in splits)
            parts.append(_record(x, out, values[i], values[i + 1], i, depth, node, parent, root, group_id,
                                 last_split_done))  # fmt: skip
        x = out.x_next

    tail = sigmas[last_stochastic + 1 :]
    samples, extra, calls = _ode_tails(ode_velocity, x, tail, index_cond(cond, root), tail_solver, tail_steps,
                                       extra_tail_steps, tail_grid)  # fmt: skip
    transitions = Transitions.cat(parts) if parts else Transitions.empty(x)
    return Rollout(samples, group_id.cpu()[root], root, node, transitions, nfe + calls, extra)


def _stochastic_steps(
    x: Tensor, sigmas: Tensor, group_id: Tensor, sde_mask: Tensor | None, split_steps: Sequence[int], fan: int
) -> tuple[list[int], Tensor]:
    """The checked split steps (sorted) and the ``[T]`` mask of stochastic steps (the SDE mask plus the splits)."""
    num_steps = sigmas.numel() - 1
    sde_mask = torch.ones(num_steps, dtype=torch.bool) if sde_mask is None else sde_mask.to("cpu", torch.bool)
    _check_inputs(x, sigmas, group_id, sde_mask)
    splits = sorted(set(int(s) for s in split_steps))
    if any(not 0 <= s < num_steps for s in splits):
        raise ValueError(f"split_steps must lie in [0, {num_steps - 1}], got {list(split_steps)}")
    if splits and fan < 2:
        raise ValueError(f"branch_factor must be >= 2 when splitting, got {fan}")
    stochastic = sde_mask.clone()
    stochastic[splits] = True
    return splits, stochastic


def _record(
    x: Tensor, out: Any, sigma: float, sigma_next: float, step: int, depth: int, node: Tensor, parent: Tensor,
    root: Tensor, group_id: Tensor, last_split_done: bool,
) -> Transitions:  # fmt: skip
    """The transitions of one stochastic step of every frontier state ``[M]``. A step after the last split leads
    to exactly one final sample (its ``sample_id``); an earlier one is shared by several (``-1``)."""
    m = x.shape[0]
    return Transitions(
        x=x,
        x_next=out.x_next,
        mean=out.mean,
        std=out.std,
        log_prob=out.log_prob,
        sigma=torch.full_like(out.std, sigma),
        sigma_next=torch.full_like(out.std, sigma_next),
        step=torch.full((m,), step, dtype=torch.long),
        depth=torch.full((m,), depth, dtype=torch.long),
        node_id=node,
        parent_id=parent,
        sample_id=torch.arange(m) if last_split_done else torch.full((m,), -1),
        group_id=group_id.cpu()[root],
        cond_index=root,
    )


def _ode_tails(
    velocity: Velocity,
    x: Tensor,
    tail: Tensor,
    cond: Any,
    solver: str,
    steps: int | None,
    extra_steps: Sequence[int],
    grid_of: Callable[[Tensor, int], Tensor] = subsample_sigmas,
) -> tuple[Tensor, dict[int, Tensor], int]:
    """Solve the rest of the schedule ``tail`` (``[K + 1]`` sigmas) from the leaves ``x`` with the ODE ``solver``
    on ``steps`` steps (default: as scheduled), and again on each coarser count of ``extra_steps`` (G2RPO).
    Returns the samples, the coarser samples by step count, and the network evaluations spent."""
    nfe = 0
    if tail.numel() > 1:
        grid = grid_of(tail, min(steps, tail.numel() - 1)) if steps else tail
        samples, calls = ode_solve(solver, velocity, x, grid, cond)
        nfe += calls * x.shape[0]
    else:
        samples = x
    extra: dict[int, Tensor] = {}
    for n in extra_steps:
        if tail.numel() < 2:
            raise ValueError("extra_tail_steps need ODE steps after the last stochastic step")
        extra[n], calls = ode_solve(solver, velocity, x, subsample_sigmas(tail, n), cond)
        nfe += calls * x.shape[0]
    return samples, extra, nfe


__all__ = ["tree_rollout"]
