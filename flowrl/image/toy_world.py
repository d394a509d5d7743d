"""A tiny text-to-image world: procedural prompts about coloured shapes, a renderer that draws the
ground truth for a prompt, and a rule-based evaluator in the spirit of GenEval.

Prompts name one kind of object with a count ("two red circles") or two objects in a relative
position ("a blue square left of a green triangle"). Images are float tensors in [0, 1],
``[3, H, W]``, shapes drawn in saturated colours on a black background. The evaluator finds
objects by colour, tells shapes apart by how much of their bounding box they fill (square ≈ 1,
circle ≈ π/4, triangle ≈ 1/2) and where their mass sits, and scores counts, colours, shapes and positions.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "a", 2: "two", 3: "three"}


@dataclass(frozen=True)
class Clause:
    """One object kind the image must contain ``count`` times."""

    shape: str
    colour: str
    count: int = 1


@dataclass(frozen=True)
class Scene:
    """A prompt's meaning: clauses and, for two-object prompts, ``relation`` of clause 0 to clause 1."""

    clauses: tuple[Clause, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        def noun(c: Clause) -> str:
            return f"{NUMBERS[c.count]} {c.colour} {c.shape}{'s' if c.count > 1 else ''}"

        if self.relation is None:
            return noun(self.clauses[0])
        return f"{noun(self.clauses[0])} {self.relation} {noun(self.clauses[1])}"


def all_scenes() -> list[Scene]:
    """Every prompt of the world, in a fixed order: counting prompts, then two-object relations."""
    scenes = [Scene((Clause(s, c, n),)) for n in NUMBERS for c in COLOURS for s in SHAPES]
    kinds = [Clause(s, c) for c in COLOURS for s in SHAPES]
    for a, b in itertools.permutations(kinds, 2):
        if a.colour != b.colour:  # the evaluator separates objects by colour
            scenes += [Scene((a, b), rel) for rel in RELATIONS]
    return scenes


def split_scenes(held_out_fraction: float = 0.2, seed: int = 0) -> tuple[list[Scene], list[Scene]]:
    """A fixed train / held-out split of ``all_scenes()`` (deterministic for a seed)."""
    scenes = all_scenes()
    order = list(range(len(scenes)))
    random.Random(seed).shuffle(order)
    cut = round(len(scenes) * held_out_fraction)
    return [scenes[i] for i in sorted(order[cut:])], [scenes[i] for i in sorted(order[:cut])]


def validation_split(fraction: float = 0.2, seed: int = 1) -> tuple[list[Scene], list[Scene]]:
    """The train split cut in two: (train without validation, validation), deterministic for a seed. Validation
    prompts are for choosing hyper-parameters (``flowrl bench --lr-grid``, tuning a demo): they are disjoint from the
    held-out split, which is only reported, and from the prompts trained on while tuning."""
    train, _ = split_scenes()
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    cut = round(len(train) * fraction)
    return [train[i] for i in sorted(order[cut:])], [train[i] for i in sorted(order[:cut])]


def parse_prompt(text: str) -> Scene:
    """Inverse of ``Scene.text``; raises ``ValueError`` naming the prompt if it is not of this world."""
    words = text.strip().split()
    counts = {v: k for k, v in NUMBERS.items()}

    def noun(ws: list[str]) -> Clause:
        if len(ws) != 3 or ws[0] not in counts or ws[1] not in COLOURS:
            raise ValueError(f"not a toy-world prompt: {text!r}")
        shape = ws[2][:-1] if ws[2].endswith("s") and counts[ws[0]] > 1 else ws[2]
        if shape not in SHAPES:
            raise ValueError(f"not a toy-world prompt: {text!r}")
        return Clause(shape, ws[1], counts[ws[0]])

    if len(words) == 3:
        return Scene((noun(words),))
    relation = " ".join(words[3:-3])
    if len(words) > 6 and relation in RELATIONS:
        return Scene((noun(words[:3]), noun(words[-3:])), relation)
    raise ValueError(f"not a toy-world prompt: {text!r}")


def mislabel(scene: Scene, rng: random.Random) -> Scene:
    """A scene that contradicts ``scene``'s caption in one colour: noisy pretraining data, like web
    captions that misname what the image shows. One clause (chosen at random) is recoloured to a
    palette colour no clause of the scene uses, so the evaluator still separates the objects."""
    i = rng.randrange(len(scene.clauses))
    used = {c.colour for c in scene.clauses}
    colour = rng.choice([c for c in COLOURS if c not in used])
    clauses = list(scene.clauses)
    clauses[i] = Clause(clauses[i].shape, colour, clauses[i].count)
    return Scene(tuple(clauses), scene.relation)


@dataclass
class Placed:
    """An object drawn at centre (cx, cy) with half-size r, in pixels."""

    clause: Clause
    cx: float
    cy: float
    r: float


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> Tensor:
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (dx.abs() <= r) & (dy.abs() <= r)
    # upward triangle: apex at the top, base at the bottom of the box
    return (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)


def layout(scene: Scene, size: int, rng: random.Random) -> list[Placed]:
    """Random non-overlapping positions satisfying the scene (the relation, if any)."""
    r = size / 6.4
    for _ in range(1000):
        objs = [
            Placed(c, rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1), r)
            for c in scene.clauses
            for _ in range(c.count)
        ]
        # a gap of at least 1.5 px on some axis, so that no two objects touch
        apart = all(max(abs(a.cx - b.cx), abs(a.cy - b.cy)) > 2 * r + 1.5 for a, b in itertools.combinations(objs, 2))
        if apart and (scene.relation is None or relation_holds(scene.relation, objs[0], objs[1], size, 2.0)):
            return objs
    raise RuntimeError(f"could not lay out {scene.text!r} on a {size}px canvas")


