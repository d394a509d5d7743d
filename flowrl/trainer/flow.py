"""The flow-GRPO training recipe: setup → sample → score → advantages → update → log / save.

Each stage is a plain function of a ``Run`` (the objects built once by ``setup``) so the loop in
``train`` reads like the algorithm. The sampler mode, advantage estimator, loss and rewards are
looked up by name in their registries; nothing below branches on those names.

Several processes (``accelerate launch``; DDP, or FSDP, see ``flowrl.trainer.sharding``): each process
samples its own slice of the iteration's prompts (``train.prompts_per_step`` is per process) with its own
noise, scores them and computes their advantages locally. A prompt's whole group stays on one process, so
group statistics need no communication; statistics over the whole batch (the global-std estimator's std,
the per-prompt tracker's history) are per process. Gradients are averaged over processes in the update and
come out as the mean over every process's rows; metrics are averaged over processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowrl.advantages import AdvantageBatch, TreeStructure, compute_advantages
from flowrl.advantages.core import combine
from flowrl.config import WEIGHT_DTYPES, Config, window_of
from flowrl.generate import generate
from flowrl.losses import LossInputs, compute_loss, trains_on
from flowrl.models import FluxPolicy, SD3Policy, load_policy
from flowrl.models.common import PromptCache, in_chunks, set_attention_backend
from flowrl.rewards import RewardSet
from flowrl.samplers import Rollout, WindowSchedule, index_cond, make_window, replay_log_prob, tree_rollout
from flowrl.trainer.data import load_prompts
from flowrl.trainer.modes import ROLLOUT_MODES, step_subset
from flowrl.trainer.sharding import full, shard, sharding_requested
from flowrl.trainer.weights import EMA, make_trainable, reference_policy

if TYPE_CHECKING:
    from accelerate import Accelerator

# Seeds of process k are offset by k·stride; process 0 keeps the single-process seeds. The stride is far above
# seed·1_000_003 + iteration for any realistic seed, and (seed + stride·k)·4096 stays inside 64 bits for k < 2**10.
_PROCESS_SEED_STRIDE = 2**40


@dataclass
class Run:
    """Everything a training run holds between iterations."""

    cfg: Config
    accelerator: Any
    policy: SD3Policy | FluxPolicy
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    rewards: RewardSet
    window: WindowSchedule
    train_prompts: list[str]
    eval_prompts: list[str]
    rng: random.Random
    adv_state: dict[str, Any] = field(default_factory=dict)
    iteration: int = 0
    sharded: bool = False  # FSDP: the transformer's weights are split over the processes


@dataclass
class Batch:
    """One iteration's experience: the rollout, its conditioning rows (one per root), and rewards."""

    rollout: Rollout
    cond: dict[str, Tensor]
    prompts: list[str]  # per final sample [N]
    rewards: Tensor  # [N, K] reward components (weights in run.rewards)
    components: dict[str, Tensor]  # every reward score and diagnostic, [N] each
    granular: Tensor | None = None  # [J, N, K] rewards of coarser decodings (G2RPO)


