"""Train a few configurations for two iterations and print a hash of the trained weights, to check that a
refactor leaves training bit-identical (issue 29). Runs ``python -m flowrl train`` in subprocesses, so it checks the
code that the interpreter imports (set PYTHONPATH to compare another checkout).

    python scripts/weights_hash.py --out hashes.json [--cases demo,nft]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
QUIET = [
    "train.iterations=2",
    "train.max_minutes=0",
    "eval.enabled=false",
    "output.progress=false",
    "output.tensorboard=false",
]  # max_minutes=0: a loaded machine must not cut the second iteration
LORA = ["model.finetune=lora", "model.lora_rank=8", "model.lora_alpha=8",
        "model.lora_targets=[attn.to_q, attn.to_k, attn.to_v, attn.to_out.0]"]  # fmt: skip
ODE = ["sampler.mode=ode", "sampler.window_size=0", "sampler.window_options={}"]
SMALL = ["train.prompts_per_step=2", "train.group_size=4"]  # the method cases on a smaller batch (2 CPU cores)
CASES = {
    "demo": ("configs/demo.yaml", []),
    "awm-lora-reference": ("configs/demo.yaml", [*SMALL, *LORA, *ODE, "loss.name=awm", "loss.awm_weighting=ghuber",
                           "loss.renoise=stratified", "loss.renoise_count=6", "train.timestep_fraction=0.9",
                           "loss.awm_ratio=true", "loss.velocity_kl_coef=1.0e-3", "loss.awm_ema_coef=1",
                           "loss.awm_ema_decay=0.3", "train.minibatches=1"]),
    "branchgrpo-tree-kl": ("configs/demo.yaml", [*SMALL, *LORA, "sampler.mode=branchgrpo", "sampler.window_size=0",
                           "sampler.window_options={}", "sampler.split_steps=[0,2]", "sampler.branch_factor=2",
                           "advantage.name=tree", "loss.kl_coef=0.04"]),
    "nft": ("configs/demo.yaml", [*SMALL, *ODE, "loss.name=nft", "sampler.tail_solver=dpm2m",
                                  "train.timestep_fraction=0.99", "loss.velocity_kl_coef=1.0e-4",
                                  "train.minibatches=1"]),
    "text-demo": ("configs/text_demo.yaml", []),
}  # fmt: skip


def weights_hash(folder: Path) -> str:
    """sha256 over every tensor of the ``*.safetensors`` files under ``folder`` (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        tensors = load_file(str(path))
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(f"{path.name}/{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    result = json.loads(Path(args.out).read_text()) if os.path.exists(args.out) else {}
    for name in args.cases.split(","):
        if name in result:  # resumable: a stopped run keeps what it measured
            continue
        config, overrides = CASES[name]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cmd = [sys.executable, "-m", "flowrl", "train", "--config", str(ROOT / config), *QUIET, *overrides,
                   f"output.run_dir={run_dir}"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            result[name] = weights_hash(run_dir / "checkpoints" / "final")
        print(name, result[name], flush=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
