"""The Llama block family with a value head: Llama 2/3.x, SmolLM2, TinyLlama (``LlamaForCausalLM``) and
Qwen2/2.5 (``Qwen2ForCausalLM``), as Flax NNX modules run as pure functions of plain-dict params.

One module covers them: RMSNorm (statistics in float32), SwiGLU MLP, grouped-query attention,
rotary embeddings on the whole head (``rotate_half``) with ``rope_theta`` and the ``default``,
``linear`` or ``llama3`` frequency rule, q/k/v bias (Qwen2; Llama's ``attention_bias`` also biases
``o_proj``), and a tied or untied LM head. Positions come from the attention mask (``cumsum - 1``),
so a left- or right-padded row gives the logits of the unpadded sequence (transformers does the same
when ``generate`` builds ``position_ids``).

Params (HF module names; dense kernels are (in, out), transposed from ``nn.Linear``):
``{'embed_tokens': {'embedding' [V, E]}, 'layers': {0: {'input_layernorm': {'scale'},
'self_attn': {'q_proj', 'k_proj', 'v_proj', 'o_proj'}, 'post_attention_layernorm': {'scale'},
'mlp': {'gate_proj', 'up_proj', 'down_proj'}}, ...}, 'norm': {'scale'}, ['lm_head': {'kernel' [E, V]}],
'v_head': {'kernel' [E, 1], 'bias' [1]}, ['lora': adapters, rajax.models.lora]}``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rajax.core.errors import InvalidInput
from rajax.models import lora as lora_lib
from rajax.models.base import CausalLM, Output, attention_layout, init_value_head
from rajax.models.layers import Embed
from rajax.models.lora import Linear, LoRA, dropout, split_key

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ROPE_TYPES = ("default", "linear", "llama3")
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LlamaConfig(CausalLM):
    """Shape and numerics of a Llama-family model, and its model handle (``rajax.models.base.CausalLM``)."""

    vocab_size: int = 32000
    max_position: int = 2048
    n_embd: int = 2048
    n_layer: int = 16
    n_head: int = 32
    n_kv_head: int = 8
    head_dim: int = 64
    intermediate: int = 8192
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3 (HF rope_parameters["rope_type"])
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0  # llama3 only
    rope_high_freq_factor: float = 4.0  # llama3 only
    rope_original_max: int = 8192  # llama3: original_max_position_embeddings
    qkv_bias: bool = False  # Qwen2: True; Llama: attention_bias
    o_bias: bool = False  # Llama's attention_bias also biases o_proj; Qwen2's o_proj has none
    mlp_bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0  # attention-probability dropout (HF attention_dropout), only with a dropout key
    model_type: str = "llama"  # llama | qwen2: what a saved config.json says
    dtype: str = "float32"  # compute dtype; RMSNorm statistics, softmax and logits are float32
    remat: bool = False
    lora: LoRA | None = None

    def __post_init__(self):
        if self.n_head % self.n_kv_head:
            raise InvalidInput(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.head_dim % 2:
            raise InvalidInput(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_type not in ROPE_TYPES:
            raise InvalidInput(f"rope_type {self.rope_type!r} is not implemented; supported: {ROPE_TYPES}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def context_length(self) -> int:
        return self.max_position

    @property
    def hidden_size(self) -> int:
        return self.n_embd

    def replace(self, **kw) -> "LlamaConfig":
        return dataclasses.replace(self, **kw)

    def apply(self, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
        return apply(self, params, input_ids, attention_mask, cache=cache, dropout_key=dropout_key)

    def lm_head(self, params, hidden) -> jax.Array:
        return lm_head(self, params, hidden)

    def init_cache(self, batch: int, length: int) -> dict:
        return init_cache(self, batch, length)

    def describe(self) -> str:
        name = {"llama": "Llama", "qwen2": "Qwen2"}.get(self.model_type, self.model_type)
        lora = f" + LoRA r{self.lora.rank}" if self.lora else ""
        return f"{name} {self.n_layer}x{self.n_embd} (heads {self.n_head}/{self.n_kv_head}){lora}"

    def lora_sites(self) -> dict:
        out = {}
        for i in range(self.n_layer):
            for t in ATTN:
                out[(i, t)] = ("layers", i, "self_attn", t, "kernel")
            for t in MLP_NAMES:
                out[(i, t)] = ("layers", i, "mlp", t, "kernel")
        return out


# --------------------------------------------------------------------------------------------- rope
def inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """Rotary inverse frequencies [D/2] in float32, as transformers computes them (default, linear,
    and Llama 3.1's smooth low/high-frequency rule)."""
    d = cfg.head_dim
    base = np.float32(cfg.rope_theta)
    inv = (np.float32(1.0) / base ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)))
    inv = inv.astype(np.float32)
    if cfg.rope_type == "linear":
        return (inv / np.float32(cfg.rope_factor)).astype(np.float32)
    if cfg.rope_type == "llama3":
        factor, lo, hi, old = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_max
        low_wl, high_wl = old / lo, old / hi
        wl = (2 * math.pi / inv).astype(np.float32)
        scaled = np.where(wl > low_wl, inv / np.float32(factor), inv).astype(np.float32)
        smooth = ((old / wl - lo) / (hi - lo)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope(cfg: LlamaConfig, positions_BxT):
    """(cos, sin) [B, T, 1, D] float32 for ``rotate_half`` rotary embeddings."""
    freqs = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq(cfg))
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb), jnp.sin(emb)


