"""The one place that installs SIGINT/SIGTERM handlers: installed for a block, restored after; and
the ``regrow`` command's quiet Ctrl-C while it starts (torch's import included)."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: The signals a run or a sweep treats as "stop, keeping what was done".
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def handling_signals(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """Call ``handler(signum, frame)`` on SIGINT/SIGTERM inside the block; the previous handlers
    come back after it, however it ends.

    Python only lets the main thread install handlers; elsewhere (a sweep driven from a worker
    thread) the block runs with the handlers untouched and yields ``False``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


#: Exit status of a command interrupted by SIGINT (128 + 2), as a shell reports it.
INTERRUPTED_STATUS = 130


def started_as_regrow() -> bool:
    """Whether this process is the ``regrow`` command: ``python -m regrow`` (runpy still locating
    the module, as while ``regrow`` is imported for it) or the ``regrow`` console script."""
    argv = getattr(sys, "argv", None) or [""]
    if argv[0] == "-m":
        words = [*getattr(sys, "orig_argv", []), ""]
        return any(
            (word == "-m" and after == "regrow") or word == "-mregrow"
            for word, after in itertools.pairwise(words)
        )
    main = sys.modules.get("__main__")
    return Path(argv[0]).stem in ("regrow", "regrow-script") and (
        getattr(main, "__file__", None) == argv[0]
    )


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    # Nothing is written before the command starts, so nothing is lost by leaving at once; an
    # exception could be swallowed by a bare ``except`` in a third-party import (numpy's lazy
    # submodules then recurse without end), leaving a half-imported process running on.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write("regrow: interrupted\n")
        sys.stderr.flush()
    os._exit(INTERRUPTED_STATUS)


def quiet_interrupt_while_starting() -> None:
    """In the ``regrow`` command only, from the first line of ``import regrow`` until
    :func:`end_quiet_start`: Ctrl-C exits with status 130 and the one line ``regrow:
    interrupted``, not a traceback from inside torch's import. Anywhere else (a library user's
    process, a non-main thread, SIGINT ignored or handled by someone else) nothing changes."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    if threading.current_thread() is not threading.main_thread() or not started_as_regrow():
        return
    signal.signal(signal.SIGINT, _interrupted_while_starting)


def end_quiet_start() -> None:
    """Ctrl-C raises :class:`KeyboardInterrupt` again (the command's entry point reports it), if
    :func:`quiet_interrupt_while_starting` had changed it."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
