"""The figures of ``regrow report``: :func:`draw` writes one of
:data:`~regrow.study.names.FIGURE_KINDS` from run records as a PNG (matplotlib's Agg backend) and
returns the figure; :class:`NoData` says why the records cannot make it. Every kind has its
drawing function in :data:`DRAW`. What each kind shows is in ``docs/REPORT.md``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..names import FIGURE_KINDS
from ..records import ReportError, RunRecord, varying_keys
from .accuracy import (
    accuracy_by_cell,
    accuracy_vs_sparsity,
    accuracy_vs_train_flops,
    bpc_vs_sparsity,
    erk_vs_uniform,
)
from .alpha_delta_t import alpha_delta_t
from .common import NoData, save_png
from .training import layer_density, learning_curves

__all__ = ["DRAW", "NoData", "draw"]

#: The drawing function of each figure kind: ``(records, group_by, runs=...) -> Figure``.
DRAW: dict[str, Callable[..., Any]] = {
    "accuracy_by_cell": accuracy_by_cell,
    "accuracy_vs_sparsity": accuracy_vs_sparsity,
    "alpha_delta_t": alpha_delta_t,
    "accuracy_vs_train_flops": accuracy_vs_train_flops,
    "bpc_vs_sparsity": bpc_vs_sparsity,
    "erk_vs_uniform": erk_vs_uniform,
    "layer_density": layer_density,
    "learning_curves": learning_curves,
}
assert set(DRAW) == set(FIGURE_KINDS), "every figure kind has a drawing function"


def draw(
    kind: str,
    records: Sequence[RunRecord],
    path: str | Path,
    *,
    group_by: Sequence[str] | None = None,
    runs: Sequence[str] | None = None,
) -> Any:
    """Draw figure ``kind`` from ``records`` and write it to ``path`` as a PNG; return the
    :class:`~matplotlib.figure.Figure`. ``group_by`` splits lines and panels further (default:
    the keys that vary, :func:`~regrow.study.records.varying_keys`); ``runs`` says the records
    were chosen by name (``layer_density`` and ``learning_curves`` then show each of them rather
    than the first run of each cell). Raises :class:`NoData` (why) when the records cannot make
    this figure, :class:`~regrow.study.records.ReportError` for an unknown kind."""
    if kind not in DRAW:
        raise ReportError(f"unknown figure {kind!r}; figures: {', '.join(FIGURE_KINDS)}")
    if not records:
        raise NoData("no runs")
    keys = list(group_by) if group_by is not None else varying_keys(records)
    figure = DRAW[kind](records, keys, runs=runs)
    save_png(figure, Path(path))
    return figure
