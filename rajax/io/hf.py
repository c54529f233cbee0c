"""Hugging Face checkpoints <-> rajax policies, for every supported family.

``load(name_or_path)`` resolves a local directory or a hub id (``rajax.io.hub``), picks the family's
converter from ``config.json``'s ``model_type`` and returns ``(cfg, params)``; ``cfg`` is the model
handle of ``rajax.models`` (e.g. ``GPT2Config``). ``save(path, cfg, params)`` writes a directory that
transformers loads, plus the value head.

The value head (TRL's ``v_head.summary.{weight [1, E], bias [1]}``) is handled here, once for every
family: it is read from ``value_head.safetensors`` (what ``save`` writes), else from TRL keys inside
the weights, else freshly drawn from ``value_head_seed`` (docs/paper.md §2.3).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from rajax.core.errors import InvalidInput
from rajax.io import hf_gpt2, hf_gptj, hf_llama, hub
from rajax.models import lora
from rajax.models.base import init_value_head

VALUE_HEAD_FILE = "value_head.safetensors"
_VHEAD_W, _VHEAD_B = "v_head.summary.weight", "v_head.summary.bias"
# Where a PPO run's value head comes from (model.value_head). The original calls set_seed(seed)
# before loading its SFT model, which has no head, so each PPO seed draws a fresh one; a
# checkpoint written after PPO carries a trained head, which is loaded (docs/paper.md quirk #28).
VALUE_HEAD_MODES = ("auto", "seed", "checkpoint")
VALUE_HEAD_KINDS = ("initial", "trained")  # what ``save`` records in the safetensors metadata
_VHEAD_META = "rajax_value_head"
CONVERTERS = (hf_gpt2, hf_llama, hf_gptj)  # each: MODEL_TYPES, CONFIG, config_from_hf/to_hf, params_from/state_dict_from


def _converter_for_type(model_type: str):
    for c in CONVERTERS:
        if model_type in c.MODEL_TYPES:
            return c
    known = ", ".join(t for c in CONVERTERS for t in c.MODEL_TYPES)
    raise InvalidInput(f"config.json has model_type {model_type!r}; supported: {known}")


def _converter_for_config(cfg):
    for c in CONVERTERS:
        if isinstance(cfg, c.CONFIG):
            return c
    raise InvalidInput(f"no Hugging Face converter for {type(cfg).__name__}")


def value_head_to_hf(vh) -> dict[str, np.ndarray]:
    """Our ``{'kernel' [E, 1], 'bias' [1]}`` -> TRL's ``v_head.summary.*`` (nn.Linear: transposed)."""
    return {
        _VHEAD_W: np.ascontiguousarray(np.asarray(vh["kernel"], np.float32).T),
        _VHEAD_B: np.ascontiguousarray(np.asarray(vh["bias"], np.float32).reshape(1)),
    }


def value_head_from_hf(sd: dict, hidden_size: int, *, seed: int) -> dict:
    """Pop TRL's value-head keys from ``sd`` (if both are there), else a fresh seeded head."""
    if _VHEAD_W in sd and _VHEAD_B in sd:
        w, b = np.asarray(sd.pop(_VHEAD_W), np.float32), np.asarray(sd.pop(_VHEAD_B), np.float32)
        if w.shape != (1, hidden_size) or b.size != 1:
            raise InvalidInput(f"value head v_head.summary.weight has shape {w.shape}, expected (1, {hidden_size})")
        return {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b.reshape(1))}
    return init_value_head(hidden_size, jax.random.key(seed))


def from_state_dict(cfg, sd: dict, *, value_head_seed: int = 0) -> dict:
    """A transformers/TRL state dict (NumPy arrays, e.g. ``{k: v.numpy() for k, v in
    model.state_dict().items()}``) -> params of ``cfg``'s family, with a value head (TRL keys, or a
    fresh one drawn from ``value_head_seed``)."""
    sd = dict(sd)
    v_head = value_head_from_hf(sd, cfg.hidden_size, seed=value_head_seed)
    params = _converter_for_config(cfg).params_from_state_dict(cfg, sd)
    params["v_head"] = v_head
    return params


def to_state_dict(cfg, params, *, value_head: bool = False) -> dict[str, np.ndarray]:
    """Params -> the transformers state dict of ``cfg``'s family (float32 NumPy); ``value_head``
    adds TRL's ``v_head.summary.*`` keys. LoRA adapters are merged into their weights first."""
    cfg, params = lora.merge(cfg, params)
    sd = _converter_for_config(cfg).state_dict_from_params(cfg, params)
    if value_head:
        sd.update(value_head_to_hf(params["v_head"]))
    return sd


