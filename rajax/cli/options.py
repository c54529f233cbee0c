"""Command-line flags generated from the config dataclasses: every key is a flag, with its type, its
choices, one line of help (the field's comment in rajax/config.py) and the preset's value as default.

    --ppo.kl-stat kept_mean        (also --ppo.kl_stat; the same as --set ppo.kl_stat=kept_mean)

The help shows the values of the preset the command line selects (``--task``, ``--config``, or the run
given to ``--resume``), so ``rajax train --task rtp --help`` shows RTP's values. A few short aliases that
users know from the paper's scripts and TRL stay (``ALIASES``); they are the same keys.

Why not tyro or draccus: both build a parser from a dataclass type, but our defaults come from a
preset chosen on the same command line (two-phase parsing), values must go through the same coercion
as YAML and ``--set`` (so ``2e-5`` and ``null`` mean the same everywhere), and the frozen config must
stay free of CLI annotations. The generator is ~100 lines.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import pathlib
import re
import typing

from rajax import config as config_lib
from rajax import tasks
from rajax.core import plugins, ppo, risk, rollout
from rajax.core.errors import InvalidInput

# Short flags users know. One table for every command (each command takes the ones that do not clash
# with its own flags).
ALIASES = {
    "--alpha": "risk.alpha", "--lr": "ppo.learning_rate", "--batch-size": "train.batch_size",
    "--seed": "train.seed", "--iterations": "train.iterations", "--policy": "model.policy",
    "--ref-policy": "model.ref_policy", "--reward-model": "reward.model", "--tokenizer": "model.tokenizer",
    "--data": "data.path", "--test-path": "data.test_path", "--dtype": "model.dtype", "--risk-n": "risk.n",
    "--risk-rho": "risk.rho", "--risk-M": "risk.M", "--test-size": "eval.test_size",
    "--data-split": "data.split", "--text-column": "data.text_column",
}


def choices() -> dict[str, tuple]:
    """The allowed values of the keys that take one of a few strings."""
    out = {
        "model.dtype": config_lib.DTYPES, "reward.kind": config_lib.REWARD_KINDS,
        "data.source": tuple(tasks.names()), "generation.min_length_mode": rollout.MIN_LENGTH_MODES,
        "ppo.kl_penalty": ppo.KL_PENALTIES, "ppo.risk_stat": risk.EPISODE_STATS, "ppo.kl_stat": ppo.KL_STATS,
        "ppo.risk_measure": tuple(sorted(risk.RISK_MEASURES)), "risk.scheduler": risk.SCHEDULERS,
    }
    if "base_dtype" in {f.name for f in dataclasses.fields(config_lib.ModelConfig)}:
        out["model.base_dtype"] = config_lib.DTYPES
    return out


_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=]+=.*?(?:#\s*(.*))?$")


def _class_lines(cls) -> list[str]:
    """The source lines of a top-level class, read from its file.

    Not ``inspect.getsource``: for a class it parses the whole module with ``ast``, and on CPython
    3.11.7 that once failed in the test suite with "SystemError: AST constructor recursion depth
    mismatch" (a CPython bug of concurrent parsing, with background threads running)."""
    lines = pathlib.Path(inspect.getsourcefile(cls)).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"class {cls.__name__}\b", line))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0].isspace()):
        end += 1
    return lines[start:end]


@functools.cache
def field_help(cls) -> dict[str, str]:
    """``{field: help}`` from the source of a config dataclass: the field's trailing comment, else the
    comment block right above it."""
    out, block = {}, []
    for line in _class_lines(cls):
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("# "))
            continue
        m = _FIELD.match(line)
        if m and not stripped.startswith(("def ", "@", "return")):
            out[m.group(1)] = (m.group(2) or " ".join(block)).strip()
        block = []
    return out


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (tuple, list):
        return f"[{_type_name(args[0]) if args else 'x'},...]"
    if args and type(None) in args:
        return _type_name(next(a for a in args if a is not type(None))) + "|null"
    return getattr(tp, "__name__", str(tp))


