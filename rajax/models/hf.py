"""Hugging Face GPT-2 checkpoints <-> rajax GPT-2 params (spec §2.3, §7; jax-notes §3).

``load(name_or_path)`` reads a local directory or a hub id (through ``huggingface_hub``, which
honours ``HF_HUB_OFFLINE``) and returns ``(GPT2Config, params)`` in the layout of
``rajax.models.gpt2``. ``save(path, cfg, params)`` writes a directory that
``transformers.GPT2LMHeadModel.from_pretrained`` loads, plus our ``value_head.safetensors``.

Key mapping (jax-notes §3). transformers' GPT-2 uses ``Conv1D`` whose weight is (in, out), the same
as our dense kernels, so no transposes are needed:

    [transformer.]wte.weight                 -> wte.embedding        [V, E]
    [transformer.]wpe.weight                 -> wpe.embedding        [n_positions, E]
    [transformer.]h.L.ln_1.{weight,bias}     -> h[L].ln_1.{scale,bias}
    [transformer.]h.L.attn.c_attn.{weight,bias}  -> h[L].attn.c_attn.{kernel,bias}
    [transformer.]h.L.attn.c_proj.{weight,bias}  -> h[L].attn.c_proj.{kernel,bias}
    [transformer.]h.L.ln_2.{weight,bias}     -> h[L].ln_2.{scale,bias}
    [transformer.]h.L.mlp.c_fc.{weight,bias} -> h[L].mlp.c_fc.{kernel,bias}
    [transformer.]h.L.mlp.c_proj.{weight,bias}   -> h[L].mlp.c_proj.{kernel,bias}
    [transformer.]ln_f.{weight,bias}         -> ln_f.{scale,bias}
    v_head.summary.weight [1, E] (TRL)       -> v_head.kernel [E, 1]  (nn.Linear: transposed)
    v_head.summary.bias [1]                  -> v_head.bias [1]

Hub checkpoints of the original ``gpt2`` have no ``transformer.`` prefix and carry ``h.L.attn.bias``
causal-mask buffers (dropped here); ``lm_head.weight`` is tied to ``wte`` and never stored by us.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import tempfile
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rajax.models import gpt2
from rajax.models.layers import get_path, set_path

VALUE_HEAD_FILE = "value_head.safetensors"
_PREFIX = "transformer."
# Buffers some GPT-2 checkpoints carry (causal mask, masked-bias constant); not parameters.
_BUFFER_RE = re.compile(r"^h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$")
_VHEAD_W, _VHEAD_B = "v_head.summary.weight", "v_head.summary.bias"
# Files tried, in order, for the weights of a checkpoint.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _err(what: str | None, name: Any, reason: str) -> str:
    msg = f"cannot load GPT-2 from {str(name)!r}: {reason}"
    return f"{what}: {msg}" if what else msg


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




def to_hf_state_dict(cfg: gpt2.GPT2Config, params, *, value_head: bool = False) -> dict[str, np.ndarray]:
    """Params -> transformers ``GPT2LMHeadModel`` state dict (``transformer.``-prefixed, float32).

    No ``lm_head.weight`` (it is tied to ``wte``). ``value_head=True`` adds TRL's
    ``v_head.summary.{weight [1, E], bias [1]}``.
    """
    sd = {}
    for hf_key, path in _key_map(cfg).items():
        sd[_PREFIX + hf_key] = np.ascontiguousarray(np.asarray(get_path(params, path), np.float32))
    if value_head:
        sd.update(_value_head_to_hf(params["v_head"]))
    return sd


def _value_head_to_hf(vh) -> dict[str, np.ndarray]:
    return {
        _VHEAD_W: np.ascontiguousarray(np.asarray(vh["kernel"], np.float32).T),
        _VHEAD_B: np.ascontiguousarray(np.asarray(vh["bias"], np.float32).reshape(1)),
    }


def from_hf_state_dict(cfg: gpt2.GPT2Config, sd: dict[str, Any], *, value_head_seed: int = 0):
    """transformers/TRL GPT-2 state dict (numpy or torch-converted arrays) -> params.

    Accepts keys with or without the ``transformer.`` prefix, drops ``attn.bias``/``attn.masked_bias``
    buffers, checks that ``lm_head.weight`` (if present) equals ``wte`` (our LM head is tied), and
    reads TRL's ``v_head.summary.*`` if present; otherwise the value head is a fresh seeded init
    (``gpt2.init_value_head``: U(-1/sqrt(E), 1/sqrt(E)), PyTorch nn.Linear's default = TRL's).
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
        raise ValueError(f"GPT-2 checkpoint is missing {missing[:3]}{more}; is it a GPT-2 model with "
                         f"n_layer={cfg.n_layer}?")
    shapes = _expected_shapes(cfg)
    params: dict = {}
    for hf_key, path in kmap.items():
        arr = norm.pop(hf_key)
        if arr.shape != shapes[path]:
            raise ValueError(f"GPT-2 checkpoint tensor {hf_key!r} has shape {arr.shape}, expected "
                             f"{shapes[path]} from config.json")
        set_path(params, path, jnp.asarray(arr))
    lm = norm.pop("lm_head.weight", None)
    wte = np.asarray(params["wte"]["embedding"])
    if lm is not None and (lm.shape != wte.shape or not np.array_equal(lm, wte)):
        raise ValueError("GPT-2 checkpoint has an lm_head.weight that differs from wte.weight; rajax "
                         "GPT-2 ties the LM head to the token embedding and cannot load an untied head")
    if _VHEAD_W in norm and _VHEAD_B in norm:
        w, b = norm.pop(_VHEAD_W), norm.pop(_VHEAD_B)
        if w.shape != (1, cfg.n_embd) or b.size != 1:
            raise ValueError(f"value head v_head.summary.weight has shape {w.shape}, expected (1, {cfg.n_embd})")
        params["v_head"] = {"kernel": jnp.asarray(w.T), "bias": jnp.asarray(b.reshape(1))}
    else:
        params["v_head"] = gpt2.init_value_head(cfg, jax.random.key(value_head_seed))
    if norm:
        warnings.warn(f"ignoring {len(norm)} unexpected GPT-2 checkpoint tensors: {sorted(norm)[:5]}",
                      stacklevel=2)
    return params


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict, *, dtype: str = "float32") -> gpt2.GPT2Config:
    """``config.json`` dict -> ``GPT2Config``. Rejects GPT-2 variants our model does not compute."""
    mt = hf.get("model_type", "gpt2")
    if mt != "gpt2":
        raise ValueError(f"config.json has model_type {mt!r}; only GPT-2 ('gpt2') checkpoints are supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"config.json has activation_function {act!r}; rajax GPT-2 computes gelu_new only")
    # reorder_and_upcast_attn only changes numerics (fp32 softmax, which we always do); this one
    # changes the function.
    if hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("config.json sets scale_attn_by_inverse_layer_idx=true, which rajax GPT-2 "
                         "does not implement")
    if hf.get("scale_attn_weights", True) is False:
        raise ValueError("config.json sets scale_attn_weights=false, which rajax GPT-2 does not implement")
    e = int(hf.get("n_embd", 768))
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * e):
        raise ValueError(f"config.json has n_inner={n_inner}; rajax GPT-2 uses 4 * n_embd = {4 * e}")
    if dtype not in gpt2._DTYPES:
        raise ValueError(f"dtype must be one of {sorted(gpt2._DTYPES)}, got {dtype!r}")
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
    eos = cfg.vocab_size - 1  # GPT-2's <|endoftext|> is the last id (50256)
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


