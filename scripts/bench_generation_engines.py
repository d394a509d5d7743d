"""Speed of the text trainer's two generation engines on the same model and prompts: transformers' ``generate``
(padded batches) against its continuous batching (``generate_batch``, paged attention).

The model is the TRL benchmark's large workload (``scripts/bench_text_trl.py``: a 19.8 M-parameter Llama with
random weights, prompts of 48 tokens, completions of up to 64 tokens, temperature 1). Each repeat samples
``--prompts`` prompts × ``--group`` completions once with each engine (the order alternating between repeats,
after one untimed call of each); the ratio is continuous's completion tokens per second over generate's. Reports
min / median / max over ``--repeats`` as JSON and markdown (``--out``).

    python scripts/bench_generation_engines.py --repeats 5 --out bench/text_trl/engines
    python scripts/bench_generation_engines.py --options "{num_blocks: 256, max_batch_tokens: 4096}"
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
sys.path.insert(0, os.path.join(REPO, "scripts"))


def sample(engine: str, model, tokenizer, prompts: list[str], group: int, seed: int, options: dict) -> float:
    """Completion tokens per second of one call of ``engine``."""
    from flowrl.text.model import sample_completions, sample_continuous

    sampling = {"max_new_tokens": 64, "temperature": 1.0, "add_special_tokens": False}
    start = time.perf_counter()
    if engine == "continuous":
        c = sample_continuous(model, tokenizer, prompts, group, seed=seed, options=options, **sampling)
    else:
        torch.manual_seed(seed)
        c = sample_completions(model, tokenizer, prompts, group, **sampling)
    return float(c.completion_mask.sum()) / (time.perf_counter() - start)


def main() -> None:
    from bench_text_trl import build_large, workload_data
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--options", default="{}", help="ContinuousBatchingConfig fields as a YAML mapping (default: "
                        "none, the cache sized for the batch as the trainer sizes it)")  # fmt: skip
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "text_trl", "engines"))
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    import yaml

    options = yaml.safe_load(a.options) or {}
    with tempfile.TemporaryDirectory() as folder:
        parameters = build_large(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows, _ = workload_data("large")
        engines = ("generate", "continuous")
        for engine in engines:  # warm-up
            sample(engine, model, tokenizer, [r["prompt"] for r in rows[: a.prompts]], a.group, 0, options)
        runs = []
        for k in range(a.repeats):
            prompts = [r["prompt"] for r in rows[(k + 1) * a.prompts : (k + 2) * a.prompts]]
            speeds = {e: sample(e, model, tokenizer, prompts, a.group, k, options)
                      for e in (engines if k % 2 == 0 else engines[::-1])}  # fmt: skip
            runs.append({**{f"{e}_tokens_per_s": v for e, v in speeds.items()},
                         "ratio": speeds["continuous"] / speeds["generate"]})  # fmt: skip
            print(f"repeat {k}: generate {speeds['generate']:.0f} tok/s, continuous {speeds['continuous']:.0f} tok/s, "
                  f"ratio {runs[-1]['ratio']:.2f}", flush=True)  # fmt: skip
    ratios = [r["ratio"] for r in runs]
    report = {
        "parameters": parameters, "prompts": a.prompts, "group": a.group, "threads": a.threads,
        "continuous_options": options, "repeats": runs, "ratio_min": min(ratios),
        "ratio_median": statistics.median(ratios), "ratio_max": max(ratios),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }  # fmt: skip
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    line = f"continuous / generate tokens per second, min / median / max: {min(ratios):.2f} / " \
           f"{statistics.median(ratios):.2f} / {max(ratios):.2f}"  # fmt: skip
    with open(os.path.join(a.out, "result.md"), "w", encoding="utf-8") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
