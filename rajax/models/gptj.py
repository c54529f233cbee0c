"""GPT-J (``GPTJForCausalLM``) with a value head, as Flax NNX modules run as pure functions of plain-dict
params: the policy of the paper's GPT-J 6B run (docs/paper.md §5 quirk #20, its Table 7).

What differs from GPT-2: rotary embeddings on the first ``rotary_dim`` channels of each head
(``rotate_every_two``, interleaved pairs), no position table; attention and MLP in parallel from one
LayerNorm (``x + attn(ln_1(x)) + mlp(ln_1(x))``); q/k/v/out projections without bias; attention
scores in float32 (transformers upcasts q and k); an untied LM head with a bias; vocabulary 50,400
rows with the GPT-2 tokenizer (rows 50,257+ are padding no tokenizer id reaches).

Params (HF names; kernels (in, out), transposed from ``nn.Linear``): ``{'wte': {'embedding' [V, E]},
'h': {0: {'ln_1': {'scale', 'bias'}, 'attn': {'q_proj', 'k_proj', 'v_proj', 'out_proj'},
'mlp': {'fc_in', 'fc_out'}}, ...}, 'ln_f': {'scale', 'bias'}, 'lm_head': {'kernel' [E, V], 'bias' [V]},
'v_head', ['lora']}``. Positions come from the attention mask, as for GPT-2.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rajax.core.errors import InvalidInput
from rajax.models import lora as lora_lib
from rajax.models.base import CausalLM, Output, attention_layout, init_value_head
from rajax.models.layers import Embed, LayerNorm
from rajax.models.lora import Linear, LoRA, dropout, split_key

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
MLP_NAMES = ("fc_in", "fc_out")


@dataclasses.dataclass(frozen=True)
class GPTJConfig(CausalLM):
    """Shape and numerics of a GPT-J, and its model handle. Defaults: EleutherAI/gpt-j-6B."""

    vocab_size: int = 50400
    n_positions: int = 2048
    n_embd: int = 4096
    n_layer: int = 28
    n_head: int = 16
    rotary_dim: int = 64
    n_inner: int | None = None  # None = 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0  # GPT-J 6B trains with 0 (embd/attn/resid); applied only with a dropout key
    dtype: str = "float32"
    remat: bool = False
    lora: LoRA | None = None

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise InvalidInput(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if not (0 < self.rotary_dim <= self.head_dim and self.rotary_dim % 2 == 0):
            raise InvalidInput(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def context_length(self) -> int:
        return self.n_positions

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    def replace(self, **kw) -> "GPTJConfig":
        return dataclasses.replace(self, **kw)

    def apply(self, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
        return apply(self, params, input_ids, attention_mask, cache=cache, dropout_key=dropout_key)

    def lm_head(self, params, hidden) -> jax.Array:
        return lm_head(self, params, hidden)

    def init_cache(self, batch: int, length: int) -> dict:
        return init_cache(self, batch, length)

    def describe(self) -> str:
        lora = f" + LoRA r{self.lora.rank}" if self.lora else ""
        return f"GPT-J {self.n_layer}x{self.n_embd}{lora}"

    def lora_sites(self) -> dict:
        out = {}
        for i in range(self.n_layer):
            for t in ATTN:
                out[(i, t)] = ("h", i, "attn", t, "kernel")
            for t in MLP_NAMES:
                out[(i, t)] = ("h", i, "mlp", t, "kernel")
        return out


def sincos(cfg: GPTJConfig, positions_BxT):
    """(sin, cos) [B, T, 1, rotary_dim], each frequency repeated for its interleaved pair."""
    d = cfg.rotary_dim
    # float32 throughout, as transformers' create_sinusoidal_positions
    inv = (np.float32(1.0) / np.float32(10000) ** (np.arange(0, d, 2).astype(np.float32) / np.float32(d)))
    inv = inv.astype(np.float32)
    ang = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv)
    rep = lambda a: jnp.repeat(a, 2, axis=-1)[:, :, None, :]  # noqa: E731 - torch.repeat_interleave
    return rep(jnp.sin(ang)), rep(jnp.cos(ang))


def rotate(x, sin, cos, rotary_dim: int):
    """Rotary embedding on the first ``rotary_dim`` channels with GPT-J's ``rotate_every_two``."""
    xr, xp = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    pairs = jnp.stack([-xr[..., 1::2], xr[..., ::2]], axis=-1).reshape(xr.shape)
    return jnp.concatenate([(xr * cos + pairs * sin).astype(x.dtype), xp], axis=-1)


