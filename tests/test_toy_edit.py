"""The toy edit world (issue 31): its edits, its evaluator by hand and on every ground-truth edit, its splits as
``.jsonl`` rows with images, and the ``toy-edit`` reward, which reads each row's source image, target and kind, in a
training step of the editing family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import save_tiny_flux_kontext
from tiny_runs import TINY_ARGS

from flowrl.core.errors import ConfigError, RewardError
from flowrl.image import trainer
from flowrl.image.compare import source_columns
from flowrl.image.data import inputs_by_prompt, load_prompt_set
from flowrl.image.run import _gallery
from flowrl.image.toy_edit import KINDS, Edit, draw, edit_scores, edits_of, render_edit, split_edits
from flowrl.image.toy_edit_data import write_splits
from flowrl.image.toy_world import Clause, Placed, Scene
from flowrl.recipes import load_config
from flowrl.rewards import RewardSet


def test_each_one_kind_scene_has_its_recolours_add_and_remove():
    three = Scene((Clause("circle", "red", 3),))
    assert [(e.kind, e.target.text, e.instruction) for e in edits_of(three)] == [
        ("recolour", "three green circles", "make the three red circles green"),
        ("recolour", "three blue circles", "make the three red circles blue"),
        ("recolour", "three yellow circles", "make the three red circles yellow"),
        ("remove", "two red circles", "remove one of the three red circles"),
    ]
    one = edits_of(Scene((Clause("square", "blue", 1),)))
    assert [e.instruction for e in one if e.kind != "recolour"] == ["add a second blue square"]
    assert edits_of(Scene((Clause("circle", "red"), Clause("square", "blue")), "left of")) == []


def test_the_splits_are_the_toy_worlds_with_one_text_per_edit():
    train, held_out = split_edits("train"), split_edits("held-out")
    assert (len(train), len(held_out)) == (130, 26)
    assert len({e.instruction for e in train}) == len(train) and len({e.instruction for e in held_out}) == 26
    assert not {e.source for e in train} & {e.source for e in held_out}  # held-out scenes are never trained on
    assert {e.kind for e in held_out} == set(KINDS)
    with pytest.raises(ValueError, match="unknown toy edit split"):
        split_edits("test")


def test_every_ground_truth_edit_scores_one_and_the_unedited_source_is_preserved_but_not_done():
    for split in ("train", "held-out"):
        for i, edit in enumerate(split_edits(split)):
            source, edited = render_edit(edit, 32, seed=i)
            assert edit_scores(edited, source, edit.target, edit.kind) == (1.0, 1.0), edit.instruction
            done, preserved = edit_scores(source, source, edit.target, edit.kind)
            assert preserved == 1.0 and done < 1.0, edit.instruction


def test_the_evaluator_by_hand():
    red, blue = Clause("square", "red", 2), Clause("square", "blue", 2)
    a, b = Placed(red, 8.0, 8.0, 4.0), Placed(red, 24.0, 24.0, 4.0)  # two 8×8 squares, far apart
    source = draw([a, b], 32)
    target = Scene((blue,))
    # one of the two recoloured, the other gone: half the objects in place (IoU 64 / 128), count 1 of 2 → 0.5
    half = draw([Placed(blue, 8.0, 8.0, 4.0)], 32)
    assert edit_scores(half, source, target, "recolour") == (0.5, 0.5)
    # both recoloured but moved 4 px right: each keeps 4 of its 8 columns, IoU = 64 / (128 + 128 − 64)
    moved = draw([Placed(blue, 12.0, 8.0, 4.0), Placed(blue, 28.0, 24.0, 4.0)], 32)
    assert edit_scores(moved, source, target, "recolour") == (1.0, pytest.approx(64 / 192))
    # an add that also wipes one source object: half of the source still covered
    three = Scene((Clause("square", "red", 3),))
    assert edit_scores(draw([a, Placed(red, 24.0, 8.0, 4.0)], 32), source, three, "add")[1] == 0.5
    # a remove that puts its remaining object somewhere new: nothing of the result lies on the source
    one = Scene((Clause("square", "red", 1),))
    assert edit_scores(draw([Placed(red, 8.0, 24.0, 4.0)], 32), source, one, "remove") == (1.0, 0.0)
    assert edit_scores(torch.zeros(3, 32, 32), source, one, "remove") == (0.0, 0.0)
    with pytest.raises(ValueError, match="unknown edit kind"):
        edit_scores(source, source, one, "rotate")


@pytest.fixture(scope="module")
def edit_data(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("edits") / "toy-edit")
    assert write_splits(out) == {"train": 130, "held-out": 26, "validation": 9, "train-no-val": 121}
    return out


def test_the_written_rows_load_and_the_reward_reads_their_columns(edit_data):
    rows = load_prompt_set(f"{edit_data}/held-out.jsonl")
    edits = split_edits("held-out")
    assert rows.prompts == [e.instruction for e in edits]
    assert rows.columns() == {"image", "target", "source_caption", "edit", "edited"}
    inputs = inputs_by_prompt(("held-out", rows))
    # the PNGs round-trip: the reward on the ground-truth edits scores 1 on both parts
    edited = torch.stack([_png(row["edited"], edit_data) for row in rows.inputs])
    reward = RewardSet.from_specs([{"name": "toy-edit", "options": {"preserve_weight": 0.25}}])
    total, parts = reward(edited, rows.prompts, inputs=inputs)
    assert torch.equal(total, torch.ones(26)) and torch.equal(parts["toy-edit/preserved"], torch.ones(26))
    sources = torch.stack([_png(row["image"][0], edit_data) for row in rows.inputs])
    total, parts = reward(sources, rows.prompts, inputs=inputs)  # unedited: preserved, not done
    expected = [edit_scores(s, s, e.target, e.kind) for s, e in zip(sources, edits, strict=True)]
    assert parts["toy-edit/done"].tolist() == pytest.approx([d for d, _ in expected])
    assert total.tolist() == pytest.approx([0.75 * d + 0.25 * p for d, p in expected])
    with pytest.raises(RewardError, match="reward 'toy-edit' reads 'image' of each prompt row"):
        reward(sources, rows.prompts)
    # listed twice under labels, one column per part (what GDPO normalises apart): the same weighted total
    split = RewardSet.from_specs([
        {"name": "toy-edit", "label": "done", "weight": 0.75, "options": {"preserve_weight": 0.0}},
        {"name": "toy-edit", "label": "kept", "weight": 0.25, "options": {"preserve_weight": 1.0}},
    ])  # fmt: skip
    both, columns = split(sources, rows.prompts, inputs=inputs)
    torch.testing.assert_close(both, total)
    assert torch.equal(columns["done"], parts["toy-edit/done"])
    assert torch.equal(columns["kept"], parts["toy-edit/preserved"]) and "kept/done" in columns
    assert split.weight_vector().tolist() == [0.75, 0.25]
    with pytest.raises(ValueError, match="label 'done' given twice"):
        RewardSet.from_specs([{"name": "toy-edit", "label": "done"}, {"name": "pixel-similarity", "label": "done"}])


def _png(path: str, folder: str) -> torch.Tensor:
    from PIL import Image

    full = path if path.startswith("/") else f"{folder}/{path}"
    return torch.from_numpy(np.asarray(Image.open(full), dtype=np.float32) / 255).permute(2, 0, 1)


def test_an_edit_reward_without_its_columns_is_refused_at_config_time(tiny_model):
    why = (
        r"data\.train_prompts: reward 'toy-edit' reads image, target, edit with each prompt, and 'toy:train' gives no"
    )
    with pytest.raises(ConfigError, match=why):
        load_config(None, [f"model.path={tiny_model}", *TINY_ARGS, "rewards=[{name: toy-edit}]"])


def test_the_editing_family_trains_on_the_toy_edits_with_the_edit_reward(edit_data, tmp_path):
    kontext = save_tiny_flux_kontext(str(tmp_path / "kontext"))
    args = [f"model.path={kontext}", *TINY_ARGS, f"data.train_prompts={edit_data}/train.jsonl",
            f"data.eval_prompts={edit_data}/held-out.jsonl", "model.max_sequence_length=32", "train.iterations=1",
            "rewards=[{name: toy-edit}]"]  # fmt: skip
    run = trainer.setup(load_config(None, args))
    metrics = trainer.train_step(run)
    assert 0 <= metrics["reward/toy-edit/done"] <= 1 and 0 <= metrics["reward/toy-edit/preserved"] <= 1
    assert math.isfinite(metrics["train/loss"]) and metrics["train/rows"] > 0
    prompts = run.eval_prompts[:2]
    images, parts = trainer.evaluate(run, prompts, [0, 0])  # evaluation reads the rows too
    assert images.shape == (2, 3, 32, 32) and parts["toy-edit/done"].shape == (2,)
    # the galleries show each row's source image first
    (column,) = source_columns(prompts, run.inputs, images)
    assert column.label == "source"
    assert torch.equal(column.images, torch.stack([_png(run.inputs[p]["image"][0], edit_data) for p in prompts]))
    html = _gallery(str(tmp_path / "run"), run, prompts, [0, 0], (images, parts), (images, parts), [])
    page = open(html, encoding="utf-8").read()
    order = [page.index(f"images/{label}_0000.png") for label in ("source", "base", "trained")]
    assert order == sorted(order)
    assert source_columns(["a red circle"], {}, images) == []  # a text-to-image config has none
    two = {"a": {"image": [run.inputs[prompts[0]]["image"][0], run.inputs[prompts[1]]["image"][0]]},
           "b": {"image": run.inputs[prompts[1]]["image"]}}  # fmt: skip
    first, second = source_columns(["a", "b"], two, images)  # rows of several references: a column each
    assert (first.label, second.label) == ("source 1", "source 2")
    assert torch.equal(second.images[0], first.images[1]) and torch.equal(second.images[1], torch.ones(3, 32, 32))


def test_an_edit_names_its_parts():
    edit = Edit(Scene((Clause("triangle", "yellow", 1),)), "recolour", Scene((Clause("triangle", "red", 1),)))
    assert edit.instruction == "make the yellow triangle red"


def test_the_shipped_edit_base_loads_as_a_users_checkpoint_and_keeps_its_sources(edit_data):
    """assets/toy-kontext (scripts/pretrain_toy_edit.py) through FluxKontextPolicy: its report's numbers are the
    held-out ones, and on a few held-out edits it keeps most of the source (its preservation is ~0.88)."""
    import json

    from flowrl.image.generate import generate
    from flowrl.image.models import FluxKontextPolicy, policy_class

    assert policy_class("assets/toy-kontext") is FluxKontextPolicy
    report = json.load(open("assets/toy-kontext/pretrain_report.json"))
    assert report["num_eval_samples"] == 2 * 26 and 0 < report["held_out_done"] < report["held_out_preserved"] <= 1
    rows = load_prompt_set(f"{edit_data}/held-out.jsonl")
    inputs = inputs_by_prompt(("held-out", rows))
    prompts = rows.prompts[:6]
    policy = FluxKontextPolicy("assets/toy-kontext", max_sequence_length=16)
    images = generate(policy, prompts, [0] * 6, inputs=[inputs[p] for p in prompts], resolution=32, num_steps=10)
    _, parts = RewardSet.from_specs([{"name": "toy-edit"}])(images, prompts, inputs=inputs)
    assert parts["toy-edit/preserved"].mean() > 0.6


def test_pixel_similarity_is_one_minus_the_small_rms_difference(edit_data):
    rows = load_prompt_set(f"{edit_data}/held-out.jsonl")
    inputs = inputs_by_prompt(("held-out", rows))
    prompts = rows.prompts[:3]
    sources = torch.stack([_png(inputs[p]["image"][0], edit_data) for p in prompts])
    reward = RewardSet.from_specs([{"name": "pixel-similarity", "options": {"size": 16}}])
    assert torch.allclose(reward(sources, prompts, inputs=inputs)[0], torch.ones(3))  # unchanged: 1
    shifted = (sources + 0.25).clamp(max=1)
    small = torch.nn.functional.interpolate  # by hand: both at 16 px by area, then the RMS over pixels
    rms = (small(shifted, size=[16, 16], mode="area") - small(sources, size=[16, 16], mode="area")).square()
    expected = 1 - rms.flatten(1).mean(1).sqrt()
    torch.testing.assert_close(reward(shifted, prompts, inputs=inputs)[0], expected)
    assert (expected < 1).all()
