"""The text GRPO recipe: setup → generate → score → advantages → update → log / save.

The same advantage and loss registries as the flow trainer; the sampler is ``generate`` and a transition
is a token. Completions are ``[N, T]`` token rows (``N`` = prompts × ``group_size``), one reward row each.
Reward functions have TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``; ``None``
means "does not apply" and is left out of the weighted sum (TRL's nansum).

Several processes (``accelerate launch``, DDP): every process draws the same prompts and generates its block of
the batch's completions (a group may span processes, each process samples with its own seed); rewards are
gathered and every process computes the whole batch's advantages, then trains its rows; gradients are averaged.
A non-finite loss or gradient skips the optimizer step, as in the flow trainer.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowrl.core.advantages import AdvantageBatch, compute_advantages
from flowrl.core.errors import ConfigError, DataError, LaunchError
from flowrl.core.loop import (
    count_skip,
    draw_prompts,
    lr_scheduler,
    mean_over_processes,
    process_seed,
)
from flowrl.core.losses import LossInputs, LossOutput, NormalizesBy, Together, compute_loss, normalizes_by
from flowrl.core.monitor import WATCH, TrainingMonitor, distinct_share
from flowrl.core.parallel import launch
from flowrl.core.rollout import filter_rollouts, make_control
from flowrl.core.sections import WEIGHT_DTYPES
from flowrl.core.share import UpdateStep, deal, gather_all
from flowrl.core.state import RunState
from flowrl.core.update import update as shared_update
from flowrl.core.weights import check_lora_targets, frozen_copy
from flowrl.rewards.text import (
    RewardFunc,
    RewardLog,
    TrainerState,
    call_all,
    check_values,
    resolve_reward,
    reward_kwargs,
    reward_names,
)
from flowrl.text.config import TextConfig
from flowrl.text.data import PromptFormat, as_rows, is_conversational, load_rows, prompt_key
from flowrl.text.model import (
    Completions,
    quiet_peft,
    sample_completions,
    sample_continuous,
    token_log_probs,
)

if TYPE_CHECKING:
    pass


@dataclass(kw_only=True)
class TextRun(RunState):
    """Everything a text run holds between iterations, beyond ``RunState``."""

    cfg: TextConfig
    model: Any  # the plain (peft) module: generation, adapters, saving
    prepared: Any  # the same network as accelerate prepared it: passes with gradients
    tokenizer: Any
    rewards: list[tuple[str, RewardFunc, float]]
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    reference: Any = None  # a frozen copy for KL when fine-tuning fully (LoRA disables its adapter instead)
    num_tokens: int = 0
    format: PromptFormat = field(default_factory=PromptFormat)  # standard or conversational prompts
    reward_log: RewardLog = field(default_factory=RewardLog)  # log_metric calls of the reward functions
    watch: list[tuple[str, RewardFunc]] = field(default_factory=list)  # eval.watch_rewards: scored, never trained


@dataclass
class TextBatch:
    """One iteration's experience: completions, their rows and rewards ``[N, K]`` (NaN = not applicable)."""

    completions: Completions  # ``index``: row of the completion's prompt in ``completions.prompt_ids``
    rows: list[dict[str, Any]]  # per completion
    rewards: Tensor
    group_id: Tensor | None = None  # [N] position of each completion's prompt in the iteration's prompts
    first: int = 0  # position of this process's first completion in the whole batch


