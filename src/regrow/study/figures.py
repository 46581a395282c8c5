"""The figures of ``regrow report`` (:data:`~regrow.study.names.FIGURE_KINDS`), drawn from run
records (:class:`~regrow.study.report.RunRecord`) with matplotlib's Agg backend.

:func:`draw` writes one kind as a PNG (atomically, so a reader never sees half a file) and
returns the :class:`matplotlib.figure.Figure`, which a caller (a test) can inspect: its axes, lines
and collections. A study without the data a kind needs (no α sweep for ``alpha_delta_t``, no ×M
runs for ``accuracy_vs_train_flops``, ...) raises :class:`NoData`, whose message says why; the
report turns it into a one-line note instead of a figure.

What each kind shows (every point a mean over the seeds of its configuration; std as a band or
error bar):

``accuracy_vs_sparsity``
    test accuracy against the configured sparsity, one line per method × distribution (colour by
    method, line style by distribution), Dense as a horizontal reference with its std band.
``alpha_delta_t``
    test accuracy over the drop fraction α × the update interval ΔT, one panel per method ×
    distribution × sparsity. A grid (at most 12 values of each, half the combinations present) is
    a heat map with each cell annotated; scattered trials (an Optuna search) are points coloured
    by accuracy over a filled contour of them when there are enough (8 points, 3 values of each).
``accuracy_vs_train_flops``
    test accuracy against training FLOPs (× dense 1× training) of runs ×M, one line per method
    connecting its multipliers, each point annotated ×M.
``erk_vs_uniform``
    test accuracy against inference FLOPs (× dense) of the ERK and uniform runs of each method
    that has both, so that equal-FLOP pairs sit at the same x; each point annotated with its
    sparsity.
``layer_density``
    each sparse layer's density against the optimizer step, from the mask-update rows of
    ``metrics.jsonl``, one panel per run (the runs given, or the first run of each cell); up to
    10 layers by a legend, more by colour along depth with a colour bar.
``learning_curves``
    train loss and test accuracy against epoch, one line per run (the runs given, or the first of
    each cell).

Titles name the dataset and model; legends sit outside the axes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..train.checkpoint import atomic_write
from .names import FIGURE_KINDS
from .report import (
    Cell,
    ReportError,
    RunRecord,
    aggregate,
    fmt_value,
    short,
    varying_keys,
)

#: Figures drawn with no more than this many panels (layer density) or lines (learning curves).
MAX_PANELS, MAX_CURVES = 6, 12
#: Lines of a line figure at most (the best by mean accuracy); points annotated at most.
MAX_SERIES, MAX_ANNOTATED = 14, 12
#: Layers shown by a legend; more are coloured by depth with a colour bar.
MAX_LEGEND_LAYERS = 10

METHOD = "sparsity.method"
DISTRIBUTION = "sparsity.distribution"
SPARSITY = "sparsity.sparsity"
MULTIPLIER = "train.multiplier"
ALPHA = "sparsity.args.alpha"
DELTA_T = "sparsity.args.delta_t"
ACCURACY = "test_accuracy"
VALIDATION = "val_accuracy"
WORDS = {ACCURACY: "test accuracy", VALIDATION: "validation accuracy"}
#: Summary names of configuration keys (a group-by key either way means the same thing).
ALIASES = {
    METHOD: "method",
    DISTRIBUTION: "distribution",
    SPARSITY: "target_sparsity",
    MULTIPLIER: "multiplier",
    "model.width": "model_width",
    "model.name": "model",
    "data.name": "dataset",
}
#: Line style and marker of each distribution.
DISTRIBUTION_STYLE = {"erk": ("-", "o"), "er": ("-.", "^"), "uniform": ("--", "s")}


class NoData(Exception):
    """The records hold no data for a figure; the message says what is missing."""


# ---------------------------------------------------------------------------------- helpers
def _pyplot_free_figure(width: float, height: float) -> Any:
    """A figure outside pyplot's global state (nothing to close, safe in a library)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save(figure: Any, path: Path) -> None:
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _subject(records: Sequence[RunRecord]) -> str:
    """The datasets and models of ``records`` (``digits, digits_mlp``) for a title."""
    datasets = dict.fromkeys(str(r.value("data.name") or r.value("dataset")) for r in records)
    models = dict.fromkeys(str(r.value("model.name") or r.value("model")) for r in records)
    return f"{' + '.join(datasets)}, {' + '.join(models)}"


