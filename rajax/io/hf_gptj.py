"""The GPT-J converter: transformers ``GPTJForCausalLM`` checkpoints <-> ``rajax.models.gptj`` params.

``nn.Linear`` weights are (out, in) and are transposed into our (in, out) kernels:

    transformer.wte.weight                              -> wte.embedding          [V, E]
    transformer.h.L.ln_1.{weight,bias}                  -> h[L].ln_1.{scale,bias}
    transformer.h.L.attn.{q,k,v,out}_proj.weight        -> h[L].attn.*.kernel     (transposed, no bias)
    transformer.h.L.mlp.{fc_in,fc_out}.{weight,bias}    -> h[L].mlp.*.{kernel,bias}
    transformer.ln_f.{weight,bias}                      -> ln_f.{scale,bias}
    lm_head.{weight,bias}                               -> lm_head.{kernel [E, V], bias [V]}

Old checkpoints carry ``attn.bias``/``attn.masked_bias`` causal-mask buffers (dropped here).
"""
from __future__ import annotations

import re

import numpy as np

from rajax.core.errors import InvalidInput
from rajax.io.hf_llama import expected_shapes, params_from_map, state_dict_from_map
from rajax.models import gptj

MODEL_TYPES = ("gptj",)
CONFIG = gptj.GPTJConfig
PREFIX = "transformer."
_BUFFER_RE = re.compile(r"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def module_name(cfg: gptj.GPTJConfig, layer: int, target: str) -> str:
    part = "attn" if target in gptj.ATTN else "mlp"
    return f"{PREFIX}h.{layer}.{part}.{target}"


def _key_map(cfg: gptj.GPTJConfig) -> dict[str, tuple[tuple, bool]]:
    m = {f"{PREFIX}wte.weight": (("wte", "embedding"), False),
         f"{PREFIX}ln_f.weight": (("ln_f", "scale"), False), f"{PREFIX}ln_f.bias": (("ln_f", "bias"), False),
         "lm_head.weight": (("lm_head", "kernel"), True), "lm_head.bias": (("lm_head", "bias"), False)}
    for i in range(cfg.n_layer):
        lp = f"{PREFIX}h.{i}."
        m[lp + "ln_1.weight"] = (("h", i, "ln_1", "scale"), False)
        m[lp + "ln_1.bias"] = (("h", i, "ln_1", "bias"), False)
        for t in gptj.ATTN:
            m[f"{lp}attn.{t}.weight"] = (("h", i, "attn", t, "kernel"), True)
        for t in gptj.MLP_NAMES:
            m[f"{lp}mlp.{t}.weight"] = (("h", i, "mlp", t, "kernel"), True)
            m[f"{lp}mlp.{t}.bias"] = (("h", i, "mlp", t, "bias"), False)
    return m


def params_from_state_dict(cfg: gptj.GPTJConfig, sd: dict) -> dict:
    """transformers GPT-J state dict (NumPy; no value-head keys) -> params without ``v_head``."""
    sd = {k: v for k, v in sd.items() if not _BUFFER_RE.match(k)}
    return params_from_map("GPT-J", _key_map(cfg), dict(expected_shapes(gptj.init, cfg.replace(lora=None))), sd)


def state_dict_from_params(cfg: gptj.GPTJConfig, params) -> dict[str, np.ndarray]:
    return state_dict_from_map(_key_map(cfg), params)


def config_from_hf(hf: dict, *, dtype: str = "float32") -> gptj.GPTJConfig:
    if hf.get("model_type") != "gptj":
        raise InvalidInput(f"config.json has model_type {hf.get('model_type')!r}; this converter reads 'gptj'")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InvalidInput(f"config.json has activation_function {act!r}; rajax GPT-J computes gelu_new only")
    if hf.get("tie_word_embeddings", False):
        raise InvalidInput("config.json sets tie_word_embeddings=true; rajax GPT-J has GPT-J's untied LM head only")
    e, h = int(hf.get("n_embd", 4096)), int(hf.get("n_head", 16))
    rot = hf.get("rotary_dim", 64)
    if rot is None:
        raise InvalidInput("config.json has rotary_dim=null, which rajax GPT-J does not implement; set it to "
                           f"the rotated channels per head (at most {e // h})")
    rates = {float(hf.get(k, 0.0)) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(rates) > 1:
        raise InvalidInput(f"config.json has different dropout rates {sorted(rates)}; rajax GPT-J uses one rate")
    if dtype not in gptj.DTYPES:
        raise InvalidInput(f"dtype must be one of {sorted(gptj.DTYPES)}, got {dtype!r}")
    return gptj.GPTJConfig(
        vocab_size=int(hf.get("vocab_size", 50400)),
        n_positions=int(hf.get("n_positions", 2048)),
        n_embd=e,
        n_layer=int(hf.get("n_layer", 28)),
        n_head=h,
        rotary_dim=int(rot),
        n_inner=None if hf.get("n_inner") is None else int(hf["n_inner"]),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        dropout=rates.pop(),
        dtype=dtype,
    )


def config_to_hf(cfg: gptj.GPTJConfig) -> dict:
    out = {
        "architectures": ["GPTJForCausalLM"],
        "model_type": "gptj",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_positions,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "rotary_dim": cfg.rotary_dim,
        "n_inner": cfg.n_inner,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": "float32",
    }
    if cfg.vocab_size > 50256:  # GPT-2's <|endoftext|>, as EleutherAI's config.json
        out.update(bos_token_id=50256, eos_token_id=50256)
    return out
