"""The errors that mean "the user gave something wrong", as opposed to a bug.

Every command turns a ``UserError`` into one line, ``rajax: error: <message>``, and exit status 2;
any other exception is a bug and keeps its traceback. Each class also derives from the built-in
exception it refines, so library code that catches ``ValueError`` or ``OSError`` keeps working.
"""
from __future__ import annotations

import os


class UserError(Exception):
    """A mistake in a flag, a file, a config value or the environment, explained in one line."""


class InvalidInput(UserError, ValueError):
    """A value or a file's content that cannot be used (out of range, wrong type, malformed)."""


class MissingInput(UserError, FileNotFoundError):
    """A path that does not exist, or a resource (hub, dataset) that cannot be reached."""


class RunDirError(UserError, OSError):
    """A run directory that cannot be used as asked: in use, another run's, not writable."""


class CheckpointError(UserError, OSError):
    """A checkpoint that cannot be written or read."""


class NonFinite(UserError, ArithmeticError):
    """A non-finite reward, loss, parameter or metric: the run stops without saving it."""


def train_command() -> str:
    """How the user starts training, for hints in messages: ``bin/train`` from a clone (its wrappers
    set RAJAX_TRAIN_COMMAND), else the console script ``rajax train``."""
    return os.environ.get("RAJAX_TRAIN_COMMAND", "rajax train")


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (the first line of a multi-line message)."""
    msg = str(e).strip() or type(e).__name__
    return msg.splitlines()[0]
