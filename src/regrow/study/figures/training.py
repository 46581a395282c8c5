"""The per-run figures of ``regrow report``, from each run's ``metrics.jsonl``: per-layer density
at each mask update, and learning curves (test accuracy, or a language model's validation bits
per character). They show the runs named (``--runs``), else the first run of each cell, at most a
few spread over the methods."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..cells import aggregate
from ..records import RunRecord
from .common import (
    ACCURACY,
    METHOD,
    TEST_BPC,
    VAL_BPC,
    WORDS,
    NoData,
    axis_label,
    cell_labels,
    log_if_wide,
    pyplot_free_figure,
    subject,
)

#: Figures drawn with no more than this many panels (layer density) or lines (learning curves).
MAX_PANELS, MAX_CURVES = 6, 12
#: Layers shown by a legend; more are coloured by depth with a colour bar.
MAX_LEGEND_LAYERS = 10


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
    for cell, label in zip(cells, cell_labels(cells), strict=True):
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


def _has_layer_density(record: RunRecord) -> bool:
    return any(isinstance(r.get("layer_density"), dict) for r in record.mask_update_rows())


def layer_density(
    records: Sequence[RunRecord],
    group_by: Sequence[str],
    runs: Sequence[str] | None = None,
    **_: Any,
) -> Any:
    """One panel per run: each sparse layer's density at each mask update; the layers by a
    legend, or by colour along depth with a colour bar when there are many."""
    chosen, labels = _chosen(records, group_by, runs, _has_layer_density)
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
    figure = pyplot_free_figure(5.2 * columns + (1.6 if by_depth else 2.6), 3.4 * rows + 0.6)
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    colours = _layer_colours(len(layers), by_depth)
    densities: list[float] = []
    for index, (record, label) in enumerate(zip(chosen, labels, strict=True)):
        axes = grid[index // columns][index % columns]
        densities += _density_panel(axes, record, layers, colours, legend=index == 0)
        axes.set_title(label, fontsize=9)
    if densities:
        log_if_wide(lambda scale: [a.set_yscale(scale) for a in grid.ravel()], densities, 10.0)
    for index in range(len(chosen), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    if by_depth:
        _depth_colour_bar(figure, grid, layers)
    else:
        figure.legend(loc="outside right upper", fontsize=8, title="layer", frameon=False)
    figure.suptitle(f"Per-layer density at each mask update — {subject(chosen)}{note}", fontsize=10)
    return figure


def _layer_colours(count: int, by_depth: bool) -> list[Any]:
    """A colour per layer: along a colour map by depth, else the categorical palette."""
    from matplotlib import colormaps

    if by_depth:
        colour_map = colormaps["viridis"]
        return [colour_map(i / max(1, count - 1)) for i in range(count)]
    palette = colormaps["tab10"].colors
    return [palette[i % len(palette)] for i in range(count)]


def _density_panel(
    axes: Any, record: RunRecord, layers: list[str], colours: list[Any], legend: bool
) -> list[float]:
    """One run's layer densities against the step (the layers labelled for the legend when
    ``legend``); returns the densities drawn."""
    updates = [r for r in record.mask_update_rows() if isinstance(r.get("layer_density"), dict)]
    steps = [r.get("step") for r in updates]
    densities: list[float] = []
    for depth, layer in enumerate(layers):
        values = [r["layer_density"].get(layer) for r in updates]
        points = [
            (s, v) for s, v in zip(steps, values, strict=True) if s is not None and v is not None
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
            label=layer if legend else None,
        )
    axes.set_xlabel("step (optimizer steps)")
    axes.set_ylabel("layer density (fraction active)")
    axes.grid(alpha=0.3)
    return densities


def _depth_colour_bar(figure: Any, grid: Any, layers: list[str]) -> None:
    """A colour bar naming the first, middle and last layer, in place of a long legend."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    mappable = ScalarMappable(Normalize(0, len(layers) - 1), colormaps["viridis"])
    bar = figure.colorbar(mappable, ax=grid.ravel().tolist(), shrink=0.9)
    ticks = sorted({0, len(layers) // 2, len(layers) - 1})
    bar.set_ticks(ticks, labels=[f"{i}: {layers[i]}" for i in ticks], fontsize=7)
    bar.set_label(f"layer depth (0 = input side, {len(layers)} layers)")


def learning_curves(
    records: Sequence[RunRecord],
    group_by: Sequence[str],
    runs: Sequence[str] | None = None,
    **_: Any,
) -> Any:
    """Train loss (left) and, right, the evaluations of :func:`curve_metric` (test accuracy, or
    a language model's validation bits per character) against epoch, one colour per run."""
    chosen, labels = _chosen(records, group_by, runs, lambda r: bool(r.pass_rows()))
    if not chosen:
        raise NoData("no run has metrics.jsonl pass rows yet")
    chosen, labels, note = _spread(chosen, labels, MAX_CURVES)
    from matplotlib import colormaps

    metric = curve_metric(chosen)
    palette = colormaps["tab10" if len(chosen) <= 10 else "tab20"].colors
    figure = pyplot_free_figure(11.0, 4.2)
    loss_axes, score_axes = figure.subplots(1, 2, sharex=True)  # epochs line up
    losses: list[float] = []
    evaluated = False
    for index, (record, label) in enumerate(zip(chosen, labels, strict=True)):
        colour = palette[index % len(palette)]
        loss = curve_series(record, "train_loss")
        losses += [v for _, v in loss]
        loss_axes.plot([e for e, _ in loss], [v for _, v in loss], color=colour, label=label)
        scores = curve_series(record, metric)
        evaluated |= bool(scores)
        score_axes.plot(
            [e for e, _ in scores], [v for _, v in scores], color=colour, marker="o", markersize=4
        )
    log_if_wide(loss_axes.set_yscale, losses, 10.0)
    _label_curve_axes(loss_axes, score_axes, evaluated, metric)
    figure.legend(loc="outside right upper", fontsize=8, title="run", frameon=False)
    figure.suptitle(f"Learning curves — {subject(chosen)}{note}", fontsize=10)
    return figure


def curve_metric(records: Sequence[RunRecord]) -> str:
    """What the learning curves evaluate: ``val_bpc`` when a run's pass rows of
    ``metrics.jsonl`` have it (a language model with a validation split), else ``test_bpc`` when
    one has that, else ``test_accuracy``. One metric for every run, so one axis holds them."""
    for metric in (VAL_BPC, TEST_BPC):
        if any(row.get(metric) is not None for r in records for row in r.pass_rows()):
            return metric
    return ACCURACY


def curve_series(record: RunRecord, key: str) -> list[tuple[Any, Any]]:
    """(epoch, value) of ``key`` in the run's pass rows that have both: a learning curve."""
    return _by_epoch(record.pass_rows(), key)


def _by_epoch(rows: list[dict[str, Any]], key: str) -> list[tuple[Any, Any]]:
    """(epoch, value) of the rows that have both."""
    return [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and "epoch" in r]


def _label_curve_axes(loss_axes: Any, score_axes: Any, evaluated: bool, metric: str) -> None:
    """Axis labels and titles of the learning curves; a note where no run was evaluated."""
    loss_axes.set_xlabel("epoch (passes over the training data)")
    loss_axes.set_ylabel("train loss (cross-entropy, mean over the pass)")
    loss_axes.set_title("train loss", fontsize=9)
    score_axes.set_xlabel("epoch (passes over the training data)")
    score_axes.set_ylabel(axis_label(metric))
    score_axes.set_title(f"{WORDS.get(metric, metric)} at each evaluation", fontsize=9)
    if not evaluated:
        score_axes.text(
            0.5,
            0.5,
            "no evaluation rows",
            ha="center",
            va="center",
            transform=score_axes.transAxes,
            color="dimgrey",
        )
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