def has_converter(cfg) -> bool:
    return any(isinstance(cfg, c.CONFIG) for c in CONVERTERS)


def config_dict(cfg) -> dict:
    """The transformers ``config.json`` of a model handle (what ``save`` writes)."""
    return _converter_for_config(cfg).config_to_hf(cfg)


def config_from_dict(raw: dict, *, dtype: str = "float32"):
    """A model handle from a transformers ``config.json`` dict (the family from its ``model_type``)."""
    return _converter_for_type(raw.get("model_type", "gpt2")).config_from_hf(raw, dtype=dtype)


def stored_value_head(d) -> str | None:
    """What value head the checkpoint directory ``d`` holds: ``"initial"`` (drawn, never trained: an
    SFT output), ``"trained"`` (after PPO), ``"unmarked"`` (a head without our record, e.g. a TRL
    checkpoint or an older rajax export) or None (no head: a plain transformers model)."""
    from safetensors import safe_open

    d = pathlib.Path(d)
    for f in (d / VALUE_HEAD_FILE, d / "model.safetensors"):
        if not f.is_file():
            continue
        try:
            with safe_open(str(f), framework="np") as h:
                if f.name == "model.safetensors" and _VHEAD_W not in h.keys():
                    continue
                kind = (h.metadata() or {}).get(_VHEAD_META)
        except Exception:  # noqa: BLE001 - a damaged file is reported by the loader itself
            return "unmarked"
        return kind if kind in VALUE_HEAD_KINDS else "unmarked"
    return None


def value_head_metadata(kind: str) -> dict:
    """The safetensors metadata of a file that holds a value head of ``kind`` (initial | trained)."""
    if kind not in VALUE_HEAD_KINDS:
        raise InvalidInput(f"value_head={kind!r}; choose one of {', '.join(VALUE_HEAD_KINDS)}")
    return {"format": "pt", _VHEAD_META: kind}


def value_head_choice(name_or_path, mode: str = "auto", *, what: str | None = None) -> str:
    """``"seed"`` (draw the head from the run's seed) or ``"checkpoint"`` (load the stored one) for
    ``model.value_head=mode``: ``auto`` loads a head unless it is absent or marked ``initial``."""
    if mode not in VALUE_HEAD_MODES:
        raise InvalidInput(f"model.value_head={mode!r} is not valid; choose one of {', '.join(VALUE_HEAD_MODES)}")
    if mode == "seed":
        return mode
    kind = stored_value_head(hub.resolve(name_or_path, what=what))
    if mode == "checkpoint":
        if kind is None:
            raise InvalidInput(hub.error(what, name_or_path, "has no value head to load (model.value_head=checkpoint); "
                                                           "use model.value_head=auto or seed"))
        return mode
    return "seed" if kind in (None, "initial") else "checkpoint"


def load(name_or_path, *, value_head_seed: int = 0, dtype: str = "float32", what: str | None = None,
         value_head: str = "checkpoint"):
    """A causal-LM checkpoint -> ``(cfg, params)`` with a value head.

    ``name_or_path``: a local directory (``config.json`` + weights) or a hub id such as ``"gpt2"``
    (downloaded or read from the HF cache; with ``HF_HUB_OFFLINE=1`` only the cache is used).
    ``dtype`` sets the compute dtype (params are float32 either way). ``what`` (e.g. ``"--policy"``)
    starts every error message. ``value_head``: ``"checkpoint"`` uses a stored head when there is
    one (else draws it from ``value_head_seed``); ``"seed"`` always draws it; ``"auto"`` decides by
    ``value_head_choice``.
    """
    if value_head == "auto":
        value_head = value_head_choice(name_or_path, "auto", what=what)
    d = hub.resolve(name_or_path, what=what)
    raw = hub.read_config(d, what=what, name=name_or_path)
    try:
        conv = _converter_for_type(raw.get("model_type", "gpt2"))
        cfg = conv.config_from_hf(raw, dtype=dtype)
    except ValueError as e:
        raise InvalidInput(hub.error(what, name_or_path, str(e))) from None
    sd = hub.read_state_dict(d, what=what, name=name_or_path)  # its errors already name the flag
    vh = d / VALUE_HEAD_FILE
    if value_head == "seed":
        sd.pop(_VHEAD_W, None)
        sd.pop(_VHEAD_B, None)
    elif vh.is_file():
        from safetensors.numpy import load_file

        try:
            sd.update(load_file(vh))  # our file wins over any TRL keys in the weights
        except Exception as e:  # noqa: BLE001 - safetensors' errors for a damaged file
            raise InvalidInput(hub.error(what, name_or_path, f"{VALUE_HEAD_FILE} is unreadable "
                                                             f"({type(e).__name__})")) from None
    try:
        params = from_state_dict(cfg, sd, value_head_seed=value_head_seed)
    except ValueError as e:
        raise InvalidInput(hub.error(what, name_or_path, str(e))) from None
    return cfg, params


TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def special_token_ids(tokenizer=None, source=None) -> dict:
    """The BOS / EOS / pad ids an exported ``config.json`` and ``generation_config.json`` name.

    Each comes from the tokenizer the policy was trained with (its EOS is where rajax's sampler
    stopped, so ``generate()`` must stop there too), else from the source checkpoint's
    ``config.json`` (``source``: a directory or hub id, e.g. ``model.policy``), else it is None.
    A None is written out as null, not left out: transformers would otherwise fill in its class
    defaults (Llama's bos 1 / eos 2), ids that mean nothing to this tokenizer.
    """
    ids = dict.fromkeys(TOKEN_ID_KEYS)
    known = tokenizer is not None and all(getattr(tokenizer, k, None) is not None for k in TOKEN_ID_KEYS)
    if source is not None and not known:  # read only when needed: a hub id may mean a network call
        try:
            raw = hub.read_config(hub.resolve(source))
        except (OSError, ValueError):  # the source may be gone by export time; the tokenizer still decides
            raw = {}
        for k in TOKEN_ID_KEYS:
            v = raw.get(k)
            if isinstance(v, list):  # e.g. Llama 3's eos [128001, 128008, 128009]: kept as the source has it
                ids[k] = [int(x) for x in v] or None
            elif v is not None:
                ids[k] = int(v)
    if tokenizer is not None:
        for k in TOKEN_ID_KEYS:
            v = getattr(tokenizer, k, None)
            if v is not None:
                ids[k] = int(v)
    return ids


def generation_config(ids: dict) -> dict:
    """``generation_config.json`` with the same ids as ``config.json``: transformers' ``generate()``
    reads its stopping id from here when the file exists, so both must say the same."""
    return {k: ids[k] for k in TOKEN_ID_KEYS}


def _dir_mode() -> int:
    """0777 minus the process umask: what ``mkdir`` would have given."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def save(path, cfg, params, tokenizer=None, *, value_head: str = "trained", source=None) -> pathlib.Path:
    """Write a directory that transformers and TRL load (+ ``value_head.safetensors``, + tokenizer).

    ``config.json``, ``model.safetensors`` (float32, with the value head under TRL's
    ``v_head.summary.*`` keys) and ``value_head.safetensors`` (the same head alone) and, if
    ``tokenizer`` is given, its files. A LoRA policy is written merged (W + s·A@B; the adapters
    alone: ``rajax.io.peft.save_adapter``). Written to a temporary sibling directory and renamed into
    place, so a crash never leaves a half-written checkpoint at ``path``. ``value_head`` records
    whether the head was trained (``"trained"``, after PPO) or only drawn (``"initial"``, e.g. SFT),
    which decides ``model.value_head=auto`` when a run starts from this directory. ``source`` (the
    checkpoint the policy started from) supplies the BOS / EOS / pad ids the tokenizer does not
    define (``special_token_ids``); they go into ``config.json`` and ``generation_config.json``.
    """
    from safetensors.numpy import save_file

    meta = value_head_metadata(value_head)

    cfg, params = lora.merge(cfg, params)
    conv = _converter_for_config(cfg)
    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, _dir_mode())  # mkdtemp makes it 0700; an exported model is meant to be shared
    try:
        raw = conv.config_to_hf(cfg)
        ids = special_token_ids(tokenizer, source)
        if tokenizer is None and source is None:  # nothing to go by: the family's own default ids
            ids = {k: raw.get(k) for k in TOKEN_ID_KEYS}
        (tmp / "config.json").write_text(json.dumps({**raw, **ids}, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(ids), indent=2) + "\n")
        # transformers refuses safetensors files without format metadata.
        # The value head also inside model.safetensors under TRL's keys: TRL's
        # AutoModelForCausalLMWithValueHead reads it from there (transformers ignores the two keys).
        save_file(to_state_dict(cfg, params, value_head=True), tmp / "model.safetensors", metadata=meta)
        save_file(value_head_to_hf(params["v_head"]), tmp / VALUE_HEAD_FILE, metadata=meta)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