def setup(
    cfg: TextConfig,
    dataset: list[dict[str, Any]] | None = None,
    reward_funcs: Sequence[RewardFunc] | None = None,
) -> TextRun:
    """Load the model and tokenizer, add LoRA or unfreeze, build the optimizer, rewards and data. ``dataset``
    (rows with a "prompt": a ``datasets.Dataset`` or a list of dicts) and ``reward_funcs`` (weights from
    ``cfg.rewards`` if as many, else 1) replace the configured ones when given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(cfg.seed)
    accelerator, parallel = launch()
    m = cfg.model
    dtype = getattr(torch, WEIGHT_DTYPES[m.weights_dtype])
    tokenizer = AutoTokenizer.from_pretrained(m.path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(m.path, dtype=dtype).to(accelerator.device)
    model.requires_grad_(False)
    reference = None
    if m.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        check_lora_targets(model, m.lora_targets)  # every listed target must exist, as in the flow recipe
        config = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, target_modules=list(m.lora_targets))
        with quiet_peft():
            model = get_peft_model(model, config)
    else:
        if cfg.loss.kl_coef > 0:
            reference = frozen_copy(model)  # the base as loaded, as the flow recipe keeps it
        model.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train(m.gradient_checkpointing)  # no dropout in the passes that must reproduce the sampled log-probs
    t = cfg.train
    prepared, optimizer, params = parallel.prepare(
        model,
        params,
        lambda ps: torch.optim.AdamW(ps, lr=t.lr, weight_decay=t.weight_decay),
        micro_batch=t.micro_batch,
        max_grad_norm=t.max_grad_norm,
        shard_root=model.get_base_model() if m.finetune == "lora" else model,  # FSDP units: the decoder layers
    )
    if parallel.sharded and cfg.generation.engine == "continuous":
        raise LaunchError("generation.engine=continuous needs the whole model on every process (DDP): with FSDP or "
                         "DeepSpeed ZeRO-3 use engine=generate")  # fmt: skip
    funcs = [resolve_reward(r.name) for r in cfg.rewards] if reward_funcs is None else list(reward_funcs)
    same = len(cfg.rewards) == len(funcs)
    weights = [r.weight for r in cfg.rewards] if same else [1.0] * len(funcs)
    rewards = list(zip(reward_names(funcs), funcs, weights, strict=True))
    train_rows = as_rows(dataset) if dataset is not None else load_rows(cfg.data.train, cfg.data.train_split)
    eval_rows = load_rows(cfg.data.eval, cfg.data.eval_split)
    watch = [resolve_reward(r.name) for r in cfg.eval.watch_rewards]
    return TextRun(
        cfg=cfg,
        accelerator=accelerator,
        parallel=parallel,
        model=model,
        prepared=prepared,
        tokenizer=tokenizer,
        params=params,
        optimizer=optimizer,
        rewards=rewards,
        train_rows=train_rows,
        eval_rows=eval_rows,
        rng=random.Random(cfg.seed),
        scheduler=lr_scheduler(optimizer, cfg.train.lr_schedule, cfg.train.warmup_iterations, cfg.train.iterations),
        reference=reference,
        format=prompt_format(cfg, tokenizer, train_rows, eval_rows),
        watch=list(zip(reward_names(watch), watch, strict=True)),
        monitor=TrainingMonitor(cfg.eval.watch_drop, cfg.eval.diversity_drop),
        control=make_control(cfg.rollout.control),
    )


def prompt_format(cfg: TextConfig, tokenizer: Any, *datasets: list[dict[str, Any]]) -> PromptFormat:
    """How the prompts reach the model (``flowrl.text.data``): the training and evaluation rows must be of one
    format, and conversational ones need the tokenizer's chat template."""
    kinds = {is_conversational(rows[0]["prompt"]) for rows in datasets}
    if len(kinds) > 1:
        raise DataError("the training and evaluation prompts must both be strings or both lists of messages")
    conversational = kinds.pop()
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"the prompts are conversational but the tokenizer of {cfg.model.path!r} has no chat template")
    return PromptFormat(conversational, cfg.data.system_prompt, dict(cfg.data.chat_template_kwargs))


