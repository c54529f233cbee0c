"""A policy from a training checkpoint, for ``rajax export`` and ``rajax evaluate --policy RUN/checkpoints/STEP``.

A checkpoint step holds the train state (parameters, Adam state, KL controller) and a JSON record
that includes the policy's transformers config (``hf_config``, written by the trainer). Checkpoints
of older runs lack it; the policy's config is then read from the run's ``config.yaml``
(``model.policy``, which must still be reachable).
"""
from __future__ import annotations

import pathlib

import yaml

from rajax.core.errors import CheckpointError, InvalidInput, MissingInput, one_line
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
    if not f.is_file():
        return {}
    try:
        got = yaml.safe_load(f.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{f} is not valid YAML ({one_line(e)[:80]}); restore the run's config.yaml") from None
    return got if isinstance(got, dict) else {}


def newest_readable(step_dir, *, log=None) -> tuple[pathlib.Path, dict, dict]:
    """Checkpoint ``step_dir`` read as saved: ``(step dir, state, meta)``. When it is its run's newest
    step and unreadable, the newest readable older one, with a notice through ``log`` (as ``--resume``
    does; nothing is moved: export and evaluate only read a run). An older step that was asked for by
    name is refused in one line when unreadable."""
    step_dir = pathlib.Path(step_dir)
    ckpt = Checkpointer(step_dir.parent, log=log or (lambda *_: None))
    step = int(step_dir.name)
    if step != ckpt.latest_step():
        try:
            state, meta = ckpt.restore_raw(step)
        except Exception as e:  # noqa: BLE001 - any failure to read a step is a damaged step
            raise CheckpointError(f"{step_dir}: the checkpoint is unreadable ({type(e).__name__}: "
                                  f"{one_line(e)[:100]}); choose another step") from None
        return step_dir, state, meta
    got, state, meta = ckpt.restore_raw_newest(step)
    return step_dir.parent / str(got), state, meta


def policy_from_checkpoint(step_dir, *, what: str = "--policy", log=None, with_step: bool = False):
    """``(model handle, params)`` of the policy in checkpoint ``step_dir`` (float32, with its value head);
    ``with_step``: also the step directory actually read (``newest_readable``)."""
    step_dir = pathlib.Path(step_dir)
    if not is_checkpoint(step_dir):
        raise InvalidInput(f"{what} {step_dir}: not a checkpoint step (RUN/checkpoints/<step>)")
    step_dir, state, meta = newest_readable(step_dir, log=log)
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise InvalidInput(f"{what} {step_dir}: not a rajax training checkpoint")
    got = _policy(step_dir, state, meta, what)
    return (*got, step_dir) if with_step else got


def _policy(step_dir, state, meta, what):
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
