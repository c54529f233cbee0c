"""Training checkpoints with Orbax: the whole train state plus JSON metadata, keep-last-k, and nothing lost.

A checkpoint holds every pytree the run needs to continue bit-for-bit (policy parameters, Adam state,
KL-controller state) and a small JSON record (iteration, data position, config). Orbax writes each
step into a temporary directory and renames it on success; on top of that:

* a failed write (disk full, no permission) raises one ``CheckpointError`` line, removes its own
  temporary step and leaves every earlier checkpoint as it was; Orbax's logged tracebacks of the
  failure are kept out of the user's terminal (the error line says what happened);
* ``restore`` verifies the newest step by reading it; if it is unreadable or inconsistent it says so
  in one line, moves it aside as ``<step>.unreadable`` (kept, never deleted, and no longer a step
  that keep-last-k could count) and restores the newest intact step instead. A step that reads as
  saved but does not fit the run's structure is intact: it is refused in one line, never moved;
* ``restore_raw_newest`` is the read-only fallback of export and evaluate: it skips an unreadable
  step with a notice and moves nothing.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from rajax.core.errors import CheckpointError, MissingInput, one_line

_OS_REASON = re.compile(r"(No space left on device|Permission denied|Read-only file system|Disk quota exceeded)")


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) describing ``tree``: the restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs every failed write with full tracebacks from its worker threads (dozens of lines
    around the one that matters), and a failed read leaves coroutines whose errors Python prints when
    they are collected; the caller reports the failure itself, in one line."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "orbax.checkpoint")]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda _unraisable: None
    try:
        yield
    finally:
        gc.collect()  # collect the abandoned coroutines while their errors are still silenced
        sys.unraisablehook = hook
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


@contextlib.contextmanager
def _stderr_aside():
    """Send file descriptor 2 to a temporary file while a checkpoint is read: when a damaged step fails,
    TensorStore's reads still in flight end later in callbacks that print tracebacks straight to the
    process's stderr (the event loop they report to is gone). Anything written there that is not one
    of those is copied back afterwards, so nothing the user should see is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            text = buf.read().decode(errors="replace")
            if text and "Event loop is closed" not in text and "Future exception was never retrieved" not in text:
                sys.stderr.write(text)


