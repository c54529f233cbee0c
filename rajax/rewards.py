"""Reward functions: a frozen text classifier (or any Python function) scoring prompt + response.

docs/paper.md §3: the original code calls a transformers ``pipeline`` with ``function_to_apply="none"``, so a
reward is a **raw logit** of one label, and the scored text is ``query + response`` where the response
is decoded **with** special tokens (quirk #13: an EOS-terminated response ends in "<|endoftext|>").

* IMDB-Gen:        ``lvwerra/distilbert-imdb``, reward = +logit("POSITIVE")   (``distilbert_imdb``)
* Jigsaw/RTP-Gen:  ``unitary/toxic-bert``,      reward = −logit("toxic")      (``toxic_bert``)

Both kinds of reward implement the ``Reward`` protocol: ``score_texts(texts)`` and
``__call__(prompts, responses)``, returning float32 numpy arrays.

Shapes are bucketed so the jitted classifier compiles once per (rows, bucket) pair and never again
during training: every chunk of texts is right-padded to the smallest length bucket that fits its
longest text and to a fixed row count.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Protocol, Sequence, runtime_checkable

import jax
import numpy as np

from rajax.core import plugins
from rajax.core.errors import InvalidInput
from rajax.io.hf_bert import load_classifier
from rajax.models import bert


@runtime_checkable
class Reward(Protocol):
    """Anything that scores texts: ``RewardModel`` and ``PythonReward`` both satisfy it."""

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 score per text."""
        ...

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Scores of ``prompt + response`` (string concatenation, as the original code)."""
        ...


@functools.lru_cache(maxsize=None)
def _classifier_fn(cfg: bert.BertConfig):
    """One jitted classifier per config, shared by every RewardModel of that shape (no recompiles
    when the same reward model is loaded twice, e.g. for training and evaluation)."""
    return jax.jit(functools.partial(bert.apply, cfg))


# Length buckets: steps of 8 tokens up to 128, then 32 up to 256, then 64. The classifier's time is
# linear in the padded width (bench/block.py: BERT-base at width 80 takes 1.25x its time at 64), so
# a step of 8 wastes at most 7 tokens at the RL tasks' lengths (prompt + response ~ 40-130 BERT
# tokens), where powers of two padded e.g. 67 tokens to 128, 1.6x the work (bench/NOTES.md, issue 16).
# At most 24 programs, each compiled once per run, when first needed.
BUCKETS = (*range(8, 129, 8), 160, 192, 224, 256, 320, 384, 448, 512)


def _concat(prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
    if len(prompts) != len(responses):
        raise InvalidInput(f"got {len(prompts)} prompts but {len(responses)} responses; they must pair up")
    return [p + r for p, r in zip(prompts, responses)]


class RewardModel:
    """A BERT/DistilBERT classifier as a reward: ``sign * logit[index]`` of prompt + response.

    Build it with ``load_reward_model`` (or the presets ``toxic_bert``/``distilbert_imdb``).
    Attributes: ``cfg``, ``params`` (on device), ``labels``, ``index``, ``label``, ``sign``,
    ``tokenizer``, ``max_length`` (truncation length), ``buckets``, ``batch_size``, and ``fn``, the
    jitted ``(params, ids [R, L], mask [R, L]) -> logits [R, num_labels]`` (shared by all models
    with the same ``cfg``).
    """

    def __init__(self, cfg: bert.BertConfig, params, labels: list[str], tokenizer, *, index: int,
                 sign: float = 1.0, max_length: int | None = None,
                 buckets: Sequence[int] = BUCKETS, batch_size: int | None = None):
        if sign not in (1, -1, 1.0, -1.0):
            raise InvalidInput(f"sign must be +1 or -1, got {sign!r}")
        if not 0 <= index < cfg.num_labels:
            raise InvalidInput(f"label index {index} out of range for labels {labels}")
        if batch_size is not None and batch_size < 1:
            raise InvalidInput(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.cfg, self.labels, self.tokenizer = cfg, list(labels), tokenizer
        self.index, self.label, self.sign = int(index), labels[index], float(sign)
        # Truncate like `pipeline(..., truncation=True)`: at the tokenizer's model_max_length, which
        # unconfigured tokenizers leave at ~1e30, so cap it by the position table.
        limit = min(int(getattr(tokenizer, "model_max_length", cfg.max_position) or cfg.max_position),
                    cfg.max_position)
        if max_length is not None:
            if max_length < 2:
                raise InvalidInput(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
            limit = min(limit, int(max_length))
        self.max_length = limit
        bs = sorted({int(b) for b in buckets if 0 < int(b) < limit})
        self.buckets = tuple(bs + [limit])
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.params = jax.device_put(params)
        self.fn = _classifier_fn(cfg)

    # ---------------------------------------------------------------------------------- internals

    def _rows(self, n: int) -> int:
        """Row count of one compiled chunk: ``batch_size``, else the next power of two >= n (min 8)."""
        if self.batch_size is not None:
            return self.batch_size
        return max(8, 1 << max(0, math.ceil(math.log2(max(n, 1)))))

    def encode(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Tokenize and pad into chunks: ``[(ids [R, L], mask [R, L], n_real_rows), ...]``.

        L is the smallest bucket that holds the chunk's longest (truncated) text; R is fixed
        (``batch_size`` or the next power of two of the whole call), padding rows are all-[PAD].
        """
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise InvalidInput("reward texts must be strings (decode token ids before scoring)")
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        rows = self._rows(len(texts))
        out = []
        for s in range(0, len(texts), rows):
            chunk = enc[s:s + rows]
            longest = max(len(x) for x in chunk)
            width = next(b for b in self.buckets if b >= longest)
            ids = np.full((rows, width), self.pad_id, np.int32)
            mask = np.zeros((rows, width), np.int32)
            mask[len(chunk):, 0] = 1  # padding rows attend to one token, so they stay finite
            for i, x in enumerate(chunk):
                ids[i, :len(x)] = x
                mask[i, :len(x)] = 1
            out.append((ids, mask, len(chunk)))
        return out

    # ------------------------------------------------------------------------------------ public

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """All raw label logits [n, num_labels] (float32), in ``labels`` order."""
        if len(texts) == 0:
            return np.zeros((0, self.cfg.num_labels), np.float32)
        outs = [np.asarray(self.fn(self.params, ids, mask))[:n] for ids, mask, n in self.encode(texts)]
        return np.concatenate(outs).astype(np.float32)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``sign * logit[label]`` per text, float32 [n]."""
        return (self.sign * self.logits(texts)[:, self.index]).astype(np.float32)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Reward of each ``prompt + response`` (the original ``batch["query"][i] + batch["response"][i]``)."""
        return self.score_texts(_concat(prompts, responses))

    def __repr__(self):
        return (f"RewardModel({self.cfg.arch}, label={self.label!r} (index {self.index}), sign={self.sign:+g}, "
                f"max_length={self.max_length}, buckets={self.buckets})")


