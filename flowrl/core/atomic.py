"""Crash-safe files: a folder or file is built under a temporary name next to its destination and
renamed into place, so a reader never sees a half-written one (checkpoints, galleries, reports)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield an empty temporary sibling folder; on success it replaces ``path``, on error it is removed
    and a previous ``path`` is left (or put back) in place."""
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    for stale in (tmp, old):  # left over by a crashed process with the same pid
        shutil.rmtree(stale, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
        _sync_tree(tmp)  # the files' contents reach the disk before the rename that makes them visible
        if os.path.isdir(path):
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(old) and not os.path.exists(path):
            os.replace(old, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would change it for every thread meanwhile)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        return 0o022


def _sync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder`` (a node that loses power keeps no renamed empty files), and
    give every file the mode a plain ``open`` gives (some writers, diffusers' LoRA saving among them, leave 0600
    files, which the rest of a shared run folder's group could not read)."""
    mode = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(root, name), mode)
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    write_text(path, json.dumps(data, indent=2))


def write_jsonl(path: str, rows: list[Any]) -> None:
    """Write one JSON object per line atomically."""
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["atomic_dir", "write_json", "write_jsonl", "write_text"]
