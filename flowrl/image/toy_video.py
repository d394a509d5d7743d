"""A toy video world on the toy text-to-image world: prompts about one object moving (and a second one appearing
halfway), a renderer that draws the ground-truth clip, and an evaluator that checks the objects in every frame, the
described motion and the clip's consistency apart, so that a frozen video cannot win on consistency (issue 32).

A prompt names a mover and its direction, optionally a second object that appears at frame ``F // 2`` and stays:

- "a red square moving left"
- "a red square moving left, then a blue circle appears"

Clips are ``[F, 3, H, W]`` in [0, 1] (8 frames of 32² by default), shapes of the toy world's palette on black; the
mover travels ``travel`` of the side (0.4) in a straight line at constant speed, never touching the other object.

``score_clip(clip, prompt)`` returns three parts in [0, 1]:

- ``objects``: per frame, the mover present (its colour and shape: 1; its colour only: ½) and the second object
  absent before it appears and present after, as in the text-to-image evaluator, times the mover's size (its area
  over the ground truth's or the inverse, ÷ 0.8, at most 1: a bloated or shrunken blob is not the object) and the
  frame's cleanness (1 − (stray − 2%) ÷ 10%, in [0, 1], stray: the share of lit pixels near no palette colour, which
  a clip of this world never has); averaged over frames;
- ``motion``: the mover's centroid track: its travel along the named direction over 75% of the ground truth's
  (clamped at 1), times the share of consecutive frames that step that way (a jittering or frozen object scores 0);
- ``consistency``: the share of frames the mover is found in, times the mean over consecutive frames of the ratio
  of its areas (÷ 0.8, at most 1: rasterising a moving shape varies its area a little); flicker, a shape melting
  or popping in and out lowers it.

The ground-truth clip of every prompt scores 1 on each part (tested); the first frame repeated scores 1 on
objects and consistency but 0 on motion. Splits are fixed for a seed: held-out prompts (20%), and the rest cut into
training and validation (20% of it), as the toy world's.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from flowrl.image.toy_world import COLOURS, SHAPES, Clause, _mask, detect, palette_masks

DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
FRAMES, SIZE, TRAVEL = 8, 32, 0.4
STRAY_FREE, STRAY_SPAN = 0.02, 0.10  # stray pixels: up to 2% cost nothing, 12% and more zero the frame's objects
SPLITS = ("train", "held-out", "validation", "train-no-val", "all")


@dataclass(frozen=True)
class Clip:
    """A prompt's meaning: the mover, its direction, and the object that appears halfway (or None)."""

    mover: Clause
    direction: str
    appears: Clause | None = None

    @property
    def text(self) -> str:
        moving = f"a {self.mover.colour} {self.mover.shape} moving {self.direction}"
        if self.appears is None:
            return moving
        return f"{moving}, then a {self.appears.colour} {self.appears.shape} appears"


def all_clips() -> list[Clip]:
    """Every prompt of the world in a fixed order: 48 single movers, then 432 with a second object (of another
    colour, which the evaluator separates objects by)."""
    kinds = [Clause(s, c) for c in COLOURS for s in SHAPES]
    clips = [Clip(k, d) for k in kinds for d in DIRECTIONS]
    clips += [Clip(a, d, b) for a, b in itertools.permutations(kinds, 2) if a.colour != b.colour for d in DIRECTIONS]
    return clips


def split_clips(split: str) -> list[Clip]:
    """The clips of a split: ``held-out`` (20%, only ever reported), ``train`` (the rest) = ``train-no-val`` +
    ``validation`` (20% of train, for choosing settings), ``all``."""
    if split not in SPLITS:
        raise ValueError(f"unknown toy video split {split!r}; valid: {', '.join(SPLITS)}")
    clips = all_clips()
    if split == "all":
        return clips
    order = list(range(len(clips)))
    random.Random(0).shuffle(order)
    cut = round(len(clips) * 0.2)
    held, train = sorted(order[:cut]), sorted(order[cut:])
    if split in ("held-out", "train"):
        return [clips[i] for i in (held if split == "held-out" else train)]
    shuffled = list(train)
    random.Random(1).shuffle(shuffled)
    cut = round(len(train) * 0.2)
    chosen = sorted(shuffled[:cut]) if split == "validation" else sorted(shuffled[cut:])
    return [clips[i] for i in chosen]


def parse_clip(text: str) -> Clip:
    """Inverse of ``Clip.text``; ``ValueError`` naming the prompt when it is not of this world."""
    head, _, tail = text.strip().partition(", then ")

    def kind(words: list[str]) -> Clause:
        if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES:
            raise ValueError(f"not a toy video prompt: {text!r}")
        return Clause(words[2], words[1])

    words = head.split()
    if len(words) != 5 or words[3] != "moving" or words[4] not in DIRECTIONS:
        raise ValueError(f"not a toy video prompt: {text!r}")
    appears = None
    if tail:
        rest = tail.split()
        if rest[-1:] != ["appears"]:
            raise ValueError(f"not a toy video prompt: {text!r}")
        appears = kind(rest[:-1])
    return Clip(kind(words[:3]), words[4], appears)


@dataclass(frozen=True)
class Track:
    """Where a clip's objects are: the mover's centre in frame 0 and its step per frame, the second's centre."""

    start: tuple[float, float]
    step: tuple[float, float]
    other: tuple[float, float] | None
    r: float


