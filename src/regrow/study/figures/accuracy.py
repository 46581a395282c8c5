"""The score figures of ``regrow report``: a bar per cell, accuracy (or a language model's bits
per character) against sparsity, accuracy against training FLOPs of ×M runs, and ERK against
uniform at equal inference FLOPs (every point a mean over seeds, its std as a band or error
bar)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...sparsity.base import unmasked_methods
from ..cells import Cell, aggregate
from ..records import RunRecord
from .common import (
    ACCURACY,
    DISTRIBUTION,
    DISTRIBUTION_STYLE,
    METHOD,
    MULTIPLIER,
    SPARSITY,
    TEST_BPC,
    WORDS,
    NoData,
    axis_label,
    cell_labels,
    extra_keys,
    finished,
    legend_outside,
    line_series,
    log_if_wide,
    pyplot_free_figure,
    seeds_note,
    subject,
    value_text,
)

#: Points of the ERK-vs-uniform figure annotated at most.
MAX_ANNOTATED = 12


def _points(
    cell: Cell, x_key: str, x_metric: str | None = None, metric: str = ACCURACY
) -> list[tuple[float, float, float, Any]]:
    """(x, ``metric`` mean, std, x value) per value of ``x_key`` in ``cell``, by x; x is the
    mean of summary ``x_metric`` if given, else the key's value."""
    points = []
    for point in aggregate(cell.records, [x_key], [metric, *([x_metric] if x_metric else [])]):
        score = point.stats[metric]
        value = point.values[x_key]
        x = point.stats[x_metric].mean if x_metric else value
        if score.mean is None or x is None or not isinstance(x, int | float):
            continue
        points.append((float(x), score.mean, score.std or 0.0, value))
    return sorted(points, key=lambda p: p[0])


def _finish_flops_axes(
    axes: Any, xs: Sequence[float], xlabel: str, title: str, done: Sequence[RunRecord], note: str
) -> None:
    """Axes of accuracy against a FLOP ratio: log x when wide, labels, the title with the seeds
    note, a grid and the legend outside."""
    log_if_wide(axes.set_xscale, xs)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{title}\n{seeds_note(done)}{note}", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    legend_outside(axes, "method, distribution")


