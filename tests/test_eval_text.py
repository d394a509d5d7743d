"""``flowrl eval`` with a text config: the trainer's own evaluation, on any checkpoint or peft adapter."""

from __future__ import annotations

import json
import re

import pytest

from flowrl.cli import main


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A short run of the text demo (two reward functions, 2 samples per evaluation prompt) and its folder."""
    run_dir = tmp_path_factory.mktemp("text-eval") / "run"
    args = ["train.iterations=30", "eval.num_prompts=16", "eval.samples_per_prompt=2", "eval.temperature=1.0",
            "rewards=[{name: 'toy-text:correct'}, {name: 'toy-text:well_formed', weight: 0.5}]",
            "output.progress=false", f"output.run_dir={run_dir}"]  # fmt: skip
    assert main(["train", "--config", "configs/text_demo.yaml", *args]) == 0
    return run_dir


def _eval(run_dir, out, *columns: str, extra=()) -> dict:
    argv = ["eval", "--config", str(run_dir / "config.yaml"), "--out", str(out), *extra]
    for column in columns:
        argv += ["--checkpoint", column]
    assert main(argv) == 0
    return json.loads((out / "eval.json").read_text())


def test_eval_reproduces_the_runs_own_before_and_after(text_run, tmp_path, capsys):
    summary = json.loads((text_run / "summary.json").read_text())
    final = text_run / "checkpoints" / "final"
    report = _eval(text_run, tmp_path / "a", "base=base", f"trained={final}")
    base, trained = report["columns"]["base"], report["columns"]["trained"]
    assert report["backend"] == "text" and report["num_prompts"] == 16 and report["seeds"] == [0, 1]
    assert summary["eval_reward_after"] != summary["eval_reward_before"]  # the run moved: the columns differ
    # the same pairs, noise and code as the run's evaluation: the same numbers
    assert base["scores"]["reward"]["mean"] == pytest.approx(summary["eval_reward_before"], abs=1e-12)
    assert base["scores"]["reward"]["se"] == pytest.approx(summary["eval_reward_before_se"], abs=1e-12)
    assert trained["scores"]["reward"]["mean"] == pytest.approx(summary["eval_reward_after"], abs=1e-12)
    gain = report["versus_base"]["trained"]["gains"]["reward"]
    assert (gain["gain"], gain["se"]) == pytest.approx((summary["eval_reward_gain"], summary["eval_reward_gain_se"]))
    assert trained["scores"]["correct"]["mean"] == pytest.approx(summary["eval/correct"]["after"])
    assert 0 < base["distinct"]["mean"] <= 1  # two samples per prompt
    out = capsys.readouterr().out
    assert "trained − base: reward" in out and "drift" not in out
    # a peft adapter folder (what TRL's output_dir holds with a peft_config) is the same column
    adapter = _eval(text_run, tmp_path / "b", f"adapter={final / 'lora'}", extra=["--seeds=1"])
    assert adapter["seeds"] == [1] and adapter["columns"]["adapter"]["num_prompts"] == 16


def test_an_adapter_of_another_rank_is_evaluated_with_its_own_shape(text_run, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for name, scale in (("zero", 0.0), ("far", 3.0)):  # lora_B = 0: the base itself; large: other completions
        model = get_peft_model(AutoModelForCausalLM.from_pretrained("assets/toy-lm"),
                               LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))  # fmt: skip
        with torch.no_grad():
            for key, p in model.named_parameters():
                if "lora_B" in key:
                    p.normal_(0, 1.0).mul_(scale)
        model.save_pretrained(tmp_path / name)
    columns = ("base=base", f"zero={tmp_path / 'zero'}", f"far={tmp_path / 'far'}", "model=assets/toy-lm")
    report = _eval(text_run, tmp_path / "out", *columns, extra=["--num-prompts=4"])
    assert report["num_prompts"] == 4 and list(report["columns"]) == ["base", "zero", "far", "model"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 2 and [r["sample"] for r in rows[:2]] == [0, 1]
    # a zero adapter and the base model's own folder as a full model are the base column
    assert all(r["columns"]["zero"] == r["columns"]["base"] == r["columns"]["model"] for r in rows)
    assert any(r["columns"]["far"]["completion"] != r["columns"]["base"]["completion"] for r in rows)


def test_text_eval_refuses_bad_input_in_one_line(text_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    conversational = tmp_path / "chat.jsonl"
    conversational.write_text('{"prompt": [{"role": "user", "content": "1+2="}]}\n')
    config = str(text_run / "config.yaml")
    for argv, message in [
        (["--checkpoint", f"x={empty}"], "holds no peft adapter (adapter_config.json) or model (config.json)"),
        (["--checkpoint", "base=base", "--gallery", "2"], "--gallery is for image models"),
        (
            ["--checkpoint", "base=base@configs/demo.yaml"],
            "is for the flow backend and the command's --config for text",
        ),
        (["--checkpoint", "base=base", "--prompts", str(conversational)], "not of the format of the config's"),
        (["--checkpoint", "base=base", "--prompts", "toy-text:nope"], "--prompts: unknown data source"),
        (["--checkpoint", "base=base", "--seeds", "1,1"], "must be distinct non-negative integers"),
    ]:
        assert main(["eval", "--config", config, "--out", str(tmp_path / "o"), *argv]) == 2
        err = capsys.readouterr().err
        assert re.search(re.escape(message), err) and err.count("\n") == 1, err
