"""Run records grouped into cells: one :class:`Cell` per value of the group-by keys, each metric
as a :class:`Stat` over the finished runs, the seeds expected and the :class:`Missing` ones; cells
in natural order (methods in the registry's order, then distributions, then numbers). Also how a
table shows a value or a statistic. The manual is ``docs/REPORT.md``."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..sparsity import METHODS
from ..sparsity.distributions import DISTRIBUTIONS
from .direction import ranked
from .records import ABSENT, NOT_GROUPED, SORT_FIRST, UNREADABLE, RunRecord, freeze, key_priority

#: Natural order of sparsity distributions.
DISTRIBUTION_ORDER = DISTRIBUTIONS


def method_order() -> tuple[str, ...]:
    """Natural order of methods in a table: the registration order of
    :data:`regrow.sparsity.METHODS` (dense baselines, static masks, then dynamic methods; a
    method registered later comes after them). Read on each call, as registration can follow."""
    return tuple(METHODS)


@dataclass(frozen=True)
class Stat:
    """One metric over a cell's finished runs."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (``n - 1``); ``None`` for fewer than two values, where there
        is no spread to tell (a table then shows the mean alone)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Missing:
    """An expected seed of a cell without a finished run: the state of the run that has it
    (``absent`` if none) and its name."""

    seed: int | None
    state: str
    run: str | None = None

    def __str__(self) -> str:
        seed = "?" if self.seed is None else str(self.seed)
        return f"{seed} ({self.state})"


@dataclass
class Cell:
    """The runs sharing one value of every group-by key."""

    group: tuple[tuple[str, Any], ...]
    records: list[RunRecord]
    stats: dict[str, Stat] = field(default_factory=dict)
    expected_seeds: tuple[int, ...] = ()
    missing: tuple[Missing, ...] = ()
    #: Configuration keys outside the group-by whose value differs between the cell's runs
    #: (seed and :data:`NOT_GROUPED` aside), each with its values in order of first appearance:
    #: what the grouping merged (empty when the group-by tells every configuration apart).
    differing: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """Group-by key → this cell's value."""
        return {key: self.records[0].value(key) for key, _ in self.group}

    @property
    def done(self) -> list[RunRecord]:
        return [r for r in self.records if r.done]

    @property
    def n(self) -> int:
        """Finished runs in the cell."""
        return len(self.done)

    @property
    def seeds(self) -> tuple[int, ...]:
        """Seeds of the finished runs."""
        return tuple(sorted({r.seed for r in self.done if r.seed is not None}))

    def label(self) -> str:
        """``key=value`` pairs naming the cell (short keys: the last dotted part)."""
        return ", ".join(f"{short(k)}={fmt_value(v)}" for k, v in self.values.items()) or "all runs"


def short(key: str) -> str:
    """A dotted key's last part (``sparsity.args.alpha`` → ``alpha``)."""
    return key.rsplit(".", 1)[-1]


def _sort_value(key: str, value: Any) -> tuple[Any, ...]:
    """Natural order of one value: known names by rank, numbers numerically, text
    alphabetically, missing values last."""
    if value is None:
        return (3,)
    order = method_order() if key in SORT_FIRST[0] else DISTRIBUTION_ORDER
    if key in (*SORT_FIRST[0], *SORT_FIRST[1]) and value in order:
        return (0, order.index(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value))
    return (2, str(value))


def _make_cell(
    group: tuple[tuple[str, Any], ...],
    members: list[RunRecord],
    metrics: Sequence[str],
    expected: set[int],
) -> Cell:
    """One cell: each metric over its finished runs, and each expected seed without a finished
    run as missing, with the state of the runs that have it (``absent`` if none)."""
    stats = {}
    for name in metrics:
        values = (r.metric(name) for r in members if r.done)
        stats[name] = Stat(tuple(v for v in values if v is not None))
    finished = {r.seed for r in members if r.done}
    missing = []
    for seed in sorted(expected - finished):
        others = [r for r in members if r.seed == seed]
        missing += [Missing(seed, r.state, r.name) for r in others] or [Missing(seed, ABSENT)]
    missing += [Missing(None, r.state, r.name) for r in members if r.seed is None and not r.done]
    differing = differing_keys(members, [key for key, _ in group])
    return Cell(group, members, stats, tuple(sorted(expected)), tuple(missing), differing)


