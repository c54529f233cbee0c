"""Run configuration: a tree of frozen dataclasses, loaded from a task preset + user YAML + overrides.

References are to docs/paper.md: §2 (PPO hyper-parameters actually used),
§3 (per-task values), §1.3 (soft-risk α / n / ρ / M), §4.1-4.2 (evaluation test sets, tails,
perplexity texts). The task presets ship inside the package as ``rajax/configs/<task>.yaml``.

Resolution order (later wins)::

    dataclass defaults  <  rajax/configs/<task>.yaml (or a YAML path)  <  user YAML  <  dotted overrides

Overrides are ``"section.field=value"`` strings (``ppo.learning_rate=2e-5``, ``risk.M=null``,
``eval.cvar_alphas=[0.1,0.2]``) or a dict ``{"ppo.learning_rate": 2e-5}``. Every value, from YAML or
from a string, is coerced to the field's declared type, so ``"2e-5"`` (which PyYAML reads as a
string) becomes a float, ``"null"`` becomes ``None`` and ``"true"`` becomes ``True``. Unknown keys
and out-of-range values raise a one-line ``ValueError`` that says what to fix.

The config is frozen and hashable (tuples, not lists), so parts of it can be static jit arguments.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import pathlib
import types
import typing
from typing import Any, Mapping

import yaml

from rajax.core import plugins
from rajax.core import ppo as ppo_lib
from rajax.core import risk as risk_lib
from rajax.core.errors import InvalidInput, MissingInput, one_line
from rajax.core.ppo import PPOConfig
from rajax.core.rollout import MIN_LENGTH_MODES, SampleSettings
from rajax.io.hf import VALUE_HEAD_MODES

# Enumerations checked by validate(); the PPO, risk and sampling ones come from rajax.core. The
# data sources are the registered tasks (rajax.tasks checks data.source).
DTYPES = ("float32", "bfloat16")
REWARD_KINDS = ("toxic", "positive")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Policy / reference / tokenizer sources (docs/paper.md §2.3: policy and reference = the task's SFT model)."""

    policy: str = "gpt2"  # hub id or local dir; the paper starts from the task's SFT checkpoint
    ref_policy: str | None = None  # None = same as policy
    tokenizer: str | None = None  # None = the policy's directory / id
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    remat: bool = False  # rematerialise each block in the backward pass (memory for compute)
    # The PPO value head: auto | seed | checkpoint. auto loads the policy's stored head when it was
    # trained (a PPO export or TRL checkpoint) and otherwise draws it from train.seed, as the
    # original does (an SFT model has none). A run's saved config records the choice made.
    value_head: str = "auto"
    # LoRA (docs/models.md): with a rank, only the adapters on `lora_targets` and the value head
    # train; the base weights are frozen and stored in `base_dtype`.
    lora_rank: int = 0  # LoRA rank r; 0 = no LoRA (every parameter trains)
    lora_alpha: float = 16.0  # LoRA scale numerator: adapters add (alpha / r) * x @ A @ B
    # Projections that get adapters; empty = the family's PEFT default: q_proj, v_proj (Llama, Qwen2,
    # GPT-J) or c_attn (GPT-2; its others are attn.c_proj, c_fc, mlp.c_proj). The run's config.yaml
    # records the targets used.
    lora_targets: tuple[str, ...] = ()
    lora_dropout: float = 0.0  # dropout on the adapter input, only when sampling with dropout
    base_dtype: str = "float32"  # storage of the frozen LoRA base weights: float32 | bfloat16


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The frozen reward classifier (docs/paper.md §3: raw logits; toxic = -logit('toxic'), positive = +logit('POSITIVE'))."""

    model: str = "unitary/toxic-bert"  # the classifier: hub id or local dir
    kind: str = "toxic"  # toxic | positive
    label: str | None = None  # override the label name
    index: int | None = None  # override the label index
    sign: int | None = None  # override the sign (+1 / -1)
    max_length: int | None = None  # classifier truncation (None = the tokenizer's maximum)
    # Decode prompts (and responses) with transformers-4's `clean_up_tokenization` (" ." -> ".",
    # " 's" -> "'s", ...), which the paper's transformers applied by default and v5 no longer does.
    # Checked: with it, 99.09% of the Jigsaw-Gen 8-token prompts are prefixes of their comment,
    # the 99.1% reported for the paper's prompts (docs/paper.md §6.1); without it 99.81%.
    clean_up_spaces: bool = False
    # Score the response text alone instead of prompt + response (the GPT-J scripts, quirk #20).
    response_only: bool = False
    # A Python reward instead of the classifier: module:function or path/to/file.py:function naming a
    # function (list of texts) -> one number per text, or an object with score_texts (rajax.rewards.Reward).
    fn: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the prompts come from (docs/paper.md §3; see docs/tasks.md)."""

    source: str = "rtp"  # a registered task (rajax.tasks.names()): imdb, jigsaw, rtp, file, ...
    path: str | None = None  # local file/dir or hub dataset id (jigsaw: the Kaggle CSV dir)
    test_path: str | None = None  # local test file (jigsaw: the jigsaw_gen_test.csv format)
    text_column: str | None = None  # for source=file (None = "text")
    label_column: str | None = None  # for source=file (optional)
    revision: str | None = None  # hub dataset revision
    split: str = "train"  # source=file/hub with a hub dataset id: the split of the training prompts
    test_split: str | None = None  # ... and of the test prompts (None: no test set from the hub)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Rollout sampling (docs/paper.md §3: top_k 0, top_p 1, T=1; quirk #12 for min_length)."""

    prompt_tokens: int = 32  # P: prompt = decode(encode(text)[:P])
    max_new_tokens: int = 32  # response length N (responses stop early at EOS)
    min_length: int = 32  # HF's *total* min_length, see min_length_mode
    min_length_mode: str = "trl"  # trl: max(0, min_length - longest prompt of each group of 4) | new_tokens
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus sampling mass (1.0 = off)
    temperature: float = 1.0  # sampling temperature
    rollout_dropout: bool = False  # quirk #10: sample with dropout from iteration 1 on
    # quirk #20: the response is the last max_new_tokens tokens of prompt + response, as the GPT-J
    # scripts' `generate(...)[-48:]` (a response that stops early takes in the prompt's tail).
    gptj_slice: bool = False

    def sample_settings(self, eos_id: int, pad_id: int | None) -> SampleSettings:
        """The sampler's settings for a tokenizer's EOS and pad ids."""
        return SampleSettings(max_new_tokens=self.max_new_tokens, eos_id=int(eos_id),
                              pad_id=None if pad_id is None else int(pad_id), min_length=self.min_length,
                              min_length_mode=self.min_length_mode, top_k=self.top_k, top_p=self.top_p,
                              temperature=self.temperature, tail_slice=self.gptj_slice)