def setup(cfg: Config) -> Run:
    """Load the model, add LoRA or unfreeze it, build optimizer, EMA, rewards, window and data."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    torch.manual_seed(cfg.seed)  # the same initial LoRA weights on every process
    # some trainable weights get no gradient (SD3's last block discards its text stream): DDP must look for them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    _refuse_other_backends()
    accelerator = Accelerator(mixed_precision=cfg.model.mixed_precision, kwargs_handlers=[ddp])
    sharded = _sharding(accelerator)
    m = cfg.model
    options: dict[str, Any] = {"max_sequence_length": m.max_sequence_length} if m.max_sequence_length else {}
    dtype = getattr(torch, WEIGHT_DTYPES[m.weights_dtype])
    policy = load_policy(m.path, device=accelerator.device, dtype=dtype, **options)
    policy.cfg_scale = m.cfg_scale
    policy.schedule_shift = cfg.sampler.shift
    policy.prompt_cache = PromptCache(m.prompt_cache) if m.prompt_cache else None
    if isinstance(policy, FluxPolicy):
        policy.guidance_scale = m.guidance_scale
    params = make_trainable(policy.transformer, m.finetune, m.lora_rank, m.lora_alpha, m.lora_targets)
    set_attention_backend(policy.transformer, m.attention_backend)
    if m.gradient_checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    if sharded:
        shard(policy.transformer, accelerator.device, m.mixed_precision)
        params = [p for p in policy.transformer.parameters() if p.requires_grad]  # now the local shards
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        # policy.transformer stays the plain module (config, adapters); passes with gradients go through the wrapper
        policy.prepared, optimizer = accelerator.prepare(policy.transformer, optimizer)
    kind, size = window_of(cfg.sampler)
    options = dict(cfg.sampler.window_options)
    if kind == "random":
        options.setdefault("seed", cfg.seed)
    window = make_window(kind, cfg.sampler.num_steps, size, **options)
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        policy=policy,
        params=params,
        optimizer=optimizer,
        ema=EMA(params, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None,
        rewards=RewardSet.from_specs([vars(r) for r in cfg.rewards]),
        window=window,
        train_prompts=load_prompts(cfg.data.train_prompts),
        eval_prompts=load_prompts(cfg.data.eval_prompts),
        rng=random.Random(cfg.seed),
        sharded=sharded,
    )


def _refuse_other_backends(kind: str = "") -> None:
    """DeepSpeed and Megatron-LM (accelerate's ``distributed_type`` ``kind``, or the launch environment, read
    before accelerate fails on a missing package) are refused: sampling, evaluation and the reference policy
    run the module directly."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
    if kind in ("DEEPSPEED", "MEGATRON_LM") or deepspeed:
        raise ValueError(
            f"accelerate's {'DEEPSPEED' if deepspeed else kind} backend is not supported: launch with "
            "configs/accelerate/ddp.yaml (every process holds the model) or fsdp.yaml (weights sharded)"
        )


def _sharding(accelerator: Accelerator) -> bool:
    """Whether the launch asked for FSDP, which flowrl does itself (``flowrl.trainer.sharding``). Raises when
    accelerate did not join the launched processes (each would train alone and write the same run folder)."""
    kind = accelerator.distributed_type.name
    _refuse_other_backends(kind)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"{launched} processes were launched but accelerate set up {accelerator.num_processes} "
            f"({kind}); without GPUs launch CPU processes with `ACCELERATE_USE_CPU=true torchrun --nproc_per_node "
            f"{launched} -m flowrl train ...` (and ACCELERATE_USE_FSDP=true to shard)"
        )
    if not sharding_requested() and kind != "FSDP":
        return False
    if accelerator.num_processes < 2:
        raise ValueError("FSDP needs at least 2 processes (accelerate launch --num_processes N)")
    return True


