"""The ``regrow`` command line: one module per subcommand (:mod:`.train`, :mod:`.quickstart`,
:mod:`.flops`), each an ``add_<name>_parser`` / ``run_<name>`` pair, wired together in
:func:`build_parser`.

Bad input prints one line, ``regrow <cmd>: error: ...``, naming what was wrong and the allowed
values, and exits with status 2. Output cut short by its reader (``regrow flops ... | head``) ends
quietly with status 141 (128 + SIGPIPE), without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .common import UsageError
from .flops import add_flops_parser, run_flops
from .quickstart import add_quickstart_parser, run_quickstart
from .train import add_train_parser, run_train

__all__ = [
    "UsageError",
    "add_flops_parser",
    "add_quickstart_parser",
    "add_train_parser",
    "build_parser",
    "main",
    "run_flops",
    "run_quickstart",
    "run_train",
]

#: Exit status when stdout's reader went away (a shell reports 128 + SIGPIPE the same way).
BROKEN_PIPE_STATUS = 141


def build_parser() -> argparse.ArgumentParser:
    """The ``regrow`` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="regrow",
        description="Sparse training for PyTorch: RigL and its baselines, exact to the paper.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_train_parser(subparsers)
    add_quickstart_parser(subparsers)
    add_flops_parser(subparsers)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``regrow`` / ``python -m regrow``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    return status
