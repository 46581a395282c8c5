"""Config errors in the config's own words: unknown keys (with a did-you-mean and, in a preset, the
line), a value given to a whole section, and OmegaConf's type errors as ``key=value is not <type>``.

Nothing here knows the config's dataclasses: the caller passes the root class in (the config
module imports this one, never the other way round). :class:`ConfigError` lives here so both can
raise it; ``regrow.train.ConfigError`` is the same class.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..util.suggest import did_you_mean


class ConfigError(ValueError):
    """A bad preset, key or value: the message names it and the allowed values."""


#: Command that prints every key with its value and description.
LIST_KEYS = "`regrow train [--preset P] out_dir=x --print-config`"

#: Where a key was set, as text to insert after it: ``" (in preset P, line 3)"`` or ``""``.
Source = Callable[[str], str]


def in_override(key: str) -> str:
    return ""  # the message shows key=value as typed


def in_preset(preset: str, nodes: Any, key: str) -> str:
    line = line_of(nodes, key)
    return f" (in preset {preset}, line {line})" if line else f" (in preset {preset})"


def line_of(root: Any, key: str) -> int | None:
    """The line (1-based) of dotted ``key`` in a composed YAML mapping, if it is there."""
    node, line = root, None
    for part in key.split("[")[0].split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        for name, value in node.value:
            if getattr(name, "value", None) == part:
                node, line = value, name.start_mark.line + 1
                break
        else:
            break
    return line


def field_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Each leaf key's type hint by dotted name (``"train.epochs": int``), in field order."""
    found: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            found.update(field_types(hint, f"{prefix}{f.name}."))
        else:
            found[f"{prefix}{f.name}"] = hint
    return found


_SCALARS = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true or false"),
    str: ("a string", "strings"),
}


def type_phrase(hint: Any) -> str:
    """``int`` → "an integer", ``list[float]`` → "a list of numbers", ``X | None`` → "... or null"."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 1:
        return f"{type_phrase(args[0])} or null"
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_SCALARS.get(args[0], ('', 'values'))[1]}" if args else "a list"
    if origin is dict:
        value = args[1] if len(args) == 2 else Any
        return f"a mapping of names to {_SCALARS[value][1]}" if value in _SCALARS else "a mapping"
    return _SCALARS.get(hint, ("a value of the right type",))[0]


def _unknown_key(key: str, root: type, source: Source) -> ConfigError:
    hint = did_you_mean(key, list(field_types(root)))
    hint = f"{hint} List" if hint else "list"
    return ConfigError(
        f"config key {key!r}{source(key)} is unknown: {hint} every key with {LIST_KEYS}."
    )


def check_layer(tree: Any, root: type, source: Source) -> None:
    """Unknown keys, and values given to a whole section, of one layer (a preset or an override,
    as a plain container) over the ``root`` dataclass, before OmegaConf words them."""
    _check_section(tree, root, "", root, source)


def _check_section(tree: Any, cls: type, prefix: str, root: type, source: Source) -> None:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if key not in names:
            while isinstance(value, dict) and len(value) >= 1:  # name the key as typed: a.b.c
                key, value = next(iter(value.items()))
                name = f"{name}.{key}"
            raise _unknown_key(name, root, source)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                first = dataclasses.fields(hint)[0]
                raise ConfigError(
                    f"{name}={show(value)}{source(name)}: {name} is a section, not a value: set its keys, "
                    f"e.g. {name}.{first.name}=... (list them with {LIST_KEYS})."
                )
            _check_section(value, hint, f"{name}.", root, source)


def show(value: Any) -> str:
    """A value as the user wrote it (``null``, not ``None``)."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return "null" if value is None else repr(value)


def type_error(
    error: OmegaConfBaseException,
    layer: Any,
    source: Source,
    root: type,
    ranges: Mapping[str, tuple[Any, str]],
) -> ConfigError:
    """OmegaConf's conversion error as ``key=value is not <type>: allowed values are ...`` (the
    allowed values from ``ranges``, key → (check, allowed values))."""
    types_ = field_types(root)
    full = str(getattr(error, "full_key", "") or "")
    key = max((k for k in types_ if full == k or full.startswith((f"{k}.", f"{k}["))), key=len,
              default=None)  # fmt: skip
    if key is None:  # not one of ours (should not happen): still one line, still the source
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        return ConfigError(f"config{source(full)}: {text}.")
    value = OmegaConf.select(layer, key, default=None, throw_on_missing=False)
    expected = type_phrase(types_[key])
    allowed = f": allowed values are {ranges[key][1]}" if key in ranges else ""
    return ConfigError(f"{key}={show(value)}{source(key)} is not {expected}{allowed}.")