def accuracy_by_cell(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """One bar per cell (mean ± std of the seeds, each seed a dot), in the report's order, with
    each cell's training FLOPs under its label: the quickstart's figure, and any study's."""
    done = finished(records, ACCURACY)
    if not done:
        raise NoData("no finished run with a test accuracy")
    cells = aggregate(done, group_by, [ACCURACY, "train_flops_ratio"])
    labels = cell_labels(cells)
    figure = pyplot_free_figure(1.4 * len(cells) + 2.0, 4.5)
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
    axes.set_title(f"Test accuracy — {subject(done)}, {seeds_note(done)}", fontsize=10)
    axes.grid(alpha=0.3, axis="y")
    return figure


def accuracy_vs_sparsity(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """Test accuracy against sparsity, a line per method × distribution, Dense as reference."""
    return score_vs_sparsity(records, group_by, ACCURACY)


def bpc_vs_sparsity(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """Test bits per character (a language model's; lower is better) against sparsity, a line
    per method × distribution, Dense as reference. :class:`NoData` for runs without
    ``test_bpc`` (image runs)."""
    if not finished(records, TEST_BPC):
        raise NoData(
            f"no finished run has {TEST_BPC} (bits per character, written by language-model "
            "runs): draw accuracy_vs_sparsity for these runs"
        )
    return score_vs_sparsity(records, group_by, TEST_BPC)


def score_vs_sparsity(records: Sequence[RunRecord], group_by: Sequence[str], metric: str) -> Any:
    """Summary ``metric`` against sparsity, a line per method × distribution (mean, std band),
    Dense as a horizontal reference: :func:`accuracy_vs_sparsity`, :func:`bpc_vs_sparsity`."""
    done = finished(records, metric)
    sparse = [r for r in done if r.value(METHOD) != "dense"]
    words = WORDS.get(metric, metric)
    if not sparse:
        raise NoData(
            f"no finished sparse run has {'a test accuracy' if metric == ACCURACY else metric}"
        )
    sparsities = sorted({float(r.value(SPARSITY)) for r in sparse if r.value(SPARSITY) is not None})
    if len(sparsities) < 2:
        shown = ", ".join(f"{s:g}" for s in sparsities) or "none"
        raise NoData(f"sparsity.sparsity takes one value ({shown}): nothing to draw it against")
    extra = extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY)
    series, labels, colours, note = line_series(sparse, [METHOD, DISTRIBUTION, *extra], metric)
    figure = pyplot_free_figure(7.5, 4.5)
    axes = figure.add_subplot()
    for cell, label, colour in zip(series, labels, colours, strict=True):
        points = _points(cell, SPARSITY, metric=metric)
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
    _dense_reference(axes, [r for r in done if r.value(METHOD) == "dense"], extra, metric)
    if min(sparsities) > 0 and max(sparsities) < 1 and max(sparsities) >= 0.9:
        axes.set_xscale("logit")  # 0.5 … 0.99 spread evenly, as 1 − sparsity shrinks tenfold
        axes.minorticks_off()
    axes.set_xticks(sparsities, [f"{s:g}" for s in sparsities])
    axes.set_xlabel("sparsity (fraction of weights that are zero)")
    axes.set_ylabel(axis_label(metric))
    axes.set_title(
        f"{words.capitalize()} vs sparsity — {subject(done)}\n{seeds_note(done)}{note}",
        fontsize=10,
    )
    axes.grid(alpha=0.3)
    legend_outside(axes, "method, distribution")
    return figure


def _dense_reference(
    axes: Any, dense_runs: Sequence[RunRecord], extra: Sequence[str], metric: str
) -> None:
    """Dense's mean ``metric`` as a dotted horizontal line with its std band, one per value of
    the ``extra`` group-by keys (labelled by them when there are several)."""
    dense = aggregate(dense_runs, extra, [metric])
    for cell, label in zip(
        dense, cell_labels(dense) if len(dense) > 1 else [""] * len(dense), strict=True
    ):
        stat = cell.stats[metric]
        if stat.mean is None:
            continue
        name = f"dense{', ' + label if label else ''} ({value_text(metric, stat.mean)})"
        axes.axhline(stat.mean, color="black", linestyle=":", linewidth=1.2, label=name)
        axes.axhspan(
            stat.mean - (stat.std or 0), stat.mean + (stat.std or 0), color="grey", alpha=0.15
        )


def accuracy_vs_train_flops(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """Accuracy against training FLOPs, a line per method: through its multipliers when the runs
    are ×M runs (``longer``), else through its sparsities (a comparison of methods)."""
    done = finished(records, ACCURACY, "train_flops_ratio")
    along = next((k for k in (MULTIPLIER, SPARSITY) if _values(done, k) > 1), None)
    if along is None:
        raise NoData("train.multiplier and sparsity.sparsity take one value each: no line to draw")
    done = [r for r in done if r.value(along) is not None]
    extra = extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY, MULTIPLIER)
    keys = [METHOD, DISTRIBUTION, *([SPARSITY] if along == MULTIPLIER else []), *extra]
    series, labels, colours, note = line_series(done, keys)
    figure = pyplot_free_figure(7.5, 4.5)
    axes = figure.add_subplot()
    all_x = []
    for cell, label, colour in zip(series, labels, colours, strict=True):
        points = _points(cell, along, "train_flops_ratio")
        xs, means, stds = ([p[i] for p in points] for i in range(3))
        all_x += xs
        style, marker = DISTRIBUTION_STYLE.get(str(cell.values[DISTRIBUTION]), (":", "D"))
        if cell.values[METHOD] in unmasked_methods():
            style = ":"
        axes.errorbar(
            xs, means, yerr=stds, linestyle=style, marker=marker, capsize=3, color=colour,
            label=label,
        )  # fmt: skip
        for x, mean, _, value in points:
            text = f"×{value:g}" if along == MULTIPLIER else f"{value:g}"
            axes.annotate(text, (x, mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
    runs = "×M runs" if along == MULTIPLIER else "points annotated with their sparsity"
    title = f"Test accuracy vs training FLOPs ({runs}) — {subject(done)}"
    _finish_flops_axes(axes, all_x, "training FLOPs (× dense 1× training)", title, done, note)
    return figure


def _values(records: Sequence[RunRecord], key: str) -> int:
    """How many distinct values ``key`` takes over ``records`` (``None`` not counted)."""
    return len({float(r.value(key)) for r in records if r.value(key) is not None})


def erk_vs_uniform(records: Sequence[RunRecord], group_by: Sequence[str], **_: Any) -> Any:
    """Accuracy against inference FLOPs of the ERK and uniform runs of each method with both."""
    done = [
        r
        for r in finished(records, ACCURACY, "inference_flops_ratio")
        if r.value(DISTRIBUTION) in ("erk", "uniform") and r.value(METHOD) not in unmasked_methods()
    ]
    both = {
        m
        for m in {r.value(METHOD) for r in done}
        if {r.value(DISTRIBUTION) for r in done if r.value(METHOD) == m} == {"erk", "uniform"}
    }
    if not both:
        raise NoData("no sparse method has finished runs with both ERK and uniform distributions")
    done = [r for r in done if r.value(METHOD) in both]
    extra = extra_keys(group_by, METHOD, DISTRIBUTION, SPARSITY)
    series, labels, colours, note = line_series(done, [METHOD, DISTRIBUTION, *extra])
    lines = [_points(cell, SPARSITY, "inference_flops_ratio") for cell in series]
    # Sparsity labels on every point while few; else on the last method's only (drawn on top).
    last = series[-1].values[METHOD]
    crowded = sum(map(len, lines)) > MAX_ANNOTATED
    figure = pyplot_free_figure(7.5, 4.5)
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
    title = f"ERK vs uniform at equal inference FLOPs — {subject(done)}"
    _finish_flops_axes(axes, all_x, "inference FLOPs (× dense)", title, done, note)
    return figure
