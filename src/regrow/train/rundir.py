"""The run directory: the one place that knows its file names, its state and what "the same run"
means. The lock that keeps one writer per directory is :mod:`.runlock`.

What a run directory holds, its states, the metric names, resume rules and exit statuses, for a
user: ``docs/RUN_DIR.md``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    resume_command,
    save_checkpoint,
    temporary_pattern,
    write_json,
    write_text,
)
from .config import PATH_KEYS, RunConfig, absolute_path, to_yaml
from .runlock import RunDirError, RunLock, now
from .runlock import RunLockedError as RunLockedError

NEW, PARTIAL, DONE, FAILED, LOCKED = "new", "partial", "done", "failed", "locked"

#: ``"event"`` of the ``metrics.jsonl`` row written at every mask update (pass rows have none).
MASK_UPDATE_EVENT = "mask_update"


#: Keys a resumed run may change: how the same run is laid out on hardware, not what it computes
#: (with train.batch_size × processes kept equal, which the loop checks), and ``data.root``, where
#: the data set lives now (``data.name`` says which one it is).
RESUME_OVERRIDABLE = (
    "train.batch_size", "train.device", "train.progress", "train.tensorboard", "train.compile",
    "train.compile_mode", "train.sgd_implementation", "train.cudnn_benchmark", "data.root",
)  # fmt: skip

#: Keys that never make two configurations different runs: ``out_dir`` only says where the run
#: started (a resume writes into the directory it is given), and the overridable keys.
NOT_IDENTITY = ("out_dir", *RESUME_OVERRIDABLE)


def _as_dict(config: RunConfig | str) -> dict[str, Any]:
    """A config as nested dicts; a saved one over today's defaults, so a key added to regrow after
    the run was written reads as its default (the value the run used) rather than as missing."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    text = config if isinstance(config, str) else to_yaml(config)
    node = OmegaConf.create(text)
    with contextlib.suppress(OmegaConfBaseException):  # a key regrow no longer has: compare as is
        node = OmegaConf.merge(OmegaConf.structured(RunConfig), node)
    parsed = OmegaConf.to_container(node)
    assert isinstance(parsed, dict)
    return parsed


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def _paths_absolute(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` with each path of :data:`PATH_KEYS` absolute: a run saves them absolute, and a
    relative one given now means the same file when it resolves to the same path here."""
    return {
        k: absolute_path(v) if k in PATH_KEYS and isinstance(v, str) else v for k, v in flat.items()
    }


def differing_keys(saved: RunConfig | str, given: RunConfig | str) -> dict[str, tuple[Any, Any]]:
    """Dotted key → (saved value, given value) for every key that differs between two configs,
    the keys of :data:`NOT_IDENTITY` left out (``None`` for a key one of them lacks); paths
    (:data:`PATH_KEYS`) compared as absolute paths."""
    a = _paths_absolute(_flatten(_as_dict(saved)))
    b = _paths_absolute(_flatten(_as_dict(given)))
    keys = sorted((a.keys() | b.keys()) - set(NOT_IDENTITY))
    return {k: (a.get(k), b.get(k)) for k in keys if a.get(k, ...) != b.get(k, ...)}


def _warn(message: str) -> None:
    print(f"regrow: warning: {message}", file=sys.stderr)


class RunDir:
    """One run directory (docs/RUN_DIR.md). Nothing here trains; the loop calls it."""

    CONFIG = "config.yaml"
    PROVENANCE = "provenance.jsonl"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    SUMMARY = "summary.json"
    FAILURE = "failed.json"
    VOCABULARY = "vocabulary.json"
    TENSORBOARD = "tensorboard"
    LOCK = ".lock"
    #: Files written atomically, whose temporaries a killed write may leave.
    ATOMIC = (CONFIG, METRICS, CHECKPOINT, SUMMARY, FAILURE, PROVENANCE, VOCABULARY)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = RunLock(self.path, self.lock_path, self._writing)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / self.CONFIG)
    provenance_path = property(lambda self: self.path / self.PROVENANCE)
    metrics_path = property(lambda self: self.path / self.METRICS)
    checkpoint_path = property(lambda self: self.path / self.CHECKPOINT)
    summary_path = property(lambda self: self.path / self.SUMMARY)
    failure_path = property(lambda self: self.path / self.FAILURE)
    vocabulary_path = property(lambda self: self.path / self.VOCABULARY)
    tensorboard_path = property(lambda self: self.path / self.TENSORBOARD)
    lock_path = property(lambda self: self.path / self.LOCK)

    @property
    def _held(self) -> bool:
        """This object holds the lock (see :meth:`lock`)."""
        return self._lock.held

    # ----------------------------------------------------------------------------- reading
    def state(self) -> str:
        """``new``, ``partial``, ``done``, ``failed`` or ``locked`` (docs/RUN_DIR.md)."""
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
        saved = _paths_absolute(_flatten(_as_dict(self.config_path.read_text())))
        given = _paths_absolute(_flatten(_as_dict(config)))
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
        """``summary.json``, or ``None`` if the run has none; :class:`RunDirError` naming the file
        if it is not a JSON object (damaged, cut short, or not regrow's)."""
        return self._read_object(self.summary_path, "a resume writes it again from the checkpoint")

    def failure(self) -> dict[str, Any] | None:
        """``failed.json``, or ``None`` if the run has not failed; :class:`RunDirError` naming
        the file if it is not a JSON object."""
        return self._read_object(self.failure_path, "a resume or a new start clears it")

    @staticmethod
    def _read_object(path: Path, after_delete: str) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        what = "repair it, or delete it"
        try:
            data = json.loads(path.read_text(errors="replace"))
        except json.JSONDecodeError as error:
            problem = f"is not valid JSON ({error.msg}, line {error.lineno})"
            raise RunDirError(f"{path} {problem}: {what} ({after_delete}).", problem) from None
        except OSError as error:
            problem = f"cannot be read: {error.strerror or error}"
            raise RunDirError(f"cannot read {path}: {error.strerror or error}.", problem) from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise RunDirError(
                f"{path} is not a JSON object (it holds a {kind}): {what} ({after_delete}).",
                f"holds a JSON {kind}, not an object",
            )
        return data

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
        return self._lock.holder()

    # ------------------------------------------------------------------- the lock, cleanup
    @contextlib.contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold this run directory (create it if needed) for as long as the block runs: an
        exclusive ``flock`` on ``.lock``, which records host, pid and start time. Raises
        :class:`RunLockedError` naming the holder if another process holds it, and
        :class:`RunDirError` if the directory cannot be created or written."""
        self.create()
        self._lock.acquire()
        try:
            yield self
        finally:
            self._lock.release()

    def create(self) -> None:
        """Make the directory (and its parents); :class:`RunDirError` naming the path and what to
        do if it is a file, lies under a file, or cannot be made."""
        with self._writing(self.path):
            if self.path.is_symlink() and not self.path.exists():
                raise RunDirError(
                    f"out_dir {self.path} is a symbolic link to {os.readlink(self.path)}, which "
                    "does not exist: create that directory, or choose another out_dir."
                )
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
        """Raise :class:`CheckpointError` if starting afresh here would overwrite a run (pointing
        to ``--resume`` where there is something to continue)."""
        state = self.state()
        if state == DONE:
            raise CheckpointError(
                f"{self.path} already holds a run, and it is finished (its results are in "
                f"{self.summary_path}): choose another out_dir for a new run."
            )
        if self.has_checkpoint():
            raise CheckpointError(
                f"{self.path} already holds a run ({state}): continue it with "
                f"`{resume_command(self.path)}`, or choose another out_dir."
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
            self._warn_lost_metrics(epoch, last_update)
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
        event = {"event": "resume" if resume else "start", "time": now(), "step": step}
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

    def _warn_lost_metrics(self, epoch: int, last_update: int | None) -> None:
        """After a resume's cut: one warning naming ``metrics.jsonl`` if rows the checkpoint had
        seen are gone (the file deleted, or edited) — they cannot be written again."""
        rows = self.metric_rows()
        passes = {row.get("epoch") for row in rows if "event" not in row}
        lost = [f"pass {e}" for e in range(epoch) if e not in passes]
        updates = {row.get("step") for row in rows if row.get("event") == MASK_UPDATE_EVENT}
        if last_update is not None and last_update not in updates:
            lost.append(f"the mask update at step {last_update}")
        if not lost:
            return
        if len(lost) > 4:
            lost = [*lost[:3], f"… ({len(lost)} rows in all)"]
        state = "is missing" if not self.metrics_path.is_file() else "lacks rows"
        _warn(
            f"{self.metrics_path} {state}: the rows of {', '.join(lost)} are lost (the run "
            "continues and logs from here; its checkpoint and summary are whole)."
        )

    def record_failure(self, error: BaseException, **where: Any) -> None:
        """Write ``failed.json``: the error's type and message, and ``where`` (step, epoch)."""
        reason = {"error": type(error).__name__, "reason": str(error), "time": now()}
        with self._writing(self.failure_path):
            write_json(self.failure_path, {**reason, **where})

    def write_vocabulary(self, vocabulary: dict[str, Any]) -> None:
        """``vocabulary.json``: a language model's characters and the text they came from."""
        with self._writing(self.vocabulary_path):
            write_json(self.vocabulary_path, vocabulary)

    def vocabulary(self) -> dict[str, Any] | None:
        """``vocabulary.json`` as written (``None`` for a run without one)."""
        return self._read_object(self.vocabulary_path, "a resume writes it again")

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
                    f"the run directory to another disk), then resume: {resume_command(self.path)}."
                )
            else:
                then = "free space, or choose an out_dir on another disk."
            return f"{what} (the disk holding {self.path} is full): {then}"
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{what}: make {where or self.path} writable, or choose another out_dir."
        return f"{what} ({errno.errorcode.get(error.errno or 0, 'error')}): check {self.path}."
