"""Multi-process training: two CPU processes (``torch.distributed.run``, gloo) train the tiny toy model,
with DDP and with FSDP (the weights sharded between them), and make the same updates as one process.

``accelerate launch --cpu --num_processes 2`` starts a single process (its CPU launcher needs mpirun), so the
test launches with ``torch.distributed.run`` and ``ACCELERATE_USE_CPU``, which accelerate reads as a
multi-CPU (gloo) run; ``ACCELERATE_USE_FSDP`` is what ``accelerate launch`` sets for an FSDP config. This
file is also the workers' script: run as ``__main__`` it checks one update against a single process's
gradient, the split evaluation against an unsplit one, then trains through the command line while
recording each process's prompts and weights; the test reads what the workers wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_flux, save_tiny_flux_kontext, save_tiny_qwen_image
from tiny_runs import TINY_ARGS, write_edit_rows, write_pairs
from tiny_video import save_tiny_wan

from flowrl.cli import main
from flowrl.core.sharding import full
from flowrl.core.share import deal, step_rows
from flowrl.image.data import load_prompts
from flowrl.image.trainer import _reassemble, eval_share
from flowrl.recipes import load_config

# the tiny run of tiny_runs.py, evaluating 2 prompts × 2 seeds so that both processes get a share; 3 prompts of 4
# images: 12 roots, 6 per process, so a prompt's group spans both processes. The reward is the mean brightness
# (smooth: the float error of batch size changes it by as little, where a JPEG size jumps by whole bytes)
TRAIN_ARGS = [
    *TINY_ARGS,
    "eval.num_prompts=2",
    "eval.seeds_per_prompt=2",
    "train.prompts_per_step=3",
    "rewards=[{name: 'bad_rewards:good'}]",
]
# what must keep working under DDP: the reference policy (KL), gradient checkpointing, EMA, several
# optimizer steps of uneven micro-batches per iteration, and intermediate checkpoints
# the tiny Wan's videos: 9 frames, scored by a frame reward (JPEG size varies, so advantages are non-zero)
WAN = ["model.frames=9", "model.max_sequence_length=16",
       "rewards=[{name: per-frame, options: {reward: jpeg-compressibility, every: 4}}]"]  # fmt: skip
# online DPO: 2 groups, one per process; one pair each at 2 levels, dealt over 2 optimizer steps of 1-row passes (a
# process may hold no row of a step); the reference refreshed after every step
DPO_RUN = ["loss.name=dpo", "sampler.mode=ode", "loss.dpo.renoise_count=2", "loss.dpo.ref_update_step=1",
           "train.prompts_per_step=2", "train.minibatches=2", "train.micro_batch=1", "eval.enabled=false"]  # fmt: skip
DDP_FEATURES = [
    "loss.kl_coef=0.1",
    "model.gradient_checkpointing=true",
    "train.ema_decay=0.5",
    "train.minibatches=2",
    "train.micro_batch=5",
    "train.save_every=1",
]


# ----------------------------------------------------------------------------------------------- in-process


def test_roots_are_dealt_in_blocks_and_uneven_batches_are_refused():
    assert [deal(12, 3, k) for k in range(3)] == [(0, 4), (4, 4), (8, 4)]
    assert deal(5, 1, 0) == (0, 5)
    with pytest.raises(ValueError, match="5 roots per iteration cannot be dealt out evenly to 2 processes"):
        deal(5, 2, 0)


def test_update_steps_cut_the_whole_batch_as_one_process_would():
    """Two processes holding rows at positions 0 2 4 6 8 / 1 3 5 7 get, step by step, exactly the rows
    one process holding all of them trains at that step; calls = the most micro-batches any process needs."""
    one = step_rows([torch.arange(9)], 0, 3, 2, torch.Generator().manual_seed(5))
    kept = [torch.tensor([0, 2, 4, 6, 8]), torch.tensor([1, 3, 5, 7])]
    two = [step_rows(kept, k, 3, 2, torch.Generator().manual_seed(5)) for k in range(2)]
    assert [s.total for s in one] == [3, 3, 3] and [s.total for s in two[0]] == [3, 3, 3]
    for step, (a, b) in enumerate(zip(*two, strict=True)):
        held = sorted(kept[0][a.rows].tolist() + kept[1][b.rows].tolist())
        assert held == sorted(one[step].rows.tolist())  # positions = rows for one process
        assert a.calls == b.calls == max(math.ceil(a.rows.numel() / 2), math.ceil(b.rows.numel() / 2))
    assert step_rows([torch.tensor([], dtype=torch.long)] * 2, 0, 2, 4, torch.Generator()) == []


def test_units_stay_together_and_one_process_deals_as_the_text_trainer_did():
    """Completions of one prompt (a unit) are dealt together, in position order; on one process the order is the
    text trainer's former one (a permutation of its prompts, each prompt's completions in order, cut into steps),
    and two processes holding the blocks 0-5 / 6-11 get exactly one process's rows at every step."""
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])  # 4 prompts x 3 completions
    one = step_rows([torch.arange(12)], 0, 2, 4, torch.Generator().manual_seed(11), [group])
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(11))  # the former: groups[randperm(groups)]
    former = torch.cat([torch.arange(12)[group == g] for g in perm]).chunk(2)
    assert [s.rows.tolist() for s in one] == [r.tolist() for r in former]
    kept, units = [torch.arange(6), torch.arange(6, 12)], [group[:6], group[6:]]
    two = [step_rows(kept, k, 2, 4, torch.Generator().manual_seed(11), units) for k in range(2)]
    for step, (a, b) in enumerate(zip(*two, strict=True)):
        held = sorted(kept[0][a.rows].tolist() + kept[1][b.rows].tolist())
        assert held == sorted(one[step].rows.tolist())
    for s in one:  # whole prompts in each step: 2 of the 4
        assert sorted(torch.bincount(group[s.rows], minlength=4).tolist()) == [0, 0, 3, 3]


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


