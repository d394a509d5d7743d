"""Pretrain the toy causal language model for text GRPO from scratch on CPU (offline, seeded).

A tiny Llama (``text_world.build_model``) with a character-level tokenizer (``build_tokenizer``) learns
two-digit addition on the *train* problems only (never a held-out problem nor its swapped twin: the split is by
unordered pair, ``text_world.split_pairs``) by teacher forcing: the input is the prompt characters
(no BOS) followed by the answer digits and EOS, and the cross-entropy covers only the answer digits
and EOS, since the prompt digits are random and predicting them teaches nothing. Labels are noisy on
purpose: each time a carry problem is drawn, with probability ``--mislabel`` its answer drops the
carry (``text_world.mislabel``: 37+48 -> "75"). The base then puts roughly that probability on the
wrong answer of every carry problem, so greedy decoding gets them wrong while temperature-1 sampling
is still right often enough for RL on the ``correct`` reward to reinforce.
The model is saved with its tokenizer, loaded back as a user would, and scored on the held-out
problems, greedy and sampled; the report lands in ``<out>/pretrain_report.json``, with the split it was trained
on (sizes and the SHA-256 of the held-out prompts, which ``tests/test_text_world.py`` compares with the split now).

    python scripts/pretrain_text_toy.py --out assets/toy-lm   # the committed base: defaults below
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from flowrl.core.atomic import atomic_dir
from flowrl.core.lr_schedule import warmup_cosine
from flowrl.text.world import (
    ADD_SPECIAL_TOKENS,
    build_model,
    build_tokenizer,
    evaluate_accuracy,
    mislabel,
    problems,
)

MAX_FOLDER_BYTES = 10 * 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/toy-lm", help="output folder (replaced atomically)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--mislabel", type=float, default=0.6, help="probability that a carry problem's label drops it")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    p.add_argument("--samples", type=int, default=4, help="temperature-1 samples per held-out problem in the report")
    p.add_argument("--eval-every", type=int, default=1000, help="greedy held-out accuracy every N steps (0: never)")
    return p.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    return warmup_cosine(step, args.lr, args.warmup, args.steps)


def encode(tokenizer: PreTrainedTokenizerFast, rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``attention_mask`` [B, T] of prompt + answer + EOS, and ``labels``
    [B, T] equal to the ids on the answer and EOS and −100 elsewhere."""
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=ADD_SPECIAL_TOKENS)["input_ids"]
    answers = tokenizer([r["answer"] for r in rows], add_special_tokens=False)["input_ids"]
    length = max(len(p) + len(a) + 1 for p, a in zip(prompts, answers, strict=True))
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), -100)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        seq = [*p, *a, tokenizer.eos_token_id]
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(seq[len(p) :])
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train, held_out = problems("train"), problems("held-out")
    tokenizer = build_tokenizer()
    sizes = {k: getattr(args, k) for k in ("hidden", "layers", "heads", "intermediate")}
    model = build_model(tokenizer, **sizes, seed=args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = random.Random(args.seed)
    print(f"{sum(p.numel() for p in model.parameters())} parameters, {len(train)} train problems", flush=True)
    model.train()
    start = time.time()
    for step in range(args.steps):
        # Labels are redrawn on every visit, so no problem is memorised as always wrong or always right.
        rows = [rng.choice(train) for _ in range(args.batch_size)]
        rows = [mislabel(r) if rng.random() < args.mislabel else r for r in rows]
        loss = model(**encode(tokenizer, rows)).loss
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step, args):.2e}  {time.time() - start:.0f}s")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"  held-out greedy: {evaluate_accuracy(model, tokenizer, held_out, greedy=True)}", flush=True)
    train_seconds = time.time() - start

    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        report = evaluate_folder(tmp, held_out, args)
        report.update(
            {
                "split": split_record(train, held_out),
                **{k: getattr(args, k) for k in ("steps", "batch_size", "lr", "weight_decay", "mislabel", "seed")},
                **sizes,
                "threads": args.threads,
                "train_seconds": round(train_seconds, 1),
                "torch": torch.__version__,
            }
        )
        with open(os.path.join(tmp, "pretrain_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        size = folder_bytes(tmp)
        if size > MAX_FOLDER_BYTES:  # raising leaves a previous folder in place
            raise SystemExit(f"model folder is {size / 2**20:.1f} MB, over the 10 MB budget")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({size / 2**20:.2f} MB)")


def split_record(train: list[dict[str, str]], held_out: list[dict[str, str]]) -> dict[str, object]:
    """What the model was trained on: the split's unit and sizes, and the SHA-256 of the held-out prompts joined by
    newlines (in the split's order)."""
    digest = hashlib.sha256("\n".join(r["prompt"] for r in held_out).encode()).hexdigest()
    return {"unit": "unordered pair", "train": len(train), "held_out": len(held_out), "held_out_sha256": digest}


def evaluate_folder(path: str, rows: list[dict[str, str]], args: argparse.Namespace) -> dict:
    """Held-out accuracy of the saved model and tokenizer, loaded back as a user would."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    greedy = evaluate_accuracy(model, tokenizer, rows, greedy=True)
    sampled = evaluate_accuracy(model, tokenizer, rows, greedy=False, samples=args.samples, seed=args.seed)
    return {"held_out_greedy": greedy, "held_out_sampled_t1": sampled}


if __name__ == "__main__":
    sys.exit(main())
