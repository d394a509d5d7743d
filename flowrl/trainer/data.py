"""Prompt sources: the toy world's splits (``toy:train``, ``toy:held-out``, ``toy:all``) or a UTF-8 text file
with one prompt per line (blank lines and lines starting with ``#`` are skipped)."""

from __future__ import annotations

import os

from flowrl.options import ConfigError


def load_prompts(source: str) -> list[str]:
    """The prompts of ``source``; raises ``ConfigError`` naming the file for missing, empty or non-UTF-8 files."""
    if source.startswith("toy:"):
        from flowrl.toy_world import all_scenes, split_scenes

        train, held_out = split_scenes()
        splits = {"toy:train": train, "toy:held-out": held_out, "toy:all": all_scenes()}
        if source not in splits:
            raise ConfigError(f"unknown prompt set {source!r}; valid: {', '.join(splits)} or a file path")
        return [s.text for s in splits[source]]
    if not os.path.isfile(source):
        raise ConfigError(f"prompt file {source!r} does not exist")
    try:
        with open(source, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as e:
        raise ConfigError(f"prompt file {source!r} is not UTF-8 text (byte {e.start})") from None
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ConfigError(f"prompt file {source!r} has no prompts")
    return prompts
