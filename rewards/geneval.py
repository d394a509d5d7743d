"""GenEval-style rule reward: detect objects, then check the prompt's counts, colours and relative positions.

A prompt's ``Metadata`` lists the objects it asks for (``include``: class, count, optional colour, optional position
relative to another include entry) and those it rules out (``exclude``), as in GenEval's ``evaluation_metadata.jsonl``.
It comes from such a JSONL file (prompt → metadata) or from a parser callable. A ``Detector`` turns images into
``Detection``s (label, confidence, pixel box, colour); detections at or below the confidence threshold are ignored.

Scores per image (own formulation of GenEval's rules; see ``score_detections``):

- ``score`` (partial, in [0, 1]): the mean over checks. Each include entry of count n gives a count check
  max(0, 1 − |n − found| / n); a colour check (when it names a colour) = the share of its n most confident
  detections that have that colour, out of n; a position check (when it has one) = 1 if each of its (up to
  n) most confident detections is in that relation to each of the target entry's, 0 otherwise or when either entry
  found nothing. Relations follow GenEval's rule on box centres (``relative_position``).
- ``strict`` (0/1): every count exact, every colour right, every position right, and each exclude entry's class
  found fewer than its count times.

Excludes only enter ``strict``: in GenEval they express "exactly n" for counting prompts, which the count check
already rewards. Unlike the published reward server, colour and position checks give partial credit on the objects
that were found even when the count is off (a denser signal for RL); ``strict`` is unaffected.

Detectors: ``ToyDetector`` (the toy world's evaluator, with ``toy_metadata`` as its prompt parser) and
``HttpDetector`` (a detection server). The HTTP wire format is JSON, never pickle; images are sent the way
``flowrl.rewards.remote`` sends them (one RGB PNG per image)::

    request:  {"images": {"format": "png", "data": ["<base64 PNG>", ...]}}
    response: {"detections": [[{"label": "dog", "score": 0.93, "box": [x0, y0, x1, y1], "colour": "red"}, ...], ...]}

with one list per image, boxes in pixels (x right, y down), and ``colour`` (or ``color``) optional.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from flowrl.image import toy_world

from .base import REWARDS, RewardFn, load_object
from .http import post_json
from .remote import encode_images

RELATIONS = ("left of", "right of", "above", "below")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` = (x0, y0, x1, y1) in pixels; ``colour`` ``None`` when not classified."""

    label: str
    score: float
    box: Box
    colour: str | None = None


class Detector(Protocol):
    """``detect(images [B, 3, H, W] in [0, 1])`` → one list of detections per image. Naming colours is the
    detector's job too (GenEval classifies each detected crop zero-shot with CLIP)."""

    def detect(self, images: Tensor) -> list[list[Detection]]: ...


