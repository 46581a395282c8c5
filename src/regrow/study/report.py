"""``regrow report``: a study directory's runs as one table per cell (mean ± std over seeds, n, the
seeds still missing) and as figures.

A *study directory* holds run directories (``DIR/<run name>/config.yaml``, ``summary.json`` once
finished; see :mod:`regrow.train.rundir`) and, when ``regrow sweep`` made it, ``DIR/study.json``
(:data:`~regrow.study.names.STUDY_FILE`): the planned runs and the report's default settings.

The API, in the order a report uses it::

    from regrow.study import report
    study = report.load("runs/grid")                # the runs found and planned, study.json
    records = report.collect("runs/grid")           # the same runs: list[RunRecord]
    keys = report.varying_keys(records)             # the default group-by without study.json
    cells = report.aggregate(records, keys, ["test_accuracy", "train_flops_ratio"])
    print(report.markdown(cells, keys, ["test_accuracy", "train_flops_ratio"]))
    report.draw("accuracy_vs_sparsity", records, "fig.png")   # regrow.study.figures.draw
    result = report.build_report("runs/grid")       # all of it, as the command line does

**Records.** :class:`RunRecord` is one run: its name, :meth:`~regrow.train.RunDir.state`
(``done``, ``partial``, ``failed``, ``locked``, ``new``), plus ``absent`` for a run
``study.json`` plans that has no directory yet and ``unreadable`` for one whose ``config.yaml`` or
``summary.json`` is not valid; its configuration flattened to dotted keys (``sparsity.method``,
``sparsity.args.alpha``, ``train.multiplier``, ``seed``, ...) and its summary. A directory under
``DIR`` without ``config.yaml`` (``DIR/report/``, say) is no run and is ignored unless planned.
:meth:`RunRecord.value` looks a key up in the configuration first, then among the summary's
values (``method``, ``model_width``, ...); a method argument the run left at its default
(``sparsity.args.alpha`` absent from ``config.yaml``) is the value the summary's ``method_args``
recorded, or the default of the method's ``Args``. So a RigL run with the default α and one with
``sparsity.args.alpha=0.3`` land in one cell.

**Cells.** :func:`aggregate` groups records by the values of the group-by keys (a Small-Dense run,
``sparsity.method=small_dense``, and a Dense run are different cells) and gives each metric's mean,
sample standard deviation (0 for one run) and count over the cell's finished runs. The seeds a cell
expects are, with ``study.json``, those of the runs planned in that cell; without it, every seed
seen anywhere in the report (a hand-made grid is assumed to run each cell over the same seeds).
Each expected seed without a finished run is *missing*, with the state of the run that has it
(``partial``, ``failed``, ``locked``, ``new``, ``unreadable``) or ``absent`` if there is none.
Cells are sorted in natural order: method (dense baselines first, then static, then dynamic
methods: :data:`METHOD_ORDER`), distribution (uniform, er, erk), sparsity ascending, then the other
keys in group-by order (numbers numerically, missing values last; a study's labels ``tag`` and
``tag.<name>`` in the order the study gives them).

**Defaults** (each overridden by the command line): the group-by, metrics and figures of
``study.json``'s ``report`` section; without one, the group-by is every configuration key whose
value differs between runs except ``seed`` and the keys that never make two runs different
(:data:`~regrow.train.rundir.NOT_IDENTITY`: ``out_dir``, device, batch layout, progress), or
``sparsity.method`` alone when nothing differs; the metrics are :data:`DEFAULT_METRICS` (and
``val_accuracy`` when some run held out a validation split); the figures are all
:data:`~regrow.study.names.FIGURE_KINDS`, each skipped with a note when the study has no data for
it (:class:`~regrow.study.figures.NoData`).

**Outputs** (:func:`write_report`): ``report.md`` (Markdown, as printed), ``report.csv`` (one row
per cell: the group values, ``n``, ``<metric>_mean``/``_std``/``_n``, expected and missing seeds)
and ``report.json`` (the same cells, every run with its state, the figures written and skipped),
written atomically into ``DIR/report/`` by default.

Errors a user can act on raise :class:`ReportError` (a ``ValueError``: ``regrow report`` prints it
as one line and exits 2).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..train.checkpoint import write_text
from ..train.rundir import DONE, MASK_UPDATE_EVENT, NOT_IDENTITY, RunDir, RunDirError
from ..util.suggest import did_you_mean
from .names import FIGURE_KINDS, STUDY_FILE

ABSENT = "absent"  #: planned by ``study.json``, no run directory (yet)
UNREADABLE = "unreadable"  #: ``config.yaml`` or ``summary.json`` is not valid YAML/JSON

#: The metrics a report shows when neither the command line nor ``study.json`` names any.
DEFAULT_METRICS = ("test_accuracy", "sparsity", "inference_flops_ratio", "train_flops_ratio")

#: Natural order of methods in a table: dense baselines, static masks, then dynamic methods.
METHOD_ORDER = ("dense", "small_dense", "static", "snip", "pruning", "set", "snfs", "rigl", "srigl")
#: Natural order of sparsity distributions.
DISTRIBUTION_ORDER = ("uniform", "er", "erk")
#: Keys sorted first, in this order, when they are among the group-by keys.
SORT_FIRST = (
    ("sparsity.method", "method"),
    ("sparsity.distribution", "distribution"),
    ("sparsity.sparsity", "target_sparsity"),
)
#: Keys never in the default group-by: the seed (what a cell averages over) and what does not
#: change what a run computes.
NOT_GROUPED = ("seed", *NOT_IDENTITY)


class ReportError(ValueError):
    """Bad input to a report (a directory, key, metric, figure or run name); one line naming it
    and what is allowed."""

    exit_code = 2


# --------------------------------------------------------------------------------- records
def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": value}``; an empty mapping (``sparsity.args: {}``, no
    method arguments given) has no keys, so it cannot differ from one that has some."""
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _method_default(method: Any, argument: str) -> Any:
    """The default of ``argument`` in the registered method's ``Args`` (``None`` if unknown)."""
    if not isinstance(method, str):
        return None
    try:
        from ..sparsity import get_method

        args_class = get_method(method).Args
    except Exception:  # an unregistered or unimportable method: nothing to fill in
        return None
    for item in dataclasses.fields(args_class):
        if item.name == argument and item.default is not dataclasses.MISSING:
            return item.default
    return None


