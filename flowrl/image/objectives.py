"""Training objectives of the flow recipe: what one trained row is, and how its loss inputs are built.

A loss declares the objective it trains with (``LossFacts.trains_on``); the recipe looks the objective up and never
asks which method it runs. Each objective is one registered object with two parts:

- ``rows``: this process's rows and their advantages, from the estimator's per-sample advantages of the whole
  gathered batch ``[N]`` (``whole.sample_pos`` says which samples this process holds);
- ``__call__``: the loss of some of those rows under the current policy.

- ``transitions`` (Flow-GRPO and its family): a row is a stored denoising step, replayed for its log-prob and
  step mean (and the reference's);
- ``samples`` (AWM, DiffusionNFT): a row is a final clean sample x0 at one noise level of the sampling schedule
  (its options' ``renoise`` scheme says how many per sample), re-noised there for its velocity and flow-matching
  target (and the old policy's velocity when the loss declares ``old_policy``);
- ``pairs`` (DPO): a row is a chosen and a rejected sample of one prompt group, both re-noised at one level with
  one noise, for the velocities of both under the policy and its reference;
- ``chains`` (ReFL, DRaFT): a row is a sample's sampling chain, re-run from its initial noise with its last steps
  differentiated, decoded and scored by the differentiable rewards.

Adding an objective is one more registered object here plus its loss.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from flowrl.core.advantages import broadcast_to_transitions
from flowrl.core.losses import LOSSES, LossInputs, LossOutput, Together, compute_loss
from flowrl.core.losses.dpo import choose_pairs
from flowrl.core.losses.renoise import Levels, draw_levels, levels_of
from flowrl.core.registry import Registry
from flowrl.core.share import Whole
from flowrl.core.weights import reference_policy
from flowrl.samplers import Velocity, index_cond, replay_log_prob

if TYPE_CHECKING:
    from flowrl.image.config import Config
    from flowrl.image.state import Batch, Run


@dataclass
class TrainRows:
    """What the update trains on: this process's rows (transitions ``[M]`` or final samples ``[N]``)."""

    advantages: Tensor
    mask: Tensor  # bool: rows with a gradient
    position: Tensor  # each row's position in the whole batch, in single-process order
    group: Tensor  # each row's prompt group (a whole-batch id), for objectives that keep groups together
    # sample objectives: each row's noise level, the seed of its noise ε, and (ratio losses) its old value
    sigma: Tensor | None = None  # [M]
    noise_seed: Tensor | None = None  # [M] int64
    old_value: Tensor | None = None  # [M]
    samples: int = 0  # the whole batch's samples or pairs (sample objectives draw levels for all of them)
    pair: Tensor | None = None  # [M, 2] pair objectives: each row's chosen and rejected sample (this process's)
    pair_reward: Tensor | None = None  # [M, 2] their configured (weighted) rewards
    pair_label: Tensor | None = None  # [M] a pair dataset's probability that the chosen is preferred


class Objective(Protocol):
    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        """This process's rows from the whole batch's per-sample advantages and mask ``[N]``."""
        ...

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows) -> LossOutput:
        """The loss of ``rows`` (indices into this process's ``train`` rows)."""
        ...

    def epoch_rows(self, run: Run, train: TrainRows, epoch: int) -> TrainRows:
        """The rows of inner epoch ``epoch`` (``train`` as ``rows`` made them is epoch 0's)."""
        ...


@dataclass(frozen=True)
class ObjectiveFacts:
    """What an objective declares: ``keeps``, the rows it needs in one optimizer step (``Together``)."""

    keeps: Together = Together.ROWS


OBJECTIVES: Registry[Objective, ObjectiveFacts] = Registry("training objective", ObjectiveFacts)


def _col(t: Tensor | None) -> Tensor | None:
    """One trained step per row: ``[M, ...]`` -> ``[M, 1, ...]`` (the losses' ``[N, T]`` layout)."""
    return None if t is None else t.unsqueeze(1)


def renoise_levels(cfg: Config) -> Levels:
    """The re-noising levels of ``cfg``'s sample objective (``flowrl.core.losses.renoise``)."""
    return levels_of(cfg.loss.options, cfg.sampler.num_steps, cfg.train.timestep_fraction)


