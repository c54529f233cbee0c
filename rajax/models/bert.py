"""BERT and DistilBERT sequence classifiers (the reward models), as Flax NNX modules run as pure functions.

docs/paper.md §3 and §7: the reward classifiers are ``unitary/toxic-bert`` (``BertForSequenceClassification``,
6 sigmoid heads) and ``lvwerra/distilbert-imdb`` (``DistilBertForSequenceClassification``,
NEGATIVE/POSITIVE). Both are post-LayerNorm encoders with exact (erf) GELU and LayerNorm eps 1e-12
. They differ only in the embeddings (BERT adds token-type embeddings) and in the head:

* BERT:       ``hidden[:, 0] -> tanh(pooler) -> classifier``
* DistilBERT: ``hidden[:, 0] -> pre_classifier -> ReLU -> classifier``

The parameters are a plain nested dict (``nnx.to_pure_dict`` of the module state), one layout for
both architectures::

    {'embed': {'word': {'embedding'}, 'position': {'embedding'}, ['token_type': {'embedding'}],
               'ln': {'scale', 'bias'}},
     'layers': {0: {'attn': {'q', 'k', 'v', 'o'}, 'ln_attn', 'ffn': {'fc', 'out'}, 'ln_ffn'}, 1: ...},
     'pooler' (bert) | 'pre_classifier' (distilbert): {'kernel', 'bias'},
     'classifier': {'kernel' (hidden, num_labels), 'bias'}}

Dense kernels are (in, out), i.e. the transpose of torch ``nn.Linear.weight``. ``rajax.io.hf_bert``
maps them to and from Hugging Face checkpoints.

Entry points:
  * ``init(cfg, key)`` -> params
  * ``apply(cfg, params, input_ids, attention_mask, token_type_ids=None)`` -> logits [B, num_labels] f32
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rajax.core.errors import InvalidInput
from rajax.models.layers import Dense, Embed, LayerNorm

Params = dict[str, Any]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ACTS = ("gelu", "relu", "gelu_new")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and numerics of a BERT/DistilBERT classifier. Hashable (a static jit argument).

    ``intermediate`` is BERT's ``intermediate_size`` / DistilBERT's ``hidden_dim``;
    ``type_vocab_size`` is ignored for DistilBERT (it has no token types). ``act`` is the FFN
    activation: "gelu" (exact erf, both reward models), "relu" or "gelu_new" (tanh approximation).
    """

    arch: str = "bert"
    vocab_size: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    num_labels: int = 2
    layer_norm_eps: float = 1e-12
    # Compute dtype of matmuls; parameters stay float32, LayerNorm/softmax/logits run in float32.
    dtype: str = "float32"
    act: str = "gelu"

    def __post_init__(self):
        if self.arch == "distilbert" and self.type_vocab_size != 0:
            # DistilBERT has no token types; normalise so equal models have equal (hashable) configs.
            object.__setattr__(self, "type_vocab_size", 0)
        if self.arch not in ("bert", "distilbert"):
            raise InvalidInput(f"BertConfig.arch must be 'bert' or 'distilbert', got {self.arch!r}")
        if self.dtype not in _DTYPES:
            raise InvalidInput(f"BertConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.act not in _ACTS:
            raise InvalidInput(f"BertConfig.act must be one of {_ACTS}, got {self.act!r}")
        if self.hidden % self.heads:
            raise InvalidInput(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    def replace(self, **kw) -> "BertConfig":
        return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------------- modules


class Attention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        e = cfg.hidden
        self.q = Dense(e, e, rngs=rngs)
        self.k = Dense(e, e, rngs=rngs)
        self.v = Dense(e, e, rngs=rngs)
        self.o = Dense(e, e, rngs=rngs)
        self.heads = cfg.heads

    def __call__(self, x, key_mask_BxS, queries):
        """Self-attention of ``queries`` (rows of ``x``: all of them, or [CLS] alone) over all rows of ``x``."""
        b, s, e = x.shape
        h, d = self.heads, e // self.heads
        t = queries.shape[1]
        q = self.q(queries).reshape(b, t, h, d)
        k, v = (f(x).reshape(b, s, h, d) for f in (self.k, self.v))
        scores = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) * (d**-0.5)
        # Padded keys get the float32 minimum, as transformers' additive mask does.
        scores = jnp.where(key_mask_BxS[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        return self.o(jnp.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, e))


class FFN(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.fc = Dense(cfg.hidden, cfg.intermediate, rngs=rngs)
        self.out = Dense(cfg.intermediate, cfg.hidden, rngs=rngs)
        self.act = cfg.act

    def __call__(self, x):
        y = self.fc(x)
        if self.act == "relu":
            y = jax.nn.relu(y)
        else:
            # BERT/DistilBERT "gelu" is the exact erf form; jax's default is the tanh approximation.
            y = jax.nn.gelu(y, approximate=self.act == "gelu_new")
        return self.out(y)


class Layer(nnx.Module):
    """Post-LN transformer layer, shared by BERT and DistilBERT."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attn = Attention(cfg, rngs=rngs)
        self.ln_attn = LayerNorm(cfg.hidden, cfg.layer_norm_eps)
        self.ffn = FFN(cfg, rngs=rngs)
        self.ln_ffn = LayerNorm(cfg.hidden, cfg.layer_norm_eps)

    def __call__(self, x, key_mask, cls_only: bool = False):
        """All rows, or with ``cls_only`` just row 0 ([B, 1, E]): the head reads only the final
        layer's [CLS] row, and every op after the keys and values is row-wise, so the last layer
        needs the other rows only as keys and values."""
        q = x[:, :1] if cls_only else x
        y = self.ln_attn(q + self.attn(x, key_mask, q), x.dtype)
        return self.ln_ffn(y + self.ffn(y), x.dtype)


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.word = Embed(cfg.vocab_size, cfg.hidden, rngs=rngs)
        self.position = Embed(cfg.max_position, cfg.hidden, rngs=rngs)
        if cfg.arch == "bert":
            self.token_type = Embed(cfg.type_vocab_size, cfg.hidden, rngs=rngs)
        self.ln = LayerNorm(cfg.hidden, cfg.layer_norm_eps)


class Classifier(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embeddings(cfg, rngs=rngs)
        self.layers = nnx.List([Layer(cfg, rngs=rngs) for _ in range(cfg.layers)])
        if cfg.arch == "bert":
            self.pooler = Dense(cfg.hidden, cfg.hidden, rngs=rngs)
        else:
            self.pre_classifier = Dense(cfg.hidden, cfg.hidden, rngs=rngs)
        self.classifier = Dense(cfg.hidden, cfg.num_labels, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids):
        cfg = self.cfg
        dt = cfg.compute_dtype
        t = input_ids.shape[1]
        # Both models use absolute positions 0..T-1 regardless of padding (transformers does the
        # same), so the classifier expects RIGHT padding: [CLS] text [SEP] [PAD]...
        x = self.embed.word.embedding[...][input_ids] + self.embed.position.embedding[...][:t][None]
        if cfg.arch == "bert":
            x = x + self.embed.token_type.embedding[...][token_type_ids]
        x = self.embed.ln(x, dt)
        key_mask = attention_mask > 0
        # The last layer computes only the [CLS] row: its queries, output projection and FFN on the
        # other rows never reach the head (1/12 less of BERT-base's dense work per text; torch's
        # BertForSequenceClassification computes them all). Same function, rows are independent.
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, cls_only=i == len(self.layers) - 1)
        cls = x[:, 0]
        if cfg.arch == "bert":
            h = jnp.tanh(self.pooler(cls).astype(jnp.float32)).astype(dt)
        else:
            h = jax.nn.relu(self.pre_classifier(cls))
        return self.classifier(h).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def _graphdef(cfg: BertConfig):
    abstract = nnx.eval_shape(lambda: Classifier(cfg, rngs=nnx.Rngs(0)))
    return nnx.split(abstract)[0]


def init(cfg: BertConfig, key: jax.Array) -> Params:
    """Random parameters (BERT's init: N(0, 0.02) weights, zero biases) as a plain nested dict."""
    model = Classifier(cfg, rngs=nnx.Rngs(params=key))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def apply(
    cfg: BertConfig,
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
) -> jax.Array:
    """Classification logits [B, num_labels] (float32) for right-padded ``input_ids`` [B, T].

    Pure function of ``params``; jit it with ``cfg`` static (e.g. ``jax.jit(apply, static_argnums=0)``).
    ``token_type_ids`` defaults to zeros (single-segment text) and is ignored by DistilBERT.
    """
    b, t = input_ids.shape
    if t > cfg.max_position:
        raise InvalidInput(f"sequence length {t} exceeds max_position {cfg.max_position}; truncate the input")
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    if token_type_ids is None:
        token_type_ids = jnp.zeros((b, t), jnp.int32)
    model = nnx.merge(_graphdef(cfg), params)
    return model(input_ids, attention_mask, token_type_ids)


def num_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
