"""Exact resume and crash-safe checkpoints.

A run stopped after N iterations and resumed from its checkpoint logs, for iterations N+1..M, exactly the metrics of
the same run left alone (CPU, fixed seeds), and ends with exactly its weights. A training process killed with
SIGKILL while writing a checkpoint, again and again, always leaves a newest checkpoint that loads.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import TINY_ARGS

from flowrl.cli import main
from flowrl.core.checkpoint import latest, load_state, periodic, prune
from flowrl.image.recipe import ImageRecipe
from flowrl.recipes import load_config

# every piece of state a resumed run must carry over: EMA, a random window (its own generator), the per-prompt
# tracker's history, a warm-up + cosine learning rate, several optimizer steps and epochs, prompts drawn from a
# small pool (the data position), KL to the reference
STATEFUL = [
    "train.iterations=5",
    "train.save_every=1",
    "train.keep_checkpoints=2",
    "train.ema_decay=0.5",
    "train.minibatches=2",
    "train.inner_epochs=2",
    "train.lr_schedule=cosine",
    "train.warmup_iterations=2",
    "sampler.mode=flow-grpo-fast",
    "sampler.window=random",
    "sampler.window_size=2",
    "advantage.name=per-prompt",
    "advantage.tracker_min_count=2",
    "loss.kl_coef=0.05",
    "eval.enabled=false",
    "output.tensorboard=false",
]


class Stop(Exception):
    pass


def _recorded(recipe: type, args: list[str], stop_at: int | None) -> list[dict[str, float]]:
    """Run ``flowrl train args`` recording each iteration's metrics (not the times) through ``recipe.train_step``
    (the image or text recipe); ``stop_at``: raise before that iteration (after the previous one's checkpoint)."""
    recorded: list[dict[str, float]] = []
    step = recipe.train_step

    def recording_step(self, run):
        if stop_at is not None and run.iteration == stop_at:
            raise Stop
        metrics = step(self, run)
        recorded.append({"iteration": run.iteration, **{k: v for k, v in metrics.items() if "time/" not in k}})
        return metrics

    recipe.train_step = recording_step
    try:
        main(["train", *args])
    finally:
        recipe.train_step = step
    return recorded


def _train(model: str, run_dir: Path, *extra: str, stop_at: int | None = None) -> list[dict[str, float]]:
    return _recorded(
        ImageRecipe, [f"model.path={model}", f"output.run_dir={run_dir}", *TINY_ARGS, *STATEFUL, *extra], stop_at
    )


def test_resumed_offline_dpo_draws_the_pairs_of_the_uninterrupted_run(tiny_model, tmp_path):
    from tiny_runs import write_pairs

    pairs = write_pairs(tmp_path / "pairs", [None, 0.75, 0.9, 1.0, 0.8])
    args = [f"model.path={tiny_model}", *TINY_ARGS, "train.iterations=4", "train.save_every=1", "eval.enabled=false",
            "output.tensorboard=false", "loss.name=dpo", "sampler.mode=ode", "loss.dpo.renoise_count=2",
            "loss.dpo.ref_update_step=2", f"data.pairs={pairs}", f"data.pairs_cache={tmp_path / 'cache'}"]  # fmt: skip
    whole = _recorded(ImageRecipe, [*args, f"output.run_dir={tmp_path / 'whole'}"], None)
    with pytest.raises(Stop):
        _recorded(ImageRecipe, [*args, f"output.run_dir={tmp_path / 'split'}"], 2)
    rest = _recorded(ImageRecipe, [*args, f"output.run_dir={tmp_path / 'split'}", "train.resume=auto"], None)
    assert [m["iteration"] for m in rest] == [3, 4] and rest == whole[2:]  # the same pairs, levels and losses
    ends = [load_state(str(tmp_path / run / "checkpoints" / "final")) for run in ("whole", "split")]
    assert all(torch.equal(x, y) for x, y in zip(ends[0]["params"], ends[1]["params"], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(ends[0]["old"]["shadow"], ends[1]["old"]["shadow"], strict=True))


def test_resumed_run_repeats_the_uninterrupted_run_exactly(tiny_model, tmp_path):
    whole = _train(tiny_model, tmp_path / "whole")
    with pytest.raises(Stop):
        _train(tiny_model, tmp_path / "split", stop_at=3)
    checkpoints = tmp_path / "split" / "checkpoints"
    assert [i for i, _ in periodic(str(checkpoints))] == [2, 3]  # keep_checkpoints=2 pruned iter-1
    rest = _train(tiny_model, tmp_path / "split", "train.resume=auto")

    assert [m["iteration"] for m in whole] == [1, 2, 3, 4, 5] and [m["iteration"] for m in rest] == [4, 5]
    assert rest == whole[3:]  # every metric of iterations 4 and 5, bit for bit
    # lr 1e-2: warm-up over 2 iterations, then cosine to 10% at the last: by hand 0.5, 1, 1, 0.55, 0.1 of the peak
    assert [m["train/lr"] for m in whole] == pytest.approx([0.005, 0.01, 0.01, 0.0055, 0.001], rel=1e-12)
    assert whole[3]["tracker/prompts"] > 0
    ends = [load_state(str(tmp_path / run / "checkpoints" / "final")) for run in ("whole", "split")]
    for key in ("params", "ema"):
        a, b = ends[0][key], ends[1][key]
        tensors = (a, b) if key == "params" else (a["shadow"], b["shadow"])
        assert all(torch.equal(x, y) for x, y in zip(*tensors, strict=True))
    windows = ends[0]["window"], ends[1]["window"]
    assert windows[0].keys() == windows[1].keys() and torch.equal(windows[0]["generator"], windows[1]["generator"])
    assert all(windows[0][k] == windows[1][k] for k in windows[0] if k != "generator")
    assert ends[0]["advantage_state"] == ends[1]["advantage_state"]
    assert (tmp_path / "split" / "summary.json").is_file()


def test_resume_refuses_what_it_cannot_continue(tiny_model, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", f"model.path={tiny_model}", *TINY_ARGS, f"train.resume={missing}",
                 f"output.run_dir={tmp_path / 'run'}"]) == 2  # fmt: skip
    assert "train.resume" in capsys.readouterr().err and not (tmp_path / "run").exists()
    _train(tiny_model, tmp_path / "done", "train.iterations=1")
    # a checkpoint of a different LoRA rank: named, exit code 2, the new folder is not left behind
    final = tmp_path / "done" / "checkpoints" / "final"
    args = ["model.lora_rank=2", f"train.resume={final}"]
    assert main(["train", f"model.path={tiny_model}", *TINY_ARGS, *STATEFUL, *args,
                 f"output.run_dir={tmp_path / 'other'}"]) == 2  # fmt: skip
    assert "model.lora_rank: 4 -> 2" in capsys.readouterr().err and not (tmp_path / "other").exists()
    # a checkpoint without its configuration (written before checkpoints held one): the state itself refuses
    (final / "config.yaml").unlink()
    (tmp_path / "done" / "config.yaml").unlink()
    assert main(["train", f"model.path={tiny_model}", *TINY_ARGS, *STATEFUL, *args,
                 f"output.run_dir={tmp_path / 'other'}"]) == 2  # fmt: skip
    assert "does not fit" in capsys.readouterr().err and not (tmp_path / "other").exists()


# ------------------------------------------------------------------ the run's record matches what trained (issue 30)


def _folder_state(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: a refused resume must leave them all as they were."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_resume_that_changes_the_trained_state_is_refused_and_touches_nothing(tiny_model, tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}", "eval.enabled=false",
            "output.progress=false", "output.tensorboard=false", "train.save_every=1"]  # fmt: skip
    assert main([*base, "train.iterations=1"]) == 0
    (run_dir / "summary.json").unlink()  # stands for a run that was stopped
    before = _folder_state(run_dir)
    changed = ["sampler.mode=mixgrpo", "train.group_size=8", "seed=7", "train.iterations=3", "train.resume=auto"]
    assert main([*base, *changed]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("flowrl: config error: cannot resume ") and "Traceback" not in line
    mode = load_config(None, [f"model.path={tiny_model}", *TINY_ARGS]).sampler.mode  # what the run trained with
    for key, old, new in (
        ("sampler.mode", repr(mode), "'mixgrpo'"),
        ("train.group_size", "4", "8"),
        ("seed", "0", "7"),
    ):
        assert f"{key}: {old} -> {new}" in line, (key, line)
    assert "train.iterations" not in line.split("(")[0]  # may change: not among the refused keys
    assert _folder_state(run_dir) == before  # config.yaml, checkpoints: nothing rewritten
    # resuming with the run's own config.yaml (as docs/scaling.md says) continues it
    own = ["train", "--config", str(run_dir / "config.yaml"), "train.iterations=2", "train.resume=auto"]
    assert main(own) == 0 and json.loads((run_dir / "summary.json").read_text())["train_steps"] == 2


def test_a_resume_records_what_changed_and_the_new_learning_rate_is_what_trains(tiny_model, tmp_path):
    import yaml

    run_dir = tmp_path / "run"
    base = [f"model.path={tiny_model}", f"output.run_dir={run_dir}", *TINY_ARGS, "eval.enabled=false",
            "output.tensorboard=false", "train.save_every=1", "train.lr_schedule=constant"]  # fmt: skip
    first = _recorded(ImageRecipe, [*base, "train.iterations=1"], None)
    (run_dir / "summary.json").unlink()
    original = (run_dir / "config.yaml").read_text()
    rest = _recorded(ImageRecipe, [*base, "train.iterations=3", "train.lr=5e-3", "train.resume=auto"], None)
    assert [m["train/lr"] for m in first] == [1e-2]
    assert [m["train/lr"] for m in rest] == [5e-3, 5e-3]  # the recorded rate is the one that trained
    assert (run_dir / "config.yaml").read_text() == original  # the original record, never replaced
    (entry,) = yaml.safe_load((run_dir / "resumed.yaml").read_text())
    assert entry["checkpoint"] == str(run_dir / "checkpoints" / "iter-000001") and entry["at"]  # the newest
    assert entry["changed"]["train.lr"] == {"old": 1e-2, "new": 5e-3}
    assert entry["changed"]["train.iterations"] == {"old": 1, "new": 3}
    assert set(entry["changed"]) == {"train.lr", "train.iterations", "train.resume"}
    # the checkpoint holds what it was trained with: the new rate
    trained = yaml.safe_load((run_dir / "checkpoints" / "final" / "config.yaml").read_text())
    assert trained["train"]["lr"] == 5e-3 and trained["train"]["iterations"] == 3


def test_which_keys_may_change_on_resume():
    from flowrl.core.record import changes_evaluation, flatten, resumable

    assert flatten({"train": {"lr": 1e-4, "split": [1, 2]}, "seed": 0, "x": {}}) == {
        "train.lr": 1e-4, "train.split": [1, 2], "seed": 0, "x": {}}  # fmt: skip
    for key in ("train.iterations", "train.max_minutes", "train.lr", "eval.num_prompts", "output.run_dir"):
        assert resumable(key), key
    for key in (
        "seed",
        "sampler.mode",
        "sampler.window_options.max_start",
        "train.group_size",
        "model.path",
        "model.finetune",
        "loss.clip_low",
        "data.train_prompts",
        "train.lr_schedule",
        "train.iterations_x",
    ):
        assert not resumable(key), key  # fmt: skip
    assert changes_evaluation({"eval.num_prompts": (3, 4)}) and not changes_evaluation({"eval.enabled": (1, 0)})


def test_prune_keeps_the_newest_and_clears_leftovers(tmp_path):
    for i in (1, 2, 3, 10):
        (tmp_path / f"iter-{i:06d}").mkdir()
    (tmp_path / ".iter-000011.tmp-123").mkdir()  # a killed writer's
    (tmp_path / ".deleting-iter-000000").mkdir()  # a killed pruner's
    prune(str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["iter-000003", "iter-000010"]
    prune(str(tmp_path), 0)
    assert sorted(os.listdir(tmp_path)) == ["iter-000003", "iter-000010"]


# ---------------------------------------------------------------------------------------------- SIGKILL


SLOW_WRITER = """
import sys, time
import flowrl.core.resume as resume  # where both recipes write their checkpoints
from flowrl.cli import main

def slow_save(path, state):  # the same bytes, written in small pieces: the kill lands inside the write
    import io, torch
    buf = io.BytesIO()
    torch.save(state, buf)
    with open(path, "wb") as f:
        data = buf.getvalue()
        for i in range(0, len(data), 16384):
            f.write(data[i : i + 16384])
            f.flush()
            time.sleep(0.01)

resume.save_state = slow_save
sys.exit(main(["train", *sys.argv[1:]]))
"""


def test_sigkill_during_checkpoint_writes_always_leaves_a_loadable_checkpoint(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    args = [f"model.path={tiny_model}", f"output.run_dir={run_dir}", *TINY_ARGS, *STATEFUL]
    args += ["train.iterations=40", "train.resume=auto", "output.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, *args], env=env, cwd=tmp_path)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            writing = [n for n in os.listdir(checkpoints) if ".tmp-" in n] if checkpoints.is_dir() else []
            if writing and (attempt or periodic(str(checkpoints))):  # from the 2nd on: mid-write, any time
                time.sleep(rng.uniform(0.0, 0.15))
                break
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        newest = latest(str(checkpoints))
        assert newest is not None
        state = load_state(newest)
        assert os.path.basename(newest) == f"iter-{state['iteration']:06d}"
        assert load_file(os.path.join(newest, "lora", "pytorch_lora_weights.safetensors"))
        for _, path in periodic(str(checkpoints)):  # every visible checkpoint is whole
            load_state(path)
    assert kills == 6
    proc = subprocess.run([sys.executable, "-c", SLOW_WRITER, *args[:-2], "train.iterations=12", "train.resume=auto",
                           "train.save_every=0"], env=env, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_state(str(checkpoints / "final"))["iteration"] == 12
    assert not [n for n in os.listdir(checkpoints) if n.startswith(".")]


def _train_text(run_dir: Path, *extra: str, stop_at: int | None = None) -> list[dict[str, float]]:
    """The text demo, shortened, with what a resumed text run must carry over (cosine lr, 2 passes × 2 steps)."""
    from flowrl.text.recipe import TextRecipe

    args = ["--config", "configs/text_demo.yaml", f"output.run_dir={run_dir}", "train.iterations=4"]
    args += ["train.save_every=1", "train.lr_schedule=cosine", "train.minibatches=2", "train.inner_epochs=2"]
    args += ["eval.enabled=false", "output.tensorboard=false", "output.progress=false"]
    return _recorded(TextRecipe, [*args, *extra], stop_at)


def test_resumed_text_run_repeats_the_uninterrupted_run_exactly(tmp_path):
    whole = _train_text(tmp_path / "whole")
    with pytest.raises(Stop):
        _train_text(tmp_path / "split", stop_at=2)
    rest = _train_text(tmp_path / "split", "train.resume=auto")
    assert [m["iteration"] for m in rest] == [3, 4] and rest == whole[2:]
    ends = [load_state(str(tmp_path / run / "checkpoints" / "final")) for run in ("whole", "split")]
    assert all(torch.equal(a, b) for a, b in zip(ends[0]["params"], ends[1]["params"], strict=True))
    assert ends[0]["num_tokens"] == ends[1]["num_tokens"] > 0


# ------------------------------------------------------------------------------------------ SIGTERM, Ctrl-C


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 600) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_and_the_run_resumes(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    args = ["-m", "flowrl", "train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}",
            "train.iterations=200", "train.save_every=1", "eval.enabled=false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "checkpoints" / "iter-000001", proc)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before it pre-empts a job
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("flowrl: terminated (SIGTERM) at iteration ")
    assert line.endswith(f"resume with output.run_dir={run_dir} train.resume=auto")  # the folder named: issue 30
    stopped = int(line.split("iteration ")[1].split(":")[0])
    assert 1 <= stopped < 200 and (run_dir / "checkpoints" / f"iter-{stopped:06d}" / "trainer_state.pt").is_file()
    assert "Traceback" not in err
    state = torch.load(run_dir / "checkpoints" / f"iter-{stopped:06d}" / "trainer_state.pt", weights_only=True)
    assert state["iteration"] == stopped and state["train_seconds"] > 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_before_the_first_checkpoint_leaves_no_run_folder(tiny_model, tmp_path, sig, code):
    run_dir = tmp_path / "run"
    args = ["-m", "flowrl", "train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}",
            "train.iterations=200", "eval.enabled=false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], env=env, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "config.yaml", proc)  # the model is loading now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("flowrl: interrupted", "flowrl: terminated (SIGTERM)")) and "Traceback" not in err
    # a SIGTERM that lands in the loop after all saves its checkpoint; otherwise no folder is left behind
    assert not run_dir.exists() or (sig == signal.SIGTERM and (run_dir / "checkpoints").is_dir())


def test_summary_training_time_covers_the_whole_resumed_run(tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}", "eval.enabled=false",
            "output.progress=false", "train.save_every=1"]  # fmt: skip
    state = run_dir / "checkpoints" / "final" / "trainer_state.pt"
    seconds = lambda: torch.load(state, weights_only=True)["train_seconds"]  # noqa: E731  (unrounded)
    assert main([*base, "train.iterations=2"]) == 0
    first = seconds()
    os.remove(run_dir / "summary.json")  # a finished run is not resumed; this stands for one that was stopped
    assert main([*base, "train.iterations=3", "train.resume=auto"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # the summary rounds to 0.1 s, finer than one tiny iteration: compare the checkpoints' own totals
    assert summary["train_steps"] == 3 and seconds() > first and summary["train_seconds"] == round(seconds(), 1)