@dataclass(frozen=True)
class Requirement:
    """One include/exclude entry: ``count`` objects of class ``label``, optionally of ``colour`` and in
    ``position = (relation, j)`` to the objects of include entry ``j`` (e.g. ``("left of", 0)``)."""

    label: str
    count: int = 1
    colour: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class Metadata:
    """What a prompt asks for. ``tag`` is GenEval's prompt category ("counting" selects the counting threshold)."""

    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...] = ()
    tag: str = ""

    def __post_init__(self) -> None:
        if not self.include:
            raise ValueError("GenEval metadata needs at least one include entry")
        for i, req in enumerate(self.include + self.exclude):
            if req.count < 1:
                raise ValueError(f"GenEval metadata: count of {req.label!r} must be >= 1, got {req.count}")
            if req.position is not None and i >= len(self.include):
                raise ValueError(f"GenEval metadata: exclude entry {req.label!r} cannot have a position")
            if req.position is not None:
                relation, j = req.position
                if relation not in RELATIONS or not 0 <= j < len(self.include) or j == i:
                    raise ValueError(f"GenEval metadata: bad position {req.position!r} of include entry {i}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Metadata:
        """From GenEval's JSON fields: ``include``/``exclude`` entries with ``class``, ``count``, ``color``,
        ``position`` ([relation, include index]), and ``tag``."""

        def entry(e: Mapping[str, Any]) -> Requirement:
            pos = e.get("position")
            return Requirement(
                e["class"], int(e.get("count", 1)), e.get("color"), (pos[0], int(pos[1])) if pos else None
            )

        return cls(
            tuple(entry(e) for e in data.get("include", [])),
            tuple(entry(e) for e in data.get("exclude", [])),
            str(data.get("tag", "")),
        )


def load_metadata(path: str | Path) -> dict[str, Metadata]:
    """Prompt → metadata from a JSONL file of GenEval metadata objects (each with a ``prompt`` field)."""
    table: dict[str, Metadata] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            meta = Metadata.from_json(data)
            prompt = data["prompt"]
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{path}:{n}: not a GenEval metadata line ({type(e).__name__}: {e})") from e
        if table.get(prompt, meta) != meta:
            raise ValueError(f"{path}:{n}: prompt {prompt!r} appears twice with different metadata")
        table[prompt] = meta
    return table


def relative_position(a: Box, b: Box, threshold: float = 0.1) -> set[str]:
    """Relations of box ``a`` to box ``b`` by GenEval's rule: each axis of the centre offset is shrunk toward 0 by
    ``threshold`` × the sum of the two boxes' sizes on that axis (so touching or overlapping objects are not
    called apart), divided by the unshrunk offset's length, and a relation holds when its axis component passes
    ±0.5 (a cone of about ±60°, narrowed by the shrink). Empty when the shrunk offset vanishes."""
    offset, shrunk = [], []
    for lo, hi in ((0, 2), (1, 3)):
        d = (a[lo] + a[hi]) / 2 - (b[lo] + b[hi]) / 2
        slack = threshold * (abs(a[hi] - a[lo]) + abs(b[hi] - b[lo]))
        offset.append(d)
        shrunk.append(max(abs(d) - slack, 0.0) * (1 if d > 0 else -1))
    if all(abs(s) < 1e-3 for s in shrunk):
        return set()
    norm = (offset[0] ** 2 + offset[1] ** 2) ** 0.5
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    checks = {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}
    return {name for name, holds in checks.items() if holds}


@dataclass
class GenEvalScore:
    """Partial score in [0, 1], strict 0/1 correctness, and the named checks the partial score averages."""

    partial: float
    strict: float
    checks: dict[str, float] = field(default_factory=dict)


def score_detections(
    detections: Sequence[Detection], meta: Metadata, threshold: float = 0.3, position_threshold: float = 0.1
) -> GenEvalScore:
    """Score one image's detections against its metadata (rules in the module docstring). Detections scoring at
    most ``threshold`` are dropped; among equal confidences the detector's order decides which are "most confident"."""
    kept = sorted((d for d in detections if d.score > threshold), key=lambda d: -d.score)  # stable on ties
    found = [[d for d in kept if d.label == req.label] for req in meta.include]
    groups = [objs[: req.count] for objs, req in zip(found, meta.include, strict=True)]
    checks: dict[str, float] = {}
    exact = True
    for i, (req, objs, group) in enumerate(zip(meta.include, found, groups, strict=True)):
        checks[f"count{i}"] = max(0.0, 1 - abs(req.count - len(objs)) / req.count)
        exact &= len(objs) == req.count
        if req.colour is not None:
            right = sum(d.colour == req.colour for d in group)
            checks[f"colour{i}"] = right / req.count
            exact &= right == req.count
        if req.position is not None:
            relation, j = req.position
            ok = bool(group and groups[j]) and all(
                relation in relative_position(a.box, b.box, position_threshold) for a in group for b in groups[j]
            )
            checks[f"position{i}"] = float(ok)
            exact &= ok
    for req in meta.exclude:
        exact &= sum(d.label == req.label for d in kept) < req.count
    return GenEvalScore(sum(checks.values()) / len(checks), float(exact), checks)


# --- detectors -------------------------------------------------------------------------------------------------------


class ToyDetector:
    """The toy world's evaluator as a ``Detector``. The toy world tells objects apart by colour first ("a yellow
    circle left of a blue circle" names two different objects), so the class is colour and shape together
    (``"yellow circle"``); ``colour`` is reported too. Score 1, ordered by decreasing area, so the "most confident"
    object of a kind is the largest, the one the toy evaluator compares positions with. The toy detector reports
    centroid and area, not extent, so each box is rebuilt from the ideal shape of that area (a triangle's box
    centre sits a third of its half-height above its centroid)."""

    def detect(self, images: Tensor) -> list[list[Detection]]:
        out = []
        for image in images:
            objs = sorted(toy_world.detect(image), key=lambda o: -o.area)
            out.append([Detection(f"{o.colour} {o.shape}", 1.0, self._box(o), o.colour) for o in objs])
        return out

    @staticmethod
    def _box(o: toy_world.Found) -> Box:
        # half-size r of the drawn shape: square (2r)², circle πr², triangle ½·2r·2r
        r = {"square": (o.area / 4) ** 0.5, "circle": (o.area / torch.pi) ** 0.5}.get(o.shape, (o.area / 2) ** 0.5)
        cy = o.cy - r / 3 if o.shape == "triangle" else o.cy
        return (o.cx - r, cy - r, o.cx + r, cy + r)


def toy_metadata(prompt: str) -> Metadata:
    """GenEval metadata of a toy-world prompt, for ``ToyDetector``'s colour-and-shape classes. Each clause includes
    its kind ``count`` times and excludes the other shapes of its colour: together "exactly ``count`` objects of
    this colour, all of this shape", the toy evaluator's strict rule. For two-object prompts the first entry is
    positioned relative to the second."""
    scene = toy_world.parse_prompt(prompt)
    include = [Requirement(f"{c.colour} {c.shape}", c.count) for c in scene.clauses]
    if scene.relation is not None:
        include[0] = Requirement(include[0].label, include[0].count, position=(scene.relation, 1))
    exclude = [Requirement(f"{c.colour} {s}") for c in scene.clauses for s in toy_world.SHAPES if s != c.shape]
    return Metadata(tuple(include), tuple(exclude))


class HttpDetector:
    """A detection server as a ``Detector`` (wire format in the module docstring); retries via ``post_json``."""

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5) -> None:
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff

    def detect(self, images: Tensor) -> list[list[Detection]]:
        payload = {"images": encode_images(images, "png")}
        reply = post_json(self.url, payload, timeout=self.timeout, retries=self.retries, backoff=self.backoff)
        per_image = reply.get("detections")
        if not isinstance(per_image, list) or len(per_image) != len(images):
            raise ValueError(
                f"detection server {self.url} must answer {{'detections': [...]}} with one list per image "
                f"({len(images)}), got {str(reply)[:200]}"
            )
        try:
            return [[self._parse(d) for d in dets] for dets in per_image]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"detection server {self.url} sent a malformed detection ({type(e).__name__}: {e})"
            ) from e

    @staticmethod
    def _parse(d: Mapping[str, Any]) -> Detection:
        x0, y0, x1, y1 = (float(v) for v in d["box"])
        return Detection(str(d["label"]), float(d["score"]), (x0, y0, x1, y1), d.get("colour", d.get("color")))