class ReplayTransitions:
    """Log-prob losses: each row is a stored transition, replayed under the current (and reference) policy."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        adv, mask = adv[whole.sample_pos], mask[whole.sample_pos]
        adv_t, mask_t = broadcast_to_transitions(adv, mask, batch.rollout.transitions.sample_id)
        pos = whole.transition_pos
        return TrainRows(adv_t, mask_t, pos, whole.batch.tree.group_id[pos])

    def epoch_rows(self, run: Run, train: TrainRows, epoch: int) -> TrainRows:
        return train  # a stored transition is the same in every pass

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows) -> LossOutput:
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


class RenoisedSamples:
    """Sample losses (AWM, DiffusionNFT): each row is a clean final sample x0 at a noise level σ, re-noised as
    x_σ = (1 − σ)·x0 + σ·ε; the velocity is compared with the flow-matching target ε − x0 (and with the base's
    velocity under ``loss.velocity_kl_coef``, and the trailing copy's when the loss keeps one).

    Rows are (sample, slot) pairs, K per sample, their σ drawn by the configured scheme
    (``flowrl.core.losses.renoise``) for the whole batch at once and their ε from a per-row seed, both by the row's
    position in the whole batch: the same rows whatever the number of processes, and the same ε in every pass over
    a row. A loss that clips a ratio
    (``LossFacts.old_value``) gets each row's value under the policy before the update, computed here."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        cfg = run.cfg
        k, total = renoise_levels(cfg).per_sample, whole.batch.rewards.shape[0]
        select = LOSSES.facts(cfg.loss.name).selects(cfg.loss.options)
        if select is not None:  # the loss trains on some samples only (best-of-N: each group's top k)
            mask = mask & select(adv, whole.batch.group_id)
        adv, mask = adv[whole.sample_pos], mask[whole.sample_pos]
        position = whole.sample_pos.repeat_interleave(k) * k + torch.arange(k).repeat(adv.numel())
        group = batch.rollout.group_id.cpu().repeat_interleave(k)
        train = TrainRows(adv.repeat_interleave(k), mask.repeat_interleave(k), position, group, samples=total)
        train.sigma, train.noise_seed = self._draw(run, train, epoch=0)
        value = LOSSES.facts(cfg.loss.name).old_value(cfg.loss.options)
        if value is not None:  # the same noise in every inner epoch (refused otherwise: config.check_renoise)
            with torch.no_grad():
                parts = [value(self._inputs(run, batch, r, train, old=False), cfg.loss.options)
                         for r in torch.arange(len(position)).split(cfg.train.micro_batch)]  # fmt: skip
            train.old_value = torch.cat(parts).cpu() if parts else torch.zeros(0)
        return train

    def epoch_rows(self, run: Run, train: TrainRows, epoch: int) -> TrainRows:
        if epoch == 0 or not run.cfg.loss.options.renoise_each_epoch:
            return train
        sigma, seed = self._draw(run, train, epoch)
        return replace(train, sigma=sigma, noise_seed=seed)

    @staticmethod
    def _draw(run: Run, train: TrainRows, epoch: int) -> tuple[Tensor, Tensor]:
        """Each row's noise level ``[M]`` and noise seed ``[M]`` for inner epoch ``epoch``: drawn for the whole batch
        from (seed, iteration, epoch) and taken by the rows' positions, so the same on every process."""
        cfg = run.cfg
        levels = renoise_levels(cfg)
        k = levels.per_sample
        gen = torch.Generator().manual_seed(cfg.seed * 6_700_417 + run.iteration + epoch * 1_000_000_007)
        sigmas = run.policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution)
        sigma = draw_levels(levels, sigmas, train.samples, gen)[train.position[::k] // k].flatten()
        base = (cfg.seed * 7_368_787 + run.iteration) * 1_000_033 + epoch * 2**40
        return sigma, (base + train.position) % 2**62

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows) -> LossOutput:
        inputs = self._inputs(run, batch, rows, train, old=True)
        inputs.advantages = train.advantages[rows].to(run.accelerator.device)
        if train.old_value is not None:
            inputs.old_log_prob = train.old_value[rows].to(inputs.v_pred)
        return compute_loss(run.cfg.loss.name, inputs, run.cfg.loss)

    @staticmethod
    def _inputs(run: Run, batch: Batch, rows: Tensor, train: TrainRows, old: bool) -> LossInputs:
        sample = rows // renoise_levels(run.cfg).per_sample
        return renoised_inputs(run, batch, sample, train.sigma[rows], train.noise_seed[rows], old)


