"""The registry of methods: every registered sparsifier class by its lower-case name, in
registration order (the order every help text, table and figure lists methods in)."""

from __future__ import annotations

from typing import Any, TypeVar

#: A registered class: a ``regrow.sparsity.base.Sparsifier`` subclass (not imported here, so the
#: modules the base class is built from can read the registry without a cycle).
Method = Any
T = TypeVar("T", bound=type)

#: Every registered method, by lower-case name. Filled by :func:`register`.
METHODS: dict[str, Method] = {}


def register(cls: T) -> T:
    """Class decorator adding a method to :data:`METHODS` under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered.")
    METHODS[name] = cls
    return cls


def sparse_start_methods() -> list[str]:
    """Registered methods that start from sparse masks (so can start from another run's)."""
    return [n for n, c in METHODS.items() if c.traits.masked and not c.traits.starts_dense]


def unmasked_methods() -> list[str]:
    """Registered methods that train without masks (the dense baselines)."""
    return [n for n, c in METHODS.items() if not c.traits.masked]