def score(
    run: TextRun,
    rows: list[dict[str, Any]],
    texts: list[str],
    ids: list[list[int]] | None = None,
    funcs: list[tuple[str, RewardFunc]] | None = None,
) -> Tensor:
    """Rewards ``[N, K]`` of completions ``texts`` (token ids ``ids``) of ``rows``' prompts: one column per reward
    function, NaN where a function returned None (``flowrl.rewards.text`` says what they receive). A
    function that raises or returns anything but one real number (or None) per completion is a ``RewardError``."""
    if ids is None:
        ids = [run.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    state = TrainerState(global_step=run.iteration, max_steps=run.cfg.train.iterations)
    kwargs = reward_kwargs(rows, run.format.completions(texts), ids, state, run.reward_log)
    funcs = [(name, fn) for name, fn, _ in run.rewards] if funcs is None else funcs
    values = call_all(funcs, kwargs)
    columns = [check_values(name, v, len(rows)) for (name, _), v in zip(funcs, values, strict=True)]
    return torch.stack(columns, 1).float()


def weighted_total(run: TextRun, rewards: Tensor) -> Tensor:
    """``[N]``: Σ_k w_k r_k over the rewards that apply (NaN ones are skipped, TRL's nansum)."""
    weights = torch.tensor([w for _, _, w in run.rewards])
    return (rewards * weights).nansum(1)


@torch.no_grad()
def generate(run: TextRun, rows: list[dict[str, Any]]) -> TextBatch:
    """This process's block of the ``group_size`` completions of each row's prompt (``rows`` are the iteration's
    prompts, the same on every process) from the current policy, scored."""
    cfg, g, acc = run.cfg, run.cfg.generation, run.accelerator
    every = torch.arange(len(rows)).repeat_interleave(cfg.train.group_size)
    first, count = deal(every.numel(), acc.num_processes, acc.process_index)
    mine, counts = every[first : first + count].unique_consecutive(return_counts=True)
    prompts = [run.format.render(run.tokenizer, rows[int(i)]["prompt"]) for i in mine]
    chunk = g.batch_size or len(prompts)
    seed = process_seed(run, cfg.seed * 1_000_003 + run.iteration)
    torch.manual_seed(seed)  # generate draws from torch's RNG
    options = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p, "top_k": g.top_k,
               "add_special_tokens": run.format.add_special_tokens}  # fmt: skip
    if g.engine == "continuous":  # every request of the process at once: the scheduler batches them
        c = sample_continuous(run.model, run.tokenizer, prompts, counts.tolist(), seed=seed,
                              options=g.continuous_options, **options)  # fmt: skip
        return _scored(run, rows, mine, c, first)
    options["cache_implementation"] = g.cache_implementation or None
    synced = run.parallel.sharded
    parts = [
        sample_completions(
            run.model, run.tokenizer, prompts[i : i + chunk], counts[i : i + chunk].tolist(), synced=synced, **options
        )
        for i in range(0, len(prompts), chunk)
    ]
    run.parallel.even_out(len(parts), lambda: sample_completions(run.model, run.tokenizer, prompts[:1], 1,
                                                                 synced=synced, **options))  # fmt: skip
    return _scored(run, rows, mine, _concat(parts, run.tokenizer.pad_token_id), first)


def _scored(run: TextRun, rows: list[dict[str, Any]], mine: Tensor, c: Completions, first: int) -> TextBatch:
    """The batch of completions ``c`` of prompts ``rows[mine]`` with their rewards."""
    group_id = mine[c.index.cpu()]
    rows_n = [rows[int(i)] for i in group_id]
    return TextBatch(c, rows_n, score(run, rows_n, c.texts, completion_id_lists(c)), group_id, first)


def completion_id_lists(c: Completions) -> list[list[int]]:
    """Each completion's token ids without padding (EOS kept), as reward functions get them."""
    return [ids[m.bool()].tolist() for ids, m in zip(c.completion_ids.cpu(), c.completion_mask.cpu(), strict=True)]