def _seeds_note(records: Sequence[RunRecord]) -> str:
    seeds = {r.seed for r in records}
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"


def _finished(records: Sequence[RunRecord], *metrics: str) -> list[RunRecord]:
    return [r for r in records if r.done and all(r.metric(m) is not None for m in metrics)]


def _extra_keys(group_by: Sequence[str], *drop: str) -> list[str]:
    """Group-by keys other than ``drop`` (and their summary aliases): what splits series further."""
    dropped = set(drop) | {ALIASES.get(k, k) for k in drop}
    return [k for k in group_by if k not in dropped and ALIASES.get(k, k) not in dropped]


def _is_label(key: str) -> bool:
    """A study's own label (``tag``, ``tag.<name>``): shown as its value alone."""
    return key == "tag" or key.startswith("tag.")


def _labels(cells: Sequence[Cell]) -> list[str]:
    """A label per cell: the method and the distribution as words, then ``key=value`` for each
    other key only where it tells cells apart that the keys before it do not (a ΔT that every
    RigL run shares is not repeated)."""
    if not cells:
        return []
    keys = [k for k, _ in cells[0].group]
    shown = [k for k in keys if k in (METHOD, DISTRIBUTION)]
    for key in keys:
        if key in shown:
            continue
        seen: dict[tuple[str, ...], set[str]] = {}
        for cell in cells:
            prefix = tuple(fmt_value(cell.values[k]) for k in shown)
            seen.setdefault(prefix, set()).add(fmt_value(cell.values[key]))
        if any(len(values) > 1 for values in seen.values()):
            shown.append(key)
    labels = []
    for cell in cells:
        values = cell.values
        dense = values.get(METHOD) in ("dense", "small_dense")  # no distribution to name
        parts = [
            fmt_value(values[k])
            if k in (METHOD, DISTRIBUTION) or _is_label(k)
            else f"{short(k)}={fmt_value(values[k])}"
            for k in shown
            if not (dense and k == DISTRIBUTION)
        ]
        labels.append(", ".join(parts) or "all runs")
    return labels


def _line_series(
    records: Sequence[RunRecord], keys: Sequence[str]
) -> tuple[list[Cell], list[str], list[Any], str]:
    """The series of a line figure (one per value of ``keys``) with a label and a colour each,
    and a note for the title. Colour is by method unless several series share a method and a
    distribution (an extra key splits them), then by series. More than :data:`MAX_SERIES` are cut
    to those with the highest mean accuracy (the note says so), so the legend stays readable."""
    from matplotlib import colormaps

    series = aggregate(records, keys, [ACCURACY])
    labels = _labels(series)
    note = ""
    if len(series) > MAX_SERIES:
        ranked = sorted(range(len(series)), key=lambda i: -(series[i].stats[ACCURACY].mean or 0))
        keep = sorted(ranked[:MAX_SERIES])
        note = f"; the {MAX_SERIES} of {len(series)} configurations with the best mean accuracy"
        series, labels = [series[i] for i in keep], [labels[i] for i in keep]
    pairs = [(c.values[METHOD], c.values[DISTRIBUTION]) for c in series]
    if len(set(pairs)) < len(pairs):
        palette = colormaps["tab10" if len(series) <= 10 else "tab20"].colors
        colours = [palette[i % len(palette)] for i in range(len(series))]
    else:
        by_method = _method_colours(records)
        colours = [by_method[str(c.values[METHOD])] for c in series]
    return series, labels, colours, note