def _int_keys(tree):
    """Orbax stores dict keys as strings; the layer dicts of our params have int keys."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def _storage_reason(e: BaseException) -> str | None:
    """The storage problem behind ``e`` (an OSError, or tensorstore's ValueError wrapping one), or None."""
    if isinstance(e, OSError) and not isinstance(e, CheckpointError):
        return e.strerror or one_line(e)
    m = _OS_REASON.search(str(e))
    return m.group(1) if m else None


class Checkpointer:
    """Keep-last-``keep`` checkpoints of a train-state pytree under ``directory``.

    ``log`` receives the one-line notices (a fallback to an older step).
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = False,
                 log: Callable[[str], None] = print):
        self.directory = pathlib.Path(directory).absolute()
        self.keep = max(1, keep)
        self.log = log
        self._async = async_save
        self._mngr = self._manager()

    def _manager(self):
        opts = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=self.keep),
            enable_async_checkpointing=self._async,
            create=True,
        )
        try:
            return ocp.CheckpointManager(self.directory, options=opts)
        except OSError as e:
            raise CheckpointError(f"cannot create the checkpoint directory {self.directory} "
                                  f"({e.strerror or one_line(e)}); choose a writable --out") from None

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write ``state`` and ``meta`` as checkpoint ``step``; ``CheckpointError`` (one line) on failure."""
        try:
            with _quiet_orbax():
                self._mngr.save(
                    step,
                    args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                    force=True,
                )
                self._mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - re-raised below unless it is a storage failure
            reason = _storage_reason(e)
            self._discard_partial(step)
            if reason is None:
                raise
            prev = [s for s in self.all_steps() if s != step]
            kept = (f"checkpoint {prev[-1]} in {self.directory} is intact" if prev else "no earlier checkpoint")
            raise CheckpointError(f"writing checkpoint {step} failed ({reason}); {kept}") from None

    def _discard_partial(self, step: int) -> None:
        """Remove what a failed save of ``step`` left (Orbax's temporary directory), then reopen Orbax
        so it does not hold on to the failed step."""
        for p in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(Exception), _quiet_orbax():
            self._mngr.close()
        self._mngr = self._manager()

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def _restore_step(self, like, step):
        with _quiet_orbax():
            r = self._mngr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(like)),
                                        meta=ocp.args.JsonRestore()),
            )
        meta = dict(r.meta)
        if meta.get("iteration", step) != step:
            raise ValueError(f"its metadata says iteration {meta.get('iteration')}")
        return r.state, meta

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` onto the structure/shardings of ``like``.

        Without ``step``: the newest intact checkpoint; an unreadable newer one is reported in one line
        and moved aside (``<step>.unreadable``), never deleted.
        """
        if step is not None:
            return self._restore_step(like, step)
        steps = self.all_steps()
        if not steps:
            raise MissingInput(f"no checkpoint in {self.directory}")
        with _stderr_aside():
            return self._restore_newest(like, steps)

    def _restore_newest(self, like, steps):
        for s in reversed(steps):
            try:
                return self._restore_step(like, s)
            except Exception as e:  # noqa: BLE001 - a step that cannot be read as saved is damaged
                try:
                    self.restore_raw(s)
                except Exception:  # noqa: BLE001 - unreadable as saved: damaged
                    pass
                else:  # readable as saved: the step is intact and must not be moved aside
                    raise CheckpointError(
                        f"checkpoint {s} in {self.directory} is intact but does not fit this run's model and "
                        f"optimizer ({type(e).__name__}: {one_line(e)[:100]}); nothing was moved; resume with the "
                        "settings the run was started with") from None
                older = [x for x in steps if x < s]
                aside = self.directory / f"{s}.unreadable"
                shutil.move(str(self.directory / str(s)), str(aside))
                where = f"restoring checkpoint {older[-1]} instead" if older else "no older checkpoint to restore"
                self.log(f"checkpoint {s} in {self.directory} is unreadable ({type(e).__name__}: "
                         f"{one_line(e)[:100]}); moved it to {aside.name}, {where}")
                self._mngr = self._manager()
        raise CheckpointError(f"no readable checkpoint in {self.directory} (the unreadable ones were moved to "
                              "<step>.unreadable); start a new run or restore one by hand")

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """Checkpoint ``step`` as saved, without a target structure: ``(state as nested dicts, meta)``.
        Integer keys (a model's layer indices) come back as ints."""
        with _stderr_aside(), _quiet_orbax():
            r = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                 meta=ocp.args.JsonRestore()))
        return _int_keys(r.state), dict(r.meta)

    def restore_raw_newest(self, upto: int | None = None, log: Callable[[str], None] | None = None):
        """The newest readable step at or below ``upto``, as saved: ``(step, state, meta)``. A read-only
        fallback (export, evaluate): an unreadable step is reported through ``log`` and left in place."""
        steps = [s for s in self.all_steps() if upto is None or s <= upto]
        if not steps:
            raise MissingInput(f"no checkpoint in {self.directory}")
        for s in reversed(steps):
            try:
                state, meta = self.restore_raw(s)
            except Exception as e:  # noqa: BLE001 - any failure to read a step is a damaged step
                older = [x for x in steps if x < s]
                (log or self.log)(f"checkpoint {s} in {self.directory} is unreadable ({type(e).__name__}: "
                                  f"{one_line(e)[:100]}); "
                                  + (f"using checkpoint {older[-1]} instead" if older else "no older checkpoint"))
                continue
            return s, state, meta
        raise CheckpointError(f"no readable checkpoint in {self.directory}; start a new run or restore one by hand")

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingInput(f"no checkpoint in {self.directory}")
        r = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(r.meta)

    def close(self) -> None:
        with _quiet_orbax():
            self._mngr.wait_until_finished()
            self._mngr.close()