@dataclasses.dataclass(frozen=True)
class RiskConfig:
    """Soft-risk schedule (docs/paper.md §1.3). alpha = 1.0 is the RLHF baseline (no risk mask)."""

    alpha: float = 0.2  # risk level: train on the ceil(alpha*B) lowest returns (1.0 = RLHF)
    n: int = 30  # warm start: the whole batch while iteration <= n
    rho: float = 0.95  # alpha is reached at iteration ceil(rho*M)
    M: int | None = None  # None = the number of iterations of the run
    scheduler: str = "new"  # new | old


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """TRL's adaptive KL controller (docs/paper.md §1.6, §2.1)."""

    adaptive: bool = True  # TRL's adaptive controller (false: a fixed coefficient)
    init_coef: float = 0.2  # beta at iteration 0
    target: float = 6.0  # the KL the controller steers to
    horizon: int = 10000  # the controller's horizon (K_beta = batch_size / horizon)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The PPO loop (docs/paper.md §1.2, quirk #15: one pass, drop_last)."""

    batch_size: int = 128  # episodes per iteration, B
    seed: int = 4  # data order, value-head init, sampling and PPO shuffles
    iterations: int | None = None  # None = one pass over the train prompts, N // batch_size
    log_every: int = 1  # without a terminal: print a progress line every N iterations
    sample_every: int = 50  # write sample generations every N iterations (0 = never)
    checkpoint_every: int = 50  # 0 = only at the end
    keep_checkpoints: int = 3  # the newest N checkpoints are kept
    eval_at_end: bool = True  # evaluate the trained policy at the end of the run


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation (docs/paper.md §4.1 test sets and tails, §4.2 perplexity texts)."""

    tail_threshold: float = 5.0  # tail = prompts whose prompt score is below this
    tail_inclusive: bool = False  # True: prompt_score <= threshold; False: <
    test_size: int | None = None  # None = the whole test set
    cvar_alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)  # report CVaR of the rewards at these levels
    ppl_num_texts: int | None = 1000  # None = all perplexity texts of the task
    ppl_max_chars: int | None = 1000  # each perplexity text is cut to this many characters
    batch_size: int = 128  # prompts per generation call
    # Sampled continuations per test prompt (the paper: 1). More average out the sampling noise of
    # every metric; the tail, the CVaRs and R̄ are then taken over all prompt x sample rows.
    samples_per_prompt: int = 1


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """How the model sits on the device mesh (the batch is always split over it, docs/architecture.md)."""

    # FSDP-style: parameters and optimizer state split over the mesh's devices (rajax.core.parallel
    # .shard_params) for models that do not fit replicated. The CVaR quantile stays global either way.
    shard_params: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run. Sections are frozen dataclasses; ``ppo`` is ``rajax.ppo.PPOConfig``."""

    task: str = "rtp"
    model: ModelConfig = ModelConfig()
    reward: RewardConfig = RewardConfig()
    data: DataConfig = DataConfig()
    generation: GenerationConfig = GenerationConfig()
    ppo: PPOConfig = PPOConfig()
    risk: RiskConfig = RiskConfig()
    kl: KLConfig = KLConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    parallel: ParallelConfig = ParallelConfig()


