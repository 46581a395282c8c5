"""The submitit :class:`~regrow.study.executors.Executor`: one job array on SLURM (or submitit's
local/debug executors), each job a :class:`SweepJob` training one run in a child process that
checkpoints and is requeued on a timeout. submitit is imported only when this executor is built."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .executors import (
    LOG_FILE,
    POLL_SECONDS,
    Children,
    Outcome,
    RunOutcome,
    RunTask,
    SweepProgress,
    default_threads,
    execute,
    thread_env,
)
from .planning import RunSpec, StudyPlan
from .schema import StudyError

__all__ = ["SubmititExecutor", "SweepJob"]


def _import_submitit() -> Any:
    import submitit  # optional (the slurm extra); the CLI names the extra when it is missing

    return submitit


def _checkpointable_base() -> type:
    try:
        from submitit.helpers import Checkpointable
    except ImportError:
        return object
    return Checkpointable


class SweepJob(_checkpointable_base()):  # type: ignore[misc]
    """One submitit job: trains its :class:`RunTask` in a child process. On a timeout or
    preemption submitit calls :meth:`checkpoint`: the child gets SIGTERM, writes a checkpoint and
    exits 143, and the job is resubmitted with the same task, which resumes it."""

    #: Under SLURM, how long a job whose child was stopped by SIGTERM waits for submitit's
    #: requeue signal before reporting the run interrupted.
    REQUEUE_WAIT_SECONDS = 120

    def __init__(self) -> None:
        self._children: Children | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._children = None

    def __call__(self, task: RunTask) -> dict[str, Any]:
        self._children = children = Children()
        try:
            outcome = execute(task, children)
        except KeyboardInterrupt:  # submitit's cancel of a local job: SIGINT
            children.forward(signal.SIGINT)
            while children.running():
                time.sleep(0.1)
            log = str(Path(task.path) / LOG_FILE)
            outcome = Outcome(task.name, RunOutcome.INTERRUPTED, 130, log)
        if outcome.status == RunOutcome.INTERRUPTED and "SLURM_JOB_ID" in os.environ:
            time.sleep(self.REQUEUE_WAIT_SECONDS)  # preempted: submitit's signal requeues us
        return outcome.as_dict()

    def checkpoint(self, task: RunTask) -> Any:
        """Stop the child through its own SIGTERM path (it checkpoints), then requeue."""
        children = self._children
        if children is not None:
            children.forward(signal.SIGTERM)
            deadline = time.monotonic() + 300
            while children.running() and time.monotonic() < deadline:
                time.sleep(0.1)
        return super().checkpoint(task)


class SubmititExecutor:
    """One submitit job array for the pending runs: ``kind`` ``slurm`` (a cluster), ``local``
    (submitit's ``LocalExecutor``: jobs as local processes) or ``debug`` (in this process)."""

    def __init__(
        self,
        folder: Path,
        kind: str = "slurm",
        parameters: dict[str, Any] | None = None,
        nproc: int = 1,
        threads_per_run: int | None = None,
    ) -> None:
        submitit = _import_submitit()
        self.kind, self.nproc = kind, nproc
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=kind)
            self.executor.update_parameters(**(parameters or {}))
        except (ValueError, TypeError, NameError, RuntimeError) as error:
            raise StudyError(f"submitit ({kind}): {error}") from None
        cpus = (parameters or {}).get("cpus_per_task")
        self.env = thread_env(threads_per_run or max(1, (cpus or default_threads(1)) // nproc))
        self.signal = 0

    def task(self, plan: StudyPlan, run: RunSpec) -> RunTask:
        return RunTask.of(plan, run, nproc=self.nproc, env=dict(self.env))

    def run(self, tasks: Sequence[RunTask], progress: SweepProgress) -> list[Outcome]:
        jobs = self.executor.map_array(SweepJob(), list(tasks))
        ids = ", ".join(sorted({str(job.job_id).split("_")[0] for job in jobs}))
        print(f"regrow sweep: submitted {len(jobs)} runs as submitit job {ids}", file=sys.stderr)
        outcomes: list[Outcome] = []
        pending = dict(zip(jobs, tasks, strict=True))
        try:
            while pending:
                for job in [j for j in pending if self.kind == "debug" or j.done()]:
                    task = pending.pop(job)
                    outcomes.append(self._outcome(job, task))
                    progress.finished(outcomes[-1])
                progress.refresh()
                if pending:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.signal = signal.SIGINT
            if self.kind == "slurm":
                print(
                    f"regrow sweep: stopped waiting; SLURM job {ids} keeps running (scancel it to "
                    "stop); run the same command again to collect the results",
                    file=sys.stderr,
                )
                return outcomes
            for job in pending:
                with contextlib.suppress(Exception):
                    job.cancel()
            for job, task in pending.items():
                with contextlib.suppress(Exception):
                    job.wait()
                outcomes.append(Outcome(task.name, RunOutcome.INTERRUPTED))
        return outcomes

    @staticmethod
    def _outcome(job: Any, task: RunTask) -> Outcome:
        try:
            result = job.result()
        except Exception as error:  # the job itself failed (see its submitit log)
            detail = str(error).splitlines()[0][:200]
            return Outcome(task.name, RunOutcome.FAILED, None, str(job.paths.stderr), detail)
        return Outcome.from_dict(result)

    def capacity(self) -> int:
        return 1  # the search asks one trial at a time; the cluster schedules the array

    def running(self) -> int:
        return 0  # jobs are not watched one by one: the bar counts them when they finish

    def interrupted(self) -> int:
        return self.signal

    def request_stop(self, signum: int) -> None:
        self.signal = signum
