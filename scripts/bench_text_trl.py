"""Training speed of flowrl's text GRPO backend against TRL's GRPOTrainer, same model and settings, one process.

Both train the tiny toy LM (assets/toy-lm) with LoRA on the toy addition task: per step 16 prompts × 8
completions of at most 4 tokens, one optimizer step on all 128, loss ``grpo``, no KL, one pass, float32,
the same threads; TRL prints its logs once per run. Each repeat times ``--steps`` steps of each trainer
(after ``--warmup`` untimed ones) one after the other; the ratio is flowrl's steps/s over TRL's in that
repeat. Reports min / median / max of the ratios over ``--repeats`` as JSON and markdown (``--out``).

    python scripts/bench_text_trl.py --repeats 5 --steps 20 --out bench/text_trl
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

SETTINGS = {
    "prompts_per_step": 16,
    "group_size": 8,
    "max_new_tokens": 4,
    "lora_rank": 16,
    "lora_alpha": 32,
    "lr": 2e-3,
    "temperature": 1.0,
}


def flowrl_steps(model: str, steps: int, warmup: int, seed: int) -> float:
    """Steps per second of flowrl's text trainer."""
    from flowrl.config import load_config
    from flowrl.trainer.text import setup, train_step

    s = SETTINGS
    cfg = load_config(
        None,
        [
            "backend=text", f"seed={seed}", f"model.path={model}", f"model.lora_rank={s['lora_rank']}",
            f"model.lora_alpha={s['lora_alpha']}", f"generation.max_new_tokens={s['max_new_tokens']}",
            f"generation.temperature={s['temperature']}", f"train.prompts_per_step={s['prompts_per_step']}",
            f"train.group_size={s['group_size']}", "train.micro_batch=128", f"train.lr={s['lr']}",
            "loss.name=grpo", "loss.kl_coef=0", "advantage.std_unbiased=true",
        ],
    )  # fmt: skip
    run = setup(cfg)
    for _ in range(warmup):
        train_step(run)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(run)
    return steps / (time.perf_counter() - start)


def trl_steps(model: str, steps: int, warmup: int, seed: int) -> float:
    """Steps per second of TRL's GRPOTrainer (timed between its step-end callbacks)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from flowrl.text_world import correct, problems

    s = SETTINGS
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, seed=seed, max_steps=warmup + steps, learning_rate=s["lr"], lr_scheduler_type="constant",
            per_device_train_batch_size=s["prompts_per_step"] * s["group_size"], num_generations=s["group_size"],
            max_completion_length=s["max_new_tokens"], temperature=s["temperature"], beta=0.0, loss_type="grpo",
            bf16=False, use_cpu=True, report_to=[], logging_steps=warmup + steps, save_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[correct],
            args=args,
            train_dataset=Dataset.from_list(problems("train")),
            processing_class=AutoTokenizer.from_pretrained(model),
            peft_config=LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], target_modules=targets),
            callbacks=[Clock()],
        )
        trainer.train()
    timed = stamps[warmup - 1 :]
    return steps / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(REPO, "assets", "toy-lm"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "text_trl"))
    a = parser.parse_args()
    if a.warmup < 1 or a.steps < 1 or a.repeats < 1:
        parser.error("--warmup, --steps and --repeats must be >= 1")
    torch.set_num_threads(a.threads)
    runs = []
    for k in range(a.repeats):
        ours, theirs = flowrl_steps(a.model, a.steps, a.warmup, k), trl_steps(a.model, a.steps, a.warmup, k)
        runs.append({"flowrl_steps_per_s": ours, "trl_steps_per_s": theirs, "ratio": ours / theirs})
        print(
            f"repeat {k}: flowrl {ours:.2f} steps/s, TRL {theirs:.2f} steps/s, ratio {ours / theirs:.2f}", flush=True
        )
    ratios = [r["ratio"] for r in runs]
    import transformers
    import trl

    report = {
        "settings": SETTINGS,
        "steps": a.steps,
        "warmup": a.warmup,
        "threads": a.threads,
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
        "| repeat | flowrl steps/s | TRL steps/s | ratio |",
        "|---|---|---|---|",
        *(
            f"| {k} | {r['flowrl_steps_per_s']:.2f} | {r['trl_steps_per_s']:.2f} | {r['ratio']:.2f} |"
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
