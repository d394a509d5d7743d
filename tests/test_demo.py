"""The main job, shortened: the shipped toy base and configs/demo.yaml through the CLI (slow)."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser

import pytest

from flowrl.cli import main


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


@pytest.mark.slow
def test_shortened_demo_writes_wellformed_summary_and_gallery(tmp_path, capsys):
    run_dir = tmp_path / "demo"
    args = ["train", "--config", "configs/demo.yaml", f"output.run_dir={run_dir}", "output.progress=false"]
    args += ["train.iterations=3", "eval.num_prompts=16", "eval.seeds_per_prompt=2", "eval.gallery_prompts=6"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)

    summary = json.loads((run_dir / "summary.json").read_text())
    required = ["eval_reward_before", "eval_reward_after", "eval_strict_before", "eval_strict_after"]
    for key in required:
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["num_eval_samples"] == 32 and summary["train_steps"] == 3 and summary["seed"] == 0
    assert summary["wall_time_s"] > 0 and summary["config"]["sampler"]["mode"] == "flow-grpo-fast"
    # the base is evaluated from the shipped weights: it matches the pretraining report's model on these pairs
    assert summary["eval/toy-geneval"]["before"] == pytest.approx(summary["eval_reward_before"])
    # standard errors over the 16 prompts, independent noise per (prompt, seed index)
    assert summary["se_unit"] == "prompt" and summary["num_eval_prompts"] == 16
    assert 0 < summary["eval_reward_gain_se"] < 0.5 and summary["eval_noise"].startswith("independent")

    html = (run_dir / "gallery" / "index.html").read_text()
    parser = _Images()
    parser.feed(html)
    assert len(parser.sources) == 6 * 2  # rows × (base, trained)
    for src in parser.sources:
        assert os.path.isfile(run_dir / "gallery" / src), src
    assert (run_dir / "gallery" / "contact_sheet.png").stat().st_size > 0
    assert (run_dir / "checkpoints" / "final" / "full" / "diffusion_pytorch_model.safetensors").is_file()
