"""Training speed of flowrl's text GRPO backend against TRL's GRPOTrainer, same model and settings, one process.

Workloads (``--workload``):
- ``toy``: the tiny toy LM (assets/toy-lm, 642 k parameters) with LoRA on the toy addition task: per step
  16 prompts × 8 completions of at most 4 tokens;
- ``large``: a 19.8 M-parameter Llama (width 512, 6 layers; random weights, a character tokenizer over 1000 CJK
  characters) with LoRA, prompts of 48 random characters (48 tokens) and completions of up to 64 tokens (with a
  1000-token vocabulary a random model rarely samples EOS; both sides' mean completion lengths are reported): per
  step 4 prompts × 8 completions.
Both: one optimizer step on all completions, loss ``grpo``, no KL, one pass, the frozen weights in float32 (or
bfloat16 with ``--dtype bf16``; LoRA weights in float32), the same threads, TRL's defaults otherwise; TRL prints
its logs once per run. Each repeat times ``--steps`` steps of each trainer (after ``--warmup`` untimed ones), the
order alternating between repeats; the ratio is flowrl's steps/s over TRL's in
that repeat. Reports min / median / max of the ratios over ``--repeats`` as JSON and markdown (``--out``).

    python scripts/bench_text_trl.py --repeats 5 --steps 20 --out bench/text_trl
    python scripts/bench_text_trl.py --workload large --repeats 5 --steps 8 --out bench/text_trl/large
    python scripts/bench_text_trl.py --workload large --dtype bf16 --repeats 5 --steps 8 \
        --out bench/text_trl/large-bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORKLOADS = {
    "toy": {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 4, "lora_rank": 16, "lora_alpha": 32,
            "lr": 2e-3, "temperature": 1.0},
    "large": {"prompts_per_step": 4, "group_size": 8, "max_new_tokens": 64, "lora_rank": 16, "lora_alpha": 32,
              "lr": 1e-4, "temperature": 1.0, "prompt_length": 48, "width": 512, "layers": 6},
}  # fmt: skip
LARGE_CHARACTERS = [chr(0x4E00 + i) for i in range(1000)]


def low_share(prompts, completions, **_):
    """The large workload's reward: the share of characters from the first half of the vocabulary (cheap, so that
    training is timed)."""
    return [sum(ord(ch) < 0x4E00 + 500 for ch in c) / max(len(c), 1) for c in completions]


class Lengths:
    """Wraps a reward to record the completion lengths it sees (tokens, EOS included) on either side."""

    def __init__(self, fn) -> None:
        self.fn, self.lengths, self.__name__ = fn, [], fn.__name__

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.lengths.append(statistics.fmean(len(ids) for ids in completion_ids))
        return self.fn(prompts, completions, **kwargs)


def large_tokenizer():
    """A character tokenizer over ``LARGE_VOCAB`` CJK characters (pad, bos, eos, unk first): with a vocabulary this
    large a random model rarely samples EOS, so completions run to their length limit on both sides."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + LARGE_CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    s = WORKLOADS["large"]
    limit = s["prompt_length"] + s["max_new_tokens"]
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=limit)  # fmt: skip


def build_large(folder: str) -> int:
    """The large workload's model, saved in ``folder``; its parameter count."""
    from flowrl.text.world import build_model

    s = WORKLOADS["large"]
    tokenizer = large_tokenizer()
    width = s["width"]
    model = build_model(tokenizer, hidden=width, layers=s["layers"], heads=8, intermediate=width * 11 // 4, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def workload_data(workload: str) -> tuple[list[dict], Lengths]:
    """(rows, reward function recording lengths) of a workload."""
    import random

    if workload == "toy":
        from flowrl.text.world import correct, problems

        return problems("train"), Lengths(correct)
    s, rng = WORKLOADS["large"], random.Random(0)
    rows = [{"prompt": "".join(rng.choice(LARGE_CHARACTERS) for _ in range(s["prompt_length"]))} for _ in range(256)]
    return rows, Lengths(low_share)


def flowrl_steps(workload: str, model: str, steps: int, warmup: int, seed: int, dtype: str) -> tuple[float, float]:
    """Steps per second of flowrl's text trainer and its mean completion length."""
    from flowrl.recipes import load_config
    from flowrl.text.trainer import setup, train_step

    s = WORKLOADS[workload]
    n = s["prompts_per_step"] * s["group_size"]
    cfg = load_config(
        None,
        [
            "backend=text", f"seed={seed}", f"model.path={model}", f"model.lora_rank={s['lora_rank']}",
            f"model.lora_alpha={s['lora_alpha']}", f"generation.max_new_tokens={s['max_new_tokens']}",
            f"generation.temperature={s['temperature']}", f"train.prompts_per_step={s['prompts_per_step']}",
            f"train.group_size={s['group_size']}", f"train.micro_batch={n}", f"train.lr={s['lr']}",
            "loss.name=grpo", "loss.kl_coef=0", "advantage.std_unbiased=true", f"model.weights_dtype={dtype}",
        ],
    )  # fmt: skip
    rows, reward = workload_data(workload)
    run = setup(cfg, dataset=rows, reward_funcs=[reward])
    for _ in range(warmup):
        train_step(run)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run)
    return steps / (time.perf_counter() - start), statistics.fmean(reward.lengths[warmup:])


