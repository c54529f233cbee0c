"""The GPT-2 converter: transformers ``GPT2LMHeadModel`` checkpoints <-> rajax GPT-2 params.

``rajax.io.hf.load``/``save`` pick this module for ``model_type: gpt2`` and handle the files and the
value head; this module maps the config and the tensors. transformers' GPT-2 uses ``Conv1D`` whose
weight is (in, out), the same as our dense kernels, so no transposes are needed:

    [transformer.]wte.weight                 -> wte.embedding        [V, E]
    [transformer.]wpe.weight                 -> wpe.embedding        [n_positions, E]
    [transformer.]h.L.ln_1.{weight,bias}     -> h[L].ln_1.{scale,bias}
    [transformer.]h.L.attn.c_attn.{weight,bias}  -> h[L].attn.c_attn.{kernel,bias}
    [transformer.]h.L.attn.c_proj.{weight,bias}  -> h[L].attn.c_proj.{kernel,bias}
    [transformer.]h.L.ln_2.{weight,bias}     -> h[L].ln_2.{scale,bias}
    [transformer.]h.L.mlp.c_fc.{weight,bias} -> h[L].mlp.c_fc.{kernel,bias}
    [transformer.]h.L.mlp.c_proj.{weight,bias}   -> h[L].mlp.c_proj.{kernel,bias}
    [transformer.]ln_f.{weight,bias}         -> ln_f.{scale,bias}

Hub checkpoints of the original ``gpt2`` have no ``transformer.`` prefix and carry ``h.L.attn.bias``
causal-mask buffers (dropped here); ``lm_head.weight`` is tied to ``wte`` and never stored by us.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.models import gpt2
from rajax.models.layers import get_path, set_path

MODEL_TYPES = ("gpt2",)
CONFIG = gpt2.GPT2Config
_PREFIX = "transformer."
# Buffers some GPT-2 checkpoints carry (causal mask, masked-bias constant); not parameters.
_BUFFER_RE = re.compile(r"^h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")


# ----------------------------------------------------------------------------- state-dict mapping


def _block_map(i: int) -> dict[str, tuple]:
    """HF key (without prefix) -> path into params for block ``i``."""
    m = {}
    for ln in ("ln_1", "ln_2"):
        m[f"h.{i}.{ln}.weight"] = ("h", i, ln, "scale")
        m[f"h.{i}.{ln}.bias"] = ("h", i, ln, "bias")
    for mod, lin in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")):
        m[f"h.{i}.{mod}.{lin}.weight"] = ("h", i, mod, lin, "kernel")
        m[f"h.{i}.{mod}.{lin}.bias"] = ("h", i, mod, lin, "bias")
    return m


def _key_map(cfg: gpt2.GPT2Config) -> dict[str, tuple]:
    m = {
        "wte.weight": ("wte", "embedding"),
        "wpe.weight": ("wpe", "embedding"),
        "ln_f.weight": ("ln_f", "scale"),
        "ln_f.bias": ("ln_f", "bias"),
    }
    for i in range(cfg.n_layer):
        m.update(_block_map(i))
    return m


# GPT-2's projections are transformers' Conv1D (weight [in, out]); PEFT needs fan_in_fan_out to merge
# an adapter into such a weight (its lora_A / lora_B keep the nn.Linear layout, rajax.io.peft).
PEFT_FAN_IN_FAN_OUT = True


def module_name(cfg: gpt2.GPT2Config, layer: int, target: str) -> str:
    """transformers' module name of a LoRA site (PEFT keys are built from it)."""
    return f"{_PREFIX}h.{layer}.{'.'.join(gpt2.LORA_SITES[target])}"


def _expected_shapes(cfg: gpt2.GPT2Config) -> dict[tuple, tuple]:
    """Shape of every mapped parameter (the layout of ``gpt2.init``), keyed by params path."""
    e, v = cfg.n_embd, cfg.vocab_size
    out = {("wte", "embedding"): (v, e), ("wpe", "embedding"): (cfg.n_positions, e),
           ("ln_f", "scale"): (e,), ("ln_f", "bias"): (e,)}
    dense = {("attn", "c_attn"): (e, 3 * e), ("attn", "c_proj"): (e, e),
             ("mlp", "c_fc"): (e, 4 * e), ("mlp", "c_proj"): (4 * e, e)}
    for i in range(cfg.n_layer):
        for ln in ("ln_1", "ln_2"):
            out[("h", i, ln, "scale")] = out[("h", i, ln, "bias")] = (e,)
        for (mod, lin), (din, dout) in dense.items():
            out[("h", i, mod, lin, "kernel")] = (din, dout)
            out[("h", i, mod, lin, "bias")] = (dout,)
    return out




