"""Causal language models for the text GRPO backend: generation and per-token log-probabilities.

Any ``transformers`` ``AutoModelForCausalLM`` works. Prompts are left-padded, completions right-padded, and
positions are counted over each row's attended tokens (``mask_positions``), as ``generate`` numbers them while it
samples: the log-probs the loss uses are those of the distribution the completions were drawn from, for learned
absolute positions (GPT-2) as for rotary ones, whatever the padding; both log-prob paths number them alike.

The shared-prefix forward (``token_log_probs(..., shared_prefix=True)``) runs each distinct prompt once,
keeps its key/value cache (with its autograd graph) and runs the G completions of the group on copies of
that cache: the prompt's cost is paid once per group instead of G times, with the same log-probs and the
same gradients as the plain forward over the concatenated sequences.

Sampling with ``generate`` shares prompts too: each prompt's key/value cache is computed once and repeated for its
completions (``_shared_prefill``), which samples the same tokens as the plain call.

A prompt longer than the model leaves room for (``max_position_embeddings`` − ``max_new_tokens``) is truncated
from the left, keeping the text next to the completion as TRL's ``max_prompt_length`` does; the first such prompt
logs a warning (logger ``flowrl.models``) naming it, its length and the limit.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers for a deprecated attribute while it wraps a model; the FutureWarning is nothing a user
    can change, so it is kept off the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        yield


@dataclass
class Completions:
    """A batch of sampled completions, ``N`` rows; prompt ``index`` ``[N]`` points into the prompt tensors.

    prompt_ids / prompt_mask: ``[P, Lp]`` left-padded; completion_ids / completion_mask: ``[N, Lc]``, the mask
    1 up to and including the first EOS (0 after it and on padding); terminated ``[N]``: an EOS was produced.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    index: Tensor
    terminated: Tensor
    texts: list[str]


def tokenize_prompts(
    tokenizer, prompts: list[str], device: torch.device, max_length: int | None = None, add_special_tokens: bool = True
) -> tuple[Tensor, Tensor]:
    """Left-padded ``input_ids, attention_mask`` ``[P, Lp]`` of the prompts, with the tokenizer's special tokens
    unless ``add_special_tokens`` is False (text a chat template rendered has its own); with ``max_length``, longer
    prompts keep their last ``max_length`` tokens (a warning is logged once)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(
            prompts, return_tensors="pt", padding=True, verbose=False, add_special_tokens=add_special_tokens
        )
    finally:
        tokenizer.padding_side = side
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if max_length is not None and ids.shape[1] > max_length:
        from flowrl.core.inputs import warn_truncation

        reader = "the model (its positions less the completion's)"
        warn_truncation(tokenizer, prompts, max_length, reader, how="truncated from the left")
        ids, mask = ids[:, -max_length:], mask[:, -max_length:]  # left padding: every row's tail is in these columns
    return ids.to(device), mask.to(device)


def prompt_room(model, max_new_tokens: int) -> int | None:
    """Prompt tokens the model has positions for after ``max_new_tokens`` (None when it has no such limit)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return max(1, limit - max_new_tokens) if isinstance(limit, int) else None


def completion_mask(ids: Tensor, eos_token_id: int | list[int]) -> tuple[Tensor, Tensor]:
    """``(mask [N, Lc], terminated [N])``: 1 up to and including each row's first EOS token."""
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=ids.device)
    is_eos = torch.isin(ids, eos)
    terminated = is_eos.any(1)
    first = torch.where(terminated, is_eos.int().argmax(1), ids.shape[1])
    mask = torch.arange(ids.shape[1], device=ids.device)[None] <= first[:, None]
    return mask.long(), terminated


def _prompt_rows(
    model, tokenizer, prompts: list[str], group_size: int | Sequence[int], max_new_tokens: int, special: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Both engines' inputs: left-padded prompts ``[P, Lp]`` (and mask) on the model's device, cut to the positions
    left after ``max_new_tokens``, and each completion row's prompt index ``[N]``."""
    device = next(model.parameters()).device
    room = prompt_room(model, max_new_tokens)
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, device, room, special)
    index = torch.arange(len(prompts), device=device).repeat_interleave(torch.as_tensor(group_size, device=device))
    return prompt_ids, prompt_mask, index


def mask_positions(mask: Tensor) -> Tensor:
    """Position ids ``[N, L]`` counted over the attended tokens only (padding gets 0), as ``generate`` numbers
    them: a left-padded row's first real token is at 0 however much padding precedes it."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _dynamic(model) -> bool:
    """The model keeps its keys and values in transformers' ``DynamicCache`` (not a recurrent state of its own)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    return bool(supports and supports()) and "past_key_values" in inspect.signature(base.forward).parameters


