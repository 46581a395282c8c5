"""The ``alpha_delta_t`` figure: accuracy (a language model's bits per character) over RigL's
drop fraction α × update interval ΔT, one panel per method × distribution × sparsity; a grid of
runs is a heat map, scattered trials (an Optuna search) are points over a filled contour. The best
setting is marked by the validation metric when every run holds it out, never by the test set,
and in the metric's direction (:mod:`~regrow.study.direction`: the lowest bits per character)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cells import aggregate
from ..direction import lower_is_better, ranked
from ..records import RunRecord, scores
from .common import (
    ALPHA,
    DELTA_T,
    DISTRIBUTION,
    METHOD,
    SPARSITY,
    WORDS,
    NoData,
    axis_label,
    cell_labels,
    extra_keys,
    finished,
    log_if_wide,
    pyplot_free_figure,
    seeds_note,
    subject,
)

#: RigL's default α and ΔT (Evci et al. 2020), marked on the α × ΔT figure.
REFERENCE = (0.3, 100.0)


def _is_grid(alphas: Sequence[Any], deltas: Sequence[Any], pairs: int) -> bool:
    """Whether (α, ΔT) pairs form a grid: at most 12 values of each, half the pairs present."""
    return len(alphas) <= 12 and len(deltas) <= 12 and pairs >= 0.5 * len(alphas) * len(deltas)


def _runs_and_metric(records: Sequence[RunRecord]) -> tuple[list[RunRecord], str]:
    """The finished runs with both α and ΔT, and the metric they are shown by (accuracy, or
    bits per character when the runs have them: :func:`~regrow.study.records.scores`);
    :class:`NoData` unless α and ΔT each take two values."""
    test, validation = scores(records)
    done = [
        r
        for r in finished(records, test)
        if r.value(ALPHA) is not None and r.value(DELTA_T) is not None
    ]
    # Runs that hold out a validation split (a search selects on it) are shown, and their best
    # marked, by the validation metric: choosing α and ΔT by the test set would be selecting on it.
    metric = validation if done and all(r.metric(validation) is not None for r in done) else test
    if not done:
        raise NoData(
            "no finished run has both α (sparsity.args.alpha) and ΔT (sparsity.args.delta_t)"
        )
    for key, symbol in ((ALPHA, "α"), (DELTA_T, "ΔT")):
        values = sorted({float(r.value(key)) for r in done})
        if len(values) < 2:
            raise NoData(f"{symbol} ({key}) takes one value ({values[0]:g}): no α × ΔT surface")
    return done, metric


def alpha_delta_t(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """One panel per method × distribution × sparsity (and other group-by keys): a heat map
    where the runs form a grid, else the trials over a contour; one colour scale for all."""
    done, metric = _runs_and_metric(records)
    extra = extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY, ALPHA, DELTA_T)
    panels = aggregate(done, [METHOD, DISTRIBUTION, SPARSITY, *extra], [metric])
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = pyplot_free_figure(4.6 * columns + 1.2, 3.9 * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False)
    accuracies = [r.metric(metric) or 0.0 for r in done]
    low, high = min(accuracies), max(accuracies)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    # The best end of the scale is bright whichever way the metric improves.
    colour_map = _colour_map("viridis_r" if lower_is_better(metric) else "viridis")
    image = None
    for index, (cell, label) in enumerate(zip(panels, cell_labels(panels), strict=True)):
        axes = grid[index // columns][index % columns]
        means = {
            (float(p.values[ALPHA]), float(p.values[DELTA_T])): p.stats[metric]
            for p in aggregate(cell.records, [ALPHA, DELTA_T], [metric])
        }
        alphas = sorted({a for a, _ in means})
        deltas = sorted({d for _, d in means})
        if len(alphas) > 1 and len(deltas) > 1 and _is_grid(alphas, deltas, len(means)):
            image = _heat_map(axes, means, (alphas, deltas), colour_map, (low, high), metric)
        else:
            image = _trials(axes, means, colour_map, low, high, metric)
        axes.set_xlabel("ΔT (steps between mask updates)")
        axes.set_ylabel("α (initial drop fraction)")
        axes.set_title(label, fontsize=9)
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=grid.ravel().tolist(), label=axis_label(metric), shrink=0.9)
    figure.suptitle(
        f"{WORDS[metric].capitalize()} over α × ΔT — {subject(done)}, {seeds_note(done)}\n"
        f"red: the best setting; dashed: the paper's α = {REFERENCE[0]:g}, ΔT = {REFERENCE[1]:g}",
        fontsize=10,
    )
    return figure


def _heat_map(
    axes: Any,
    means: dict[tuple[float, float], Any],
    ticks: tuple[list[float], list[float]],
    colour_map: Any,
    limits: tuple[float, float],
    metric: str,
) -> Any:
    """A panel whose runs form a grid (``ticks``: its α and ΔT values): a heat map (grey where
    no run finished), each cell annotated with its mean (± std over seeds), the best and the
    paper's setting framed."""
    (alphas, deltas), (low, high) = ticks, limits
    digits = 3 if metric.endswith("bpc") else 1
    matrix = np.full((len(alphas), len(deltas)), np.nan)
    for (a, d), stat in means.items():
        matrix[alphas.index(a), deltas.index(d)] = stat.mean
    image = axes.imshow(
        np.ma.masked_invalid(matrix),
        origin="lower",
        aspect="auto",
        cmap=colour_map,
        vmin=low,
        vmax=high,
    )
    size = 9 if len(alphas) * len(deltas) <= 30 else 7
    for (a, d), stat in means.items():
        shade = ((stat.mean or low) - low) / (high - low)
        if lower_is_better(metric):  # the colour map runs the other way: bright at the low end
            shade = 1.0 - shade
        text = f"{stat.mean:.{digits}f}" + (f"\n±{stat.std:.{digits}f}" if stat.n > 1 else "")
        axes.text(
            deltas.index(d),
            alphas.index(a),
            text,
            ha="center",
            va="center",
            fontsize=size,
            color="white" if shade < 0.6 else "black",
        )
    axes.set_xticks(range(len(deltas)), [f"{d:g}" for d in deltas])
    axes.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    cells = {(a, d): (deltas.index(d), alphas.index(a)) for a, d in means}
    _mark_best_and_reference(axes, means, cells, frames=True, metric=metric)
    return image


