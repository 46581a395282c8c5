"""``regrow sweep``: train every run of a study (:mod:`regrow.study.planning`), each a ``regrow
train`` child process, through an existing engine: :mod:`concurrent.futures` + :mod:`subprocess`
on this machine, or submitit (SLURM, or submitit's own local/debug executors).

**Where things go.** Run ``<name>`` trains in ``DIR/<name>/`` (``DIR`` default ``runs/<study>``);
the child's stdout and stderr are appended to ``DIR/<name>/train.log``, so the terminal shows only
the sweep's own progress. ``DIR/study.json`` (:data:`regrow.study.names.STUDY_FILE`, written
atomically before anything trains) holds the study's name, base preset, fixed overrides, seeds,
every planned run (``name``, the full ``overrides`` passed to ``regrow train``, ``params``) and the
study file's ``report`` section: ``regrow report DIR`` reads it.

**States** (:func:`sweep_state`, what ``--dry-run`` prints): ``new``, ``partial``, ``done``,
``failed`` and ``locked`` as :meth:`regrow.train.RunDir.state` says, plus ``failed`` when the last
launch by a sweep ended with an error (``DIR/<name>/sweep_failure.json``: exit status, command,
log path and the last 20 lines of the log). Done runs are skipped, partial ones resumed
(``regrow train --resume``), failed ones left alone unless ``--retry-failed``. A run ``locked`` by
another process (another launcher, or a ``regrow train`` by hand) is not started: it is reported
as running elsewhere, and when this launcher has nothing else to do it waits for the holder and
takes over what it left unfinished. Two launchers on one study therefore never train one run twice
(each child holds its run directory's ``flock``; a child that finds it taken exits 2, which the
sweep reads as "running elsewhere", not as a failure). Before anything is launched, a run
directory whose ``config.yaml`` differs from the planned config is an error (exit 2).

**Threads.** Every child gets ``OMP_NUM_THREADS`` = ``MKL_NUM_THREADS`` = ``--threads-per-run``
(default ``max(1, cores // concurrent runs)``, fixed for the whole sweep, on every executor), so a
run computes with the same thread count however many of its siblings happen to be running. CPU
results can depend on the thread count (the order of floating-point sums), so to compare sweeps
run with different ``--workers`` give the same ``--threads-per-run``.

**GPUs.** ``--gpus 0,1`` (or ``auto``: every visible GPU) runs one run per GPU at a time, through
``CUDA_VISIBLE_DEVICES``; ``--gpus-per-run k`` gives each run ``k`` GPUs through ``python -m
torch.distributed.run --standalone --nproc_per_node k``.

**SLURM** (``pip install "regrow[slurm]"``): one submitit job array of the pending runs
(``--slurm-partition``, ``--slurm-time``, ``--slurm-gpus-per-node``, ...); submitit's files go to
``DIR/.submitit/``. On a timeout submitit signals the job (USR2); the job sends SIGTERM to its
``regrow train`` child, which writes a checkpoint and exits 143, and the job is requeued to resume
it (:class:`SweepJob`, a ``submitit.helpers.Checkpointable``). ``--executor submitit-local`` and
``submitit-debug`` run the same path through submitit's ``LocalExecutor`` / ``DebugExecutor``.

**Interrupting.** SIGINT (Ctrl-C) or SIGTERM to the launcher is forwarded to every running child,
which checkpoints and exits 130/143; the launcher waits for them, says how to continue and exits
130 (143). A second signal kills the children at once. Running the same command again continues.

**Exit status:** 0 every run done, 1 some failed (named, with their logs), 2 bad input, 130
interrupted (143 for SIGTERM).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
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
from typing import Any

from ..train.checkpoint import write_json
from ..train.rundir import DONE, FAILED, LOCKED, NEW, PARTIAL, RunDir, differing_keys
from ..util.signals import handling_signals
from .names import STUDY_FILE
from .planning import RunSpec, StudyPlan
from .schema import StudyError

__all__ = [
    "FAILURE_FILE",
    "LOG_FILE",
    "LocalExecutor",
    "Outcome",
    "RunTask",
    "SubmititExecutor",
    "SweepJob",
    "check_existing",
    "display_command",
    "dry_run",
    "execute",
    "print_commands",
    "run_sweep",
    "sweep_state",
    "train_command",
    "write_study_json",
]

#: The child's stdout and stderr, appended, in each run directory.
LOG_FILE = "train.log"
#: Why a sweep's last launch of a run failed (exit status, command, the log's last lines).
FAILURE_FILE = "sweep_failure.json"
#: Lines of the log kept in :data:`FAILURE_FILE`.
TAIL_LINES = 20
#: What a run's launch ended as.
DONE_, FAILED_, INTERRUPTED, ELSEWHERE, SKIPPED, STOPPED = (
    "done",
    "failed",
    "interrupted",
    "running elsewhere",
    "failed earlier (not retried)",
    "stopped at train.stop_at_step",
)
#: Seconds between looks at a run held by another process.
POLL_SECONDS = 1.0


# ------------------------------------------------------------------------------ states, files
def sweep_state(path: str | Path) -> str:
    """The run's state as the sweep sees it: :meth:`RunDir.state`, and ``failed`` when a sweep's
    last launch of it failed (:data:`FAILURE_FILE`) and it is not done or locked."""
    state = RunDir(path).state()
    if state in (NEW, PARTIAL) and (Path(path) / FAILURE_FILE).is_file():
        return FAILED
    return state


def check_existing(plan: StudyPlan) -> None:
    """A :class:`StudyError` if a run directory already holds a run of another configuration
    (it would be resumed, or skipped as done, under this study's name)."""
    for run in plan.runs:
        config_path = RunDir(run.path).config_path
        if not config_path.is_file() or run.name not in plan.configs:
            continue
        differ = differing_keys(config_path.read_text(), plan.configs[run.name])
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
        return shlex.join(
            [
                "torchrun",
                "--standalone",
                f"--nproc_per_node={task.nproc}",
                "-m",
                "regrow",
                *arguments,
            ]
        )
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
    """How one launch of a run ended: ``status`` (done, failed, interrupted, running elsewhere,
    ...), the child's exit status, its log, and a line about it."""

    name: str
    status: str
    exit_code: int | None = None
    log: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "exit_code": self.exit_code,
            "log": self.log,
            "detail": self.detail,
        }


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