def plan(clip: Clip, frames: int, size: int, rng: random.Random) -> Track:
    """A random placement of ``clip``: the mover's straight path stays inside the frame and at least 1.5 px away
    from the second object's box."""
    r = radius(size)
    dx, dy = DIRECTIONS[clip.direction]
    travel = TRAVEL * size
    lo, hi = r + 1, size - r - 1
    for _ in range(1000):
        # the start leaves room for the whole travel in the direction of motion
        x0 = rng.uniform(lo + max(0.0, -dx) * travel, hi - max(0.0, dx) * travel)
        y0 = rng.uniform(lo + max(0.0, -dy) * travel, hi - max(0.0, dy) * travel)
        x1, y1 = x0 + dx * travel, y0 + dy * travel
        other = None
        if clip.appears is not None:
            ox, oy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            gap = 2 * r + 1.5
            apart_x = ox < min(x0, x1) - gap or ox > max(x0, x1) + gap
            apart_y = oy < min(y0, y1) - gap or oy > max(y0, y1) + gap
            if not (apart_x or apart_y):
                continue
            other = (ox, oy)
        step = (dx * travel / (frames - 1), dy * travel / (frames - 1))
        return Track((x0, y0), step, other, r)
    raise RuntimeError(f"could not place {clip.text!r} on a {size}px frame")


def radius(size: int) -> float:
    """The objects' radius on a ``size``-pixel frame."""
    return size / 6.4


def stray_share(frame: Tensor, tolerance: float = 0.35) -> float:
    """The share of pixels of a frame ``[3, H, W]`` that are lit (a channel above ``tolerance``) yet within
    ``tolerance`` of no palette colour: noise or smears, which a clip of this world never has."""
    near = torch.stack(list(palette_masks(frame, tolerance).values())).any(0)
    lit = (frame.detach().float().cpu() > tolerance).any(0)
    return float((lit & ~near).float().mean())


def _ratio(a: float, b: float) -> float:
    """min/max of two areas ÷ 0.8, at most 1 (rasterising a shape varies its area a little)."""
    return min(1.0, min(a, b) / max(a, b) / 0.8)


def render_clip(clip: Clip, frames: int = FRAMES, size: int = SIZE, seed: int = 0) -> Tensor:
    """The ground-truth clip ``[F, 3, H, W]`` in [0, 1] of a prompt (a random placement for ``seed``)."""
    return draw(clip, plan(clip, frames, size, random.Random(seed)), frames, size)


def draw(clip: Clip, track: Track, frames: int, size: int, direction: str | None = None) -> Tensor:
    """Frames of ``track``; ``direction`` draws the mover going another way (noisy pretraining labels)."""
    out = torch.zeros(frames, 3, size, size)
    step = track.step
    if direction is not None:
        speed = max(abs(step[0]), abs(step[1]))
        step = (DIRECTIONS[direction][0] * speed, DIRECTIONS[direction][1] * speed)
    for f in range(frames):
        cx, cy = track.start[0] + f * step[0], track.start[1] + f * step[1]
        m = _mask(clip.mover.shape, cx, cy, track.r, size)
        out[f][:, m] = torch.tensor(COLOURS[clip.mover.colour])[:, None]
        if clip.appears is not None and track.other is not None and f >= frames // 2:
            m = _mask(clip.appears.shape, *track.other, track.r, size)
            out[f][:, m] = torch.tensor(COLOURS[clip.appears.colour])[:, None]
    return out


def score_clip(clip_frames: Tensor, prompt: str) -> dict[str, float]:
    """``objects``, ``motion`` and ``consistency`` (module docstring) of a clip ``[F, 3, H, W]`` in [0, 1]."""
    clip = parse_clip(prompt)
    frames, size = clip_frames.shape[0], clip_frames.shape[-1]
    found = [detect(frame) for frame in clip_frames]
    movers = [max((o for o in objs if o.colour == clip.mover.colour), key=lambda o: o.area, default=None)
              for objs in found]  # fmt: skip
    checks = []
    c = size / 2
    truth = float(_mask(clip.mover.shape, c, c, radius(size), size).sum())  # the mover's area in a clip of the world
    for f, objs in enumerate(found):
        mover = movers[f]
        part = [
            0.0 if mover is None else (1.0 if mover.shape == clip.mover.shape else 0.5) * _ratio(mover.area, truth)
        ]
        if clip.appears is not None:
            other = [o for o in objs if o.colour == clip.appears.colour]
            if f < frames // 2:
                part.append(float(not other))
            else:
                part.append(0.0 if not other else 1.0 if any(o.shape == clip.appears.shape for o in other) else 0.5)
        clean = 1.0 - max(0.0, stray_share(clip_frames[f]) - STRAY_FREE) / STRAY_SPAN
        checks.append(sum(part) / len(part) * max(0.0, clean))
    seen = [(f, m) for f, m in enumerate(movers) if m is not None]
    motion = 0.0
    if len(seen) >= frames // 2:
        dx, dy = DIRECTIONS[clip.direction]
        along = [(m.cx * dx + m.cy * dy) for _, m in seen]
        travel = along[-1] - along[0]
        steps = [b - a > 0.25 for a, b in itertools.pairwise(along)]
        motion = max(0.0, min(1.0, travel / (0.75 * TRAVEL * size))) * sum(steps) / len(steps)
    # area ratios of consecutive frames, 0.8 and above counting as steady (rasterising a moving shape varies it)
    ratios = [_ratio(a.area, b.area) for (_, a), (_, b) in itertools.pairwise(seen)]
    consistency = len(seen) / frames * (sum(ratios) / len(ratios) if ratios else 0.0)
    return {"objects": sum(checks) / frames, "motion": motion, "consistency": consistency}


__all__ = ["DIRECTIONS", "FRAMES", "SIZE", "Clip", "all_clips", "parse_clip", "render_clip", "score_clip",
           "split_clips", "stray_share"]  # fmt: skip
