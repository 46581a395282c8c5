"""A study directory read as run records: :class:`RunRecord` (one run, found on disk or planned by
``study.json``), :class:`StudyDir` (all of them and the plan), and the checks of the keys, metrics
and run names a report is asked for. Reading never raises for a bad run (it is ``unreadable``);
bad input to a report raises :class:`ReportError`. The manual is ``docs/REPORT.md``."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from ..sparsity import get_method
from ..train import load_config
from ..train.rundir import DONE, MASK_UPDATE_EVENT, NOT_IDENTITY, RunDir, RunDirError
from ..util.suggest import did_you_mean
from .names import STUDY_FILE

ABSENT = "absent"  #: planned by ``study.json``, no run directory (yet)
UNREADABLE = "unreadable"  #: ``config.yaml`` or ``summary.json`` is not valid YAML/JSON

#: The metrics a report shows when neither the command line nor ``study.json`` names any.
DEFAULT_METRICS = ("test_accuracy", "sparsity", "inference_flops_ratio", "train_flops_ratio")
#: The score a task's runs are judged by (test, validation): the language-model task's runs
#: record bits per character (lower is better), image runs accuracy. The first pair whose test
#: metric some run has is the one a report shows by default.
SCORES = (("test_bpc", "val_bpc"), ("test_accuracy", "val_accuracy"))

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
        args_class = get_method(method).Args
    except Exception:  # an unregistered or unimportable method: nothing to fill in
        return None
    for item in dataclasses.fields(args_class):
        if item.name == argument and item.default is not dataclasses.MISSING:
            return item.default
    return None


@dataclass
class RunRecord:
    """One run of a study: found on disk, planned by ``study.json``, or both.

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
        at its default is the one the summary recorded, else the default of the method's
        ``Args``. ``None`` if the run has none."""
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
class StudyDir:
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


# ------------------------------------------------------------------------- reading from disk
def _natural(name: str) -> list[Any]:
    """Sort key of a run name with its numbers compared numerically (``s2`` before ``s10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def summary_problem(path: str | Path) -> str | None:
    """Why the run directory's ``summary.json`` cannot be read as a summary (not JSON, not a JSON
    object), naming the file; ``None`` if it can, or if there is none."""
    try:
        RunDir(path).summary()
    except RunDirError as error:
        return f"{Path(path) / RunDir.SUMMARY} {error.problem or error}"
    return None


def _read_run(path: Path, planned: bool = False) -> RunRecord:
    """A run directory on disk as a record; never raises for a bad file (``unreadable``)."""
    run = RunDir(path)
    try:
        config = yaml.safe_load(run.config_path.read_text())
        params = _flatten(config if isinstance(config, dict) else {})
    except (OSError, yaml.YAMLError) as error:
        reason = " ".join(str(error).split())[:120]
        return RunRecord(path.name, path, UNREADABLE, {}, None, planned, f"config.yaml: {reason}")
    try:
        state = run.state()  # a run another process holds is locked, its summary not read
        summary = run.summary() if state == DONE else None
    except (OSError, ValueError) as error:
        problem = getattr(error, "problem", None)  # a damaged summary.json, said short
        if problem:
            detail = f"{RunDir.SUMMARY} {problem}"
        else:
            detail = f"{RunDir.SUMMARY}: {' '.join(str(error).split())[:120]}"
        return RunRecord(path.name, path, UNREADABLE, params, None, planned, detail)
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
        config = load_config(preset, [*overrides, "out_dir=<planned>"])
        return _flatten(OmegaConf.to_container(OmegaConf.structured(config)))
    except Exception:  # a preset or override this version cannot load: the listed params only
        return None


def _planned_params(plan: dict[str, Any], entry: dict[str, Any], path: Path) -> dict[str, Any]:
    """The configuration of a planned run that has no directory: its preset and overrides as
    ``regrow train`` would load them (the seed set afterwards), then the parameters
    ``study.json`` lists for it. A run's own overrides are complete (the study's and the command
    line's, a method argument only where its method has it); the study-wide list stands in only
    for a run that lists none."""
    overrides = [str(o) for o in (entry.get("overrides") or plan.get("overrides") or [])]
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


def _planned_records(path: Path, plan: dict[str, Any] | None) -> list[RunRecord]:
    """The runs ``study.json`` plans, in its order: read from disk when their directory holds a
    configuration, else ``absent`` with the configuration they would have."""
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
            problem = summary_problem(run_path)  # a damaged summary.json without config.yaml
            state, detail = (ABSENT, "") if problem is None else (UNREADABLE, problem)
            detail = detail.replace(str(run_path / RunDir.SUMMARY), RunDir.SUMMARY, 1)
            records.append(RunRecord(name, run_path, state, params, None, True, detail))
    return records


def load(directory: str | Path) -> StudyDir:
    """Read a study directory: every run directory under it and, if present, ``study.json``
    (whose planned runs without a directory become ``absent`` records); a run directory itself
    (``config.yaml``, no ``study.json``) is read as a study of that one run. Raises
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
    if plan is None and (path / RunDir.CONFIG).is_file():  # a run directory: report that run
        return StudyDir(path, [_read_run(path)], None)
    records = _planned_records(path, plan)
    seen = {record.name for record in records}
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
    return StudyDir(path, records, plan)


def collect(directory: str | Path) -> list[RunRecord]:
    """The runs of a study directory (see :func:`load`): planned order, then by name."""
    return load(directory).records


def select_runs(records: Sequence[RunRecord], patterns: Sequence[str]) -> list[RunRecord]:
    """The records whose name matches one of ``patterns`` (names or shell globs such as
    ``rigl_*``); :class:`ReportError` for a pattern that matches none."""
    chosen: set[str] = set()
    for pattern in patterns:
        matched = {r.name for r in records if fnmatchcase(r.name, pattern)}
        if not matched:
            names = ", ".join(r.name for r in records[:30])
            more = f", ... ({len(records)} in all)" if len(records) > 30 else ""
            raise ReportError(f"--runs {pattern!r} matches no run; runs: {names}{more}")
        chosen |= matched
    return [r for r in records if r.name in chosen]


# ---------------------------------------------------------------------- keys and metrics
def freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a configuration value (lists, mappings)."""
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    return value


def key_priority(key: str) -> int:
    """Where a group-by key sorts: its place in :data:`SORT_FIRST`, else after them all."""
    for index, names in enumerate(SORT_FIRST):
        if key in names:
            return index
    return len(SORT_FIRST)


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


def varying_keys(records: Sequence[RunRecord]) -> list[str]:
    """The configuration keys whose value differs between ``records`` (``seed`` and
    :data:`NOT_GROUPED` aside): method, distribution and sparsity first, then by name; just
    ``sparsity.method`` if none differs."""
    keys = {key for record in records for key in record.params} - set(NOT_GROUPED)
    varying = [k for k in keys if len({freeze(r.value(k)) for r in records}) > 1]
    varying.sort(key=lambda k: (key_priority(k), k))
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


def scores(records: Sequence[RunRecord]) -> tuple[str, str]:
    """The (test, validation) metrics the runs are judged by: ``test_bpc``/``val_bpc`` when a
    run has ``test_bpc`` (the language-model task), else ``test_accuracy``/``val_accuracy``."""
    for test, validation in SCORES[:-1]:
        if any(r.metric(test) is not None for r in records):
            return test, validation
    return SCORES[-1]


def default_metrics(records: Sequence[RunRecord]) -> list[str]:
    """:data:`DEFAULT_METRICS`, its ``test_accuracy`` replaced by ``test_bpc`` when a run has
    one (:func:`scores`), and the validation metric after it when a run has one."""
    test, validation = scores(records)
    metrics = [test, *DEFAULT_METRICS[1:]]
    if any(r.metric(validation) is not None for r in records):
        metrics.insert(1, validation)
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