def renoised_inputs(run: Run, batch: Batch, sample: Tensor, sigma: Tensor, seeds: Tensor, old: bool) -> LossInputs:
    """The velocities at the clean samples ``sample`` ``[R]`` (indices into this process's batch) re-noised at
    ``sigma`` ``[R]`` with the noise of ``seeds`` ``[R]`` (with ``old``: the reference's and the trailing copy's
    too, as configured)."""
    cfg, policy = run.cfg, run.policy
    x0 = batch.rollout.samples[sample.to(batch.rollout.samples.device)]  # on the accelerator
    cond = index_cond(batch.cond, batch.rollout.cond_index[sample.to(batch.rollout.cond_index.device)])
    sigma = sigma.to(x0)
    eps = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds.tolist()])
    eps = eps.to(x0)
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * eps
    v_ref = v_old = None
    with policy.unguided():  # the prompt's own velocity, also where guided rollouts made the samples
        if old and cfg.loss.velocity_kl_coef > 0:
            with reference_policy(policy):
                v_ref = policy.velocity(x_t, sigma, cond)
        if old and run.old is not None:
            with torch.no_grad(), run.old.applied():
                v_old = policy.velocity(x_t, sigma, cond)
        v_pred = policy.velocity(x_t, sigma, cond)
    return LossInputs(v_pred=v_pred, v_target=eps - x0, v_ref=v_ref, sigma=sigma, v_old=v_old, x_t=x_t, x0=x0)