def score(run: Run, images: Tensor, prompts: list[str], groups: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Rewards ``[N, K]`` (one column per configured reward) and every logged component; ``groups`` ``[N]``
    are the samples' prompt groups, which groupwise rewards (pairwise judges) compare within."""
    _, parts = run.rewards(images, prompts, groups)
    return torch.stack([parts[name] for name in run.rewards.rewards], dim=1), parts


@torch.no_grad()
def sample(run: Run, prompts: list[str]) -> Batch:
    """Roll out the current policy on ``prompts`` (``P``) with the iteration's plan, decode and score."""
    cfg, policy = run.cfg, run.policy
    plan = ROLLOUT_MODES.get(cfg.sampler.mode)(cfg.sampler, run.window, cfg.train.group_size)
    prompt_of_root = torch.arange(len(prompts)).repeat_interleave(plan.roots_per_prompt)
    cond = index_cond(policy.encode(prompts).as_dict(), prompt_of_root)
    seed = process_seed(run, cfg.seed * 1_000_003 + run.iteration)
    rows = prompt_of_root.tolist() if cfg.sampler.same_noise else range(prompt_of_root.numel())
    noise_seeds = [seed * 4096 + i for i in rows]
    x = policy.initial_noise(noise_seeds, cfg.model.resolution)
    policy.train_mode(False)
    chunk = cfg.train.sample_batch
    rollout = tree_rollout(
        in_chunks(policy.velocity, chunk),
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
        generator=torch.Generator(x.device).manual_seed(seed),
    )
    sample_prompts = [prompts[int(g)] for g in rollout.group_id]
    groups = rollout.group_id
    rewards, parts = score(run, policy.decode(rollout.samples, chunk), sample_prompts, groups)
    granular = None
    if rollout.extra_samples:
        coarser = [policy.decode(s, chunk) for _, s in sorted(rollout.extra_samples.items())]
        granular = torch.stack([score(run, images, sample_prompts, groups)[0] for images in coarser])
    return Batch(rollout, cond, sample_prompts, rewards, parts, granular)


def advantages(run: Run, batch: Batch) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Advantages and backprop mask from the configured estimator, one per row the loss trains on:
    per transition ``[M]``, or per final sample ``[N]`` for sample losses (AWM). Computed on this process's
    batch alone: with several processes, batch-wide statistics (e.g. the global std) are per process."""
    tr = batch.rollout.transitions
    adv_batch = AdvantageBatch(
        rewards=batch.rewards,
        group_id=batch.rollout.group_id,
        weights=run.rewards.weight_vector(),
        prompt_keys=batch.prompts,
        granular_rewards=batch.granular,
        tree=TreeStructure(
            tr.node_id, tr.parent_id, tr.step, tr.depth, tr.log_prob, tr.group_id, batch.rollout.node_id
        ),
    )
    result = compute_advantages(run.cfg.advantage.name, adv_batch, run.cfg.advantage, run.adv_state)
    if result.per_transition or trains_on(run.cfg.loss.name) == "samples":
        return result.advantages, result.mask, result.metrics
    # per-sample advantages reach the steps that lead to exactly one sample; shared tree prefixes get none
    own = tr.sample_id >= 0
    idx = tr.sample_id.clamp(min=0)
    return result.advantages[idx] * own, result.mask[idx] & own, result.metrics


def update(run: Run, batch: Batch, adv: Tensor, mask: Tensor) -> dict[str, float]:
    """Update on the masked rows (transitions, or samples for AWM): ``inner_epochs`` passes,
    ``minibatches`` optimizer steps each, gradients accumulated over micro-batches (and so across timesteps).

    With several processes every optimizer step's gradient is the mean over all processes' rows of that
    step, and every process makes the same number of backward calls (see ``StepPlan``)."""
    cfg, acc = run.cfg, run.accelerator
    keep = mask.nonzero().squeeze(1)
    counts = acc.gather(torch.tensor([keep.numel()], device=acc.device)).tolist()  # every process's row count
    plan = plan_steps(counts, cfg.train.minibatches, cfg.train.micro_batch)
    if not plan.rows:  # no process kept a row
        return {"train/transitions": 0.0}
    run.policy.train_mode(True)
    gen = torch.Generator().manual_seed(process_seed(run, cfg.seed * 7919 + run.iteration))
    sums: dict[str, float] = {}
    for _ in range(cfg.train.inner_epochs):
        order = keep[torch.randperm(keep.numel(), generator=gen)]
        chunks = list(order.chunk(cfg.train.minibatches)) if keep.numel() else []
        for step, (rows, calls) in enumerate(zip(plan.rows, plan.calls, strict=True)):
            chunk = chunks[step] if step < len(chunks) else keep[:0]
            _accumulate(run, batch, adv, chunk, rows, calls, gen, sums)
            _optimizer_step(run, chunk.numel(), sums)
    count = keep.numel() * cfg.train.inner_epochs
    metrics = {k: v / count for k, v in sums.items()} if count else {}
    metrics["train/transitions"] = float(keep.numel())
    return metrics


@dataclass
class StepPlan:
    """How one inner epoch's optimizer steps line up across processes.

    DDP all-reduces gradients in every backward call, so all processes must make the same number of calls
    per step or they wait for each other for ever: ``calls[s]`` is the most any process needs for step
    ``s`` (the others add zero-weight passes). ``rows[s]`` counts step ``s``'s rows over all processes;
    each row's loss is divided by it (times the process count, which DDP's average divides out again), so
    the synchronised gradient is the mean over all those rows, whatever each process holds."""

    rows: list[int]
    calls: list[int]


def plan_steps(counts: list[int], minibatches: int, micro_batch: int) -> StepPlan:
    """The ``StepPlan`` when the processes keep ``counts`` rows (one count per process)."""
    sizes = [_chunk_sizes(k, minibatches) for k in counts]
    steps = max(len(s) for s in sizes)
    columns = list(zip(*[s + [0] * (steps - len(s)) for s in sizes], strict=True))
    return StepPlan([sum(c) for c in columns], [max(math.ceil(n / micro_batch) for n in c) for c in columns])


def _chunk_sizes(rows: int, minibatches: int) -> list[int]:
    """Sizes of ``Tensor.chunk(minibatches)`` on ``rows`` rows (which makes fewer chunks when rows are few)."""
    return [len(c) for c in torch.arange(rows).chunk(minibatches)] if rows else []


def _accumulate(
    run: Run,
    batch: Batch,
    adv: Tensor,
    chunk: Tensor,
    rows: int,
    calls: int,
    gen: torch.Generator,
    sums: dict[str, float],
) -> None:
    """Backward passes of one optimizer step: this process's ``chunk`` in micro-batches, each loss weighted
    by its share of the step's ``rows`` (over all processes), then zero-weight passes up to ``calls``."""
    cfg, acc = run.cfg, run.accelerator
    row_loss = _sample_loss if trains_on(cfg.loss.name) == "samples" else _transition_loss
    pieces = chunk.split(cfg.train.micro_batch)
    for mb in pieces:
        out = row_loss(run, batch, mb, adv[mb].to(acc.device), gen)
        acc.backward(out.loss * (mb.numel() * acc.num_processes / rows))
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + v * mb.numel()
        sums["train/loss"] = sums.get("train/loss", 0.0) + out.loss.item() * mb.numel()
    filler = chunk.new_zeros(1)  # any valid row: its pass only keeps this process in step with the others
    for _ in range(calls - len(pieces)):
        out = row_loss(run, batch, filler, torch.zeros(1, device=acc.device), gen)
        acc.backward(out.loss * 0.0)


