"""rajax.risk: soft-risk schedule (docs/paper.md §1.3 table), episode statistics (§1.4), CVaR mask (§1.5)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from rajax.core import parallel, risk

B = 128


def _sched(alpha, n, M, iters, rho=0.95, scheduler="new"):
    return risk.soft_risk_schedule(iters, batch_size=B, alpha=alpha, n=n, rho=rho, M=M, scheduler=scheduler)


# (alpha, n, M, iterations) -> (alpha' at m=0/30/50/100/150/last or None, first m with alpha'<128,
#                               final alpha', first m at the final alpha', mean kept fraction)
SPEC_TABLE = {
    "imdb": ((0.4, 30, 194, 194), ((128, 128, 119, 94, 69, 52), 33, 52, 184, 0.738)),
    "jigsaw": ((0.2, 30, 288, 288), ((128, 128, 120, 99, 78, 26), 33, 26, 274, 0.627)),
    "jigsaw_as_run": ((0.2, 30, 264, 288), ((128, 128, 119, 96, 73, 26), 33, 26, 251, 0.595)),
    "rtp": ((0.2, 30, 452, 452), ((128, 128, 123, 111, 98, 26), 34, 26, 429, 0.612)),
    "ablation_n1": ((0.4, 1, 194, 194), (None, 4, 52, None, 0.693)),
    "ablation_a03": ((0.3, 30, 194, 194), (None, 32, 39, None, 0.693)),
    "ablation_a02": ((0.2, 30, 194, 194), (None, 32, 26, None, 0.649)),
}


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_soft_risk_schedule_matches_spec_table(name):
    (alpha, n, M, iters), (points, first, final, final_from, mean_frac) = SPEC_TABLE[name]
    s = _sched(alpha, n, M, iters)
    if points is not None:
        assert tuple(s[[0, 30, 50, 100, 150, iters - 1]]) == points
    assert int(np.argmax(s < B)) == first
    assert s[-1] == final
    if final_from is not None:
        assert int(np.argmax(s == final)) == final_from and np.all(s[final_from:] == final)
    assert round(float(s.mean()) / B, 3) == mean_frac
    # warm start: m = 0..n (0-based, inclusive) is the full batch; then non-increasing.
    assert np.all(s[: n + 1] == B) and np.all(np.diff(s) <= 0)


def test_soft_risk_level_scalar_equals_schedule_and_m_is_zero_based():
    s = _sched(0.4, 30, 194, 194)
    for m in (0, 30, 31, 33, 120, 184, 193):
        assert risk.soft_risk_level(m, batch_size=B, alpha=0.4, n=30, rho=0.95, M=194) == s[m]
    assert risk.soft_risk_level(30, batch_size=B, alpha=0.4, n=30, rho=0.95, M=194) == B


def test_old_scheduler_never_reaches_alpha_when_n_exceeds_slack():
    # n = 30 > (1 - rho) M = 9.7: the "old" slope reaches alpha only at m = n + rho M > M.
    s = _sched(0.4, 30, 194, 194, scheduler="old")
    assert s.min() > int(np.ceil(0.4 * B)) and s[-1] == s.min() == 61
    # with n = 1 < 9.7 it does reach ceil(alpha B) = 52 inside the run
    s1 = _sched(0.4, 1, 194, 194, scheduler="old")
    assert s1[-1] == 52 and np.all(s1[:2] == B)
    # and it always lies at or above the "new" schedule
    assert np.all(s >= _sched(0.4, 30, 194, 194))


def test_soft_risk_level_errors():
    with pytest.raises(ValueError, match="scheduler"):
        risk.soft_risk_level(40, batch_size=B, alpha=0.4, n=30, rho=0.95, M=194, scheduler="cosine")
    with pytest.raises(ValueError, match="alpha"):
        risk.soft_risk_level(40, batch_size=B, alpha=1.5, n=30, rho=0.95, M=194)


def test_cvar_mask_keeps_exactly_k_lowest_random():
    rng = np.random.default_rng(0)
    f = jax.jit(risk.cvar_mask)
    for _ in range(5):
        x = rng.normal(size=16).astype(np.float32)
        for k in (1, 5, 16):
            keep = np.asarray(f(x, k))
            assert keep.sum() == k
            assert set(np.flatnonzero(keep)) == set(np.argsort(x)[:k])


def test_cvar_mask_keeps_ties_and_is_permutation_invariant():
    x = jnp.array([3.0, 1.0, 2.0, 2.0, 2.0, 5.0, 0.0, 4.0])
    keep = np.asarray(risk.cvar_mask(x, 3))  # 3rd smallest is 2.0, shared by three episodes
    np.testing.assert_array_equal(keep, [0, 1, 1, 1, 1, 0, 1, 0])
    assert keep.sum() == 5
    np.testing.assert_array_equal(risk.cvar_mask(x, 8), np.ones(8, bool))  # k = B keeps all
    perm = np.random.default_rng(1).permutation(8)
    np.testing.assert_array_equal(np.asarray(risk.cvar_mask(x[perm], 3)), keep[perm])
    assert float(risk.cvar_threshold(x, 3)) == 2.0


def test_cvar_mask_global_under_sharding():
    """The sort under jit is global over a batch sharded across the 8 fake devices."""
    mesh = parallel.make_mesh()
    n = mesh.shape["data"]
    assert n == 8
    # 16 episodes, 2 per device; the 4 lowest all sit on devices 0 and 1, so any per-device
    # quantile would keep episodes on every device.
    x = np.array([0.0, 1.0, 2.0, 3.0] + list(range(10, 22)), np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    keep = jax.jit(risk.cvar_mask)(xs, jnp.int32(4))
    np.testing.assert_array_equal(np.asarray(keep), np.arange(16) < 4)


def test_risk_measures_registry():
    x = jnp.array([4.0, -1.0, 2.0, 0.0, 7.0, 1.0])
    w, q = risk.risk_weights("cvar", x, 3)
    np.testing.assert_array_equal(np.asarray(w), [0, 1, 0, 1, 0, 1])
    assert float(q) == 1.0
    w, q = risk.risk_weights("cvar_pg", x, 3)  # (q - R)_+ / k, paper Eq. 7
    np.testing.assert_allclose(np.asarray(w), np.maximum(1.0 - np.asarray(x), 0) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="risk measure"):
        risk.risk_weights("var", x, 3)


def test_register_and_spec_select_a_users_measure(monkeypatch):
    monkeypatch.setattr(risk, "RISK_MEASURES", dict(risk.RISK_MEASURES))
    x = jnp.array([4.0, -1.0, 2.0, 0.0])

    def lowest(stat_B, k):
        return (stat_B == stat_B.min()).astype(jnp.float32), stat_B.min()

    assert risk.register("lowest", lowest) is lowest and risk.measure("lowest") is lowest
    np.testing.assert_array_equal(np.asarray(risk.risk_weights("lowest", x, 3)[0]), [0, 1, 0, 0])
    assert risk.measure("rajax.core.risk:cvar_pg_weights") is risk.cvar_pg_weights  # a module:function spec
    with pytest.raises(ValueError, match="without ':'"):
        risk.register("a:b", lowest)
    with pytest.raises(ValueError, match=r"unknown risk measure 'var'; choose one of .*module:function"):
        risk.measure("var")


def test_episode_statistic_kinds():
    rng = np.random.default_rng(2)
    ret, rew = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], np.float32)
    scores = rng.normal(size=4)
    kw = dict(returns_BxN=ret, rewards_BxN=rew, mask_BxN=mask, scores_B=scores)
    chex.assert_trees_all_close(risk.episode_statistic("gae_return", **kw), ret[:, 0], rtol=1e-6)
    chex.assert_trees_all_close(risk.episode_statistic("mc_return", **kw), (rew * mask).sum(-1), rtol=1e-6)
    chex.assert_trees_all_close(risk.episode_statistic("env_score", **kw), scores.astype(np.float32), rtol=1e-6)
    with pytest.raises(ValueError, match="risk statistic"):
        risk.episode_statistic("median", **kw)