def relation_holds(relation: str, a: Placed, b: Placed, size: int, slack: float = 1.0) -> bool:
    """``a`` is ``relation`` ``b``: the centres differ by at least ``slack`` tenths of the canvas on that
    axis, and by ``slack`` times more than on the other axis. Layouts use slack 2 so that the
    evaluator (slack 1, on detected centroids) accepts every ground-truth image."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    margin = slack * size / 10
    return {
        "left of": dx > margin and abs(dx) > slack * abs(dy),
        "right of": -dx > margin and abs(dx) > slack * abs(dy),
        "above": dy > margin and abs(dy) > slack * abs(dx),
        "below": -dy > margin and abs(dy) > slack * abs(dx),
    }[relation]


def render(scene: Scene, size: int = 32, seed: int = 0) -> Tensor:
    """Draw a ground-truth image ``[3, size, size]`` in [0, 1] for the scene."""
    img = torch.zeros(3, size, size)
    for obj in layout(scene, size, random.Random(seed)):
        m = _mask(obj.clause.shape, obj.cx, obj.cy, obj.r, size)
        img[:, m] = torch.tensor(COLOURS[obj.clause.colour])[:, None]
    return img


@dataclass
class Found:
    """An object the evaluator detected: colour, shape guess, centre and pixel area."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int


def _components(mask: Tensor) -> list[Tensor]:
    """4-connected components of a boolean ``[H, W]`` mask, as lists of flat pixel indices."""
    h, w = mask.shape
    flat = mask.flatten().tolist()
    seen = [False] * (h * w)
    comps = []
    for start in range(h * w):
        if not flat[start] or seen[start]:
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            p = stack.pop()
            comp.append(p)
            y, x = divmod(p, w)
            for q, ok in ((p - w, y > 0), (p + w, y < h - 1), (p - 1, x > 0), (p + 1, x < w - 1)):
                if ok and flat[q] and not seen[q]:
                    seen[q] = True
                    stack.append(q)
        comps.append(torch.tensor(comp))
    return comps


