"""BERT and DistilBERT sequence classifiers (the reward models), as Flax NNX modules run as pure functions.

Spec §3 / §7.7: the reward classifiers are ``unitary/toxic-bert`` (``BertForSequenceClassification``,
6 sigmoid heads) and ``lvwerra/distilbert-imdb`` (``DistilBertForSequenceClassification``,
NEGATIVE/POSITIVE). Both are post-LayerNorm encoders with exact (erf) GELU and LayerNorm eps 1e-12
(jax-notes §3). They differ only in the embeddings (BERT adds token-type embeddings) and in the head:

* BERT:       ``hidden[:, 0] -> tanh(pooler) -> classifier``
* DistilBERT: ``hidden[:, 0] -> pre_classifier -> ReLU -> classifier``

The parameters are a plain nested dict (``nnx.to_pure_dict`` of the module state), one layout for
both architectures::

    {'embed': {'word': {'embedding'}, 'position': {'embedding'}, ['token_type': {'embedding'}],
               'ln': {'scale', 'bias'}},
     'layers': {0: {'attn': {'q', 'k', 'v', 'o'}, 'ln_attn', 'ffn': {'fc', 'out'}, 'ln_ffn'}, 1: ...},
     'pooler' (bert) | 'pre_classifier' (distilbert): {'kernel', 'bias'},
     'classifier': {'kernel' (hidden, num_labels), 'bias'}}

Dense kernels are (in, out), i.e. the transpose of torch ``nn.Linear.weight``. ``load_classifier`` /
``save_classifier`` map to and from Hugging Face checkpoints (safetensors or pytorch_model.bin,
legacy ``gamma``/``beta`` LayerNorm names accepted).

Entry points:
  * ``init(cfg, key)`` -> params
  * ``apply(cfg, params, input_ids, attention_mask, token_type_ids=None)`` -> logits [B, num_labels] f32
  * ``load_classifier(name_or_path)`` -> (cfg, params, labels, tokenizer)
  * ``save_classifier(path, cfg, params, labels, tokenizer=None)``
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rajax.models.layers import Dense, Embed, LayerNorm, get_path, set_path

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
            raise ValueError(f"BertConfig.arch must be 'bert' or 'distilbert', got {self.arch!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"BertConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.act not in _ACTS:
            raise ValueError(f"BertConfig.act must be one of {_ACTS}, got {self.act!r}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")

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

    def __call__(self, x, key_mask_BxS):
        b, t, e = x.shape
        h, d = self.heads, e // self.heads
        q, k, v = (f(x).reshape(b, t, h, d) for f in (self.q, self.k, self.v))
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

    def __call__(self, x, key_mask):
        x = self.ln_attn(x + self.attn(x, key_mask), x.dtype)
        return self.ln_ffn(x + self.ffn(x), x.dtype)


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
        for layer in self.layers:
            x = layer(x, key_mask)
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
        raise ValueError(f"sequence length {t} exceeds max_position {cfg.max_position}; truncate the input")
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    if token_type_ids is None:
        token_type_ids = jnp.zeros((b, t), jnp.int32)
    model = nnx.merge(_graphdef(cfg), params)
    return model(input_ids, attention_mask, token_type_ids)


def num_params(params: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------ Hugging Face name mapping

# (HF name without the "bert."/"distilbert." prefix, our path, transpose?). "{i}" is the layer index.
# The classifier head lives outside the base-model prefix in both architectures.
_BERT_MAP = [
    ("embeddings.word_embeddings.weight", "embed.word.embedding", False),
    ("embeddings.position_embeddings.weight", "embed.position.embedding", False),
    ("embeddings.token_type_embeddings.weight", "embed.token_type.embedding", False),
    ("embeddings.LayerNorm.weight", "embed.ln.scale", False),
    ("embeddings.LayerNorm.bias", "embed.ln.bias", False),
    ("encoder.layer.{i}.attention.self.query", "layers.{i}.attn.q", None),
    ("encoder.layer.{i}.attention.self.key", "layers.{i}.attn.k", None),
    ("encoder.layer.{i}.attention.self.value", "layers.{i}.attn.v", None),
    ("encoder.layer.{i}.attention.output.dense", "layers.{i}.attn.o", None),
    ("encoder.layer.{i}.attention.output.LayerNorm", "layers.{i}.ln_attn", "ln"),
    ("encoder.layer.{i}.intermediate.dense", "layers.{i}.ffn.fc", None),
    ("encoder.layer.{i}.output.dense", "layers.{i}.ffn.out", None),
    ("encoder.layer.{i}.output.LayerNorm", "layers.{i}.ln_ffn", "ln"),
    ("pooler.dense", "pooler", None),
]
_DISTIL_MAP = [
    ("embeddings.word_embeddings.weight", "embed.word.embedding", False),
    ("embeddings.position_embeddings.weight", "embed.position.embedding", False),
    ("embeddings.LayerNorm.weight", "embed.ln.scale", False),
    ("embeddings.LayerNorm.bias", "embed.ln.bias", False),
    ("transformer.layer.{i}.attention.q_lin", "layers.{i}.attn.q", None),
    ("transformer.layer.{i}.attention.k_lin", "layers.{i}.attn.k", None),
    ("transformer.layer.{i}.attention.v_lin", "layers.{i}.attn.v", None),
    ("transformer.layer.{i}.attention.out_lin", "layers.{i}.attn.o", None),
    ("transformer.layer.{i}.sa_layer_norm", "layers.{i}.ln_attn", "ln"),
    ("transformer.layer.{i}.ffn.lin1", "layers.{i}.ffn.fc", None),
    ("transformer.layer.{i}.ffn.lin2", "layers.{i}.ffn.out", None),
    ("transformer.layer.{i}.output_layer_norm", "layers.{i}.ln_ffn", "ln"),
]
_HEAD_MAP = {"bert": [("classifier", "classifier", None)],
             "distilbert": [("pre_classifier", "pre_classifier", None), ("classifier", "classifier", None)]}


def _hf_names(cfg: BertConfig) -> list[tuple[str, tuple, bool]]:
    """Every (full HF tensor name, our param path, transpose) for ``cfg``."""
    prefix = cfg.arch + "."
    base = _BERT_MAP if cfg.arch == "bert" else _DISTIL_MAP
    out = []
    for entries, pre in ((base, prefix), (_HEAD_MAP[cfg.arch], "")):
        for hf, ours, kind in entries:
            for i in range(cfg.layers) if "{i}" in hf else [None]:
                h = hf.format(i=i) if i is not None else hf
                o = ours.format(i=i) if i is not None else ours
                path = tuple(int(p) if p.isdigit() else p for p in o.split("."))
                if kind is None:  # nn.Linear: weight (out, in) -> kernel (in, out)
                    out.append((pre + h + ".weight", path + ("kernel",), True))
                    out.append((pre + h + ".bias", path + ("bias",), False))
                elif kind == "ln":
                    out.append((pre + h + ".weight", path + ("scale",), False))
                    out.append((pre + h + ".bias", path + ("bias",), False))
                else:
                    out.append((pre + h, path, False))
    return out




def _canonical(name: str) -> str:
    """Legacy checkpoints (e.g. bert-base-uncased) name LayerNorm params gamma/beta."""
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    name = re.sub(r"(layer_norm)\.gamma$", r"\1.weight", name)
    return re.sub(r"(layer_norm)\.beta$", r"\1.bias", name)


def params_from_state_dict(cfg: BertConfig, tensors: dict[str, np.ndarray]) -> Params:
    """Map a transformers ``*ForSequenceClassification`` state dict (numpy arrays) to our params."""
    tensors = {_canonical(k): v for k, v in tensors.items()}
    prefix = cfg.arch + "."
    if not any(k.startswith(prefix) for k in tensors):
        # A bare encoder state dict (no "bert."/"distilbert." prefix): the head keys keep their names.
        heads = {h for h, _, _ in _HEAD_MAP[cfg.arch]}
        tensors = {k if k.split(".")[0] in heads else prefix + k: v for k, v in tensors.items()}
    params: dict = {}
    missing = []
    for hf, path, transpose in _hf_names(cfg):
        if hf not in tensors:
            missing.append(hf)
            continue
        x = np.asarray(tensors[hf], dtype=np.float32)
        set_path(params, path, jnp.asarray(x.T if transpose else x))
    if missing:
        head = " (no classification head: is this a base/MLM checkpoint?)" if any(
            m.startswith(("classifier", "pre_classifier")) for m in missing) else ""
        raise ValueError(f"checkpoint lacks {len(missing)} {cfg.arch} tensors{head}, e.g. {missing[:3]}")
    # Shape check against a fresh init, so a config/weights mismatch fails here, not inside jit.
    want = jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
    for (path, w), got in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(params)):
        if w.shape != got.shape:
            raise ValueError(f"tensor {jax.tree_util.keystr(path)} has shape {got.shape}, config expects {w.shape}")
    return params


def state_dict_from_params(cfg: BertConfig, params: Params) -> dict[str, np.ndarray]:
    """Inverse of ``params_from_state_dict``: HF tensor names -> float32 numpy (Linear as (out, in))."""
    out = {}
    for hf, path, transpose in _hf_names(cfg):
        x = np.asarray(get_path(params, path), dtype=np.float32)
        out[hf] = np.ascontiguousarray(x.T if transpose else x)
    return out


# ------------------------------------------------------------------------------------------ loading


def _config_from_hf(c: dict, path: str) -> BertConfig:
    mt = c.get("model_type")
    n = len(c.get("id2label") or {}) or int(c.get("num_labels", 2))
    if mt == "bert":
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported")
        act = c.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise ValueError(f"{path}: hidden_act {act!r} is not supported (one of {_ACTS})")
        return BertConfig("bert", c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                          c["num_attention_heads"], c["intermediate_size"], c["max_position_embeddings"],
                          c.get("type_vocab_size", 2), n, float(c.get("layer_norm_eps", 1e-12)), act=act)
    if mt == "distilbert":
        act = c.get("activation", "gelu")
        if act not in _ACTS:
            raise ValueError(f"{path}: activation {act!r} is not supported (one of {_ACTS})")
        # DistilBERT hard-codes LayerNorm eps 1e-12 (it is not a config field).
        return BertConfig("distilbert", c["vocab_size"], c["dim"], c["n_layers"], c["n_heads"],
                          c["hidden_dim"], c["max_position_embeddings"], 0, n, 1e-12, act=act)
    raise ValueError(f"{path}: model_type {mt!r} is not a BERT or DistilBERT classifier")


def _read_tensors(d: str) -> dict[str, np.ndarray]:
    st = os.path.join(d, "model.safetensors")
    idx = os.path.join(d, "model.safetensors.index.json")
    binf = os.path.join(d, "pytorch_model.bin")
    if os.path.isfile(st) or os.path.isfile(idx):
        from safetensors.numpy import load_file

        if os.path.isfile(st):
            return load_file(st)
        with open(idx) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for s in shards:
            out.update(load_file(os.path.join(d, s)))
        return out
    if os.path.isfile(binf):
        try:
            import torch
        except ImportError:
            raise ValueError(f"{d}: reading pytorch_model.bin needs torch; install torch or convert the "
                             "checkpoint to model.safetensors") from None
        sd = torch.load(binf, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}
    raise ValueError(f"{d}: no model.safetensors or pytorch_model.bin found")


def _resolve(name_or_path: str, what: str) -> str:
    """A local directory, or a hub repo id fetched through huggingface_hub (honours HF_HUB_OFFLINE)."""
    p = os.path.expanduser(str(name_or_path))
    if os.path.isdir(p):
        return p
    looks_local = p.startswith((".", "/", "~")) or p.count("/") > 1 or os.sep != "/" and os.sep in p
    if looks_local or not p:
        raise ValueError(f"{what} {name_or_path!r}: no such directory; pass a local checkpoint directory "
                         "or a Hugging Face Hub id")
    try:
        from huggingface_hub import snapshot_download

        # Config, tokenizer and safetensors first; fall back to pytorch_model.bin only when the repo
        # has no safetensors (so repos that ship both are not downloaded twice).
        d = snapshot_download(p, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        if not any(f.endswith(".safetensors") for f in os.listdir(d)):
            d = snapshot_download(p, allow_patterns=["*.json", "pytorch_model*.bin", "*.txt", "*.model"])
        return d
    except Exception as e:  # offline, unknown repo, no network: all end the same way for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{what} {name_or_path!r}: not a local directory and not available from the "
                         f"Hugging Face Hub ({type(e).__name__}: {reason[:160]}); download it with network "
                         "access (HF_HUB_OFFLINE unset) or pass a local checkpoint directory") from None


def load_classifier(name_or_path: str, *, what: str = "--reward-model"):
    """Load a Bert/DistilBert ``*ForSequenceClassification`` checkpoint.

    ``name_or_path`` is a local directory or a hub id (fetched via huggingface_hub; with
    ``HF_HUB_OFFLINE=1`` only the local cache is used). ``what`` names the option in error messages.

    Returns ``(cfg, params, labels, tokenizer)``: labels from ``config.id2label`` in id order and the
    checkpoint's own fast tokenizer (``AutoTokenizer``).
    """
    d = _resolve(name_or_path, what)
    cfg_path = os.path.join(d, "config.json")
    if not os.path.isfile(cfg_path):
        raise ValueError(f"{what} {name_or_path!r}: {d} has no config.json (not a transformers checkpoint)")
    with open(cfg_path) as f:
        c = json.load(f)
    cfg = _config_from_hf(c, str(name_or_path))
    id2label = c.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    params = params_from_state_dict(cfg, _read_tensors(d))
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(d)
    except Exception as e:
        raise ValueError(f"{what} {name_or_path!r}: cannot load its tokenizer ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None
    return cfg, params, labels, tok


def save_classifier(path: str, cfg: BertConfig, params: Params, labels: list[str], tokenizer=None) -> str:
    """Write an HF directory (config.json + model.safetensors [+ tokenizer]) that transformers loads
    as ``BertForSequenceClassification`` / ``DistilBertForSequenceClassification``. Returns ``path``."""
    import transformers
    from safetensors.numpy import save_file

    if len(labels) != cfg.num_labels:
        raise ValueError(f"got {len(labels)} labels for a classifier with num_labels={cfg.num_labels}")
    os.makedirs(path, exist_ok=True)
    id2label = {i: l for i, l in enumerate(labels)}
    label2id = {l: i for i, l in enumerate(labels)}
    if cfg.arch == "bert":
        hf = transformers.BertConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate, hidden_act=cfg.act,
            max_position_embeddings=cfg.max_position, type_vocab_size=cfg.type_vocab_size,
            layer_norm_eps=cfg.layer_norm_eps, id2label=id2label, label2id=label2id,
            architectures=["BertForSequenceClassification"])
    else:
        if cfg.layer_norm_eps != 1e-12:
            raise ValueError("DistilBERT hard-codes layer_norm_eps=1e-12; transformers cannot load another value")
        hf = transformers.DistilBertConfig(
            vocab_size=cfg.vocab_size, dim=cfg.hidden, n_layers=cfg.layers, n_heads=cfg.heads,
            hidden_dim=cfg.intermediate, activation=cfg.act, max_position_embeddings=cfg.max_position,
            id2label=id2label, label2id=label2id, architectures=["DistilBertForSequenceClassification"])
    hf.save_pretrained(path)
    save_file(state_dict_from_params(cfg, params), os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