def _shared_prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, index: Tensor):
    """The key/value cache of each prompt ``[P, Lp]`` but its last token, computed once per prompt and repeated for
    its completion rows ``index`` ``[N]``: ``generate`` then runs only the last prompt token per row, not the whole
    prompt G times (the same tokens are sampled; about 9% of a batch's time for 48-token prompts × 8 completions).
    Positions are numbered from the attention mask, as ``generate`` numbers them."""
    from transformers import DynamicCache

    ids, mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
    cache = DynamicCache(config=model.config)
    # only the cache is used: logits of the last position alone, not vocabulary-wide ones over the whole prompt
    model(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask), past_key_values=cache, use_cache=True,
          logits_to_keep=1)  # fmt: skip
    cache.batch_select_indices(index)
    return cache


def _cache_size(requests: list[list[int]], max_new_tokens: int, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with a paged cache of as many blocks as every request needs at once (its prompt plus
    ``max_new_tokens``, in pages of ``page_size`` tokens) unless they size it themselves. Left to transformers, the
    cache takes a share of the free memory on every call: seconds per call on a CPU (4–11 s for the 642 k-parameter
    toy LM here, against about 1 s sized for the batch), and memory that training needs on a GPU."""
    if "num_blocks" in options or "max_memory_percent" in options:
        return options
    page = options.get("page_size", 256)
    return {**options, "num_blocks": sum(-(-(len(r) + max_new_tokens) // page) for r in requests)}


def _completions(tokenizer, prompt_ids: Tensor, prompt_mask: Tensor, ids: Tensor, index: Tensor) -> Completions:
    """``Completions`` of generated ``ids`` ``[N, Lc]``: masked after the first EOS, padded there, decoded."""
    mask, terminated = completion_mask(ids, tokenizer.eos_token_id)
    ids = ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Completions(prompt_ids, prompt_mask, ids, mask, index, terminated, texts)


@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: list[str],
    group_size: int | Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator_seed: int | None = None,
    row_seeds: Sequence[int] | None = None,
    synced: bool = False,
    add_special_tokens: bool = True,
    cache_implementation: str | None = None,
) -> Completions:
    """``group_size`` sampled completions per prompt (rows ``[p·G, (p+1)·G)`` belong to prompt ``p``), or
    ``group_size[p]`` of prompt ``p``; ``temperature = 0`` decodes greedily (then every row of a group is the same).

    Sampling draws from torch's global RNG (seeded with ``generator_seed`` if given), or, with ``row_seeds`` (one per
    row), from each row's own generator: then a row's completion does not depend on the other rows of the batch
    (evaluation seeds it per (prompt, sample index), ``flowrl.core.seeds.eval_noise_seed``). ``synced``: the weights
    are sharded over the processes, so every process runs decoding steps until all of them are done (transformers'
    ``synced_gpus``). ``add_special_tokens``: as in ``tokenize_prompts``. ``cache_implementation``: ``generate``'s
    key/value cache (None: the model's default); the model is not compiled for it (as TRL's trainer does)."""
    prompt_ids, prompt_mask, index = _prompt_rows(model, tokenizer, prompts, group_size, max_new_tokens,
                                                  add_special_tokens)  # fmt: skip
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    # every sampling field explicit: a model's generation_config (top_k 50, a repetition penalty) must not change the
    # distribution the loss's softmax(logits / T) assumes
    options = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature}
    if temperature:
        options.update(top_p=top_p, top_k=top_k)
    options["repetition_penalty"] = 1.0
    cache = {"cache_implementation": cache_implementation, "disable_compile": True} if cache_implementation else {}
    if not cache and not synced and len(index) > len(prompt_ids) and prompt_ids.shape[1] > 1 and _dynamic(model):
        cache = {"past_key_values": _shared_prefill(model, prompt_ids, prompt_mask, index)}
    if temperature and row_seeds is not None:
        if len(row_seeds) != len(index):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(index)} completions")
        options = {"do_sample": False, "logits_processor": _row_sampler(row_seeds, temperature, top_p, top_k)}
    out = model.generate(
        input_ids=prompt_ids[index],
        attention_mask=prompt_mask[index],
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        synced_gpus=synced,
        **options,
        **cache,
    )
    ids = out[:, prompt_ids.shape[1] :]
    return _completions(tokenizer, prompt_ids, prompt_mask, ids, index)


@torch.no_grad()
def sample_continuous(
    model,
    tokenizer,
    prompts: list[str],
    group_size: int | Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    add_special_tokens: bool = True,
) -> Completions:
    """``sample_completions`` with transformers' continuous batching (``generate_batch``: paged attention, requests
    scheduled as others finish) instead of ``generate``: the same rows and shapes, each completion drawn from the
    same distribution (softmax(logits / temperature), top-p / top-k), from a generator seeded with ``seed``.
    ``options``: ``ContinuousBatchingConfig`` fields (cache blocks, batch tokens; TRL's
    transformers_continuous_batching_config); without ``num_blocks`` or ``max_memory_percent`` the paged cache holds
    exactly this batch (``_cache_size``). Completions reach EOS or ``max_new_tokens``."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    prompt_ids, prompt_mask, index = _prompt_rows(model, tokenizer, prompts, group_size, max_new_tokens,
                                                  add_special_tokens)  # fmt: skip
    requests = [prompt_ids[i][prompt_mask[i].bool()].tolist() for i in index.tolist()]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k} if temperature else {}
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **sampling)  # fmt: skip
    batching = ContinuousBatchingConfig(**{"seed": seed, **_cache_size(requests, max_new_tokens, options or {})})
    training = model.training  # the batching manager puts the model in eval mode
    try:
        results = list(model.generate_batch(requests, generation_config=config, continuous_batching_config=batching,
                                            progress_bar=False).values())  # fmt: skip
    finally:
        model.train(training)
    failed = [r.error for r in results if r.error is not None]
    if len(results) != len(requests) or failed:
        why = failed[0] if failed else "see the log"
        raise RuntimeError(f"continuous batching finished {len(results) - len(failed)} of {len(requests)} "
                           f"completions ({why})")  # fmt: skip
    width = max(1, max(len(r.generated_tokens) for r in results))
    ids = torch.full((len(results), width), tokenizer.pad_token_id, dtype=torch.long)
    for row, r in enumerate(results):
        ids[row, : len(r.generated_tokens)] = torch.tensor(r.generated_tokens[:width], dtype=torch.long)
    return _completions(tokenizer, prompt_ids, prompt_mask, ids.to(prompt_ids.device), index)


