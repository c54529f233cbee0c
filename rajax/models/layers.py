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
