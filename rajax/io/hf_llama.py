"""The Llama-family converter: ``LlamaForCausalLM`` (Llama 2/3.x, SmolLM2, TinyLlama) and
``Qwen2ForCausalLM`` (Qwen2/2.5) checkpoints <-> ``rajax.models.llama`` params.

``rajax.io.hf.load``/``save`` pick this module for ``model_type`` ``llama`` or ``qwen2`` and handle
the files and the value head; this module maps the config and the tensors. ``nn.Linear`` weights
are (out, in), our kernels (in, out), so every projection and an untied ``lm_head`` is transposed:

    model.embed_tokens.weight                      -> embed_tokens.embedding    [V, E]
    model.layers.L.input_layernorm.weight          -> layers[L].input_layernorm.scale
    model.layers.L.self_attn.{q,k,v,o}_proj.weight -> layers[L].self_attn.*.kernel   (transposed)
    model.layers.L.self_attn.{q,k,v,o}_proj.bias   -> layers[L].self_attn.*.bias     (Qwen2: q/k/v)
    model.layers.L.post_attention_layernorm.weight -> layers[L].post_attention_layernorm.scale
    model.layers.L.mlp.{gate,up,down}_proj.weight  -> layers[L].mlp.*.kernel         (transposed)
    model.norm.weight                              -> norm.scale
    lm_head.weight                                 -> lm_head.kernel [E, V]     (untied only)

The mapping helpers (``params_from_map``/``state_dict_from_map``) also serve ``rajax.io.hf_gptj``.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.models import llama
from rajax.models.layers import get_path, set_path

MODEL_TYPES = ("llama", "qwen2")
CONFIG = llama.LlamaConfig
PREFIX = "model."


# ----------------------------------------------------------------------------- shared mapping helpers
@functools.lru_cache(maxsize=None)
def expected_shapes(init_fn, cfg) -> dict[tuple, tuple]:
    """{params path: shape} of a family's ``init`` (abstract: nothing is allocated)."""
    tree = jax.eval_shape(lambda: init_fn(cfg, jax.random.key(0)))
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path): tuple(x.shape) for path, x in leaves}


def params_from_map(family: str, kmap: dict[str, tuple[tuple, bool]], shapes: dict, sd: dict) -> dict:
    """HF state dict -> params by ``kmap`` ({hf key: (params path, transpose)}); missing or mis-shaped
    tensors raise one line naming the first few; float32 jax arrays."""
    missing = [k for k in kmap if k not in sd]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InvalidInput(f"{family} checkpoint is missing {missing[:3]}{more}; does config.json match the weights?")
    params: dict = {}
    for hf_key, (path, transpose) in kmap.items():
        arr = np.asarray(sd.pop(hf_key))
        arr = arr.T if transpose else arr
        if arr.shape != shapes[path]:
            raise InvalidInput(f"{family} checkpoint tensor {hf_key!r} has shape {arr.shape if not transpose else arr.T.shape}, "
                               f"expected {shapes[path][::-1] if transpose else shapes[path]} from config.json")
        set_path(params, path, jnp.asarray(np.ascontiguousarray(arr, np.float32)))
    if sd:
        warnings.warn(f"ignoring {len(sd)} unexpected {family} checkpoint tensors: {sorted(sd)[:5]}", stacklevel=3)
    return params


def state_dict_from_map(kmap: dict[str, tuple[tuple, bool]], params) -> dict[str, np.ndarray]:
    out = {}
    for hf_key, (path, transpose) in kmap.items():
        arr = np.asarray(get_path(params, path), np.float32)
        out[hf_key] = np.ascontiguousarray(arr.T if transpose else arr)
    return out


# ----------------------------------------------------------------------------- the Llama mapping
def module_name(cfg: llama.LlamaConfig, layer: int, target: str) -> str:
    """transformers' module name of a LoRA site (PEFT keys are built from it)."""
    part = "self_attn" if target in llama.ATTN else "mlp"
    return f"{PREFIX}layers.{layer}.{part}.{target}"


def _key_map(cfg: llama.LlamaConfig) -> dict[str, tuple[tuple, bool]]:
    m = {f"{PREFIX}embed_tokens.weight": (("embed_tokens", "embedding"), False),
         f"{PREFIX}norm.weight": (("norm", "scale"), False)}
    for i in range(cfg.n_layer):
        lp = f"{PREFIX}layers.{i}."
        m[lp + "input_layernorm.weight"] = (("layers", i, "input_layernorm", "scale"), False)
        m[lp + "post_attention_layernorm.weight"] = (("layers", i, "post_attention_layernorm", "scale"), False)
        for t in llama.ATTN:
            m[f"{lp}self_attn.{t}.weight"] = (("layers", i, "self_attn", t, "kernel"), True)
            if (cfg.qkv_bias and t != "o_proj") or (cfg.o_bias and t == "o_proj"):
                m[f"{lp}self_attn.{t}.bias"] = (("layers", i, "self_attn", t, "bias"), False)
        for t in llama.MLP_NAMES:
            m[f"{lp}mlp.{t}.weight"] = (("layers", i, "mlp", t, "kernel"), True)
            if cfg.mlp_bias:
                m[f"{lp}mlp.{t}.bias"] = (("layers", i, "mlp", t, "bias"), False)
    if not cfg.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    return m


