"""``regrow report``'s report: a study directory read (:mod:`.records`), grouped into cells
(:mod:`.cells`), written as tables (:mod:`.tables`) and figures (:mod:`.figures`) into one output
directory. Settings come from the command line, else ``study.json``, else the defaults; the
manual is ``docs/REPORT.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..train.checkpoint import write_text
from .cells import Cell, aggregate
from .figures import NoData, draw
from .names import FIGURE_KINDS
from .records import (
    ReportError,
    RunRecord,
    StudyDir,
    check_keys,
    check_metrics,
    default_metrics,
    load,
    select_runs,
    varying_keys,
)
from .tables import markdown, to_csv, to_json


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
    was asked for by name (``warnings``), and what the table warns of (``table_warnings``: cells
    that merge runs of different configurations)."""

    study: StudyDir
    records: list[RunRecord]
    group_by: list[str]
    metrics: list[str]
    cells: list[Cell]
    text: str
    written: list[Path] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    table_warnings: list[str] = field(default_factory=list)


def _split(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _table_settings(
    study: StudyDir,
    records: Sequence[RunRecord],
    group_by: str | Sequence[str] | None,
    metrics: str | Sequence[str] | None,
) -> tuple[list[str], list[str]]:
    """The group-by keys and metrics: the command line's (checked against the runs), else
    ``study.json``'s, else the defaults."""
    # study.json's were checked by the sweep against the configuration (a metric no run has yet
    # shows as "—"), so only the command line's are checked here.
    keys = _split(group_by)
    if keys:
        check_keys(keys, records)
    keys = keys or study.setting("group_by") or varying_keys(records)
    names = _split(metrics)
    if names:
        check_metrics(names, records)
    names = names or study.setting("metrics") or default_metrics(records)
    return keys, names


def _draw_figures(
    result: Report, kinds: Sequence[str], explicit: bool, out_dir: Path, runs: list[str] | None
) -> None:
    """Draw each kind into ``out_dir``; a kind without data is a note, or a warning when it was
    named (``explicit``), and ``result.figures`` says why it was skipped."""
    for kind in kinds:
        target = out_dir / f"{kind}.png"
        try:
            draw(kind, result.records, target, group_by=result.group_by, runs=runs)
        except NoData as reason:
            line = f"{kind}: {reason}"
            (result.warnings if explicit else result.notes).append(line)
            result.figures[kind] = f"skipped: {reason}"
            continue
        result.figures[kind] = str(target)
        result.written.append(target)


def write_report(result: Report, out_dir: Path) -> None:
    """Write ``report.md``, ``report.csv`` and ``report.json`` (the cells, every run with its
    state, the figures written and skipped) atomically into ``out_dir``."""
    cells, keys, names = result.cells, result.group_by, result.metrics
    extra = {
        "study": result.study.name,
        "directory": str(result.study.path),
        "runs": [
            {"name": r.name, "state": r.state, "seed": r.seed, "detail": r.detail or None}
            for r in result.records
        ],
        "figures": result.figures,
    }
    for name, content in (
        ("report.md", result.text),
        ("report.csv", to_csv(cells, keys, names)),
        ("report.json", json.dumps(to_json(cells, keys, names, **extra), indent=2) + "\n"),
    ):
        write_text(out_dir / name, content)
        result.written.append(out_dir / name)


def build_report(
    directory: str | Path,
    group_by: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    figures: str | Sequence[str] | None = None,
    runs: str | Sequence[str] | None = None,
    out: str | Path | None = None,
) -> Report:
    """Read ``directory``, aggregate, write the figures and ``report.md``/``.csv``/``.json`` to
    ``out`` (default ``directory/report``). Arguments left ``None`` take ``study.json``'s
    settings, else the defaults; ``runs`` (names or globs) restricts the report to those runs."""
    study = load(directory)
    records = study.records
    chosen = _split(runs)
    if chosen:
        records = select_runs(records, chosen)
    keys, names = _table_settings(study, records, group_by, metrics)
    if figures is None and study.setting("figures") is not None:
        figures = study.setting("figures")
    kinds, explicit = parse_figures(figures)
    cells = aggregate(records, keys, names)
    done = [r for r in records if r.done]
    title = f"Study {study.name}: {len(done)} of {len(records)} runs finished"
    result = Report(study, records, keys, names, cells, markdown(cells, keys, names, title))
    out_dir = Path(out) if out is not None else study.path / "report"
    mixed = [cell for cell in cells if cell.differing]
    if mixed:
        keys_named = sorted({key for cell in mixed for key in cell.differing})
        one = len(mixed) == 1
        result.table_warnings.append(
            f"{len(mixed)} cell{'' if one else 's'} mix{'es' if one else ''} runs that differ in "
            f"keys not grouped by ({', '.join(keys_named)}): see the note under the table, or add "
            "the keys to --group-by"
        )
    _draw_figures(result, kinds, explicit, out_dir, chosen)
    write_report(result, out_dir)
    return result
