"""The run's record of its configuration, which must match what trained.

``config.yaml`` in the run folder is the configuration the run started with, written once. Every checkpoint holds
the configuration it was trained with (``<checkpoint>/config.yaml``). A resumed run compares its configuration with
the checkpoint's, key by key, before it writes anything:

- keys that may change between invocations (``RESUMABLE``: iterations, time limit, checkpoint cadence, the learning
  rate, evaluation, logging and output) take effect and are recorded as a dated entry in ``resumed.yaml``
  (beside ``config.yaml``, never in place of it);
- any other key (sampler mode, window, group size, seed, model, fine-tuning mode, method options, data, ...)
  would continue a state it does not fit, or record a run that did not happen: it is refused in one line that lists
  every differing key with its old and new value, and the run folder is left untouched.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import yaml

from flowrl.core.atomic import write_text
from flowrl.core.errors import ConfigError
from flowrl.core.method_options import upgrade
from flowrl.core.options import to_dict

log = logging.getLogger("flowrl")

CONFIG_FILE = "config.yaml"
RESUMED_FILE = "resumed.yaml"
#: dotted keys (or section prefixes ending in ".") that a resumed run may change
RESUMABLE = ("train.iterations", "train.max_minutes", "train.save_every", "train.keep_checkpoints", "train.resume",
             "train.lr", "train.max_consecutive_skips", "eval.", "output.")  # fmt: skip
#: evaluation keys that do not change the evaluation pairs or what is scored (the kept base evaluation still fits)
REPORT_ONLY = ("eval.enabled", "eval.gallery_prompts", "eval.watch_drop", "eval.diversity_drop")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` → ``{"train.lr": 1e-4}``; lists are leaves."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) and value else f"{prefix}{key}"))
    return out if out or not prefix else {prefix.rstrip("."): {}}


def dump(cfg: Any) -> str:
    """The configuration as YAML (what ``config.yaml`` holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def write_config(cfg: Any, run_dir: str, main: bool) -> None:
    """``config.yaml``: the configuration the run started with (main process; a resumed run keeps it)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if main and not os.path.exists(path):
        write_text(path, dump(cfg))


def trained_config(checkpoint: str) -> dict[str, Any] | None:
    """The configuration ``checkpoint`` was trained with: its own ``config.yaml``, or for a checkpoint written before
    checkpoints held one, its run folder's; None when neither exists."""
    for path in (os.path.join(checkpoint, CONFIG_FILE), os.path.join(checkpoint, "..", "..", CONFIG_FILE)):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return yaml.safe_load(f)
    return None


def resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def resume_changes(cfg: Any, checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """The keys whose value differs from the checkpoint's configuration, as ``{key: (old, new)}``; a config error
    listing every difference if any of them may not change on resume (see the module docstring)."""
    old = trained_config(checkpoint)
    if old is None:
        log.warning("checkpoint %s holds no configuration: resuming without comparing it", checkpoint)
        return {}
    before, now = flatten(upgrade(type(cfg), old)), flatten(to_dict(cfg))  # old: maybe written before options nested
    changes = {k: (before.get(k), now.get(k)) for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)}
    refused = [k for k in changes if not resumable(k)]
    if refused:
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ConfigError(
            f"cannot resume {checkpoint} with a different {', '.join(refused)} ({listed}); these keys must equal "
            "the checkpoint's (its config.yaml): resume with the run's own config"
        )
    return changes


def changes_evaluation(changes: dict[str, tuple[Any, Any]]) -> bool:
    """Whether the changes alter the evaluation pairs or scores (a kept base evaluation no longer compares)."""
    return any(k.startswith("eval.") and not k.startswith(REPORT_ONLY) for k in changes)


def record_resume(run_dir: str, checkpoint: str, changes: dict[str, tuple[Any, Any]], main: bool) -> None:
    """Append a dated entry to ``resumed.yaml``: the checkpoint continued and every key that changed."""
    if not main:
        return
    path = os.path.join(run_dir, RESUMED_FILE)
    entries = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            entries = yaml.safe_load(f) or []
    entries.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "checkpoint": os.path.abspath(checkpoint),
                    "changed": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}})  # fmt: skip
    write_text(path, yaml.safe_dump(entries, sort_keys=False))


__all__ = ["RESUMABLE", "changes_evaluation", "dump", "record_resume", "resume_changes", "trained_config",
           "write_config"]  # fmt: skip