def _concat(parts: list[Completions], pad: int) -> Completions:
    """One ``Completions`` from several generate calls (prompts left-padded, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    lp = max(p.prompt_ids.shape[1] for p in parts)
    lc = max(p.completion_ids.shape[1] for p in parts)

    def left(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (lp - t.shape[1], 0), value=value)

    def right(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, lc - t.shape[1]), value=value)

    offsets = torch.tensor([0] + [p.prompt_ids.shape[0] for p in parts]).cumsum(0)
    return Completions(
        prompt_ids=torch.cat([left(p.prompt_ids, pad) for p in parts]),
        prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
        completion_ids=torch.cat([right(p.completion_ids, pad) for p in parts]),
        completion_mask=torch.cat([right(p.completion_mask, 0) for p in parts]),
        index=torch.cat([p.index + offsets[k] for k, p in enumerate(parts)]),
        terminated=torch.cat([p.terminated for p in parts]),
        texts=[t for p in parts for t in p.texts],
    )


def advantages(run: TextRun, batch: TextBatch) -> tuple[Tensor, dict[str, float]]:
    """Advantages ``[N]`` from the configured estimator (reward columns with weights, or their nansum when
    a function returned None) and TRL's reward metrics. A completion no function scored (all None) gets
    advantage 0 and is left out of the reward statistics, as in TRL."""
    g = run.cfg.train.group_size
    mine = (batch.rewards.cpu(), _group_id(batch), [prompt_key(r["prompt"]) for r in batch.rows], strata(run, batch))
    parts = gather_all(run.accelerator, mine)
    all_rewards, group_id = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    keys = [k for p in parts for k in p[2]]
    strata_ids = None if mine[3] is None else torch.cat([p[3] for p in parts])
    rewards, weights = all_rewards, torch.tensor([w for _, _, w in run.rewards])
    unscored = torch.isnan(rewards).all(1)
    if torch.isnan(rewards).any():
        rewards, weights = weighted_total(run, rewards).unsqueeze(1), None
    adv_batch = AdvantageBatch(
        rewards=rewards, group_id=group_id, weights=weights, prompt_keys=keys, strata=strata_ids
    )
    result = compute_advantages(run.cfg.advantage.name, adv_batch, run.cfg.advantage, run.adv_state)
    keep, kept = filter_rollouts(run.cfg.rollout.filter, adv_batch)
    total = weighted_total(run, all_rewards).masked_fill(unscored, math.nan)
    group_std = _nanstd(total.view(-1, g), dim=1)
    run.control.observe(keys, total, group_id)
    metrics = {
        "reward/mean": total.nanmean().item(),
        "reward/std": _nanstd(total).item(),
        "reward/zero_std_frac": (group_std.abs() < 1e-6).float().mean().item(),  # equal groups: share of samples
        **run.control.metrics(),
    }
    for k, (name, _, _) in enumerate(run.rewards):
        col = all_rewards[:, k]
        metrics[f"reward/{name}"] = col.nanmean().item()
        metrics[f"reward/{name}/std"] = _nanstd(col).item()
    mine = slice(batch.first, batch.first + batch.rewards.shape[0])
    trained = result.mask & keep & ~unscored
    metrics.update({"rollout/samples": float(trained.numel()), "rollout/trained_samples": float(trained.sum())})
    return (result.advantages * trained)[mine], {**metrics, **result.metrics, **kept}


def strata(run: TextRun, batch: TextBatch) -> Tensor | None:
    """``[N]`` stratum ids (Stratified GRPO) of this process's completions from the ``advantage.strata`` function
    (a reward's signature, one integer per completion), or None when none is configured."""
    spec = run.cfg.advantage.strata
    if not spec:
        return None
    rows, c = batch.rows, batch.completions
    state = TrainerState(global_step=run.iteration, max_steps=run.cfg.train.iterations)
    kwargs = reward_kwargs(rows, run.format.completions(c.texts), completion_id_lists(c), state, RewardLog())
    (values,) = call_all([(spec, resolve_reward(spec))], kwargs)
    values = list(values)
    if len(values) != len(rows) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"advantage.strata {spec!r} must return one integer per completion ({len(rows)}), got "
                         f"{values[:4]!r}...")  # fmt: skip
    return torch.tensor(values, dtype=torch.long)


def _group_id(batch: TextBatch) -> Tensor:
    """``[N]`` group of each completion (its prompt's position in the iteration's prompts)."""
    return batch.completions.index.cpu() if batch.group_id is None else batch.group_id.cpu()


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected std over the non-NaN entries (0 where fewer than two), as TRL's nanstd."""
    ok = ~torch.isnan(x)
    n = ok.sum(dim) if dim is not None else ok.sum()
    mean = x.nanmean(dim, keepdim=dim is not None) if dim is not None else x.nanmean()
    sq = ((x - mean) ** 2).nan_to_num(0.0)
    total = sq.sum(dim) if dim is not None else sq.sum()
    return (total / (n - 1).clamp(min=1)).sqrt() * (n > 1)


def monitor_metrics(run: TextRun, batch: TextBatch) -> dict[str, float]:
    """The reward-hacking monitors' inputs (``flowrl.core.monitor``): ``watch/<name>`` means of this process's
    completions (averaged over processes later) and ``monitor/diversity`` of the whole batch."""
    c = batch.completions
    out = {}
    if run.watch:
        scores = score(run, batch.rows, c.texts, completion_id_lists(c), run.watch)
        out.update({f"{WATCH}{name}": float(scores[:, k].nanmean()) for k, (name, _) in enumerate(run.watch)})
    parts = gather_all(run.accelerator, (_group_id(batch).tolist(), list(c.texts)))
    out["monitor/diversity"] = distinct_share([g for p in parts for g in p[0]], [t for p in parts for t in p[1]])
    return out


