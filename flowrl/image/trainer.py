"""The flow-GRPO training recipe: setup → sample → score → advantages → update → log / save.

Each stage is a plain function of a ``Run`` (the objects built once by ``setup``) so the loop in
``train`` reads like the algorithm. The sampler mode, advantage estimator, loss and rewards are
looked up by name in their registries; nothing below branches on those names.

Several processes (``accelerate launch``; DDP, or FSDP, see ``flowrl.core.sharding``): every process draws
the same ``train.prompts_per_step`` prompts and samples and scores its block of the batch's roots with the noise
a single process would use; rewards are gathered and every process computes the whole batch's advantages
(``flowrl.core.share``), so a group may span processes and batch-wide statistics are the whole batch's. The
update walks the rows in one process's order, each process training its own, and gradients are averaged: N
processes make one process's update. Metrics are the same on every process.

A non-finite reward, loss or gradient skips that update (counted in ``train/skipped``); after
``train.max_consecutive_skips`` skipped iterations in a row the run stops with ``TrainingStopped``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowrl.core.advantages import AdvantageBatch, TreeStructure, compute_advantages
from flowrl.core.advantages.core import combine
from flowrl.core.errors import ConfigError
from flowrl.core.inputs import row_inputs, row_key
from flowrl.core.loop import count_skip, draw_prompts, lr_scheduler, mean_over_processes, process_seed
from flowrl.core.losses import LOSSES, LossOutput, Together, TrainsOn, trains_on
from flowrl.core.monitor import TrainingMonitor
from flowrl.core.parallel import launch
from flowrl.core.rollout import GENERATORS, filter_rollouts, make_control, zero_variance_share
from flowrl.core.share import UpdateStep, Whole, deal, gather_all, gather_batch
from flowrl.core.update import update as shared_update
from flowrl.core.weights import EMA, frozen_copy, make_trainable
from flowrl.image.config import Config, check_reward_kinds, window_of
from flowrl.image.data import inputs_by_prompt, load_prompt_set
from flowrl.image.evaluation import block_monitors, monitor_metrics, prompt_groups, score_images
from flowrl.image.generate import generate
from flowrl.image.models import FAMILIES, lora_targets, policy_for
from flowrl.image.models.common import in_chunks, set_attention_backend
from flowrl.image.models.untrained import compile_policy, untrained_copy
from flowrl.image.objectives import OBJECTIVES, Objective, TrainRows
from flowrl.image.pairs import load_pair_latents, pair_batch
from flowrl.image.state import Batch, Run
from flowrl.rewards import RewardSet, is_groupwise, is_user_reward
from flowrl.samplers import (
    WINDOW_SCHEDULES,
    Rollout,
    WindowSchedule,
    cat_rollouts,
    index_cond,
    make_window,
    tree_rollout,
)
from flowrl.samplers.modes import ROLLOUT_MODES, RolloutPlan, step_subset

if TYPE_CHECKING:
    pass

log = logging.getLogger("flowrl")


def setup(cfg: Config) -> Run:
    """Load the model, add LoRA or unfreeze it, build optimizer, EMA, rewards, window and data."""
    from accelerate.utils import DistributedDataParallelKwargs

    torch.manual_seed(cfg.seed)  # the same initial LoRA weights on every process
    # some trainable weights get no gradient (SD3's last block discards its text stream): DDP must look for them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator, parallel = launch(cfg.model.mixed_precision, kwargs_handlers=[ddp])
    rewards = RewardSet.from_specs([vars(r) for r in cfg.rewards])  # before the model: a bad reward fails fast
    m = cfg.model
    policy = policy_for(m, cfg.sampler.shift, accelerator.device)
    check_reward_kinds(cfg, FAMILIES.facts(policy.pipeline_class).video)  # a hub id's family is known only now
    if m.finetune == "full" and (cfg.loss.kl_coef > 0 or cfg.loss.velocity_kl_coef > 0):
        policy.reference = frozen_copy(policy.transformer)  # LoRA runs disable the adapter instead
    params = make_trainable(policy.transformer, m.finetune, m.lora_rank, m.lora_alpha, lora_targets(m, policy))
    set_attention_backend(policy.transformer, m.attention_backend)
    if m.gradient_checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    policy.check_parallel(parallel.sharded)
    policy.untrained = untrained_copy(policy, m.untrained_copy, m.finetune == "lora", parallel.sharded)
    t = cfg.train
    prepared, optimizer, params = parallel.prepare(
        policy.transformer,
        params,
        lambda ps: torch.optim.AdamW(ps, lr=t.lr, weight_decay=t.weight_decay),
        micro_batch=t.micro_batch,
        max_grad_norm=t.max_grad_norm,
        mixed_precision=m.mixed_precision,
    )
    # policy.transformer stays the plain module (config, adapters); passes with gradients go through the wrapper
    policy.prepared = None if prepared is policy.transformer else prepared
    if m.compile:
        compile_policy(policy, parallel.sharded)
    kind, size = window_of(cfg.sampler)
    options = dict(cfg.sampler.window_options)
    if WINDOW_SCHEDULES.facts(kind).seeded:
        options.setdefault("seed", cfg.seed)
    window = make_window(kind, cfg.sampler.num_steps, size, **options)
    train_set, eval_set = load_prompt_set(cfg.data.train_prompts), load_prompt_set(cfg.data.eval_prompts)
    _check_split(cfg, window, rewards, len(train_set.prompts), accelerator.num_processes)
    old_policy = LOSSES.facts(cfg.loss.name).old_policy(cfg.loss.options)
    pairs = load_pair_latents(cfg, policy, accelerator) if cfg.data.pairs else None
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        parallel=parallel,
        policy=policy,
        params=params,
        optimizer=optimizer,
        ema=EMA(params, t.ema_decay) if t.ema_decay > 0 else None,
        old=EMA(params, 0.0) if old_policy is not None else None,
        old_policy=old_policy,
        scheduler=lr_scheduler(optimizer, t.lr_schedule, t.warmup_iterations, t.iterations),
        rewards=rewards,
        window=window,
        train_prompts=train_set.prompts,
        eval_prompts=eval_set.prompts,
        inputs=inputs_by_prompt((cfg.data.train_prompts, train_set), (cfg.data.eval_prompts, eval_set)),
        rng=random.Random(cfg.seed),
        watch=RewardSet.from_specs([vars(r) for r in cfg.eval.watch_rewards]) if cfg.eval.watch_rewards else None,
        monitor=TrainingMonitor(cfg.eval.watch_drop, cfg.eval.diversity_drop),
        control=make_control(cfg.rollout.control),
        pairs=pairs,
    )


def _check_split(cfg: Config, window: WindowSchedule, rewards: RewardSet, pool: int, processes: int) -> None:
    """Refuse a batch that the processes cannot share evenly, or a groupwise reward (which compares the images of
    a group with each other) when a group would span processes."""
    per_prompt = ROLLOUT_MODES.get(cfg.sampler.mode)(cfg.sampler, window, cfg.train.group_size).roots_per_prompt
    prompts = min(cfg.train.prompts_per_step, pool)
    need = processes // math.gcd(per_prompt, processes)
    if prompts % need:
        raise ConfigError(
            f"train.prompts_per_step={prompts}: its {prompts * per_prompt} roots cannot be dealt out evenly to "
            f"{processes} processes; use a multiple of {need}"
        )
    if trains_on(cfg.loss.name) is TrainsOn.PAIRS and prompts % processes:
        raise ConfigError(
            f"loss.name={cfg.loss.name} pairs the samples of a prompt, so a group must stay on one process: "
            f"train.prompts_per_step={prompts} must be a multiple of the {processes} processes"
        )
    if trains_on(cfg.loss.name) is TrainsOn.CHAINS:  # registered rewards were checked with the config
        users = [r.label or r.name for r in cfg.rewards if is_user_reward(r.name)]
        stiff = [key for key in users if not getattr(rewards.rewards[key], "differentiable", False)]
        if stiff:
            raise ConfigError(
                f"reward {stiff[0]!r} does not say it is differentiable (an attribute differentiable = True); "
                f"loss.name={cfg.loss.name} backpropagates through every reward"
            )
    groupwise = [name for name, fn in rewards.rewards.items() if is_groupwise(fn)]
    if groupwise and prompts % processes:
        raise ConfigError(
            f"reward {groupwise[0]!r} compares the images of a prompt with each other, so a group must stay on one "
            f"process: train.prompts_per_step={prompts} must be a multiple of the {processes} processes"
        )


def score(
    run: Run, images: Tensor, prompts: list[str], groups: Tensor, preferences: dict[str, Tensor] | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Rewards ``[N, K]`` (one column per configured reward) and every logged component; ``groups`` ``[N]``
    are the samples' prompt groups, which groupwise rewards (pairwise judges) compare within; a pairwise judge's
    ``[N, N]`` preference matrix goes into ``preferences`` when given."""
    _, parts = run.rewards(images, prompts, groups, preferences, run.inputs)
    return torch.stack([parts[name] for name in run.rewards.rewards], dim=1), parts


