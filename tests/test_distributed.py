"""Multi-process training: two CPU processes (``torch.distributed.run``, gloo) train the tiny toy model.

``accelerate launch --cpu --num_processes 2`` starts a single process (its CPU launcher needs mpirun), so the
test launches with ``torch.distributed.run`` and ``ACCELERATE_USE_CPU``, which accelerate reads as a
multi-CPU (gloo) run. This file is also the workers' script: run as ``__main__`` it checks one DDP update
against a single process's gradient, the split evaluation against an unsplit one, then trains through the
command line while recording each process's prompts and weights; the test reads what the workers wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer import TINY_ARGS

from flowrl.config import load_config
from flowrl.trainer.data import load_prompts
from flowrl.trainer.flow import StepPlan, _reassemble, draw_prompts, eval_share, plan_steps

# the tiny run of test_trainer, evaluating 2 prompts × 2 seeds so that both processes get a share
TRAIN_ARGS = [*TINY_ARGS, "eval.num_prompts=2", "eval.seeds_per_prompt=2"]
# what must keep working under DDP: the reference policy (KL), gradient checkpointing, EMA, several
# optimizer steps of uneven micro-batches per iteration, and intermediate checkpoints
DDP_FEATURES = [
    "loss.kl_coef=0.1",
    "model.gradient_checkpointing=true",
    "train.ema_decay=0.5",
    "train.minibatches=2",
    "train.micro_batch=5",
    "train.save_every=1",
]


# ----------------------------------------------------------------------------------------------- in-process


def test_one_process_draws_prompts_as_before_and_processes_draw_disjoint_slices():
    pool = [f"p{i}" for i in range(10)]
    assert draw_prompts(random.Random(3), pool, 4, 1, 0) == random.Random(3).sample(pool, 4)
    assert draw_prompts(random.Random(3), pool, 40, 1, 0) == random.Random(3).sample(pool, 10)
    shares = [draw_prompts(random.Random(3), pool, 3, 3, k) for k in range(3)]
    assert [p for s in shares for p in s] == random.Random(3).sample(pool, 9)
    # more prompts than the pool holds: every process still gets its full share of distinct prompts
    shares = [draw_prompts(random.Random(3), pool, 8, 2, k) for k in range(2)]
    assert all(len(set(s)) == 8 for s in shares) and shares[0] != shares[1]


def test_step_plan_pads_backward_calls_and_counts_rows_of_every_process():
    # 16 and 10 rows, 2 minibatches of micro-batches of 4: chunks 8+8 and 5+5
    assert plan_steps([16, 10], 2, 4) == StepPlan(rows=[13, 13], calls=[2, 2])
    # 3 rows make only 3 chunks of 4 (Tensor.chunk); a process with no rows follows the others
    assert plan_steps([3, 0], 4, 1) == StepPlan(rows=[1, 1, 1], calls=[1, 1, 1])
    assert plan_steps([0, 0], 2, 4) == StepPlan(rows=[], calls=[])
    assert plan_steps([16], 1, 5) == StepPlan(rows=[16], calls=[4])


def test_evaluation_shares_keep_prompt_groups_and_reassemble_in_order():
    prompts = ["a", "a", "b", "b", "c", "c"]
    shares = [eval_share(prompts, k, 2) for k in range(2)]
    assert shares == [[0, 1, 4, 5], [2, 3]]
    images = torch.arange(6.0).view(6, 1)
    parts = {"reward": torch.arange(6.0) * 10}
    gathered = [(s, images[s], {"reward": parts["reward"][s]}) for s in [*shares, []]]
    out_images, out_parts = _reassemble(gathered)
    assert torch.equal(out_images, images) and torch.equal(out_parts["reward"], parts["reward"])


# ----------------------------------------------------------------------------------------------- two processes


def test_two_processes_train_different_prompts_with_synchronised_gradients(tiny_model, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [__file__, tiny_model, str(out), str(run_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the command line's last line, printed by the main process only
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == str(run_dir) and lines.count(str(run_dir)) == 1, proc.stdout

    _assert_checks(json.loads((out / "checks.json").read_text()))
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    _assert_own_prompts_and_noise(ranks, tiny_model)
    _assert_synchronised_training(ranks, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["num_eval_samples"] == 4
    assert len([f for f in os.listdir(run_dir / "tb") if f.startswith("events.out.tfevents")]) == 1
    assert (run_dir / "gallery" / "index.html").is_file()
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["final", "iter-000001", "iter-000002"]


def _assert_checks(checks: dict) -> None:
    """The DDP gradient is one process's gradient of the mean over both processes' rows (equal and unequal
    row counts), the same on both; the split evaluation is the unsplit one."""
    for case in ("equal_rows", "unequal_rows"):
        c = checks[case]
        assert c["grad_max"] > 1e-6, c  # log-probs are means over pixels: small but clearly non-zero
        assert c["max_diff"] <= 1e-5 * c["grad_max"], c
        assert c["ranks_differ"] == 0.0, c
    ev = checks["eval"]
    assert ev["image_diff"] < 1e-5 and ev["reward_diff"] < 1e-3, ev
    assert ev["shares"] == [[0, 1], [2, 3]]  # one prompt (both seeds) per process


def _assert_own_prompts_and_noise(ranks: list[dict], model: str) -> None:
    """Both processes drew the same 4 prompts per step from the shared rng and each trained its own half,
    with noise seeds of its own."""
    pool = load_prompts(load_config(None, [f"model.path={model}"]).data.train_prompts)
    rng = random.Random(0)
    for step in range(2):
        drawn = rng.sample(pool, 4)
        assert ranks[0]["prompts"][step] == drawn[:2] and ranks[1]["prompts"][step] == drawn[2:]
    seeds = [{s for step in r["noise_seeds"] for s in step} for r in ranks]
    assert len(seeds[0]) == len(seeds[1]) == 2 * 2 * 4 and not seeds[0] & seeds[1]


def _assert_synchronised_training(ranks: list[dict], run_dir: Path) -> None:
    """Identical weights on both processes after every step (they moved, the checkpoint holds them) and
    identical logged metrics (the processes' mean)."""
    assert ranks[0]["hashes"] == ranks[1]["hashes"] and len(set(ranks[0]["hashes"])) == 3
    state = torch.load(run_dir / "checkpoints" / "final" / "trainer_state.pt", weights_only=True)
    assert _digest(state["params"]) == ranks[0]["hashes"][-1]
    for m0, m1 in zip(ranks[0]["metrics"], ranks[1]["metrics"], strict=True):
        untimed = [{k: v for k, v in m.items() if not k.startswith("time/")} for m in (m0, m1)]
        assert untimed[0] == untimed[1]
    assert all(m["kl"] > 0 for m in ranks[0]["metrics"])  # the reference policy: KL once the LoRA moved


def _digest(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- the workers


def _checks(model: str) -> dict[str, dict]:
    """On both processes: the split evaluation and one DDP update each with equal and unequal row counts;
    rank 0 compares them with what one process computes alone (its results; the others return ``{}``)."""
    from accelerate.utils import gather_object
    from test_trainer import tiny_config

    from flowrl.trainer.flow import evaluate, sample, setup
    from flowrl.trainer.run import eval_pairs

    cfg = tiny_config(
        model, "train.micro_batch=4", "train.max_grad_norm=0", "eval.num_prompts=2", "eval.seeds_per_prompt=2"
    )
    run = setup(cfg)
    rank = run.accelerator.process_index
    torch.manual_seed(0)  # the same on both processes: LoRA B starts at zero, so give every weight a value
    with torch.no_grad():
        for p in run.params:
            p.normal_(0, 0.05)
    results: dict[str, dict] = {}
    prompts, seeds = eval_pairs(cfg, run.eval_prompts)
    split = evaluate(run, prompts, seeds)
    if rank == 0:
        results["eval"] = _compare_evaluation(run, prompts, seeds, split)

    batch = sample(run, [run.train_prompts[rank]])  # 1 prompt × 4 images × 4 steps = 16 transitions
    m = len(batch.rollout.transitions)
    adv = torch.linspace(-1, 1, m) * (rank + 1)
    for case, kept in (("equal_rows", m), ("unequal_rows", m if rank == 0 else 10)):
        mask = torch.arange(m) < kept
        ddp = _intercepted_gradient(run, batch, adv, mask)
        shares = gather_object([(batch, adv, mask, ddp)])
        if rank == 0:
            ref = _union_gradient(run, [s[:3] for s in shares])
            results[case] = {
                "max_diff": max((a - b).abs().max().item() for a, b in zip(ddp, ref, strict=True)),
                "grad_max": max(g.abs().max().item() for g in ref),
                "ranks_differ": max((a - b).abs().max().item() for a, b in zip(ddp, shares[1][3], strict=True)),
            }
    return results


def _compare_evaluation(run, prompts: list[str], seeds: list[int], split) -> dict:
    """Evaluate every pair on this process alone and compare with the split evaluation."""
    from flowrl.trainer.flow import _evaluate_pairs

    images, parts = _evaluate_pairs(run, prompts, seeds)
    return {
        "image_diff": (images - split[0]).abs().max().item(),
        "reward_diff": max((parts[k] - split[1][k]).abs().max().item() for k in parts),
        "shares": [eval_share(prompts, k, 2) for k in range(2)],
    }


def _intercepted_gradient(run, batch, adv: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The synchronised gradient of one ``update``: its optimizer step is replaced by a copy of the gradients."""
    from flowrl.trainer.flow import update

    captured: list[list[torch.Tensor]] = []
    run.optimizer.step = lambda *a, **k: captured.append([p.grad.detach().clone() for p in run.params])
    try:
        update(run, batch, adv, mask)
    finally:
        del run.optimizer.step
    assert len(captured) == 1
    return captured[0]


def _union_gradient(run, shares: list) -> list[torch.Tensor]:
    """The gradient one process computes for the mean loss over all shares' kept rows (no DDP involved)."""
    from flowrl.trainer.flow import _transition_loss

    total = sum(int(mask.sum()) for _, _, mask in shares)
    prepared, run.policy.prepared = run.policy.prepared, None
    run.optimizer.zero_grad(set_to_none=True)
    try:
        for batch, adv, mask in shares:
            rows = mask.nonzero().squeeze(1)
            out = _transition_loss(run, batch, rows, adv[rows], torch.Generator().manual_seed(0))
            (out.loss * rows.numel() / total).backward()
    finally:
        run.policy.prepared = prepared
    grads = [p.grad.detach().clone() for p in run.params]
    run.optimizer.zero_grad(set_to_none=True)
    return grads


def _record_training(record: dict) -> None:
    """Wrap the trainer's ``sample`` and the runner's ``train_step`` to note prompts, noise and weights."""
    import flowrl.trainer.flow as flow
    import flowrl.trainer.run as runner

    sample, step = flow.sample, runner.train_step

    def recorded_sample(run, prompts):
        record["prompts"].append(list(prompts))
        noise = run.policy.initial_noise

        def recorded_noise(seeds: list[int], resolution: int) -> torch.Tensor:
            record["noise_seeds"].append(list(seeds))
            return noise(seeds, resolution)

        run.policy.initial_noise = recorded_noise
        try:
            return sample(run, prompts)
        finally:
            del run.policy.initial_noise

    def recorded_step(run):
        if not record["hashes"]:
            record["hashes"].append(_digest(run.params))
        metrics = step(run)
        record["hashes"].append(_digest(run.params))
        record["metrics"].append(metrics)
        return metrics

    flow.sample, runner.train_step = recorded_sample, recorded_step


def _worker(model: str, out: str, run_dir: str) -> None:
    from flowrl.cli import main

    checks = _checks(model)
    rank = int(os.environ["RANK"])
    if rank == 0:
        Path(out, "checks.json").write_text(json.dumps(checks))
    record: dict[str, list] = {"prompts": [], "noise_seeds": [], "hashes": [], "metrics": []}
    _record_training(record)
    assert main(["train", f"output.run_dir={run_dir}", f"model.path={model}", *TRAIN_ARGS, *DDP_FEATURES]) == 0
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _worker(*sys.argv[1:4])


def test_sharded_backends_are_refused_even_when_accelerate_drops_them(tiny_model, monkeypatch):
    # on CPU accelerate ignores ACCELERATE_USE_FSDP and would silently run DDP; flowrl refuses instead
    from flowrl.trainer.flow import setup

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"FSDP backend is not supported.*ddp\.yaml"):
        from test_trainer import tiny_config

        setup(tiny_config(tiny_model))
