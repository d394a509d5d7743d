"""The reward interface, its registry, and the weighted combination the trainer calls.

One registry, ``REWARDS``, holds the rewards of both backends; each declares what it scores (``RewardFacts.scores``):
``Scores.IMAGES`` (this module's interface, the image recipe's) or ``Scores.TEXT`` (TRL's reward-function signature,
``flowrl.rewards.text``, the text recipe's). A config refuses a reward of the other kind by its declaration.

An image reward is a callable ``reward(images [B, 3, H, W] in [0, 1], prompts: list[str]) -> dict[str, Tensor]``
whose ``"score"`` entry (``[B]``, higher is better) is what RL maximises; any other ``[B]`` entries
are diagnostics that get logged (e.g. the toy evaluator's strict accuracy). Rewards are built by
name from ``REWARDS`` with keyword options: ``make_reward("toy-geneval")``, or from a ``"module:callable"``
path to the user's own code: a class is instantiated with the options (its instances are the reward), a function
is the reward itself and gets the options as extra keywords on every call.

Every failure of a reward is a ``RewardError`` naming it: an exception inside the reward (chained), an output that
is not a dict with a ``"score"``, values that are not numbers or not ``[B]``. NaN and infinite scores are not
errors here (a trainer decides what to do with them; ``RewardSet.non_finite`` counts them).

A reward may read columns of the prompts' rows besides the text (an edit reward: the source ``image``, a ``target``
caption): it says so with an attribute ``inputs = ("image", ...)`` (a registered one also in its facts, so that a
config without those columns is refused before training) and receives each as a keyword list aligned with the
images, ``reward(images, prompts, image=[...], target=[...])``; ``RewardSet`` takes the rows by prompt (its
``flowrl.core.inputs.row_key``: the text, or a ``PromptRow``'s own key).

Groupwise rewards score the images of one prompt jointly (e.g. a pairwise judge's win rate). They say
so with an attribute ``groupwise = True`` and are called ``reward(images, prompts, groups=groups)``,
``groups`` a ``[B]`` long tensor of group ids (equal id = same prompt group); ``RewardSet`` passes it
to them and to no other reward.
"""

from __future__ import annotations

import difflib
import enum
import functools
import importlib
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import RewardError
from flowrl.core.inputs import row_inputs
from flowrl.core.registry import Registry
from flowrl.core.sections import HUB_ID

RewardFn = Callable[[Tensor, list[str]], dict[str, Tensor]]


class Scores(enum.Enum):
    """What a reward scores: which recipe can train on it."""

    IMAGES = "images"  # reward(images, prompts) -> {"score": [B], ...}
    VIDEOS = "videos"  # reward(videos [B, F, 3, H, W] in [0, 1], prompts) -> {"score": [B], ...}
    TEXT = "text"  # TRL's f(prompts, completions, **columns) -> one float (or None) per completion

    def describe(self) -> str:
        return {Scores.IMAGES: "images", Scores.VIDEOS: "videos", Scores.TEXT: "text completions"}[self]


@dataclass(frozen=True)
class RewardFacts:
    """What a registered reward declares.

    scores: what it scores (``Scores``); the image recipe takes ``IMAGES`` rewards (``VIDEOS`` ones for a video
    family), the text recipe ``TEXT`` ones.
    inputs: the columns of the prompt rows it reads (an edit reward's source ``image``).

    preferences_when: ``(option, value)``: with that option value (or its default) the reward is groupwise and also
    returns ``"preferences"``, a ``[B, B]`` matrix with entry ``[i, j]`` = 1 if image i beat image j, 0.5 for a tie,
    0 for a loss, within a group (Pref-GRPO's pairwise estimator trains on it)."""

    preferences_when: tuple[str, str] | None = None
    scores: Scores = Scores.IMAGES
    inputs: tuple[str, ...] = ()  # columns of the prompt rows it reads (module docstring)
    wraps: bool = False  # it wraps an image reward named by its option ``reward``, built with its ``options``
    # its score has a gradient with respect to the images (torch preprocessing, frozen weights, no no_grad inside):
    # direct reward backpropagation (ReFL, DRaFT) can train through it; without an image gradient no graph is built
    differentiable: bool = False


#: name -> factory(**options) -> RewardFn
REWARDS: Registry = Registry("reward", facts=RewardFacts)


