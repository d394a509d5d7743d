import random

import pytest
import torch

from flowrl.image.toy_world import (
    Clause,
    Scene,
    all_scenes,
    detect,
    evaluate,
    mislabel,
    parse_prompt,
    render,
    split_scenes,
)


def test_prompts_split_and_parse_round_trip():
    scenes = all_scenes()
    train, held_out = split_scenes(0.2, seed=0)
    assert len(scenes) == 468 and len(train) + len(held_out) == 468
    assert not {s.text for s in train} & {s.text for s in held_out}
    assert split_scenes(0.2, seed=0) == (train, held_out)  # fixed split
    assert all(parse_prompt(s.text) == s for s in scenes)
    assert Scene((Clause("circle", "red", 2),)).text == "two red circles"
    with pytest.raises(ValueError, match="not a toy-world prompt: 'a purple circle'"):
        parse_prompt("a purple circle")


def test_evaluator_accepts_ground_truth_and_tolerates_noise():
    scenes = all_scenes()
    strict = [evaluate(render(s, 32, seed=i), s).strict for i, s in enumerate(scenes)]
    assert all(strict)  # layouts keep a gap between objects, so every ground truth is exactly right
    g = torch.Generator().manual_seed(0)
    noisy = [
        evaluate((render(s, 32, seed=i) + 0.1 * torch.randn(3, 32, 32, generator=g)).clamp(0, 1), s).strict
        for i, s in enumerate(scenes[::4])
    ]
    assert sum(noisy) / len(noisy) > 0.98


def test_evaluator_partial_credit_hand_cases():
    two_red = Scene((Clause("circle", "red", 2),))
    one_red = Scene((Clause("circle", "red", 1),))
    # one red circle for "two red circles": count 1 − 1/2, colour 1/2
    score = evaluate(render(one_red, 32, seed=3), two_red)
    assert score.details == {"count0": 0.5, "colour0": 0.5} and score.partial == 0.5 and score.strict == 0
    assert evaluate(torch.zeros(3, 32, 32), one_red).partial == 0
    # right colour, wrong shape: colour credit only
    square = Scene((Clause("square", "red", 1),))
    assert evaluate(render(square, 32, seed=1), one_red).details == {"count0": 0.0, "colour0": 1.0}
    # relation reversed: counts right, position wrong
    rel = Scene((Clause("square", "blue"), Clause("circle", "green")), "left of")
    flipped = Scene((Clause("square", "blue"), Clause("circle", "green")), "right of")
    s = evaluate(render(flipped, 32, seed=5), rel)
    assert s.details["position"] == 0.0 and s.partial == pytest.approx(0.8) and s.strict == 0
    # stray pieces of the named colour cost like missing objects: a circle plus a 3×3 red square for
    # "a red circle" has the right shape once (count 1) but two red objects (colour 1 − 1/1 = 0)
    img = render(one_red, 32, seed=3)
    free = (img.sum(0) == 0).nonzero()
    y, x = next(
        (int(a), int(b)) for a, b in free.tolist() if a < 28 and b < 28 and img[:, a : a + 5, b : b + 5].sum() == 0
    )
    img[0, y + 1 : y + 4, x + 1 : x + 4] = 1.0
    assert evaluate(img, one_red).details == {"count0": 1.0, "colour0": 0.0}


def test_detect_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected an image \[3, H, W\]"):
        detect(torch.zeros(32, 32))


def test_mislabel_recolours_one_clause_to_an_unused_colour():
    rng = random.Random(0)
    changed = {0: 0, 1: 0}
    for scene in all_scenes():
        wrong = mislabel(scene, rng)
        diff = [i for i, (a, b) in enumerate(zip(scene.clauses, wrong.clauses, strict=True)) if a != b]
        assert len(diff) == 1 and wrong.relation == scene.relation
        i = diff[0]
        changed[i] += 1
        a, b = scene.clauses[i], wrong.clauses[i]
        assert (a.shape, a.count) == (b.shape, b.count)
        assert b.colour not in {c.colour for c in scene.clauses}  # still separable by colour
        # the caption's evaluator rejects the mislabelled drawing: the named colour is missing
        score = evaluate(render(wrong, 32, seed=1), scene)
        assert score.strict == 0.0 and score.details[f"colour{i}"] == 0.0
    assert changed[0] > 0 and changed[1] > 0  # either object of a two-object prompt can be the wrong one
