"""Prompt sources: the toy world's splits, a UTF-8 text file with one prompt per line (blank lines and lines
starting with ``#`` are skipped; a byte-order mark is dropped), or a ``.jsonl`` file of rows ``{"prompt": ...,
<input>: ...}`` whose other keys are the row's conditioning inputs: what a model family that declares them
(``FamilyFacts.inputs``, e.g. an editing family's reference images) receives with the prompt. The key ``image``
holds one image path or a list of them (relative to the file's folder); every row's images are checked to exist and
to open as images when the file is read, so a bad row is refused with its line before any model loads, and the
family receives them as a list of absolute paths.

Toy splits: ``toy:train`` (374 prompts) = ``toy:train-no-val`` (299) + ``toy:validation`` (75, for choosing
hyper-parameters); ``toy:held-out`` (94, only ever reported); ``toy:all`` (468). The toy video world's
(``flowrl.image.toy_video``): ``toy-video:train`` (384) = ``toy-video:train-no-val`` (307) + ``toy-video:validation``
(77); ``toy-video:held-out`` (96); ``toy-video:all`` (480).

A Hugging Face ``datasets`` folder (``Dataset.save_to_disk``) with a ``prompt`` column gives rows too: its ``image``
column (images, or paths relative to the folder) and its other columns are the inputs.

A text may come with several sets of inputs (one edit instruction on several images, in one file or in the training
and the evaluation file): each such row is a ``flowrl.core.inputs.PromptRow``, the text with a key of its own (the
text and a digest of its inputs), so that its inputs, its evaluation group and its evaluation noise are its own.

A source that does not exist is a ``ConfigError`` (the config names it); a file that exists but holds no usable
prompts (empty, only comments, not UTF-8 text) is a ``DataError`` naming the file and, where it helps, the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.inputs import PromptRow, jsonl_rows, read_utf8, row_key

TOY_PROMPT_SETS = tuple(
    f"{world}:{split}" for world in ("toy", "toy-video") for split in ("train", "held-out", "all", "validation",
                                                                       "train-no-val")
)  # fmt: skip


def is_toy_split(source: str) -> bool:
    """Whether ``source`` names a built-in toy split (``toy:<split>``, the toy video world's ``toy-video:<split>``)."""
    return source.startswith(("toy:", "toy-video:"))


def check_prompt_source(source: str) -> None:
    """Raise ``ConfigError`` if ``source`` names neither a toy split nor an existing file or folder."""
    if is_toy_split(source):
        if source not in TOY_PROMPT_SETS:
            raise ConfigError(f"unknown prompt set {source!r}; valid: {', '.join(TOY_PROMPT_SETS)} or a file path")
    elif not os.path.isfile(source) and not os.path.isdir(source):
        raise ConfigError(f"prompt file {source!r} does not exist")


def has_rows(source: str) -> bool:
    """Whether ``source`` gives rows with inputs (a ``.jsonl`` file or a ``datasets`` folder), not bare prompts."""
    return source.endswith(".jsonl") or os.path.isdir(source)


@dataclass
class PromptSet:
    """Prompts and each one's conditioning inputs (``inputs[i]``: prompt ``i``'s, empty for a plain prompt)."""

    prompts: list[str]
    inputs: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # each row's line in its file (empty: not from a file of rows)

    def __post_init__(self) -> None:
        self.inputs = self.inputs or [{} for _ in self.prompts]
        if len(self.inputs) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.inputs)} rows of inputs")

    def columns(self) -> set[str]:
        """The inputs every row has."""
        return set.intersection(*(set(r) for r in self.inputs)) if self.inputs else set()


def load_prompt_set(source: str) -> PromptSet:
    """The prompts of ``source`` with their inputs (a ``.jsonl`` file's other keys; none for the other sources)."""
    if not has_rows(source):
        return PromptSet(load_prompts(source))
    check_prompt_source(source)
    if os.path.isdir(source):
        return _dataset_rows(source)
    prompts, inputs, lines = [], [], []
    for n, row in jsonl_rows(source, f"prompt file {source!r}"):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise DataError(f'prompt file {source!r} line {n}: expected an object with a non-empty "prompt" string')
        prompts.append(row.pop("prompt").strip())
        if "image" in row:
            row["image"] = _image_paths(
                row["image"], os.path.dirname(os.path.abspath(source)), f"prompt file {source!r} line {n}"
            )
        inputs.append(row)
        lines.append(n)
    if not prompts:
        raise DataError(f"prompt file {source!r} has no rows")
    prompt_set = PromptSet(prompts, inputs, lines)
    key_rows(prompt_set)
    return prompt_set


