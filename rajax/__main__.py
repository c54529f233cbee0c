"""``python -m rajax <command>``: the same as the ``rajax`` console script."""
import signal
import sys

from rajax.core.errors import Interrupted, interrupt_handled, raise_interrupted, watch_signals


def _stopped(e: KeyboardInterrupt, when: str) -> int:
    interrupt_handled()
    signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
    print(f"rajax: error: interrupted by {signal.Signals(signum).name} {when}", file=sys.stderr, flush=True)
    return 128 + int(signum)


# SIGTERM while the libraries load (seconds: JAX, transformers) or the flags are read ends as Ctrl-C
# does: one line and the signal's status, no traceback. Each command then handles it itself.
signal.signal(signal.SIGTERM, raise_interrupted)
watch_signals()  # a stop signal also ends a long C call (an XLA compile) after rajax.core.errors.STOP_GRACE_S
try:
    from rajax.cli.main import main
except KeyboardInterrupt as e:
    sys.exit(_stopped(e, "while starting"))
try:
    code = main()
except KeyboardInterrupt as e:
    code = _stopped(e, "while reading the command line")
sys.exit(code)
