"""A tiny verifiable text task: two-digit addition, with noisy pretraining labels.

Problems are ``a+b`` for a, b in 0..99, as a prompt ``"37+48="`` and an answer ``"85"``; the 10 000
problems are split once (seeded) into train and held-out sets by *unordered* pair: ``a+b`` and ``b+a`` are always
on the same side, so a held-out problem's swapped twin is never trained on (``split_pairs``). What a held-out
problem shares with training is its digits: every ones-digit and tens-digit pair occurs in training problems. A
language model sees exactly the prompt characters, with no BOS (``ADD_SPECIAL_TOKENS = False``; the tokenizer built
here adds nothing anyway), and completes them with the answer digits followed by the EOS token.

Pretraining labels are noisy on purpose: ``mislabel`` drops the carry out of the ones digit
(37+48 -> "75"), and the pretraining script applies it to a fraction of the carry problems. The
base model then learns a mixture, wrong under greedy decoding on carry problems but right in a
good share of temperature-1 samples, which is what RL with the ``correct`` reward can reinforce.

Completions are parsed by ``parse_answer``: the text before the first ``EOS_TOKEN`` (all of it if
there is none, as when decoded with ``skip_special_tokens=True``), with ``PAD_TOKEN`` removed and
whitespace stripped. A completion that never emits EOS runs to ``MAX_NEW_TOKENS`` = 4 characters,
longer than any answer, so it is never correct nor well formed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers takes seconds to import; only the model helpers need it
    from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<bos>", "<eos>", "<unk>"
CHARACTERS = "0123456789+="
ADD_SPECIAL_TOKENS = False  # prompts are tokenized as they are: no BOS, no EOS
MAX_NEW_TOKENS = 4  # at most 3 answer digits (99+99=198) and EOS
SPLITS = ("train", "held-out")
SOURCE_PREFIX = "toy-text:"
#: the toy chat model's turn markers (special tokens), extra characters and template: every message is
#: ``<|role|>content<|end|>``, and the generation prompt opens the assistant's turn. ``{{ bos_token }}`` and the
#: ``enable_thinking`` switch are there to test that the template writes its own special tokens and receives
#: ``chat_template_kwargs``.
CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_CHARACTERS = "abcdefghijklmnopqrstuvwxyz ."
CHAT_POSITIONS = 64
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %}"
    "no think.{% endif %}{% endif %}"
)
_NUMBER = re.compile(r"0|[1-9][0-9]{0,2}")


def split_pairs(
    held_out_fraction: float = 0.1, seed: int = 0, numbers: int = 100
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """All (a, b) with a, b in 0..``numbers``−1, split into disjoint (train, held-out) lists, each in (a, b) order.

    The unit is the unordered pair {a, b}: the held-out set takes pairs in a seeded random order, both orders of each
    (a single problem for a = b), until it holds round(numbers² · ``held_out_fraction``) problems; a pair of two that
    would overshoot is passed over, so the count is exact whenever a pair a = b is left to fill the last place (the
    default split: 9000 train, 1000 held-out). The same arguments give the same split on every run."""
    unordered = [(a, b) for a in range(numbers) for b in range(a, numbers)]
    random.Random(seed).shuffle(unordered)
    target, count, held = round(numbers * numbers * held_out_fraction), 0, set()
    for a, b in unordered:
        if count == target:
            break
        size = 1 if a == b else 2
        if count + size <= target:
            held.update({(a, b), (b, a)})
            count += size
    pairs = [(a, b) for a in range(numbers) for b in range(numbers)]
    return [p for p in pairs if p not in held], [p for p in pairs if p in held]


def prompt_of(a: int, b: int) -> str:
    """The prompt the model sees for a + b, e.g. ``"37+48="``."""
    return f"{a}+{b}="


def parse_prompt(prompt: str) -> tuple[int, int]:
    """Inverse of ``prompt_of``; raises ``ValueError`` naming the prompt if it is not an addition problem."""
    m = re.fullmatch(r"([0-9]{1,2})\+([0-9]{1,2})=", prompt)
    if m is None:
        raise ValueError(f"not a toy-text prompt: {prompt!r}")
    return int(m[1]), int(m[2])


def has_carry(a: int, b: int) -> bool:
    """Whether the ones digits carry into the tens (the problems ``mislabel`` corrupts)."""
    return a % 10 + b % 10 >= 10


def problems(split: str) -> list[dict[str, str]]:
    """Rows ``{"prompt": "37+48=", "answer": "85"}`` of one split ("train": 9000, "held-out": 1000)."""
    if split not in SPLITS:
        raise ValueError(f"unknown toy-text split {split!r}; expected one of {SPLITS}")
    pairs = split_pairs()[SPLITS.index(split)]
    return [{"prompt": prompt_of(a, b), "answer": str(a + b)} for a, b in pairs]


def mislabel(row: dict[str, str]) -> dict[str, str]:
    """``row`` with the carry out of the ones digit dropped (answer a + b − 10) if there is one, else unchanged."""
    a, b = parse_prompt(row["prompt"])
    return {**row, "answer": str(a + b - 10)} if has_carry(a, b) else row


def parse_answer(completion: str | list[dict[str, Any]]) -> str:
    """The answer a completion gives: text before the first EOS, padding removed, whitespace stripped (of a
    conversational completion, ``[{"role": "assistant", "content": ...}]``: of its last message's content)."""
    if not isinstance(completion, str):
        completion = completion[-1]["content"]
    return completion.split(EOS_TOKEN, 1)[0].replace(PAD_TOKEN, "").strip()


def correct(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any], **_: Any) -> list[float | None]:
    """TRL-style reward: 1.0 where ``parse_answer(completion) == str(answer).strip()``, else 0.0."""
    return [float(parse_answer(c) == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


def answer_digits(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[int]:
    """The number of characters in each completion's answer: a per-completion stratum (``advantage.strata``)."""
    return [len(parse_answer(c)) for c in completions]


def well_formed(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float | None]:
    """TRL-style reward: 1.0 where the parsed answer is a number of 1 to 3 digits without leading zeros."""
    return [float(_NUMBER.fullmatch(parse_answer(c)) is not None) for c in completions]


def build_tokenizer(chat: bool = False) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over ``CHARACTERS`` that adds no special tokens (ids: pad 0, bos 1,
    eos 2, unk 3, then the characters); decoding concatenates characters without spaces.

    ``chat``: the toy chat model's tokenizer: also lower-case letters, space and ``.``, the turn markers of
    ``CHAT_TEMPLATE`` as special tokens, ``<|end|>`` as its EOS (a turn ends the completion) and that template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *(CHAT_TOKENS if chat else ())]
    characters = CHARACTERS + (CHAT_CHARACTERS if chat else "")
    vocab = {t: i for i, t in enumerate(specials + list(characters))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=CHAT_TOKENS[-1] if chat else EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=CHAT_POSITIONS if chat else 16,
        additional_special_tokens=list(CHAT_TOKENS) if chat else None,
    )
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden: int = 128,
    layers: int = 3,
    heads: int = 4,
    intermediate: int = 384,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama for ``tokenizer`` (tied embeddings, as many positions as the tokenizer's
    ``model_max_length``: 16, or 64 for the chat tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id = tokenizer.pad_token_id, tokenizer.bos_token_id
    generation.eos_token_id, generation.max_new_tokens = tokenizer.eos_token_id, MAX_NEW_TOKENS
    return model


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    rows: list[dict[str, Any]],
    *,
    greedy: bool,
    samples: int = 1,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Mean ``correct`` reward of ``samples`` completions per row (1 if greedy), overall and, for
    toy-text prompts, on carry / no-carry problems; ``any_correct`` is the fraction of rows with at
    least one correct completion. Prompts are left-padded in batches of ``batch_size`` sequences."""
    import torch

    n = 1 if greedy else samples
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    sampling = {} if greedy else {"temperature": 1.0, "top_k": None, "top_p": None}
    completions: list[str] = []
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[i : i + batch_size],
                padding=True,
                padding_side="left",
                add_special_tokens=ADD_SPECIAL_TOKENS,
                return_tensors="pt",
            )
            out = model.generate(
                **batch,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=not greedy,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    scores = correct(prompts, completions, [r["answer"] for r in rows for _ in range(n)])
    per_row = [scores[i * n : (i + 1) * n] for i in range(len(rows))]
    report: dict[str, Any] = {
        "accuracy": _mean([s for row in per_row for s in row]),
        "any_correct": _mean([float(any(row)) for row in per_row]),
        "num_problems": len(rows),
        "samples_per_problem": n,
    }
    groups: dict[str, list[float]] = {"carry": [], "no_carry": []}
    for r, row in zip(rows, per_row, strict=True):
        try:
            groups["carry" if has_carry(*parse_prompt(r["prompt"])) else "no_carry"] += row
        except ValueError:  # not a toy-text prompt: counted overall only
            pass
    report.update({k: _mean(v) for k, v in groups.items() if v})
    return report


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


__all__ = [
    "ADD_SPECIAL_TOKENS",
    "EOS_TOKEN",
    "MAX_NEW_TOKENS",
    "PAD_TOKEN",
    "answer_digits",
    "build_model",
    "build_tokenizer",
    "correct",
    "evaluate_accuracy",
    "has_carry",
    "mislabel",
    "parse_answer",
    "parse_prompt",
    "problems",
    "prompt_of",
    "split_pairs",
    "well_formed",
]
