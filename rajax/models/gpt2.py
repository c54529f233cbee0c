"""GPT-2 with a scalar value head, as Flax NNX modules run as pure functions.

The parameters are a plain nested dict (``nnx.to_pure_dict`` of the module state):
``{'wte': {'embedding'}, 'wpe': {'embedding'}, 'h': {0: block, 1: ...}, 'ln_f': {'scale', 'bias'},
'v_head': {'kernel', 'bias'}}`` with every block
``{'ln_1', 'attn': {'c_attn', 'c_proj'}, 'ln_2', 'mlp': {'c_fc', 'c_proj'}}`` and dense layers as
``{'kernel' (in, out), 'bias'}``, the same layout as transformers' Conv1D, so HF weights map without
transposes (see ``rajax.io.hf_gpt2``). A LoRA policy (``cfg.lora``) adds ``'lora': {layer: {target:
{'a', 'b'}}}`` on the four projections, named as PEFT's ``target_modules`` match them: ``c_attn``
(the fused q/k/v), ``attn.c_proj``, ``c_fc`` and ``mlp.c_proj`` (``rajax.models.lora``).

Entry points:
  * ``init(config, key)`` -> params
  * ``apply(config, params, input_ids, attention_mask, ...)`` -> ``Output(logits, values, cache, hidden)``
  * ``init_cache(config, batch, max_len)`` -> an empty KV cache (a pytree carried by the sampler)
  * ``GPT2Config`` is also the model handle of ``rajax.models.base.CausalLM`` (``forward``, ``extend``).

Padding: position ids come from the attention mask (cumsum - 1), so a left- or right-padded row
gives the logits of the unpadded sequence at its real tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rajax.core.errors import InvalidInput
from rajax.models import lora as lora_lib
from rajax.models.base import CausalLM, Output
from rajax.models.layers import Dense, Embed, LayerNorm, residual_grad_barrier
from rajax.models.lora import LoRA

Params = dict[str, Any]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class GPT2Config(CausalLM):
    """Shape and numerics of a GPT-2, and the model handle (``rajax.models.base.CausalLM``).

    Hashable, so it can be a static jit argument: ``cfg.apply(params, ids, mask)``, ``cfg.forward``...
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    layer_norm_epsilon: float = 1e-5
    # GPT-2 uses one rate for embd/attn/resid dropout; applied only when a dropout key is given.
    dropout: float = 0.1
    # Compute dtype of matmuls; parameters stay float32, LayerNorm/softmax/log-softmax run in float32.
    dtype: str = "float32"
    # Rematerialise each block in the backward pass (trades compute for activation memory).
    remat: bool = False
    lora: LoRA | None = None  # adapters on LORA_SITES (rajax.models.lora); None: a plain GPT-2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    def replace(self, **kw) -> "GPT2Config":
        return dataclasses.replace(self, **kw)

    @property
    def context_length(self) -> int:
        return self.n_positions

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    def apply(self, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
        return apply(self, params, input_ids, attention_mask, cache=cache, dropout_key=dropout_key)

    def lm_head(self, params, hidden) -> jax.Array:
        return lm_head(self, params, hidden)

    def init_cache(self, batch: int, length: int) -> dict:
        return init_cache(self, batch, length)

    def describe(self) -> str:
        lora = f" + LoRA r{self.lora.rank}" if self.lora else ""
        return f"GPT-2 {self.n_layer}x{self.n_embd}{lora}"

    def lora_sites(self) -> dict:
        return {(i, t): ("h", i, *path, "kernel") for i in range(self.n_layer) for t, path in LORA_SITES.items()}

    @property
    def default_lora_targets(self) -> tuple[str, ...]:
        return ("c_attn",)  # PEFT's default for GPT-2: the fused q/k/v projection

    @classmethod
    def from_name(cls, name: str, **kw) -> "GPT2Config":
        """The four OpenAI sizes: gpt2, gpt2-medium, gpt2-large, gpt2-xl."""
        sizes = {
            "gpt2": (768, 12, 12),
            "gpt2-medium": (1024, 24, 16),
            "gpt2-large": (1280, 36, 20),
            "gpt2-xl": (1600, 48, 25),
        }
        if name not in sizes:
            raise InvalidInput(f"unknown GPT-2 size {name!r}; choose one of {sorted(sizes)}")
        e, l, h = sizes[name]
        return cls(n_embd=e, n_layer=l, n_head=h, **kw)


# LoRA target -> module path in a block. The attention's and the MLP's output projections are both
# ``c_proj`` in transformers; PEFT matches a target as a suffix of the module name, so ``attn.c_proj``
# and ``mlp.c_proj`` name one each (plain ``c_proj`` in PEFT would adapt both).
LORA_SITES = {"c_attn": ("attn", "c_attn"), "attn.c_proj": ("attn", "c_proj"), "c_fc": ("mlp", "c_fc"),
              "mlp.c_proj": ("mlp", "c_proj")}


def _adapted(dense, x, ad, target, spec, key):
    """``dense(x)`` plus the LoRA term when ``ad`` holds an adapter for ``target``. The adapter's dropout
    key is folded from the branch's key, so the split of the plain model's keys stays as it was."""
    y = dense(x)
    if ad and target in ad:
        k = None if key is None or not spec.dropout else jax.random.fold_in(key, list(LORA_SITES).index(target))
        y = y + lora_lib.delta(x, ad[target], spec, k)
    return y


def _dropout(x, rate, key):
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _split(key, n):
    return [None] * n if key is None else list(jax.random.split(key, n))


class Attention(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        e = cfg.n_embd
        self.c_attn = Dense(e, 3 * e, rngs=rngs)
        # GPT-2 scales residual projections by 1/sqrt(2 * n_layer) at init.
        self.c_proj = Dense(e, e, std=0.02 / (2 * cfg.n_layer) ** 0.5, rngs=rngs)
        self.n_head = cfg.n_head
        self.rate = cfg.dropout
        self.spec = cfg.lora

    def __call__(self, x, key_mask_BxTxS, kv, write_index, dropout_key, layer=0, ad=None):
        b, t, e = x.shape
        h, d = self.n_head, e // self.n_head
        q, k, v = jnp.split(_adapted(self.c_attn, x, ad, "c_attn", self.spec, dropout_key), 3, axis=-1)
        q, k, v = (a.reshape(b, t, h, d) for a in (q, k, v))
        k1, k2 = _split(dropout_key, 2)
        kv_layout = "bshd" if kv is None else "bhsd"  # the cache keeps heads before slots (below)
        if kv is not None:
            # The whole cache [L, B, H, S, D] comes in and goes out: this chunk's keys/values are written
            # in place at layer ``layer``, slots [write_index, write_index + t), and the attention reads
            # that layer in the [B, H, S, D] layout its batched matmuls want, so no decode step copies
            # or transposes the cache (the per-layer [B, S, H, D] caches, stacked again after every
            # step, made CPU sampling about 12% slower; bench/NOTES.md, issue 16).
            k_all, v_all = kv
            at = (layer, 0, 0, write_index, 0)
            k_all = jax.lax.dynamic_update_slice(k_all, k.transpose(0, 2, 1, 3)[None].astype(k_all.dtype), at)
            v_all = jax.lax.dynamic_update_slice(v_all, v.transpose(0, 2, 1, 3)[None].astype(v_all.dtype), at)
            kv = (k_all, v_all)
            k, v = k_all[layer].astype(x.dtype), v_all[layer].astype(x.dtype)
        scores = jnp.einsum(f"bthd,{kv_layout}->bhts", q, k).astype(jnp.float32) * (d**-0.5)
        scores = jnp.where(key_mask_BxTxS[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = _dropout(probs, self.rate, k1).astype(x.dtype)
        y = jnp.einsum(f"bhts,{kv_layout}->bthd", probs, v).reshape(b, t, e)
        return _dropout(_adapted(self.c_proj, y, ad, "attn.c_proj", self.spec, dropout_key), self.rate, k2), kv


class MLP(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        e = cfg.n_embd
        self.c_fc = Dense(e, 4 * e, rngs=rngs)
        self.c_proj = Dense(4 * e, e, std=0.02 / (2 * cfg.n_layer) ** 0.5, rngs=rngs)
        self.rate = cfg.dropout
        self.spec = cfg.lora

    def __call__(self, x, dropout_key, ad=None):
        # gelu_new = tanh approximation (jax's default).
        hid = jax.nn.gelu(_adapted(self.c_fc, x, ad, "c_fc", self.spec, dropout_key), approximate=True)
        return _dropout(_adapted(self.c_proj, hid, ad, "mlp.c_proj", self.spec, dropout_key), self.rate, dropout_key)


class Block(nnx.Module):
    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, rngs=rngs)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, key_mask, kv, write_index, dropout_key, layer=0, ad=None):
        k1, k2 = _split(dropout_key, 2)
        a, kv = self.attn(self.ln_1(x), key_mask, kv, write_index, k1, layer, ad)
        x = x + a
        x = x + self.mlp(self.ln_2(x), k2, ad)
        return x, kv


class GPT2(nnx.Module):
    """GPT-2 LM (LM head tied to ``wte``) plus TRL's value head on the final hidden state."""

    def __init__(self, cfg: GPT2Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, std=0.02, rngs=rngs)
        self.wpe = Embed(cfg.n_positions, cfg.n_embd, std=0.01, rngs=rngs)
        self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        # TRL's ValueHead is nn.Linear(E, 1) with PyTorch's default init: U(-1/sqrt(E), 1/sqrt(E)).
        bound = cfg.n_embd**-0.5
        self.v_head = Dense(cfg.n_embd, 1, rngs=rngs)
        self.v_head.kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (cfg.n_embd, 1), jnp.float32, -bound, bound))
        self.v_head.bias = nnx.Param(jax.random.uniform(rngs.params(), (1,), jnp.float32, -bound, bound))

    def __call__(self, input_ids, positions, key_mask, cache, write_index, dropout_key, adapters=None):
        cfg = self.cfg
        dt = cfg.compute_dtype
        keys = _split(dropout_key, cfg.n_layer + 1)
        x = self.wte.embedding[...][input_ids] + self.wpe.embedding[...][positions]
        x = _dropout(x.astype(dt), cfg.dropout, keys[0])
        kv = None if cache is None else (cache["k"], cache["v"])
        for i, block in enumerate(self.h):
            x = residual_grad_barrier(x)
            ad = None if adapters is None else adapters.get(i)
            if cfg.remat:
                fn = nnx.remat(lambda blk, *a: blk(*a))
                x, kv = fn(block, x, key_mask, kv, write_index, keys[i + 1], i, ad)
            else:
                x, kv = block(x, key_mask, kv, write_index, keys[i + 1], i, ad)
        hidden = self.ln_f(x)
        logits = _tied_logits(hidden, self.wte.embedding[...])
        # Value head in float32 (TRL upcasts it); its dropout is irrelevant since passes are eval-mode.
        values = self.v_head(hidden.astype(jnp.float32))[..., 0]
        new_cache = None if cache is None else {"k": kv[0], "v": kv[1]}
        return logits, values, hidden, new_cache


def _tied_logits(hidden, wte):
    """LM head tied to the token embeddings: matmul in the compute dtype, logits in float32."""
    return (hidden @ wte.astype(hidden.dtype).T).astype(jnp.float32)


def lm_head(cfg: GPT2Config, params: Params, hidden: jax.Array) -> jax.Array:
    """Logits (float32) of some final hidden states (``Output.hidden``), e.g. only the positions a
    caller needs: under jit the unused full-sequence logits of ``apply`` are then never computed."""
    return _tied_logits(hidden.astype(cfg.compute_dtype), params["wte"]["embedding"])


@functools.lru_cache(maxsize=None)
def _graphdef(cfg: GPT2Config):
    abstract = nnx.eval_shape(lambda: GPT2(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def _model(cfg: GPT2Config, params: Params):
    """The module over ``params``' base weights and the adapters it reads: ``params["lora"]`` when
    ``cfg.lora`` is set, none otherwise (the same tree read with adapters off: a LoRA policy's reference)."""
    model = nnx.merge(_graphdef(cfg), {k: v for k, v in params.items() if k != "lora"})
    return model, (params.get("lora") if cfg.lora is not None else None)


def init(cfg: GPT2Config, key: jax.Array) -> Params:
    """Random GPT-2 parameters (GPT-2's init) as a plain nested dict (without adapters: ``lora.init``)."""
    model = GPT2(cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def positions_from_mask(attention_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """Position ids from a 0/1 mask: real tokens count 0, 1, 2, ...; pads get a harmless 0."""
    pos = jnp.cumsum(attention_mask, axis=-1) - 1 + offset
    return jnp.where(attention_mask > 0, pos, 0).astype(jnp.int32)


def init_cache(cfg: GPT2Config, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: k/v [L, B, H, S, D] (heads before slots: the attention's matmul layout), slot
    mask [B, S], write index (scalar)."""
    dtype = dtype or cfg.compute_dtype
    shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch, max_len), jnp.int32),
        "index": jnp.zeros((), jnp.int32),
    }


def apply(
    cfg: GPT2Config,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    cache: dict | None = None,
    dropout_key: jax.Array | None = None,
) -> Output:
    """Logits [B,T,V] (float32) and values [B,T] for ``input_ids`` [B,T].

    Without a cache this is a full causal forward pass. With a cache (from ``init_cache``), the T
    tokens are appended at ``cache['index']``; they attend to every earlier valid slot, and positions
    continue from the number of real tokens already in the cache. ``dropout_key`` turns dropout on
    (GPT-2's 0.1 on embeddings, attention probabilities and residual branches); None = eval mode.
    """
    b, t = input_ids.shape
    if cache is None and t > cfg.n_positions:
        # Position embeddings past n_positions would be silently clamped by the gather.
        raise InvalidInput(f"sequence length {t} exceeds the model's n_positions {cfg.n_positions}")
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    attention_mask = attention_mask.astype(jnp.int32)
    model, adapters = _model(cfg, params)
    if cache is None:
        positions = positions_from_mask(attention_mask)
        causal = jnp.tril(jnp.ones((t, t), bool))
        key_mask = causal[None] & (attention_mask[:, None, :] > 0)
        # A fully padded query row would softmax over nothing; let it see itself (output unused).
        key_mask = key_mask | jnp.eye(t, dtype=bool)[None]
        logits, values, hidden, _ = model(input_ids, positions, key_mask, None, 0, dropout_key, adapters)
        return Output(logits, values, None, hidden)
    index = cache["index"]
    s = cache["mask"].shape[1]
    seen = cache["mask"].sum(-1, keepdims=True)  # real tokens already cached, per row
    positions = positions_from_mask(attention_mask, seen)
    slot_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index))
    slots = jnp.arange(s)[None, :]
    query_slot = index + jnp.arange(t)[:, None]
    key_mask = (slots <= query_slot)[None] & (slot_mask[:, None, :] > 0)
    key_mask = key_mask | (slots == query_slot)[None]
    logits, values, hidden, kv = model(input_ids, positions, key_mask, cache, index, dropout_key, adapters)
    new_cache = {"k": kv["k"], "v": kv["v"], "mask": slot_mask, "index": index + t}
    return Output(logits, values, new_cache, hidden)


def num_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
