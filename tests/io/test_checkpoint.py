"""Checkpointer: exact round trip of a train state, keep-last-k, and a failed write keeps the previous one."""
import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from rajax.io.checkpoint import Checkpointer
from rajax.models import gpt2

CFG = gpt2.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)


def _state(seed):
    params = gpt2.init(CFG, jax.random.key(seed))
    tx = optax.adam(1e-3)
    opt = tx.init(params)
    # One real Adam step so the moments are non-trivial.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt = tx.update(grads, opt, params)
    return {"params": params, "opt_state": opt, "kl": {"beta": jnp.float32(0.1234)}}


def test_round_trip_is_exact(tmp_path):
    state = _state(0)
    ck = Checkpointer(tmp_path / "ck", keep=3)
    ck.save(5, state, {"iteration": 5, "data_position": 640})
    restored, meta = ck.restore(_state(1))
    chex.assert_trees_all_equal(restored, state)
    assert meta == {"iteration": 5, "data_position": 640}
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    ck.close()


def test_keeps_last_k(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    for step in (1, 2, 3, 4):
        ck.save(step, {"x": jnp.full((2,), step, jnp.float32)}, {"iteration": step})
    assert ck.all_steps() == [3, 4]
    restored, meta = ck.restore({"x": jnp.zeros(2)})
    assert meta["iteration"] == 4 and float(restored["x"][0]) == 4.0
    ck.close()


def test_failed_write_keeps_previous(tmp_path):
    ck = Checkpointer(tmp_path / "ck", keep=2)
    good = {"x": jnp.arange(3.0)}
    ck.save(1, good, {"iteration": 1})
    with pytest.raises(Exception):
        ck.save(2, {"x": object()}, {"iteration": 2})  # dies mid-write
    assert ck.latest_step() == 1
    reopened = Checkpointer(tmp_path / "ck", keep=2)
    restored, meta = reopened.restore(good)
    chex.assert_trees_all_equal(restored, good)
    assert meta["iteration"] == 1


def test_restore_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpointer(tmp_path / "empty").restore({"x": jnp.zeros(1)})
