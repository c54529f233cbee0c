"""rajax.core.parallel: the data mesh, sharding and replication, gathering to the host (8 fake CPU devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from rajax.core import parallel


def test_mesh_is_one_auto_data_axis_over_every_device():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.shape["data"] == jax.device_count() == 8
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
    assert parallel.make_mesh(16, devices=jax.devices()[:4]).shape["data"] == 4
    with pytest.raises(ValueError, match="batch size 12 must be a multiple of the 8 devices"):
        parallel.make_mesh(12)


def test_shard_replicate_and_back_to_the_host():
    mesh = parallel.make_mesh()
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    tree = {"a": x, "b": (x[:, 0].astype(np.int32),)}
    s = parallel.shard_batch(tree, mesh)
    assert s["a"].sharding.spec == PartitionSpec("data") and len(s["a"].addressable_shards) == 8
    assert s["a"].addressable_shards[1].data.shape == (2, 3)  # batch axis split, feature axis whole
    back = parallel.to_host(s)
    np.testing.assert_array_equal(back["a"], x)
    assert isinstance(back["b"][0], np.ndarray) and back["b"][0].dtype == np.int32
    r = parallel.replicate({"w": x}, mesh)
    assert r["w"].sharding.is_fully_replicated
    np.testing.assert_array_equal(parallel.to_host(r)["w"], x)
    # An already-placed array is moved, not copied through the host, and keeps its values.
    again = parallel.shard_batch(jnp.asarray(x), mesh)
    np.testing.assert_array_equal(np.asarray(again), x)
    with pytest.raises(ValueError, match=r"shape \(6, 3\) over 8 devices"):
        parallel.shard_batch(x[:6], mesh)
    with pytest.raises(ValueError, match=r"shape \(\)"):
        parallel.shard_batch(np.float32(1.0), mesh)


def test_all_finite():
    ok = {"a": jnp.ones(3), "b": [jnp.zeros((2, 2)), jnp.arange(3)]}
    assert bool(parallel.all_finite(ok))
    assert not bool(parallel.all_finite({**ok, "c": jnp.array([1.0, jnp.nan])}))
    assert not bool(parallel.all_finite({**ok, "c": jnp.array([jnp.inf])}))
