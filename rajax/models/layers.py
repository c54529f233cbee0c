"""Building blocks shared by the GPT-2 and BERT modules, and parameter-tree path helpers.

Parameters are float32; a layer computes in its input's dtype (bfloat16 compute keeps float32
masters), and LayerNorm statistics are always float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def normal(std: float = 0.02):
    return nnx.initializers.normal(stddev=std)


@jax.custom_vjp
def _materialise_grad(x):
    return x


def _materialise_fwd(x):
    # One element of the forward value: a runtime scalar the compiler cannot fold (see the backward).
    return x, x.reshape(-1)[0].astype(jnp.float32)


def _materialise_bwd(x0, g):
    # A conditional's operand is a buffer, so XLA must write g once instead of fusing (and duplicating)
    # the expression that computes it into every consumer. The predicate is true for every float x0
    # (the bits of x0 with the low bit set are never 0), so the true branch, g itself, always runs;
    # it is a runtime value only so that XLA cannot fold the conditional away. The other branch is
    # unreachable and returns NaN so that a miscompilation could not pass unnoticed.
    always = (jax.lax.bitcast_convert_type(x0, jnp.int32) | 1) != 0
    return (jax.lax.cond(always, lambda t: t, lambda t: jnp.full_like(t, jnp.nan), g),)


_materialise_grad.defvjp(_materialise_fwd, _materialise_bwd)


def residual_grad_barrier(x: jax.Array) -> jax.Array:
    """Identity on the residual stream whose backward writes the stream's gradient once (CPU only).

    Why: XLA:CPU's loop fusion duplicates cheap elementwise producers into every consumer. In the
    backward of a stack of pre-LN blocks the residual gradient is a chain of adds and LayerNorm
    backward terms through every later layer, and it was never written: each layer's fusions
    recomputed the whole chain. A 12-layer GPT-2 small trunk's forward + backward took 1.38x as long
    without this barrier (bench/block.py; bench/NOTES.md, issue 16). ``jax.lax.optimization_barrier``
    does not help there (XLA:CPU removes it before fusion); a conditional does. Values are unchanged: the forward is the identity
    and the backward returns the cotangent as it is. On other backends (the GPU, whose fusion has its
    own limits) this is the plain identity, so their programs are left exactly as they were.
    """
    if jax.default_backend() != "cpu":
        return x
    return _materialise_grad(x)


class Dense(nnx.Module):
    """x @ kernel + bias with kernel (in, out), computed in x's dtype."""

    def __init__(self, din: int, dout: int, *, std: float = 0.02, rngs: nnx.Rngs):
        self.kernel = nnx.Param(normal(std)(rngs.params(), (din, dout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))

    def __call__(self, x):
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x, dtype=None):
        """Normalise in float32 whatever the compute dtype (BERT's eps 1e-12 would vanish in bf16);
        return ``dtype`` (default: x's)."""
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
        return y.astype(x.dtype if dtype is None else dtype)


class Embed(nnx.Module):
    def __init__(self, num: int, dim: int, *, std: float = 0.02, rngs: nnx.Rngs):
        self.embedding = nnx.Param(normal(std)(rngs.params(), (num, dim), jnp.float32))


def set_path(tree: dict, path: tuple, value) -> None:
    """``tree[p0][p1]...[pn] = value``, creating the intermediate dicts."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree
