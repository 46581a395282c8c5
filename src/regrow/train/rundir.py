"""The run directory: the one place that knows its file names, its state and what "the same run"
means.

A run directory holds:

=====================  ==========================================================================
``config.yaml``        the run's configuration, written once when the run starts
``provenance.jsonl``   one JSON row per start and per resume (``"event": "start" | "resume"``,
                       the time, the step, the directory written, package/git/torch/device
                       versions); only appended (a torn last row is dropped first)
``metrics.jsonl``      one JSON row per pass over the training data and one per mask update
                       (below); a resume cuts it back, atomically, to the rows its checkpoint
                       had seen
``checkpoint.pt``      everything a resume needs (atomic; see :mod:`regrow.train.checkpoint`)
``summary.json``       the finished run: every value that defines it and its results (below)
``failed.json``        why the run stopped with an error (a non-finite loss or another exception);
                       cleared by a later start or resume
``tensorboard/``       a mirror of the metrics when ``train.tensorboard`` is set
``.lock``              while a process trains here: its host, pid and start time (below)
=====================  ==========================================================================

:meth:`RunDir.state` is ``new`` (nothing to continue), ``partial`` (a checkpoint, no finished
summary), ``done`` (``summary.json`` with ``"status": "finished"``), ``failed`` (``failed.json``,
with or without a checkpoint to resume from) or ``locked`` (another live process trains here now).

A run directory is self-contained: ``regrow train --resume DIR`` writes into ``DIR`` and nowhere
else, from any working directory, whatever ``out_dir`` its ``config.yaml`` recorded (the directory
where the run started; a copy, ``cp -a runA runB``, resumes into ``runB``). ``out_dir`` is
therefore not part of what makes two configurations the same run. Resuming a finished run changes
nothing: it says so and exits 0.

**One run directory, one writer.** A start or a resume holds :meth:`RunDir.lock` for as long as it
trains: an exclusive ``flock`` on ``.lock``, which records the holder (host, pid, start time). A
second start or resume of the same directory stops at once with one line naming the holder
(:class:`RunLockedError`, exit status 2); under ``torchrun`` only rank 0 takes the lock. The kernel
releases the lock when its process ends in any way, so a ``.lock`` left by a crashed process is
simply taken over (``flock`` does not work across hosts on every network file system: do not train
into one directory from two machines). The lock is removed when its holder finishes.

**Cleanup.** A process killed in the middle of an atomic write leaves its temporary
(``.checkpoint.pt.<random>.tmp`` and the like, as large as a checkpoint) beside the file. Holding
the lock, a start or resume removes these leftovers, and so does every successful checkpoint write.

**Errors** a user can act on are one line and exit status 2 (:class:`RunDirError`): ``out_dir``
is a file or lies under one, cannot be written (read-only, permissions), the disk is full (the last
good checkpoint is kept: checkpoints are written atomically), the directory is locked. A torn last
line of ``metrics.jsonl`` or ``provenance.jsonl`` (an append cut short by a full disk or a kill) is
dropped with a warning naming the file. Exit statuses of ``regrow train``: 0 finished (or already
finished, or stopped at ``train.stop_at_step``), 2 bad input or an unusable run directory, 3 a
non-finite loss, 130 stopped by SIGINT, 143 stopped by SIGTERM (both after writing a checkpoint).

Metric names (one meaning each, in ``metrics.jsonl`` and ``summary.json`` alike)
-------------------------------------------------------------------------------

``epoch``
    the index of the pass over the training data (0-based).
``epochs`` (summary only), ``data_passes`` (summary only)
    ``epochs`` is the configured ``train.epochs``: the run takes ``epochs × multiplier × batches
    per pass`` optimizer steps (``total_steps``). ``data_passes`` counts the passes over the data
    actually begun. They differ for RigL and SNIP: their update batches are spent on the mask update
    instead of an optimizer step (so the step counter, and every step-based schedule, counts real
    optimizer steps), which leaves a few steps to take after the last configured pass; the run
    takes them at the start of one more pass, so ``data_passes`` is ``epochs + 1`` and
    ``metrics.jsonl`` has a row for that short pass (``epoch`` = ``epochs``).
``step``
    optimizer steps taken so far (``steps`` in the summary: at the end).
``train_loss``, ``train_accuracy``
    mean loss and accuracy (%) over the samples of this pass, over every process (a pass
    interrupted by a stop and resumed reports the same values as one uninterrupted).
``val_loss``, ``val_accuracy``, ``test_loss``, ``test_accuracy``
    one pass over that split, in rows where the run evaluated (every ``train.eval_every`` passes
    and at the end); the summary holds the last evaluation.
``lr``
    the learning rate after the pass's last step.
``density``
    the fraction of active weights over the sparse layers (``sparsity`` in the summary is
    ``1 - density`` at the end; ``target_sparsity`` is the configured one).
``train_flops``
    training FLOPs spent so far, over every sample of every process (SPEC §7: ``3 f_S`` per sample,
    ``2 f_S + f_D`` when the backward pass computes the dense weight gradient).
``train_flops_ratio``
    ``train_flops`` ÷ the dense training FLOPs of the whole 1× run: ``3 f_D`` per sample × the
    samples of ``train.epochs`` epochs, ``f_D`` the forward FLOPs of the full-width dense model.
    It grows during the run; at the end it is 1 for Dense and ≈M for a run ×M, as in
    ``regrow flops``. (:attr:`TrainingFlopsCounter.ratio`, over dense training of the samples
    seen so far, is a different quantity and is not logged.)
``inference_flops``, ``inference_flops_ratio`` (summary only)
    forward FLOPs of one sample with the final masks, and that ÷ ``f_D``.
``seconds`` (``wall_seconds`` in the summary)
    wall-clock seconds of training so far, summed over the run's sessions.

A **mask-update row** (``"event": "mask_update"``; pass rows have no ``event``) is written after
every batch that changed the masks:

``epoch``, ``step``
    the pass, and the optimizer step at which the masks changed.
``density``
    as above, after the update.
``changed_fraction``
    the connections the update replaced or removed, as a fraction of those active before it:
    ``max(grown, dropped) / active`` (RigL, SET: the drop fraction of that step; pruning: the
    fraction pruned).
``grown``, ``dropped``
    connections that became active, and inactive, at this update (over every sparse layer).
``itop_rate``
    the in-time over-parameterisation rate (Liu et al., ICML 2021): the fraction of the sparse
    layers' weights active at any step so far. It is kept with the masks in the checkpoint.
``layer_density``
    each sparse layer's density after the update, by parameter name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
    temporary_pattern,
    write_json,
    write_text,
)
from .config import RunConfig, to_yaml

NEW, PARTIAL, DONE, FAILED, LOCKED = "new", "partial", "done", "failed", "locked"

#: ``"event"`` of the ``metrics.jsonl`` row written at every mask update (pass rows have none).
MASK_UPDATE_EVENT = "mask_update"


#: Keys a resumed run may change: how the same run is laid out on hardware, not what it computes
#: (with train.batch_size × processes kept equal, which the loop checks).
RESUME_OVERRIDABLE = (
    "train.batch_size", "train.device", "train.progress", "train.tensorboard", "train.compile",
    "train.compile_mode", "train.sgd_implementation", "train.cudnn_benchmark",
)  # fmt: skip

#: Keys that never make two configurations different runs: ``out_dir`` only says where the run
#: started (a resume writes into the directory it is given), and the overridable keys.
NOT_IDENTITY = ("out_dir", *RESUME_OVERRIDABLE)

#: Attempts to take a lock another process holds (a moment's hold, as by :meth:`RunDir.state`).
LOCK_ATTEMPTS, LOCK_RETRY_SECONDS = 5, 0.05


class RunDirError(ValueError):
    """A run directory that cannot be used as asked: not a directory, not writable, full, or in
    use. The message names the path and what to do (``regrow train`` exits with status 2)."""

    exit_code = 2


class RunLockedError(RunDirError):
    """Another process trains in this run directory (the message names its host and pid)."""


def _as_dict(config: RunConfig | str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    text = config if isinstance(config, str) else to_yaml(config)
    parsed = OmegaConf.to_container(OmegaConf.create(text))
    assert isinstance(parsed, dict)
    return parsed


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def differing_keys(saved: RunConfig | str, given: RunConfig | str) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (saved value, given value) for every key that differs between two configs,
    the keys of :data:`NOT_IDENTITY` left out (``None`` for a key one of them lacks)."""
    a, b = _flatten(_as_dict(saved)), _flatten(_as_dict(given))
    keys = sorted((a.keys() | b.keys()) - set(NOT_IDENTITY))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k, ...) != b.get(k, ...)}


