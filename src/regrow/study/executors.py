"""How the runs of a sweep are launched: one run as a ``regrow train`` child process
(:class:`RunTask`, :func:`execute`, :class:`RunOutcome`), the :class:`Executor` protocol the driver
(:mod:`regrow.study.sweep`) talks to, and :class:`LocalExecutor` (this machine's CPUs or GPUs).
A run's launch always ends in one :class:`RunOutcome`; a child never outlives a stop request
unasked. The manual is ``docs/SWEEP.md``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..train.checkpoint import write_json
from ..train.rundir import DONE, FAILED, LOCKED, NEW, PARTIAL, RunDir
from ..util.signals import handling_signals
from .planning import RunSpec, StudyPlan
from .records import UNREADABLE, summary_problem

__all__ = [
    "FAILURE_FILE",
    "LOG_FILE",
    "Children",
    "Executor",
    "LocalExecutor",
    "Outcome",
    "RunOutcome",
    "RunTask",
    "SweepProgress",
    "display_command",
    "execute",
    "sweep_state",
    "train_command",
    "unreadable_detail",
]

#: The child's stdout and stderr, appended, in each run directory.
LOG_FILE = "train.log"
#: Why a sweep's last launch of a run failed (exit status, command, the log's last lines).
FAILURE_FILE = "sweep_failure.json"
#: Lines of the log kept in :data:`FAILURE_FILE`.
TAIL_LINES = 20
#: Seconds between looks at a run held by another process, or at submitted jobs.
POLL_SECONDS = 1.0


class RunOutcome(str, enum.Enum):
    """What a run's launch ended as; the value is what is printed and written."""

    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ELSEWHERE = "running elsewhere"
    SKIPPED = "failed earlier (not retried)"
    STOPPED = "stopped at train.stop_at_step"
    UNREADABLE = "unreadable (not launched)"

    def __str__(self) -> str:
        return self.value


def unreadable_detail(path: str | Path) -> str | None:
    """Why a run directory no process holds is ``unreadable`` (a damaged ``summary.json``, named),
    else ``None``."""
    problem = summary_problem(path)
    if problem is None or RunDir(path).holder() is not None:
        return None
    return problem


def sweep_state(path: str | Path) -> str:
    """The run's state as the sweep sees it: :meth:`RunDir.state`; ``unreadable`` when its
    ``summary.json`` is damaged (:func:`unreadable_detail`: never launched, never a crash), and
    ``failed`` when a sweep's last launch of it failed (:data:`FAILURE_FILE`) and it is not done
    or locked."""
    if unreadable_detail(path) is not None:
        return UNREADABLE
    state = RunDir(path).state()
    if state in (NEW, PARTIAL) and (Path(path) / FAILURE_FILE).is_file():
        return FAILED
    return state


# ---------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class RunTask:
    """What a child needs to train one run: picklable, so a submitit job can carry it."""

    name: str
    path: str
    preset: str | None
    overrides: tuple[str, ...]
    nproc: int = 1  #: processes under torchrun (1: a plain ``regrow train``)
    env: dict[str, str] = field(default_factory=dict)  #: added to the child's environment

    @classmethod
    def of(cls, plan: StudyPlan, run: RunSpec, **kwargs: Any) -> RunTask:
        return cls(run.name, run.path, plan.preset, run.overrides, **kwargs)


def train_arguments(task: RunTask, resume: bool) -> list[str]:
    """``regrow train``'s arguments: a fresh start from the preset and overrides, or a resume."""
    if resume:
        return ["train", "--resume", task.path]
    return ["train", *(["--preset", task.preset] if task.preset else []), *task.overrides]


def train_command(task: RunTask, resume: bool, python: str = sys.executable) -> list[str]:
    """The child's command line: ``python -m regrow train ...``, or under ``torchrun`` when the
    task has several processes."""
    arguments = train_arguments(task, resume)
    if task.nproc > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={task.nproc}"]
        return [python, *launcher, "-m", "regrow", *arguments]
    return [python, "-m", "regrow", *arguments]


def display_command(task: RunTask, resume: bool) -> str:
    """The run as one shell-quoted ``regrow train ...`` line (``torchrun ...`` for several
    processes), for any other scheduler."""
    arguments = train_arguments(task, resume)
    if task.nproc > 1:
        torchrun = ["torchrun", "--standalone", f"--nproc_per_node={task.nproc}", "-m", "regrow"]
        return shlex.join([*torchrun, *arguments])
    return shlex.join(["regrow", *arguments])


