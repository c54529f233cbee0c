"""What every task shares: the data containers, the task plug-in base class, prompt encoding and
padding, and the ``datasets``-exact index arithmetic the paper's splits need.

A task is a ``Task`` subclass registered in ``rajax.tasks`` under its ``data.source`` name; its
``raw(cfg)`` returns the texts of each split (``RawSplits``), and ``build`` turns them into the
``TaskData`` a run uses, the same way for every task:

* prompts are ``decode(encode(text)[:P])`` (no BOS; byte-level BPE can split a multi-byte
  character, leaving "\\ufffd"). ``PromptSet.ids`` keep the truncated ids for the policy and
  ``PromptSet.texts`` the decoded strings for the reward model (docs/paper.md quirk #26);
* ``eval.test_size`` cuts the test set (the head of a test order that is already a seeded shuffle,
  else a seeded subset in file order, so both classes stay represented);
* perplexity texts are cut to ``eval.ppl_num_texts`` texts of ``eval.ppl_max_chars`` characters.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from rajax.core.errors import InvalidInput

SUBSET_SEED = 0  # eval.test_size < the test set (not already shuffled): a seeded subset in file order


# ------------------------------------------------------------------------------------------------
# Containers
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PromptSet:
    """Prompts of one split. ``ids[i]`` = ``encode(sources[i])[:P]``; ``texts[i]`` = ``decode(ids[i])``.

    ``labels`` (int array or None): IMDB ``label`` (1 = positive), Jigsaw ``toxic``, RTP ``Label``
    (1 = prompt toxicity > 0.5). ``sources``: the full source texts (None when not kept).
    """

    ids: list[list[int]]
    texts: list[str]
    labels: np.ndarray | None = None
    sources: list[str] | None = None

    def __post_init__(self):
        n = len(self.ids)
        if len(self.texts) != n or (self.labels is not None and len(self.labels) != n) or (
                self.sources is not None and len(self.sources) != n):
            raise InvalidInput("PromptSet fields must all have one entry per prompt")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, idx) -> "PromptSet":
        """The rows ``idx`` (an int sequence), in that order."""
        idx = [int(i) for i in idx]
        return PromptSet(
            ids=[self.ids[i] for i in idx], texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else np.asarray(self.labels)[idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx])

    def padded(self, pad_id: int, width: int | None = None):
        """``left_pad(self.ids, width or the longest prompt, pad_id)``."""
        return left_pad(self.ids, width or max((len(x) for x in self.ids), default=1), pad_id)


@dataclasses.dataclass(frozen=True, eq=False)
class TaskData:
    """Everything a run needs from the task's data.

    ``train`` / ``test``: ``PromptSet`` (None when not available and not required).
    ``ppl_texts``: human texts for the perplexity metric (docs/paper.md §4.2), already cut to
    ``eval.ppl_max_chars`` characters and ``eval.ppl_num_texts`` texts.
    ``sft_texts``: the texts of the task's SFT step (docs/paper.md §3), full length.
    ``info``: counts and sources, for logs.
    """

    train: PromptSet | None
    test: PromptSet | None
    ppl_texts: list[str]
    sft_texts: list[str]
    info: dict = dataclasses.field(default_factory=dict)




@dataclasses.dataclass
class RawSplits:
    """A task's texts before tokenisation: ``(texts, labels or None)`` per split, or None."""

    train: tuple[list[str], np.ndarray | None] | None
    test: tuple[list[str], np.ndarray | None] | None
    test_shuffled: bool  # the test order is already a seeded shuffle (IMDB): a subset is its head
    sft: list[str]  # the texts of the task's SFT step, full length
    ppl: list[str]  # perplexity texts, in the task's order (cut to ppl_max_chars / ppl_num_texts later)
    info: dict