@pytest.mark.parametrize("kind", ["ddp", "fsdp", "deepspeed"])
def test_two_processes_make_the_updates_of_one_process(tiny_model, tmp_path, kind):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if kind == "deepspeed":  # ZeRO-2 as deepspeed_zero2.yaml asks (the CPU flag would turn DeepSpeed off)
        pytest.importorskip("deepspeed")
        del env["ACCELERATE_USE_CPU"]
        env.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="2")
    extra = {"qwen": save_tiny_qwen_image(str(tmp_path / "qwen"))} if kind != "deepspeed" else {}
    if kind != "deepspeed":  # the editing family: a reference image per prompt row, on both processes
        extra["kontext"] = _kontext_with_rows(tmp_path / "kontext")
        # a video family: Wan 2.2's two experts trained as one module ([B, C, F', h, w] states)
        extra["wan"] = save_tiny_wan(str(tmp_path / "wan"), experts=True, scheduler="euler")
    if kind == "fsdp":  # FLUX too: its blocks return views, which FSDP2 warns may lose gradients
        env["ACCELERATE_USE_FSDP"] = "true"
        extra["flux"] = save_tiny_flux(str(tmp_path / "flux"))
    if kind == "ddp":
        write_pairs(tmp_path / "pairs", [None, 0.75])
    proc, out, run_dir = _launch(tmp_path, [tiny_model, *(f"{name}={path}" for name, path in extra.items())], env)
    assert proc.returncode == 0, _failure(proc.stderr)
    # the command line's last line, printed by the main process only
    lines = proc.stdout.strip().splitlines()
    runs = [str(run_dir), str(out / "part"), str(out / "resumed")]  # each printed once, by the main process
    assert [line for line in lines if line in runs] == runs, proc.stdout

    if kind != "deepspeed":  # the gradient check replaces the optimizer step, which DeepSpeed does in its engine
        _assert_checks(json.loads((out / "checks.json").read_text()))
    ranks = [json.loads((out / f"rank{k}.json").read_text()) for k in range(2)]
    assert all(r["sharded"] == (kind == "fsdp") for r in ranks)
    assert all((r["distributed"] == "DEEPSPEED") == (kind == "deepspeed") for r in ranks)
    _assert_shared_prompts_and_split_noise(ranks, tiny_model)
    _assert_synchronised_training(ranks, run_dir)
    _assert_one_process_makes_the_same_updates(tiny_model, tmp_path, [torch.load(out / f"rank{k}.pt") for k in (0, 1)])
    if kind == "ddp":
        _assert_dpo_pairs_train_as_in_one_process(tiny_model, tmp_path, out / "dpo")
        offline = offline_args(tmp_path / "pairs")
        _assert_dpo_pairs_train_as_in_one_process(tiny_model, tmp_path, out / "dpo_offline", *offline)
        # Sol-RL: the pool dealt over two processes keeps the candidates one process keeps
        shares = [json.loads((out / f"solrl{k}.json").read_text()) for k in range(2)]
        one = sol_rl_share(tiny_model)
        assert shares[0]["prompts"] + shares[1]["prompts"] == one["prompts"]
        torch.testing.assert_close(torch.tensor(shares[0]["explored"] + shares[1]["explored"]),
                                   torch.tensor(one["explored"]), rtol=0, atol=1e-6)  # fmt: skip
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_steps"] == 2 and summary["num_eval_samples"] == 4
    assert len([f for f in os.listdir(run_dir / "tb") if f.startswith("events.out.tfevents")]) == 1
    assert (run_dir / "gallery" / "index.html").is_file()
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["final", "iter-000001", "iter-000002"]
    _assert_lora_checkpoint_loads(run_dir / "checkpoints" / "final", tiny_model)
    whole, resumed = (torch.load(d / "checkpoints" / "final" / "trainer_state.pt") for d in (run_dir, out / "resumed"))
    assert resumed["iteration"] == 2
    for key in ("params", "ema"):  # bit for bit: weights, optimizer moments and EMA all came back
        a, b = (whole[key], resumed[key]) if key == "params" else (whole[key]["shadow"], resumed[key]["shadow"])
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), key
    for name in extra:  # the new families make one process's gradient and evaluation too
        _assert_checks(json.loads((out / f"checks_{name}.json").read_text()))
    if kind == "fsdp":
        full_ft = json.loads((out / "full_finetuning.json").read_text())
        assert full_ft["moved"] > 0.9 * full_ft["total"] and full_ft["finite"], full_ft
        assert full_ft["saved_vs_trained"] == 0.0, full_ft  # the gathered shards, saved and loaded back exactly


