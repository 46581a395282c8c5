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


# --- issue 18, item 11: the regrow command's quiet Ctrl-C while it starts, and only there
def test_only_the_regrow_command_gets_the_quiet_start(monkeypatch, tmp_path) -> None:
    import sys
    import types

    from regrow.util import signals

    def case(argv, orig_argv, main_file=None) -> bool:
        monkeypatch.setattr(sys, "argv", argv)
        monkeypatch.setattr(sys, "orig_argv", orig_argv)
        monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__file__=main_file))
        return signals.started_as_regrow()

    script = str(tmp_path / "bin" / "regrow")
    assert case(["-m"], ["python", "-m", "regrow", "train"])
    assert case(["-m"], ["python", "-u", "-mregrow", "train"])
    assert case([script, "train"], ["python", script, "train"], script)
    assert not case(["-m"], ["python", "-m", "mypackage"])  # its __init__ imports regrow
    assert not case(["my.py"], ["python", "my.py"], "my.py")  # a library user's script
    assert not case(["-c"], ["python", "-c", "import regrow"])
    monkeypatch.undo()
    # A library user's process keeps its Ctrl-C handler: the quiet start changes nothing there.
    # (Python's own handler, or SIG_IGN when the process was started in the background by a
    # shell without job control, as some CI runners do.)
    before = signal.getsignal(signal.SIGINT)
    signals.quiet_interrupt_while_starting()
    assert signal.getsignal(signal.SIGINT) is before
    signals.end_quiet_start()
    assert signal.getsignal(signal.SIGINT) is before