def _optimizer_step(run: Run, rows: int, sums: dict[str, float]) -> None:
    """Clip (logging the norm, weighted by this process's ``rows``), step, clear the gradients, update the EMA."""
    cfg, acc = run.cfg, run.accelerator
    if cfg.train.max_grad_norm > 0:
        norm = full(acc.clip_grad_norm_(run.params, cfg.train.max_grad_norm))  # FSDP: a replicated DTensor
        sums["train/grad_norm"] = sums.get("train/grad_norm", 0.0) + float(norm) * rows
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update()


def _col(t: Tensor | None) -> Tensor | None:
    """One trained step per row: ``[M, ...]`` -> ``[M, 1, ...]`` (the losses' ``[N, T]`` layout)."""
    return None if t is None else t.unsqueeze(1)


def _transition_loss(run: Run, batch: Batch, rows: Tensor, adv: Tensor, gen: torch.Generator):
    """Log-prob losses on transitions ``rows``: replay each step under the current (and reference) policy."""
    cfg, policy, cond = run.cfg, run.policy, batch.cond
    tr = batch.rollout.transitions.select(rows)
    log_prob, mean = replay_log_prob(policy.velocity, tr, cond, cfg.sampler.kind)
    ref_mean = None
    if cfg.loss.kl_coef > 0:
        with torch.no_grad(), reference_policy(policy.transformer):
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