def _launch(tmp_path: Path, args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """Run the workers; returns the finished launch and its output and run folders. A launch in which a process was
    killed by a signal (gloo's transport once aborted a process mid-run on a loaded CI machine: SIGABRT, no Python
    error) is run once more in fresh folders, with a warning; a Python error in either process fails at once."""
    for attempt in range(2):
        out, run_dir = tmp_path / f"out{attempt}", tmp_path / f"run{attempt}"
        out.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        cmd += [__file__, args[0], str(out), str(run_dir), *args[1:]]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        if proc.returncode == 0 or not _crashed(proc.stderr) or attempt == 1:
            return proc, out, run_dir
        warnings.warn(
            f"a worker process was killed by a signal; launching once more:\n{_failure(proc.stderr)}", stacklevel=2
        )
    raise AssertionError("unreachable")


def _crashed(stderr: str) -> bool:
    """Whether the launcher reports a process killed by SIGABRT or SIGSEGV that printed no Python traceback itself
    (torchrun prefixes each process's lines with ``[rankN]:``); the survivor's traceback is the lost connection."""
    dead = re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*-(?:6|11)\b", stderr)
    return bool(dead) and all(f"[rank{r}]: Traceback" not in stderr for r in dead)


def _failure(stderr: str) -> str:
    """What a failed launch printed that says why: each process's error lines (a crashed process's own lines come
    before the survivor's long traceback, which alone would fill the message), then the end of the output."""
    keys = ("Error", "error:", "terminate", "Abort", "what():", "Killed", "Traceback")
    why = [line for line in stderr.splitlines() if any(k in line for k in keys)]
    return "\n".join(why[-40:]) + "\n...\n" + stderr[-2500:]


def _kontext_with_rows(folder: Path) -> str:
    """A tiny FLUX.1-Kontext folder with prompt rows beside it (``rows.jsonl``: 3 toy prompts, a 32 px reference
    image each)."""
    save_tiny_flux_kontext(str(folder))
    write_edit_rows(folder, "rows", 0, 3)
    return str(folder)


def _edit_rows(folder: str) -> list[str]:
    return [f"data.train_prompts={folder}/rows.jsonl", f"data.eval_prompts={folder}/rows.jsonl",
            "model.max_sequence_length=32"]  # fmt: skip


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
    assert ev["shares"] == [[0, 1, 4, 5], [2, 3]]  # prompts (with both seeds) dealt out: unequal shares


def _assert_shared_prompts_and_split_noise(ranks: list[dict], model: str) -> None:
    """Both processes drew the same 3 prompts per step from the shared rng; their 12 images were dealt out in
    blocks of 6, each with the noise seed it has in one process's batch."""
    pool = load_prompts(load_config(None, [f"model.path={model}"]).data.train_prompts)
    rng = random.Random(0)
    for step in range(2):
        drawn = rng.sample(pool, 3)
        assert ranks[0]["prompts"][step] == ranks[1]["prompts"][step] == drawn
        seed = 0 * 1_000_003 + step
        assert ranks[0]["noise_seeds"][step] == [seed * 4096 + i for i in range(6)]
        assert ranks[1]["noise_seeds"][step] == [seed * 4096 + i for i in range(6, 12)]


def _assert_one_process_makes_the_same_updates(model: str, tmp_path: Path, ranks: list[dict]) -> None:
    """The same run in one process: the same whole-batch advantages (a group spans the two processes; the estimator
    saw the gathered rewards) and the same weights after every iteration, up to the float error of batch size."""
    record: dict = {"prompts": [], "noise_seeds": [], "hashes": [], "metrics": [], "tensors": {}}
    undo = _record_training(record)
    try:
        assert main(["train", f"output.run_dir={tmp_path / 'one'}", f"model.path={model}", *TRAIN_ARGS,
                     *DDP_FEATURES]) == 0  # fmt: skip
    finally:
        undo()
    one = record["tensors"]
    for step in range(2):
        adv = torch.zeros_like(one["advantages"][step])
        for r in ranks:  # each process's rows put back at their whole-batch positions
            adv[r["positions"][step]] = r["advantages"][step]
        assert sorted(torch.cat([r["positions"][step] for r in ranks]).tolist()) == list(range(adv.numel()))
        assert one["advantages"][step].abs().max() > 0.1
        torch.testing.assert_close(adv, one["advantages"][step], atol=1e-4, rtol=0)
        weight_diff = max((a - b).abs().max().item() for a, b in zip(ranks[0]["params"][step + 1],
                                                                    one["params"][step + 1], strict=True))  # fmt: skip
        print(f"iteration {step + 1}: advantages max |2 - 1 process| {(adv - one['advantages'][step]).abs().max():.2e}"
              f" (of max {one['advantages'][step].abs().max():.2f}), weights {weight_diff:.2e}")  # fmt: skip
        # Adam divides by the gradient's own size, so where a gradient is ~0 float error of batch size moves a
        # weight by up to a fraction of one lr step (1e-2): 1e-4 is 1% of it
        for a, b in zip(ranks[0]["params"][step + 1], one["params"][step + 1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
        assert any(not torch.equal(a, b) for a, b in zip(one["params"][step], one["params"][step + 1], strict=True))


def _assert_dpo_pairs_train_as_in_one_process(model: str, tmp_path: Path, two: Path, *extra: str) -> None:
    """DPO on two processes (each holding one group, or one pair of a dataset, so both members of its pair) trains
    the weights one process does, and its reference (refreshed every step) holds the trained weights."""
    one = tmp_path / f"{two.name}_one"
    assert main(["train", f"output.run_dir={one}", f"model.path={model}", *TRAIN_ARGS, *DPO_RUN, *extra]) == 0
    states = [torch.load(d / "checkpoints" / "final" / "trainer_state.pt") for d in (two, one)]
    start = setup_params(model)
    assert any(not torch.equal(a, b) for a, b in zip(states[1]["params"], start, strict=True))
    for a, b in zip(states[0]["params"], states[1]["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for state in states:
        assert all(torch.equal(o, p) for o, p in zip(state["old"]["shadow"], state["params"], strict=True))


SOL_RL = ["rollout.generate.name=sol-rl", "rollout.generate.sol-rl.pool=6", "rollout.generate.sol-rl.explore_steps=2"]


def sol_rl_share(model: str) -> dict:
    """This process's share of a Sol-RL batch of two prompts: its samples' prompts and explored rewards."""
    from accelerate.state import AcceleratorState
    from tiny_runs import tiny_config

    from flowrl.core.rollout import GENERATORS
    from flowrl.image.trainer import sample, setup

    AcceleratorState._reset_state()
    run = setup(tiny_config(model, *SOL_RL))
    batch = GENERATORS.get("sol-rl")(run, run.train_prompts[:2], sample, run.cfg.rollout.generate.options)
    return {"prompts": [str(p) for p in batch.prompts], "explored": batch.components["explored"].tolist()}


def offline_args(pairs: Path) -> list[str]:
    """Offline DPO on the pair dataset written to ``pairs`` (``test_pairs.write_pairs``), its latents cached there."""
    return [f"data.pairs={pairs / 'pairs.jsonl'}", f"data.pairs_cache={pairs / 'cache'}"]


def setup_params(model: str) -> list[torch.Tensor]:
    """The trainable weights a run starts from."""
    from tiny_runs import tiny_config

    from flowrl.image.trainer import setup

    return [p.detach().clone() for p in setup(tiny_config(model, *TRAIN_ARGS, *DPO_RUN)).params]


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


def _assert_lora_checkpoint_loads(folder: Path, model: str) -> None:
    """The final LoRA (the EMA weights) loads into a fresh diffusers pipeline and holds the EMA averages."""
    from diffusers import StableDiffusion3Pipeline

    from flowrl.image.models import SD3Policy

    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    fresh = SD3Policy(model)
    parts = dict.fromkeys(["vae", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"])
    pipe = StableDiffusion3Pipeline(
        transformer=fresh.transformer,
        scheduler=fresh.scheduler,
        text_encoder=fresh.encoders[0][0],
        tokenizer=fresh.encoders[0][1],
        **parts,
    )
    pipe.load_lora_weights(str(folder / "lora"))
    loaded = [p for n, p in pipe.transformer.named_parameters() if "lora_" in n]
    assert len(loaded) == len(state["ema"]["shadow"]) == len(state["params"])
    for p, avg in zip(loaded, state["ema"]["shadow"], strict=True):
        torch.testing.assert_close(p.detach(), avg)


def _digest(params: list[torch.Tensor]) -> str:
    """A hash of whole tensors (gathered from both processes when sharded: a collective)."""
    h = hashlib.sha256()
    for p in params:
        h.update(full(p).contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- the workers


def _checks(model: str, *overrides: str) -> dict[str, dict]:
    """On both processes: the split evaluation and one update each with equal and unequal row counts, compared
    with what a plain, unsharded copy of the network computes for all rows alone (every process computes that
    reference too, on the same inputs); rank 0 returns the results, the other ``{}``."""
    from accelerate.utils import gather_object
    from tiny_runs import tiny_config

    from flowrl.image.run import eval_pairs
    from flowrl.image.trainer import TrainRows, advantages, evaluate, sample, setup

    cfg = tiny_config(
        model,
        "train.micro_batch=4",
        "train.max_grad_norm=0",
        "eval.num_prompts=3",
        "eval.seeds_per_prompt=2",
        *overrides,
    )
    run = setup(cfg)
    rank = run.accelerator.process_index
    torch.manual_seed(0)  # the same on both processes: LoRA B starts at zero, so give every weight a value
    with torch.no_grad():
        for p in run.params:
            p.normal_(0, 0.05)
    plain = _unsharded_copy(run, cfg)
    results: dict[str, dict] = {}
    prompts, seeds = eval_pairs(cfg, run.eval_prompts)
    results["eval"] = _compare_evaluation(plain, prompts, seeds, evaluate(run, prompts, seeds))

    batch = sample(run, run.train_prompts[:2])  # 2 prompts × 4 images, 4 per process × 4 steps = 16 transitions
    m = len(batch.rollout.transitions)
    adv = torch.linspace(-1, 1, m) * (rank + 1)
    rows = advantages(run, batch)[0]
    position, group = rows.position, rows.group
    for case, kept in (("equal_rows", m), ("unequal_rows", m if rank == 0 else 10)):
        mask = torch.arange(m) < kept
        synced = [full(g) for g in _intercepted_gradient(run, batch, TrainRows(adv, mask, position, group))]
        shares = gather_object([(batch, adv, mask, synced)])
        ref = _union_gradient(plain, [s[:3] for s in shares])
        results[case] = {
            "max_diff": max((a - b).abs().max().item() for a, b in zip(synced, ref, strict=True)),
            "grad_max": max(g.abs().max().item() for g in ref),
            "ranks_differ": max((a - b).abs().max().item() for a, b in zip(synced, shares[1][3], strict=True)),
        }
    return results if rank == 0 else {}


def _unsharded_copy(run, cfg):
    """The same network and weights set up without sharding (under FSDP: as for DDP), for reference results."""
    from flowrl.image.trainer import setup

    fsdp = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        plain = setup(cfg)
    finally:
        if fsdp is not None:
            os.environ["ACCELERATE_USE_FSDP"] = fsdp
    assert not plain.parallel.sharded
    if run.policy.untrained is None:  # as in the run (model.untrained_copy=auto makes no copy under FSDP)
        plain.policy.untrained = None
    with torch.no_grad():
        for p, q in zip(plain.params, run.params, strict=True):
            p.copy_(full(q))
    return plain


def _intercepted_gradient(run, batch, rows) -> list[torch.Tensor]:
    """The synchronised gradient of one ``update``: its optimizer step is replaced by a copy of the gradients."""
    from flowrl.image.trainer import update

    captured: list[list[torch.Tensor]] = []
    run.optimizer.step = lambda *a, **k: captured.append(_grads(run.params))
    try:
        update(run, batch, rows)
    finally:
        del run.optimizer.step
    assert len(captured) == 1
    return captured[0]


def _compare_evaluation(run, prompts: list[str], seeds: list[int], split) -> dict:
    """Evaluate every pair on this process alone and compare with the split evaluation."""
    from flowrl.image.trainer import _evaluate_pairs

    images, parts = _evaluate_pairs(run, prompts, seeds)
    return {
        "image_diff": (images - split[0]).abs().max().item(),
        "reward_diff": max((parts[k] - split[1][k]).abs().max().item() for k in parts),
        "shares": [eval_share(prompts, k, 2) for k in range(2)],
    }


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of the gradients (zeros for a weight that got none)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]


def _union_gradient(run, shares: list) -> list[torch.Tensor]:
    """The gradient ``run`` computes on this process for the mean loss over all shares' kept rows (no DDP)."""
    from flowrl.image.objectives import OBJECTIVES, TrainRows

    replay = OBJECTIVES.get("transitions")

    total = sum(int(mask.sum()) for _, _, mask in shares)
    prepared, run.policy.prepared = run.policy.prepared, None
    run.optimizer.zero_grad(set_to_none=True)
    try:
        for batch, adv, mask in shares:
            rows = mask.nonzero().squeeze(1)
            train = TrainRows(adv, mask, torch.arange(adv.numel()), batch.rollout.transitions.group_id)
            out = replay(run, batch, rows, train)
            (out.loss * rows.numel() / total).backward()
    finally:
        run.policy.prepared = prepared
    grads = _grads(run.params)
    run.optimizer.zero_grad(set_to_none=True)
    return grads


def _record_training(record: dict):
    """Wrap the trainer's ``sample``, ``advantages`` and the image recipe's ``train_step`` to note prompts, noise,
    advantages and weights; returns the function that unwraps them."""
    import flowrl.image.trainer as flow
    from flowrl.image.recipe import ImageRecipe

    sample, step, advantages = flow.sample, ImageRecipe.train_step, flow.advantages
    tensors = record.setdefault("tensors", {"advantages": [], "positions": [], "params": []})
    tensors.update(advantages=[], positions=[], params=[])

    def recorded_advantages(run, batch, whole=None):
        rows, metrics = advantages(run, batch, whole)
        tensors["advantages"].append(rows.advantages.clone())
        tensors["positions"].append(rows.position.clone())
        return rows, metrics

    def recorded_sample(run, prompts, noise_seeds=None):
        record["prompts"].append(list(prompts))
        noise = run.policy.initial_noise

        def recorded_noise(seeds: list[int], resolution: int) -> torch.Tensor:
            record["noise_seeds"].append(list(seeds))
            return noise(seeds, resolution)

        run.policy.initial_noise = recorded_noise
        try:
            return sample(run, prompts, noise_seeds)
        finally:
            del run.policy.initial_noise

    def recorded_step(self, run):
        record["distributed"] = run.accelerator.distributed_type.name
        if not record["hashes"]:
            record["hashes"].append(_digest(run.params))
            tensors["params"].append([full(p) for p in run.params])
        metrics = step(self, run)
        record["hashes"].append(_digest(run.params))
        tensors["params"].append([full(p) for p in run.params])
        record["metrics"].append(metrics)
        return metrics

    def undo() -> None:
        flow.sample, flow.advantages, ImageRecipe.train_step = sample, advantages, step

    flow.sample, flow.advantages, ImageRecipe.train_step = recorded_sample, recorded_advantages, recorded_step
    return undo


def _worker(model: str, out: str, run_dir: str, *extra: str) -> None:
    from flowrl.cli import main
    from flowrl.core.sharding import sharding_requested

    rank = int(os.environ["RANK"])
    record: dict = {"prompts": [], "noise_seeds": [], "hashes": [], "metrics": [], "sharded": sharding_requested()}
    _record_training(record)
    # the command line first, as a user runs it: it must set up the processes itself
    assert main(["train", f"output.run_dir={run_dir}", f"model.path={model}", *TRAIN_ARGS, *DDP_FEATURES]) == 0
    torch.save(record.pop("tensors"), Path(out, f"rank{rank}.pt"))
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    # the same run stopped after its first iteration and resumed from that checkpoint by a new launch
    common = [f"model.path={model}", *TRAIN_ARGS, *DDP_FEATURES, "eval.enabled=false"]
    assert main(["train", f"output.run_dir={out}/part", *common, "train.iterations=1"]) == 0
    assert main(["train", f"output.run_dir={out}/resumed", *common, f"train.resume={out}/part/checkpoints/final"]) == 0
    if os.environ.get("ACCELERATE_USE_DEEPSPEED"):
        return
    if not os.environ.get("ACCELERATE_USE_FSDP"):  # DPO's pairs, each group on one process
        assert main(["train", f"output.run_dir={out}/dpo", f"model.path={model}", *TRAIN_ARGS, *DPO_RUN]) == 0
        if Path(out).parent.joinpath("pairs").is_dir():  # offline: a pair dataset's pairs, one per process
            offline = [f"model.path={model}", *TRAIN_ARGS, *DPO_RUN, *offline_args(Path(out).parent / "pairs")]
            assert main(["train", f"output.run_dir={out}/dpo_offline", *offline]) == 0
        Path(out, f"solrl{rank}.json").write_text(json.dumps(sol_rl_share(model)))
    checks = _checks(model)
    if rank == 0:
        Path(out, "checks.json").write_text(json.dumps(checks))
    if record["sharded"]:
        _sharded_full_finetuning(model, Path(out))
    from accelerate.state import AcceleratorState

    for name, path in (e.split("=", 1) for e in extra):  # other families: name=folder
        AcceleratorState._reset_state()
        overrides = {"flux": ["model.guidance_scale=2.0"], "kontext": _edit_rows(path), "wan": WAN}.get(name, [])
        checks = _checks(path, *overrides)
        if rank == 0:
            Path(out, f"checks_{name}.json").write_text(json.dumps(checks))


def _sharded_full_finetuning(model: str, out: Path) -> None:
    """Full fine-tuning with FSDP and bf16 compute: one step moves the sharded fp32 weights, and the checkpoint
    (gathered on rank 0) loads with ``from_pretrained`` into exactly the trained weights."""
    from accelerate.state import AcceleratorState
    from diffusers import SD3Transformer2DModel
    from tiny_runs import tiny_config

    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

    AcceleratorState._reset_state()  # the LoRA run made its accelerator without mixed precision
    run = setup(tiny_config(model, "model.finetune=full", "model.mixed_precision=bf16"))
    names = [n for n, p in run.policy.transformer.named_parameters() if p.requires_grad]
    before = [full(p) for p in run.params]
    metrics = train_step(run)
    after = [full(p) for p in run.params]
    save_checkpoint(run, str(out / "full_ckpt"))
    if run.accelerator.is_main_process:
        loaded = dict(SD3Transformer2DModel.from_pretrained(str(out / "full_ckpt" / "full")).named_parameters())
        result = {
            "total": len(after),
            "moved": sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True)),
            "finite": all(math.isfinite(v) for v in metrics.values()),
            "saved_vs_trained": max(
                (loaded[n].detach() - p).abs().max().item() for n, p in zip(names, after, strict=True)
            ),
        }
        (out / "full_finetuning.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(*sys.argv[1:])


def test_unsupported_launches_are_refused_with_their_fix(tiny_model, monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from tiny_runs import tiny_config

    from flowrl.core import zero
    from flowrl.core.errors import ConfigError
    from flowrl.image.trainer import setup

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(ConfigError, match=r"DeepSpeed .* not installed: pip install deepspeed"):
        setup(tiny_config(tiny_model))
    monkeypatch.undo()

    def fake(stage: int, accumulation=1):
        config = {"zero_optimization": {"stage": stage}, "gradient_accumulation_steps": accumulation}
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))

    launch = fake(2, "auto")
    zero.configure(launch, 16, 0.5, "no")
    config = launch.state.deepspeed_plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_clipping"]) == (16, 0.5)
    assert config["gradient_accumulation_steps"] == 1
    with pytest.raises(ConfigError, match="ZeRO stage 3 partitions the weights"):
        zero.configure(fake(3), 16, 1.0, "no")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps must be 1"):
        zero.configure(fake(2, 4), 16, 1.0, "no")
    with pytest.raises(ConfigError, match=r"model\.mixed_precision=bf16 with DeepSpeed"):
        zero.configure(fake(2), 16, 1.0, "bf16")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP needs at least 2 processes"):
        setup(tiny_config(tiny_model))


def test_fsdp_units_are_the_model_blocks_or_the_launch_classes(monkeypatch):
    from diffusers import FluxTransformer2DModel

    from flowrl.core.sharding import _blocks, _reshard_after_forward, shard

    flux = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=[2, 2, 4],
    )  # fmt: skip
    assert [type(b).__name__ for b in _blocks(flux)] == ["FluxTransformerBlock", *["FluxSingleTransformerBlock"] * 2]
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "FluxSingleTransformerBlock")
    assert len(_blocks(flux)) == 2
    # the SD3 class in a FLUX launch: accelerate's fsdp.yaml default needs the command-line override
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "JointTransformerBlock")
    with pytest.raises(ValueError, match=r"\['JointTransformerBlock'\] are not in FluxTransformer2DModel"):
        _blocks(flux)
    for value, expected in (("FULL_SHARD", True), ("true", True), ("SHARD_GRAD_OP", False), ("false", False)):
        monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", value)
        assert _reshard_after_forward() is expected
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "HYBRID_SHARD")
    with pytest.raises(ValueError, match="fsdp_reshard_after_forward='hybrid_shard' is not supported"):
        _reshard_after_forward()
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ValueError, match="fsdp_offload_params is not supported"):
        shard(flux, torch.device("cpu"), "no")