def completion_metrics(c: Completions) -> dict[str, float]:
    """TRL's completion-length metrics: lengths in tokens (EOS included), the share not terminated by EOS."""
    lengths = c.completion_mask.sum(1).float()
    done = lengths[c.terminated]
    return {
        "completions/mean_length": lengths.mean().item(),
        "completions/min_length": lengths.min().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": (~c.terminated).float().mean().item(),
        "completions/mean_terminated_length": done.mean().item() if done.numel() else 0.0,
    }


def _log_probs(run: TextRun, model, c: Completions, rows: Tensor) -> tuple[Tensor, Tensor]:
    return token_log_probs(
        model,
        c.prompt_ids,
        c.prompt_mask,
        c.completion_ids[rows],
        c.completion_mask[rows],
        c.index[rows],
        temperature=run.cfg.generation.temperature,
        shared_prefix=run.cfg.train.shared_prefix and not run.cfg.model.gradient_checkpointing,
    )


@torch.no_grad()
def reference_log_probs(run: TextRun, c: Completions, rows: Tensor) -> Tensor:
    """Log-probs ``[n, T]`` of completions ``rows`` under the reference policy: the LoRA adapter disabled (one
    network) or the frozen copy (full fine-tuning)."""
    if run.reference is not None:
        return _log_probs(run, run.reference, c, rows)[0]
    with run.model.disable_adapter():
        return _log_probs(run, run.model, c, rows)[0]


def _micro_batches(rows: Tensor, size: int) -> list[Tensor]:
    return list(rows.split(size))


def update(run: TextRun, batch: TextBatch, adv: Tensor) -> dict[str, float]:
    """``train.inner_epochs`` passes over the batch, ``minibatches`` optimizer steps each, with the shared loop
    (``flowrl.core.update``): a prompt's completions are dealt together (a micro-batch runs each prompt once,
    the shared prefix), every step's loss is the loss's own aggregate over the step's rows of all processes.

    Old log-probs are computed once (no gradients) only when a step can be off-policy (several passes or
    minibatches); otherwise the ratio is exp(logp − logp.detach()) = 1, as TRL does. The reference's
    log-probs (KL) are computed once per batch."""
    cfg, c = run.cfg, batch.completions
    t = cfg.train
    n = c.completion_ids.shape[0]
    all_rows = torch.arange(n, device=c.completion_ids.device)
    old = ref = None
    if t.inner_epochs > 1 or t.minibatches > 1:
        with torch.no_grad():
            old = torch.cat([_log_probs(run, run.model, c, r)[0] for r in _micro_batches(all_rows, t.micro_batch)])
    if cfg.loss.kl_coef > 0:
        ref = torch.cat([reference_log_probs(run, c, r) for r in _micro_batches(all_rows, t.micro_batch)])
    rows = SequenceRows(run, c, adv, loss_mask(run, c), old, ref)
    return shared_update(run, batch.first + torch.arange(n), rows, _group_id(batch))


@dataclass
class SequenceRows:
    """The text objective's rows (completions) as the update loop trains them: the loss of a micro-batch of token
    sequences, weighted by ``normalizes_by``: its share of the step's sequences or tokens over all processes (times
    the process count: gradients are averaged), or 1 when the loss divides by the step's global token count."""

    run: TextRun
    c: Completions
    adv: Tensor  # [N] advantages of this process's completions
    mask: Tensor  # [N, T] the loss's tokens
    old: Tensor | None  # [N, T] log-probs before the update (off-policy steps)
    ref: Tensor | None  # [N, T] the reference's log-probs (KL)
    #: a prompt's completions share one optimizer step (its prompt's rows are dealt as one unit)
    keeps: Together = Together.GROUPS
    total: int = 0  # the step's sequences over all processes
    tokens: float = 0.0  # the step's loss tokens over all processes

    def start(self, step: UpdateStep) -> None:
        acc = self.run.accelerator
        mine = float(self.mask[step.rows.to(self.mask.device)].sum())
        self.total, self.tokens = step.total, float(acc.gather(torch.tensor([mine], device=self.mask.device)).sum())

    def __call__(self, rows: Tensor) -> tuple[LossOutput, float]:
        rows = rows.to(self.mask.device)
        out, m = self._loss(rows)
        share = {
            NormalizesBy.SEQUENCES: len(rows) / self.total,
            NormalizesBy.TOKENS: float(m.sum()) / max(self.tokens, 1.0),
        }
        kind = normalizes_by(self.run.cfg.loss.name)
        weight = share[kind] * self.run.accelerator.num_processes if kind in share else 1.0  # GLOBAL_TOKENS: 1
        return out, weight

    def new_epoch(self, index: int) -> None:
        pass  # a token row is the same in every pass

    def filler(self) -> LossOutput:
        return self._loss(torch.zeros(1, dtype=torch.long, device=self.mask.device))[0]

    def _loss(self, rows: Tensor) -> tuple[LossOutput, Tensor]:
        run, acc, cfg = self.run, self.run.accelerator, self.run.cfg
        log_prob, entropy = _log_probs(run, run.prepared, self.c, rows)
        m = self.mask[rows]
        inputs = LossInputs(
            log_prob=log_prob,
            old_log_prob=log_prob.detach() if self.old is None else self.old[rows],
            advantages=self.adv[rows].to(log_prob),
            mask=m.bool(),
            ref_log_prob=None if self.ref is None else self.ref[rows],
            token_count=self.tokens / acc.num_processes,
            policy_weights=high_entropy_mask(entropy, m, cfg.loss.top_entropy_quantile, acc),
        )
        out = compute_loss(cfg.loss.name, inputs, cfg.loss)
        out.metrics["train/entropy"] = float((entropy * m).sum() / m.sum().clamp(min=1))
        return out, m