def _sample_loss(run: Run, batch: Batch, rows: Tensor, adv: Tensor, gen: torch.Generator):
    """Sample losses (AWM) on final samples ``rows``: re-noise each clean sample x0 at a σ drawn from
    the sampling schedule's own noise levels, x_σ = (1 − σ)·x0 + σ·ε, and compare the velocity
    with the flow-matching target ε − x0 (and, with a reference coefficient, the base's velocity)."""
    cfg, policy = run.cfg, run.policy
    x0 = batch.rollout.samples[rows.to(batch.rollout.samples.device)]
    cond = index_cond(batch.cond, batch.rollout.cond_index[rows])
    levels = policy.sigmas(cfg.sampler.num_steps, cfg.model.resolution)[:-1]
    sigma = levels[torch.randint(len(levels), (len(rows),), generator=gen)].to(x0)
    eps = torch.randn(x0.shape, generator=gen).to(x0)
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    x_t = (1 - s) * x0 + s * eps
    v_ref = None
    if cfg.loss.awm_ref_coef > 0:
        with torch.no_grad(), reference_policy(policy.transformer):
            v_ref = policy.velocity(x_t, sigma, cond)
    inputs = LossInputs(advantages=adv, v_pred=policy.velocity(x_t, sigma, cond), v_target=eps - x0, v_ref=v_ref)
    return compute_loss(cfg.loss.name, inputs, cfg.loss)


@torch.no_grad()
def evaluate(run: Run, prompts: list[str], seeds: list[int]) -> tuple[Tensor, dict[str, Tensor]]:
    """ODE samples of the current (EMA if enabled) policy for fixed (prompt, seed) pairs, and their rewards.

    The images of one prompt text (its seeds) form a group for groupwise rewards, so a pairwise judge
    compares the seeds of each prompt; with one seed per prompt it has nothing to compare and raises.
    With several processes each generates and scores the pairs of its share of the prompt texts (whole
    groups), and every process receives all of them in the given order: as an image depends only on the
    weights, prompt and seed, the result is a single process's (up to float error of batch size)."""
    acc = run.accelerator
    mine = eval_share(prompts, acc.process_index, acc.num_processes)
    # a sharded model's forward passes are collective: every process generates as many images (pair 0 as filler)
    size = max(len(eval_share(prompts, k, acc.num_processes)) for k in range(acc.num_processes))
    rows = mine + [0] * (size - len(mine)) if run.sharded else mine
    images, parts = _evaluate_pairs(run, [prompts[i] for i in rows], [seeds[i] for i in rows], keep=len(mine))
    if acc.num_processes == 1:
        return images, parts
    from accelerate.utils import gather_object

    # on the CPU: a pickled GPU tensor would come back on the sender's device
    parts = {k: v.cpu() for k, v in parts.items()}
    return _reassemble(gather_object([(mine, images.cpu(), parts)]))


def eval_share(prompts: list[str], index: int, num_processes: int) -> list[int]:
    """Positions of the pairs process ``index`` evaluates: prompt texts dealt out in turn, each with all its seeds."""
    group = _prompt_groups(prompts)
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
            resolution=cfg.model.resolution,
            num_steps=cfg.eval.num_steps,
            solver=cfg.eval.solver,
            batch_size=cfg.train.sample_batch or 64,
        )[:keep]
    if not keep:
        return torch.empty(0), {}
    total, parts = run.rewards(images, prompts[:keep], _prompt_groups(prompts[:keep]))
    return images, {"reward": total, **parts}


