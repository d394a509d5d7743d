"""The text trainer with two CPU processes (``torch.distributed.run``, gloo, DDP): both draw the same prompts and
each generates its block of the completions (a group spans the two), the advantages are the whole batch's, the
weights stay identical, one run folder is written. This file is also the workers' script."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


PARALLEL_CLASS = {"ddp": "Replicated", "fsdp": "Sharded", "deepspeed": "Zero"}
_launched: dict[str, tuple[list[dict], Path]] = {}


def _launch(root: Path, kind: str) -> tuple[list[dict], Path]:
    """Train the text demo for 3 iterations on two CPU processes (once per parallel strategy in this session): both
    ranks' records and the run folder."""
    if kind in _launched:
        return _launched[kind]
    out, run_dir = root / kind / "out", root / kind / "run"
    out.mkdir(parents=True)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if kind == "deepspeed":  # ZeRO-2 over gloo: accelerate's CPU flag would turn DeepSpeed off
        pytest.importorskip("deepspeed")
        del env["ACCELERATE_USE_CPU"]
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2")
    if kind == "fsdp":  # the decoder layers sharded between the two processes
        env["ACCELERATE_USE_FSDP"] = "true"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, __file__, str(out), str(run_dir)], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    _launched[kind] = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)], run_dir
    return _launched[kind]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text_distributed")


@pytest.mark.parametrize("kind", ["ddp", "fsdp", "deepspeed"])
def test_two_processes_train_the_text_demo_in_step(root, kind):
    ranks, run_dir = _launch(root, kind)
    hashes = ranks[0]["hashes"]
    assert ranks[1]["hashes"] == hashes  # in step
    # moved every iteration, except a first one whose advantages are all 0 (every group solved: the re-trained toy
    # LM solves some draws outright), where Adam has no gradient and no momentum yet
    moved = [a != b for a, b in itertools.pairwise(hashes)]
    first = any(abs(x) > 0 for r in ranks for x in r["advantages"][0])
    assert moved == [first, True, True], (moved, first)
    assert ranks[0]["prompts"] == ranks[1]["prompts"] and len(ranks[0]["prompts"][0]) == 3
    assert all(r["parallel"] == PARALLEL_CLASS[kind] for r in ranks)
    for step in range(3):  # 3 prompts x 8 completions: 12 per process, the middle prompt's group split 4 / 4
        rewards = torch.tensor(ranks[0]["rewards"][step] + ranks[1]["rewards"][step]).view(3, 8)
        adv = torch.tensor(ranks[0]["advantages"][step] + ranks[1]["advantages"][step]).view(3, 8)
        expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)  # GRPO over whole groups, by hand
        assert ranks[0]["completions"][step] != ranks[1]["completions"][step]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_steps"] == 3 and summary["num_eval_samples"] == 50
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["final"]


def test_sharded_training_makes_the_updates_of_ddp(root):
    """FSDP (weights split between the processes, every generate call synced) trains as DDP does: the same
    first completions, the same weights after 3 updates up to reduction order, and the same saved adapter."""
    from safetensors.torch import load_file

    (ddp, ddp_dir), (fsdp, fsdp_dir) = _launch(root, "ddp"), _launch(root, "fsdp")
    assert [r["completions"][0] for r in fsdp] == [r["completions"][0] for r in ddp]
    torch.testing.assert_close(torch.tensor(fsdp[0]["weights"]), torch.tensor(ddp[0]["weights"]), rtol=1e-4, atol=1e-6)
    adapter = "checkpoints/final/lora/adapter_model.safetensors"
    a, b = load_file(ddp_dir / adapter), load_file(fsdp_dir / adapter)
    assert sorted(a) == sorted(b) and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    before = json.loads((ddp_dir / "summary.json").read_text())["eval_reward_before"]
    assert json.loads((fsdp_dir / "summary.json").read_text())["eval_reward_before"] == before  # same base policy


def _worker(out: str, run_dir: str) -> None:
    import flowrl.text.trainer as text
    from flowrl.cli import main
    from flowrl.core.sharding import full
    from flowrl.text.recipe import TextRecipe

    record: dict[str, list] = {"hashes": [], "prompts": [], "rewards": [], "advantages": [], "completions": []}
    step, generate, advantages = TextRecipe.train_step, text.generate, text.advantages

    def digest(run) -> str:
        h = hashlib.sha256()
        for p in run.params:
            h.update(full(p).numpy().tobytes())  # whole tensors: gathered from both processes under FSDP
        return h.hexdigest()

    def recorded_step(self, run):
        record["parallel"] = type(run.parallel).__name__
        if not record["hashes"]:
            record["hashes"].append(digest(run))
        metrics = step(self, run)
        record["hashes"].append(digest(run))
        record["weights"] = [float(v) for p in run.params for v in full(p).flatten()[:64]]
        return metrics

    def recorded_generate(run, rows):
        record["prompts"].append([r["prompt"] for r in rows])
        batch = generate(run, rows)
        record["completions"].append(batch.completions.texts)
        return batch

    def recorded_advantages(run, batch):
        adv, metrics = advantages(run, batch)
        record["rewards"].append(text.weighted_total(run, batch.rewards).tolist())
        record["advantages"].append(adv.tolist())
        return adv, metrics

    TextRecipe.train_step, text.generate, text.advantages = recorded_step, recorded_generate, recorded_advantages
    args = ["train.iterations=3", "train.prompts_per_step=3", "eval.num_prompts=50", "output.progress=false"]
    args.append(f"output.run_dir={run_dir}")
    assert main(["train", "--config", "configs/text_demo.yaml", *args]) == 0
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(*sys.argv[1:3])
