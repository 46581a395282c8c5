"""``regrow report DIR``: the runs of a study directory as a table (mean ± std, n and the missing
seeds of each cell) and figures.

::

    regrow report runs/grid
    regrow report runs/grid --group-by sparsity.method,sparsity.sparsity --metrics test_accuracy
    regrow report runs/grid --figures accuracy_vs_sparsity,layer_density --runs 'rigl_*'
    regrow report runs/grid --figures none --out /tmp/grid_report

The work is :mod:`regrow.study.report` (over :mod:`~regrow.study.records`,
:mod:`~regrow.study.cells`, :mod:`~regrow.study.tables` and :mod:`~regrow.study.figures`); the
manual is ``docs/REPORT.md``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import run_harness


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow report``."""
    from ..study.names import FIGURE_KINDS

    parser = subparsers.add_parser(
        "report",
        help="tables (mean ± std over seeds, missing seeds) and figures of a study directory",
        description=(
            "Read every run directory under DIR (and DIR/study.json when `regrow sweep` wrote "
            "one), group the runs into cells by --group-by, and print a Markdown table of each "
            "cell's metrics (mean ± std over its finished runs, n) and its missing seeds (with "
            "the state of their runs: partial, failed, locked, absent). Writes report.md, "
            "report.csv, report.json and the figures (PNG) to --out. Figures the study has no "
            f"data for are skipped with a note. Figures: {', '.join(FIGURE_KINDS)}. "
            "The manual: docs/REPORT.md in the regrow repository."
        ),
    )
    parser.add_argument(
        "dir",
        metavar="DIR",
        help="the study directory (holds run directories), or one run directory",
    )
    parser.add_argument(
        "--group-by",
        metavar="K1,K2",
        default=None,
        help="dotted config keys (or summary keys) that define a cell, e.g. "
        "sparsity.method,sparsity.distribution,sparsity.sparsity (default: study.json's, else "
        "every config key that differs between runs, seed and out_dir aside)",
    )
    parser.add_argument(
        "--metrics",
        metavar="M1,M2",
        default=None,
        help="summary values to aggregate (default: study.json's, else test_accuracy, "
        "val_accuracy if held out, sparsity, inference_flops_ratio, train_flops_ratio; "
        "test_bpc and val_bpc in place of the accuracies for language-model runs)",
    )
    parser.add_argument(
        "--figures",
        metavar="KIND,...",
        default=None,
        help="figure kinds to draw, all (default) or none",
    )
    parser.add_argument(
        "--runs",
        metavar="NAME,...",
        default=None,
        help="only these runs (names or globs such as 'rigl_*'); layer_density and "
        "learning_curves then show each of them",
    )
    parser.add_argument("--out", metavar="OUTDIR", default=None, help="default: DIR/report")
    parser.set_defaults(handler=run_report)
    return parser


def run_report(args: argparse.Namespace) -> int:
    """Handle ``regrow report``: 0 when the tables were written (figures without data are
    notes, or warnings when named in --figures), 2 on bad input."""
    from ..study.report import build_report

    def work() -> int:
        result = build_report(
            args.dir,
            group_by=args.group_by,
            metrics=args.metrics,
            figures=args.figures,
            runs=args.runs,
            out=args.out,
        )
        print(result.text, end="")
        for note in result.notes:
            print(f"regrow report: skipped {note}", file=sys.stderr)
        for warning in result.table_warnings:
            print(f"regrow report: warning: {warning}", file=sys.stderr)
        for warning in result.warnings:
            print(f"regrow report: warning: not drawn: {warning}", file=sys.stderr)
        print()
        for path in result.written:
            print(f"wrote {path}")
        return 0

    return run_harness("report", work)