# Section name -> dataclass (``from __future__ import annotations`` makes ``Field.type`` a string).
SECTIONS: dict[str, type] = {n: t for n, t in typing.get_type_hints(Config).items() if n != "task"}


# ------------------------------------------------------------------------------------------------
# Coercion of YAML / string values to the declared field types
# ------------------------------------------------------------------------------------------------
# The largest integer any setting takes (seeds included): what numpy's and XLA's int64 hold.
INT_LIMIT = 2**63 - 1
SEED_LIMIT = 2**32 - 1  # seeds: numpy's legacy range, which every PRNG rajax uses accepts


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently, so ``risk.alpha: 0.4`` above a second ``alpha:`` would be dropped without a word)."""


def _unique_mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, f"unhashable key {key!r}", key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {seen[key] + 1} and line {key_node.start_mark.line + 1}); "
                            "keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def safe_load(text: str):
    """``yaml.safe_load`` that refuses duplicate keys (``yaml.YAMLError`` for any malformed text)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_yaml_value(text: str, key: str):
    """A ``--set`` value such as ``[0.1,0.2]`` read as YAML; one line when it is not valid YAML."""
    try:
        return safe_load(text)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as e:
        raise InvalidInput(f"{key}: {text!r} is not a valid value ({one_line(e)[:80]}); "
                           "a list is written [0.1,0.2]") from None