def _label_index(labels: list[str], label: str | None, index: int | None) -> int:
    if index is not None:
        if not 0 <= int(index) < len(labels):
            raise InvalidInput(f"index {index} out of range: the checkpoint's labels are {labels}")
        return int(index)
    if label is None:
        if len(labels) == 1:
            return 0
        raise InvalidInput(f"choose a label (label=... or index=...): the checkpoint's labels are {labels}")
    hits = [i for i, l in enumerate(labels) if l.lower() == str(label).lower()]
    if not hits:
        raise InvalidInput(f"label {label!r} is not one of the checkpoint's labels {labels}")
    return hits[0]


def load_reward_model(name_or_path: str, *, label: str | None = None, index: int | None = None,
                      sign: int = 1, max_length: int | None = None,
                      buckets: Sequence[int] = BUCKETS, batch_size: int | None = None,
                      dtype: str = "float32", what: str = "--reward-model") -> RewardModel:
    """Load a BERT/DistilBERT classifier checkpoint (local dir or hub id) as a ``RewardModel``.

    The reward is ``sign * logit`` of the label named ``label`` (case-insensitive, from the
    checkpoint's ``id2label``) or at ``index`` (which wins over ``label``). ``dtype`` is the compute
    dtype ("float32" matches the PyTorch reference; "bfloat16" is faster on GPU).
    """
    cfg, params, labels, tok = load_classifier(name_or_path, what=what)
    if len(tok) > cfg.vocab_size:
        raise InvalidInput(f"{what} {name_or_path}: its tokenizer has {len(tok)} tokens but the classifier has "
                           f"{cfg.vocab_size} embedding rows; the checkpoint's tokenizer does not belong to it")
    idx = _label_index(labels, label, index)
    return RewardModel(cfg.replace(dtype=dtype), params, labels, tok, index=idx, sign=sign,
                       max_length=max_length, buckets=buckets, batch_size=batch_size)


