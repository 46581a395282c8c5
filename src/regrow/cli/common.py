"""What every subcommand shares: the usage error and the mapping of harness errors to exit
statuses (one line on stderr, ``regrow <cmd>: error: ...``)."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(ValueError):
    """Bad command-line input; the message names the input and the allowed values."""


def run_harness(command: str, work: Callable[[], int]) -> int:
    """Run ``work()`` and map the harness's errors to exit statuses with one clear line."""
    from ..train import CheckpointError, ConfigError, NonFiniteLossError

    try:
        return int(work())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"regrow {command}: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"regrow {command}: error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:
        print(f"regrow {command}: interrupted {exc}", file=sys.stderr)
        return 130