def state_dict_from_params(cfg: gpt2.GPT2Config, params) -> dict[str, np.ndarray]:
    """Params -> transformers ``GPT2LMHeadModel`` state dict (``transformer.``-prefixed, float32).

    No ``lm_head.weight`` (it is tied to ``wte``) and no value head (``rajax.io.hf`` adds it).
    """
    return {_PREFIX + hf_key: np.ascontiguousarray(np.asarray(get_path(params, path), np.float32))
            for hf_key, path in _key_map(cfg).items()}


def params_from_state_dict(cfg: gpt2.GPT2Config, sd: dict[str, Any]):
    """transformers GPT-2 state dict (NumPy arrays; no value-head keys) -> params without ``v_head``.

    Accepts keys with or without the ``transformer.`` prefix, drops ``attn.bias``/``attn.masked_bias``
    buffers and checks that ``lm_head.weight`` (if present) equals ``wte`` (our LM head is tied).
    Every array becomes a float32 jax array. Missing or mis-shaped tensors raise ``ValueError``.
    """
    norm: dict[str, np.ndarray] = {}
    for k, v in sd.items():
        k2 = k[len(_PREFIX):] if k.startswith(_PREFIX) else k
        if _BUFFER_RE.match(k2):
            continue
        norm[k2] = np.asarray(v).astype(np.float32)
    kmap = _key_map(cfg)
    missing = [k for k in kmap if k not in norm]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InvalidInput(f"GPT-2 checkpoint is missing {missing[:3]}{more}; is it a GPT-2 model with "
                         f"n_layer={cfg.n_layer}?")
    shapes = _expected_shapes(cfg)
    params: dict = {}
    for hf_key, path in kmap.items():
        arr = norm.pop(hf_key)
        if arr.shape != shapes[path]:
            raise InvalidInput(f"GPT-2 checkpoint tensor {hf_key!r} has shape {arr.shape}, expected "
                             f"{shapes[path]} from config.json")
        set_path(params, path, jnp.asarray(arr))
    lm = norm.pop("lm_head.weight", None)
    wte = np.asarray(params["wte"]["embedding"])
    if lm is not None and (lm.shape != wte.shape or not np.array_equal(lm, wte)):
        raise InvalidInput("GPT-2 checkpoint has an lm_head.weight that differs from wte.weight; rajax "
                         "GPT-2 ties the LM head to the token embedding and cannot load an untied head")
    if norm:
        warnings.warn(f"ignoring {len(norm)} unexpected GPT-2 checkpoint tensors: {sorted(norm)[:5]}",
                      stacklevel=2)
    return params


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict, *, dtype: str = "float32") -> gpt2.GPT2Config:
    """``config.json`` dict -> ``GPT2Config``. Rejects GPT-2 variants our model does not compute."""
    mt = hf.get("model_type", "gpt2")
    if mt != "gpt2":
        raise InvalidInput(f"config.json has model_type {mt!r}; only GPT-2 ('gpt2') checkpoints are supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InvalidInput(f"config.json has activation_function {act!r}; rajax GPT-2 computes gelu_new only")
    # reorder_and_upcast_attn only changes numerics (fp32 softmax, which we always do); this one
    # changes the function.
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise InvalidInput("config.json sets scale_attn_by_inverse_layer_idx=true, which rajax GPT-2 "
                         "does not implement")
    if hf.get("scale_attn_weights", True) is False:
        raise InvalidInput("config.json sets scale_attn_weights=false, which rajax GPT-2 does not implement")
    e = int(hf.get("n_embd", 768))
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * e):
        raise InvalidInput(f"config.json has n_inner={n_inner}; rajax GPT-2 uses 4 * n_embd = {4 * e}")
    if dtype not in gpt2._DTYPES:
        raise InvalidInput(f"dtype must be one of {sorted(gpt2._DTYPES)}, got {dtype!r}")
    return gpt2.GPT2Config(
        vocab_size=int(hf.get("vocab_size", 50257)),
        n_positions=int(hf.get("n_positions", hf.get("n_ctx", 1024))),
        n_embd=e,
        n_layer=int(hf.get("n_layer", 12)),
        n_head=int(hf.get("n_head", 12)),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        dropout=float(hf.get("resid_pdrop", 0.1)),
        dtype=dtype,
    )


def config_to_hf(cfg: gpt2.GPT2Config) -> dict:
    """``GPT2Config`` -> a complete transformers ``config.json`` for ``GPT2LMHeadModel``."""
    # GPT-2's <|endoftext|> is 50256 in its own 50,257-token vocabulary; any other vocabulary's EOS is
    # the tokenizer's to say (rajax.io.hf.save writes it), not its last id.
    eos = 50256 if cfg.vocab_size == 50257 else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
