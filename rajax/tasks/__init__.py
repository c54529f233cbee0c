"""Tasks as plug-ins: a registry keyed by ``data.source``, and the one way a run prepares its task.

Each task is a ``rajax.tasks.base.Task`` in its own module (``imdb``, ``jigsaw``, ``rtp``, ``files``,
``synthetic``). A new task is one new module whose ``Task`` is passed to ``register``, plus a preset
``rajax/configs/<name>.yaml``; nothing else in rajax names it.

    cfg, task = tasks.prepare(cfg)          # fill placeholders, then fail fast on missing paths / no hub
    data = task.load(cfg, tokenizer)        # TaskData: train/test PromptSets, SFT and perplexity texts
"""
from __future__ import annotations

from typing import Sequence

from rajax.core.errors import InvalidInput, train_command
from rajax.io import hub
from rajax.tasks import files, imdb, jigsaw, rtp, synthetic
from rajax.tasks.base import (
    PromptSet,
    RawSplits,
    Task,
    TaskData,
    build,
    build_prompts,
    clean_up_tokenization,
    decode_all,
    encode_all,
    encode_prompts,
    left_pad,
)

_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make ``task`` selectable as ``data.source: <task.name>``."""
    if not task.name:
        raise InvalidInput(f"{type(task).__name__} has no name; set the class attribute `name`")
    _REGISTRY[task.name] = task
    return task


for _t in (imdb.TASK, jigsaw.TASK, rtp.TASK, files.TASK, files.HUB_TASK, synthetic.TASK):
    register(_t)


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(source: str) -> Task:
    """The task registered as ``source`` (a config's ``data.source``)."""
    if source not in _REGISTRY:
        raise InvalidInput(f"data.source={source!r} is not valid; choose one of {', '.join(names())}")
    return _REGISTRY[source]


def offline_hint() -> str:
    """The end of the "hub unreachable" message: which tasks run without it."""
    offline = [n for n, t in sorted(_REGISTRY.items()) if t.offline]
    return f"or run the offline task: {train_command()} --task {' / '.join(offline)}" if offline else ""


def prepare(cfg, *, require: Sequence[str] = ("train",), progress: bool = True, check_hub: bool = True):
    """``(cfg, task)``: the config with the task's placeholders filled in, after a preflight that
    fails within seconds, in one line, on a missing local path or on hub ids while the hub is
    unreachable (``check_hub``)."""
    task = get(cfg.data.source)
    cfg = task.resolve(cfg, progress=progress)
    # Model paths may name another task's assets (e.g. the offline world's policy with data from a file).
    paths = (cfg.model.policy, cfg.model.ref_policy, cfg.model.tokenizer, cfg.reward.model)
    for other in _REGISTRY.values():
        if other is not task and other.placeholder and other.placeholder in paths:
            cfg = other.resolve(cfg, progress=progress)
    if check_hub:
        m, r, d = cfg.model, cfg.reward, cfg.data
        sources = [("--policy", m.policy), ("--ref-policy", m.ref_policy), ("--reward-model", None if r.fn else r.model),
                   ("--tokenizer", m.tokenizer), ("--data", d.path), ("--test-path", d.test_path)]
        hub.preflight(sources, task.hub_needs(cfg, require), hint=offline_hint())
    return cfg, task


def load(cfg, tokenizer, *, require: Sequence[str] = ("train",)) -> TaskData:
    """``get(cfg.data.source).load(...)``: the task's ``TaskData``."""
    return get(cfg.data.source).load(cfg, tokenizer, require=require)


__all__ = ["PromptSet", "RawSplits", "Task", "TaskData", "build", "build_prompts", "clean_up_tokenization",
           "decode_all", "encode_all", "encode_prompts", "get", "left_pad", "load", "names", "offline_hint",
           "prepare", "register"]


def default_preset() -> str:
    """What ``--task`` defaults to: the offline task, which needs no download (see ``offline_hint``)."""
    return next((n for n, t in sorted(_REGISTRY.items()) if t.offline), "rtp")
