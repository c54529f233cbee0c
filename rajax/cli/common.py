"""What every command shares: one line for every user mistake, and the exit codes.

``guard(main)`` runs a command body: a ``rajax.core.errors.UserError`` (and a few known errors of the
libraries underneath that can only come from the user's files) becomes ``rajax: error: <message>``
on stderr and exit status 2. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

from rajax.core.errors import UserError, one_line

EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, the shell convention


def error_line(message: str) -> None:
    print(f"rajax: error: {message}", file=sys.stderr, flush=True)


def guard(body: Callable[[], int]) -> int:
    """Run ``body`` and return its exit status; a user error is one line and status 2."""
    try:
        return body()
    except UserError as e:
        error_line(one_line(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error_line("interrupted")
        return EXIT_SIGNAL[signal.SIGINT]


def exit_code_for(signum) -> int:
    return EXIT_SIGNAL.get(signum, 128 + int(signum))
