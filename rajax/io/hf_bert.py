"""The BERT/DistilBERT converter: transformers ``*ForSequenceClassification`` checkpoints <-> rajax
``rajax.models.bert`` params (safetensors or pytorch_model.bin; legacy ``gamma``/``beta`` LayerNorm
names accepted).

Entry points:
  * ``load_classifier(name_or_path)`` -> (cfg, params, labels, tokenizer)
  * ``save_classifier(path, cfg, params, labels, tokenizer=None)``
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.io import hub
from rajax.models.bert import _ACTS, BertConfig, Params, init
from rajax.models.layers import get_path, set_path

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
        raise InvalidInput(f"checkpoint lacks {len(missing)} {cfg.arch} tensors{head}, e.g. {missing[:3]}")
    # Shape check against a fresh init, so a config/weights mismatch fails here, not inside jit.
    want = jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
    for (path, w), got in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(params)):
        if w.shape != got.shape:
            raise InvalidInput(f"tensor {jax.tree_util.keystr(path)} has shape {got.shape}, config expects {w.shape}")
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
            raise InvalidInput(f"{path}: position_embedding_type {c['position_embedding_type']!r} is not supported")
        act = c.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise InvalidInput(f"{path}: hidden_act {act!r} is not supported (one of {_ACTS})")
        return BertConfig("bert", c["vocab_size"], c["hidden_size"], c["num_hidden_layers"],
                          c["num_attention_heads"], c["intermediate_size"], c["max_position_embeddings"],
                          c.get("type_vocab_size", 2), n, float(c.get("layer_norm_eps", 1e-12)), act=act)
    if mt == "distilbert":
        act = c.get("activation", "gelu")
        if act not in _ACTS:
            raise InvalidInput(f"{path}: activation {act!r} is not supported (one of {_ACTS})")
        # DistilBERT hard-codes LayerNorm eps 1e-12 (it is not a config field).
        return BertConfig("distilbert", c["vocab_size"], c["dim"], c["n_layers"], c["n_heads"],
                          c["hidden_dim"], c["max_position_embeddings"], 0, n, 1e-12, act=act)
    raise InvalidInput(f"{path}: model_type {mt!r} is not a BERT or DistilBERT classifier")


def load_classifier(name_or_path: str, *, what: str = "--reward-model"):
    """Load a Bert/DistilBert ``*ForSequenceClassification`` checkpoint.

    ``name_or_path`` is a local directory or a hub id (fetched via huggingface_hub; with
    ``HF_HUB_OFFLINE=1`` only the local cache is used). ``what`` names the option in error messages.

    Returns ``(cfg, params, labels, tokenizer)``: labels from ``config.id2label`` in id order and the
    checkpoint's own fast tokenizer (``AutoTokenizer``).
    """
    d = hub.resolve(name_or_path, what=what)
    c = hub.read_config(d, what=what, name=name_or_path)
    cfg = _config_from_hf(c, str(name_or_path))
    id2label = c.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    labels = [id2label[k] for k in sorted(id2label, key=int)]
    params = params_from_state_dict(cfg, hub.read_state_dict(d, what=what, name=name_or_path))
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(d)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise InvalidInput(hub.error(what, name_or_path, f"cannot load its tokenizer ({type(e).__name__}: {reason})")) from None
    return cfg, params, labels, tok


def save_classifier(path: str, cfg: BertConfig, params: Params, labels: list[str], tokenizer=None) -> str:
    """Write an HF directory (config.json + model.safetensors [+ tokenizer]) that transformers loads
    as ``BertForSequenceClassification`` / ``DistilBertForSequenceClassification``. Returns ``path``."""
    import transformers
    from safetensors.numpy import save_file

    if len(labels) != cfg.num_labels:
        raise InvalidInput(f"got {len(labels)} labels for a classifier with num_labels={cfg.num_labels}")
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
            raise InvalidInput("DistilBERT hard-codes layer_norm_eps=1e-12; transformers cannot load another value")
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
