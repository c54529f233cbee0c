"""rajax.trainer.Trainer: a non-finite reward stops the run with the last good checkpoint, nothing
recompiles after the first iteration, and a user's optimizer is the one that trains."""
import jax
import numpy as np
import optax
import pytest
from tiny import train_args

from rajax import trainer as T
from rajax.cli.train import build_parser, config_from_args
from rajax.core import parallel, ppo, rollout
from rajax.io.checkpoint import Checkpointer


def _trainer(train_world, out, iterations=3, **kw):
    cfg = config_from_args(build_parser().parse_args(train_args(train_world, out, iterations=iterations)))
    return T.Trainer(cfg, out, progress=False, log=lambda *_: None, **kw)


def test_non_finite_reward_stops_and_keeps_last_good_checkpoint(train_world, tmp_path):
    trainer = _trainer(train_world, tmp_path / "nan")
    calls = {"n": 0}

    def broken_classifier(prompts, responses):  # e.g. a reward model whose weights went bad
        calls["n"] += 1
        return np.full(len(prompts), np.nan if calls["n"] == 2 else 1.0, np.float32)

    trainer.reward = broken_classifier
    with pytest.raises(T.NonFinite, match=r"iteration 1.*last good checkpoint is iteration 1"):
        trainer.run()
    assert Checkpointer(tmp_path / "nan" / "checkpoints").latest_step() == 1


def test_nothing_recompiles_after_the_first_iteration(train_world, tmp_path):
    trainer = _trainer(train_world, tmp_path / "rc")
    fns = (rollout.sample, rollout.policy_and_reference, ppo._ppo_step_jit, trainer.reward.fn)

    def sizes():
        return [f._cache_size() for f in fns]

    trainer.iteration(0)
    after_first = sizes()
    trainer.iteration(1)  # α′ changes from 8 to 2 here: traced, so no new program
    trainer.iteration(2)
    assert sizes() == after_first


def test_a_users_optimizer_trains(train_world, tmp_path):
    """Trainer(tx=...) uses the given optax chain for the state and every step: a zero schedule keeps the
    policy exactly where it started, while the default Adam moves it."""
    frozen = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.constant_schedule(0.0)))
    t = _trainer(train_world, tmp_path / "frozen", iterations=2, tx=frozen)
    before = t.host_params()
    t.iteration(0)
    t.iteration(1)
    assert t.tx is frozen
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(t.host_params())):
        np.testing.assert_array_equal(a, b)
    d = _trainer(train_world, tmp_path / "default", iterations=2)
    d.iteration(0)
    assert d.tx is ppo.default_optimizer(d.cfg.ppo)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(d.host_params())))
    assert bool(parallel.to_host(parallel.all_finite(d.state.params)))
