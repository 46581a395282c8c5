"""What every subcommand shares: the usage error, the mapping of harness errors to exit
statuses (one line on stderr, ``regrow <cmd>: error: ...``, never a traceback), and the one table
of optional third-party modules and the extra that installs each (:data:`OPTIONAL_MODULES`).

=====  ================================================================================
 0     done
 2     bad input: a config key or value, a preset, a data file, a download, a run directory;
       or a missing extra (``pip install "regrow[harness]"`` and the like)
 3     the run stopped for a non-finite loss (the last good checkpoint is kept)
 130   interrupted by SIGINT (Ctrl-C); 143 for SIGTERM
 N     any exception that carries an ``exit_code`` attribute (an ``int``) exits with it
=====  ================================================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


class UsageError(ValueError):
    """Bad command-line input; the message names the input and the allowed values."""


#: Exit status of bad input, and of a command whose extra is not installed.
USAGE_STATUS = 2
#: Exit status of a run stopped for a non-finite loss.
NON_FINITE_STATUS = 3
#: Exit status after SIGINT (128 + 2), as a shell reports it.
SIGINT_STATUS = 130


#: Each optional third-party module (top-level import name) and the extra of pyproject.toml that
#: installs it; ``import regrow`` and the library (sparsity, flops) need none of them.
OPTIONAL_MODULES = {
    "omegaconf": "harness",
    "yaml": "harness",
    "tqdm": "harness",
    "sklearn": "harness",
    "matplotlib": "report",
    "optuna": "search",
    "submitit": "slurm",
    "tensorboard": "tensorboard",
}


def add_intermixed_parser(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, **kwargs)`` for a subcommand with trailing ``KEY=VALUE``
    arguments: its options may come anywhere among them (``regrow flops a=1 --json b=2``), as
    argparse's intermixed parsing allows; the parser keeps the parent's class (one-line errors)."""
    base = subparsers._parser_class

    class IntermixedParser(base):  # type: ignore[misc, valid-type]
        _inner = False

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            if self._inner:  # the two passes of the intermixed parse
                return super().parse_known_args(args, namespace)
            self._inner = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._inner = False

    subparsers._parser_class = IntermixedParser
    try:
        return subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = base


def missing_extra(error: BaseException) -> str | None:
    """The one line saying which extra to install when ``error`` is the failed import of an
    optional module (:data:`OPTIONAL_MODULES`); ``None`` for any other error."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    module = error.name.partition(".")[0]
    extra = OPTIONAL_MODULES.get(module)
    if extra is None:
        return None
    return f'needs the {extra} extra (no module named {module!r}): pip install "regrow[{extra}]"'


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a multi-line message joined with ``; ``)."""
    if isinstance(error, OSError) and error.strerror:  # "[Errno 13] ..." as "Permission denied: x"
        files = [str(f) for f in (error.filename, error.filename2) if f is not None]
        text = error.strerror + (f": {' -> '.join(files)}" if files else "")
    else:
        text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _exit_code(error: BaseException) -> int | None:
    code = getattr(error, "exit_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def run_harness(command: str, work: Callable[[], int]) -> int:
    """Run ``work()`` and map the harness's errors to exit statuses with one clear line."""
    from ..train import CheckpointError, ConfigError, NonFiniteLossError

    try:
        return int(work())
    except BrokenPipeError:
        raise  # stdout's reader went away: :func:`regrow.cli.main` ends quietly (141)
    except KeyboardInterrupt as exc:
        detail = one_line(exc) if str(exc) else ""
        print(f"regrow {command}: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return _exit_code(exc) or SIGINT_STATUS
    except NonFiniteLossError as exc:
        print(f"regrow {command}: error: {one_line(exc)}", file=sys.stderr)
        return _exit_code(exc) or NON_FINITE_STATUS
    except Exception as exc:
        code = _exit_code(exc)
        if code is None:
            user_error = (ConfigError, CheckpointError, ValueError, OSError)
            if not isinstance(exc, user_error):
                raise  # a bug: keep the traceback
            code = USAGE_STATUS
        print(f"regrow {command}: error: {one_line(exc)}", file=sys.stderr)
        return code
