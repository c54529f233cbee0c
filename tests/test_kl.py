"""rajax.kl: adaptive/fixed KL controllers and the three KL statistics (spec §1.6, §2.1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rajax import kl


def _trl_adaptive(beta, observed, target=6.0, horizon=10000, n_steps=128):
    """TRL 0.7.2 AdaptiveKLController.update, in float64."""
    for x in observed:
        e = np.clip(x / target - 1, -0.2, 0.2)
        beta *= 1 + e * n_steps / horizon
    return beta


@pytest.mark.parametrize("kind", kl.KL_STATS)
def test_controller_follows_rule_for_each_kl_stat(kind):
    rng = np.random.default_rng({"diluted": 0, "kept_mean": 1, "all": 2}[kind])
    B, N = 8, 6
    state = kl.init(0.2)
    beta_ref, betas = 0.2, []
    step = jax.jit(lambda s, x: kl.update(s, x, target=6.0, horizon=10000, n_steps=B))
    for it in range(25):
        kl_tok = rng.normal(1.0, 1.0, size=(B, N)).astype(np.float32) * (it % 5)  # KL below/above target
        mask = (np.arange(N)[None] < rng.integers(1, N + 1, size=(B, 1))).astype(np.float32)
        keep = np.zeros(B, bool)
        keep[rng.choice(B, 3, replace=False)] = True
        rmask = mask * keep[:, None]
        obs = float(kl.kl_statistic(kl_tok, rmask, mask, keep, kind))
        per_ep = (kl_tok * mask).sum(-1)
        expect = {"diluted": per_ep[keep].sum() / B, "kept_mean": per_ep[keep].mean(), "all": per_ep.mean()}[kind]
        np.testing.assert_allclose(obs, expect, rtol=1e-5, atol=1e-6)
        state = step(state, obs)
        beta_ref = _trl_adaptive(beta_ref, [obs], n_steps=B)
        betas.append(float(state.beta))
    np.testing.assert_allclose(float(state.beta), beta_ref, rtol=1e-5)
    assert len(set(betas)) > 1  # the controller moved


def test_clipping_and_fixed_controller():
    s = kl.init(0.2)
    # error clipped at +0.2 however large the KL: beta * (1 + 0.2 * 128 / 10000)
    up = kl.update(s, 1e6, target=6.0, horizon=10000, n_steps=128)
    np.testing.assert_allclose(float(up.beta), 0.2 * (1 + 0.2 * 0.0128), rtol=1e-6)
    down = kl.update(s, 0.0, target=6.0, horizon=10000, n_steps=128)
    np.testing.assert_allclose(float(down.beta), 0.2 * (1 - 0.2 * 0.0128), rtol=1e-6)
    same = kl.update(s, 6.0, target=6.0, horizon=10000, n_steps=128)
    np.testing.assert_allclose(float(same.beta), 0.2, rtol=1e-7)
    fixed = kl.update(s, 1e6, target=6.0, horizon=10000, n_steps=128, adaptive=False)
    assert float(fixed.beta) == pytest.approx(0.2)
    assert isinstance(jax.tree.leaves(s)[0], jax.Array)  # a pytree (checkpointable)


def test_kl_statistic_diluted_le_kept_mean_and_errors():
    kl_tok = jnp.ones((4, 3))
    mask = jnp.ones((4, 3))
    keep = jnp.array([True, False, False, False])
    rmask = mask * keep[:, None]
    assert float(kl.kl_statistic(kl_tok, rmask, mask, keep, "diluted")) == pytest.approx(3 / 4)
    assert float(kl.kl_statistic(kl_tok, rmask, mask, keep, "kept_mean")) == pytest.approx(3.0)
    assert float(kl.kl_statistic(kl_tok, rmask, mask, keep, "all")) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="kl_stat"):
        kl.kl_statistic(kl_tok, rmask, mask, keep, "max")
    with pytest.raises(ValueError, match="init_kl_coef"):
        kl.init(-1.0)