def _warn(message: str) -> None:
    print(f"regrow: warning: {message}", file=sys.stderr)


class RunDir:
    """One run directory (see the module docstring). Nothing here trains; the loop calls it."""

    CONFIG = "config.yaml"
    PROVENANCE = "provenance.jsonl"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SUMMARY = "summary.json"
    FAILURE = "failed.json"
    TENSORBOARD = "tensorboard"
    LOCK = ".lock"
    #: Files written atomically, whose temporaries a killed write may leave.
    ATOMIC = (CONFIG, METRICS, CHECKPOINT, SUMMARY, FAILURE, PROVENANCE)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_descriptor: int | None = None
        self._held = False  #: this object holds the lock (see :meth:`lock`)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / self.CONFIG)
    provenance_path = property(lambda self: self.path / self.PROVENANCE)
    metrics_path = property(lambda self: self.path / self.METRICS)
    checkpoint_path = property(lambda self: self.path / self.CHECKPOINT)
    summary_path = property(lambda self: self.path / self.SUMMARY)
    failure_path = property(lambda self: self.path / self.FAILURE)
    tensorboard_path = property(lambda self: self.path / self.TENSORBOARD)
    lock_path = property(lambda self: self.path / self.LOCK)

    # ----------------------------------------------------------------------------- reading
    def state(self) -> str:
        """``new``, ``partial``, ``done``, ``failed`` or ``locked`` (module docstring)."""
        if not self._held and self.holder() is not None:
            return LOCKED
        summary = self.summary()
        if summary is not None and summary.get("status") == "finished":
            return DONE
        if self.failure_path.is_file():
            return FAILED
        return PARTIAL if self.has_checkpoint() else NEW

    def has_checkpoint(self) -> bool:
        """Whether there is a checkpoint to resume from (``partial``, ``done``, some ``failed``)."""
        return self.checkpoint_path.is_file()

    def is_finished(self, config: RunConfig | str) -> bool:
        """``done``, and by exactly ``config`` (as saved in ``config.yaml``; ``out_dir`` aside)."""
        if self.state() != DONE or not self.config_path.is_file():
            return False
        saved, given = _as_dict(self.config_path.read_text()), _as_dict(config)
        saved.pop("out_dir", None)
        given.pop("out_dir", None)
        return saved == given

    def config_file(self) -> Path:
        """The path of ``config.yaml``; :class:`FileNotFoundError` if this is no run directory."""
        if not self.config_path.is_file():
            raise FileNotFoundError(
                f"{self.config_path} is missing: {self.path} is not a run directory."
            )
        return self.config_path

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``, or ``None`` if the run has none."""
        if not self.summary_path.is_file():
            return None
        return json.loads(self.summary_path.read_text())

    def failure(self) -> dict[str, Any] | None:
        """``failed.json``, or ``None`` if the run has not failed."""
        if not self.failure_path.is_file():
            return None
        return json.loads(self.failure_path.read_text())

    def metric_rows(self) -> list[dict[str, Any]]:
        """Every row of ``metrics.jsonl``, in order (a torn last line dropped, with a warning)."""
        return self._read_rows(self.metrics_path)[0]

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` written once per pass over the training data."""
        return [row for row in self.metric_rows() if "event" not in row]

    def mask_updates(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` written at each mask update (topology statistics)."""
        return [row for row in self.metric_rows() if row.get("event") == MASK_UPDATE_EVENT]

    def provenance(self) -> list[dict[str, Any]]:
        """The rows of ``provenance.jsonl``: one per start and resume, oldest first."""
        return self._read_rows(self.provenance_path)[0]

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (``host``, ``pid``, ``started``) if another process holds it,
        else ``None``. (It takes a shared lock for a moment to find out.)"""
        try:
            descriptor = os.open(self.lock_path, os.O_RDONLY)
        except OSError:  # no lock file (or none readable): nobody trains here
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self._holder_info(descriptor)
        except OSError:  # a file system without flock: nothing to tell
            return None
        finally:
            os.close(descriptor)  # releases the shared lock, if taken
        return None

    # ------------------------------------------------------------------- the lock, cleanup
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold this run directory (create it if needed) for as long as the block runs: an
        exclusive ``flock`` on ``.lock``, which records host, pid and start time. Raises
        :class:`RunLockedError` naming the holder if another process holds it, and
        :class:`RunDirError` if the directory cannot be created or written."""
        self.create()
        self._lock_descriptor = self._acquire()
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            descriptor, self._lock_descriptor = self._lock_descriptor, None
            if descriptor is not None:
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()  # still holding it: nobody else is between
                os.close(descriptor)

    def create(self) -> None:
        """Make the directory (and its parents); :class:`RunDirError` naming the path and what to
        do if it is a file, lies under a file, or cannot be made."""
        with self._writing(self.path):
            if self.path.exists() and not self.path.is_dir():
                raise RunDirError(
                    f"out_dir {self.path} is a file, not a directory: choose another out_dir (or "
                    "move the file away)."
                )
            blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            if blocking is not None:
                raise RunDirError(
                    f"out_dir {self.path} lies under {blocking}, which is a file, not a directory: "
                    "choose another out_dir."
                )
        if self.path.is_dir():
            return
        parent = next((p for p in self.path.parents if p.is_dir()), Path("."))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(self._write_error(self.path, error, parent, "create")) from None

    def _acquire(self) -> int | None:
        """The descriptor of ``.lock``, exclusively locked, holding this process's details."""
        for attempt in range(LOCK_ATTEMPTS):
            with self._writing(self.lock_path):
                descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder_info(descriptor)
                os.close(descriptor)
                if attempt + 1 < LOCK_ATTEMPTS:
                    time.sleep(LOCK_RETRY_SECONDS)
                    continue
                raise RunLockedError(self._locked_message(holder)) from None
            except OSError as error:  # e.g. a network file system without flock
                os.close(descriptor)
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
                _warn(f"cannot lock {self.lock_path} ({error.strerror}); training without a lock")
                return None
            if not self._same_file(descriptor):  # its holder removed it as we opened it
                os.close(descriptor)
                continue
            info = {"host": platform.node(), "pid": os.getpid(), "started": _now()}
            with self._writing(self.lock_path):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, (json.dumps(info) + "\n").encode())
            return descriptor
        raise RunLockedError(self._locked_message(None))

    def _same_file(self, descriptor: int) -> bool:
        try:
            here, there = os.fstat(descriptor), os.stat(self.lock_path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    @staticmethod
    def _holder_info(descriptor: int) -> dict[str, Any] | None:
        """The holder's row in ``.lock`` (written just after it took the lock: wait a moment)."""
        for _ in range(LOCK_ATTEMPTS):
            try:
                text = os.pread(descriptor, 4096, 0).decode(errors="replace")
                return json.loads(text)
            except (OSError, ValueError):
                time.sleep(LOCK_RETRY_SECONDS)
        return None

    def _locked_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            who, stop = "another process (its details are unreadable)", "stop it"
        else:
            host, pid = holder.get("host", "?"), holder.get("pid", "?")
            who = f"another process (host {host}, pid {pid}, since {holder.get('started', '?')})"
            stop = f"stop it (kill {pid} on {host})"
        return (
            f"{self.path} is in use: {who} holds {self.lock_path}. One run directory has one "
            f"writer: wait for it to finish, or {stop} and resume: regrow train --resume "
            f"{self.path}."
        )

    def remove_stale_temporaries(self, names: tuple[str, ...] = ATOMIC) -> list[Path]:
        """Remove the temporaries a killed atomic write left beside ``names`` (only while holding
        the lock: then no other process writes here); returns what was removed."""
        if not self._held:
            raise RuntimeError(f"{self}: remove_stale_temporaries needs the lock (RunDir.lock()).")
        removed = []
        for name in names:
            for path in self.path.glob(temporary_pattern(name)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
        return removed

    # ------------------------------------------------------------------- starting, resuming
    def check_can_start(self) -> None:
        """Raise :class:`CheckpointError` if starting afresh here would overwrite a run."""
        if self.has_checkpoint() or self.state() == DONE:
            raise CheckpointError(
                f"{self.path} already holds a run ({self.state()}): continue it with "
                f"`regrow train --resume {self.path}`, or choose another out_dir."
            )

    def check_same_run(
        self,
        saved: RunConfig | str,
        given: RunConfig | str,
        source: Path,
        given_name: str | None = None,
    ) -> None:
        """Raise :class:`CheckpointError` naming the keys in which ``given`` (``given_name``, by
        default ``config.yaml``) differs from the ``saved`` config of ``source`` (the keys of
        :data:`NOT_IDENTITY` may differ)."""
        differ = differing_keys(saved, given)
        if differ:
            listed = "; ".join(f"{k}: {a!r} saved, {b!r} now" for k, (a, b) in differ.items())
            raise CheckpointError(
                f"{source} was written with a different configuration than "
                f"{given_name or self.config_path} ({listed}): refusing to mix runs. Resume with "
                f"the original config.yaml (only {', '.join(RESUME_OVERRIDABLE)} may change), or "
                "start a new run directory."
            )

    def load_checkpoint(self, config: RunConfig | str) -> dict[str, Any]:
        """The checkpoint, after checking it was written by this run's configuration."""
        state = load_checkpoint(self.checkpoint_path)
        self.check_same_run(state["config"], config, self.checkpoint_path)
        return state

    def save_checkpoint(self, state: dict[str, Any]) -> Path:
        """Write ``checkpoint.pt`` atomically (then remove stale temporaries of it, when holding
        the lock); returns its path."""
        with self._writing(self.checkpoint_path):
            save_checkpoint(self.checkpoint_path, state)
        if self._held:
            self.remove_stale_temporaries((self.CHECKPOINT,))
        return self.checkpoint_path

    def begin(
        self,
        config: RunConfig | str,
        info: dict[str, Any],
        resume: bool,
        epoch: int,
        step: int,
        last_update: int | None = None,
    ) -> None:
        """Record a start (write ``config.yaml``, empty the metrics) or a resume (cut the metrics
        back to what the checkpoint had seen: the passes before ``epoch`` and the mask updates up
        to ``last_update``); clear an earlier failure; append a provenance row."""
        if resume:
            self.truncate_metrics(epoch, last_update)
        else:
            text = config if isinstance(config, str) else to_yaml(config)
            with self._writing(self.config_path):
                write_text(self.config_path, text)
            self.truncate_metrics(0)
            with self._writing(self.summary_path):
                self.summary_path.unlink(missing_ok=True)
        with self._writing(self.failure_path):
            self.failure_path.unlink(missing_ok=True)
        rows, torn = self._read_rows(self.provenance_path)
        if torn:
            self._rewrite_rows(self.provenance_path, rows)
        event = {"event": "resume" if resume else "start", "time": _now(), "step": step}
        self._append(self.provenance_path, {**event, "run_dir": str(self.path.resolve()), **info})

    # ------------------------------------------------------------------------ while running
    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl``."""
        self._append(self.metrics_path, row)

    def truncate_metrics(self, epoch: int, last_update: int | None = None) -> None:
        """Keep only the rows of passes before ``epoch`` and of mask updates at steps up to
        ``last_update`` (atomically: temporary file, fsync, rename), so a resume that repeats
        later steps does not log them twice. A torn last row is dropped with a warning."""

        def seen(row: dict[str, Any]) -> bool:
            if row.get("event") == MASK_UPDATE_EVENT:
                return last_update is not None and row["step"] <= last_update
            return row["epoch"] < epoch

        rows = [row for row in self.metric_rows() if seen(row)]
        if rows or self.metrics_path.exists():
            self._rewrite_rows(self.metrics_path, rows)

    def record_failure(self, error: BaseException, **where: Any) -> None:
        """Write ``failed.json``: the error's type and message, and ``where`` (step, epoch)."""
        reason = {"error": type(error).__name__, "reason": str(error), "time": _now()}
        with self._writing(self.failure_path):
            write_json(self.failure_path, {**reason, **where})

    def write_summary(self, summary: dict[str, Any]) -> None:
        with self._writing(self.summary_path):
            write_json(self.summary_path, summary)

    # ------------------------------------------------------------------------------ files
    def _append(self, path: Path, row: dict[str, Any]) -> None:
        with self._writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")

    def _rewrite_rows(self, path: Path, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row) + "\n" for row in rows)
        with self._writing(path):
            atomic_write(path, lambda handle: handle.write(text.encode()))

    @staticmethod
    def _read_rows(path: Path) -> tuple[list[dict[str, Any]], bool]:
        """The JSON rows of ``path`` and whether its last line was torn (and dropped, with a
        warning). A line that is not JSON before the last is an error naming the file and line."""
        if not path.is_file():
            return [], False
        lines = path.read_text(errors="replace").split("\n")
        numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
        rows = []
        for index, (number, line) in enumerate(numbered):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if index + 1 == len(numbered):
                    _warn(
                        f"{path}: dropping its torn last line {number} (an append cut short, as by "
                        f"a full disk or a kill): {line[:60]!r}"
                    )
                    return rows, True
                raise RunDirError(
                    f"{path} line {number} is not JSON ({error.msg}): repair or delete that line."
                ) from None
        return rows, False

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn an operating-system error while writing ``path`` into one :class:`RunDirError`
        line naming the path and what to do."""
        try:
            yield
        except OSError as error:
            raise RunDirError(self._write_error(path, error)) from None

    def _write_error(
        self, path: Path, error: OSError, where: Path | None = None, verb: str = "write"
    ) -> str:
        """The one line for ``error`` writing ``path``: what failed and what to do (make
        ``where``, by default the run directory, writable; free space; ...)."""
        what = f"cannot {verb} {path}: {error.strerror or error}"
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            if self.has_checkpoint():
                then = (
                    f"the last good checkpoint {self.checkpoint_path} is kept; free space (or copy "
                    f"the run directory to another disk), then resume: regrow train --resume "
                    f"{self.path}."
                )
            else:
                then = "free space, or choose an out_dir on another disk."
            return f"{what} (the disk holding {self.path} is full): {then}"
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{what}: make {where or self.path} writable, or choose another out_dir."
        return f"{what} ({errno.errorcode.get(error.errno or 0, 'error')}): check {self.path}."


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