def rotate(x, cos, sin):
    """x·cos + rotate_half(x)·sin in float32, back to x's dtype."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rot * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------- modules
class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x):
        """x·rsqrt(mean(x²) + eps) in float32, cast to x's dtype, then × scale (transformers' order)."""
        xf = x.astype(jnp.float32)
        y = (xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + self.eps)).astype(x.dtype)
        return y * self.scale[...].astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        e, h, kv, d = cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = Linear(e, h * d, bias=cfg.qkv_bias, rngs=rngs)
        self.k_proj = Linear(e, kv * d, bias=cfg.qkv_bias, rngs=rngs)
        self.v_proj = Linear(e, kv * d, bias=cfg.qkv_bias, rngs=rngs)
        self.o_proj = Linear(h * d, e, bias=cfg.o_bias, rngs=rngs)
        self.cfg = cfg

    def __call__(self, x, cos, sin, key_mask_BxTxS, kv, write_index, ad, dropout_key):
        cfg = self.cfg
        b, t, _ = x.shape
        h, nkv, d = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        ad = ad or {}
        keys = split_key(dropout_key, 5)
        spec = cfg.lora
        q = self.q_proj(x, ad.get("q_proj"), spec, keys[0]).reshape(b, t, h, d)
        k = self.k_proj(x, ad.get("k_proj"), spec, keys[1]).reshape(b, t, nkv, d)
        v = self.v_proj(x, ad.get("v_proj"), spec, keys[2]).reshape(b, t, nkv, d)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if kv is not None:  # the cache holds rotated keys: positions are known when they are written
            k_cache, v_cache = kv
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, write_index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, write_index, 0, 0))
            kv = (k, v)
            k, v = k.astype(x.dtype), v.astype(x.dtype)
        # Grouped-query attention without repeating k/v: query head j reads kv head j // (h / nkv).
        qg = q.reshape(b, t, nkv, h // nkv, d)
        scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32) * (d**-0.5)
        scores = jnp.where(key_mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = dropout(jax.nn.softmax(scores, axis=-1), cfg.dropout, keys[3]).astype(x.dtype)
        y = jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h * d)
        return self.o_proj(y, ad.get("o_proj"), spec, keys[4]), kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        e, i = cfg.n_embd, cfg.intermediate
        self.gate_proj = Linear(e, i, bias=cfg.mlp_bias, rngs=rngs)
        self.up_proj = Linear(e, i, bias=cfg.mlp_bias, rngs=rngs)
        self.down_proj = Linear(i, e, bias=cfg.mlp_bias, rngs=rngs)
        self.spec = cfg.lora

    def __call__(self, x, ad, dropout_key):
        ad = ad or {}
        k = split_key(dropout_key, 3)
        g = self.gate_proj(x, ad.get("gate_proj"), self.spec, k[0])
        u = self.up_proj(x, ad.get("up_proj"), self.spec, k[1])
        return self.down_proj(jax.nn.silu(g) * u, ad.get("down_proj"), self.spec, k[2])


class Block(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, cos, sin, key_mask, kv, write_index, ad, dropout_key):
        k1, k2 = split_key(dropout_key, 2)
        a, kv = self.self_attn(self.input_layernorm(x), cos, sin, key_mask, kv, write_index, ad, k1)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x), ad, k2)
        return x, kv


class Llama(nnx.Module):
    """The decoder stack and final norm (the LM head is ``lm_head``, the value head ``v_head``)."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embed(cfg.vocab_size, cfg.n_embd, std=0.02, rngs=rngs)
        self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.norm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False, rngs=rngs)
        self.v_head = Linear(cfg.n_embd, 1, bias=True, rngs=rngs)

    def __call__(self, input_ids, positions, key_mask, cache, write_index, adapters, dropout_key):
        cfg = self.cfg
        keys = split_key(dropout_key, cfg.n_layer)
        x = self.embed_tokens.embedding[...][input_ids].astype(cfg.compute_dtype)
        cos, sin = rope(cfg, positions)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache["k"][i], cache["v"][i])
            ad = None if adapters is None else adapters.get(i)
            if cfg.remat:
                x, kv = nnx.remat(lambda blk, *a: blk(*a))(block, x, cos, sin, key_mask, kv, write_index, ad, keys[i])
            else:
                x, kv = block(x, cos, sin, key_mask, kv, write_index, ad, keys[i])
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        hidden = self.norm(x)
        values = self.v_head(hidden.astype(jnp.float32))[..., 0]  # float32, as TRL's head
        new_cache = None if cache is None else {"k": jnp.stack(new_k), "v": jnp.stack(new_v)}
        return hidden, values, new_cache