def toxic_bert(path: str = "unitary/toxic-bert", **kw) -> RewardModel:
    """Jigsaw/RTP reward: −logit("toxic") of unitary/toxic-bert (higher = less toxic), docs/paper.md §3.2."""
    return load_reward_model(path, **{"label": "toxic", "sign": -1, **kw})  # overridable


def distilbert_imdb(path: str = "lvwerra/distilbert-imdb", **kw) -> RewardModel:
    """IMDB reward: +logit("POSITIVE") of lvwerra/distilbert-imdb, docs/paper.md §3.1."""
    return load_reward_model(path, **{"label": "POSITIVE", "sign": +1, **kw})  # overridable


_TASKS = {"toxic": toxic_bert, "positive": distilbert_imdb}


def reward_for_task(kind: str, path: str | None = None, **kw) -> RewardModel:
    """``kind="toxic"`` → ``toxic_bert(path)``; ``kind="positive"`` → ``distilbert_imdb(path)``.
    ``path=None`` uses the preset's hub id."""
    if kind not in _TASKS:
        raise InvalidInput(f"unknown reward kind {kind!r}; choose one of {sorted(_TASKS)}")
    return _TASKS[kind](**kw) if path is None else _TASKS[kind](path, **kw)


def from_config(rc) -> Reward:
    """The reward of a config's ``reward`` section: the user's Python reward when ``reward.fn`` names
    one (``from_spec``), else the classifier with the kind's label and sign unless overridden."""
    if rc.fn:
        return from_spec(rc.fn)
    over = {k: v for k, v in (("label", rc.label), ("index", rc.index), ("sign", rc.sign)) if v is not None}
    return reward_for_task(rc.kind, rc.model, max_length=rc.max_length, what="--reward-model", **over)


def from_spec(spec: str) -> Reward:
    """The reward a ``module:function`` (or ``path/to/file.py:function``) spec names: an object with
    ``score_texts`` is used as it is; a function is called with a list of texts (prompt + response)
    and returns one number per text (``PythonReward(fn, batched=True)``)."""
    obj = plugins.load(spec, what="reward.fn")
    if isinstance(obj, Reward):
        return obj
    if not callable(obj):
        raise InvalidInput(f"reward.fn={spec!r} is a {type(obj).__name__}, not a function of texts")
    return PythonReward(obj, batched=True)


class PythonReward:
    """A user Python function as a reward, with the same interface as ``RewardModel``.

    ``fn`` maps one text to a number (``batched=False``) or a list of texts to a list of numbers
    (``batched=True``). Every score must be finite. Example — reward responses that mention "great"::

        from rajax.rewards import PythonReward
        reward = PythonReward(lambda text: float(text.lower().count("great")))
        reward(["The movie was"], [" great, just great."])   # -> array([2.], dtype=float32)
    """

    def __init__(self, fn: Callable, batched: bool = False):
        if not callable(fn):
            raise InvalidInput(f"PythonReward needs a callable, got {type(fn).__name__}")
        self.fn, self.batched = fn, bool(batched)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if self.batched:
            raw = list(self.fn(texts))
            if len(raw) != len(texts):
                raise InvalidInput(f"batched reward function returned {len(raw)} scores for {len(texts)} texts")
        else:
            raw = [self.fn(t) for t in texts]
        try:
            out = np.asarray([float(x) for x in raw], np.float64)
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"reward function must return numbers: {e}") from None
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            i = int(bad[0])
            raise InvalidInput(f"reward function returned {out[i]} for text {i} ({texts[i][:40]!r}); "
                             "scores must be finite")
        return out.astype(np.float32)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.score_texts(_concat(prompts, responses))

    def __repr__(self):
        return f"PythonReward({getattr(self.fn, '__name__', self.fn)!r}, batched={self.batched})"
