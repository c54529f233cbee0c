"""A policy from a training checkpoint, for ``rajax export`` and ``rajax evaluate --policy RUN/checkpoints/STEP``.

A checkpoint step holds the train state (parameters, Adam state, KL controller) and a JSON record
that includes the policy's transformers config (``hf_config``, written by the trainer). Checkpoints
of older runs lack it; the policy's config is then read from the run's ``config.yaml``
(``model.policy``, which must still be reachable).
"""
from __future__ import annotations

import pathlib

import yaml

from rajax.core.errors import InvalidInput, MissingInput
from rajax.core.ppo import with_frozen
from rajax.io import hf, hub
from rajax.io.checkpoint import Checkpointer
from rajax.models import lora


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a step directory of a run (``RUN/checkpoints/<step>``)."""
    p = pathlib.Path(path)
    return p.is_dir() and p.name.isdigit() and p.parent.name == "checkpoints"


def checkpoint_of(source) -> pathlib.Path:
    """The step directory ``source`` names: itself, or a run directory's newest checkpoint."""
    p = pathlib.Path(source)
    if is_checkpoint(p):
        return p
    steps = sorted((q for q in (p / "checkpoints").glob("[0-9]*") if q.name.isdigit()), key=lambda q: int(q.name))
    if not steps:
        raise MissingInput(f"{source}: neither a run directory with checkpoints nor RUN/checkpoints/STEP")
    return steps[-1]


def run_config(step_dir: pathlib.Path) -> dict:
    """The run's ``config.yaml`` (beside ``checkpoints/``) as a dict, or {} when there is none."""
    f = step_dir.parent.parent / "config.yaml"
    return (yaml.safe_load(f.read_text()) or {}) if f.is_file() else {}


def policy_from_checkpoint(step_dir, *, what: str = "--policy"):
    """``(model handle, params)`` of the policy in checkpoint ``step_dir`` (float32, with its value head)."""
    step_dir = pathlib.Path(step_dir)
    if not is_checkpoint(step_dir):
        raise InvalidInput(f"{what} {step_dir}: not a checkpoint step (RUN/checkpoints/<step>)")
    state, meta = Checkpointer(step_dir.parent, log=lambda *_: None).restore_raw(int(step_dir.name))
    raw = meta.get("hf_config")
    if raw is None:  # a checkpoint written before hf_config was recorded
        policy = ((run_config(step_dir).get("model") or {}).get("policy")
                  or (meta.get("config") or {}).get("model", {}).get("policy"))
        if not policy:
            raise InvalidInput(f"{what} {step_dir}: the checkpoint does not say which model it holds")
        raw = hub.read_config(hub.resolve(policy, what=what), what=what, name=policy)
    params = state.get("params")
    if not isinstance(params, dict) or "v_head" not in params:
        raise InvalidInput(f"{what} {step_dir}: the checkpoint holds no full policy parameters")
    cfg = hf.config_from_dict(raw)
    if "lora" in params:  # a LoRA run saves its adapters and value head; the base is model.policy
        return _with_base(step_dir, meta, params, what)
    return cfg, params


def _with_base(step_dir: pathlib.Path, meta: dict, params: dict, what: str):
    """A LoRA checkpoint's adapters over the base weights its run started from (``model.policy``)."""
    m = (meta.get("config") or {}).get("model") or (run_config(step_dir).get("model") or {})
    if not m.get("policy") or not m.get("lora_rank"):
        raise InvalidInput(f"{what} {step_dir}: a LoRA checkpoint whose run config names no base model")
    base_cfg, base = hf.load(m["policy"], what=f"{what} {step_dir} (its base model.policy)")
    spec = lora.LoRA(int(m["lora_rank"]), float(m["lora_alpha"]),
                     tuple(m.get("lora_targets") or ()) or base_cfg.default_lora_targets, float(m.get("lora_dropout") or 0.0))
    return base_cfg.replace(lora=spec), with_frozen(params, base)


def tokenizer_source(step_dir) -> str | None:
    """Where the checkpoint's tokenizer comes from: the run's exported model/, else its config."""
    step_dir = pathlib.Path(step_dir)
    exported = step_dir.parent.parent / "model"
    if (exported / "tokenizer.json").is_file() or (exported / "vocab.json").is_file():
        return str(exported)
    m = run_config(step_dir).get("model") or {}
    return m.get("tokenizer") or m.get("policy")
