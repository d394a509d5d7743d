"""The text trainer with two CPU processes (``torch.distributed.run``, gloo, DDP): both draw the same prompts and
each generates its block of the completions (a group spans the two), the advantages are the whole batch's, the
weights stay identical, one run folder is written. This file is also the workers' script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend", ["ddp", "deepspeed"])
def test_two_processes_train_the_text_demo_in_step(tmp_path, backend):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if backend == "deepspeed":  # ZeRO-2 over gloo: accelerate's CPU flag would turn DeepSpeed off
        pytest.importorskip("deepspeed")
        del env["ACCELERATE_USE_CPU"]
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, __file__, str(out), str(run_dir)], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    assert ranks[0]["hashes"] == ranks[1]["hashes"] and len(set(ranks[0]["hashes"])) == 4  # moved, in step
    assert ranks[0]["prompts"] == ranks[1]["prompts"] and len(ranks[0]["prompts"][0]) == 3
    assert all(r["deepspeed"] == (backend == "deepspeed") for r in ranks)
    for step in range(3):  # 3 prompts x 8 completions: 12 per process, the middle prompt's group split 4 / 4
        rewards = torch.tensor(ranks[0]["rewards"][step] + ranks[1]["rewards"][step]).view(3, 8)
        adv = torch.tensor(ranks[0]["advantages"][step] + ranks[1]["advantages"][step]).view(3, 8)
        expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
        torch.testing.assert_close(adv, expected, atol=1e-5, rtol=1e-5)  # GRPO over whole groups, by hand
        assert ranks[0]["completions"][step] != ranks[1]["completions"][step]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_steps"] == 3 and summary["num_eval_samples"] == 50
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["final"]


def _worker(out: str, run_dir: str) -> None:
    import flowrl.trainer.text as text
    import flowrl.trainer.text_run as runner
    from flowrl.cli import main

    record: dict[str, list] = {"hashes": [], "prompts": [], "rewards": [], "advantages": [], "completions": []}
    step, generate, advantages = runner.train_step, text.generate, text.advantages

    def digest(run) -> str:
        h = hashlib.sha256()
        for p in run.params:
            h.update(p.detach().cpu().numpy().tobytes())
        return h.hexdigest()

    def recorded_step(run):
        record["deepspeed"] = run.engine is not None
        if not record["hashes"]:
            record["hashes"].append(digest(run))
        metrics = step(run)
        record["hashes"].append(digest(run))
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

    runner.train_step, text.generate, text.advantages = recorded_step, recorded_generate, recorded_advantages
    args = ["train.iterations=3", "train.prompts_per_step=3", "eval.num_prompts=50", "output.progress=false"]
    args.append(f"output.run_dir={run_dir}")
    assert main(["train", "--config", "configs/text_demo.yaml", *args]) == 0
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    torch.set_num_threads(1)
    _worker(*sys.argv[1:3])
