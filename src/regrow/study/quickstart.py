"""``regrow quickstart``: the shipped ``quickstart`` study (``regrow/studies/quickstart.yaml``) run
by the sweep machinery on this machine, then its report — the smallest instance of ``regrow
sweep`` + ``regrow report``."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence

from . import sweep
from .executors import LocalExecutor
from .planning import plan_runs
from .report import Report, build_report
from .schema import load_study

#: The study the quickstart runs.
STUDY = "quickstart"


def default_workers() -> int:
    """Runs at once: one per core, at most 4 (each run is small; starting a process costs more
    than a second thread would save)."""
    return min(4, os.cpu_count() or 1)


def run_quickstart(
    out_dir: str, seeds: int = 3, overrides: Sequence[str] = (), workers: int | None = None
) -> tuple[int, Report | None]:
    """Train the quickstart study's pending runs into ``out_dir`` (finished runs are reused,
    interrupted ones resumed), then write its report to ``out_dir/report``. Returns the sweep's
    exit status (0 all done, 1 some failed, 130/143 interrupted) and the report (``None`` when
    interrupted)."""
    plan = plan_runs(load_study(STUDY), None, seeds, list(overrides), out_dir)
    count = workers or default_workers()
    executor = LocalExecutor(count, [], 1, None)
    words = ["regrow", "quickstart", "--out", out_dir, "--seeds", str(seeds)]
    words += [] if workers is None else ["--workers", str(workers)]
    status = sweep.run_sweep(plan, executor, False, shlex.join([*words, *overrides]))
    if status not in (0, 1):
        return status, None
    return status, build_report(out_dir)
