"""Prompt sources: the toy world's splits or a UTF-8 text file with one prompt per line (blank lines and lines
starting with ``#`` are skipped; a byte-order mark is dropped).

Toy splits: ``toy:train`` (374 prompts) = ``toy:train-no-val`` (299) + ``toy:validation`` (75, for choosing
hyper-parameters); ``toy:held-out`` (94, only ever reported); ``toy:all`` (468).

A source that does not exist is a ``ConfigError`` (the config names it); a file that exists but holds no usable
prompts (empty, only comments, not UTF-8 text) is a ``DataError`` naming the file and, where it helps, the line.
"""

from __future__ import annotations

import os

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.inputs import read_utf8

TOY_PROMPT_SETS = ("toy:train", "toy:held-out", "toy:all", "toy:validation", "toy:train-no-val")


def check_prompt_source(source: str) -> None:
    """Raise ``ConfigError`` if ``source`` names neither a toy split nor an existing file."""
    if source.startswith("toy:"):
        if source not in TOY_PROMPT_SETS:
            raise ConfigError(f"unknown prompt set {source!r}; valid: {', '.join(TOY_PROMPT_SETS)} or a file path")
    elif not os.path.isfile(source):
        raise ConfigError(f"prompt file {source!r} does not exist")


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source``: ``ConfigError`` for an unknown toy split or a missing file, ``DataError`` for
    an empty or non-UTF-8 file."""
    check_prompt_source(source)
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
