"""Conditioning inputs come from the model family (issue 29, item 1): a family declares the per-prompt inputs it reads
(``FamilyFacts.inputs``), a ``.jsonl`` prompt file gives them, and the image recipe hands each prompt's inputs to
the family's ``condition`` in training, evaluation and ``flowrl eval`` alike, with no recipe change."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from tiny_runs import tiny_config

from flowrl.core.columns import ColumnSpec
from flowrl.core.errors import ConfigError, DataError
from flowrl.image import trainer
from flowrl.image.compare import evaluate_column
from flowrl.image.data import PromptSet, inputs_by_prompt, load_prompt_set
from flowrl.image.models import FAMILIES, SD3Policy

TRAIN = [("a red circle", 0.0), ("a red square", 2.0), ("a green circle", -1.0)]  # toy-world prompts
EVAL = [("a red triangle", 3.0), ("a red circle", 0.0)]


class ShadedToy(SD3Policy):
    """The toy SD3 family, reading one more input per prompt: a ``shade`` added to its text embeddings."""

    seen: ClassVar[list[tuple[list[str], list[float]]]] = []

    def condition(self, prompts, inputs=None, with_negative=None):
        shades = [float(row["shade"]) for row in inputs]
        type(self).seen.append((list(prompts), shades))
        cond = self.encode(prompts, with_negative)
        cond.embeds = cond.embeds + torch.tensor(shades).to(cond.embeds).view(-1, 1, 1)
        return cond


def _jsonl(path: Path, rows: list[tuple[str, float]]) -> str:
    path.write_text("".join(json.dumps({"prompt": p, "shade": s}) + "\n" for p, s in rows))
    return str(path)


@pytest.fixture
def shaded(tiny_model, tmp_path):
    """The tiny toy folder re-labelled as a ``ShadedToyPipeline``, its family registered for the test."""
    folder = tmp_path / "shaded"
    shutil.copytree(tiny_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "ShadedToyPipeline"}))
    saved = dict(FAMILIES._table), dict(FAMILIES._facts), dict(FAMILIES._options)
    targets = FAMILIES.facts("StableDiffusion3Pipeline").lora_targets
    FAMILIES.register("ShadedToyPipeline", lora_targets=targets, inputs=("shade",))(ShadedToy)
    ShadedToy.seen = []
    yield str(folder)
    FAMILIES._table, FAMILIES._facts, FAMILIES._options = saved


def test_each_prompt_reaches_the_family_with_its_inputs(shaded, tmp_path):
    train, held_out = _jsonl(tmp_path / "train.jsonl", TRAIN), _jsonl(tmp_path / "eval.jsonl", EVAL)
    cfg = tiny_config(shaded, f"data.train_prompts={train}", f"data.eval_prompts={held_out}", "train.iterations=1")
    run = trainer.setup(cfg)
    trainer.train_step(run)
    shade = dict(TRAIN + EVAL)
    assert ShadedToy.seen and all(shades == [shade[p] for p in prompts] for prompts, shades in ShadedToy.seen)
    drawn = {p for prompts, _ in ShadedToy.seen for p in prompts}
    assert len(drawn) == cfg.train.prompts_per_step and drawn <= {p for p, _ in TRAIN}
    ShadedToy.seen = []
    trainer.evaluate(run, ["a red triangle", "a red circle"], [0, 0])
    assert ShadedToy.seen == [(["a red triangle", "a red circle"], [3.0, 0.0])]
    ShadedToy.seen = []
    evaluate_column(ColumnSpec("base", "base", None, cfg), ["a red triangle"], [0], run.inputs)  # flowrl eval's path
    assert ShadedToy.seen == [(["a red triangle"], [3.0])]
    # the inputs change what is sampled: the same prompts and noise with other shades give other samples
    prompts = ["a red circle", "a red square"]
    first = trainer.sample(run, prompts).rollout.samples
    run.inputs = {p: {"shade": 5.0} for p in prompts}
    assert not torch.allclose(first, trainer.sample(run, prompts).rollout.samples)


def test_prompt_data_without_the_familys_inputs_is_refused_at_config_time(shaded, tmp_path):
    held_out = _jsonl(tmp_path / "eval.jsonl", EVAL)
    with pytest.raises(ConfigError, match=r"data\.train_prompts: the ShadedToyPipeline family reads shade with each "
                                          r"prompt, and 'toy:train' gives no 'shade'"):  # fmt: skip
        tiny_config(shaded, "data.train_prompts=toy:train", f"data.eval_prompts={held_out}")


def test_one_text_on_several_rows_is_a_row_each_in_training_and_evaluation(shaded, tmp_path):
    """A file may repeat a text with other inputs (one edit instruction on several images): each row is a
    ``PromptRow`` that is its text for the encoder and the rewards but keeps its own inputs, evaluation group,
    evaluation noise and clustering unit; a text repeated with the same inputs stays one row."""
    import pickle

    from flowrl.core.inputs import PromptRow, row_key
    from flowrl.core.seeds import eval_noise_seeds
    from flowrl.core.stats import prompt_mean_se
    from flowrl.image.evaluation import prompt_groups

    rows = [("a red circle", 1.0), ("a red circle", -1.0), ("a red square", 2.0), ("a red square", 2.0),
            ("a red circle", 1.0)]  # fmt: skip
    path = _jsonl(tmp_path / "rows.jsonl", rows)
    prompts = load_prompt_set(path).prompts
    assert prompts == [p for p, _ in rows] and all(type(p) is PromptRow for p in (*prompts[:2], prompts[4]))
    assert row_key(prompts[0]) != row_key(prompts[1]) and type(prompts[2]) is str  # same inputs: one row
    assert row_key(prompts[4]) == row_key(prompts[0])  # equal rows share their key wherever they are
    # a text with other inputs in the other file is a row of its own there too (keyed by text and inputs)
    other = load_prompt_set(_jsonl(tmp_path / "other.jsonl", [("a red square", 7.0)]))
    both = inputs_by_prompt(("rows", load_prompt_set(path)), ("other", other))
    assert type(other.prompts[0]) is PromptRow and both[row_key(other.prompts[0])] == {"shade": 7.0}
    assert len(both) == 4
    assert pickle.loads(pickle.dumps(prompts[1])).key == prompts[1].key  # what gathering across processes does
    assert sorted(inputs_by_prompt(("rows", load_prompt_set(path))).values(), key=str) == sorted(
        [{"shade": 1.0}, {"shade": -1.0}, {"shade": 2.0}], key=str)  # fmt: skip
    assert prompt_groups(prompts).tolist() == [0, 1, 2, 2, 0]
    seeds = eval_noise_seeds(prompts, [0] * 5)
    assert seeds[0] != seeds[1] and seeds[2] == seeds[3] == eval_noise_seeds(["a red square"], [0])[0]
    values = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0])
    assert prompt_mean_se(values, prompts) == (1.0, pytest.approx(math.sqrt(1 / 3)))

    cfg = tiny_config(shaded, f"data.train_prompts={path}", f"data.eval_prompts={path}", "train.iterations=1",
                      "train.prompts_per_step=5")  # fmt: skip
    run = trainer.setup(cfg)
    trainer.train_step(run)
    shade = {row_key(p): s for p, (_, s) in zip(prompts, rows, strict=True)}
    drawn = [(row_key(p), s) for seen, shades in ShadedToy.seen for p, s in zip(seen, shades, strict=True)]
    assert {k for k, _ in drawn} == set(shade) and all(s == shade[k] for k, s in drawn)  # each row its own shade
    ShadedToy.seen = []
    trainer.evaluate(run, run.eval_prompts[:3], [0, 0, 0])
    assert ShadedToy.seen == [(["a red circle", "a red circle", "a red square"], [1.0, -1.0, 2.0])]


def test_a_text_to_image_family_reads_jsonl_prompts_and_ignores_their_other_keys(tiny_model, tmp_path):
    rows = _jsonl(tmp_path / "rows.jsonl", TRAIN)
    cfg = tiny_config(tiny_model, f"data.train_prompts={rows}", "train.iterations=1")
    run = trainer.setup(cfg)
    assert run.train_prompts == [p for p, _ in TRAIN] and run.inputs == {p: {"shade": s} for p, s in TRAIN}
    trainer.train_step(run)  # the SD3 family's default condition reads the prompt only


def test_jsonl_prompt_rows_are_checked_line_by_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": " a cat ", "images": ["a.png"], "score": 1}\n\n{"prompt": "a dog", "images": []}\n')
    prompt_set = load_prompt_set(str(good))
    assert prompt_set == PromptSet(["a cat", "a dog"], [{"images": ["a.png"], "score": 1}, {"images": []}], [1, 3])
    assert prompt_set.columns() == {"images"}
    assert inputs_by_prompt(("good", prompt_set)) == {
        "a cat": {"images": ["a.png"], "score": 1},
        "a dog": {"images": []},
    }
    for text, why in [('{"prompt": "a"}\n{"prompt": 3}\n', "line 2: expected an object with a non-empty"),
                      ('{"prompt": "a"}\nnot json\n', "line 2: not JSON"), ("\n", "has no rows")]:  # fmt: skip
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(DataError, match=why):
            load_prompt_set(str(bad))


class FramedToy(SD3Policy):
    """The toy SD3 family with a video-shaped state ``[C, F, h, w]``: each frame denoised by the image network,
    the first frame decoded (what the image rewards score)."""

    FRAMES = 2

    def latent_shape(self, resolution):
        c, h, w = super().latent_shape(resolution)
        return (c, self.FRAMES, h, w)

    def velocity(self, x, sigma, cond):
        b, c, f, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        per_frame = {k: v.repeat_interleave(f, 0) for k, v in cond.items()}
        sigma = sigma.repeat_interleave(f) if sigma.ndim else sigma
        return super().velocity(frames, sigma, per_frame).reshape(b, f, c, h, w).transpose(1, 2)

    def decode(self, latents, batch_size=0):
        return super().decode(latents[:, :, 0].contiguous(), batch_size)


@pytest.mark.parametrize("loss", ["grpo", "nft"])  # transitions replayed; clean samples re-noised
def test_the_state_shape_comes_from_the_family(tiny_model, tmp_path, loss):
    folder = tmp_path / "framed"
    shutil.copytree(tiny_model, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FramedToyPipeline"}))
    saved = dict(FAMILIES._table), dict(FAMILIES._facts), dict(FAMILIES._options)
    FAMILIES.register("FramedToyPipeline", lora_targets=FAMILIES.facts("StableDiffusion3Pipeline").lora_targets)(
        FramedToy
    )
    try:
        extra = ["sampler.mode=ode", "sampler.window_size=0", "train.timestep_fraction=0.5"] if loss == "nft" else []
        run = trainer.setup(tiny_config(str(folder), f"loss.name={loss}", "train.iterations=1", *extra))
        before = [p.detach().clone() for p in run.params]
        batch = trainer.sample(run, ["a red circle", "a red square"])
        assert batch.rollout.samples.ndim == 5  # [N, C, F, h, w]: the family's shape, unknown to the recipe
        assert batch.rollout.samples.shape[1:] == run.policy.latent_shape(run.cfg.model.resolution)
        metrics = trainer.train_step(run)
        assert math.isfinite(metrics["train/loss"])
        assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    finally:
        FAMILIES._table, FAMILIES._facts, FAMILIES._options = saved


def test_a_datasets_folder_gives_rows_with_images(tmp_path, monkeypatch):
    """A Hugging Face ``datasets`` folder with a ``prompt`` and an ``image`` column (images, one or a list per row)
    gives the rows a ``.jsonl`` file would: its images as PNG paths (written once to the cache, pixel for pixel),
    its other columns as inputs; a split dictionary or a folder without prompts is refused in one line."""
    import numpy as np
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    images = [PILImage.fromarray(p) for p in pixels]
    features = Features({"prompt": Value("string"), "image": Sequence(Image()), "target": Value("string")})
    rows = {"prompt": ["make it red", "make it red", " add a cat "], "image": [[images[0]], [images[1], images[2]],
            [images[2]]], "target": ["red", "red", "a cat"]}  # fmt: skip
    Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "edits"))
    prompt_set = load_prompt_set(str(tmp_path / "edits"))
    assert prompt_set.prompts == ["make it red", "make it red", "add a cat"] and prompt_set.lines == [1, 2, 3]
    assert [len(r["image"]) for r in prompt_set.inputs] == [1, 2, 1] and prompt_set.columns() == {"image", "target"}
    for row, expected in zip(prompt_set.inputs, [[0], [1, 2], [2]], strict=True):
        for path, k in zip(row["image"], expected, strict=True):
            assert np.array_equal(np.asarray(PILImage.open(path).convert("RGB")), pixels[k])
    assert load_prompt_set(str(tmp_path / "edits")) == prompt_set  # the cache is reused
    assert len(inputs_by_prompt(("edits", prompt_set))) == 3  # the repeated instruction is a row each

    DatasetDict({"train": Dataset.from_dict({"prompt": ["a"]})}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(DataError, match="holds the splits train: give one split's folder"):
        load_prompt_set(str(tmp_path / "splits"))
    Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "no_prompt"))
    with pytest.raises(DataError, match="has no 'prompt' column \\(its columns: text\\)"):
        load_prompt_set(str(tmp_path / "no_prompt"))