@torch.no_grad()
def sample(run: Run, prompts: list[str], noise_seeds: list[int] | None = None) -> Batch:
    """Roll out the current policy on this process's share of the iteration's ``prompts`` (``P``, the same on every
    process) with the iteration's plan, decode and score. The batch's roots are dealt out in blocks; group ids
    are positions in ``prompts``. ``noise_seeds``: every root's initial-noise seed, the whole batch's (the same on
    every process; default: the iteration's own)."""
    cfg, policy, acc = run.cfg, run.policy, run.accelerator
    plan = ROLLOUT_MODES.get(cfg.sampler.mode)(cfg.sampler, run.window, cfg.train.group_size)
    every_root = torch.arange(len(prompts)).repeat_interleave(plan.roots_per_prompt)
    first, count = deal(every_root.numel(), acc.num_processes, acc.process_index)
    prompt_of_root = every_root[first : first + count]
    low = int(prompt_of_root[0])  # encode only this share's prompts
    mine = prompts[low : int(prompt_of_root[-1]) + 1]
    with run.clock.stage("encode"):
        cond = policy.condition(mine, row_inputs(run.inputs, mine)).as_dict()
    cond = index_cond(cond, prompt_of_root - low)
    seed = cfg.seed * 1_000_003 + run.iteration
    if noise_seeds is None:
        rows = prompt_of_root.tolist() if cfg.sampler.same_noise else range(first, first + count)
        seeds = [seed * 4096 + i for i in rows]  # < 2**62 for a valid cfg.seed: flowrl.core.seeds.TRAIN_SEED_LIMIT
    else:
        seeds = noise_seeds[first : first + count]
    x = policy.initial_noise(seeds, cfg.model.resolution)
    policy.train_mode(False)
    chunk, clock = cfg.train.sample_batch, run.clock
    groupwise = any(is_groupwise(fn) for fn in run.rewards.rewards.values())
    blocks = _root_blocks(prompt_of_root, chunk if cfg.train.overlap_rewards else 0, whole_prompts=groupwise)
    rollouts, scored = [], []
    samples_old = run.old is not None and run.old_policy.samples  # DiffusionNFT samples with its old policy
    sampler = run.old.applied() if samples_old else contextlib.nullcontext()
    with sampler, ThreadPoolExecutor(max_workers=1) as scorer:  # rewards of block k while block k + 1 samples
        for lo, hi in blocks:
            with clock.stage("rollout"):
                part = _rollout(run, plan, x[lo:hi], index_cond(cond, torch.arange(lo, hi)), prompt_of_root[lo:hi],
                                seed, (first + lo, every_root.numel()))  # fmt: skip
            with clock.stage("decode"):
                images = policy.decode(part.samples, chunk)
            part_prompts = [prompts[int(g)] for g in part.group_id]
            rollouts.append(part)
            scored.append(scorer.submit(_score_block, run, images, part_prompts, part.group_id))
        with clock.stage("rewards"):  # what scoring adds after the last block is sampled
            results = [f.result() for f in scored]
    rollout = cat_rollouts(rollouts, [lo for lo, _ in blocks])
    sample_prompts = [prompts[int(g)] for g in rollout.group_id]
    rewards = torch.cat([r[0] for r in results])
    parts = {k: torch.cat([r[1][k] for r in results]) for k in results[0][1]}
    # the configuration allows one preference-giving reward when the estimator reads it (config.flow_inputs)
    prefs = [r[2] for r in results]
    pairwise = torch.block_diag(*[next(iter(p.values())) for p in prefs]) if len(prefs[0]) == 1 else None
    monitors = {k: torch.cat([r[3][k] for r in results]) for k in results[0][3]}
    granular = None
    if rollout.extra_samples:
        coarser = [policy.decode(s, chunk) for _, s in sorted(rollout.extra_samples.items())]
        granular = torch.stack([score(run, im, sample_prompts, rollout.group_id)[0] for im in coarser])
    return Batch(rollout, cond, sample_prompts, rewards, parts, granular, pairwise, monitors, noise=x)


