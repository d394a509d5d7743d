"""Training objectives of the flow recipe: what one trained row is, and how its loss inputs are built.

A loss declares the objective it trains with (``LossFacts.trains_on``); the recipe looks the objective up and never
asks which method it runs. Each objective is one registered object with two parts:

- ``rows``: this process's rows and their advantages, from the estimator's per-sample advantages ``[N]``;
- ``__call__``: the loss of some of those rows under the current policy.

- ``transitions`` (Flow-GRPO and its family): a row is a stored denoising step, replayed for its log-prob and
  step mean (and the reference's);
- ``samples`` (AWM, DiffusionNFT): a row is a final clean sample x0 at one noise level of the sampling schedule
  (``LossFacts.levels`` says how many per sample), re-noised there for its velocity and flow-matching target (and
  the old policy's velocity when the loss declares ``old_policy``).

Adding an objective is one more registered object here plus its loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from flowrl.advantages import broadcast_to_transitions
from flowrl.losses import LOSSES, LossInputs, LossOutput, compute_loss
from flowrl.registry import Registry
from flowrl.samplers import index_cond, replay_log_prob
from flowrl.trainer.loop import process_seed
from flowrl.trainer.share import Whole
from flowrl.trainer.weights import reference_policy

if TYPE_CHECKING:
    from flowrl.config import Config
    from flowrl.trainer.flow import Batch, Run


@dataclass
class TrainRows:
    """What the update trains on: this process's rows (transitions ``[M]`` or final samples ``[N]``)."""

    advantages: Tensor
    mask: Tensor  # bool: rows with a gradient
    position: Tensor  # each row's position in the whole batch, in single-process order
    level: Tensor | None = None  # [M] schedule index each row is re-noised at (sample objectives)


class Objective(Protocol):
    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        """This process's rows from per-sample advantages and mask ``[N_local]``."""
        ...

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows, gen: torch.Generator) -> LossOutput:
        """The loss of ``rows`` (indices into this process's ``train`` rows); ``gen`` draws any noise."""
        ...


OBJECTIVES: Registry[Objective] = Registry("training objective")


def _col(t: Tensor | None) -> Tensor | None:
    """One trained step per row: ``[M, ...]`` -> ``[M, 1, ...]`` (the losses' ``[N, T]`` layout)."""
    return None if t is None else t.unsqueeze(1)


class ReplayTransitions:
    """Log-prob losses: each row is a stored transition, replayed under the current (and reference) policy."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        adv_t, mask_t = broadcast_to_transitions(adv, mask, batch.rollout.transitions.sample_id)
        return TrainRows(adv_t, mask_t, whole.transition_pos)

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows, gen: torch.Generator) -> LossOutput:
        cfg, policy, cond = run.cfg, run.policy, batch.cond
        adv = train.advantages[rows].to(run.accelerator.device)
        tr = batch.rollout.transitions.select(rows)
        log_prob, mean = replay_log_prob(policy.velocity, tr, cond, cfg.sampler.kind)
        ref_mean = None
        if cfg.loss.kl_coef > 0:
            with reference_policy(policy):
                _, ref_mean = replay_log_prob(policy.velocity, tr, cond, cfg.sampler.kind)
        inputs = LossInputs(
            log_prob=_col(log_prob),
            old_log_prob=_col(tr.log_prob),
            advantages=adv,
            mask=torch.ones_like(_col(log_prob), dtype=torch.bool),
            x_next=_col(tr.x_next),
            mean=_col(mean),
            old_mean=_col(tr.mean),
            ref_mean=_col(ref_mean),
            std=_col(tr.std),
            dt=_col(tr.sigma_next - tr.sigma),
        )
        return compute_loss(cfg.loss.name, inputs, cfg.loss)


def levels_per_sample(cfg: Config) -> int:
    """How many noise levels each clean sample trains at: 1, or DiffusionNFT's ``max(1, int(T·fraction))``."""
    if LOSSES.facts(cfg.loss.name).levels == "one":
        return 1
    return max(1, int(cfg.sampler.num_steps * cfg.train.timestep_fraction))


class RenoisedSamples:
    """Sample losses (AWM, DiffusionNFT): each row is a clean final sample x0 at one noise level σ of the sampling
    schedule, x_σ = (1 − σ)·x0 + σ·ε with fresh ε; the velocity is compared with the flow-matching target ε − x0
    (and with the base's velocity under ``loss.velocity_kl_coef``, and the old policy's for NFT).

    Rows are (sample, slot) pairs, K per sample (``levels_per_sample``): ``LossFacts.levels`` ``one`` draws each
    sample's level uniformly; ``subset`` gives each sample the first K of a random permutation of the T levels
    (DiffusionNFT's per-sample shuffled timesteps), so its K rows train at distinct levels."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        cfg = run.cfg
        k, n, t = levels_per_sample(cfg), adv.numel(), cfg.sampler.num_steps
        gen = torch.Generator().manual_seed(process_seed(run, cfg.seed * 6_700_417 + run.iteration))
        level = torch.stack([torch.randperm(t, generator=gen)[:k] for _ in range(n)]) if n else torch.zeros(0, k)
        position = whole.sample_pos.repeat_interleave(k) * k + torch.arange(k).repeat(n)
        return TrainRows(adv.repeat_interleave(k), mask.repeat_interleave(k), position, level.flatten().long())

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows, gen: torch.Generator) -> LossOutput:
        cfg, policy = run.cfg, run.policy
        sample = (rows // levels_per_sample(cfg)).to(batch.rollout.samples.device)
        x0 = batch.rollout.samples[sample]
        cond = index_cond(batch.cond, batch.rollout.cond_index[sample])
        levels = policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution)[:-1]
        sigma = levels[train.level[rows]].to(x0)
        eps = torch.randn(x0.shape, generator=gen).to(x0)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - s) * x0 + s * eps
        v_ref = v_old = None
        if cfg.loss.velocity_kl_coef > 0:
            with reference_policy(policy):
                v_ref = policy.velocity(x_t, sigma, cond)
        if run.old is not None:
            with torch.no_grad(), run.old.applied():
                v_old = policy.velocity(x_t, sigma, cond)
        v_pred = policy.velocity(x_t, sigma, cond)
        adv = train.advantages[rows].to(run.accelerator.device)
        inputs = LossInputs(advantages=adv, v_pred=v_pred, v_target=eps - x0, v_ref=v_ref, sigma=sigma,
                            v_old=v_old, x_t=x_t, x0=x0)  # fmt: skip
        return compute_loss(cfg.loss.name, inputs, cfg.loss)


OBJECTIVES.register("transitions")(ReplayTransitions())
OBJECTIVES.register("samples")(RenoisedSamples())

__all__ = ["OBJECTIVES", "Objective", "RenoisedSamples", "ReplayTransitions", "TrainRows", "levels_per_sample"]