def thread_env(threads: int) -> dict[str, str]:
    """The environment that fixes a child's CPU thread count."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def default_threads(concurrent_processes: int) -> int:
    """``max(1, cores // concurrent_processes)``, the cores this process may use."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, concurrent_processes))


# ------------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class Outcome:
    """How one launch of a run ended: its :class:`RunOutcome`, the child's exit status, its log,
    and a line about it."""

    name: str
    status: RunOutcome
    exit_code: int | None = None
    log: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "exit_code": self.exit_code,
            "log": self.log,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Outcome:
        """The inverse of :meth:`as_dict` (a submitit job's result)."""
        return cls(**{**fields, "status": RunOutcome(fields["status"])})


class Children:
    """The children this process runs, for forwarding signals: a launch after a stop was asked
    for does not happen; the first signal is forwarded, the second kills."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen[bytes]] = set()
        self.signal = 0  #: the first signal received (0: none)
        self.killed = False

    def launch(
        self, command: list[str], env: dict[str, str], log: Any
    ) -> subprocess.Popen[bytes] | None:
        """Start ``command`` (its own session, output to ``log``) unless a stop was asked for."""
        with self.lock:
            if self.signal:
                return None
            process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the sweep forwards signals itself, once
            )
            self.processes.add(process)
            return process

    def finished(self, process: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.processes.discard(process)

    def running(self) -> int:
        with self.lock:
            return len(self.processes)

    def forward(self, signum: int) -> None:
        """First signal: ask every child to checkpoint and stop; a second: kill them."""
        with self.lock:
            if self.signal:
                self.killed = True
                for process in self.processes:
                    with contextlib.suppress(OSError):
                        os.killpg(process.pid, signal.SIGKILL)
                return
            self.signal = signum
            for process in self.processes:
                with contextlib.suppress(OSError):
                    process.send_signal(signum)  # torchrun passes it on to its workers


def _tail(path: Path, start: int, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of ``path`` written after byte ``start``."""
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _locked_elsewhere(tail: list[str]) -> bool:
    """Whether the child stopped because another process holds the run directory."""
    return any(" is in use: " in line and ".lock" in line for line in tail[-3:])


def _holder(path: Path) -> str:
    holder = RunDir(path).holder()
    if not holder:
        return ""
    return f"held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


def execute(task: RunTask, children: Children | None = None, attempts: int = 3) -> Outcome:
    """Train (or resume) one run in a child process and classify how it ended (see
    ``docs/SWEEP.md``); a failure is written to :data:`FAILURE_FILE`."""
    children = children or Children()
    path = Path(task.path)
    log = path / LOG_FILE
    for _ in range(attempts):
        state = sweep_state(path)
        if state == DONE:
            return Outcome(task.name, RunOutcome.DONE, 0, str(log))
        if state == LOCKED:
            return Outcome(task.name, RunOutcome.ELSEWHERE, None, str(log), _holder(path))
        if state == UNREADABLE:
            detail = unreadable_detail(path) or "unreadable"
            return Outcome(task.name, RunOutcome.UNREADABLE, None, str(log), detail)
        resume = RunDir(path).has_checkpoint()
        command = train_command(task, resume)
        path.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as handle:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            handle.write(f"=== regrow sweep {stamp}: {shlex.join(command)}\n".encode())
            handle.flush()
            start = handle.tell()
            (path / FAILURE_FILE).unlink(missing_ok=True)
            process = children.launch(command, task.env, handle)
            if process is None:
                return Outcome(task.name, RunOutcome.INTERRUPTED, None, str(log), "not started")
            try:
                code = process.wait()
            finally:
                children.finished(process)
        tail = _tail(log, start)
        after = sweep_state(path)
        if code == 0:
            status = RunOutcome.DONE if after == DONE else RunOutcome.STOPPED
            return Outcome(task.name, status, 0, str(log))
        if children.signal or code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
            return Outcome(task.name, RunOutcome.INTERRUPTED, code, str(log))
        if code == 2 and (_locked_elsewhere(tail) or after in (LOCKED, DONE)):
            status = RunOutcome.DONE if after == DONE else RunOutcome.ELSEWHERE
            return Outcome(task.name, status, code, str(log), _holder(path))
        if code == 2 and after != state and after in (NEW, PARTIAL):
            continue  # another launcher moved it on between our look and the child's: look again
        break
    detail = tail[-1] if tail else f"exit status {code}"
    write_json(
        path / FAILURE_FILE,
        {
            "exit_code": code,
            "command": shlex.join(command),
            "log": str(log),
            "log_tail": tail,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    return Outcome(task.name, RunOutcome.FAILED, code, str(log), detail)


# ------------------------------------------------------------------------------- progress
class SweepProgress:
    """A tqdm bar over runs on a terminal (done / running / failed), else one plain line per
    finished run on stderr."""

    def __init__(self, total: int, done: int, failed: int, running: Callable[[], int]) -> None:
        self.total, self.done, self.failed, self.running = total, done, failed, running
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done + failed, unit="run", file=sys.stderr)
            self.refresh()

    def refresh(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"done {self.done}, running {self.running()}, failed {self.failed}", refresh=True
            )

    def finished(self, outcome: Outcome) -> None:
        counted = outcome.status in (RunOutcome.DONE, RunOutcome.FAILED)
        self.done += outcome.status == RunOutcome.DONE
        self.failed += outcome.status == RunOutcome.FAILED
        if self.bar is not None:
            if counted:
                self.bar.update(1)
            self.refresh()
            return
        where = f" ({outcome.detail})" if outcome.detail else ""
        count = f"[{self.done + self.failed}/{self.total}]"
        status = outcome.status.value
        print(f"regrow sweep: {count} {status}: {outcome.name}{where}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------- executors
class Executor(Protocol):
    """What the sweep driver and the search ask of an executor, whatever launches the runs."""

    def task(self, plan: StudyPlan, run: RunSpec) -> RunTask:
        """``run`` as this executor launches it (processes, thread environment)."""
        ...

    def run(self, tasks: Sequence[RunTask], progress: SweepProgress) -> list[Outcome]:
        """Launch ``tasks``, report each outcome to ``progress`` as it comes; all outcomes."""
        ...

    def capacity(self) -> int:
        """How many runs this executor runs at once (the search's batch of trials)."""
        ...

    def running(self) -> int:
        """How many runs are in flight now, as far as this process sees them."""
        ...

    def interrupted(self) -> int:
        """The signal that stopped the sweep (0: none)."""
        ...

    def request_stop(self, signum: int) -> None:
        """Stop as if ``signum`` had arrived: nothing more is launched."""
        ...


@contextlib.contextmanager
def forwarding_signals(children: Children) -> Iterator[None]:
    """SIGINT and SIGTERM to this process go to the children (:meth:`Children.forward`)."""

    def handler(signum: int, frame: Any) -> None:
        first = not children.signal
        children.forward(signum)
        if first:
            print(
                f"\nregrow sweep: {signal.Signals(signum).name}: asking the running runs to "
                "checkpoint and stop (again to kill them)",
                file=sys.stderr,
            )

    with handling_signals(handler):
        yield


class LocalExecutor:
    """Runs on this machine: a :class:`concurrent.futures.ThreadPoolExecutor` whose threads each
    wait on one ``regrow train`` child. A slot is a worker (``--workers N``) or a group of GPUs
    (``CUDA_VISIBLE_DEVICES``; several under torchrun)."""

    def __init__(
        self,
        workers: int = 1,
        gpus: Sequence[str] | None = None,
        gpus_per_run: int = 1,
        threads_per_run: int | None = None,
    ) -> None:
        if gpus:
            groups = [list(gpus[i : i + gpus_per_run]) for i in range(0, len(gpus), gpus_per_run)]
            groups = [g for g in groups if len(g) == gpus_per_run]
            self.slots = [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
            self.nproc = gpus_per_run
        else:
            self.slots = [{} for _ in range(workers)]
            self.nproc = 1
        threads = threads_per_run or default_threads(len(self.slots) * self.nproc)
        self.env = thread_env(threads)
        self.children = Children()

    def task(self, plan: StudyPlan, run: RunSpec) -> RunTask:
        return RunTask.of(plan, run, nproc=self.nproc, env=dict(self.env))

    def run(self, tasks: Sequence[RunTask], progress: SweepProgress) -> list[Outcome]:
        """Run ``tasks``, at most one per slot at a time; returns their outcomes."""
        free: queue.Queue[dict[str, str]] = queue.Queue()
        for slot in self.slots:
            free.put(slot)

        def work(task: RunTask) -> Outcome:
            slot = free.get()
            try:
                return execute(
                    RunTask(**{**task.__dict__, "env": {**task.env, **slot}}), self.children
                )
            finally:
                free.put(slot)

        outcomes = []
        with (
            forwarding_signals(self.children),
            concurrent.futures.ThreadPoolExecutor(len(self.slots)) as pool,
        ):
            pending = {pool.submit(work, task) for task in tasks}
            while pending:
                done, pending = concurrent.futures.wait(
                    pending, timeout=0.25, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    outcomes.append(future.result())
                    progress.finished(outcomes[-1])
                progress.refresh()
        return outcomes

    def capacity(self) -> int:
        return len(self.slots)

    def running(self) -> int:
        return self.children.running()

    def interrupted(self) -> int:
        return self.children.signal

    def request_stop(self, signum: int) -> None:
        self.children.forward(signum)
