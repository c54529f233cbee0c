"""Training checkpoints with Orbax: the whole train state plus JSON metadata, keep-last-k.

A checkpoint holds every pytree the run needs to continue bit-for-bit (policy parameters, Adam state,
KL-controller state, PRNG key) and a small JSON record (iteration, data position, config). Orbax writes
each step into a temporary directory and renames it on success, so a failed write (disk full, a kill
mid-write) never damages the previous checkpoint; ``latest_step`` only sees finished ones.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) describing ``tree``: the restore target."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class Checkpointer:
    """Keep-last-``keep`` checkpoints of a train-state pytree under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max(1, keep)),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=opts)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write ``state`` and ``meta`` as checkpoint ``step`` (overwrites nothing that exists)."""
        self._mngr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._mngr.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) onto the structure/shardings of ``like``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        r = self._mngr.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_like(like)),
                                    meta=ocp.args.JsonRestore()),
        )
        return r.state, dict(r.meta)

    def read_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        r = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(r.meta)

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