def test_batches_processes_cannot_share_are_refused_at_start(tiny_model):
    """Checked for a launch of N processes before anything is sampled (here N = 2, 4 without launching them)."""
    from tiny_runs import tiny_config

    from flowrl.core.errors import ConfigError
    from flowrl.image.config import window_of
    from flowrl.image.trainer import _check_split
    from flowrl.rewards import RewardSet
    from flowrl.samplers import make_window

    def check(processes: int, *overrides: str) -> None:
        cfg = tiny_config(tiny_model, *overrides)
        kind, size = window_of(cfg.sampler)
        window = make_window(kind, cfg.sampler.num_steps, size, **cfg.sampler.window_options)
        _check_split(cfg, window, RewardSet.from_specs([vars(r) for r in cfg.rewards]), 1000, processes)

    tree = ["sampler.mode=branchgrpo", "sampler.split_steps=[0,2]", "sampler.branch_factor=2"]
    check(2, "train.prompts_per_step=3")  # chains: 3 prompts x 4 images = 12 roots, 6 each; a group spans both
    check(2, "train.prompts_per_step=4", *tree)  # trees: one root per prompt
    with pytest.raises(ConfigError, match=r"prompts_per_step=3: its 3 roots cannot be dealt out evenly to 2 proc"):
        check(2, "train.prompts_per_step=3", *tree)
    with pytest.raises(ConfigError, match=r"prompts_per_step=3: its 12 roots .* to 8 processes; use a multiple of 2"):
        check(8, "train.prompts_per_step=3")
    groupwise = "rewards=[{name: 'bad_rewards:GroupBrightness'}]"
    check(2, "train.prompts_per_step=4", groupwise)
    with pytest.raises(ConfigError, match=r"reward 'bad_rewards:GroupBrightness' compares the images of a prompt"):
        check(2, "train.prompts_per_step=3", groupwise)
    dpo = ["loss.name=dpo", "sampler.mode=ode", "loss.dpo.renoise_count=2"]
    check(2, "train.prompts_per_step=4", *dpo)
    with pytest.raises(ConfigError, match=r"loss.name=dpo pairs the samples of a prompt, so a group must stay on one"):
        check(2, "train.prompts_per_step=3", *dpo)