def gives_preferences(name: str, options: Mapping[str, Any]) -> bool:
    """Whether the reward ``name`` built with ``options`` returns a preference matrix (``RewardFacts``)."""
    if is_user_reward(name) or name not in REWARDS:
        return False
    when = REWARDS.facts(name).preferences_when
    if when is None:
        return False
    key, value = when
    default = inspect.signature(REWARDS.get(name)).parameters[key].default
    return options.get(key, default) == value


def is_user_reward(name: str) -> bool:
    """Whether ``name`` is a ``"module:callable"`` path rather than a registered reward's name."""
    return ":" in name and name not in REWARDS


def check_reward_name(name: str, scores: Scores) -> None:
    """``ValueError`` unless ``name`` is a registered reward that scores ``scores`` or an importable
    ``"module:callable"`` (imported now; what it scores shows only when it is called)."""
    valid = REWARDS.names(lambda f: f.scores is scores)
    hint = difflib.get_close_matches(name, valid, 1)
    if is_user_reward(name):
        try:
            load_user_reward(name)
        except ValueError:
            if not hint:  # a real module path that fails: say why
                raise
            raise ValueError(f"{name!r} is not one of {', '.join(valid)} (did you mean {hint[0]!r}?)") from None
        return
    if name not in REWARDS:
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ValueError(f"{name!r} is not one of {', '.join(valid)}{extra}")
    kind = REWARDS.facts(name).scores
    if kind is not scores:
        raise ValueError(
            f"{name!r} scores {kind.describe()}, and this recipe trains on {scores.describe()} (its rewards: "
            f"{', '.join(valid)})"
        )


def make_reward(name: str, **options: Any) -> RewardFn:
    """Build the reward registered as ``name`` (or the user's ``"module:callable"``) with its options."""
    if is_user_reward(name):
        return _user_reward(load_user_reward(name), options)
    return REWARDS.get(name)(**options)


def load_user_reward(path: str) -> Any:
    """The class or function a ``"module:callable"`` reward path names; ``ValueError`` says why it cannot be used."""
    try:
        obj = load_object(path)
    except ValueError:
        raise
    except Exception as e:  # ImportError, or whatever the user's module raised while importing
        raise ValueError(f"cannot import {path!r}: {type(e).__name__}: {e}") from e
    if not callable(obj):
        raise ValueError(f"{path!r} is a {type(obj).__name__}, not a reward function or class")
    return obj


def _user_reward(obj: Any, options: Mapping[str, Any]) -> RewardFn:
    if isinstance(obj, type):
        return obj(**options)
    if not options:
        return obj

    @functools.wraps(obj)  # keeps its name and its groupwise attribute
    def reward(images: Tensor, prompts: list[str], **kwargs: Any) -> dict[str, Tensor]:
        return obj(images, prompts, **kwargs, **options)

    return reward


