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


def test_on_mesh_keeps_placed_arrays_and_replicates_the_rest():
    """What the jitted entry points call: an array already on the mesh (replicated or sharded) is the
    same object afterwards; NumPy, a fresh jnp array or one on another mesh comes back replicated on it."""
    mesh = parallel.make_mesh()
    x = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
    sharded = parallel.shard_params({"w": x}, mesh, min_size=0)["w"]
    replicated = parallel.replicate(x, mesh)
    other = parallel.replicate(x, parallel.make_mesh(devices=jax.devices()[:2]))
    got = parallel.on_mesh({"s": sharded, "r": replicated, "np": x, "jnp": jnp.asarray(x), "o": other}, mesh)
    assert got["s"] is sharded and got["r"] is replicated
    for k in ("np", "jnp", "o"):
        assert got[k].sharding.mesh == mesh and got[k].sharding.is_fully_replicated, k
        np.testing.assert_array_equal(np.asarray(got[k]), x)


def test_all_finite():
    ok = {"a": jnp.ones(3), "b": [jnp.zeros((2, 2)), jnp.arange(3)]}
    assert bool(parallel.all_finite(ok))
    assert not bool(parallel.all_finite({**ok, "c": jnp.array([1.0, jnp.nan])}))
    assert not bool(parallel.all_finite({**ok, "c": jnp.array([jnp.inf])}))


def test_param_spec_splits_the_largest_divisible_axis():
    assert parallel.param_spec((64, 32), 8) == PartitionSpec("data", None)
    assert parallel.param_spec((32, 128), 8) == PartitionSpec(None, "data")
    assert parallel.param_spec((50400, 4096), 8) == PartitionSpec("data", None)
    assert parallel.param_spec((50257, 768), 8) == PartitionSpec(None, "data")  # 50257 is odd: E is split
    assert parallel.param_spec((30, 45), 8, min_size=0) == PartitionSpec()  # nothing divides: replicated
    assert parallel.param_spec((768,), 8) == PartitionSpec()  # small: replicated
    assert parallel.param_spec((64, 32), 1) == PartitionSpec()


def test_sharded_training_equals_replicated():
    """One PPO step (4 Adam steps) of a tiny Llama from the same rollout, with parameters and Adam state
    replicated or sharded FSDP-style over the 8 devices: the same parameters within float tolerance, and
    the sharded step keeps its layout (XLA propagates the input shardings to the outputs)."""
    from rajax.core import ppo, rollout
    from rajax.models import llama

    cfg = llama.LlamaConfig(vocab_size=64, max_position=32, n_embd=32, n_layer=2, n_head=4, n_kv_head=2,
                            head_dim=8, intermediate=64)
    params = jax.tree.map(np.asarray, llama.init(cfg, jax.random.key(0)))
    mesh = parallel.make_mesh()
    b, p, n = 8, 4, 6
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (b, p + n)).astype(np.int32)
    am = np.ones((b, p + n), np.int32)
    am[:2, :2] = 0
    am[3, p + 4:] = 0
    logp, values, _ = jax.jit(cfg.forward, static_argnums=3)(params, ids, am, p)
    ro = parallel.shard_batch(rollout.Rollout(ids, am, am[:, p:], np.asarray(logp), np.asarray(logp) - 0.1,
                                              np.asarray(values), rng.normal(size=b).astype(np.float32)), mesh)
    pc = ppo.PPOConfig(learning_rate=1e-3, mini_batch_size=8)
    tx = ppo.default_optimizer(pc)
    out = {}
    for sharded in (False, True):
        pp = parallel.place_params(params, mesh, sharded)
        new, opt, _, _ = ppo.ppo_step(cfg, pc, pp, parallel.place_params(tx.init(pp), mesh, sharded), ro, 0.2, 4,
                                      jax.random.key(1), tx=tx)
        up, mu = new["layers"][0]["mlp"]["up_proj"]["kernel"], opt[0].mu["layers"][0]["mlp"]["up_proj"]["kernel"]
        want = PartitionSpec(None, "data") if sharded else PartitionSpec()
        assert up.sharding.spec == want and mu.sharding.spec == want
        if sharded:
            assert up.addressable_shards[0].data.shape == (32, 8)  # each device holds 1/8 of the kernel
        out[sharded] = parallel.to_host(new)
    moved = max(float(np.abs(a - c).max()) for a, c in zip(jax.tree.leaves(out[False]), jax.tree.leaves(params)))
    diff = max(float(np.abs(a - c).max()) for a, c in zip(jax.tree.leaves(out[False]), jax.tree.leaves(out[True])))
    assert moved > 1e-3 and diff < 2e-5, (moved, diff)