def trl_steps(workload: str, model: str, steps: int, warmup: int, seed: int, dtype: str) -> tuple[float, float]:
    """Steps per second of TRL's GRPOTrainer (timed between its step-end callbacks) and its mean completion
    length over the timed steps."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    s = WORKLOADS[workload]
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    rows, reward = workload_data(workload)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, seed=seed, max_steps=warmup + steps, learning_rate=s["lr"], lr_scheduler_type="constant",
            per_device_train_batch_size=s["prompts_per_step"] * s["group_size"], num_generations=s["group_size"],
            max_completion_length=s["max_new_tokens"], temperature=s["temperature"], beta=0.0, loss_type="grpo",
            bf16=False, use_cpu=True, report_to=[], logging_steps=warmup + steps, save_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False,  # as flowrl: same settings
            model_init_kwargs={"dtype": {"fp32": "float32", "bf16": "bfloat16"}[dtype]},  # the frozen weights
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(model),
            peft_config=LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], target_modules=targets),
            callbacks=[Clock()],
        )
        trainer.train()
    timed = stamps[warmup - 1 :]
    return steps / (timed[-1] - timed[0]), statistics.fmean(reward.lengths[warmup:])


def repeat(workload: str, model: str, a: argparse.Namespace, k: int) -> dict[str, float]:
    """One repeat: both trainers with seed ``k``, TRL first on odd repeats."""
    sides = {"flowrl": flowrl_steps, "trl": trl_steps}
    out = {}
    for side in sorted(sides, reverse=k % 2 == 1):
        out[f"{side}_steps_per_s"], out[f"{side}_mean_length"] = sides[side](workload, model, a.steps, a.warmup, k,
                                                                            a.dtype)  # fmt: skip
    out["ratio"] = out["flowrl_steps_per_s"] / out["trl_steps_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="toy")
    parser.add_argument("--model", default=None, help="toy: default assets/toy-lm; large: built in a temp folder")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="the frozen (base) weights on both sides; LoRA weights stay fp32")  # fmt: skip
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "text_trl"))
    a = parser.parse_args()
    if a.warmup < 1 or a.steps < 1 or a.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be >= 1")
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as folder:
        model, parameters = a.model or os.path.join(REPO, "assets", "toy-lm"), None
        if a.workload == "large" and a.model is None:
            model, parameters = folder, build_large(folder)
        runs = []
        for k in range(a.repeats):
            runs.append(repeat(a.workload, model, a, k))
            r = runs[-1]
            print(f"repeat {k}: flowrl {r['flowrl_steps_per_s']:.2f} steps/s, TRL {r['trl_steps_per_s']:.2f} "
                  f"steps/s, ratio {r['ratio']:.2f}", flush=True)  # fmt: skip
    ratios = [r["ratio"] for r in runs]
    import transformers
    import trl

    report = {
        "workload": a.workload,
        "settings": WORKLOADS[a.workload],
        "parameters": parameters,
        "steps": a.steps,
        "warmup": a.warmup,
        "threads": a.threads,
        "dtype": a.dtype,
        "repeats": runs,
        "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios),
        "ratio_max": max(ratios),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
    }
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    lines = [
        "| repeat | flowrl steps/s | TRL steps/s | ratio | mean completion tokens flowrl / TRL |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {r['flowrl_steps_per_s']:.2f} | {r['trl_steps_per_s']:.2f} | {r['ratio']:.2f} | "
            f"{r['flowrl_mean_length']:.1f} / {r['trl_mean_length']:.1f} |"
            for k, r in enumerate(runs)
        ),
        "",
        f"ratio min / median / max: {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}",
    ]
    with open(os.path.join(a.out, "result.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
