"""YAML presets as every recipe reads them: the YAML dialect of a config (``ConfigLoader``), dotted ``key=value``
overrides, where a relative path in a preset is looked for, and the ``imports`` that register a user's own methods
before the config is checked.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

import yaml

from flowrl.core.errors import ConfigError

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigLoader(yaml.SafeLoader):
    """YAML as a config means it: only true / false are booleans (YAML 1.1 also reads yes, no, on, off, so
    ``mixed_precision: no`` became false), and ``1e-4`` is a number (YAML 1.1 wants a dot in it)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))  # fmt: skip
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^{_FLOAT.pattern}$"), list("-+0123456789."))


def yaml_load(stream: Any) -> Any:
    """Parse a config file or value with ``ConfigLoader``."""
    return yaml.load(stream, Loader=ConfigLoader)  # a SafeLoader: builds plain data only


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` → ("train.lr", 0.0001); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {one_line(e)}") from None
    return key.strip(), value


PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a source checkout's root


def resolve_relative_path(value: str, preset: str | None) -> str:
    """A relative ``model.path`` as the first existing of: the working directory, the preset's folder, the project
    folder (where ``configs/demo.yaml``'s ``assets/toy-sd3`` lives). Unchanged when none exists (a hub id, or an
    error that names the places, see ``check_model_path``)."""
    if os.path.isabs(value) or os.path.exists(value):
        return value
    for base in search_folders(preset):
        if os.path.exists(candidate := os.path.join(base, value)):
            return candidate
    return value


def search_folders(preset: str | None) -> list[str]:
    """Where a relative path is looked for besides the working directory."""
    folders = [os.path.dirname(os.path.abspath(preset))] if preset is not None else []
    return list(dict.fromkeys([*folders, PROJECT]))


def import_modules(names: Any, preset: str | None) -> None:
    """Import the config's ``imports``: modules that register a user's own losses, estimators, rollout filters,
    sampler modes, rewards or model families (registration happens at import), so that the config that names them
    checks. A module is looked for on ``sys.path``, then in the working directory and the preset's folder."""
    if not names:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"imports: expected a list of module names, got {names!r}")
    for folder in [os.getcwd()] + ([os.path.dirname(os.path.abspath(preset))] if preset else []):
        if folder not in sys.path:
            sys.path.append(folder)
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except Exception as e:  # ImportError, or whatever the user's module raised while importing
            where = "the Python path, the working directory and the preset's folder"
            raise ConfigError(
                f"imports[{i}]: cannot import {name!r} ({type(e).__name__}: {e}); looked for on {where}"
            ) from e


__all__ = [
    "PROJECT",
    "ConfigLoader",
    "one_line",
    "parse_override",
    "resolve_relative_path",
    "search_folders",
    "yaml_load",
]