def differing_keys(records: Sequence[RunRecord], group_by: Sequence[str]) -> dict[str, list[Any]]:
    """The configuration keys not in ``group_by`` (seed and :data:`NOT_GROUPED` aside) whose
    value differs between ``records`` (readable ones), each with its distinct values in order of
    first appearance, keys by name."""
    readable = [r for r in records if r.state != UNREADABLE]
    keys = {k for r in readable for k in r.params} - set(NOT_GROUPED) - set(group_by)
    found: dict[str, list[Any]] = {}
    for key in sorted(keys):
        values: dict[Any, Any] = {}
        for record in readable:
            value = record.value(key)
            values.setdefault(freeze(value), value)
        if len(values) > 1:
            found[key] = list(values.values())
    return found


def _natural_order(records: Sequence[RunRecord], group_by: Sequence[str]) -> Any:
    """The sort key of cells: their values in natural order, the keys of :data:`SORT_FIRST`
    first; a study's labels (``tag``, ``tag.<name>``) in the order the study gives them."""
    priority = sorted(range(len(group_by)), key=lambda i: key_priority(group_by[i]))
    first_seen = {
        key: list(dict.fromkeys(freeze(r.value(key)) for r in records))
        for key in group_by
        if key == "tag" or key.startswith("tag.")
    }

    def sort_value(key: str, value: Any) -> Any:
        if key in first_seen:
            return (0, first_seen[key].index(freeze(value)))
        return _sort_value(key, value)

    def order(cell: Cell) -> tuple[Any, ...]:
        values = cell.values
        return tuple(sort_value(group_by[i], values[group_by[i]]) for i in priority)

    return order


def aggregate(
    records: Sequence[RunRecord], group_by: Sequence[str], metrics: Sequence[str]
) -> list[Cell]:
    """Group ``records`` into cells by the values of ``group_by``; each metric's mean, std and n
    over the finished runs of a cell; the expected seeds are those planned in the cell when the
    records come from ``study.json``'s plan, else every seed of ``records``."""
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in records:
        groups.setdefault(tuple(freeze(record.value(k)) for k in group_by), []).append(record)
    planned = any(r.planned for r in records)
    everywhere = {r.seed for r in records if r.seed is not None}
    cells = []
    for frozen, members in groups.items():
        expected = {r.seed for r in members if r.seed is not None}
        if not planned:
            expected |= everywhere
        group = tuple(zip(group_by, frozen, strict=True))
        cells.append(_make_cell(group, members, metrics, expected))
    return sorted(cells, key=_natural_order(records, group_by))


def best_first(cells: Sequence[Cell], metric: str) -> list[Cell]:
    """``cells`` ranked by the mean of ``metric`` in its direction (:mod:`.direction`): the
    lowest mean first for a lower-is-better metric (``test_bpc``), else the highest; cells
    without a mean last."""
    return ranked(cells, metric, lambda cell: _mean(cell, metric))


def _mean(cell: Cell, metric: str) -> float | None:
    stat = cell.stats.get(metric)
    return None if stat is None else stat.mean


def fmt_value(value: Any) -> str:
    """A group-by value as a table shows it (``—`` for none, floats as ``%g``)."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def _digits(metric: str) -> str:
    """Format of a metric's numbers: accuracies (%) to 2 decimals, bits per character to 3,
    ratios to 4, seconds to 1."""
    if metric.endswith("accuracy"):
        return ".2f"
    if metric.endswith("bpc"):
        return ".3f"
    if metric.endswith("_ratio") or metric in ("sparsity", "target_sparsity", "density"):
        return ".4f"
    if metric.endswith("seconds"):
        return ".1f"
    return ".4g"


def fmt_stat(metric: str, stat: Stat) -> str:
    """``mean ± std``; the mean alone for one run (no ``± 0``); ``—`` without finished runs."""
    if stat.mean is None:
        return "—"
    spec = _digits(metric)
    if stat.std is None:
        return f"{stat.mean:{spec}}"
    return f"{stat.mean:{spec}} ± {stat.std:{spec}}"