class PreferencePairs:
    """Pair losses (DPO): each row is a (chosen, rejected) pair of one prompt group's samples at a noise level σ,
    both re-noised with the same ε; the loss reads the policy's and the reference's (the trailing copy's) velocity
    at both, chosen rows first.

    The pairs are chosen from the whole batch's advantages (``loss.<name>.pairing``; within a group the estimator's
    advantage ranks as the reward does) and numbered in the whole batch's order, so that, as for samples, σ and ε
    follow from a row's position whatever the number of processes. A group stays on one process (the config asks
    for ``train.prompts_per_step`` divisible by the processes), so both members of a pair are this process's."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        options, k = run.cfg.loss.options, renoise_levels(run.cfg).per_sample
        usable = mask.nonzero().squeeze(1)  # a filtered-out sample makes no pair
        chosen, rejected = choose_pairs(adv[usable], whole.batch.group_id[usable], options.pairing, options.pairs)
        chosen, rejected = usable[chosen], usable[rejected]
        local = torch.full((adv.numel(),), -1, dtype=torch.long)
        local[whole.sample_pos] = torch.arange(whole.sample_pos.numel())
        mine = (local[chosen] >= 0).nonzero().squeeze(1)
        if bool((local[rejected[mine]] < 0).any()):
            raise RuntimeError("a preference pair spans two processes: its group was dealt to both")
        position = mine.repeat_interleave(k) * k + torch.arange(k).repeat(mine.numel())
        pair = torch.stack([local[chosen[mine]], local[rejected[mine]]], dim=1).repeat_interleave(k, dim=0)
        gap = (adv[chosen[mine]] - adv[rejected[mine]]).repeat_interleave(k)
        group = whole.batch.group_id[chosen[mine]].repeat_interleave(k)
        train = TrainRows(gap, torch.ones_like(gap, dtype=torch.bool), position, group, samples=chosen.numel())
        total = whole.batch.combined()  # [N] the configured (weighted) reward
        train.pair = pair
        train.pair_reward = torch.stack([total[chosen[mine]], total[rejected[mine]]], 1).repeat_interleave(k, 0)
        if batch.labels is not None:
            train.pair_label = batch.labels[local[chosen[mine]]].repeat_interleave(k)
        train.sigma, train.noise_seed = RenoisedSamples._draw(run, train, epoch=0)
        return train

    def epoch_rows(self, run: Run, train: TrainRows, epoch: int) -> TrainRows:
        return RenoisedSamples().epoch_rows(run, train, epoch)

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows) -> LossOutput:
        if train.pair.numel():
            pair, sigma, seeds = train.pair[rows], train.sigma[rows], train.noise_seed[rows]
            rewards = train.pair_reward[rows]
        else:  # a process without pairs keeps in step with the others (a zero-weight pass)
            pair, sigma, seeds = torch.zeros(1, 2, dtype=torch.long), torch.full((1,), 0.5), torch.zeros(1).long()
            rewards = torch.zeros(1, 2)
        sample, sigma = pair.T.flatten(), sigma.repeat(2)
        refinements = LOSSES.facts(run.cfg.loss.name).inversion(run.cfg.loss.options)
        if refinements is None:
            inputs = renoised_inputs(run, batch, sample, sigma, seeds.repeat(2), old=True)
        else:
            inputs = inverted_inputs(run, batch, sample, sigma, refinements)
        inputs.pair_rewards = rewards.to(inputs.v_pred.device)
        if train.pair_label is not None and train.pair.numel():
            inputs.pair_labels = train.pair_label[rows].to(inputs.v_pred.device)
        return compute_loss(run.cfg.loss.name, inputs, run.cfg.loss)


def inverted_inputs(run: Run, batch: Batch, sample: Tensor, sigma: Tensor, refinements: int) -> LossInputs:
    """The velocities of the policy and its trailing copy at the clean samples ``sample`` ``[R]`` inverted to
    ``sigma`` ``[R]`` by the policy's own ODE (``invert``, no gradient), and the flow-matching target the inverted
    state implies: ε̂ = (x_σ − (1 − σ)·x0)/σ, target ε̂ − x0 (SmPO)."""
    cfg, policy = run.cfg, run.policy
    x0 = batch.rollout.samples[sample.to(batch.rollout.samples.device)]
    cond = index_cond(batch.cond, batch.rollout.cond_index[sample.to(batch.rollout.cond_index.device)])
    sigma = sigma.to(x0)
    grid = policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution).flip(0).to(x0)  # 0 → σ_max
    with policy.unguided():
        with torch.no_grad():
            x_t = invert(policy.velocity, x0, sigma, grid, cond, refinements)
        s = sigma.view(-1, *([1] * (x0.dim() - 1)))
        eps = (x_t - (1 - s) * x0) / s
        with torch.no_grad(), run.old.applied():
            v_old = policy.velocity(x_t, sigma, cond)
        v_pred = policy.velocity(x_t, sigma, cond)
    return LossInputs(v_pred=v_pred, v_target=eps - x0, v_old=v_old, sigma=sigma, x_t=x_t, x0=x0)


def invert(velocity: Velocity, x0: Tensor, sigma: Tensor, grid: Tensor, cond: dict, refinements: int) -> Tensor:
    """x0 ``[R, *S]`` carried backwards along the ODE to the levels ``sigma`` ``[R]``: Euler steps up the ascending
    ``grid`` (each row's last one cut at its σ), each refined by ReNoise ``refinements`` times: v = mean of the
    velocities at the step's start and at the current estimate of its end, both read at the start level (as SmPO's
    code)."""
    x = x0.clone()
    view = (-1, *([1] * (x0.dim() - 1)))
    for lo, hi in itertools.pairwise(grid.tolist()):
        start, end = sigma.clamp(max=lo), sigma.clamp(max=hi)
        step = (end - start).view(view)
        if not bool((step > 0).any()):
            break
        v = velocity(x, start, cond)
        moved, total = x + step * v, v
        for k in range(refinements):
            total = total + velocity(moved, start, cond)
            moved = x + step * total / (k + 2)
        x = moved
    return x


class RewardGradient:
    """Chain losses (ReFL, DRaFT; ``flowrl.core.losses.reward_backprop``): each row is a sample's chain, re-run from
    its initial noise with the current weights on Euler steps of the schedule, without gradient up to the loss's first
    differentiated step (one draw per micro-batch), then with gradient (each network pass checkpointed) to the end,
    or in one x0 prediction (ReFL), or through re-noised copies of the last step (DRaFT-LV); decoded with gradient and
    scored by the configured rewards, all differentiable, weighted as configured."""

    def rows(self, run: Run, batch: Batch, whole: Whole, adv: Tensor, mask: Tensor) -> TrainRows:
        n, group = whole.sample_pos.numel(), batch.rollout.group_id.cpu()
        return TrainRows(torch.zeros(n), torch.ones(n, dtype=torch.bool), whole.sample_pos, group)

    def epoch_rows(self, run: Run, train: TrainRows, epoch: int) -> TrainRows:
        return train

    def __call__(self, run: Run, batch: Batch, rows: Tensor, train: TrainRows) -> LossOutput:
        cfg, policy = run.cfg, run.policy
        plan = LOSSES.facts(cfg.loss.name).chain(cfg.loss.options)
        sigmas = policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution).to(batch.noise.device)
        steps = len(sigmas) - 1
        seed = (cfg.seed * 7_368_787 + run.iteration) * 1_000_033 + int(train.position[rows].min())
        gen = torch.Generator().manual_seed(seed % 2**62)
        first = plan.first(steps, gen)
        local = rows.to(batch.noise.device)
        cond = index_cond(batch.cond, batch.rollout.cond_index[local.to(batch.rollout.cond_index.device)])
        x = batch.noise[local]
        with torch.no_grad():
            for i in range(first):
                x = x + (sigmas[i + 1] - sigmas[i]) * policy.velocity(x, sigmas[i].expand(len(x)), cond)
        x0 = chain_end(policy.velocity, x, sigmas, first, cond, plan, gen)
        prompts = [batch.prompts[int(r)] for r in rows]
        copies = max(1, plan.copies)
        reward = differentiable_reward(run, policy.decode(x0), prompts * copies).view(copies, -1).mean(0)
        return compute_loss(cfg.loss.name, LossInputs(reward=reward), cfg.loss)


def chain_end(velocity: Velocity, x: Tensor, sigmas: Tensor, first: int, cond: dict, plan, gen) -> Tensor:
    """The clean samples ``[R·copies, *S]`` from the states ``x`` at step ``first``, with gradient: Euler steps to the
    end, each network pass checkpointed; or one x0 prediction x − σ·v (``plan.jump``); or, for DRaFT-LV, the finished
    chain (no gradient) re-noised ``plan.copies`` times to the last step's level and each copy denoised in one pass."""
    from torch.utils.checkpoint import checkpoint

    def v(state: Tensor, i: int, rows_cond: dict) -> Tensor:
        s = sigmas[i].expand(len(state))
        return checkpoint(velocity, state, s, rows_cond, use_reentrant=False)

    if plan.jump:
        return x - sigmas[first] * v(x, first, cond)
    if plan.copies:
        last = len(sigmas) - 2
        with torch.no_grad():
            for i in range(first, last + 1):
                x = x + (sigmas[i + 1] - sigmas[i]) * velocity(x, sigmas[i].expand(len(x)), cond)
        eps = torch.randn((plan.copies, *x.shape), generator=gen).to(x)
        noisy = ((1 - sigmas[last]) * x + sigmas[last] * eps).flatten(0, 1)
        repeated = {k: t.repeat(plan.copies, *([1] * (t.dim() - 1))) for k, t in cond.items()}
        return noisy - sigmas[last] * v(noisy, last, repeated)
    for i in range(first, len(sigmas) - 1):
        x = x + (sigmas[i + 1] - sigmas[i]) * v(x, i, cond)
    return x


def differentiable_reward(run: Run, images: Tensor, prompts: list[str]) -> Tensor:
    """The configured rewards' weighted sum ``[B]`` of ``images`` ``[B, 3, H, W]`` (or videos), with its gradient."""
    total = 0
    for name, fn in run.rewards.rewards.items():
        total = total + run.rewards.weights[name] * fn(images, prompts)["score"].to(images.device)
    return total


OBJECTIVES.register("transitions", keeps=Together.ROWS)(ReplayTransitions())
OBJECTIVES.register("samples", keeps=Together.ROWS)(RenoisedSamples())
OBJECTIVES.register("pairs", keeps=Together.ROWS)(PreferencePairs())  # a pair is one row: never split
OBJECTIVES.register("chains", keeps=Together.ROWS)(RewardGradient())

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveFacts",
    "PreferencePairs",
    "RenoisedSamples",
    "ReplayTransitions",
    "RewardGradient",
    "TrainRows",
    "invert",
    "inverted_inputs",
    "renoised_inputs",
]
