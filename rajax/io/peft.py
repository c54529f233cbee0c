"""LoRA adapters <-> PEFT's on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``).

``save_adapter(path, cfg, params)`` writes what ``peft.PeftModel.from_pretrained(base, path)`` loads
on the transformers model of the base checkpoint: for every adapted projection ``<module>`` (the
family's transformers name, e.g. ``model.layers.3.self_attn.q_proj``)

    base_model.model.<module>.lora_A.weight   [r, in]   = A.T
    base_model.model.<module>.lora_B.weight   [out, r]  = B.T

with ``lora_alpha``/``r`` giving PEFT the same scale ``alpha / r`` (``use_rslora`` false). The value
head goes beside them as ``value_head.safetensors`` (TRL's key names), which PEFT ignores and
``load_adapter`` reads back. The merged alternative is ``rajax.io.hf.save`` of the LoRA policy.
"""
from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.io import hf
from rajax.models import lora

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _names(cfg) -> dict[tuple[int, str], str]:
    conv = hf._converter_for_config(cfg)
    if not hasattr(conv, "module_name"):
        raise InvalidInput(f"{cfg.describe()}: its converter has no module names for PEFT adapters")
    return {site: conv.module_name(cfg, *site) for site in lora.sites(cfg)}


def adapter_config(cfg, base_model: str | None = None) -> dict:
    """The ``adapter_config.json`` of ``cfg.lora`` (only the fields PEFT needs; it fills the rest)."""
    spec = cfg.lora
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": sorted(spec.targets),
        "bias": "none",
        "fan_in_fan_out": bool(getattr(hf._converter_for_config(cfg), "PEFT_FAN_IN_FAN_OUT", False)),
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def save_adapter(path, cfg, params, *, base_model: str | None = None) -> pathlib.Path:
    """Write ``params["lora"]`` of a LoRA policy (and its value head) as a PEFT adapter directory."""
    from safetensors.numpy import save_file

    if getattr(cfg, "lora", None) is None or "lora" not in params:
        raise InvalidInput("save_adapter needs a LoRA policy: cfg.lora and params['lora']")
    path = pathlib.Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, target), name in _names(cfg).items():
        ad = params["lora"][layer][target]
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(np.asarray(ad["a"], np.float32).T)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(np.asarray(ad["b"], np.float32).T)
    save_file(tensors, path / WEIGHTS_FILE, metadata={"format": "pt"})
    (path / CONFIG_FILE).write_text(json.dumps(adapter_config(cfg, base_model), indent=2) + "\n")
    save_file(hf.value_head_to_hf(params["v_head"]), path / hf.VALUE_HEAD_FILE, metadata=hf.value_head_metadata("trained"))
    return path


def load_adapter(path, cfg, params) -> tuple:
    """A PEFT LoRA adapter directory onto a base ``(cfg, params)`` -> ``(cfg with LoRA, params with
    params["lora"])`` (and the value head, when the directory has ours)."""
    from safetensors.numpy import load_file

    path = pathlib.Path(path).expanduser()
    try:
        conf = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{path}: not a PEFT adapter directory ({e})") from None
    if conf.get("peft_type") != "LORA" or conf.get("use_rslora") or conf.get("use_dora"):
        raise InvalidInput(f"{path}: only plain LoRA adapters (no rsLoRA/DoRA) are supported")
    targets = conf["target_modules"]
    if isinstance(targets, str):
        raise InvalidInput(f"{path}: target_modules is a regex ({targets!r}); rajax reads a list of names")
    cfg = cfg.replace(lora=lora.LoRA(rank=int(conf["r"]), alpha=float(conf["lora_alpha"]), targets=tuple(targets),
                                     dropout=float(conf.get("lora_dropout", 0.0))))
    sd = load_file(path / WEIGHTS_FILE)
    adapters: dict = {}
    for (layer, target), name in _names(cfg).items():
        a, b = (sd.get(f"{_PREFIX}{name}.lora_{x}.weight") for x in ("A", "B"))
        if a is None or b is None:
            raise InvalidInput(f"{path}: no lora_A/lora_B weights for {name}")
        adapters.setdefault(layer, {})[target] = {"a": jnp.asarray(a.T, jnp.float32), "b": jnp.asarray(b.T, jnp.float32)}
    params = {**params, "lora": adapters}
    vh = path / hf.VALUE_HEAD_FILE
    if vh.is_file():
        params["v_head"] = hf.value_head_from_hf(dict(load_file(vh)), cfg.hidden_size, seed=0)
    return cfg, params
