"""A method's own hyper-parameters as a typed dataclass (one per method, beside its class).

Each field is declared with :func:`arg`: a default, a one-line description and, where the type does
not say enough, a range or a set of names. :meth:`MethodArgs.from_mapping` builds the dataclass from
keyword arguments or a config's ``sparsity.args`` and raises one ``ValueError`` that names the key,
the allowed values, and, for an unknown key, the method's own arguments.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: A value check: (predicate, the allowed values in words).
Check = tuple[Callable[[Any], bool], str]


def arg(
    default: Any,
    help: str,
    check: Check | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A method argument: its default, what it means, and what values are allowed."""
    return field(default=default, metadata={"help": help, "check": check, "choices": choices})


def at_least(low: int) -> Check:
    return (lambda v: v >= low, f"an integer >= {low}")


def in_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    def ok(value: float) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below and not math.isnan(value)

    text = f"{low} {'<' if low_open else '<='} {{name}} {'<' if high_open else '<='} {high}"
    return ok, text


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """The runtime types a field annotation admits (``int | None`` → ``(int, NoneType)``)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for part in typing.get_args(annotation) for t in _allowed_types(part))
    if annotation is None or annotation is type(None):
        return (type(None),)
    return (origin or annotation,)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    allowed = _allowed_types(annotation)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool) and bool not in allowed:
        pass  # a bool is not a number here: fall through to the error
    elif float in allowed and isinstance(value, int | float):
        return float(value)
    elif (int in allowed and isinstance(value, int)) or (
        int in allowed and isinstance(value, float) and value.is_integer()
    ):
        return int(value)
    elif any(t in allowed for t in (str, bool)) and isinstance(value, tuple(allowed)):
        return value
    names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
    raise ValueError(f"{key}={value!r} has the wrong type: allowed is {names}.")


@dataclass(frozen=True)
class MethodArgs:
    """Base of every method's argument dataclass; a method without arguments uses it as is."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            object.__setattr__(self, f.name, value)
            check, choices = f.metadata.get("check"), f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ValueError(
                    f"{f.name}={value!r} is unknown: allowed values are "
                    f"{', '.join(map(repr, choices))}."
                )
            if check is not None and value is not None and not check[0](value):
                raise ValueError(
                    f"{f.name}={value!r} is out of range: allowed values are "
                    f"{check[1].format(name=f.name)}."
                )
        self.check()

    def check(self) -> None:
        """Checks between fields (override); single-field checks belong in :func:`arg`."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def describe(cls) -> dict[str, str]:
        """Each argument's one-line description with its default."""
        return {
            f.name: f"{f.metadata.get('help', '')} (default {f.default!r})"
            for f in dataclasses.fields(cls)
        }

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any] | None, method: str = "this method"
    ) -> MethodArgs:
        """The arguments from ``values``; ``ValueError`` for a key ``method`` does not have."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            own = ", ".join(cls.names()) or "none"
            raise ValueError(
                f"method {method} has no argument {', '.join(map(repr, unknown))}: its "
                f"arguments are {own}."
            )
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