_NULLS = ("null", "none", "~", "")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """``value`` (from YAML or an override string) as type ``tp``; one-line ValueError otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
            if type(None) in args:
                return None
        if value is None:
            raise InvalidInput(f"{key}: null is not allowed; give a {_type_name(tp)}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise InvalidInput(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = parse_yaml_value(value, key) if value.strip() else []
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InvalidInput(f"{key}: expected a list, got {value!r}")
        elem = args[0] if args else Any
        return tuple(_coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value))
    if value is None:
        raise InvalidInput(f"{key}: null is not allowed; give a {_type_name(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise InvalidInput(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise InvalidInput(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, str):
            s = value.strip()
            try:
                value = int(s)
            except ValueError:
                try:
                    value = float(s)
                except ValueError:
                    raise InvalidInput(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            lo, hi = (0, SEED_LIMIT) if key.endswith(".seed") else (-INT_LIMIT, INT_LIMIT)
            if not lo <= value <= hi:  # no setting needs more; numpy and XLA take int64 at most
                raise InvalidInput(f"{key}: {value} is out of range; give an integer in [{lo}, {hi}]")
            return value
        raise InvalidInput(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise InvalidInput(f"{key}: expected a number, got {value!r}")
        try:
            if isinstance(value, (int, float)):
                value = float(value)
            elif isinstance(value, str):
                value = float(value.strip())
        except (ValueError, OverflowError):
            raise InvalidInput(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, float):
            if not math.isfinite(value):  # no setting takes inf or nan: they would reach the run as NaNs
                raise InvalidInput(f"{key}: {value} is not a finite number; give a finite value")
            return value
        raise InvalidInput(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            if "\0" in value:
                raise InvalidInput(f"{key}: {value!r} holds a NUL character; give a plain name or path")
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a revision hash YAML read as a number
        raise InvalidInput(f"{key}: expected a string, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------------
# dict <-> Config
# ------------------------------------------------------------------------------------------------
def _build_section(cls, d: Mapping, section: str):
    if not isinstance(d, Mapping):
        raise InvalidInput(f"config section '{section}' must be a mapping, got {d!r}")
    ftypes = _field_types(cls)
    for k in d:
        if k not in ftypes:
            raise InvalidInput(f"unknown config key '{section}.{k}'; valid keys in '{section}': "
                             f"{', '.join(ftypes)}")
    kw = {k: _coerce(v, ftypes[k], f"{section}.{k}") for k, v in d.items()}
    try:
        return cls(**kw)
    except ValueError as e:  # PPOConfig.__post_init__ checks its own values
        raise InvalidInput(f"{section}: {str(e).splitlines()[0]}") from None


def from_dict(d: Mapping | None) -> Config:
    """A ``Config`` from a nested mapping (e.g. a YAML file); missing keys take the defaults."""
    d = dict(d or {})
    valid = ["task", *SECTIONS]
    for k in d:
        if k not in valid:
            raise InvalidInput(f"unknown config section '{k}'; valid sections: {', '.join(valid)}")
    kw = {}
    if "task" in d:
        kw["task"] = _coerce(d["task"], str, "task")
    for name, cls in SECTIONS.items():
        if name in d and d[name] is not None:
            kw[name] = _build_section(cls, d[name], name)
    return Config(**kw)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) of a ``Config``: what ``dump_yaml`` writes."""

    def conv(x):
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (tuple, list)):
            return [conv(v) for v in x]
        return x

    return conv(cfg)


def dump_yaml(cfg: Config, path=None) -> str:
    """The resolved config as YAML text; also written to ``path`` when given (saved with every run)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return text


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def preset_dir():
    """The presets shipped inside the package (``rajax/configs``), as an ``importlib.resources``
    traversable: it works from a source checkout, an installed wheel or a zip."""
    return importlib.resources.files("rajax") / "configs"


def list_presets() -> list[str]:
    d = preset_dir()
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml")) if d.is_dir() else []


def _preset_text(name: str) -> str | None:
    if not name or name.startswith(".") or not name.replace("_", "").replace("-", "").isalnum():
        return None  # a preset is a plain name; anything else is not one
    f = preset_dir() / f"{name}.yaml"
    try:
        return f.read_text() if f.is_file() else None
    except OSError:  # a name too long for the file system is no preset either
        return None


def _parse_yaml(text: str, what: str) -> dict:
    try:
        d = safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InvalidInput(f"{what} is not valid YAML{where}: {problem}; fix the file") from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a timestamp or number PyYAML cannot build
        raise InvalidInput(f"{what} is not valid YAML: {one_line(e)[:100]}; fix the file") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise InvalidInput(f"{what} must hold a mapping of config sections, got {type(d).__name__}")
    return d


def _read_yaml(path, what: str) -> dict:
    p = pathlib.Path(path).expanduser()
    try:
        if not p.is_file():
            raise MissingInput(f"{what} {str(path)!r}: no such file")
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start}); give a YAML file") from None
    except OSError as e:
        raise MissingInput(f"{what} {str(path)!r}: cannot read it ({e.strerror or one_line(e)})") from None
    return _parse_yaml(text, f"{what} {str(path)!r}")


def _merge(base: dict, extra: Mapping) -> dict:
    """Deep merge of nested mappings: ``extra`` wins; a section given as a mapping merges field by field."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _override_items(overrides) -> list[tuple[str, Any]]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    items = []
    for o in overrides:
        if not isinstance(o, str) or "=" not in o:
            raise InvalidInput(f"override {o!r} must look like section.key=value (e.g. ppo.learning_rate=2e-5)")
        k, v = o.split("=", 1)
        items.append((k.strip(), v))
    return items


