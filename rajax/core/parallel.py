"""Data parallelism: a 1-D ``data`` mesh, and moving pytrees between the host and the mesh.

The batch axis is sharded over the mesh and parameters/optimizer state are replicated, or, for
models that do not fit replicated, sharded FSDP-style (``shard_params``), with ``NamedSharding`` on an
Auto-typed mesh. A jitted step is then one program that GSPMD partitions:
loss means, gradients and the sort behind the CVaR quantile are global, so a result matches a
single-device run up to float reduction order. After ``jax.distributed.initialize`` the mesh spans
every host's devices and the same functions place and gather multi-host arrays.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from rajax.core.errors import InvalidInput


def make_mesh(batch_size: int | None = None, devices=None) -> jax.sharding.Mesh:
    """1-D ``data`` mesh (Auto axis type) over every device of every process (or ``devices``).

    Auto axes, not the default Explicit ones: under Explicit sharding an embedding gather on a
    batch-sharded index is a type error, while Auto lets GSPMD place it.
    """
    devices = list(jax.devices() if devices is None else devices)
    if batch_size is not None and batch_size % len(devices):
        raise InvalidInput(f"batch size {batch_size} must be a multiple of the {len(devices)} devices; "
                         f"change the batch size or the number of devices")
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def _put(x, sharding):
    """Host data -> a global array: every process passes the same full array and keeps its shards."""
    if isinstance(x, jax.Array) and (x.is_fully_addressable or x.sharding == sharding):
        if not x.is_fully_addressable:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def shard_batch(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put every array of ``tree`` on ``mesh`` split along its first (batch) axis."""
    n = mesh.shape["data"]
    sharding = NamedSharding(mesh, PartitionSpec("data"))

    def put(x):
        shape = np.shape(x)
        if len(shape) == 0 or shape[0] % n:
            raise InvalidInput(f"cannot shard an array of shape {shape} over {n} devices: the batch axis "
                             f"must be a multiple of {n}")
        return _put(x, sharding)

    return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Put every array of ``tree`` on every device of ``mesh`` (params, optimizer state)."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: _put(x, sharding), tree)


# Arrays smaller than this stay replicated when parameters are sharded: gathering a LayerNorm scale
# costs more in latency than its copy costs in memory.
SHARD_MIN_SIZE = 1024


def param_spec(shape, n: int, min_size: int = SHARD_MIN_SIZE) -> PartitionSpec:
    """FSDP-style placement of one parameter over ``n`` devices: its largest axis that ``n`` divides is
    split over ``data`` (the first such axis on ties); small or indivisible arrays are replicated."""
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    axes = [i for i, d in enumerate(shape) if d % n == 0]
    if not axes:
        return PartitionSpec()
    best = max(axes, key=lambda i: (shape[i], -i))
    return PartitionSpec(*[("data" if i == best else None) for i in range(len(shape))])


def param_shardings(tree: Any, mesh: jax.sharding.Mesh, min_size: int = SHARD_MIN_SIZE) -> Any:
    """The ``NamedSharding`` of every array of ``tree`` under :func:`param_spec`."""
    n = mesh.shape["data"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), n, min_size)), tree)


def shard_params(tree: Any, mesh: jax.sharding.Mesh, min_size: int = SHARD_MIN_SIZE) -> Any:
    """Put parameters (or optimizer state, whose moments have the parameters' shapes) on ``mesh``
    sharded FSDP-style (:func:`param_spec`): each device holds 1/n of every large array, and the
    jitted steps all-gather what a layer needs (GSPMD inserts the collectives). Works multi-host like
    :func:`replicate`: every process passes the same full array and keeps its shards."""
    def put(x, s):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and x.sharding != s:
            return jax.device_put(x, s)  # a multi-host array in another layout: reshard on device
        return _put(x, s)

    return jax.tree.map(put, tree, param_shardings(tree, mesh, min_size))


def place_params(tree: Any, mesh: jax.sharding.Mesh, sharded: bool) -> Any:
    """:func:`shard_params` when ``sharded``, else :func:`replicate`."""
    return shard_params(tree, mesh) if sharded else replicate(tree, mesh)


def on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """``tree`` with every array on ``mesh``: arrays already laid out on it (replicated or sharded, e.g.
    by :func:`shard_params`) are returned as they are, anything else (NumPy, a fresh ``jnp`` array, an
    array on another mesh) is replicated.

    The jitted entry points (``rollout.collect``, ``ppo.ppo_step``) call this on parameters, optimizer
    state and β. A jit cache entry is keyed on each input's type, which includes its mesh: parameters
    from a loader (no mesh) and the same parameters after one PPO step (on the mesh) are two types,
    so without this a loop that does not place them itself compiles every step a second time. On
    already placed trees it is a no-op; on one device replicating aliases the buffer (no copy)."""
    rep = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array):
            if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh:
                return x
            if not x.is_fully_addressable:  # a multi-host array on another mesh: move it on device
                return jax.device_put(x, rep)
        return _put(x, rep)

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """NumPy copies of (possibly multi-host) arrays: replicated ones from a local shard, sharded ones
    gathered from every process."""
    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return np.asarray(x)
        if x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


@jax.jit
def all_finite(tree) -> jax.Array:
    """True when every element of every array in ``tree`` is finite (one fused reduction)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