def loss_mask(run: TextRun, c: Completions) -> Tensor:
    """``[N, T]`` the tokens the loss trains on: every completion token, or (``train.mask_truncated_completions``)
    none of a completion that ran out of tokens before its EOS; such completions still count in the rewards' group
    statistics (TRL mask_truncated_completions)."""
    if not run.cfg.train.mask_truncated_completions:
        return c.completion_mask
    return c.completion_mask * c.terminated.unsqueeze(1).to(c.completion_mask)


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float, accelerator: Any) -> Tensor | None:
    """``[n, T]`` whether each token's entropy is at or above the (1 − q) quantile of the valid tokens' entropies
    on all processes, q = ``quantile`` (``loss.top_entropy_quantile``); None when q = 1 (every token trains). As
    TRL's get_high_entropy_mask: computed per micro-batch, padding and masked tokens excluded."""
    if quantile >= 1:
        return None
    valid = mask.bool()
    every = torch.cat(gather_all(accelerator, entropy.detach()[valid].float().cpu()))
    if every.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(every, 1 - quantile).to(entropy)
    return (entropy.detach() * mask >= threshold) & valid


def train_step(run: TextRun) -> dict[str, float]:
    """One iteration: draw prompts, generate, score, advantages, update. Metrics averaged over processes."""
    cfg, acc = run.cfg, run.accelerator
    t0 = time.perf_counter()
    rows = draw_prompts(run, run.train_rows, lambda row: prompt_key(row["prompt"]), cfg.train.prompts_per_step)
    batch = generate(run, rows)
    t1 = time.perf_counter()
    infinite = sum(gather_all(acc, int(torch.isinf(batch.rewards).sum())))  # NaN means "does not apply"
    if infinite:
        metrics = {"train/skipped_steps": 1.0, "reward/non_finite": float(infinite)}
    else:
        adv, metrics = advantages(run, batch)
        metrics.update(completion_metrics(batch.completions))
        metrics.update(monitor_metrics(run, batch))
        metrics.update(update(run, batch, adv.to(batch.completions.completion_ids.device)))
    t2 = time.perf_counter()
    run.num_tokens += int(batch.completions.completion_mask.sum() + batch.completions.prompt_mask.sum())
    metrics.update({"train/num_tokens": float(run.num_tokens), "time/sample_s": t1 - t0, "time/update_s": t2 - t1})
    metrics.update(run.reward_log.means())  # what reward functions logged with log_metric
    run.reward_log = RewardLog()
    metrics["time/step_s"] = t2 - t0
    metrics = mean_over_processes(acc, metrics)
    count_skip(
        run, metrics["train/skipped_steps"] > 0, "infinite reward" if infinite else "non-finite loss or gradient"
    )
    metrics["train/lr"] = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    run.iteration += 1
    return metrics


__all__ = [
    "TextBatch",
    "TextRun",
    "advantages",
    "completion_metrics",
    "generate",
    "reference_log_probs",
    "resolve_reward",
    "score",
    "setup",
    "train_step",
    "update",
    "weighted_total",
]