def execute(task: RunTask, children: Children | None = None, attempts: int = 3) -> Outcome:
    """Train (or resume) one run in a child process and classify how it ended (module
    docstring); a failure is written to :data:`FAILURE_FILE`."""
    children = children or Children()
    path = Path(task.path)
    log = path / LOG_FILE
    for _ in range(attempts):
        state = sweep_state(path)
        if state == DONE:
            return Outcome(task.name, DONE_, 0, str(log))
        if state == LOCKED:
            return Outcome(task.name, ELSEWHERE, None, str(log), _holder(path))
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
                return Outcome(task.name, INTERRUPTED, None, str(log), "not started")
            try:
                code = process.wait()
            finally:
                children.finished(process)
        tail = _tail(log, start)
        after = RunDir(path).state()
        if code == 0:
            return Outcome(task.name, DONE_ if after == DONE else STOPPED, 0, str(log))
        if children.signal or code in (130, 143, -signal.SIGINT, -signal.SIGTERM):
            return Outcome(task.name, INTERRUPTED, code, str(log))
        if code == 2 and (_locked_elsewhere(tail) or after in (LOCKED, DONE)):
            status = DONE_ if after == DONE else ELSEWHERE
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
    return Outcome(task.name, FAILED_, code, str(log), detail)


def _holder(path: Path) -> str:
    holder = RunDir(path).holder()
    if not holder:
        return ""
    return f"held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}"