# ----------------------------------------------------------------------------- files


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else (absolute, ./, ~, deeper) is a path.
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or os.sep != "/" and os.sep in name)


def _hub_dir(name: str, what: str | None) -> pathlib.Path:
    """Download (or find in the HF cache) config.json + weights of hub model ``name``; its dir."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as hfe

    def get(fname):
        return pathlib.Path(hf_hub_download(name, fname))

    unreachable = ("not a local directory and the Hugging Face hub is unreachable ({}); pass a local "
                   "checkpoint directory")
    try:
        root = get("config.json").parent
    except hfe.HFValidationError:
        raise ValueError(_err(what, name, "not a local directory nor a valid Hugging Face hub id")) from None
    except hfe.LocalEntryNotFoundError:
        # Raised when offline (HF_HUB_OFFLINE or no connection) and the file is not in the cache.
        raise ValueError(_err(what, name, unreachable.format("offline"))) from None
    except (hfe.RepositoryNotFoundError, hfe.GatedRepoError):
        raise ValueError(_err(what, name, "no such local directory or Hugging Face hub model")) from None
    except hfe.EntryNotFoundError:
        raise ValueError(_err(what, name, "the hub model has no config.json")) from None
    except Exception as e:  # DNS failure, timeouts, HTTP errors
        raise ValueError(_err(what, name, unreachable.format(type(e).__name__))) from None
    for fname in _WEIGHT_FILES:
        try:
            path = get(fname)
        except hfe.EntryNotFoundError:  # not in the repo (remote) or not cached (offline)
            continue
        except Exception as e:
            raise ValueError(_err(what, name, f"could not fetch {fname} from the hub ({type(e).__name__})")) from None
        if fname.endswith(".index.json"):
            for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                get(shard)
        break
    try:
        get(VALUE_HEAD_FILE)
    except Exception:  # optional: plain GPT-2 repos have none
        pass
    return root


def resolve(name_or_path, *, what: str | None = None) -> pathlib.Path:
    """A local checkpoint directory for ``name_or_path`` (a directory or a hub id)."""
    name = str(name_or_path)
    p = pathlib.Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise ValueError(_err(what, name, "is a file; pass the checkpoint directory that holds config.json"))
    if _looks_local(name):
        raise FileNotFoundError(_err(what, name, "no such directory"))
    return _hub_dir(name, what)


def read_state_dict(d: pathlib.Path, *, what: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a checkpoint directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    from safetensors.numpy import load_file

    if (d / "model.safetensors").is_file():
        return dict(load_file(d / "model.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        sd = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            sd.update(load_file(d / shard))
        return sd
    if (d / "pytorch_model.bin").is_file():
        try:
            import torch
        except ImportError:
            raise ValueError(_err(what, d, "pytorch_model.bin needs torch to read; install torch or convert "
                                           "the checkpoint to model.safetensors")) from None
        sd = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.detach().to(torch.float32).numpy() for k, v in sd.items()}
    raise ValueError(_err(what, d, "no model.safetensors, model.safetensors.index.json or pytorch_model.bin"))


def load(name_or_path, *, value_head_seed: int = 0, dtype: str = "float32", what: str | None = None):
    """Load a GPT-2 checkpoint -> ``(GPT2Config, params)`` (spec §2.3).

    ``name_or_path``: a local directory (``config.json`` + weights) or a hub id such as ``"gpt2"``
    (downloaded or read from the HF cache; with ``HF_HUB_OFFLINE=1`` only the cache is used).
    The value head comes from ``value_head.safetensors`` (written by ``save``) or TRL's
    ``v_head.summary.*`` keys; if neither exists it is freshly initialised from ``value_head_seed``.
    ``dtype`` sets the compute dtype (params are float32 either way). ``what`` (e.g. ``"--policy"``)
    prefixes error messages.
    """
    d = resolve(name_or_path, what=what)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise ValueError(_err(what, name_or_path, "the directory has no config.json"))
    try:
        cfg = config_from_hf(json.loads(cfg_file.read_text()), dtype=dtype)
    except ValueError as e:
        raise ValueError(_err(what, name_or_path, str(e))) from None
    sd = read_state_dict(d, what=what)
    vh = d / VALUE_HEAD_FILE
    if vh.is_file():
        from safetensors.numpy import load_file

        sd.update(load_file(vh))  # our file wins over any TRL keys
    try:
        params = from_hf_state_dict(cfg, sd, value_head_seed=value_head_seed)
    except ValueError as e:
        raise ValueError(_err(what, name_or_path, str(e))) from None
    return cfg, params


def save(path, cfg: gpt2.GPT2Config, params, tokenizer=None) -> pathlib.Path:
    """Write a transformers-loadable GPT-2 directory (+ ``value_head.safetensors``, + tokenizer).

    ``config.json`` (GPT2LMHeadModel), ``model.safetensors`` (``transformer.``-prefixed float32 keys,
    no tied lm_head), ``value_head.safetensors`` (TRL layout ``v_head.summary.{weight,bias}``) and,
    if ``tokenizer`` is given, its files. Written to a temporary sibling directory and renamed into
    place, so a crash never leaves a half-written checkpoint at ``path``.
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
        # transformers refuses safetensors files without format metadata.
        save_file(to_hf_state_dict(cfg, params), tmp / "model.safetensors", metadata={"format": "pt"})
        save_file(_value_head_to_hf(params["v_head"]), tmp / VALUE_HEAD_FILE, metadata={"format": "pt"})
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