def check_reward_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when reward ``name`` does not exist or takes no option of that name (no model loads:
    only signatures are read; a user's reward module is imported)."""
    if is_user_reward(name):
        obj = load_user_reward(name)
        target = obj if isinstance(obj, type) or options else None
    else:
        target = REWARDS.get(name)
    if target is None or not options:
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins and C callables have none: nothing to check
        return
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [key for key in options if key not in named]
    if unknown:
        valid = ", ".join(n for n in named if n not in ("images", "prompts")) or "none"
        raise ValueError(f"reward {name!r} has no option {unknown[0]!r} (its options: {valid})")
    if not is_user_reward(name) and REWARDS.facts(name).wraps and isinstance(options.get("reward"), str):
        inner = options["reward"]
        check_reward_name(inner, Scores.IMAGES)
        check_reward_options(inner, options.get("options") or {})


def load_object(path: str) -> Any:
    """The object named by a ``"package.module:attribute"`` path (the attribute may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected a 'module:callable' path, got {path!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def is_groupwise(fn: RewardFn) -> bool:
    """Whether ``fn`` scores groups jointly and so takes ``groups=`` (its ``groupwise`` attribute)."""
    return bool(getattr(fn, "groupwise", False))


def check_reward_output(name: str, out: Any, batch: int) -> dict[str, Tensor]:
    """A reward's output as ``{key: float32 [B] tensor}``: a dict with a ``"score"`` and one real number per image
    under every key (NaN and infinities pass). Raises ``RewardError`` naming the reward and the key."""
    if not isinstance(out, Mapping):
        raise RewardError(
            f"reward {name!r} must return a dict with a 'score' tensor of shape [{batch}], got {type(out).__name__}"
        )
    if "score" not in out:
        raise RewardError(f"reward {name!r} returned a dict without 'score' (keys: {', '.join(map(str, out))})")
    checked = {}
    for key, value in out.items():
        checked[str(key)] = _as_scores(name, key, value, batch)
    return checked


def _as_scores(name: str, key: Any, value: Any, batch: int) -> Tensor:
    where = f"reward {name!r} returned {key!r}"
    if isinstance(value, (str, bytes)) or value is None:
        raise RewardError(f"{where} as {type(value).__name__}; expected a tensor of shape [{batch}]")
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RewardError(f"{where} as {type(value).__name__}, not numbers ({e})") from e
    if tensor.is_complex():
        raise RewardError(f"{where} with dtype {tensor.dtype}; expected real numbers")
    if tensor.shape != (batch,):
        raise RewardError(f"{where} of shape {list(tensor.shape)}; expected [{batch}] (one number per image)")
    return tensor.detach().to("cpu", torch.float32)


def _as_preferences(name: str, value: Any, batch: int) -> Tensor:
    """A reward's preference matrix as a float32 ``[B, B]`` CPU tensor."""
    tensor = torch.as_tensor(value)
    if tensor.shape != (batch, batch) or tensor.is_complex():
        raise RewardError(f"reward {name!r} returned 'preferences' of shape {list(tensor.shape)}; expected "
                          f"[{batch}, {batch}] real numbers")  # fmt: skip
    return tensor.detach().to("cpu", torch.float32)


#: reward options that name a file or folder (a folder may also be a hub id, fetched when the reward loads)
PATH_OPTIONS = ("path", "checkpoint", "clip_path", "head_path", "med_config", "tokenizer", "metadata")


def check_paths(name: str, options: Mapping[str, Any]) -> None:
    """``RewardError`` naming the reward and the option whose file or folder does not exist."""
    for option in PATH_OPTIONS:
        value = options.get(option)
        if isinstance(value, str) and value and not os.path.exists(value) and not HUB_ID.fullmatch(value):
            raise RewardError(f"reward {name!r}: options.{option} {value!r} does not exist")


@dataclass
class RewardSet:
    """Several rewards with weights. ``__call__`` returns the weighted total ``[B]`` and every
    component, keyed ``name`` (its score) and ``name/extra`` (its diagnostics)."""

    rewards: dict[str, RewardFn]
    weights: dict[str, float]

    @classmethod
    def from_specs(cls, specs: Sequence[Mapping[str, Any]]) -> RewardSet:
        """Build from ``[{"name": ..., "weight": 1.0, "options": {...}, "label": ""}, ...]``; each reward is keyed
        (logged, weighted, a column of the reward matrix) by its ``label``, or its name when it has none, so one
        reward may be listed twice with other options under two labels."""
        rewards, weights = {}, {}
        for spec in specs:  # every path first: a missing file fails before any reward model loads
            check_paths(spec["name"], dict(spec.get("options") or {}))
        for spec in specs:
            name, key = spec["name"], spec.get("label") or spec["name"]
            if key in rewards:
                twice = f"label {key!r} given twice" if spec.get("label") else f"reward {name!r} listed twice"
                raise ValueError(f"{twice}: give each listing its own label")
            options = dict(spec.get("options") or {})
            try:
                rewards[key] = make_reward(name, **options)
            except Exception as e:  # a missing checkpoint, a bad option value, the user's constructor raising
                raise RewardError(f"reward {name!r} could not be built: {type(e).__name__}: {e}") from e
            weights[key] = float(spec.get("weight", 1.0))
        return cls(rewards, weights)

    def __call__(
        self,
        images: Tensor,
        prompts: list[str],
        groups: Tensor | None = None,
        preferences: dict[str, Tensor] | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Score ``images`` ``[B, 3, H, W]`` for ``prompts`` (``B``); ``groups`` ``[B]`` (group ids) is
        required when a groupwise reward is in the set. Returns the weighted total ``[B]`` and the parts. A reward's
        ``"preferences"`` matrix ``[B, B]`` (``RewardFacts``) is put into ``preferences`` by reward name when a dict
        is given, and left out of the parts. ``inputs`` are the prompt rows' columns by ``row_key``, for the rewards
        that read them."""
        batch = len(prompts)
        if images.shape[0] != batch:
            raise ValueError(f"{images.shape[0]} images but {batch} prompts")
        if groups is not None:
            groups = torch.as_tensor(groups).cpu()
            if groups.shape != (batch,) or groups.is_floating_point() or groups.is_complex():
                raise ValueError(
                    f"groups must be a [{batch}] integer tensor, got {groups.dtype} {tuple(groups.shape)}"
                )
            groups = groups.long()
        total = torch.zeros(batch)
        parts: dict[str, Tensor] = {}
        for name, fn in self.rewards.items():
            if is_groupwise(fn) and groups is None:
                raise ValueError(f"reward {name!r} scores groups of images jointly and needs groups= ([B] group ids)")
            out = self.raw(name, images, prompts, groups, inputs)
            if isinstance(out, Mapping) and "preferences" in out:
                out = dict(out)
                matrix = _as_preferences(name, out.pop("preferences"), batch)
                if preferences is not None:
                    preferences[name] = matrix
            out = check_reward_output(name, out, batch)
            total += self.weights[name] * out["score"]
            parts[name] = out["score"]
            parts.update({f"{name}/{k}": v for k, v in out.items() if k != "score"})
        return total, parts

    def raw(
        self,
        name: str,
        images: Tensor,
        prompts: list[str],
        groups: Tensor | None = None,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Any:
        """Reward ``name``'s own output for the batch (unchecked, unweighted), called as ``__call__`` calls it: with
        ``groups`` if it is groupwise and the columns it reads from ``inputs``."""
        fn = self.rewards[name]
        return _call(name, fn, images, prompts, groups, _columns(name, fn, prompts, inputs))

    def non_finite(self, parts: Mapping[str, Tensor]) -> dict[str, int]:
        """``{reward name: count}`` of NaN or infinite scores in ``parts`` (as ``__call__`` returns them), for the
        rewards that have any; diagnostics are not counted. Empty when every score is finite."""
        counts = {name: int((~torch.isfinite(parts[name])).sum()) for name in self.rewards if name in parts}
        return {name: n for name, n in counts.items() if n}

    def weight_vector(self) -> Tensor:
        """``[K]`` weights in the order of ``rewards`` (the columns of the trainer's reward matrix)."""
        return torch.tensor([self.weights[name] for name in self.rewards])

    def describe(self) -> str:
        return " + ".join(f"{w:g}·{n}" if not math.isclose(w, 1.0) else n for n, w in self.weights.items())


def _columns(
    name: str, fn: RewardFn, prompts: list[str], inputs: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, list[Any]]:
    """The columns ``fn`` reads (its ``inputs``), each a list aligned with ``prompts``."""
    out = {}
    rows = row_inputs(inputs, prompts)
    for key in getattr(fn, "inputs", ()):
        missing = [p for p, row in zip(prompts, rows, strict=True) if key not in row]
        if missing:
            raise RewardError(f"reward {name!r} reads {key!r} of each prompt row, and {missing[0]!r} has none (give "
                              "it in a .jsonl prompt file)")  # fmt: skip
        out[key] = [row[key] for row in rows]
    return out


def _call(
    name: str, fn: RewardFn, images: Tensor, prompts: list[str], groups: Tensor | None, columns: dict[str, Any]
) -> Any:
    """``fn``'s raw output; anything it raises becomes a ``RewardError`` naming the reward (the original chained)."""
    try:
        return fn(images, prompts, groups=groups, **columns) if is_groupwise(fn) else fn(images, prompts, **columns)
    except RewardError as e:  # already says what failed (e.g. a reward server's reply): add which reward
        raise RewardError(f"reward {name!r}: {e}") from e
    except Exception as e:
        raise RewardError(f"reward {name!r} raised {type(e).__name__}: {e}") from e


__all__ = [
    "REWARDS",
    "RewardFacts",
    "RewardFn",
    "RewardSet",
    "Scores",
    "check_reward_name",
    "check_reward_options",
    "check_reward_output",
    "gives_preferences",
    "is_groupwise",
    "is_user_reward",
    "load_object",
    "load_user_reward",
    "make_reward",
]
