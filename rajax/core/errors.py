"""The errors that mean "the user gave something wrong", as opposed to a bug.

Every command turns a ``UserError`` into one line, ``rajax: error: <message>``, and exit status 2;
any other exception is a bug and keeps its traceback. Each class also derives from the built-in
exception it refines, so library code that catches ``ValueError`` or ``OSError`` keeps working.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


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


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) raised in the main thread as an exception, as Python does for Ctrl-C, so
    that every ``finally`` on the way out runs (a lock released, an earlier run put back) and the
    command ends with one line and the signal's exit status."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


# Seconds a stop signal has to end the command by itself. Python runs a signal handler between two
# bytecodes of the main thread: not while that thread is inside one long C call (an XLA compile),
# and a handler that runs inside a finalizer or a garbage-collector callback has its exception
# printed as "Exception ignored" and dropped. A watchdog thread, told of the signal through
# ``signal.set_wakeup_fd`` even while the main thread is busy in C, ends the process itself after
# this long, with the same line and status. (The training loop's own handler, which finishes the
# iteration and checkpoints, is left alone: the watchdog acts only under ``raise_interrupted``.)
STOP_GRACE_S = float(os.environ.get("RAJAX_STOP_GRACE_S", "10"))
_watchdog: list = []
_lock = threading.Lock()
_watching: list = []


def _stop_now(signum: int) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"rajax: error: interrupted by {name}; stopped\n".encode())
    os._exit(128 + signum)


def _arm(signum: int) -> None:
    with _lock:
        if not _watchdog:
            t = threading.Timer(STOP_GRACE_S, _stop_now, (int(signum),))
            t.daemon = True
            t.start()
            _watchdog.append(t)


def _watch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        for b in data:
            if b in (signal.SIGINT, signal.SIGTERM) and signal.getsignal(b) in (raise_interrupted,
                                                                               signal.default_int_handler):
                _arm(b)


def watch_signals() -> None:
    """Start, once per process and from the main thread, the watchdog's view of SIGINT and SIGTERM."""
    if _watching or threading.current_thread() is not threading.main_thread():
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:
        os.close(r)
        os.close(w)
        return
    _watching.append((r, w))
    threading.Thread(target=_watch, args=(r,), daemon=True, name="rajax-stop-watchdog").start()


def _unraisable(u) -> None:
    """An Interrupted dropped by a finalizer or callback is delivered again (the handler then runs at
    the next bytecode of the main thread, outside it); anything else goes to Python's own hook."""
    if isinstance(u.exc_value, Interrupted):  # sent from another thread: handled after this hook returns
        threading.Timer(0.01, os.kill, (os.getpid(), u.exc_value.signum)).start()
        return
    sys.__unraisablehook__(u)


def raise_interrupted(signum, _frame):
    """A signal handler: stop the main thread where it is with ``Interrupted`` (and, should that
    exception be swallowed for good, end the process after ``STOP_GRACE_S``)."""
    if sys.unraisablehook is sys.__unraisablehook__:
        sys.unraisablehook = _unraisable
    _arm(signum)
    raise Interrupted(signum)


def interrupt_handled() -> None:
    """The command caught ``Interrupted`` and is ending by itself: no watchdog needed."""
    with _lock:
        while _watchdog:
            _watchdog.pop().cancel()