class Task:
    """A task plug-in: where the prompts, test set, SFT and perplexity texts come from.

    Subclass it, set ``name`` (the ``data.source`` value that selects it), implement ``raw``, and
    register an instance with ``rajax.tasks.register``; add a preset ``rajax/configs/<name>.yaml``. The other
    methods have defaults that suit a task read from files or the hub.
    """

    name: str = ""
    offline: bool = False  # runs with no hub access and no local files (the offline hint names it)
    # A value a config may give for a model path that this task's ``resolve`` fills in (its own
    # assets), whichever task the data comes from; None: the task has no such placeholder.
    placeholder: str | None = None
    class_names: dict = {0: "Non toxic", 1: "Toxic"}  # test-set label -> name, for the figures
    # Measured seconds of one run with its evaluation per study setting ("main", an ablation), for
    # the duration that bin/study prints before its first run ends; None: not measured.
    study_seconds: dict | None = None

    def resolve(self, cfg, *, progress: bool = True):
        """``cfg`` with anything task-specific filled in (placeholders, built assets). Runs first."""
        return cfg

    def hub_needs(self, cfg, require: Sequence[str]) -> list[str]:
        """What this task fetches from the hub for ``cfg`` (named in the offline error), or raise a
        one-line ValueError when ``cfg`` cannot provide the ``require``d parts at all."""
        return []

    def raw(self, cfg) -> RawSplits:
        raise NotImplementedError

    def load(self, cfg, tokenizer, *, require: Sequence[str] = ("train",)) -> "TaskData":
        """The task's ``TaskData`` (prompts of P = ``generation.prompt_tokens`` tokens)."""
        return build(self.raw(cfg), cfg, tokenizer, require=require)

    def extra_scorers(self, cfg) -> dict[str, Callable[[list[str]], np.ndarray]]:
        """Scores reported beside the reward (name -> function of prompt + response texts)."""
        return {}


# ------------------------------------------------------------------------------------------------
# Tokenisation (HF tokenizers, or a bare `tokenizers.Tokenizer`)
# ------------------------------------------------------------------------------------------------
def clean_up_tokenization(s: str) -> str:
    """transformers-4's ``clean_up_tokenization`` (default on for GPT-2 decode then; off in v5).

    Use it on prompts AND responses when ``reward.clean_up_spaces`` is set, so the reward model
    reads the strings the paper's did (see ``rajax.config.RewardConfig``).
    """
    return (s.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
            .replace(" 've", "'ve").replace(" 're", "'re"))


