"""A toy edit world on the toy text-to-image world: procedural source scenes, instructions that change one verifiable
thing, the ground-truth edit, and an evaluator that scores apart "the instruction was carried out" and "everything
else was preserved" (issue 31).

An edit starts from a one-kind source scene of the toy world ("two red circles", drawn by ``toy_world``'s renderer)
and is one of:

- ``recolour``: "make the two red circles blue": the same objects in the same places, in another colour;
- ``add``: "add a third red circle": the source's objects kept, one more of the kind where it touches none;
- ``remove``: "remove one of the two red circles": one object taken away, the others kept.

``edit_scores(result, source, target, kind)`` is the evaluator: ``done``, the toy evaluator's partial score of the
result against the target scene (counts, colours and shapes), and ``preserved``, how much of the source that the
edit keeps is still there, from the pixels of the objects (any colour, so a recolour keeps every object's place):
for a recolour the IoU of the source's and the result's object pixels; for an add the share of the source's object
pixels still covered in the result; for a remove the share of the result's object pixels that lie on the source's.
The ground-truth edit of every row scores ``done = preserved = 1`` (tested), and returning the source unchanged
scores ``preserved = 1`` but a low ``done``: the two parts are reported separately so neither hides the other.

Splits follow the toy world's: the edits of its training scenes, and of its held-out scenes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from flowrl.image.toy_world import (
    COLOURS,
    NUMBERS,
    Clause,
    Placed,
    Scene,
    _mask,
    evaluate,
    layout,
    split_scenes,
    validation_split,
)

KINDS = ("recolour", "add", "remove")
ORDINALS = {2: "second", 3: "third"}
SPLITS = ("train", "held-out", "validation", "train-no-val")


@dataclass(frozen=True)
class Edit:
    """One edit: its source scene, the instruction, the target scene and its kind."""

    source: Scene
    kind: str
    target: Scene

    @property
    def instruction(self) -> str:
        """The instruction, naming the source's count so that every edit of a split has its own text."""
        c, t = self.source.clauses[0], self.target.clauses[0]
        these = f"the {c.colour} {c.shape}" if c.count == 1 else f"the {NUMBERS[c.count]} {c.colour} {c.shape}s"
        if self.kind == "recolour":
            return f"make {these} {t.colour}"
        if self.kind == "add":
            return f"add a {ORDINALS[t.count]} {c.colour} {c.shape}"
        return f"remove one of {these}"


def edits_of(scene: Scene) -> list[Edit]:
    """Every edit of a one-kind scene: a recolour to each other colour, an add (fewer than 3), a remove (more than
    1). Scenes with a relation have none."""
    if scene.relation is not None:
        return []
    c = scene.clauses[0]
    out = [
        Edit(scene, "recolour", Scene((Clause(c.shape, colour, c.count),))) for colour in COLOURS if colour != c.colour
    ]
    if c.count < max(NUMBERS):
        out.append(Edit(scene, "add", Scene((Clause(c.shape, c.colour, c.count + 1),))))
    if c.count > 1:
        out.append(Edit(scene, "remove", Scene((Clause(c.shape, c.colour, c.count - 1),))))
    return out


def split_edits(split: str) -> list[Edit]:
    """The edits of a toy split's one-kind scenes (``train``, ``held-out``, ``validation``, ``train-no-val``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown toy edit split {split!r}; valid: {', '.join(SPLITS)}")
    train, held_out = split_scenes()
    fit, validation = validation_split()
    scenes = {"train": train, "held-out": held_out, "validation": validation, "train-no-val": fit}[split]
    return [e for s in scenes for e in edits_of(s)]


def draw(objects: list[Placed], size: int) -> Tensor:
    """An image ``[3, size, size]`` in [0, 1] of placed objects on black."""
    img = torch.zeros(3, size, size)
    for obj in objects:
        img[:, _mask(obj.clause.shape, obj.cx, obj.cy, obj.r, size)] = torch.tensor(COLOURS[obj.clause.colour])[
            :, None
        ]
    return img


def render_edit(edit: Edit, size: int = 32, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The source image and its ground-truth edit, each ``[3, size, size]``: the source's layout recoloured, or one
    object taken away (a random one); an add lays out the target and takes one away for the source, so the new
    object always has room."""
    rng = random.Random(seed)
    if edit.kind == "add":
        edited = layout(edit.target, size, rng)
        gone = rng.randrange(len(edited))
        return draw([o for k, o in enumerate(edited) if k != gone], size), draw(edited, size)
    objects = layout(edit.source, size, rng)
    if edit.kind == "recolour":
        edited = [Placed(edit.target.clauses[0], o.cx, o.cy, o.r) for o in objects]
    else:
        gone = rng.randrange(len(objects))
        edited = [o for k, o in enumerate(objects) if k != gone]
    return draw(objects, size), draw(edited, size)


def _objects(image: Tensor) -> Tensor:
    """``[H, W]`` bool: the pixels of any object (a bright channel), whatever its colour."""
    return image.detach().float().cpu().clamp(0, 1).amax(0) > 0.5


def edit_scores(result: Tensor, source: Tensor, target: Scene, kind: str) -> tuple[float, float]:
    """``(done, preserved)`` of an edited image ``[3, H, W]`` in [0, 1] (module docstring), each in [0, 1]."""
    if kind not in KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; valid: {', '.join(KINDS)}")
    done = evaluate(result, target).partial
    before, after = _objects(source), _objects(result)
    both = float((before & after).sum())
    if kind == "recolour":
        union = float((before | after).sum())
        preserved = both / union if union else 1.0
    elif kind == "add":
        preserved = both / float(before.sum()) if before.any() else 1.0
    else:
        preserved = both / float(after.sum()) if after.any() else 0.0
    return done, preserved


__all__ = ["KINDS", "SPLITS", "Edit", "draw", "edit_scores", "edits_of", "render_edit", "split_edits"]