class _GumbelRows:
    """A logits processor that turns greedy decoding into sampling with one generator per row: the argmax of
    ``logits + Gumbel noise`` is an exact draw from ``softmax(logits)``, and row ``i``'s noise comes only from its
    own generator (one uniform draw per vocabulary entry and step)."""

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        u = torch.stack([torch.rand(scores.shape[1], generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
        return scores.float() + gumbel.to(scores.device, torch.float32)


def _row_sampler(seeds: Sequence[int], temperature: float, top_p: float, top_k: int):
    """transformers' own temperature / top-k / top-p warpers (in its sampling order), then per-row Gumbel noise."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    steps: list = [TemperatureLogitsWarper(temperature)]
    if top_k:
        steps.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        steps.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList([*steps, _GumbelRows(seeds)])


def token_log_probs(
    model,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    index: Tensor,
    *,
    temperature: float = 1.0,
    shared_prefix: bool = True,
) -> tuple[Tensor, Tensor]:
    """Log-probabilities ``[N, Lc]`` of each completion token under ``softmax(logits / temperature)`` and the
    distribution's entropy ``[N, Lc]`` (detached), for completions of prompts ``index`` ``[N]``.

    ``shared_prefix``: run the distinct prompts once and their completions on index-selected copies of the
    prompt's key/value cache; otherwise one forward over each row's prompt + completion."""
    t = temperature or 1.0
    if shared_prefix:
        used, local = index.unique(return_inverse=True)
        p_ids, p_mask = prompt_ids[used], prompt_mask[used]
        first = model(input_ids=p_ids, attention_mask=p_mask, position_ids=mask_positions(p_mask), use_cache=True,
                      logits_to_keep=1)  # fmt: skip
        cache = first.past_key_values
        cache.batch_select_indices(local)
        mask = torch.cat([p_mask[local], completion_mask], dim=1)
        positions = mask_positions(mask)[:, p_ids.shape[1] :]
        rest = model(input_ids=completion_ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                     use_cache=True)  # fmt: skip
        # token k of a completion is predicted at position k−1: the prompt's last logits, then the completion's
        logits = torch.cat([first.logits[local, -1:], rest.logits[:, :-1]], dim=1)
    else:
        ids = torch.cat([prompt_ids[index], completion_ids], dim=1)
        mask = torch.cat([prompt_mask[index], completion_mask], dim=1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask),
                       logits_to_keep=completion_ids.shape[1] + 1).logits[:, :-1]  # fmt: skip
    logits = logits.float() / t
    log_norm = logits.logsumexp(-1)
    log_prob = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - log_norm
    with torch.no_grad():
        p = (logits - log_norm.unsqueeze(-1)).exp()
        entropy = log_norm - (p * logits).sum(-1)
    return log_prob, entropy


__all__ = [
    "Completions",
    "completion_mask",
    "mask_positions",
    "prompt_room",
    "sample_completions",
    "token_log_probs",
    "tokenize_prompts",
]
