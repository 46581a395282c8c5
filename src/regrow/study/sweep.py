"""``regrow sweep``'s driver: plan the pending runs of a study, write ``DIR/study.json``, hand
the runs to an :class:`~regrow.study.executors.Executor`, wait for runs held elsewhere, and turn
the outcomes into the exit status. It never launches a process itself. The manual is
``docs/SWEEP.md``."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..train.checkpoint import write_json
from ..train.rundir import DONE, FAILED, LOCKED, NEW, PARTIAL, RunDir, differing_keys
from ..util.signals import handling_signals
from .executors import (
    LOG_FILE,
    POLL_SECONDS,
    Executor,
    Outcome,
    RunOutcome,
    RunTask,
    SweepProgress,
    display_command,
    sweep_state,
    unreadable_detail,
)
from .names import STUDY_FILE
from .planning import RunSpec, StudyPlan
from .records import UNREADABLE
from .schema import StudyError

__all__ = [
    "check_existing",
    "check_study_dir",
    "continue_hint",
    "dry_run",
    "pending_runs",
    "print_commands",
    "run_sweep",
    "sweep_state",
    "write_study_json",
]


# ------------------------------------------------------------------------------ states, files
def check_study_dir(plan: StudyPlan) -> None:
    """A :class:`StudyError` if ``DIR/study.json`` is there and belongs to another study, or
    cannot be read (it is never overwritten then: a study directory holds one study)."""
    path = Path(plan.out_dir) / STUDY_FILE
    if not path.exists():
        return
    name = plan.study.name
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        reason = " ".join(str(getattr(error, "strerror", None) or error).split())[:120]
        raise StudyError(
            f"{path} is not readable JSON ({reason}): it says which study the directory holds; "
            f"remove it if the directory holds study {name} (the sweep writes it again), or give "
            "another --out."
        ) from None
    owner = found.get("study") if isinstance(found, dict) else None
    if not isinstance(owner, str):
        raise StudyError(
            f"{path} names no study: remove it if the directory holds study {name} (the sweep "
            "writes it again), or give another --out."
        )
    if owner != name:
        raise StudyError(
            f"{path} belongs to study {owner}, not {name}: a study directory holds one study; "
            f"give another --out (or sweep {owner} to continue it there)."
        )


def check_existing(plan: StudyPlan) -> None:
    """A :class:`StudyError` if the study directory holds another study (:func:`check_study_dir`),
    if a run's path is not a directory, or if a run directory already holds a run of another
    configuration (it would be resumed, or skipped as done, under this study's name) or a
    ``config.yaml`` that cannot be read."""
    check_study_dir(plan)
    for run in plan.runs:
        path = Path(run.path)
        if path.exists() and not path.is_dir():
            raise StudyError(
                f"{path} is not a directory, and run {run.name} trains there: move it away, or "
                "give another --out."
            )
        config_path = RunDir(run.path).config_path
        if not config_path.is_file() or run.name not in plan.configs:
            continue
        try:
            text = config_path.read_text()
            saved = yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            saved = " ".join(str(getattr(error, "strerror", None) or error).split())[:120]
        if not isinstance(saved, dict):
            what = saved if isinstance(saved, str) else f"a YAML {type(saved).__name__}"
            raise StudyError(
                f"{config_path} is not a readable configuration ({what}): move {run.path} away, "
                "or give another --out."
            )
        differ = differing_keys(text, plan.configs[run.name])
        if differ:
            listed = "; ".join(f"{k}: {a!r} there, {b!r} planned" for k, (a, b) in differ.items())
            raise StudyError(
                f"{run.path} holds a run of another configuration ({listed}): give another --out, "
                "or move that directory away."
            )


def write_study_json(plan: StudyPlan, runs: Sequence[RunSpec] | None = None, **extra: Any) -> Path:
    """Write ``DIR/study.json`` atomically (``runs``: these instead of the planned ones)."""
    path = Path(plan.out_dir) / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**plan.study_json(runs), **extra})
    return path


# ----------------------------------------------------------------------------- the sweep
def _state_text(run: RunSpec, state: str) -> str:
    """A run's state as printed: an ``unreadable`` one with why (the damaged file named)."""
    if state != UNREADABLE:
        return state
    return f"{state} ({unreadable_detail(run.path) or 'it changed while being read'})"


def dry_run(plan: StudyPlan) -> str:
    """Each run's name and state, then a count line (``unreadable`` runs counted when any)."""
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    width = max(len(name) for name in states)
    lines = [f"{run.name.ljust(width)}  {_state_text(run, states[run.name])}" for run in plan.runs]
    counts = {s: list(states.values()).count(s) for s in (NEW, PARTIAL, DONE, FAILED, LOCKED)}
    if UNREADABLE in states.values():
        counts[UNREADABLE] = list(states.values()).count(UNREADABLE)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([*lines, f"{len(states)} runs in {plan.out_dir}: {summary}"]) + "\n"


def _unreadable_line(run: RunSpec, detail: str) -> str:
    return (
        f"regrow sweep: unreadable: {run.name}: {detail}: repair it, or move {run.path} away to "
        "train the run again"
    )


def pending_runs(plan: StudyPlan, retry_failed: bool) -> list[tuple[RunSpec, str]]:
    """The runs to launch now (new, partial; failed with ``retry_failed``), with their state."""
    wanted = {NEW, PARTIAL} | ({FAILED} if retry_failed else set())
    found = [(run, sweep_state(run.path)) for run in plan.runs]
    return [(run, state) for run, state in found if state in wanted]


def print_commands(plan: StudyPlan, retry_failed: bool, nproc: int = 1) -> str:
    """One shell-quoted ``regrow train`` line per pending run (a resume for a partial one)."""
    for run in plan.runs:
        detail = unreadable_detail(run.path)
        if detail is not None:
            print(f"{_unreadable_line(run, detail)} (not listed)", file=sys.stderr)
    lines = []
    for run, _state in pending_runs(plan, retry_failed):
        task = RunTask.of(plan, run, nproc=nproc)
        lines.append(display_command(task, RunDir(run.path).has_checkpoint()))
    return "".join(f"{line}\n" for line in lines)


def continue_hint(command: str) -> str:
    return f"run the same command to continue: {command}"


def run_sweep(plan: StudyPlan, executor: Executor, retry_failed: bool, command: str) -> int:
    """Train the plan's pending runs with ``executor``; print what happened; the exit status
    (0 all done, 1 some failed, 128 + the signal when interrupted; ``docs/SWEEP.md``). ``command`` is the command line that continues the sweep."""
    check_existing(plan)
    write_study_json(plan)
    outcomes: dict[str, Outcome] = {}
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    done = sum(state == DONE for state in states.values())
    skipped = [run for run in plan.runs if states[run.name] == FAILED and not retry_failed]
    for run in skipped:
        outcomes[run.name] = Outcome(
            run.name, RunOutcome.SKIPPED, None, str(Path(run.path) / LOG_FILE)
        )
    damaged = [run for run in plan.runs if states[run.name] == UNREADABLE]
    for run in damaged:
        detail = unreadable_detail(run.path) or "unreadable"
        log = str(Path(run.path) / LOG_FILE)
        outcomes[run.name] = Outcome(run.name, RunOutcome.UNREADABLE, None, log, detail)
    left = {DONE, UNREADABLE}
    todo = [run for run in plan.runs if states[run.name] not in left and run not in skipped]
    print(
        f"regrow sweep: study {plan.study.name}: {len(plan.runs)} runs in {plan.out_dir} "
        f"({done} done, {len(todo)} to run{f', {len(skipped)} failed earlier' if skipped else ''}"
        f"{f', {len(damaged)} unreadable' if damaged else ''})",
        file=sys.stderr,
    )
    progress = SweepProgress(len(plan.runs), done, len(skipped) + len(damaged), executor.running)
    waited = False
    try:
        while todo:
            tasks = [executor.task(plan, run) for run in todo]
            for outcome in executor.run(tasks, progress):
                outcomes[outcome.name] = outcome
            if executor.interrupted():
                break
            elsewhere = [r for r in todo if outcomes[r.name].status == RunOutcome.ELSEWHERE]
            if not elsewhere:
                break
            if not waited:
                print(
                    f"regrow sweep: {len(elsewhere)} runs are running elsewhere "
                    f"({outcomes[elsewhere[0].name].detail or 'another process'}); waiting for "
                    "them, then taking over what they leave unfinished",
                    file=sys.stderr,
                )
                waited = True
            todo = _wait_for_holders(elsewhere, executor)
            if todo is None:
                break
    finally:
        progress.close()
    return _finish(plan, outcomes, executor, command)


def _wait_for_holders(runs: list[RunSpec], executor: Executor) -> list[RunSpec] | None:
    """Wait until no other process holds any of ``runs``; the ones left unfinished (``None`` if
    interrupted meanwhile: the executor is told to stop)."""
    stop = {"signal": 0}

    def handler(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    with handling_signals(handler):
        while any(sweep_state(run.path) == LOCKED for run in runs):
            if stop["signal"]:
                executor.request_stop(stop["signal"])
                return None
            time.sleep(POLL_SECONDS)
    return [run for run in runs if sweep_state(run.path) != DONE]


def _finish(plan: StudyPlan, outcomes: dict[str, Outcome], executor: Executor, command: str) -> int:
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    done = sum(state == DONE for state in states.values())
    failed = [o for o in outcomes.values() if o.status in (RunOutcome.FAILED, RunOutcome.SKIPPED)]
    head = f"regrow sweep: {plan.study.name}: {done} of {len(plan.runs)} runs done"
    interrupted = executor.interrupted()
    if interrupted:
        name = signal.Signals(interrupted).name
        print(f"{head}; interrupted ({name}), {continue_hint(command)}", file=sys.stderr)
        return 128 + int(interrupted)
    for outcome in failed:
        why = f": {outcome.detail}" if outcome.detail else ""
        print(f"regrow sweep: failed: {outcome.name} (log {outcome.log}){why}", file=sys.stderr)
    runs = {run.name: run for run in plan.runs}
    damaged = [o for o in outcomes.values() if o.status == RunOutcome.UNREADABLE]
    for outcome in damaged:
        print(_unreadable_line(runs[outcome.name], outcome.detail or "unreadable"), file=sys.stderr)
    if damaged and not failed:
        print(f"{head}, {len(damaged)} unreadable (named above)", file=sys.stderr)
        return 1
    if failed:
        print(
            f"{head}, {len(failed)} failed; after fixing the cause retry them with "
            f"{command} --retry-failed",
            file=sys.stderr,
        )
        return 1
    stopped = [o.name for o in outcomes.values() if o.status == RunOutcome.STOPPED]
    if stopped:
        print(f"{head}; {len(stopped)} stopped at train.stop_at_step", file=sys.stderr)
        return 0
    print(f"{head}; results in {plan.out_dir} (regrow report {plan.out_dir})", file=sys.stderr)
    return 0 if done == len(plan.runs) else 1
