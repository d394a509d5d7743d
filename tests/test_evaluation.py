"""``flowrl.image.evaluation`` and the training monitors: diversity, drift and categories by hand, summaries with
prompt-clustered SEs, the reward-hacking warnings (raised exactly when they should be), and ``flowrl eval`` end to
end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flowrl.core.monitor import TrainingMonitor
from flowrl.image.evaluation import (
    categories,
    compare,
    distance,
    diversity,
    hacking_warnings,
    monitor_metrics,
    score_images,
    summarize,
    thumbnails,
)


def _flat(value: float, size: int = 8) -> torch.Tensor:
    return torch.full((3, size, size), value)


def test_distance_and_diversity_by_hand():
    assert distance(torch.stack([_flat(0.2)]), torch.stack([_flat(0.5)])).item() == pytest.approx(0.3)
    # prompt a: images 0, 1, 0 -> ordered pairs (0,1)=1, (0,2)=0, (1,2)=1 -> mean 2/3; prompt b has one image
    images = torch.stack([_flat(0.0), _flat(1.0), _flat(0.0), _flat(0.5)])
    div = diversity(images, ["a", "a", "a", "b"])
    assert div == {"a": pytest.approx(2 / 3)}
    # half the pixels differ by 1 -> RMS sqrt(1/2)
    half = _flat(0.0)
    half[:, :4] = 1.0
    assert diversity(torch.stack([half, _flat(0.0)]), ["p", "p"])["p"] == pytest.approx(math.sqrt(0.5))


def test_thumbnails_average_areas_down_to_32_pixels():
    image = torch.zeros(1, 3, 64, 96)
    thumb = thumbnails(image)
    assert thumb.shape == (1, 3, 21, 32)  # the longer side to 32, the other in proportion
    assert thumbnails(torch.zeros(2, 3, 16, 16)).shape == (2, 3, 16, 16)  # small images stay
    assert thumbnails(torch.ones(1, 3, 64, 64) * 0.25).allclose(torch.full((1, 3, 32, 32), 0.25))


def test_categories_of_toy_and_geneval_prompts():
    assert categories("two red circles") == ["kind=counting", "colour=red", "count=2"]
    assert categories("a blue square left of a green triangle") == [
        "kind=position", "colour=blue", "colour=green", "count=1", "relation=left of",
    ]  # fmt: skip
    assert categories("a photo of a cat") == []

    class Meta:
        tag = "counting"

    assert categories("a photo of a cat", {"a photo of a cat": Meta()}) == ["tag=counting"]


def test_summary_means_and_prompt_clustered_errors_by_hand():
    prompts = ["two red circles", "two red circles", "a green square", "a green square", "three blue circles"]
    scores = {"reward": torch.tensor([1.0, 0.0, 0.5, 0.5, 1.0])}
    out = summarize(scores, prompts)
    # prompt means 0.5, 0.5, 1.0: mean 2/3, SE = std([.5, .5, 1]) / sqrt(3)
    assert out["scores"]["reward"]["mean"] == pytest.approx(2 / 3)
    assert out["scores"]["reward"]["se"] == pytest.approx(torch.tensor([0.5, 0.5, 1.0]).std().item() / math.sqrt(3))
    assert out["num_prompts"] == 3 and out["num_images"] == 5 and out["se_unit"] == "prompt"
    cats = out["categories"]
    assert cats["colour=red"]["reward"]["mean"] == pytest.approx(0.5) and cats["colour=red"]["num_prompts"] == 1
    assert cats["count=2"]["reward"]["mean"] == pytest.approx(0.5)
    assert cats["colour=blue"]["reward"]["mean"] == pytest.approx(1.0)
    assert cats["kind=counting"]["num_prompts"] == 3
    with_images = summarize(scores, prompts, torch.stack([_flat(0), _flat(1), _flat(0), _flat(0), _flat(1)]))
    assert with_images["diversity"]["per_prompt"] == {"two red circles": 1.0, "a green square": 0.0}


def _change(reward_gain: float, watch_gain: float, images_after: torch.Tensor):
    prompts = [f"p{i}" for i in range(6) for _ in range(2)]
    noise = torch.linspace(-0.01, 0.01, 12)
    before = {"reward": torch.zeros(12) + noise, "watch/toy-geneval": torch.full((12,), 0.5) + noise}
    after = {"reward": before["reward"] + reward_gain, "watch/toy-geneval": before["watch/toy-geneval"] + watch_gain}
    base_images = torch.stack([_flat(float(i % 2)) for i in range(12)])  # each prompt: a black and a white image
    return compare(before, after, prompts, base_images, images_after)


def test_hacking_warnings_fire_exactly_when_the_reward_rises_and_a_watch_or_diversity_falls():
    same = torch.stack([_flat(float(i % 2)) for i in range(12)])
    blank = torch.zeros(12, 3, 8, 8)
    change = _change(0.3, -0.2, same)
    assert change["gains"]["reward"]["gain"] == pytest.approx(0.3) and change["drift"]["mean"] == 0.0
    lines = hacking_warnings(change, watch_drop=0.05, diversity_drop=0.3)
    assert len(lines) == 1 and "'toy-geneval' fell -0.200" in lines[0]
    assert hacking_warnings(change, watch_drop=0.25, diversity_drop=0.3) == []  # a fall inside the threshold
    assert hacking_warnings(_change(0.0, -0.2, same), 0.05, 0.3) == []  # the reward did not rise: no hacking
    (collapse,) = hacking_warnings(_change(-0.1, -0.2, torch.zeros(12, 3, 8, 8)), 0.05, 0.3)  # but blank images
    assert collapse.startswith("possible collapse: the within-prompt diversity fell from 1.000 to 0.000 while")
    collapsed = _change(0.3, 0.0, blank)  # every image blank: diversity 1 -> 0, drift 0.5 on average
    assert collapsed["diversity"] == {"before": 1.0, "after": 0.0}
    assert collapsed["drift"]["mean"] == pytest.approx(0.5) and collapsed["drift"]["max"] == 1.0
    (line,) = hacking_warnings(collapsed, 0.05, 0.3)
    assert "diversity fell from 1.000 to 0.000" in line


def test_training_monitor_warns_once_when_the_watch_reward_falls():
    monitor = TrainingMonitor(watch_drop=0.05, diversity_drop=0.3, window=3)
    wiggle = [0.0, 0.01, -0.01]
    lines = []
    for it in range(12):
        rising = 0.1 * it
        lines += monitor.update({"reward/mean": rising + wiggle[it % 3], "watch/x": 0.8 - 0.05 * it + wiggle[it % 3],
                                 "monitor/diversity": 0.4 + wiggle[it % 3] / 10})  # fmt: skip
    assert len(lines) == 1 and "watch/x fell" in lines[0]  # once, though it keeps falling
    steady = TrainingMonitor(0.05, 0.3, window=3)
    quiet = [steady.update({"reward/mean": 0.1 * it, "watch/x": 0.8 + wiggle[it % 3]}) for it in range(12)]
    assert not any(quiet)


def test_training_monitor_reports_a_collapse_without_a_reward_rise():
    monitor = TrainingMonitor(watch_drop=0.05, diversity_drop=0.3, window=3)
    wiggle = [0.0, 0.01, -0.01]
    lines = []
    for it in range(12):  # the reward drifts down a little while the diversity falls 0.4 -> 0.07
        metrics = {"reward/mean": -0.01 * it + wiggle[it % 3], "monitor/diversity": 0.4 - 0.03 * it}
        lines += monitor.update(metrics, iteration=it)
    assert len(lines) == 1 and lines[0].startswith("possible collapse: the within-prompt diversity fell from 0.370")
    # first window 0.40, 0.37, 0.34 (mean 0.37); the collapse is past 30% of it once the latest window's mean < 0.259:
    # iterations 4-6 (0.28, 0.25, 0.22: mean 0.25, a fall of 0.120) are the first such window
    assert monitor.history == [{"iteration": 6, "warning": lines[0]}] and "by 0.120" in lines[0]
    steady = TrainingMonitor(0.05, 0.3, window=3)
    assert not any(steady.update({"reward/mean": 0.0 + wiggle[it % 3], "monitor/diversity": 0.4}) for it in range(12))


def test_console_summary_lists_training_and_evaluation_warnings():
    from flowrl.core.loop import summary_lines

    summary = {"train_steps": 3, "train_seconds": 12.0, "monitor_warnings": ["possible reward hacking: y"],
               "training_warnings": [{"iteration": 2, "warning": "possible collapse: x"}]}  # fmt: skip
    assert summary_lines(summary) == ["trained 3 iterations in 12 s", "warning (training, iteration 2): possible "
                                      "collapse: x", "warning: possible reward hacking: y"]  # fmt: skip


def test_monitor_metrics_diversity_within_groups():
    thumbs = torch.stack([_flat(0.0), _flat(1.0), _flat(0.3), _flat(0.3)])
    watch = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = monitor_metrics({"thumbs": thumbs, "watch/x": watch}, torch.tensor([0, 0, 1, 1]))
    assert out["monitor/diversity"] == pytest.approx(0.5)  # group 0: 1, group 1: 0
    assert out["watch/x"] == pytest.approx(0.75)


def test_score_images_keys_watch_rewards_apart():
    from flowrl.rewards import RewardSet

    rewards = RewardSet.from_specs([{"name": "jpeg-compressibility"}])
    watch = RewardSet.from_specs([{"name": "toy-geneval"}])
    images = torch.rand(2, 3, 32, 32)
    out = score_images(rewards, images, ["two red circles", "a blue square"], watch)
    assert torch.equal(out["reward"], out["jpeg-compressibility"])
    assert "watch/toy-geneval" in out and "toy-geneval" not in out and "watch/toy-geneval/strict" in out


def test_watch_rewards_are_checked_before_anything_loads():
    from flowrl.core.errors import ConfigError
    from flowrl.recipes import load_config

    with pytest.raises(ConfigError, match=r"eval\.watch_rewards\[0\]\.name: 'toy-geneval' is trained on"):
        load_config(None, ["eval.watch_rewards=[{name: toy-geneval}]"])
    with pytest.raises(ConfigError, match=r"eval\.watch_rewards\[0\]\.name: 'nope' is not one of"):
        load_config(None, ["eval.watch_rewards=[{name: nope}]"])
    with pytest.raises(ConfigError, match=r"eval\.metadata: .* does not exist"):
        load_config(None, ["eval.metadata=/no/such/file.jsonl"])


def test_flowrl_eval_writes_means_categories_and_monitors(tiny_model, tmp_path, capsys):
    from tiny_runs import tiny_config

    from flowrl.cli import main
    from flowrl.image.config import to_dict
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

    cfg = tiny_config(tiny_model, "rewards=[{name: jpeg-compressibility}]", "eval.watch_rewards=[{name: toy-geneval}]",
                      "train.lr=3e-2")  # fmt: skip
    config = tmp_path / "config.yaml"
    import yaml

    config.write_text(yaml.safe_dump(to_dict(cfg)))
    run = setup(cfg)
    metrics = train_step(run)
    assert "watch/toy-geneval" in metrics and "reward/toy-geneval" not in metrics
    assert 0.0 <= metrics["monitor/diversity"] <= 1.0
    save_checkpoint(run, str(tmp_path / "ckpt"))
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--config",
        str(config),
        "--checkpoint",
        "base=base",
        "--checkpoint",
        f"t={tmp_path / 'ckpt'}",
        "--prompts",
        "toy:held-out",
        "--num-prompts",
        "4",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        "--gallery",
        "2",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == str(out / "eval.json") and printed[0].startswith("base: reward ")
    report = json.loads((out / "eval.json").read_text())
    assert report["seeds"] == [0, 1] and report["num_prompts"] == 4 and report["base"] == "base"
    base, trained = report["columns"]["base"], report["columns"]["t"]
    watched = {"watch/toy-geneval", "watch/toy-geneval/strict", "watch/toy-geneval/objects"}
    assert set(base["scores"]) == {"reward", "jpeg-compressibility", "jpeg-compressibility/kilobytes", *watched}
    assert base["num_prompts"] == 4 and len(base["diversity"]["per_prompt"]) == 4
    assert "kind=counting" in base["categories"] or "kind=position" in base["categories"]
    change = report["versus_base"]["t"]
    assert change["drift"]["mean"] > 0  # the trained LoRA changed the images of the same noise
    gain = change["gains"]["reward"]["gain"]
    assert gain == pytest.approx(trained["scores"]["reward"]["mean"] - base["scores"]["reward"]["mean"], abs=1e-9)
    assert (out / "gallery" / "index.html").is_file()
    assert "drift t vs base" in (out / "gallery" / "index.html").read_text()


def test_flowrl_eval_refuses_bad_input_before_loading(tmp_path, capsys):
    from flowrl.cli import main

    assert main(["eval", "--checkpoint", "base=base", "--seeds", "0,x", "--out", str(tmp_path)]) == 2
    assert "--seeds '0,x' must be comma-separated integers" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", f"t={tmp_path / 'missing'}", "--out", str(tmp_path)]) == 2
    assert "is neither 'base' nor a folder" in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


def test_a_text_column_beside_image_columns_is_refused_in_one_line(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from flowrl.cli import main

    # a text checkpoint as the text trainer writes it: <checkpoint>/lora/ holding a peft adapter of the toy LM
    model = get_peft_model(AutoModelForCausalLM.from_pretrained("assets/toy-lm"), LoraConfig(r=2))
    model.save_pretrained(tmp_path / "ckpt" / "lora")
    capsys.readouterr()  # the loading bar of the line above
    column = f"t={tmp_path / 'ckpt'}@configs/text_demo.yaml"
    for argv, option in [
        (
            ["eval", "--config", "configs/demo.yaml", "--checkpoint", "base=base", "--checkpoint", column],
            "--checkpoint",
        ),
        (["gallery", "--config", "configs/demo.yaml", "--column", "base=base", "--column", column], "--column"),
    ]:
        assert main([*argv, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err == (f"flowrl: config error: {option} t: its config 'configs/text_demo.yaml' is for the text "
                       "backend and the command's --config for flow; columns of different backends cannot be "
                       "compared (evaluate text checkpoints with a text --config)\n")  # fmt: skip
    assert not (tmp_path / "out").exists()  # refused before any model loaded or any file was written


def test_a_run_stopped_early_reports_its_own_iterations_and_the_monitors(tiny_model, tmp_path, capsys):
    from tiny_runs import TINY_ARGS

    from flowrl.cli import main

    run_dir = tmp_path / "run"
    watch = "eval.watch_rewards=[{name: jpeg-incompressibility}]"
    args = ["train", f"model.path={tiny_model}", *TINY_ARGS, f"output.run_dir={run_dir}", "train.max_minutes=1e-5",
            "eval.seeds_per_prompt=2", "eval.gallery_prompts=2", watch]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train_steps"] == 1  # the time limit ended training after the first of 2 iterations
    out = capsys.readouterr()
    printed = out.out.splitlines()
    assert printed[-1] == str(run_dir) and any(line.startswith("trained 1 iteration in ") for line in printed)
    # the start-up line says that the limit does not bound the evaluations
    assert (
        "train.max_minutes=1e-05 bounds training only (2 iterations or 1e-05 minutes, whichever ends "
        "first); model loading and the evaluations before and after come on top" in out.err.splitlines()
    )
    assert "Loading weights" not in out.err and "Setting accelerator to CPU" not in out.out + out.err  # no noise
    # which weights evaluated: a LoRA run's copy is bf16 only where the CPU multiplies bf16 natively
    from flowrl.image.models.untrained import fast_bf16

    dtype, why = ("bf16", "fast") if fast_bf16(torch.device("cpu")) else ("fp32", "no fast")
    path = f"a {dtype} copy of the transformer (model.untrained_copy=auto: {why} bf16 matmul on cpu)"
    assert summary["untrained_passes"] == path and f"evaluation and ODE-only steps ran on {path}" in printed
    assert any(line.startswith("evaluation (6 samples): reward ") and "SE over prompts" in line for line in printed)
    page = (run_dir / "gallery" / "index.html").read_text()
    assert "flowrl: base vs trained (flow-grpo, 1 iteration of the 2 configured)" in page
    assert "drift trained vs base" in page
    assert summary["eval/drift"]["mean"] >= 0 and isinstance(summary["monitor_warnings"], list)
    assert summary["training_warnings"] == []  # one iteration: the training-time monitor's windows never filled
    assert "eval/watch/jpeg-incompressibility" in summary and summary["eval/diversity"]["before"] > 0
    after = summary["eval/categories"]["after"]
    assert "kind=counting" in after or "kind=position" in after


def test_a_gallery_column_says_which_checkpoint_it_is(tmp_path):
    from flowrl.core.columns import ColumnSpec
    from flowrl.image.compare import describe_source

    final = tmp_path / "run" / "checkpoints" / "final"
    final.mkdir(parents=True)
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"train_steps": 26}))
    assert describe_source(ColumnSpec("t", str(final), None)) == f"{final} (after 26 iterations)"
    assert describe_source(ColumnSpec("t", str(final / "lora"), None)).endswith("(after 26 iterations)")
    middle = tmp_path / "run" / "checkpoints" / "iter-000012"
    assert describe_source(ColumnSpec("m", str(middle), None)) == f"{middle} (after 12 iterations)"
    first = tmp_path / "run" / "checkpoints" / "iter-000001"
    assert describe_source(ColumnSpec("f", str(first), None)) == f"{first} (after 1 iteration)"
    assert describe_source(ColumnSpec("b", "base", "configs/demo.yaml")) == "the base model of configs/demo.yaml"


def test_gallery_with_a_checkpoint_of_another_model_is_one_line(tiny_model, tmp_path, capsys):
    import yaml
    from tiny_runs import tiny_config

    from flowrl.cli import main
    from flowrl.image.config import to_dict
    from flowrl.image.models.toy import build_toy_model, save_sd3_folder
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup

    save_checkpoint(setup(tiny_config(tiny_model)), str(tmp_path / "ckpt"))  # LoRA of the width-64 model
    other = str(tmp_path / "narrow")
    save_sd3_folder(build_toy_model(seed=0, width=32, layers=2, text_width=32), other)
    config = tmp_path / "narrow.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(other))))
    argv = ["gallery", "--config", str(config), "--column", f"t={tmp_path / 'ckpt'}", "--out", str(tmp_path / "g")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"flowrl: config error: checkpoint '{tmp_path / 'ckpt'}' does not fit the model")
    assert not (tmp_path / "g").exists()


def test_gallery_prompts_default_to_the_configs_evaluation_prompts(tiny_model, tmp_path, capsys):
    import html

    import yaml
    from tiny_runs import tiny_config

    from flowrl.cli import main
    from flowrl.image.config import to_dict
    from flowrl.image.data import load_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a violet kite\na photo of two orange boats\na third prompt left out\n")
    reward = ["rewards=[{name: jpeg-compressibility}]"]  # the toy world's rewards read toy-world prompts only
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(to_dict(tiny_config(tiny_model, f"data.eval_prompts={prompts}", *reward))))
    toy_config = tmp_path / "toy.yaml"  # the toy world's config: its evaluation prompts are toy:held-out
    toy_config.write_text(yaml.safe_dump(to_dict(tiny_config(tiny_model))))
    for path, expected in [(config, ["a photo of a violet kite", "a photo of two orange boats"]),
                           (toy_config, load_prompts("toy:held-out")[:2])]:  # fmt: skip
        out = tmp_path / path.stem
        argv = ["gallery", "--config", str(path), "--column", "base=base", "--num-prompts", "2", "--out", str(out)]
        assert main(argv) == 0
        page = html.unescape((out / "gallery" / "index.html").read_text())
        assert all(p in page for p in expected) and "a third prompt left out" not in page
        assert len(list((out / "gallery" / "images").iterdir())) == 2  # two prompts, one seed, one column
    assert "violet" not in page  # the toy config's page holds the toy world's prompts only
    capsys.readouterr()


def test_help_names_the_gallery_prompts_default_and_every_model_family(capsys):
    from flowrl.cli import build_parser
    from flowrl.core.options import describe
    from flowrl.image.config import Config
    from flowrl.image.models import FAMILIES

    path_help = next(text for key, _, _, text in describe(Config) if key == "model.path")
    names = {"StableDiffusion3Pipeline": "SD3.5", "FluxPipeline": "FLUX.1", "QwenImagePipeline": "Qwen-Image",
             "Flux2KleinPipeline": "FLUX.2 [klein]", "ZImagePipeline": "Z-Image",
             "FluxKontextPipeline": "FLUX.1-Kontext", "QwenImageEditPipeline": "Qwen-Image-Edit",
             "QwenImageEditPlusPipeline": "Qwen-Image-Edit(-2509)", "WanPipeline": "Wan 2.1 / 2.2",
             "WanImageToVideoPipeline": "image-to-video"}  # fmt: skip
    assert FAMILIES.names() == sorted(names) and all(name in path_help for name in names.values())
    with pytest.raises(SystemExit):
        build_parser(["gallery", "--help"]).parse_args(["gallery", "--help"])
    assert "(default: the config's data.eval_prompts)" in " ".join(capsys.readouterr().out.split())


def test_the_progress_bars_time_left_is_whichever_end_comes_first():
    from flowrl.core.loop import _time_left

    assert _time_left(0, 30.0, 10, 90) == {}  # no time limit: tqdm's own estimate
    assert _time_left(300, 20.0, 10, 100) == {"left": "3:20"}  # 100 more at 2 s each end before the limit (4:40)
    assert _time_left(300, 120.0, 10, 1000) == {"left": "3:00"}  # the limit comes first
    assert _time_left(300, 1.0, 0, 50) == {"left": "4:59"}  # no iteration done yet: the limit


def test_the_progress_bar_ends_on_the_iterations_done_when_the_time_limit_stops_training(tmp_path, capsys):
    import time
    from types import SimpleNamespace

    from flowrl.core.loop import training_loop

    train = SimpleNamespace(iterations=45, max_minutes=0.1 / 60, save_every=0)  # a 0.1 s limit
    cfg = SimpleNamespace(train=train, output=SimpleNamespace(progress=True, images_every=0))
    run = SimpleNamespace(cfg=cfg, accelerator=SimpleNamespace(is_main_process=True, num_processes=1), iteration=0,
                          train_seconds=0.0, monitor=None)  # fmt: skip

    def step(run) -> dict[str, float]:
        time.sleep(0.06)  # the limit ends training after the second iteration on a quiet machine
        run.iteration += 1
        return {}

    recipe = SimpleNamespace(train_step=step, save_checkpoint=lambda run, path: None, progress=lambda metrics: {},
                             logged=lambda run, metrics: metrics, log_media=lambda run, writer: None)  # fmt: skip
    training_loop(run, str(tmp_path), None, recipe)
    assert 1 <= run.iteration < 45
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    # it showed one iteration fewer than were done before (0/45 after a one-iteration run)
    assert final.startswith("train:") and f" {run.iteration}/45 " in final, final


def test_the_time_limit_line_says_what_the_limit_bounds():
    from pathlib import Path

    from flowrl.core.loop import time_limit_line
    from flowrl.recipes import load_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    assert time_limit_line(load_config(str(configs / "demo.yaml"), [])) == (
        "train.max_minutes=6 bounds training only (45 iterations or 6 minutes, whichever ends first); model "
        "loading and the evaluations before and after come on top"
    )
    one = load_config(str(configs / "text_demo.yaml"), ["train.max_minutes=1", "eval.enabled=false"])
    assert time_limit_line(one).endswith(
        "(200 iterations or 1 minute, whichever ends first); model loading comes on top"
    )
    assert time_limit_line(load_config(str(configs / "text_demo.yaml"), ["train.max_minutes=0"])) is None


def test_the_untrained_path_is_described_as_the_hardware_decides(monkeypatch):
    from flowrl.image.models import untrained

    cpu = torch.device("cpu")
    monkeypatch.setattr(untrained, "_cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert untrained.copy_dtype("auto", cpu, lora=False) == torch.bfloat16
    copy = untrained.UntrainedCopy(torch.nn.Linear(2, 2), torch.bfloat16)
    assert untrained.describe_path("auto", copy, torch.float32, cpu) == (
        "a bf16 copy of the transformer (model.untrained_copy=auto: fast bf16 matmul on cpu)"
    )
    monkeypatch.setattr(untrained, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert untrained.copy_dtype("auto", cpu, lora=False) is None  # the demo (full fine-tuning) on such a CPU
    assert untrained.describe_path("auto", None, torch.float32, cpu) == (
        "the live module in fp32 (model.untrained_copy=auto: no fast bf16 matmul on cpu)"
    )
    assert (
        untrained.describe_path("none", None, torch.float32, cpu)
        == "the live module in fp32 (model.untrained_copy=none)"
    )
