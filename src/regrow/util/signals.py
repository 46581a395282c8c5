"""The one place that installs SIGINT/SIGTERM handlers: installed for a block, restored after."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
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
