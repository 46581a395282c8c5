"""regrow.util.signals: SIGINT/SIGTERM handlers installed for a block and restored after it, however
it ends; off the main thread a no-op that says so."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from regrow.util.signals import STOP_SIGNALS, handling_signals


def test_the_stop_signals_are_sigint_and_sigterm() -> None:
    assert set(STOP_SIGNALS) == {signal.SIGINT, signal.SIGTERM}


def test_handlers_are_installed_in_the_block_and_restored_after() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)

    with handling_signals(handler) as installed:
        assert installed is True
        assert all(signal.getsignal(s) is handler for s in STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert received == [signal.SIGTERM, signal.SIGINT]
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_handlers_are_restored_when_the_block_raises() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with pytest.raises(RuntimeError, match="inside"), handling_signals(lambda s, f: None):
        raise RuntimeError("inside")
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    seen: dict[str, object] = {}

    def worker() -> None:
        with handling_signals(lambda s, f: None) as installed:
            seen["installed"] = installed
            seen["handlers"] = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        seen["ran"] = True

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"installed": False, "handlers": before, "ran": True}
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
