"""One update loop for every recipe: the rows of an iteration (replayed transitions, re-noised samples, token
sequences), dealt into optimizer steps as one process holding every row would deal them, each step's gradient
accumulated over micro-batches and applied.

    for each of train.inner_epochs passes:
        row_loss.new_epoch(epoch)                     e.g. re-noised samples draw their levels and noise again
        deal the whole batch's rows into train.minibatches steps (``step_rows``: one shuffle, the same on every
        process; a prompt group's rows stay together when the objective or the loss declares it)
        for each step:
            row_loss.start(step)                      every process, even one without rows in this step
            backward(loss(micro-batch) · weight)      this process's rows of the step, then zero-weight passes
                                                      until every process has made as many backward calls
            clip, step (skipped when any loss or the gradient is not finite), after_step()

The recipe supplies the rows' whole-batch positions and a ``RowLoss``: the loss of a micro-batch of its rows and
that micro-batch's weight in the step's gradient (its share of the step's rows or tokens over all processes, times
the number of processes, whose gradients the parallel layer averages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from flowrl.core.losses import LOSSES, Together, together
from flowrl.core.share import UpdateStep, gather_all, step_rows

if TYPE_CHECKING:
    from flowrl.core.losses import LossOutput
    from flowrl.core.state import RunState


class RowLoss(Protocol):
    """What the update loop trains: a recipe's objective over this process's rows (local indices ``[M]``).
    ``keeps`` is what its rows need in one step (the objective's declaration); the configured loss's own
    (``LossFacts.keeps``) is added by the loop."""

    keeps: Together

    def new_epoch(self, index: int) -> None:
        """Before inner epoch ``index`` (from 0), on every process: e.g. draw the rows' noise again."""

    def start(self, step: UpdateStep) -> None:
        """Before a step's passes, on every process (a collective is allowed, e.g. the step's token count)."""

    def __call__(self, rows: Tensor) -> tuple[LossOutput, float]:
        """The loss of the micro-batch ``rows`` and its weight in the step's gradient."""

    def filler(self) -> LossOutput:
        """A pass on any one row (also on a process without rows), backpropagated with weight 0."""


def update(
    run: RunState,
    positions: Tensor,
    row_loss: RowLoss,
    groups: Tensor,
    after_step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Train on this process's rows: ``positions`` ``[R]`` are their places in the whole batch (local order;
    row ``i`` of ``row_loss`` is ``positions[i]``), ``groups`` ``[R]`` their prompt groups (whole-batch ids), kept
    in one step when the objective or the loss declares ``Together.GROUPS``. Returns the row-weighted means of the
    loss metrics over the applied steps, ``train/loss``, ``train/grad_norm``, ``train/skipped_steps`` and
    ``train/rows`` (this process's)."""
    t, acc = run.cfg.train, run.accelerator
    kept = gather_all(acc, positions.cpu())
    keeps = together(row_loss.keeps, LOSSES.facts(run.cfg.loss.name).keeps)
    kept_units = gather_all(acc, groups.cpu()) if keeps is Together.GROUPS else None
    if not any(k.numel() for k in kept):  # no process has a row
        return {"train/rows": 0.0, "train/skipped_steps": 0.0}
    order = torch.Generator().manual_seed(run.cfg.seed * 7919 + run.iteration)  # the same on every process
    sums: dict[str, float] = {}
    count = skipped = 0
    for epoch in range(t.inner_epochs):
        row_loss.new_epoch(epoch)
        for step in step_rows(kept, acc.process_index, t.minibatches, t.micro_batch, order, kept_units):
            step_sums: dict[str, float] = {}
            row_loss.start(step)
            _accumulate(run, row_loss, step, step_sums)
            with run.clock.stage("optimizer"):
                norm = run.parallel.step(t.max_grad_norm, step_sums)
            if norm is None:  # nothing changed
                skipped += 1
                continue
            step_sums["train/grad_norm"] = norm * step.rows.numel()
            if after_step is not None:
                after_step()
            for k, v in step_sums.items():
                sums[k] = sums.get(k, 0.0) + v
            count += step.rows.numel()
    metrics = {k: v / count for k, v in sums.items()} if count else {}
    metrics["train/rows"] = float(positions.numel())
    metrics["train/skipped_steps"] = float(skipped)
    return metrics


def _accumulate(run: RunState, row_loss: RowLoss, step: UpdateStep, sums: dict[str, float]) -> None:
    """Backward passes of one optimizer step: this process's rows in micro-batches, each loss times its weight,
    then zero-weight passes up to ``step.calls`` (a parallel layer that syncs in backward needs equal counts)."""
    pieces = step.rows.split(run.cfg.train.micro_batch) if step.rows.numel() else ()  # no rows: fillers only
    for k, mb in enumerate(pieces):
        with run.clock.stage("replay_forward", mb.numel()):
            out, weight = row_loss(mb)
        with run.clock.stage("backward", mb.numel()):
            run.parallel.backward(out.loss * weight, last=k == step.calls - 1)
        for name, v in out.metrics.items():
            sums[name] = sums.get(name, 0.0) + v * mb.numel()
        sums["train/loss"] = sums.get("train/loss", 0.0) + out.loss.item() * mb.numel()
    for k in range(len(pieces), step.calls):  # these passes only keep this process in step with the others
        run.parallel.backward(row_loss.filler().loss * 0.0, last=k == step.calls - 1)


__all__ = ["RowLoss", "update"]