# ------------------------------------------------------------------------------- progress
class Progress:
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
        counted = outcome.status in (DONE_, FAILED_)
        self.done += outcome.status == DONE_
        self.failed += outcome.status == FAILED_
        if self.bar is not None:
            if counted:
                self.bar.update(1)
            self.refresh()
            return
        where = f" ({outcome.detail})" if outcome.detail else ""
        count = f"[{self.done + self.failed}/{self.total}]"
        print(f"regrow sweep: {count} {outcome.status}: {outcome.name}{where}", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


# ------------------------------------------------------------------------------- executors
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

    def run(self, tasks: Sequence[RunTask], progress: Progress) -> list[Outcome]:
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

    @property
    def interrupted(self) -> int:
        return self.children.signal


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise StudyError(
            'the SLURM/submitit executors need submitit: pip install "regrow[slurm]"'
        ) from None
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
            outcome = Outcome(task.name, INTERRUPTED, 130, str(Path(task.path) / LOG_FILE))
        if outcome.status == INTERRUPTED and "SLURM_JOB_ID" in os.environ:
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

    def run(self, tasks: Sequence[RunTask], progress: Progress) -> list[Outcome]:
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
                outcomes.append(Outcome(task.name, INTERRUPTED))
        return outcomes

    @staticmethod
    def _outcome(job: Any, task: RunTask) -> Outcome:
        try:
            result = job.result()
        except Exception as error:  # the job itself failed (see its submitit log)
            return Outcome(
                task.name, FAILED_, None, str(job.paths.stderr), str(error).splitlines()[0][:200]
            )
        return Outcome(**result)

    @property
    def interrupted(self) -> int:
        return self.signal


Executor = LocalExecutor | SubmititExecutor


# ----------------------------------------------------------------------------- the sweep
def dry_run(plan: StudyPlan) -> str:
    """Each run's name and state, then a count line."""
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    width = max(len(name) for name in states)
    lines = [f"{name.ljust(width)}  {state}" for name, state in states.items()]
    counts = {s: list(states.values()).count(s) for s in (NEW, PARTIAL, DONE, FAILED, LOCKED)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join([*lines, f"{len(states)} runs in {plan.out_dir}: {summary}"]) + "\n"


def pending_runs(plan: StudyPlan, retry_failed: bool) -> list[tuple[RunSpec, str]]:
    """The runs to launch now (new, partial; failed with ``retry_failed``), with their state."""
    wanted = {NEW, PARTIAL} | ({FAILED} if retry_failed else set())
    found = [(run, sweep_state(run.path)) for run in plan.runs]
    return [(run, state) for run, state in found if state in wanted]


def print_commands(plan: StudyPlan, retry_failed: bool, nproc: int = 1) -> str:
    """One shell-quoted ``regrow train`` line per pending run (a resume for a partial one)."""
    lines = []
    for run, _state in pending_runs(plan, retry_failed):
        task = RunTask.of(plan, run, nproc=nproc)
        lines.append(display_command(task, RunDir(run.path).has_checkpoint()))
    return "".join(f"{line}\n" for line in lines)


def continue_hint(command: str) -> str:
    return f"run the same command to continue: {command}"


def run_sweep(plan: StudyPlan, executor: Executor, retry_failed: bool, command: str) -> int:
    """Train the plan's pending runs with ``executor``; print what happened; the exit status
    (module docstring). ``command`` is the command line that continues the sweep."""
    check_existing(plan)
    write_study_json(plan)
    outcomes: dict[str, Outcome] = {}
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    done = sum(state == DONE for state in states.values())
    skipped = [run for run in plan.runs if states[run.name] == FAILED and not retry_failed]
    for run in skipped:
        outcomes[run.name] = Outcome(run.name, SKIPPED, None, str(Path(run.path) / LOG_FILE))
    todo = [run for run in plan.runs if states[run.name] not in (DONE,) and run not in skipped]
    print(
        f"regrow sweep: study {plan.study.name}: {len(plan.runs)} runs in {plan.out_dir} "
        f"({done} done, {len(todo)} to run{f', {len(skipped)} failed earlier' if skipped else ''})",
        file=sys.stderr,
    )
    progress = Progress(len(plan.runs), done, len(skipped), _running(executor))
    waited = False
    try:
        while todo:
            tasks = [executor.task(plan, run) for run in todo]
            for outcome in executor.run(tasks, progress):
                outcomes[outcome.name] = outcome
            if executor.interrupted:
                break
            elsewhere = [run for run in todo if outcomes[run.name].status == ELSEWHERE]
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


def _running(executor: Executor) -> Callable[[], int]:
    if isinstance(executor, LocalExecutor):
        return executor.children.running
    return lambda: 0


def _wait_for_holders(runs: list[RunSpec], executor: Executor) -> list[RunSpec] | None:
    """Wait until no other process holds any of ``runs``; the ones left unfinished (``None`` if
    interrupted meanwhile)."""
    stop = {"signal": 0}

    def handler(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    with handling_signals(handler):
        while any(RunDir(run.path).state() == LOCKED for run in runs):
            if stop["signal"]:
                if isinstance(executor, LocalExecutor):
                    executor.children.signal = stop["signal"]
                else:
                    executor.signal = stop["signal"]
                return None
            time.sleep(POLL_SECONDS)
    return [run for run in runs if sweep_state(run.path) != DONE]


def _finish(plan: StudyPlan, outcomes: dict[str, Outcome], executor: Executor, command: str) -> int:
    states = {run.name: sweep_state(run.path) for run in plan.runs}
    done = sum(state == DONE for state in states.values())
    failed = [o for o in outcomes.values() if o.status in (FAILED_, SKIPPED)]
    head = f"regrow sweep: {plan.study.name}: {done} of {len(plan.runs)} runs done"
    if executor.interrupted:
        name = signal.Signals(executor.interrupted).name
        print(f"{head}; interrupted ({name}), {continue_hint(command)}", file=sys.stderr)
        return 128 + int(executor.interrupted)
    for outcome in failed:
        why = f": {outcome.detail}" if outcome.detail else ""
        print(f"regrow sweep: failed: {outcome.name} (log {outcome.log}){why}", file=sys.stderr)
    if failed:
        print(
            f"{head}, {len(failed)} failed; after fixing the cause retry them with "
            f"{command} --retry-failed",
            file=sys.stderr,
        )
        return 1
    stopped = [o.name for o in outcomes.values() if o.status == STOPPED]
    if stopped:
        print(f"{head}; {len(stopped)} stopped at train.stop_at_step", file=sys.stderr)
        return 0
    print(f"{head}; results in {plan.out_dir} (regrow report {plan.out_dir})", file=sys.stderr)
    return 0 if done == len(plan.runs) else 1
