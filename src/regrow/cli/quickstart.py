"""``regrow quickstart``: the shipped ``quickstart`` study on the bundled digits, through the sweep
machinery, then its table and figure."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .common import UsageError, add_intermixed_parser, run_harness


def add_quickstart_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow quickstart``."""
    parser = add_intermixed_parser(
        subparsers,
        "quickstart",
        help="Dense, Static, SET and RigL on the bundled digits over 3 seeds (about a minute)",
        description=(
            "Run the shipped quickstart study: Dense, Static, SET, RigL and a RigL control with "
            "only its step-0 mask update, at sparsity 0.97 (ERK) on scikit-learn's bundled "
            "digits, over --seeds seeds, --workers runs at a time; print the table (test "
            "accuracy mean ± std, missing seeds, inference and training FLOPs x dense) and "
            "write report.md, report.csv, report.json and accuracy_by_cell.png to "
            "--out/report. Finished runs are reused and interrupted ones resumed when the "
            "command is run again. The same runs: regrow sweep quickstart."
        ),
    )
    parser.add_argument(
        "--out", default="runs/quickstart", metavar="DIR", help="study directory (runs/quickstart)"
    )
    # The old spelling, hidden: commands written before --out keep running.
    parser.add_argument("--out-dir", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=None, help="runs at a time (default: cores, at most 4)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run"
    )
    parser.set_defaults(handler=run_quickstart)
    return parser


#: Keys quickstart sets for each run itself; an override of one would be silently replaced (seed,
#: out_dir) or would collapse the study (sparsity.method).
OWN_KEYS = {
    "sparsity.method": "it trains dense, static, set and rigl",
    "seed": "use --seeds",
    "out_dir": "use --out",
}


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in OWN_KEYS:
            raise UsageError(
                f"{item!r}: quickstart sets {key} for each run itself ({OWN_KEYS[key]}); drop it, "
                f"or train one run with `regrow train --preset quickstart {shlex.quote(item)} "
                "out_dir=...`."
            )


def run_quickstart(args: argparse.Namespace) -> int:
    """Handle ``regrow quickstart``: the sweep's exit status (0 done, 1 some run failed, 130
    interrupted)."""
    from ..study.quickstart import run_quickstart as quickstart

    def work() -> int:
        for flag in ("seeds", "workers"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise UsageError(f"--{flag} {value}: allowed values are integers >= 1.")
        _check_overrides(args.overrides)
        status, report = quickstart(args.out, args.seeds, args.overrides, args.workers)
        if report is not None:
            print(report.text, end="")
            for note in report.notes + report.warnings:
                print(f"regrow quickstart: figure skipped: {note}", file=sys.stderr)
            for path in report.written:
                if path.suffix == ".png":
                    print(f"plot: {path}")
        return status

    return run_harness("quickstart", work)