def encode_all(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """``[tokenizer.encode(t) for t in texts]`` in one batched call (special tokens as ``encode``)."""
    texts = list(texts)
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch") and not callable(getattr(tokenizer, "batch_decode", None)):
        return [e.ids for e in tokenizer.encode_batch(texts)]  # tokenizers.Tokenizer
    try:
        out = tokenizer(texts, verbose=False)
    except TypeError:  # tokenizers without the `verbose` flag
        out = tokenizer(texts)
    return [list(x) for x in out["input_ids"]]


def decode_all(tokenizer, ids: Sequence[Sequence[int]], *, clean_up: bool = False) -> list[str]:
    """Decode each id list WITH special tokens (docs/paper.md §3: "<|endoftext|>" reaches the classifier)."""
    ids = [list(map(int, x)) for x in ids]
    if not ids:
        return []
    if callable(getattr(tokenizer, "batch_decode", None)):
        try:
            out = tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        except TypeError:
            out = tokenizer.batch_decode(ids)
    else:
        out = tokenizer.decode_batch(ids, skip_special_tokens=False)  # tokenizers.Tokenizer
    return [clean_up_tokenization(s) for s in out] if clean_up else list(out)


def build_prompts(texts: Sequence[str], tokenizer, prompt_tokens: int, *, clean_up: bool = False) -> list[str]:
    """``decode(encode(t)[:P])`` for each text (docs/paper.md §3; quirk #26)."""
    return encode_prompts(texts, tokenizer, prompt_tokens, clean_up=clean_up, keep_sources=False).texts


def encode_prompts(texts: Sequence[str], tokenizer, prompt_tokens: int, *, labels=None,
                   clean_up: bool = False, keep_sources: bool = True) -> PromptSet:
    """A ``PromptSet``: ids = ``encode(t)[:P]`` (policy input), texts = their decodings (reward input)."""
    if prompt_tokens < 1:
        raise InvalidInput(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    texts = [str(t) for t in texts]
    ids = [x[:prompt_tokens] for x in encode_all(tokenizer, texts)]
    return PromptSet(ids=ids, texts=decode_all(tokenizer, ids, clean_up=clean_up),
                     labels=None if labels is None else np.asarray(labels, np.int32),
                     sources=texts if keep_sources else None)


def left_pad(ids_list: Sequence[Sequence[int]], width: int, pad_id: int):
    """``(ids [N, width] int32, mask [N, width] int32)``, each row right-aligned (rajax layout:
    ``[left pad | prompt | response | pad]``). A row longer than ``width`` is an error."""
    n = len(ids_list)
    ids = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    for i, row in enumerate(ids_list):
        k = len(row)
        if k > width:
            raise InvalidInput(f"prompt {i} has {k} tokens > width {width}; truncate prompts to "
                             f"generation.prompt_tokens first (encode_prompts)")
        if k:
            ids[i, width - k:] = np.asarray(row, np.int32)
            mask[i, width - k:] = 1
    return ids, mask


# ------------------------------------------------------------------------------------------------
# `datasets`-exact index arithmetic (docs/paper.md §6.2)
# ------------------------------------------------------------------------------------------------
def hf_shuffle(n: int, seed: int) -> np.ndarray:
    """The row order of ``Dataset.shuffle(seed=seed)`` on ``n`` rows."""
    return np.random.default_rng(seed).permutation(n)


def hf_train_test_split(n: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` of ``Dataset.train_test_split(test_size=<float>, seed=seed)``:
    ``n_test = ceil(test_size*n)``; one permutation, test = its head, train = the rest."""
    n_test = math.ceil(test_size * n)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:], perm[:n_test]


def ratio_count(n_minority: int, majority_pct: int = 70, minority_pct: int = 30) -> int:
    """``int(n * 70 / 30)``: the non-toxic count of the paper's 70/30 splits (float, as the paper)."""
    return int(n_minority * majority_pct / minority_pct)




def build(raw: RawSplits, cfg, tokenizer, *, require: Sequence[str] = ("train",)) -> TaskData:
    """``RawSplits`` -> ``TaskData``: encode prompts, cut the test set and the perplexity texts.

    ``require``: the parts that must be present (``"train"``, ``"test"``); a missing one raises a
    one-line ValueError naming the flag to pass.
    """
    for part in require:
        if getattr(raw, part) is None:
            flag = "--test-path FILE (data.test_path)" if part == "test" else "--data PATH (data.path)"
            raise InvalidInput(f"task {cfg.task!r} has no {part} prompts; pass {flag}")
    P = cfg.generation.prompt_tokens
    clean = bool(getattr(cfg.reward, "clean_up_spaces", False))
    e = cfg.eval

    train = test = None
    if raw.train is not None:
        train = encode_prompts(raw.train[0], tokenizer, P, labels=raw.train[1], clean_up=clean)
    if raw.test is not None:
        texts, labels = raw.test
        n = len(texts)
        if e.test_size is not None and e.test_size < n:
            rows = (np.arange(e.test_size) if raw.test_shuffled
                    else np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:e.test_size]))
            texts = [texts[i] for i in rows]
            labels = None if labels is None else labels[rows]
        test = encode_prompts(texts, tokenizer, P, labels=labels, clean_up=clean)
    ppl = raw.ppl if e.ppl_num_texts is None else raw.ppl[:e.ppl_num_texts]
    if e.ppl_max_chars is not None:
        ppl = [t[:e.ppl_max_chars] for t in ppl]
    info = dict(task=cfg.task, data_source=cfg.data.source, prompt_tokens=P,
                train=None if train is None else len(train), test=None if test is None else len(test),
                ppl_texts=len(ppl), sft_texts=len(raw.sft), **raw.info)
    return TaskData(train=train, test=test, ppl_texts=ppl, sft_texts=list(raw.sft), info=info)
