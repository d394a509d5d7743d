"""Method options live with their method: each registered loss, advantage estimator and sampler mode may declare its
own options as a dataclass at registration (``@LOSSES.register("awm", options=AwmOptions)``), and the config nests
them under the method's name::

    loss:
      name: awm
      clip_low: 1.0          # read by several losses: stays at the section level
      awm: {weighting: ghuber, ghuber_power: 0.25}

(the override ``loss.awm.weighting=ghuber``). A config section that picks a method this way is a ``MethodSection``:
its ``options`` attribute holds the chosen method's options (None when it declares none), which the trainers hand to
the method. ``flowrl.core.options.load``, ``to_dict`` and ``describe`` call the section's ``read_nested``,
``write_nested`` and ``describe_nested``.

Everything a method does not read is refused at config time, from declarations, on every backend, in one line
naming the key and the chosen method:

- another method's options block holding a value other than its default (``loss.nft.beta`` with ``loss.name=awm``;
  one left at its defaults is dropped);
- a section-level option, when it differs from the section's default, that the chosen method lists in its facts'
  ``ignores``, that the field's ``read_by`` (a predicate over the method's facts) says it does not read, or whose
  field names other ``backends`` than the section's (``section_option``).

The old flat names (``loss.awm_weighting``, ``advantage.tree_fusion``, ``sampler.split_steps``) keep working: an
options class lists them in ``FLAT`` (old name → its field), and each one read logs one line naming the new key.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from flowrl.core.errors import ConfigError
from flowrl.core.registry import Fact, Registry

log = logging.getLogger("flowrl")


class Backend(Fact):
    """Which trainer reads a config: the image (flow) recipe or the text recipe (the config's ``backend`` key)."""

    FLOW = "flow"
    TEXT = "text"


def section_option(
    field: Any, *, backends: tuple[Backend, ...] | None = None, read_by: Callable[[Any], bool] | None = None
) -> Any:
    """``field`` (an ``option(...)``) of a method section, with who reads it: only the trainers of ``backends``, and
    only a method whose facts satisfy ``read_by`` (e.g. ``lambda f: f.trains_on is TrainsOn.SAMPLES``). A config
    that sets it (other than its default) for any other is refused."""
    extra: dict[str, Any] = {}
    if backends is not None:
        extra["backends"] = tuple(backends)
    if read_by is not None:
        extra["read_by"] = read_by
    field.metadata = MappingProxyType({**field.metadata, **extra})
    return field


#: the metadata of a ``MethodSection``'s ``options`` field: written under the chosen method's name, not as ``options``
NESTED = MappingProxyType({"nested": True, "help": "the chosen method's own options, under its name"})


def flat_names(options: type) -> dict[str, str]:
    """Old flat name → field, as the options class declares them in ``FLAT`` (none if it declares none)."""
    return dict(getattr(options, "FLAT", {}))


class MethodSection:
    """A config section (a dataclass mixing this in) whose ``SELECTOR`` field (``name``, or ``mode`` for the
    sampler) picks a method of ``REGISTRY``, and whose last field,
    ``options: Any = dataclasses.field(default=None, metadata=NESTED)``, holds that method's own options (filled
    with its defaults when not given).

    Subclasses set ``REGISTRY`` and ``BACKEND`` (and ``SELECTOR`` if it is not ``name``)."""

    REGISTRY: ClassVar[Registry]
    SELECTOR: ClassVar[str] = "name"
    BACKEND: ClassVar[Backend]
    options: Any

    def __post_init__(self) -> None:
        name = getattr(self, self.SELECTOR)
        declared = self.REGISTRY.options(name) if name in self.REGISTRY else None
        if self.options is None and declared is not None:
            self.options = declared()
        elif self.options is not None and not isinstance(self.options, declared or ()):
            raise TypeError(f"{type(self.options).__name__} are not the options of {self.REGISTRY.what} {name!r}")

    # ------------------------------------------------------------------ the hooks of flowrl.core.options
    @classmethod
    def read_nested(cls, data: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        """``data`` (the section's YAML mapping) with old flat names moved under their method, the chosen method's
        block loaded into ``options`` and the other methods' blocks checked and dropped."""
        from flowrl.core.options import _check, load

        out = dict(data)
        if "options" in out:
            raise ConfigError(f"unknown config key {prefix}options; a method's options go under its name, e.g. "
                              f"{prefix}<{cls.SELECTOR}>.<option>")  # fmt: skip
        name = out.get(cls.SELECTOR, cls._default_name())
        if not isinstance(name, str):
            return out  # the loader reports the wrong type
        _check(cls._selector_field(), name, prefix + cls.SELECTOR)  # an unknown method first, with its choices
        for key, owner, field, value in cls._flat(out, name):
            log.warning("%s%s is now %s%s.%s (the old name still works)", prefix, key, prefix, owner, field)
            block = out.setdefault(owner, {})
            if not isinstance(block, dict):
                raise ConfigError(f"{prefix}{owner}: expected a mapping of options, got {block!r}")
            if field in block:
                raise ConfigError(f"{prefix}{owner}.{field} is set twice: also as {prefix}{key} (its old name)")
            if value is not _DEFAULT:
                block[field] = value
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in [k for k in out if k not in fields and k in cls.REGISTRY]:
            loaded = cls._load_block(key, out.pop(key), prefix, load)
            if key == name:
                out["options"] = loaded
            elif loaded is not None:
                changed = _changed(loaded)
                if changed:
                    raise ConfigError(
                        f"{prefix}{key}.{changed[0]} is an option of {prefix}{cls.SELECTOR}={key}; "
                        f"{prefix}{cls.SELECTOR}={name} does not read it (remove it)"
                    )
        return out

    def write_nested(self, data: dict[str, Any]) -> dict[str, Any]:
        """``to_dict``'s mapping of this section with ``options`` written under the chosen method's name."""
        from flowrl.core.options import to_dict

        data.pop("options", None)
        if self.options is not None:
            data[getattr(self, self.SELECTOR)] = to_dict(self.options)
        return data

    @classmethod
    def describe_nested(cls, prefix: str) -> Iterator[tuple[str, str, Any, str]]:
        """``describe`` rows of every method's own options that this section may choose, under its name."""
        from flowrl.core.options import describe

        for name in cls._choices():
            options = cls.REGISTRY.options(name)
            if options is not None:
                for key, tp, default, text in describe(options, f"{prefix}{name}."):
                    yield key, tp, default, f"{text} ({prefix}{cls.SELECTOR}={name})"

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A stored mapping of this section (a checkpoint's or benchmark run's config, written before options were
        nested: every method's flat options present) in today's layout, quietly: the chosen method's old names
        moved under it, the other methods' dropped."""
        from flowrl.core.options import load, to_dict

        out = dict(data)
        name = out.get(cls.SELECTOR, cls._default_name())
        moved: dict[str, Any] = {}
        for _, owner, field, value in cls._flat(out, name):
            if owner == name and value is not _DEFAULT:
                moved[field] = value
        options = cls.REGISTRY.options(name) if name in cls.REGISTRY else None
        if options is not None and name not in out:  # written in full, as to_dict writes it today
            out[name] = to_dict(load(options, moved, f"{name}."))
        if options is not None and isinstance(out.get(name), dict):
            # an option added after the config was stored: what the method did before it existed (the options'
            # STORED_DEFAULTS where a default changed the behaviour, else the default)
            then = {**to_dict(options()), **getattr(options, "STORED_DEFAULTS", {})}
            out[name] = {**then, **out[name]}
        return out

    # ------------------------------------------------------------------ helpers
    @classmethod
    def _selector_field(cls) -> dataclasses.Field:
        return next(f for f in dataclasses.fields(cls) if f.name == cls.SELECTOR)

    @classmethod
    def _default_name(cls) -> str:
        return cls._selector_field().default

    @classmethod
    def _choices(cls) -> list[str]:
        choices = cls._selector_field().metadata.get("choices")
        return list(choices() if callable(choices) else choices or cls.REGISTRY.names())

    @classmethod
    def _flat(cls, data: dict[str, Any], name: str) -> Iterator[tuple[str, str, str, Any]]:
        """Pop every old flat name from ``data``: (old key, its method: the chosen one if it reads it, else the first
        that declares it, the field, the value or ``_DEFAULT`` for an old value that meant the method's default)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        owners: dict[str, list[str]] = {}
        for method in cls.REGISTRY.names():
            for old in flat_names(cls.REGISTRY.options(method) or object):
                owners.setdefault(old, []).append(method)
        for key in [k for k in data if k in owners and k not in fields]:
            owner = name if name in owners[key] else owners[key][0]
            options = cls.REGISTRY.options(owner)
            value = data.pop(key)
            if getattr(options, "FLAT_DEFAULTS", {}).get(key, _DEFAULT) == value:
                value = _DEFAULT
            yield key, owner, flat_names(options)[key], value

    @classmethod
    def _load_block(cls, key: str, block: Any, prefix: str, load: Callable[..., Any]) -> Any:
        options = cls.REGISTRY.options(key)
        if options is None:
            raise ConfigError(f"{prefix}{key}: {cls.REGISTRY.what} {key} has no options of its own")
        return load(options, block, f"{prefix}{key}.")


_DEFAULT = object()  # an old flat value that meant "the method's own default" (loss.renoise: auto)


def _changed(options: Any) -> list[str]:
    """The fields of an options instance that differ from its class's defaults."""
    defaults = type(options)()
    return [f.name for f in dataclasses.fields(options) if getattr(options, f.name) != getattr(defaults, f.name)]


def options_for(registry: Registry, name: str, section: Any = None, options: Any = None) -> Any:
    """The own options to hand method ``name``: ``options`` if given, else those of a config ``section`` that chose
    ``name`` (e.g. ``run.cfg.loss``), else the declared defaults; a ``TypeError`` if they are not the ones ``name``
    declared."""
    declared = registry.options(name)
    if options is None:
        if isinstance(section, MethodSection) and getattr(section, section.SELECTOR) == name:
            options = section.options
        elif declared is not None:
            options = declared()
    if (declared is None) != (options is None) or (declared is not None and not isinstance(options, declared)):
        wanted = declared.__name__ if declared else "no options"
        raise TypeError(f"{registry.what} {name!r} takes {wanted}, got {options!r}")
    return options


def refuse_unread(section: MethodSection, prefix: str) -> None:
    """Refuse a section-level option that differs from the section's default but that the chosen method does not
    read (its facts' ``ignores``, the field's ``read_by``) or that this backend does not read (the field's
    ``backends``)."""
    cls = type(section)
    defaults, name = cls(), getattr(section, cls.SELECTOR)
    facts = cls.REGISTRY.facts(name)
    chosen = f"{prefix}{cls.SELECTOR}={name}"
    for f in dataclasses.fields(section):
        value, default = getattr(section, f.name), getattr(defaults, f.name)
        if f.name == cls.SELECTOR or f.metadata.get("nested") or value == default:
            continue
        backends, read_by = f.metadata.get("backends"), f.metadata.get("read_by")
        if backends is not None and cls.BACKEND not in backends:
            raise ConfigError(f"{prefix}{f.name} is read by the {' and '.join(backends)} backend only; {chosen} on "
                              f"the {cls.BACKEND} backend does not read it (leave it at {default!r})")  # fmt: skip
        if f.name in getattr(facts, "ignores", ()) or (read_by is not None and not read_by(facts)):
            raise ConfigError(f"{prefix}{f.name} is not read by {chosen}; leave it at its default ({default!r})")


def refuse_unread_options(cfg: Any) -> None:
    """``refuse_unread`` for every method section of a loaded config (its top-level ``MethodSection`` fields)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, MethodSection):
            refuse_unread(value, f"{f.name}.")


def upgrade(cls: type, data: Any) -> Any:
    """A stored config mapping of config class ``cls`` in today's layout (``MethodSection.upgrade`` for each of its
    method sections); anything else is returned unchanged."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name)
        if isinstance(tp, type) and issubclass(tp, MethodSection) and isinstance(out.get(f.name), dict):
            out[f.name] = tp.upgrade(out[f.name])
    return out


__all__ = [
    "NESTED",
    "Backend",
    "MethodSection",
    "flat_names",
    "options_for",
    "refuse_unread",
    "refuse_unread_options",
    "section_option",
    "upgrade",
]