def _method_colours(records: Sequence[RunRecord]) -> dict[str, Any]:
    from matplotlib import colormaps

    from .report import METHOD_ORDER

    methods = sorted(
        {str(r.value(METHOD)) for r in records},
        key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m),
    )
    palette = colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def _points(
    cell: Cell, x_key: str, x_metric: str | None = None
) -> list[tuple[float, float, float, Any]]:
    """(x, accuracy mean, std, x value) per value of ``x_key`` in ``cell``, by x; x is the mean
    of summary ``x_metric`` if given, else the key's value."""
    points = []
    for point in aggregate(cell.records, [x_key], [ACCURACY, *([x_metric] if x_metric else [])]):
        accuracy = point.stats[ACCURACY]
        value = point.values[x_key]
        x = point.stats[x_metric].mean if x_metric else value
        if accuracy.mean is None or x is None or not isinstance(x, int | float):
            continue
        points.append((float(x), accuracy.mean, accuracy.std or 0.0, value))
    return sorted(points, key=lambda p: p[0])


def _log_if_wide(
    axis_scale: Callable[[str], Any], values: Sequence[float], ratio: float = 8.0
) -> None:
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > ratio:
        axis_scale("log")


def _legend_outside(axes: Any, title: str | None = None) -> None:
    handles, _ = axes.get_legend_handles_labels()
    if handles:
        axes.legend(
            loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title=title, frameon=False
        )


# ---------------------------------------------------------------------------------- figures
def _accuracy_vs_sparsity(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    done = _finished(records, ACCURACY)
    sparse = [r for r in done if r.value(METHOD) != "dense"]
    if not sparse:
        raise NoData("no finished sparse run has a test accuracy")
    sparsities = sorted({float(r.value(SPARSITY)) for r in sparse if r.value(SPARSITY) is not None})
    if len(sparsities) < 2:
        shown = ", ".join(f"{s:g}" for s in sparsities) or "none"
        raise NoData(f"sparsity.sparsity takes one value ({shown}): nothing to draw it against")
    extra = _extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY)
    series, labels, colours, note = _line_series(sparse, [METHOD, DISTRIBUTION, *extra])
    figure = _pyplot_free_figure(7.5, 4.5)
    axes = figure.add_subplot()
    for cell, label, colour in zip(series, labels, colours, strict=True):
        points = _points(cell, SPARSITY)
        xs, means, stds = ([p[i] for p in points] for i in range(3))
        style, marker = DISTRIBUTION_STYLE.get(str(cell.values[DISTRIBUTION]), (":", "D"))
        axes.plot(xs, means, linestyle=style, marker=marker, color=colour, label=label)
        axes.fill_between(
            xs,
            [m - s for m, s in zip(means, stds, strict=True)],
            [m + s for m, s in zip(means, stds, strict=True)],
            color=colour,
            alpha=0.15,
            linewidth=0,
        )
    dense = aggregate([r for r in done if r.value(METHOD) == "dense"], extra, [ACCURACY])
    for cell, label in zip(
        dense, _labels(dense) if len(dense) > 1 else [""] * len(dense), strict=True
    ):
        stat = cell.stats[ACCURACY]
        if stat.mean is None:
            continue
        name = f"dense{', ' + label if label else ''} ({stat.mean:.2f} %)"
        axes.axhline(stat.mean, color="black", linestyle=":", linewidth=1.2, label=name)
        axes.axhspan(
            stat.mean - (stat.std or 0), stat.mean + (stat.std or 0), color="grey", alpha=0.15
        )
    if min(sparsities) > 0 and max(sparsities) < 1 and max(sparsities) >= 0.9:
        axes.set_xscale("logit")  # 0.5 … 0.99 spread evenly, as 1 − sparsity shrinks tenfold
        axes.minorticks_off()
    axes.set_xticks(sparsities, [f"{s:g}" for s in sparsities])
    axes.set_xlabel("sparsity (fraction of weights that are zero)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(
        f"Test accuracy vs sparsity — {_subject(done)}\n{_seeds_note(done)}{note}", fontsize=10
    )
    axes.grid(alpha=0.3)
    _legend_outside(axes, "method, distribution")
    return figure


