"""The table writers of a report: cells (:mod:`.cells`) as Markdown, CSV and one JSON object.
Each writes the same cells in the same order; the column layout is in ``docs/REPORT.md``."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence
from typing import Any

from .cells import Cell, fmt_stat, fmt_value
from .direction import lower_is_better

#: The head of the note under a table whose cells merge runs of different configurations.
DIFFERING_NOTE = "Cells whose runs differ in keys not grouped by"


def _missing_text(cell: Cell) -> str:
    return ", ".join(str(m) for m in cell.missing) or "—"


def _metric_header(metric: str) -> str:
    """A metric's column head; a lower-is-better metric (:mod:`.direction`) says so."""
    if lower_is_better(metric):
        return f"{metric} (mean ± std; lower is better)"
    return f"{metric} (mean ± std)"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(
    cells: Sequence[Cell], group_by: Sequence[str], metrics: Sequence[str], title: str | None = None
) -> str:
    """The cells as a Markdown table (one row per cell: group values, n, each metric's mean ±
    std, the missing seeds with their runs' state), then the runs that have not finished. The
    head of a lower-is-better metric's column says so."""
    header = [*group_by, "n/expected", *map(_metric_header, metrics), "missing seeds"]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        values = cell.values
        row = [fmt_value(values[k]) for k in group_by]
        row += [f"{cell.n}/{len(cell.expected_seeds)}" if cell.expected_seeds else str(cell.n)]
        row += [fmt_stat(m, cell.stats[m]) for m in metrics]
        row += [_missing_text(cell)]
        lines.append("| " + " | ".join(_escape(v) for v in row) + " |")
    mixed = [cell for cell in cells if cell.differing]
    if mixed:
        lines += ["", f"{DIFFERING_NOTE} (add them to the group-by to tell the runs apart):", ""]
        for cell in mixed:
            listed = "; ".join(
                f"{key} ({', '.join(fmt_value(v) for v in values)})"
                for key, values in cell.differing.items()
            )
            lines.append(f"- {cell.label()}: {listed}")
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
                "differing_keys": {k: list(v) for k, v in cell.differing.items()},
            }
        )
    return _jsonable({**extra, "group_by": list(group_by), "metrics": list(metrics), "cells": out})