class Attention(nnx.Module):
    def __init__(self, cfg: GPTJConfig, *, rngs: nnx.Rngs):
        e = cfg.n_embd
        self.q_proj = Linear(e, e, bias=False, rngs=rngs)
        self.k_proj = Linear(e, e, bias=False, rngs=rngs)
        self.v_proj = Linear(e, e, bias=False, rngs=rngs)
        self.out_proj = Linear(e, e, bias=False, rngs=rngs)
        self.cfg = cfg

    def __call__(self, x, sin, cos, key_mask_BxTxS, kv, write_index, ad, dropout_key):
        cfg = self.cfg
        b, t, e = x.shape
        h, d = cfg.n_head, cfg.head_dim
        ad = ad or {}
        keys = split_key(dropout_key, 6)
        spec = cfg.lora
        q = self.q_proj(x, ad.get("q_proj"), spec, keys[0]).reshape(b, t, h, d)
        k = self.k_proj(x, ad.get("k_proj"), spec, keys[1]).reshape(b, t, h, d)
        v = self.v_proj(x, ad.get("v_proj"), spec, keys[2]).reshape(b, t, h, d)
        q, k = rotate(q, sin, cos, cfg.rotary_dim), rotate(k, sin, cos, cfg.rotary_dim)
        if kv is not None:
            k_cache, v_cache = kv
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, write_index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, write_index, 0, 0))
            kv = (k, v)
            v = v.astype(x.dtype)
        # transformers' GPT-J multiplies q and k in float32 whatever the compute dtype.
        scores = jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k.astype(jnp.float32)) * (d**-0.5)
        scores = jnp.where(key_mask_BxTxS[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = dropout(jax.nn.softmax(scores, axis=-1), cfg.dropout, keys[3]).astype(x.dtype)
        y = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, e)
        return dropout(self.out_proj(y, ad.get("out_proj"), spec, keys[4]), cfg.dropout, keys[5]), kv


class MLP(nnx.Module):
    def __init__(self, cfg: GPTJConfig, *, rngs: nnx.Rngs):
        self.fc_in = Linear(cfg.n_embd, cfg.inner, bias=True, rngs=rngs)
        self.fc_out = Linear(cfg.inner, cfg.n_embd, bias=True, rngs=rngs)
        self.cfg = cfg

    def __call__(self, x, ad, dropout_key):
        ad = ad or {}
        k = split_key(dropout_key, 3)
        spec = self.cfg.lora
        y = jax.nn.gelu(self.fc_in(x, ad.get("fc_in"), spec, k[0]), approximate=True)  # gelu_new
        return dropout(self.fc_out(y, ad.get("fc_out"), spec, k[1]), self.cfg.dropout, k[2])


class Block(nnx.Module):
    def __init__(self, cfg: GPTJConfig, *, rngs: nnx.Rngs):
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, sin, cos, key_mask, kv, write_index, ad, dropout_key):
        k1, k2 = split_key(dropout_key, 2)
        h = self.ln_1(x)
        a, kv = self.attn(h, sin, cos, key_mask, kv, write_index, ad, k1)
        return x + a + self.mlp(h, ad, k2), kv


class GPTJ(nnx.Module):
    def __init__(self, cfg: GPTJConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.wte = Embed(cfg.vocab_size, cfg.n_embd, std=0.02, rngs=rngs)
        self.h = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.ln_f = LayerNorm(cfg.n_embd, cfg.layer_norm_epsilon)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=True, rngs=rngs)
        self.v_head = Linear(cfg.n_embd, 1, bias=True, rngs=rngs)

    def __call__(self, input_ids, positions, key_mask, cache, write_index, adapters, dropout_key):
        cfg = self.cfg
        keys = split_key(dropout_key, cfg.n_layer + 1)
        x = dropout(self.wte.embedding[...][input_ids].astype(cfg.compute_dtype), cfg.dropout, keys[0])
        sin, cos = sincos(cfg, positions)
        new_k, new_v = [], []
        for i, block in enumerate(self.h):
            kv = None if cache is None else (cache["k"][i], cache["v"][i])
            ad = None if adapters is None else adapters.get(i)
            if cfg.remat:
                x, kv = nnx.remat(lambda blk, *a: blk(*a))(block, x, sin, cos, key_mask, kv, write_index, ad,
                                                          keys[i + 1])
            else:
                x, kv = block(x, sin, cos, key_mask, kv, write_index, ad, keys[i + 1])
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        hidden = self.ln_f(x)
        values = self.v_head(hidden.astype(jnp.float32))[..., 0]
        new_cache = None if cache is None else {"k": jnp.stack(new_k), "v": jnp.stack(new_v)}
        return hidden, values, new_cache


@functools.lru_cache(maxsize=None)
def _graphdef(cfg: GPTJConfig):
    abstract = nnx.eval_shape(lambda: GPTJ(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init(cfg: GPTJConfig, key: jax.Array) -> dict:
    """Random parameters (normal 0.02, unit LayerNorms, zero biases) and a TRL-style value head."""
    k1, k2 = jax.random.split(key)
    params = nnx.to_pure_dict(nnx.state(GPTJ(cfg, rngs=nnx.Rngs(params=k1)), nnx.Param))
    params["v_head"] = init_value_head(cfg.n_embd, k2)
    return params


def init_cache(cfg: GPTJConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: k/v [L, B, S, H, D] (rotated keys), slot mask [B, S], write index."""
    shape = (cfg.n_layer, batch, max_len, cfg.n_head, cfg.head_dim)
    dtype = dtype or cfg.compute_dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch, max_len), jnp.int32), "index": jnp.zeros((), jnp.int32)}


def lm_head(cfg: GPTJConfig, params, hidden) -> jax.Array:
    """float32 logits of the untied head: ``hidden @ kernel + bias`` in the compute dtype."""
    h = hidden.astype(cfg.compute_dtype)
    w, b = params["lm_head"]["kernel"], params["lm_head"]["bias"]
    return (h @ w.astype(h.dtype) + b.astype(h.dtype)).astype(jnp.float32)


def apply(cfg: GPTJConfig, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
    t = input_ids.shape[1]
    if cache is None and t > cfg.n_positions:
        raise InvalidInput(f"sequence length {t} exceeds the model's n_positions {cfg.n_positions}")
    mask, positions, key_mask, index, slot_mask = attention_layout(attention_mask, input_ids, cache)
    model = nnx.merge(_graphdef(cfg), {k: v for k, v in params.items() if k != "lora"})
    adapters = params.get("lora") if cfg.lora is not None else None
    hidden, values, kv = model(input_ids, positions, key_mask, cache, index, adapters, dropout_key)
    logits = lm_head(cfg, params, hidden)
    if cache is None:
        return Output(logits, values, None, hidden)
    return Output(logits, values, {"k": kv["k"], "v": kv["v"], "mask": slot_mask, "index": index + t}, hidden)


def num_params(params) -> int:
    return lora_lib.num_params(params)