def _is_grid(alphas: Sequence[Any], deltas: Sequence[Any], pairs: int) -> bool:
    return len(alphas) <= 12 and len(deltas) <= 12 and pairs >= 0.5 * len(alphas) * len(deltas)


def _alpha_delta_t(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    import numpy as np

    done = [
        r
        for r in _finished(records, ACCURACY)
        if r.value(ALPHA) is not None and r.value(DELTA_T) is not None
    ]
    # Runs that hold out a validation split (a search selects on it) are shown, and their best
    # marked, by validation accuracy: choosing α and ΔT by the test set would be selecting on it.
    metric = (
        VALIDATION if done and all(r.metric(VALIDATION) is not None for r in done) else ACCURACY
    )
    if not done:
        raise NoData(
            "no finished run has both α (sparsity.args.alpha) and ΔT (sparsity.args.delta_t)"
        )
    for key, symbol in ((ALPHA, "α"), (DELTA_T, "ΔT")):
        values = sorted({float(r.value(key)) for r in done})
        if len(values) < 2:
            raise NoData(f"{symbol} ({key}) takes one value ({values[0]:g}): no α × ΔT surface")
    extra = _extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY, ALPHA, DELTA_T)
    panels = aggregate(done, [METHOD, DISTRIBUTION, SPARSITY, *extra], [metric])
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = _pyplot_free_figure(4.6 * columns + 1.2, 3.9 * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False)
    accuracies = [r.metric(metric) or 0.0 for r in done]
    low, high = min(accuracies), max(accuracies)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    colour_map = _colour_map("viridis")
    image = None
    for index, (cell, label) in enumerate(zip(panels, _labels(panels), strict=True)):
        axes = grid[index // columns][index % columns]
        means = {
            (float(p.values[ALPHA]), float(p.values[DELTA_T])): p.stats[metric]
            for p in aggregate(cell.records, [ALPHA, DELTA_T], [metric])
        }
        alphas = sorted({a for a, _ in means})
        deltas = sorted({d for _, d in means})
        if len(alphas) > 1 and len(deltas) > 1 and _is_grid(alphas, deltas, len(means)):
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
                text = f"{stat.mean:.1f}" + (f"\n±{stat.std:.1f}" if stat.n > 1 else "")
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
            _mark_best_and_reference(axes, means, cells, frames=True)
        else:
            xs = [d for _, d in means]
            ys = [a for a, _ in means]
            zs = [s.mean for s in means.values()]
            _log_if_wide(axes.set_xscale, xs, ratio=5.0)
            if axes.get_xscale() == "log":  # plain step counts, not 2×10²
                from matplotlib.ticker import NullFormatter

                steps = [
                    t
                    for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                    if min(xs) <= t <= max(xs)
                ]
                axes.set_xticks(steps, [f"{t:g}" for t in steps])
                axes.xaxis.set_minor_formatter(NullFormatter())
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
            _mark_best_and_reference(axes, means, points, frames=False)
            axes.grid(alpha=0.3)
        axes.set_xlabel("ΔT (steps between mask updates)")
        axes.set_ylabel("α (initial drop fraction)")
        axes.set_title(label, fontsize=9)
    for index in range(len(panels), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if image is not None:
        figure.colorbar(image, ax=grid.ravel().tolist(), label=f"{WORDS[metric]} (%)", shrink=0.9)
    figure.suptitle(
        f"{WORDS[metric].capitalize()} over α × ΔT — {_subject(done)}, {_seeds_note(done)}\n"
        f"red: the best setting; dashed: the paper's α = {REFERENCE[0]:g}, ΔT = {REFERENCE[1]:g}",
        fontsize=10,
    )
    return figure


#: RigL's default α and ΔT (Evci et al. 2020), marked on the α × ΔT figure.
REFERENCE = (0.3, 100.0)


def _mark_best_and_reference(
    axes: Any,
    means: dict[tuple[float, float], Any],
    at: dict[tuple[float, float], tuple[float, float]],
    frames: bool,
) -> None:
    """Outline the best (α, ΔT) in red and the paper's default dashed: a cell's frame on a heat
    map, a ring around a trial's point on a scatter."""
    from matplotlib.patches import Rectangle

    best = max(means, key=lambda key: means[key].mean or float("-inf"))
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
    import numpy as np
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


def _finish_flops_axes(
    axes: Any, xs: Sequence[float], xlabel: str, title: str, done: Sequence[RunRecord], note: str
) -> None:
    """Axes of accuracy against a FLOP ratio: log x when wide, labels, the title with the seeds
    note, a grid and the legend outside."""
    _log_if_wide(axes.set_xscale, xs)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{title}\n{_seeds_note(done)}{note}", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    _legend_outside(axes, "method, distribution")


def _accuracy_vs_train_flops(
    records: Sequence[RunRecord], group_by: Sequence[str], **_: Any
) -> Any:
    done = [
        r
        for r in _finished(records, ACCURACY, "train_flops_ratio")
        if r.value(MULTIPLIER) is not None
    ]
    multipliers = sorted({float(r.value(MULTIPLIER)) for r in done})
    if len(multipliers) < 2:
        shown = ", ".join(f"{m:g}" for m in multipliers) or "none"
        raise NoData(f"train.multiplier takes one value ({shown}): no ×M runs to compare")
    extra = _extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY, MULTIPLIER)
    series, labels, colours, note = _line_series(done, [METHOD, DISTRIBUTION, SPARSITY, *extra])
    figure = _pyplot_free_figure(7.5, 4.5)
    axes = figure.add_subplot()
    all_x = []
    for cell, label, colour in zip(series, labels, colours, strict=True):
        points = _points(cell, MULTIPLIER, "train_flops_ratio")
        xs, means, stds = ([p[i] for p in points] for i in range(3))
        all_x += xs
        style, marker = DISTRIBUTION_STYLE.get(str(cell.values[DISTRIBUTION]), (":", "D"))
        if cell.values[METHOD] in ("dense", "small_dense"):
            style = ":"
        axes.errorbar(
            xs,
            means,
            yerr=stds,
            linestyle=style,
            marker=marker,
            capsize=3,
            color=colour,
            label=label,
        )
        for x, mean, _, multiplier in points:
            axes.annotate(
                f"×{multiplier:g}", (x, mean), textcoords="offset points", xytext=(5, 5), fontsize=8
            )
    title = f"Test accuracy vs training FLOPs (×M runs) — {_subject(done)}"
    _finish_flops_axes(axes, all_x, "training FLOPs (× dense 1× training)", title, done, note)
    return figure


def _erk_vs_uniform(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    done = [
        r
        for r in _finished(records, ACCURACY, "inference_flops_ratio")
        if r.value(DISTRIBUTION) in ("erk", "uniform")
        and r.value(METHOD) not in ("dense", "small_dense")
    ]
    both = {
        m
        for m in {r.value(METHOD) for r in done}
        if {r.value(DISTRIBUTION) for r in done if r.value(METHOD) == m} == {"erk", "uniform"}
    }
    if not both:
        raise NoData("no sparse method has finished runs with both ERK and uniform distributions")
    done = [r for r in done if r.value(METHOD) in both]
    extra = _extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY)
    series, labels, colours, note = _line_series(done, [METHOD, DISTRIBUTION, *extra])
    lines = [_points(cell, SPARSITY, "inference_flops_ratio") for cell in series]
    # Sparsity labels on every point while few; else on the last method's only (drawn on top).
    last = series[-1].values[METHOD]
    crowded = sum(map(len, lines)) > MAX_ANNOTATED
    figure = _pyplot_free_figure(7.5, 4.5)
    axes = figure.add_subplot()
    all_x = []
    for cell, label, colour, points in zip(series, labels, colours, lines, strict=True):
        xs, means, stds = ([p[i] for p in points] for i in range(3))
        all_x += xs
        style, marker = DISTRIBUTION_STYLE[str(cell.values[DISTRIBUTION])]
        axes.errorbar(
            xs,
            means,
            yerr=stds,
            linestyle=style,
            marker=marker,
            capsize=3,
            color=colour,
            label=label,
        )
        for x, mean, _, sparsity in points if not crowded or cell.values[METHOD] == last else []:
            axes.annotate(
                f"s={sparsity:g}",
                (x, mean),
                textcoords="offset points",
                xytext=(5, -11 if cell.values[DISTRIBUTION] == "uniform" else 5),
                fontsize=7,
                color="dimgrey",
            )
    title = f"ERK vs uniform at equal inference FLOPs — {_subject(done)}"
    _finish_flops_axes(axes, all_x, "inference FLOPs (× dense)", title, done, note)
    return figure


def _chosen(
    records: Sequence[RunRecord],
    group_by: Sequence[str],
    runs: Sequence[str] | None,
    has: Callable[[RunRecord], bool],
) -> tuple[list[RunRecord], list[str]]:
    """The runs a per-run figure shows, with a label each: the runs named (``runs`` given:
    ``records`` are those), else the first run (lowest seed, finished first) of each cell that
    ``has`` the rows it needs."""
    if runs:
        chosen = [r for r in records if has(r)]
        return chosen, [r.name for r in chosen]
    chosen, labels = [], []
    cells = aggregate(records, group_by, [])
    for cell, label in zip(cells, _labels(cells), strict=True):
        ordered = sorted(
            cell.records, key=lambda r: (not r.done, r.seed if r.seed is not None else 0)
        )
        first = next((r for r in ordered if has(r)), None)
        if first is not None:
            chosen.append(first)
            labels.append(f"{label} (seed {first.seed})" if len(cells) > 1 else first.name)
    return chosen, labels


def _spread(
    chosen: list[RunRecord], labels: list[str], limit: int
) -> tuple[list[RunRecord], list[str], str]:
    """At most ``limit`` of the chosen runs, taken in turn from each method so that a long study
    shows every method rather than only its first cells (kept in their order); and a note."""
    if len(chosen) <= limit:
        return chosen, labels, ""
    by_method: dict[str, list[int]] = {}
    for index, record in enumerate(chosen):
        by_method.setdefault(str(record.value(METHOD)), []).append(index)
    order = [
        i for turn in itertools.zip_longest(*by_method.values()) for i in turn if i is not None
    ]
    keep = sorted(order[:limit])
    note = f" ({limit} of {len(chosen)} runs, spread over the methods)"
    return [chosen[i] for i in keep], [labels[i] for i in keep], note


def _layer_density(
    records: Sequence[RunRecord],
    group_by: Sequence[str],
    runs: Sequence[str] | None = None,
    **_: Any,
) -> Any:
    def has(record: RunRecord) -> bool:
        return any(isinstance(r.get("layer_density"), dict) for r in record.mask_update_rows())

    chosen, labels = _chosen(records, group_by, runs, has)
    if not chosen:
        raise NoData('no run has mask-update rows (metrics.jsonl rows with "event": "mask_update")')
    chosen, labels, note = _spread(chosen, labels, MAX_PANELS)
    layers: list[str] = []
    for record in chosen:
        for row in record.mask_update_rows():
            layers += [name for name in row.get("layer_density") or {} if name not in layers]
    columns = min(2, len(chosen))
    rows = math.ceil(len(chosen) / columns)
    by_depth = len(layers) > MAX_LEGEND_LAYERS
    figure = _pyplot_free_figure(5.2 * columns + (1.6 if by_depth else 2.6), 3.4 * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if by_depth:
        colour_map = colormaps["viridis"]
        colours = [colour_map(i / max(1, len(layers) - 1)) for i in range(len(layers))]
    else:
        palette = colormaps["tab10"].colors
        colours = [palette[i % len(palette)] for i in range(len(layers))]
    densities: list[float] = []
    for index, (record, label) in enumerate(zip(chosen, labels, strict=True)):
        axes = grid[index // columns][index % columns]
        updates = [r for r in record.mask_update_rows() if isinstance(r.get("layer_density"), dict)]
        steps = [r.get("step") for r in updates]
        for depth, layer in enumerate(layers):
            values = [r["layer_density"].get(layer) for r in updates]
            points = [
                (s, v)
                for s, v in zip(steps, values, strict=True)
                if s is not None and v is not None
            ]
            if not points:
                continue
            densities += [v for _, v in points]
            axes.plot(
                [s for s, _ in points],
                [v for _, v in points],
                color=colours[depth],
                linewidth=1.2,
                marker="." if len(points) < 30 else None,
                label=layer if index == 0 else None,
            )
        axes.set_title(label, fontsize=9)
        axes.set_xlabel("step (optimizer steps)")
        axes.set_ylabel("layer density (fraction active)")
        axes.grid(alpha=0.3)
    if densities:
        _log_if_wide(lambda scale: [a.set_yscale(scale) for a in grid.ravel()], densities, 10.0)
    for index in range(len(chosen), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if by_depth:
        mappable = ScalarMappable(Normalize(0, len(layers) - 1), colormaps["viridis"])
        bar = figure.colorbar(mappable, ax=grid.ravel().tolist(), shrink=0.9)
        ticks = sorted({0, len(layers) // 2, len(layers) - 1})
        bar.set_ticks(ticks, labels=[f"{i}: {layers[i]}" for i in ticks], fontsize=7)
        bar.set_label(f"layer depth (0 = input side, {len(layers)} layers)")
    else:
        figure.legend(loc="outside right upper", fontsize=8, title="layer", frameon=False)
    figure.suptitle(
        f"Per-layer density at each mask update — {_subject(chosen)}{note}", fontsize=10
    )
    return figure


def _learning_curves(
    records: Sequence[RunRecord],
    group_by: Sequence[str],
    runs: Sequence[str] | None = None,
    **_: Any,
) -> Any:
    chosen, labels = _chosen(records, group_by, runs, lambda r: bool(r.pass_rows()))
    if not chosen:
        raise NoData("no run has metrics.jsonl pass rows yet")
    chosen, labels, note = _spread(chosen, labels, MAX_CURVES)
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(chosen) <= 10 else "tab20"].colors
    figure = _pyplot_free_figure(11.0, 4.2)
    loss_axes, accuracy_axes = figure.subplots(1, 2, sharex=True)  # epochs line up
    losses: list[float] = []
    evaluated = False
    for index, (record, label) in enumerate(zip(chosen, labels, strict=True)):
        colour = palette[index % len(palette)]
        rows = record.pass_rows()
        loss = [
            (r["epoch"], r["train_loss"])
            for r in rows
            if r.get("train_loss") is not None and "epoch" in r
        ]
        losses += [v for _, v in loss]
        loss_axes.plot([e for e, _ in loss], [v for _, v in loss], color=colour, label=label)
        tests = [
            (r["epoch"], r["test_accuracy"])
            for r in rows
            if r.get("test_accuracy") is not None and "epoch" in r
        ]
        evaluated |= bool(tests)
        accuracy_axes.plot(
            [e for e, _ in tests], [v for _, v in tests], color=colour, marker="o", markersize=4
        )
    positive = [v for v in losses if v > 0]
    if positive and len(positive) == len(losses) and max(positive) / min(positive) > 10:
        loss_axes.set_yscale("log")
    loss_axes.set_xlabel("epoch (passes over the training data)")
    loss_axes.set_ylabel("train loss (cross-entropy, mean over the pass)")
    loss_axes.set_title("train loss", fontsize=9)
    accuracy_axes.set_xlabel("epoch (passes over the training data)")
    accuracy_axes.set_ylabel("test accuracy (%)")
    accuracy_axes.set_title("test accuracy at each evaluation", fontsize=9)
    if not evaluated:
        accuracy_axes.text(
            0.5,
            0.5,
            "no evaluation rows",
            ha="center",
            va="center",
            transform=accuracy_axes.transAxes,
            color="dimgrey",
        )
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=8, title="run", frameon=False)
    figure.suptitle(f"Learning curves — {_subject(chosen)}{note}", fontsize=10)
    return figure


def _accuracy_by_cell(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """One bar per cell (mean ± std of the seeds, each seed a dot), in the report's order, with
    each cell's training FLOPs under its label: the quickstart's figure, and any study's."""
    done = _finished(records, ACCURACY)
    if not done:
        raise NoData("no finished run with a test accuracy")
    cells = aggregate(done, group_by, [ACCURACY, "train_flops_ratio"])
    labels = _labels(cells)
    figure = _pyplot_free_figure(1.4 * len(cells) + 2.0, 4.5)
    axes = figure.add_subplot()
    for i, cell in enumerate(cells):
        stat = cell.stats[ACCURACY]
        axes.bar(i, stat.mean, yerr=stat.std, capsize=4, color="#9ecae1", edgecolor="#3182bd")
        seeds = [r.metric(ACCURACY) for r in cell.done]
        axes.scatter([i] * len(seeds), seeds, color="#08519c", s=14, zorder=3)
    flops = [cell.stats["train_flops_ratio"].mean for cell in cells]
    ticks = [
        label if value is None else f"{label}\n{value:.2f}× train FLOPs"
        for label, value in zip(labels, flops, strict=True)
    ]
    axes.set_xticks(range(len(cells)), ticks, fontsize=8)
    axes.set_ylabel("test accuracy (%)")
    low = min(r.metric(ACCURACY) for r in done)
    axes.set_ylim(max(0.0, low - 5.0), 100.0)
    axes.set_title(f"Test accuracy — {_subject(done)}, {_seeds_note(done)}", fontsize=10)
    axes.grid(alpha=0.3, axis="y")
    return figure


DRAW: dict[str, Callable[..., Any]] = {
    "accuracy_by_cell": _accuracy_by_cell,
    "accuracy_vs_sparsity": _accuracy_vs_sparsity,
    "alpha_delta_t": _alpha_delta_t,
    "accuracy_vs_train_flops": _accuracy_vs_train_flops,
    "erk_vs_uniform": _erk_vs_uniform,
    "layer_density": _layer_density,
    "learning_curves": _learning_curves,
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
    the keys that vary, :func:`~regrow.study.report.varying_keys`); ``runs`` says the records
    were chosen by name (``layer_density`` and ``learning_curves`` then show each of them rather
    than the first run of each cell). Raises :class:`NoData` (why) when the records cannot make
    this figure, :class:`~regrow.study.report.ReportError` for an unknown kind."""
    if kind not in DRAW:
        raise ReportError(f"unknown figure {kind!r}; figures: {', '.join(FIGURE_KINDS)}")
    if not records:
        raise NoData("no runs")
    keys = list(group_by) if group_by is not None else varying_keys(records)
    figure = DRAW[kind](records, keys, runs=runs)
    _save(figure, Path(path))
    return figure