def _dataset_rows(source: str) -> PromptSet:
    """The rows of a Hugging Face ``datasets`` folder (``Dataset.save_to_disk``): its ``prompt`` column, its ``image``
    column (an image or a list of them, or paths relative to the folder) and its other JSON-like columns. The images
    are written once as PNGs to a cache folder named by the dataset's fingerprint (``$XDG_CACHE_HOME/flowrl``), which
    the families read as they read a ``.jsonl`` file's paths; a row's number counts from 1."""
    from datasets import Dataset, load_from_disk

    try:
        data = load_from_disk(source)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"prompt folder {source!r} is not a datasets folder (Dataset.save_to_disk): {e}") from None
    if not isinstance(data, Dataset):
        raise DataError(f"prompt folder {source!r} holds the splits {', '.join(data)}: give one split's folder")
    if "prompt" not in data.column_names:
        raise DataError(f"dataset {source!r} has no 'prompt' column (its columns: {', '.join(data.column_names)})")
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "flowrl", "datasets",
                         data._fingerprint)  # fmt: skip
    if "image" in data.column_names and not os.path.isdir(cache):
        _write_images(data["image"], cache, source)
    prompts, inputs = [], []
    for n, row in enumerate(data, 1):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise DataError(f"dataset {source!r} row {n}: expected a non-empty prompt string")
        prompts.append(row.pop("prompt").strip())
        if "image" in row:
            images = row["image"] if isinstance(row["image"], list) else [row["image"]]
            paths = [x if isinstance(x, str) else os.path.join(cache, f"{n}-{k}.png") for k, x in enumerate(images)]
            row["image"] = _image_paths(paths, os.path.abspath(source), f"dataset {source!r} row {n}")
        inputs.append({k: v for k, v in row.items() if isinstance(v, (str, int, float, bool, list, dict))})
    if not prompts:
        raise DataError(f"dataset {source!r} has no rows")
    prompt_set = PromptSet(prompts, inputs, list(range(1, len(prompts) + 1)))
    key_rows(prompt_set)
    return prompt_set


def _write_images(column: Sequence[Any], cache: str, source: str) -> None:
    """A dataset's image column as ``<row>-<k>.png`` files in ``cache``: written beside it and renamed into place,
    unless another process (of the same launch) got there first, so no reader ever sees a half-written folder."""
    tmp = f"{cache}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        for n, value in enumerate(column, 1):
            for k, image in enumerate(value if isinstance(value, list) else [value]):
                if image is None:
                    raise DataError(f"dataset {source!r} row {n}: image {k} is empty")
                if not isinstance(image, str):
                    image.convert("RGB").save(os.path.join(tmp, f"{n}-{k}.png"))
        os.rename(tmp, cache)
    except OSError:
        if not os.path.isdir(cache):  # not another process's finished folder: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def key_rows(*sets: PromptSet) -> None:
    """In place: over all ``sets`` (loaded together), each text that comes with more than one set of inputs becomes a
    ``PromptRow`` per row, keyed by its text and a digest of its inputs (equal rows share a key, wherever they are;
    the key does not depend on file names or lines)."""
    digests: dict[str, set[str]] = {}
    for prompt_set in sets:
        for prompt, row in zip(prompt_set.prompts, prompt_set.inputs, strict=True):
            digests.setdefault(str(prompt), set()).add(_digest(row))
    for prompt_set in sets:
        prompt_set.prompts[:] = [
            PromptRow(str(p), f"{p}\x00{_digest(row)}") if len(digests[str(p)]) > 1 else p
            for p, row in zip(prompt_set.prompts, prompt_set.inputs, strict=True)
        ]