@dataclass
class RunRecord:
    """One run of a study: found on disk, planned by ``study.json``, or both (module docstring).

    ``params`` is the configuration flattened to dotted keys; ``summary`` is ``summary.json``
    (``None`` until the run finishes); ``detail`` says why a run is ``unreadable``."""

    name: str
    path: Path
    state: str
    params: dict[str, Any]
    summary: dict[str, Any] | None = None
    planned: bool = False
    detail: str = ""

    @property
    def done(self) -> bool:
        """Whether the run finished (its summary holds the results)."""
        return self.state == DONE and self.summary is not None

    @property
    def seed(self) -> int | None:
        """The run's seed (configuration, else summary)."""
        seed = self.value("seed")
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    def value(self, key: str) -> Any:
        """The value of a dotted configuration key, or of a summary key; a method argument left
        at its default is the resolved one (module docstring). ``None`` if the run has none."""
        if key in self.params:
            return self.params[key]
        summary = self.summary or {}
        if key.startswith("sparsity.args."):
            argument = key[len("sparsity.args.") :]
            recorded = summary.get("method_args")
            if isinstance(recorded, dict) and argument in recorded:
                return recorded[argument]
            return _method_default(self.params.get("sparsity.method"), argument)
        return summary.get(key)

    def metric(self, name: str) -> float | None:
        """A numeric summary value (``test_accuracy``, ...), ``None`` if absent or not a number."""
        value = (self.summary or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value) if math.isfinite(value) else None

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` (empty if there are none or the file is not readable)."""
        try:
            return RunDir(self.path).metric_rows()
        except (OSError, RunDirError, ValueError):
            return []

    def pass_rows(self) -> list[dict[str, Any]]:
        """The rows written once per pass over the training data (no ``"event"`` key)."""
        return [row for row in self.rows if "event" not in row]

    def mask_update_rows(self) -> list[dict[str, Any]]:
        """The rows written at each mask update (``"event": "mask_update"``)."""
        return [row for row in self.rows if row.get("event") == MASK_UPDATE_EVENT]


@dataclass
class Study:
    """A study directory read: its records (planned order, then the others by name) and
    ``study.json`` (``None`` for hand-made run directories)."""

    path: Path
    records: list[RunRecord]
    plan: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """``study.json``'s name, else the directory's."""
        name = (self.plan or {}).get("study")
        return name if isinstance(name, str) and name else self.path.resolve().name

    def setting(self, key: str) -> list[str] | None:
        """A list from ``study.json``'s ``report`` section (``group_by``, ``metrics``,
        ``figures``), ``None`` if it has none."""
        settings = (self.plan or {}).get("report")
        value = settings.get(key) if isinstance(settings, dict) else None
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        return None


def _natural(name: str) -> list[Any]:
    """Sort key of a run name with its numbers compared numerically (``s2`` before ``s10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_run(path: Path, planned: bool = False) -> RunRecord:
    """A run directory on disk as a record; never raises for a bad file (``unreadable``)."""
    import yaml

    run = RunDir(path)
    try:
        config = yaml.safe_load(run.config_path.read_text())
        params = _flatten(config if isinstance(config, dict) else {})
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())[:120]
        return RunRecord(path.name, path, UNREADABLE, {}, None, planned, f"config.yaml: {reason}")
    try:
        state = run.state()
        summary = run.summary() if state == DONE else None
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:120]
        return RunRecord(path.name, path, UNREADABLE, params, None, planned, f"summary: {reason}")
    return RunRecord(path.name, path, state, params, summary, planned)


def _read_plan(path: Path) -> dict[str, Any] | None:
    file = path / STUDY_FILE
    if not file.is_file():
        return None
    try:
        plan = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise ReportError(f"{file} is not readable JSON ({error}): repair or remove it.") from None
    if not isinstance(plan, dict):
        raise ReportError(f"{file} is not a JSON object: repair or remove it.")
    return plan


@functools.lru_cache(maxsize=256)
def _loaded_config(preset: str | None, overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """``regrow train``'s configuration of a preset and overrides, flattened (``None`` if this
    version cannot load it). Cached: the runs of one cell differ only by seed and out_dir."""
    try:
        from omegaconf import OmegaConf

        from ..train import load_config

        config = load_config(preset, [*overrides, "out_dir=<planned>"])
        return _flatten(OmegaConf.to_container(OmegaConf.structured(config)))
    except Exception:  # a preset or override this version cannot load: the listed params only
        return None


def _planned_params(plan: dict[str, Any], entry: dict[str, Any], path: Path) -> dict[str, Any]:
    """The configuration of a planned run that has no directory: its preset and overrides as
    ``regrow train`` would load them (the seed set afterwards), then the parameters
    ``study.json`` lists for it."""
    overrides = [str(o) for o in (*(plan.get("overrides") or []), *(entry.get("overrides") or []))]
    seed = None
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "seed" and value.strip().lstrip("-").isdigit():
            seed = int(value)
    rest = tuple(o for o in overrides if o.partition("=")[0].strip() not in ("seed", "out_dir"))
    preset = plan.get("preset")
    params = dict(_loaded_config(preset if isinstance(preset, str) else None, rest) or {})
    params["out_dir"] = str(path)
    if seed is not None:
        params["seed"] = seed
    listed = entry.get("params")
    if isinstance(listed, dict):
        params.update(listed)
    return params


def load(directory: str | Path) -> Study:
    """Read a study directory: every run directory under it and, if present, ``study.json``
    (whose planned runs without a directory become ``absent`` records). Raises
    :class:`ReportError` if ``directory`` is missing, not a directory, or holds no runs."""
    path = Path(directory)
    if not path.exists():
        raise ReportError(
            f"{path} does not exist: give a study directory (it holds run directories)."
        )
    if not path.is_dir():
        raise ReportError(
            f"{path} is not a directory: give a study directory (it holds run directories)."
        )
    plan = _read_plan(path)
    records: list[RunRecord] = []
    seen: set[str] = set()
    for entry in (plan or {}).get("runs") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name or name in seen:
            continue
        seen.add(name)
        run_path = path / name
        if (run_path / RunDir.CONFIG).is_file():
            record = _read_run(run_path, planned=True)
            listed = entry.get("params")
            if isinstance(listed, dict):  # labels the plan gives (tag), beside the config's keys
                record.params.update({k: v for k, v in listed.items() if k not in record.params})
            records.append(record)
        else:
            params = _planned_params(plan or {}, entry, run_path)
            records.append(RunRecord(name, run_path, ABSENT, params, None, planned=True))
    try:
        children = sorted(path.iterdir(), key=lambda p: _natural(p.name))
    except OSError as error:
        raise ReportError(f"cannot read {path}: {error.strerror or error}") from None
    for child in children:
        if child.name not in seen and child.is_dir() and (child / RunDir.CONFIG).is_file():
            records.append(_read_run(child))
    if not records:
        raise ReportError(
            f"{path} holds no run directories (subdirectories with {RunDir.CONFIG}) and no "
            f"{STUDY_FILE}: give the directory a sweep or `regrow train out_dir=...` wrote into."
        )
    return Study(path, records, plan)


def collect(directory: str | Path) -> list[RunRecord]:
    """The runs of a study directory (see :func:`load`): planned order, then by name."""
    return load(directory).records


# ----------------------------------------------------------------------------- grouping keys
def _freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a configuration value (lists, mappings)."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


def available_keys(records: Iterable[RunRecord]) -> list[str]:
    """Every key a report can group by: the runs' configuration keys, their method arguments
    (``sparsity.args.*``) and their summary's scalar values."""
    keys: set[str] = set()
    for record in records:
        keys.update(record.params)
        summary = record.summary or {}
        args = summary.get("method_args")
        if isinstance(args, dict):
            keys.update(f"sparsity.args.{name}" for name in args)
        keys.update(k for k, v in summary.items() if v is None or isinstance(v, str | int | float))
    return sorted(keys)


def _priority(key: str) -> int:
    for index, names in enumerate(SORT_FIRST):
        if key in names:
            return index
    return len(SORT_FIRST)


def varying_keys(records: Sequence[RunRecord]) -> list[str]:
    """The configuration keys whose value differs between ``records`` (``seed`` and
    :data:`NOT_GROUPED` aside): method, distribution and sparsity first, then by name; just
    ``sparsity.method`` if none differs."""
    keys = {key for record in records for key in record.params} - set(NOT_GROUPED)
    varying = [k for k in keys if len({_freeze(r.value(k)) for r in records}) > 1]
    varying.sort(key=lambda k: (_priority(k), k))
    return varying or ["sparsity.method"]


def check_keys(keys: Sequence[str], records: Sequence[RunRecord]) -> None:
    """Raise :class:`ReportError` naming an unknown group-by key and listing those available."""
    available = available_keys(records)
    for key in keys:
        if key not in available:
            hint = did_you_mean(key, available, n=1)
            hint = f" ({hint})" if hint else ""
            raise ReportError(
                f"unknown --group-by key {key!r}{hint}; available: {', '.join(available)}"
            )


def available_metrics(records: Iterable[RunRecord]) -> list[str]:
    """The numeric summary values of the finished runs (the metrics a table can show)."""
    names = {k for r in records if r.done for k in r.summary or {} if r.metric(k) is not None}
    return sorted(names)


def default_metrics(records: Sequence[RunRecord]) -> list[str]:
    """:data:`DEFAULT_METRICS`, with ``val_accuracy`` after ``test_accuracy`` when a run has one."""
    metrics = list(DEFAULT_METRICS)
    if any(r.metric("val_accuracy") is not None for r in records):
        metrics.insert(1, "val_accuracy")
    return metrics


def check_metrics(metrics: Sequence[str], records: Sequence[RunRecord]) -> None:
    """Raise :class:`ReportError` for a metric no finished run has, listing those available
    (nothing to check while no run has finished)."""
    available = available_metrics(records)
    if not available:
        return
    for name in metrics:
        if name not in available:
            raise ReportError(f"unknown metric {name!r}; available: {', '.join(available)}")


def select_runs(records: Sequence[RunRecord], patterns: Sequence[str]) -> list[RunRecord]:
    """The records whose name matches one of ``patterns`` (names or shell globs such as
    ``rigl_*``); :class:`ReportError` for a pattern that matches none."""
    from fnmatch import fnmatchcase

    chosen: set[str] = set()
    for pattern in patterns:
        matched = {r.name for r in records if fnmatchcase(r.name, pattern)}
        if not matched:
            names = ", ".join(r.name for r in records[:30])
            more = f", ... ({len(records)} in all)" if len(records) > 30 else ""
            raise ReportError(f"--runs {pattern!r} matches no run; runs: {names}{more}")
        chosen |= matched
    return [r for r in records if r.name in chosen]


# ------------------------------------------------------------------------------------ cells
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
        """Sample standard deviation (``n - 1``), 0 for one value, ``None`` for none."""
        if not self.values:
            return None
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


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
    """Natural order of one value (module docstring): known names by rank, numbers numerically,
    text alphabetically, missing values last."""
    if value is None:
        return (3,)
    order = METHOD_ORDER if key in SORT_FIRST[0] else DISTRIBUTION_ORDER
    if key in (*SORT_FIRST[0], *SORT_FIRST[1]) and value in order:
        return (0, order.index(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (1, float(value))
    return (2, str(value))


def aggregate(
    records: Sequence[RunRecord], group_by: Sequence[str], metrics: Sequence[str]
) -> list[Cell]:
    """Group ``records`` into cells by the values of ``group_by``; each metric's mean, std and n
    over the finished runs of a cell; the expected and missing seeds (module docstring: per
    cell when the records come from ``study.json``'s plan, else every seed of ``records``)."""
    groups: dict[tuple[Any, ...], list[RunRecord]] = {}
    for record in records:
        groups.setdefault(tuple(_freeze(record.value(k)) for k in group_by), []).append(record)
    planned = any(r.planned for r in records)
    everywhere = {r.seed for r in records if r.seed is not None}
    cells = []
    for frozen, members in groups.items():
        stats = {}
        for name in metrics:
            values = (r.metric(name) for r in members if r.done)
            stats[name] = Stat(tuple(v for v in values if v is not None))
        expected = {r.seed for r in members if r.seed is not None}
        if not planned:
            expected |= everywhere
        finished = {r.seed for r in members if r.done}
        missing = []
        for seed in sorted(expected - finished):
            others = [r for r in members if r.seed == seed]
            missing += [Missing(seed, r.state, r.name) for r in others] or [Missing(seed, ABSENT)]
        missing += [
            Missing(None, r.state, r.name) for r in members if r.seed is None and not r.done
        ]
        group = tuple(zip(group_by, frozen, strict=True))
        cells.append(Cell(group, members, stats, tuple(sorted(expected)), tuple(missing)))
    priority = sorted(range(len(group_by)), key=lambda i: _priority(group_by[i]))
    # A study's labels (tag, tag.<name>) keep the order the study gives them.
    first_seen = {
        key: list(dict.fromkeys(_freeze(r.value(key)) for r in records))
        for key in group_by
        if key == "tag" or key.startswith("tag.")
    }

    def sort_value(key: str, value: Any) -> Any:
        if key in first_seen:
            return (0, first_seen[key].index(_freeze(value)))
        return _sort_value(key, value)

    def order(cell: Cell) -> tuple[Any, ...]:
        values = cell.values
        return tuple(sort_value(group_by[i], values[group_by[i]]) for i in priority)

    return sorted(cells, key=order)


# ---------------------------------------------------------------------------- table writers
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
    """Format of a metric's numbers: accuracies (%) to 2 decimals, ratios to 4, seconds to 1."""
    if metric.endswith("accuracy"):
        return ".2f"
    if metric.endswith("_ratio") or metric in ("sparsity", "target_sparsity", "density"):
        return ".4f"
    if metric.endswith("seconds"):
        return ".1f"
    return ".4g"


def fmt_stat(metric: str, stat: Stat) -> str:
    """``mean ± std`` (``—`` without finished runs)."""
    if stat.mean is None or stat.std is None:
        return "—"
    spec = _digits(metric)
    return f"{stat.mean:{spec}} ± {stat.std:{spec}}"


def _missing_text(cell: Cell) -> str:
    return ", ".join(str(m) for m in cell.missing) or "—"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    cells: Sequence[Cell], group_by: Sequence[str], metrics: Sequence[str], title: str | None = None
) -> str:
    """The cells as a Markdown table (one row per cell: group values, n, each metric's mean ±
    std, the missing seeds with their runs' state), then the runs that have not finished."""
    header = [*group_by, "n/expected", *(f"{m} (mean ± std)" for m in metrics), "missing seeds"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        values = cell.values
        row = [fmt_value(values[k]) for k in group_by]
        row += [f"{cell.n}/{len(cell.expected_seeds)}" if cell.expected_seeds else str(cell.n)]
        row += [fmt_stat(m, cell.stats[m]) for m in metrics]
        row += [_missing_text(cell)]
        lines.append("| " + " | ".join(_escape(v) for v in row) + " |")
    unfinished = [(cell, r) for cell in cells for r in cell.records if not r.done]
    if unfinished:
        lines += ["", f"Runs not finished ({len(unfinished)}):", ""]
        for cell, record in unfinished:
            detail = f", {record.detail}" if record.detail else ""
            seed = "?" if record.seed is None else record.seed
            lines.append(f"- {record.name}: {record.state}{detail} (seed {seed}; {cell.label()})")
    return "\n".join(lines) + "\n"


def to_csv(cells: Sequence[Cell], group_by: Sequence[str], metrics: Sequence[str]) -> str:
    """The cells as CSV: group values, ``n``, ``<metric>_mean``/``_std``/``_n`` per metric,
    ``expected_seeds`` and ``missing`` (``seed:state`` pairs), separated by ``;``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [f"{m}_{part}" for m in metrics for part in ("mean", "std", "n")]
    writer.writerow([*group_by, "n", *columns, "expected_seeds", "missing"])
    for cell in cells:
        values = cell.values
        row: list[Any] = [
            fmt_value(values[k]) if values[k] is None else values[k] for k in group_by
        ]
        row.append(cell.n)
        for name in metrics:
            stat = cell.stats[name]
            row += ["" if stat.mean is None else stat.mean, "" if stat.std is None else stat.std]
            row.append(stat.n)
        row.append(";".join(map(str, cell.expected_seeds)))
        row.append(";".join(f"{'' if m.seed is None else m.seed}:{m.state}" for m in cell.missing))
        writer.writerow(["" if v == "—" else v for v in row])
    return buffer.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def to_json(
    cells: Sequence[Cell],
    group_by: Sequence[str],
    metrics: Sequence[str],
    **extra: Any,
) -> dict[str, Any]:
    """The cells as one JSON object: ``group_by``, ``metrics``, ``cells`` (each with its group
    values, n, per-metric mean/std/n/values, expected seeds, missing seeds with state and run,
    and its runs) and the ``extra`` entries (the study, the figures)."""
    out = []
    for cell in cells:
        out.append(
            {
                "group": cell.values,
                "n": cell.n,
                "metrics": {
                    m: {"mean": s.mean, "std": s.std, "n": s.n, "values": list(s.values)}
                    for m, s in cell.stats.items()
                },
                "expected_seeds": list(cell.expected_seeds),
                "missing": [dataclasses.asdict(m) for m in cell.missing],
                "runs": [{"name": r.name, "state": r.state, "seed": r.seed} for r in cell.records],
            }
        )
    return _jsonable({**extra, "group_by": list(group_by), "metrics": list(metrics), "cells": out})


# --------------------------------------------------------------------------------- a report
def draw(kind: str, records: Sequence[RunRecord], path: str | Path, **options: Any) -> Any:
    """Draw figure ``kind`` of :data:`FIGURE_KINDS` to ``path`` (see :func:`.figures.draw`)."""
    from .figures import draw as draw_figure

    return draw_figure(kind, records, path, **options)


def parse_figures(value: str | Sequence[str] | None) -> tuple[list[str], bool]:
    """``--figures``: ``all`` (every kind), ``none``, or a comma-separated list of kinds; returns
    the kinds and whether they were named one by one (then a figure without data is a warning,
    not a note). :class:`ReportError` for an unknown kind, listing :data:`FIGURE_KINDS`."""
    if value is None:
        return list(FIGURE_KINDS), False
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [item.strip() for item in items if item.strip()]
    if names == ["all"]:
        return list(FIGURE_KINDS), False
    if names in (["none"], []):
        return [], False
    for name in names:
        if name not in FIGURE_KINDS:
            raise ReportError(
                f"unknown figure {name!r}; figures: {', '.join(FIGURE_KINDS)} (or all, none)"
            )
    return list(dict.fromkeys(names)), True


@dataclass
class Report:
    """What :func:`build_report` made: the study, its cells and settings, the Markdown text, the
    files written, and one line per figure skipped (``notes``) or failed for lack of data when it
    was asked for by name (``warnings``)."""

    study: Study
    records: list[RunRecord]
    group_by: list[str]
    metrics: list[str]
    cells: list[Cell]
    text: str
    written: list[Path] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _split(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def build_report(
    directory: str | Path,
    group_by: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    figures: str | Sequence[str] | None = None,
    runs: str | Sequence[str] | None = None,
    out: str | Path | None = None,
) -> Report:
    """Read ``directory``, aggregate, write ``report.md``/``.csv``/``.json`` and the figures to
    ``out`` (default ``directory/report``). Arguments left ``None`` take the defaults of the
    module docstring; ``runs`` (names or globs) restricts the report to those runs."""
    from .figures import NoData

    study = load(directory)
    records = study.records
    chosen = _split(runs)
    if chosen:
        records = select_runs(records, chosen)
    # Keys and metrics named on the command line are checked; study.json's were checked by the
    # sweep against the configuration (a metric no run has yet shows as "—").
    keys = _split(group_by)
    if keys:
        check_keys(keys, records)
    keys = keys or study.setting("group_by") or varying_keys(records)
    names = _split(metrics)
    if names:
        check_metrics(names, records)
    names = names or study.setting("metrics") or default_metrics(records)
    if figures is None and study.setting("figures") is not None:
        figures = study.setting("figures")
    kinds, explicit = parse_figures(figures)
    cells = aggregate(records, keys, names)
    done = [r for r in records if r.done]
    title = f"Study {study.name}: {len(done)} of {len(records)} runs finished"
    text = markdown(cells, keys, names, title)
    result = Report(study, records, keys, names, cells, text)
    out_dir = Path(out) if out is not None else study.path / "report"
    for kind in kinds:
        target = out_dir / f"{kind}.png"
        try:
            draw(kind, records, target, group_by=keys, runs=chosen)
        except NoData as reason:
            line = f"{kind}: {reason}"
            (result.warnings if explicit else result.notes).append(line)
            result.figures[kind] = f"skipped: {reason}"
            continue
        result.figures[kind] = str(target)
        result.written.append(target)
    extra = {
        "study": study.name,
        "directory": str(study.path),
        "runs": [
            {"name": r.name, "state": r.state, "seed": r.seed, "detail": r.detail or None}
            for r in records
        ],
        "figures": result.figures,
    }
    for name, content in (
        ("report.md", text),
        ("report.csv", to_csv(cells, keys, names)),
        ("report.json", json.dumps(to_json(cells, keys, names, **extra), indent=2) + "\n"),
    ):
        write_text(out_dir / name, content)
        result.written.append(out_dir / name)
    return result
