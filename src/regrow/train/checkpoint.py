"""Atomic writes and the checkpoint file: a crash leaves the old file or the new one, never half of
one. Which files a run directory holds, and the check that a checkpoint belongs to the run, live in
:mod:`regrow.train.rundir`.

A write goes to a temporary file beside its target (``.<name>.<random>.tmp``), is flushed to disk
and renamed over the target. A process killed mid-write leaves that temporary behind; the run
directory removes such leftovers (:meth:`RunDir.remove_stale_temporaries`). The written file gets
the permissions of any new file (``0o666`` less the user's umask), not ``mkstemp``'s owner-only
``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, or from a different run."""


def _umask_from_proc() -> int | None:
    """The process's umask as Linux reports it (``Umask:`` in /proc/self/status), or ``None``."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    """Where /proc does not say: set and restore once, at import (before any thread writes)."""
    if _umask_from_proc() is not None:
        return 0
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The user's umask, read without changing it where the system allows (Linux)."""
    mask = _umask_from_proc()
    return _UMASK_AT_IMPORT if mask is None else mask


def temporary_pattern(name: str) -> str:
    """The glob of the temporaries :func:`atomic_write` makes beside the file ``name``."""
    return f".{name}.*.tmp"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, flush to disk, then rename. The
    file ends with the permissions the user's umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with contextlib.suppress(OSError):  # a file system without modes keeps mkstemp's
            os.fchmod(descriptor, 0o666 & ~current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically. An operating-system error inside ``torch.save``
    (a full disk partway through) is raised as that :class:`OSError`, not as the
    ``RuntimeError`` torch's writer wraps it in, so the caller can say what to do."""

    def write(handle: Any) -> None:
        try:
            torch.save(state, handle)
        except RuntimeError as error:
            cause = _os_error_within(error)
            if cause is None:
                raise
            raise cause from None

    atomic_write(path, write)


def _os_error_within(error: BaseException) -> OSError | None:
    """The :class:`OSError` ``error`` was raised while handling (or from), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``; :class:`CheckpointError` if it is missing, unreadable or not a
    regrow training checkpoint."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: nothing to resume. Start the run without --resume."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}). "
            "Nothing was changed; restore it from a copy, or delete it to start the run over."
        ) from None
    expected = {
        "config",
        "model",
        "optimizer",
        "scheduler",
        "sparsifier",
        "flops",
        "rng",
        "position",
    }
    if not isinstance(state, dict) or not expected <= set(state):
        raise CheckpointError(
            f"checkpoint {path} is not a regrow training checkpoint (missing "
            f"{sorted(expected - set(state) if isinstance(state, dict) else expected)})."
        )
    return state


def resume_command(run_dir: str | Path) -> str:
    """The command that continues the run in ``run_dir``, quoted for a shell (a path may hold
    spaces or quotes)."""
    return shlex.join(["regrow", "train", "--resume", str(run_dir)])