def _show(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return str(v)


def keys() -> list[str]:
    """Every config key, ``section.field``."""
    return ["task"] + [f"{s}.{f.name}" for s, cls in config_lib.SECTIONS.items() for f in dataclasses.fields(cls)]


def add_config_flags(parser: argparse.ArgumentParser, cfg, *, aliases: dict[str, str] | None = None) -> None:
    """One flag per config key (dest = the key), defaulting to None (= not given); help shows ``cfg``'s value."""
    aliases = ALIASES if aliases is None else aliases
    by_key: dict[str, list[str]] = {}
    for flag, key in aliases.items():
        by_key.setdefault(key, []).append(flag)
    allowed = choices()
    for section, cls in config_lib.SECTIONS.items():
        doc = (cls.__doc__ or section).strip().splitlines()[0]
        group = parser.add_argument_group(f"{section}", doc)
        helps = field_help(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            flags = [f"--{key}"]
            if "_" in f.name:
                flags.append(f"--{section}.{f.name.replace('_', '-')}")
            flags += by_key.get(key, [])
            value = getattr(getattr(cfg, section), f.name)
            text = helps.get(f.name) or f"the run's {f.name.replace('_', ' ')}"
            c = allowed.get(key)
            metavar = "{" + ",".join(c + ("module:function",) * (key in SPEC_KEYS)) + "}" if c else \
                _type_name(hints[f.name]).upper()
            group.add_argument(*flags, dest=key, default=None, metavar=metavar,
                               help=f"{text} [preset: {_show(value)}]".replace("%", "%%"))


def overrides(args, *, extra: list[str] = ()) -> list[str]:
    """``section.field=value`` strings of every config flag given on the command line (then ``extra``)."""
    out = []
    for key in keys()[1:]:
        v = getattr(args, key, None)
        if v is not None:
            out.append(f"{key}={v}")
    return out + list(extra)


def typed_flag(argv, key: str, aliases: dict[str, str] | None = None) -> str:
    """The flag the user typed for config ``key`` (an alias or a dotted flag), for messages."""
    aliases = ALIASES if aliases is None else aliases
    names = {f"--{key}", f"--{key.replace('_', '-')}"} | {a for a, k in aliases.items() if k == key}
    for tok in argv or ():
        flag = tok.split("=", 1)[0]
        if flag in names:
            return flag
    return f"--{key}"


# Keys that also take a user's function as a module:function spec (rajax.core.plugins), checked when
# the config is built.
SPEC_KEYS = ("ppo.risk_measure",)


def check_choices(over: list[str]) -> None:
    """A one-line error for a flag value outside its choices (the config checks again, with context)."""
    allowed = choices()
    for o in over:
        k, _, v = o.partition("=")
        if k in allowed and v not in allowed[k] and not (k in SPEC_KEYS and plugins.is_spec(v)):
            extra = f" or {plugins.FORMS}" if k in SPEC_KEYS else ""
            raise InvalidInput(f"{k}={v!r} is not valid; choose one of {', '.join(allowed[k])}{extra}")


class _QuietParser(argparse.ArgumentParser):
    """The first pass of two-phase parsing: a flag it cannot read is left to the real parse to report."""

    def error(self, message):
        raise ValueError(message)


def preset_for(argv, *, default_task: str | None = None):
    """The config whose values the help shows: ``--resume DIR``'s saved one, or ``--task`` (default:
    ``default_task``) with ``--config``, without the other flags (they may not parse yet)."""
    pre = _QuietParser(add_help=False)
    pre.add_argument("--task")
    pre.add_argument("--config")
    pre.add_argument("--resume")
    try:
        known, _ = pre.parse_known_args(argv)
        if known.resume:
            return config_lib.load_config(f"{known.resume}/config.yaml", check=False)
        return config_lib.load_config(known.task or default_task or tasks.default_preset(), known.config,
                                      check=False)
    except Exception:  # noqa: BLE001 - a bad preset is reported by the real parse; show the defaults
        return config_lib.Config()