def _digest(row: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _image_paths(value: Any, folder: str, where: str) -> list[str]:
    """A row's ``image`` (a path or a list of paths, relative to ``folder``) as absolute paths of images that exist and
    open; a ``DataError`` naming the row (``where``) and the path otherwise."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise DataError(f'{where}: "image" must be a path or a list of paths, got {value!r}')
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        full = path if os.path.isabs(path) else os.path.join(folder, path)
        try:
            with Image.open(full) as image:
                image.verify()
        except FileNotFoundError:
            raise DataError(f"{where}: image {path!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{where}: image {path!r} cannot be read ({type(e).__name__})") from None
        out.append(full)
    return out


def inputs_by_prompt(*sets: tuple[str, PromptSet]) -> dict[str, dict[str, Any]]:
    """Each row's inputs over the named sets (``(source, set)`` pairs, e.g. the training and the evaluation file),
    keyed by ``row_key``: a text with other inputs in another of the sets becomes a ``PromptRow`` there too
    (``key_rows``, in place), so no two rows share a key."""
    key_rows(*[prompt_set for _, prompt_set in sets])
    out = {
        row_key(p): row for _, prompt_set in sets for p, row in zip(prompt_set.prompts, prompt_set.inputs, strict=True)
    }
    return {key: row for key, row in out.items() if row}


def check_rows(sources: Mapping[str, str], family: str, rewards: Sequence[Any]) -> None:
    """The prompt sources (``{"train_prompts": source, ...}``, named so in errors) give every row the columns that
    the model family (``FamilyFacts.inputs``) and the rewards (specs with ``name`` and ``options``;
    ``RewardFacts.inputs``) read, the family's count of reference images (optional when its minimum is 0: then a
    file's rows have images all or none). Reads the rows only: no model loads."""
    from flowrl.image.models import FAMILIES
    from flowrl.rewards import REWARDS

    sets = {key: load_prompt_set(source) for key, source in sources.items() if not is_toy_split(source)}
    low, high = FAMILIES.facts(family).images if family in FAMILIES else (0, 0)
    readers = {}
    if family in FAMILIES:  # min 0 reference images: the image column is optional
        readers[f"the {family} family"] = tuple(n for n in FAMILIES.facts(family).inputs if n != "image" or low > 0)
    for spec in rewards:
        if spec.name in REWARDS:  # declared at registration, or chosen by an `inputs` option (the remote reward's)
            chosen = spec.options.get("inputs", ())
            chosen = (chosen,) if isinstance(chosen, str) else tuple(chosen)
            readers[f"reward {spec.name!r}"] = (*REWARDS.facts(spec.name).inputs, *chosen)
    for key, source in sources.items():
        columns = sets[key].columns() if key in sets else set()
        for who, needed in readers.items():
            missing = [n for n in needed if n not in columns]
            if missing:
                raise ConfigError(f"data.{key}: {who} reads {', '.join(needed)} with each prompt, and {source!r} "
                                  f"gives no {missing[0]!r}; use a .jsonl file of rows "
                                  f"{{\"prompt\": ..., \"{missing[0]}\": ...}}")  # fmt: skip
    for key, source in sources.items() if family in FAMILIES and "image" in FAMILIES.facts(family).inputs else ():
        counts = [len(row.get("image", [])) for row in sets[key].inputs] if key in sets else []
        if low == 0 and not any(counts):
            continue  # plain prompts (a toy split, a text file, rows without images): no references
        for line, n in zip(sets[key].lines, counts, strict=True):
            if not low <= n <= high:
                count = f"{low}" if low == high else f"{low} to {high}"
                raise DataError(f"data.{key}: {source!r} line {line} has {n} images; the {family} family takes "
                                f"{count} per prompt")  # fmt: skip
        if min(counts) == 0 < max(counts):
            line = sets[key].lines[counts.index(0)]
            raise DataError(f"data.{key}: {source!r} line {line} has no image but other rows have; the {family} "
                            "family's rows all have reference images or none (one token layout)")  # fmt: skip


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source``: ``ConfigError`` for an unknown toy split or a missing file, ``DataError`` for
    an empty or non-UTF-8 file (a ``.jsonl`` file's prompts without their inputs)."""
    if has_rows(source):
        return load_prompt_set(source).prompts
    check_prompt_source(source)
    if source.startswith("toy-video:"):
        from flowrl.image.toy_video import split_clips

        return [c.text for c in split_clips(source.split(":", 1)[1])]
    if source.startswith("toy:"):
        from flowrl.image.toy_world import all_scenes, split_scenes, validation_split

        train, held_out = split_scenes()
        fit, validation = validation_split()
        splits = {"toy:train": train, "toy:held-out": held_out, "toy:all": all_scenes(), "toy:validation": validation,
                  "toy:train-no-val": fit}  # fmt: skip
        return [s.text for s in splits[source]]
    text = read_utf8(source, f"prompt file {source!r}")
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"prompt file {source!r} has no prompts (blank lines and # comments are skipped)")
    return prompts