def classify_shape(ys: Tensor, xs: Tensor) -> str:
    """Shape of a component from its pixel rows/columns: a square fills its bounding box; an upward
    triangle keeps about a quarter of its pixels in the top half of the box, a circle about half."""
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    if ys.numel() / float(box) > 0.9:
        return "square"
    middle = (ys.min() + ys.max()).float() / 2
    top, bottom = (ys.float() < middle).sum().item(), (ys.float() > middle).sum().item()
    return "triangle" if top < 0.55 * bottom else "circle"


def palette_masks(image: Tensor, tolerance: float = 0.35) -> dict[str, Tensor]:
    """Per palette colour, the ``[H, W]`` mask of the pixels of an image ``[3, H, W]`` (clamped to [0, 1]) within
    ``tolerance`` of it in every channel."""
    img = image.detach().float().clamp(0, 1).cpu()
    return {name: ((img - torch.tensor(c)[:, None, None]).abs() <= tolerance).all(0) for name, c in COLOURS.items()}


def detect(image: Tensor, min_area: int = 6, tolerance: float = 0.35) -> list[Found]:
    """Objects in an image ``[3, H, W]`` in [0, 1]: pixels within ``tolerance`` (per channel) of a palette
    colour, grouped into connected components of at least ``min_area`` pixels."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image [3, H, W], got shape {tuple(image.shape)}")
    w = image.shape[-1]
    found = []
    for name, close in palette_masks(image, tolerance).items():
        for comp in _components(close):
            if comp.numel() < min_area:
                continue
            ys, xs = comp // w, comp % w
            shape = classify_shape(ys, xs)
            found.append(
                Found(name, shape, xs.float().mean().item() + 0.5, ys.float().mean().item() + 0.5, comp.numel())
            )
    return found


@dataclass
class Score:
    """Partial score in [0, 1] (mean over clause checks) and strict 0/1 correctness."""

    partial: float
    strict: float
    details: dict[str, float] = field(default_factory=dict)
    objects: int = 0  # objects found in the image, of any colour (a structural property: Stratified GRPO's strata)


def evaluate(image: Tensor, scene: Scene) -> Score:
    """Score an image ``[3, H, W]`` against its scene.

    Per clause: count score 1 − |count − found| / count (floored at 0) over objects of the clause's
    colour and shape, and the same score over objects of the clause's colour whatever their shape,
    so a right-coloured wrong shape earns part of the credit and stray fragments cost as much as
    missing objects (a policy cannot buy shape credit by scattering pieces). For relations, a position check (0/1)
    between the largest objects matching each clause. Strict: every count exact, no extra objects of
    the named colours, and the relation holding.
    """
    objs = detect(image)
    size = image.shape[-1]
    checks: dict[str, float] = {}
    exact = True
    for i, c in enumerate(scene.clauses):
        right = [o for o in objs if o.colour == c.colour and o.shape == c.shape]
        coloured = [o for o in objs if o.colour == c.colour]
        checks[f"count{i}"] = max(0.0, 1 - abs(c.count - len(right)) / c.count)
        checks[f"colour{i}"] = max(0.0, 1 - abs(c.count - len(coloured)) / c.count)
        exact &= len(right) == c.count and len(coloured) == c.count
    if scene.relation is not None:
        a = [o for o in objs if o.colour == scene.clauses[0].colour and o.shape == scene.clauses[0].shape]
        b = [o for o in objs if o.colour == scene.clauses[1].colour and o.shape == scene.clauses[1].shape]
        ok = False
        if a and b:
            pa, pb = max(a, key=lambda o: o.area), max(b, key=lambda o: o.area)
            ok = relation_holds(
                scene.relation,
                Placed(scene.clauses[0], pa.cx, pa.cy, 0),
                Placed(scene.clauses[1], pb.cx, pb.cy, 0),
                size,
            )
        checks["position"] = float(ok)
        exact &= ok
    return Score(sum(checks.values()) / len(checks), float(exact), checks, len(objs))