def apply_overrides(d: dict, overrides) -> dict:
    """``d`` (a nested config mapping) with dotted overrides applied; unknown keys raise."""
    out = _merge({}, d)
    for key, value in _override_items(overrides):
        parts = key.split(".")
        if parts[0] == "task" and len(parts) == 1:
            out["task"] = value
            continue
        if parts[0] not in SECTIONS:
            raise InvalidInput(f"unknown config section '{parts[0]}' in override {key!r}; valid sections: "
                             f"task, {', '.join(SECTIONS)}")
        if len(parts) == 1 and isinstance(value, Mapping):
            out[parts[0]] = _merge(dict(out.get(parts[0]) or {}), value)
            continue
        if len(parts) != 2:
            raise InvalidInput(f"override key {key!r} must be section.field (e.g. ppo.learning_rate)")
        section, field = parts
        valid = _field_types(SECTIONS[section])
        if field not in valid:
            raise InvalidInput(f"unknown config key '{key}'; valid keys in '{section}': {', '.join(valid)}")
        out.setdefault(section, {})
        out[section] = dict(out[section] or {})
        out[section][field] = value
    return out


def load_config(task_or_path, user_yaml=None, overrides=(), *, check: bool = True) -> Config:
    """Resolve a run config: preset (task name, YAML path, or a ``Config``) < user YAML < overrides.

    ``task_or_path``: a preset name (``rajax/configs/<name>.yaml``, see ``list_presets()``), a path to
    a YAML file, or an existing ``Config``. ``overrides``: ``["ppo.learning_rate=2e-5", ...]`` or a
    dict with dotted keys. Validates with ``validate(cfg)`` unless ``check=False`` (the trainer
    validates again with the real device count).
    """
    if isinstance(task_or_path, Config):
        base = to_dict(task_or_path)
    else:
        name = str(task_or_path)
        if "\0" in name:
            raise InvalidInput(f"--task {name!r} holds a NUL character; give a task name or a YAML path")
        p = pathlib.Path(name).expanduser()
        try:
            is_file = p.is_file()
        except OSError:  # e.g. a name too long for the file system: not a file, so a task name
            is_file = False
        if name.endswith((".yaml", ".yml")) or is_file or "/" in name:
            base = _read_yaml(p, "config file")
        else:
            text = _preset_text(name)
            if text is None:
                raise InvalidInput(f"unknown task {name!r}; choose one of {', '.join(list_presets()) or '(none found)'} "
                                   "or pass a YAML path")
            base = _parse_yaml(text, f"preset {name!r}")
    if user_yaml:
        base = _merge(base, _read_yaml(user_yaml, "--config"))
    base = apply_overrides(base, overrides)
    cfg = from_dict(base)
    if check:
        validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def _choice(value, choices, key):
    if value not in choices:
        raise InvalidInput(f"{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def _check(ok: bool, msg: str):
    if not ok:
        raise InvalidInput(msg)


def validate(cfg: Config, num_devices: int = 1) -> Config:
    """Range and enum checks; one-line ``ValueError`` naming the key and the fix. Returns ``cfg``.

    ``num_devices``: the data-parallel device count; the batch sizes must be multiples of it.
    """
    _check(isinstance(cfg.task, str) and bool(cfg.task.strip()), "task must be a non-empty name")
    m, r, d, g, p, rk, k, t, e = (cfg.model, cfg.reward, cfg.data, cfg.generation, cfg.ppo, cfg.risk,
                                  cfg.kl, cfg.train, cfg.eval)
    _check(bool(m.policy), "model.policy is empty; pass --policy (a hub id or a local checkpoint dir)")
    _choice(m.dtype, DTYPES, "model.dtype")
    _choice(m.base_dtype, DTYPES, "model.base_dtype")
    _choice(m.value_head, VALUE_HEAD_MODES, "model.value_head")
    _check(m.lora_rank >= 0, f"model.lora_rank={m.lora_rank} must be >= 0 (0 = no LoRA)")
    if m.lora_rank:
        _check(m.lora_alpha > 0, f"model.lora_alpha={m.lora_alpha} must be > 0")
        _check(0.0 <= m.lora_dropout < 1.0, f"model.lora_dropout={m.lora_dropout} must be in [0, 1)")
    else:
        _check(m.base_dtype == "float32", "model.base_dtype applies to LoRA base weights only; set model.lora_rank")
    _check(bool(r.model) or bool(r.fn), "reward.model is empty; pass --reward-model (or a Python reward: reward.fn)")
    _check(r.fn is None or plugins.is_spec(r.fn), f"reward.fn={r.fn!r}: expected {plugins.FORMS}")
    _choice(r.kind, REWARD_KINDS, "reward.kind")
    _check(r.sign in (None, 1, -1), f"reward.sign={r.sign} must be 1, -1 or null")
    _check(r.index is None or r.index >= 0, f"reward.index={r.index} must be >= 0 or null")
    _check(r.max_length is None or r.max_length >= 1, f"reward.max_length={r.max_length} must be >= 1 or null")
    _check(isinstance(d.source, str) and bool(d.source), "data.source is empty; name a task (e.g. rtp)")
    _check(g.prompt_tokens >= 1, f"generation.prompt_tokens={g.prompt_tokens} must be >= 1")
    _check(g.max_new_tokens >= 1, f"generation.max_new_tokens={g.max_new_tokens} must be >= 1")
    _check(g.min_length >= 0, f"generation.min_length={g.min_length} must be >= 0")
    _choice(g.min_length_mode, MIN_LENGTH_MODES, "generation.min_length_mode")
    _check(g.top_k >= 0, f"generation.top_k={g.top_k} must be >= 0 (0 = off)")
    _check(0.0 < g.top_p <= 1.0, f"generation.top_p={g.top_p} must be in (0, 1]")
    _check(g.temperature > 0, f"generation.temperature={g.temperature} must be > 0")
    # ppo (PPOConfig checks its enums and basic signs itself; repeat them here for direct callers)
    _choice(p.kl_penalty, ppo_lib.KL_PENALTIES, "ppo.kl_penalty")
    _choice(p.risk_stat, risk_lib.EPISODE_STATS, "ppo.risk_stat")
    _choice(p.kl_stat, ppo_lib.KL_STATS, "ppo.kl_stat")
    _check(p.learning_rate > 0, f"ppo.learning_rate={p.learning_rate} must be > 0")
    _check(p.ppo_epochs >= 1, f"ppo.ppo_epochs={p.ppo_epochs} must be >= 1")
    _check(p.mini_batch_size >= 1, f"ppo.mini_batch_size={p.mini_batch_size} must be >= 1")
    _check(0.0 <= p.gamma <= 1.0, f"ppo.gamma={p.gamma} must be in [0, 1]")
    _check(0.0 <= p.lam <= 1.0, f"ppo.lam={p.lam} must be in [0, 1]")
    _check(p.cliprange > 0 and p.cliprange_value > 0, "ppo.cliprange and ppo.cliprange_value must be > 0")
    _check(p.vf_coef >= 0, f"ppo.vf_coef={p.vf_coef} must be >= 0")
    _check(p.ratio_threshold > 0, f"ppo.ratio_threshold={p.ratio_threshold} must be > 0")
    _check(p.max_grad_norm is None or p.max_grad_norm > 0, f"ppo.max_grad_norm={p.max_grad_norm} must be > 0 or null")
    _check(0.0 <= p.adam_b1 < 1.0 and 0.0 <= p.adam_b2 < 1.0, "ppo.adam_b1 and ppo.adam_b2 must be in [0, 1)")
    _check(p.adam_eps > 0, f"ppo.adam_eps={p.adam_eps} must be > 0")
    # risk (docs/paper.md §1.3)
    _check(0.0 < rk.alpha <= 1.0, f"risk.alpha={rk.alpha} must be in (0, 1] (1.0 = the RLHF baseline)")
    _check(0.0 < rk.rho <= 1.0, f"risk.rho={rk.rho} must be in (0, 1]")
    _check(rk.n >= 0, f"risk.n={rk.n} must be >= 0")
    _check(rk.M is None or rk.M >= 1, f"risk.M={rk.M} must be >= 1 or null (= the run's iterations)")
    _choice(rk.scheduler, risk_lib.SCHEDULERS, "risk.scheduler")
    # kl
    _check(k.init_coef >= 0, f"kl.init_coef={k.init_coef} must be >= 0")
    _check(k.target > 0, f"kl.target={k.target} must be > 0")
    _check(k.horizon > 0, f"kl.horizon={k.horizon} must be > 0")
    # train
    _check(num_devices >= 1, f"num_devices={num_devices} must be >= 1")
    _check(0 <= t.seed <= SEED_LIMIT, f"train.seed={t.seed} must be an integer in [0, {SEED_LIMIT}]")
    _check(t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1")
    _check(t.batch_size % num_devices == 0,
           f"train.batch_size={t.batch_size} must be a multiple of the {num_devices} devices")
    _check(t.batch_size % p.mini_batch_size == 0,
           f"ppo.mini_batch_size={p.mini_batch_size} must divide train.batch_size={t.batch_size}")
    _check(p.mini_batch_size % num_devices == 0,
           f"ppo.mini_batch_size={p.mini_batch_size} must be a multiple of the {num_devices} devices")
    _check(t.iterations is None or t.iterations >= 1, f"train.iterations={t.iterations} must be >= 1 or null")
    _check(t.log_every >= 1, f"train.log_every={t.log_every} must be >= 1")
    _check(t.sample_every >= 0, f"train.sample_every={t.sample_every} must be >= 0 (0 = never)")
    _check(t.checkpoint_every >= 0, f"train.checkpoint_every={t.checkpoint_every} must be >= 0")
    _check(t.keep_checkpoints >= 1, f"train.keep_checkpoints={t.keep_checkpoints} must be >= 1")
    # eval
    _check(math.isfinite(e.tail_threshold), f"eval.tail_threshold={e.tail_threshold} must be finite")
    _check(e.test_size is None or e.test_size >= 1, f"eval.test_size={e.test_size} must be >= 1 or null")
    for a in e.cvar_alphas:
        _check(0.0 < a <= 1.0, f"eval.cvar_alphas has {a}; each must be in (0, 1]")
    _check(e.ppl_num_texts is None or e.ppl_num_texts >= 1,
           f"eval.ppl_num_texts={e.ppl_num_texts} must be >= 1 or null (all texts)")
    _check(e.ppl_max_chars is None or e.ppl_max_chars >= 1, f"eval.ppl_max_chars={e.ppl_max_chars} must be >= 1")
    _check(e.batch_size >= 1, f"eval.batch_size={e.batch_size} must be >= 1")
    _check(e.samples_per_prompt >= 1, f"eval.samples_per_prompt={e.samples_per_prompt} must be >= 1")
    _check(e.batch_size % num_devices == 0,
           f"eval.batch_size={e.batch_size} must be a multiple of the {num_devices} devices")
    return cfg


__all__ = [
    "Config", "ModelConfig", "RewardConfig", "DataConfig", "GenerationConfig", "PPOConfig", "RiskConfig",
    "KLConfig", "TrainConfig", "EvalConfig", "ParallelConfig", "load_config", "validate", "from_dict", "to_dict", "dump_yaml",
    "apply_overrides", "preset_dir", "list_presets",
]
