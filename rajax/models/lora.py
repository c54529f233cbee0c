"""Low-rank adapters (LoRA) on chosen projections of any family that lists its ``lora_sites``.

A projection ``y = x @ W (+ b)`` with an adapter becomes ``y = x @ W (+ b) + s · (drop(x) @ A) @ B`` with
``A`` [in, r], ``B`` [r, out] and ``s = alpha / r`` (PEFT's LoRA, ``use_rslora=False``). ``A`` starts
as PEFT's kaiming-uniform (U(±1/√in)) and ``B`` at zero, so a fresh adapter leaves the model unchanged.

Where adapters live: a separate subtree ``params["lora"] = {layer: {target: {"a", "b"}}}`` next to the
base weights, read only when the family's config carries a ``LoRA`` spec (``cfg.lora``). So

* the trainable set is ``{"lora", "v_head"}`` (:func:`split`): the optimizer sees nothing else, and the
  base weights can be stored in bfloat16 while adapters and the value head stay float32;
* the reference pass of a LoRA policy is the same tree read by ``cfg.replace(lora=None)``: adapters
  off, no second copy of the base weights (``rajax.core.rollout.policy_and_reference`` with
  ``ref_params=None``);
* :func:`merge` folds ``s·A@B`` into ``W`` for a plain Hugging Face export, and ``rajax.io.peft``
  writes the adapters in PEFT's format.

Why not ``qwix``: docs/models.md ("LoRA").
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rajax.core.errors import InvalidInput
from rajax.models.layers import get_path, normal, set_path

TRAINABLE = ("lora", "v_head")  # the top-level keys of the trainable subtree of a LoRA policy


@dataclasses.dataclass(frozen=True)
class LoRA:
    """Which projections get adapters, their rank and scale (hashable: part of a family's config)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = 0.0  # on the adapter's input, only when a dropout key is given (never in PPO passes)

    def __post_init__(self):
        if self.rank < 1:
            raise InvalidInput(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise InvalidInput(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise InvalidInput("LoRA needs at least one target projection (e.g. q_proj, v_proj)")
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidInput(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "targets", tuple(sorted(set(self.targets))))  # order is irrelevant

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def dropout(x, rate: float, key):
    """Inverted dropout; identity without a key (eval mode) or at rate 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def split_key(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class Linear(nnx.Module):
    """``x @ kernel (+ bias)`` with kernel (in, out), computed in x's dtype (the stored dtype may be
    bfloat16 for frozen LoRA base weights), plus an optional adapter given at call time."""

    def __init__(self, din: int, dout: int, *, bias: bool, std: float = 0.02, rngs: nnx.Rngs):
        self.kernel = nnx.Param(normal(std)(rngs.params(), (din, dout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32)) if bias else None

    def __call__(self, x, adapter=None, spec: LoRA | None = None, key=None):
        y = x @ self.kernel[...].astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y if adapter is None else y + delta(x, adapter, spec, key)


def delta(x, adapter, spec: LoRA, key=None):
    """The adapter's term ``s · (drop(x) @ A) @ B`` in x's dtype (added to a projection's output)."""
    low = dropout(x, spec.dropout, key) @ adapter["a"].astype(x.dtype)
    return (low @ adapter["b"].astype(x.dtype)) * jnp.asarray(spec.scale, x.dtype)


def adapters_of(cfg, params, layer: int):
    """The adapters of one layer when ``cfg`` has LoRA on (None otherwise, or when params has none)."""
    if getattr(cfg, "lora", None) is None or "lora" not in params:
        return None
    return params["lora"].get(layer)


def sites(cfg) -> dict[tuple[int, str], tuple]:
    """``{(layer, target): kernel path}`` of ``cfg.lora.targets``; unknown targets raise one line."""
    spec = cfg.lora
    if spec is None:
        raise InvalidInput(f"{cfg.describe()} has no LoRA spec (cfg.lora is None)")
    every = cfg.lora_sites()
    known = sorted({t for _, t in every})
    bad = [t for t in spec.targets if t not in known]
    if bad:
        raise InvalidInput(f"LoRA targets {bad} are not projections of {cfg.describe()}; choose from {known}")
    return {k: p for k, p in every.items() if k[1] in spec.targets}


def init(cfg, params, key: jax.Array) -> dict:
    """Fresh adapters ``{layer: {target: {"a" [in, r], "b" [r, out]}}}`` (float32) for ``cfg.lora``:
    A ~ U(±1/√in) (PEFT's kaiming_uniform(a=√5)), B = 0."""
    r = cfg.lora.rank
    out: dict = {}
    where = sites(cfg)
    for n, ((layer, target), path) in enumerate(sorted(where.items())):
        din, dout = get_path(params, path).shape
        bound = din**-0.5
        a = jax.random.uniform(jax.random.fold_in(key, n), (din, r), jnp.float32, -bound, bound)
        out.setdefault(layer, {})[target] = {"a": a, "b": jnp.zeros((r, dout), jnp.float32)}
    return out


def split(params) -> tuple[dict, dict]:
    """``(trainable, frozen)``: the adapters and the value head, and every base weight."""
    trainable = {k: v for k, v in params.items() if k in TRAINABLE}
    frozen = {k: v for k, v in params.items() if k not in TRAINABLE}
    return trainable, frozen


def cast(tree, dtype) -> Any:
    """Every floating array of ``tree`` as ``dtype`` (e.g. frozen base weights in bfloat16)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def merge(cfg, params) -> tuple[Any, dict]:
    """``(cfg without LoRA, params with W + s·A@B folded in, no "lora")``: a plain checkpoint, as float32
    NumPy arrays on the host (what an export writes)."""
    if getattr(cfg, "lora", None) is None or "lora" not in params:
        return cfg, {k: v for k, v in params.items() if k != "lora"}
    s = cfg.lora.scale
    merged = jax.tree.map(lambda x: np.asarray(x, np.float32), {k: v for k, v in params.items() if k != "lora"})
    for (layer, target), path in sites(cfg).items():
        ad = params["lora"].get(layer, {}).get(target)
        if ad is None:
            continue
        w = get_path(merged, path)
        set_path(merged, path, w + s * (np.asarray(ad["a"], np.float32) @ np.asarray(ad["b"], np.float32)))
    return cfg.replace(lora=None), merged


def num_params(tree) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(tree))
