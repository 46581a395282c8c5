"""The run directory's lock: one writer per run directory, by an exclusive ``flock`` on its
``.lock`` file, which records the holder (host, pid, start time) for the message a second writer
gets. The kernel releases a ``flock`` when its process ends, so a ``.lock`` left by a crash is
simply taken over; the holder removes the file when it lets go.

:class:`RunDirError` is defined here, below :mod:`.rundir` (which re-exports it), because the lock
raises its subclass :class:`RunLockedError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .checkpoint import resume_command

#: Attempts to take a lock another process holds (a moment's hold, as by :meth:`RunLock.holder`).
LOCK_ATTEMPTS, LOCK_RETRY_SECONDS = 5, 0.05


class RunDirError(ValueError):
    """A run directory that cannot be used as asked: not a directory, not writable, full, or in
    use. The message names the path and what to do (``regrow train`` exits with status 2)."""

    exit_code = 2

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        #: For a damaged file: what is wrong with it, short (``"holds a JSON list, not an
        #: object"``), for lists such as a report's unreadable runs.
        self.problem = problem


class RunLockedError(RunDirError):
    """Another process trains in this run directory (the message names its host and pid)."""


def now() -> str:
    """The local time as the run directory's files record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunLock:
    """The lock of the run directory ``run_path`` on the file ``path``. ``writing(path)`` turns an
    operating-system error while writing ``path`` into a :class:`RunDirError` (the run directory
    words it)."""

    def __init__(
        self,
        run_path: Path,
        path: Path,
        writing: Callable[[Path], AbstractContextManager[None]],
    ) -> None:
        self.run_path, self.path, self._writing = run_path, path, writing
        self._descriptor: int | None = None
        self.held = False  #: this object holds the lock (between acquire and release)

    def acquire(self) -> None:
        """Take the lock: :class:`RunLockedError` naming the holder if another process has it.
        (On a file system without ``flock`` it warns and goes on without one.)"""
        self._descriptor = self._acquire()
        self.held = True

    def release(self) -> None:
        self.held = False
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # still holding it: nobody else is between
            os.close(descriptor)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (``host``, ``pid``, ``started``) if another process holds it,
        else ``None``. (It takes a shared lock for a moment to find out.)"""
        try:
            descriptor = os.open(self.path, os.O_RDONLY)
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

    def _acquire(self) -> int | None:
        """The descriptor of ``.lock``, exclusively locked, holding this process's details."""
        for attempt in range(LOCK_ATTEMPTS):
            with self._writing(self.path):
                descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
                    self.path.unlink()
                print(
                    f"regrow: warning: cannot lock {self.path} ({error.strerror}); training "
                    "without a lock",
                    file=sys.stderr,
                )
                return None
            if not self._same_file(descriptor):  # its holder removed it as we opened it
                os.close(descriptor)
                continue
            info = {"host": platform.node(), "pid": os.getpid(), "started": now()}
            with self._writing(self.path):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, (json.dumps(info) + "\n").encode())
            return descriptor
        raise RunLockedError(self._locked_message(None))

    def _same_file(self, descriptor: int) -> bool:
        try:
            here, there = os.fstat(descriptor), os.stat(self.path)
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
            f"{self.run_path} is in use: {who} holds {self.path}. One run directory has one "
            f"writer: wait for it to finish, or {stop} and resume: {resume_command(self.run_path)}."
        )
