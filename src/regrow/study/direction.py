"""Which way a metric improves: the one table the report, its figures and the Optuna search read
before they pick a "best", rank, or set a search's direction.

- **higher is better**: accuracies (``test_accuracy``, ``val_accuracy``, ``train_accuracy``, any
  ``*_accuracy``);
- **lower is better**: bits per character (``test_bpc``, ``val_bpc``, any ``*_bpc``), losses
  (``*_loss``), perplexities (``*_perplexity``) and time (``wall_seconds``, any ``*_seconds``);
- **neither**: everything else, such as ``sparsity``, ``density``, ``model_width`` and the FLOP
  ratios (``inference_flops_ratio``, ``train_flops_ratio``): they are what a study sets or pays,
  the axis of a trade-off rather than a score, so nothing is ranked by them and a search on one
  must say its direction itself.

Exact names in :data:`EXACT` come first, then the suffixes of :data:`SUFFIXES` in order. The manual
is ``docs/REPORT.md`` (section *Lower-is-better metrics*).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = [
    "EXACT",
    "HIGHER",
    "LOWER",
    "SUFFIXES",
    "direction",
    "lower_is_better",
    "optuna_direction",
    "ranked",
]

T = TypeVar("T")

HIGHER = "higher"  #: a larger value is better (accuracy)
LOWER = "lower"  #: a smaller value is better (bits per character, loss, seconds)

#: Metrics whose direction is given by name (before :data:`SUFFIXES`); ``None``: neither.
EXACT: dict[str, str | None] = {
    "accuracy": HIGHER,
    "bpc": LOWER,
    "loss": LOWER,
    "perplexity": LOWER,
    "seconds": LOWER,
    "sparsity": None,
    "target_sparsity": None,
    "density": None,
}
#: Name endings and their direction, the first that matches wins.
SUFFIXES: tuple[tuple[str, str], ...] = (
    ("_accuracy", HIGHER),
    ("_bpc", LOWER),
    ("_loss", LOWER),
    ("_perplexity", LOWER),
    ("_seconds", LOWER),
)


def direction(metric: str) -> str | None:
    """:data:`HIGHER`, :data:`LOWER`, or ``None`` when neither is better (a setting or a cost
    such as ``sparsity`` or ``train_flops_ratio``, or a name this table does not know)."""
    if metric in EXACT:
        return EXACT[metric]
    for suffix, way in SUFFIXES:
        if metric.endswith(suffix):
            return way
    return None


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (``test_bpc``, ``val_loss``, ...)."""
    return direction(metric) == LOWER


def optuna_direction(metric: str) -> str | None:
    """Optuna's ``direction`` for a search on ``metric``: ``"maximize"``, ``"minimize"``, or
    ``None`` when the table does not say (the study file must)."""
    way = direction(metric)
    return None if way is None else ("maximize" if way == HIGHER else "minimize")


def ranked(items: Iterable[T], metric: str, value: Callable[[T], float | None]) -> list[T]:
    """``items`` best first by ``value``: the lowest first when ``metric`` is lower-is-better,
    else the highest (a metric with no direction ranks as the report always ranked accuracy);
    those without a value last, ties in their order."""
    listed = list(items)
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(item: T) -> tuple[bool, float]:
        number = value(item)
        return (number is None, 0.0 if number is None else sign * number)

    return sorted(listed, key=key)