def params_from_state_dict(cfg: llama.LlamaConfig, sd: dict) -> dict:
    """transformers state dict (NumPy; no value-head keys) -> params without ``v_head``.

    Rotary ``inv_freq`` buffers (old checkpoints) are dropped; with tied embeddings an
    ``lm_head.weight`` is ignored, as transformers ties it to ``embed_tokens`` on load."""
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    base = cfg.replace(lora=None)
    return params_from_map(_name(cfg), _key_map(cfg), dict(expected_shapes(llama.init, base)), sd)


def state_dict_from_params(cfg: llama.LlamaConfig, params) -> dict[str, np.ndarray]:
    """Params -> the transformers state dict (float32; no ``lm_head.weight`` when tied, no value head)."""
    return state_dict_from_map(_key_map(cfg), params)


# ----------------------------------------------------------------------------- config
def _name(cfg) -> str:
    return {"llama": "Llama", "qwen2": "Qwen2"}[cfg.model_type]


def _rope(hf: dict) -> dict:
    """The RoPE settings of a config.json: transformers-5 ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling`` (what hub checkpoints such as Llama-3.2 carry)."""
    rp = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    if set(rp) and all(isinstance(v, dict) for v in rp.values()):
        raise InvalidInput("config.json has per-layer-type rope_parameters, which rajax Llama does not implement")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in llama.ROPE_TYPES:
        raise InvalidInput(f"config.json has rope type {kind!r}; rajax Llama implements {llama.ROPE_TYPES}")
    if float(rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise InvalidInput("config.json sets partial_rotary_factor != 1, which rajax Llama does not implement")
    out = dict(rope_theta=float(rp.get("rope_theta", hf.get("rope_theta", 10000.0))), rope_type=kind)
    if kind in ("linear", "llama3"):
        out["rope_factor"] = float(rp["factor"])
    if kind == "llama3":
        out.update(rope_low_freq_factor=float(rp["low_freq_factor"]),
                   rope_high_freq_factor=float(rp["high_freq_factor"]),
                   rope_original_max=int(rp.get("original_max_position_embeddings",
                                                hf.get("max_position_embeddings", 8192))))
    return out


def config_from_hf(hf: dict, *, dtype: str = "float32") -> llama.LlamaConfig:
    """``config.json`` dict -> ``LlamaConfig``; variants this module does not compute are refused."""
    mt = hf.get("model_type")
    if mt not in MODEL_TYPES:
        raise InvalidInput(f"config.json has model_type {mt!r}; this converter reads {MODEL_TYPES}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise InvalidInput(f"config.json has hidden_act {act!r}; rajax Llama computes SwiGLU with silu only")
    if mt == "qwen2":
        kinds = set(hf.get("layer_types") or ["full_attention"])
        if hf.get("use_sliding_window", False) or kinds != {"full_attention"}:
            raise InvalidInput("config.json enables Qwen2 sliding-window attention, which rajax Llama does not implement")
    if dtype not in llama.DTYPES:
        raise InvalidInput(f"dtype must be one of {sorted(llama.DTYPES)}, got {dtype!r}")
    need = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in need if hf.get(k) is None]
    if missing:
        raise InvalidInput(f"config.json of a {mt} model lacks {', '.join(missing)}")
    e, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    bias = bool(hf.get("attention_bias", False))
    return llama.LlamaConfig(
        vocab_size=int(hf["vocab_size"]),
        max_position=int(hf.get("max_position_embeddings", 2048)),
        n_embd=e,
        n_layer=int(hf["num_hidden_layers"]),
        n_head=h,
        n_kv_head=int(hf.get("num_key_value_heads") or h),
        head_dim=int(hf.get("head_dim") or e // h),
        intermediate=int(hf["intermediate_size"]),
        rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=True if mt == "qwen2" else bias,
        o_bias=False if mt == "qwen2" else bias,
        mlp_bias=False if mt == "qwen2" else bool(hf.get("mlp_bias", False)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        dropout=float(hf.get("attention_dropout", 0.0)),
        model_type=mt,
        dtype=dtype,
        **_rope(hf),
    )


def config_to_hf(cfg: llama.LlamaConfig) -> dict:
    """``LlamaConfig`` -> a transformers ``config.json`` (``LlamaForCausalLM`` or ``Qwen2ForCausalLM``)."""
    rope = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_type}
    if cfg.rope_type in ("linear", "llama3"):
        rope["factor"] = cfg.rope_factor
    if cfg.rope_type == "llama3":
        rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max)
    out = {
        "architectures": ["Qwen2ForCausalLM" if cfg.model_type == "qwen2" else "LlamaForCausalLM"],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.intermediate,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position,
        "rms_norm_eps": cfg.rms_eps,
        "rope_parameters": rope,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "dtype": "float32",
    }
    if cfg.model_type == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, layer_types=["full_attention"] * cfg.n_layer)
    else:
        if cfg.qkv_bias != cfg.o_bias:
            raise InvalidInput("a Llama config.json has one attention_bias for q/k/v/o; this model has q/k/v bias "
                               "without o_proj bias (Qwen2's layout): save it with model_type='qwen2'")
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    return out
