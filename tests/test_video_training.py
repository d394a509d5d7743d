"""The image recipe trains video families unchanged: every rollout mode on a tiny Wan 2.1, Wan 2.2's experts
trained as ``model.train_experts`` says, and the trained LoRA (one file per expert) loading into ``WanPipeline``
with ``load_lora_weights`` and giving the trained velocities."""

from __future__ import annotations

import pytest
import torch
from tiny_runs import MODES, PREFERENCE_RUNS, tiny_config
from tiny_video import save_tiny_wan

from flowrl.core.errors import ConfigError
from flowrl.image.trainer import setup, train_step

VIDEO = [
    "model.frames=9",
    "model.max_sequence_length=16",
    # JPEG size varies between random videos, so advantages are non-zero
    "rewards=[{name: per-frame, options: {reward: jpeg-compressibility, every: 4}}]",
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("wan-train")
    return {
        "wan21": save_tiny_wan(str(root / "wan21"), scheduler="euler"),
        "wan22": save_tiny_wan(str(root / "wan22"), experts=True, scheduler="euler"),
    }


def _lora(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("mode", sorted(MODES) + sorted(PREFERENCE_RUNS))
def test_every_rollout_mode_trains_the_video_family(folders, mode):
    args = PREFERENCE_RUNS[mode] if mode in PREFERENCE_RUNS else [f"sampler.mode={mode}", *MODES[mode]]
    if mode in ("draft", "refl"):  # through the decoded clips to a differentiable clip reward
        args = [*args, "rewards=[{name: 'bad_rewards:clip_brightness'}]"]
    run = setup(tiny_config(folders["wan21"], *VIDEO, *args))
    before = _lora(run.policy.transformer)
    for _ in range(2):
        metrics = train_step(run)
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values() if isinstance(v, float))
    after = _lora(run.policy.transformer)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_video_families_take_video_rewards_and_their_options(folders):
    with pytest.raises(ConfigError, match=r"'jpeg-compressibility' scores images, and this recipe trains on videos"):
        tiny_config(folders["wan21"], "model.frames=9", "rewards=[{name: jpeg-compressibility}]")
    with pytest.raises(ConfigError, match=r"model\.frames=10: Wan's VAE needs 1 \+ 4·k frames \(9 or 13\)"):
        tiny_config(folders["wan21"], *VIDEO, "model.frames=10")
    with pytest.raises(ConfigError, match=r"model\.train_experts=low: .* has one transformer"):
        tiny_config(folders["wan21"], *VIDEO, "model.train_experts=low")
    bad = "rewards=[{name: per-frame, options: {reward: jpeg-compressibility, options: {qualty: 3}}}]"
    with pytest.raises(ConfigError, match="has no option 'qualty'"):
        tiny_config(folders["wan21"], "model.frames=9", bad)


@pytest.mark.parametrize("experts", ["both", "high", "low"])
def test_wan22_trains_the_chosen_experts_and_each_loads_into_the_pipeline(folders, experts, tmp_path):
    from diffusers import WanPipeline

    from flowrl.image.run import save_checkpoint

    run = setup(tiny_config(folders["wan22"], *VIDEO, f"model.train_experts={experts}", "sampler.mode=flow-grpo",
                            "model.gradient_checkpointing=true"))  # fmt: skip
    trained = [m for m in run.policy.transformer.modules() if type(m).__name__ == "WanTransformer3DModel"]
    assert len(trained) == (2 if experts == "both" else 1) and all(m.gradient_checkpointing for m in trained)
    policy = run.policy
    high, low = policy._expert(True), policy._expert(False)
    start = {"high": _lora(high), "low": _lora(low)}
    for _ in range(2):
        train_step(run)
    moved = {name: any(not torch.equal(v, _lora(m)[k]) for k, v in start[name].items())
             for name, m in (("high", high), ("low", low))}  # fmt: skip
    assert moved == {"high": experts != "low", "low": experts != "high"}
    save_checkpoint(run, str(tmp_path / "ckpt"))
    folder = str(tmp_path / "ckpt" / "lora")
    pipe = WanPipeline.from_pretrained(folders["wan22"])
    if experts != "low":
        pipe.load_lora_weights(folder)
    if experts != "high":
        pipe.load_lora_weights(folder, weight_name="pytorch_lora_weights_transformer_2.safetensors",
                               load_into_transformer_2=True, adapter_name="low")  # fmt: skip
    x = torch.randn(2, *policy.latent_shape(32))
    sigma = torch.tensor([0.99, 0.3])  # one row for each expert
    cond = policy.encode(["a red circle"] * 2).as_dict()
    with torch.no_grad():
        ours = policy.velocity(x, sigma, cond)
        t = policy.timestep(sigma)
        theirs = torch.cat([
            expert(hidden_states=x[i : i + 1], timestep=t[i : i + 1], encoder_hidden_states=cond["embeds"][i : i + 1],
                   return_dict=False)[0]
            for i, expert in enumerate((pipe.transformer, pipe.transformer_2))
        ])  # fmt: skip
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, _base_velocity(folders["wan22"], x, sigma, cond), atol=1e-4)


def _base_velocity(folder: str, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    from flowrl.image.models import WanPolicy

    with torch.no_grad():
        return WanPolicy(folder, num_frames=9, max_sequence_length=16).velocity(x, sigma, cond)


def test_a_video_run_evaluates_and_writes_a_playable_gallery_and_tracker_clips(folders, tmp_path, monkeypatch):
    import glob
    import json
    import os

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from flowrl.cli import main
    from flowrl.core.video import read_frames

    run_dir = tmp_path / "run"
    args = ["train", f"output.run_dir={run_dir}", f"model.path={folders['wan21']}", *VIDEO, "model.lora_rank=4",
            "sampler.num_steps=4", "train.iterations=1", "train.prompts_per_step=2", "train.group_size=4",
            "eval.num_prompts=2", "eval.seeds_per_prompt=1", "eval.num_steps=3", "eval.gallery_prompts=2",
            "eval.fps=8", "output.progress=false", "data.train_prompts=toy-video:train",
            "data.eval_prompts=toy-video:held-out", "output.images_count=2",
            "output.trackers=[tensorboard, wandb]"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_eval_samples"] == 2 and "eval/per-frame/frames_scored" in summary
    videos = sorted(os.listdir(run_dir / "gallery" / "videos"))
    assert videos == ["base_0000.webm", "base_0001.webm", "trained_0000.webm", "trained_0001.webm"]
    assert read_frames(str(run_dir / "gallery" / "videos" / "trained_0000.webm")).shape == (9, 128, 128, 3)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    gif = events.Images("eval/after")[0].encoded_image_string
    assert gif[:6] == b"GIF89a"  # an animated grid of the clips in TensorBoard's images tab
    clips = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "files" / "media" / "videos" / "eval" / "*.webm"))
    assert len(clips) == 2 * 2  # before and after, two clips each