def _reassemble(shares: list[tuple[list[int], Tensor, dict[str, Tensor]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """The processes' ``(positions, images, rewards)`` shares put back into one batch in position order."""
    shares = [s for s in shares if s[0]]
    where = torch.tensor([i for positions, _, _ in shares for i in positions]).argsort()
    images = torch.cat([imgs for _, imgs, _ in shares])[where]
    keys = shares[0][2]
    return images, {k: torch.cat([parts[k] for _, _, parts in shares])[where] for k in keys}


def _prompt_groups(prompts: list[str]) -> Tensor:
    """Group ids ``[N]``: equal prompt texts share an id (numbered in order of first appearance)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(p, len(ids)) for p in prompts], dtype=torch.long)


def iteration_metrics(batch: Batch, run: Run) -> dict[str, float]:
    """Reward statistics of a batch: total mean/std, each component's mean, NFE per sample."""
    total = combine(batch.rewards, run.rewards.weight_vector())
    out = {"reward/mean": total.mean().item(), "reward/std": total.std().item() if total.numel() > 1 else 0.0}
    out.update({f"reward/{k}": v.mean().item() for k, v in batch.components.items()})
    out["sampler/nfe_per_sample"] = batch.rollout.nfe / max(1, batch.rollout.samples.shape[0])
    out["sampler/transitions"] = float(len(batch.rollout.transitions))
    return out


def train_step(run: Run) -> dict[str, float]:
    """One iteration: pick prompts, sample, score, compute advantages, update, advance the window.
    Returns the metrics averaged over processes (the same on every process)."""
    cfg, acc = run.cfg, run.accelerator
    t0 = time.perf_counter()
    prompts = draw_prompts(
        run.rng, run.train_prompts, cfg.train.prompts_per_step, acc.num_processes, acc.process_index
    )
    batch = sample(run, prompts)
    t1 = time.perf_counter()
    adv, mask, adv_metrics = advantages(run, batch)
    if cfg.train.timestep_fraction < 1:
        gen = torch.Generator().manual_seed(process_seed(run, cfg.seed * 104_729 + run.iteration))
        mask = step_subset(mask, batch.rollout.transitions.sample_id.cpu(), cfg.train.timestep_fraction, gen)
    metrics = {**iteration_metrics(batch, run), **adv_metrics}
    metrics.update(update(run, batch, adv, mask))
    t2 = time.perf_counter()
    metrics.update({"time/sample_s": t1 - t0, "time/update_s": t2 - t1, "time/step_s": t2 - t0})
    metrics = mean_over_processes(acc, metrics)  # before the check, so that every process raises or none
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(f"non-finite training metrics at iteration {run.iteration}: {', '.join(bad)}")
    run.window.advance()
    run.iteration += 1
    return metrics


def draw_prompts(rng: random.Random, pool: list[str], per_process: int, num_processes: int, index: int) -> list[str]:
    """Process ``index``'s prompts for one iteration: ``min(per_process, len(pool))`` distinct prompts.

    Every process makes the same draws from its copy of the shared seeded ``rng`` (so the copies stay in
    step) and keeps its own slice: processes train on different prompts, each prompt's group on one
    process. With one process this is the ``rng.sample`` it always was. When the pool is too small for
    every process to get prompts of its own, each slice is a separate sample (and may repeat others')."""
    take = min(per_process, len(pool))
    if take * num_processes <= len(pool):
        drawn = rng.sample(pool, take * num_processes)
    else:
        drawn = [p for _ in range(num_processes) for p in rng.sample(pool, take)]
    return drawn[index * take : (index + 1) * take]


def process_seed(run: Run, seed: int) -> int:
    """``seed`` made distinct per process (unchanged on process 0, so one process keeps its seeds)."""
    return seed + run.accelerator.process_index * _PROCESS_SEED_STRIDE


def mean_over_processes(acc: Accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """Each metric's mean over the processes that report it (one that trained no rows has no loss metrics)."""
    if acc.num_processes == 1:
        return metrics
    from accelerate.utils import gather_object

    reports: list[dict[str, float]] = gather_object([metrics])
    keys = dict.fromkeys(k for r in reports for k in r)
    return {k: statistics.fmean(r[k] for r in reports if k in r) for k in keys}


__all__ = [
    "Batch",
    "Run",
    "StepPlan",
    "advantages",
    "draw_prompts",
    "eval_share",
    "evaluate",
    "mean_over_processes",
    "plan_steps",
    "process_seed",
    "sample",
    "score",
    "setup",
    "train_step",
    "update",
]
