"""Typed option fields and a strict loader from plain dicts (YAML) into nested dataclasses.

``option(default, help, ...)`` declares a dataclass field with its help text and checks
(``low`` / ``high`` bounds, ``choices``: a tuple or a zero-argument callable that returns the valid
names, so registries are read when validating, not when importing). ``load(cls, data)`` builds the
dataclass, raising ``ConfigError`` that names the dotted key for an unknown key (with a suggestion),
a wrong type or a value out of range.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from flowrl.core.errors import ConfigError

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with help text and checks (mutable defaults are copied per instance)."""
    meta = {"help": help, "low": low, "high": high, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


#: words YAML 1.1 reads as booleans besides true/false; a str option takes them as text (mixed_precision: no)
_YAML11_BOOLS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return load(tp, value, prefix=key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, str) and value.lower() in _YAML11_BOOLS:  # an override kept as text, see config.py
            return _YAML11_BOOLS[value.lower()]
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def closest(word: str, valid: Iterable[str]) -> str | None:
    """The valid name most like a misspelt ``word`` (difflib's ratio of at least 0.6), or None: the "did you mean"
    of every unknown key or name."""
    hint = difflib.get_close_matches(word, list(valid), 1)
    return hint[0] if hint else None


def _check(f: dataclasses.Field, value: Any, key: str) -> None:
    meta = f.metadata
    low, high, choices = meta.get("low"), meta.get("high"), meta.get("choices")
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v is None or isinstance(v, (bool, dict)):
            continue
        if low is not None and isinstance(v, (int, float)) and v < low:
            raise ConfigError(f"{key}: must be >= {low}, got {v}")
        if high is not None and isinstance(v, (int, float)) and v > high:
            raise ConfigError(f"{key}: must be <= {high}, got {v}")
        if choices is not None and isinstance(v, str):
            valid = tuple(choices() if callable(choices) else choices)
            if v not in valid:
                hint = closest(v, valid)
                extra = f" (did you mean {hint!r}?)" if hint else ""
                raise ConfigError(f"{key}: {v!r} is not one of {', '.join(valid)}{extra}")


def load(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating every key, type and range."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    if hasattr(cls, "read_nested"):  # a method's own options, nested under its name (flowrl.core.method_options)
        data = cls.read_nested(data, prefix)
    known = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in known:
            hint = closest(str(key), known)
            extra = f"; did you mean {prefix}{hint}?" if hint else f"; valid keys: {', '.join(known)}"
            raise ConfigError(f"unknown config key {prefix}{key}{extra}")
    kwargs = {}
    for name, f in known.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], prefix + name)
            _check(f, kwargs[name], prefix + name)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists (what ``load`` reads back)."""
    if dataclasses.is_dataclass(obj):
        data = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return obj.write_nested(data) if hasattr(obj, "write_nested") else data
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "train.lr", 1e-4)``: set a nested key, creating sections as needed."""
    *path, last = dotted.split(".")
    node = data
    for part in path:
        child = node.get(part)
        if child is None:  # an empty YAML section reads as null
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {part} is not a section")
        node = child
    node[last] = value


def describe(cls: type, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(dotted key, type name, default, help) for every leaf option of a dataclass tree; a choice-valued option's
    help ends with its choices."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.metadata.get("nested"):  # the chosen method's options, listed under each method's name
            yield from cls.describe_nested(prefix)
            continue
        if dataclasses.is_dataclass(tp):
            yield from describe(tp, prefix + f.name + ".")
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        text, choices = f.metadata.get("help", ""), f.metadata.get("choices")
        if choices is not None:
            names = [c or '""' for c in (choices() if callable(choices) else choices)]
            text += f" (one of: {', '.join(names)})"
        yield prefix + f.name, _type_name(tp), default, text


def rename_keys(data: dict[str, Any], renamed: dict[str, str]) -> dict[str, Any]:
    """``data`` with each old dotted key of ``renamed`` moved to its new key, logging a one-line notice per key
    (both given is a config error)."""
    import logging

    for old, new in renamed.items():
        section, _, leaf = old.rpartition(".")
        parent = _get_dotted(data, section) if section else data
        if not isinstance(parent, dict) or leaf not in parent:
            continue
        if _get_dotted(data, new) is not None:
            raise ConfigError(f"{old} and {new} are the same option; give only {new}")
        set_dotted(data, new, parent.pop(leaf))
        logging.getLogger("flowrl").warning("%s is now %s; the old name still works", old, new)
    return data


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def seed_indices(text: str | None, count: int) -> list[int]:
    """A ``--seeds`` value: comma-separated distinct non-negative indices, or ``0 .. count − 1`` when not given."""
    try:
        seeds = [int(s) for s in text.split(",")] if text else list(range(count))
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} must be distinct non-negative integers")
    return seeds


__all__ = ["closest", "describe", "load", "option", "rename_keys", "seed_indices", "set_dotted", "to_dict"]
