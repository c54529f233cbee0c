"""What every command shares: one line for every user mistake, and the exit codes.

``guard(main)`` runs a command body: a ``rajax.core.errors.UserError`` (and a few known errors of the
libraries underneath that can only come from the user's files) becomes ``rajax: error: <message>``
on stderr and exit status 2. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Callable

import jax

from rajax import __version__
from rajax.core.errors import InvalidInput, UserError, interrupt_handled, one_line, raise_interrupted

REPORT_TARGETS = ("tensorboard", "wandb", "none")

EXIT_USAGE = 2
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, the shell convention


def error_line(message: str) -> None:
    print(f"rajax: error: {message}", file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    """argparse with the commands' one-line errors: a bad flag is ``rajax: error: ...`` and exit 2
    (argparse's own form is a usage block and ``prog: error:``)."""

    def error(self, message: str):
        error_line(f"{' '.join(str(message).split())} (see {self.prog} --help)")
        raise SystemExit(EXIT_USAGE)


def guard(body: Callable[[], int]) -> int:
    """Run ``body`` and return its exit status; a user error is one line and status 2. SIGTERM stops
    the command wherever it is, as Ctrl-C does (start-up, compiling, the final export or evaluation;
    the training loop installs its own handler that finishes the iteration and checkpoints)."""
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        return body()
    except UserError as e:
        error_line(one_line(e))
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        interrupt_handled()
        signum = getattr(e, "signum", signal.SIGINT)
        error_line(f"interrupted by {signal.Signals(signum).name}; stopped before the command finished")
        return exit_code_for(signum)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def exit_code_for(signum) -> int:
    return EXIT_SIGNAL.get(signum, 128 + int(signum))


def runtime_line() -> str:
    """Which JAX runs, on what: the platform, the device kinds and their count (all hosts)."""
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    procs = f", {jax.process_count()} processes" if jax.process_count() > 1 else ""
    return (f"rajax {__version__} · JAX {jax.__version__} on {devs[0].platform}: {len(devs)} device(s) "
            f"({', '.join(kinds)}){procs}")


def report_targets(text: str) -> tuple[str, ...]:
    """``--report-to`` as a tuple of targets; ``none`` alone means metrics.jsonl only."""
    got = tuple(t.strip() for t in (text or "none").split(",") if t.strip())
    bad = [t for t in got if t not in REPORT_TARGETS]
    if bad or ("none" in got and len(got) > 1):
        raise InvalidInput(f"--report-to {text!r}: choose tensorboard, wandb or none (comma-separated)")
    return tuple(t for t in got if t != "none")
