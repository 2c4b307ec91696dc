"""What the command-line tools share: a user's mistake ends the command with its message, not a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import UserError

#: errors whose message says what the user has to fix (FileNotFoundError: a path given, or an install, is missing)
USER_ERRORS = (UserError, FileNotFoundError)


def reports_user_errors(main: Callable) -> Callable:
    """Wrap a console script's main(argv): a missing file, a bad model card or a wrong data folder exits 2
    with `<program>: error: <message>`, as argparse does for bad options."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None):
        try:
            return main(argv)
        except USER_ERRORS as exc:
            print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return run
