"""``python -m regrow``: the command line (see :mod:`regrow.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