@functools.lru_cache(maxsize=None)
def _graphdef(cfg: LlamaConfig):
    # Adapters are call arguments, not module state: the graph's parameters are the base weights
    # whatever cfg.lora says (the modules keep cfg for the adapter's scale and dropout).
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init(cfg: LlamaConfig, key: jax.Array) -> dict:
    """Random parameters (normal 0.02 as transformers' init, unit norms) and a TRL-style value head."""
    k1, k2 = jax.random.split(key)
    model = Llama(cfg, rngs=nnx.Rngs(params=k1))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params["v_head"] = init_value_head(cfg.n_embd, k2)
    return params


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
    """Empty KV cache: k/v [L, B, S, H_kv, D] (rotated keys), slot mask [B, S], write index."""
    shape = (cfg.n_layer, batch, max_len, cfg.n_kv_head, cfg.head_dim)
    dtype = dtype or cfg.compute_dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch, max_len), jnp.int32), "index": jnp.zeros((), jnp.int32)}


def lm_head(cfg: LlamaConfig, params, hidden) -> jax.Array:
    """float32 logits: ``hidden @ embed.T`` when tied, else ``hidden @ lm_head.kernel`` (compute dtype)."""
    h = hidden.astype(cfg.compute_dtype)
    if cfg.tie_embeddings:
        w = params["embed_tokens"]["embedding"].astype(h.dtype).T
    else:
        w = params["lm_head"]["kernel"].astype(h.dtype)
    return (h @ w).astype(jnp.float32)


def apply(cfg: LlamaConfig, params, input_ids, attention_mask=None, *, cache=None, dropout_key=None) -> Output:
    """Full causal pass, or T tokens appended to ``cache`` (the ``rajax.models.base`` contract)."""
    t = input_ids.shape[1]
    if cache is None and t > cfg.max_position:
        raise InvalidInput(f"sequence length {t} exceeds the model's max_position_embeddings {cfg.max_position}")
    mask, positions, key_mask, index, slot_mask = attention_layout(attention_mask, input_ids, cache)
    model = nnx.merge(_graphdef(cfg), {k: v for k, v in params.items() if k != "lora"})
    adapters = params.get("lora") if cfg.lora is not None else None
    hidden, values, kv = model(input_ids, positions, key_mask, cache, index, adapters, dropout_key)
    logits = lm_head(cfg, params, hidden)  # dropped by XLA when only ``hidden`` is used
    if cache is None:
        return Output(logits, values, None, hidden)
    return Output(logits, values, {"k": kv["k"], "v": kv["v"], "mask": slot_mask, "index": index + t}, hidden)


def num_params(params) -> int:
    return lora_lib.num_params(params)