# --- the reward ------------------------------------------------------------------------------------------------------


def _build_detector(detector: str | Detector, options: Mapping[str, Any]) -> Detector:
    if detector == "http" and "url" not in options:
        raise ValueError("geneval reward: detector 'http' needs detector_options.url")
    obj: Any = {"toy": ToyDetector, "http": HttpDetector}.get(detector) if isinstance(detector, str) else detector
    if obj is None:
        obj = load_object(str(detector))
    if isinstance(obj, type):
        obj = obj(**options)
    elif options:
        raise ValueError(f"geneval reward: detector_options given, but detector {detector!r} is not a class")
    if not callable(getattr(obj, "detect", None)):
        raise TypeError(f"geneval reward: detector {detector!r} has no detect(images) method")
    return obj


def _metadata_source(
    metadata: str | Path | None, parser: str | Callable[[str], Any] | None, detector: Any
) -> Callable[[str], Metadata]:
    if metadata is not None and parser is not None:
        raise ValueError("geneval reward: give either metadata (a JSONL file) or parser, not both")
    if metadata is not None:
        table = load_metadata(metadata)

        def lookup(prompt: str) -> Metadata:
            if prompt not in table:
                raise KeyError(f"geneval reward: prompt {prompt!r} is not in the metadata file {metadata}")
            return table[prompt]

        return lookup
    if parser is None and detector == "toy":
        parser = "toy"
    if parser is None:
        raise ValueError("geneval reward needs prompt metadata: metadata='file.jsonl' or parser='module:callable'")
    fn = toy_metadata if parser == "toy" else load_object(parser) if isinstance(parser, str) else parser

    def parse(prompt: str) -> Metadata:
        meta = fn(prompt)
        return meta if isinstance(meta, Metadata) else Metadata.from_json(meta)

    return parse


@REWARDS.register("geneval")
def geneval(
    detector: str | Detector = "toy",
    detector_options: Mapping[str, Any] | None = None,
    metadata: str | Path | None = None,
    parser: str | Callable[[str], Any] | None = None,
    threshold: float = 0.3,
    counting_threshold: float | None = 0.9,
    position_threshold: float = 0.1,
) -> RewardFn:
    """GenEval-style reward → ``{"score": partial [B], "strict": [B]}``.

    ``detector``: ``"toy"``, ``"http"`` (``detector_options``: url, timeout, retries, backoff), a
    ``"module:callable"`` path or a detector object; a class is instantiated with ``detector_options``.
    ``metadata``: GenEval-style JSONL file; or ``parser``: ``"toy"``, ``"module:callable"`` or a callable
    prompt → ``Metadata`` (or its JSON dict); the toy detector defaults to the toy parser. ``threshold``: minimum
    confidence (exclusive); ``counting_threshold``: the same for prompts tagged "counting" (GenEval uses 0.9;
    ``None`` = ``threshold``); ``position_threshold``: GenEval's relative-position margin.
    """
    if not 0 <= threshold < 1 or not (counting_threshold is None or 0 <= counting_threshold < 1):
        raise ValueError(f"geneval reward: thresholds must be in [0, 1), got {threshold}, {counting_threshold}")
    if position_threshold < 0:
        raise ValueError(f"geneval reward: position_threshold must be >= 0, got {position_threshold}")
    source = _metadata_source(metadata, parser, detector)
    engine = _build_detector(detector, dict(detector_options or {}))
    counting = threshold if counting_threshold is None else counting_threshold

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        metas = [source(p) for p in prompts]  # before detection: an unknown prompt should not cost a server call
        detections = engine.detect(images)
        if len(detections) != len(prompts):
            raise ValueError(f"geneval reward: detector returned {len(detections)} lists for {len(prompts)} images")
        scores = [
            score_detections(dets, m, counting if m.tag == "counting" else threshold, position_threshold)
            for dets, m in zip(detections, metas, strict=True)
        ]
        return {"score": torch.tensor([s.partial for s in scores]), "strict": torch.tensor([s.strict for s in scores])}

    return reward