def _root_blocks(prompt_of_root: Tensor, size: int, whole_prompts: bool = False) -> list[tuple[int, int]]:
    """Consecutive ``[lo, hi)`` blocks of this process's roots; one block when ``size`` is 0. Blocks of ``size``
    roots pass the network exactly the rows one rollout's ``size``-row forward passes do, so the samples are the
    same bit for bit. With ``whole_prompts`` (a groupwise reward compares a whole group) a block ends where a prompt
    does, at least ``size`` roots; the samples then differ at float level unless ``size`` is a multiple of the
    roots per prompt."""
    n = prompt_of_root.numel()
    if size <= 0 or size >= n:
        return [(0, n)]
    if not whole_prompts:
        return [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    ends = [i + 1 for i in range(n - 1) if prompt_of_root[i] != prompt_of_root[i + 1]] + [n]
    blocks, lo = [], 0
    for end in ends:
        if end - lo >= size or end == n:
            blocks.append((lo, end))
            lo = end
    return blocks


def _score_block(
    run: Run, images: Tensor, prompts: list[str], groups: Tensor
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """Rewards, components, preference matrices and monitors of one block (run in the scoring thread)."""
    preferences: dict[str, Tensor] = {}
    rewards, parts = score(run, images, prompts, groups, preferences)
    return rewards, parts, preferences, block_monitors(run.watch, images, prompts, run.inputs)


def _rollout(
    run: Run,
    plan: RolloutPlan,
    x: Tensor,
    cond: dict[str, Tensor],
    prompt_of_root: Tensor,
    seed: int,
    share: tuple[int, int],
) -> Rollout:
    """The iteration's ``tree_rollout`` of this process's roots; forward passes are charged to the trained and the
    untrained stage of the clock."""
    cfg, policy, clock = run.cfg, run.policy, run.clock
    chunk = cfg.train.sample_batch
    return tree_rollout(
        clock.timed("rollout_trained_forward", in_chunks(policy.velocity, chunk)),
        x,
        policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution).to(x.device),
        cond,
        prompt_of_root,
        kind=cfg.sampler.kind,
        noise_level=cfg.sampler.noise_level,
        sde_mask=plan.sde_mask,
        split_steps=plan.split_steps,
        branch_factor=plan.branch_factor,
        tail_solver=plan.tail_solver,
        tail_steps=plan.tail_steps,
        extra_tail_steps=plan.extra_tail_steps,
        tail_grid=plan.tail_grid,
        generator=torch.Generator(x.device).manual_seed(seed),
        share=share,
        ode_velocity=clock.timed("rollout_untrained_forward", in_chunks(policy.ode_velocity, chunk)),
    )


def advantage_batch(run: Run, batch: Batch) -> AdvantageBatch:
    """This process's share of the advantage estimator's input."""
    tr = batch.rollout.transitions
    return AdvantageBatch(
        rewards=batch.rewards,
        group_id=batch.rollout.group_id,
        weights=run.rewards.weight_vector(),
        prompt_keys=[row_key(p) for p in batch.prompts],  # a row's own key: rows may repeat a text
        granular_rewards=batch.granular,
        strata=strata(run, batch),
        pairwise=batch.preferences,
        tree=TreeStructure(
            tr.node_id, tr.parent_id, tr.step, tr.depth, tr.log_prob, tr.group_id, batch.rollout.node_id
        ),
    )


def strata(run: Run, batch: Batch) -> Tensor | None:
    """``[N]`` stratum ids (Stratified GRPO): the scored component ``advantage.strata`` rounded to integers, or
    None when no source is configured."""
    key = run.cfg.advantage.strata
    if not key:
        return None
    if key not in batch.components:
        raise ConfigError(f"advantage.strata={key!r} is not a scored component; the rewards give "
                         f"{', '.join(sorted(batch.components))}")  # fmt: skip
    return batch.components[key].round().long()


def advantages(run: Run, batch: Batch, whole: Whole | None = None) -> tuple[TrainRows, dict[str, float]]:
    """Advantages and backprop mask of this process's rows, from the configured estimator run on the ``whole``
    gathered batch (the same on every process; gathered here if not given): per transition, or per final sample
    for sample losses (AWM)."""
    whole = whole or gather_batch(run.accelerator, advantage_batch(run, batch))
    result = compute_advantages(run.cfg.advantage.name, whole.batch, run.cfg.advantage, run.adv_state)
    if result.per_transition:
        pos = whole.transition_pos
        group = whole.batch.tree.group_id[pos]
        return TrainRows(result.advantages[pos], result.mask[pos], pos, group), result.metrics
    keep, kept = filter_rollouts(run.cfg.rollout.filter, whole.batch)  # per-transition estimators take none
    trained = result.mask & keep
    counts = {"rollout/samples": float(trained.numel()), "rollout/trained_samples": float(trained.sum())}
    return objective(run).rows(run, batch, whole, result.advantages, trained), {**result.metrics, **kept, **counts}


def objective(run: Run) -> Objective:
    """The objective the configured loss trains with (``LossFacts.trains_on``)."""
    return OBJECTIVES.get(_objective_name(run))


def _objective_name(run: Run) -> str:
    return LOSSES.facts(run.cfg.loss.name).trains_on


def update(run: Run, batch: Batch, rows: TrainRows) -> dict[str, float]:
    """Update on the masked rows (transitions, or samples for AWM) with the shared loop
    (``flowrl.core.update``): ``inner_epochs`` passes, ``minibatches`` optimizer steps each, dealt over the
    processes as one process would; the EMA follows every applied step."""
    keep = rows.mask.nonzero().squeeze(1)
    run.policy.train_mode(True)
    after = run.ema.update if run.ema is not None else None
    keeps = OBJECTIVES.facts(_objective_name(run)).keeps
    row_loss = ObjectiveRows(run, batch, rows, keep, objective(run), keeps)
    return shared_update(run, rows.position[keep], row_loss, rows.group[keep], after)


@dataclass
class ObjectiveRows:
    """The image objective's rows as the update loop trains them: row ``i`` is ``train``'s row ``keep[i]``, its
    weight its share of the step's rows over all processes (times the process count: gradients are averaged)."""

    run: Run
    batch: Batch
    train: TrainRows
    keep: Tensor  # [R] indices of the kept (masked-in) rows of ``train``
    objective: Objective
    keeps: Together  # what the objective declared (``ObjectiveFacts.keeps``)
    total: int = 0  # the current step's rows over all processes

    def new_epoch(self, index: int) -> None:
        self.train = self.objective.epoch_rows(self.run, self.train, index)

    def start(self, step: UpdateStep) -> None:
        self.total = step.total

    def __call__(self, rows: Tensor) -> tuple[LossOutput, float]:
        out = self.objective(self.run, self.batch, self.keep[rows], self.train)
        return out, rows.numel() * self.run.accelerator.num_processes / self.total

    def filler(self) -> LossOutput:
        return self.objective(self.run, self.batch, self.keep.new_zeros(1), self.train)


@torch.no_grad()
def evaluate(run: Run, prompts: list[str], seeds: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """ODE samples of the current (EMA if enabled) policy for fixed (prompt, seed index) pairs, each from its own
    evaluation noise (``flowrl.core.seeds.eval_noise_seed``), and their rewards.

    The images of one prompt text (its seeds) form a group for groupwise rewards, so a pairwise judge
    compares the seeds of each prompt; with one seed per prompt it has nothing to compare and raises.
    With several processes each generates and scores the pairs of its share of the prompt texts (whole
    groups), and every process receives all of them in the given order: as an image depends only on the
    weights, prompt and seed, the result is a single process's (up to float error of batch size)."""
    acc = run.accelerator
    mine = eval_share(prompts, acc.process_index, acc.num_processes)
    # a sharded model's forward passes are collective: every process generates as many images (pair 0 as filler)
    size = max(len(eval_share(prompts, k, acc.num_processes)) for k in range(acc.num_processes))
    rows = mine + [0] * (size - len(mine)) if run.parallel.sharded else mine
    images, parts = _evaluate_pairs(run, [prompts[i] for i in rows], [seeds[i] for i in rows], keep=len(mine))
    if acc.num_processes == 1:
        return images, parts
    from accelerate.utils import gather_object

    # on the CPU: a pickled GPU tensor would come back on the sender's device
    parts = {k: v.cpu() for k, v in parts.items()}
    return _reassemble(gather_object([(mine, images.cpu(), parts)]))


def eval_share(prompts: list[str], index: int, num_processes: int) -> list[int]:
    """Positions of the pairs process ``index`` evaluates: prompt rows dealt out in turn, each with all its seeds."""
    group = prompt_groups(prompts)
    return [i for i in range(len(prompts)) if int(group[i]) % num_processes == index]


def _evaluate_pairs(
    run: Run, prompts: list[str], seeds: list[int], keep: int | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Images ``[B, 3, H, W]`` and rewards of the first ``keep`` (default all) of the given pairs, generated on
    this process with all of them (the rest are filler passes of a sharded model)."""
    keep = len(prompts) if keep is None else keep
    if not prompts:
        return torch.empty(0), {}
    cfg, policy = run.cfg, run.policy
    policy.train_mode(False)
    ctx = run.ema.applied() if run.ema is not None else contextlib.nullcontext()
    with ctx:
        images = generate(
            policy,
            prompts,
            seeds,
            inputs=row_inputs(run.inputs, prompts),
            resolution=cfg.model.resolution,
            num_steps=cfg.eval.num_steps,
            solver=cfg.eval.solver,
            batch_size=cfg.train.sample_batch or 64,
        )[:keep]
    if not keep:
        return torch.empty(0), {}
    return images, score_images(run.rewards, images, prompts[:keep], run.watch, run.inputs)


def _reassemble(shares: list[tuple[list[int], Tensor, dict[str, Tensor]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """The processes' ``(positions, images, rewards)`` shares put back into one batch in position order."""
    shares = [s for s in shares if s[0]]
    where = torch.tensor([i for positions, _, _ in shares for i in positions]).argsort()
    images = torch.cat([imgs for _, imgs, _ in shares])[where]
    keys = shares[0][2]
    return images, {k: torch.cat([parts[k] for _, _, parts in shares])[where] for k in keys}


def iteration_metrics(run: Run, batch: Batch, whole: Whole) -> dict[str, float]:
    """Reward statistics: the whole batch's total mean/std, this process's component means (averaged over
    processes later), NFE per sample."""
    total = combine(whole.batch.rewards, run.rewards.weight_vector())
    out = {"reward/mean": total.mean().item(), "reward/std": total.std().item() if total.numel() > 1 else 0.0}
    out.update({f"reward/{k}": v.mean().item() for k, v in batch.components.items()})
    out["sampler/nfe_per_sample"] = batch.rollout.nfe / max(1, batch.rollout.samples.shape[0])
    out["sampler/transitions"] = float(len(batch.rollout.transitions))
    return {**out, **batch.metrics, **monitor_metrics(batch.monitors, batch.rollout.group_id)}


def train_step(run: Run) -> dict[str, float]:
    """One iteration: pick prompts, sample, score, compute advantages, update, advance the window and the learning
    rate (or, with a pair dataset, read its pairs and update). Returns the metrics (the same on every process). A
    non-finite reward skips the update."""
    cfg, acc = run.cfg, run.accelerator
    run.clock.reset()
    t0 = time.perf_counter()
    if run.pairs is not None:  # a pair dataset: its pairs, ranked by their labels
        batch, step_update = pair_batch(run), pair_update
    else:
        prompts = draw_prompts(run, run.train_prompts, row_key, cfg.train.prompts_per_step)
        spec = cfg.rollout.generate
        batch, step_update = GENERATORS.get(spec.name)(run, prompts, sample, spec.options), rollout_update
    t1 = time.perf_counter()
    broken = gather_all(acc, non_finite_rewards(batch))
    if any(broken):
        metrics = {"train/skipped_steps": 0.0, "reward/non_finite": float(sum(n for b in broken for n in b.values()))}
        reason = "non-finite reward " + ", ".join(sorted({f"{k!r}" for b in broken for k in b}))
    else:
        metrics = step_update(run, batch)
        reason = "non-finite loss or gradient"
        trail_old_policy(run, metrics)
    t2 = time.perf_counter()
    metrics.update({"time/sample_s": t1 - t0, "time/update_s": t2 - t1, "time/step_s": t2 - t0})
    metrics.update({**run.clock.metrics(), "rollout/nfe": float(batch.rollout.nfe)})
    metrics = mean_over_processes(acc, metrics)
    skipped = any(broken) or metrics["train/skipped_steps"] > 0
    count_skip(run, skipped, reason)
    metrics.update({"train/skipped": float(skipped), "train/lr": run.scheduler.get_last_lr()[0]})
    run.window.advance()
    run.scheduler.step()
    run.iteration += 1
    return metrics


def rollout_update(run: Run, batch: Batch) -> dict[str, float]:
    """The update on a scored rollout batch: advantages of the whole batch, the step subset, the update."""
    cfg = run.cfg
    with run.clock.stage("advantages"):
        whole = gather_batch(run.accelerator, advantage_batch(run, batch))
        rows, adv_metrics = advantages(run, batch, whole)
    if cfg.train.timestep_fraction < 1 and trains_on(cfg.loss.name) is TrainsOn.TRANSITIONS:
        gen = torch.Generator().manual_seed(process_seed(run, cfg.seed * 104_729 + run.iteration))
        mask = step_subset(rows.mask, batch.rollout.transitions.sample_id.cpu(), cfg.train.timestep_fraction, gen)
        rows = replace(rows, mask=mask)
    total = whole.batch.combined()
    run.control.observe(whole.batch.prompt_keys, total, whole.batch.group_id)
    signals = {"reward/zero_std_frac": zero_variance_share(total, whole.batch.group_id), **run.control.metrics()}
    return {**iteration_metrics(run, batch, whole), **adv_metrics, **signals, **update(run, batch, rows)}


def pair_update(run: Run, batch: Batch) -> dict[str, float]:
    """The update on a pair dataset's batch: each pair ranked by its label (no estimator: the label is the
    preference), ties dropped by the objective; metrics of the labels."""
    whole = gather_batch(run.accelerator, AdvantageBatch(batch.rewards, batch.rollout.group_id, torch.ones(1)))
    preference = whole.batch.rewards[:, 0]
    rows = objective(run).rows(run, batch, whole, preference, torch.ones_like(preference, dtype=torch.bool))
    chosen = preference[0::2]
    metrics = {"pairs/label_mean": chosen.mean().item(), "pairs/ties": float((chosen == 0.5).sum())}
    return {**metrics, "sampler/nfe_per_sample": 0.0, **update(run, batch, rows)}


def trail_old_policy(run: Run, metrics: dict[str, float]) -> None:
    """The trailing copy after an iteration's update: old ← d·old + (1 − d)·θ, with d the loss's decay after the
    optimizer steps made so far (``inner_epochs · minibatches`` per iteration, as DiffusionNFT's global_step)."""
    if run.old is None:
        return
    t = run.cfg.train
    run.old.decay = run.old_policy.decay((run.iteration + 1) * t.inner_epochs * t.minibatches)
    run.old.update()
    metrics["train/old_decay"] = run.old.decay


def non_finite_rewards(batch: Batch) -> dict[str, int]:
    """Reward components (by name) with NaN or infinite scores in this process's batch, and how many."""
    return {k: int((~torch.isfinite(v)).sum()) for k, v in batch.components.items() if not torch.isfinite(v).all()}


__all__ = [
    "Batch",
    "Run",
    "TrainRows",
    "advantage_batch",
    "advantages",
    "eval_share",
    "evaluate",
    "non_finite_rewards",
    "sample",
    "score",
    "setup",
    "train_step",
    "update",
]
