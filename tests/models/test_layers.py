"""rajax.models.layers: Dense computes in its input's dtype over float32 masters; LayerNorm's statistics
are float32 whatever the compute dtype; the tree-path helpers."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rajax.models import layers


def test_dense_and_layernorm_numerics():
    d = layers.Dense(4, 3, rngs=nnx.Rngs(0))
    assert d.kernel[...].dtype == jnp.float32
    x = jax.random.normal(jax.random.key(1), (2, 4))
    np.testing.assert_allclose(d(x), x @ d.kernel[...] + d.bias[...], atol=1e-6)
    assert d(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    ln = layers.LayerNorm(4, eps=1e-12)
    y = 1000.0 + jax.random.normal(jax.random.key(2), (5, 4))  # large mean: bf16 statistics would lose it
    want = (y - y.mean(-1, keepdims=True)) / jnp.sqrt(y.var(-1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(ln(y), want, atol=1e-4)
    # bfloat16 in and out, float32 inside: the result is the float32 LayerNorm of the bf16 input,
    # rounded once (eps 1e-12 would vanish in bf16 statistics).
    z = (3.0 + jax.random.normal(jax.random.key(3), (5, 4))).astype(jnp.bfloat16)
    out16 = ln(z)
    assert out16.dtype == jnp.bfloat16 and ln(z, dtype=jnp.float32).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out16, np.float32), ln(z, dtype=jnp.float32), atol=2e-2)


def test_tree_paths():
    tree = {}
    layers.set_path(tree, ("h", 0, "attn", "kernel"), 7)
    assert tree == {"h": {0: {"attn": {"kernel": 7}}}}
    assert layers.get_path(tree, ("h", 0, "attn", "kernel")) == 7


def test_residual_grad_barrier_is_the_identity_and_is_compiled_in_on_cpu(monkeypatch):
    # Forward and backward must equal the plain identity's through a nonlinear chain of "layers".
    w = jax.random.normal(jax.random.key(0), (3, 8, 8)) * 0.5

    def net(x, barrier):
        for i in range(3):
            x = barrier(x)
            x = x + jnp.tanh(x @ w[i])
        return jnp.sum(x**2)

    x = jax.random.normal(jax.random.key(1), (4, 8))
    for bx in (x, x.astype(jnp.bfloat16)):
        got = jax.value_and_grad(net)(bx, layers.residual_grad_barrier)
        want = jax.value_and_grad(net)(bx, lambda t: t)
        np.testing.assert_array_equal(np.asarray(got[0], np.float32), np.asarray(want[0], np.float32))
        np.testing.assert_allclose(np.asarray(got[1], np.float32), np.asarray(want[1], np.float32),
                                   rtol=1e-6, atol=1e-6)
    # On the CPU the backward carries the conditional that makes XLA write the gradient once...
    hlo = jax.jit(jax.grad(net), static_argnums=1).lower(x, layers.residual_grad_barrier).compile().as_text()
    assert "conditional" in hlo
    # ...and elsewhere it is not there at all (the GPU programs stay as they were).
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    assert layers.residual_grad_barrier(x) is x
