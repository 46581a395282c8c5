"""The ``regrow`` command line: one module per subcommand (:mod:`.train`, :mod:`.quickstart`,
:mod:`.sweep`, :mod:`.report`, :mod:`.flops`, :mod:`.export`, :mod:`.bench`, :mod:`.sample`),
each an
``add_<name>_parser`` / ``run_<name>`` pair, wired together in :func:`build_parser`.

Bad input prints one line, ``regrow <cmd>: error: ...``, naming what was wrong and the allowed
values, and exits with status 2 (argparse's own errors too: one line, no usage block). A run
stopped for a non-finite loss exits 3, an interrupted one 130 (SIGINT) or 143 (SIGTERM). Output
cut short by its reader (``regrow flops ... | head``) ends quietly with status 141
(128 + SIGPIPE), without a traceback. ``regrow --version`` prints the version; ``regrow`` alone
prints the help.

A command whose extra is not installed (``pip install regrow`` is the library alone) says which
one to install, in one line, status 2: a failed import of a module of
:data:`~regrow.cli.common.OPTIONAL_MODULES`, while building the parser or running the command, is
reported here for every subcommand. ``regrow --help`` lists every command either way.

Modules in the working directory are importable (``sparsity.method=mymethods:MyMethod``), as
under ``python -m regrow``. Ctrl-C at any point, while torch is imported too, is one line and
status 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..util.signals import end_quiet_start
from .bench import add_bench_parser, run_bench
from .common import SIGINT_STATUS, USAGE_STATUS, UsageError, missing_extra
from .export import add_export_parser, run_export
from .flops import add_flops_parser, run_flops
from .quickstart import add_quickstart_parser, run_quickstart
from .report import add_report_parser, run_report
from .sample import add_sample_parser, run_sample
from .sweep import add_sweep_parser, run_sweep
from .train import add_train_parser, run_train

__all__ = [
    "OneLineParser",
    "UsageError",
    "add_bench_parser",
    "add_export_parser",
    "add_flops_parser",
    "add_quickstart_parser",
    "add_report_parser",
    "add_sample_parser",
    "add_sweep_parser",
    "add_train_parser",
    "build_parser",
    "main",
    "run_bench",
    "run_export",
    "run_flops",
    "run_quickstart",
    "run_report",
    "run_sample",
    "run_sweep",
    "run_train",
]

#: Exit status when stdout's reader went away (a shell reports 128 + SIGPIPE the same way).
BROKEN_PIPE_STATUS = 141


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (no usage block), status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The subcommand parsers by name (for errors that name the subcommand).
        self.subcommands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _MissingExtraParser(OneLineParser):
    """Stands in for a subcommand whose parser needs a missing extra: whatever follows the
    command (``--help`` too), its handler re-raises the failed import for :func:`main` to report."""

    def __init__(self, *, error: ModuleNotFoundError, **kwargs: Any) -> None:
        super().__init__(add_help=False, **kwargs)
        self.missing = error

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        def handler(_args: argparse.Namespace) -> int:
            raise self.missing

        return argparse.Namespace(handler=handler), []


#: The subcommands, in the order ``regrow --help`` lists them.
_SUBCOMMANDS: tuple[tuple[str, Callable[[Any], argparse.ArgumentParser]], ...] = (
    ("train", add_train_parser),
    ("quickstart", add_quickstart_parser),
    ("flops", add_flops_parser),
    ("export", add_export_parser),
    ("bench-inference", add_bench_parser),
    ("sample", add_sample_parser),
    ("report", add_report_parser),
    ("sweep", add_sweep_parser),
)


def _add_subcommand(subparsers: Any, name: str, add: Callable[[Any], Any]) -> None:
    try:
        add(subparsers)
    except ModuleNotFoundError as error:
        line = missing_extra(error)
        if line is None:
            raise
        # The add_* functions import before they register, so the name is still free.
        base = subparsers._parser_class
        subparsers._parser_class = _MissingExtraParser
        try:
            subparsers.add_parser(name, help=f"unavailable: {line}", error=error)
        finally:
            subparsers._parser_class = base


def build_parser() -> argparse.ArgumentParser:
    """The ``regrow`` parser with every subcommand registered (a stand-in for one whose extra is
    missing)."""
    from .. import __version__

    parser = OneLineParser(
        prog="regrow",
        description="Sparse training for PyTorch: RigL and its baselines, exact to the paper.",
    )
    parser.add_argument("--version", action="version", version=f"regrow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in _SUBCOMMANDS:
        _add_subcommand(subparsers, name, add)
    parser.subcommands = subparsers.choices
    return parser


def _parse(parser: OneLineParser, argv: list[str] | None) -> argparse.Namespace:
    """``argv`` parsed; arguments nobody took are the subcommand's error (``regrow flops:
    error: unrecognized arguments: ...``), not the top-level parser's."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = parser.subcommands.get(getattr(args, "command", None) or "", parser)
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (captured output)
        pass


def _working_directory_importable() -> None:
    """Modules in the working directory import, as under ``python -m regrow``, so that a method
    of one's own (``sparsity.method=mymethods:NoisyRigL``) needs no ``PYTHONPATH=.`` with the
    ``regrow`` script; put last, so a file there never shadows an installed module."""
    try:
        here = os.getcwd()
    except OSError:  # the working directory was removed: nothing to import from
        return
    if not any(entry in ("", here) for entry in sys.path):
        sys.path.append(here)


def _run(args: argparse.Namespace) -> int:
    """The command's handler; Ctrl-C outside its harness (while it imports) is its one line."""
    try:
        return int(args.handler(args))
    except KeyboardInterrupt as exc:
        print(f"regrow {args.command}: interrupted", file=sys.stderr)
        code = getattr(exc, "exit_code", None)
        return code if isinstance(code, int) else SIGINT_STATUS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``regrow`` / ``python -m regrow``; returns the exit status. Ctrl-C at any
    point is one line and status 130: while ``regrow`` is imported (torch's import included;
    :func:`regrow.util.signals.quiet_interrupt_while_starting`), here, or in a command."""
    try:
        end_quiet_start()  # from here on Ctrl-C raises KeyboardInterrupt, reported below
        _working_directory_importable()
        return _main(argv)
    except KeyboardInterrupt as exc:
        print("regrow: interrupted", file=sys.stderr)
        code = getattr(exc, "exit_code", None)
        return code if isinstance(code, int) else SIGINT_STATUS


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    assert isinstance(parser, OneLineParser)
    try:
        args = _parse(parser, None if argv is None else list(argv))
    except SystemExit as exc:  # argparse: --help / --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command is None:  # bare `regrow`: what it can do
        parser.print_help()
        return 0
    try:
        status = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS
    except ModuleNotFoundError as error:
        line = missing_extra(error)
        if line is None:
            raise  # not an optional module: a bug, keep the traceback
        print(f"regrow {args.command}: error: {line}", file=sys.stderr)
        return USAGE_STATUS
    return status
