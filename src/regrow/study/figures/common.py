"""What every figure of ``regrow report`` shares: the configuration keys it reads, :class:`NoData`
(the records cannot make a figure; the message says why), a figure outside pyplot's global state
and its atomic PNG, titles, the series of a line figure with a label and colour each, and axes
helpers. Figures import records and cells only, never the report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...sparsity.base import unmasked_methods
from ...train.checkpoint import atomic_write
from ..cells import Cell, aggregate, fmt_value, method_order, short
from ..direction import lower_is_better, ranked
from ..records import RunRecord

#: Lines of a line figure at most (the best by the mean of the figure's metric).
MAX_SERIES = 14

METHOD = "sparsity.method"
DISTRIBUTION = "sparsity.distribution"
SPARSITY = "sparsity.sparsity"
MULTIPLIER = "train.multiplier"
ALPHA = "sparsity.args.alpha"
DELTA_T = "sparsity.args.delta_t"
ACCURACY = "test_accuracy"
VALIDATION = "val_accuracy"
TEST_BPC = "test_bpc"  #: bits per character of a language-model run (lower is better)
VAL_BPC = "val_bpc"
WORDS = {
    ACCURACY: "test accuracy",
    VALIDATION: "validation accuracy",
    TEST_BPC: "test bits per character",
    VAL_BPC: "validation bits per character",
}
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


def pyplot_free_figure(width: float, height: float) -> Any:
    """A figure outside pyplot's global state (nothing to close, safe in a library)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def save_png(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG, atomically (a reader never sees half a file)."""
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def subject(records: Sequence[RunRecord]) -> str:
    """The datasets and models of ``records`` (``digits, digits_mlp``) for a title."""
    datasets = dict.fromkeys(str(r.value("data.name") or r.value("dataset")) for r in records)
    models = dict.fromkeys(str(r.value("model.name") or r.value("model")) for r in records)
    return f"{' + '.join(datasets)}, {' + '.join(models)}"


def seeds_note(records: Sequence[RunRecord]) -> str:
    """What a point is (a mean over the seeds, or one seed), for a title."""
    seeds = {r.seed for r in records}
    return f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"


def axis_label(metric: str) -> str:
    """An axis or colour-bar label of a metric: ``test accuracy (%)``, ``test bits per character
    (lower is better)``."""
    words = WORDS.get(metric, metric)
    if metric.endswith("accuracy"):
        return f"{words} (%)"
    return f"{words} (lower is better)" if lower_is_better(metric) else words


def value_text(metric: str, value: float) -> str:
    """A metric's value in a legend or an annotation: ``98.00 %``, ``1.234 bpc``."""
    if metric.endswith("accuracy"):
        return f"{value:.2f} %"
    if metric.endswith("bpc"):
        return f"{value:.3f} bpc"
    return f"{value:.4g}"


def finished(records: Sequence[RunRecord], *metrics: str) -> list[RunRecord]:
    """The finished runs that have every one of ``metrics``."""
    return [r for r in records if r.done and all(r.metric(m) is not None for m in metrics)]


def extra_keys(group_by: Sequence[str], *drop: str) -> list[str]:
    """Group-by keys other than ``drop`` (and their summary aliases): what splits series further."""
    dropped = set(drop) | {ALIASES.get(k, k) for k in drop}
    return [k for k in group_by if k not in dropped and ALIASES.get(k, k) not in dropped]


def _is_label(key: str) -> bool:
    """A study's own label (``tag``, ``tag.<name>``): shown as its value alone."""
    return key == "tag" or key.startswith("tag.")


def cell_labels(cells: Sequence[Cell]) -> list[str]:
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
        dense = values.get(METHOD) in unmasked_methods()  # no distribution to name
        parts = [
            fmt_value(values[k])
            if k in (METHOD, DISTRIBUTION) or _is_label(k)
            else f"{short(k)}={fmt_value(values[k])}"
            for k in shown
            if not (dense and k == DISTRIBUTION)
        ]
        labels.append(", ".join(parts) or "all runs")
    return labels


def line_series(
    records: Sequence[RunRecord], keys: Sequence[str], metric: str = ACCURACY
) -> tuple[list[Cell], list[str], list[Any], str]:
    """The series of a line figure (one per value of ``keys``) with a label and a colour each,
    and a note for the title. Colour is by method unless several series share a method and a
    distribution (an extra key splits them), then by series. More than :data:`MAX_SERIES` are cut
    to those with the best mean ``metric`` (the highest accuracy, the lowest bits per character:
    :mod:`~regrow.study.direction`; the note says so), so the legend stays readable."""
    from matplotlib import colormaps

    series = aggregate(records, keys, [metric])
    labels = cell_labels(series)
    note = ""
    if len(series) > MAX_SERIES:
        order = ranked(range(len(series)), metric, lambda i: series[i].stats[metric].mean)
        keep = sorted(order[:MAX_SERIES])
        note = f"; the {MAX_SERIES} of {len(series)} configurations with the {_best(metric)}"
        series, labels = [series[i] for i in keep], [labels[i] for i in keep]
    pairs = [(c.values[METHOD], c.values[DISTRIBUTION]) for c in series]
    if len(set(pairs)) < len(pairs):
        palette = colormaps["tab10" if len(series) <= 10 else "tab20"].colors
        colours = [palette[i % len(palette)] for i in range(len(series))]
    else:
        by_method = _method_colours(records)
        colours = [by_method[str(c.values[METHOD])] for c in series]
    return series, labels, colours, note


def _best(metric: str) -> str:
    """``best mean accuracy``, ``lowest mean test bits per character``: what a cut keeps."""
    if metric == ACCURACY:
        return "best mean accuracy"
    words = WORDS.get(metric, metric)
    return f"{'lowest' if lower_is_better(metric) else 'highest'} mean {words}"


def _method_colours(records: Sequence[RunRecord]) -> dict[str, Any]:
    """A colour per method of ``records``, in the registry's order of methods."""
    from matplotlib import colormaps

    order = method_order()
    methods = sorted(
        {str(r.value(METHOD)) for r in records},
        key=lambda m: (order.index(m) if m in order else len(order), m),
    )
    palette = colormaps["tab10"].colors
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def log_if_wide(
    axis_scale: Callable[[str], Any], values: Sequence[float], ratio: float = 8.0
) -> None:
    """A log axis when every value is positive and they span more than ``ratio``."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > ratio:
        axis_scale("log")


def legend_outside(axes: Any, title: str | None = None) -> None:
    """The legend right of the axes, so that it never covers a line."""
    handles, _ = axes.get_legend_handles_labels()
    if handles:
        axes.legend(
            loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title=title, frameon=False
        )
