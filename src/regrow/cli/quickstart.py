"""``regrow quickstart``: Dense, Static, SET and RigL on the bundled digits over a few seeds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import UsageError, run_harness


def add_quickstart_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``regrow quickstart``."""
    parser = subparsers.add_parser(
        "quickstart",
        help="Dense, Static, SET and RigL on the bundled digits over 3 seeds (about a minute)",
        description=(
            "Train Dense, Static, SET and RigL (ERK, sparsity 0.97) on scikit-learn's bundled digits "
            "over --seeds seeds, print a table (accuracy mean ± std, inference and training FLOPs "
            "x dense) and write accuracy.png, results.md and results.json to --out-dir. Finished "
            "runs are reused and interrupted ones resumed when the command is run again."
        ),
    )
    parser.add_argument("--out-dir", default="runs/quickstart")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run"
    )
    parser.set_defaults(handler=run_quickstart)
    return parser


#: Keys quickstart sets for each run itself; an override of one would be silently replaced (seed,
#: out_dir) or would train one method under every method's name (sparsity.method).
OWN_KEYS = {
    "sparsity.method": "it trains dense, static, set and rigl",
    "seed": "use --seeds",
    "out_dir": "use --out-dir",
}


def _check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in OWN_KEYS:
            raise UsageError(
                f"{item!r}: quickstart sets {key} for each run itself ({OWN_KEYS[key]}); drop it, "
                f"or train one run with `regrow train --preset quickstart {item} out_dir=...`."
            )


def run_quickstart(args: argparse.Namespace) -> int:
    """Handle ``regrow quickstart``."""
    from ..experiments.quickstart import run_quickstart as quickstart

    def work() -> int:
        if args.seeds < 1:
            raise UsageError(f"--seeds {args.seeds}: allowed values are integers >= 1.")
        _check_overrides(args.overrides)
        print(quickstart(args.out_dir, args.seeds, args.overrides), end="")
        print(f"plot: {Path(args.out_dir) / 'accuracy.png'}")
        return 0

    return run_harness("quickstart", work)