def _trials(
    axes: Any,
    means: dict[tuple[float, float], Any],
    colour_map: Any,
    low: float,
    high: float,
    metric: str,
) -> Any:
    """A panel of scattered trials (an Optuna search): points coloured by the metric over a
    filled contour of them, ΔT on a log axis when wide, the best and the paper's setting ringed."""
    xs = [d for _, d in means]
    ys = [a for a, _ in means]
    zs = [s.mean for s in means.values()]
    log_if_wide(axes.set_xscale, xs, ratio=5.0)
    if axes.get_xscale() == "log":
        _plain_step_ticks(axes, xs)
    _contour(axes, xs, ys, zs, colour_map, low, high)
    image = axes.scatter(
        xs,
        ys,
        c=zs,
        cmap=colour_map,
        vmin=low,
        vmax=high,
        s=36,
        edgecolors="black",
        linewidths=0.5,
        zorder=3,
    )
    _pad_limits(axes, xs, ys)
    points = {(a, d): (d, a) for a, d in means}
    _mark_best_and_reference(axes, means, points, frames=False, metric=metric)
    axes.grid(alpha=0.3)
    return image


def _plain_step_ticks(axes: Any, xs: Sequence[float]) -> None:
    """Ticks of a log ΔT axis as plain step counts (``200``, not ``2×10²``)."""
    from matplotlib.ticker import NullFormatter

    steps = [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if min(xs) <= t <= max(xs)]
    axes.set_xticks(steps, [f"{t:g}" for t in steps])
    axes.xaxis.set_minor_formatter(NullFormatter())


def _mark_best_and_reference(
    axes: Any,
    means: dict[tuple[float, float], Any],
    at: dict[tuple[float, float], tuple[float, float]],
    frames: bool,
    metric: str,
) -> None:
    """Outline the best (α, ΔT) in red (the lowest mean of a lower-is-better ``metric``, else
    the highest) and the paper's default dashed: a cell's frame on a heat map, a ring around a
    trial's point on a scatter."""
    from matplotlib.patches import Rectangle

    best = ranked(means, metric, lambda key: means[key].mean)[0]
    marks = [(best, "red", "-")]
    if REFERENCE in means and best != REFERENCE:
        marks.append((REFERENCE, "black", "--"))
    for (alpha, delta_t), colour, style in marks:
        x, y = at[(alpha, delta_t)]
        if frames:
            frame = Rectangle(
                (x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=colour, linestyle=style, lw=2
            )
            axes.add_patch(frame)
        else:
            axes.scatter([x], [y], s=170, facecolors="none", edgecolors=colour,
                         linestyles=style, linewidths=1.8, zorder=4)  # fmt: skip


def _pad_limits(axes: Any, xs: Sequence[float], ys: Sequence[float], pad: float = 0.05) -> None:
    """Axis limits a little beyond the points (in log units on a log axis), so that no marker
    is cut in half by the frame (a filled contour would otherwise fit the limits to the points)."""
    if axes.get_xscale() == "log":
        low, high = math.log10(min(xs)), math.log10(max(xs))
        span = (high - low) or 1.0
        axes.set_xlim(10 ** (low - pad * span), 10 ** (high + pad * span))
    else:
        span = (max(xs) - min(xs)) or 1.0
        axes.set_xlim(min(xs) - pad * span, max(xs) + pad * span)
    span = (max(ys) - min(ys)) or 1.0
    axes.set_ylim(min(ys) - pad * span, max(ys) + pad * span)


def _colour_map(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#dddddd")  # grid cells without a finished run


def _contour(
    axes: Any,
    xs: list[float],
    ys: list[float],
    zs: list[float | None],
    colour_map: Any,
    low: float,
    high: float,
) -> None:
    """A filled contour under scattered points, when there are enough to triangulate: 8 points
    and 3 distinct values on each axis. The triangulation is made in axis units scaled to [0, 1]
    (ΔT in log units when the axis is logarithmic) so that ΔT's range does not flatten it."""
    from matplotlib.tri import Triangulation

    if len(xs) < 8 or len(set(xs)) < 3 or len(set(ys)) < 3 or any(z is None for z in zs):
        return
    u = np.log10(xs) if axes.get_xscale() == "log" else np.asarray(xs, dtype=float)
    v = np.asarray(ys, dtype=float)
    u = (u - u.min()) / (np.ptp(u) or 1.0)
    v = (v - v.min()) / (np.ptp(v) or 1.0)
    try:
        triangles = Triangulation(u, v).triangles
        mesh = Triangulation(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), triangles)
        axes.tricontourf(
            mesh,
            np.asarray(zs, dtype=float),
            levels=12,
            cmap=colour_map,
            vmin=low,
            vmax=high,
            alpha=0.55,
            zorder=1,
        )
    except (RuntimeError, ValueError):  # collinear points: the scatter alone
        return
